//! Checkpoints of a run: takes the engine's state (policy, frozen reference, optimiser moments,
//! run RNG, reweighter histories and weights, mixer and data cursors, step counters); gives
//! `checkpoints/step-NNNNNN/` directories in Hugging Face layout plus `trainer_state.json`,
//! `optimizer.safetensors` and, when a reference is loaded, `reference.safetensors`. Each is
//! written into a temporary directory and renamed into place, so a directory with the final
//! name is always complete; older ones are pruned to `keep`. Resume reads the newest. Each
//! checkpoint names the run that wrote it, and only that run's checkpoints are ever listed, read
//! or pruned.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::DataCursor;
use super::step::Ctx;
use super::{Models, StageRt};
use crate::train::mix::MixCursor;
use crate::train::reweight::ReweighterState;
use crate::train::rng::{HostRng, RngState};

/// Everything besides tensors a resumed run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainerState {
    pub format: u32,
    /// The run that wrote the checkpoint (its run directory's marker).
    #[serde(default)]
    pub run_id: String,
    pub plan_hash: String,
    pub global_step: u64,
    pub stage_index: usize,
    pub stage_name: String,
    pub stage_step: u64,
    pub run_rng: RngState,
    pub reweighter: ReweighterState,
    pub lambdas: Vec<f64>,
    pub mixer: MixCursor,
    pub data: Vec<DataCursor>,
    pub has_reference: bool,
    /// Steps in a row with every group's rewards equal, so a resumed run warns on time.
    #[serde(default)]
    pub flat_steps: u64,
}

/// A complete checkpoint found on disk.
pub struct Found {
    pub dir: PathBuf,
    pub state: TrainerState,
}

const STATE_FORMAT: u32 = 1;

/// Writes `dir/name` through `dir/.tmp-name` and a rename, replacing an old `dir/name`. The
/// temporary directory is synced whole before the rename and `dir` after it, so a crash or a
/// power cut leaves either the old directory or the complete new one.
pub fn write_atomic(dir: &Path, name: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let tmp = dir.join(format!(".tmp-{name}"));
    let dst = dir.join(name);
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).with_context(|| format!("removing {}", tmp.display()))?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    if let Err(e) = fill(&tmp).and_then(|()| super::rundir::sync_tree(&tmp)) {
        return Err(explain_write_failure(e, &tmp, &dst));
    }
    if dst.exists() {
        std::fs::remove_dir_all(&dst).with_context(|| format!("removing {}", dst.display()))?;
    }
    std::fs::rename(&tmp, &dst)
        .with_context(|| format!("renaming {} to {}", tmp.display(), dst.display()))?;
    super::rundir::sync_dir(dir)
}

/// Whether `e` comes from a write the disk had no room for (ENOSPC), anywhere in its chain:
/// an IO error of that kind, bare or as candle's (the optimiser's state is written through
/// candle's error type).
fn is_disk_full(e: &anyhow::Error) -> bool {
    let full = |io: &std::io::Error| io.kind() == std::io::ErrorKind::StorageFull;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(full)
            || matches!(c.downcast_ref::<candle_core::Error>(), Some(candle_core::Error::Io(io)) if full(io))
    })
}

/// The error of a failed write of `dst` through `tmp`. A full disk is said in those words, the
/// partial copy is removed to give its space back, and the message says what is kept: a safetensors
/// writer's own wording would call the half-written file corrupt, which sends the user looking
/// for damage that is not there.
fn explain_write_failure(e: anyhow::Error, tmp: &Path, dst: &Path) -> anyhow::Error {
    if !is_disk_full(&e) {
        return e;
    }
    let removed = std::fs::remove_dir_all(tmp).is_ok();
    anyhow!(
        "no space left on device while writing {}; {}, and everything written before it, earlier \
         checkpoints included, is kept as it was. Free some space, then resume the run",
        dst.display(),
        if removed {
            "its partial copy was removed"
        } else {
            "its partial copy could not be removed"
        }
    )
}

