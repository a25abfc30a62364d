//! Lower: takes the checked program (`Resolved`, `Typed`, `Validated`) and gives the
//! `recap_plan::Plan` the runtime executes: every stdlib call turned into its typed plan
//! variant with all parameters resolved (defaults filled, percentages of steps turned into
//! step counts), inline sources and verifiers given names, rollouts shared within a stage,
//! and the stages with their own objectives, mix, reweight and train settings. Runs only on
//! programs without errors; a shape it does not expect becomes `recap::internal::lower`.

use crate::ast::DeclKind;
use crate::diagnostic::{Diagnostic, Problem, Span};
use crate::internal::InternalProblem;
use crate::resolve::{EntityId, EntityKind, Resolved};
use crate::typecheck::{CallVal, Typed, Val, Value};
use crate::validate::Validated;
use compact_str::{format_compact, CompactString};
use recap_plan as p;
use std::collections::BTreeMap;

pub fn lower(
    file_name: &str,
    res: &Resolved,
    typed: &Typed,
    validated: &Validated,
) -> Result<p::Plan, Diagnostic> {
    // The plan's lists are sized from the entities up front: growing a vector of thousands of
    // sources copies it each time and hands the allocator large blocks to free. One pass
    // counts all three kinds: the entity list of a large file is megabytes.
    let (mut verifiers, mut sources, mut models) = (0, 0, 0);
    for e in &res.entities {
        match e.kind {
            EntityKind::Decl(DeclKind::Verifier) => verifiers += 1,
            EntityKind::Decl(DeclKind::Source) => sources += 1,
            EntityKind::Decl(DeclKind::Model) => models += 1,
            _ => {}
        }
    }
    let mut l = L {
        res,
        verifiers: Vec::with_capacity(verifiers),
        sources: Vec::with_capacity(sources),
        models: Vec::with_capacity(models),
        inline: BTreeMap::new(),
        frozen: validated.frozen.clone(),
    };
    let mut params = BTreeMap::new();
    for (id, e) in res.entities.iter().enumerate() {
        match e.kind {
            EntityKind::Param => {
                let v = typed
                    .values
                    .get(id)
                    .and_then(|v| v.as_ref())
                    .ok_or_else(|| l.bug("a param without value", e.name.span))?;
                let pv = match &v.v {
                    Value::Int(i) => p::ParamValue::Int(*i),
                    Value::Float(f) => p::ParamValue::Float(*f),
                    Value::Bool(b) => p::ParamValue::Bool(*b),
                    Value::Percent(x) => p::ParamValue::Percent(*x),
                    Value::Str { text, .. } => p::ParamValue::String(text.to_string()),
                    _ => return Err(l.bug("a param of an unexpected type", e.name.span)),
                };
                params.insert(e.name.name.clone(), pv);
            }
            EntityKind::Decl(DeclKind::Model) => {
                let c = typed
                    .call(id)
                    .ok_or_else(|| l.bug("a model without value", e.name.span))?;
                let m = l.model(&e.name.name, c)?;
                l.models.push(m);
            }
            EntityKind::Decl(DeclKind::Source) => {
                let c = typed
                    .call(id)
                    .ok_or_else(|| l.bug("a source without value", e.name.span))?;
                let s = l.source(&e.name.name, c)?;
                l.sources.push(s);
            }
            EntityKind::Decl(DeclKind::Verifier) => {
                let c = typed
                    .call(id)
                    .ok_or_else(|| l.bug("a verifier without value", e.name.span))?;
                let v = l.verifier(&e.name.name, c)?;
                l.verifiers.push(v);
            }
            _ => {}
        }
    }
    let policy_id = validated
        .policy
        .ok_or_else(|| l.bug("no policy after validation", Span::default()))?;
    let policy = entity_name(res, policy_id);
    let default_out = format!("runs/{}", file_stem(file_name));
    let mut stages = Vec::new();
    for (i, st) in res.stages.iter().enumerate() {
        let name = st
            .name
            .map(|n| n.name.clone())
            .unwrap_or_else(|| CompactString::const_new("main"));
        let sv = typed
            .stages
            .get(i)
            .ok_or_else(|| l.bug("a stage without values", st.span))?;
        let train_call = match &sv.train {
            Some(Val {
                v: Value::Call(c), ..
            }) => c.as_ref(),
            _ => return Err(l.bug("a stage without train", st.span)),
        };
        let out = if res.stages.len() > 1 {
            format!("{default_out}/{name}")
        } else {
            default_out.clone()
        };
        let train = l.train(train_call, &out)?;
        let mut rollouts: Vec<p::Rollout> = Vec::with_capacity(st.members.len());
        // Rollout ids by sampling configuration, and how many configurations each source has.
        let mut rollout_ids: foldhash::HashMap<RolloutKey, p::Name> = Default::default();
        let mut per_source: foldhash::HashMap<p::Name, usize> = Default::default();
        let mut objectives = Vec::with_capacity(st.members.len());
        let mut evals = Vec::new();
        for &m in &st.members {
            let e = res
                .entities
                .get(m)
                .ok_or_else(|| l.bug("a stage member", st.span))?;
            let c = typed
                .call(m)
                .ok_or_else(|| l.bug("a member without value", e.name.span))?;
            let oname = e.name.name.clone();
            match (e.kind, c.name()) {
                (EntityKind::Decl(DeclKind::Objective), "grpo") => {
                    let source = l.source_ref(&oname, c.get("source"))?;
                    let rollout = p::Rollout {
                        id: p::Name::default(),
                        source: source.clone(),
                        group: l.u(c, "group")?,
                        max_tokens: l.u(c, "max_tokens")?,
                        temperature: l.f(c, "temperature")?,
                        top_p: l.f(c, "top_p")?,
                        top_k: l.ou(c, "top_k"),
                    };
                    let key = RolloutKey::of(&rollout);
                    let rid = match rollout_ids.get(&key) {
                        Some(id) => id.clone(),
                        None => {
                            let n = per_source.entry(source.clone()).or_insert(0);
                            *n += 1;
                            let id = if *n == 1 {
                                source.clone()
                            } else {
                                format_compact!("{source}.{n}")
                            };
                            rollout_ids.insert(key, id.clone());
                            rollouts.push(p::Rollout {
                                id: id.clone(),
                                ..rollout
                            });
                            id
                        }
                    };
                    let kl = match c.get("kl") {
                        Some(v) => Some(l.kl(v)?),
                        None => None,
                    };
                    objectives.push(p::Objective {
                        name: oname.clone(),
                        spec: p::ObjectiveSpec::Grpo {
                            source,
                            rollout: rid,
                            rewards: l.rewards(&oname, c.get("rewards"))?,
                            clip_low: l.f(c, "clip_low")?,
                            clip_high: l.f(c, "clip_high")?,
                            loss: match c.enum_("loss") {
                                Some("seq_mean_token_mean") => p::LossAggregation::SeqMeanTokenMean,
                                Some("seq_mean_token_sum_norm") => {
                                    p::LossAggregation::SeqMeanTokenSumNorm
                                }
                                _ => p::LossAggregation::TokenMean,
                            },
                            scale: match c.enum_("scale") {
                                Some("batch") => p::AdvantageScale::Batch,
                                Some("none") => p::AdvantageScale::None,
                                _ => p::AdvantageScale::Group,
                            },
                            kl,
                            drop_equal_groups: c.bool("drop_equal_groups").unwrap_or(false),
                        },
                    });
                }
                (EntityKind::Decl(DeclKind::Objective), "sft") => {
                    objectives.push(p::Objective {
                        name: oname.clone(),
                        spec: p::ObjectiveSpec::Sft {
                            source: l.source_ref(&oname, c.get("source"))?,
                            max_tokens: l.u(c, "max_tokens")?,
                        },
                    });
                }
                (EntityKind::Decl(DeclKind::Eval), "probe") => {
                    evals.push(p::Eval {
                        name: oname.clone(),
                        source: l.source_ref(&oname, c.get("source"))?,
                        every: l.u(c, "every")?,
                        rewards: l.rewards(&oname, c.get("rewards"))?,
                        limit: l.ou(c, "limit"),
                        greedy: c.bool("greedy").unwrap_or(true),
                        max_tokens: l.u(c, "max_tokens")?,
                    });
                }
                _ => return Err(l.bug("a stage member of an unknown kind", e.name.span)),
            }
        }
        let reweight = match &sv.reweight {
            Some(Val {
                v: Value::Call(c), ..
            }) => l.reweight(c)?,
            _ => p::Reweight::Uniform,
        };
        let mix = match &sv.mix {
            Some(Val {
                v: Value::Call(c), ..
            }) => l.mix(c, train.seed)?,
            _ => p::Mix::Uniform { seed: train.seed },
        };
        stages.push(p::Stage {
            name,
            rollouts,
            objectives,
            reweight,
            mix,
            train,
            evals,
        });
    }
    let mut plan = p::Plan {
        version: p::PLAN_VERSION,
        source_file: file_name.to_string(),
        content_hash: String::new(),
        params,
        policy,
        models: l.models,
        sources: l.sources,
        verifiers: l.verifiers,
        stages,
        graph: p::Graph {
            nodes: Vec::new(),
            edges: Vec::new(),
        },
    };
    plan.graph = crate::dag::build(&plan)?;
    Ok(plan.with_hash())
}

