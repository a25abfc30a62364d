//! The serialisable, versioned Plan: the contract between the recap compiler and runtime.
//! Takes nothing in; gives the types the compiler fills and the runtime executes without the
//! compiler. Every stdlib built-in appears here as an enum variant with all of its parameters
//! resolved (defaults filled, percentages turned into step counts), so the runtime can match
//! on it. `Plan::with_hash` seals a plan with a sha256 over its canonical JSON.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

pub mod graph;

/// A name, id or other short text of the plan (entity names, node ids, field names, markers).
/// Up to 24 bytes are stored inline, without an allocation: a plan of a large pipeline holds
/// hundreds of thousands of them, and keeping them inside their structs spares the compiler
/// an allocation each and the hash and graph a pointer to follow each. Serialised as a string.
pub type Name = compact_str::CompactString;

/// Bumped on every incompatible change of the plan's shape.
pub const PLAN_VERSION: u32 = 1;

/// The resolved job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    /// The pipeline file the plan came from (provenance only).
    pub source_file: String,
    /// Hex sha256 of the canonical JSON of this plan with `content_hash` set to "".
    pub content_hash: String,
    /// Every `param` with its final value (after `--set` overrides).
    pub params: BTreeMap<Name, ParamValue>,
    /// The model being trained.
    pub policy: Name,
    pub models: Vec<Model>,
    pub sources: Vec<Source>,
    pub verifiers: Vec<Verifier>,
    /// Stages in execution order; a file without `stage` items has one stage named `main`.
    pub stages: Vec<Stage>,
    /// The dataflow graph of the whole job.
    pub graph: Graph,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "lowercase")]
pub enum ParamValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    String(String),
    /// A percentage as written (`10%` is 10.0).
    Percent(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub name: Name,
    pub spec: ModelSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelSpec {
    /// A Hugging Face directory (config.json, safetensors, tokenizer.json).
    Hf { dir: Name, dtype: Dtype },
    /// A GGUF file, dequantised on load.
    Gguf {
        file: Name,
        tokenizer: Option<Name>,
        dtype: Dtype,
    },
    /// A seeded random model of the given shape.
    Tiny {
        vocab: u64,
        hidden: u64,
        layers: u64,
        heads: u64,
        kv_heads: u64,
        intermediate: u64,
        seed: u64,
        tokenizer: Option<Name>,
    },
    /// A model of the shape a Hugging Face `config.json` gives, with seeded random weights
    /// (the runtime reads the config when it loads the model).
    Init {
        config: Name,
        seed: u64,
        dtype: Dtype,
        tokenizer: Option<Name>,
    },
    /// A frozen copy of another model's initial weights.
    Frozen { of: Name },
    /// Low-rank adapters on the targeted linears of every block of the model `of`, whose own
    /// weights stay frozen: `W x + (alpha / rank) B A x`, `A` (rank, in) Kaiming-uniform from
    /// `seed`, `B` (out, rank) zero.
    Lora {
        of: Name,
        rank: u64,
        alpha: f64,
        targets: Vec<LoraTarget>,
        seed: u64,
    },
}

/// A linear layer of a transformer block that LoRA adapts, by its Hugging Face name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl LoraTarget {
    /// Every target, in block order.
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::QProj,
        LoraTarget::KProj,
        LoraTarget::VProj,
        LoraTarget::OProj,
        LoraTarget::GateProj,
        LoraTarget::UpProj,
        LoraTarget::DownProj,
    ];

    /// The Hugging Face module name (`q_proj`), as the stdlib's `LoraTarget` spells it.
    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::QProj => "q_proj",
            LoraTarget::KProj => "k_proj",
            LoraTarget::VProj => "v_proj",
            LoraTarget::OProj => "o_proj",
            LoraTarget::GateProj => "gate_proj",
            LoraTarget::UpProj => "up_proj",
            LoraTarget::DownProj => "down_proj",
        }
    }
}

