//! Model configuration: takes a Hugging Face `config.json` (parsed by a tolerant serde struct:
//! missing keys get the transformers defaults, `sliding_window: null` and `rope_parameters` are
//! accepted), gives a resolved [`ModelConfig`] with every shape the model code needs, and writes
//! it back as an HF `config.json` that transformers loads.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::{ModelError, Result};

/// The model families one implementation covers; they differ only in defaults and in whether
/// the q/k/v projections carry a bias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Qwen2 and Qwen2.5: q/k/v biases.
    Qwen2,
    /// Llama and its descendants (SmolLM2): no biases unless `attention_bias` says so.
    Llama,
}

impl Family {
    /// The `architectures` entry transformers expects for this family.
    pub fn architecture(self) -> &'static str {
        match self {
            Family::Qwen2 => "Qwen2ForCausalLM",
            Family::Llama => "LlamaForCausalLM",
        }
    }

    /// The `model_type` transformers expects for this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Qwen2 => "qwen2",
            Family::Llama => "llama",
        }
    }

    fn from_name(name: &str) -> Option<Family> {
        match name {
            "Qwen2ForCausalLM" | "qwen2" => Some(Family::Qwen2),
            "LlamaForCausalLM" | "llama" => Some(Family::Llama),
            _ => None,
        }
    }
}

/// The resolved shape and numerics of a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have a bias (always for Qwen2, `attention_bias` for Llama).
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
    /// The original `config.json` object, kept so a saved checkpoint carries the keys this
    /// runtime does not interpret (layer_types, use_cache, ...).
    #[serde(skip)]
    pub extra: Map<String, Value>,
}

/// A token id field that HF writes either as one integer or as a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    fn into_vec(self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![id],
            TokenIds::Many(ids) => ids,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// The keys of an HF config this runtime reads; everything optional so that the error for a
/// missing key can name it and say that it has no default.
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    mlp_bias: Option<bool>,
    hidden_act: Option<String>,
    bos_token_id: Option<TokenIds>,
    eos_token_id: Option<TokenIds>,
    pad_token_id: Option<TokenIds>,
}

fn required(value: Option<usize>, key: &str, path: &Path) -> Result<usize> {
    match value {
        Some(0) => Err(ModelError::config(
            path,
            format!("`{key}` must be positive"),
        )),
        Some(v) => Ok(v),
        None => Err(ModelError::config(
            path,
            format!("missing required key `{key}` (it has no default)"),
        )),
    }
}

