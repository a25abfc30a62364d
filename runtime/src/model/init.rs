//! Models from a config alone: takes a resolved [`ModelConfig`] and a seed, gives a model with
//! random weights drawn the way transformers initialises a fresh Qwen2 or Llama model (linear
//! and embedding weights normal with the config's `initializer_range` as standard deviation,
//! biases zero, norms one), so real architectures can be trained and timed with no download.
//! Also the load-time bound on a config's size that every config goes through.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::config::ModelConfig;
use super::error::{ModelError, Result};
use super::{normal, weight_shapes, Model};

/// The largest model a config may describe: far above what one accelerator trains, so a
/// config over it is a typing mistake (`hidden_size = 1e9`), refused before anything is
/// allocated.
pub const MAX_PARAMETERS: u128 = 100_000_000_000;

/// The longest context a config may declare: the RoPE tables are built for every position up
/// front, so `max_position_embeddings = 1e12` would otherwise allocate terabytes.
pub const MAX_POSITIONS: usize = 1 << 24;

/// The standard deviation transformers uses when a config has no `initializer_range`.
const DEFAULT_INITIALIZER_RANGE: f64 = 0.02;

/// Normal draws per chunk of a tensor; each chunk seeks to its own place in the stream, so the
/// weights do not depend on how many threads draw them.
const CHUNK: usize = 1 << 16;

/// The number of parameters the config implies, counted without building the weight list
/// (which a config with `num_hidden_layers = 1e9` would make enormous); saturating, so no
/// config overflows it.
pub fn parameter_count(c: &ModelConfig) -> u128 {
    let mul = |xs: &[usize]| {
        xs.iter()
            .fold(1u128, |acc, &x| acc.saturating_mul(x as u128))
    };
    let h = c.hidden_size;
    let q = mul(&[c.num_attention_heads, c.head_dim]);
    let kv = mul(&[c.num_key_value_heads, c.head_dim]);
    let bias = if c.attention_bias {
        q.saturating_add(kv.saturating_mul(2))
    } else {
        0
    };
    let attention = q
        .saturating_mul(h as u128)
        .saturating_mul(2)
        .saturating_add(kv.saturating_mul(h as u128).saturating_mul(2))
        .saturating_add(bias);
    let mlp = mul(&[3, h, c.intermediate_size]);
    let layer = attention.saturating_add(mlp).saturating_add(mul(&[2, h]));
    let embeddings = mul(&[c.vocab_size, h]);
    let head = if c.tie_word_embeddings { 0 } else { embeddings };
    layer
        .saturating_mul(c.num_hidden_layers as u128)
        .saturating_add(embeddings)
        .saturating_add(head)
        .saturating_add(h as u128)
}

/// The bytes a load allocates for the config: f32 master weights, and the RoPE tables (f64
/// while they are computed, then in the compute dtype).
pub fn load_bytes(c: &ModelConfig) -> u128 {
    let rope = (c.max_position_embeddings as u128)
        .saturating_mul(c.head_dim as u128)
        .saturating_mul(12);
    parameter_count(c).saturating_mul(4).saturating_add(rope)
}

/// The load-time bound on a config's size: at most [`MAX_PARAMETERS`] parameters and
/// [`MAX_POSITIONS`] positions, and the bytes a load allocates within `memory` (this machine's
/// memory, when known). Gives a message that names the bound.
pub fn check_size(c: &ModelConfig, memory: Option<u64>) -> std::result::Result<(), String> {
    let params = parameter_count(c);
    if params > MAX_PARAMETERS {
        return Err(format!(
            "the config implies {} parameters, above the load bound of {} (100 billion); \
             check hidden_size ({}), intermediate_size ({}), num_hidden_layers ({}) and \
             vocab_size ({})",
            params,
            MAX_PARAMETERS,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers,
            c.vocab_size
        ));
    }
    if c.max_position_embeddings > MAX_POSITIONS {
        return Err(format!(
            "max_position_embeddings ({}) is above the load bound of {MAX_POSITIONS} \
             positions (the RoPE tables are built for every position)",
            c.max_position_embeddings
        ));
    }
    let bytes = load_bytes(c);
    if let Some(memory) = memory {
        if bytes > memory as u128 {
            return Err(format!(
                "loading needs {} of f32 weights and RoPE tables ({params} parameters), \
                 more than this machine's {} of memory",
                gib(bytes),
                gib(memory as u128)
            ));
        }
    }
    Ok(())
}

fn gib(bytes: u128) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// This machine's physical memory, from `/proc/meminfo`; `None` where it cannot be read.
pub fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The config's `initializer_range`, or transformers' default when it has none.
pub fn initializer_range(c: &ModelConfig) -> f64 {
    c.extra
        .get("initializer_range")
        .and_then(|v| v.as_f64())
        .filter(|r| r.is_finite() && *r >= 0.0)
        .unwrap_or(DEFAULT_INITIALIZER_RANGE)
}

