//! Optimisers: take named candle `Var`s and their gradients; give updated weights, the global
//! gradient norm and optimiser state saved to and loaded from safetensors for resume. (The
//! learning-rate schedule is the plan's, in `engine::optim::lr_factor`.)
//!
//! Updates run in f32: a variable stored in another dtype (bf16, f16) gets an f32 master copy
//! that the optimiser updates and writes back rounded, because small updates vanish when added
//! to bf16 weights directly, and candle-nn's AdamW keeps its moments in the variable's dtype.
//! Semantics are PyTorch's (`torch.optim.AdamW`, `torch.optim.SGD`, `clip_grad_norm_`), so runs
//! compare with TRL.

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{
    bail, CpuStorage, DType, Device, InplaceOp2, InplaceOp3, Layout, Result, Storage, Tensor, Var,
};
use rayon::prelude::*;
use recap_plan::Optimizer as PlanOptimizer;

use crate::dist::Collective;

/// The name an optimiser's state file records, so that a state is only loaded into the same
/// kind of optimiser.
fn kind_name(spec: &PlanOptimizer) -> &'static str {
    match spec {
        PlanOptimizer::Adamw { .. } => "adamw",
        PlanOptimizer::Sgd { .. } => "sgd",
    }
}

/// Checks the hyper-parameters of `spec` (the checker refuses most bad values; a plan read
/// from JSON is checked here too). AdamW is Adam with decoupled weight decay
/// (`p -= lr * wd * p` before the Adam step); SGD has PyTorch's momentum (dampening 0).
fn validate(spec: &PlanOptimizer) -> Result<()> {
    let finite_nonneg = |name: &str, v: f64| -> Result<()> {
        if !(v.is_finite() && v >= 0.0) {
            bail!("optimizer: {name} must be finite and >= 0, got {v}");
        }
        Ok(())
    };
    match spec {
        PlanOptimizer::Adamw {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            finite_nonneg("lr", *lr)?;
            finite_nonneg("weight_decay", *weight_decay)?;
            if !(*eps > 0.0 && eps.is_finite()) {
                bail!("optimizer: eps must be > 0, got {eps}");
            }
            for (name, b) in [("beta1", beta1), ("beta2", beta2)] {
                if !(0.0..1.0).contains(b) {
                    bail!("optimizer: {name} must be in [0, 1), got {b}");
                }
            }
        }
        PlanOptimizer::Sgd { lr, momentum } => {
            finite_nonneg("lr", *lr)?;
            finite_nonneg("momentum", *momentum)?;
        }
    }
    Ok(())
}

/// Gradients aligned with an optimiser's parameters (`None` where a parameter got none, or, in
/// a data-parallel job after [`Optimizer::reduce_grads`], where another rank updates it), in
/// the dtype the backward gave them or, once summed across ranks, in f32.
#[derive(Debug, Clone)]
pub struct Grads {
    names: Vec<String>,
    grads: Vec<Option<Tensor>>,
    /// A pending factor on every gradient. Scaling (clipping, averaging) only records it and
    /// the optimiser folds it into its update, so clipping costs no pass over the gradients.
    factor: f64,
}

impl Grads {
    /// The gradient of parameter `i` with any pending scale applied.
    pub fn get(&self, i: usize) -> Result<Option<Tensor>> {
        match self.grads.get(i).and_then(Option::as_ref) {
            Some(g) if self.factor != 1.0 => Ok(Some((g * self.factor)?)),
            Some(g) => Ok(Some(g.clone())),
            None => Ok(None),
        }
    }

    /// The factor pending on every stored gradient.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// Parameters that received a gradient.
    pub fn count(&self) -> usize {
        self.grads.iter().filter(|g| g.is_some()).count()
    }

    /// The L2 norm over every gradient together; an error naming the first tensor whose
    /// gradient is not finite.
    pub fn global_norm(&self) -> Result<f64> {
        let squares = self
            .grads
            .iter()
            .map(|g| g.as_ref().map_or(Ok(0.0), sum_squares))
            .collect::<Result<Vec<f64>>>()?;
        Ok(sum_norm(&self.names, &squares)? * self.factor.abs())
    }

    /// Multiplies every gradient by `factor` (recorded, applied by the optimiser).
    pub fn scale(&mut self, factor: f64) -> Result<()> {
        if !factor.is_finite() {
            bail!("gradient scale factor must be finite, got {factor}");
        }
        self.factor *= factor;
        Ok(())
    }

    /// Applies the pending factor to the stored tensors.
    fn materialise(&mut self) -> Result<()> {
        if self.factor != 1.0 {
            for g in self.grads.iter_mut().flatten() {
                *g = (&*g * self.factor)?;
            }
            self.factor = 1.0;
        }
        Ok(())
    }

    /// PyTorch's `clip_grad_norm_`: scales by `max_norm / (norm + 1e-6)` when that is below 1.
    /// Returns the norm before clipping.
    pub fn clip_global_norm(&mut self, max_norm: f64) -> Result<f64> {
        let norm = self.global_norm()?;
        self.clip_to(norm, max_norm)?;
        Ok(norm)
    }

    /// Clips as [`Grads::clip_global_norm`] does, given the gradients' global `norm` (taken
    /// across the ranks of a job by [`Optimizer::global_norm`]).
    pub fn clip_to(&mut self, norm: f64, max_norm: f64) -> Result<()> {
        if max_norm.is_nan() || max_norm <= 0.0 {
            bail!("gradient clipping: max_norm must be > 0, got {max_norm}");
        }
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            self.scale(coef)?;
        }
        Ok(())
    }
}

/// Sums gradients over micro-batches before one optimiser step.
#[derive(Debug, Default)]
pub struct GradAccumulator {
    sum: Option<Grads>,
    micro_batches: usize,
}

impl GradAccumulator {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn micro_batches(&self) -> usize {
        self.micro_batches
    }

    pub fn add(&mut self, grads: Grads) -> Result<()> {
        self.micro_batches += 1;
        let Some(sum) = self.sum.as_mut() else {
            self.sum = Some(grads);
            return Ok(());
        };
        if sum.names != grads.names {
            bail!("gradient accumulation: micro-batch gradients are for different parameters");
        }
        let mut grads = grads;
        sum.materialise()?;
        grads.materialise()?;
        for (s, g) in sum.grads.iter_mut().zip(grads.grads) {
            *s = match (s.take(), g) {
                (Some(a), Some(b)) => Some((a + b)?),
                (a, b) => a.or(b),
            };
        }
        Ok(())
    }

    /// The summed gradients (losses already divided by the micro-batch count or a global token
    /// count sum correctly); resets the accumulator.
    pub fn take_sum(&mut self) -> Option<Grads> {
        self.micro_batches = 0;
        self.sum.take()
    }

    /// The mean of the gradients over the micro-batches; resets the accumulator.
    pub fn take_mean(&mut self) -> Result<Option<Grads>> {
        let n = self.micro_batches;
        match self.take_sum() {
            Some(mut g) => {
                g.scale(1.0 / n as f64)?;
                Ok(Some(g))
            }
            None => Ok(None),
        }
    }
}

/// Elements per rayon task in the fused CPU updates; below this one thread does the work.
const CHUNK: usize = 1 << 15;

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("fused optimizer update: {what} is not f32");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("fused optimizer update: {what} is not contiguous");
    };
    Ok(&data[start..end])
}

fn contiguous_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout, what: &str) -> Result<&'a mut [f32]> {
    let CpuStorage::F32(data) = s else {
        bail!("fused optimizer update: {what} is not f32");
    };
    let Some((start, end)) = l.contiguous_offsets() else {
        bail!("fused optimizer update: {what} is not contiguous");
    };
    Ok(&mut data[start..end])
}

/// In place on the CPU: `dst = a * dst + b * g` (or `b * g * g` with `square`), one pass and no
/// allocation; the moment updates of AdamW.
struct MomentUpdate {
    a: f32,
    b: f32,
    square: bool,
}

