//! Lower's declarations: models, sources and verifiers (declared or inline, the inline ones
//! given names), the references objectives make to them, reward terms and KL terms.

use super::{entity_name, L};
use crate::diagnostic::{Diagnostic, Span};
use crate::resolve::EntityId;
use crate::typecheck::{CallVal, Val, Value};
use compact_str::{format_compact, CompactString};
use recap_plan as p;

impl L<'_, '_> {
    fn dtype(&self, c: &CallVal) -> Result<p::Dtype, Diagnostic> {
        let members = [
            ("f32", p::Dtype::F32),
            ("f16", p::Dtype::F16),
            ("bf16", p::Dtype::Bf16),
        ];
        self.member(c, "dtype", &members)
    }

    pub(super) fn model(&mut self, name: &str, c: &CallVal) -> Result<p::Model, Diagnostic> {
        let spec = match c.name() {
            "hf" => p::ModelSpec::Hf {
                dir: self.s(c, "dir")?,
                dtype: self.dtype(c)?,
            },
            "gguf" => p::ModelSpec::Gguf {
                file: self.s(c, "file")?,
                tokenizer: c.str("tokenizer").map(CompactString::from),
                dtype: self.dtype(c)?,
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
            "init" => p::ModelSpec::Init {
                config: self.s(c, "config")?,
                seed: self.u(c, "seed")?,
                dtype: self.dtype(c)?,
                tokenizer: c.str("tokenizer").map(CompactString::from),
            },
            "frozen" => p::ModelSpec::Frozen {
                of: self.model_arg(name, c)?,
            },
            "lora" => p::ModelSpec::Lora {
                of: self.model_arg(name, c)?,
                rank: self.u(c, "rank")?,
                alpha: self.f(c, "alpha")?,
                targets: self.lora_targets(c)?,
                seed: self.u(c, "seed")?,
            },
            other => return Err(self.bug(&format!("unknown model function {other}"), c.span)),
        };
        Ok(p::Model {
            name: name.into(),
            spec,
        })
    }

    /// The name of the model that `frozen` or `lora` (declared as `name`) wraps: a declared
    /// model's name, or `{name}.model` for an inline call, lowered here as a model of its own.
    fn model_arg(&mut self, name: &str, c: &CallVal) -> Result<p::Name, Diagnostic> {
        match c.get("model") {
            Some(Val {
                v: Value::Decl(id, _),
                ..
            }) => Ok(entity_name(self.res, *id)),
            Some(Val {
                v: Value::Call(inner),
                ..
            }) => {
                let n = format_compact!("{name}.model");
                let m = self.model(&n, inner)?;
                self.models.push(m);
                Ok(n)
            }
            _ => Err(self.bug(&format!("{} without model", c.name()), c.span)),
        }
    }

    /// The targets of a `lora` call, in the order written.
    fn lora_targets(&self, c: &CallVal) -> Result<Vec<p::LoraTarget>, Diagnostic> {
        let Some(Val {
            v: Value::List(items),
            ..
        }) = c.get("targets")
        else {
            return Err(self.bug("lora without targets", c.span));
        };
        items
            .iter()
            .map(|item| {
                p::LoraTarget::ALL
                    .into_iter()
                    .find(|t| matches!(item.v, Value::Enum(m) if m == t.name()))
                    .ok_or_else(|| self.bug("a lora target the plan does not know", item.span))
            })
            .collect()
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
                "leading_integer" => p::ExtractStep::LeadingInteger,
                "trim" => p::ExtractStep::Trim,
                other => return Err(self.bug(&format!("unknown extractor {other}"), c.span)),
            };
            steps.push(step);
            cur = c.get("self");
        }
        steps.reverse();
        Ok(p::Extractor { steps })
    }

    pub(super) fn source(&mut self, name: &str, c: &CallVal) -> Result<p::Source, Diagnostic> {
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
        let spec = match c.name() {
            "jsonl" => p::SourceSpec::Jsonl {
                file: self.s(c, "file")?,
                prompt: prompt_template(c),
                limit: self.ou(c, "limit"),
                shuffle: self.b(c, "shuffle")?,
                system: c.str("system").map(Into::into),
            },
            "parquet" => p::SourceSpec::Parquet(self.table(c)?),
            "hf_dataset" => p::SourceSpec::HfDataset(self.table(c)?),
            "arithmetic" => p::SourceSpec::Arithmetic {
                count: self.u(c, "count")?,
                digits: self.u(c, "digits")?,
                ops: self.s(c, "ops")?,
                seed: self.u(c, "seed")?,
            },
            "sorting" => p::SourceSpec::Sorting {
                count: self.u(c, "count")?,
                length: self.u(c, "length")?,
                seed: self.u(c, "seed")?,
            },
            "copying" => p::SourceSpec::Copying {
                count: self.u(c, "count")?,
                length: self.u(c, "length")?,
                seed: self.u(c, "seed")?,
            },
            other => return Err(self.bug(&format!("unknown source function {other}"), c.span)),
        };
        Ok(p::Source {
            name: name.into(),
            spec,
            fields,
        })
    }

    pub(super) fn verifier(&mut self, name: &str, c: &CallVal) -> Result<p::Verifier, Diagnostic> {
        // The stdlib documents a left-out `expected` as the verified source's `answer`; the
        // argument is a field or left out, and any other shape is a bug.
        let expected = || -> Result<p::Expected, Diagnostic> {
            let field = match c.get("expected").map(|v| &v.v) {
                Some(Value::Field { name, .. }) => name.clone(),
                None => CompactString::const_new("answer"),
                _ => return Err(self.bug("an `expected` that is no field", c.span)),
            };
            Ok(p::Expected { field })
        };
        let extract = self.extractor(c.get("extract"))?;
        let spec = match c.name() {
            "regex" => p::VerifierSpec::Regex {
                pattern: self.s(c, "pattern")?,
                extract,
            },
            "exact" => p::VerifierSpec::Exact {
                expected: expected()?,
                extract,
                ignore_case: self.b(c, "ignore_case")?,
            },
            "numeric" => p::VerifierSpec::Numeric {
                expected: expected()?,
                extract,
                tolerance: self.f(c, "tolerance")?,
            },
            "math_equal" => p::VerifierSpec::MathEqual {
                expected: expected()?,
                extract,
            },
            "choice" => p::VerifierSpec::Choice {
                expected: expected()?,
                extract,
                options: self.s(c, "options")?,
            },
            "iou" => p::VerifierSpec::Iou {
                expected: expected()?,
                extract,
                threshold: c.float("threshold"),
            },
            "length_penalty" => p::VerifierSpec::LengthPenalty {
                max_tokens: self.u(c, "max_tokens")?,
                target: self.ou(c, "target"),
            },
            "exec" => p::VerifierSpec::Exec {
                command: match c.get("command").map(|v| &v.v) {
                    Some(Value::List(items)) => items
                        .iter()
                        .map(|i| match &i.v {
                            Value::Str { text, .. } => Ok(CompactString::from(text.as_str())),
                            _ => Err(self.bug("an `exec` command item that is no string", c.span)),
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err(self.bug("`exec` without a command list", c.span)),
                },
                timeout: self.f(c, "timeout")?,
                memory_mb: self.u(c, "memory_mb")?,
                batch: self.u(c, "batch")?,
                extract,
            },
            "http" => p::VerifierSpec::Http {
                url: self.s(c, "url")?,
                timeout: self.f(c, "timeout")?,
                batch: self.u(c, "batch")?,
                retries: self.u(c, "retries")?,
                ca: c.str("ca").map(Into::into),
                extract,
            },
            other => return Err(self.bug(&format!("unknown verifier function {other}"), c.span)),
        };
        Ok(p::Verifier {
            name: name.into(),
            spec,
        })
    }

    /// The name of a source argument; an inline source is added under `<owner>.source`.
    pub(super) fn source_ref(
        &mut self,
        owner: &str,
        v: Option<&Val>,
    ) -> Result<p::Name, Diagnostic> {
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

    pub(super) fn rewards(
        &mut self,
        owner: &str,
        v: Option<&Val>,
    ) -> Result<Vec<p::RewardTerm>, Diagnostic> {
        // `rewards` defaults to `[]` in the stdlib, so it is always a list.
        let items: &[Val] = match v.map(|v| &v.v) {
            Some(Value::List(items)) => items,
            _ => return Err(self.bug("rewards that are no list", Span::default())),
        };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            // A verifier on its own, by name or inline, is a term of one part.
            let single = match &item.v {
                Value::Decl(id, _) => Some(self.verifier_ref(owner, i, Some(*id), None)?),
                Value::Call(c) => Some(self.verifier_ref(owner, i, None, Some(c))?),
                _ => None,
            };
            let term = match (single, &item.v) {
                (Some(n), _) => p::RewardTerm {
                    name: item
                        .origin_name(self.res)
                        .map_or_else(|| n.clone(), CompactString::from),
                    parts: vec![p::WeightedVerifier {
                        weight: 1.0,
                        verifier: n,
                    }],
                },
                (None, Value::Reward(terms)) => {
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

    pub(super) fn kl(&self, v: &Val) -> Result<p::Kl, Diagnostic> {
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
            estimator: self.member(
                c,
                "estimator",
                &[
                    ("k1", p::KlEstimator::K1),
                    ("k2", p::KlEstimator::K2),
                    ("k3", p::KlEstimator::K3),
                ],
            )?,
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

impl L<'_, '_> {
    /// The arguments `parquet(...)` and `hf_dataset(...)` share.
    fn table(&self, c: &CallVal) -> Result<p::TableSource, Diagnostic> {
        Ok(p::TableSource {
            path: self.s(c, "path")?,
            split: c.str("split").map(Into::into),
            prompt: prompt_template(c),
            limit: self.ou(c, "limit"),
            shuffle: self.b(c, "shuffle")?,
            system: c.str("system").map(Into::into),
        })
    }
}

/// The `prompt` template of a source that reads a data file; `None` when it is left out and
/// each row's `messages` are the prompt.
fn prompt_template(c: &CallVal) -> Option<p::Template> {
    match c.get("prompt").map(|v| &v.v) {
        Some(Value::Str { text, placeholders }) => Some(p::Template {
            text: text.to_string(),
            placeholders: placeholders.to_vec(),
        }),
        _ => None,
    }
}
