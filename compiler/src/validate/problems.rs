//! Validate's problems: takes what a rule found; gives the code, message and help line of its
//! diagnostic. The codes and their long explanations are declared here too (`ValidateCode`),
//! and `codes.rs` lists them for `recapc explain`.

use crate::diagnostic::{did_you_mean, problem_codes, Problem, Severity};

problem_codes! {
    /// The codes of validate's problems, in the order `recapc explain` lists them.
    pub enum ValidateCode {
        MissingFile = "recap::validate::missing_file" => "A path named in the pipeline does not exist (relative to the pipeline file's directory). A warning for `recapc check`, so pipelines can be checked before data is fetched; an error for `recapc run`.",
        ShapeNotDivisible = "recap::validate::shape_not_divisible" => "A `tiny` model's shape does not divide: `hidden` must be a multiple of `heads` (each head gets hidden/heads dimensions) and `heads` a multiple of `kv_heads` (grouped-query attention shares each KV head among heads/kv_heads query heads).",
        PolicyIsFrozen = "recap::validate::policy_is_frozen" => "`train { policy = ... }` names a frozen model. Frozen copies are references for KL terms and are never trained.",
        NoPolicy = "recap::validate::no_policy" => "The job trains objectives but declares no trainable model. Declare one, e.g. `model policy = hf(\"models/qwen2.5-0.5b-instruct\")`.",
        AmbiguousPolicy = "recap::validate::ambiguous_policy" => "More than one model is not frozen, so the checker cannot tell which one to train. Name it: `train { policy = policy }`.",
        PolicyChanges = "recap::validate::policy_changes" => "Two stages train different policies. Stages run in order, each starting from the weights the previous one left, so all stages train the same model.",
        NoObjective = "recap::validate::no_objective" => "A stage (or a file without stages) declares no objective, so there is nothing to train. Add `objective name = grpo(...)` or `sft(...)`.",
        MissingTrain = "recap::validate::missing_train" => "The job has no `train` setting, so it has no step count. Add `train { steps = 100 }` at the top level or in each stage.",
        NoReward = "recap::validate::no_reward" => "An RL objective (`grpo`) or a probe has an empty reward list. GRPO compares completions by reward; without one every advantage is zero. Add `rewards = [accuracy]`.",
        MissingField = "recap::validate::missing_field" => "A verifier or objective needs a field its source does not provide: `numeric`, `exact`, `math_equal`, `choice` and `iou` read the source's `answer` unless given `expected = source.field`; `sft` reads `target`. Map the field in the source's block, e.g. `answer = field(\"answer\").after(\"####\")`.",
        ForeignField = "recap::validate::foreign_field" => "A verifier reads the expected answer from one source (`expected = math.answer`) but is used on an objective or probe over another source, whose rows have no such values. Declare a verifier per source, or leave `expected` out so it reads the verified source's `answer`.",
        BatchNotDivisible = "recap::validate::batch_not_divisible" => "`micro_batch` must divide the completions of each step: prompts_per_step x group for GRPO objectives, prompts_per_step for SFT. Otherwise the last micro-batch would be ragged or groups would be split (the most common configuration error in RL trainers). The help line proposes a divisor.",
        KlReferenceNotFrozen = "recap::validate::kl_reference_not_frozen" => "A KL term names a trainable model as its reference. The reference must stay fixed: declare `model base = frozen(policy)` and write `kl(base)`.",
        KlWithoutReference = "recap::validate::kl_without_reference" => "A KL term gives no reference model and there is not exactly one frozen copy of the policy to default to. Declare `model base = frozen(policy)`, or name the reference: `kl(base, coef = 0.04)`.",
        WarmupExceedsSteps = "recap::validate::warmup_exceeds_steps" => "A learning-rate warm-up is as long as, or longer than, the stage, so the schedule never reaches its peak. Use fewer steps, or a percentage such as `warmup = 10%`.",
        NeverRuns = "recap::validate::never_runs" => "Warning: a probe or checkpoint interval is longer than the stage, so it never fires (the final checkpoint is still written).",
        ReweightNeedsTwo = "recap::validate::reweight_needs_two" => "A reweighting policy other than `uniform` needs at least two objective keys to weigh against each other. Keys: one per reward term of each RL objective, one per SFT objective. Add a replay objective or another reward term, or use `reweight uniform`.",
        WindowTooLong = "recap::validate::window_too_long" => "Warning: RECAP compares the older and newer halves of the last 2 x window values of each key; with 2 x window above the stage's steps the signals never use a full window.",
        CoresetBase = "recap::validate::coreset_base" => "`coreset(cap, base)` draws like `base` and scales the replay sources' chances down until replay is at most `cap` times the RL volume, so `base` must be a mixer that draws at random: `uniform`, `proportional` or `weights(...)`. `round_robin` and `all` draw in a fixed pattern, and a coreset of a coreset caps nothing new.\n\nExample:\n    mix coreset(0.5, base = round_robin)\nFix:\n    mix coreset(0.5, base = uniform)",
        NoReplay = "recap::validate::no_replay" => "Warning: `coreset` caps the replay (SFT) volume, but the stage has no SFT objective, so it behaves like its base mixer.",
        MissingDataField = "recap::validate::missing_data_field" => "A `jsonl` source's prompt uses a `{placeholder}`, or one of its fields reads `field(\"name\")`, that a row of its data file lacks (the checker reads the first 20 rows). The run would stop at that row after loading the models. Fix the name in the pipeline, or map the data's field: `question = field(\"problem\")`.",
        ContextTooShort = "recap::validate::context_too_short" => "A `grpo` objective or a probe may generate `max_tokens` new tokens, but the policy's context (`max_position_embeddings` in the model directory's `config.json`) is no longer than that, so no prompt fits beside them. The runtime would stop at the first rollout. Lower `max_tokens`: the prompt and the generated tokens together must fit in the context.",
        IncompleteModel = "recap::validate::incomplete_model" => "An `hf(dir)` model directory exists but lacks what loading needs: `config.json`, `tokenizer.json`, or the weights (`model.safetensors`, or `model.safetensors.index.json` with its shards). Usually a download that stopped half-way. A warning for `recapc check`, an error for `recapc run`, like a missing file.",
        BadDataLine = "recap::validate::bad_data_line" => "A line among the first 20 rows of a `jsonl` source's data file is not a JSON object (not valid JSON, or an array, string or number). Every line of a JSON Lines file is one JSON object; blank lines are skipped. The run would stop at that line after loading the models.",
        BadRegex = "recap::validate::bad_regex" => "The `pattern` of a `regex` verifier is not a regular expression the runtime can compile: a syntax error (an unclosed group, a stray quantifier) or a pattern that compiles to more than 4 MiB. The syntax is that of Rust's `regex` crate (no look-around, no back-references). Escape literal `(`, `[`, `{`, `.`, `*` with a backslash, and write patterns as raw strings so backslashes stay as written.\n\nExample:\n    verifier fmt = regex(\"<answer>(.*</answer>\")\nFix:\n    verifier fmt = regex(r\"<answer>(.*)</answer>\")",
        BadOptions = "recap::validate::bad_options" => "The `options` of a `choice` verifier must be the option letters, upper-case ASCII (`\"ABCD\"`): the verifier looks for one of them in the completion.",
        EmptyCommand = "recap::validate::empty_command" => "The `command` of an `exec` verifier is empty, or its program (the first item) is an empty string. The first item is the program to run (`\"python3\"`, or a file relative to the pipeline's directory), the others its arguments.\n\nExample:\n    verifier tests = exec(command = [])\nFix:\n    verifier tests = exec(command = [\"python3\", \"graders/code.py\"])",
        BadUrl = "recap::validate::bad_url" => "The `url` of an `http` verifier is not an `http://host[:port]/path` or `https://host[:port]/path` address.\n\nExample:\n    verifier judge = http(url = \"localhost:8000\")\nFix:\n    verifier judge = http(url = \"http://localhost:8000/score\")",
        PenaltyTarget = "recap::validate::penalty_target" => "Warning: a `length_penalty` gives 1.0 up to `target` generated tokens and falls linearly to 0.0 at `max_tokens`; with `target` at or above `max_tokens` there is no slope, and the reward drops from 1.0 to 0.0 right after `target` tokens.",
        StaticCancels = "recap::validate::static_cancels" => "Warning: a `static` weight on a `grpo` objective multiplies every reward term of that objective by the same factor, and group normalisation (`scale = group` or `batch`) divides it out again, so the weight changes nothing. Weigh the balance between the objective's terms instead, or weigh the other (SFT) objectives.",
        UnknownWeightKey = "recap::validate::unknown_weight_key" => "`static(...)` weighs objectives and `weights(...)` weighs sources by name; a name given is not an objective (or source) of the stage. The help line suggests the closest name.",
        UnknownRewardTerm = "recap::validate::unknown_reward_term" => "A `static(source.term = w)` key names no reward term of a `grpo` objective of the stage that reads that source. A term is named as the plan names it: the `let` or verifier it was written as (`rewards = [correct, 0.1 * format]` with `let correct = ...`). The help line suggests the closest term, or lists the source's terms.",
        LoraOfFrozen = "recap::validate::lora_of_frozen" => "`lora(model)` adapts a frozen model. Adapters train on top of a base whose weights stay fixed anyway, and `frozen(...)` is a KL reference, never trained. Adapt the model itself and take the reference from the adapted one.\n\nExample:\n    model base = frozen(init(\"configs/qwen2.5-0.5b.json\"))\n    model policy = lora(base)\nFix:\n    model policy = lora(init(\"configs/qwen2.5-0.5b.json\"))\n    model base = frozen(policy)",
        LoraNested = "recap::validate::lora_nested" => "`lora(lora(...))` puts adapters on an adapted model. One `lora` call adapts every target it lists; list all the layers in its `targets` instead.",
        LoraDuplicateTarget = "recap::validate::lora_duplicate_target" => "A `lora` call lists a target layer twice. Each targeted layer gets one pair of adapters; remove the repeat.\n\nExample:\n    model policy = lora(base, targets = [q_proj, v_proj, q_proj])\nFix:\n    model policy = lora(base, targets = [q_proj, v_proj])",
    }
}