/// A rollout's sampling configuration, hashable (floats by their bits).
#[derive(PartialEq, Eq, Hash)]
struct RolloutKey(p::Name, u64, u64, u64, u64, Option<u64>);

impl RolloutKey {
    fn of(r: &p::Rollout) -> Self {
        RolloutKey(
            r.source.clone(),
            r.group,
            r.max_tokens,
            r.temperature.to_bits(),
            r.top_p.to_bits(),
            r.top_k,
        )
    }
}

fn file_stem(file_name: &str) -> String {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let stem = base.strip_suffix(".recap").unwrap_or(base);
    if stem.is_empty() {
        "job".into()
    } else {
        stem.to_string()
    }
}

/// The name of an entity as the plan holds it (a copy that needs no allocation for names of
/// up to 24 bytes).
fn entity_name(res: &Resolved, id: EntityId) -> CompactString {
    res.name(id).into()
}

struct L<'r, 'a> {
    res: &'r Resolved<'a>,
    verifiers: Vec<p::Verifier>,
    sources: Vec<p::Source>,
    models: Vec<p::Model>,
    /// Names given to inline sources, verifiers and models, by call position.
    inline: BTreeMap<usize, p::Name>,
    /// Frozen copies of the policy (the default KL reference).
    frozen: Vec<EntityId>,
}

