//! Validate: takes `Resolved` and `Typed` (every value checked against its signature), the
//! host and the options; gives the semantic diagnostics of DESIGN.md §3 and the policy model of
//! the job: RL objectives without rewards, verifiers needing a field their source lacks or
//! reading another source's field, KL terms without a frozen reference, reweighting with fewer
//! than two objective keys, batch arithmetic that does not divide, warm-ups longer than the
//! stage, model shapes that do not divide, missing or ambiguous policies, missing files
//! (warnings for `check`, errors for `run`), and settings that never take effect (warnings).
//!
//! One function per rule. The rules are grouped by what they read: `host` holds those that ask
//! the host about files and data, `calls` those about single stdlib calls wherever they appear,
//! `policy` the choice of the model to train, and `stage` those about each stage's objectives,
//! probes and settings. Each problem's wording is in `problems`.

mod calls;
mod host;
mod lora;
mod policy;
pub mod problems;
mod stage;

use crate::ast::DeclKind;
use crate::diagnostic::Diagnostic;
use crate::resolve::{EntityId, EntityKind, Resolved};
use crate::typecheck::{CallVal, Typed, Val, Value};
use crate::{CheckOptions, Host};
pub use problems::{ValidateCode, ValidateProblem};

/// What later stages need from validation.
#[derive(Debug, Default)]
pub struct Validated {
    /// The model every stage trains.
    pub policy: Option<EntityId>,
    /// The frozen copies of the policy (`frozen(policy)`), the default KL reference.
    pub frozen: Vec<EntityId>,
}

/// Runs every rule over what checked. `complete` is false when a syntax error lost items of
/// the file: the rules about what is missing or how many there are (no objective, no `train`,
/// no policy, which frozen copy, the keys a reweighter or mixer weighs) then say nothing, as
/// the lost items may hold what they look for.
pub fn validate(
    res: &Resolved,
    typed: &Typed,
    options: &CheckOptions,
    host: &dyn Host,
    complete: bool,
    diags: &mut Vec<Diagnostic>,
) -> Validated {
    let mut v = V {
        res,
        typed,
        diags,
        complete,
        frozen: Vec::new(),
        calls: inspected_calls(res, typed),
    };
    v.files(options, host);
    v.model_dirs(options, host);
    v.data_fields(host);
    v.model_shapes();
    v.verifier_settings();
    v.lora_settings();
    let policy = v.policy();
    v.frozen = policy::frozen_copies(res, typed, policy);
    v.generation_budget(policy, host);
    // A stage whose name repeats an earlier one's is already an error (resolve reports it);
    // checking it as a stage of its own would only add errors about the same mistake.
    let mut names = std::collections::HashSet::new();
    for (i, st) in res.stages.iter().enumerate() {
        if st.name.is_none_or(|n| names.insert(n.name.as_str())) {
            v.stage(i);
        }
    }
    Validated {
        policy,
        frozen: v.frozen,
    }
}

/// The state the rules share.
struct V<'r, 'a, 't, 'd> {
    res: &'r Resolved<'a>,
    typed: &'t Typed,
    diags: &'d mut Vec<Diagnostic>,
    /// Whether every item of the file parsed (see `validate`).
    complete: bool,
    /// Frozen copies of the policy, computed once (each KL term asks).
    frozen: Vec<EntityId>,
    /// The calls the rules inspect, wherever they appear (see `inspected_calls`); each rule
    /// takes its list.
    calls: Inspected<'t>,
}

impl V<'_, '_, '_, '_> {
    /// The entities declared with `kind`, in declaration order.
    fn decls(&self, kind: DeclKind) -> impl Iterator<Item = EntityId> + '_ {
        self.res
            .entities
            .iter()
            .enumerate()
            .filter(move |(_, e)| e.kind == EntityKind::Decl(kind))
            .map(|(id, _)| id)
    }

    /// Where the entity's name is declared.
    fn name_span(&self, id: EntityId) -> crate::diagnostic::Span {
        self.res
            .entities
            .get(id)
            .map(|e| e.name.span)
            .unwrap_or_default()
    }
}

/// A source, verifier or model given either by name or inline as a call.
enum Ref<'t> {
    Decl(EntityId, &'t CallVal),
    Inline(&'t CallVal),
}

impl<'t> Ref<'t> {
    fn call(&self) -> &'t CallVal {
        match self {
            Ref::Decl(_, c) | Ref::Inline(c) => c,
        }
    }

    /// The declared entity, when it is one.
    fn entity(&self) -> Option<EntityId> {
        match self {
            Ref::Decl(id, _) => Some(*id),
            Ref::Inline(_) => None,
        }
    }
}

/// Follows a value to the call that defines it.
fn deref<'t>(typed: &'t Typed, v: &'t Val) -> Option<Ref<'t>> {
    match &v.v {
        Value::Decl(id, _) => typed.call(*id).map(|c| Ref::Decl(*id, c)),
        Value::Call(c) => Some(Ref::Inline(c)),
        _ => None,
    }
}

/// The call a stage setting (`train`, `reweight`, `mix`) holds, and where it is written.
fn setting_call(v: &Option<Val>) -> Option<(&CallVal, crate::diagnostic::Span)> {
    match v {
        Some(Val {
            v: Value::Call(c),
            span,
            ..
        }) => Some((c, *span)),
        _ => None,
    }
}

/// Where the argument `name` of `c` is written, or the call itself when it is defaulted.
fn arg_span(c: &CallVal, name: &str) -> crate::diagnostic::Span {
    c.get(name).map_or(c.span, |v| v.span)
}

/// The calls of the stdlib functions that validate's rules inspect, one list per function.
#[derive(Default)]
struct Inspected<'t> {
    hf: Vec<&'t CallVal>,
    jsonl: Vec<&'t CallVal>,
    regex: Vec<&'t CallVal>,
    choice: Vec<&'t CallVal>,
    length_penalty: Vec<&'t CallVal>,
    exec: Vec<&'t CallVal>,
    http: Vec<&'t CallVal>,
    lora: Vec<&'t CallVal>,
}

impl<'t> Inspected<'t> {
    /// The functions, as the stdlib names them.
    #[cfg(test)]
    const FUNCTIONS: [&'static str; 8] = [
        "hf",
        "jsonl",
        "regex",
        "choice",
        "length_penalty",
        "exec",
        "http",
        "lora",
    ];

    /// The list for calls of `function`, when a rule inspects them.
    fn list(&mut self, function: &str) -> Option<&mut Vec<&'t CallVal>> {
        match function {
            "hf" => Some(&mut self.hf),
            "jsonl" => Some(&mut self.jsonl),
            "regex" => Some(&mut self.regex),
            "choice" => Some(&mut self.choice),
            "length_penalty" => Some(&mut self.length_penalty),
            "exec" => Some(&mut self.exec),
            "http" => Some(&mut self.http),
            "lora" => Some(&mut self.lora),
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
