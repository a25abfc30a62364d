//! The diagnostic codes: takes nothing in; gives every code the compiler can emit with its long
//! explanation, for `recapc explain`, the docs and the tests that check every emitted code is
//! listed. Each stage declares its codes beside its problem enum (`parse::problems`,
//! `resolve::problems`, `typecheck::problems`, `validate::problems`, `internal`), so they are
//! listed from there and cannot drift from what the stage emits.

use crate::diagnostic::ProblemCode;
use crate::internal::InternalCode;
use crate::parse::ParseCode;
use crate::resolve::ResolveCode;
use crate::typecheck::TypecheckCode;
use crate::validate::ValidateCode;

/// Every code with its explanation, by stage in pipeline order, internal errors last.
pub fn codes() -> impl Iterator<Item = (&'static str, &'static str)> {
    listed::<ParseCode>()
        .chain(listed::<ResolveCode>())
        .chain(listed::<TypecheckCode>())
        .chain(listed::<ValidateCode>())
        .chain(listed::<InternalCode>())
}

/// The codes of a stage with their explanations.
fn listed<C: ProblemCode>() -> impl Iterator<Item = (&'static str, &'static str)> {
    C::ALL.iter().map(|c| (c.code(), c.explanation()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each stage's codes name that stage, `recap::<stage>::<name>`, so a code declared in the
    /// wrong enum is caught.
    #[test]
    fn every_code_names_its_stage() {
        fn names<C: ProblemCode + std::fmt::Debug>(stage: &str) {
            for c in C::ALL {
                assert_eq!(c.code().split("::").nth(1), Some(stage), "{c:?}");
            }
        }
        names::<ParseCode>("parse");
        names::<ResolveCode>("resolve");
        names::<TypecheckCode>("typecheck");
        names::<ValidateCode>("validate");
        names::<InternalCode>("internal");
    }
}