impl L<'_, '_> {
    fn bug(&self, what: &str, span: Span) -> Diagnostic {
        InternalProblem::Lower(what).at(span, "while lowering this")
    }

    fn u(&self, c: &CallVal, name: &str) -> Result<u64, Diagnostic> {
        c.int(name)
            .map(|i| i.max(0) as u64)
            .ok_or_else(|| self.bug(&format!("`{}` lacks the int `{name}`", c.name()), c.span))
    }

    fn ou(&self, c: &CallVal, name: &str) -> Option<u64> {
        c.int(name).map(|i| i.max(0) as u64)
    }

    fn f(&self, c: &CallVal, name: &str) -> Result<f64, Diagnostic> {
        c.float(name)
            .ok_or_else(|| self.bug(&format!("`{}` lacks the number `{name}`", c.name()), c.span))
    }

    fn s(&self, c: &CallVal, name: &str) -> Result<p::Name, Diagnostic> {
        c.str(name)
            .map(CompactString::from)
            .ok_or_else(|| self.bug(&format!("`{}` lacks the string `{name}`", c.name()), c.span))
    }

    fn dtype(c: &CallVal) -> p::Dtype {
        match c.enum_("dtype") {
            Some("f16") => p::Dtype::F16,
            Some("bf16") => p::Dtype::Bf16,
            _ => p::Dtype::F32,
        }
    }

