//! Validate's rules about each stage: it has objectives and a `train` setting; each RL
//! objective and probe has rewards whose verifiers read what its source provides; KL terms have
//! a frozen reference; `micro_batch` divides each objective's batch; intervals, warm-ups and
//! windows fit in the stage's steps; the reweighter has keys to weigh and the mixer draws as it
//! must.

use super::problems::ValidateProblem;
use super::{deref, setting_call, Ref, V};
use crate::ast::{DeclKind, SettingKind};
use crate::diagnostic::{did_you_mean, Fix, Problem, Span};
use crate::resolve::{EntityId, EntityKind, Resolved, StageScope};
use crate::typecheck::{fields_of, has_field, CallVal, StageValues, Val, Value};
use crate::types::Kind;
use std::borrow::Cow;

const NEEDS_EXPECTED: &[&str] = &["exact", "numeric", "math_equal", "choice", "iou"];

/// What the rules of one stage read: its members and its `train` setting's numbers.
struct Facts<'t> {
    objectives: Vec<EntityId>,
    evals: Vec<EntityId>,
    train: Option<&'t CallVal>,
    steps: Option<i64>,
    prompts: Option<i64>,
    /// Where `micro_batch` is written, and its value when it is an int.
    micro: Option<(Span, Option<i64>)>,
}

/// What the reweighter and the mixer weigh: the stage's objective keys, objective names, the
/// sources its objectives read by name, and whether it has a replay (`sft`) objective.
#[derive(Default)]
struct Weighed<'r> {
    keys: usize,
    objectives: Vec<&'r str>,
    /// The `grpo` objectives whose advantages are normalised (any `scale` but `none`): a
    /// `static` weight on one scales all its reward terms alike and cancels.
    normalised: Vec<&'r str>,
    sources: Vec<&'r str>,
    /// The `source.term` keys of the `grpo` objectives' reward terms, spelled as the plan
    /// names them.
    terms: Vec<String>,
    has_sft: bool,
    /// Whether an objective, its source or its rewards has an error, so that the keys above
    /// are not all known and the rules that count or look them up say nothing.
    incomplete: bool,
}

/// A verifier used in a reward of an objective or probe: its name (or its function's, when
/// inline), its call, where the reward is written, and the source it verifies.
struct VerifierUse<'u, 't> {
    name: &'u str,
    call: &'u CallVal,
    at: Span,
    source: &'u Ref<'t>,
    source_at: Span,
}

/// The `train` setting the fix of `missing_train` adds, the one its help line names.
const MINIMAL_TRAIN: &str = "train { steps = 100 }";

/// The rewards an objective or probe lists.
fn rewards(c: &CallVal) -> Vec<&Val> {
    match c.get("rewards").map(|r| &r.v) {
        Some(Value::List(items)) => items.iter().collect(),
        _ => Vec::new(),
    }
}

/// Where the source of an objective or probe is written, or the call when it is not.
fn source_span(c: &CallVal) -> Span {
    c.get("source").map(|s| s.span).unwrap_or(c.span)
}

impl<'r, 't> V<'r, '_, 't, '_> {
    pub(super) fn stage(&mut self, i: usize) {
        let Some(st) = self.res.stages.get(i) else {
            return;
        };
        let Some(sv) = self.typed.stages.get(i) else {
            return;
        };
        let members = |kind: DeclKind| -> Vec<EntityId> {
            st.members
                .iter()
                .copied()
                .filter(|&m| {
                    self.res.entities.get(m).map(|e| e.kind) == Some(EntityKind::Decl(kind))
                })
                .collect()
        };
        let train = setting_call(&sv.train).map(|(c, _)| c);
        let facts = Facts {
            objectives: members(DeclKind::Objective),
            evals: members(DeclKind::Eval),
            train,
            steps: train.and_then(|t| t.int("steps")),
            prompts: train.and_then(|t| t.int("prompts_per_step")),
            micro: train.and_then(|t| t.get("micro_batch").map(|v| (v.span, t.int("micro_batch")))),
        };
        self.has_objective(st, &facts);
        self.has_train(i, st);
        for &o in &facts.objectives {
            let Some(c) = self.typed.call(o) else {
                continue;
            };
            match c.name() {
                "grpo" => {
                    self.has_reward(o, c, false);
                    self.rewards_read_source(c);
                    self.kl_reference(c);
                    self.group_batch(o, c, &facts);
                }
                "sft" => {
                    self.sft_target(c);
                    self.prompt_batch(o, &facts);
                }
                _ => {}
            }
        }
        for &e in &facts.evals {
            let Some(c) = self.typed.call(e) else {
                continue;
            };
            self.has_reward(e, c, true);
            self.rewards_read_source(c);
            self.probe_interval(e, c, facts.steps);
        }
        if let (Some(t), Some(steps)) = (facts.train, facts.steps) {
            self.warmup(t, steps);
            self.checkpoint_interval(t, steps);
        }
        let weighed = self.weighed(&facts.objectives);
        self.reweight(sv, &facts, &weighed);
        self.mix(sv, &facts, &weighed);
    }