fn save_tensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<()> {
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), None, path)
        .with_context(|| format!("writing {}", path.display()))?;
    crate::checkpoint::give_default_mode(path)
        .with_context(|| format!("writing {}", path.display()))
}

fn load_tensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading {}", path.display()))
}

/// The reference a checkpoint holds: none for a LoRA policy, whose reference is its own frozen
/// base, rebuilt with it on resume.
fn saved_reference(models: &Models) -> Option<&crate::model::Model> {
    models
        .reference
        .as_ref()
        .filter(|_| models.policy.lora_spec().is_none())
}

/// Saves a checkpoint after the step just taken and prunes old ones to `keep`; gives its
/// directory. Every rank of a data-parallel job calls it: the optimiser's shards (ZeRO-1) are
/// gathered to the leader, which alone writes (the weights are the same on every rank); the
/// other ranks touch nothing. What is written does not depend on the world size.
pub(crate) fn save(
    run_dir: &Path,
    ctx: &mut Ctx,
    rt: &StageRt,
    models: &Models,
    run_id: &str,
    keep: Option<u64>,
) -> Result<PathBuf> {
    let gathered = rt.optim.gather(&mut *ctx.comm)?;
    let name = format!("step-{:06}", ctx.global_step);
    let root = run_dir.join("checkpoints");
    let written = match gathered {
        Some(state) => write(&root, &name, ctx, rt, models, run_id, keep, &state),
        None => Ok(()),
    };
    super::agree(&mut *ctx.comm, "to write a checkpoint", written)?;
    Ok(root.join(name))
}

/// The leader's part of [`save`]: writes checkpoint `name` under `root` with the optimiser's
/// gathered `optim_state`, then prunes old checkpoints to `keep`.
#[allow(clippy::too_many_arguments)]
fn write(
    root: &Path,
    name: &str,
    ctx: &Ctx,
    rt: &StageRt,
    models: &Models,
    run_id: &str,
    keep: Option<u64>,
    optim_state: &[crate::train::optim::SavedParam],
) -> Result<()> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let stage = &ctx.plan.stages[rt.index];
    let state = TrainerState {
        format: STATE_FORMAT,
        run_id: run_id.to_string(),
        plan_hash: ctx.plan.content_hash.clone(),
        global_step: ctx.global_step,
        stage_index: rt.index,
        stage_name: stage.name.to_string(),
        stage_step: rt.step,
        run_rng: ctx.run_rng.state(),
        reweighter: rt.reweighter.state(),
        lambdas: rt.lambdas.clone(),
        mixer: rt.mixer.cursor(),
        data: rt.readers.iter().map(|r| r.cursor.clone()).collect(),
        has_reference: saved_reference(models).is_some(),
        flat_steps: ctx.flat_steps,
    };
    write_atomic(root, name, |dir| {
        crate::checkpoint::save_hf_dir(&models.policy, Some(&models.tok), dir)?;
        rt.optim
            .write(optim_state, &dir.join("optimizer.safetensors"))?;
        if let Some(r) = saved_reference(models) {
            let ts: Vec<(String, Tensor)> = r
                .named_weights()
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?)))
                .collect::<Result<_>>()?;
            save_tensors(&dir.join("reference.safetensors"), &ts)?;
        }
        let text = serde_json::to_string_pretty(&state)?;
        std::fs::write(dir.join("trainer_state.json"), text)?;
        // The plan the checkpoint was written under, so that a resume with a changed pipeline
        // can tell what changed even after the run directory's plan.json was replaced.
        std::fs::write(dir.join("plan.json"), ctx.plan.to_json())?;
        Ok(())
    })?;
    if let Some(keep) = keep {
        let mut all = list(root, run_id)?;
        while all.len() > keep.max(1) as usize {
            let (_, old) = all.remove(0);
            std::fs::remove_dir_all(&old.dir)
                .with_context(|| format!("pruning {}", old.dir.display()))?;
        }
    }
    Ok(())
}

/// Reads a checkpoint's trainer state.
fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join("trainer_state.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let state: TrainerState = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a trainer state", path.display()))?;
    if state.format != STATE_FORMAT {
        bail!(
            "{}: trainer state format {} (this build reads {STATE_FORMAT})",
            path.display(),
            state.format
        );
    }
    Ok(state)
}

