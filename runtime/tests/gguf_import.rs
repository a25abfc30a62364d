//! GGUF import tests on files the tests write themselves with candle's GGUF writer: small llama
//! and qwen2 models with f32, f16 and quantised (q8_0, q4_0) tensors, in llama.cpp's layout
//! (Q/K rows permuted for llama). The import must give back the HF tensors: exactly for f32,
//! within the quantisation error for the quantised ones, and bit-equal to candle's own
//! dequantisation of the stored blocks. Also the config, tokenizer and the error messages.

mod common;
use common::max_abs_diff;

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use recap_runtime::gguf::{self, Architecture, GgufError};

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 96;
const LAYERS: usize = 2;

/// The byte-level BPE vocabulary of the test models: three control tokens, then normal ones.
const TOKENS: &[&str] = &[
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "a",
    "b",
    "c",
    "Ġ",
    "ab",
    "Ġa",
    "Ġab",
    "1",
    "2",
];
const MERGES: &[&str] = &["a b", "Ġ a", "Ġ ab"];
const VOCAB: usize = TOKENS.len();

/// How one test model is stored.
#[derive(Clone)]
struct Spec {
    arch: &'static str,
    tied: bool,
    add_bos: bool,
    /// Storage type per HF role: "embed", "q", "k", "v", "o", "gate", "up", "down", "head".
    dtypes: HashMap<&'static str, GgmlDType>,
    /// Tensors to leave out (GGUF names) or to add with a bad shape.
    omit: Vec<String>,
    extra: Vec<(String, Tensor)>,
}

impl Spec {
    fn new(arch: &'static str) -> Self {
        let mut dtypes = HashMap::new();
        for role in ["embed", "q", "k", "v", "o", "gate", "up", "down", "head"] {
            dtypes.insert(role, GgmlDType::F32);
        }
        Spec {
            arch,
            tied: arch == "llama",
            add_bos: false,
            dtypes,
            omit: vec![],
            extra: vec![],
        }
    }
}

/// The HF tensors of a test model, drawn from a seeded host RNG.
fn hf_tensors(arch: &str, tied: bool, seed: u64) -> Vec<(String, Tensor)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut rand = |shape: &[usize]| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
    };
    let mut t = vec![
        (
            "model.embed_tokens.weight".to_string(),
            rand(&[VOCAB, HIDDEN]),
        ),
        ("model.norm.weight".to_string(), rand(&[HIDDEN])),
    ];
    if !tied {
        t.push(("lm_head.weight".to_string(), rand(&[VOCAB, HIDDEN])));
    }
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        t.push((format!("{p}.input_layernorm.weight"), rand(&[HIDDEN])));
        t.push((
            format!("{p}.post_attention_layernorm.weight"),
            rand(&[HIDDEN]),
        ));
        t.push((
            format!("{p}.self_attn.q_proj.weight"),
            rand(&[HEADS * HEAD_DIM, HIDDEN]),
        ));
        t.push((
            format!("{p}.self_attn.k_proj.weight"),
            rand(&[KV_HEADS * HEAD_DIM, HIDDEN]),
        ));
        t.push((
            format!("{p}.self_attn.v_proj.weight"),
            rand(&[KV_HEADS * HEAD_DIM, HIDDEN]),
        ));
        t.push((
            format!("{p}.self_attn.o_proj.weight"),
            rand(&[HIDDEN, HEADS * HEAD_DIM]),
        ));
        if arch == "qwen2" {
            t.push((
                format!("{p}.self_attn.q_proj.bias"),
                rand(&[HEADS * HEAD_DIM]),
            ));
            t.push((
                format!("{p}.self_attn.k_proj.bias"),
                rand(&[KV_HEADS * HEAD_DIM]),
            ));
            t.push((
                format!("{p}.self_attn.v_proj.bias"),
                rand(&[KV_HEADS * HEAD_DIM]),
            ));
        }
        t.push((format!("{p}.mlp.gate_proj.weight"), rand(&[FFN, HIDDEN])));
        t.push((format!("{p}.mlp.up_proj.weight"), rand(&[FFN, HIDDEN])));
        t.push((format!("{p}.mlp.down_proj.weight"), rand(&[HIDDEN, FFN])));
    }
    t
}

