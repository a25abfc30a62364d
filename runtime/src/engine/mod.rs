//! The training engine: takes a `recap_plan::Plan` and [`RunOptions`]; gives a training run (a
//! run directory with the resolved plan, `metrics.jsonl`, `samples.jsonl`, checkpoints and the
//! final weights) and a [`RunSummary`]. It reads only the plan, never the compiler.
//!
//! Stages run in order, each starting from the weights the previous one left. One step of a
//! stage: the mixer draws the source(s); for each objective on a drawn source, GRPO samples G
//! completions per prompt and scores them with the verifiers, or SFT runs its forward and
//! backward pass; the reweighter takes the step's tracked scalars (batch-mean reward per
//! (source, term) key, SFT NLL) and gives this step's lambdas; GRPO combines the reward terms
//! with them, normalises per group and builds the clipped-ratio loss (k3 KL against the frozen
//! reference only when a KL term is declared), SFT scales its gradients to `lambda * nll`; then
//! gradient clipping, the optimiser step with the schedule's learning rate, probes, samples,
//! checkpoints and one metrics line.

pub mod checkpoint;
pub mod data;
mod dp;
mod extend;
pub mod graders;
mod init;
pub mod metrics_log;
pub mod optim;
pub mod presets;
pub mod progress;
pub mod rewards;
pub mod rundir;
mod step;
pub mod trial;
mod warnings;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{DType, Device};
use recap_plan::{Dtype, ModelSpec, ObjectiveSpec, Plan, Stage};
use serde::Serialize;
use serde_json::{json, Value};

use crate::model::{load_hf_dir_with, Family, LoadOptions, LoraSpec, Model, ModelConfig};

use crate::tokenizer::TextTokenizer;
use crate::train::mix::{coreset_rows, Mixer, SourceInfo, SourceRole};
use crate::train::reweight::{KeyKind, ObjectiveKey, Reweighter};
use crate::train::rng::HostRng;
use data::{resolve_path, Dataset, Reader};
use optim::Optim;
pub use progress::ProgressMode;
pub use rundir::RunDirError;

/// How to run a plan.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// Overrides the plan's `train.out` (of every stage).
    pub out: Option<PathBuf>,
    /// A run directory to continue from its newest complete checkpoint.
    pub resume: Option<PathBuf>,
    /// Let a fresh run use a directory that is not empty: the files an earlier run wrote there
    /// are removed first, and nothing else is touched. Without it such a directory is refused.
    pub overwrite: bool,
    /// Build every node, load data and models, print the per-step cost estimate, and run one
    /// step on two prompts per stage where its estimated memory fits; write nothing.
    pub dry_run: bool,
    pub progress: ProgressMode,
    /// Relative paths of the plan (data files, model directories, `out`) are resolved here,
    /// usually the directory of the pipeline file.
    pub base_dir: PathBuf,
    /// Write sample completions every this many steps (0: never).
    pub samples_every: u64,
    /// Stop after this many global steps, as if the process were killed (testing resume).
    pub stop_after: Option<u64>,
    /// Train through candle's autograd even where the hand-written CPU pass (`model::fast`)
    /// applies, so that both paths can be compared on the same run.
    pub autograd: bool,
    /// Set from outside (the command line's SIGINT and SIGTERM handler) to ask the run to stop:
    /// the step under way finishes, a checkpoint is written, and the run returns with
    /// [`RunSummary::interrupted`] naming it.
    pub stop: Option<Arc<AtomicBool>>,
    /// The hashes of the files the plan reads, kept in the run directory's `plan.json` as its
    /// `file_hashes` field, so that a resume can tell whether they changed since.
    pub file_hashes: Option<Value>,
    /// Let `exec(...)` verifiers run their programs; without it a plan that has one is refused.
    pub allow_exec: bool,
    /// Shards each step's batch is cut into (see `docs/scaling.md`); by default one per rank
    /// of the job. A shard has its own rollout seed and gradient sum, so a run with the same
    /// shard count takes the same steps bit for bit on any number of ranks that divides it:
    /// give a single process a job's rank count to reproduce that job on one device.
    pub shards: Option<usize>,
    /// The world size a dry run's per-rank memory estimate is for, when the dry run itself
    /// runs as one process (`recapc run --dry-run` under `WORLD_SIZE`, or `--gpus N`); by
    /// default the job's world size.
    pub estimate_ranks: Option<usize>,
    /// Keep every step's metrics record in [`RunSummary::metrics`] (they are in the run
    /// directory's `metrics.jsonl` either way). A record held in memory takes several KiB, so
    /// a run of many thousands of steps that does not read them back should say `false`, as
    /// `recapc run` does.
    pub keep_records: bool,
}

/// Whether the environment asks for candle's autograd (`RECAP_AUTOGRAD=1`): read by the
/// command line and the examples when they fill [`RunOptions::autograd`], so the library itself
/// never reads the environment.
pub fn autograd_from_env() -> bool {
    std::env::var_os("RECAP_AUTOGRAD").is_some_and(|v| v == "1")
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            device: "cpu".into(),
            out: None,
            resume: None,
            overwrite: false,
            dry_run: false,
            progress: ProgressMode::Auto,
            base_dir: PathBuf::from("."),
            samples_every: 10,
            stop_after: None,
            autograd: false,
            stop: None,
            keep_records: true,
            file_hashes: None,
            allow_exec: false,
            shards: None,
            estimate_ranks: None,
        }
    }
}

