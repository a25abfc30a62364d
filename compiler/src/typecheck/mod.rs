//! Typecheck: takes `Resolved` (entities in evaluation order, stages, settings) and gives
//! `Typed`: the value of every entity and every stage's reweight, mix and train settings,
//! with stdlib calls matched against their signatures (overloads picked by the expected kind,
//! arguments bound, defaults filled, ranges checked), constants folded and reward
//! arithmetic reduced to linear combinations of verifiers. Reports wrong kinds, type and unit
//! mismatches, out-of-range values, missing, unknown, duplicate and surplus arguments, bad
//! `--set` values, and arithmetic that means nothing.
//!
//! This file walks entities and settings and checks values against types; `call` picks
//! signatures and binds arguments; `typed` holds the values it gives and folds arithmetic;
//! `problems` words what it reports.

mod call;
mod problems;
mod typed;

pub use problems::{Misfit, TypecheckCode, TypecheckProblem};
pub use typed::{fields_of, has_field, ArgMap, CallVal, StageValues, Typed, Val, Value};

use crate::ast::*;
use crate::diagnostic::{did_you_mean, Diagnostic, Problem, Span};
use crate::resolve::{EntityId, EntityKind, ResolveProblem, Resolved, Setting};
use crate::stdlib::Stdlib;
use crate::types::{Kind, Ty};
use call::makers;
use compact_str::CompactString;
use typed::{describe, is_number, num};

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

/// The kind of value a declaration keyword declares.
pub fn decl_kind(k: DeclKind) -> Kind {
    match k {
        DeclKind::Model => Kind::Model,
        DeclKind::Source => Kind::Source,
        DeclKind::Verifier => Kind::Verifier,
        DeclKind::Objective => Kind::Objective,
        DeclKind::Eval => Kind::Eval,
    }
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
        // The paths the default names are dropped again when `--set` replaces the default, so
        // that only the value in effect is checked for existence; paths of other declarations
        // the default refers to stay.
        let default_paths = self.paths.len();
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
                        let default_span = e.value.span;
                        let tail = self.paths.split_off(default_paths);
                        self.paths.extend(tail.into_iter().filter(|(_, s)| {
                            s.start() < default_span.start() || s.end() > default_span.end()
                        }));
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
        let guess = did_you_mean(&name.name, fields.iter().map(|s| s.as_str()));
        let problem = TypecheckProblem::UnknownField {
            source: &sname,
            field: &name.name,
            guess,
            fields: &fields,
        };
        self.err(
            problem
                .at(name.span, "no such field")
                .fix_name(name.span, &name.name, guess),
        );
        None
    }

    /// The fields a source provides: `prompt`, what its stdlib function always gives, and the
    /// fields its block maps.
    pub fn source_fields(&self, src: EntityId) -> Option<Vec<String>> {
        let v = self.values.get(src)?.as_ref()?;
        let Value::Call(c) = &v.v else { return None };
        Some(fields_of(c))
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
