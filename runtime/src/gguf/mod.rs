//! GGUF import: takes a llama.cpp GGUF file (llama or qwen2 architecture, any quantisation that
//! candle can dequantise) and gives a Hugging Face model directory: `config.json`,
//! `generation_config.json`, `model.safetensors` (f32, HF tensor names), `tokenizer.json` and
//! `tokenizer_config.json`, all built from the GGUF file alone.
//!
//! The conversion is a standalone step so the rest of the runtime only ever loads HF
//! directories: [`import`] writes the directory, and [`convert`] gives the same content in
//! memory for callers that load it straight away. Every tensor is dequantised to f32, renamed
//! from llama.cpp's names to the HF ones, and, for the llama architecture, the rows of the query
//! and key projections are put back in HF's order (llama.cpp permutes them for its interleaved
//! RoPE). Errors name the file and, where one is at fault, the tensor or metadata key.

mod config;
mod metadata;
mod names;
mod tokenizer;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use metadata::Meta;
pub use names::unpermute_llama_rows;
use names::{HfName, TensorRole};

/// The quantisation types that candle can dequantise, as named in error messages.
const SUPPORTED_DTYPES: &str =
    "F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K";

/// Errors of the GGUF import. Each names the GGUF file (or the output directory) and, where one
/// is at fault, the tensor or metadata key, so a user can tell what to fix without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// The file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not GGUF, or its header is damaged or truncated.
    #[error("{}: not a readable GGUF file: {message}", path.display())]
    Format { path: PathBuf, message: String },
    /// `general.architecture` names a model family recap has no model code for.
    #[error(
        "{}: architecture '{architecture}' is not supported (supported: llama, qwen2)",
        path.display()
    )]
    UnsupportedArchitecture { path: PathBuf, architecture: String },
    /// A tensor is stored in a quantisation type that candle cannot dequantise.
    #[error(
        "{}: tensor '{tensor}' is stored as {dtype}, which cannot be dequantised \
         (supported: {SUPPORTED_DTYPES})",
        path.display()
    )]
    UnsupportedQuantisation {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    /// A metadata key is missing, has the wrong type, or holds a value recap cannot use.
    #[error("{}: metadata '{key}': {message}", path.display())]
    Metadata {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A tensor is unknown, missing, has the wrong shape, or could not be read.
    #[error("{}: tensor '{tensor}': {message}", path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    /// The tokenizer metadata cannot be turned into a working `tokenizer.json`.
    #[error("{}: tokenizer: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// The Hugging Face directory could not be written.
    #[error("{}: cannot write the Hugging Face directory: {message}", path.display())]
    Output { path: PathBuf, message: String },
}

/// Result of the GGUF import functions.
pub type Result<T> = std::result::Result<T, GgufError>;

/// The model families the import understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// llama.cpp's `llama` (Llama 2 style models, SmolLM2): Q/K rows permuted, no biases.
    Llama,
    /// llama.cpp's `qwen2` (Qwen2, Qwen2.5): q/k/v biases, rows in HF order.
    Qwen2,
}

impl Architecture {
    /// The GGUF name, as in `general.architecture` and the metadata key prefixes.
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }

    /// The HF `model_type` of `config.json`.
    pub fn hf_model_type(self) -> &'static str {
        self.gguf_name()
    }

    /// The HF class name written to `architectures` in `config.json`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// A GGUF model converted to Hugging Face form, held in memory.
#[derive(Debug)]
pub struct Converted {
    /// The model family.
    pub architecture: Architecture,
    /// The content of `config.json`.
    pub config: serde_json::Value,
    /// The content of `generation_config.json`.
    pub generation_config: serde_json::Value,
    /// The content of `tokenizer.json` (loads with the `tokenizers` crate; checked on conversion).
    pub tokenizer: serde_json::Value,
    /// The content of `tokenizer_config.json` (special tokens, chat template).
    pub tokenizer_config: serde_json::Value,
    /// f32 tensors under their HF names, in the order they are stored in the GGUF file.
    pub tensors: Vec<(String, Tensor)>,
    /// How many tensors each GGUF storage type had, e.g. `{"Q4_1": 210, "F32": 61}`.
    pub source_dtypes: BTreeMap<String, usize>,
    /// True when the file has no `output.weight`, so the head shares the embedding.
    pub tied_embeddings: bool,
}

