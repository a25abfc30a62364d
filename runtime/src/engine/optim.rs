//! The optimiser step of the engine: takes the plan's optimiser and schedule, the trainable
//! variables and a gradient store; gives the learning rate of each step, gradient clipping by
//! global norm, AdamW (decoupled weight decay, as torch) or SGD with momentum, and the moments
//! as named tensors for checkpoints.
//!
//! The update itself is `train::optim`'s, which takes the plan's optimiser as it is; this module
//! adds the plan's schedule semantics (warm-up, then decay to `final_fraction` of the peak).

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{backprop::GradStore, Var};
use recap_plan::{Optimizer, Schedule, ScheduleKind};

use crate::dist::Collective;
use crate::train::optim::{write_state, Optimizer as TrainOptimizer, SavedParam};

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

/// The plan's optimiser over the policy's named variables, delegating the update to
/// [`crate::train::optim::Optimizer`] (fused in-place AdamW/SGD, torch semantics).
pub struct Optim {
    inner: TrainOptimizer,
}

/// What one optimiser step did.
pub struct StepInfo {
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
}

impl Optim {
    pub fn new(spec: &Optimizer, vars: Vec<(String, Var)>) -> Result<Optim> {
        Ok(Optim {
            inner: TrainOptimizer::new(spec, vars)?,
        })
    }

    /// Shards the state across the ranks of a data-parallel job (ZeRO-1, see
    /// [`TrainOptimizer::shard`]); a world of one keeps it whole.
    pub fn shard(&mut self, rank: usize, world: usize) {
        self.inner.shard(rank, world);
    }

    pub fn base_lr(&self) -> f64 {
        match self.inner.config() {
            Optimizer::Adamw { lr, .. } | Optimizer::Sgd { lr, .. } => *lr,
        }
    }

    /// Bytes the optimiser state of one rank holds once every moment exists, were the state
    /// sharded over `ranks` ranks (ZeRO-1, [`Optim::shard`]; the largest rank's shard): f32
    /// moments, and f32 master copies of the variables stored in a half dtype (a bf16 policy
    /// on CUDA).
    pub fn state_bytes(&self, ranks: usize) -> usize {
        let per = match self.inner.config() {
            Optimizer::Adamw { .. } => 2,
            Optimizer::Sgd { momentum, .. } => usize::from(*momentum > 0.0),
        };
        let (elems, master_elems) = self.inner.largest_shard(ranks);
        (per * elems + master_elems) * 4
    }

    /// Bytes the update of one rank holds for a moment beyond the gradients and the state,
    /// were the state sharded over `ranks` ranks ([`crate::train::optim::update_bytes`]).
    pub fn update_bytes(&self, ranks: usize) -> usize {
        self.inner.update_bytes(ranks)
    }

    /// Sums the gradients across the job's ranks (`comm`), clips them to `clip` (0: no
    /// clipping) by global norm and applies one update at learning rate `lr`. In a job of
    /// several ranks each rank receives the summed gradient of its own shard only (ZeRO-2),
    /// updates that shard (ZeRO-1) and the ranks then exchange the new weights. Variables
    /// without a gradient are left alone (torch skips them too). A gradient whose norm is not
    /// finite is not applied at all, so the weights and moments stay as they were; the engine
    /// counts such a step as bad. The store is consumed: its gradients are let go as they are
    /// summed.
    pub fn step(
        &mut self,
        grads: GradStore,
        lr: f64,
        clip: f64,
        comm: &mut dyn Collective,
    ) -> Result<StepInfo> {
        let mut g = self.inner.grads(&grads)?;
        drop(grads);
        self.inner.reduce_grads(&mut g, comm)?;
        let norm = self.inner.global_norm(&g, comm)?;
        if !norm.is_finite() {
            return Ok(StepInfo { grad_norm: norm });
        }
        if clip > 0.0 {
            g.clip_to(norm, clip)?;
        }
        self.inner.step(&g, lr)?;
        drop(g);
        self.inner.gather_params(comm)?;
        Ok(StepInfo { grad_norm: norm })
    }

    /// Writes moments and step counts to `path` (safetensors), its header in key order so that
    /// identical states give identical files.
    pub fn save(&self, path: &Path) -> Result<()> {
        let context = || format!("saving optimizer state to {}", path.display());
        self.inner.save(path).with_context(context)?;
        sort_header(path).with_context(context)
    }

    /// The whole state, gathered from every rank's shard (ZeRO-1), on the leader; `None` on
    /// the other ranks. Every rank calls it. The state is the one an unsharded optimiser
    /// holds, so a checkpoint resumes on any world size.
    pub fn gather(&self, comm: &mut dyn Collective) -> Result<Option<Vec<SavedParam>>> {
        self.inner.gather_state(comm)
    }