    /// A stage trains at least one objective.
    fn has_objective(&mut self, st: &StageScope, facts: &Facts) {
        if !facts.objectives.is_empty() || !self.complete {
            return;
        }
        let problem = ValidateProblem::NoObjective {
            stage: st.name.map(|n| n.name.as_str()),
        };
        let mut d = crate::diagnostic::Diagnostic::from(&problem);
        if let Some(n) = st.name {
            d = d.label(n.span, "trains nothing");
        }
        self.diags.push(d);
    }

    /// A `train` setting applies to the stage, its own or the top level's.
    fn has_train(&mut self, i: usize, st: &StageScope) {
        if self.res.setting(i, SettingKind::Train).is_some() || !self.complete {
            return;
        }
        let mut d = crate::diagnostic::Diagnostic::from(&ValidateProblem::MissingTrain);
        // The fix writes the block the help line names: at the end of a file without stages,
        // or before the closing brace of the stage, laid out as `recapc fmt` lays it out.
        let fix = match st.name {
            Some(n) => {
                d = d.label(n.span, "no `train { ... }` for this stage");
                let brace = st.span.end().saturating_sub(1);
                Fix::insert(
                    "add `train { steps = 100 }` to the stage",
                    brace,
                    format!("  {MINIMAL_TRAIN}\n"),
                )
            }
            None => Fix::insert(
                "add `train { steps = 100 }`",
                st.span.end(),
                format!("\n{MINIMAL_TRAIN}\n"),
            ),
        };
        self.diags.push(d.fix(fix));
    }

    /// An RL objective, or a probe when `probe` is true, lists at least one reward.
    fn has_reward(&mut self, id: EntityId, c: &CallVal, probe: bool) {
        if !rewards(c).is_empty() || c.broken("rewards") {
            return;
        }
        let name = self.res.name(id);
        let (problem, label) = if probe {
            (
                ValidateProblem::NoProbeReward { probe: name },
                "nothing to measure",
            )
        } else {
            (
                ValidateProblem::NoRlReward { objective: name },
                "nothing to optimise",
            )
        };
        self.diags.push(problem.at(self.name_span(id), label));
    }

    /// The verifiers of each reward of an objective or probe read their expected answers
    /// from the source it generates from.
    fn rewards_read_source(&mut self, c: &'t CallVal) {
        let Some(src) = c.get("source").and_then(|s| deref(self.typed, s)) else {
            return;
        };
        let src_span = source_span(c);
        for r in rewards(c) {
            let verifiers: Vec<(Option<EntityId>, &CallVal)> = match &r.v {
                Value::Decl(id, Kind::Verifier) => self
                    .typed
                    .call(*id)
                    .map(|c| vec![(Some(*id), c)])
                    .unwrap_or_default(),
                Value::Call(c) => vec![(None, c.as_ref())],
                Value::Reward(terms) => terms
                    .iter()
                    .filter_map(|(_, id)| self.typed.call(*id).map(|c| (Some(*id), c)))
                    .collect(),
                _ => Vec::new(),
            };
            for (vid, vc) in verifiers {
                let verifier = vid.map(|id| self.res.name(id)).unwrap_or(vc.name());
                let used = VerifierUse {
                    name: verifier,
                    call: vc,
                    at: r.span,
                    source: &src,
                    source_at: src_span,
                };
                self.expected_from_source(&used);
                self.answer_provided(&used);
            }
        }
    }

