//! Validate's rules about `lora(...)`: adapters go on a trainable model that has none yet, and
//! each target layer is listed once. Unknown target names are resolve's (`LoraTarget` is a
//! stdlib enum) and the rank's bounds typecheck's (its range is in the stdlib).

use super::problems::ValidateProblem;
use super::{deref, V};
use crate::ast::DeclKind;
use crate::diagnostic::Problem;
use crate::resolve::EntityId;
use crate::typecheck::{CallVal, Val, Value};

impl V<'_, '_, '_, '_> {
    /// Checks every `lora` call, declared or inline.
    pub(super) fn lora_settings(&mut self) {
        for c in std::mem::take(&mut self.calls.lora) {
            self.lora_base(c);
            self.lora_targets(c);
        }
    }

    /// The declared models that a declared `lora` adapts: their weights are frozen, so they
    /// are not candidates for the policy.
    pub(super) fn lora_bases(&self) -> Vec<EntityId> {
        self.decls(DeclKind::Model)
            .filter_map(|id| self.typed.call(id))
            .filter(|c| c.name() == "lora")
            .filter_map(|c| c.decl("model"))
            .collect()
    }

    /// The adapted model must be neither frozen nor adapted already.
    fn lora_base(&mut self, c: &CallVal) {
        let Some(v) = c.get("model") else {
            return;
        };
        let Some(base) = deref(self.typed, v) else {
            return;
        };
        let (problem, label) = match base.call().name() {
            "frozen" => (ValidateProblem::LoraOfFrozen, "a frozen model"),
            "lora" => (ValidateProblem::LoraNested, "already has adapters"),
            _ => return,
        };
        self.diags.push(problem.at(v.span, label));
    }

    /// Each target at most once; the repeat is reported where it stands.
    fn lora_targets(&mut self, c: &CallVal) {
        let Some(Val {
            v: Value::List(items),
            ..
        }) = c.get("targets")
        else {
            return;
        };
        let mut seen: Vec<&str> = Vec::with_capacity(items.len());
        for item in items {
            let Value::Enum(target) = item.v else {
                continue;
            };
            if seen.contains(&target) {
                let problem = ValidateProblem::LoraDuplicateTarget { target };
                self.diags.push(problem.at(item.span, "listed before"));
            } else {
                seen.push(target);
            }
        }
    }
}
