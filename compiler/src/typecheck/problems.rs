//! Typecheck's problems: takes what the checker found; gives the code, message and help line
//! of its diagnostic. The codes and their long explanations are declared here too
//! (`TypecheckCode`), and `codes.rs` lists them for `recapc explain`.

use crate::ast::BinOp;
use crate::diagnostic::{problem_codes, Problem};
use crate::types::{Kind, Ty};

problem_codes! {
    /// The codes of typecheck's problems, in the order `recapc explain` lists them.
    pub enum TypecheckCode {
        WrongKind = "recap::typecheck::wrong_kind" => "A value of one kind stands where another is expected: a verifier where a source is expected, an `sft` objective declared as a `verifier`, a mixer given to `reweight`. Each declaration keyword fixes the kind of its value, and each stdlib parameter has a kind.",
        TypeMismatch = "recap::typecheck::type_mismatch" => "A value has the wrong type for its parameter: a string where a number is expected, a float where an int is expected (`group = 4.5`), an unknown enum member (`estimator = k4`). The message names the expected type; `recapc explain` on the stdlib entry shows the full signature.",
        UnitMismatch = "recap::typecheck::unit_mismatch" => "A percentage and a plain number are mixed up: `lr = 10%` where a float is expected, `warmup = 0.1` where steps or a percentage are expected, or `10% + 1`. Write `0.1` for a fraction and `10%` for a percentage of the stage's steps.",
        OutOfRange = "recap::typecheck::out_of_range" => "A value lies outside the range its parameter allows, e.g. `group = 1` (GRPO needs at least 2 completions per prompt to compare), `temperature = 0` (must be > 0), `alpha = 1.5` (0 < alpha < 1), `lr = 0`. Ranges are written in each stdlib signature in interval notation, `[2, inf)`. Overrides from `--set` are checked against the param's range too.",
        MissingArgument = "recap::typecheck::missing_argument" => "A stdlib call leaves out a required parameter (one without a default), e.g. `regex()` without `pattern`, or `train { }` without `steps`. Add it positionally or by name.",
        UnknownArgument = "recap::typecheck::unknown_argument" => "A named argument (or block field) is not a parameter of the function. The help line suggests the closest parameter name.",
        DuplicateArgument = "recap::typecheck::duplicate_argument" => "The same parameter is given twice, e.g. positionally and by name, or in the call and in the block.",
        TooManyArguments = "recap::typecheck::too_many_arguments" => "A call has more positional arguments than the function's positional parameters. Name the extra ones, or remove them.",
        NotAMethod = "recap::typecheck::not_a_method" => "A function is called as a method (`x.f()`) but has no `self` parameter, or the other way round. Extractors (`after`, `tag`, `last_number`, ...) are methods; other functions are called as `f(...)`.",
        AmbiguousName = "recap::typecheck::ambiguous_name" => "A stdlib name has several meanings (`uniform` is a reweighter and a mixer) and nothing says which one is meant. Use it where the kind is known: after `mix` or `reweight`, or as a parameter of that kind.",
        NonlinearReward = "recap::typecheck::nonlinear_reward" => "Two rewards are multiplied or divided. Reward terms are linear combinations of verifiers (`0.1 * format + accuracy`), which keeps every term a weighted sum the reweighter can balance.",
        InvalidOperands = "recap::typecheck::invalid_operands" => "Arithmetic on values it means nothing for: adding strings, negating a model, adding a number to a verifier. Arithmetic works on numbers, on percentages, and on verifiers scaled by numbers.",
        DivisionByZero = "recap::typecheck::division_by_zero" => "A constant expression divides by zero, e.g. `steps / 0` or a reward divided by 0. recap folds constant arithmetic at check time, so the division is reported where it is written.",
        Overflow = "recap::typecheck::overflow" => "A constant integer expression overflows 64 bits, or a float expression is no longer finite. recap folds constants at check time; use smaller numbers.",
        UnknownField = "recap::typecheck::unknown_field" => "A field path names a field the source does not provide, e.g. `math.solution` when `math` maps only `prompt` and `answer`. A `jsonl` source provides `prompt` and the fields of its block; generators provide the fields of their signature (`-> Source{prompt, answer}`).",
        NoFields = "recap::typecheck::no_fields" => "A field path is used on something that is not a source (`policy.answer`). Only sources have fields.",
        BlockNotAllowed = "recap::typecheck::block_not_allowed" => "A block `{ ... }` follows something that is not a stdlib call (`verifier v = other { ... }`), or `train` is given a value instead of a block. A block holds the named arguments of the call before it.",
        MissingValue = "recap::typecheck::missing_value" => "`reweight` or `mix` is written without a policy. Write e.g. `reweight recap` or `mix uniform`.",
        BadParamType = "recap::typecheck::bad_param_type" => "A `param` has a type that cannot come from the command line. Params are int, float, bool, string, percent or path.",
        DottedArgument = "recap::typecheck::dotted_argument" => "A named argument is written `source.term = value` where the function takes plain names. Only `static(...)` takes such keys: they weigh one reward term of a source, e.g. `reweight static(sums.correct = 2.0)`. Every other function's arguments are named by a parameter.",
    }
}