/// What [`import`] did, for the CLI to print.
#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The GGUF file that was read.
    pub source: PathBuf,
    /// The Hugging Face directory that was written.
    pub out_dir: PathBuf,
    /// The files written into `out_dir`.
    pub files: Vec<PathBuf>,
    /// The model family.
    pub architecture: Architecture,
    /// Number of tensors written to `model.safetensors`.
    pub tensors: usize,
    /// Number of parameters (elements of all tensors written).
    pub parameters: usize,
    /// How many tensors each GGUF storage type had.
    pub source_dtypes: BTreeMap<String, usize>,
    /// True when the head shares the embedding (`tie_word_embeddings`).
    pub tied_embeddings: bool,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
}

impl std::fmt::Display for Architecture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.gguf_name())
    }
}

/// One line for the CLI: what was read, what it held, where it went.
impl std::fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stored: Vec<String> = self
            .source_dtypes
            .iter()
            .map(|(dtype, n)| format!("{n} {dtype}"))
            .collect();
        write!(
            f,
            "imported {} into {}: {} model, {} tensors ({}), {:.1}M parameters, vocabulary {}, {}",
            self.source.display(),
            self.out_dir.display(),
            self.architecture,
            self.tensors,
            stored.join(", "),
            self.parameters as f64 / 1e6,
            self.vocab_size,
            if self.tied_embeddings {
                "tied embeddings"
            } else {
                "separate output head"
            }
        )
    }
}

/// Converts the GGUF file at `gguf_path` into a Hugging Face directory at `out_dir` (created if
/// missing; it must be empty if it exists, so nothing is overwritten by mistake).
pub fn import(gguf_path: impl AsRef<Path>, out_dir: impl AsRef<Path>) -> Result<ImportSummary> {
    let gguf_path = gguf_path.as_ref();
    let out_dir = out_dir.as_ref();
    // The directory is checked before the (slow) conversion and created only after it, so a
    // failed import leaves nothing behind.
    check_out_dir(out_dir)?;
    let converted = convert(gguf_path)?;
    let files = converted.write(out_dir)?;
    let vocab_size = converted.config["vocab_size"].as_u64().unwrap_or(0) as usize;
    Ok(ImportSummary {
        source: gguf_path.to_path_buf(),
        out_dir: out_dir.to_path_buf(),
        files,
        architecture: converted.architecture,
        tensors: converted.tensors.len(),
        parameters: converted.tensors.iter().map(|(_, t)| t.elem_count()).sum(),
        source_dtypes: converted.source_dtypes,
        tied_embeddings: converted.tied_embeddings,
        vocab_size,
    })
}

/// What the start of a GGUF file says: its metadata and tensor table, the model family and
/// the hyperparameters; the tensor data is left unread.
struct Header {
    reader: BufReader<File>,
    content: Content,
    architecture: Architecture,
    hp: config::Hyperparams,
}

impl Header {
    fn read(path: &Path) -> Result<Header> {
        let file = File::open(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|e| header_error(path, e))?;
        let meta = Meta::new(path, &content.metadata);
        let arch_name = meta.string("general.architecture")?;
        let architecture = match arch_name.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            other => {
                return Err(GgufError::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    architecture: other.to_string(),
                })
            }
        };
        let embedding_rows = content
            .tensor_infos
            .get("token_embd.weight")
            .and_then(|info| info.shape.dims().first().copied());
        let hp = config::Hyperparams::read(&meta, architecture, embedding_rows)?;
        Ok(Header {
            reader,
            content,
            architecture,
            hp,
        })
    }
}

/// The `tokenizer.json` and `tokenizer_config.json` a GGUF file's metadata holds, read without
/// its tensors (for `init(..., tokenizer = "x.gguf")`).
pub fn read_tokenizer(path: impl AsRef<Path>) -> Result<(serde_json::Value, serde_json::Value)> {
    let path = path.as_ref();
    let header = Header::read(path)?;
    let meta = Meta::new(path, &header.content.metadata);
    let tok = tokenizer::build(&meta, header.hp.context_length)?;
    Ok((tok.tokenizer, tok.tokenizer_config))
}

