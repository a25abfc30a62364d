//! The command-line interface of `recapc` as clap types: takes the process arguments, gives a
//! `Cli` value that `commands::run` dispatches on. Only parsing lives here; behaviour lives in
//! one file per command under `commands/`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// recapc: check, plan, graph and run recap pipelines (RLVR training jobs that do not forget).
#[derive(Debug, Parser)]
#[command(name = "recapc", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 success (warnings allowed), 1 errors in a pipeline, \
2 bad usage or a file that cannot be read or written, 3 a run failed while running, \
4 a run stopped by SIGINT or SIGTERM after writing a checkpoint."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check pipeline files and report every problem they contain.
    Check(CheckArgs),
    /// Print the checked plan of a pipeline as JSON (with sha256 of the files it names).
    Plan(PlanArgs),
    /// Print the dataflow graph of a pipeline.
    Graph(GraphArgs),
    /// Compile a pipeline and run it as a training job.
    Run(RunArgs),
    /// Complete a prompt with a trained checkpoint (a checkpoint directory or a run's final/).
    Generate(GenerateArgs),
    /// Run a pipeline's probes on a checkpoint and print the scores (JSON with --out).
    Eval(EvalArgs),
    /// Chart finished runs and summarise them (charts and summary.md).
    Report(ReportArgs),
    /// Compare variants of a pipeline over seeds: one Markdown (or JSON) table.
    Compare(CompareArgs),
    /// Create a new pipeline from a template.
    New(NewArgs),
    /// Convert a model file to a Hugging Face directory (`recapc import gguf FILE --out DIR`).
    #[command(subcommand)]
    Import(ImportCommand),
    /// List the templates that `recapc new` can use.
    Templates,
    /// Format pipeline files in the one canonical layout (comments kept).
    Fmt(FmtArgs),
    /// Explain a diagnostic code (without CODE: list every code).
    Explain(ExplainArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Run the language server on standard input and output (for editors).
    Lsp(LspArgs),
}

/// How `recapc check` prints diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum CheckFormat {
    /// Rendered with source snippets, for people (to stderr).
    #[default]
    Human,
    /// One `file:line:col: severity[code]: message` line per diagnostic (to stdout).
    Short,
    /// One JSON document, schema `recap-diagnostics` version 1 (to stdout).
    Json,
}

/// How `recapc graph` prints the dataflow graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum GraphFormat {
    /// Graphviz DOT.
    Dot,
    /// A Mermaid flowchart (renders on GitHub).
    Mermaid,
    /// Plain text, one node per line with its inputs.
    #[default]
    Text,
}

/// One `--set key=value` override of a `param`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    pub key: String,
    pub value: String,
}

/// Parses `key=value`; the value may itself contain `=`.
pub fn parse_override(s: &str) -> Result<Override, String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not of the form key=value (e.g. --set steps=20)"))?;
    let key = key.trim();
    if key.is_empty() {
        return Err(format!(
            "`{s}` has an empty key (write e.g. --set steps=20)"
        ));
    }
    Ok(Override {
        key: key.to_string(),
        value: value.to_string(),
    })
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    /// Override a `param` of the pipeline, e.g. `--set steps=20` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_override)]
    pub overrides: Vec<Override>,
}

impl SetArgs {
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.overrides
            .iter()
            .map(|o| (o.key.clone(), o.value.clone()))
            .collect()
    }
}

#[derive(Debug, clap::Args)]
pub struct FmtArgs {
    /// Pipeline files to format in place; `-` reads standard input and writes the result to
    /// standard output.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Change nothing: print a unified diff of each file that is not formatted, and exit 1 if
    /// any is not.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Pipeline files to check (`-`: standard input).
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CheckFormat::Human)]
    pub format: CheckFormat,
    #[command(flatten)]
    pub set: SetArgs,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub set: SetArgs,
}