/// A value taken from a data row (sources) or from a completion (verifiers): the steps apply
/// in order; an extractor without a `Field` step starts from the whole text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extractor {
    pub steps: Vec<ExtractStep>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ExtractStep {
    /// The value of a field of the data row.
    Field { name: Name },
    /// The text after the last occurrence of `marker`, trimmed.
    After { marker: Name },
    /// The text before the first occurrence of `marker`, trimmed.
    Before { marker: Name },
    /// The text inside the last `<name>...</name>`.
    Tag { name: Name },
    /// The last number in the text.
    LastNumber,
    /// The first number in the text.
    FirstNumber,
    /// The integer the text starts with, after leading whitespace (`^\s*-?[0-9]+`).
    LeadingInteger,
    /// Leading and trailing whitespace removed.
    Trim,
}

/// A prompt template: literal text and `{field}` placeholders.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Template {
    /// The template as written, placeholders as `{name}`.
    pub text: String,
    /// The placeholder names in order of appearance.
    pub placeholders: Vec<Name>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub name: Name,
    pub spec: SourceSpec,
    /// Named fields the objectives and verifiers read, e.g. `answer`, `target`.
    #[serde(serialize_with = "fields_as_map", deserialize_with = "fields_from_map")]
    pub fields: Fields,
}

/// A source's fields by name: a vector kept sorted by name rather than a `BTreeMap`, whose node
/// holds room for eleven entries however few a source has (most have one or two), which made
/// the fields the largest part of a plan with thousands of sources. Written as a JSON object,
/// keys in order, and read only from one (a repeated key keeps its last value), exactly as
/// the `BTreeMap` it replaces.
pub type Fields = litemap::LiteMap<Name, Extractor>;

/// Writes `Fields` as a JSON object even when empty (litemap writes an empty map as a list).
fn fields_as_map<S: serde::Serializer>(fields: &Fields, s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(fields.iter())
}

/// Reads `Fields` from a JSON object only (litemap would also take a list of pairs, which no
/// plan has ever held).
fn fields_from_map<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Fields, D::Error> {
    Ok(BTreeMap::<Name, Extractor>::deserialize(d)?
        .into_iter()
        .collect())
}

/// A source of rows stored as columns on disk, with splits: what `parquet(...)` and
/// `hf_dataset(...)` share; only the file format differs, which the `SourceSpec` variant names.
/// Its fields serialise beside the variant's `kind`, as a struct variant's would.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSource {
    pub path: Name,
    pub split: Option<Name>,
    /// The prompt template; `None` when each row's `messages` list is the prompt.
    pub prompt: Option<Template>,
    pub limit: Option<u64>,
    pub shuffle: bool,
    /// A system prompt put before each row's turns when the row has none of its own.
    pub system: Option<Name>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceSpec {
    /// Rows of a JSON Lines file.
    Jsonl {
        file: Name,
        /// The prompt template; `None` when each row's `messages` list is the prompt.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        prompt: Option<Template>,
        limit: Option<u64>,
        shuffle: bool,
        /// A system prompt put before each row's turns when the row has none of its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        system: Option<Name>,
    },
    /// Rows of a Parquet file, or of the Parquet shards under a directory (a Hugging Face
    /// dataset snapshot), those of one split when `split` is given.
    Parquet(TableSource),
    /// Rows of a Hugging Face dataset saved with `save_to_disk`: a Dataset directory
    /// (`state.json` naming its Arrow IPC stream shards) or a DatasetDict directory
    /// (`dataset_dict.json` and one Dataset directory per split), that of `split` when given.
    HfDataset(TableSource),
    /// Generated arithmetic problems; fields `prompt` and `answer`.
    Arithmetic {
        count: u64,
        digits: u64,
        ops: Name,
        seed: u64,
    },
    /// Generated "sort these numbers" problems; fields `prompt` and `answer`.
    Sorting { count: u64, length: u64, seed: u64 },
    /// Generated "repeat this text" tasks for replay; fields `prompt`, `target`, `answer`.
    Copying { count: u64, length: u64, seed: u64 },
}

/// The most a `regex` verifier's pattern may compile to, in bytes (`RegexBuilder::size_limit`):
/// the runtime builds patterns with this limit and the checker refuses patterns over it, so
/// `recapc check` accepts exactly the patterns a run can use.
pub const REGEX_SIZE_LIMIT: usize = 1 << 22;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verifier {
    pub name: Name,
    pub spec: VerifierSpec,
}

