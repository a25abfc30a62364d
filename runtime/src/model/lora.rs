//! Low-rank adapters (LoRA): takes a model and the plan's `lora(...)` settings, gives the same
//! model with its own weights frozen and a pair of trainable matrices `A` (rank, in) and `B`
//! (out, rank) on each targeted linear of every block, which then computes
//! `W x + (alpha / rank) B A x`.
//!
//! The adapters are the model's only `Var`s, so the optimiser keeps moments for them alone and
//! the base weights get no gradient on either path (candle's autograd sees plain tensors; the
//! CPU fast path skips their gradients). They start as PEFT starts them: `A` Kaiming-uniform
//! with `a = sqrt(5)` (uniform in `±1/sqrt(in)`) from a host RNG seeded with the plan's seed,
//! `B` zero, so the adapted model equals its base until the first step. Their names are
//! PEFT's (`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`), so that the
//! adapter file a run writes loads in PEFT as it is.
//!
//! The frozen reference of a LoRA policy is its base with the adapters off, holding the very
//! same weight tensors ([`Model::frozen_copy`]); the saved model has `W + (alpha / rank) B A`
//! merged in ([`Model::merged`]).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use rand::{rngs::StdRng, Rng, SeedableRng};
use recap_plan::LoraTarget;
use serde_json::json;

use super::fast::{linear_dw, linear_dx, HostSlice};
use super::{linear, Model, ModelConfig, ModelError, Result};
use crate::ops::kernels::mm;

/// The name of the adapter file beside a saved model, as PEFT names it.
pub const ADAPTER_FILE: &str = "adapter_model.safetensors";

/// The settings of `lora(...)`, as the plan gives them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LoraTarget>,
    pub seed: u64,
}

/// The number of adapter parameters `spec` puts on a model of config `c`: `rank (in + out)`
/// per target and block.
pub fn adapter_parameters(c: &ModelConfig, spec: &LoraSpec) -> usize {
    let per_block: usize = LoraTarget::ALL
        .into_iter()
        .filter(|t| spec.targets.contains(t))
        .map(|t| {
            let (out, inp) = target_shape(c, t);
            spec.rank * (out + inp)
        })
        .sum();
    per_block * c.num_hidden_layers
}

/// One adapter pair: `a` (rank, in), `b` (out, rank), each the tensor of a `Var`.
#[derive(Clone)]
pub(crate) struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
}

/// The adapters of a model: per block, one slot per [`LoraTarget`] (in `LoraTarget::ALL`
/// order), filled for the targeted ones.
#[derive(Clone)]
pub(crate) struct Lora {
    pub spec: LoraSpec,
    pub layers: Vec<[Option<Adapter>; 7]>,
}

/// The position of `t` in `LoraTarget::ALL`.
pub(crate) fn slot(t: LoraTarget) -> usize {
    LoraTarget::ALL.iter().position(|&x| x == t).unwrap_or(0)
}

/// The HF module path of target `t` in block `l` (`model.layers.0.self_attn.q_proj`).
fn module(l: usize, t: LoraTarget) -> String {
    let group = match t {
        LoraTarget::GateProj | LoraTarget::UpProj | LoraTarget::DownProj => "mlp",
        _ => "self_attn",
    };
    format!("model.layers.{l}.{group}.{}", t.name())
}

/// PEFT's name of an adapter matrix (`which` is `A` or `B`).
fn adapter_name(l: usize, t: LoraTarget, which: char) -> String {
    format!("base_model.model.{}.lora_{which}.weight", module(l, t))
}

impl Lora {
    /// `alpha / rank`, the factor of `B A`.
    pub fn scale(&self) -> f64 {
        self.spec.alpha / self.spec.rank as f64
    }

    pub fn get(&self, l: usize, t: LoraTarget) -> Option<&Adapter> {
        self.layers.get(l).and_then(|s| s[slot(t)].as_ref())
    }