impl InplaceOp2 for MomentUpdate {
    fn name(&self) -> &'static str {
        "recap-moment-update"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let dst = contiguous_f32_mut(s1, l1, "moment")?;
        let g = contiguous_f32(s2, l2, "gradient")?;
        if dst.len() != g.len() {
            bail!(
                "fused optimizer update: moment has {} elements, gradient {}",
                dst.len(),
                g.len()
            );
        }
        let (a, b, square) = (self.a, self.b, self.square);
        dst.par_chunks_mut(CHUNK)
            .zip(g.par_chunks(CHUNK))
            .for_each(|(d, g)| {
                if square {
                    d.iter_mut()
                        .zip(g)
                        .for_each(|(d, &g)| *d = a * *d + b * g * g);
                } else {
                    d.iter_mut().zip(g).for_each(|(d, &g)| *d = a * *d + b * g);
                }
            });
        Ok(())
    }
}

/// In place on the CPU: `p = p * decay - step * m / (sqrt(v) * inv_bc2_sqrt + eps)`, the
/// AdamW parameter update with bias corrections folded into `step` and `inv_bc2_sqrt`.
struct AdamApply {
    decay: f32,
    step: f32,
    inv_bc2_sqrt: f32,
    eps: f32,
}

impl InplaceOp3 for AdamApply {
    fn name(&self) -> &'static str {
        "recap-adamw-apply"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let p = contiguous_f32_mut(s1, l1, "parameter")?;
        let m = contiguous_f32(s2, l2, "first moment")?;
        let v = contiguous_f32(s3, l3, "second moment")?;
        if p.len() != m.len() || p.len() != v.len() {
            bail!("fused optimizer update: parameter and moments differ in size");
        }
        let AdamApply {
            decay,
            step,
            inv_bc2_sqrt,
            eps,
        } = *self;
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks(CHUNK))
            .zip(v.par_chunks(CHUNK))
            .for_each(|((p, m), v)| {
                for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                    *p = *p * decay - step * m / (v.sqrt() * inv_bc2_sqrt + eps);
                }
            });
        Ok(())
    }
}

/// Whether the fused CPU update applies: f32, contiguous, on the CPU.
fn fusable(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
}

/// The square root of the sum of `squares` (one per parameter, in order), or an error naming
/// the first parameter whose square is not finite.
fn sum_norm(names: &[String], squares: &[f64]) -> Result<f64> {
    let mut total = 0.0f64;
    for (name, sq) in names.iter().zip(squares) {
        if !sq.is_finite() {
            bail!("gradient of `{name}` is not finite");
        }
        total += sq;
    }
    Ok(total.sqrt())
}

/// The sum of squares of a tensor, in f32 whatever its dtype, without a temporary on the CPU.
fn sum_squares(t: &Tensor) -> Result<f64> {
    if fusable(t) {
        let (storage, layout) = t.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let data = contiguous_f32(cpu, layout, "gradient")?;
            return Ok(data
                .par_chunks(CHUNK)
                .map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>())
                .sum());
        }
    }
    t.to_dtype(DType::F32)?
        .sqr()?
        .sum_all()?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()
}

#[derive(Debug)]
struct ParamState {
    name: String,
    var: Var,
    /// The f32 master weights when the variable is stored in another dtype.
    master: Option<Tensor>,
    /// AdamW's first moment, or SGD's momentum buffer.
    m: Option<Tensor>,
    /// AdamW's second moment.
    v: Option<Tensor>,
    /// Updates this parameter has received (PyTorch counts per parameter).
    steps: u64,
    /// The data-parallel rank that updates this parameter and holds its state (ZeRO-1; see
    /// [`Optimizer::shard`]); 0 in a job of one rank.
    owner: usize,
}

impl ParamState {
    fn weights(&self) -> Result<Tensor> {
        match &self.master {
            Some(m) => Ok(m.clone()),
            None => self.var.as_tensor().detach().to_dtype(DType::F32),
        }
    }

    fn write(&mut self, p: Tensor) -> Result<()> {
        if self.master.is_some() {
            self.var.set(&p.to_dtype(self.var.dtype())?)?;
            self.master = Some(p);
        } else {
            self.var.set(&p)?;
        }
        Ok(())
    }
}

/// An optimiser over named variables.
#[derive(Debug)]
pub struct Optimizer {
    config: PlanOptimizer,
    params: Vec<ParamState>,
    /// This process's data-parallel rank and the job's world size (see [`Optimizer::shard`]).
    rank: usize,
    world: usize,
    /// Use the fused in-place CPU update where it applies (tests turn it off to check it
    /// against the tensor-op path).
    fused: bool,
}

const META_FORMAT: &str = "recap-optimizer-1";

impl Optimizer {
    pub fn new(config: &PlanOptimizer, params: Vec<(String, Var)>) -> Result<Self> {
        validate(config)?;
        let mut states = Vec::with_capacity(params.len());
        for (i, (name, var)) in params.into_iter().enumerate() {
            if states.iter().any(|s: &ParamState| s.name == name) || name.contains('#') {
                bail!("optimizer: parameter name `{name}` (index {i}) is repeated or contains `#`");
            }
            if !var.dtype().is_float() {
                bail!(
                    "optimizer: parameter `{name}` has non-float dtype {:?}",
                    var.dtype()
                );
            }
            let master = match var.dtype() {
                DType::F32 => None,
                _ => Some(var.as_tensor().detach().to_dtype(DType::F32)?),
            };
            states.push(ParamState {
                name,
                var,
                master,
                m: None,
                v: None,
                steps: 0,
                owner: 0,
            });
        }
        Ok(Optimizer {
            config: config.clone(),
            params: states,
            rank: 0,
            world: 1,
            fused: true,
        })
    }

    pub fn config(&self) -> &PlanOptimizer {
        &self.config
    }

    pub fn param_names(&self) -> Vec<&str> {
        self.params.iter().map(|p| p.name.as_str()).collect()
    }

    /// Chooses the fused in-place CPU update where it applies (the default) or the tensor-op
    /// update everywhere, so that benchmarks can time both.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// The gradients of this optimiser's parameters from a backward pass, in the dtype the
    /// backward gave them: the update reads each in f32 one parameter at a time, so a policy
    /// stored in bf16 never holds an f32 copy of its whole gradient.
    pub fn grads(&self, store: &GradStore) -> Result<Grads> {
        let grads = self
            .params
            .iter()
            .map(|p| store.get(p.var.as_tensor()).cloned())
            .collect();
        Ok(Grads {
            names: self.params.iter().map(|p| p.name.clone()).collect(),
            grads,
            factor: 1.0,
        })
    }