/// Reads the GGUF file at `path` and converts it in memory: f32 tensors with HF names, and the
/// HF config, generation config and tokenizer built from its metadata.
pub fn convert(path: impl AsRef<Path>) -> Result<Converted> {
    let path = path.as_ref();
    let Header {
        mut reader,
        content,
        architecture,
        hp,
    } = Header::read(path)?;
    let meta = Meta::new(path, &content.metadata);

    // Tensors are read in file order, which keeps the reads sequential on disk.
    let mut infos: Vec<_> = content.tensor_infos.iter().collect();
    infos.sort_by_key(|(_, info)| info.offset);

    let mut tensors = Vec::with_capacity(infos.len());
    let mut seen: HashSet<String> = HashSet::new();
    let mut source_dtypes = BTreeMap::new();
    for (gguf_name, info) in infos {
        let tensor_err = |message: String| GgufError::Tensor {
            path: path.to_path_buf(),
            tensor: gguf_name.clone(),
            message,
        };
        if !dtype_supported(info.ggml_dtype) {
            return Err(GgufError::UnsupportedQuantisation {
                path: path.to_path_buf(),
                tensor: gguf_name.clone(),
                dtype: dtype_name(info.ggml_dtype),
            });
        }
        let HfName { name, role } = names::hf_name(gguf_name, hp.layers).map_err(tensor_err)?;
        let qtensor = info
            .read(&mut reader, content.tensor_data_offset, &Device::Cpu)
            .map_err(|e| tensor_err(format!("cannot read: {e}")))?;
        let mut tensor = qtensor
            .dequantize(&Device::Cpu)
            .and_then(|t| t.to_dtype(DType::F32))
            .map_err(|e| tensor_err(format!("cannot dequantise: {e}")))?;
        let expected = hp.expected_shape(role);
        if tensor.dims() != expected.as_slice() {
            return Err(tensor_err(format!(
                "has shape {:?}, expected {:?} from the metadata",
                tensor.dims(),
                expected
            )));
        }
        if architecture == Architecture::Llama {
            // llama.cpp stores the query and key rows of each head interleaved for its RoPE.
            let heads = match role {
                TensorRole::Q | TensorRole::QBias => Some(hp.heads),
                TensorRole::K | TensorRole::KBias => Some(hp.kv_heads),
                _ => None,
            };
            if let Some(heads) = heads {
                tensor = unpermute_llama_rows(&tensor, heads)
                    .map_err(|e| tensor_err(format!("cannot undo the Q/K row permutation: {e}")))?;
            }
        }
        *source_dtypes
            .entry(dtype_name(info.ggml_dtype))
            .or_insert(0usize) += 1;
        // Two GGUF names map to one HF name only when the file holds a tensor twice.
        if !seen.insert(name.clone()) {
            return Err(tensor_err(format!("maps to '{name}', which appears twice")));
        }
        tensors.push((name, tensor));
    }

    let present: HashSet<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    for required in names::required_hf_names(architecture, hp.layers) {
        if !present.contains(required.as_str()) {
            return Err(GgufError::Tensor {
                path: path.to_path_buf(),
                tensor: names::gguf_name_of(&required),
                message: format!("missing (needed for the HF tensor '{required}')"),
            });
        }
    }
    let tied_embeddings = !present.contains("lm_head.weight");
    let attention_bias = present.contains("model.layers.0.self_attn.q_proj.bias");

    let tok = tokenizer::build(&meta, hp.context_length)?;
    // The embedding may have more rows than the tokenizer has tokens (padding to a round
    // number), never fewer.
    if tok.vocab_len > hp.vocab_size {
        return Err(GgufError::Tokenizer {
            path: path.to_path_buf(),
            message: format!(
                "the tokenizer has {} tokens but the embedding only {} rows",
                tok.vocab_len, hp.vocab_size
            ),
        });
    }
    let config = hp.config_json(architecture, tied_embeddings, attention_bias, &tok.ids);
    let generation_config = config::generation_config_json(&tok.ids);

    Ok(Converted {
        architecture,
        config,
        generation_config,
        tokenizer: tok.tokenizer,
        tokenizer_config: tok.tokenizer_config,
        tensors,
        source_dtypes,
        tied_embeddings,
    })
}