/// The llama.cpp name and storage role of an HF name, written out by hand here so the test does
/// not reuse the mapping it checks.
fn gguf_name_and_role(hf: &str) -> (String, &'static str) {
    match hf {
        "model.embed_tokens.weight" => return ("token_embd.weight".into(), "embed"),
        "model.norm.weight" => return ("output_norm.weight".into(), "norm"),
        "lm_head.weight" => return ("output.weight".into(), "head"),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, suffix) = rest.split_once('.').unwrap();
    let (g, role) = match suffix {
        "input_layernorm.weight" => ("attn_norm.weight", "norm"),
        "post_attention_layernorm.weight" => ("ffn_norm.weight", "norm"),
        "self_attn.q_proj.weight" => ("attn_q.weight", "q"),
        "self_attn.k_proj.weight" => ("attn_k.weight", "k"),
        "self_attn.v_proj.weight" => ("attn_v.weight", "v"),
        "self_attn.o_proj.weight" => ("attn_output.weight", "o"),
        "self_attn.q_proj.bias" => ("attn_q.bias", "bias"),
        "self_attn.k_proj.bias" => ("attn_k.bias", "bias"),
        "self_attn.v_proj.bias" => ("attn_v.bias", "bias"),
        "mlp.gate_proj.weight" => ("ffn_gate.weight", "gate"),
        "mlp.up_proj.weight" => ("ffn_up.weight", "up"),
        "mlp.down_proj.weight" => ("ffn_down.weight", "down"),
        other => panic!("no GGUF name for {other}"),
    };
    (format!("blk.{layer}.{g}"), role)
}

/// llama.cpp's permutation of Q/K rows (convert_hf_to_gguf.py `permute`), written with explicit
/// indices: within each head, HF row `i * half + j` (i in 0..2, j in 0..half) moves to row
/// `j * 2 + i`.
fn llama_cpp_permute(w: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = w.dims2().unwrap();
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let src = w.to_vec2::<f32>().unwrap();
    let mut out = vec![vec![0f32; cols]; rows];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                out[h * head_dim + j * 2 + i] = src[h * head_dim + i * half + j].clone();
            }
        }
    }
    Tensor::new(out, &Device::Cpu).unwrap()
}

/// What a GGUF file holds after storing `t` as `dtype`: the value candle dequantises back.
fn stored(t: &Tensor, dtype: GgmlDType) -> Tensor {
    QTensor::quantize(t, dtype)
        .unwrap()
        .dequantize(&Device::Cpu)
        .unwrap()
}

