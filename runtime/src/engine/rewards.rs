//! Verifiers and reward terms of a plan: takes `recap_plan::Verifier`s and `RewardTerm`s, gives
//! built verifiers (the plan's extractor chain applied to the completion, then a
//! `train::verifiers::Verifier` on the extracted text) and per-completion term outcomes.
//!
//! A reward term is a weighted sum of verifiers; it is not applicable to a completion only when
//! none of its verifiers applies. A verifier that panics is reported (with the sample) and
//! counts as not applicable, so one bad call does not end the run.

use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use recap_plan::{Extractor, RewardTerm, VerifierSpec};
use serde_json::{Map, Value};

use super::data::apply_extractor;
use crate::train::verifiers::{
    verify_caught, LengthUnit, MatchMode, NumberPick, Outcome, Sample, Verifier as TrainVerifier,
    VerifierConfig, VerifierFailure, VerifierKind, Verify,
};

/// A plan verifier: the extractor chain of the plan, then the built-in judgement.
pub struct PlanVerifier {
    name: String,
    extract: Option<Extractor>,
    inner: TrainVerifier,
}

impl Verify for PlanVerifier {
    fn name(&self) -> &str {
        &self.name
    }

    fn verify(&self, sample: &Sample) -> Outcome {
        let text = match &self.extract {
            Some(ex) if !ex.steps.is_empty() => {
                match apply_extractor(ex, Some(sample.fields), sample.completion) {
                    Some(t) => t,
                    // An answer the extractor cannot find is a wrong answer, as in TRL's reward
                    // functions; it is not "not applicable".
                    None => return Outcome::Score(0.0),
                }
            }
            _ => sample.completion.to_string(),
        };
        self.inner.verify(&Sample {
            completion: &text,
            ..*sample
        })
    }
}

/// Builds one plan verifier.
pub fn build_verifier(v: &recap_plan::Verifier) -> Result<PlanVerifier> {
    let (kind, extract) = match &v.spec {
        VerifierSpec::Regex { pattern, extract } => (
            VerifierKind::Regex {
                pattern: pattern.to_string(),
                mode: MatchMode::Partial,
            },
            Some(extract.clone()),
        ),
        VerifierSpec::Exact {
            expected,
            extract,
            ignore_case,
        } => (
            VerifierKind::Exact {
                expected: expected.field.to_string(),
                trim: true,
                ignore_case: *ignore_case,
                collapse_whitespace: false,
            },
            Some(extract.clone()),
        ),
        VerifierSpec::Numeric {
            expected,
            extract,
            tolerance,
        } => (
            VerifierKind::Numeric {
                expected: expected.field.to_string(),
                // The plan's extractor has already picked the number (last_number by default,
                // or first_number); what is left must start with it.
                pick: if extract.steps.is_empty() {
                    NumberPick::Last
                } else {
                    NumberPick::Leading
                },
                abs_tol: *tolerance,
                rel_tol: 0.0,
            },
            Some(extract.clone()),
        ),
        VerifierSpec::MathEqual { expected, extract } => (
            VerifierKind::MathEqual {
                expected: expected.field.to_string(),
                rel_tol: 1e-9,
            },
            Some(extract.clone()),
        ),
        VerifierSpec::Choice {
            expected,
            extract,
            options,
        } => (
            VerifierKind::Choice {
                expected: expected.field.to_string(),
                letters: options.to_string(),
            },
            Some(extract.clone()),
        ),
        VerifierSpec::Iou {
            expected,
            extract,
            threshold,
        } => (
            VerifierKind::Iou {
                expected: expected.field.to_string(),
                threshold: *threshold,
            },
            Some(extract.clone()),
        ),
        VerifierSpec::LengthPenalty { max_tokens, target } => {
            // The stdlib's length_penalty is 1 up to `target` and falls to 0 at `max_tokens`;
            // the built-in is DAPO's 0 .. -1 penalty, so the adapter shifts it by one. The
            // built-in needs its limit past the target; a target at or past `max_tokens`
            // (which the checker warns of: recap::validate::penalty_target) becomes a step
            // at `target`, its limit moved to `target + 1`.
            return Ok(PlanVerifier {
                name: v.name.to_string(),
                extract: None,
                inner: TrainVerifier::new(VerifierConfig {
                    name: v.name.to_string(),
                    kind: VerifierKind::LengthPenalty {
                        unit: LengthUnit::Tokens,
                        target: target.unwrap_or(0) as usize,
                        limit: (*max_tokens as usize).max(target.unwrap_or(0) as usize + 1),
                    },
                    extract: Vec::new(),
                })
                .map_err(|e| anyhow!("{e}"))?,
            });
        }
    };
    let inner = TrainVerifier::new(VerifierConfig {
        name: v.name.to_string(),
        kind,
        extract: Vec::new(),
    })
    .map_err(|e| anyhow!("{e}"))?;
    Ok(PlanVerifier {
        name: v.name.to_string(),
        extract,
        inner,
    })
}

/// All verifiers of a plan by name.
pub fn build_verifiers(plan: &recap_plan::Plan) -> Result<BTreeMap<String, PlanVerifier>> {
    plan.verifiers
        .iter()
        .map(|v| Ok((v.name.to_string(), build_verifier(v)?)))
        .collect()
}

/// A completion as the reward terms see it.
pub struct Judged<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    pub completion: &'a str,
    pub fields: &'a Map<String, Value>,
    pub tokens: usize,
}