    /// Writes a state [`Optim::gather`] gave as [`Optim::save`] writes its own.
    pub fn write(&self, state: &[SavedParam], path: &Path) -> Result<()> {
        let context = || format!("saving optimizer state to {}", path.display());
        write_state(self.inner.config(), state, path).with_context(context)?;
        sort_header(path).with_context(context)
    }

    /// Reads a state written by [`Optim::save`]. A sharded optimiser keeps its shard of it.
    pub fn restore(&mut self, path: &Path) -> Result<()> {
        self.inner
            .load(path)
            .with_context(|| format!("loading optimizer state from {}", path.display()))
    }
}

/// Rewrites the JSON header of the safetensors file at `path` in place with its keys, the
/// metadata's and those of the metadata's `steps` table in order. The safetensors crate writes
/// the metadata map, and the optimiser its step table, in hash order, which differs from one
/// process to the next. The header keeps its length (the same keys and values, padded with
/// spaces as safetensors pads it), so the tensors' offsets stay as they are.
fn sort_header(path: &Path) -> anyhow::Result<()> {
    use serde_json::Value;
    use std::collections::BTreeMap;
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut n = [0u8; 8];
    file.read_exact(&mut n)?;
    let n = usize::try_from(u64::from_le_bytes(n))?;
    let mut header = vec![0u8; n];
    file.read_exact(&mut header)?;
    let mut map: BTreeMap<String, Value> = serde_json::from_slice(&header)?;
    if let Some(Value::Object(meta)) = map.remove("__metadata__") {
        let mut meta: BTreeMap<String, Value> = meta.into_iter().collect();
        if let Some(Value::String(steps)) = meta.get_mut("steps") {
            let table: BTreeMap<String, Value> = serde_json::from_str(steps)?;
            *steps = serde_json::to_string(&table)?;
        }
        map.insert("__metadata__".into(), serde_json::to_value(meta)?);
    }
    let mut text = serde_json::to_string(&map)?.into_bytes();
    anyhow::ensure!(
        text.len() <= n,
        "the sorted header is longer than the one written"
    );
    text.resize(n, b' ');
    file.seek(SeekFrom::Start(8))?;
    file.write_all(&text)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::Single;
    use candle_core::{Device, Tensor};

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
        let mut opt = Optim::new(&spec, vec![("w".into(), w.clone())]).unwrap();
        let grads = (w.as_tensor() * &c)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let info = opt.step(grads, 0.1, 1.0, &mut Single).unwrap();
        let norm = (0.25f64 + 9.0).sqrt();
        assert!((info.grad_norm - norm).abs() < 1e-5);
        // After bias correction the first Adam step is lr * sign(g) (up to eps); decay first.
        let got = w.as_tensor().to_vec1::<f32>().unwrap();
        let want = [1.0 * (1.0 - 0.01) - 0.1, -2.0 * (1.0 - 0.01) - 0.1];
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-5, "{got:?} vs {want:?}");
        }
        // The state round-trips through a file; a second step from either copy agrees.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("opt.safetensors");
        opt.save(&path).unwrap();
        let w2 = Var::from_tensor(w.as_tensor()).unwrap();
        let mut other = Optim::new(&spec, vec![("w".into(), w2.clone())]).unwrap();
        other.restore(&path).unwrap();
        for (o, v) in [(&mut opt, &w), (&mut other, &w2)] {
            let g = (v.as_tensor() * &c)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            o.step(g, 0.1, 1.0, &mut Single).unwrap();
        }
        assert_eq!(
            w.as_tensor().to_vec1::<f32>().unwrap(),
            w2.as_tensor().to_vec1::<f32>().unwrap()
        );
        assert!(other.restore(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn sgd_with_momentum() {
        let w = Var::from_vec(vec![1f32], 1, &Device::Cpu).unwrap();
        let spec = Optimizer::Sgd {
            lr: 0.5,
            momentum: 0.9,
        };
        let mut opt = Optim::new(&spec, vec![("w".into(), w.clone())]).unwrap();
        for _ in 0..2 {
            let grads = (w.as_tensor() * 2.0)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            opt.step(grads, 0.5, 0.0, &mut Single).unwrap();
        }
        // Step 1: g = 2, m = 2, w = 0. Step 2: g = 2, m = 0.9 * 2 + 2 = 3.8, w = -1.9.
        let got = w.as_tensor().to_vec1::<f32>().unwrap()[0];
        assert!((got + 1.9).abs() < 1e-6, "{got}");
    }
}
