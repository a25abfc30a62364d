//! Validate: takes `Resolved` and `Typed` (every value checked against its signature), the
//! host and the options; gives the semantic diagnostics of DESIGN.md §3 and the policy model of
//! the job: RL objectives without rewards, verifiers needing a field their source lacks or
//! reading another source's field, KL terms without a frozen reference, reweighting with fewer
//! than two objective keys, batch arithmetic that does not divide, warm-ups longer than the
//! stage, model shapes that do not divide, missing or ambiguous policies, missing files
//! (warnings for `check`, errors for `run`), and settings that never take effect (warnings).

use crate::ast::DeclKind;
use crate::diagnostic::{did_you_mean, Diagnostic, Span};
use crate::resolve::{EntityId, EntityKind, Resolved};
use crate::typecheck::{fields_of, has_field, CallVal, Typed, Val, Value};
use crate::types::Kind;
use crate::{CheckOptions, Host};

/// What later stages need from validation.
#[derive(Debug, Default)]
pub struct Validated {
    /// The model every stage trains.
    pub policy: Option<EntityId>,
}

/// A source, verifier or model given either by name or inline as a call.
pub enum Ref<'t> {
    Decl(EntityId, &'t CallVal),
    Inline(&'t CallVal),
}

impl<'t> Ref<'t> {
    pub fn call(&self) -> &'t CallVal {
        match self {
            Ref::Decl(_, c) | Ref::Inline(c) => c,
        }
    }
    /// Identity for comparisons: the entity, or the inline call's position.
    pub fn key(&self) -> (usize, usize) {
        match self {
            Ref::Decl(id, _) => (0, *id),
            Ref::Inline(c) => (1, c.span.start()),
        }
    }
}

/// Follows a value to the call that defines it.
pub fn deref<'t>(typed: &'t Typed, v: &'t Val) -> Option<Ref<'t>> {
    match &v.v {
        Value::Decl(id, _) => typed.call(*id).map(|c| Ref::Decl(*id, c)),
        Value::Call(c) => Some(Ref::Inline(c)),
        _ => None,
    }
}

/// The name of an entity as the plan holds it (a copy that needs no allocation for names of
/// up to 24 bytes).
pub fn entity_name(res: &Resolved, id: EntityId) -> compact_str::CompactString {
    res.name(id).into()
}

const NEEDS_EXPECTED: &[&str] = &["exact", "numeric", "math_equal", "choice", "iou"];

pub fn validate(
    res: &Resolved,
    typed: &Typed,
    options: &CheckOptions,
    host: &dyn Host,
    diags: &mut Vec<Diagnostic>,
) -> Validated {
    let mut v = V {
        res,
        typed,
        diags,
        frozen: Vec::new(),
        calls: inspected_calls(res, typed),
    };
    v.files(options, host);
    v.model_dirs(options, host);
    v.data_fields(host);
    v.models();
    v.verifier_settings();
    let policy = v.policy();
    v.frozen = frozen_copies(res, typed, policy);
    v.generation_budget(policy, host);
    // A stage whose name repeats an earlier one's is already an error (resolve reports it);
    // checking it as a stage of its own would only add errors about the same mistake.
    let mut names = std::collections::HashSet::new();
    for (i, st) in res.stages.iter().enumerate() {
        if st.name.is_none_or(|n| names.insert(n.name.as_str())) {
            v.stage(i);
        }
    }
    Validated { policy }
}

struct V<'r, 'a, 't, 'd> {
    res: &'r Resolved<'a>,
    typed: &'t Typed,
    diags: &'d mut Vec<Diagnostic>,
    /// Frozen copies of the policy, computed once (each KL term asks).
    frozen: Vec<EntityId>,
    /// The calls the rules inspect, wherever they appear (see `inspected_calls`); each rule
    /// takes its list.
    calls: Inspected<'t>,
}