/// The per-step cost of one stage, estimated from the plan's shapes and the model's
/// configuration before any step runs.
#[derive(Debug, Clone, Serialize)]
pub struct CostEstimate {
    pub stage: String,
    /// Prompts per step the estimate is for (the stage's `prompts_per_step`).
    pub prompts: usize,
    /// Upper bound: every row runs to `max_tokens`.
    pub generated_tokens: usize,
    /// Tokens through the policy's forward and backward pass.
    pub forward_backward_tokens: usize,
    /// Tokens through the frozen reference's forward pass.
    pub reference_tokens: usize,
    /// The policy's weights as stored (f32, or bf16 for a policy that trains in bf16, whose
    /// f32 masters are in `optimizer_bytes`).
    pub weight_bytes: usize,
    /// The gradients of the trainable weights, in the weights' dtype.
    pub gradient_bytes: usize,
    pub optimizer_bytes: usize,
    pub reference_bytes: usize,
    /// The rollout's KV cache at the longest sequence, in the compute dtype.
    pub kv_cache_bytes: usize,
    /// A rough bound on the per-layer activations the backward pass keeps.
    pub activation_bytes: usize,
    /// The logits and their log-softmax over the vocabulary for every training token.
    pub logits_bytes: usize,
    /// The update's f32 copy of every gradient, for weights stored in a half dtype; it lives
    /// after the training pass has freed its activations.
    pub update_bytes: usize,
    /// Measured seconds of the dry-run step (on two prompts), when it ran.
    pub dry_step_seconds: Option<f64>,
    /// Why the dry-run step did not run, when it did not.
    pub dry_step_skipped: Option<String>,
    /// The data-parallel ranks the estimate is for: `prompts` and the memory are one rank's,
    /// its optimiser state the largest rank's shard (ZeRO-1).
    pub ranks: usize,
    /// What the process held before the model loaded (the runtime's code, the sources, the
    /// verifiers), measured by a dry run on the CPU; 0 on a GPU, whose memory holds none of it,
    /// and where the system does not report a process's resident memory.
    pub process_bytes: usize,
}

impl CostEstimate {
    /// The step's peak: the process's own memory, the resident weights, gradients, moments and
    /// reference, plus the largest of the rollout's KV cache, the training pass's activations
    /// and logits, and the update's f32 gradients, since each phase frees its own before the
    /// next begins.
    pub fn peak_bytes(&self) -> usize {
        self.process_bytes
            + self.weight_bytes
            + self.gradient_bytes
            + self.optimizer_bytes
            + self.reference_bytes
            + self
                .kv_cache_bytes
                .max(self.activation_bytes + self.logits_bytes)
                .max(self.update_bytes)
    }
}

/// What a run gives back.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The run directory (`None` for a dry run).
    pub run_dir: Option<PathBuf>,
    /// Global steps completed, including those before a resume.
    pub steps: u64,
    /// The metrics records of the steps this call ran (none unless
    /// [`RunOptions::keep_records`], but for a dry run's steps).
    pub metrics: Vec<Value>,
    /// Dry runs: one estimate per stage.
    pub costs: Vec<CostEstimate>,
    /// The topological order of the plan's graph the executor checked.
    pub graph_order: Vec<String>,
    pub seconds: f64,
    /// The checkpoint written when [`RunOptions::stop`] stopped the run before its end.
    pub interrupted: Option<PathBuf>,
    /// The warnings this call gave (also printed): those of the plan as loaded, then those the
    /// steps' records carry under `warnings`.
    pub warnings: Vec<String>,
}

/// Parses `cpu` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        _ => {
            let n = s
                .strip_prefix("cuda")
                .map(|r| r.trim_start_matches(':'))
                .ok_or_else(|| anyhow!("unknown device `{s}`; use `cpu` or `cuda:N`"))?;
            let n: usize = if n.is_empty() {
                0
            } else {
                n.parse()
                    .map_err(|_| anyhow!("unknown device `{s}`; use `cpu` or `cuda:N`"))?
            };
            Device::new_cuda(n).with_context(|| {
                format!("cannot open {s} (is this build compiled with `--features cuda`?)")
            })
        }
    }
}

/// The policy, its tokenizer and the optional frozen reference.
pub(crate) struct Models {
    pub policy: Model,
    pub tok: TextTokenizer,
    /// The reference is copied from the policy at the start of the first stage that needs it.
    pub reference: Option<Model>,
}

fn dtype_of(d: Dtype) -> DType {
    match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::Bf16 => DType::BF16,
    }
}

fn load_tokenizer(path: &Path) -> Result<TextTokenizer> {
    let tok = if path.is_dir() {
        TextTokenizer::from_dir(path)?
    } else {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read tokenizer {}", path.display()))?;
        TextTokenizer::from_json_str(&text)?
    };
    Ok(tok)
}

/// The spec of the plan's model `name`.
fn model_spec<'p>(plan: &'p Plan, name: &str) -> Result<&'p ModelSpec> {
    plan.models
        .iter()
        .find(|m| m.name == name)
        .map(|m| &m.spec)
        .ok_or_else(|| anyhow!("the plan's model `{name}` is not among its models"))
}

/// The model a LoRA policy adapts, when the policy is `lora(...)`.
fn lora_base(plan: &Plan) -> Option<&str> {
    match model_spec(plan, &plan.policy) {
        Ok(ModelSpec::Lora { of, .. }) => Some(of),
        _ => None,
    }
}

/// Builds the policy named by the plan (weights from `weights_dir` when resuming). A LoRA
/// policy's base is built from its own spec every time; a checkpoint holds its adapters.
fn build_policy(
    plan: &Plan,
    base: &Path,
    device: &Device,
    weights_dir: Option<&Path>,
) -> Result<Models> {
    let spec = model_spec(plan, &plan.policy)?;
    let ModelSpec::Lora {
        of,
        rank,
        alpha,
        targets,
        seed,
    } = spec
    else {
        return build_model(plan, spec, base, device, weights_dir);
    };
    let models = build_model(plan, model_spec(plan, of)?, base, device, None)?;
    let lora = LoraSpec {
        rank: *rank as usize,
        alpha: *alpha,
        targets: targets.clone(),
        seed: *seed,
    };
    let policy = models
        .policy
        .with_lora(lora)
        .with_context(|| format!("model `{}`: adding LoRA adapters", plan.policy))?;
    if let Some(d) = weights_dir {
        policy
            .load_adapter_file(d)
            .with_context(|| format!("model `{}`: reading its adapters", plan.policy))?;
    }
    Ok(Models { policy, ..models })
}

