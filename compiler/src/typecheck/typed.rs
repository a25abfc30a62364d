//! The typed program: the value of every entity and setting as typecheck gives it to validate
//! and lower (`Typed`, `Val`, `CallVal`), what a value is in words, and the constant folding of
//! arithmetic over values (numbers, percentages and linear combinations of verifiers).

use super::{Checker, TypecheckProblem};
use crate::ast::BinOp;
use crate::diagnostic::{Problem, Span};
use crate::resolve::{EntityId, Resolved};
use crate::stdlib::Signature;
use crate::types::Kind;
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
    /// An argument whose value did not check (the error is reported already). The call keeps
    /// its other arguments, so that validate still checks what does not depend on this one;
    /// the rules read a broken argument as unknown and say nothing about it.
    Broken,
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

    pub(super) fn new(v: Value, span: Span) -> Self {
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
pub struct ArgMap(pub(super) Vec<Val>);

impl PartialEq for CallVal {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self.sig, other.sig) && self.args == other.args && self.extra == other.extra
    }
}

impl CallVal {
    /// The argument bound to `name`, to change: tests hand lower a value that typecheck
    /// would never give, to see lower refuse it.
    #[cfg(test)]
    pub(crate) fn get_mut(&mut self, name: &str) -> Option<&mut Val> {
        let (slot, _) = self.sig.param_slot(name)?;
        self.args.0.get_mut(slot)
    }

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
    /// Whether the argument `name` was given but its value has an error (see `Value::Broken`):
    /// a rule that would read it knows nothing about it and says nothing.
    pub fn broken(&self, name: &str) -> bool {
        self.get(name).is_some_and(|v| v.v == Value::Broken)
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

/// "an int", "a verifier `format`": what a value is, for messages.
pub(super) fn describe(v: &Value, res: &Resolved) -> String {
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
        Value::Broken => "a value with an error".into(),
    }
}

pub(super) fn is_number(v: &Value) -> bool {
    matches!(v, Value::Int(_) | Value::Float(_))
}

pub(super) fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

impl Checker<'_, '_, '_> {
    pub(super) fn binary(&mut self, op: BinOp, l: Val, r: Val, span: Span) -> Option<Val> {
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