fn metadata(spec: &Spec) -> Vec<(String, Value)> {
    let a = spec.arch;
    let mut m = vec![
        ("general.architecture".to_string(), Value::String(a.into())),
        (format!("{a}.block_count"), Value::U32(LAYERS as u32)),
        (format!("{a}.context_length"), Value::U32(256)),
        (format!("{a}.embedding_length"), Value::U32(HIDDEN as u32)),
        (format!("{a}.feed_forward_length"), Value::U32(FFN as u32)),
        (
            format!("{a}.attention.head_count"),
            Value::U32(HEADS as u32),
        ),
        (
            format!("{a}.attention.head_count_kv"),
            Value::U32(KV_HEADS as u32),
        ),
        (
            format!("{a}.attention.layer_norm_rms_epsilon"),
            Value::F32(1e-5),
        ),
        (format!("{a}.rope.freq_base"), Value::F32(100_000.0)),
        (
            format!("{a}.rope.dimension_count"),
            Value::U32(HEAD_DIM as u32),
        ),
        (format!("{a}.vocab_size"), Value::U32(VOCAB as u32)),
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        (
            "tokenizer.ggml.pre".into(),
            Value::String(if a == "qwen2" { "qwen2" } else { "smollm" }.into()),
        ),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                TOKENS
                    .iter()
                    .map(|t| Value::String(t.to_string()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                (0..VOCAB)
                    .map(|i| Value::I32(if i < 3 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.merges".into(),
            Value::Array(
                MERGES
                    .iter()
                    .map(|t| Value::String(t.to_string()))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
        (
            "tokenizer.ggml.add_bos_token".into(),
            Value::Bool(spec.add_bos),
        ),
        (
            "tokenizer.chat_template".into(),
            Value::String("{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}".into()),
        ),
    ];
    if a == "qwen2" {
        m.push(("tokenizer.ggml.eot_token_id".into(), Value::U32(2)));
    }
    m
}

/// Writes the model as llama.cpp would and gives the HF tensors it was made from.
fn write_gguf(path: &Path, spec: &Spec, meta: &[(String, Value)]) -> Vec<(String, Tensor)> {
    let hf = hf_tensors(spec.arch, spec.tied, 42);
    let mut q = Vec::new();
    for (name, t) in &hf {
        let (gname, role) = gguf_name_and_role(name);
        if spec.omit.contains(&gname) {
            continue;
        }
        let mut t = t.clone();
        if spec.arch == "llama" && role == "q" {
            t = llama_cpp_permute(&t, HEADS);
        }
        if spec.arch == "llama" && role == "k" {
            t = llama_cpp_permute(&t, KV_HEADS);
        }
        let dtype = spec.dtypes.get(role).copied().unwrap_or(GgmlDType::F32);
        q.push((gname, QTensor::quantize(&t, dtype).unwrap()));
    }
    for (gname, t) in &spec.extra {
        q.push((gname.clone(), QTensor::quantize(t, GgmlDType::F32).unwrap()));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &tensor_refs).unwrap();
    hf
}

fn load_safetensors(dir: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn gguf_llama_f32_imports_exactly_and_unpermutes_q_and_k() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-llama.gguf");
    let spec = Spec::new("llama");
    let hf = write_gguf(&file, &spec, &metadata(&spec));
    let out = dir.path().join("hf");
    let summary = gguf::import(&file, &out).unwrap();
    assert_eq!(summary.architecture, Architecture::Llama);
    assert!(summary.tied_embeddings);
    assert_eq!(summary.tensors, hf.len());
    assert_eq!(summary.vocab_size, VOCAB);

    let got = load_safetensors(&out);
    assert_eq!(got.len(), hf.len(), "tensor names: {:?}", got.keys());
    assert!(
        !got.contains_key("lm_head.weight"),
        "a tied head is not written"
    );
    for (name, want) in &hf {
        let t = got.get(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!(t.dims(), want.dims(), "{name}");
        assert_eq!(max_abs_diff(t, want), 0.0, "{name} differs");
    }
    // The permuted rows really differ from HF's order, so the exact match above is the
    // un-permutation at work, not a no-op.
    let q = &hf[hf
        .iter()
        .position(|(n, _)| n.ends_with("0.self_attn.q_proj.weight"))
        .unwrap()]
    .1;
    assert!(max_abs_diff(&llama_cpp_permute(q, HEADS), q) > 0.1);
}

#[test]
fn gguf_llama_quantised_tensors_import_within_quantisation_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-llama-q.gguf");
    let mut spec = Spec::new("llama");
    for (role, dtype) in [
        ("embed", GgmlDType::Q8_0),
        ("q", GgmlDType::Q8_0),
        ("k", GgmlDType::Q4_0),
        ("v", GgmlDType::Q4_0),
        ("o", GgmlDType::Q8_0),
        ("gate", GgmlDType::Q4_0),
        ("up", GgmlDType::F16),
        ("down", GgmlDType::Q8_0),
    ] {
        spec.dtypes.insert(role, dtype);
    }
    let hf = write_gguf(&file, &spec, &metadata(&spec));
    let out = dir.path().join("hf");
    let summary = gguf::import(&file, &out).unwrap();
    assert_eq!(summary.source_dtypes.get("Q8_0"), Some(&(1 + 3 * LAYERS)));
    assert_eq!(summary.source_dtypes.get("Q4_0"), Some(&(3 * LAYERS)));
    assert_eq!(summary.source_dtypes.get("F16"), Some(&LAYERS));
    let line = summary.to_string();
    assert!(
        line.contains("llama model") && line.contains("7 Q8_0") && line.contains("tied"),
        "{line}"
    );

    let got = load_safetensors(&out);
    for (name, want) in &hf {
        let (_, role) = gguf_name_and_role(name);
        let dtype = spec.dtypes.get(role).copied().unwrap_or(GgmlDType::F32);
        let t = &got[name];
        // Blocks run along the input dimension, so quantising the permuted rows and
        // un-permuting equals quantising the HF rows: the import must give exactly what the
        // stored blocks hold.
        assert_eq!(
            max_abs_diff(t, &stored(want, dtype)),
            0.0,
            "{name} ({dtype:?})"
        );
        // And that is the original within the format's error: half a step of the block's scale
        // (amax / 127 for q8_0, amax / 8 for q4_0, with values in [-1, 1]).
        let bound = match dtype {
            GgmlDType::F32 => 0.0,
            GgmlDType::F16 => 1e-3,
            GgmlDType::Q8_0 => 1.0 / 127.0,
            GgmlDType::Q4_0 => 1.0 / 8.0 + 1e-6,
            other => panic!("no bound for {other:?}"),
        };
        let err = max_abs_diff(t, want);
        assert!(err <= bound, "{name} ({dtype:?}): error {err} over {bound}");
        if dtype != GgmlDType::F32 {
            assert!(err > 0.0, "{name}: {dtype:?} should lose some precision");
        }
    }
}

#[test]
fn gguf_qwen2_keeps_row_order_biases_and_untied_head() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-qwen2.gguf");
    let mut spec = Spec::new("qwen2");
    spec.dtypes.insert("head", GgmlDType::Q8_0);
    let hf = write_gguf(&file, &spec, &metadata(&spec));
    let out = dir.path().join("hf");
    let summary = gguf::import(&file, &out).unwrap();
    assert_eq!(summary.architecture, Architecture::Qwen2);
    assert!(!summary.tied_embeddings);
    let got = load_safetensors(&out);
    assert_eq!(got.len(), hf.len());
    for (name, want) in &hf {
        let want = if name == "lm_head.weight" {
            stored(want, GgmlDType::Q8_0)
        } else {
            want.clone()
        };
        assert_eq!(max_abs_diff(&got[name], &want), 0.0, "{name}");
    }

    let config = read_json(&out.join("config.json"));
    assert_eq!(config["architectures"][0], "Qwen2ForCausalLM");
    assert_eq!(config["model_type"], "qwen2");
    assert_eq!(config["tie_word_embeddings"], false);
    assert_eq!(config["use_sliding_window"], false);
    let generation = read_json(&out.join("generation_config.json"));
    assert_eq!(generation["eos_token_id"], 2);
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tok.encode("ab ab1", false).unwrap();
    assert_eq!(enc.get_ids(), &[7, 9, 10]);
}

#[test]
fn gguf_config_and_tokenizer_come_from_the_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-llama.gguf");
    let mut spec = Spec::new("llama");
    spec.add_bos = true;
    write_gguf(&file, &spec, &metadata(&spec));
    let out = dir.path().join("hf");
    let summary = gguf::import(&file, &out).unwrap();
    let names: Vec<_> = summary
        .files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        assert!(names.contains(&f.to_string()), "{f} not written: {names:?}");
    }

    let c = read_json(&out.join("config.json"));
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["hidden_size"], HIDDEN);
    assert_eq!(c["intermediate_size"], FFN);
    assert_eq!(c["num_hidden_layers"], LAYERS);
    assert_eq!(c["num_attention_heads"], HEADS);
    assert_eq!(c["num_key_value_heads"], KV_HEADS);
    assert_eq!(c["head_dim"], HEAD_DIM);
    assert_eq!(c["vocab_size"], VOCAB);
    assert_eq!(c["max_position_embeddings"], 256);
    assert_eq!(c["tie_word_embeddings"], true);
    // The f32 in the file is 9.99999974e-6; HF configs hold the decimal it came from.
    assert_eq!(c["rms_norm_eps"].as_f64(), Some(1e-5));
    assert_eq!(c["rope_theta"].as_f64(), Some(100_000.0));
    assert_eq!(c["bos_token_id"], 1);
    assert_eq!(c["eos_token_id"], 2);

    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert!(tc["chat_template"].as_str().unwrap().contains("im_start"));

    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    // add_bos_token puts the BOS first; special tokens stay whole; merges apply.
    let enc = tok.encode("<|im_start|>ab ab", true).unwrap();
    assert_eq!(enc.get_ids(), &[1, 1, 7, 9]);
    // SmolLM2's pre-tokenizer splits digits one by one: "12" is two tokens.
    let enc = tok.encode("12", false).unwrap();
    assert_eq!(enc.get_ids(), &[10, 11]);
    assert_eq!(tok.decode(&[7, 9], true).unwrap(), "ab ab");
}

#[test]
fn gguf_convert_in_memory_matches_the_written_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-qwen2.gguf");
    let spec = Spec::new("qwen2");
    write_gguf(&file, &spec, &metadata(&spec));
    let converted = gguf::convert(&file).unwrap();
    let out = dir.path().join("hf");
    converted.write(&out).unwrap();
    assert_eq!(read_json(&out.join("config.json")), converted.config);
    let got = load_safetensors(&out);
    for (name, t) in &converted.tensors {
        assert_eq!(max_abs_diff(&got[name], t), 0.0, "{name}");
    }
}