/// Builds the model of `spec` as the policy (weights from `weights_dir` when resuming).
fn build_model(
    plan: &Plan,
    spec: &ModelSpec,
    base: &Path,
    device: &Device,
    weights_dir: Option<&Path>,
) -> Result<Models> {
    let load = |dir: &Path, dtype: DType| -> Result<Model> {
        let mut m = load_hf_dir_with(
            dir,
            &LoadOptions {
                dtype: DType::F32,
                trainable: true,
                device: device.clone(),
            },
        )
        .with_context(|| format!("loading model {}", dir.display()))?;
        // A half dtype only pays on CUDA; there the policy trains in it, with f32 master
        // weights in the optimiser.
        if dtype != DType::F32 && device.is_cuda() {
            m.train_in(dtype)?;
        }
        Ok(m)
    };
    let (policy, tok) = match spec {
        ModelSpec::Hf { dir, dtype } => {
            let dir = resolve_path(base, dir);
            let tok = TextTokenizer::from_dir(&dir)
                .with_context(|| format!("loading the tokenizer of {}", dir.display()))?;
            (load(weights_dir.unwrap_or(&dir), dtype_of(*dtype))?, tok)
        }
        ModelSpec::Gguf {
            file,
            tokenizer,
            dtype,
        } => {
            // The file is dequantised in memory (as `recapc import gguf` does before writing):
            // f32 master weights with HF names, config and tokenizer from its metadata.
            let path = resolve_path(base, file);
            let converted = crate::gguf::convert(&path)
                .with_context(|| format!("model `{}`: reading {}", plan.policy, path.display()))?;
            let tok = match tokenizer {
                Some(p) => load_tokenizer(&resolve_path(base, p))?,
                None => {
                    let inner = tokenizers::Tokenizer::from_bytes(
                        converted.tokenizer.to_string().as_bytes(),
                    )
                    .map_err(|e| {
                        anyhow!(
                            "model `{}`: the tokenizer in {}: {e}",
                            plan.policy,
                            path.display()
                        )
                    })?;
                    TextTokenizer::new(inner, Some(converted.tokenizer_config.clone()))
                }
            };
            let model = match weights_dir {
                Some(d) => load(d, dtype_of(*dtype))?,
                None => {
                    let config = ModelConfig::from_json_str(&converted.config.to_string(), &path)
                        .with_context(|| format!("model `{}`: config", plan.policy))?;
                    let tensors = converted.tensors.into_iter().collect();
                    let mut m = Model::from_tensors(config, tensors, DType::F32, true, device)
                        .with_context(|| format!("model `{}`: weights", plan.policy))?;
                    if dtype_of(*dtype) != DType::F32 && device.is_cuda() {
                        m.train_in(dtype_of(*dtype))?;
                    }
                    m
                }
            };
            (model, tok)
        }
        ModelSpec::Tiny {
            vocab,
            hidden,
            layers,
            heads,
            kv_heads,
            intermediate,
            seed,
            tokenizer,
        } => {
            let tok = match tokenizer {
                Some(p) => load_tokenizer(&resolve_path(base, p))?,
                None => TextTokenizer::arithmetic()?,
            };
            if tok.vocab_size() > *vocab as usize {
                bail!(
                    "model `{}`: tiny(vocab = {vocab}) is smaller than its tokenizer's {} tokens",
                    plan.policy,
                    tok.vocab_size()
                );
            }
            let mut cfg = ModelConfig::new(
                Family::Qwen2,
                *vocab as usize,
                *hidden as usize,
                *intermediate as usize,
                *layers as usize,
                *heads as usize,
                *kv_heads as usize,
                true,
            );
            cfg.eos_token_ids = tok.eos_ids.clone();
            cfg.pad_token_id = Some(tok.pad_id);
            let model = match weights_dir {
                Some(d) => load(d, DType::F32)?,
                None => Model::tiny(&cfg, *seed, DType::F32, device)
                    .with_context(|| format!("building tiny model `{}`", plan.policy))?,
            };
            (model, tok)
        }
        ModelSpec::Init {
            config,
            seed,
            dtype,
            tokenizer,
        } => match weights_dir {
            Some(d) => {
                let tok = match tokenizer {
                    Some(p) => init::tokenizer(&plan.policy, &resolve_path(base, p))?,
                    None => TextTokenizer::arithmetic()?,
                };
                (load(d, dtype_of(*dtype))?, tok)
            }
            None => init::build(
                &plan.policy,
                &resolve_path(base, config),
                tokenizer.as_ref().map(|p| resolve_path(base, p)).as_deref(),
                *seed,
                dtype_of(*dtype),
                device,
            )?,
        },
        ModelSpec::Frozen { of } => bail!(
            "the policy `{}` is frozen(`{of}`); a frozen model cannot be trained",
            plan.policy
        ),
        ModelSpec::Lora { of, .. } => bail!(
            "the policy `{}` adapts lora(`{of}`), which has adapters already; use one `lora`",
            plan.policy
        ),
    };
    Ok(Models {
        policy,
        tok,
        reference: None,
    })
}

/// Whether a stage's objectives need the frozen reference.
fn stage_needs_reference(stage: &Stage) -> bool {
    stage.objectives.iter().any(|o| match &o.spec {
        ObjectiveSpec::Grpo { kl: Some(k), .. } => k.coef > 0.0,
        _ => false,
    })
}

fn objective_source(spec: &ObjectiveSpec) -> &str {
    match spec {
        ObjectiveSpec::Grpo { source, .. } | ObjectiveSpec::Sft { source, .. } => source,
    }
}

