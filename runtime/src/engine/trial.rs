//! Trying a trained model: takes a checkpoint (a checkpoint directory, a run's `final/`, or a
//! run directory, which stands for its `final/`); gives completions of a prompt
//! ([`generate_text`]) or the results of a plan's probes on it ([`evaluate`]), so that a user can
//! see what training did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::DType;
use recap_plan::Plan;
use serde::Serialize;
use serde_json::Value;

use super::data::Dataset;
use super::{build_policy, parse_device, rewards, step, RunOptions};
use crate::generate::{generate, SamplingConfig};
use crate::model::{load_hf_dir_with, LoadOptions, Model};
use crate::tokenizer::TextTokenizer;
use crate::train::rng::HostRng;

/// A checkpoint that cannot be used as asked: the command line reports it as a usage error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CheckpointError(pub String);

/// The model directory `path` names: `path` itself when it holds a model, a run directory's
/// `final/` when it is a run's. Anything else is a [`CheckpointError`] saying what is missing.
pub fn checkpoint_dir(path: &Path) -> Result<PathBuf> {
    let shown = path.display();
    if !path.is_dir() {
        return Err(
            CheckpointError(format!("{shown} is not a directory; a checkpoint is one")).into(),
        );
    }
    let holds_model = |d: &Path| d.join("config.json").is_file();
    if holds_model(path) {
        if !path.join("model.safetensors").is_file()
            && !path.join("model.safetensors.index.json").is_file()
        {
            return Err(CheckpointError(format!(
                "{shown} has a config.json but no model.safetensors; it is not a whole checkpoint"
            ))
            .into());
        }
        return Ok(path.to_path_buf());
    }
    if path.join(super::rundir::MARKER).is_file() {
        let fin = path.join("final");
        if holds_model(&fin) {
            return Ok(fin);
        }
        return Err(CheckpointError(format!(
            "{shown} is a run directory without final weights (the run has not finished); name \
             one of its checkpoints, e.g. {}",
            path.join("checkpoints").join("step-NNNNNN").display()
        ))
        .into());
    }
    Err(CheckpointError(format!(
        "{shown} is not a checkpoint: it has no config.json (a checkpoint directory, a run's \
         final/, or a run directory is expected)"
    ))
    .into())
}

/// Loads the model and tokenizer of checkpoint `path` (see [`checkpoint_dir`]).
pub fn load_checkpoint(path: &Path, device: &str) -> Result<(Model, TextTokenizer)> {
    let dir = checkpoint_dir(path)?;
    if !dir.join("tokenizer.json").is_file() {
        return Err(CheckpointError(format!(
            "{} has no tokenizer.json; recap writes one into every checkpoint, so copy the \
             model's tokenizer.json there",
            dir.display()
        ))
        .into());
    }
    let tok = TextTokenizer::from_dir(&dir)
        .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
    let model = load_hf_dir_with(
        &dir,
        &LoadOptions {
            dtype: DType::F32,
            trainable: false,
            device: parse_device(device)?,
        },
    )
    .with_context(|| format!("loading model {}", dir.display()))?;
    Ok((model, tok))
}

/// How [`generate_text`] samples.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    /// 0 takes the most likely token at each step.
    pub temperature: f64,
    pub seed: u64,
}

/// The completion of `prompt` (wrapped in the tokenizer's chat template, as training prompts
/// are) and why it ended.
pub fn generate_text(
    model: &Model,
    tok: &TextTokenizer,
    prompt: &str,
    opts: &GenerateOptions,
) -> Result<(String, String)> {
    let ids = tok.encode_prompt(prompt)?;
    if ids.is_empty() {
        return Err(CheckpointError("the prompt is empty".into()).into());
    }
    let greedy = opts.temperature == 0.0;
    let cfg = SamplingConfig {
        max_new_tokens: opts.max_tokens,
        temperature: opts.temperature,
        greedy,
        seed: opts.seed,
        ..SamplingConfig::default()
    };
    let roll = generate(model, Some(tok), &[ids], 1, &cfg)?;
    let finish = format!("{:?}", roll.finish[0]).to_lowercase();
    Ok((roll.texts[0].clone(), finish))
}

/// The result of one probe on a checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    pub stage: String,
    pub probe: String,
    pub source: String,
    /// Rows the probe scored (its `limit`, or the whole source).
    pub rows: usize,
    /// The mean of each reward term over the rows it scored (null when none could be).
    pub scores: BTreeMap<String, Value>,
}

/// Runs every probe of `plan` on the checkpoint `path` with the plan's data and verifiers,
/// stage by stage; `opts` gives the device and the directory relative paths start from.
pub fn evaluate(plan: &Plan, path: &Path, opts: &RunOptions) -> Result<Vec<ProbeResult>> {
    let dir = checkpoint_dir(path)?;
    let device = parse_device(&opts.device)?;
    let base = opts.base_dir.as_path();
    let probed: Vec<&str> = plan
        .stages
        .iter()
        .flat_map(|s| s.evals.iter().map(|e| e.source.as_str()))
        .collect();
    if probed.is_empty() {
        return Err(CheckpointError(format!(
            "the plan of {} declares no probes (`eval NAME = probe(SOURCE, ...)`); there is \
             nothing to evaluate",
            plan.source_file
        ))
        .into());
    }
    let mut datasets = BTreeMap::new();
    for s in plan
        .sources
        .iter()
        .filter(|s| probed.contains(&s.name.as_str()))
    {
        datasets.insert(s.name.to_string(), Dataset::load(s, base)?);
    }
    // A grader's warnings (no Landlock on this kernel) go to the terminal: an evaluation writes
    // no run summary to hold them.
    let (verifiers, grader_warnings) = rewards::build_verifiers(plan, base, opts.allow_exec)?;
    for w in grader_warnings {
        eprintln!("warning: {w}");
    }
    let models = build_policy(plan, base, &device, Some(&dir))
        .with_context(|| format!("loading the checkpoint {}", dir.display()))?;
    let ctx = step::Ctx {
        plan,
        opts,
        device,
        datasets,
        verifiers,
        run_rng: HostRng::new(0),
        out: None,
        global_step: 0,
        total_steps: 0,
        dry_prompts: None,
        progress: None,
        flat_steps: 0,
        comm: &mut crate::dist::Single,
        shards: 1,
    };
    let mut results = Vec::new();
    for stage in &plan.stages {
        for e in &stage.evals {
            let rows = ctx.datasets.get(e.source.as_str()).map_or(0, |d| {
                e.limit
                    .map_or(d.rows.len(), |l| d.rows.len().min(l as usize))
            });
            let scores = ctx
                .probe(e, &models)
                .with_context(|| format!("probe `{}`", e.name))?;
            results.push(ProbeResult {
                stage: stage.name.to_string(),
                probe: e.name.to_string(),
                source: e.source.to_string(),
                rows,
                scores: scores.into_iter().collect(),
            });
        }
    }
    Ok(results)
}
