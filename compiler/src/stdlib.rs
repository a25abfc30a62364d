//! The standard library: takes the embedded `stdlib/*.recap` sources, parses them once with
//! the same parser as user files (`OnceLock`), and gives the signature table the checker
//! consults (functions by name, with overloads by result kind; enums and their members) and
//! the documentation of every entry.

use crate::ast::{self, ItemKind, Range};
use crate::types::{Kind, Ty};
use std::collections::BTreeMap;
use std::sync::OnceLock;

/// The stdlib modules: name and source text.
pub const MODULES: &[(&str, &str)] = &[
    ("models", include_str!("../../stdlib/models.recap")),
    ("sources", include_str!("../../stdlib/sources.recap")),
    ("verifiers", include_str!("../../stdlib/verifiers.recap")),
    ("objectives", include_str!("../../stdlib/objectives.recap")),
    (
        "reweighters",
        include_str!("../../stdlib/reweighters.recap"),
    ),
    ("mixers", include_str!("../../stdlib/mixers.recap")),
    ("training", include_str!("../../stdlib/training.recap")),
];

#[derive(Debug, Clone)]
pub struct ParamDef {
    pub name: String,
    pub ty: Ty,
    /// The default as written in the stdlib, evaluated by the checker where it is used.
    pub default: Option<ast::Expr>,
    /// `T?`: may be absent.
    pub optional: bool,
    /// `..name`: collects the named arguments no other parameter takes.
    pub variadic: bool,
    pub range: Option<Range>,
}

impl ParamDef {
    pub fn required(&self) -> bool {
        self.default.is_none() && !self.optional && !self.variadic && self.name != "self"
    }