impl<'t> V<'_, '_, 't, '_> {
    fn files(&mut self, options: &CheckOptions, host: &dyn Host) {
        // A hash set, not a sorted one: it only drops repeats (a path that a `let` names and
        // two places use is one literal), and a 100k-line pipeline names 8,000 paths, where a
        // sorted set's string comparisons grow faster than the input.
        let mut seen: foldhash::HashSet<(&str, usize)> = Default::default();
        seen.reserve(self.typed.paths.len());
        for (path, span) in &self.typed.paths {
            if !seen.insert((path.as_str(), span.start())) || host.file_exists(path) {
                continue;
            }
            let msg = format!("the file `{path}` does not exist");
            let d = if options.missing_files_are_errors {
                Diagnostic::error("recap::validate::missing_file", msg)
            } else {
                Diagnostic::warning("recap::validate::missing_file", msg)
            };
            self.diags.push(
                d.label(*span, "not found")
                    .with_help("paths are relative to the pipeline file's directory; fetch the data or fix the path"),
            );
        }
    }

    /// Each `hf(dir)` directory that exists must hold what loading needs: `config.json`,
    /// `tokenizer.json` and the weights (`model.safetensors`, or the index of shards). A
    /// directory without them is mostly a download that stopped half-way; like a missing file,
    /// a warning for `check` and an error for `run`.
    fn model_dirs(&mut self, options: &CheckOptions, host: &dyn Host) {
        for c in std::mem::take(&mut self.calls.hf) {
            let Some(dir) = c.str("dir") else {
                continue;
            };
            // A directory that does not exist is already a `missing_file`.
            if dir.is_empty() || !host.file_exists(dir) {
                continue;
            }
            let base = dir.trim_end_matches(['/', '\\']);
            let has = |name: &str| host.file_exists(&format!("{base}/{name}"));
            let mut lacking: Vec<&str> = ["config.json", "tokenizer.json"]
                .into_iter()
                .filter(|f| !has(f))
                .collect();
            if !has("model.safetensors") && !has("model.safetensors.index.json") {
                lacking.push("model.safetensors");
            }
            if lacking.is_empty() {
                continue;
            }
            let names: Vec<String> = lacking.iter().map(|f| format!("`{f}`")).collect();
            let listed = match names.split_last() {
                Some((last, init)) if !init.is_empty() => format!("{} or {last}", init.join(", ")),
                _ => names.join(""),
            };
            let msg = format!("the model directory `{dir}` has no {listed}");
            let d = if options.missing_files_are_errors {
                Diagnostic::error("recap::validate::incomplete_model", msg)
            } else {
                Diagnostic::warning("recap::validate::incomplete_model", msg)
            };
            let span = arg_span(c, "dir");
            self.diags.push(
                d.label(span, "incomplete")
                    .with_help("a Hugging Face model directory holds `config.json`, `tokenizer.json` and `model.safetensors` (or `model.safetensors.index.json` and its shards); finish the download (`scripts/fetch-models.sh`) or fix the path"),
            );
        }
    }

    fn models(&mut self) {
        for (id, e) in self.res.entities.iter().enumerate() {
            if e.kind != EntityKind::Decl(DeclKind::Model) {
                continue;
            }
            let Some(c) = self.typed.call(id) else {
                continue;
            };
            if c.name() != "tiny" {
                continue;
            }
            let (h, heads, kv) = (c.int("hidden"), c.int("heads"), c.int("kv_heads"));
            if let (Some(h), Some(heads)) = (h, heads) {
                if heads > 0 && h % heads != 0 {
                    let span = c.get("hidden").map(|v| v.span).unwrap_or(c.span);
                    self.diags.push(
                        Diagnostic::error(
                            "recap::validate::shape_not_divisible",
                            format!("`hidden` ({h}) must divide by `heads` ({heads})"),
                        )
                        .label(span, format!("{h} is not a multiple of {heads}"))
                        .with_help("choose `hidden` as a multiple of `heads`"),
                    );
                }
            }
            if let (Some(heads), Some(kv)) = (heads, kv) {
                if kv > 0 && heads % kv != 0 {
                    let span = c.get("kv_heads").map(|v| v.span).unwrap_or(c.span);
                    self.diags.push(
                        Diagnostic::error(
                            "recap::validate::shape_not_divisible",
                            format!("`heads` ({heads}) must divide by `kv_heads` ({kv})"),
                        )
                        .label(span, format!("{heads} is not a multiple of {kv}"))
                        .with_help("choose `kv_heads` as a divisor of `heads`"),
                    );
                }
            }
        }
    }

    /// Each `jsonl` source's prompt placeholders and `field(...)` reads, held against the first
    /// rows of its data file when the host can read them: the runtime stops at the first row
    /// that lacks one, after the models are loaded.
    fn data_fields(&mut self, host: &dyn Host) {
        for c in std::mem::take(&mut self.calls.jsonl) {
            let Some(path) = c.str("file") else {
                continue;
            };
            let Some(mut rows) = host.jsonl_rows(path) else {
                continue;
            };
            // The runtime reads no further than `limit` rows; neither does the check.
            if let Some(limit) = c.int("limit") {
                rows.truncate(usize::try_from(limit).unwrap_or(0));
            }
            if let Some((line, why)) = rows.iter().find_map(|r| match &r.fields {
                Err(why) => Some((r.line, why)),
                Ok(_) => None,
            }) {
                let span = arg_span(c, "file");
                self.diags.push(
                    Diagnostic::error(
                        "recap::validate::bad_data_line",
                        format!("line {line} of `{path}` is not a JSON object: {why}"),
                    )
                    .label(span, format!("line {line} is not a JSON object"))
                    .with_help("every line of a JSON Lines file is one JSON object, e.g. `{\"question\": \"2+2\", \"answer\": \"4\"}`; blank lines are skipped"),
                );
            }
            let rows: Vec<(usize, &Vec<String>)> = rows
                .iter()
                .filter_map(|r| r.fields.as_ref().ok().map(|f| (r.line, f)))
                .collect();
            let Some((_, first_keys)) = rows.first() else {
                continue;
            };
            // Every key the rows must have: what each mapped field reads (the name of its
            // `field(...)` step), then the prompt's placeholders, except those that name a
            // mapped field (filled in before the prompt is rendered). Each with its span and,
            // for the message, the mapped field that reads it (`None`: the prompt uses it).
            let mut uses: Vec<(&str, Span, Option<&str>)> = Vec::new();
            for (name, _, v) in &c.extra {
                if let Some(key) = field_read(v) {
                    uses.push((key, v.span, Some(name)));
                }
            }
            if let Some(Val {
                v: Value::Str { placeholders, .. },
                span,
                ..
            }) = c.get("prompt")
            {
                for p in placeholders {
                    if !c.extra.iter().any(|(n, _, _)| n == p) {
                        uses.push((p, *span, None));
                    }
                }
            }
            let lacking = |key: &str| {
                rows.iter()
                    .find(|(_, keys)| !keys.iter().any(|k| k == key))
                    .map(|(line, _)| *line)
            };
            // What to say about a key some row lacks: that the first row has it (so only some
            // rows lack it), or the closest field the first row has, and what it has.
            let help = |key: &str| {
                if first_keys.iter().any(|k| k == key) {
                    return format!(
                        "the first row has `{key}`; every row the run reads needs it, or map a field that is always there"
                    );
                }
                let guess = did_you_mean(key, first_keys.iter().map(String::as_str))
                    .map(|g| format!("did you mean `{g}`? "))
                    .unwrap_or_default();
                if first_keys.is_empty() {
                    format!("{guess}the first row has no fields")
                } else {
                    format!("{guess}the first row has: {}", first_keys.join(", "))
                }
            };
            for (key, span, reader) in uses {
                if let Some(line) = lacking(key) {
                    let (who, label) = match reader {
                        Some(name) => (format!("`{name}` reads"), format!("reads `{key}`")),
                        None => ("the prompt uses".to_string(), format!("uses `{{{key}}}`")),
                    };
                    self.diags.push(
                        Diagnostic::error(
                            "recap::validate::missing_data_field",
                            format!("line {line} of `{path}` has no field `{key}`, which {who}"),
                        )
                        .label(span, label)
                        .with_help(help(key)),
                    );
                }
            }
        }
    }

    /// Every generation budget (`max_tokens` of `grpo` objectives and probes) against the
    /// policy's context length, when the host can read it from a Hugging Face directory: a
    /// budget as long as the context leaves no room for the prompt, and the runtime would stop
    /// at the first rollout.
    fn generation_budget(&mut self, policy: Option<EntityId>, host: &dyn Host) {
        let Some(model) = policy.and_then(|p| self.typed.call(p)) else {
            return;
        };
        if model.name() != "hf" {
            return;
        }
        let Some(dir) = model.str("dir") else {
            return;
        };
        let Some(context) = host.model_context(dir) else {
            return;
        };
        let policy_name = policy.map(|p| self.res.name(p)).unwrap_or("policy");
        for (id, e) in self.res.entities.iter().enumerate() {
            if !matches!(
                e.kind,
                EntityKind::Decl(DeclKind::Objective | DeclKind::Eval)
            ) {
                continue;
            }
            let Some(c) = self.typed.call(id) else {
                continue;
            };
            if !matches!(c.name(), "grpo" | "probe") {
                continue;
            }
            let Some(budget) = c.int("max_tokens") else {
                continue;
            };
            if budget.max(0) as u64 >= context {
                let span = arg_span(c, "max_tokens");
                self.diags.push(
                    Diagnostic::error(
                        "recap::validate::context_too_short",
                        format!(
                            "`max_tokens` of `{}` ({budget}) leaves no room for the prompt: the policy `{policy_name}` has a context of {context} positions",
                            self.res.name(id)
                        ),
                    )
                    .label(span, format!("{budget} new tokens"))
                    .with_help(format!(
                        "generate fewer tokens: the prompt and `max_tokens` together must fit in {context} positions"
                    )),
                );
            }
        }
    }

    /// Settings of verifiers that the runtime would refuse when it builds them, after the
    /// models are loaded (a regular expression that does not compile, option letters that are
    /// not letters), and a length penalty whose target is not below its limit, which runs but
    /// is a step rather than a slope (a warning). Every call in every
    /// value is visited, so inline verifiers (`rewards = [regex("...")]`) are checked too.
    fn verifier_settings(&mut self) {
        // Compiling a pattern is the costly part, and a large pipeline repeats its few
        // patterns across thousands of verifiers: each distinct one is compiled once.
        let mut verdicts: foldhash::HashMap<&str, Option<String>> = Default::default();
        for c in std::mem::take(&mut self.calls.regex) {
            let Some(pattern) = c.str("pattern") else {
                continue;
            };
            let why = verdicts
                .entry(pattern)
                .or_insert_with(|| regex_error(pattern))
                .clone();
            if let Some(why) = why {
                let span = arg_span(c, "pattern");
                self.diags.push(
                    Diagnostic::error(
                        "recap::validate::bad_regex",
                        format!("the pattern of `regex` is not a valid regular expression: {why}"),
                    )
                    .label(span, why)
                    .with_help("the syntax is that of Rust's `regex` crate; escape a literal `(`, `[`, `{`, `.` or `*` with `\\`, or write the pattern as a raw string, `r\"...\"`"),
                );
            }
        }
        for c in std::mem::take(&mut self.calls.choice) {
            self.choice_options(c);
        }
        for c in std::mem::take(&mut self.calls.length_penalty) {
            self.penalty_target(c);
        }
    }

    /// A `choice` verifier's option letters: the runtime looks for upper-case ASCII letters.
    fn choice_options(&mut self, c: &CallVal) {
        let Some(options) = c.str("options") else {
            return;
        };
        if options.is_empty() || !options.chars().all(|ch| ch.is_ascii_uppercase()) {
            self.diags.push(
                Diagnostic::error(
                    "recap::validate::bad_options",
                    format!(
                        "the `options` of `choice` must be upper-case letters, found `{options}`"
                    ),
                )
                .label(arg_span(c, "options"), "not upper-case letters")
                .with_help("list the option letters, e.g. `options = \"ABCD\"`"),
            );
        }
    }

    /// A `length_penalty` whose target is not below its limit. The runtime moves the limit
    /// past the target rather than refuse, so the reward becomes a step; likely not what was
    /// meant, but it runs, so a warning.
    fn penalty_target(&mut self, c: &CallVal) {
        let (Some(target), Some(max)) = (c.int("target"), c.int("max_tokens")) else {
            return;
        };
        if target >= max {
            self.diags.push(
                Diagnostic::warning(
                    "recap::validate::penalty_target",
                    format!("the `target` of `length_penalty` ({target}) is not below its `max_tokens` ({max}): the reward stays 1.0 up to {target} tokens and drops to 0.0 right after"),
                )
                .label(arg_span(c, "target"), format!("not below {max}"))
                .label(arg_span(c, "max_tokens"), "where the reward was to reach 0")
                .with_help("the reward is 1.0 up to `target` tokens and falls to 0.0 at `max_tokens`; choose a smaller target or a larger limit"),
            );
        }
    }

    fn is_frozen(&self, id: EntityId) -> bool {
        self.typed.call(id).is_some_and(|c| c.name() == "frozen")
    }

    fn policy(&mut self) -> Option<EntityId> {
        let models: Vec<EntityId> = (0..self.res.entities.len())
            .filter(|&id| {
                self.res.entities.get(id).map(|e| e.kind) == Some(EntityKind::Decl(DeclKind::Model))
            })
            .collect();
        let trainable: Vec<EntityId> = models
            .iter()
            .copied()
            .filter(|&id| self.typed.call(id).is_some() && !self.is_frozen(id))
            .collect();
        let mut chosen: Option<(EntityId, Span)> = None;
        for (i, sv) in self.typed.stages.iter().enumerate() {
            let Some(Val {
                v: Value::Call(t), ..
            }) = &sv.train
            else {
                continue;
            };
            let explicit = t.get("policy").and_then(|p| match &p.v {
                Value::Decl(id, _) => Some((*id, p.span)),
                _ => None,
            });
            let pick = match explicit {
                Some((id, span)) => {
                    if self.is_frozen(id) {
                        self.diags.push(
                            Diagnostic::error(
                                "recap::validate::policy_is_frozen",
                                format!(
                                    "the policy `{}` is a frozen model",
                                    entity_name(self.res, id)
                                ),
                            )
                            .label(span, "frozen models are never trained")
                            .with_help("train the model the frozen copy was made from"),
                        );
                        continue;
                    }
                    Some((id, span))
                }
                None => match trainable.as_slice() {
                    [one] => Some((*one, sv.train_span)),
                    [] => {
                        if i == 0 && self.typed.call_errors_free(self.res) {
                            self.diags.push(
                                Diagnostic::error(
                                    "recap::validate::no_policy",
                                    "the job declares no model to train",
                                )
                                .label(sv.train_span, "trains nothing")
                                .with_help(
                                    "declare one, e.g. `model policy = hf(\"models/qwen\")`",
                                ),
                            );
                        }
                        None
                    }
                    [first, second, ..] => {
                        let s1 = self
                            .res
                            .entities
                            .get(*first)
                            .map(|e| e.name.span)
                            .unwrap_or_default();
                        let s2 = self
                            .res
                            .entities
                            .get(*second)
                            .map(|e| e.name.span)
                            .unwrap_or_default();
                        self.diags.push(
                            Diagnostic::error(
                                "recap::validate::ambiguous_policy",
                                "more than one model could be the policy",
                            )
                            .label(sv.train_span, "which model does this train?")
                            .label(s1, "this one")
                            .label(s2, "or this one")
                            .with_help(format!(
                                "name it in train: `policy = {}`",
                                entity_name(self.res, *first)
                            )),
                        );
                        None
                    }
                },
            };
            if let Some((id, span)) = pick {
                match chosen {
                    None => chosen = Some((id, span)),
                    Some((prev, prev_span)) if prev != id => {
                        self.diags.push(
                            Diagnostic::error(
                                "recap::validate::policy_changes",
                                "stages train different policies",
                            )
                            .label(span, format!("trains `{}`", entity_name(self.res, id)))
                            .label(prev_span, format!("an earlier stage trains `{}`", entity_name(self.res, prev)))
                            .with_help("every stage continues from the weights the previous one left: train one policy"),
                        );
                    }
                    _ => {}
                }
            }
        }
        chosen.map(|(id, _)| id)
    }

    fn stage(&mut self, i: usize) {
        let Some(st) = self.res.stages.get(i) else {
            return;
        };
        let Some(sv) = self.typed.stages.get(i) else {
            return;
        };
        let stage_label = st.name.map(|n| n.span);
        let objectives: Vec<EntityId> = st
            .members
            .iter()
            .copied()
            .filter(|&m| {
                self.res.entities.get(m).map(|e| e.kind)
                    == Some(EntityKind::Decl(DeclKind::Objective))
            })
            .collect();
        let evals: Vec<EntityId> = st
            .members
            .iter()
            .copied()
            .filter(|&m| {
                self.res.entities.get(m).map(|e| e.kind) == Some(EntityKind::Decl(DeclKind::Eval))
            })
            .collect();
        if objectives.is_empty() {
            let name = st
                .name
                .map(|n| n.name.clone())
                .unwrap_or_else(|| "main".into());
            let mut d = Diagnostic::error(
                "recap::validate::no_objective",
                if st.name.is_some() {
                    format!("stage `{name}` has no objective")
                } else {
                    "the job declares no objective".to_string()
                },
            );
            if let Some(s) = stage_label {
                d = d.label(s, "trains nothing");
            }
            self.diags.push(d.with_help(
                "declare one, e.g. `objective reasoning = grpo(math) { rewards = [accuracy] }`",
            ));
        }
        if self
            .res
            .setting(i, crate::ast::SettingKind::Train)
            .is_none()
        {
            let mut d = Diagnostic::error(
                "recap::validate::missing_train",
                "the job has no `train` setting",
            );
            if let Some(s) = stage_label {
                d = d.label(s, "no `train { ... }` for this stage");
            }
            self.diags.push(
                d.with_help("add `train { steps = 100 }` (at the top level, or in the stage)"),
            );
        }
        let train = match &sv.train {
            Some(Val {
                v: Value::Call(c), ..
            }) => Some(c.as_ref()),
            _ => None,
        };
        let steps = train.and_then(|t| t.int("steps"));
        let prompts = train.and_then(|t| t.int("prompts_per_step"));
        let micro =
            train.and_then(|t| t.get("micro_batch").map(|v| (v.span, t.int("micro_batch"))));
        let mut keys = 0usize;
        let mut obj_names: Vec<&str> = Vec::new();
        let mut sources_read: Vec<&str> = Vec::new();
        let mut has_sft = false;
        for &o in &objectives {
            let Some(c) = self.typed.call(o) else {
                continue;
            };
            let oname = self.res.name(o);
            obj_names.push(oname);
            let src = c.get("source").and_then(|s| deref(self.typed, s));
            if let Some(Value::Decl(sid, _)) = c.get("source").map(|s| &s.v) {
                sources_read.push(self.res.name(*sid));
            }
            let oname_span = self
                .res
                .entities
                .get(o)
                .map(|e| e.name.span)
                .unwrap_or_default();
            match c.name() {
                "grpo" => {
                    let rewards: Vec<&Val> = match c.get("rewards").map(|r| &r.v) {
                        Some(Value::List(items)) => items.iter().collect(),
                        _ => Vec::new(),
                    };
                    keys += rewards.len();
                    if rewards.is_empty() {
                        self.diags.push(
                            Diagnostic::error(
                                "recap::validate::no_reward",
                                format!("RL objective `{oname}` has no reward"),
                            )
                            .label(oname_span, "nothing to optimise")
                            .with_help("add `rewards = [accuracy]` with one or more verifiers"),
                        );
                    }
                    if let Some(src) = &src {
                        self.check_rewards(
                            &rewards,
                            src,
                            c.get("source").map(|s| s.span).unwrap_or(c.span),
                        );
                    }
                    self.check_kl(c);
                    if let (Some(p), Some(g), Some((mspan, Some(m)))) =
                        (prompts, c.int("group"), micro)
                    {
                        let batch = p.saturating_mul(g);
                        if m > 0 && batch % m != 0 {
                            self.diags.push(
                                Diagnostic::error(
                                    "recap::validate::batch_not_divisible",
                                    format!(
                                        "micro_batch {m} does not divide the {batch} completions of `{oname}` (prompts_per_step {p} x group {g})"
                                    ),
                                )
                                .label(mspan, format!("{batch} is not a multiple of {m}"))
                                .label(c.get("group").map(|v| v.span).unwrap_or(oname_span), format!("group {g}"))
                                .with_help(format!("choose a micro_batch that divides {batch}, e.g. {}", largest_divisor(batch, m))),
                            );
                        }
                    }
                }
                "sft" => {
                    keys += 1;
                    has_sft = true;
                    if let Some(src) = &src {
                        if !has_field(src.call(), "target") {
                            let fields = fields_of(src.call());
                            let sspan = c.get("source").map(|s| s.span).unwrap_or(c.span);
                            self.diags.push(
                                Diagnostic::error(
                                    "recap::validate::missing_field",
                                    "`sft` needs the field `target`, which this source does not provide",
                                )
                                .label(sspan, format!("provides {}", fields.join(", ")))
                                .with_help("map it in the source's block, e.g. `target = field(\"output\")`"),
                            );
                        }
                    }
                    if let (Some(p), Some((mspan, Some(m)))) = (prompts, micro) {
                        if m > 0 && p % m != 0 {
                            self.diags.push(
                                Diagnostic::error(
                                    "recap::validate::batch_not_divisible",
                                    format!("micro_batch {m} does not divide prompts_per_step {p} of `{oname}`"),
                                )
                                .label(mspan, format!("{p} is not a multiple of {m}"))
                                .with_help(format!("choose a micro_batch that divides {p}, e.g. {}", largest_divisor(p, m))),
                            );
                        }
                    }
                }
                _ => {}
            }
        }
        for &e in &evals {
            let Some(c) = self.typed.call(e) else {
                continue;
            };
            let ename = self.res.name(e);
            let espan = self
                .res
                .entities
                .get(e)
                .map(|x| x.name.span)
                .unwrap_or_default();
            let rewards: Vec<&Val> = match c.get("rewards").map(|r| &r.v) {
                Some(Value::List(items)) => items.iter().collect(),
                _ => Vec::new(),
            };
            if rewards.is_empty() {
                self.diags.push(
                    Diagnostic::error(
                        "recap::validate::no_reward",
                        format!("probe `{ename}` has no reward to score with"),
                    )
                    .label(espan, "nothing to measure")
                    .with_help("add `rewards = [accuracy]`"),
                );
            }
            if let Some(src) = c.get("source").and_then(|s| deref(self.typed, s)) {
                self.check_rewards(
                    &rewards,
                    &src,
                    c.get("source").map(|s| s.span).unwrap_or(c.span),
                );
            }
            if let (Some(every), Some(steps)) = (c.int("every"), steps) {
                if every > steps {
                    self.diags.push(
                        Diagnostic::warning(
                            "recap::validate::never_runs",
                            format!("probe `{ename}` runs every {every} steps, but the stage has only {steps}"),
                        )
                        .label(c.get("every").map(|v| v.span).unwrap_or(espan), "never reached")
                        .with_help(format!("use `every` of at most {steps}")),
                    );
                }
            }
        }
        if let Some(t) = train {
            self.check_train(t, steps);
        }
        if let Some(Val {
            v: Value::Call(rw),
            span,
            ..
        }) = &sv.reweight
        {
            if rw.name() != "uniform" && keys < 2 && !objectives.is_empty() {
                self.diags.push(
                    Diagnostic::error(
                        "recap::validate::reweight_needs_two",
                        format!("`{}` reweights objectives, but this stage has {keys} objective key{}", rw.name(), if keys == 1 { "" } else { "s" }),
                    )
                    .label(*span, "nothing to weigh against")
                    .with_help("reweighting needs two or more keys (one per reward term of an RL objective, one per SFT objective); add a replay objective or use `reweight uniform`"),
                );
            }
            if rw.name() == "static" {
                self.check_keys(rw, &obj_names, "objective");
            }
            if let (Some(w), Some(steps)) = (rw.int("window"), steps) {
                if w.saturating_mul(2) > steps {
                    self.diags.push(
                        Diagnostic::warning(
                            "recap::validate::window_too_long",
                            format!(
                                "the RECAP window needs {} steps of history, the stage has {steps}",
                                w * 2
                            ),
                        )
                        .label(
                            rw.get("window").map(|v| v.span).unwrap_or(*span),
                            "longer than the stage",
                        )
                        .with_help("use a window of at most half the stage's steps"),
                    );
                }
            }
        }
        if let Some(Val {
            v: Value::Call(mx),
            span,
            ..
        }) = &sv.mix
        {
            let mut m = mx.as_ref();
            if m.name() == "coreset" {
                if !has_sft && !objectives.is_empty() {
                    self.diags.push(
                        Diagnostic::warning(
                            "recap::validate::no_replay",
                            "`coreset` caps replay, but this stage has no replay (sft) objective",
                        )
                        .label(*span, "caps nothing")
                        .with_help("add an `sft` objective or use another mixer"),
                    );
                }
                if let Some(base) = m.call("base") {
                    // The cap scales the replay sources' chances of being drawn, so the base
                    // must draw at random; the runtime refuses the others too.
                    if matches!(base.name(), "round_robin" | "all" | "coreset") {
                        self.diags.push(
                            Diagnostic::error(
                                "recap::validate::coreset_base",
                                format!(
                                    "`coreset` cannot cap `{}`: its base must draw sources at random",
                                    base.name()
                                ),
                            )
                            .label(base.span, "does not draw at random")
                            .with_help("use `uniform`, `proportional` or `weights(...)` as the base"),
                        );
                    }
                    m = base;
                }
            }
            if m.name() == "weights" {
                self.check_keys(m, &sources_read, "source");
            }
        }
    }

    fn check_keys(&mut self, c: &CallVal, names: &[&str], what: &str) {
        for (k, span, _) in &c.extra {
            if !names.iter().any(|n| n == k) {
                let guess = did_you_mean(k, names.iter().copied());
                self.diags.push(
                    Diagnostic::error(
                        "recap::validate::unknown_weight_key",
                        format!(
                            "`{}` weighs `{k}`, which is no {what} of this stage",
                            c.name()
                        ),
                    )
                    .label(*span, format!("not {what} of this stage"))
                    .with_help(match guess {
                        Some(g) => format!("did you mean `{g}`?"),
                        None => format!("the {what}s of this stage are: {}", names.join(", ")),
                    }),
                );
            }
        }
    }

    fn check_rewards(&mut self, rewards: &[&Val], src: &crate::validate::Ref, src_span: Span) {
        let has_answer = has_field(src.call(), "answer");
        for r in rewards {
            let verifiers: Vec<(Option<EntityId>, &CallVal, Span)> = match &r.v {
                Value::Decl(id, Kind::Verifier) => self
                    .typed
                    .call(*id)
                    .map(|c| vec![(Some(*id), c, r.span)])
                    .unwrap_or_default(),
                Value::Call(c) => vec![(None, c.as_ref(), r.span)],
                Value::Reward(terms) => terms
                    .iter()
                    .filter_map(|(_, id)| self.typed.call(*id).map(|c| (Some(*id), c, r.span)))
                    .collect(),
                _ => Vec::new(),
            };
            for (vid, vc, span) in verifiers {
                let vname = vid.map(|id| self.res.name(id)).unwrap_or(vc.name());
                match vc.get("expected").map(|e| &e.v) {
                    Some(Value::Field { source, name }) => {
                        let same = src.key() == (0, *source);
                        if !same {
                            let fspan = vc.get("expected").map(|e| e.span).unwrap_or(span);
                            self.diags.push(
                                Diagnostic::error(
                                    "recap::validate::foreign_field",
                                    format!(
                                        "verifier `{vname}` reads `{}.{name}`, but here it verifies completions of another source",
                                        entity_name(self.res, *source)
                                    ),
                                )
                                .label(span, "used here")
                                .label(fspan, "reads this field")
                                .label(src_span, "on this source")
                                .with_help("declare a verifier for this source, or leave `expected` out to read the verified source's `answer`"),
                            );
                        }
                    }
                    None if NEEDS_EXPECTED.contains(&vc.name()) && !has_answer => {
                        let fields = fields_of(src.call());
                        self.diags.push(
                                Diagnostic::error(
                                    "recap::validate::missing_field",
                                    format!("verifier `{vname}` needs the field `answer`, which this source does not provide"),
                                )
                                .label(span, "needs `answer`")
                                .label(src_span, format!("provides {}", fields.join(", ")))
                                .with_help("map it in the source's block, e.g. `answer = field(\"answer\")`, or give the verifier `expected = source.field`"),
                            );
                    }
                    _ => {}
                }
            }
        }
    }

    fn check_kl(&mut self, c: &CallVal) {
        let Some(kl_val) = c.get("kl") else { return };
        let Some(kl) = deref(self.typed, kl_val) else {
            return;
        };
        let kl = kl.call();
        match kl.get("reference") {
            Some(r) => {
                if let Value::Decl(id, _) = r.v {
                    if !self.is_frozen(id) {
                        self.diags.push(
                            Diagnostic::error(
                                "recap::validate::kl_reference_not_frozen",
                                format!(
                                    "the KL reference `{}` is not a frozen model",
                                    entity_name(self.res, id)
                                ),
                            )
                            .label(r.span, "trainable model")
                            .with_help(format!(
                                "declare `model base = frozen({})` and use `kl(base)`",
                                entity_name(self.res, id)
                            )),
                        );
                    }
                }
            }
            None => {
                if self.frozen.len() != 1 {
                    let n = self.frozen.len();
                    self.diags.push(
                        Diagnostic::error(
                            "recap::validate::kl_without_reference",
                            if n == 0 {
                                "this KL term has no reference model".to_string()
                            } else {
                                format!("this KL term could use any of {n} frozen models")
                            },
                        )
                        .label(kl_val.span, "KL against what?")
                        .with_help("declare `model base = frozen(policy)` and write `kl(base, coef = 0.04)`"),
                    );
                }
            }
        }
    }

    fn check_train(&mut self, t: &CallVal, steps: Option<i64>) {
        let Some(steps) = steps else { return };
        if let Some(s) = t.call("schedule") {
            if let Some(w) = s.get("warmup") {
                if let Value::Int(n) = w.v {
                    if n >= steps && n > 0 {
                        self.diags.push(
                            Diagnostic::error(
                                "recap::validate::warmup_exceeds_steps",
                                format!("a warm-up of {n} steps does not fit in {steps} steps"),
                            )
                            .label(w.span, "longer than the stage")
                            .with_help(format!(
                                "use fewer than {steps} warm-up steps, or a percentage such as 10%"
                            )),
                        );
                    }
                }
            }
        }
        if let Some(cp) = t.call("checkpoint") {
            if let Some(every) = cp.int("steps") {
                if every > steps {
                    self.diags.push(
                        Diagnostic::warning(
                            "recap::validate::never_runs",
                            format!("checkpoints every {every} steps, but the stage has only {steps}"),
                        )
                        .label(cp.get("steps").map(|v| v.span).unwrap_or(cp.span), "never reached")
                        .with_help("the final checkpoint is always written; use a smaller interval for intermediate ones"),
                    );
                }
            }
        }
    }
}

