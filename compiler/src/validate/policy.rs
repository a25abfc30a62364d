//! Validate's rules about the policy, the one model the job trains: named or the only
//! trainable model, not frozen, the same in every stage.

use super::problems::ValidateProblem;
use super::{setting_call, V};
use crate::ast::DeclKind;
use crate::diagnostic::{Problem, Span};
use crate::resolve::{EntityId, EntityKind, Resolved};
use crate::typecheck::{Typed, Value};

impl V<'_, '_, '_, '_> {
    pub(super) fn is_frozen(&self, id: EntityId) -> bool {
        self.typed.call(id).is_some_and(|c| c.name() == "frozen")
    }

    /// The model every stage trains: the one `train { policy = ... }` names, or else the only
    /// model that is neither frozen nor the base of a `lora` (whose weights stay frozen).
    pub(super) fn policy(&mut self) -> Option<EntityId> {
        let bases = self.lora_bases();
        let trainable: Vec<EntityId> = self
            .decls(DeclKind::Model)
            .filter(|&id| {
                self.typed.call(id).is_some() && !self.is_frozen(id) && !bases.contains(&id)
            })
            .collect();
        let mut chosen: Option<(EntityId, Span)> = None;
        for (i, sv) in self.typed.stages.iter().enumerate() {
            let Some((t, _)) = setting_call(&sv.train) else {
                continue;
            };
            // A `policy` with an error names no model that this rule could hold to account.
            if t.broken("policy") {
                continue;
            }
            let explicit = t.get("policy").and_then(|p| match &p.v {
                Value::Decl(id, _) => Some((*id, p.span)),
                _ => None,
            });
            let pick = match explicit {
                Some((id, span)) => self.named_policy(id, span),
                None => self.implied_policy(&trainable, i == 0, sv.train_span),
            };
            let Some((id, span)) = pick else {
                continue;
            };
            match chosen {
                None => chosen = Some((id, span)),
                Some((prev, prev_span)) if prev != id => {
                    let problem = ValidateProblem::PolicyChanges;
                    self.diags.push(
                        problem
                            .at(span, format!("trains `{}`", self.res.name(id)))
                            .label(
                                prev_span,
                                format!("an earlier stage trains `{}`", self.res.name(prev)),
                            ),
                    );
                }
                _ => {}
            }
        }
        chosen.map(|(id, _)| id)
    }

    /// The policy a `train` setting names at `span`, unless it is frozen.
    fn named_policy(&mut self, id: EntityId, span: Span) -> Option<(EntityId, Span)> {
        if self.is_frozen(id) {
            let problem = ValidateProblem::PolicyIsFrozen {
                policy: self.res.name(id),
            };
            self.diags
                .push(problem.at(span, "frozen models are never trained"));
            return None;
        }
        Some((id, span))
    }

    /// The policy of a `train` setting (at `train_span`) that names none: the only trainable
    /// model. No model is reported once, at the first stage, and only when every item
    /// parsed and every declaration has a value (a model lost to an earlier error is no news).
    fn implied_policy(
        &mut self,
        trainable: &[EntityId],
        first_stage: bool,
        train_span: Span,
    ) -> Option<(EntityId, Span)> {
        match trainable {
            [one] => Some((*one, train_span)),
            [] => {
                if first_stage && self.complete && self.typed.call_errors_free(self.res) {
                    let problem = ValidateProblem::NoPolicy;
                    self.diags.push(problem.at(train_span, "trains nothing"));
                }
                None
            }
            [first, second, ..] => {
                let problem = ValidateProblem::AmbiguousPolicy {
                    first: self.res.name(*first),
                };
                self.diags.push(
                    problem
                        .at(train_span, "which model does this train?")
                        .label(self.name_span(*first), "this one")
                        .label(self.name_span(*second), "or this one"),
                );
                None
            }
        }
    }
}

/// Frozen models declared as `frozen(policy)`.
pub(super) fn frozen_copies(
    res: &Resolved,
    typed: &Typed,
    policy: Option<EntityId>,
) -> Vec<EntityId> {
    (0..res.entities.len())
        .filter(|&id| {
            typed.call(id).is_some_and(|c| {
                c.name() == "frozen"
                    && res.entities.get(id).map(|e| e.kind)
                        == Some(EntityKind::Decl(DeclKind::Model))
                    && match c.decl("model") {
                        Some(m) => Some(m) == policy || policy.is_none(),
                        None => false,
                    }
            })
        })
        .collect()
}