/// Imports and gives the error message, which must name the file.
fn import_error(file: &Path) -> (GgufError, String) {
    let out = file.with_extension("out");
    let err = gguf::import(file, &out).expect_err("the import should fail");
    assert!(
        !out.exists(),
        "a failed import left {} behind",
        out.display()
    );
    let message = err.to_string();
    assert!(
        message.contains(&file.display().to_string()),
        "the message does not name the file: {message}"
    );
    (err, message)
}

#[test]
fn gguf_unsupported_architecture_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("falcon.gguf");
    let spec = Spec::new("llama");
    let mut meta = metadata(&spec);
    meta[0].1 = Value::String("falcon".into());
    write_gguf(&file, &spec, &meta);
    let (err, message) = import_error(&file);
    assert!(
        matches!(err, GgufError::UnsupportedArchitecture { .. }),
        "{message}"
    );
    assert!(message.contains("'falcon'"), "{message}");
}

#[test]
fn gguf_unsupported_quantisation_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("q8_1.gguf");
    let mut spec = Spec::new("llama");
    spec.dtypes.insert("v", GgmlDType::Q8_1);
    write_gguf(&file, &spec, &metadata(&spec));
    let (err, message) = import_error(&file);
    assert!(
        matches!(err, GgufError::UnsupportedQuantisation { .. }),
        "{message}"
    );
    assert!(
        message.contains("attn_v.weight") && message.contains("Q8_1"),
        "{message}"
    );
}

