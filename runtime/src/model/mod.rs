//! Trainable decoder-only language models (Qwen2 and Llama families, one implementation
//! parametrised by [`ModelConfig`]). Takes token ids (and optionally an additive attention mask),
//! gives logits for every position; built only from differentiable ops through the
//! [`crate::ops`] facade, so every weight receives its gradient.
//!
//! Weights are f32 master copies held as candle `Var`s in a [`VarMap`] (so `candle_nn::AdamW`
//! trains them in place); a frozen copy ([`Model::frozen_copy`]) holds plain tensors and never
//! builds a graph. Generation uses a separate no-grad decode path ([`crate::generate`]).
//!
//! Public entry points: [`load_hf_dir`], [`Model::tiny`], [`Model::forward`].

mod config;
mod error;
pub mod fast;
pub mod init;
mod load;
pub mod logprob;
mod lora;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{rngs::StdRng, Rng, SeedableRng};

pub use config::{Family, ModelConfig};
pub use error::{ModelError, Result};
pub use load::{load_hf_dir, load_hf_dir_with, read_safetensors, LoadOptions};
pub use lora::{adapter_parameters, LoraSpec, SavedWeight, ADAPTER_FILE};
pub use recap_plan::LoraTarget;

use crate::ops;

/// The weights of one transformer block, under their HF names' roles.
#[derive(Clone)]
pub(crate) struct LayerWeights {
    pub q_w: Tensor,
    pub q_b: Option<Tensor>,
    pub k_w: Tensor,
    pub k_b: Option<Tensor>,
    pub v_w: Tensor,
    pub v_b: Option<Tensor>,
    pub o_w: Tensor,
    pub gate_w: Tensor,
    pub up_w: Tensor,
    pub down_w: Tensor,
    pub input_norm: Tensor,
    pub post_norm: Tensor,
}

/// All weights of a model. `lm_head` is `None` when the head is tied to the embedding.
#[derive(Clone)]
pub(crate) struct Weights {
    pub embed: Tensor,
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor,
    pub lm_head: Option<Tensor>,
}

/// The HF tensor names and shapes a config implies, in a stable order (the order of
/// `Model::named_weights` and of saved checkpoints).
pub fn weight_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = config.hidden_size;
    let d = config.head_dim;
    let q = config.num_attention_heads * d;
    let kv = config.num_key_value_heads * d;
    let i = config.intermediate_size;
    let mut out = vec![(
        "model.embed_tokens.weight".to_string(),
        vec![config.vocab_size, h],
    )];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        out.push((format!("{p}.self_attn.q_proj.weight"), vec![q, h]));
        out.push((format!("{p}.self_attn.k_proj.weight"), vec![kv, h]));
        out.push((format!("{p}.self_attn.v_proj.weight"), vec![kv, h]));
        if config.attention_bias {
            out.push((format!("{p}.self_attn.q_proj.bias"), vec![q]));
            out.push((format!("{p}.self_attn.k_proj.bias"), vec![kv]));
            out.push((format!("{p}.self_attn.v_proj.bias"), vec![kv]));
        }
        out.push((format!("{p}.self_attn.o_proj.weight"), vec![h, q]));
        out.push((format!("{p}.mlp.gate_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.up_proj.weight"), vec![i, h]));
        out.push((format!("{p}.mlp.down_proj.weight"), vec![h, i]));
        out.push((format!("{p}.input_layernorm.weight"), vec![h]));
        out.push((format!("{p}.post_attention_layernorm.weight"), vec![h]));
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !config.tie_word_embeddings {
        out.push(("lm_head.weight".to_string(), vec![config.vocab_size, h]));
    }
    out
}

