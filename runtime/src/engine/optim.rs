//! The optimiser step of the engine: takes the plan's optimiser and schedule, the trainable
//! variables and a gradient store; gives the learning rate of each step, gradient clipping by
//! global norm, AdamW (decoupled weight decay, as torch) or SGD with momentum, and the moments
//! as named tensors for checkpoints.
//!
//! The update runs on host copies of the f32 weights: for the small models the engine targets
//! on CPU this is cheaper than a dozen element-wise candle ops per tensor, and it makes the
//! arithmetic (and so a resumed run) bit-for-bit reproducible. `train::optim` is still being
//! written; this adapter can delegate to it once it lands.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use recap_plan::{Optimizer, Schedule, ScheduleKind};

/// The learning-rate multiplier of 0-based `step` out of `total` (warm-up from 0 as in
/// transformers' schedules, then constant, linear or cosine decay to `final_fraction`).
pub fn lr_factor(s: &Schedule, step: u64, total: u64) -> f64 {
    if step < s.warmup_steps {
        return step as f64 / s.warmup_steps.max(1) as f64;
    }
    let span = total.saturating_sub(s.warmup_steps).max(1) as f64;
    let progress = ((step - s.warmup_steps) as f64 / span).clamp(0.0, 1.0);
    let f = s.final_fraction;
    match s.kind {
        ScheduleKind::Constant => 1.0,
        ScheduleKind::Linear => f + (1.0 - f) * (1.0 - progress),
        ScheduleKind::Cosine => {
            f + (1.0 - f) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
        }
    }
}

/// Optimiser state over a fixed, ordered list of variables.
pub struct Optim {
    spec: Optimizer,
    vars: Vec<Var>,
    /// Steps taken (AdamW's bias correction).
    pub t: u64,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

/// What one optimiser step did.
pub struct StepInfo {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Optim {
    pub fn new(spec: &Optimizer, vars: Vec<Var>) -> Result<Optim> {
        for v in &vars {
            if v.dtype() != DType::F32 {
                bail!(
                    "the optimiser needs f32 master weights, found {:?}",
                    v.dtype()
                );
            }
        }
        let sizes: Vec<usize> = vars.iter().map(|v| v.elem_count()).collect();
        let second = matches!(spec, Optimizer::Adamw { .. });
        Ok(Optim {
            spec: spec.clone(),
            m: sizes.iter().map(|&n| vec![0.0; n]).collect(),
            v: if second {
                sizes.iter().map(|&n| vec![0.0; n]).collect()
            } else {
                Vec::new()
            },
            vars,
            t: 0,
        })
    }

    pub fn base_lr(&self) -> f64 {
        match self.spec {
            Optimizer::Adamw { lr, .. } | Optimizer::Sgd { lr, .. } => lr,
        }
    }

    /// Bytes the optimiser state holds.
    pub fn state_bytes(&self) -> usize {
        (self.m.iter().map(Vec::len).sum::<usize>() + self.v.iter().map(Vec::len).sum::<usize>())
            * 4
    }

    /// Clips the gradients to `clip` (0: no clipping) by global norm and applies one update at
    /// learning rate `lr`. Variables without a gradient are left alone (torch skips them too).
    pub fn step(&mut self, grads: &GradStore, lr: f64, clip: f64) -> Result<StepInfo> {
        let mut host: Vec<Option<Vec<f32>>> = Vec::with_capacity(self.vars.len());
        let mut sq = 0f64;
        for var in &self.vars {
            match grads.get(var.as_tensor()) {
                Some(g) => {
                    let g = g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                    sq += g.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
                    host.push(Some(g));
                }
                None => host.push(None),
            }
        }
        let norm = sq.sqrt();
        if !norm.is_finite() {
            bail!("the gradient norm is {norm}; the loss diverged (lower the learning rate?)");
        }
        // torch's clip_grad_norm_: scale = clip / (norm + 1e-6), applied only when below 1.
        let scale = if clip > 0.0 {
            (clip / (norm + 1e-6)).min(1.0) as f32
        } else {
            1.0
        };
        self.t += 1;
        for (i, (var, g)) in self.vars.iter().zip(host).enumerate() {
            let Some(g) = g else { continue };
            let mut p = var.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            match self.spec {
                Optimizer::Adamw {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    ..
                } => {
                    let (b1, b2) = (beta1 as f32, beta2 as f32);
                    let bc1 = 1.0 - beta1.powi(self.t as i32);
                    let bc2 = 1.0 - beta2.powi(self.t as i32);
                    let step_size = (lr / bc1) as f32;
                    let bc2_sqrt = bc2.sqrt() as f32;
                    let decay = 1.0 - (lr * weight_decay) as f32;
                    let eps = eps as f32;
                    let (m, v) = (&mut self.m[i], &mut self.v[i]);
                    for j in 0..p.len() {
                        let gj = g[j] * scale;
                        m[j] = b1 * m[j] + (1.0 - b1) * gj;
                        v[j] = b2 * v[j] + (1.0 - b2) * gj * gj;
                        let denom = v[j].sqrt() / bc2_sqrt + eps;
                        p[j] = p[j] * decay - step_size * m[j] / denom;
                    }
                }
                Optimizer::Sgd { momentum, .. } => {
                    let (mu, lr) = (momentum as f32, lr as f32);
                    let m = &mut self.m[i];
                    for j in 0..p.len() {
                        let gj = g[j] * scale;
                        m[j] = if self.t == 1 { gj } else { mu * m[j] + gj };
                        let d = if mu > 0.0 { m[j] } else { gj };
                        p[j] -= lr * d;
                    }
                }
            }
            let shape = var.as_tensor().shape().clone();
            let new = Tensor::from_vec(p, shape, &Device::Cpu)?.to_device(var.device())?;
            var.set(&new)?;
        }
        Ok(StepInfo { grad_norm: norm })
    }

