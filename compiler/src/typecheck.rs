//! Typecheck: takes `Resolved` (entities in evaluation order, stages, settings) and gives
//! `Typed`: the value of every entity and every stage's reweight, mix and train settings,
//! with stdlib calls matched against their signatures (overloads picked by the expected kind,
//! arguments bound, defaults filled, ranges checked), constants folded and reward
//! arithmetic reduced to linear combinations of verifiers. Reports wrong kinds, type and unit
//! mismatches, out-of-range values, missing, unknown, duplicate and surplus arguments, bad
//! `--set` values, and arithmetic that means nothing.

mod problems;

pub use problems::{Misfit, TypecheckCode, TypecheckProblem};

use crate::ast::*;
use crate::diagnostic::{did_you_mean, Diagnostic, Problem, Span};
use crate::internal::InternalProblem;
use crate::resolve::{EntityId, EntityKind, ResolveProblem, Resolved, Setting};
use crate::stdlib::{ParamDef, Signature, Stdlib};
use crate::types::{Kind, Ty};
use compact_str::CompactString;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    Float(f64),
    Percent(f64),
    Bool(bool),
    Str {
        text: CompactString,
        /// A boxed slice rather than a vector, which keeps every value 8 bytes smaller.
        placeholders: Box<[CompactString]>,
    },
    List(Vec<Val>),
    /// A member of a stdlib enum, as the stdlib spells it.
    Enum(&'static str),
    /// A declared model, source, verifier, objective or eval.
    Decl(EntityId, Kind),
    /// `source.field`.
    Field {
        source: EntityId,
        name: CompactString,
    },
    /// A linear combination of verifiers: (weight, verifier entity).
    Reward(Vec<(f64, EntityId)>),
    Call(Box<CallVal>),
    /// An optional parameter left out.
    Absent,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Val {
    pub v: Value,
    pub span: Span,
    /// The entity id of the `let` or `param` the value came from, when it came from one (an
    /// id rather than the name keeps every value 16 bytes smaller; `Val::origin_name` gives
    /// the name).
    pub origin: Option<u32>,
}

impl Val {
    /// The name of the `let` or `param` the value came from.
    pub fn origin_name<'r>(&self, res: &'r Resolved) -> Option<&'r str> {
        Some(res.name(usize::try_from(self.origin?).ok()?))
    }

    fn new(v: Value, span: Span) -> Self {
        Val {
            v,
            span,
            origin: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CallVal {
    pub sig: &'static Signature,
    /// One slot per parameter of `sig`: given, defaulted, or `Absent` (the variadic one always
    /// `Absent`; what it collects is in `extra`).
    pub args: ArgMap,
    /// Named arguments collected by the variadic parameter, in source order, with the span
    /// of their name.
    pub extra: Vec<(String, Span, Val)>,
    pub span: Span,
}

/// The arguments of a call: one slot per parameter of its signature, in the signature's order,
/// holding the value given, the default, or `Absent` (a variadic parameter's slot stays
/// `Absent`; what it collects is in `CallVal::extra`). Two calls that bind the same values are
/// equal whatever order their arguments were written in. A lookup finds the slot by searching
/// the signature, which every call of a function shares and so is in cache, and then reads one
/// slot: a large pipeline keeps tens of thousands of calls, long out of cache when validate and
/// lower read them, and a search of the slots themselves cost a cache miss per step.
#[derive(Debug, Clone, PartialEq)]
pub struct ArgMap(Vec<Val>);

impl PartialEq for CallVal {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.sig, other.sig) && self.args == other.args && self.extra == other.extra
    }
}

impl CallVal {
    pub fn name(&self) -> &str {
        &self.sig.name
    }
    /// The value bound to the parameter `name`, or `None` when it is absent or the function
    /// has no such parameter.
    pub fn get(&self, name: &str) -> Option<&Val> {
        let i = self.sig.param_index(name)?;
        self.args.0.get(i).filter(|v| !matches!(v.v, Value::Absent))
    }

    /// Every parameter and its value (absent ones included), in the signature's order.
    pub fn args(&self) -> impl Iterator<Item = (&'static str, &Val)> {
        let sig: &'static Signature = self.sig;
        sig.params.iter().map(|p| p.name.as_str()).zip(&self.args.0)
    }
    pub fn int(&self, name: &str) -> Option<i64> {
        match self.get(name)?.v {
            Value::Int(i) => Some(i),
            _ => None,
        }
    }
    pub fn float(&self, name: &str) -> Option<f64> {
        match self.get(name)?.v {
            Value::Float(f) => Some(f),
            Value::Int(i) => Some(i as f64),
            _ => None,
        }
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        match self.get(name)?.v {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }
    pub fn str(&self, name: &str) -> Option<&str> {
        match &self.get(name)?.v {
            Value::Str { text, .. } => Some(text),
            _ => None,
        }
    }
    pub fn enum_(&self, name: &str) -> Option<&str> {
        match &self.get(name)?.v {
            Value::Enum(m) => Some(m),
            _ => None,
        }
    }
    pub fn call(&self, name: &str) -> Option<&CallVal> {
        match &self.get(name)?.v {
            Value::Call(c) => Some(c),
            _ => None,
        }
    }
    pub fn decl(&self, name: &str) -> Option<EntityId> {
        match &self.get(name)?.v {
            Value::Decl(id, _) => Some(*id),
            _ => None,
        }
    }
}

#[derive(Debug, Default)]
pub struct StageValues {
    pub reweight: Option<Val>,
    pub mix: Option<Val>,
    pub train: Option<Val>,
    /// Where the train setting is written (for labels); the stage name when absent.
    pub train_span: Span,
}

#[derive(Debug, Default)]
pub struct Typed {
    /// The value of each entity; `None` after an error.
    pub values: Vec<Option<Val>>,
    pub stages: Vec<StageValues>,
    /// Every string used as a `path`, with its span.
    pub paths: Vec<(CompactString, Span)>,
}

impl Typed {
    pub fn call(&self, id: EntityId) -> Option<&CallVal> {
        match &self.values.get(id)?.as_ref()?.v {
            Value::Call(c) => Some(c),
            _ => None,
        }
    }
}

pub fn typecheck(res: &Resolved, diags: &mut Vec<Diagnostic>) -> Typed {
    let mut t = Checker {
        res,
        std: crate::stdlib::stdlib(),
        diags,
        values: vec![None; res.entities.len()],
        paths: Vec::new(),
        stage: None,
        in_stdlib: false,
        defaults: foldhash::HashMap::default(),
    };
    for &id in &res.order {
        let v = t.entity(id);
        if let Some(slot) = t.values.get_mut(id) {
            *slot = v;
        }
    }
    let mut stages = Vec::new();
    for (i, st) in res.stages.iter().enumerate() {
        t.stage = Some(i);
        let mut sv = StageValues {
            train_span: st.name.map(|n| n.span).unwrap_or_default(),
            ..StageValues::default()
        };
        if let Some(s) = res.setting(i, SettingKind::Reweight) {
            sv.reweight = t.setting(s, Kind::Reweighter);
        }
        if let Some(s) = res.setting(i, SettingKind::Mix) {
            sv.mix = t.setting(s, Kind::Mixer);
        }
        sv.train = t.train(i, &mut sv.train_span);
        stages.push(sv);
    }
    Typed {
        values: t.values,
        stages,
        paths: t.paths,
    }
}

struct Checker<'r, 'a, 'd> {
    res: &'r Resolved<'a>,
    std: &'static Stdlib,
    diags: &'d mut Vec<Diagnostic>,
    values: Vec<Option<Val>>,
    paths: Vec<(CompactString, Span)>,
    stage: Option<usize>,
    /// Evaluating a stdlib default: user names are not in scope.
    in_stdlib: bool,
    /// Evaluated stdlib defaults, keyed by the address of their (static) parameter.
    defaults: foldhash::HashMap<usize, Val>,
}