/// Frozen models declared as `frozen(policy)`.
pub fn frozen_copies(res: &Resolved, typed: &Typed, policy: Option<EntityId>) -> Vec<EntityId> {
    (0..res.entities.len())
        .filter(|&id| {
            typed.call(id).is_some_and(|c| {
                c.name() == "frozen"
                    && res.entities.get(id).map(|e| e.kind)
                        == Some(EntityKind::Decl(DeclKind::Model))
                    && match c.decl("model") {
                        Some(m) => Some(m) == policy || policy.is_none(),
                        None => false,
                    }
            })
        })
        .collect()
}

/// Where the argument `name` of `c` is written, or the call itself when it is defaulted.
fn arg_span(c: &CallVal, name: &str) -> Span {
    c.get(name).map_or(c.span, |v| v.span)
}

/// The raw-row field that an extractor chain such as `field("answer").after("####")` starts
/// from, when it starts from one.
fn field_read(v: &Val) -> Option<&str> {
    let Value::Call(c) = &v.v else {
        return None;
    };
    if c.name() == "field" {
        return c.str("name");
    }
    c.get("self").and_then(field_read)
}

/// The functions whose calls validate checks wherever they appear, inline ones included.
/// The calls of the stdlib functions that validate's rules inspect, one list per function.
#[derive(Default)]
struct Inspected<'t> {
    hf: Vec<&'t CallVal>,
    jsonl: Vec<&'t CallVal>,
    regex: Vec<&'t CallVal>,
    choice: Vec<&'t CallVal>,
    length_penalty: Vec<&'t CallVal>,
}