impl Converted {
    /// Writes the HF directory into `out_dir` (created if missing) and gives the files written.
    pub fn write(&self, out_dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
        let out_dir = out_dir.as_ref();
        let out_err = |path: &Path, message: String| GgufError::Output {
            path: path.to_path_buf(),
            message,
        };
        std::fs::create_dir_all(out_dir).map_err(|e| out_err(out_dir, e.to_string()))?;
        let mut files = Vec::new();
        for (file, value) in [
            ("config.json", &self.config),
            ("generation_config.json", &self.generation_config),
            ("tokenizer.json", &self.tokenizer),
            ("tokenizer_config.json", &self.tokenizer_config),
        ] {
            let path = out_dir.join(file);
            let text = serde_json::to_string_pretty(value)
                .map_err(|e| out_err(&path, format!("cannot serialise: {e}")))?;
            std::fs::write(&path, text + "\n").map_err(|e| out_err(&path, e.to_string()))?;
            files.push(path);
        }
        let path = out_dir.join("model.safetensors");
        let map: HashMap<&str, Tensor> = self
            .tensors
            .iter()
            .map(|(name, t)| (name.as_str(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, &path).map_err(|e| out_err(&path, e.to_string()))?;
        files.push(path);
        Ok(files)
    }
}

/// Checks that `out_dir` is missing or an empty directory.
fn check_out_dir(out_dir: &Path) -> Result<()> {
    let out_err = |message: String| GgufError::Output {
        path: out_dir.to_path_buf(),
        message,
    };
    if out_dir.exists() {
        if !out_dir.is_dir() {
            return Err(out_err("exists and is not a directory".into()));
        }
        let mut entries = std::fs::read_dir(out_dir).map_err(|e| out_err(e.to_string()))?;
        if entries.next().is_some() {
            return Err(out_err(
                "the directory is not empty; choose a new one or empty it first".into(),
            ));
        }
    }
    Ok(())
}

/// Turns a failure of candle's header reader into an error naming the file, and, when the cause
/// is a storage type candle does not know, the tensor that has it (candle's message names only
/// the type code).
fn header_error(path: &Path, e: candle_core::Error) -> GgufError {
    if let Ok(Some((tensor, code))) = metadata::find_unknown_dtype(path) {
        return GgufError::UnsupportedQuantisation {
            path: path.to_path_buf(),
            tensor,
            dtype: format!("ggml type {code}"),
        };
    }
    GgufError::Format {
        path: path.to_path_buf(),
        message: e.to_string(),
    }
}

/// True for the storage types candle can read from GGUF and dequantise.
fn dtype_supported(dtype: GgmlDType) -> bool {
    !matches!(dtype, GgmlDType::Q8_1 | GgmlDType::Q8K)
}

/// The llama.cpp spelling of a storage type, for messages and the summary.
fn dtype_name(dtype: GgmlDType) -> String {
    match dtype {
        GgmlDType::F32 => "F32",
        GgmlDType::F16 => "F16",
        GgmlDType::BF16 => "BF16",
        GgmlDType::Q4_0 => "Q4_0",
        GgmlDType::Q4_1 => "Q4_1",
        GgmlDType::Q5_0 => "Q5_0",
        GgmlDType::Q5_1 => "Q5_1",
        GgmlDType::Q8_0 => "Q8_0",
        GgmlDType::Q8_1 => "Q8_1",
        GgmlDType::Q2K => "Q2_K",
        GgmlDType::Q3K => "Q3_K",
        GgmlDType::Q4K => "Q4_K",
        GgmlDType::Q5K => "Q5_K",
        GgmlDType::Q6K => "Q6_K",
        GgmlDType::Q8K => "Q8_K",
    }
    .to_string()
}