/// What is being checked, for the message when it does not fit ("`group` of `grpo`"). A
/// closure, so the text is formatted only for an error: a large pipeline checks thousands of
/// arguments that fit.
type What<'w> = &'w dyn Fn() -> String;

fn decl_kind(k: DeclKind) -> Kind {
    match k {
        DeclKind::Model => Kind::Model,
        DeclKind::Source => Kind::Source,
        DeclKind::Verifier => Kind::Verifier,
        DeclKind::Objective => Kind::Objective,
        DeclKind::Eval => Kind::Eval,
    }
}

/// "an int", "a verifier `format`": what a value is, for messages.
fn describe(v: &Value, res: &Resolved) -> String {
    match v {
        Value::Int(i) => format!("the int {i}"),
        // `{:?}` keeps the decimal point of a whole float (8.0, not 8).
        Value::Float(f) => format!("the float {f:?}"),
        Value::Percent(p) => format!("the percentage {p}%"),
        Value::Bool(b) => format!("the bool {b}"),
        Value::Str { .. } => "a string".into(),
        Value::List(_) => "a list".into(),
        Value::Enum(m) => format!("`{m}`"),
        Value::Decl(id, k) => format!(
            "{} `{}`",
            k.article(),
            res.entities
                .get(*id)
                .map(|e| e.name.name.as_str())
                .unwrap_or("?")
        ),
        Value::Field { name, .. } => format!("the field `{name}`"),
        Value::Reward(_) => "a reward combination".into(),
        Value::Call(c) => format!("{} (`{}(...)`)", c.sig.ret.article(), c.sig.name),
        Value::Absent => "nothing".into(),
    }
}

/// For an argument `key` that `sig` does not take: a parameter of `sig` whose value is a call
/// (`optimizer`, `kl`, `schedule`) and the function that takes `key` (`lr` of `adamw`), so the
/// help can say where the argument goes, and whether that function needs other arguments too.
/// The parameter's own default function is preferred.
fn nested_owner<'s>(
    std: &'s Stdlib,
    sig: &'s Signature,
    key: &str,
) -> Option<(&'s str, &'s str, bool)> {
    sig.params.iter().find_map(|p| {
        let kind = made_kind(&p.ty)?;
        let default_fn = match p.default.as_ref().map(|d| &d.kind) {
            Some(ExprKind::Call { func, .. }) => Some(func.name.as_str()),
            Some(ExprKind::Name(id)) => Some(id.name.as_str()),
            _ => None,
        };
        let takes = |f: &Signature| f.ret == kind && f.param(key).is_some();
        let owner = default_fn
            .and_then(|d| std.fns.get(d))
            .and_then(|sigs| sigs.iter().find(|f| takes(f)))
            .or_else(|| std.fns.values().flatten().find(|f| takes(f)))?;
        let needs_more = owner.params.iter().any(|q| q.required() && q.name != key);
        Some((p.name.as_str(), owner.name.as_str(), needs_more))
    })
}

/// For a type that stdlib calls give (`Kl`, `Optimizer`): the functions that make one, as
/// `kl(...)` or `adamw(...) or sgd(...)`; `None` for other types.
fn makers(std: &Stdlib, ty: &Ty) -> Option<String> {
    let kind = made_kind(ty)?;
    let mut names: Vec<String> = std
        .fns
        .values()
        .flatten()
        .filter(|f| f.ret == kind)
        .map(|f| format!("`{}(...)`", f.name))
        .collect();
    names.dedup();
    const SHOWN: usize = 4;
    let more = names.len() > SHOWN;
    names.truncate(SHOWN);
    let mut text = names.join(" or ");
    if more {
        text.push_str(" or another (docs/language.md lists them all)");
    }
    (!names.is_empty()).then_some(text)
}

/// The kind of value that `ty` takes from a stdlib call written in place (`Kl`, `Optimizer`),
/// if any: kinds a pipeline declares and then names are left out.
fn made_kind(ty: &Ty) -> Option<Kind> {
    ty.alternatives()
        .iter()
        .find_map(|t| t.kind())
        .filter(|k| !declared_by_name(*k))
}