#[derive(Debug, clap::Args)]
pub struct GraphArgs {
    /// The pipeline file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
    pub format: GraphFormat,
    #[command(flatten)]
    pub set: SetArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline file, or a plan saved with `recapc plan FILE > plan.json`.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub set: SetArgs,
    /// Where tensors live: `cpu`, or `cuda:N` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
    /// Run directory (overrides the pipeline's `train { out = ... }`). A resumed run stays in
    /// its own directory, so `--out` cannot go with `--resume`.
    #[arg(long, value_name = "DIR", conflicts_with = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its newest complete checkpoint.
    #[arg(long, value_name = "DIR")]
    pub resume: Option<PathBuf>,
    /// Start afresh in a run directory that is not empty: the files an earlier run wrote there
    /// (plan, metrics, samples, checkpoints, final weights) are removed; nothing else is.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Run even though a data or model file changed since the saved plan was made (`run
    /// PLAN.json`) or since the resumed run started; without it such a run is refused.
    #[arg(long)]
    pub allow_changed_inputs: bool,
    /// Let the pipeline's `exec(...)` verifiers run their programs (each in a fresh, confined
    /// working directory with a clean environment, a memory limit and a timeout); without it
    /// a pipeline with one is refused.
    #[arg(long)]
    pub allow_exec: bool,
    /// Build every node, load data and models, run one step on two prompts, print the
    /// per-step cost estimate; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Progress display: a bar on a terminal, plain lines otherwise (auto).
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
    /// Write sample completions to samples.jsonl every N steps (0: never).
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub samples_every: u64,
    /// Start N ranks of this run on this machine, as torchrun would (data-parallel training):
    /// with `--device cuda` rank i uses cuda:i; with `--device cpu` the ranks share the CPU
    /// (for testing). Without it, the ranks come from the launcher's environment (torchrun,
    /// srun, mpirun; docs/scaling.md).
    #[arg(long, visible_alias = "gpus", value_name = "N")]
    pub ranks: Option<usize>,
    /// Cut each step's batch into N shards, as a job of N ranks does (by default one per rank):
    /// one process given a job's rank count takes that job's steps bit for bit on the CPU
    /// (docs/scaling.md). With `--dry-run`, the memory estimate is per rank of N.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub shards: Option<u64>,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "CKPT is a checkpoint directory (`runs/job/checkpoints/step-000100`), a run's \
`final/`, or a run directory (which stands for its `final/`). The prompt is wrapped in the \
tokenizer's chat template, as training prompts are."
)]
pub struct GenerateArgs {
    /// The checkpoint.
    #[arg(value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// The prompt to complete.
    #[arg(long, value_name = "TEXT")]
    pub prompt: String,
    /// The most tokens to generate (the end-of-sequence token included).
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub max_tokens: usize,
    /// Sampling temperature; 0 takes the most likely token at each step.
    #[arg(long, default_value_t = 0.0, value_name = "T")]
    pub temperature: f64,
    /// Seed of the sampler (used when the temperature is above 0).
    #[arg(long, default_value_t = 0, value_name = "S")]
    pub seed: u64,
    /// Where tensors live: `cpu`, or `cuda:N` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Each `eval NAME = probe(...)` of the pipeline runs on the checkpoint's weights \
with the pipeline's data and verifiers, as it would during training. CKPT is a checkpoint \
directory, a run's `final/`, or a run directory (its `final/`)."
)]
pub struct EvalArgs {
    /// The checkpoint.
    #[arg(value_name = "CKPT")]
    pub checkpoint: PathBuf,
    /// The pipeline whose probes to run.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub set: SetArgs,
    /// Also write the results to FILE as JSON (schema `recap-eval` version 1).
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Where tensors live: `cpu`, or `cuda:N` in a build with `--features cuda`.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: String,
}

/// How `recapc run` shows progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ProgressArg {
    /// A bar when stderr is a terminal, plain lines otherwise.
    #[default]
    Auto,
    Bar,
    Plain,
    Quiet,
}

/// Which files `recapc report` draws each chart as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum ChartFormat {
    /// One PNG per chart.
    Png,
    /// One SVG per chart.
    Svg,
    /// Both a PNG and an SVG of each chart.
    #[default]
    Both,
}

#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// Run directories written by `recapc run` (each holds a metrics.jsonl); several runs are
    /// overlaid on the same charts.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Where to write the charts and summary.md [default: RUN_DIR/report of the first run].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Chart file format.
    #[arg(long, value_enum, default_value_t = ChartFormat::Both)]
    pub format: ChartFormat,
}

/// How `recapc compare` prints its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum CompareFormat {
    /// A Markdown table.
    #[default]
    Markdown,
    /// One JSON document, schema `recap-compare` version 1.
    Json,
}

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Layout: a run directory named `seed-<N>` belongs to the variant named by \
its parent directory (`study/recap/seed-3` is a seed of variant `recap`); any other run directory \
is a variant of its own, named by the directory. Start and end are a probe's first and last \
logged value; each cell is the mean +- sample standard deviation over the variant's seeds."
)]
pub struct CompareArgs {
    /// Run directories written by `recapc run`, e.g. `study/*/seed-*`.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Add Welch's t-test p-value of each variant's end values against this variant's.
    #[arg(long, value_name = "VARIANT")]
    pub baseline: Option<String>,
    /// Also write the table to FILE.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = CompareFormat::Markdown)]
    pub format: CompareFormat,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// Dequantise a GGUF file (llama or qwen2) into a Hugging Face directory: config.json,
    /// model.safetensors, tokenizer.json, generation_config.json.
    Gguf(ImportGgufArgs),
}

#[derive(Debug, clap::Args)]
pub struct ImportGgufArgs {
    /// The GGUF file.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// The output directory (must be missing or empty).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// Name of the new pipeline: writes NAME.recap (or NAME/main.recap with --dir).
    #[arg(value_name = "NAME", required_unless_present = "list")]
    pub name: Option<String>,
    /// List the templates instead, as `recapc templates` does.
    #[arg(long, conflicts_with_all = ["name", "dir"])]
    pub list: bool,
    /// Template to start from (see `recapc templates`).
    #[arg(long, short, default_value = "quickstart", value_name = "T")]
    pub template: String,
    /// Create a project directory NAME/ holding main.recap and a data/ folder.
    #[arg(long)]
    pub dir: bool,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A diagnostic code such as `recap::resolve::unknown_name`, or just its last part.
    #[arg(value_name = "CODE")]
    pub code: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to generate completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct LspArgs {
    /// Accepted for editors that pass it; standard input and output is the only transport.
    #[arg(long)]
    pub stdio: bool,
    /// Time every kind of request on FILE and print the latencies, instead of serving.
    #[arg(long, value_name = "FILE", hide = true)]
    pub bench: Option<PathBuf>,
}
