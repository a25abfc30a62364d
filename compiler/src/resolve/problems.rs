//! Resolve's problems: takes what name resolution found; gives the code, message and help line
//! of its diagnostic. The codes and their long explanations are declared here too
//! (`ResolveCode`), and `codes.rs` lists them for `recapc explain`.

use crate::diagnostic::{did_you_mean, problem_codes, Problem, Severity};
use crate::types::Ty;

problem_codes! {
    /// The codes of resolve's problems, in the order `recapc explain` lists them.
    pub enum ResolveCode {
        UnknownName = "recap::resolve::unknown_name" => "A name is used that is neither declared in the file (model, source, verifier, objective, eval, param, let) nor a stdlib function or enum member. The help line suggests the closest known name, among names of a kind that fits where the name stands when the callee's signature says (a source where a source is expected). Declarations may appear in any order; stage-local names (objectives, evals and lets inside a stage) are visible only inside that stage.",
        DuplicateName = "recap::resolve::duplicate_name" => "Two declarations (or two stages) share a name. Names are unique in the whole file, including inside stages, so plans and metrics can refer to every objective and source by name. Rename one.",
        UnknownModule = "recap::resolve::unknown_module" => "`use` names a module the stdlib does not have. The modules are models, sources, verifiers, objectives, reweighters, mixers and training (optionally prefixed `std.`). Every module is in the prelude, so `use` is optional.",
        MisplacedItem = "recap::resolve::misplaced_item" => "An item stands where it is not allowed: models, sources, verifiers, params and `use` belong at the top level; objectives and evals of a file with stages belong inside a stage; stages do not nest; `fn` and `enum` are only for the stdlib.",
        DuplicateSetting = "recap::resolve::duplicate_setting" => "A scope sets `reweight`, `mix` or `train` twice. Keep one. A stage's own setting overrides the top-level one (for `train`, field by field).",
        NotAFunction = "recap::resolve::not_a_function" => "A declared name is called like a function, e.g. `policy(...)`. Only stdlib functions can be called; use the name on its own.",
        Cycle = "recap::resolve::cycle" => "Declarations reference each other in a circle (`let a = b`, `let b = a`, or `model a = frozen(b)` with `model b = frozen(a)`), so none of them can be evaluated. The message lists the whole path; break it at one point.",
        Unused = "recap::resolve::unused" => "Warning: a param, let, source or verifier is declared but nothing uses it. Remove it, or start its name with `_` to keep it deliberately.",
        UnknownParam = "recap::resolve::unknown_param" => "`--set NAME=VALUE` names no `param` of the file. Only params can be overridden; declare one with `param steps: int = 500` and use `steps` where the value is needed.",
        BadOverride = "recap::resolve::bad_override" => "The text of a `--set NAME=VALUE` override is not a value of the param's declared type: an int for `int`, a number for `float`, `true`/`false` for `bool`, a percentage such as `10%` for `percent`.",
        UnknownWeightSource = "recap::resolve::unknown_weight_source" => "A `static(source.term = w)` key names a source that is not declared. The part before the dot must be a declared `source` (visible where the `static` is written); the help line suggests the closest source name.",
    }
}