    /// The adapters with their PEFT names, `A` then `B` of each, in block and target order.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (l, slots) in self.layers.iter().enumerate() {
            for (t, ad) in LoraTarget::ALL.iter().zip(slots) {
                if let Some(ad) = ad {
                    out.push((adapter_name(l, *t, 'A'), ad.a.clone()));
                    out.push((adapter_name(l, *t, 'B'), ad.b.clone()));
                }
            }
        }
        out
    }

    fn detached(&self) -> Lora {
        let mut l = self.clone();
        for slots in &mut l.layers {
            for ad in slots.iter_mut().flatten() {
                ad.a = ad.a.detach();
                ad.b = ad.b.detach();
            }
        }
        l
    }
}

/// The (out, in) shape of target `t` in a block of a model of config `c`.
fn target_shape(c: &ModelConfig, t: LoraTarget) -> (usize, usize) {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let (q, kv) = (
        c.num_attention_heads * c.head_dim,
        c.num_key_value_heads * c.head_dim,
    );
    match t {
        LoraTarget::QProj => (q, h),
        LoraTarget::KProj | LoraTarget::VProj => (kv, h),
        LoraTarget::OProj => (h, q),
        LoraTarget::GateProj | LoraTarget::UpProj => (i, h),
        LoraTarget::DownProj => (h, i),
    }
}

/// The base weight that target `t` of a block adapts.
fn base_weight(w: &super::LayerWeights, t: LoraTarget) -> &Tensor {
    match t {
        LoraTarget::QProj => &w.q_w,
        LoraTarget::KProj => &w.k_w,
        LoraTarget::VProj => &w.v_w,
        LoraTarget::OProj => &w.o_w,
        LoraTarget::GateProj => &w.gate_w,
        LoraTarget::UpProj => &w.up_w,
        LoraTarget::DownProj => &w.down_w,
    }
}

/// `base + scale b a`, computed in f32 and given in the base's dtype.
fn merge(base: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let delta = (b.matmul(a)? * scale)?;
    (base.to_dtype(DType::F32)? + delta)?.to_dtype(base.dtype())
}

/// One weight of a model being saved: a base weight, merged with its adapter (`W + scale B A`,
/// in f32, stored in the weight's dtype) when it has one.
pub struct SavedWeight {
    base: Tensor,
    adapter: Option<(Tensor, Tensor, f64)>,
}

impl SavedWeight {
    /// The weight as saved, on the model's device; an adapted weight is merged now.
    pub fn make(&self) -> candle_core::Result<Tensor> {
        match &self.adapter {
            None => Ok(self.base.clone()),
            Some((a, b, scale)) => merge(&self.base, a, b, *scale),
        }
    }

    pub fn dims(&self) -> &[usize] {
        self.base.dims()
    }

    pub fn dtype(&self) -> DType {
        self.base.dtype()
    }
}

/// The base weight that target `t` of a block adapts, to replace it.
fn base_weight_mut(w: &mut super::LayerWeights, t: LoraTarget) -> &mut Tensor {
    match t {
        LoraTarget::QProj => &mut w.q_w,
        LoraTarget::KProj => &mut w.k_w,
        LoraTarget::VProj => &mut w.v_w,
        LoraTarget::OProj => &mut w.o_w,
        LoraTarget::GateProj => &mut w.gate_w,
        LoraTarget::UpProj => &mut w.up_w,
        LoraTarget::DownProj => &mut w.down_w,
    }
}