impl Weights {
    /// Picks the tensors named by `weight_shapes` out of `map` (shapes already checked).
    fn from_map(config: &ModelConfig, map: &HashMap<String, Tensor>) -> candle_core::Result<Self> {
        let get = |name: &str| -> candle_core::Result<Tensor> {
            map.get(name)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{name}` is missing")))
        };
        let opt = |name: &str| -> candle_core::Result<Option<Tensor>> {
            if config.attention_bias {
                get(name).map(Some)
            } else {
                Ok(None)
            }
        };
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for l in 0..config.num_hidden_layers {
            let p = format!("model.layers.{l}");
            layers.push(LayerWeights {
                q_w: get(&format!("{p}.self_attn.q_proj.weight"))?,
                q_b: opt(&format!("{p}.self_attn.q_proj.bias"))?,
                k_w: get(&format!("{p}.self_attn.k_proj.weight"))?,
                k_b: opt(&format!("{p}.self_attn.k_proj.bias"))?,
                v_w: get(&format!("{p}.self_attn.v_proj.weight"))?,
                v_b: opt(&format!("{p}.self_attn.v_proj.bias"))?,
                o_w: get(&format!("{p}.self_attn.o_proj.weight"))?,
                gate_w: get(&format!("{p}.mlp.gate_proj.weight"))?,
                up_w: get(&format!("{p}.mlp.up_proj.weight"))?,
                down_w: get(&format!("{p}.mlp.down_proj.weight"))?,
                input_norm: get(&format!("{p}.input_layernorm.weight"))?,
                post_norm: get(&format!("{p}.post_attention_layernorm.weight"))?,
            });
        }
        Ok(Weights {
            embed: get("model.embed_tokens.weight")?,
            layers,
            norm: get("model.norm.weight")?,
            lm_head: if config.tie_word_embeddings {
                None
            } else {
                Some(get("lm_head.weight")?)
            },
        })
    }

    /// Every weight mapped through `f`, biases and head as present.
    fn map<E>(
        &self,
        f: impl Fn(&Tensor) -> std::result::Result<Tensor, E>,
    ) -> std::result::Result<Self, E> {
        let o = |t: &Option<Tensor>| t.as_ref().map(&f).transpose();
        Ok(Weights {
            embed: f(&self.embed)?,
            layers: self
                .layers
                .iter()
                .map(|w| {
                    Ok(LayerWeights {
                        q_w: f(&w.q_w)?,
                        q_b: o(&w.q_b)?,
                        k_w: f(&w.k_w)?,
                        k_b: o(&w.k_b)?,
                        v_w: f(&w.v_w)?,
                        v_b: o(&w.v_b)?,
                        o_w: f(&w.o_w)?,
                        gate_w: f(&w.gate_w)?,
                        up_w: f(&w.up_w)?,
                        down_w: f(&w.down_w)?,
                        input_norm: f(&w.input_norm)?,
                        post_norm: f(&w.post_norm)?,
                    })
                })
                .collect::<std::result::Result<_, E>>()?,
            norm: f(&self.norm)?,
            lm_head: o(&self.lm_head)?,
        })
    }

    /// Every weight converted to `dtype` (new tensors where the dtype differs).
    pub(crate) fn to_dtype(&self, dtype: DType) -> candle_core::Result<Self> {
        self.map(|t| t.to_dtype(dtype))
    }

    /// The weights with their HF names, in `weight_shapes` order.
    fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed.clone())];
        for (l, w) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{l}");
            out.push((format!("{p}.self_attn.q_proj.weight"), w.q_w.clone()));
            out.push((format!("{p}.self_attn.k_proj.weight"), w.k_w.clone()));
            out.push((format!("{p}.self_attn.v_proj.weight"), w.v_w.clone()));
            if let (Some(qb), Some(kb), Some(vb)) = (&w.q_b, &w.k_b, &w.v_b) {
                out.push((format!("{p}.self_attn.q_proj.bias"), qb.clone()));
                out.push((format!("{p}.self_attn.k_proj.bias"), kb.clone()));
                out.push((format!("{p}.self_attn.v_proj.bias"), vb.clone()));
            }
            out.push((format!("{p}.self_attn.o_proj.weight"), w.o_w.clone()));
            out.push((format!("{p}.mlp.gate_proj.weight"), w.gate_w.clone()));
            out.push((format!("{p}.mlp.up_proj.weight"), w.up_w.clone()));
            out.push((format!("{p}.mlp.down_proj.weight"), w.down_w.clone()));
            out.push((format!("{p}.input_layernorm.weight"), w.input_norm.clone()));
            out.push((
                format!("{p}.post_attention_layernorm.weight"),
                w.post_norm.clone(),
            ));
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), head.clone()));
        }
        out
    }
}

/// Precomputed RoPE tables, (max_positions, head_dim / 2) each, in the compute dtype.
#[derive(Clone)]
pub(crate) struct RopeTables {
    pub cos: Tensor,
    pub sin: Tensor,
}

impl RopeTables {
    fn new(config: &ModelConfig, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let half = config.head_dim / 2;
        let n = config.max_position_embeddings;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        // Computed in f64 on the host so the tables are as exact as the dtype allows.
        for pos in 0..n {
            for i in 0..half {
                let inv_freq = 1.0
                    / config
                        .rope_theta
                        .powf((2 * i) as f64 / config.head_dim as f64);
                let angle = pos as f64 * inv_freq;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let cos = Tensor::from_vec(cos, (n, half), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (n, half), device)?.to_dtype(dtype)?;
        Ok(RopeTables { cos, sin })
    }
}

/// A Qwen2- or Llama-family causal language model.
pub struct Model {
    pub(crate) config: ModelConfig,
    pub(crate) weights: Weights,
    varmap: Option<VarMap>,
    pub(crate) rope: RopeTables,
    pub(crate) compute_dtype: DType,
    device: Device,
    /// LoRA adapters on frozen weights (see [`lora`]): then they are the only `Var`s.
    pub(crate) lora: Option<lora::Lora>,
}

/// `x @ w^T + b` on a 2-D `x` (rows, in); `w` is (out, in) as stored by HF.
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// Additive causal mask (1, 1, t, t): 0 on and below the diagonal, -inf above.
pub fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let mut m = vec![0f32; t * t];
    for i in 0..t {
        for j in i + 1..t {
            m[i * t + j] = f32::NEG_INFINITY;
        }
    }
    Tensor::from_vec(m, (1, 1, t, t), device)?.to_dtype(dtype)
}

/// Additive mask (b, 1, t, t) for left-padded rows: query i sees key j when j <= i and key j is
/// not padding; a padding query sees only itself, so no softmax row is empty. `pad[r][j]` is
/// true where row r holds padding at position j.
pub fn padded_causal_mask(
    pad: &[Vec<bool>],
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let b = pad.len();
    let t = pad.first().map_or(0, Vec::len);
    let mut m = vec![f32::NEG_INFINITY; b * t * t];
    for (r, row) in pad.iter().enumerate() {
        if row.len() != t {
            candle_core::bail!(
                "padded_causal_mask: row {r} has length {}, expected {t}",
                row.len()
            );
        }
        for i in 0..t {
            let base = (r * t + i) * t;
            if row[i] {
                m[base + i] = 0.0;
                continue;
            }
            for j in 0..=i {
                if !row[j] {
                    m[base + j] = 0.0;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, t), device)?.to_dtype(dtype)
}

impl Model {
    /// Builds a model from HF-named tensors (already checked against `weight_shapes`), converted
    /// to `dtype`. Trainable models keep each weight as a `Var` in a `VarMap`.
    pub(crate) fn from_tensors(
        config: ModelConfig,
        tensors: HashMap<String, Tensor>,
        dtype: DType,
        trainable: bool,
        device: &Device,
    ) -> candle_core::Result<Model> {
        let mut map = HashMap::with_capacity(tensors.len());
        let varmap = trainable.then(VarMap::new);
        for (name, t) in tensors {
            let t = t.to_dtype(dtype)?.to_device(device)?;
            let t = match &varmap {
                Some(vm) => {
                    // `Var::from_tensor` copies once into fresh storage; no random init is drawn.
                    let var = Var::from_tensor(&t)?;
                    let tensor = var.as_tensor().clone();
                    vm.data()
                        .lock()
                        .expect("varmap lock")
                        .insert(name.clone(), var);
                    tensor
                }
                None => t.detach(),
            };
            map.insert(name, t);
        }
        let weights = Weights::from_map(&config, &map)?;
        let rope = RopeTables::new(&config, dtype, device)?;
        Ok(Model {
            config,
            weights,
            varmap,
            rope,
            compute_dtype: dtype,
            device: device.clone(),
            lora: None,
        })
    }

    /// A seeded random model of the given shape. Weights come from a host RNG (`StdRng` seeded
    /// with `seed`), so the same seed gives the same model on every run and device: matrices are
    /// N(0, 1/fan_in), norms 1, biases N(0, 0.02^2).
    pub fn tiny(config: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Model> {
        config.validate().map_err(ModelError::Invalid)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = HashMap::new();
        for (name, shape) in weight_shapes(config) {
            let n: usize = shape.iter().product();
            let data: Vec<f32> =
                if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
                    vec![1.0; n]
                } else {
                    let std = if shape.len() == 2 {
                        1.0 / (shape[1] as f64).sqrt()
                    } else {
                        0.02
                    };
                    (0..n).map(|_| (normal(&mut rng) * std) as f32).collect()
                };
            tensors.insert(name, Tensor::from_vec(data, shape, &Device::Cpu)?);
        }
        Ok(Model::from_tensors(
            config.clone(),
            tensors,
            dtype,
            true,
            device,
        )?)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The dtype of the stored weights (the master copy).
    pub fn dtype(&self) -> DType {
        self.weights.embed.dtype()
    }

    /// The dtype the forward pass computes in; weights are converted on the fly when it differs
    /// from the master dtype (bf16 compute on CUDA keeps f32 master weights).
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// Sets the compute dtype (for example `DType::BF16` on CUDA).
    pub fn set_compute_dtype(&mut self, dtype: DType) -> candle_core::Result<()> {
        self.rope = RopeTables::new(&self.config, dtype, &self.device)?;
        self.compute_dtype = dtype;
        Ok(())
    }

    /// Trains in `dtype`: computes in it and, for a trainable model, stores its variables in it
    /// too, so the forward, the backward and the rollouts read bf16 weights with no conversion
    /// per step. The f32 master copies and the f32 AdamW moments then live in the optimiser
    /// ([`crate::train::optim::Optimizer`] keeps a master for every variable stored in a half
    /// dtype, updates it in f32 and writes the rounded copy back), so an update smaller than a
    /// bf16 step is not lost. A frozen model only changes its compute dtype. The engine calls
    /// this for a bf16 policy on CUDA only (the CPU ignores bf16); tests call it on the CPU,
    /// whose candle backend also computes in bf16.
    pub fn train_in(&mut self, dtype: DType) -> candle_core::Result<()> {
        if self.varmap.is_some() && self.dtype() != dtype {
            let tensors = self
                .named_weights()
                .into_iter()
                .map(|(name, t)| (name, t.detach()))
                .collect();
            *self = Model::from_tensors(self.config.clone(), tensors, dtype, true, &self.device)?;
        }
        self.set_compute_dtype(dtype)
    }

    /// The variables an optimiser trains (empty for a frozen model).
    pub fn trainable_vars(&self) -> Vec<Var> {
        match &self.varmap {
            Some(vm) => {
                let data = vm.data().lock().expect("varmap lock");
                let mut named: Vec<(&String, &Var)> = data.iter().collect();
                named.sort_by(|a, b| a.0.cmp(b.0));
                named.into_iter().map(|(_, v)| v.clone()).collect()
            }
            None => Vec::new(),
        }
    }

    /// The `VarMap` of a trainable model.
    pub fn varmap(&self) -> Option<&VarMap> {
        self.varmap.as_ref()
    }

    /// The weights with their HF names (tied head left out), in checkpoint order.
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        self.weights.named()
    }

    /// A deep, frozen copy (the reference model for KL): plain tensors with their own storage,
    /// so optimiser steps on `self` do not change it and its forward never builds a graph. A
    /// LoRA model's weights are frozen already and its adapters start at zero, so its copy is
    /// its base with the adapters off, sharing the weights' storage rather than copying them.
    pub fn frozen_copy(&self) -> candle_core::Result<Model> {
        if self.lora.is_some() {
            let mut base = self.detached_view();
            base.lora = None;
            return Ok(base);
        }
        let mut map = HashMap::new();
        for (name, t) in self.weights.named() {
            map.insert(name, t.detach().copy()?.detach());
        }
        let mut m =
            Model::from_tensors(self.config.clone(), map, self.dtype(), false, &self.device)?;
        m.set_compute_dtype(self.compute_dtype)?;
        Ok(m)
    }

    /// A view of the same weight storage with no `Var`s: its forward builds no graph, and it sees
    /// optimiser updates of `self` (no copy is made). Used by the decode and reference paths.
    pub fn detached_view(&self) -> Model {
        let weights = match self
            .weights
            .map(|t| Ok::<_, std::convert::Infallible>(t.detach()))
        {
            Ok(w) => w,
            Err(never) => match never {},
        };
        Model {
            config: self.config.clone(),
            weights,
            varmap: None,
            rope: self.rope.clone(),
            compute_dtype: self.compute_dtype,
            device: self.device.clone(),
            lora: lora::detached(&self.lora),
        }
    }

    /// A weight in the compute dtype (a no-op view when the dtypes agree).
    pub(crate) fn cw(&self, t: &Tensor) -> candle_core::Result<Tensor> {
        if t.dtype() == self.compute_dtype {
            Ok(t.clone())
        } else {
            t.to_dtype(self.compute_dtype)
        }
    }

    /// Logits for every position: `input_ids` (b, t) u32, `mask` an optional additive mask
    /// broadcastable to (b, heads, t, t) that is used as the whole mask (it must include
    /// causality; see [`padded_causal_mask`]). `None` means plain causal. Gives (b, t, vocab)
    /// in f32 (f64 for an f64 model).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let h = self.forward_hidden(input_ids, mask)?;
        self.logits(&h)
    }

    /// The final-normed hidden states (b, t, hidden) in the compute dtype; project only the
    /// positions you need with [`Model::logits`] (saves the vocab matmul for prompt tokens).
    pub fn forward_hidden(
        &self,
        input_ids: &Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        if t > self.config.max_position_embeddings {
            candle_core::bail!(
                "sequence length {t} exceeds max_position_embeddings {}",
                self.config.max_position_embeddings
            );
        }
        let causal;
        let mask = match mask {
            Some(m) => m.to_dtype(self.compute_dtype)?,
            None => {
                causal = causal_mask(t, self.compute_dtype, &self.device)?;
                causal
            }
        };
        let mut x = self.embed(input_ids)?;
        for l in 0..self.config.num_hidden_layers {
            x = self.block(l, &x, b, t, &mask, None)?;
        }
        let x = ops::rms_norm(&x, &self.cw(&self.weights.norm)?, self.config.rms_norm_eps)?;
        x.reshape((b, t, self.config.hidden_size))
    }

    /// Projects hidden states (..., hidden) onto the vocabulary; gives logits (..., vocab) in f32
    /// (f64 for an f64 model).
    pub fn logits(&self, hidden: &Tensor) -> candle_core::Result<Tensor> {
        let dims = hidden.dims().to_vec();
        let n: usize = dims[..dims.len() - 1].iter().product();
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed);
        let y = linear(
            &hidden.reshape((n, self.config.hidden_size))?,
            &self.cw(head)?,
            None,
        )?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("rank >= 1") = self.config.vocab_size;
        let y = y.reshape(out_dims)?;
        // Half-precision logits are widened for the softmax; f32 and f64 stay as they are.
        match y.dtype() {
            DType::F16 | DType::BF16 => y.to_dtype(DType::F32),
            _ => Ok(y),
        }
    }

    /// Token embeddings of (b, t) ids as (b * t, hidden) rows.
    pub(crate) fn embed(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let ids = input_ids.flatten_all()?;
        self.cw(&self.weights.embed)?.index_select(&ids, 0)
    }

    /// One transformer block on rows `x` (b * t, hidden). When `kv_out` is given, the rotated
    /// keys and the values (b, kv_heads, t, head_dim) are stored there (prefill for generation).
    pub(crate) fn block(
        &self,
        l: usize,
        x: &Tensor,
        b: usize,
        t: usize,
        mask: &Tensor,
        kv_out: Option<&mut Vec<(Tensor, Tensor)>>,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let w = &self.weights.layers[l];
        let (nh, nkv, hd) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let cw = |t: &Tensor| self.cw(t);
        let cwo = |t: &Option<Tensor>| t.as_ref().map(|t| self.cw(t)).transpose();
        let h = ops::rms_norm(x, &cw(&w.input_norm)?, c.rms_norm_eps)?;
        let proj = |t: LoraTarget, x: &Tensor, w: &Tensor, b: &Option<Tensor>| {
            self.proj(l, t, x, &cw(w)?, cwo(b)?.as_ref())
        };
        let q = proj(LoraTarget::QProj, &h, &w.q_w, &w.q_b)?;
        let k = proj(LoraTarget::KProj, &h, &w.k_w, &w.k_b)?;
        let v = proj(LoraTarget::VProj, &h, &w.v_w, &w.v_b)?;
        let q = q.reshape((b, t, nh, hd))?.transpose(1, 2)?;
        let k = k.reshape((b, t, nkv, hd))?.transpose(1, 2)?;
        let v = v.reshape((b, t, nkv, hd))?.transpose(1, 2)?.contiguous()?;
        let q = ops::rope(&q, &self.rope.cos, &self.rope.sin)?;
        let k = ops::rope(&k, &self.rope.cos, &self.rope.sin)?;
        let y = ops::attention(&q, &k, &v, Some(mask), 1.0 / (hd as f64).sqrt())?;
        if let Some(out) = kv_out {
            out.push((k.detach(), v.detach()));
        }
        let y = y.transpose(1, 2)?.reshape((b * t, nh * hd))?;
        let x = (x + proj(LoraTarget::OProj, &y, &w.o_w, &None)?)?;
        let h = ops::rms_norm(&x, &cw(&w.post_norm)?, c.rms_norm_eps)?;
        let gate = proj(LoraTarget::GateProj, &h, &w.gate_w, &None)?;
        let up = proj(LoraTarget::UpProj, &h, &w.up_w, &None)?;
        let m = proj(
            LoraTarget::DownProj,
            &ops::swiglu(&gate, &up)?,
            &w.down_w,
            &None,
        )?;
        x + m
    }
}

/// A standard normal draw by Box-Muller from the host RNG.
pub(crate) fn normal<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}