/// The weights of a freshly initialised model under their HF names, as f32 CPU tensors: the
/// same `seed` gives the same weights bit for bit, on any number of threads.
pub fn init_weights(c: &ModelConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    c.validate().map_err(ModelError::Invalid)?;
    let std = initializer_range(c);
    let mut out = HashMap::new();
    for (stream, (name, shape)) in weight_shapes(c).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with(".bias") {
            vec![0.0; n]
        } else {
            let mut data = vec![0f32; n];
            data.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(chunk, out)| {
                    let mut rng = ChaCha8Rng::seed_from_u64(seed);
                    rng.set_stream(stream as u64);
                    // Each draw takes two u64s, four 32-bit words of the stream.
                    rng.set_word_pos((chunk * CHUNK) as u128 * 4);
                    for x in out {
                        *x = (normal(&mut rng) * std) as f32;
                    }
                });
            data
        };
        out.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
    }
    Ok(out)
}

impl Model {
    /// A trainable model of the config's architecture with seeded random weights (see
    /// [`init_weights`]), its master weights in `dtype` on `device`.
    pub fn from_config_seeded(
        config: &ModelConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Model> {
        let tensors = init_weights(config, seed)?;
        Ok(Model::from_tensors(
            config.clone(),
            tensors,
            dtype,
            true,
            device,
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Family;

    fn small(family: Family, tied: bool) -> ModelConfig {
        ModelConfig::new(family, 40, 16, 24, 2, 4, 2, tied)
    }

    #[test]
    fn counts_what_the_weight_list_holds() {
        for family in [Family::Qwen2, Family::Llama] {
            for tied in [true, false] {
                let c = small(family, tied);
                let listed: usize = weight_shapes(&c)
                    .iter()
                    .map(|(_, s)| s.iter().product::<usize>())
                    .sum();
                assert_eq!(
                    parameter_count(&c),
                    listed as u128,
                    "{family:?} tied={tied}"
                );
            }
        }
    }

    #[test]
    fn same_seed_same_bits_other_seed_other_weights() {
        let c = small(Family::Qwen2, false);
        let a = init_weights(&c, 7).unwrap();
        let b = init_weights(&c, 7).unwrap();
        let other = init_weights(&c, 8).unwrap();
        let bits = |m: &HashMap<String, Tensor>, name: &str| -> Vec<u32> {
            m[name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
                .into_iter()
                .map(f32::to_bits)
                .collect()
        };
        for name in a.keys() {
            assert_eq!(bits(&a, name), bits(&b, name), "{name}");
        }
        let w = "model.layers.1.mlp.up_proj.weight";
        assert_ne!(bits(&a, w), bits(&other, w));
        // Two tensors of one shape draw from different streams.
        assert_ne!(
            bits(&a, "model.layers.0.mlp.up_proj.weight"),
            bits(&a, "model.layers.0.mlp.gate_proj.weight")
        );
    }

    #[test]
    fn chunks_continue_one_stream() {
        // A tensor longer than one chunk equals one sequential draw from its stream, so the
        // chunking (and the thread count) cannot change the weights.
        let mut c = small(Family::Llama, true);
        c.vocab_size = CHUNK / c.hidden_size + 3;
        let w = init_weights(&c, 3).unwrap();
        let got = w["model.embed_tokens.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        rng.set_stream(0);
        let want: Vec<f32> = (0..got.len())
            .map(|_| (normal(&mut rng) * DEFAULT_INITIALIZER_RANGE) as f32)
            .collect();
        assert!(got.len() > CHUNK);
        assert_eq!(got, want);
    }

    #[test]
    fn draws_follow_the_initializer_range_biases_zero_norms_one() {
        let mut c = ModelConfig::new(Family::Qwen2, 64, 128, 256, 1, 4, 2, true);
        c.extra
            .insert("initializer_range".into(), serde_json::json!(0.05));
        let w = init_weights(&c, 1).unwrap();
        let v = w["model.layers.0.mlp.up_proj.weight"]
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.002, "mean {mean}");
        assert!((sd - 0.05).abs() < 0.002, "sd {sd}");
        let all = |name: &str, x: f32| w[name].to_vec1::<f32>().unwrap().iter().all(|&y| y == x);
        assert!(all("model.layers.0.self_attn.q_proj.bias", 0.0));
        assert!(all("model.layers.0.input_layernorm.weight", 1.0));
        assert!(all("model.norm.weight", 1.0));
    }

    #[test]
    fn implausible_sizes_are_refused_with_the_bound_named() {
        let mut c = small(Family::Qwen2, true);
        c.hidden_size = 1_000_000_000;
        c.head_dim = c.hidden_size / c.num_attention_heads;
        let e = check_size(&c, None).unwrap_err();
        assert!(e.contains("load bound"), "{e}");
        let mut c = small(Family::Llama, true);
        c.num_hidden_layers = 1_000_000_000;
        assert!(check_size(&c, None).unwrap_err().contains("parameters"));
        let mut c = small(Family::Llama, true);
        c.max_position_embeddings = 1_000_000_000_000;
        let e = check_size(&c, None).unwrap_err();
        assert!(e.contains("max_position_embeddings"), "{e}");
        // Within the fixed bounds, but not within this (pretend) machine's memory.
        let c = small(Family::Llama, true);
        let e = check_size(&c, Some(1024)).unwrap_err();
        assert!(e.contains("machine's"), "{e}");
        assert!(check_size(&c, Some(1 << 30)).is_ok());
        // Counting saturates instead of overflowing.
        let mut c = small(Family::Qwen2, false);
        c.hidden_size = usize::MAX;
        c.intermediate_size = usize::MAX;
        c.num_hidden_layers = usize::MAX;
        assert_eq!(parameter_count(&c), u128::MAX);
    }
}