impl Model {
    /// This model with its weights frozen and fresh adapters on `spec`'s targets. The weights
    /// keep their storage (no copy); the adapters are `Var`s of the weights' dtype, the
    /// model's only ones.
    pub fn with_lora(self, spec: LoraSpec) -> Result<Model> {
        if spec.rank == 0 {
            return Err(ModelError::Invalid("LoRA rank must be at least 1".into()));
        }
        if self.lora.is_some() {
            return Err(ModelError::Invalid(
                "the model already has LoRA adapters".into(),
            ));
        }
        let mut base = self.detached_view();
        // The adapters take the weights' dtype: f32, or bf16 for a policy that trains in bf16
        // (`train_in`, on CUDA), whose optimiser keeps f32 masters of them; f64 in the tests.
        let dtype = base.dtype();
        // Frozen weights need no f32 master copy: where the model computes in a half dtype
        // (bf16 on CUDA) they are kept in it, which halves the base's memory.
        if base.compute_dtype != dtype {
            base.weights = base.weights.to_dtype(base.compute_dtype)?;
        }
        let varmap = VarMap::new();
        let mut rng = StdRng::seed_from_u64(spec.seed);
        let mut layers = Vec::with_capacity(base.config.num_hidden_layers);
        for l in 0..base.config.num_hidden_layers {
            let mut slots: [Option<Adapter>; 7] = Default::default();
            for t in LoraTarget::ALL {
                if !spec.targets.contains(&t) {
                    continue;
                }
                let (out, inp) = target_shape(&base.config, t);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..spec.rank * inp)
                    .map(|_| rng.random_range(-bound..bound) as f32)
                    .collect();
                let a = Tensor::from_vec(a, (spec.rank, inp), &base.device)?;
                let a = Var::from_tensor(&a.to_dtype(dtype)?)?;
                let b = Var::zeros((out, spec.rank), dtype, &base.device)?;
                let ad = Adapter {
                    a: a.as_tensor().clone(),
                    b: b.as_tensor().clone(),
                };
                let mut data = varmap.data().lock().expect("varmap lock");
                data.insert(adapter_name(l, t, 'A'), a);
                data.insert(adapter_name(l, t, 'B'), b);
                slots[slot(t)] = Some(ad);
            }
            layers.push(slots);
        }
        base.varmap = Some(varmap);
        base.lora = Some(Lora { spec, layers });
        Ok(base)
    }

    /// The LoRA settings, when the model has adapters.
    pub fn lora_spec(&self) -> Option<&LoraSpec> {
        self.lora.as_ref().map(|l| &l.spec)
    }

    /// The adapters with their PEFT names (empty without LoRA).
    pub fn adapter_tensors(&self) -> Vec<(String, Tensor)> {
        self.lora.as_ref().map(Lora::named).unwrap_or_default()
    }

    /// Sets the adapters from `tensors` (by PEFT name, every adapter present, shapes equal).
    pub fn load_adapters(&self, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let vm = match (&self.lora, &self.varmap) {
            (Some(_), Some(vm)) => vm,
            _ => return Err(ModelError::Invalid("the model has no LoRA adapters".into())),
        };
        let data = vm.data().lock().expect("varmap lock");
        for (name, var) in data.iter() {
            let t = tensors
                .get(name)
                .ok_or_else(|| ModelError::Invalid(format!("the adapter file lacks `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(ModelError::Invalid(format!(
                    "adapter `{name}` has shape {:?}, the model's is {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }

    /// Reads the adapters of `dir`'s [`ADAPTER_FILE`] into the model.
    pub fn load_adapter_file(&self, dir: &Path) -> Result<()> {
        let path = dir.join(ADAPTER_FILE);
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .map_err(|e| ModelError::Invalid(format!("{}: {e}", path.display())))?;
        self.load_adapters(&tensors)
    }

    /// PEFT's `adapter_config.json` for the adapters.
    pub fn adapter_config(&self) -> Option<serde_json::Value> {
        let s = self.lora_spec()?;
        Some(json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": s.rank,
            "lora_alpha": s.alpha,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "init_lora_weights": true,
            "target_modules": s.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "base_model_name_or_path": null,
        }))
    }

    /// The model with `W + (alpha / rank) B A` in place of each adapted weight and no adapters
    /// (computed in f32, stored in the weights' dtype); the weights of untargeted layers are
    /// shared, not copied. Without LoRA, a detached view of the model itself.
    pub fn merged(&self) -> candle_core::Result<Model> {
        let mut m = self.detached_view();
        let Some(lora) = m.lora.take() else {
            return Ok(m);
        };
        let scale = lora.scale();
        for (w, slots) in m.weights.layers.iter_mut().zip(&lora.layers) {
            for (t, ad) in LoraTarget::ALL.iter().zip(slots) {
                let Some(ad) = ad else { continue };
                let base = base_weight_mut(w, *t);
                *base = merge(base, &ad.a, &ad.b, scale)?;
            }
        }
        Ok(m)
    }

    /// The weights of [`Model::merged`] with their HF names, each made only when it is read
    /// ([`SavedWeight::make`]): a writer that takes them one at a time holds one merged weight
    /// at a time, instead of a merged copy of every adapted weight beside the base.
    pub fn saved_weights(&self) -> Vec<(String, SavedWeight)> {
        let m = self.detached_view();
        let mut adapted = HashMap::new();
        if let Some(lora) = &m.lora {
            let scale = lora.scale();
            for (w, slots) in m.weights.layers.iter().zip(&lora.layers) {
                for (t, ad) in LoraTarget::ALL.iter().zip(slots) {
                    if let Some(ad) = ad {
                        let base = base_weight(w, *t);
                        adapted.insert(base.id(), (ad.a.clone(), ad.b.clone(), scale));
                    }
                }
            }
        }
        m.named_weights()
            .into_iter()
            .map(|(name, base)| {
                let adapter = adapted.remove(&base.id());
                (name, SavedWeight { base, adapter })
            })
            .collect()
    }

    /// `x W^T + b` for target `t` of block `l`, plus `scale (x A^T) B^T` when it is adapted;
    /// `w` is the weight already in the compute dtype.
    pub(crate) fn proj(
        &self,
        l: usize,
        t: LoraTarget,
        x: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let y = linear(x, w, b)?;
        let Some((lora, ad)) = self.lora.as_ref().and_then(|lo| Some((lo, lo.get(l, t)?))) else {
            return Ok(y);
        };
        let u = linear(x, &self.cw(&ad.a)?, None)?;
        let d = linear(&u, &self.cw(&ad.b)?, None)?;
        y + (d * lora.scale())?
    }
}

/// Keeps the adapters when a view of the model is made.
pub(crate) fn detached(lora: &Option<Lora>) -> Option<Lora> {
    lora.as_ref().map(Lora::detached)
}

/// One adapter of the CPU fast path, read in place like the base weights.
pub(crate) struct HostAdapter<'a> {
    a: HostSlice<'a>,
    b: HostSlice<'a>,
    rank: usize,
    scale: f32,
}

/// The adapters of one block on the fast path, one slot per target.
pub(crate) type HostAdapters<'a> = [Option<HostAdapter<'a>>; 7];