/// Kinds a pipeline declares and then names (`model policy = ...`, `source math = ...`), where
/// a help line about writing a call in place would mislead.
fn declared_by_name(kind: Kind) -> bool {
    matches!(kind, Kind::Source | Kind::Model)
}

/// The text of a string that would be a value of `ty` without its quotes (`"0.1"` for a
/// float, `"true"` for a bool), for the help line.
fn quoted_literal<'v>(v: &'v Value, ty: &Ty) -> Option<&'v str> {
    let Value::Str { text, .. } = v else {
        return None;
    };
    let t = text.trim();
    let fits = ty.alternatives().iter().any(|a| match a {
        Ty::Int => t.parse::<i64>().is_ok(),
        Ty::Float => t.parse::<f64>().is_ok_and(f64::is_finite),
        Ty::Bool => matches!(t, "true" | "false"),
        _ => false,
    });
    fits.then_some(t)
}

/// Binds `v` to the argument slot `slot` of a call being checked (see `ArgMap`).
fn bind(vals: &mut [Option<Val>], slot: usize, v: Val) {
    if let Some(s) = vals.get_mut(slot) {
        *s = Some(v);
    }
}

fn is_number(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Float(_))
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

impl Checker<'_, '_, '_> {
    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn entity(&mut self, id: EntityId) -> Option<Val> {
        let e = self.res.entities.get(id)?;
        self.stage = e.stage;
        match e.kind {
            EntityKind::Param => self.param(id),
            EntityKind::Let => self.eval(e.value, None),
            EntityKind::Decl(k) => {
                let kind = decl_kind(k);
                let fields: Vec<&NamedArg> = e
                    .block
                    .map(|b| b.fields.iter().collect())
                    .unwrap_or_default();
                let v = self.eval_head(
                    Some(e.value),
                    &fields,
                    e.block.map(|b| b.span),
                    kind,
                    e.name.span,
                )?;
                let ok = match &v.v {
                    Value::Call(c) => c.sig.ret == kind,
                    Value::Decl(_, k2) => *k2 == kind,
                    _ => false,
                };
                if !ok {
                    let problem = TypecheckProblem::DeclWrongKind {
                        keyword: k.keyword(),
                        name: &e.name.name,
                        kind,
                        found: describe(&v.v, self.res),
                        reward: matches!(v.v, Value::Reward(_)),
                    };
                    self.err(problem.at(v.span, format!("not {}", kind.article())));
                    return None;
                }
                // A declaration that merely names another one (`model b = a`) would make two
                // names for one thing; keep the value of the original.
                Some(v)
            }
        }
    }

    fn param(&mut self, id: EntityId) -> Option<Val> {
        let e = self.res.entities.get(id)?;
        let ItemKind::Param { ty, range, .. } = &e.item.kind else {
            return None;
        };
        let std = self.std;
        let ty_v = match Ty::from_ast(ty, &|n| std.enums.contains_key(n)) {
            Ok(t @ (Ty::Int | Ty::Float | Ty::Bool | Ty::Str | Ty::Path | Ty::Percent)) => t,
            _ => {
                let problem = TypecheckProblem::BadParamType {
                    ty: crate::ast::render_type(ty),
                };
                self.err(problem.at(ty.span, "not a param type"));
                return None;
            }
        };
        let value = self.eval(e.value, Some(&ty_v))?;
        let mut value = self.accept(value, &ty_v, &|| format!("param `{}`", e.name.name))?;
        self.check_range(&value, range.as_ref(), &e.name.name);
        if let Some(text) = &e.override_text {
            let parsed = match &ty_v {
                Ty::Int => text.replace('_', "").parse::<i64>().ok().map(Value::Int),
                Ty::Float => text
                    .parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(Value::Float),
                Ty::Bool => match text.as_str() {
                    "true" => Some(Value::Bool(true)),
                    "false" => Some(Value::Bool(false)),
                    _ => None,
                },
                Ty::Percent => text
                    .strip_suffix('%')
                    .and_then(|t| t.parse::<f64>().ok())
                    .filter(|f| f.is_finite())
                    .map(Value::Percent),
                _ => Some(Value::Str {
                    text: text.as_str().into(),
                    placeholders: Box::default(),
                }),
            };
            match parsed {
                Some(v) => {
                    let span = e.name.span;
                    value = Val::new(v, span);
                    if let Some(r) = range {
                        if let Some(x) = num(&value.v) {
                            if !r.contains(x) {
                                let problem = TypecheckProblem::OverrideOutOfRange {
                                    name: &e.name.name,
                                    text,
                                    range: r.describe(),
                                };
                                self.err(problem.at(r.span, "allowed range"));
                                return None;
                            }
                        }
                    }
                    if ty_v == Ty::Path {
                        self.paths.push((text.as_str().into(), span));
                    }
                }
                None => {
                    self.err(
                        ResolveProblem::BadOverride {
                            name: &e.name.name,
                            text: text.as_str(),
                            ty: ty_v.clone(),
                        }
                        .at(e.name.span, format!("declared as {ty_v} here")),
                    );
                    return None;
                }
            }
        }
        value.origin = u32::try_from(id).ok();
        Some(value)
    }

    fn check_range(&mut self, v: &Val, range: Option<&Range>, name: &str) -> bool {
        if let Value::Percent(p) = v.v {
            if !(0.0..=100.0).contains(&p) {
                let problem = TypecheckProblem::PercentOutOfRange { name, percent: p };
                self.err(problem.at(v.span, "out of range"));
                return false;
            }
            return true;
        }
        let (Some(r), Some(x)) = (range, num(&v.v)) else {
            return true;
        };
        if r.contains(x) {
            return true;
        }
        let problem = TypecheckProblem::OutOfRange {
            name,
            range: r.describe(),
            value: x,
        };
        self.err(problem.at(v.span, format!("outside {}", r.describe())));
        false
    }

    /// Converts `v` to type `ty`, or reports why it cannot be one.
    fn accept(&mut self, v: Val, ty: &Ty, what: What) -> Option<Val> {
        let mut v = v;
        for alt in ty.alternatives() {
            match self.convert(v, alt) {
                Ok(c) => return Some(c),
                Err(back) => v = back,
            }
        }
        let wants_number = ty
            .alternatives()
            .iter()
            .any(|t| matches!(t, Ty::Int | Ty::Float));
        let wants_percent = ty.alternatives().iter().any(|t| matches!(t, Ty::Percent));
        // A single value where a list is expected (`rewards = acc`) is a list of one that lost
        // its brackets. Paths are left out: converting one records it as a file to look for.
        let list_of_one = match ty {
            Ty::List(inner) if !matches!(**inner, Ty::Path) => {
                self.convert(v.clone(), inner).is_ok()
            }
            _ => false,
        };
        let misfit = if list_of_one {
            let item = match &v.v {
                Value::Decl(id, _) => self
                    .res
                    .entities
                    .get(*id)
                    .map_or_else(|| "...".to_string(), |e| e.name.name.to_string()),
                _ => "...".to_string(),
            };
            Misfit::ListOfOne { item }
        } else if matches!(v.v, Value::Percent(_)) && wants_number {
            Misfit::PercentForNumber
        } else if (is_number(&v.v) && wants_percent && !wants_number)
            || (matches!(v.v, Value::Float(_))
                && wants_percent
                && !ty.alternatives().iter().any(|t| matches!(t, Ty::Float)))
        {
            Misfit::NumberForPercent
        } else if matches!(v.v, Value::Decl(..) | Value::Call(_) | Value::Reward(_))
            && ty.alternatives().iter().any(|t| matches!(t, Ty::Kind(_)))
        {
            let kinds: Vec<String> = ty
                .alternatives()
                .iter()
                .filter_map(|t| t.kind())
                .map(|k| k.article())
                .collect();
            Misfit::Kind {
                wanted: kinds.join(" or "),
            }
        } else if let Some(text) = quoted_literal(&v.v, ty) {
            Misfit::Quoted {
                text: text.to_string(),
            }
        } else if let (Value::Float(f), true) = (&v.v, matches!(ty, Ty::Int)) {
            Misfit::Fraction { value: *f }
        } else if let Ty::Enum(e) = ty {
            let members = self
                .std
                .enums
                .get(e)
                .map(|d| d.members.join(", "))
                .unwrap_or_default();
            Misfit::NotAMember { members }
        } else if let Some(made_by) = makers(self.std, ty) {
            Misfit::NotMade { made_by }
        } else {
            Misfit::Other
        };
        let problem = TypecheckProblem::Mismatch {
            what: what(),
            ty,
            found: describe(&v.v, self.res),
            misfit,
        };
        self.err(problem.at(v.span, format!("expected {ty}")));
        None
    }

    /// `v` as a value of type `ty`, or `v` back unchanged when it does not fit. It takes the
    /// value by ownership so that the common case, a value that already fits, moves rather
    /// than deep-copies (calls carry their whole argument tree).
    fn convert(&mut self, v: Val, ty: &Ty) -> Result<Val, Val> {
        match (ty, &v.v) {
            (Ty::Int, Value::Int(_))
            | (Ty::Float, Value::Float(_))
            | (Ty::Percent, Value::Percent(_))
            | (Ty::Bool, Value::Bool(_))
            | (Ty::Str, Value::Str { .. })
            | (Ty::Template, Value::Str { .. })
            | (Ty::Field, Value::Field { .. }) => Ok(v),
            (Ty::Float, Value::Int(i)) => Ok(Val {
                v: Value::Float(*i as f64),
                span: v.span,
                origin: v.origin,
            }),
            (Ty::Path, Value::Str { text, .. }) => {
                self.paths.push((text.clone(), v.span));
                Ok(v)
            }
            (Ty::Kind(k), Value::Decl(_, k2)) if k2.fits(*k) => Ok(v),
            (Ty::Kind(k), Value::Call(c)) if c.sig.ret.fits(*k) => Ok(v),
            (Ty::Kind(Kind::Reward), Value::Reward(_)) => Ok(v),
            (Ty::Enum(e), Value::Enum(m)) if self.std.enum_has(e, m) => Ok(v),
            (Ty::List(inner), Value::List(items)) => {
                // Elements are converted from copies, so a list that does not fit (a later
                // element of the wrong type) comes back whole for the next alternative.
                let mut conv = Vec::with_capacity(items.len());
                for i in items {
                    match self.convert(i.clone(), inner) {
                        Ok(c) => conv.push(c),
                        Err(_) => return Err(v),
                    }
                }
                Ok(Val {
                    v: Value::List(conv),
                    span: v.span,
                    origin: v.origin,
                })
            }
            _ => Err(v),
        }
    }

    /// Evaluates a list element by element so every bad element is reported.
    fn accept_list(&mut self, v: Val, ty: &Ty, what: What) -> Option<Val> {
        if let (Ty::List(inner), Value::List(_)) = (ty, &v.v) {
            let Val {
                v: Value::List(items),
                span,
                origin,
            } = v
            else {
                return None;
            };
            let mut out = Vec::with_capacity(items.len());
            let mut ok = true;
            for i in items {
                match self.accept(i, inner, what) {
                    Some(x) => out.push(x),
                    None => ok = false,
                }
            }
            return ok.then_some(Val {
                v: Value::List(out),
                span,
                origin,
            });
        }
        self.accept(v, ty, what)
    }

    fn eval(&mut self, e: &Expr, expected: Option<&Ty>) -> Option<Val> {
        let span = e.span;
        match &e.kind {
            ExprKind::Int(i) => Some(Val::new(Value::Int(*i), span)),
            ExprKind::Float(f) => Some(Val::new(Value::Float(*f), span)),
            ExprKind::Percent(p) => Some(Val::new(Value::Percent(*p), span)),
            ExprKind::Bool(b) => Some(Val::new(Value::Bool(*b), span)),
            ExprKind::Str(s) => Some(Val::new(
                Value::Str {
                    text: s.text(),
                    placeholders: s
                        .parts
                        .iter()
                        .filter_map(|p| match p {
                            StrPart::Placeholder(id) => Some(id.name.clone()),
                            StrPart::Text(_) => None,
                        })
                        .collect(),
                },
                span,
            )),
            ExprKind::List(items) => {
                let inner = match expected {
                    Some(Ty::List(t)) => Some(t.as_ref()),
                    _ => None,
                };
                let mut out = Vec::new();
                let mut ok = true;
                for i in items {
                    match self.eval(i, inner) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then(|| Val::new(Value::List(out), span))
            }
            ExprKind::Name(id) => self.name(id, expected),
            ExprKind::Member { base, name } => {
                let b = self.eval(base, None)?;
                self.member(b, name, span)
            }
            ExprKind::Call { func, args } => {
                if !self.in_stdlib && self.res.lookup(&func.name, self.stage).is_some() {
                    return None; // reported by resolve
                }
                let sig = self.pick(func, expected, false)?;
                self.call(sig, func, Some(args), &[], None, span)
            }
            ExprKind::Method {
                receiver,
                name,
                args,
            } => {
                let sig = self.pick(name, expected, true)?;
                let self_ty = sig
                    .param("self")
                    .map(|p| p.ty.clone())
                    .unwrap_or(Ty::Kind(Kind::Extractor));
                let recv = self.eval(receiver, Some(&self_ty))?;
                self.call(sig, name, Some(args), &[], Some(recv), span)
            }
            ExprKind::Neg(inner) => {
                let v = self.eval(inner, expected)?;
                let r = match v.v {
                    Value::Int(i) => Value::Int(i.checked_neg().unwrap_or(i64::MAX)),
                    Value::Float(f) => Value::Float(-f),
                    Value::Percent(p) => Value::Percent(-p),
                    Value::Reward(terms) => {
                        Value::Reward(terms.into_iter().map(|(w, id)| (-w, id)).collect())
                    }
                    Value::Decl(id, Kind::Verifier) => Value::Reward(vec![(-1.0, id)]),
                    other => {
                        let problem = TypecheckProblem::CannotNegate {
                            found: describe(&other, self.res),
                        };
                        self.err(problem.at(span, "not a number or reward"));
                        return None;
                    }
                };
                Some(Val::new(r, span))
            }
            ExprKind::Binary { op, lhs, rhs } => {
                let num_expect =
                    expected.filter(|t| matches!(t, Ty::Int | Ty::Float | Ty::Percent));
                let l = self.eval(lhs, num_expect);
                let r = self.eval(rhs, num_expect);
                let (l, r) = (l?, r?);
                self.binary(*op, l, r, span)
            }
        }
    }

    /// The entity a name refers to from the current stage: the answer resolve recorded for the
    /// node, where it recorded one (in entity values, which typecheck evaluates in the stage
    /// resolve walked them in), else a lookup (settings, `--set` values).
    fn lookup(&self, name: &Ident) -> Option<(EntityId, EntityKind)> {
        match self.res.recorded(name) {
            Some(found) => {
                let recorded = found.and_then(|id| Some((id, self.res.kind(id)?)));
                // The record is only right while walk and evaluation agree on the stage; a
                // change that evaluated an entity from elsewhere (a setting, say) fails here,
                // in the tests, rather than reading a wrong answer.
                debug_assert_eq!(recorded, self.res.lookup_kind(&name.name, self.stage));
                recorded
            }
            _ => self.res.lookup_kind(&name.name, self.stage),
        }
    }

    fn name(&mut self, id: &Ident, expected: Option<&Ty>) -> Option<Val> {
        if !self.in_stdlib {
            if let Some((ent, kind)) = self.lookup(id) {
                return match kind {
                    EntityKind::Decl(k) => Some(Val::new(Value::Decl(ent, decl_kind(k)), id.span)),
                    _ => {
                        let mut v = self.values.get(ent)?.clone()?;
                        v.span = id.span;
                        v.origin = u32::try_from(ent).ok();
                        Some(v)
                    }
                };
            }
        }
        let std = self.std;
        let expected_enum = expected.is_some_and(|t| {
            t.alternatives()
                .iter()
                .any(|a| matches!(a, Ty::Enum(e) if std.enum_has(e, &id.name)))
        });
        if expected_enum {
            if let Some(m) = std.enum_member(&id.name) {
                return Some(Val::new(Value::Enum(m), id.span));
            }
        }
        if self.std.fns.contains_key(id.name.as_str()) {
            let sig = self.pick(id, expected, false)?;
            return self.call(sig, id, None, &[], None, id.span);
        }
        if let Some(m) = std.enum_member(&id.name) {
            return Some(Val::new(Value::Enum(m), id.span));
        }
        // Unknown names were reported by resolve.
        None
    }

    fn member(&mut self, base: Val, name: &Ident, span: Span) -> Option<Val> {
        let Value::Decl(src, Kind::Source) = base.v else {
            let problem = TypecheckProblem::NoFields {
                found: describe(&base.v, self.res),
            };
            self.err(problem.at(base.span, "not a source"));
            return None;
        };
        // A source whose own declaration failed has unknown fields: stay quiet.
        let known = match &self.values.get(src)?.as_ref()?.v {
            Value::Call(c) => has_field(c, &name.name),
            _ => return None,
        };
        if known {
            return Some(Val::new(
                Value::Field {
                    source: src,
                    name: name.name.clone(),
                },
                span,
            ));
        }
        let fields = self.source_fields(src)?;
        let sname = self
            .res
            .entities
            .get(src)
            .map(|e| e.name.name.clone())
            .unwrap_or_default();
        let problem = TypecheckProblem::UnknownField {
            source: &sname,
            field: &name.name,
            guess: did_you_mean(&name.name, fields.iter().map(|s| s.as_str())),
            fields: &fields,
        };
        self.err(problem.at(name.span, "no such field"));
        None
    }

    /// The fields a source provides: `prompt`, what its stdlib function always gives, and the
    /// fields its block maps.
    pub fn source_fields(&self, src: EntityId) -> Option<Vec<String>> {
        let v = self.values.get(src)?.as_ref()?;
        let Value::Call(c) = &v.v else { return None };
        Some(fields_of(c))
    }

    fn pick(
        &mut self,
        name: &Ident,
        expected: Option<&Ty>,
        method: bool,
    ) -> Option<&'static Signature> {
        let std = self.std;
        let all = std.fns.get(name.name.as_str())?;
        // Most names have one signature that fits: take it without collecting candidates.
        if let [only] = all.as_slice() {
            if !method || only.has_self() {
                return Some(only);
            }
        }
        let cands: Vec<&'static Signature> =
            all.iter().filter(|s| !method || s.has_self()).collect();
        if cands.is_empty() {
            let problem = TypecheckProblem::NotAMethod { name: &name.name };
            self.err(problem.at(name.span, "not a method"));
            return None;
        }
        if cands.len() == 1 {
            return cands.first().copied();
        }
        let kinds: Vec<Kind> = expected
            .map(|t| t.alternatives().iter().filter_map(|a| a.kind()).collect())
            .unwrap_or_default();
        let fitting: Vec<&'static Signature> = cands
            .iter()
            .copied()
            .filter(|s| kinds.iter().any(|k| s.ret.fits(*k)))
            .collect();
        match fitting.as_slice() {
            [one] => Some(*one),
            [] if !kinds.is_empty() => cands.first().copied(),
            _ => {
                let problem = TypecheckProblem::AmbiguousName {
                    name: &name.name,
                    kinds: cands.iter().map(|s| s.ret.name()).collect(),
                };
                self.err(problem.at(name.span, "which one?"));
                None
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        sig: &'static Signature,
        func: &Ident,
        args: Option<&Args>,
        block: &[&NamedArg],
        receiver: Option<Val>,
        span: Span,
    ) -> Option<Val> {
        // One slot per parameter of the signature (see `ArgMap`).
        let mut vals: Vec<Option<Val>> = vec![None; sig.params.len()];
        // Where each parameter was given, for duplicate and missing-argument reports. Calls
        // have a handful of arguments, so a vector searched in order is cheapest.
        let mut name_spans: Vec<(&str, Span)> = Vec::new();
        let given = |spans: &[(&str, Span)], key: &str| {
            spans.iter().find(|(k, _)| *k == key).map(|(_, s)| *s)
        };
        let mut extra: Vec<(String, Span, Val)> = Vec::new();
        let mut ok = true;
        let positional = || {
            sig.params
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.variadic && p.name != "self")
        };
        let mut positional_params = positional();
        let empty = Args::default();
        let args = args.unwrap_or(&empty);
        for (i, e) in args.positional.iter().enumerate() {
            let Some((slot, p)) = positional_params.next() else {
                let problem = TypecheckProblem::TooManyArguments {
                    callee: &sig.name,
                    count: positional().count(),
                    index: i + 1,
                    signature: sig.describe(),
                };
                self.err(problem.at(e.span, "one too many"));
                ok = false;
                continue;
            };
            name_spans.push((p.name.as_str(), e.span));
            match self.arg(sig, p, e) {
                Some(v) => bind(&mut vals, slot, v),
                None => ok = false,
            }
        }
        let named = args.named.iter().chain(block.iter().copied());
        for na in named {
            let key = na.name.name.as_str();
            let param = sig.param_slot(key).filter(|(_, p)| p.name != "self");
            if let Some((slot, p)) = param {
                if let Some(prev) = given(&name_spans, key) {
                    self.err(duplicate_argument(key, &sig.name, na.name.span, prev));
                    ok = false;
                    continue;
                }
                name_spans.push((key, na.name.span));
                match self.arg(sig, p, &na.value) {
                    Some(v) => bind(&mut vals, slot, v),
                    None => ok = false,
                }
            } else if let Some(vp) = sig.variadic() {
                if let Some((_, prev, _)) = extra.iter().find(|(n, _, _)| n == key) {
                    let prev = *prev;
                    self.err(duplicate_argument(key, &sig.name, na.name.span, prev));
                    ok = false;
                    continue;
                }
                match self.arg(sig, vp, &na.value) {
                    Some(v) => extra.push((key.to_string(), na.name.span, v)),
                    None => ok = false,
                }
            } else {
                let names: Vec<&str> = sig
                    .params
                    .iter()
                    .filter(|p| p.name != "self")
                    .map(|p| p.name.as_str())
                    .collect();
                let problem = TypecheckProblem::UnknownArgument {
                    callee: &sig.name,
                    key,
                    guess: did_you_mean(key, names.iter().copied()),
                    owner: nested_owner(self.std, sig, key),
                    names,
                };
                self.err(problem.at(na.name.span, "unknown parameter"));
                ok = false;
            }
        }
        match (receiver, sig.param_slot("self")) {
            (Some(r), Some((slot, p))) => {
                let ty = p.ty.clone();
                match self.accept(r, &ty, &|| format!("the receiver of `{}`", sig.name)) {
                    Some(v) => bind(&mut vals, slot, v),
                    None => ok = false,
                }
            }
            (Some(r), None) => {
                let problem = TypecheckProblem::NotAMethod { name: &sig.name };
                self.err(problem.at(r.span, "receiver"));
                ok = false;
            }
            _ => {}
        }
        for (slot, p) in sig.params.iter().enumerate() {
            if p.variadic || vals.get(slot).is_some_and(Option::is_some) {
                continue;
            }
            if p.required() {
                if ok || given(&name_spans, p.name.as_str()).is_none() {
                    let problem = TypecheckProblem::MissingArgument {
                        callee: &sig.name,
                        param: &p.name,
                        described: p.describe(),
                    };
                    self.err(problem.at(func.span, format!("`{}` is missing", p.name)));
                }
                ok = false;
                continue;
            }
            if !ok {
                continue;
            }
            // A parameter without a default keeps the `Absent` its slot is given below.
            if let Some(d) = &p.default {
                let v = self.default_value(p, d);
                match v {
                    Some(mut v) => {
                        v.span = span;
                        bind(&mut vals, slot, v);
                    }
                    None => {
                        let what = format!(
                            "the stdlib default of `{}.{}` does not check",
                            sig.name, p.name
                        );
                        let problem = InternalProblem::Stdlib(&what);
                        self.err(problem.at(span, "while checking this call"));
                        ok = false;
                    }
                }
            }
        }
        ok.then(|| {
            Val::new(
                Value::Call(Box::new(CallVal {
                    sig,
                    args: ArgMap(
                        vals.into_iter()
                            .map(|v| v.unwrap_or_else(|| Val::new(Value::Absent, span)))
                            .collect(),
                    ),
                    extra,
                    span,
                })),
                span,
            )
        })
    }

    /// The value of a stdlib parameter's default. Defaults are constant expressions over the
    /// stdlib alone, so each is evaluated once per check and copied afterwards: a large
    /// pipeline calls the same functions thousands of times. A default whose evaluation
    /// reported something or named a path is not cached, so those effects happen every time.
    fn default_value(&mut self, p: &'static ParamDef, d: &'static Expr) -> Option<Val> {
        let key = p as *const ParamDef as usize;
        if let Some(v) = self.defaults.get(&key) {
            return Some(v.clone());
        }
        let (diags, paths) = (self.diags.len(), self.paths.len());
        let saved = (self.in_stdlib, self.stage);
        self.in_stdlib = true;
        let v = self.eval(d, Some(&p.ty));
        let v = v.and_then(|v| self.accept(v, &p.ty, &|| format!("the default of `{}`", p.name)));
        (self.in_stdlib, self.stage) = saved;
        if let Some(v) = &v {
            if self.diags.len() == diags && self.paths.len() == paths {
                self.defaults.insert(key, v.clone());
            }
        }
        v
    }

    fn arg(&mut self, sig: &Signature, p: &ParamDef, e: &Expr) -> Option<Val> {
        let v = self.eval(e, Some(&p.ty))?;
        let v = self.accept_list(v, &p.ty, &|| format!("`{}` of `{}`", p.name, sig.name))?;
        self.check_range(&v, p.range.as_ref(), &p.name).then_some(v)
    }

    fn binary(&mut self, op: BinOp, l: Val, r: Val, span: Span) -> Option<Val> {
        use Value::*;
        let as_reward = |v: &Value| -> Option<Vec<(f64, EntityId)>> {
            match v {
                Reward(t) => Some(t.clone()),
                Decl(id, Kind::Verifier) => Some(vec![(1.0, *id)]),
                _ => None,
            }
        };
        let out = match (op, &l.v, &r.v) {
            (_, Int(a), Int(b)) => {
                let (a, b) = (*a, *b);
                match op {
                    BinOp::Add => a.checked_add(b).map(Int),
                    BinOp::Sub => a.checked_sub(b).map(Int),
                    BinOp::Mul => a.checked_mul(b).map(Int),
                    BinOp::Div => {
                        if b == 0 {
                            return self.div_zero(&r);
                        }
                        if a % b == 0 {
                            Some(Int(a / b))
                        } else {
                            Some(Float(a as f64 / b as f64))
                        }
                    }
                }
            }
            (_, a, b) if is_number(a) && is_number(b) => {
                let (a, b) = (num(a).unwrap_or(0.0), num(b).unwrap_or(0.0));
                if op == BinOp::Div && b == 0.0 {
                    return self.div_zero(&r);
                }
                let x = match op {
                    BinOp::Add => a + b,
                    BinOp::Sub => a - b,
                    BinOp::Mul => a * b,
                    BinOp::Div => a / b,
                };
                x.is_finite().then_some(Float(x))
            }
            (BinOp::Add | BinOp::Sub, Percent(a), Percent(b)) => {
                Some(Percent(if op == BinOp::Add { a + b } else { a - b }))
            }
            (BinOp::Mul, Percent(a), b) if is_number(b) => Some(Percent(a * num(b).unwrap_or(0.0))),
            (BinOp::Mul, a, Percent(b)) if is_number(a) => Some(Percent(num(a).unwrap_or(0.0) * b)),
            (BinOp::Div, Percent(a), b) if is_number(b) => {
                let b = num(b).unwrap_or(0.0);
                if b == 0.0 {
                    return self.div_zero(&r);
                }
                Some(Percent(a / b))
            }
            (_, Percent(_), _) | (_, _, Percent(_)) if is_number(&l.v) || is_number(&r.v) => {
                self.err(
                    TypecheckProblem::MixedUnits { op }
                        .at(l.span, "this")
                        .label(r.span, "and this"),
                );
                return None;
            }
            (BinOp::Add | BinOp::Sub, a, b) if as_reward(a).is_some() && as_reward(b).is_some() => {
                let mut t = as_reward(a).unwrap_or_default();
                let sign = if op == BinOp::Sub { -1.0 } else { 1.0 };
                t.extend(
                    as_reward(b)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(w, id)| (sign * w, id)),
                );
                Some(Reward(t))
            }
            (BinOp::Mul, a, b) if is_number(a) && as_reward(b).is_some() => {
                let k = num(a).unwrap_or(0.0);
                Some(Reward(
                    as_reward(b)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(w, id)| (k * w, id))
                        .collect(),
                ))
            }
            (BinOp::Mul | BinOp::Div, a, b) if as_reward(a).is_some() && is_number(b) => {
                let k = num(b).unwrap_or(0.0);
                if op == BinOp::Div && k == 0.0 {
                    return self.div_zero(&r);
                }
                let k = if op == BinOp::Div { 1.0 / k } else { k };
                Some(Reward(
                    as_reward(a)
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(w, id)| (k * w, id))
                        .collect(),
                ))
            }
            (BinOp::Mul | BinOp::Div, a, b) if as_reward(a).is_some() && as_reward(b).is_some() => {
                let problem = TypecheckProblem::NonlinearReward { op };
                self.err(problem.at(span, "not a linear combination"));
                return None;
            }
            _ => {
                let problem = TypecheckProblem::InvalidOperands {
                    op,
                    lhs: describe(&l.v, self.res),
                    rhs: describe(&r.v, self.res),
                };
                self.err(problem.at(l.span, "this").label(r.span, "and this"));
                return None;
            }
        };
        match out {
            Some(v) => Some(Val::new(v, span)),
            None => {
                self.err(TypecheckProblem::Overflow.at(span, "overflows"));
                None
            }
        }
    }

    fn div_zero(&mut self, r: &Val) -> Option<Val> {
        self.err(TypecheckProblem::DivisionByZero.at(r.span, "this is zero"));
        None
    }

    /// The value of an item whose head expression may be followed by a block of named
    /// arguments (`grpo(math) { group = 8 }`, `reweight recap { window = 20 }`).
    fn eval_head(
        &mut self,
        head: Option<&Expr>,
        block: &[&NamedArg],
        block_span: Option<Span>,
        kind: Kind,
        at: Span,
    ) -> Option<Val> {
        let ty = Ty::Kind(kind);
        let Some(head) = head else {
            self.err(TypecheckProblem::MissingValue { kind }.at(at, "nothing given"));
            return None;
        };
        if block.is_empty() {
            return self.eval(head, Some(&ty));
        }
        match &head.kind {
            ExprKind::Call { func, args } if self.res.lookup(&func.name, self.stage).is_none() => {
                let sig = self.pick(func, Some(&ty), false)?;
                self.call(sig, func, Some(args), block, None, head.span)
            }
            ExprKind::Name(func)
                if self.lookup(func).is_none() && self.std.fns.contains_key(func.name.as_str()) =>
            {
                let sig = self.pick(func, Some(&ty), false)?;
                self.call(sig, func, None, block, None, head.span)
            }
            ExprKind::Method {
                receiver,
                name,
                args,
            } => {
                let sig = self.pick(name, Some(&ty), true)?;
                let self_ty = sig
                    .param("self")
                    .map(|p| p.ty.clone())
                    .unwrap_or(ty.clone());
                let recv = self.eval(receiver, Some(&self_ty))?;
                self.call(sig, name, Some(args), block, Some(recv), head.span)
            }
            _ => {
                self.err(
                    TypecheckProblem::BlockNeedsCall
                        .at(block_span.unwrap_or(head.span), "block of arguments")
                        .label(head.span, "not a stdlib call"),
                );
                None
            }
        }
    }

    fn setting(&mut self, s: Setting, kind: Kind) -> Option<Val> {
        let fields: Vec<&NamedArg> = s
            .block
            .map(|b| b.fields.iter().collect())
            .unwrap_or_default();
        let v = self.eval_head(s.value, &fields, s.block.map(|b| b.span), kind, s.kind_span)?;
        self.accept(v, &Ty::Kind(kind), &|| format!("`{}`", s.kind.keyword()))
    }

    /// The stage's train setting: the top-level `train` fields overridden by the stage's own.
    fn train(&mut self, stage: usize, span_out: &mut Span) -> Option<Val> {
        let top = self
            .res
            .top_settings
            .iter()
            .find(|s| s.kind == SettingKind::Train)
            .copied();
        let own = self.res.stages.get(stage).and_then(|s| {
            s.settings
                .iter()
                .find(|x| x.kind == SettingKind::Train)
                .copied()
        });
        let any = own.or(top)?;
        *span_out = any.kind_span;
        for s in [top, own].into_iter().flatten() {
            if let Some(v) = s.value {
                self.err(TypecheckProblem::TrainTakesBlock.at(v.span, "not allowed here"));
                return None;
            }
        }
        let mut fields: Vec<&NamedArg> = Vec::new();
        let own_fields: Vec<&NamedArg> = own
            .and_then(|s| s.block)
            .map(|b| b.fields.iter().collect())
            .unwrap_or_default();
        if let (Some(t), Some(_)) = (top, own) {
            if let Some(b) = t.block {
                for f in &b.fields {
                    if !own_fields.iter().any(|o| o.name.name == f.name.name) {
                        fields.push(f);
                    }
                }
            }
        }
        fields.extend(own_fields);
        if own.is_none() {
            if let Some(b) = top.and_then(|t| t.block) {
                fields.extend(b.fields.iter());
            }
        }
        let sig = self.std.fns.get("train").and_then(|v| v.first())?;
        let func = Ident {
            name: "train".into(),
            span: any.kind_span,
        };
        self.call(sig, &func, None, &fields, None, any.kind_span)
    }
}

/// Whether a source call provides the field `name` (one of `fields_of`, without building the
/// list: sources are read field by field thousands of times in a large pipeline).
pub fn has_field(c: &CallVal, name: &str) -> bool {
    name == "prompt"
        || c.sig.ret_fields.iter().any(|f| f == name)
        || c.extra.iter().any(|(n, _, _)| n == name)
}

/// The fields a source call provides: `prompt`, its stdlib function's fixed fields, and the
/// fields its variadic arguments map.
pub fn fields_of(c: &CallVal) -> Vec<String> {
    let mut f: Vec<String> = vec!["prompt".to_string()];
    for x in &c.sig.ret_fields {
        if !f.contains(x) {
            f.push(x.clone());
        }
    }
    for (n, _, _) in &c.extra {
        if !f.contains(n) {
            f.push(n.clone());
        }
    }
    f
}

/// `key` is given twice to the call of `callee`: at `again`, first at `first`.
fn duplicate_argument(key: &str, callee: &str, again: Span, first: Span) -> Diagnostic {
    TypecheckProblem::DuplicateArgument { key, callee }
        .at(again, "given again here")
        .label(first, "first given here")
}