    /// One update at learning rate `lr` (the schedule's value for this step). Parameters
    /// without a gradient are left alone, moments and decay included, as in PyTorch.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        if grads.grads.len() != self.params.len() {
            bail!(
                "optimizer: {} gradients for {} parameters",
                grads.grads.len(),
                self.params.len()
            );
        }
        if !(lr.is_finite() && lr >= 0.0) {
            bail!("optimizer: learning rate must be finite and >= 0, got {lr}");
        }
        let config = self.config.clone();
        let factor = grads.factor;
        let rank = self.rank;
        for (p, g) in self.params.iter_mut().zip(&grads.grads) {
            let Some(g) = g else { continue };
            // Another rank updates this parameter; `gather_params` brings its new value here.
            if p.owner != rank {
                continue;
            }
            // One parameter's gradient in f32 at a time (no copy when it already is).
            let g = &g.to_dtype(DType::F32)?;
            if g.dims() != p.var.dims() {
                bail!(
                    "optimizer: gradient of `{}` has shape {:?}, parameter {:?}",
                    p.name,
                    g.dims(),
                    p.var.dims()
                );
            }
            if let (
                true,
                PlanOptimizer::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                },
            ) = (self.fused, &config)
            {
                let target = p
                    .master
                    .clone()
                    .unwrap_or_else(|| p.var.as_tensor().clone());
                let g = g.contiguous()?;
                if fusable(&target) && fusable(&g) {
                    // Three passes in place (two moments, then the weights), no temporaries:
                    // the tensor-op path below allocates a dozen tensors per parameter.
                    p.steps += 1;
                    let zeros = || Tensor::zeros(target.shape(), DType::F32, target.device());
                    let m = p.m.clone().map_or_else(zeros, Ok)?;
                    let v = p.v.clone().map_or_else(zeros, Ok)?;
                    // The pending gradient factor folds into the moment coefficients.
                    m.inplace_op2(
                        &g,
                        &MomentUpdate {
                            a: *beta1 as f32,
                            b: ((1.0 - beta1) * factor) as f32,
                            square: false,
                        },
                    )?;
                    v.inplace_op2(
                        &g,
                        &MomentUpdate {
                            a: *beta2 as f32,
                            b: ((1.0 - beta2) * factor * factor) as f32,
                            square: true,
                        },
                    )?;
                    let t = p.steps as i32;
                    let (bc1, bc2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
                    target.inplace_op3(
                        &m,
                        &v,
                        &AdamApply {
                            decay: (1.0 - lr * weight_decay) as f32,
                            step: (lr / bc1) as f32,
                            inv_bc2_sqrt: (1.0 / bc2.sqrt()) as f32,
                            eps: *eps as f32,
                        },
                    )?;
                    p.m = Some(m);
                    p.v = Some(v);
                    if p.master.is_some() {
                        p.var.set(&target.to_dtype(p.var.dtype())?)?;
                    }
                    continue;
                }
            }
            p.steps += 1;
            let scaled;
            let g = if factor != 1.0 {
                scaled = (g * factor)?;
                &scaled
            } else {
                g
            };
            let w = p.weights()?;
            let updated = match config {
                PlanOptimizer::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let w = if weight_decay > 0.0 {
                        (w * (1.0 - lr * weight_decay))?
                    } else {
                        w
                    };
                    let m = match &p.m {
                        Some(m) => ((m * beta1)? + (g * (1.0 - beta1))?)?,
                        None => (g * (1.0 - beta1))?,
                    };
                    let v = match &p.v {
                        Some(v) => ((v * beta2)? + (g.sqr()? * (1.0 - beta2))?)?,
                        None => (g.sqr()? * (1.0 - beta2))?,
                    };
                    let t = p.steps as i32;
                    let bc1 = 1.0 - beta1.powi(t);
                    let bc2 = 1.0 - beta2.powi(t);
                    let denom = ((v.sqrt()? / bc2.sqrt())? + eps)?;
                    let w = (w - (m.div(&denom)? * (lr / bc1))?)?;
                    p.m = Some(m);
                    p.v = Some(v);
                    w
                }
                PlanOptimizer::Sgd { momentum, .. } => {
                    let mut d = g.clone();
                    if momentum > 0.0 {
                        let buf = match &p.m {
                            Some(b) => ((b * momentum)? + &d)?,
                            None => d.clone(),
                        };
                        d = buf.clone();
                        p.m = Some(buf);
                    }
                    (w - (d * lr)?)?
                }
            };
            p.write(updated)?;
        }
        Ok(())
    }

    /// Saves moments, master weights and step counts to one safetensors file (written to a
    /// temporary name, then renamed, so a crash never leaves half a file). Under ZeRO-1 this
    /// rank holds only its shard: save what [`Optimizer::gather_state`] gives instead.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_state(&self.config, &self.saved(), path)
    }

    /// This rank's state as a checkpoint holds it (its tensors shared, not copied).
    pub fn saved(&self) -> Vec<SavedParam> {
        self.params
            .iter()
            .map(|p| SavedParam {
                name: p.name.clone(),
                steps: p.steps,
                m: p.m.clone(),
                v: p.v.clone(),
                master: p.master.clone(),
            })
            .collect()
    }

    /// Loads a state saved by [`Optimizer::save`] for the same parameters and optimiser kind,
    /// and writes the saved master weights back into the variables.
    pub fn load(&mut self, path: &Path) -> Result<()> {
        let at = || path.display().to_string();
        let bytes = std::fs::read(path)
            .map_err(|e| candle_core::Error::Msg(format!("reading {}: {e}", at())))?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", at())))?;
        let meta = header.metadata().clone().unwrap_or_default();
        if meta.get("format").map(String::as_str) != Some(META_FORMAT) {
            bail!("{}: not a recap optimizer state", at());
        }
        let kind = meta.get("kind").cloned().unwrap_or_default();
        if kind != kind_name(&self.config) {
            bail!(
                "{}: saved by a `{kind}` optimizer, this run uses `{}`",
                at(),
                kind_name(&self.config)
            );
        }
        let steps: HashMap<String, u64> = serde_json::from_str(meta.get("steps").map_or("", |s| s))
            .map_err(|e| candle_core::Error::Msg(format!("{}: bad step counts: {e}", at())))?;
        let device = self.params.first().map(|p| p.var.device().clone());
        let Some(device) = device else { return Ok(()) };
        let rank = self.rank;
        let mut tensors = candle_core::safetensors::load_buffer(&bytes, &device)?;
        for p in &mut self.params {
            let Some(&s) = steps.get(&p.name) else {
                bail!("{}: no state for parameter `{}`", at(), p.name);
            };
            let mut take = |suffix: &str, dtype: DType| -> Result<Option<Tensor>> {
                let key = format!("{}#{suffix}", p.name);
                match tensors.remove(&key) {
                    Some(t) if t.dims() != p.var.dims() || t.dtype() != dtype => bail!(
                        "{}: tensor `{key}` is {:?} {:?}, expected {:?} {dtype:?}",
                        at(),
                        t.dtype(),
                        t.dims(),
                        p.var.dims()
                    ),
                    other => Ok(other),
                }
            };
            let (m, v, master) = (
                take("m", DType::F32)?,
                take("v", DType::F32)?,
                take("master", DType::F32)?,
            );
            if master.is_some() != (p.var.dtype() != DType::F32) {
                bail!(
                    "{}: parameter `{}` changed dtype since the checkpoint",
                    at(),
                    p.name
                );
            }
            // Every rank writes the saved master into its variable, so all ranks start from
            // the same weights; only the owner keeps the state (ZeRO-1).
            if let Some(master) = &master {
                p.var.set(&master.to_dtype(p.var.dtype())?)?;
            }
            if p.owner == rank {
                p.steps = s;
                p.m = m;
                p.v = v;
                p.master = master;
            }
        }
        if let Some(extra) = tensors.keys().next() {
            bail!(
                "{}: tensor `{extra}` belongs to no parameter of this run",
                at()
            );
        }
        Ok(())
    }
}

/// One parameter's optimiser state as a checkpoint holds it, whatever the world size.
#[derive(Debug, Clone)]
pub struct SavedParam {
    pub name: String,
    pub steps: u64,
    pub m: Option<Tensor>,
    pub v: Option<Tensor>,
    pub master: Option<Tensor>,
}

/// Writes `state` as [`Optimizer::save`] does.
pub fn write_state(config: &PlanOptimizer, state: &[SavedParam], path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut steps = HashMap::new();
    for p in state {
        steps.insert(p.name.clone(), p.steps);
        for (suffix, t) in [("m", &p.m), ("v", &p.v), ("master", &p.master)] {
            if let Some(t) = t {
                tensors.push((format!("{}#{suffix}", p.name), t.clone()));
            }
        }
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), META_FORMAT.to_string());
    meta.insert("kind".to_string(), kind_name(config).to_string());
    meta.insert(
        "steps".to_string(),
        serde_json::to_string(&steps).map_err(|e| candle_core::Error::Msg(e.to_string()))?,
    );
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(meta),
        &tmp,
    )
    .map_err(|e| match e {
        // An IO error keeps its kind, so that a full disk can be told from a bad file.
        safetensors::SafeTensorError::IoError(io) => candle_core::Error::Io(io),
        e => candle_core::Error::Msg(format!("writing {}: {e}", tmp.display())),
    })?;
    std::fs::rename(&tmp, path)
        .map_err(|e| candle_core::Error::Msg(format!("renaming to {}: {e}", path.display())))?;
    Ok(())
}

/// Elements per collective call when parameters or their state move between ranks: large
/// enough that a call's latency is small beside its transfer, small enough that the flat
/// buffer it needs is a small part of a card's memory (128 MiB of f32).
pub const BUCKET_ELEMS: usize = 32 << 20;

/// Consecutive runs of `lens` of at most [`BUCKET_ELEMS`] elements together (an item larger
/// than that is a bucket of its own), as index ranges.
pub fn buckets(lens: &[usize]) -> Vec<std::ops::Range<usize>> {
    buckets_of(lens, BUCKET_ELEMS)
}

/// [`buckets`] of at most `bucket` elements.
fn buckets_of(lens: &[usize], bucket: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, &n) in lens.iter().enumerate() {
        if i > start && size + n > bucket {
            out.push(start..i);
            (start, size) = (i, 0);
        }
        size += n;
    }
    if start < lens.len() {
        out.push(start..lens.len());
    }
    out
}