#[test]
fn gguf_unknown_storage_type_code_names_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("iq.gguf");
    let spec = Spec::new("llama");
    write_gguf(&file, &spec, &metadata(&spec));
    // Patch the type code of blk.1.ffn_up.weight in the tensor index to 20 (IQ-family, which
    // candle cannot read): name, then u32 dimension count, u64 per dimension, u32 type.
    let mut bytes = std::fs::read(&file).unwrap();
    let name = b"blk.1.ffn_up.weight";
    let at = bytes
        .windows(name.len())
        .position(|w| w == name)
        .expect("tensor name in the header");
    let dims_at = at + name.len();
    let dims = u32::from_le_bytes(bytes[dims_at..dims_at + 4].try_into().unwrap()) as usize;
    assert_eq!(dims, 2);
    let type_at = dims_at + 4 + 8 * dims;
    bytes[type_at..type_at + 4].copy_from_slice(&20u32.to_le_bytes());
    std::fs::write(&file, bytes).unwrap();
    let (err, message) = import_error(&file);
    assert!(
        matches!(err, GgufError::UnsupportedQuantisation { .. }),
        "{message}"
    );
    assert!(message.contains("blk.1.ffn_up.weight"), "{message}");
}

#[test]
fn gguf_missing_and_misshapen_tensors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("missing.gguf");
    let mut spec = Spec::new("llama");
    spec.omit.push("blk.1.ffn_down.weight".into());
    write_gguf(&file, &spec, &metadata(&spec));
    let (_, message) = import_error(&file);
    assert!(
        message.contains("blk.1.ffn_down.weight") && message.contains("missing"),
        "{message}"
    );

    let file = dir.path().join("misshapen.gguf");
    let mut spec = Spec::new("llama");
    spec.omit.push("blk.0.attn_v.weight".into());
    let wrong = Tensor::zeros((HEAD_DIM, HIDDEN), candle_core::DType::F32, &Device::Cpu).unwrap();
    spec.extra.push(("blk.0.attn_v.weight".into(), wrong));
    write_gguf(&file, &spec, &metadata(&spec));
    let (_, message) = import_error(&file);
    assert!(
        message.contains("blk.0.attn_v.weight") && message.contains("expected [32, 64]"),
        "{message}"
    );

    let file = dir.path().join("unknown.gguf");
    let mut spec = Spec::new("llama");
    let odd = Tensor::zeros(HIDDEN, candle_core::DType::F32, &Device::Cpu).unwrap();
    spec.extra.push(("blk.0.attn_sinks.weight".into(), odd));
    write_gguf(&file, &spec, &metadata(&spec));
    let (_, message) = import_error(&file);
    assert!(
        message.contains("blk.0.attn_sinks.weight") && message.contains("unknown tensor"),
        "{message}"
    );
}