/// One problem a validation rule found, with what its wording needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValidateProblem<'a> {
    /// A path named in the pipeline does not exist; an error when the run needs it.
    MissingFile { path: &'a str, is_error: bool },
    /// An `hf` directory lacks files loading needs (already listed as "`a`, `b` or `c`").
    IncompleteModel {
        dir: &'a str,
        lacking: String,
        is_error: bool,
    },
    /// A `tiny` model's `hidden` is not a multiple of its `heads`.
    HiddenNotDivisible { hidden: i64, heads: i64 },
    /// A `tiny` model's `heads` is not a multiple of its `kv_heads`.
    HeadsNotDivisible { heads: i64, kv_heads: i64 },
    /// A line among the first rows of a data file is not a JSON object.
    BadDataLine {
        path: &'a str,
        line: usize,
        why: &'a str,
    },
    /// A row of a data file lacks a key that a mapped field (`reader`) or the prompt (`None`)
    /// reads; `first_row` holds the first row's keys, for the help line.
    MissingDataField {
        path: &'a str,
        line: usize,
        key: &'a str,
        reader: Option<&'a str>,
        first_row: &'a [String],
    },
    /// A generation budget leaves no room for the prompt in the policy's context.
    ContextTooShort {
        user: &'a str,
        budget: i64,
        policy: &'a str,
        context: u64,
    },
    /// A `regex` pattern the runtime would not compile, and why.
    BadRegex { why: &'a str },
    /// The `options` of a `choice` are not upper-case letters.
    BadOptions { options: &'a str },
    /// An `exec` command without a program.
    EmptyCommand,
    /// An `http` url that is not `http://...`, and why.
    BadUrl { url: &'a str, why: &'a str },
    /// A `length_penalty` whose target is not below its limit.
    PenaltyTarget { target: i64, max_tokens: i64 },
    /// `train { policy = ... }` names a frozen model.
    PolicyIsFrozen { policy: &'a str },
    /// No model can be trained.
    NoPolicy,
    /// Several models could be the policy; `first` is the one the help line suggests.
    AmbiguousPolicy { first: &'a str },
    /// Two stages train different policies.
    PolicyChanges,
    /// A stage (`None`: the file without stages) has no objective.
    NoObjective { stage: Option<&'a str> },
    /// No `train` setting applies.
    MissingTrain,
    /// A `grpo` objective without rewards.
    NoRlReward { objective: &'a str },
    /// A probe without rewards.
    NoProbeReward { probe: &'a str },
    /// A verifier needs `answer`, which its source does not provide.
    MissingAnswer { verifier: &'a str },
    /// An `sft` objective's source provides no `target`.
    MissingTarget,
    /// A verifier reads its expected answer from another source than the one it verifies.
    ForeignField {
        verifier: &'a str,
        source: &'a str,
        field: &'a str,
    },
    /// `micro_batch` does not divide a `grpo` objective's completions per step.
    GroupBatchNotDivisible {
        objective: &'a str,
        micro_batch: i64,
        prompts: i64,
        group: i64,
    },
    /// `micro_batch` does not divide an `sft` objective's prompts per step.
    PromptBatchNotDivisible {
        objective: &'a str,
        micro_batch: i64,
        prompts: i64,
    },
    /// A KL reference that is not frozen.
    KlReferenceNotFrozen { reference: &'a str },
    /// A KL term without a reference, and how many frozen copies it could default to.
    KlWithoutReference { frozen: usize },
    /// A warm-up at least as long as the stage.
    WarmupExceedsSteps { warmup: i64, steps: i64 },
    /// A probe interval longer than the stage.
    ProbeNeverRuns {
        probe: &'a str,
        every: i64,
        steps: i64,
    },
    /// A checkpoint interval longer than the stage.
    CheckpointNeverRuns { every: i64, steps: i64 },
    /// A reweighter with fewer than two objective keys to weigh.
    ReweightNeedsTwo { reweighter: &'a str, keys: usize },
    /// A RECAP window whose history is longer than the stage.
    WindowTooLong { window: i64, steps: i64 },
    /// A `coreset` in a stage without replay objectives.
    NoReplay,
    /// A `coreset` whose base does not draw at random.
    CoresetBase { base: &'a str },
    /// `static` weighs a `grpo` objective whose advantages are normalised, so it cancels.
    StaticCancels { objective: &'a str },
    /// `static` or `weights` weighs a name that is no objective (or source) of the stage.
    UnknownWeightKey {
        function: &'a str,
        key: &'a str,
        /// "objective" or "source".
        what: &'a str,
        /// The names it could weigh.
        names: &'a [&'a str],
    },
    /// `static` weighs a `source.term` key that is no reward term of the stage; the terms
    /// (`source.term`) of that source.
    UnknownRewardTerm {
        key: &'a str,
        source: &'a str,
        terms: &'a [&'a str],
    },
    /// `lora` of a frozen model (`frozen(...)` inline or a declared frozen copy).
    LoraOfFrozen,
    /// `lora` of a model that is itself a `lora`.
    LoraNested,
    /// A `lora` target listed more than once.
    LoraDuplicateTarget { target: &'a str },
}

impl Problem for ValidateProblem<'_> {
    type Code = ValidateCode;

    fn kind(&self) -> ValidateCode {
        use ValidateCode as C;
        use ValidateProblem as P;
        match self {
            P::MissingFile { .. } => C::MissingFile,
            P::IncompleteModel { .. } => C::IncompleteModel,
            P::HiddenNotDivisible { .. } | P::HeadsNotDivisible { .. } => C::ShapeNotDivisible,
            P::BadDataLine { .. } => C::BadDataLine,
            P::MissingDataField { .. } => C::MissingDataField,
            P::ContextTooShort { .. } => C::ContextTooShort,
            P::BadRegex { .. } => C::BadRegex,
            P::BadOptions { .. } => C::BadOptions,
            P::EmptyCommand => C::EmptyCommand,
            P::BadUrl { .. } => C::BadUrl,
            P::PenaltyTarget { .. } => C::PenaltyTarget,
            P::PolicyIsFrozen { .. } => C::PolicyIsFrozen,
            P::NoPolicy => C::NoPolicy,
            P::AmbiguousPolicy { .. } => C::AmbiguousPolicy,
            P::PolicyChanges => C::PolicyChanges,
            P::NoObjective { .. } => C::NoObjective,
            P::MissingTrain => C::MissingTrain,
            P::NoRlReward { .. } | P::NoProbeReward { .. } => C::NoReward,
            P::MissingAnswer { .. } | P::MissingTarget => C::MissingField,
            P::ForeignField { .. } => C::ForeignField,
            P::GroupBatchNotDivisible { .. } | P::PromptBatchNotDivisible { .. } => {
                C::BatchNotDivisible
            }
            P::KlReferenceNotFrozen { .. } => C::KlReferenceNotFrozen,
            P::KlWithoutReference { .. } => C::KlWithoutReference,
            P::WarmupExceedsSteps { .. } => C::WarmupExceedsSteps,
            P::ProbeNeverRuns { .. } | P::CheckpointNeverRuns { .. } => C::NeverRuns,
            P::ReweightNeedsTwo { .. } => C::ReweightNeedsTwo,
            P::WindowTooLong { .. } => C::WindowTooLong,
            P::NoReplay => C::NoReplay,
            P::CoresetBase { .. } => C::CoresetBase,
            P::StaticCancels { .. } => C::StaticCancels,
            P::UnknownWeightKey { .. } => C::UnknownWeightKey,
            P::UnknownRewardTerm { .. } => C::UnknownRewardTerm,
            P::LoraOfFrozen => C::LoraOfFrozen,
            P::LoraNested => C::LoraNested,
            P::LoraDuplicateTarget { .. } => C::LoraDuplicateTarget,
        }
    }

    fn severity(&self) -> Severity {
        use ValidateProblem as P;
        match self {
            P::MissingFile { is_error, .. } | P::IncompleteModel { is_error, .. } => {
                if *is_error {
                    Severity::Error
                } else {
                    Severity::Warning
                }
            }
            P::PenaltyTarget { .. }
            | P::ProbeNeverRuns { .. }
            | P::CheckpointNeverRuns { .. }
            | P::WindowTooLong { .. }
            | P::NoReplay
            | P::StaticCancels { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }

    fn message(&self) -> String {
        use ValidateProblem as P;
        match self {
            P::MissingFile { path, .. } => format!("the file `{path}` does not exist"),
            P::IncompleteModel { dir, lacking, .. } => {
                format!("the model directory `{dir}` has no {lacking}")
            }
            P::HiddenNotDivisible { hidden, heads } => {
                format!("`hidden` ({hidden}) must divide by `heads` ({heads})")
            }
            P::HeadsNotDivisible { heads, kv_heads } => {
                format!("`heads` ({heads}) must divide by `kv_heads` ({kv_heads})")
            }
            P::BadDataLine { path, line, why } => {
                format!("line {line} of `{path}` is not a JSON object: {why}")
            }
            P::MissingDataField {
                path,
                line,
                key,
                reader,
                ..
            } => {
                let who = match reader {
                    Some(name) => format!("`{name}` reads"),
                    None => "the prompt uses".to_string(),
                };
                format!("line {line} of `{path}` has no field `{key}`, which {who}")
            }
            P::ContextTooShort {
                user,
                budget,
                policy,
                context,
            } => format!(
                "`max_tokens` of `{user}` ({budget}) leaves no room for the prompt: the policy `{policy}` has a context of {context} positions"
            ),
            P::BadRegex { why } => {
                format!("the pattern of `regex` is not a valid regular expression: {why}")
            }
            P::BadOptions { options } => {
                format!("the `options` of `choice` must be upper-case letters, found `{options}`")
            }
            P::EmptyCommand => "the `command` of `exec` names no program".to_string(),
            P::BadUrl { url, why } => format!("the `url` of `http` is not usable: `{url}` {why}"),
            P::PenaltyTarget { target, max_tokens } => format!(
                "the `target` of `length_penalty` ({target}) is not below its `max_tokens` ({max_tokens}): the reward stays 1.0 up to {target} tokens and drops to 0.0 right after"
            ),
            P::PolicyIsFrozen { policy } => format!("the policy `{policy}` is a frozen model"),
            P::NoPolicy => "the job declares no model to train".to_string(),
            P::AmbiguousPolicy { .. } => "more than one model could be the policy".to_string(),
            P::PolicyChanges => "stages train different policies".to_string(),
            P::NoObjective { stage } => match stage {
                Some(name) => format!("stage `{name}` has no objective"),
                None => "the job declares no objective".to_string(),
            },
            P::MissingTrain => "the job has no `train` setting".to_string(),
            P::NoRlReward { objective } => format!("RL objective `{objective}` has no reward"),
            P::NoProbeReward { probe } => format!("probe `{probe}` has no reward to score with"),
            P::MissingAnswer { verifier } => format!(
                "verifier `{verifier}` needs the field `answer`, which this source does not provide"
            ),
            P::MissingTarget => {
                "`sft` needs the field `target`, which this source does not provide".to_string()
            }
            P::ForeignField {
                verifier,
                source,
                field,
            } => format!(
                "verifier `{verifier}` reads `{source}.{field}`, but here it verifies completions of another source"
            ),
            P::GroupBatchNotDivisible {
                objective,
                micro_batch,
                prompts,
                group,
            } => format!(
                "micro_batch {micro_batch} does not divide the {} completions of `{objective}` (prompts_per_step {prompts} x group {group})",
                prompts.saturating_mul(*group)
            ),
            P::PromptBatchNotDivisible {
                objective,
                micro_batch,
                prompts,
            } => format!(
                "micro_batch {micro_batch} does not divide prompts_per_step {prompts} of `{objective}`"
            ),
            P::KlReferenceNotFrozen { reference } => {
                format!("the KL reference `{reference}` is not a frozen model")
            }
            P::KlWithoutReference { frozen: 0 } => "this KL term has no reference model".to_string(),
            P::KlWithoutReference { frozen } => {
                format!("this KL term could use any of {frozen} frozen models")
            }
            P::WarmupExceedsSteps { warmup, steps } => {
                format!("a warm-up of {warmup} steps does not fit in {steps} steps")
            }
            P::ProbeNeverRuns {
                probe,
                every,
                steps,
            } => format!("probe `{probe}` runs every {every} steps, but the stage has only {steps}"),
            P::CheckpointNeverRuns { every, steps } => {
                format!("checkpoints every {every} steps, but the stage has only {steps}")
            }
            P::ReweightNeedsTwo { reweighter, keys } => format!(
                "`{reweighter}` reweights objectives, but this stage has {keys} objective key{}",
                if *keys == 1 { "" } else { "s" }
            ),
            // Wrapping, not checked: the window's range has no upper bound, and the message
            // must not panic on one past half of i64.
            P::WindowTooLong { window, steps } => format!(
                "the RECAP window needs {} steps of history, the stage has {steps}",
                window.wrapping_mul(2)
            ),
            P::NoReplay => {
                "`coreset` caps replay, but this stage has no replay (sft) objective".to_string()
            }
            P::CoresetBase { base } => format!(
                "`coreset` cannot cap `{base}`: its base must draw sources at random"
            ),
            P::StaticCancels { objective } => format!(
                "the weight on `{objective}` scales all its reward terms alike, which cancels in group normalisation"
            ),
            P::UnknownWeightKey {
                function,
                key,
                what,
                ..
            } => format!("`{function}` weighs `{key}`, which is no {what} of this stage"),
            P::UnknownRewardTerm { key, source, .. } => format!(
                "`static` weighs `{key}`, which is no reward term of a `grpo` objective on `{source}` in this stage"
            ),
            P::LoraOfFrozen => "`lora` adapts a frozen model".to_string(),
            P::LoraNested => "`lora` adapts a model that already has adapters".to_string(),
            P::LoraDuplicateTarget { target } => {
                format!("`lora` lists the target `{target}` twice")
            }
        }
    }

    fn help(&self) -> String {
        use ValidateProblem as P;
        match self {
            P::MissingFile { .. } => "paths are relative to the pipeline file's directory; fetch the data or fix the path".to_string(),
            P::IncompleteModel { .. } => "a Hugging Face model directory holds `config.json`, `tokenizer.json` and `model.safetensors` (or `model.safetensors.index.json` and its shards); finish the download (`scripts/fetch-models.sh`) or fix the path".to_string(),
            P::HiddenNotDivisible { .. } => "choose `hidden` as a multiple of `heads`".to_string(),
            P::HeadsNotDivisible { .. } => "choose `kv_heads` as a divisor of `heads`".to_string(),
            P::BadDataLine { .. } => "every line of a JSON Lines file is one JSON object, e.g. `{\"question\": \"2+2\", \"answer\": \"4\"}`; blank lines are skipped".to_string(),
            P::MissingDataField { key, first_row, .. } => missing_data_field_help(key, first_row),
            P::ContextTooShort { context, .. } => format!(
                "generate fewer tokens: the prompt and `max_tokens` together must fit in {context} positions"
            ),
            P::BadRegex { .. } => "the syntax is that of Rust's `regex` crate; escape a literal `(`, `[`, `{`, `.` or `*` with `\\`, or write the pattern as a raw string, `r\"...\"`".to_string(),
            P::BadOptions { .. } => "list the option letters, e.g. `options = \"ABCD\"`".to_string(),
            P::EmptyCommand => "give the program and its arguments, e.g. `command = [\"python3\", \"graders/code.py\"]`".to_string(),
            P::BadUrl { .. } => "write an HTTP address, e.g. `url = \"http://localhost:8000/score\"`".to_string(),
            P::PenaltyTarget { .. } => "the reward is 1.0 up to `target` tokens and falls to 0.0 at `max_tokens`; choose a smaller target or a larger limit".to_string(),
            P::PolicyIsFrozen { .. } => "train the model the frozen copy was made from".to_string(),
            P::NoPolicy => "declare one, e.g. `model policy = hf(\"models/qwen\")`".to_string(),
            P::AmbiguousPolicy { first } => format!("name it in train: `policy = {first}`"),
            P::PolicyChanges => "every stage continues from the weights the previous one left: train one policy".to_string(),
            P::NoObjective { .. } => "declare one, e.g. `objective reasoning = grpo(math) { rewards = [accuracy] }`".to_string(),
            P::MissingTrain => "add `train { steps = 100 }` (at the top level, or in the stage)".to_string(),
            P::NoRlReward { .. } => "add `rewards = [accuracy]` with one or more verifiers".to_string(),
            P::NoProbeReward { .. } => "add `rewards = [accuracy]`".to_string(),
            P::MissingAnswer { .. } => "map it in the source's block, e.g. `answer = field(\"answer\")`, or give the verifier `expected = source.field`".to_string(),
            P::MissingTarget => "map it in the source's block, e.g. `target = field(\"output\")`".to_string(),
            P::ForeignField { .. } => "declare a verifier for this source, or leave `expected` out to read the verified source's `answer`".to_string(),
            P::GroupBatchNotDivisible {
                micro_batch,
                prompts,
                group,
                ..
            } => {
                let batch = prompts.saturating_mul(*group);
                format!(
                    "choose a micro_batch that divides {batch}, e.g. {}",
                    largest_divisor(batch, *micro_batch)
                )
            }
            P::PromptBatchNotDivisible {
                micro_batch,
                prompts,
                ..
            } => format!(
                "choose a micro_batch that divides {prompts}, e.g. {}",
                largest_divisor(*prompts, *micro_batch)
            ),
            P::KlReferenceNotFrozen { reference } => {
                format!("declare `model base = frozen({reference})` and use `kl(base)`")
            }
            P::KlWithoutReference { .. } => "declare `model base = frozen(policy)` and write `kl(base, coef = 0.04)`".to_string(),
            P::WarmupExceedsSteps { steps, .. } => format!(
                "use fewer than {steps} warm-up steps, or a percentage such as 10%"
            ),
            P::ProbeNeverRuns { steps, .. } => format!("use `every` of at most {steps}"),
            P::CheckpointNeverRuns { .. } => "the final checkpoint is always written; use a smaller interval for intermediate ones".to_string(),
            P::ReweightNeedsTwo { .. } => "reweighting needs two or more keys (one per reward term of an RL objective, one per SFT objective); add a replay objective or use `reweight uniform`".to_string(),
            P::WindowTooLong { .. } => "use a window of at most half the stage's steps".to_string(),
            P::NoReplay => "add an `sft` objective or use another mixer".to_string(),
            P::CoresetBase { .. } => "use `uniform`, `proportional` or `weights(...)` as the base".to_string(),
            P::StaticCancels { .. } => "weigh the other objectives instead, or use `scale = none` on this one".to_string(),
            P::UnknownWeightKey {
                key, what, names, ..
            } => match did_you_mean(key, names.iter().copied()) {
                Some(g) => format!("did you mean `{g}`?"),
                None => format!("the {what}s of this stage are: {}", names.join(", ")),
            },
            P::UnknownRewardTerm { key, source, terms } => {
                match did_you_mean(key, terms.iter().copied()) {
                    Some(g) => format!("did you mean `{g}`?"),
                    None if terms.is_empty() => format!(
                        "no `grpo` objective of this stage reads `{source}`; weigh an objective by name instead"
                    ),
                    None => format!("the reward terms of `{source}` are: {}", terms.join(", ")),
                }
            }
            P::LoraOfFrozen => "adapt the trainable model, and declare the reference as `frozen(policy)`".to_string(),
            P::LoraNested => "use one `lora` and list every layer in its `targets`".to_string(),
            P::LoraDuplicateTarget { .. } => "remove the repeated target".to_string(),
        }
    }
}

/// What to say about a key some row lacks: that the first row has it (so only some rows lack
/// it), or the closest field the first row has, and what it has.
fn missing_data_field_help(key: &str, first_row: &[String]) -> String {
    if first_row.iter().any(|k| k == key) {
        return format!(
            "the first row has `{key}`; every row the run reads needs it, or map a field that is always there"
        );
    }
    let guess = did_you_mean(key, first_row.iter().map(String::as_str))
        .map(|g| format!("did you mean `{g}`? "))
        .unwrap_or_default();
    if first_row.is_empty() {
        format!("{guess}the first row has no fields")
    } else {
        format!("{guess}the first row has: {}", first_row.join(", "))
    }
}

/// The largest divisor of `n` not above `limit` (at least 1).
fn largest_divisor(n: i64, limit: i64) -> i64 {
    (1..=limit.min(n).max(1))
        .rev()
        .find(|d| n % d == 0)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::{ProblemCode, Span};

    #[test]
    fn every_code_is_a_validate_code() {
        for c in ValidateCode::ALL {
            assert_eq!(c.code().split("::").nth(1), Some("validate"), "{c:?}");
        }
    }

    /// A problem's diagnostic takes the problem's code, severity, message and help, and the
    /// label the call site gives.
    #[test]
    fn a_problem_builds_its_diagnostic() {
        let problem = ValidateProblem::MissingFile {
            path: "data/qa.jsonl",
            is_error: false,
        };
        let d = problem.at(Span::new(3, 7), "not found");
        assert_eq!(d.code, "recap::validate::missing_file");
        assert_eq!(d.severity, Severity::Warning);
        assert_eq!(d.message, "the file `data/qa.jsonl` does not exist");
        assert_eq!(d.primary_span(), Span::new(3, 7));
        assert_eq!(d.labels[0].message, "not found");
        assert_eq!(d.help.as_deref(), Some(problem.help().as_str()));
        let fatal = ValidateProblem::MissingFile {
            path: "data/qa.jsonl",
            is_error: true,
        };
        assert_eq!(fatal.severity(), Severity::Error);
    }

    /// The window has no upper bound, so its doubled length must not overflow into a panic.
    #[test]
    fn a_window_past_half_of_i64_is_worded_without_panicking() {
        let problem = ValidateProblem::WindowTooLong {
            window: i64::MAX,
            steps: 10,
        };
        assert!(problem.message().ends_with("the stage has 10"));
    }
}