    /// A verifier that reads `expected = s.field` is used only on completions of `s`.
    fn expected_from_source(&mut self, used: &VerifierUse) {
        let Some(expected) = used.call.get("expected") else {
            return;
        };
        let Value::Field { source, name } = &expected.v else {
            return;
        };
        if used.source.entity() == Some(*source) {
            return;
        }
        let problem = ValidateProblem::ForeignField {
            verifier: used.name,
            source: self.res.name(*source),
            field: name,
        };
        self.diags.push(
            problem
                .at(used.at, "used here")
                .label(expected.span, "reads this field")
                .label(used.source_at, "on this source"),
        );
    }

    /// A verifier that compares with an expected answer and is not given one reads the
    /// source's `answer`, which the source must provide.
    fn answer_provided(&mut self, used: &VerifierUse) {
        if used.call.get("expected").is_some()
            || !NEEDS_EXPECTED.contains(&used.call.name())
            || has_field(used.source.call(), "answer")
        {
            return;
        }
        let fields = fields_of(used.source.call());
        let problem = ValidateProblem::MissingAnswer {
            verifier: used.name,
        };
        let mut d = problem
            .at(used.at, "needs `answer`")
            .label(used.source_at, format!("provides {}", fields.join(", ")));
        if let Some(fix) = used
            .source
            .entity()
            .and_then(|id| self.map_field(id, "answer", "answer"))
        {
            d = d.fix(fix);
        }
        self.diags.push(d);
    }

    /// An `sft` objective's source provides the `target` it trains on.
    fn sft_target(&mut self, c: &CallVal) {
        let Some(src) = c.get("source").and_then(|s| deref(self.typed, s)) else {
            return;
        };
        if has_field(src.call(), "target") {
            return;
        }
        let fields = fields_of(src.call());
        let mut d = ValidateProblem::MissingTarget
            .at(source_span(c), format!("provides {}", fields.join(", ")));
        if let Some(fix) = src
            .entity()
            .and_then(|id| self.map_field(id, "target", "output"))
        {
            d = d.fix(fix);
        }
        self.diags.push(d);
    }

    /// The fix that maps `field` to the data's `column` in the block of the declared source
    /// `id` (the mapping the help line suggests), adding the block when the source has none.
    /// Laid out one field a line, indented as `recapc fmt` indents the declaration's block.
    fn map_field(&self, id: EntityId, field: &str, column: &str) -> Option<Fix> {
        let e = self.res.entities.get(id)?;
        let outer = if e.stage.is_some() { "  " } else { "" };
        let mapping = format!("{field} = field(\"{column}\")");
        let message = format!("map `{field}` to the data's `{column}`");
        Some(match e.block {
            Some(b) => match b.fields.last() {
                Some(last) => Fix::insert(
                    message,
                    last.value.span.end(),
                    format!("\n{outer}  {mapping}"),
                ),
                None => Fix::replace(
                    message,
                    b.span,
                    format!("{{\n{outer}  {mapping}\n{outer}}}"),
                ),
            },
            None => Fix::insert(
                message,
                e.value.span.end(),
                format!(" {{\n{outer}  {mapping}\n{outer}}}"),
            ),
        })
    }

    /// A KL term's reference is frozen, or there is exactly one frozen copy to default to.
    fn kl_reference(&mut self, c: &CallVal) {
        let Some(kl_val) = c.get("kl") else { return };
        let Some(kl) = deref(self.typed, kl_val) else {
            return;
        };
        match kl.call().get("reference") {
            Some(r) => {
                if let Value::Decl(id, _) = r.v {
                    if !self.is_frozen(id) {
                        let problem = ValidateProblem::KlReferenceNotFrozen {
                            reference: self.res.name(id),
                        };
                        self.diags.push(problem.at(r.span, "trainable model"));
                    }
                }
            }
            None => {
                if self.frozen.len() != 1 && self.complete {
                    let problem = ValidateProblem::KlWithoutReference {
                        frozen: self.frozen.len(),
                    };
                    self.diags.push(problem.at(kl_val.span, "KL against what?"));
                }
            }
        }
    }

    /// `micro_batch` divides a `grpo` objective's completions per step.
    fn group_batch(&mut self, o: EntityId, c: &CallVal, facts: &Facts) {
        let (Some(prompts), Some(group), Some((mspan, Some(micro_batch)))) =
            (facts.prompts, c.int("group"), facts.micro)
        else {
            return;
        };
        let batch = prompts.saturating_mul(group);
        if micro_batch > 0 && batch % micro_batch != 0 {
            let group_span = c.get("group").map(|v| v.span).unwrap_or(self.name_span(o));
            let problem = ValidateProblem::GroupBatchNotDivisible {
                objective: self.res.name(o),
                micro_batch,
                prompts,
                group,
            };
            self.diags.push(
                problem
                    .at(mspan, format!("{batch} is not a multiple of {micro_batch}"))
                    .label(group_span, format!("group {group}")),
            );
        }
    }