    fn model(&mut self, name: &str, c: &CallVal) -> Result<p::Model, Diagnostic> {
        let spec = match c.name() {
            "hf" => p::ModelSpec::Hf {
                dir: self.s(c, "dir")?,
                dtype: Self::dtype(c),
            },
            "gguf" => p::ModelSpec::Gguf {
                file: self.s(c, "file")?,
                tokenizer: c.str("tokenizer").map(CompactString::from),
                dtype: Self::dtype(c),
            },
            "tiny" => p::ModelSpec::Tiny {
                vocab: self.u(c, "vocab")?,
                hidden: self.u(c, "hidden")?,
                layers: self.u(c, "layers")?,
                heads: self.u(c, "heads")?,
                kv_heads: self.u(c, "kv_heads")?,
                intermediate: self.u(c, "intermediate")?,
                seed: self.u(c, "seed")?,
                tokenizer: c.str("tokenizer").map(CompactString::from),
            },
            "frozen" => {
                let of = match c.get("model") {
                    Some(Val {
                        v: Value::Decl(id, _),
                        ..
                    }) => entity_name(self.res, *id),
                    Some(Val {
                        v: Value::Call(inner),
                        ..
                    }) => {
                        let n = format_compact!("{name}.model");
                        let m = self.model(&n, inner)?;
                        self.models.push(m);
                        n
                    }
                    _ => return Err(self.bug("frozen without model", c.span)),
                };
                p::ModelSpec::Frozen { of }
            }
            other => return Err(self.bug(&format!("unknown model function {other}"), c.span)),
        };
        Ok(p::Model {
            name: name.into(),
            spec,
        })
    }

    fn extractor(&self, v: Option<&Val>) -> Result<p::Extractor, Diagnostic> {
        let mut steps = Vec::new();
        let mut cur = v;
        // Walk the method chain from the outside in, then reverse.
        while let Some(Val {
            v: Value::Call(c), ..
        }) = cur
        {
            let step = match c.name() {
                "field" => p::ExtractStep::Field {
                    name: self.s(c, "name")?,
                },
                "after" => p::ExtractStep::After {
                    marker: self.s(c, "marker")?,
                },
                "before" => p::ExtractStep::Before {
                    marker: self.s(c, "marker")?,
                },
                "tag" => p::ExtractStep::Tag {
                    name: self.s(c, "name")?,
                },
                "last_number" => p::ExtractStep::LastNumber,
                "first_number" => p::ExtractStep::FirstNumber,
                "trim" => p::ExtractStep::Trim,
                other => return Err(self.bug(&format!("unknown extractor {other}"), c.span)),
            };
            steps.push(step);
            cur = c.get("self");
        }
        steps.reverse();
        Ok(p::Extractor { steps })
    }