/// The reweighter keys of a stage: (source, term) for GRPO, the source for SFT.
fn stage_keys(stage: &Stage) -> Result<Vec<ObjectiveKey>> {
    let mut keys: Vec<ObjectiveKey> = Vec::new();
    for o in &stage.objectives {
        match &o.spec {
            ObjectiveSpec::Grpo {
                source, rewards, ..
            } => {
                for t in rewards {
                    keys.push(ObjectiveKey {
                        name: format!("{source}.{}", t.name),
                        source: source.to_string(),
                        kind: KeyKind::Rl,
                        objective: o.name.to_string(),
                    });
                }
            }
            ObjectiveSpec::Sft { source, .. } => keys.push(ObjectiveKey {
                name: source.to_string(),
                source: source.to_string(),
                kind: KeyKind::Sft,
                objective: o.name.to_string(),
            }),
        }
    }
    for (i, k) in keys.iter().enumerate() {
        if keys[..i].iter().any(|o| o.name == k.name) {
            bail!(
                "stage `{}`: objective key `{}` appears twice (two objectives on one source with the same reward term)",
                stage.name,
                k.name
            );
        }
    }
    Ok(keys)
}

/// The run-time state of one stage.
pub(crate) struct StageRt {
    pub index: usize,
    /// Source names in mixer order.
    pub sources: Vec<String>,
    pub readers: Vec<Reader>,
    pub mixer: Mixer,
    pub reweighter: Reweighter,
    pub keys: Vec<ObjectiveKey>,
    /// The weights the last step applied, in key order.
    pub lambdas: Vec<f64>,
    pub optim: Optim,
    /// Steps of this stage completed.
    pub step: u64,
}

/// The run-time state of stage `index`, its optimiser's state sharded for rank `rank` of
/// `world` (ZeRO-1).
fn build_stage(
    plan: &Plan,
    index: usize,
    datasets: &BTreeMap<String, Dataset>,
    policy: &Model,
    (rank, world): (usize, usize),
) -> Result<StageRt> {
    let stage = &plan.stages[index];
    let mut sources: Vec<String> = Vec::new();
    let mut infos = Vec::new();
    for o in &stage.objectives {
        let src = objective_source(&o.spec).to_string();
        if sources.contains(&src) {
            continue;
        }
        let ds = datasets
            .get(&src)
            .ok_or_else(|| anyhow!("objective `{}` reads unknown source `{src}`", o.name))?;
        infos.push(SourceInfo {
            name: src.clone(),
            size: ds.rows.len(),
            role: match o.spec {
                ObjectiveSpec::Grpo { .. } => SourceRole::Rl,
                ObjectiveSpec::Sft { .. } => SourceRole::Replay,
            },
        });
        sources.push(src);
    }
    if sources.is_empty() {
        bail!("stage `{}` has no objectives", stage.name);
    }
    let seed = stage.train.seed;
    let mixer =
        Mixer::new(&stage.mix, infos, seed).with_context(|| format!("stage `{}`", stage.name))?;
    let readers = readers(&sources, datasets, &mixer, seed);
    let keys = stage_keys(stage)?;
    let reweighter = Reweighter::new(&stage.reweight, keys.clone())
        .with_context(|| format!("stage `{}`", stage.name))?;
    let lambdas = reweighter.initial_lambdas();
    let mut optim = Optim::new(&stage.train.optimizer, named_vars(policy)?)?;
    optim.shard(rank, world);
    Ok(StageRt {
        index,
        sources,
        readers,
        mixer,
        reweighter,
        lambdas,
        keys,
        optim,
        step: 0,
    })
}

/// One reader per source (in mixer order); under `coreset` a replay source's reader keeps to
/// the source's coreset, a fixed subset of rows seeded by the stage's seed.
fn readers(
    sources: &[String],
    datasets: &BTreeMap<String, Dataset>,
    mixer: &Mixer,
    seed: u64,
) -> Vec<Reader> {
    sources
        .iter()
        .zip(mixer.coreset_budget())
        .enumerate()
        .map(|(i, (s, budget))| {
            let ds = &datasets[s];
            let seed = seed.wrapping_add(1000 * i as u64 + 1);
            let n = ds.rows.len();
            match budget {
                Some(b) => Reader::over(coreset_rows(n, b, seed), ds.shuffle, seed),
                None => Reader::new(n, ds.shuffle, seed),
            }
        })
        .collect()
}

/// The policy's variables with their HF names, sorted by name.
fn named_vars(policy: &Model) -> Result<Vec<(String, candle_core::Var)>> {
    let vm = policy
        .varmap()
        .ok_or_else(|| anyhow!("the policy has no trainable variables"))?;
    let data = vm
        .data()
        .lock()
        .map_err(|_| anyhow!("the policy's variable map is poisoned"))?;
    let mut named: Vec<(String, candle_core::Var)> =
        data.iter().map(|(n, v)| (n.clone(), v.clone())).collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(named)
}

/// Kahn's algorithm over the plan's graph, ties broken by node order: a cycle is an error.
pub fn graph_order(plan: &Plan) -> Result<Vec<String>> {
    let nodes: Vec<&str> = plan.graph.nodes.iter().map(|n| n.id.as_str()).collect();
    // A table from id to position: scanning the node list for each edge made ordering a large
    // plan's graph quadratic (80k edges times 39k nodes for a 100k-line pipeline). Like the
    // scan, the table gives the first node of an id.
    let mut positions: std::collections::HashMap<&str, usize> =
        std::collections::HashMap::with_capacity(nodes.len());
    for (i, n) in nodes.iter().enumerate() {
        positions.entry(*n).or_insert(i);
    }
    let idx = |id: &str| positions.get(id).copied();
    let mut indeg = vec![0usize; nodes.len()];
    let mut out: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for e in &plan.graph.edges {
        let (Some(a), Some(b)) = (idx(&e.from), idx(&e.to)) else {
            bail!(
                "the plan's graph has an edge {} -> {} to an unknown node",
                e.from,
                e.to
            );
        };
        out[a].push(b);
        indeg[b] += 1;
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..nodes.len()).filter(|&i| indeg[i] == 0).collect();
    let mut order = Vec::new();
    while let Some(&i) = ready.iter().next() {
        ready.remove(&i);
        order.push(nodes[i].to_string());
        for &j in &out[i] {
            indeg[j] -= 1;
            if indeg[j] == 0 {
                ready.insert(j);
            }
        }
    }
    if order.len() != nodes.len() {
        bail!("the plan's graph has a cycle; recompile the pipeline");
    }
    Ok(order)
}

