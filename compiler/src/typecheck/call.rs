//! Calls: picks the stdlib signature a call means (overloads by the expected kind, methods by
//! `self`) and binds its arguments to the signature's parameters (positional, named and block
//! arguments, the receiver, defaults), reporting missing, unknown, duplicate and surplus ones.

use super::typed::{ArgMap, CallVal, Val, Value};
use super::{Checker, TypecheckProblem};
use crate::ast::*;
use crate::diagnostic::{did_you_mean, Diagnostic, Problem, Span};
use crate::internal::InternalProblem;
use crate::stdlib::{ParamDef, Signature, Stdlib};
use crate::types::{Kind, Ty};

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
pub(super) fn makers(std: &Stdlib, ty: &Ty) -> Option<String> {
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

/// The value of an argument, or `Broken` at `span` when it did not check: the call is kept,
/// so validate still checks what does not depend on this argument (the error is reported
/// already; the rules say nothing about a broken value).
fn broken_or(v: Option<Val>, span: Span) -> Val {
    v.unwrap_or_else(|| Val::new(Value::Broken, span))
}

/// Binds `v` to the argument slot `slot` of a call being checked (see `ArgMap`).
fn bind(vals: &mut [Option<Val>], slot: usize, v: Val) {
    if let Some(s) = vals.get_mut(slot) {
        *s = Some(v);
    }
}

impl Checker<'_, '_, '_> {
    pub(super) fn pick(
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
    pub(super) fn call(
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
        // A call written wrongly (an argument too many, unknown, given twice or missing) gives
        // no value; an argument whose own value has an error is kept as `Broken`.
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
            let v = self.arg(sig, p, e);
            bind(&mut vals, slot, broken_or(v, e.span));
        }
        let named = args.named.iter().chain(block.iter().copied());
        for na in named {
            let key = na.name.name.as_str();
            let param = sig.param_slot(key).filter(|(_, p)| p.name != "self");
            if key.contains('.') && sig.name != "static" {
                let problem = TypecheckProblem::DottedArgument {
                    callee: &sig.name,
                    key,
                };
                self.err(problem.at(na.name.span, "not a parameter name"));
                ok = false;
            } else if let Some((slot, p)) = param {
                if let Some(prev) = given(&name_spans, key) {
                    self.err(duplicate_argument(key, &sig.name, na.name.span, prev));
                    ok = false;
                    continue;
                }
                name_spans.push((key, na.name.span));
                let v = self.arg(sig, p, &na.value);
                bind(&mut vals, slot, broken_or(v, na.value.span));
            } else if let Some(vp) = sig.variadic() {
                if let Some((_, prev, _)) = extra.iter().find(|(n, _, _)| n == key) {
                    let prev = *prev;
                    self.err(duplicate_argument(key, &sig.name, na.name.span, prev));
                    ok = false;
                    continue;
                }
                let v = self.arg(sig, vp, &na.value);
                extra.push((key.to_string(), na.name.span, broken_or(v, na.value.span)));
            } else {
                let names: Vec<&str> = sig
                    .params
                    .iter()
                    .filter(|p| p.name != "self")
                    .map(|p| p.name.as_str())
                    .collect();
                let guess = did_you_mean(key, names.iter().copied());
                let problem = TypecheckProblem::UnknownArgument {
                    callee: &sig.name,
                    key,
                    guess,
                    owner: nested_owner(self.std, sig, key),
                    names,
                };
                self.err(problem.at(na.name.span, "unknown parameter").fix_name(
                    na.name.span,
                    key,
                    guess,
                ));
                ok = false;
            }
        }
        match (receiver, sig.param_slot("self")) {
            (Some(r), Some((slot, p))) => {
                let at = r.span;
                let v = self.accept(r, &p.ty, &|| format!("the receiver of `{}`", sig.name));
                bind(&mut vals, slot, broken_or(v, at));
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
}

/// `key` is given twice to the call of `callee`: at `again`, first at `first`.
fn duplicate_argument(key: &str, callee: &str, again: Span, first: Span) -> Diagnostic {
    TypecheckProblem::DuplicateArgument { key, callee }
        .at(again, "given again here")
        .label(first, "first given here")
}
