//! Verifiers and reward terms of a plan: takes `recap_plan::Verifier`s and `RewardTerm`s, gives
//! built verifiers (`train::verifiers::Verifier`, which runs the plan's extractor chain on the
//! completion, then its judgement, or an external grader of `graders`, which scores a batch at
//! once) and per-completion term outcomes.
//!
//! A reward term is a weighted sum of verifiers; it is not applicable to a completion only when
//! none of its verifiers applies. A verifier that panics is reported (with the sample) and
//! counts as not applicable, and an external grader that fails is reported once per batch and
//! scores 0, so one bad call does not end the run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Result};
use recap_plan::RewardTerm;
use serde_json::{Map, Value};

use super::graders::{landlock_available, External};
use crate::train::verifiers::{verify_caught, Outcome, Sample, Verifier};

/// A built verifier: one that judges a completion at a time, or an external grader.
#[derive(Debug)]
pub enum Built {
    Inline(Verifier),
    External(External),
}

/// All verifiers of a plan by name, and the warnings building them gave. `base` is the
/// pipeline's directory; `allow_exec` lets `exec` graders run (they are refused otherwise).
pub fn build_verifiers(
    plan: &recap_plan::Plan,
    base: &Path,
    allow_exec: bool,
) -> Result<(BTreeMap<String, Built>, Vec<String>)> {
    let mut built = BTreeMap::new();
    for v in &plan.verifiers {
        let b = match External::new(v, base, allow_exec)? {
            Some(e) => Built::External(e),
            None => Built::Inline(Verifier::new(v)?),
        };
        built.insert(v.name.to_string(), b);
    }
    let mut warnings = Vec::new();
    if plan.verifiers.iter().any(|v| v.spec.runs_programs()) && !landlock_available() {
        warnings.push(
            "this kernel has no Landlock, so `exec` graders are not confined to their working directory: they run with a clean environment, a memory limit and a timeout, but can read and write whatever this user can (docs/rewards.md)"
                .to_string(),
        );
    }
    Ok((built, warnings))
}

/// A completion as the reward terms see it.
pub struct Judged<'a> {
    pub id: &'a str,
    pub prompt: &'a str,
    pub completion: &'a str,
    pub fields: &'a Map<String, Value>,
    pub tokens: usize,
}

/// Outcomes `[completion][term]` of the reward terms, and what went wrong on the way: a
/// verifier call that panicked, an external grader's batch that failed.
pub fn score_terms(
    verifiers: &BTreeMap<String, Built>,
    terms: &[RewardTerm],
    items: &[Judged],
) -> Result<(Vec<Vec<Outcome>>, Vec<String>)> {
    let mut failures = Vec::new();
    let get = |name: &str, term: &str| {
        verifiers
            .get(name)
            .ok_or_else(|| anyhow!("reward term `{term}` names unknown verifier `{name}`"))
    };
    // External graders score the whole batch first, once each however many terms use them.
    let mut batched: BTreeMap<&str, Vec<Outcome>> = BTreeMap::new();
    for term in terms {
        for part in &term.parts {
            let name = part.verifier.as_str();
            if let (Built::External(e), false) =
                (get(name, &term.name)?, batched.contains_key(name))
            {
                let (outcomes, failed) = e.score(items);
                failures.extend(failed);
                batched.insert(name, outcomes);
            }
        }
    }
    let mut table = Vec::with_capacity(items.len());
    for (i, it) in items.iter().enumerate() {
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
                let outcome = match get(part.verifier.as_str(), &term.name)? {
                    Built::External(_) => batched[part.verifier.as_str()][i].clone(),
                    Built::Inline(v) => match verify_caught(v, &sample) {
                        Ok(o) => o,
                        Err(f) => {
                            let reason = f.to_string();
                            failures.push(reason.clone());
                            Outcome::NotApplicable(reason)
                        }
                    },
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
    use recap_plan::{Expected, ExtractStep, Extractor, VerifierSpec, WeightedVerifier};

    fn verifiers() -> BTreeMap<String, Built> {
        let vs = [
            recap_plan::Verifier {
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
            recap_plan::Verifier {
                name: "fmt".into(),
                spec: VerifierSpec::Regex {
                    pattern: r"^\d".into(),
                    extract: Extractor { steps: vec![] },
                },
            },
            recap_plan::Verifier {
                name: "short".into(),
                spec: VerifierSpec::LengthPenalty {
                    max_tokens: 10,
                    target: Some(4),
                },
            },
        ];
        vs.iter()
            .map(|v| (v.name.to_string(), Built::Inline(Verifier::new(v).unwrap())))
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