/// The adapters of every block of `model`, read in place (empty without LoRA).
pub(crate) fn host_adapters(model: &Model) -> candle_core::Result<Vec<HostAdapters<'_>>> {
    let Some(lora) = &model.lora else {
        return Ok(Vec::new());
    };
    let scale = lora.scale() as f32;
    lora.layers
        .iter()
        .map(|slots| {
            let mut out: HostAdapters = Default::default();
            for (o, ad) in out.iter_mut().zip(slots) {
                if let Some(ad) = ad {
                    *o = Some(HostAdapter {
                        a: HostSlice::new(&ad.a)?,
                        b: HostSlice::new(&ad.b)?,
                        rank: lora.spec.rank,
                        scale,
                    });
                }
            }
            Ok(out)
        })
        .collect()
}

/// The gradients of one adapter: (`A`, `B`).
pub(crate) type AdapterGrads = (Vec<f32>, Vec<f32>);

impl HostAdapter<'_> {
    /// `y (rows, out) += scale (x A^T) B^T` for `x` (rows, inp).
    pub(crate) fn forward(&self, x: &[f32], rows: usize, inp: usize, out: usize, y: &mut [f32]) {
        let u = super::fast::linear(x, rows, inp, &self.a, self.rank, None);
        mm(
            (rows, out, self.rank),
            y,
            (out, 1),
            true,
            &u,
            (self.rank, 1),
            &self.b,
            (1, self.rank),
            self.scale,
        );
    }

    /// The backward of [`HostAdapter::forward`] for the gradient `dy` (rows, out) of `y`: adds
    /// the gradient of `x` into `dx` and gives those of `A` and `B`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn backward(
        &self,
        x: &[f32],
        rows: usize,
        inp: usize,
        out: usize,
        dy: &[f32],
        dx: &mut [f32],
    ) -> AdapterGrads {
        let r = self.rank;
        let u = super::fast::linear(x, rows, inp, &self.a, r, None);
        // y = scale u B^T: dB = scale dy^T u, du = scale dy B.
        let mut db = linear_dw(dy, rows, out, &u, r);
        for v in &mut db {
            *v *= self.scale;
        }
        drop(u);
        let mut du = vec![0f32; rows * r];
        linear_dx(dy, rows, out, &self.b, r, &mut du, false);
        for v in &mut du {
            *v *= self.scale;
        }
        // u = x A^T: dA = du^T x, dx += du A.
        let da = linear_dw(&du, rows, r, x, inp);
        linear_dx(&du, rows, r, &self.a, inp, dx, true);
        (da, db)
    }
}