    /// `group: int = 8 in [2, inf)` for help lines and docs.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}{}: {}{}",
            if self.variadic { ".." } else { "" },
            self.name,
            self.ty,
            if self.optional { "?" } else { "" }
        );
        if let Some(d) = &self.default {
            s.push_str(&format!(" = {}", crate::ast::render_expr(d)));
        }
        if let Some(r) = &self.range {
            s.push_str(&format!(" in {}", r.describe()));
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct Signature {
    pub name: String,
    pub module: &'static str,
    pub doc: String,
    pub params: Vec<ParamDef>,
    pub ret: Kind,
    /// Fields a returned source always provides.
    pub ret_fields: Vec<String>,
}

impl Signature {
    pub fn param(&self, name: &str) -> Option<&ParamDef> {
        self.param_slot(name).map(|(_, p)| p)
    }
    /// The position among `params` and the definition of the non-variadic parameter `name`.
    pub fn param_slot(&self, name: &str) -> Option<(usize, &ParamDef)> {
        let i = self.param_index(name)?;
        Some((i, self.params.get(i)?))
    }
    /// The position of the non-variadic parameter `name` among `params`.
    pub fn param_index(&self, name: &str) -> Option<usize> {
        self.params
            .iter()
            .position(|p| p.name == name && !p.variadic)
    }
    pub fn variadic(&self) -> Option<&ParamDef> {
        self.params.iter().find(|p| p.variadic)
    }
    pub fn has_self(&self) -> bool {
        self.params.iter().any(|p| p.name == "self")
    }
    /// `fn grpo(source: Source, ...) -> Objective`
    pub fn describe(&self) -> String {
        let ps: Vec<String> = self.params.iter().map(|p| p.describe()).collect();
        let fields = if self.ret_fields.is_empty() {
            String::new()
        } else {
            format!("{{{}}}", self.ret_fields.join(", "))
        };
        format!(
            "fn {}({}) -> {}{}",
            self.name,
            ps.join(", "),
            self.ret.name(),
            fields
        )
    }
}

#[derive(Debug, Clone)]
pub struct EnumDef {
    pub name: String,
    pub module: &'static str,
    pub doc: String,
    pub members: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Stdlib {
    pub fns: BTreeMap<String, Vec<Signature>>,
    pub enums: BTreeMap<String, EnumDef>,
    /// Problems found while reading the stdlib itself (a bug, reported as internal errors).
    pub errors: Vec<String>,
    /// Every enum member, for quick name lookups.
    members: std::collections::HashSet<String>,
}

impl Stdlib {
    pub fn is_enum_member(&self, name: &str) -> bool {
        self.members.contains(name)
    }
    /// The stdlib's own copy of the enum member `name`: values hold it without a copy.
    pub fn enum_member(&self, name: &str) -> Option<&str> {
        self.members.get(name).map(|m| m.as_str())
    }
    pub fn enum_has(&self, enum_name: &str, member: &str) -> bool {
        self.enums
            .get(enum_name)
            .is_some_and(|e| e.members.iter().any(|m| m == member))
    }
    pub fn is_module(&self, name: &str) -> bool {
        MODULES.iter().any(|(m, _)| *m == name)
    }
}

/// The stdlib, parsed on first use.
pub fn stdlib() -> &'static Stdlib {
    static STD: OnceLock<Stdlib> = OnceLock::new();
    STD.get_or_init(load)
}

fn load() -> Stdlib {
    let mut std = Stdlib::default();
    // Enums first, so that function signatures can name them.
    let mut files = Vec::new();
    for (module, text) in MODULES {
        let (file, diags) = crate::parse::parse(text);
        for d in diags {
            std.errors
                .push(format!("stdlib/{module}.recap: {}", d.message));
        }
        if let Some(f) = file {
            files.push((*module, f));
        }
    }
    for (module, file) in &files {
        for item in &file.items {
            if let ItemKind::Enum { name, members } = &item.kind {
                std.enums.insert(
                    name.name.to_string(),
                    EnumDef {
                        name: name.name.to_string(),
                        module,
                        doc: item.doc.clone().unwrap_or_default(),
                        members: members.iter().map(|m| m.name.to_string()).collect(),
                    },
                );
            }
        }
    }
    std.members = std
        .enums
        .values()
        .flat_map(|e| e.members.iter().cloned())
        .collect();
    let enum_names: Vec<String> = std.enums.keys().cloned().collect();
    let is_enum = |n: &str| enum_names.iter().any(|e| e == n);
    for (module, file) in &files {
        for item in &file.items {
            match &item.kind {
                ItemKind::Fn(sig) => {
                    let Some(ret) = Kind::from_name(&sig.ret.name) else {
                        std.errors.push(format!(
                            "{}: unknown result kind {}",
                            sig.name.name, sig.ret.name
                        ));
                        continue;
                    };
                    let mut params = Vec::new();
                    for p in &sig.params {
                        match Ty::from_ast(&p.ty, &is_enum) {
                            Ok(ty) => params.push(ParamDef {
                                name: p.name.name.to_string(),
                                ty,
                                default: p.default.clone(),
                                optional: p.ty.optional,
                                variadic: p.variadic,
                                range: p.range,
                            }),
                            Err(n) => std
                                .errors
                                .push(format!("{}: unknown type {n}", sig.name.name)),
                        }
                    }
                    if item.doc.is_none() {
                        std.errors
                            .push(format!("{}: missing doc comment", sig.name.name));
                    }
                    std.fns
                        .entry(sig.name.name.to_string())
                        .or_default()
                        .push(Signature {
                            name: sig.name.name.to_string(),
                            module,
                            doc: item.doc.clone().unwrap_or_default(),
                            params,
                            ret,
                            ret_fields: sig.ret_fields.iter().map(|f| f.name.to_string()).collect(),
                        });
                }
                ItemKind::Enum { .. } => {}
                _ => std.errors.push(format!(
                    "stdlib/{module}.recap holds an item that is not fn or enum"
                )),
            }
        }
    }
    std
}

/// One documented stdlib entry, for `recapc explain`, hover, completion and the reference docs.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StdlibDoc {
    pub name: String,
    pub module: String,
    /// `fn ...` or `enum ...` as the checker understands it.
    pub signature: String,
    pub doc: String,
}

/// Documentation of every stdlib function and enum, by module then name.
pub fn docs() -> Vec<StdlibDoc> {
    let std = stdlib();
    let mut out = Vec::new();
    for sigs in std.fns.values() {
        for s in sigs {
            out.push(StdlibDoc {
                name: s.name.clone(),
                module: s.module.to_string(),
                signature: s.describe(),
                doc: s.doc.clone(),
            });
        }
    }
    for e in std.enums.values() {
        out.push(StdlibDoc {
            name: e.name.clone(),
            module: e.module.to_string(),
            signature: format!("enum {} {{ {} }}", e.name, e.members.join(", ")),
            doc: e.doc.clone(),
        });
    }
    out.sort_by(|a, b| (&a.module, &a.name).cmp(&(&b.module, &b.name)));
    out
}

#[cfg(test)]
mod tests {
    /// A call's arguments are found by parameter name (`Signature::param_index`), one slot per
    /// parameter: a repeated name would leave its second slot unreachable.
    #[test]
    fn parameter_names_are_unique_in_every_signature() {
        for (name, sigs) in &super::stdlib().fns {
            for sig in sigs {
                let mut seen = std::collections::BTreeSet::new();
                for p in &sig.params {
                    assert!(seen.insert(&p.name), "`{name}` repeats `{}`", p.name);
                }
            }
        }
    }
}
