//! Lower: takes the checked program (`Resolved`, `Typed`, `Validated`) and gives the
//! `recap_plan::Plan` the runtime executes: every stdlib call turned into its typed plan
//! variant with all parameters resolved (defaults filled, percentages of steps turned into
//! step counts), inline sources and verifiers given names, rollouts shared within a stage,
//! and the stages with their own objectives, mix, reweight and train settings. Runs only on
//! programs without errors; a shape it does not expect becomes `recap::internal::lower`.

mod decls;
mod settings;
mod stage;

use crate::ast::DeclKind;
use crate::diagnostic::{Diagnostic, Problem, Span};
use crate::internal::InternalProblem;
use crate::resolve::{EntityId, EntityKind, Resolved};
use crate::typecheck::{CallVal, Typed, Value};
use crate::validate::Validated;
use compact_str::CompactString;
use recap_plan as p;
use std::collections::BTreeMap;

pub fn lower(
    file_name: &str,
    res: &Resolved,
    typed: &Typed,
    validated: &Validated,
) -> Result<p::Plan, Diagnostic> {
    // The plan's lists are sized from the entities up front: growing a vector of thousands of
    // sources copies it each time and hands the allocator large blocks to free. One pass
    // counts all three kinds: the entity list of a large file is megabytes.
    let (mut verifiers, mut sources, mut models) = (0, 0, 0);
    for e in &res.entities {
        match e.kind {
            EntityKind::Decl(DeclKind::Verifier) => verifiers += 1,
            EntityKind::Decl(DeclKind::Source) => sources += 1,
            EntityKind::Decl(DeclKind::Model) => models += 1,
            _ => {}
        }
    }
    let mut l = L {
        res,
        verifiers: Vec::with_capacity(verifiers),
        sources: Vec::with_capacity(sources),
        models: Vec::with_capacity(models),
        inline: BTreeMap::new(),
        frozen: validated.frozen.clone(),
    };
    let mut params = BTreeMap::new();
    for (id, e) in res.entities.iter().enumerate() {
        match e.kind {
            EntityKind::Param => {
                let v = typed
                    .values
                    .get(id)
                    .and_then(|v| v.as_ref())
                    .ok_or_else(|| l.bug("a param without value", e.name.span))?;
                let pv = match &v.v {
                    Value::Int(i) => p::ParamValue::Int(*i),
                    Value::Float(f) => p::ParamValue::Float(*f),
                    Value::Bool(b) => p::ParamValue::Bool(*b),
                    Value::Percent(x) => p::ParamValue::Percent(*x),
                    Value::Str { text, .. } => p::ParamValue::String(text.to_string()),
                    _ => return Err(l.bug("a param of an unexpected type", e.name.span)),
                };
                params.insert(e.name.name.clone(), pv);
            }
            EntityKind::Decl(DeclKind::Model) => {
                let c = typed
                    .call(id)
                    .ok_or_else(|| l.bug("a model without value", e.name.span))?;
                let m = l.model(&e.name.name, c)?;
                l.models.push(m);
            }
            EntityKind::Decl(DeclKind::Source) => {
                let c = typed
                    .call(id)
                    .ok_or_else(|| l.bug("a source without value", e.name.span))?;
                let s = l.source(&e.name.name, c)?;
                l.sources.push(s);
            }
            EntityKind::Decl(DeclKind::Verifier) => {
                let c = typed
                    .call(id)
                    .ok_or_else(|| l.bug("a verifier without value", e.name.span))?;
                let v = l.verifier(&e.name.name, c)?;
                l.verifiers.push(v);
            }
            _ => {}
        }
    }
    let policy_id = validated
        .policy
        .ok_or_else(|| l.bug("no policy after validation", Span::default()))?;
    let policy = entity_name(res, policy_id);
    let default_out = format!("runs/{}", file_stem(file_name));
    let mut stages = Vec::new();
    for (i, st) in res.stages.iter().enumerate() {
        stages.push(l.stage(typed, i, st, &default_out)?);
    }
    let mut plan = p::Plan {
        version: p::PLAN_VERSION,
        source_file: file_name.to_string(),
        content_hash: String::new(),
        params,
        policy,
        models: l.models,
        sources: l.sources,
        verifiers: l.verifiers,
        stages,
        graph: p::Graph {
            nodes: Vec::new(),
            edges: Vec::new(),
        },
    };
    plan.graph = crate::dag::build(&plan)?;
    Ok(plan.with_hash())
}

fn file_stem(file_name: &str) -> String {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let stem = base.strip_suffix(".recap").unwrap_or(base);
    if stem.is_empty() {
        "job".into()
    } else {
        stem.to_string()
    }
}

/// The name of an entity as the plan holds it (a copy that needs no allocation for names of
/// up to 24 bytes).
fn entity_name(res: &Resolved, id: EntityId) -> CompactString {
    res.name(id).into()
}

struct L<'r, 'a> {
    res: &'r Resolved<'a>,
    verifiers: Vec<p::Verifier>,
    sources: Vec<p::Source>,
    models: Vec<p::Model>,
    /// Names given to inline sources, verifiers and models, by call position.
    inline: BTreeMap<usize, p::Name>,
    /// Frozen copies of the policy (the default KL reference).
    frozen: Vec<EntityId>,
}