/// Runs a plan. See the module documentation for what one step does.
pub fn run(plan: &Plan, opts: &RunOptions) -> Result<RunSummary> {
    run_with(plan, opts, &mut crate::dist::Single)
}

/// The outcome of `r` agreed by every rank: `r` where every rank succeeded, an error on every
/// rank where any failed (its own where it failed, else one naming the failure elsewhere). It
/// keeps a rank that failed alone (a run directory the leader refused) from leaving the others
/// waiting in their next collective.
fn agree<T>(comm: &mut dyn crate::dist::Collective, what: &str, r: Result<T>) -> Result<T> {
    if comm.world() == 1 {
        return r;
    }
    let mut failed = [f64::from(u8::from(r.is_err()))];
    comm.all_reduce_f64(&mut failed)?;
    match r {
        Err(e) => Err(e),
        Ok(_) if failed[0] > 0.0 => bail!("another rank failed {what}; its error says why"),
        Ok(v) => Ok(v),
    }
}

/// Runs a plan as one rank of a data-parallel job whose collectives go through `comm` (see
/// `docs/scaling.md`): every rank draws the same global batch and keeps its shards of it, the
/// sums that span the batch (gradients, advantage moments, the reweighter's signals, metrics)
/// go through `comm`, the optimiser's state is sharded (ZeRO-1), and the leader alone writes
/// the run directory. A world of one ([`crate::dist::Single`]) is [`run`].
pub fn run_with(
    plan: &Plan,
    opts: &RunOptions,
    comm: &mut dyn crate::dist::Collective,
) -> Result<RunSummary> {
    let started = Instant::now();
    if plan.stages.is_empty() {
        bail!("the plan has no stages");
    }
    let graph_order = graph_order(plan)?;
    let device = parse_device(&opts.device)?;
    let base = opts.base_dir.as_path();

    let run_dir = match (&opts.resume, &opts.out) {
        (Some(r), _) => r.clone(),
        (None, Some(o)) => o.clone(),
        (None, None) => resolve_path(base, &plan.stages[0].train.out),
    };
    let (rank, world) = (comm.rank(), comm.world());
    let shards = opts.shards.unwrap_or(world);
    let dry_prompts = 2usize.max(shards);
    let batches: Vec<(String, usize)> = plan
        .stages
        .iter()
        .map(|s| {
            let prompts = if opts.dry_run {
                dry_prompts
            } else {
                s.train.prompts_per_step as usize
            };
            (s.name.to_string(), prompts)
        })
        .collect();
    dp::check_shards(shards, world, &batches)?;
    // The directory is checked before anything is loaded, so that a refusal comes at once;
    // a dry run writes nothing and so needs none. The leader alone takes its lock and writes
    // in it; the other ranks read its run id (to find the checkpoint to resume) once the
    // leader has checked it.
    let leader = comm.is_leader();
    let dir = match (opts.dry_run, &opts.resume, leader) {
        (true, _, _) | (false, _, false) => Ok(None),
        (false, Some(_), true) => rundir::open(&run_dir, rundir::Start::Resume).map(Some),
        (false, None, true) => rundir::open(
            &run_dir,
            rundir::Start::Fresh {
                overwrite: opts.overwrite,
            },
        )
        .map(Some),
    };
    let dir = agree(comm, "to open the run directory", dir)?;
    let run_id = match (&dir, opts.dry_run || opts.resume.is_none()) {
        (Some(d), _) => Some(d.run_id.clone()),
        (None, false) => Some(rundir::run_id(&run_dir)?),
        (None, true) => None,
    };
    let resume =
        match (&opts.resume, &run_id) {
            (Some(path), Some(id)) => Some(checkpoint::newest(path, id)?.ok_or_else(|| {
                anyhow!("{}: no complete checkpoint to resume from", path.display())
            })?),
            _ => None,
        };
    if let Some(c) = &resume {
        // Every rank reads the same checkpoint; the leader alone says what changed.
        let checked = if leader {
            accept_changes(plan, c, &run_dir)
        } else {
            Ok(())
        };
        agree(comm, "to accept the checkpoint's plan", checked)?;
    }

    let mut datasets = BTreeMap::new();
    for s in &plan.sources {
        datasets.insert(s.name.to_string(), Dataset::load(s, base)?);
    }
    let (verifiers, grader_warnings) = rewards::build_verifiers(plan, base, opts.allow_exec)?;
    // What the process holds before the model loads (the runtime's code and data, the sources,
    // the verifiers): the estimate's `process_bytes` on the CPU. Measured before the model, as
    // loading leaves freed buffers in the heap that the step reuses.
    let process_bytes = if opts.dry_run && device.is_cpu() {
        step::resident_bytes().unwrap_or(0)
    } else {
        0
    };
    let mut models = build_policy(
        plan,
        base,
        &device,
        resume.as_ref().map(|c| c.dir.as_path()),
    )?;
    for stage in &plan.stages {
        for o in &stage.objectives {
            if let ObjectiveSpec::Grpo { kl: Some(k), .. } = &o.spec {
                // A LoRA policy's base with the adapters off is its frozen copy, so a
                // reference may name either.
                let of_policy = |of: &str| of == plan.policy || Some(of) == lora_base(plan);
                match plan.models.iter().find(|m| m.name == k.reference) {
                    Some(m) if matches!(&m.spec, ModelSpec::Frozen { of } if of_policy(of)) => {}
                    _ => bail!(
                        "objective `{}`: the KL reference `{}` must be frozen({})",
                        o.name,
                        k.reference,
                        plan.policy
                    ),
                }
            }
        }
    }

    let mut ctx = step::Ctx {
        plan,
        opts,
        device: device.clone(),
        datasets,
        verifiers,
        run_rng: HostRng::new(plan.stages[0].train.seed ^ 0x005e_ed0f_ec4b),
        out: None,
        global_step: 0,
        total_steps: plan.stages.iter().map(|s| s.train.steps).sum(),
        dry_prompts: opts.dry_run.then_some(dry_prompts),
        progress: None,
        flat_steps: 0,
        comm,
        shards,
    };

    let mut summary = RunSummary {
        run_dir: (!opts.dry_run).then(|| run_dir.clone()),
        graph_order,
        warnings: [
            grader_warnings,
            warnings::at_load(plan, &device, &models.tok),
        ]
        .concat(),
        ..RunSummary::default()
    };
    for w in &summary.warnings {
        ctx.warn(w);
    }

    if opts.dry_run {
        const GIB: f64 = (1u64 << 30) as f64;
        let ranks = opts.estimate_ranks.unwrap_or(world).max(1);
        for i in 0..plan.stages.len() {
            let mut rt = build_stage(plan, i, &ctx.datasets, &models.policy, (rank, world))?;
            // One rank's share of the batch: the largest shard times the shards it holds.
            let per_rank =
                |prompts: usize, shards: usize| prompts.div_ceil(shards) * (shards / ranks).max(1);
            let prompts = plan.stages[i].train.prompts_per_step as usize;
            let est_shards = opts.shards.unwrap_or(ranks).max(ranks);
            let mut cost = step::estimate(
                plan,
                i,
                &ctx.datasets,
                &models,
                &rt,
                per_rank(prompts, est_shards),
                ranks,
            )?;
            cost.process_bytes = process_bytes;
            // The measured step is skipped where its own analytical peak exceeds what the
            // machine can give, so that the estimate of a model too big for this host still
            // prints. Only the host's memory is known here; on CUDA the step always runs.
            let dry = step::estimate(
                plan,
                i,
                &ctx.datasets,
                &models,
                &rt,
                dry_prompts.div_ceil(world),
                world,
            )?;
            let available = if device.is_cpu() {
                step::mem_available()
            } else {
                None
            };
            match available.filter(|&a| dry.peak_bytes() > a) {
                Some(a) => {
                    cost.dry_step_skipped = Some(format!(
                        "its estimated peak on {dry_prompts} prompts, {:.1} GiB, exceeds the {:.1} GiB of memory available",
                        dry.peak_bytes() as f64 / GIB,
                        a as f64 / GIB
                    ));
                }
                None => {
                    if stage_needs_reference(&plan.stages[i]) && models.reference.is_none() {
                        models.reference = Some(models.policy.frozen_copy()?);
                    }
                    let t = Instant::now();
                    let record = ctx.step(&mut rt, &mut models)?;
                    cost.dry_step_seconds = Some(t.elapsed().as_secs_f64());
                    summary.metrics.push(record);
                }
            }
            if leader {
                println!("{}", step::describe_cost(&cost));
            }
            summary.costs.push(cost);
        }
        if leader {
            println!("graph order: {}", summary.graph_order.join(" -> "));
        }
        summary.seconds = started.elapsed().as_secs_f64();
        return Ok(summary);
    }

    let run_id = run_id.as_deref().unwrap_or_default();
    let plan_text = match &opts.file_hashes {
        None => plan.to_json(),
        Some(hashes) => {
            // An extra top-level field, as `recapc plan` writes it: the plan crate ignores it.
            let mut value = serde_json::to_value(plan)?;
            if let Value::Object(map) = &mut value {
                map.insert("file_hashes".into(), hashes.clone());
            }
            serde_json::to_string_pretty(&value)?
        }
    };
    let keep_until = resume.as_ref().map(|c| c.state.global_step);
    // The run's files serve every stage, so they are written in each format any stage asks for.
    let mut logs: Vec<recap_plan::LogFormat> = plan
        .stages
        .iter()
        .flat_map(|s| s.train.log.iter().copied())
        .collect();
    logs.sort();
    logs.dedup();
    // The leader alone writes the run's files and shows its progress.
    let opened = if leader {
        rundir::replace_file(&run_dir, "plan.json", (plan_text + "\n").as_bytes())
            .and_then(|_| progress::RunFiles::open(&run_dir, keep_until, &logs))
            .map(Some)
    } else {
        Ok(None)
    };
    ctx.out = agree(&mut *ctx.comm, "to write the run's files", opened)?;
    if leader {
        ctx.progress = Some(progress::Progress::new(opts.progress, ctx.total_steps));
    }

    let (first_stage, mut restored) = match &resume {
        Some(c) => (c.state.stage_index, Some(c)),
        None => (0, None),
    };
    for i in first_stage..plan.stages.len() {
        let stage = &plan.stages[i];
        let mut rt = build_stage(plan, i, &ctx.datasets, &models.policy, (rank, world))?;
        if let Some(c) = restored.take() {
            checkpoint::restore(c, &mut ctx, &mut rt, &mut models)?;
            // A LoRA policy's reference is its base, shared rather than saved (see `save`).
            if models.policy.lora_spec().is_some() && stage_needs_reference(stage) {
                models.reference = Some(models.policy.frozen_copy()?);
            }
        } else {
            if stage_needs_reference(stage) && models.reference.is_none() {
                models.reference = Some(models.policy.frozen_copy()?);
            }
            ctx.global_step = plan.stages[..i].iter().map(|s| s.train.steps).sum();
        }
        let mut health = Health::new(&models.policy, stage.train.bad_steps)?;
        while rt.step < stage.train.steps {
            if opts.stop_after.is_some_and(|s| ctx.global_step >= s) {
                ctx.finish();
                summary.steps = ctx.global_step;
                summary.seconds = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
            let record = ctx.step(&mut rt, &mut models)?;
            let bad = health.check(&record, &models.policy)?;
            if let Some(why) = &bad {
                ctx.warn(&format!(
                    "step {} is bad: {why} ({} of {} in a row)",
                    ctx.global_step, health.bad, health.limit
                ));
                if health.bad >= health.limit {
                    ctx.finish();
                    let newest = checkpoint::newest(&run_dir, run_id)?;
                    bail!(
                        "the run collapsed: {} bad steps in a row, the last at step {} ({why}); {}. \
                         Lower the learning rate, or raise `bad_steps` in `train {{ ... }}`",
                        health.bad,
                        ctx.global_step,
                        match newest {
                            Some(c) => format!(
                                "its newest checkpoint, {}, predates them",
                                c.dir.display()
                            ),
                            None => "no checkpoint was written before them".to_string(),
                        }
                    );
                }
            }
            if let Some(ws) = record.get("warnings").and_then(Value::as_array) {
                summary
                    .warnings
                    .extend(ws.iter().filter_map(Value::as_str).map(str::to_string));
            }
            if opts.keep_records {
                summary.metrics.push(record);
            }
            // A stop asked of any rank (each has its own SIGINT handler, and a launcher's signal
            // reaches them at different moments) stops every rank after the same step.
            let mut stop = [f64::from(u8::from(
                opts.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst)),
            ))];
            ctx.comm.all_reduce_f64(&mut stop)?;
            let stopping = stop[0] > 0.0;
            let ck = stage.train.checkpoint.as_ref();
            // A checkpoint every `every` steps and at the end of the stage, as the stdlib's
            // `every` promises, and whenever the run is asked to stop, with or without a
            // checkpoint setting, so that a stopped run can always be resumed.
            let due = ck.is_some_and(|c| {
                (c.every > 0 && rt.step.is_multiple_of(c.every)) || rt.step == stage.train.steps
            });
            // A bad step writes no checkpoint, so the newest one stays good; a stop asked for
            // writes one all the same, since it is the only way to resume where the run was.
            if (due && bad.is_none()) || stopping {
                let keep = ck.and_then(|c| c.keep);
                let saved = checkpoint::save(&run_dir, &mut ctx, &rt, &models, run_id, keep)?;
                if stopping {
                    ctx.finish();
                    summary.steps = ctx.global_step;
                    summary.seconds = started.elapsed().as_secs_f64();
                    summary.interrupted = Some(saved);
                    return Ok(summary);
                }
            }
        }
    }
    let final_dir = run_dir.join("final");
    let written = if leader {
        checkpoint::write_atomic(&run_dir, "final", |dir| {
            crate::checkpoint::save_hf_dir(&models.policy, Some(&models.tok), dir)?;
            Ok(())
        })
        .with_context(|| format!("writing {}", final_dir.display()))
    } else {
        Ok(())
    };
    // Every rank returns once the final weights are written.
    agree(&mut *ctx.comm, "to write the final weights", written)?;
    ctx.finish();
    summary.steps = ctx.global_step;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Holds the plan a resume is given against the plan checkpoint `c` was written under: the