    /// `micro_batch` divides an `sft` objective's prompts per step.
    fn prompt_batch(&mut self, o: EntityId, facts: &Facts) {
        let (Some(prompts), Some((mspan, Some(micro_batch)))) = (facts.prompts, facts.micro) else {
            return;
        };
        if micro_batch > 0 && prompts % micro_batch != 0 {
            let problem = ValidateProblem::PromptBatchNotDivisible {
                objective: self.res.name(o),
                micro_batch,
                prompts,
            };
            self.diags.push(problem.at(
                mspan,
                format!("{prompts} is not a multiple of {micro_batch}"),
            ));
        }
    }

    /// A probe's interval is no longer than the stage.
    fn probe_interval(&mut self, e: EntityId, c: &CallVal, steps: Option<i64>) {
        let (Some(every), Some(steps)) = (c.int("every"), steps) else {
            return;
        };
        if every > steps {
            let span = c.get("every").map(|v| v.span).unwrap_or(self.name_span(e));
            let problem = ValidateProblem::ProbeNeverRuns {
                probe: self.res.name(e),
                every,
                steps,
            };
            self.diags.push(problem.at(span, "never reached"));
        }
    }

    /// A learning-rate warm-up given in steps is shorter than the stage.
    fn warmup(&mut self, t: &CallVal, steps: i64) {
        let Some(w) = t.call("schedule").and_then(|s| s.get("warmup")) else {
            return;
        };
        if let Value::Int(warmup) = w.v {
            if warmup >= steps && warmup > 0 {
                let problem = ValidateProblem::WarmupExceedsSteps { warmup, steps };
                self.diags.push(problem.at(w.span, "longer than the stage"));
            }
        }
    }

    /// A checkpoint interval is no longer than the stage.
    fn checkpoint_interval(&mut self, t: &CallVal, steps: i64) {
        let Some(cp) = t.call("checkpoint") else {
            return;
        };
        let Some(every) = cp.int("steps") else {
            return;
        };
        if every > steps {
            let span = cp.get("steps").map(|v| v.span).unwrap_or(cp.span);
            let problem = ValidateProblem::CheckpointNeverRuns { every, steps };
            self.diags.push(problem.at(span, "never reached"));
        }
    }