/// An item in a place it is not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement<'a> {
    /// `use` inside a stage.
    UseInStage,
    /// `param` inside a stage.
    ParamInStage,
    /// A model, source or verifier declaration inside a stage (its keyword).
    DeclInStage(&'a str),
    /// An objective or eval at the top level of a file with stages (its keyword).
    TopLevelInStagedFile(&'a str),
    /// A stage inside a stage.
    NestedStage,
    /// `fn` outside the stdlib.
    Fn,
    /// `enum` outside the stdlib.
    Enum,
}

/// One problem name resolution found, with what its wording needs.
#[derive(Debug, Clone, PartialEq)]
pub enum ResolveProblem<'a> {
    /// A name (or, with `function`, a called name) that nothing declares, and the closest
    /// known one.
    UnknownName {
        name: &'a str,
        function: bool,
        guess: Option<&'a str>,
    },
    /// A declaration whose name is taken.
    DuplicateName { name: &'a str },
    /// A stage whose name is taken.
    DuplicateStage { name: &'a str },
    /// `use` of a module the stdlib lacks: the whole path, and the module name if the path
    /// has the shape of one.
    UnknownModule {
        path: String,
        module: Option<&'a str>,
    },
    /// An item where it is not allowed.
    Misplaced(Placement<'a>),
    /// A scope sets `reweight`, `mix` or `train` twice (the keyword).
    DuplicateSetting { keyword: &'a str },
    /// A declared name is called; `what` says what it is (`a model`, `a param`).
    NotAFunction { name: &'a str, what: String },
    /// Declarations that depend on themselves: the first one and the path back to it.
    Cycle { start: &'a str, path: &'a [String] },
    /// A declaration nothing uses (`what` it is: param, let, source, verifier).
    Unused { what: &'a str, name: &'a str },
    /// `--set key=value` names no param; `params` are the file's params.
    UnknownParam {
        key: &'a str,
        value: &'a str,
        params: &'a [&'a str],
    },
    /// `--set name=text` whose text is not a value of the param's type.
    BadOverride {
        name: &'a str,
        text: &'a str,
        ty: Ty,
    },
    /// A `static(source.term = w)` key whose source part names no declared source; the
    /// closest source name.
    UnknownWeightSource {
        key: &'a str,
        source: &'a str,
        guess: Option<&'a str>,
    },
}

impl Problem for ResolveProblem<'_> {
    type Code = ResolveCode;

    fn kind(&self) -> ResolveCode {
        use ResolveCode as C;
        use ResolveProblem as P;
        match self {
            P::UnknownName { .. } => C::UnknownName,
            P::DuplicateName { .. } | P::DuplicateStage { .. } => C::DuplicateName,
            P::UnknownModule { .. } => C::UnknownModule,
            P::Misplaced(_) => C::MisplacedItem,
            P::DuplicateSetting { .. } => C::DuplicateSetting,
            P::NotAFunction { .. } => C::NotAFunction,
            P::Cycle { .. } => C::Cycle,
            P::Unused { .. } => C::Unused,
            P::UnknownParam { .. } => C::UnknownParam,
            P::BadOverride { .. } => C::BadOverride,
            P::UnknownWeightSource { .. } => C::UnknownWeightSource,
        }
    }

    fn severity(&self) -> Severity {
        match self {
            ResolveProblem::Unused { .. } => Severity::Warning,
            _ => Severity::Error,
        }
    }

    fn message(&self) -> String {
        use ResolveProblem as P;
        match self {
            P::UnknownName { name, function, .. } => {
                format!(
                    "unknown {} `{name}`",
                    if *function { "function" } else { "name" }
                )
            }
            P::DuplicateName { name } => format!("`{name}` is declared twice"),
            P::DuplicateStage { name } => format!("stage `{name}` is declared twice"),
            P::UnknownModule { path, .. } => format!("there is no stdlib module `{path}`"),
            P::Misplaced(place) => format!("{} is not allowed here", placed_item(*place)),
            P::DuplicateSetting { keyword } => {
                format!("`{keyword}` is set twice in the same scope")
            }
            P::NotAFunction { name, what } => format!("`{name}` is {what}, not a function"),
            P::Cycle { start, path } => {
                format!("`{start}` depends on itself: {}", path.join(" -> "))
            }
            P::Unused { what, name } => format!("{what} `{name}` is never used"),
            P::UnknownParam { key, value, .. } => {
                format!("`--set {key}={value}` names no `param` of this file")
            }
            P::BadOverride { name, text, ty } => {
                format!("`--set {name}={text}`: `{text}` is not a valid {ty}")
            }
            P::UnknownWeightSource { key, source, .. } => {
                format!("`{key}` weighs a term of `{source}`, which is no declared source")
            }
        }
    }

    fn help(&self) -> String {
        use ResolveProblem as P;
        match self {
            P::UnknownName {
                guess: Some(g), ..
            } => format!("did you mean `{g}`?"),
            P::UnknownName { function: true, .. } => "see `recapc explain recap::resolve::unknown_name` and docs/language.md for the stdlib functions".to_string(),
            P::UnknownName { .. } => "declare it (model, source, verifier, let, param ...; declarations may come in any order), or check the spelling".to_string(),
            P::DuplicateName { .. } => "names are unique in the whole file; rename one of them".to_string(),
            P::DuplicateStage { .. } => "give every stage its own name".to_string(),
            P::UnknownModule { module, .. } => {
                let modules: Vec<&str> = crate::stdlib::MODULES.iter().map(|(m, _)| *m).collect();
                match module.and_then(|m| did_you_mean(m, modules.iter().copied())) {
                    Some(g) => format!("did you mean `{g}`?"),
                    None => format!("the stdlib modules are: {}", modules.join(", ")),
                }
            }
            P::Misplaced(place) => placement_help(*place).to_string(),
            P::DuplicateSetting { .. } => "keep one; a stage's setting overrides the top-level one".to_string(),
            P::NotAFunction { name, .. } => format!("use it without parentheses: `{name}`"),
            P::Cycle { .. } => "break the cycle: a declaration may only use declarations that do not use it back".to_string(),
            P::Unused { name, .. } => {
                format!("remove it, or prefix its name with `_` to keep it: `_{name}`")
            }
            P::UnknownParam { key, params, .. } => match did_you_mean(key, params.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if params.is_empty() => "declare it first: `param NAME: TYPE = VALUE`".to_string(),
                None => format!("the params are: {}", params.join(", ")),
            },
            P::BadOverride { ty, .. } => match ty {
                Ty::Percent => "write a percentage such as 10%".to_string(),
                Ty::Bool => "write true or false".to_string(),
                _ => {
                    let ty = ty.to_string();
                    // "an int", "a float": the article goes by the type name's first sound.
                    let article = if ty.starts_with(['a', 'e', 'i', 'o', 'u']) {
                        "an"
                    } else {
                        "a"
                    };
                    format!("write {article} {ty}")
                }
            },
            P::UnknownWeightSource { guess: Some(g), .. } => format!("did you mean `{g}`?"),
            P::UnknownWeightSource { .. } => {
                "the part before the dot must name a declared `source`".to_string()
            }
        }
    }
}

/// What the misplaced item is, in words.
fn placed_item(place: Placement) -> String {
    match place {
        Placement::UseInStage => "`use`".to_string(),
        Placement::ParamInStage => "`param`".to_string(),
        Placement::DeclInStage(kw) => format!("a `{kw}` declaration inside a stage"),
        Placement::TopLevelInStagedFile(kw) => format!("a top-level `{kw}` in a file with stages"),
        Placement::NestedStage => "a stage inside a stage".to_string(),
        Placement::Fn => "`fn`".to_string(),
        Placement::Enum => "`enum`".to_string(),
    }
}

/// Where the misplaced item belongs.
fn placement_help(place: Placement) -> &'static str {
    match place {
        Placement::UseInStage => "put `use` at the top of the file",
        Placement::ParamInStage => {
            "params are declared at the top level; stages read them from there"
        }
        Placement::DeclInStage(_) => {
            "declare models, sources and verifiers at the top level; stages share them"
        }
        Placement::TopLevelInStagedFile(_) => "move it into the `stage { ... }` that trains it",
        Placement::NestedStage => "stages are not nested; write them one after another",
        Placement::Fn => "functions are declared only in the standard library (stdlib/*.recap)",
        Placement::Enum => "enums are declared only in the standard library (stdlib/*.recap)",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unused declarations warn; every other resolve problem is an error.
    #[test]
    fn only_unused_declarations_warn() {
        let unused = ResolveProblem::Unused {
            what: "let",
            name: "x",
        };
        assert_eq!(unused.severity(), Severity::Warning);
        assert_eq!(
            unused.help(),
            "remove it, or prefix its name with `_` to keep it: `_x`"
        );
        let twice = ResolveProblem::DuplicateName { name: "x" };
        assert_eq!(twice.severity(), Severity::Error);
    }
}