    fn source(&mut self, name: &str, c: &CallVal) -> Result<p::Source, Diagnostic> {
        let mut fields = p::Fields::with_capacity(c.sig.ret_fields.len() + c.extra.len());
        for f in &c.sig.ret_fields {
            fields.insert(
                f.into(),
                p::Extractor {
                    steps: vec![p::ExtractStep::Field {
                        name: generated_column(c.name(), f).into(),
                    }],
                },
            );
        }
        for (k, _, v) in &c.extra {
            fields.insert(k.as_str().into(), self.extractor(Some(v))?);
        }
        let seed = || c.int("seed").map(|i| i.max(0) as u64).unwrap_or(0);
        let spec = match c.name() {
            "jsonl" => {
                let (text, placeholders) = match c.get("prompt").map(|v| &v.v) {
                    Some(Value::Str { text, placeholders }) => {
                        (text.to_string(), placeholders.to_vec())
                    }
                    _ => return Err(self.bug("jsonl without prompt", c.span)),
                };
                p::SourceSpec::Jsonl {
                    file: self.s(c, "file")?,
                    prompt: p::Template { text, placeholders },
                    limit: self.ou(c, "limit"),
                    shuffle: c.bool("shuffle").unwrap_or(true),
                }
            }
            "arithmetic" => p::SourceSpec::Arithmetic {
                count: self.u(c, "count")?,
                digits: self.u(c, "digits")?,
                ops: self.s(c, "ops")?,
                seed: seed(),
            },
            "sorting" => p::SourceSpec::Sorting {
                count: self.u(c, "count")?,
                length: self.u(c, "length")?,
                seed: seed(),
            },
            "copying" => p::SourceSpec::Copying {
                count: self.u(c, "count")?,
                length: self.u(c, "length")?,
                seed: seed(),
            },
            other => return Err(self.bug(&format!("unknown source function {other}"), c.span)),
        };
        Ok(p::Source {
            name: name.into(),
            spec,
            fields,
        })
    }

    fn verifier(&mut self, name: &str, c: &CallVal) -> Result<p::Verifier, Diagnostic> {
        let expected = || p::Expected {
            field: match c.get("expected").map(|v| &v.v) {
                Some(Value::Field { name, .. }) => name.clone(),
                _ => CompactString::const_new("answer"),
            },
        };
        let extract = self.extractor(c.get("extract"))?;
        let spec = match c.name() {
            "regex" => p::VerifierSpec::Regex {
                pattern: self.s(c, "pattern")?,
                extract,
            },
            "exact" => p::VerifierSpec::Exact {
                expected: expected(),
                extract,
                ignore_case: c.bool("ignore_case").unwrap_or(false),
            },
            "numeric" => p::VerifierSpec::Numeric {
                expected: expected(),
                extract,
                tolerance: self.f(c, "tolerance")?,
            },
            "math_equal" => p::VerifierSpec::MathEqual {
                expected: expected(),
                extract,
            },
            "choice" => p::VerifierSpec::Choice {
                expected: expected(),
                extract,
                options: self.s(c, "options")?,
            },
            "iou" => p::VerifierSpec::Iou {
                expected: expected(),
                extract,
                threshold: c.float("threshold"),
            },
            "length_penalty" => p::VerifierSpec::LengthPenalty {
                max_tokens: self.u(c, "max_tokens")?,
                target: self.ou(c, "target"),
            },
            other => return Err(self.bug(&format!("unknown verifier function {other}"), c.span)),
        };
        Ok(p::Verifier {
            name: name.into(),
            spec,
        })
    }

    /// The name of a source argument; an inline source is added under `<owner>.source`.
    fn source_ref(&mut self, owner: &str, v: Option<&Val>) -> Result<p::Name, Diagnostic> {
        match v {
            Some(Val {
                v: Value::Decl(id, _),
                ..
            }) => Ok(entity_name(self.res, *id)),
            Some(Val {
                v: Value::Call(c), ..
            }) => {
                if let Some(n) = self.inline.get(&c.span.start()) {
                    return Ok(n.clone());
                }
                let n = format_compact!("{owner}.source");
                let s = self.source(&n, c)?;
                self.sources.push(s);
                self.inline.insert(c.span.start(), n.clone());
                Ok(n)
            }
            _ => Err(self.bug("a source argument of an unexpected shape", Span::default())),
        }
    }

    fn verifier_ref(
        &mut self,
        owner: &str,
        i: usize,
        id: Option<EntityId>,
        c: Option<&CallVal>,
    ) -> Result<p::Name, Diagnostic> {
        if let Some(id) = id {
            return Ok(entity_name(self.res, id));
        }
        let Some(c) = c else {
            return Err(self.bug("a verifier of an unexpected shape", Span::default()));
        };
        if let Some(n) = self.inline.get(&c.span.start()) {
            return Ok(n.clone());
        }
        let n = format_compact!("{owner}.reward{i}");
        let v = self.verifier(&n, c)?;
        self.verifiers.push(v);
        self.inline.insert(c.span.start(), n.clone());
        Ok(n)
    }

