//! Model hyperparameters: takes the `<arch>.*` GGUF metadata and gives the shape facts the
//! import checks tensors against, plus the HF `config.json` and `generation_config.json`.

use serde_json::{json, Value};

use super::metadata::Meta;
use super::names::TensorRole;
use super::tokenizer::TokenIds;
use super::{Architecture, Result};

/// The shape of the model as the GGUF metadata states it.
#[derive(Debug, Clone)]
pub(crate) struct Hyperparams {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub context_length: usize,
    pub rms_eps: f64,
    pub rope_theta: f64,
}

impl Hyperparams {
    /// Reads and checks the hyperparameters. `embedding_rows` is the first dimension of
    /// `token_embd.weight` as the tensor index states it, if the file has one.
    pub(crate) fn read(
        meta: &Meta,
        arch: Architecture,
        embedding_rows: Option<usize>,
    ) -> Result<Self> {
        let p = arch.gguf_name();
        let key = |k: &str| format!("{p}.{k}");
        let usize_of = |k: &str| -> Result<usize> {
            let v = meta.u64(&key(k))?;
            usize::try_from(v).map_err(|_| meta.invalid(&key(k), format!("{v} is too large")))
        };
        let hidden = usize_of("embedding_length")?;
        let intermediate = usize_of("feed_forward_length")?;
        let layers = usize_of("block_count")?;
        let heads = usize_of("attention.head_count")?;
        let kv_heads = match meta.opt_u64(&key("attention.head_count_kv"))? {
            Some(v) => v as usize,
            None => heads,
        };
        let context_length = usize_of("context_length")?;
        let rms_eps = meta
            .opt_f64(&key("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| meta.invalid(&key("attention.layer_norm_rms_epsilon"), "missing"))?;
        // llama.cpp's default when a converter leaves the base out.
        let rope_theta = meta.opt_f64(&key("rope.freq_base"))?.unwrap_or(10_000.0);

        for (k, v) in [
            ("embedding_length", hidden),
            ("feed_forward_length", intermediate),
            ("block_count", layers),
            ("attention.head_count", heads),
            ("attention.head_count_kv", kv_heads),
        ] {
            if v == 0 {
                return Err(meta.invalid(&key(k), "must be positive"));
            }
        }
        if heads % kv_heads != 0 {
            return Err(meta.invalid(
                &key("attention.head_count_kv"),
                format!("{kv_heads} KV heads do not divide {heads} query heads"),
            ));
        }
        let head_dim = match meta.opt_u64(&key("attention.key_length"))? {
            Some(v) => v as usize,
            None => {
                if hidden % heads != 0 {
                    return Err(meta.invalid(
                        &key("attention.head_count"),
                        format!("{heads} heads do not divide the hidden size {hidden}"),
                    ));
                }
                hidden / heads
            }
        };
        if let Some(v) = meta.opt_u64(&key("attention.value_length"))? {
            if v as usize != head_dim {
                return Err(meta.invalid(
                    &key("attention.value_length"),
                    format!(
                        "{v} differs from the key length {head_dim}; HF models need them equal"
                    ),
                ));
            }
        }
        if head_dim % 2 != 0 {
            return Err(meta.invalid(
                &key("attention.head_count"),
                format!("head dimension {head_dim} is odd; RoPE needs it even"),
            ));
        }
        if let Some(dims) = meta.opt_u64(&key("rope.dimension_count"))? {
            if dims as usize != head_dim {
                return Err(meta.invalid(
                    &key("rope.dimension_count"),
                    format!("partial rotary embeddings ({dims} of {head_dim} dimensions) are not supported"),
                ));
            }
        }
        if let Some(kind) = meta.opt_string(&key("rope.scaling.type"))? {
            if kind != "none" {
                return Err(meta.invalid(
                    &key("rope.scaling.type"),
                    format!("RoPE scaling '{kind}' is not supported"),
                ));
            }
        }
        // The embedding's rows are the vocabulary when the metadata does not state it (older
        // converters); when it does, the tensor shape check compares the two.
        let vocab_size = match meta.opt_u64(&key("vocab_size"))? {
            Some(v) => v as usize,
            None => embedding_rows.ok_or_else(|| {
                meta.invalid(
                    &key("vocab_size"),
                    "missing, and there is no token_embd.weight",
                )
            })?,
        };
        Ok(Hyperparams {
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            head_dim,
            vocab_size,
            context_length,
            rms_eps,
            rope_theta,
        })
    }

    /// The HF shape (rows first) a tensor of this role must have.
    pub(crate) fn expected_shape(&self, role: TensorRole) -> Vec<usize> {
        let q_rows = self.heads * self.head_dim;
        let kv_rows = self.kv_heads * self.head_dim;
        match role {
            TensorRole::Embedding | TensorRole::Head => vec![self.vocab_size, self.hidden],
            TensorRole::FinalNorm | TensorRole::AttnNorm | TensorRole::FfnNorm => vec![self.hidden],
            TensorRole::Q => vec![q_rows, self.hidden],
            TensorRole::K | TensorRole::V => vec![kv_rows, self.hidden],
            TensorRole::O => vec![self.hidden, q_rows],
            TensorRole::QBias => vec![q_rows],
            TensorRole::KBias | TensorRole::VBias => vec![kv_rows],
            TensorRole::Gate | TensorRole::Up => vec![self.intermediate, self.hidden],
            TensorRole::Down => vec![self.hidden, self.intermediate],
        }
    }

    /// The HF `config.json` for this model.
    pub(crate) fn config_json(
        &self,
        arch: Architecture,
        tied: bool,
        attention_bias: bool,
        ids: &TokenIds,
    ) -> Value {
        let mut obj = object(json!({
            "architectures": [arch.hf_class()],
            "model_type": arch.hf_model_type(),
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": null,
            "max_position_embeddings": self.context_length,
            "vocab_size": self.vocab_size,
            "tie_word_embeddings": tied,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": true,
            "torch_dtype": "float32",
        }));
        match arch {
            Architecture::Llama => {
                obj.insert("attention_bias".into(), json!(attention_bias));
                obj.insert("mlp_bias".into(), json!(false));
                obj.insert("pretraining_tp".into(), json!(1));
            }
            Architecture::Qwen2 => {
                obj.insert("use_sliding_window".into(), json!(false));
                obj.insert("sliding_window".into(), json!(self.context_length));
                obj.insert("max_window_layers".into(), json!(self.layers));
            }
        }
        if let Some(bos) = ids.bos {
            obj.insert("bos_token_id".into(), json!(bos));
        }
        if let Some(eos) = ids.eos {
            obj.insert("eos_token_id".into(), json!(eos));
        }
        if let Some(pad) = ids.pad {
            obj.insert("pad_token_id".into(), json!(pad));
        }
        Value::Object(obj)
    }
}

/// The HF `generation_config.json`: the special token ids. Generation stops at the EOS token and
/// at the end-of-turn token when the file names a different one, as HF's chat models do.
pub(crate) fn generation_config_json(ids: &TokenIds) -> Value {
    let mut obj = object(json!({ "_from_model_config": true }));
    if let Some(bos) = ids.bos {
        obj.insert("bos_token_id".into(), json!(bos));
    }
    let mut stops: Vec<u32> = ids.eos.into_iter().collect();
    if let Some(eot) = ids.eot {
        if !stops.contains(&eot) {
            stops.push(eot);
        }
    }
    match stops.as_slice() {
        [] => {}
        [one] => {
            obj.insert("eos_token_id".into(), json!(one));
        }
        many => {
            obj.insert("eos_token_id".into(), json!(many));
        }
    }
    if let Some(pad) = ids.pad {
        obj.insert("pad_token_id".into(), json!(pad));
    }
    Value::Object(obj)
}

/// The map inside a JSON object literal (anything else gives an empty map).
pub(crate) fn object(value: Value) -> serde_json::Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}