/// same plan passes; a changed one passes, its differences shown, only when it alters none of
/// the steps taken (see [`extend`]). The checkpoint's own copy of its plan is read, or, for a
/// checkpoint written before checkpoints held one, the run directory's `plan.json` when it is
/// that plan.
fn accept_changes(plan: &Plan, c: &checkpoint::Found, run_dir: &Path) -> Result<()> {
    if c.state.plan_hash == plan.content_hash {
        return Ok(());
    }
    let read = |path: &Path| -> Option<Plan> {
        let regular = std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file());
        let text = regular.then(|| std::fs::read_to_string(path).ok())??;
        Plan::from_json(&text)
            .ok()
            .filter(|p| p.content_hash == c.state.plan_hash)
    };
    let Some(old) = read(&c.dir.join("plan.json")).or_else(|| read(&run_dir.join("plan.json")))
    else {
        return Err(RunDirError(format!(
            "{}: the checkpoint was written by a different plan (hash {} vs {}) that the run no              longer holds, so what changed cannot be checked; resume with the pipeline the run              started with",
            c.dir.display(),
            c.state.plan_hash,
            plan.content_hash
        ))
        .into());
    };
    let position = extend::Position {
        global_step: c.state.global_step,
        stage_index: c.state.stage_index,
        stage_step: c.state.stage_step,
    };
    let changes = extend::check(&old, plan, position)
        .with_context(|| format!("cannot resume the run in {}", run_dir.display()))?;
    eprintln!(
        "resuming from step {} with a changed pipeline (it alters none of the steps taken):",
        c.state.global_step
    );
    for line in changes {
        eprintln!("{line}");
    }
    Ok(())
}