#[test]
fn gguf_missing_metadata_and_bad_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("no-heads.gguf");
    let spec = Spec::new("qwen2");
    let meta: Vec<_> = metadata(&spec)
        .into_iter()
        .filter(|(k, _)| k != "qwen2.attention.head_count")
        .collect();
    write_gguf(&file, &spec, &meta);
    let (err, message) = import_error(&file);
    assert!(matches!(err, GgufError::Metadata { .. }), "{message}");
    assert!(message.contains("qwen2.attention.head_count"), "{message}");

    let file = dir.path().join("spm.gguf");
    let mut meta = metadata(&spec);
    for (k, v) in meta.iter_mut() {
        if k == "tokenizer.ggml.model" {
            *v = Value::String("llama".into());
        }
    }
    write_gguf(&file, &spec, &meta);
    let (err, message) = import_error(&file);
    assert!(matches!(err, GgufError::Tokenizer { .. }), "{message}");

    // A truncated file: the header is intact, the tensor data is cut short.
    let file = dir.path().join("truncated.gguf");
    write_gguf(&file, &spec, &metadata(&spec));
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let (err, message) = import_error(&file);
    assert!(matches!(err, GgufError::Tensor { .. }), "{message}");

    // Not GGUF at all.
    let file = dir.path().join("text.gguf");
    std::fs::write(&file, "this is not a model").unwrap();
    let (err, message) = import_error(&file);
    assert!(matches!(err, GgufError::Format { .. }), "{message}");

    // A missing file.
    let file = dir.path().join("absent.gguf");
    let (err, _) = import_error(&file);
    assert!(matches!(err, GgufError::Io { .. }));
}

#[test]
fn gguf_refuses_to_write_into_a_non_empty_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny.gguf");
    let spec = Spec::new("qwen2");
    write_gguf(&file, &spec, &metadata(&spec));
    let out = dir.path().join("hf");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "user data").unwrap();
    let err = gguf::import(&file, &out).unwrap_err();
    assert!(matches!(err, GgufError::Output { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "user data"
    );
}

/// A plan whose policy is `gguf(FILE)` trains without a separate import: the engine converts the
/// file in memory (weights, config and tokenizer from its metadata), and SFT on a repeated pair
/// lowers the NLL.
#[test]
fn gguf_policy_trains_in_the_engine() {
    use recap_plan::{Dtype, Mix, Model, ModelSpec, Reweight, Source, SourceSpec, Stage, Template};
    use recap_runtime::engine::presets;
    use recap_runtime::engine::{run, ProgressMode, RunOptions};

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tiny-qwen2.gguf");
    let spec = Spec::new("qwen2");
    write_gguf(&file, &spec, &metadata(&spec));
    let data = dir.path().join("pairs.jsonl");
    std::fs::write(
        &data,
        "{\"prompt\": \"ab\", \"answer\": \"ab a\"}\n".repeat(4),
    )
    .unwrap();
    let mut plan = presets::base_plan(Model {
        name: "policy".into(),
        spec: ModelSpec::Gguf {
            file: file.display().to_string().into(),
            tokenizer: None,
            dtype: Dtype::F32,
        },
    });
    plan.sources = vec![Source {
        name: "pairs".into(),
        spec: SourceSpec::Jsonl {
            file: data.display().to_string().into(),
            prompt: Some(Template {
                text: "{prompt}".into(),
                placeholders: vec!["prompt".into()],
            }),
            limit: None,
            shuffle: false,
            system: None,
        },
        fields: [("answer".into(), presets::field("answer"))]
            .into_iter()
            .collect(),
    }];
    let out = dir.path().join("run");
    plan.stages = vec![Stage {
        name: "main".into(),
        rollouts: vec![],
        objectives: vec![presets::sft("recall", "pairs", 8)],
        reweight: Reweight::Uniform,
        mix: Mix::RoundRobin,
        train: presets::train(3, 2, 3e-2, 1, &out.display().to_string()),
        evals: vec![],
    }];
    let opts = RunOptions {
        out: Some(out.clone()),
        progress: ProgressMode::Quiet,
        base_dir: dir.path().to_path_buf(),
        ..RunOptions::default()
    };
    let summary = run(&presets::seal(plan), &opts).unwrap();
    let nll: Vec<f64> = summary
        .metrics
        .iter()
        .map(|m| m["sft_nll"].as_f64().unwrap())
        .collect();
    assert_eq!(nll.len(), 3);
    assert!(nll.iter().all(|v| v.is_finite() && *v > 0.0), "{nll:?}");
    assert!(nll[2] < nll[0], "SFT did not lower the NLL: {nll:?}");
}