/// Where a verifier finds the expected answer: a named field of the row of the source being
/// verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    pub field: Name,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum VerifierSpec {
    Regex {
        pattern: Name,
        extract: Extractor,
    },
    Exact {
        expected: Expected,
        extract: Extractor,
        ignore_case: bool,
    },
    Numeric {
        expected: Expected,
        extract: Extractor,
        tolerance: f64,
    },
    MathEqual {
        expected: Expected,
        extract: Extractor,
    },
    Choice {
        expected: Expected,
        extract: Extractor,
        options: Name,
    },
    Iou {
        expected: Expected,
        extract: Extractor,
        threshold: Option<f64>,
    },
    LengthPenalty {
        max_tokens: u64,
        target: Option<u64>,
    },
    /// An external program scores each batch of completions: JSON lines in on its stdin, JSON
    /// lines out on its stdout (docs/rewards.md). `command[0]` is the program; arguments that
    /// name files are relative to the pipeline's directory.
    Exec {
        command: Vec<Name>,
        /// Seconds one batch may take before the program's process group is killed.
        timeout: f64,
        /// The program's address-space limit (`RLIMIT_AS`), in MiB.
        memory_mb: u64,
        /// Completions per call of the program.
        batch: u64,
        extract: Extractor,
    },
    /// A reward-model or judge endpoint: each batch of completions is POSTed as JSON and the
    /// answer gives one reward per completion (docs/rewards.md).
    Http {
        url: Name,
        /// Seconds one request may take.
        timeout: f64,
        /// Completions per request.
        batch: u64,
        /// Further tries of a failed request, with doubling waits between them.
        retries: u64,
        /// A PEM file of the certificates an `https` url is verified against instead of the
        /// Mozilla roots; left out of the plan when not given, so plans without it keep their
        /// content hash.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca: Option<Name>,
        extract: Extractor,
    },
}

impl VerifierSpec {
    /// Whether the verifier runs code outside recap (an `exec` grader), which a run must be
    /// allowed to do explicitly.
    pub fn runs_programs(&self) -> bool {
        matches!(self, VerifierSpec::Exec { .. })
    }
}