/// Why a value does not fit the type it is given to, and so what the help line proposes.
#[derive(Debug, Clone, PartialEq)]
pub enum Misfit {
    /// One value where a list is expected (the item as it would be written in the list).
    ListOfOne { item: String },
    /// A percentage where a plain number is expected.
    PercentForNumber,
    /// A plain number where a percentage (or a number of steps) is expected.
    NumberForPercent,
    /// A value of another kind (the kinds wanted, "a source or a verifier").
    Kind { wanted: String },
    /// A quoted literal of the right type (its text without quotes).
    Quoted { text: String },
    /// A float where an int is expected.
    Fraction { value: f64 },
    /// Not a member of the expected enum (its members, listed).
    NotAMember { members: String },
    /// Not a call that gives the type (the calls that do, in words).
    NotMade { made_by: String },
    /// Any other value of the wrong type.
    Other,
}

/// One problem the checker found, with what its wording needs.
#[derive(Debug, Clone, PartialEq)]
pub enum TypecheckProblem<'a> {
    /// A declaration's value is of another kind than its keyword says.
    DeclWrongKind {
        keyword: &'a str,
        name: &'a str,
        kind: Kind,
        found: String,
        /// The value is a combination of verifiers, which only `let` can name.
        reward: bool,
    },
    /// A param of a type no command line can give (the type as written).
    BadParamType { ty: String },
    /// A `source.term` key given to a function other than `static`.
    DottedArgument { callee: &'a str, key: &'a str },
    /// A `--set` value outside the param's range (the range, described).
    OverrideOutOfRange {
        name: &'a str,
        text: &'a str,
        range: String,
    },
    /// A percentage outside [0%, 100%].
    PercentOutOfRange { name: &'a str, percent: f64 },
    /// A number outside its parameter's range (the range, described).
    OutOfRange {
        name: &'a str,
        range: String,
        value: f64,
    },
    /// A value that does not fit the type `ty` that `what` expects.
    Mismatch {
        what: String,
        ty: &'a Ty,
        found: String,
        misfit: Misfit,
    },
    /// `-` before something that is not a number or reward.
    CannotNegate { found: String },
    /// A field path on something that is not a source.
    NoFields { found: String },
    /// A field the source does not provide; the closest it does, and all it does.
    UnknownField {
        source: &'a str,
        field: &'a str,
        guess: Option<&'a str>,
        fields: &'a [String],
    },
    /// A function without `self` called as a method.
    NotAMethod { name: &'a str },
    /// A name with several stdlib meanings (the kinds it gives) and no kind to pick by.
    AmbiguousName { name: &'a str, kinds: Vec<&'a str> },
    /// A positional argument past the signature's (`index` counts from 1).
    TooManyArguments {
        callee: &'a str,
        count: usize,
        index: usize,
        signature: String,
    },
    /// A named argument the function does not take; the closest name, or a nested call that
    /// takes it (its parameter, its function, whether that needs more arguments), and all.
    UnknownArgument {
        callee: &'a str,
        key: &'a str,
        guess: Option<&'a str>,
        owner: Option<(&'a str, &'a str, bool)>,
        names: Vec<&'a str>,
    },
    /// An argument given twice.
    DuplicateArgument { key: &'a str, callee: &'a str },
    /// A required parameter left out (its signature entry, described).
    MissingArgument {
        callee: &'a str,
        param: &'a str,
        described: String,
    },
    /// A percentage and a plain number in one operation.
    MixedUnits { op: BinOp },
    /// Two rewards multiplied or divided.
    NonlinearReward { op: BinOp },
    /// An operation on values it means nothing for (both described).
    InvalidOperands { op: BinOp, lhs: String, rhs: String },
    /// Constant arithmetic past 64 bits or past the finite floats.
    Overflow,
    /// A constant division by zero.
    DivisionByZero,
    /// `reweight` or `mix` without a value (the kind it needs).
    MissingValue { kind: Kind },
    /// A block after something that is not a stdlib call.
    BlockNeedsCall,
    /// `train` given a value rather than a block.
    TrainTakesBlock,
}

impl Problem for TypecheckProblem<'_> {
    type Code = TypecheckCode;

    fn kind(&self) -> TypecheckCode {
        use TypecheckCode as C;
        use TypecheckProblem as P;
        match self {
            P::DeclWrongKind { .. } => C::WrongKind,
            P::BadParamType { .. } => C::BadParamType,
            P::DottedArgument { .. } => C::DottedArgument,
            P::OverrideOutOfRange { .. } | P::PercentOutOfRange { .. } | P::OutOfRange { .. } => {
                C::OutOfRange
            }
            P::Mismatch { misfit, .. } => match misfit {
                Misfit::PercentForNumber | Misfit::NumberForPercent => C::UnitMismatch,
                Misfit::Kind { .. } => C::WrongKind,
                _ => C::TypeMismatch,
            },
            P::CannotNegate { .. } | P::InvalidOperands { .. } => C::InvalidOperands,
            P::NoFields { .. } => C::NoFields,
            P::UnknownField { .. } => C::UnknownField,
            P::NotAMethod { .. } => C::NotAMethod,
            P::AmbiguousName { .. } => C::AmbiguousName,
            P::TooManyArguments { .. } => C::TooManyArguments,
            P::UnknownArgument { .. } => C::UnknownArgument,
            P::DuplicateArgument { .. } => C::DuplicateArgument,
            P::MissingArgument { .. } => C::MissingArgument,
            P::MixedUnits { .. } => C::UnitMismatch,
            P::NonlinearReward { .. } => C::NonlinearReward,
            P::Overflow => C::Overflow,
            P::DivisionByZero => C::DivisionByZero,
            P::MissingValue { .. } => C::MissingValue,
            P::BlockNeedsCall | P::TrainTakesBlock => C::BlockNotAllowed,
        }
    }

    fn message(&self) -> String {
        use TypecheckProblem as P;
        match self {
            P::DeclWrongKind {
                keyword,
                name,
                kind,
                found,
                ..
            } => format!(
                "`{keyword} {name}` must be {}, found {found}",
                kind.article()
            ),
            P::BadParamType { ty } => format!("a param cannot have the type `{ty}`"),
            P::DottedArgument { callee, key } => {
                format!("`{callee}` takes no `source.term` key such as `{key}`")
            }
            P::OverrideOutOfRange { name, text, range } => {
                format!("`--set {name}={text}` is out of range: `{name}` must be in {range}")
            }
            P::PercentOutOfRange { name, percent } => {
                format!("`{name}` is {percent}%, a percentage must lie in [0%, 100%]")
            }
            P::OutOfRange { name, range, value } => {
                format!("`{name}` must be in {range}, found {value}")
            }
            P::Mismatch {
                what, ty, found, ..
            } => format!("{what} expects {ty}, found {found}"),
            P::CannotNegate { found } => format!("cannot negate {found}"),
            P::NoFields { found } => format!("{found} has no fields"),
            P::UnknownField { source, field, .. } => {
                format!("source `{source}` has no field `{field}`")
            }
            P::NotAMethod { name } => format!("`{name}` cannot be called as a method"),
            P::AmbiguousName { name, kinds } => {
                format!("`{name}` is ambiguous: it is a {}", kinds.join(" and a "))
            }
            P::TooManyArguments {
                callee,
                count,
                index,
                ..
            } => format!(
                "`{callee}` takes {count} positional argument{}, this is argument {index}",
                if *count == 1 { "" } else { "s" }
            ),
            P::UnknownArgument { callee, key, .. } => {
                format!("`{callee}` has no parameter `{key}`")
            }
            P::DuplicateArgument { key, callee } => {
                format!("`{key}` is given twice to `{callee}`")
            }
            P::MissingArgument { callee, param, .. } => {
                format!("`{callee}` needs the argument `{param}`")
            }
            P::MixedUnits { op } => {
                format!("cannot {} a percentage and a plain number", verb(*op))
            }
            P::NonlinearReward { op } => format!("cannot {} two rewards", verb(*op)),
            P::InvalidOperands { op, lhs, rhs } => {
                format!("cannot {} {lhs} and {rhs}", verb(*op))
            }
            P::Overflow => "the result of this arithmetic is too large".to_string(),
            P::DivisionByZero => "division by zero".to_string(),
            P::MissingValue { kind } => format!("this setting needs {}", kind.article()),
            P::BlockNeedsCall => "a block `{ ... }` needs a function call before it".to_string(),
            P::TrainTakesBlock => "`train` takes a block of fields, not a value".to_string(),
        }
    }

    fn help(&self) -> String {
        use TypecheckProblem as P;
        match self {
            P::DeclWrongKind { kind, reward, .. } => {
                if *reward && *kind == Kind::Verifier {
                    "name a combination of verifiers with `let`, e.g. `let total = 0.1 * format + accuracy`".to_string()
                } else {
                    format!("use a stdlib function that gives {} here", kind.article())
                }
            }
            P::BadParamType { .. } => "params are int, float, bool, string, percent or path".to_string(),
            P::DottedArgument { .. } => "only `static(...)` weighs a reward term by `source.term`; name a parameter here".to_string(),
            P::OverrideOutOfRange { range, .. } => format!("pass a value in {range}"),
            P::PercentOutOfRange { .. } => "write a percentage between 0% and 100%".to_string(),
            P::OutOfRange { range, .. } => format!("use a value in {range}"),
            P::Mismatch { ty, misfit, .. } => misfit_help(misfit, ty),
            P::CannotNegate { .. } => "`-` applies to numbers, percentages and rewards".to_string(),
            P::NoFields { .. } => "only sources have fields: `math.answer`".to_string(),
            P::UnknownField {
                source,
                field,
                guess,
                fields,
            } => match guess {
                Some(g) => format!("did you mean `{g}`?"),
                None => format!(
                    "`{source}` provides: {}; map more fields in its block, e.g. `{field} = field(\"...\")`",
                    fields.join(", ")
                ),
            },
            P::NotAMethod { name } => format!("call it as `{name}(...)`"),
            P::AmbiguousName { .. } => "use it where the kind is known, e.g. in `mix` or `reweight`".to_string(),
            P::TooManyArguments { signature, .. } => format!("the signature is `{signature}`"),
            P::UnknownArgument {
                key,
                guess,
                owner,
                names,
                ..
            } => match (guess, owner) {
                (Some(g), _) => format!("did you mean `{g}`?"),
                (None, Some((param, func, needs_more))) => format!(
                    "`{key}` is a parameter of `{func}`, which `{param}` takes: write `{param} = {func}({}{key} = ...)`",
                    if *needs_more { "..., " } else { "" }
                ),
                (None, None) => format!("the parameters are: {}", names.join(", ")),
            },
            P::DuplicateArgument { .. } => "give each argument once".to_string(),
            P::MissingArgument {
                param, described, ..
            } => format!("add `{param} = ...` ({described})"),
            P::MixedUnits { .. } => "write both as percentages, or both as numbers (10% is 0.1)".to_string(),
            P::NonlinearReward { .. } => "rewards combine linearly: scale verifiers by numbers and add them, e.g. `0.1 * format + accuracy`".to_string(),
            P::InvalidOperands { .. } => "arithmetic works on numbers, on percentages, and on verifiers scaled by numbers".to_string(),
            P::Overflow => "use smaller numbers".to_string(),
            P::DivisionByZero => "divide by a number that is not zero".to_string(),
            P::MissingValue { kind } => match kind {
                Kind::Reweighter => "e.g. `reweight recap` or `reweight uniform`",
                Kind::Mixer => "e.g. `mix uniform` or `mix round_robin`",
                _ => "give a value after the keyword",
            }
            .to_string(),
            P::BlockNeedsCall => "a block holds named arguments of the call before it, e.g. `grpo(math) { group = 8 }`".to_string(),
            P::TrainTakesBlock => "write `train { steps = 500 ... }`".to_string(),
        }
    }
}