    fn rewards(&mut self, owner: &str, v: Option<&Val>) -> Result<Vec<p::RewardTerm>, Diagnostic> {
        let items: &[Val] = match v.map(|v| &v.v) {
            Some(Value::List(items)) => items,
            _ => &[],
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let term = match &item.v {
                Value::Decl(id, _) => {
                    let n = self.verifier_ref(owner, i, Some(*id), None)?;
                    p::RewardTerm {
                        name: item
                            .origin_name(self.res)
                            .map_or_else(|| n.clone(), CompactString::from),
                        parts: vec![p::WeightedVerifier {
                            weight: 1.0,
                            verifier: n,
                        }],
                    }
                }
                Value::Call(c) => {
                    let n = self.verifier_ref(owner, i, None, Some(c))?;
                    p::RewardTerm {
                        name: item
                            .origin_name(self.res)
                            .map_or_else(|| n.clone(), CompactString::from),
                        parts: vec![p::WeightedVerifier {
                            weight: 1.0,
                            verifier: n,
                        }],
                    }
                }
                Value::Reward(terms) => {
                    let mut parts: Vec<p::WeightedVerifier> = Vec::new();
                    for (w, id) in terms {
                        let n = entity_name(self.res, *id);
                        match parts.iter_mut().find(|x| x.verifier == n) {
                            Some(x) => x.weight += w,
                            None => parts.push(p::WeightedVerifier {
                                weight: *w,
                                verifier: n,
                            }),
                        }
                    }
                    p::RewardTerm {
                        name: item
                            .origin_name(self.res)
                            .map_or_else(|| format_compact!("reward{i}"), CompactString::from),
                        parts,
                    }
                }
                _ => return Err(self.bug("a reward of an unexpected shape", item.span)),
            };
            out.push(term);
        }
        Ok(out)
    }

    fn kl(&self, v: &Val) -> Result<p::Kl, Diagnostic> {
        let c = match &v.v {
            Value::Call(c) => c.as_ref(),
            _ => return Err(self.bug("a kl of an unexpected shape", v.span)),
        };
        let reference = match c.decl("reference") {
            Some(id) => entity_name(self.res, id),
            None => match self.frozen.as_slice() {
                [one] => entity_name(self.res, *one),
                _ => return Err(self.bug("kl without a reference after validation", v.span)),
            },
        };
        Ok(p::Kl {
            reference,
            coef: self.f(c, "coef")?,
            estimator: match c.enum_("estimator") {
                Some("k1") => p::KlEstimator::K1,
                Some("k2") => p::KlEstimator::K2,
                _ => p::KlEstimator::K3,
            },
        })
    }

    fn weights(c: &CallVal) -> BTreeMap<p::Name, f64> {
        c.extra
            .iter()
            .map(|(k, _, v)| {
                let w = match v.v {
                    Value::Float(f) => f,
                    Value::Int(i) => i as f64,
                    _ => 1.0,
                };
                (k.as_str().into(), w)
            })
            .collect()
    }

    fn reweight(&self, c: &CallVal) -> Result<p::Reweight, Diagnostic> {
        Ok(match c.name() {
            "recap" => p::Reweight::Recap {
                window: self.u(c, "window")?,
                temperature: self.f(c, "temperature")?,
                alpha: self.f(c, "alpha")?,
                combine: match c.enum_("combine") {
                    Some("sum") => p::RecapCombine::Sum,
                    _ => p::RecapCombine::Mixture,
                },
                direction: match c.enum_("direction") {
                    Some("paper") => p::RecapDirection::Paper,
                    _ => p::RecapDirection::Regress,
                },
                warmup: c.bool("warmup").unwrap_or(false),
            },
            "uniform" => p::Reweight::Uniform,
            "static" => p::Reweight::Static {
                weights: Self::weights(c),
            },
            "dwa" => p::Reweight::Dwa {
                temperature: self.f(c, "temperature")?,
            },
            "rlw" => p::Reweight::Rlw {
                seed: self.u(c, "seed")?,
            },
            other => return Err(self.bug(&format!("unknown reweighter {other}"), c.span)),
        })
    }