/// The rank of `world` that updates each parameter of `lens` elements: the parameters, in
/// order, cut into contiguous runs of about equal size (a parameter goes to the rank whose
/// equal share holds its middle element).
pub fn owners_of(lens: &[usize], world: usize) -> Vec<usize> {
    let total: usize = lens.iter().sum();
    let mut start = 0usize;
    lens.iter()
        .map(|&n| {
            let owner = ((start + n / 2) * world / total.max(1)).min(world.saturating_sub(1));
            start += n;
            owner
        })
        .collect()
}

/// The elements of the largest rank's shard when parameters of `lens` elements are cut among
/// `world` ranks as [`owners_of`] cuts them.
pub fn largest_shard_of(lens: &[usize], world: usize) -> usize {
    let mut shards = vec![0usize; world.max(1)];
    for (n, owner) in lens.iter().zip(owners_of(lens, world.max(1))) {
        shards[owner] += n;
    }
    shards.into_iter().max().unwrap_or(0)
}

/// Bytes one rank's update holds for a moment beyond the gradients the backward gave and the
/// optimiser's state, for parameters of `lens` elements stored with `var_bytes` bytes each and
/// the state sharded over `world` ranks, after the training pass has freed its activations:
/// - one rank: a half-dtype parameter's gradient read in f32 and its update rounded back, one
///   parameter at a time (the largest counts); nothing for f32 parameters;
/// - several ranks ([`Optimizer::reduce_grads`]): the rank's summed shard in f32 (the largest
///   rank's), and `staging` f32 copies of one bucket while it is summed (the collective's own,
///   [`crate::dist::staging_buckets`]), besides the rounded write-back of a half-dtype
///   parameter.
pub fn update_bytes(lens: &[usize], var_bytes: usize, world: usize, staging: usize) -> usize {
    let largest = lens.iter().copied().max().unwrap_or(0);
    let half = var_bytes < 4;
    if world <= 1 {
        return if half { largest * (4 + var_bytes) } else { 0 };
    }
    let shard = largest_shard_of(lens, world);
    let bucket = BUCKET_ELEMS.min(lens.iter().sum());
    shard * 4 + staging * bucket * 4 + if half { largest * var_bytes } else { 0 }
}

/// Items `0..owners.len()` of `lens` f32 elements each, every one held by the rank
/// `owners[i]` (non-decreasing, so a bucket's shards arrive in item order): gives every item,
/// flat, on every rank, moved in buckets by `all_gather`. `local(i)` is called for the items
/// this rank owns.
fn gather_owned(
    comm: &mut dyn Collective,
    owners: &[usize],
    lens: &[usize],
    device: &Device,
    local: impl Fn(usize) -> Result<Tensor>,
) -> anyhow::Result<Vec<Tensor>> {
    let rank = comm.rank();
    let mut out = Vec::with_capacity(owners.len());
    for b in buckets(lens) {
        let mine: Vec<Tensor> = b
            .clone()
            .filter(|&i| owners[i] == rank)
            .map(|i| local(i)?.flatten_all()?.to_dtype(DType::F32))
            .collect::<Result<_>>()?;
        let shard = if mine.is_empty() {
            Tensor::zeros(0, DType::F32, device)?
        } else {
            Tensor::cat(&mine, 0)?
        };
        let all = comm.all_gather(&shard)?;
        let mut at = 0;
        for i in b {
            out.push(all.narrow(0, at, lens[i])?);
            at += lens[i];
        }
        anyhow::ensure!(
            at == all.dim(0)?,
            "ranks gathered {} of {at} elements",
            all.dim(0)?
        );
    }
    Ok(out)
}

impl Optimizer {
    /// Shards the optimiser's state across the `world` ranks of a data-parallel job (ZeRO
    /// stage 1): the parameters, in order, are cut into `world` contiguous runs of about equal
    /// size; this rank (`rank`) keeps moments and f32 masters for its run only and updates only
    /// those parameters, and [`Optimizer::gather_params`] gives every rank the others' new
    /// values. Call before the first step.
    pub fn shard(&mut self, rank: usize, world: usize) {
        let owners = self.owners(world);
        for (p, owner) in self.params.iter_mut().zip(owners) {
            p.owner = owner;
            if p.owner != rank {
                p.master = None;
                p.m = None;
                p.v = None;
            }
        }
        (self.rank, self.world) = (rank, world);
    }

    /// Sums the gradients across the ranks of a data-parallel job and keeps, on each rank, the
    /// summed gradient (in f32) of the parameters it updates and no other (ZeRO stage 2: each
    /// rank's losses are already scaled by the global batch's normalisers, so the sum is the
    /// single-process gradient). Gradients move in buckets of at most [`BUCKET_ELEMS`]
    /// elements, a parameter larger than that in several pieces, one `reduce_scatter_sum` per
    /// bucket, in parameter order. A parameter's own gradient is let go once its last piece is
    /// in a bucket, so besides the gradients not yet sent a rank holds its shard and one
    /// bucket's temporaries, never a second whole set. A parameter that got a gradient on some
    /// rank only gets zeros from the others. With one rank nothing moves and every gradient
    /// stays as the backward gave it.
    pub fn reduce_grads(&self, grads: &mut Grads, comm: &mut dyn Collective) -> anyhow::Result<()> {
        self.reduce_grads_in(grads, comm, BUCKET_ELEMS)
    }

    /// [`Optimizer::reduce_grads`] with buckets of at most `bucket` elements.
    fn reduce_grads_in(
        &self,
        grads: &mut Grads,
        comm: &mut dyn Collective,
        bucket: usize,
    ) -> anyhow::Result<()> {
        if comm.world() == 1 {
            return Ok(());
        }
        anyhow::ensure!(
            grads.grads.len() == self.params.len(),
            "{} gradients for {} parameters",
            grads.grads.len(),
            self.params.len()
        );
        anyhow::ensure!(
            (self.rank, self.world) == (comm.rank(), comm.world()),
            "the optimizer is sharded for rank {} of {}, the job is rank {} of {}",
            self.rank,
            self.world,
            comm.rank(),
            comm.world()
        );
        grads.materialise()?;
        let mut present: Vec<f64> = grads
            .grads
            .iter()
            .map(|g| f64::from(u8::from(g.is_some())))
            .collect();
        comm.all_reduce_f64(&mut present)?;
        let on: Vec<usize> = (0..grads.grads.len())
            .filter(|&i| present[i] > 0.0)
            .collect();
        let elems = |j: usize| self.params[on[j]].var.elem_count();
        // The pieces (parameter of `on`, offset, length) every bucket is made of.
        let mut pieces = Vec::new();
        for j in 0..on.len() {
            let mut off = 0;
            loop {
                let len = (elems(j) - off).min(bucket.max(1));
                pieces.push((j, off, len));
                off += len;
                if off == elems(j) {
                    break;
                }
            }
        }
        let mut sources: Vec<Option<Tensor>> = on
            .iter()
            .map(|&i| grads.grads[i].take().map(|g| g.flatten_all()).transpose())
            .collect::<Result<_>>()?;
        let device = self.device();
        let lens: Vec<usize> = pieces.iter().map(|p| p.2).collect();
        let mut mine: Vec<Vec<Tensor>> = vec![Vec::new(); on.len()];
        for b in buckets_of(&lens, bucket) {
            let mut counts = vec![0usize; comm.world()];
            let mut flat = Vec::with_capacity(b.len());
            for &(j, off, len) in &pieces[b.clone()] {
                counts[self.params[on[j]].owner] += len;
                flat.push(match &sources[j] {
                    Some(g) => g.narrow(0, off, len)?.to_dtype(DType::F32)?,
                    None => Tensor::zeros(len, DType::F32, &device)?,
                });
                if off + len == elems(j) {
                    sources[j] = None;
                }
            }
            let flat = Tensor::cat(&flat, 0)?;
            let seg = comm.reduce_scatter_sum(&flat, &counts)?;
            drop(flat);
            let mut at = 0;
            for &(j, off, len) in &pieces[b] {
                let p = &self.params[on[j]];
                if p.owner != self.rank {
                    continue;
                }
                mine[j].push(seg.narrow(0, at, len)?);
                at += len;
                if off + len == elems(j) {
                    let parts = std::mem::take(&mut mine[j]);
                    let g = match parts.as_slice() {
                        [one] => one.clone(),
                        _ => Tensor::cat(&parts, 0)?,
                    };
                    grads.grads[on[j]] = Some(g.reshape(p.var.shape())?);
                }
            }
            anyhow::ensure!(
                at == seg.dim(0)?,
                "rank {} received {} summed elements for {at} of its own",
                self.rank,
                seg.dim(0)?
            );
        }
        Ok(())
    }