/// What to write instead of a value that does not fit `ty`.
fn misfit_help(misfit: &Misfit, ty: &Ty) -> String {
    match misfit {
        Misfit::ListOfOne { item } => format!("put it in a list: `[{item}]`"),
        Misfit::PercentForNumber => {
            "a percentage is not a plain number here; write the number itself (10% -> 0.1)"
                .to_string()
        }
        Misfit::NumberForPercent => {
            "write a percentage with `%` (10%), or a whole number of steps".to_string()
        }
        Misfit::Kind { wanted } => format!("pass {wanted} here"),
        Misfit::Quoted { text } => format!("write it without quotes: `{text}`"),
        Misfit::Fraction { value } => format!("write a whole number, e.g. {}", value.round()),
        Misfit::NotAMember { members } => match ty {
            Ty::Enum(e) => format!("`{e}` is one of: {members}"),
            _ => format!("one of: {members}"),
        },
        Misfit::NotMade { made_by } => format!("write a call that gives {ty}: {made_by}"),
        Misfit::Other => format!("pass a value of type {ty}"),
    }
}

/// The verb of an operator, for messages: "cannot add ...".
fn verb(op: BinOp) -> &'static str {
    match op {
        BinOp::Add => "add",
        BinOp::Sub => "subtract",
        BinOp::Mul => "multiply",
        BinOp::Div => "divide",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A mismatch's code follows why the value does not fit: units, kinds, or types.
    #[test]
    fn a_mismatch_takes_its_code_from_the_misfit() {
        let mismatch = |misfit| TypecheckProblem::Mismatch {
            what: "`lr` of `adamw`".to_string(),
            ty: &Ty::Float,
            found: "the percentage 10%".to_string(),
            misfit,
        };
        let code = |m| mismatch(m).code();
        assert_eq!(
            code(Misfit::PercentForNumber),
            "recap::typecheck::unit_mismatch"
        );
        assert_eq!(
            code(Misfit::Kind {
                wanted: "a source".to_string()
            }),
            "recap::typecheck::wrong_kind"
        );
        assert_eq!(code(Misfit::Other), "recap::typecheck::type_mismatch");
        assert_eq!(
            mismatch(Misfit::Other).message(),
            "`lr` of `adamw` expects float, found the percentage 10%"
        );
    }
}
