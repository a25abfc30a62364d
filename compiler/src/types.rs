//! Types of the recap language. Takes type expressions of stdlib signatures and params in;
//! gives `Ty`, the type the checker compares values against, and `Kind`, the kinds of
//! declarations and stdlib results.

use crate::ast::TypeExpr;
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Model,
    Source,
    Verifier,
    Reward,
    Extractor,
    Objective,
    Kl,
    Reweighter,
    Mixer,
    Optimizer,
    Schedule,
    Checkpoint,
    Eval,
    Train,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Model,
        Kind::Source,
        Kind::Verifier,
        Kind::Reward,
        Kind::Extractor,
        Kind::Objective,
        Kind::Kl,
        Kind::Reweighter,
        Kind::Mixer,
        Kind::Optimizer,
        Kind::Schedule,
        Kind::Checkpoint,
        Kind::Eval,
        Kind::Train,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Model => "Model",
            Kind::Source => "Source",
            Kind::Verifier => "Verifier",
            Kind::Reward => "Reward",
            Kind::Extractor => "Extractor",
            Kind::Objective => "Objective",
            Kind::Kl => "Kl",
            Kind::Reweighter => "Reweighter",
            Kind::Mixer => "Mixer",
            Kind::Optimizer => "Optimizer",
            Kind::Schedule => "Schedule",
            Kind::Checkpoint => "Checkpoint",
            Kind::Eval => "Eval",
            Kind::Train => "Train",
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether a value of kind `self` may stand where `want` is expected (a verifier is a
    /// reward of one term).
    pub fn fits(self, want: Kind) -> bool {
        self == want || (self == Kind::Verifier && want == Kind::Reward)
    }

    /// "a model", "an objective", for messages.
    pub fn article(self) -> String {
        let n = self.name().to_lowercase();
        if n.starts_with(['a', 'e', 'i', 'o', 'u']) {
            format!("an {n}")
        } else {
            format!("a {n}")
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Ty {
    Int,
    Float,
    Bool,
    Str,
    /// A string whose `{name}` placeholders are fields of the data row.
    Template,
    /// A string naming a file the checker asks the host about.
    Path,
    Percent,
    /// A field of a source, `math.answer`.
    Field,
    Kind(Kind),
    /// An enum declared in the stdlib, by name.
    Enum(String),
    List(Box<Ty>),
    Union(Vec<Ty>),
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Int => write!(f, "int"),
            Ty::Float => write!(f, "float"),
            Ty::Bool => write!(f, "bool"),
            Ty::Str => write!(f, "string"),
            Ty::Template => write!(f, "template"),
            Ty::Path => write!(f, "path"),
            Ty::Percent => write!(f, "percent"),
            Ty::Field => write!(f, "Field"),
            Ty::Kind(k) => write!(f, "{}", k.name()),
            Ty::Enum(n) => write!(f, "{n}"),
            Ty::List(t) => write!(f, "list[{t}]"),
            Ty::Union(ts) => {
                let parts: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
                write!(f, "{}", parts.join(" | "))
            }
        }
    }
}

impl Ty {
    /// Converts a type expression; `is_enum` says whether a name is a stdlib enum. Unknown
    /// names give `Err(name)`.
    pub fn from_ast(t: &TypeExpr, is_enum: &dyn Fn(&str) -> bool) -> Result<Ty, String> {
        let mut alts = Vec::new();
        for a in &t.alternatives {
            let name = a.name.name.as_str();
            let ty = match (name, &a.arg) {
                ("list", Some(inner)) => Ty::List(Box::new(Ty::from_ast(inner, is_enum)?)),
                (_, Some(_)) => return Err(name.to_string()),
                ("int", None) => Ty::Int,
                ("float", None) => Ty::Float,
                ("bool", None) => Ty::Bool,
                ("string", None) => Ty::Str,
                ("template", None) => Ty::Template,
                ("path", None) => Ty::Path,
                ("percent", None) => Ty::Percent,
                ("Field", None) => Ty::Field,
                (n, None) => match Kind::from_name(n) {
                    Some(k) => Ty::Kind(k),
                    None if is_enum(n) => Ty::Enum(n.to_string()),
                    None => return Err(n.to_string()),
                },
            };
            alts.push(ty);
        }
        if alts.len() == 1 {
            Ok(alts.remove(0))
        } else {
            Ok(Ty::Union(alts))
        }
    }

    /// The alternatives of a union, or the type itself.
    /// The alternatives of a union, or the type itself; a slice, as this is asked once per
    /// argument checked.
    pub fn alternatives(&self) -> &[Ty] {
        match self {
            Ty::Union(ts) => ts,
            t => std::slice::from_ref(t),
        }
    }

    /// The kind this type expects, when it expects exactly one.
    pub fn kind(&self) -> Option<Kind> {
        match self {
            Ty::Kind(k) => Some(*k),
            _ => None,
        }
    }
}