/// The complete checkpoints of run `run_id` under `root`, oldest first. Checkpoints of any other
/// run, and those whose trainer state cannot be read, are never listed, so never pruned nor
/// resumed from.
fn list(root: &Path, run_id: &str) -> Result<Vec<(u64, Found)>> {
    let mut out = Vec::new();
    if !root.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            let dir = e.path();
            if !dir.join("trainer_state.json").exists() {
                continue;
            }
            match read_state(&dir) {
                Ok(state) if state.run_id == run_id => out.push((n, Found { dir, state })),
                Ok(_) => {}
                Err(e) => eprintln!("warning: skipping checkpoint {}: {e:#}", dir.display()),
            }
        }
    }
    out.sort_by_key(|(n, _)| *n);
    Ok(out)
}

/// The newest complete checkpoint of run `run_id` in a run directory whose tensor files are
/// whole; a damaged newer one is passed over with a warning, so a resume falls back to the
/// previous checkpoint rather than failing.
pub fn newest(run_dir: &Path, run_id: &str) -> Result<Option<Found>> {
    let mut all = list(&run_dir.join("checkpoints"), run_id)?;
    while let Some((_, found)) = all.pop() {
        match whole(&found) {
            Ok(()) => return Ok(Some(found)),
            Err(why) => eprintln!(
                "warning: checkpoint {} is damaged ({why}); trying the one before it",
                found.dir.display()
            ),
        }
    }
    Ok(None)
}

/// Whether a checkpoint's tensor files are all there and whole.
fn whole(found: &Found) -> std::result::Result<(), String> {
    let mut files = vec!["model.safetensors", "optimizer.safetensors"];
    if found.state.has_reference {
        files.push("reference.safetensors");
    }
    for name in files {
        safetensors_whole(&found.dir.join(name)).map_err(|e| format!("{name}: {e}"))?;
    }
    Ok(())
}

/// Checks a safetensors file without reading its tensors: the header parses and the file is
/// exactly as long as the header says its data is.
fn safetensors_whole(path: &Path) -> std::result::Result<(), String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|e| e.to_string())?;
    let n = u64::from_le_bytes(n);
    if n > len.saturating_sub(8) {
        return Err(format!("cut short: its header claims {n} bytes"));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| e.to_string())?;
    let header: HashMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| format!("not a safetensors header: {e}"))?;
    let end = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0);
    if 8 + n + end != len {
        return Err(format!(
            "{len} bytes where its header describes {}",
            8 + n + end
        ));
    }
    Ok(())
}