/// One reward term of an RL objective (one RECAP key): a linear combination of verifiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardTerm {
    /// The key's name: the verifier's name, or the `let` that names the combination, or
    /// `reward<i>` for an unnamed expression.
    pub name: Name,
    pub parts: Vec<WeightedVerifier>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WeightedVerifier {
    pub weight: f64,
    pub verifier: Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossAggregation {
    TokenMean,
    SeqMeanTokenMean,
    SeqMeanTokenSumNorm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvantageScale {
    Group,
    Batch,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KlEstimator {
    K1,
    K2,
    K3,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kl {
    /// A frozen model.
    pub reference: Name,
    pub coef: f64,
    pub estimator: KlEstimator,
}

/// Sampling of completions for one source: shared by every objective of a stage that reads
/// the same source with the same settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub id: Name,
    pub source: Name,
    pub group: u64,
    pub max_tokens: u64,
    pub temperature: f64,
    pub top_p: f64,
    pub top_k: Option<u64>,
    /// Sample exactly `max_tokens` tokens per completion, past any EOS. Absent in plans
    /// written before the setting existed, and left out when false, so their hashes stay.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_eos: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objective {
    pub name: Name,
    pub spec: ObjectiveSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectiveSpec {
    Grpo {
        source: Name,
        /// The id of the stage's rollout this objective reads.
        rollout: Name,
        rewards: Vec<RewardTerm>,
        clip_low: f64,
        clip_high: f64,
        loss: LossAggregation,
        scale: AdvantageScale,
        kl: Option<Kl>,
        drop_equal_groups: bool,
    },
    Sft {
        source: Name,
        max_tokens: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecapCombine {
    Mixture,
    Sum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecapDirection {
    Regress,
    Paper,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reweight {
    Recap {
        window: u64,
        temperature: f64,
        alpha: f64,
        combine: RecapCombine,
        direction: RecapDirection,
        warmup: bool,
    },
    Uniform,
    /// Fixed weights per objective name; objectives not named weigh 1.
    Static {
        weights: BTreeMap<Name, f64>,
    },
    Dwa {
        temperature: f64,
    },
    Rlw {
        seed: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Mix {
    RoundRobin,
    Uniform {
        seed: u64,
    },
    Proportional,
    /// Draw probabilities per source name.
    Weights {
        weights: BTreeMap<Name, f64>,
    },
    /// Replay (SFT) volume capped at `cap` times the RL volume, drawing with `base` otherwise.
    Coreset {
        cap: f64,
        base: Box<Mix>,
    },
    /// Every source every step, losses summed with their weights.
    All,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Optimizer {
    Adamw {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    Sgd {
        lr: f64,
        momentum: f64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    Constant,
    Linear,
    Cosine,
}

/// Learning-rate schedule: linear warm-up over `warmup_steps`, then `kind` decay to
/// `final_fraction` of the peak rate at the last step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    pub final_fraction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub every: u64,
    pub keep: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Train {
    pub steps: u64,
    pub prompts_per_step: u64,
    /// Completions per forward/backward chunk; `None` means the whole batch at once.
    pub micro_batch: Option<u64>,
    /// Per-block activation recompute: the training pass keeps each block's input only and makes
    /// the block's activations again in the backward. Plans written before the setting existed
    /// have none (off), and plans with it off are written without it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
    pub optimizer: Optimizer,
    pub schedule: Schedule,
    /// Gradient-norm clipping; 0 turns it off.
    pub grad_clip: f64,
    /// Consecutive bad steps (non-finite, or collapsed) after which the run stops; plans
    /// written before the setting existed have none and stop at the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bad_steps: Option<u64>,
    pub seed: u64,
    pub checkpoint: Option<Checkpoint>,
    pub out: String,
    /// Formats the run's metrics are written in besides `metrics.jsonl`; plans written before
    /// the setting existed have none, and omit it so they hash as they did.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub log: Vec<LogFormat>,
}

/// A format of the run's metrics besides `metrics.jsonl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// TensorBoard event files (`events.out.tfevents.*`).
    Tensorboard,
    /// `metrics.csv`.
    Csv,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Eval {
    pub name: Name,
    pub source: Name,
    pub every: u64,
    pub rewards: Vec<RewardTerm>,
    pub limit: Option<u64>,
    pub greedy: bool,
    pub max_tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    pub name: Name,
    pub rollouts: Vec<Rollout>,
    pub objectives: Vec<Objective>,
    pub reweight: Reweight,
    pub mix: Mix,
    pub train: Train,
    pub evals: Vec<Eval>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Graph {
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Unique, stable id such as `model.policy` or `rl.rollout.math`.
    pub id: Name,
    pub kind: NodeKind,
    pub label: Name,
    /// The stage the node belongs to; `None` for nodes shared by all stages.
    pub stage: Option<Name>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Model,
    Reference,
    Source,
    Mixer,
    Rollout,
    Verifier,
    Reward,
    Loss,
    Reweighter,
    Optimizer,
    Probe,
    Checkpoint,
    Metrics,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub from: Name,
    pub to: Name,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanError {
    Json(String),
    Version { found: u32, expected: u32 },
    Hash { found: String, computed: String },
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanError::Json(e) => write!(f, "the plan is not valid JSON of the plan schema: {e}"),
            PlanError::Version { found, expected } => write!(
                f,
                "the plan has version {found}, this build reads version {expected}"
            ),
            PlanError::Hash { found, computed } => write!(
                f,
                "the plan's content_hash {found} does not match its content ({computed}); it was edited"
            ),
        }
    }
}

impl std::error::Error for PlanError {}

impl Plan {
    /// The sha256 (hex) of the canonical JSON of the plan with an empty `content_hash`.
    /// Canonical: serde_json's compact output of these types, whose maps (BTreeMaps, and the
    /// sorted `Fields`) write their keys in order and whose lists keep the compiler's
    /// deterministic order.
    pub fn compute_hash(&self) -> String {
        if self.content_hash.is_empty() {
            return self.digest_as_is();
        }
        let mut copy = self.clone();
        copy.content_hash = String::new();
        copy.digest_as_is()
    }

    /// The sha256 (hex) of the compact JSON of the plan as it stands. The JSON is streamed into
    /// the hasher through a buffer rather than built as one string: large plans are hashed on
    /// every check, and this is the same byte sequence either way.
    fn digest_as_is(&self) -> String {
        struct HashWriter(Sha256);
        impl std::io::Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut out = std::io::BufWriter::with_capacity(1 << 16, HashWriter(Sha256::new()));
        // Serialising these types into memory cannot fail (their maps have string keys); the
        // result is ignored rather than unwrapped so that no input can make this panic.
        let _ = serde_json::to_writer(&mut out, self);
        let hasher = match out.into_inner() {
            Ok(w) => w.0,
            // Unreachable, as the hasher never fails a write; kept total rather than unwrapped.
            Err(e) => e.into_inner().into_parts().0 .0,
        };
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for b in digest.iter() {
            use std::fmt::Write;
            let _ = write!(hex, "{b:02x}");
        }
        hex
    }

    /// The plan with its `content_hash` filled in. The hash is taken of the plan itself with
    /// its `content_hash` emptied, so no copy of the plan is made.
    pub fn with_hash(mut self) -> Self {
        self.content_hash.clear();
        self.content_hash = self.digest_as_is();
        self
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Reads a plan, checking its version and content hash.
    pub fn from_json(text: &str) -> Result<Plan, PlanError> {
        let plan: Plan = serde_json::from_str(text).map_err(|e| PlanError::Json(e.to_string()))?;
        if plan.version != PLAN_VERSION {
            return Err(PlanError::Version {
                found: plan.version,
                expected: PLAN_VERSION,
            });
        }
        let computed = plan.compute_hash();
        if computed != plan.content_hash {
            return Err(PlanError::Hash {
                found: plan.content_hash,
                computed,
            });
        }
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Plan {
        let train = Train {
            steps: 10,
            prompts_per_step: 2,
            micro_batch: Some(4),
            checkpointing: false,
            optimizer: Optimizer::Adamw {
                lr: 1e-6,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
            schedule: Schedule {
                kind: ScheduleKind::Linear,
                warmup_steps: 1,
                final_fraction: 0.0,
            },
            grad_clip: 1.0,
            bad_steps: Some(3),
            seed: 42,
            checkpoint: Some(Checkpoint {
                every: 5,
                keep: None,
            }),
            out: "runs/x".into(),
            log: Vec::new(),
        };
        Plan {
            version: PLAN_VERSION,
            source_file: "x.recap".into(),
            content_hash: String::new(),
            params: BTreeMap::from([("steps".into(), ParamValue::Int(10))]),
            policy: "policy".into(),
            models: vec![
                Model {
                    name: "policy".into(),
                    spec: ModelSpec::Hf {
                        dir: "m".into(),
                        dtype: Dtype::Bf16,
                    },
                },
                Model {
                    name: "base".into(),
                    spec: ModelSpec::Frozen {
                        of: "policy".into(),
                    },
                },
            ],
            sources: vec![Source {
                name: "math".into(),
                spec: SourceSpec::Arithmetic {
                    count: 10,
                    digits: 2,
                    ops: "+".into(),
                    seed: 0,
                },
                fields: Fields::new(),
            }],
            verifiers: vec![Verifier {
                name: "acc".into(),
                spec: VerifierSpec::Numeric {
                    expected: Expected {
                        field: "answer".into(),
                    },
                    extract: Extractor {
                        steps: vec![ExtractStep::LastNumber],
                    },
                    tolerance: 1e-6,
                },
            }],
            stages: vec![Stage {
                name: "main".into(),
                rollouts: vec![],
                objectives: vec![Objective {
                    name: "o".into(),
                    spec: ObjectiveSpec::Grpo {
                        source: "math".into(),
                        rollout: "math".into(),
                        rewards: vec![RewardTerm {
                            name: "acc".into(),
                            parts: vec![WeightedVerifier {
                                weight: 0.1,
                                verifier: "acc".into(),
                            }],
                        }],
                        clip_low: 0.2,
                        clip_high: 0.28,
                        loss: LossAggregation::TokenMean,
                        scale: AdvantageScale::Group,
                        kl: Some(Kl {
                            reference: "base".into(),
                            coef: 0.04,
                            estimator: KlEstimator::K3,
                        }),
                        drop_equal_groups: false,
                    },
                }],
                reweight: Reweight::Recap {
                    window: 10,
                    temperature: 5.0,
                    alpha: 0.5,
                    combine: RecapCombine::Mixture,
                    direction: RecapDirection::Regress,
                    warmup: false,
                },
                mix: Mix::Coreset {
                    cap: 0.5,
                    base: Box::new(Mix::Uniform { seed: 1 }),
                },
                train,
                evals: vec![],
            }],
            graph: Graph {
                nodes: vec![],
                edges: vec![],
            },
        }
        .with_hash()
    }

    #[test]
    fn round_trips_through_json_with_its_hash() {
        let plan = sample();
        assert_eq!(plan.content_hash.len(), 64);
        let back = Plan::from_json(&plan.to_json()).expect("reads back");
        assert_eq!(back, plan);
        assert_eq!(back.compute_hash(), plan.content_hash);
    }

    /// Weights that come out of constant folding, such as 0.9 + 0.05 = 0.9500000000000001, must
    /// read back bit for bit, or a saved plan fails its own hash (found by the never-panics test).
    #[test]
    fn folded_float_weights_round_trip_exactly() {
        let mut plan = sample();
        for w in [
            0.9 + 0.05,
            0.1 + 0.2,
            1.0 / 3.0,
            5e-324,
            1.7976931348623157e308,
        ] {
            plan.stages[0].train.optimizer = Optimizer::Adamw {
                lr: w,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            };
            let plan = plan.clone().with_hash();
            let back = Plan::from_json(&plan.to_json()).expect("reads back");
            assert_eq!(back, plan, "{w:e}");
        }
    }

    #[test]
    fn an_edited_plan_fails_its_hash_check() {
        let plan = sample();
        let edited = plan.to_json().replace("\"steps\": 10", "\"steps\": 11");
        assert!(matches!(
            Plan::from_json(&edited),
            Err(PlanError::Hash { .. })
        ));
    }

    #[test]
    fn another_version_is_refused() {
        let mut plan = sample();
        plan.version = PLAN_VERSION + 1;
        let plan = plan.with_hash();
        assert!(matches!(
            Plan::from_json(&plan.to_json()),
            Err(PlanError::Version { .. })
        ));
    }

    #[test]
    fn the_hash_depends_on_content_only() {
        let a = sample();
        let mut b = sample();
        assert_eq!(a.content_hash, b.content_hash);
        b.policy = "other".into();
        assert_ne!(a.content_hash, b.with_hash().content_hash);
    }

    #[test]
    fn fields_are_written_as_an_object_in_name_order() {
        let mut plan = sample();
        let json = |p: &Plan| serde_json::to_string(&p.sources[0]).unwrap_or_default();
        assert!(json(&plan).contains("\"fields\":{}"), "{}", json(&plan));
        let step = |name: &str| Extractor {
            steps: vec![ExtractStep::Field { name: name.into() }],
        };
        plan.sources[0].fields.insert("target".into(), step("t"));
        plan.sources[0].fields.insert("answer".into(), step("a"));
        let text = json(&plan);
        let (a, t) = (text.find("\"answer\""), text.find("\"target\""));
        assert!(a.is_some() && a < t, "{text}");
        let sealed = plan.with_hash();
        let back = Plan::from_json(&sealed.to_json()).expect("reads back");
        assert_eq!(back, sealed);
        // Only an object is read, as with the BTreeMap the fields used to be.
        let empty = sample().to_json();
        let listed = empty.replace("\"fields\": {}", "\"fields\": []");
        assert_ne!(listed, empty);
        assert!(matches!(Plan::from_json(&listed), Err(PlanError::Json(_))));
    }
}
