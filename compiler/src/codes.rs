//! The diagnostic codes: takes nothing in; gives every code the compiler can emit with its long
//! explanation, for `recapc explain`, the docs and the tests that check every emitted code is
//! listed. A converted stage declares its codes beside its problem enum (`validate::problems`,
//! `internal`), so they are listed from there and cannot drift from what the stage emits.

use crate::diagnostic::ProblemCode;
use crate::internal::InternalCode;
use crate::parse::ParseCode;
use crate::resolve::ResolveCode;
use crate::validate::ValidateCode;

/// The codes of the stages whose problems are not yet enums (parse, resolve, typecheck), as
/// (code, explanation). Each moves beside its stage's problem enum when the stage is
/// converted; until then the stage writes its codes as strings, which must match these.
const AWAITING_CONVERSION: &[(&str, &str)] = &[
    ("recap::typecheck::wrong_kind", "A value of one kind stands where another is expected: a verifier where a source is expected, an `sft` objective declared as a `verifier`, a mixer given to `reweight`. Each declaration keyword fixes the kind of its value, and each stdlib parameter has a kind."),
    ("recap::typecheck::type_mismatch", "A value has the wrong type for its parameter: a string where a number is expected, a float where an int is expected (`group = 4.5`), an unknown enum member (`estimator = k4`). The message names the expected type; `recapc explain` on the stdlib entry shows the full signature."),
    ("recap::typecheck::unit_mismatch", "A percentage and a plain number are mixed up: `lr = 10%` where a float is expected, `warmup = 0.1` where steps or a percentage are expected, or `10% + 1`. Write `0.1` for a fraction and `10%` for a percentage of the stage's steps."),
    ("recap::typecheck::out_of_range", "A value lies outside the range its parameter allows, e.g. `group = 1` (GRPO needs at least 2 completions per prompt to compare), `temperature = 0` (must be > 0), `alpha = 1.5` (0 < alpha < 1), `lr = 0`. Ranges are written in each stdlib signature in interval notation, `[2, inf)`. Overrides from `--set` are checked against the param's range too."),
    ("recap::typecheck::missing_argument", "A stdlib call leaves out a required parameter (one without a default), e.g. `jsonl(\"f.jsonl\")` without `prompt`, or `train { }` without `steps`. Add it positionally or by name."),
    ("recap::typecheck::unknown_argument", "A named argument (or block field) is not a parameter of the function. The help line suggests the closest parameter name."),
    ("recap::typecheck::duplicate_argument", "The same parameter is given twice, e.g. positionally and by name, or in the call and in the block."),
    ("recap::typecheck::too_many_arguments", "A call has more positional arguments than the function's positional parameters. Name the extra ones, or remove them."),
    ("recap::typecheck::not_a_method", "A function is called as a method (`x.f()`) but has no `self` parameter, or the other way round. Extractors (`after`, `tag`, `last_number`, ...) are methods; other functions are called as `f(...)`."),
    ("recap::typecheck::ambiguous_name", "A stdlib name has several meanings (`uniform` is a reweighter and a mixer) and nothing says which one is meant. Use it where the kind is known: after `mix` or `reweight`, or as a parameter of that kind."),
    ("recap::typecheck::nonlinear_reward", "Two rewards are multiplied or divided. Reward terms are linear combinations of verifiers (`0.1 * format + accuracy`), which keeps every term a weighted sum the reweighter can balance."),
    ("recap::typecheck::invalid_operands", "Arithmetic on values it means nothing for: adding strings, negating a model, adding a number to a verifier. Arithmetic works on numbers, on percentages, and on verifiers scaled by numbers."),
    ("recap::typecheck::division_by_zero", "A constant expression divides by zero, e.g. `steps / 0` or a reward divided by 0. recap folds constant arithmetic at check time, so the division is reported where it is written."),
    ("recap::typecheck::overflow", "A constant integer expression overflows 64 bits, or a float expression is no longer finite. recap folds constants at check time; use smaller numbers."),
    ("recap::typecheck::unknown_field", "A field path names a field the source does not provide, e.g. `math.solution` when `math` maps only `prompt` and `answer`. A `jsonl` source provides `prompt` and the fields of its block; generators provide the fields of their signature (`-> Source{prompt, answer}`)."),
    ("recap::typecheck::no_fields", "A field path is used on something that is not a source (`policy.answer`). Only sources have fields."),
    ("recap::typecheck::block_not_allowed", "A block `{ ... }` follows something that is not a stdlib call (`verifier v = other { ... }`), or `train` is given a value instead of a block. A block holds the named arguments of the call before it."),
    ("recap::typecheck::missing_value", "`reweight` or `mix` is written without a policy. Write e.g. `reweight recap` or `mix uniform`."),
    ("recap::typecheck::bad_param_type", "A `param` has a type that cannot come from the command line. Params are int, float, bool, string, percent or path."),];

/// Every code with its explanation, by stage in pipeline order, internal errors last.
pub fn codes() -> impl Iterator<Item = (&'static str, &'static str)> {
    listed::<ParseCode>()
        .chain(listed::<ResolveCode>())
        .chain(AWAITING_CONVERSION.iter().copied())
        .chain(listed::<ValidateCode>())
        .chain(listed::<InternalCode>())
}

/// The codes of a converted stage with their explanations.
fn listed<C: ProblemCode>() -> impl Iterator<Item = (&'static str, &'static str)> {
    C::ALL.iter().map(|c| (c.code(), c.explanation()))
}
