//! Internal errors: takes nothing in; gives the problems that mean recapc itself has a bug
//! (a tree, stdlib, program or graph that an earlier step should have ruled out), with their
//! codes and explanations. They are reported rather than panicking, so a bug costs the user a
//! message and not a crash.

use crate::diagnostic::{problem_codes, Problem};

problem_codes! {
    /// The codes of internal errors.
    pub enum InternalCode {
        ParseTree = "recap::internal::parse_tree" => "Internal error: the parser produced a tree the compiler did not expect. This is a bug in recapc; please report it with the file.",
        Stdlib = "recap::internal::stdlib" => "Internal error: the embedded standard library does not check. This is a bug in recapc; please report it.",
        Lower = "recap::internal::lower" => "Internal error: a checked program could not be lowered to a plan. This is a bug in recapc; please report it with the file.",
        Dag = "recap::internal::dag" => "Internal error: the dataflow graph of a plan has a cycle. This is a bug in recapc; please report it with the file.",
    }
}

/// An internal error and what went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InternalProblem<'a> {
    /// The parser's tree has a shape the grammar rules out (what it met).
    ParseTree(&'a str),
    /// The embedded stdlib has an error (its text).
    Stdlib(&'a str),
    /// Lowering met a shape the checks should have ruled out (what it met).
    Lower(&'a str),
    /// The dataflow graph has a cycle through the node with this id.
    DagCycle(&'a str),
}

impl Problem for InternalProblem<'_> {
    type Code = InternalCode;

    fn kind(&self) -> InternalCode {
        match self {
            InternalProblem::ParseTree(_) => InternalCode::ParseTree,
            InternalProblem::Stdlib(_) => InternalCode::Stdlib,
            InternalProblem::Lower(_) => InternalCode::Lower,
            InternalProblem::DagCycle(_) => InternalCode::Dag,
        }
    }

    fn message(&self) -> String {
        match self {
            InternalProblem::ParseTree(what)
            | InternalProblem::Stdlib(what)
            | InternalProblem::Lower(what) => {
                format!("internal error, please report: {what}")
            }
            InternalProblem::DagCycle(id) => format!(
                "internal error, please report: the dataflow graph has a cycle through `{id}`"
            ),
        }
    }

    fn help(&self) -> String {
        match self {
            InternalProblem::Stdlib(_) => "this is a bug in recapc's stdlib; please report it",
            InternalProblem::ParseTree(_)
            | InternalProblem::Lower(_)
            | InternalProblem::DagCycle(_) => {
                "this is a bug in recapc; please report it with the file"
            }
        }
        .to_string()
    }
}