/// Outcomes `[completion][term]` of the reward terms, and the verifier calls that panicked.
pub fn score_terms(
    verifiers: &BTreeMap<String, PlanVerifier>,
    terms: &[RewardTerm],
    items: &[Judged],
) -> Result<(Vec<Vec<Outcome>>, Vec<VerifierFailure>)> {
    let mut failures = Vec::new();
    let mut table = Vec::with_capacity(items.len());
    for it in items {
        let sample = Sample {
            id: it.id,
            prompt: it.prompt,
            completion: it.completion,
            fields: it.fields,
            completion_tokens: Some(it.tokens),
        };
        let mut row = Vec::with_capacity(terms.len());
        for term in terms {
            let (mut sum, mut applied, mut reasons) = (0.0, false, Vec::new());
            for part in &term.parts {
                let v = verifiers.get(part.verifier.as_str()).ok_or_else(|| {
                    anyhow!(
                        "reward term `{}` names unknown verifier `{}`",
                        term.name,
                        part.verifier
                    )
                })?;
                let outcome = match verify_caught(v, &sample) {
                    Ok(o) => o,
                    Err(f) => {
                        let reason = f.to_string();
                        failures.push(f);
                        Outcome::NotApplicable(reason)
                    }
                };
                let outcome = match (&v.inner.config().kind, outcome) {
                    (VerifierKind::LengthPenalty { .. }, Outcome::Score(s)) => {
                        Outcome::Score(1.0 + s)
                    }
                    (_, o) => o,
                };
                match outcome {
                    Outcome::Score(s) => {
                        sum += part.weight * s;
                        applied = true;
                    }
                    Outcome::NotApplicable(r) => reasons.push(r),
                }
            }
            row.push(if applied {
                Outcome::Score(sum)
            } else {
                Outcome::NotApplicable(reasons.join("; "))
            });
        }
        table.push(row);
    }
    Ok((table, failures))
}

#[cfg(test)]
mod tests {
    use super::*;
    use recap_plan::{Expected, ExtractStep, Verifier, WeightedVerifier};

    fn verifiers() -> BTreeMap<String, PlanVerifier> {
        let vs = [
            Verifier {
                name: "acc".into(),
                spec: VerifierSpec::Numeric {
                    expected: Expected {
                        field: "answer".into(),
                    },
                    extract: Extractor {
                        steps: vec![ExtractStep::FirstNumber],
                    },
                    tolerance: 1e-6,
                },
            },
            Verifier {
                name: "fmt".into(),
                spec: VerifierSpec::Regex {
                    pattern: r"^\d".into(),
                    extract: Extractor { steps: vec![] },
                },
            },
            Verifier {
                name: "short".into(),
                spec: VerifierSpec::LengthPenalty {
                    max_tokens: 10,
                    target: Some(4),
                },
            },
        ];
        vs.iter()
            .map(|v| (v.name.to_string(), build_verifier(v).unwrap()))
            .collect()
    }

    #[test]
    fn terms_combine_weighted_verifiers() {
        let vs = verifiers();
        let terms = vec![
            RewardTerm {
                name: "r".into(),
                parts: vec![
                    WeightedVerifier {
                        weight: 1.0,
                        verifier: "acc".into(),
                    },
                    WeightedVerifier {
                        weight: 0.1,
                        verifier: "fmt".into(),
                    },
                ],
            },
            RewardTerm {
                name: "len".into(),
                parts: vec![WeightedVerifier {
                    weight: 1.0,
                    verifier: "short".into(),
                }],
            },
        ];
        let with = |a: &str| -> Map<String, Value> {
            serde_json::from_str(&format!(r#"{{"answer": "{a}"}}"#)).unwrap()
        };
        let (f42, none) = (with("42"), Map::new());
        let items = [
            Judged {
                id: "a",
                prompt: "",
                completion: "42 ok",
                fields: &f42,
                tokens: 4,
            },
            Judged {
                id: "b",
                prompt: "",
                completion: "x 42",
                fields: &f42,
                tokens: 7,
            },
            Judged {
                id: "c",
                prompt: "",
                completion: "7",
                fields: &f42,
                tokens: 12,
            },
            Judged {
                id: "d",
                prompt: "",
                completion: "7",
                fields: &none,
                tokens: 1,
            },
        ];
        let (t, failures) = score_terms(&vs, &terms, &items).unwrap();
        assert!(failures.is_empty());
        let s = |i: usize, j: usize| t[i][j].score();
        assert_eq!(s(0, 0), Some(1.1));
        assert_eq!(s(1, 0), Some(1.0));
        assert_eq!(s(2, 0), Some(0.1));
        // No `answer`: accuracy does not apply, format still does.
        assert_eq!(s(3, 0), Some(0.1));
        // 1 up to 4 tokens, 0.5 at 7, 0 beyond 10.
        assert_eq!(s(0, 1), Some(1.0));
        assert!((s(1, 1).unwrap() - 0.5).abs() < 1e-12);
        assert_eq!(s(2, 1), Some(0.0));
    }

    #[test]
    fn unknown_verifier_in_a_term_is_an_error() {
        let terms = vec![RewardTerm {
            name: "r".into(),
            parts: vec![WeightedVerifier {
                weight: 1.0,
                verifier: "nope".into(),
            }],
        }];
        let f = Map::new();
        let items = [Judged {
            id: "a",
            prompt: "",
            completion: "",
            fields: &f,
            tokens: 0,
        }];
        let err = score_terms(&verifiers(), &terms, &items).err().unwrap();
        assert!(err.to_string().contains("nope"));
    }
}