    /// The L2 norm of the whole job's summed gradient, the same on every rank, once
    /// [`Optimizer::reduce_grads`] has left each rank its shard: each rank's squares per
    /// parameter, summed across the ranks parameter by parameter (every parameter's square
    /// comes from one rank, the others add zeros), then added in parameter order, so the norm
    /// is bit for bit the norm one process takes of the whole gradient. An error, on every
    /// rank alike, names the first parameter whose gradient is not finite.
    pub fn global_norm(&self, grads: &Grads, comm: &mut dyn Collective) -> anyhow::Result<f64> {
        if comm.world() == 1 {
            return Ok(grads.global_norm()?);
        }
        let mut squares: Vec<f64> = grads
            .grads
            .iter()
            .map(|g| g.as_ref().map_or(Ok(0.0), sum_squares))
            .collect::<Result<_>>()?;
        comm.all_reduce_f64(&mut squares)?;
        Ok(sum_norm(&grads.names, &squares)? * grads.factor.abs())
    }

    /// Elements of the parameters this rank updates (all of them in a job of one rank).
    pub fn owned_elems(&self) -> usize {
        self.params
            .iter()
            .filter(|p| p.owner == self.rank)
            .map(|p| p.var.elem_count())
            .sum()
    }

    /// The rank of `world` that updates each parameter: the parameters, in order, cut into
    /// contiguous runs of about equal size (a parameter goes to the rank whose equal share
    /// holds its middle element).
    fn owners(&self, world: usize) -> Vec<usize> {
        owners_of(&self.lens(), world)
    }

    /// Each parameter's element count, in order.
    fn lens(&self) -> Vec<usize> {
        self.params.iter().map(|p| p.var.elem_count()).collect()
    }

    /// Bytes one rank's update holds for a moment beyond the gradients and the optimiser's
    /// state were the state sharded over `world` ranks on this optimiser's device
    /// ([`update_bytes`] of these parameters).
    pub fn update_bytes(&self, world: usize) -> usize {
        let var_bytes = self
            .params
            .iter()
            .map(|p| p.var.dtype().size_in_bytes())
            .min()
            .unwrap_or(4);
        let staging = crate::dist::staging_buckets(&self.device(), world);
        update_bytes(&self.lens(), var_bytes, world, staging)
    }

    /// The shard of the rank that would update the most elements were the state sharded over
    /// `world` ranks (its optimiser state is the largest of the job's): its elements, and
    /// those of them stored in a half dtype (which get f32 masters).
    pub fn largest_shard(&self, world: usize) -> (usize, usize) {
        let mut per = vec![(0usize, 0usize); world.max(1)];
        for (p, owner) in self.params.iter().zip(self.owners(world.max(1))) {
            let n = p.var.elem_count();
            per[owner].0 += n;
            if p.var.dtype() != DType::F32 {
                per[owner].1 += n;
            }
        }
        per.into_iter().max().unwrap_or_default()
    }

    fn device(&self) -> Device {
        self.params
            .first()
            .map_or(Device::Cpu, |p| p.var.device().clone())
    }

    /// After a sharded [`Optimizer::step`]: every parameter's new value from the rank that
    /// updated it, written into this rank's variables. The owner sends its f32 master (or the
    /// variable itself), so every rank rounds the same f32 value into its variable.
    pub fn gather_params(&mut self, comm: &mut dyn Collective) -> anyhow::Result<()> {
        if comm.world() == 1 {
            return Ok(());
        }
        let owners: Vec<usize> = self.params.iter().map(|p| p.owner).collect();
        let lens = self.lens();
        let device = self.device();
        let params = &self.params;
        let all = gather_owned(comm, &owners, &lens, &device, |i| params[i].weights())?;
        for (p, t) in self.params.iter_mut().zip(all) {
            if p.owner != self.rank {
                p.var
                    .set(&t.reshape(p.var.shape())?.to_dtype(p.var.dtype())?)?;
            }
        }
        Ok(())
    }