    /// What the stage's reweighter and mixer weigh.
    fn weighed(&self, objectives: &[EntityId]) -> Weighed<'r> {
        let mut w = Weighed {
            incomplete: !self.complete,
            ..Weighed::default()
        };
        for &o in objectives {
            let Some(c) = self.typed.call(o) else {
                w.incomplete = true;
                continue;
            };
            w.incomplete |= c.broken("source") || c.broken("rewards");
            let objective = self.res.name(o);
            w.objectives.push(objective);
            let source = match c.get("source").map(|s| &s.v) {
                Some(Value::Decl(sid, _)) => Some(self.res.name(*sid)),
                _ => None,
            };
            w.sources.extend(source);
            match c.name() {
                "grpo" => {
                    if let Some(source) = source {
                        for (i, r) in rewards(c).into_iter().enumerate() {
                            let term = term_name(self.res, r, objective, i);
                            w.terms.push(format!("{source}.{term}"));
                        }
                    }
                    w.keys += rewards(c).len();
                    if c.enum_("scale") != Some("none") {
                        w.normalised.push(self.res.name(o));
                    }
                }
                "sft" => {
                    w.keys += 1;
                    w.has_sft = true;
                }
                _ => {}
            }
        }
        w
    }

    /// The stage's reweighter: two keys or more unless uniform, known objective names for
    /// `static`, and a RECAP window that fits in the stage.
    fn reweight(&mut self, sv: &StageValues, facts: &Facts, weighed: &Weighed) {
        let Some((rw, span)) = setting_call(&sv.reweight) else {
            return;
        };
        let keys = weighed.keys;
        let known = !weighed.incomplete;
        if rw.name() != "uniform" && keys < 2 && !facts.objectives.is_empty() && known {
            let problem = ValidateProblem::ReweightNeedsTwo {
                reweighter: rw.name(),
                keys,
            };
            self.diags
                .push(problem.at(span, "nothing to weigh against"));
        }
        if rw.name() == "static" && known {
            self.weight_keys(rw, &weighed.objectives, "objective");
            self.term_keys(rw, &weighed.terms);
            for (key, span, _) in &rw.extra {
                if weighed.normalised.iter().any(|n| n == key) {
                    let problem = ValidateProblem::StaticCancels { objective: key };
                    self.diags
                        .push(problem.at(*span, "cancels in group normalisation"));
                }
            }
        }
        if let (Some(window), Some(steps)) = (rw.int("window"), facts.steps) {
            if window.saturating_mul(2) > steps {
                let at = rw.get("window").map(|v| v.span).unwrap_or(span);
                let problem = ValidateProblem::WindowTooLong { window, steps };
                self.diags.push(problem.at(at, "longer than the stage"));
            }
        }
    }

    /// The stage's mixer: a `coreset` has replay to cap and a base that draws at random, and
    /// `weights` (itself or as the base) weighs known sources.
    fn mix(&mut self, sv: &StageValues, facts: &Facts, weighed: &Weighed) {
        let Some((mut m, span)) = setting_call(&sv.mix) else {
            return;
        };
        if m.name() == "coreset" {
            if !weighed.has_sft && !facts.objectives.is_empty() && !weighed.incomplete {
                self.diags
                    .push(ValidateProblem::NoReplay.at(span, "caps nothing"));
            }
            if let Some(base) = m.call("base") {
                // The cap scales the replay sources' chances of being drawn, so the base
                // must draw at random; the runtime refuses the others too.
                if matches!(base.name(), "round_robin" | "all" | "coreset") {
                    let problem = ValidateProblem::CoresetBase { base: base.name() };
                    self.diags
                        .push(problem.at(base.span, "does not draw at random"));
                }
                m = base;
            }
        }
        if m.name() == "weights" && !weighed.incomplete {
            self.weight_keys(m, &weighed.sources, "source");
        }
    }

    /// Every key a `static` or `weights` call weighs names one of `names`.
    fn weight_keys(&mut self, c: &CallVal, names: &[&str], what: &str) {
        for (key, span, _) in &c.extra {
            // `source.term` keys weigh reward terms, which `term_keys` checks.
            if !key.contains('.') && !names.iter().any(|n| n == key) {
                let problem = ValidateProblem::UnknownWeightKey {
                    function: c.name(),
                    key,
                    what,
                    names,
                };
                let guess = did_you_mean(key, names.iter().copied());
                self.diags.push(
                    problem
                        .at(*span, format!("not {what} of this stage"))
                        .fix_name(*span, key, guess),
                );
            }
        }
    }

    /// Every `source.term` key a `static` call weighs names a reward term of a `grpo`
    /// objective of this stage that reads that source.
    fn term_keys(&mut self, c: &CallVal, terms: &[String]) {
        for (key, span, _) in &c.extra {
            let Some((source, _)) = key.split_once('.') else {
                continue;
            };
            // A key whose source is not declared is resolve's `unknown_weight_source`.
            let declared = self
                .res
                .entities
                .iter()
                .any(|e| e.kind == EntityKind::Decl(DeclKind::Source) && e.name.name == source);
            if !declared || terms.iter().any(|t| t == key) {
                continue;
            }
            let of_source: Vec<&str> = terms
                .iter()
                .map(String::as_str)
                .filter(|t| t.split_once('.').is_some_and(|(s, _)| s == source))
                .collect();
            let problem = ValidateProblem::UnknownRewardTerm {
                key,
                source,
                terms: &of_source,
            };
            self.diags
                .push(problem.at(*span, "no reward term of this stage"));
        }
    }
}

/// The name the plan gives reward term `i` of objective `owner`: the name of the `let` or
/// verifier it was written as, `{owner}.reward{i}` for a verifier written inline, or
/// `reward{i}` for an inline sum (as lower names them).
fn term_name<'r>(res: &'r Resolved, r: &Val, owner: &str, i: usize) -> Cow<'r, str> {
    if let Some(n) = r.origin_name(res) {
        return Cow::Borrowed(n);
    }
    match &r.v {
        Value::Decl(id, _) => Cow::Borrowed(res.name(*id)),
        Value::Call(_) => Cow::Owned(format!("{owner}.reward{i}")),
        _ => Cow::Owned(format!("reward{i}")),
    }
}