/// The (adapter tensor, gradient) pairs of the fast path's backward, `A` then `B` of each
/// adapter, from the per-block gradients in block order.
pub(crate) fn grad_pairs(
    lora: &Lora,
    grads: Vec<[Option<AdapterGrads>; 7]>,
) -> candle_core::Result<Vec<(Tensor, Tensor)>> {
    let mut out = Vec::new();
    for (slots, gs) in lora.layers.iter().zip(grads) {
        for (ad, g) in slots.iter().zip(gs) {
            if let (Some(ad), Some((da, db))) = (ad, g) {
                out.push((
                    ad.a.clone(),
                    Tensor::from_vec(da, ad.a.shape(), ad.a.device())?,
                ));
                out.push((
                    ad.b.clone(),
                    Tensor::from_vec(db, ad.b.shape(), ad.b.device())?,
                ));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::logprob::{token_logprobs, SequenceBatch};
    use crate::model::{Family, ModelConfig};

    fn config() -> ModelConfig {
        let mut c = ModelConfig::new(Family::Qwen2, 40, 16, 24, 2, 4, 2, false);
        c.max_position_embeddings = 32;
        c.attention_bias = true;
        c
    }

    fn spec(targets: &[LoraTarget]) -> LoraSpec {
        LoraSpec {
            rank: 3,
            alpha: 6.0,
            targets: targets.to_vec(),
            seed: 5,
        }
    }

    fn batch() -> SequenceBatch {
        let p: [&[u32]; 2] = [&[3, 4, 5], &[7, 1]];
        let c: [&[u32]; 2] = [&[9, 2, 11], &[6, 30]];
        SequenceBatch::new(&p, &c, 0, &Device::Cpu).unwrap()
    }

    /// Every adapter's `B` set to seeded values, so that the adapters change the output and
    /// every adapter matrix has a gradient.
    fn perturb(m: &Model, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        let vm = m.varmap().unwrap();
        for (name, var) in vm.data().lock().unwrap().iter() {
            if name.contains("lora_B") {
                let n = var.elem_count();
                let v: Vec<f64> = (0..n).map(|_| rng.random_range(-0.5..0.5)).collect();
                let t = Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap();
                var.set(&t.to_dtype(var.dtype()).unwrap()).unwrap();
            }
        }
    }

    fn lora_model(dtype: DType, targets: &[LoraTarget]) -> Model {
        Model::tiny(&config(), 1, dtype, &Device::Cpu)
            .unwrap()
            .with_lora(spec(targets))
            .unwrap()
    }

    /// The address of a tensor's storage: equal for two tensors that share their memory.
    fn storage_addr(t: &Tensor) -> usize {
        let (s, _) = t.storage_and_layout();
        &*s as *const candle_core::Storage as usize
    }

    #[test]
    fn adapters_are_the_only_variables_and_start_at_the_base() {
        let base = Model::tiny(&config(), 1, DType::F32, &Device::Cpu).unwrap();
        let want = token_logprobs(&base, &batch()).unwrap();
        let m = base
            .with_lora(spec(&[LoraTarget::QProj, LoraTarget::DownProj]))
            .unwrap();
        // 2 layers x 2 targets x (A, B).
        assert_eq!(m.trainable_vars().len(), 8);
        let n: usize = m.trainable_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, adapter_parameters(&config(), m.lora_spec().unwrap()));
        let names: Vec<String> = m.adapter_tensors().into_iter().map(|(n, _)| n).collect();
        assert!(
            names.contains(&"base_model.model.model.layers.1.mlp.down_proj.lora_A.weight".into())
        );
        let (_, a) = &m.adapter_tensors()[0];
        assert_eq!(a.dims(), &[3, 16]);
        // A is uniform in +-1/sqrt(in) and not all zero; B is zero, so the output is the base's.
        let av: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        assert!(av.iter().all(|v| v.abs() <= 0.25) && av.iter().any(|v| *v != 0.0));
        let got = token_logprobs(&m, &batch()).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    /// A model that computes in bf16 keeps its frozen base in bf16 (no f32 master copy) and
    /// its adapters in f32, and still starts from the base's output.
    #[test]
    fn a_half_precision_base_is_held_in_its_compute_dtype() {
        let mut base = Model::tiny(&config(), 1, DType::F32, &Device::Cpu).unwrap();
        base.set_compute_dtype(DType::BF16).unwrap();
        let want = token_logprobs(&base, &batch()).unwrap();
        let m = base.with_lora(spec(&[LoraTarget::VProj])).unwrap();
        assert!(m
            .named_weights()
            .iter()
            .all(|(_, t)| t.dtype() == DType::BF16));
        assert!(m.trainable_vars().iter().all(|v| v.dtype() == DType::F32));
        let got = token_logprobs(&m, &batch()).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn the_reference_of_a_lora_model_shares_its_weights() {
        let m = lora_model(DType::F32, &[LoraTarget::QProj, LoraTarget::VProj]);
        perturb(&m, 2);
        let r = m.frozen_copy().unwrap();
        assert!(r.lora.is_none() && r.varmap().is_none());
        for ((n, a), (_, b)) in m.named_weights().iter().zip(r.named_weights()) {
            assert_eq!(storage_addr(a), storage_addr(&b), "`{n}` was copied");
        }
        // The reference computes the base, without the (now non-zero) adapters.
        let base = Model::tiny(&config(), 1, DType::F32, &Device::Cpu).unwrap();
        let want = token_logprobs(&base, &batch()).unwrap();
        let got = token_logprobs(&r, &batch()).unwrap();
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
        // A full model's frozen copy is a copy: the check above can tell the two apart.
        let full = Model::tiny(&config(), 1, DType::F32, &Device::Cpu).unwrap();
        let copy = full.frozen_copy().unwrap();
        let (_, a) = &full.named_weights()[0];
        let (_, b) = &copy.named_weights()[0];
        assert_ne!(storage_addr(a), storage_addr(b));
    }

    #[test]
    fn the_merged_model_gives_the_adapted_log_probs() {
        let m = lora_model(DType::F32, &LoraTarget::ALL);
        perturb(&m, 3);
        let merged = m.merged().unwrap();
        assert!(merged.lora.is_none());
        let a = token_logprobs(&m, &batch()).unwrap();
        let b = token_logprobs(&merged, &batch()).unwrap();
        let base = Model::tiny(&config(), 1, DType::F32, &Device::Cpu).unwrap();
        let c = token_logprobs(&base, &batch()).unwrap();
        let max = |t: Tensor| {
            t.abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(max((&a - &b).unwrap()) < 1e-5, "merged differs");
        assert!(
            max((&a - &c).unwrap()) > 1e-2,
            "the adapters change nothing"
        );
    }

    /// Autograd's gradient of every adapter entry against central finite differences, in f64.
    #[test]
    fn adapter_gradients_match_finite_differences() {
        let m = lora_model(
            DType::F64,
            &[LoraTarget::KProj, LoraTarget::OProj, LoraTarget::UpProj],
        );
        perturb(&m, 4);
        let b = batch();
        let loss = |m: &Model| -> Tensor {
            let lp = token_logprobs(m, &b).unwrap();
            (lp * b.completion_mask.to_dtype(DType::F64).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grads = loss(&m).backward().unwrap();
        let vars = m.trainable_vars();
        assert_eq!(vars.len(), 12);
        let h = 1e-5;
        for var in &vars {
            let g: Vec<f64> = grads
                .get(var)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let x0: Vec<f64> = var.flatten_all().unwrap().to_vec1().unwrap();
            assert!(g.iter().any(|v| v.abs() > 1e-6), "zero gradient");
            for i in (0..x0.len()).step_by(7) {
                let at = |d: f64| {
                    let mut x = x0.clone();
                    x[i] += d;
                    var.set(&Tensor::from_vec(x, var.shape(), &Device::Cpu).unwrap())
                        .unwrap();
                    loss(&m).to_scalar::<f64>().unwrap()
                };
                let fd = (at(h) - at(-h)) / (2.0 * h);
                assert!(
                    (fd - g[i]).abs() < 1e-6 * (1.0 + fd.abs()),
                    "entry {i}: {fd} vs {}",
                    g[i]
                );
            }
            var.set(&Tensor::from_vec(x0, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
    }

    #[test]
    fn adapters_round_trip_through_their_file_and_config() {
        let m = lora_model(DType::F32, &[LoraTarget::QProj, LoraTarget::GateProj]);
        perturb(&m, 6);
        let dir = tempfile::tempdir().unwrap();
        crate::checkpoint::save_hf_dir(&m, None, dir.path()).unwrap();
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(cfg["r"], 3);
        assert_eq!(cfg["lora_alpha"], 6.0);
        assert_eq!(cfg["target_modules"], json!(["q_proj", "gate_proj"]));
        // A fresh LoRA model (other adapters) loads the file and equals `m` bit for bit.
        let fresh = Model::tiny(&config(), 1, DType::F32, &Device::Cpu)
            .unwrap()
            .with_lora(LoraSpec {
                seed: 9,
                ..spec(&[LoraTarget::QProj, LoraTarget::GateProj])
            })
            .unwrap();
        fresh.load_adapter_file(dir.path()).unwrap();
        for ((n, a), (_, b)) in m.adapter_tensors().iter().zip(fresh.adapter_tensors()) {
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.flatten_all().unwrap().to_vec1().unwrap(),
                b.flatten_all().unwrap().to_vec1().unwrap(),
            );
            assert_eq!(a, b, "`{n}`");
        }
        // The saved model is the merged one, which `hf(...)` loads as a plain model.
        let loaded = crate::model::load_hf_dir(dir.path(), &Device::Cpu).unwrap();
        assert!(loaded.lora_spec().is_none());
        let a = token_logprobs(&m, &batch()).unwrap();
        let b = token_logprobs(&loaded, &batch()).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