impl<'t> Inspected<'t> {
    /// The functions, as the stdlib names them.
    #[cfg(test)]
    const FUNCTIONS: [&'static str; 5] = ["hf", "jsonl", "regex", "choice", "length_penalty"];

    /// The list for calls of `function`, when a rule inspects them.
    fn list(&mut self, function: &str) -> Option<&mut Vec<&'t CallVal>> {
        match function {
            "hf" => Some(&mut self.hf),
            "jsonl" => Some(&mut self.jsonl),
            "regex" => Some(&mut self.regex),
            "choice" => Some(&mut self.choice),
            "length_penalty" => Some(&mut self.length_penalty),
            _ => None,
        }
    }
}

/// The calls the rules inspect, in the values of the declarations, inline ones
/// included, found in one walk: the values of a large pipeline are long out of cache here, and
/// a walk per rule read them again each time. `let` and `param` values are left out: where one
/// is used, its value is copied in, so its calls are met there (and an unused one is only
/// worth the warning it gets). A `let` used twice gives its calls twice; their diagnostics are
/// identical, and `check` keeps one of each.
fn inspected_calls<'t>(res: &Resolved, typed: &'t Typed) -> Inspected<'t> {
    let mut calls = Inspected::default();
    for (e, v) in res.entities.iter().zip(&typed.values) {
        if let (EntityKind::Decl(_), Some(v)) = (e.kind, v) {
            collect_calls(v, &mut calls);
        }
    }
    calls
}