    /// The whole optimiser state, gathered from every rank's shard, on the leader (rank 0);
    /// `None` on the other ranks. Every rank must call it. The state is the one an unsharded
    /// optimiser holds, so a checkpoint does not depend on the world size that wrote it.
    pub fn gather_state(
        &self,
        comm: &mut dyn Collective,
    ) -> anyhow::Result<Option<Vec<SavedParam>>> {
        if comm.world() == 1 {
            return Ok(Some(self.saved()));
        }
        let mine = |p: &ParamState| p.owner == self.rank;
        // Per parameter: its step count and which of its tensors exist, from its owner.
        let mut flags: Vec<f64> = self
            .params
            .iter()
            .flat_map(|p| {
                let on = |t: &Option<Tensor>| f64::from(u8::from(mine(p) && t.is_some()));
                let steps = if mine(p) { p.steps as f64 } else { 0.0 };
                [steps, on(&p.m), on(&p.v), on(&p.master)]
            })
            .collect();
        comm.all_reduce_f64(&mut flags)?;
        let device = self.device();
        let mut kinds: Vec<Vec<Option<Tensor>>> = Vec::with_capacity(3);
        for k in 0..3 {
            let present: Vec<usize> = (0..self.params.len())
                .filter(|&i| flags[4 * i + 1 + k] > 0.0)
                .collect();
            let owners: Vec<usize> = present.iter().map(|&i| self.params[i].owner).collect();
            let lens: Vec<usize> = present
                .iter()
                .map(|&i| self.params[i].var.elem_count())
                .collect();
            let got = gather_owned(comm, &owners, &lens, &device, |j| {
                let p = &self.params[present[j]];
                let t = [&p.m, &p.v, &p.master][k];
                t.clone()
                    .ok_or_else(|| candle_core::Error::Msg(format!("`{}` lost its state", p.name)))
            })?;
            let mut column = vec![None; self.params.len()];
            for (&i, t) in present.iter().zip(got) {
                column[i] = Some(t.reshape(self.params[i].var.shape())?);
            }
            kinds.push(column);
        }
        if !comm.is_leader() {
            return Ok(None);
        }
        Ok(Some(
            self.params
                .iter()
                .enumerate()
                .map(|(i, p)| SavedParam {
                    name: p.name.clone(),
                    steps: flags[4 * i] as u64,
                    m: kinds[0][i].clone(),
                    v: kinds[1][i].clone(),
                    master: kinds[2][i].clone(),
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(values: &[f32]) -> Var {
        Var::from_slice(values, values.len(), &Device::Cpu).unwrap()
    }

    /// Gradients of `sum(w * c)` are `c`: a backward pass with chosen gradients.
    fn grads_for(opt: &Optimizer, vars: &[&Var], coefs: &[&[f32]]) -> Grads {
        let mut loss = Tensor::zeros((), DType::F32, &Device::Cpu).unwrap();
        for (v, c) in vars.iter().zip(coefs) {
            let c = Tensor::from_slice(c, c.len(), &Device::Cpu).unwrap();
            let w = v.as_tensor().to_dtype(DType::F32).unwrap();
            loss = (loss + (w * c).unwrap().sum_all().unwrap()).unwrap();
        }
        opt.grads(&loss.backward().unwrap()).unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    fn adamw(lr: f64, weight_decay: f64) -> PlanOptimizer {
        PlanOptimizer::Adamw {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    #[test]
    fn adamw_two_steps_by_hand() {
        let w = var(&[1.0, -2.0]);
        let mut opt = Optimizer::new(&adamw(0.1, 0.01), vec![("w".into(), w.clone())]).unwrap();
        let (g1, g2) = ([0.5f64, -0.1], [0.2f64, 0.3]);
        let mut p = [1.0f64, -2.0];
        let (mut m, mut v) = ([0.0f64; 2], [0.0f64; 2]);
        for (t, g) in [(1, g1), (2, g2)] {
            let gf = [g[0] as f32, g[1] as f32];
            let grads = grads_for(&opt, &[&w], &[&gf]);
            opt.step(&grads, 0.1).unwrap();
            // PyTorch AdamW, written out.
            for k in 0..2 {
                let gk = gf[k] as f64;
                p[k] *= 1.0 - 0.1 * 0.01;
                m[k] = 0.9 * m[k] + 0.1 * gk;
                v[k] = 0.999 * v[k] + 0.001 * gk * gk;
                let bc1 = 1.0 - 0.9f64.powi(t);
                let bc2 = 1.0 - 0.999f64.powi(t);
                p[k] -= 0.1 / bc1 * m[k] / ((v[k] / bc2).sqrt() + 1e-8);
            }
            let got = values(&w);
            if t == 1 {
                // Bias correction makes the first step lr * g / |g|: 0.999 - 0.1 and
                // -2 * 0.999 + 0.1, to within eps.
                assert!((got[0] - 0.899).abs() < 1e-6 && (got[1] + 1.898).abs() < 1e-6);
            }
            for k in 0..2 {
                assert!(
                    (got[k] as f64 - p[k]).abs() < 1e-6,
                    "step {t}: {got:?} vs {p:?}"
                );
            }
        }
    }

    /// The fused CPU update and the tensor-op update agree, bf16 master weights included.
    #[test]
    fn fused_and_tensor_paths_agree() {
        let run = |fused: bool| {
            let w = Var::from_tensor(
                &Tensor::arange(0f32, 70_000f32, &Device::Cpu)
                    .unwrap()
                    .affine(1e-4, -3.0)
                    .unwrap(),
            )
            .unwrap();
            let h = Var::from_tensor(
                &Tensor::new(&[0.5f32, -0.25], &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap(),
            )
            .unwrap();
            let mut opt = Optimizer::new(
                &adamw(0.01, 0.1),
                vec![("w".into(), w.clone()), ("h".into(), h.clone())],
            )
            .unwrap();
            opt.fused = fused;
            for step in 0..3 {
                let c: Vec<f32> = (0..70_000)
                    .map(|i| ((i * 7 + step * 13) % 11) as f32 * 0.1 - 0.5)
                    .collect();
                let mut g = grads_for(&opt, &[&w, &h], &[&c, &c[..2]]);
                // Clipping leaves a pending factor that both paths must fold in.
                assert!(g.clip_global_norm(1.0).unwrap() > 1.0);
                opt.step(&g, 0.01).unwrap();
            }
            (values(&w), values(&h))
        };
        let (fw, fh) = run(true);
        let (tw, th) = run(false);
        for (a, b) in fw.iter().zip(&tw) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        assert_eq!(fh, th);
    }

    #[test]
    fn sgd_momentum_and_parameters_without_gradients() {
        let a = var(&[1.0]);
        let b = var(&[5.0]);
        let cfg = PlanOptimizer::Sgd {
            lr: 0.1,
            momentum: 0.9,
        };
        let mut opt =
            Optimizer::new(&cfg, vec![("a".into(), a.clone()), ("b".into(), b.clone())]).unwrap();
        // Only `a` is in the loss, so `b` gets no gradient and must not move.
        let g = grads_for(&opt, &[&a], &[&[2.0]]);
        assert_eq!(g.count(), 1);
        opt.step(&g, 0.1).unwrap();
        // buf = 2; a = 1 - 0.1 * 2.
        assert!((values(&a)[0] - 0.8).abs() < 1e-7);
        let g = grads_for(&opt, &[&a], &[&[1.0]]);
        opt.step(&g, 0.1).unwrap();
        // buf = 0.9 * 2 + 1 = 2.8; a = 0.8 - 0.28.
        assert!((values(&a)[0] - 0.52).abs() < 1e-6);
        assert_eq!(values(&b), vec![5.0]);
    }

    #[test]
    fn bf16_variables_keep_f32_master_weights() {
        let w = Var::from_tensor(
            &Tensor::new(&[1.0f32], &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let cfg = PlanOptimizer::Sgd {
            lr: 1e-4,
            momentum: 0.0,
        };
        let mut opt = Optimizer::new(&cfg, vec![("w".into(), w.clone())]).unwrap();
        for _ in 0..100 {
            let g = grads_for(&opt, &[&w], &[&[1.0]]);
            opt.step(&g, 1e-4).unwrap();
        }
        // 1 - 1e-4 rounds back to 1 in bf16, so without a master copy w would never move.
        let got = values(&w)[0];
        assert!((got - 0.99).abs() < 0.004, "{got}");
        assert_eq!(w.dtype(), DType::BF16);
    }

    /// How a model trains in [`bf16_training_keeps_f32_masters_tracking_the_f32_run`].
    #[derive(Clone, Copy, PartialEq)]
    enum Precision {
        /// f32 weights, f32 compute.
        F32,
        /// bf16 variables and compute, f32 masters and moments in the optimiser.
        Bf16Masters,
        /// bf16 compute and weights rounded to bf16 after every update: what training bf16
        /// weights without master copies does.
        PureBf16,
    }

    /// The f32 weights of each named variable (the masters where the optimiser keeps them)
    /// after `steps` AdamW steps on a tiny model, all runs starting from the same bf16-rounded
    /// weights and minimising the same completion log-likelihood.
    fn train_tiny(precision: Precision, steps: usize) -> Vec<(String, Vec<f32>)> {
        train_tiny_with(precision, steps, None)
    }

    /// [`train_tiny`], with LoRA adapters of `lora` added after the precision is set (as the
    /// engine adds them to a policy built in its dtype): only the adapters train.
    fn train_tiny_with(
        precision: Precision,
        steps: usize,
        lora: Option<crate::model::LoraSpec>,
    ) -> Vec<(String, Vec<f32>)> {
        use crate::model::logprob::{token_logprobs, SequenceBatch};
        use crate::model::{Family, Model, ModelConfig};
        let dev = Device::Cpu;
        let mut cfg = ModelConfig::new(Family::Qwen2, 56, 32, 64, 2, 4, 2, true);
        cfg.max_position_embeddings = 64;
        let mut model = Model::tiny(&cfg, 3, DType::F32, &dev).unwrap();
        let named = |m: &Model| -> Vec<(String, Var)> {
            let data = m.varmap().unwrap().data().lock().unwrap();
            let mut v: Vec<_> = data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let round = |vars: &[(String, Var)]| {
            for (_, v) in vars {
                let r = v.as_tensor().to_dtype(DType::BF16).unwrap();
                v.set(&r.to_dtype(DType::F32).unwrap()).unwrap();
            }
        };
        round(&named(&model));
        match precision {
            Precision::F32 => {}
            Precision::Bf16Masters => model.train_in(DType::BF16).unwrap(),
            Precision::PureBf16 => model.set_compute_dtype(DType::BF16).unwrap(),
        }
        if let Some(spec) = lora {
            let base_dtype = model.dtype();
            model = model.with_lora(spec).unwrap();
            // The frozen base keeps the dtype it was trained in (bf16 after `train_in`, which
            // halves its memory); the adapters are the model's only variables, in that dtype.
            assert_eq!(model.weights.layers[0].q_w.dtype(), base_dtype);
            assert!(named(&model)
                .iter()
                .all(|(n, v)| n.contains("lora_") && v.dtype() == base_dtype));
        }
        let vars = named(&model);
        let mut opt = Optimizer::new(&adamw(2e-4, 0.0), vars.clone()).unwrap();
        let prompts: [&[u32]; 2] = [&[5, 9, 12, 3], &[7, 1]];
        let completions: [&[u32]; 2] = [&[11, 4, 20], &[30, 2, 8, 9]];
        let batch = SequenceBatch::new(&prompts, &completions, 0, &dev).unwrap();
        for _ in 0..steps {
            let lp = token_logprobs(&model, &batch).unwrap();
            let loss = (lp * &batch.completion_mask)
                .unwrap()
                .sum_all()
                .unwrap()
                .neg()
                .unwrap();
            let g = opt.grads(&loss.backward().unwrap()).unwrap();
            opt.step(&g, 2e-4).unwrap();
            if precision == Precision::PureBf16 {
                round(&vars);
            }
        }
        opt.params
            .iter()
            .map(|p| {
                if precision == Precision::Bf16Masters {
                    // The variable holds the master rounded to bf16.
                    let master = p.master.as_ref().expect("a bf16 variable has a master");
                    assert_eq!(p.var.dtype(), DType::BF16);
                    // bf16 values are exact in f32, so the comparison is exact.
                    let as_f32 = |t: &Tensor| -> Vec<f32> {
                        let t = t.to_dtype(DType::F32).unwrap();
                        t.flatten_all().unwrap().to_vec1().unwrap()
                    };
                    let rounded = master.to_dtype(DType::BF16).unwrap();
                    assert_eq!(as_f32(p.var.as_tensor()), as_f32(&rounded));
                }
                let w = p.weights().unwrap().flatten_all().unwrap();
                (p.name.clone(), w.to_vec1().unwrap())
            })
            .collect()
    }

    #[test]
    fn bf16_training_keeps_f32_masters_tracking_the_f32_run() {
        let steps = 6;
        let start = train_tiny(Precision::F32, 0);
        let runs = [Precision::F32, Precision::Bf16Masters, Precision::PureBf16]
            .map(|p| train_tiny(p, steps));
        // Distances between the runs' updates (weights minus the common start), all variables.
        let dist = |a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]| -> f64 {
            let mut sum = 0.0f64;
            for ((na, wa), (nb, wb)) in a.iter().zip(b) {
                assert_eq!(na, nb);
                for (x, y) in wa.iter().zip(wb) {
                    sum += ((x - y) as f64).powi(2);
                }
            }
            sum.sqrt()
        };
        let [f32_run, masters, pure] = &runs;
        let moved = dist(f32_run, &start);
        let tracking = dist(masters, f32_run) / moved;
        let lost = dist(pure, f32_run) / moved;
        println!("update {moved:e}; masters off by {tracking:.3}, pure bf16 off by {lost:.3}");
        assert!(moved > 0.0);
        assert!(
            tracking < 0.2,
            "the masters stray from the f32 run by {tracking}"
        );
        assert!(
            lost > 0.5,
            "pure bf16 updates should lose most steps, off by {lost}"
        );
        assert!(dist(masters, pure) / moved > 0.5);
    }

    /// What CUDA runs for a bf16 LoRA policy (`train_in(BF16)`, then adapters), on the CPU:
    /// the adapters are bf16 variables holding their f32 masters rounded, the base stays frozen
    /// in bf16, and the masters track the adapters of the same run in f32.
    #[test]
    fn bf16_lora_adapters_keep_f32_masters_tracking_the_f32_run() {
        use crate::model::{LoraSpec, LoraTarget};
        let spec = || LoraSpec {
            rank: 4,
            alpha: 8.0,
            targets: LoraTarget::ALL.to_vec(),
            seed: 7,
        };
        let steps = 6;
        // The bf16 run's adapters start from the f32 run's rounded to bf16, so the runs are
        // compared by their updates (each run's adapters minus its own start).
        let update = |precision: Precision| -> Vec<(String, Vec<f32>)> {
            let start = train_tiny_with(precision, 0, Some(spec()));
            let end = train_tiny_with(precision, steps, Some(spec()));
            assert!(!start.is_empty() && start.iter().all(|(n, _)| n.contains("lora_")));
            end.into_iter()
                .zip(start)
                .map(|((n, e), (_, s))| (n, e.iter().zip(&s).map(|(e, s)| e - s).collect()))
                .collect()
        };
        let (f32_run, masters) = (update(Precision::F32), update(Precision::Bf16Masters));
        let norm = |a: &[(String, Vec<f32>)]| -> f64 {
            let sum: f64 = a
                .iter()
                .flat_map(|(_, w)| w)
                .map(|&x| (x as f64).powi(2))
                .sum();
            sum.sqrt()
        };
        let apart: Vec<(String, Vec<f32>)> = f32_run
            .iter()
            .zip(&masters)
            .map(|((na, a), (nb, b))| {
                assert_eq!(na, nb);
                (na.clone(), a.iter().zip(b).map(|(a, b)| a - b).collect())
            })
            .collect();
        let moved = norm(&f32_run);
        let tracking = norm(&apart) / moved;
        println!("adapters moved {moved:e}; bf16 masters' update off by {tracking:.3}");
        assert!(moved > 0.0);
        assert!(
            tracking < 0.2,
            "the adapters' masters stray from the f32 run by {tracking}"
        );
    }

    #[test]
    fn clipping_by_global_norm() {
        let a = var(&[0.0, 0.0]);
        let b = var(&[0.0]);
        let opt = Optimizer::new(
            &adamw(0.1, 0.0),
            vec![("a".into(), a.clone()), ("b".into(), b.clone())],
        )
        .unwrap();
        let mut g = grads_for(&opt, &[&a, &b], &[&[3.0, 0.0], &[4.0]]);
        assert!((g.global_norm().unwrap() - 5.0).abs() < 1e-9);
        let norm = g.clip_global_norm(1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-9);
        let coef = 1.0 / (5.0 + 1e-6);
        assert!(
            (g.get(0).unwrap().unwrap().to_vec1::<f32>().unwrap()[0] as f64 - 3.0 * coef).abs()
                < 1e-6
        );
        assert!(
            (g.get(1).unwrap().unwrap().to_vec1::<f32>().unwrap()[0] as f64 - 4.0 * coef).abs()
                < 1e-6
        );
        // Under the limit nothing changes.
        let mut small = grads_for(&opt, &[&a, &b], &[&[0.3, 0.0], &[0.4]]);
        assert!((small.clip_global_norm(1.0).unwrap() - 0.5).abs() < 1e-7);
        assert_eq!(
            small.get(1).unwrap().unwrap().to_vec1::<f32>().unwrap(),
            vec![0.4]
        );
        let mut bad = grads_for(&opt, &[&a, &b], &[&[f32::NAN, 0.0], &[1.0]]);
        let e = bad.clip_global_norm(1.0).unwrap_err();
        assert!(e.to_string().contains("`a`"), "{e}");
        assert!(g.clip_global_norm(0.0).is_err());
    }

    #[test]
    fn accumulation_sums_and_means() {
        let a = var(&[0.0, 0.0]);
        let opt = Optimizer::new(&adamw(0.1, 0.0), vec![("a".into(), a.clone())]).unwrap();
        let mut acc = GradAccumulator::new();
        acc.add(grads_for(&opt, &[&a], &[&[1.0, 2.0]])).unwrap();
        acc.add(grads_for(&opt, &[&a], &[&[3.0, -2.0]])).unwrap();
        assert_eq!(acc.micro_batches(), 2);
        let mean = acc.take_mean().unwrap().unwrap();
        assert_eq!(
            mean.get(0).unwrap().unwrap().to_vec1::<f32>().unwrap(),
            vec![2.0, 0.0]
        );
        assert!(acc.take_sum().is_none());
        acc.add(grads_for(&opt, &[&a], &[&[1.0, 1.0]])).unwrap();
        acc.add(grads_for(&opt, &[&a], &[&[1.0, 1.0]])).unwrap();
        assert_eq!(
            acc.take_sum()
                .unwrap()
                .get(0)
                .unwrap()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            vec![2.0, 2.0]
        );
    }

    #[test]
    fn state_saves_and_resumes_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let make = || {
            let w = var(&[1.0, 2.0, 3.0]);
            let h = Var::from_tensor(
                &Tensor::new(&[0.5f32], &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap(),
            )
            .unwrap();
            let opt = Optimizer::new(
                &adamw(0.01, 0.1),
                vec![("w".into(), w.clone()), ("h".into(), h.clone())],
            )
            .unwrap();
            (opt, w, h)
        };
        let coefs: [[f32; 3]; 4] = [
            [0.1, -0.2, 0.3],
            [0.4, 0.0, -0.1],
            [-0.3, 0.2, 0.2],
            [0.05, 0.5, -0.5],
        ];
        let (mut a, wa, ha) = make();
        for c in &coefs[..2] {
            let g = grads_for(&a, &[&wa, &ha], &[c, &c[..1]]);
            a.step(&g, 0.01).unwrap();
        }
        a.save(&path).unwrap();
        let (mut b, wb, hb) = make();
        b.load(&path).unwrap();
        // The master weights were restored into the variables too.
        assert_eq!(values(&hb), values(&ha));
        wb.set(wa.as_tensor()).unwrap();
        for c in &coefs[2..] {
            let ga = grads_for(&a, &[&wa, &ha], &[c, &c[..1]]);
            a.step(&ga, 0.01).unwrap();
            let gb = grads_for(&b, &[&wb, &hb], &[c, &c[..1]]);
            b.step(&gb, 0.01).unwrap();
        }
        assert_eq!(values(&wa), values(&wb));
        assert_eq!(values(&ha), values(&hb));

        // Loading into another optimizer kind or parameter set fails with the file named.
        let sgd = PlanOptimizer::Sgd {
            lr: 0.1,
            momentum: 0.0,
        };
        let mut other = Optimizer::new(&sgd, vec![("w".into(), var(&[0.0; 3]))]).unwrap();
        let e = other.load(&path).unwrap_err().to_string();
        assert!(
            e.contains("optimizer.safetensors") && e.contains("adamw"),
            "{e}"
        );
        let mut renamed =
            Optimizer::new(&adamw(0.1, 0.0), vec![("x".into(), var(&[0.0; 3]))]).unwrap();
        assert!(renamed.load(&path).is_err());
        let mut reshaped = Optimizer::new(
            &adamw(0.1, 0.0),
            vec![("w".into(), var(&[0.0; 2])), ("h".into(), var(&[0.0]))],
        )
        .unwrap();
        assert!(reshaped.load(&path).is_err());
    }

    /// ZeRO-1 and 2: three ranks (threads), each with its own gradients, reduce-scatter them
    /// (each keeping only its shard's sum), clip by the job's global norm, update their shards
    /// of the parameters and gather the rest; every rank ends with the norms and the weights an
    /// unsharded optimiser reaches on the summed gradients, bit for bit, and the state gathered
    /// to rank 0 is the unsharded state. One variable is bf16, so its f32 master is sharded too.
    #[test]
    fn zero2_shards_equal_unsharded_adamw() {
        use crate::dist::ThreadGroup;
        let init: [&[f32]; 3] = [&[1.0, -2.0, 0.5, 3.0, 0.25], &[0.5, -1.0, 2.0], &[4.0; 4]];
        let make = || {
            let vars: Vec<Var> = init
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    let t = Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap();
                    let t = if i == 1 {
                        t.to_dtype(DType::BF16).unwrap()
                    } else {
                        t
                    };
                    Var::from_tensor(&t).unwrap()
                })
                .collect();
            let named = ["a", "b", "c"]
                .iter()
                .zip(&vars)
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect();
            (Optimizer::new(&adamw(0.05, 0.1), named).unwrap(), vars)
        };
        // Rank r's coefficient for element j at step s: multiples of 1/8, so every sum is exact
        // in bf16 as in f32 and the unsharded run can take the sum as its own gradient.
        let coef = |r: usize, s: usize, j: usize| ((r * 7 + s * 3 + j * 5) % 9) as f32 / 8.0 - 0.5;
        let coefs = |ranks: std::ops::Range<usize>, s: usize| -> Vec<Vec<f32>> {
            init.iter()
                .map(|v| {
                    (0..v.len())
                        .map(|j| ranks.clone().map(|r| coef(r, s, j)).sum())
                        .collect()
                })
                .collect()
        };
        let steps = 3;
        // Clipping at a norm the gradients exceed, so the norm's value matters.
        let clip = 0.75;
        let (mut whole, wv) = make();
        let mut norms = Vec::new();
        for s in 0..steps {
            let c = coefs(0..3, s);
            let refs: Vec<&[f32]> = c.iter().map(Vec::as_slice).collect();
            let mut g = grads_for(&whole, &wv.iter().collect::<Vec<_>>(), &refs);
            norms.push(g.clip_global_norm(clip).unwrap());
            whole.step(&g, 0.05).unwrap();
        }
        assert!(norms.iter().all(|n| *n > clip), "{norms:?}");
        let results: Vec<_> = std::thread::scope(|scope| {
            let handles: Vec<_> = ThreadGroup::new(3)
                .into_iter()
                .map(|mut g| {
                    scope.spawn(move || {
                        let (mut opt, vars) = make();
                        let rank = g.rank();
                        opt.shard(rank, 3);
                        let mut norms = Vec::new();
                        for s in 0..steps {
                            let c = coefs(rank..rank + 1, s);
                            let refs: Vec<&[f32]> = c.iter().map(Vec::as_slice).collect();
                            let mut grads =
                                grads_for(&opt, &vars.iter().collect::<Vec<_>>(), &refs);
                            // Buckets of two elements: parameters span several buckets, and
                            // buckets hold several ranks' segments.
                            opt.reduce_grads_in(&mut grads, &mut g, 2).unwrap();
                            for (p, gr) in opt.params.iter().zip(&grads.grads) {
                                assert_eq!(gr.is_some(), p.owner == rank, "`{}`", p.name);
                            }
                            let norm = opt.global_norm(&grads, &mut g).unwrap();
                            grads.clip_to(norm, clip).unwrap();
                            norms.push(norm);
                            opt.step(&grads, 0.05).unwrap();
                            opt.gather_params(&mut g).unwrap();
                        }
                        let state = opt.gather_state(&mut g).unwrap();
                        (
                            rank,
                            opt.owned_elems(),
                            vars.iter().map(values).collect::<Vec<_>>(),
                            state,
                            norms,
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let want: Vec<Vec<f32>> = wv.iter().map(values).collect();
        let mut owned = 0;
        for (rank, elems, got, state, rank_norms) in results {
            assert_eq!(got, want, "rank {rank}'s weights");
            assert_eq!(rank_norms, norms, "rank {rank}'s gradient norms");
            assert!(elems < 12, "rank {rank} holds every parameter's state");
            owned += elems;
            match state {
                Some(state) => {
                    assert_eq!(rank, 0);
                    for (p, w) in state.iter().zip(whole.saved()) {
                        assert_eq!(p.steps, w.steps);
                        for (a, b) in [(&p.m, &w.m), (&p.v, &w.v), (&p.master, &w.master)] {
                            let flat = |t: &Option<Tensor>| {
                                t.as_ref()
                                    .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                            };
                            assert_eq!(flat(a), flat(b), "state of `{}`", p.name);
                        }
                    }
                }
                None => assert_ne!(rank, 0),
            }
        }
        assert_eq!(owned, 12, "every parameter is some rank's");
    }

    /// The update's temporaries by hand: one rank reads one half-dtype gradient in f32 at a
    /// time; a rank of several holds its f32 shard and the collective's copies of a bucket.
    #[test]
    fn update_bytes_by_hand() {
        let lens = [10, 30, 20];
        assert_eq!(update_bytes(&lens, 4, 1, 3), 0);
        // The largest parameter (30) in f32 and rounded back to 2 bytes.
        assert_eq!(update_bytes(&lens, 2, 1, 3), 30 * 6);
        // Two ranks: the middle parameter's midpoint (25) is in rank 0's half, so rank 0 holds
        // 40 elements; the model (60 elements) is smaller than one bucket.
        assert_eq!(owners_of(&lens, 2), vec![0, 0, 1]);
        assert_eq!(update_bytes(&lens, 4, 2, 3), 40 * 4 + 3 * 60 * 4);
        assert_eq!(update_bytes(&lens, 2, 2, 3), 40 * 4 + 3 * 60 * 4 + 30 * 2);
        // On CPUs the TCP hub holds every rank's copy of a bucket.
        let cpu = crate::dist::staging_buckets(&Device::Cpu, 2);
        assert_eq!(update_bytes(&lens, 4, 2, cpu), 40 * 4 + 6 * 60 * 4);
    }

    #[test]
    fn bad_configs_are_errors() {
        assert!(Optimizer::new(&adamw(-1.0, 0.0), vec![]).is_err());
        assert!(Optimizer::new(
            &PlanOptimizer::Adamw {
                lr: 0.1,
                beta1: 1.0,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0
            },
            vec![]
        )
        .is_err());
        let v = var(&[0.0]);
        assert!(Optimizer::new(
            &adamw(0.1, 0.0),
            vec![("w".into(), v.clone()), ("w".into(), v)]
        )
        .is_err());
        assert!(Optimizer::new(
            &PlanOptimizer::Sgd {
                lr: 0.1,
                momentum: f64::NAN
            },
            vec![]
        )
        .is_err());
    }
}