impl ModelConfig {
    /// Reads and resolves `config.json`.
    pub fn from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        ModelConfig::from_json_str(&text, path)
    }

    /// Resolves a config from JSON text; `path` only names the source in errors.
    pub fn from_json_str(text: &str, path: &Path) -> Result<ModelConfig> {
        let config = ModelConfig::unchecked(text, path)?;
        config.validate().map_err(|m| ModelError::config(path, m))?;
        Ok(config)
    }

    /// Reads `config.json` for its sizes alone, without [`ModelConfig::validate`] (so without
    /// the load bound of this machine's memory): for counting and estimating a model that this
    /// host could not load. Never build a model from it.
    pub fn sizes_from_file(path: &Path) -> Result<ModelConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        ModelConfig::unchecked(&text, path)
    }

    /// The config JSON text gives, resolved but not validated.
    fn unchecked(text: &str, path: &Path) -> Result<ModelConfig> {
        let value: Value = serde_json::from_str(text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let Value::Object(extra) = value else {
            return Err(ModelError::config(
                path,
                "config.json must hold a JSON object",
            ));
        };
        let raw: RawConfig = serde_json::from_value(Value::Object(extra.clone()))
            .map_err(|e| ModelError::config(path, format!("unexpected value: {e}")))?;

        let family = match (&raw.architectures, &raw.model_type) {
            (Some(archs), _) if !archs.is_empty() => {
                let arch = &archs[0];
                Family::from_name(arch).ok_or_else(|| ModelError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    found: arch.clone(),
                })?
            }
            (_, Some(mt)) => {
                Family::from_name(mt).ok_or_else(|| ModelError::UnknownArchitecture {
                    path: path.to_path_buf(),
                    found: mt.clone(),
                })?
            }
            _ => return Err(ModelError::config(
                path,
                "neither `architectures` nor `model_type` is set, so the model family is unknown",
            )),
        };

        if let Some(act) = &raw.hidden_act {
            if act != "silu" {
                return Err(ModelError::config(
                    path,
                    format!("hidden_act {act:?} is not supported (only \"silu\")"),
                ));
            }
        }
        if raw.mlp_bias == Some(true) {
            return Err(ModelError::config(path, "mlp_bias = true is not supported"));
        }
        let rope_type = raw
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_type.clone())
            .or_else(|| {
                raw.rope_scaling.as_ref().and_then(|s| {
                    s.get("rope_type")
                        .or_else(|| s.get("type"))
                        .and_then(|t| t.as_str())
                        .map(str::to_string)
                })
            });
        if let Some(t) = rope_type {
            if t != "default" {
                return Err(ModelError::config(
                    path,
                    format!("rope scaling type {t:?} is not supported (only \"default\")"),
                ));
            }
        }

        let vocab_size = required(raw.vocab_size, "vocab_size", path)?;
        let hidden_size = required(raw.hidden_size, "hidden_size", path)?;
        let intermediate_size = required(raw.intermediate_size, "intermediate_size", path)?;
        let num_hidden_layers = required(raw.num_hidden_layers, "num_hidden_layers", path)?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads", path)?;
        let num_key_value_heads = raw.num_key_value_heads.unwrap_or(num_attention_heads);
        let head_dim = raw.head_dim.unwrap_or(hidden_size / num_attention_heads);
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|p| p.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(10000.0);
        let max_position_embeddings = raw.max_position_embeddings.unwrap_or(match family {
            Family::Qwen2 => 32768,
            Family::Llama => 2048,
        });
        let config = ModelConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            attention_bias: match family {
                Family::Qwen2 => true,
                Family::Llama => raw.attention_bias.unwrap_or(false),
            },
            bos_token_id: raw.bos_token_id.and_then(|t| t.into_vec().first().copied()),
            eos_token_ids: raw.eos_token_id.map(TokenIds::into_vec).unwrap_or_default(),
            pad_token_id: raw.pad_token_id.and_then(|t| t.into_vec().first().copied()),
            extra,
        };
        Ok(config)
    }

    /// Checks the relations between the shapes; gives a message naming the keys at fault.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(format!("`{key}` must be positive"));
            }
        }
        if self
            .num_attention_heads
            .checked_rem(self.num_key_value_heads)
            != Some(0)
        {
            return Err(format!(
                "num_attention_heads ({}) must be a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim & 1 == 1 {
            return Err(format!(
                "head_dim ({}) must be even for RoPE",
                self.head_dim
            ));
        }
        if self.rope_theta.is_nan()
            || self.rope_theta <= 0.0
            || self.rms_norm_eps.is_nan()
            || self.rms_norm_eps < 0.0
        {
            return Err("rope_theta must be positive and rms_norm_eps non-negative".into());
        }
        // Last, so that a message about a zero or a ratio comes first; before any weight is
        // allocated, so that an implausible size is an error rather than an abort.
        super::init::check_size(self, super::init::host_memory_bytes())
    }

    /// A config for a model built in code (`tiny`); HF defaults elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        family: Family,
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        tie_word_embeddings: bool,
    ) -> ModelConfig {
        ModelConfig {
            family,
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads,
            head_dim: hidden_size / num_attention_heads.max(1),
            rms_norm_eps: 1e-6,
            rope_theta: 10000.0,
            max_position_embeddings: 256,
            tie_word_embeddings,
            attention_bias: family == Family::Qwen2,
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
            extra: Map::new(),
        }
    }

    /// The config as HF `config.json` JSON: the original keys, overwritten by the values this
    /// runtime resolved, so transformers rebuilds the same model.
    pub fn to_hf_json(&self) -> Value {
        let mut m = self.extra.clone();
        let mut set = |k: &str, v: Value| {
            m.insert(k.to_string(), v);
        };
        set(
            "architectures",
            Value::from(vec![self.family.architecture()]),
        );
        set("model_type", Value::from(self.family.model_type()));
        set("vocab_size", self.vocab_size.into());
        set("hidden_size", self.hidden_size.into());
        set("intermediate_size", self.intermediate_size.into());
        set("num_hidden_layers", self.num_hidden_layers.into());
        set("num_attention_heads", self.num_attention_heads.into());
        set("num_key_value_heads", self.num_key_value_heads.into());
        set("head_dim", self.head_dim.into());
        set("rms_norm_eps", self.rms_norm_eps.into());
        set("rope_theta", self.rope_theta.into());
        set(
            "max_position_embeddings",
            self.max_position_embeddings.into(),
        );
        set("tie_word_embeddings", self.tie_word_embeddings.into());
        set("hidden_act", "silu".into());
        if self.family == Family::Llama {
            set("attention_bias", self.attention_bias.into());
            set("mlp_bias", false.into());
        }
        // The checkpoint holds f32 master weights; both spellings are written because
        // transformers renamed `torch_dtype` to `dtype`.
        set("torch_dtype", "float32".into());
        set("dtype", "float32".into());
        if let Some(b) = self.bos_token_id {
            set("bos_token_id", b.into());
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => set("eos_token_id", (*one).into()),
            many => set("eos_token_id", Value::from(many.to_vec())),
        }
        if let Some(p) = self.pad_token_id {
            set("pad_token_id", p.into());
        }
        if let Some(Value::Object(rp)) = m.get_mut("rope_parameters") {
            rp.insert("rope_theta".into(), self.rope_theta.into());
        }
        Value::Object(m)
    }

    /// Number of query heads sharing one key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }
}