/// Why the runtime's regex verifier would refuse `pattern`, or `None` when it compiles. The
/// same builder and size limit as the runtime, so the checker accepts exactly what the run will.
fn regex_error(pattern: &str) -> Option<String> {
    let e = regex::RegexBuilder::new(pattern)
        .size_limit(recap_plan::REGEX_SIZE_LIMIT)
        .build()
        .err()?;
    Some(match &e {
        regex::Error::CompiledTooBig(limit) => format!(
            "it compiles to more than the {} MiB the runtime allows",
            limit >> 20
        ),
        // A syntax error's text draws the pattern with a caret; its last line says what is
        // wrong.
        other => other
            .to_string()
            .lines()
            .last()
            .map(|l| l.trim_start_matches("error: ").to_string())
            .unwrap_or_default(),
    })
}

/// Every call in `v` of a function the rules inspect, its arguments' calls included, in order.
fn collect_calls<'t>(v: &'t Val, out: &mut Inspected<'t>) {
    match &v.v {
        Value::Call(c) => {
            if let Some(list) = out.list(c.name()) {
                list.push(c);
            }
            for (_, arg) in c.args() {
                collect_calls(arg, out);
            }
            for (_, _, arg) in &c.extra {
                collect_calls(arg, out);
            }
        }
        Value::List(items) => {
            for item in items {
                collect_calls(item, out);
            }
        }
        _ => {}
    }
}

/// The largest divisor of `n` not above `limit` (at least 1).
fn largest_divisor(n: i64, limit: i64) -> i64 {
    (1..=limit.min(n).max(1))
        .rev()
        .find(|d| n % d == 0)
        .unwrap_or(1)
}

impl Typed {
    /// Whether every entity has a value (no earlier error), so "nothing declared" messages are
    /// not caused by an earlier failure.
    pub fn call_errors_free(&self, _res: &Resolved) -> bool {
        self.values.iter().all(|v| v.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::Inspected;

    #[test]
    fn inspected_functions_are_stdlib_functions() {
        let std = crate::stdlib::stdlib();
        for f in Inspected::FUNCTIONS {
            assert!(std.fns.contains_key(f), "`{f}` is not a stdlib function");
            assert!(Inspected::default().list(f).is_some(), "`{f}` has no list");
        }
    }
}