    fn mix(&self, c: &CallVal, seed: u64) -> Result<p::Mix, Diagnostic> {
        Ok(match c.name() {
            "round_robin" => p::Mix::RoundRobin,
            "uniform" => p::Mix::Uniform {
                seed: self.ou(c, "seed").unwrap_or(seed),
            },
            "proportional" => p::Mix::Proportional,
            "weights" => p::Mix::Weights {
                weights: Self::weights(c),
            },
            "coreset" => {
                let base = match c.call("base") {
                    Some(b) => self.mix(b, seed)?,
                    None => p::Mix::Uniform { seed },
                };
                p::Mix::Coreset {
                    cap: self.f(c, "cap")?,
                    base: Box::new(base),
                }
            }
            "all" => p::Mix::All,
            other => return Err(self.bug(&format!("unknown mixer {other}"), c.span)),
        })
    }

    fn train(&self, c: &CallVal, default_out: &str) -> Result<p::Train, Diagnostic> {
        let steps = self.u(c, "steps")?;
        let opt = c
            .call("optimizer")
            .ok_or_else(|| self.bug("train without optimizer", c.span))?;
        let optimizer = match opt.name() {
            "adamw" => p::Optimizer::Adamw {
                lr: self.f(opt, "lr")?,
                beta1: self.f(opt, "beta1")?,
                beta2: self.f(opt, "beta2")?,
                eps: self.f(opt, "eps")?,
                weight_decay: self.f(opt, "weight_decay")?,
            },
            "sgd" => p::Optimizer::Sgd {
                lr: self.f(opt, "lr")?,
                momentum: self.f(opt, "momentum")?,
            },
            other => return Err(self.bug(&format!("unknown optimizer {other}"), opt.span)),
        };
        let sc = c
            .call("schedule")
            .ok_or_else(|| self.bug("train without schedule", c.span))?;
        let warmup_steps = match sc.get("warmup").map(|v| &v.v) {
            Some(Value::Int(i)) => (*i).max(0) as u64,
            Some(Value::Percent(pct)) => ((steps as f64) * pct / 100.0).round() as u64,
            _ => 0,
        };
        let schedule = p::Schedule {
            kind: match sc.name() {
                "linear" => p::ScheduleKind::Linear,
                "cosine" => p::ScheduleKind::Cosine,
                _ => p::ScheduleKind::Constant,
            },
            warmup_steps,
            final_fraction: sc.float("final").unwrap_or(1.0),
        };
        let checkpoint = match c.call("checkpoint") {
            Some(cp) => Some(p::Checkpoint {
                every: self.u(cp, "steps")?,
                keep: self.ou(cp, "keep"),
            }),
            None => None,
        };
        Ok(p::Train {
            steps,
            prompts_per_step: self.u(c, "prompts_per_step")?,
            micro_batch: self.ou(c, "micro_batch"),
            optimizer,
            schedule,
            grad_clip: self.f(c, "grad_clip")?,
            seed: self.u(c, "seed")?,
            checkpoint,
            out: c
                .str("out")
                .map(|s| s.to_string())
                .unwrap_or_else(|| default_out.to_string()),
        })
    }
}

/// The column of a generator's rows that holds one of its declared fields. The `arithmetic`
/// and `sorting` generators write only `prompt` and `answer`; their `target` (what `sft` trains
/// towards) is the answer, so the plan maps it to that column rather than to one that the
/// runtime's rows do not have.
fn generated_column<'a>(func: &str, field: &'a str) -> &'a str {
    match (func, field) {
        ("arithmetic" | "sorting", "target") => "answer",
        _ => field,
    }
}