    /// The moments as named host tensors (`m.{i}`, `v.{i}` in variable order).
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, m) in self.m.iter().enumerate() {
            out.push((
                format!("m.{i}"),
                Tensor::from_slice(m, m.len(), &Device::Cpu)?,
            ));
        }
        for (i, v) in self.v.iter().enumerate() {
            out.push((
                format!("v.{i}"),
                Tensor::from_slice(v, v.len(), &Device::Cpu)?,
            ));
        }
        Ok(out)
    }

    /// Restores moments saved by [`Optim::state_tensors`] and the step count.
    pub fn restore(&mut self, t: u64, tensors: &HashMap<String, Tensor>) -> Result<()> {
        let load = |prefix: &str, dst: &mut Vec<Vec<f32>>| -> Result<()> {
            for (i, slot) in dst.iter_mut().enumerate() {
                let name = format!("{prefix}.{i}");
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| anyhow!("optimizer state lacks tensor `{name}`"))?;
                let data = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                if data.len() != slot.len() {
                    bail!(
                        "optimizer state tensor `{name}` has {} values, the model needs {}",
                        data.len(),
                        slot.len()
                    );
                }
                *slot = data;
            }
            Ok(())
        };
        load("m", &mut self.m)?;
        load("v", &mut self.v)?;
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sched(kind: ScheduleKind, warmup: u64, f: f64) -> Schedule {
        Schedule {
            kind,
            warmup_steps: warmup,
            final_fraction: f,
        }
    }

    #[test]
    fn schedules_warm_up_then_decay() {
        let lin = sched(ScheduleKind::Linear, 2, 0.0);
        let got: Vec<f64> = (0..6).map(|s| lr_factor(&lin, s, 6)).collect();
        assert_eq!(got, vec![0.0, 0.5, 1.0, 0.75, 0.5, 0.25]);
        let cos = sched(ScheduleKind::Cosine, 0, 0.1);
        assert!((lr_factor(&cos, 0, 10) - 1.0).abs() < 1e-12);
        assert!((lr_factor(&cos, 5, 10) - 0.55).abs() < 1e-12);
        assert_eq!(
            lr_factor(&sched(ScheduleKind::Constant, 0, 1.0), 7, 10),
            1.0
        );
    }

    /// One AdamW step on w = [1, -2] with loss sum(w * [0.5, 3]) checked by hand, with the
    /// gradient clipped to norm 1.
    #[test]
    fn adamw_step_matches_hand_computation() {
        let w = Var::from_vec(vec![1f32, -2.0], 2, &Device::Cpu).unwrap();
        let c = Tensor::new(&[0.5f32, 3.0], &Device::Cpu).unwrap();
        let spec = Optimizer::Adamw {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = Optim::new(&spec, vec![w.clone()]).unwrap();
        let grads = (w.as_tensor() * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let info = opt.step(&grads, 0.1, 1.0).unwrap();
        let norm = (0.25f64 + 9.0).sqrt();
        assert!((info.grad_norm - norm).abs() < 1e-5);
        // After bias correction the first Adam step is lr * sign(g) (up to eps); decay first.
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.01) - 0.1, -2.0 * (1.0 - 0.01) - 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // The moments round-trip through the checkpoint tensors.
        let saved: HashMap<String, Tensor> = opt.state_tensors().unwrap().into_iter().collect();
        let mut other = Optim::new(&spec, vec![w.clone()]).unwrap();
        other.restore(opt.t, &saved).unwrap();
        assert_eq!(other.m, opt.m);
        assert_eq!(other.v, opt.v);
        assert!(other.restore(1, &HashMap::new()).is_err());
    }

    #[test]
    fn sgd_with_momentum() {
        let w = Var::from_vec(vec![1f32], 1, &Device::Cpu).unwrap();
        let spec = Optimizer::Sgd {
            lr: 0.5,
            momentum: 0.9,
        };
        let mut opt = Optim::new(&spec, vec![w.clone()]).unwrap();
        for _ in 0..2 {
            let grads = (w.as_tensor() * 2.0)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            opt.step(&grads, 0.5, 0.0).unwrap();
        }
        // Step 1: g = 2, m = 2, w = 0. Step 2: g = 2, m = 0.9 * 2 + 2 = 3.8, w = -1.9.
        let got = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got + 1.9).abs() < 1e-6, "{got}");
    }
}