/// How many times its norm at the stage's start the weights may grow before a step counts as
/// bad: two orders of magnitude, far beyond what a learning rate that trains gives.
const WEIGHT_GROWTH_LIMIT: f64 = 100.0;

/// Watches the steps of a stage for a run gone wrong: a loss or gradient that is not finite
/// (the optimiser skipped its update), a zero gradient under a non-zero loss (the model has
/// collapsed to where nothing flows back), or weights grown by orders of magnitude.
struct Health {
    /// The weights' norm when the stage began or was resumed.
    start_norm: f64,
    /// Bad steps in a row so far.
    bad: u64,
    /// Bad steps in a row that stop the run (`train { bad_steps }`; plans written before the
    /// setting stop at the first, as they did when a non-finite gradient was an error).
    limit: u64,
}

impl Health {
    fn new(policy: &Model, limit: Option<u64>) -> Result<Health> {
        Ok(Health {
            start_norm: weight_norm(policy)?,
            bad: 0,
            limit: limit.unwrap_or(1).max(1),
        })
    }

    /// Why the step of `record` is bad, if it is; counts it.
    fn check(&mut self, record: &Value, policy: &Model) -> Result<Option<String>> {
        let why = match (record["loss"].as_f64(), record["grad_norm"].as_f64()) {
            (None, _) | (_, None) => {
                Some("its loss or gradient is not finite; its update was skipped".to_string())
            }
            (Some(loss), Some(grad)) if grad == 0.0 && loss != 0.0 => {
                Some(format!("its gradient is zero while its loss is {loss}"))
            }
            _ => {
                let norm = weight_norm(policy)?;
                // A norm that is not finite has grown past any bound too.
                let grown = !norm.is_finite() || norm > WEIGHT_GROWTH_LIMIT * self.start_norm;
                grown.then(|| {
                    format!(
                        "the weights' norm grew from {:.4} to {norm:.4}",
                        self.start_norm
                    )
                })
            }
        };
        self.bad = if why.is_some() { self.bad + 1 } else { 0 };
        Ok(why)
    }
}