/// Restores the stage's state from a checkpoint (the policy weights were loaded from it already).
pub(crate) fn restore(
    c: &Found,
    ctx: &mut Ctx,
    rt: &mut StageRt,
    models: &mut Models,
) -> Result<()> {
    // A plan other than the checkpoint's was held against it before anything was loaded.
    let s = &c.state;
    let err = |e: String| anyhow!("{}: {e}", c.dir.display());
    rt.step = s.stage_step;
    rt.optim.restore(&c.dir.join("optimizer.safetensors"))?;
    let dir = || c.dir.display().to_string();
    rt.reweighter
        .restore(s.reweighter.clone())
        .with_context(dir)?;
    if s.lambdas.len() != rt.lambdas.len() {
        return Err(err(
            "the checkpoint's weights do not match the stage's keys".into(),
        ));
    }
    rt.lambdas = s.lambdas.clone();
    rt.mixer.restore(s.mixer.clone()).with_context(dir)?;
    if s.data.len() != rt.readers.len() {
        return Err(err(
            "the checkpoint's data cursors do not match the stage's sources".into(),
        ));
    }
    for (r, cur) in rt.readers.iter_mut().zip(&s.data) {
        r.restore(cur.clone());
    }
    ctx.run_rng = HostRng::from_state(&s.run_rng).map_err(err)?;
    ctx.global_step = s.global_step;
    ctx.flat_steps = s.flat_steps;
    if s.has_reference {
        let tensors = load_tensors(&c.dir.join("reference.safetensors"))?;
        let mut r = crate::model::Model::from_tensors(
            models.policy.config().clone(),
            tensors,
            DType::F32,
            false,
            &ctx.device,
        )?;
        r.set_compute_dtype(models.policy.compute_dtype())?;
        models.reference = Some(r);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Family, Model, ModelConfig};

    /// A checkpoint whose first file meets a full disk (`/dev/full` answers every write with
    /// ENOSPC) is reported as such, not as a corrupt safetensors file; its partial copy is
    /// removed and the checkpoint before it is untouched.
    #[test]
    fn a_full_disk_is_named_and_what_was_written_before_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let earlier = root.path().join("step-000001");
        std::fs::create_dir(&earlier).unwrap();
        std::fs::write(earlier.join("trainer_state.json"), "kept").unwrap();
        let cfg = ModelConfig::new(Family::Qwen2, 16, 8, 16, 1, 2, 2, true);
        let model = Model::tiny(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
        let err = write_atomic(root.path(), "step-000002", |dir| {
            std::os::unix::fs::symlink("/dev/full", dir.join("config.json"))?;
            crate::checkpoint::save_hf_dir(&model, None, dir)?;
            Ok(())
        })
        .unwrap_err();
        let msg = format!("{err:#}");
        let dst = root.path().join("step-000002");
        assert!(
            msg.starts_with(&format!(
                "no space left on device while writing {}; its partial copy was removed",
                dst.display()
            )),
            "{msg}"
        );
        assert!(!msg.contains("corrupt"), "{msg}");
        assert!(!root.path().join(".tmp-step-000002").exists());
        assert!(!dst.exists());
        assert_eq!(
            std::fs::read_to_string(earlier.join("trainer_state.json")).unwrap(),
            "kept"
        );
    }

    /// The optimiser's state meeting a full disk is reported in the same words, naming the
    /// checkpoint: its IO error used to be turned into text, which read as any other failure.
    /// The safetensors crate writes through a temporary file of its own, so only a real full
    /// disk reaches it: a small tmpfs, which only a privileged user can mount (skipped
    /// elsewhere, where the error as the optimiser now gives it is checked instead).
    #[test]
    fn a_full_disk_under_the_optimizer_state_is_named() {
        let io = std::io::Error::from(std::io::ErrorKind::StorageFull);
        let given = anyhow::Error::from(candle_core::Error::Io(io)).context("saving");
        assert!(is_disk_full(&given));

        let root = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
            .arg(root.path())
            .output()
            .is_ok_and(|o| o.status.success());
        if !mounted {
            eprintln!("SKIPPED: cannot mount a tmpfs here");
            return;
        }
        let result = (|| {
            let cfg = ModelConfig::new(Family::Qwen2, 16, 8, 16, 1, 2, 2, true);
            let model = Model::tiny(&cfg, 1, DType::F32, &Device::Cpu)?;
            let spec = recap_plan::Optimizer::Sgd {
                lr: 0.1,
                momentum: 0.0,
            };
            let optim = super::super::optim::Optim::new(&spec, super::super::named_vars(&model)?)?;
            let err = write_atomic(root.path(), "step-000003", |dir| {
                // Fill the disk, then write the optimiser's state.
                let mut filler = std::fs::File::create(dir.join("filler"))?;
                while std::io::Write::write_all(&mut filler, &[0u8; 4096]).is_ok() {}
                optim.save(&dir.join("optimizer.safetensors"))
            })
            .err()
            .ok_or_else(|| anyhow!("the save succeeded on a full disk"))?;
            anyhow::Ok(format!("{err:#}"))
        })();
        let _ = std::process::Command::new("umount")
            .arg(root.path())
            .status();
        let msg = result.unwrap();
        assert!(
            msg.starts_with(&format!(
                "no space left on device while writing {}; its partial copy was removed",
                root.path().join("step-000003").display()
            )),
            "{msg}"
        );
    }
}