impl L<'_, '_> {
    pub(super) fn bug(&self, what: &str, span: Span) -> Diagnostic {
        InternalProblem::Lower(what).at(span, "while lowering this")
    }

    pub(super) fn u(&self, c: &CallVal, name: &str) -> Result<u64, Diagnostic> {
        c.int(name)
            .map(|i| i.max(0) as u64)
            .ok_or_else(|| self.bug(&format!("`{}` lacks the int `{name}`", c.name()), c.span))
    }

    pub(super) fn ou(&self, c: &CallVal, name: &str) -> Option<u64> {
        c.int(name).map(|i| i.max(0) as u64)
    }

    pub(super) fn b(&self, c: &CallVal, name: &str) -> Result<bool, Diagnostic> {
        c.bool(name)
            .ok_or_else(|| self.bug(&format!("`{}` lacks the bool `{name}`", c.name()), c.span))
    }

    pub(super) fn f(&self, c: &CallVal, name: &str) -> Result<f64, Diagnostic> {
        c.float(name)
            .ok_or_else(|| self.bug(&format!("`{}` lacks the number `{name}`", c.name()), c.span))
    }

    /// The plan's value for the stdlib enum member that `c` gives `name`. `members` lists every
    /// member of the stdlib enum; the argument always holds one (its default is in the stdlib),
    /// so anything else is a bug rather than a reason to pick a value here.
    pub(super) fn member<T: Copy>(
        &self,
        c: &CallVal,
        name: &str,
        members: &[(&str, T)],
    ) -> Result<T, Diagnostic> {
        let given = c.enum_(name);
        members
            .iter()
            .find(|(m, _)| Some(*m) == given)
            .map(|(_, v)| *v)
            .ok_or_else(|| {
                let given = given.unwrap_or("left out");
                let what = format!(
                    "`{name}` of `{}` is `{given}`, no member the plan knows",
                    c.name()
                );
                self.bug(&what, c.span)
            })
    }

    pub(super) fn s(&self, c: &CallVal, name: &str) -> Result<p::Name, Diagnostic> {
        c.str(name)
            .map(CompactString::from)
            .ok_or_else(|| self.bug(&format!("`{}` lacks the string `{name}`", c.name()), c.span))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::typecheck::Val;
    use crate::{parse, resolve, typecheck, validate, AssumeFilesExist, CheckOptions};

    const PIPELINE: &str = r#"
model policy = hf("models/qwen", dtype = bf16)
source math = jsonl("data/math.jsonl", prompt = "{question}") { answer = field("answer") }
verifier accuracy = numeric()
objective reasoning = grpo(math) { rewards = [accuracy] }
mix weights(math = 3)
train { steps = 10 }
"#;

    /// Lowers `PIPELINE` after `change` has altered its typed values the way no checked
    /// program can, and gives the code of lower's error, if any.
    fn lower_changed(change: impl Fn(&Resolved, &mut Typed)) -> Option<String> {
        let (file, diags) = parse::parse(PIPELINE);
        let file = file.expect("the pipeline parses");
        assert!(diags.is_empty(), "{diags:?}");
        let mut diags = Vec::new();
        let res = resolve::resolve(&file, &[], true, &mut diags);
        let mut typed = typecheck::typecheck(&res, &mut diags);
        let options = CheckOptions::default();
        let validated =
            validate::validate(&res, &typed, &options, &AssumeFilesExist, true, &mut diags);
        assert!(diags.is_empty(), "{diags:?}");
        change(&res, &mut typed);
        lower("p.recap", &res, &typed, &validated)
            .err()
            .map(|d| d.code)
    }

    fn call_mut<'t>(res: &Resolved, typed: &'t mut Typed, name: &str) -> &'t mut CallVal {
        let id = res
            .entities
            .iter()
            .position(|e| e.name.name == name)
            .expect("declared");
        match typed
            .values
            .get_mut(id)
            .and_then(Option::as_mut)
            .map(|v| &mut v.v)
        {
            Some(Value::Call(c)) => c,
            other => panic!("`{name}` is no call: {other:?}"),
        }
    }

    #[test]
    fn the_checked_pipeline_lowers() {
        assert_eq!(lower_changed(|_, _| {}), None);
    }

    /// An enum member the plan does not know is a bug to report, not a reason to pick f32.
    #[test]
    fn an_unknown_enum_member_is_an_internal_error() {
        let code = lower_changed(|res, typed| {
            let dtype = call_mut(res, typed, "policy")
                .get_mut("dtype")
                .expect("dtype");
            dtype.v = Value::Enum("f64");
        });
        assert_eq!(code.as_deref(), Some("recap::internal::lower"));
    }

    /// A weight that is no number is a bug to report, not a weight of 1.
    #[test]
    fn a_weight_that_is_no_number_is_an_internal_error() {
        let code = lower_changed(|_, typed| {
            let mix = typed.stages.iter_mut().find_map(|s| s.mix.as_mut());
            let Some(Val {
                v: Value::Call(c), ..
            }) = mix
            else {
                panic!("the stage mixes with a call");
            };
            let (_, _, weight) = c.extra.first_mut().expect("one weight");
            weight.v = Value::Bool(true);
        });
        assert_eq!(code.as_deref(), Some("recap::internal::lower"));
    }
}