/// The L2 norm of all the policy's trainable weights.
fn weight_norm(policy: &Model) -> Result<f64> {
    let mut sum = 0.0f64;
    for v in policy.trainable_vars() {
        let squares = v.as_tensor().to_dtype(DType::F32)?.sqr()?.sum_all()?;
        sum += squares.to_scalar::<f32>()? as f64;
    }
    Ok(sum.sqrt())
}

/// A JSON number, or null for a non-finite value (JSON has no NaN).
pub(crate) fn num(x: f64) -> Value {
    if x.is_finite() {
        json!(x)
    } else {
        Value::Null
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use recap_plan::Reweight;

    #[test]
    fn graph_cycles_and_devices_are_reported() {
        let mut plan = presets::quickstart("x", 1, 1);
        let order = graph_order(&plan).unwrap();
        let pos = |id: &str| order.iter().position(|n| n == id).unwrap();
        assert!(pos("source.math") < pos("rl.mix") && pos("rl.mix") < pos("rl.optimizer"));
        plan.graph.edges.push(recap_plan::Edge {
            from: "rl.metrics".into(),
            to: "rl.mix".into(),
        });
        assert!(graph_order(&plan)
            .unwrap_err()
            .to_string()
            .contains("cycle"));
        assert!(parse_device("tpu").is_err());
        assert!(matches!(parse_device("cpu"), Ok(Device::Cpu)));
    }

    /// Under `coreset` a replay source's reader only ever hands out the rows of its fixed,
    /// seeded subset (replay capped at `cap` times the RL volume); RL sources and other mixers
    /// read every row.
    #[test]
    fn coreset_replay_reads_only_its_subset() {
        let dataset = |name: &str, n: usize| Dataset {
            name: name.into(),
            rows: (0..n)
                .map(|i| data::Row {
                    id: format!("{name}:{i}"),
                    prompt: String::new(),
                    ..Default::default()
                })
                .collect(),
            shuffle: true,
        };
        let datasets: BTreeMap<String, Dataset> = [
            ("math".to_string(), dataset("math", 40)),
            ("general".to_string(), dataset("general", 100)),
        ]
        .into();
        let infos = vec![
            SourceInfo {
                name: "math".into(),
                size: 40,
                role: SourceRole::Rl,
            },
            SourceInfo {
                name: "general".into(),
                size: 100,
                role: SourceRole::Replay,
            },
        ];
        let sources = vec!["math".to_string(), "general".to_string()];
        let coreset = recap_plan::Mix::Coreset {
            cap: 0.5,
            base: Box::new(recap_plan::Mix::Uniform { seed: 1 }),
        };
        let mixer = Mixer::new(&coreset, infos.clone(), 7).unwrap();
        let mut rs = readers(&sources, &datasets, &mixer, 7);
        let seen = |r: &mut Reader| {
            let mut s: Vec<usize> = r.next_batch(1000);
            s.sort_unstable();
            s.dedup();
            s
        };
        // Half the reasoning volume: 20 of the 100 replay rows, the same 20 every epoch.
        let replay = seen(&mut rs[1]);
        assert_eq!(replay.len(), 20);
        assert_eq!(replay, coreset_rows(100, 20, 7 + 1001));
        assert_eq!(seen(&mut rs[0]).len(), 40);
        let again = readers(&sources, &datasets, &mixer, 7);
        assert_eq!(seen(&mut again[1].clone()), replay, "the subset is seeded");
        let uniform = Mixer::new(&recap_plan::Mix::Uniform { seed: 1 }, infos, 7).unwrap();
        assert_eq!(
            seen(&mut readers(&sources, &datasets, &uniform, 7)[1]).len(),
            100
        );
    }

    /// A step whose loss or gradient is not finite, or whose gradient is zero under a non-zero
    /// loss, is bad; a good step ends the count; weights grown a hundredfold make a step bad.
    #[test]
    fn health_counts_bad_steps_in_a_row() {
        let cfg = ModelConfig::new(Family::Qwen2, 16, 8, 16, 1, 2, 2, true);
        let model = Model::tiny(&cfg, 1, DType::F32, &Device::Cpu).unwrap();
        let mut h = Health::new(&model, Some(3)).unwrap();
        let rec = |loss: Value, grad: Value| json!({ "loss": loss, "grad_norm": grad });
        let nan = rec(json!(1.0), Value::Null);
        assert!(h
            .check(&nan, &model)
            .unwrap()
            .unwrap()
            .contains("not finite"));
        let zero = rec(json!(2.5), json!(0.0));
        assert!(h
            .check(&zero, &model)
            .unwrap()
            .unwrap()
            .contains("gradient is zero"));
        assert_eq!(h.bad, 2);
        assert_eq!(h.check(&rec(json!(0.0), json!(0.0)), &model).unwrap(), None);
        assert_eq!(h.bad, 0);
        for v in model.trainable_vars() {
            v.set(&(v.as_tensor() * 1000.0).unwrap()).unwrap();
        }
        let grown = h.check(&rec(json!(1.0), json!(0.5)), &model).unwrap();
        assert!(grown.unwrap().contains("norm grew"));
        assert_eq!(h.limit, 3);
        assert_eq!(Health::new(&model, None).unwrap().limit, 1);
    }

    #[test]
    fn keys_and_static_weights_follow_objectives() {
        let plan = presets::quickstart("x", 1, 1);
        let rl = &plan.stages[1];
        let keys = stage_keys(rl).unwrap();
        let names: Vec<&str> = keys.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["math.accuracy", "math.format", "copy"]);
        let mut st = rl.clone();
        st.reweight = Reweight::Static {
            weights: [("reasoning".into(), 2.0), ("copy".into(), 0.5)].into(),
        };
        let weights = Reweighter::new(&st.reweight, keys)
            .unwrap()
            .initial_lambdas();
        assert_eq!(weights, [2.0, 2.0, 0.5]);
        assert!(stage_needs_reference(rl) && !stage_needs_reference(&plan.stages[0]));
    }
}
