//! Validate's rules that ask the host: paths that do not exist, model directories a download
//! left incomplete, data files whose rows lack what a source reads, and generation budgets the
//! policy's context cannot hold.

use super::problems::ValidateProblem;
use super::{arg_span, V};
use crate::diagnostic::{Problem, Span};
use crate::resolve::EntityId;
use crate::typecheck::{Val, Value};
use crate::{CheckOptions, Host};

impl V<'_, '_, '_, '_> {
    /// Every path named in the pipeline must exist.
    pub(super) fn files(&mut self, options: &CheckOptions, host: &dyn Host) {
        // A hash set, not a sorted one: it only drops repeats (a path that a `let` names and
        // two places use is one literal), and a 100k-line pipeline names 8,000 paths, where a
        // sorted set's string comparisons grow faster than the input.
        let mut seen: foldhash::HashSet<(&str, usize)> = Default::default();
        seen.reserve(self.typed.paths.len());
        for (path, span) in &self.typed.paths {
            if !seen.insert((path.as_str(), span.start())) || host.file_exists(path) {
                continue;
            }
            let problem = ValidateProblem::MissingFile {
                path,
                is_error: options.missing_files_are_errors,
            };
            self.diags.push(problem.at(*span, "not found"));
        }
    }

    /// Each `hf(dir)` directory that exists must hold what loading needs: `config.json`,
    /// `tokenizer.json` and the weights (`model.safetensors`, or the index of shards). A
    /// directory without them is mostly a download that stopped half-way; like a missing file,
    /// a warning for `check` and an error for `run`.
    pub(super) fn model_dirs(&mut self, options: &CheckOptions, host: &dyn Host) {
        for c in std::mem::take(&mut self.calls.hf) {
            let Some(dir) = c.str("dir") else {
                continue;
            };
            // A directory that does not exist is already a `missing_file`.
            if dir.is_empty() || !host.file_exists(dir) {
                continue;
            }
            let base = dir.trim_end_matches(['/', '\\']);
            let has = |name: &str| host.file_exists(&format!("{base}/{name}"));
            let mut lacking: Vec<&str> = ["config.json", "tokenizer.json"]
                .into_iter()
                .filter(|f| !has(f))
                .collect();
            if !has("model.safetensors") && !has("model.safetensors.index.json") {
                lacking.push("model.safetensors");
            }
            if lacking.is_empty() {
                continue;
            }
            let names: Vec<String> = lacking.iter().map(|f| format!("`{f}`")).collect();
            let listed = match names.split_last() {
                Some((last, init)) if !init.is_empty() => format!("{} or {last}", init.join(", ")),
                _ => names.join(""),
            };
            let problem = ValidateProblem::IncompleteModel {
                dir,
                lacking: listed,
                is_error: options.missing_files_are_errors,
            };
            self.diags
                .push(problem.at(arg_span(c, "dir"), "incomplete"));
        }
    }

    /// Each `jsonl` source's prompt placeholders and `field(...)` reads, held against the first
    /// rows of its data file when the host can read them: the runtime stops at the first row
    /// that lacks one, after the models are loaded.
    pub(super) fn data_fields(&mut self, host: &dyn Host) {
        for c in std::mem::take(&mut self.calls.jsonl) {
            let Some(path) = c.str("file") else {
                continue;
            };
            let Some(mut rows) = host.jsonl_rows(path) else {
                continue;
            };
            // The runtime reads no further than `limit` rows; neither does the check.
            if let Some(limit) = c.int("limit") {
                rows.truncate(usize::try_from(limit).unwrap_or(0));
            }
            if let Some((line, why)) = rows.iter().find_map(|r| match &r.fields {
                Err(why) => Some((r.line, why)),
                Ok(_) => None,
            }) {
                let problem = ValidateProblem::BadDataLine { path, line, why };
                self.diags.push(problem.at(
                    arg_span(c, "file"),
                    format!("line {line} is not a JSON object"),
                ));
            }
            let rows: Vec<(usize, &Vec<String>)> = rows
                .iter()
                .filter_map(|r| r.fields.as_ref().ok().map(|f| (r.line, f)))
                .collect();
            let Some((_, first_row)) = rows.first() else {
                continue;
            };
            // Every key the rows must have: what each mapped field reads (the name of its
            // `field(...)` step), then the prompt's placeholders, except those that name a
            // mapped field (filled in before the prompt is rendered). Each with its span and
            // the mapped field that reads it (`None`: the prompt uses it).
            let mut uses: Vec<(&str, Span, Option<&str>)> = Vec::new();
            for (name, _, v) in &c.extra {
                if let Some(key) = field_read(v) {
                    uses.push((key, v.span, Some(name)));
                }
            }
            if let Some(Val {
                v: Value::Str { placeholders, .. },
                span,
                ..
            }) = c.get("prompt")
            {
                for p in placeholders {
                    if !c.extra.iter().any(|(n, _, _)| n == p) {
                        uses.push((p, *span, None));
                    }
                }
            }
            let lacking = |key: &str| {
                rows.iter()
                    .find(|(_, keys)| !keys.iter().any(|k| k == key))
                    .map(|(line, _)| *line)
            };
            for (key, span, reader) in uses {
                if let Some(line) = lacking(key) {
                    let label = match reader {
                        Some(_) => format!("reads `{key}`"),
                        None => format!("uses `{{{key}}}`"),
                    };
                    let problem = ValidateProblem::MissingDataField {
                        path,
                        line,
                        key,
                        reader,
                        first_row,
                    };
                    self.diags.push(problem.at(span, label));
                }
            }
        }
    }

    /// Every generation budget (`max_tokens` of `grpo` objectives and probes) against the
    /// policy's context length, when the host can read it from a Hugging Face directory: a
    /// budget as long as the context leaves no room for the prompt, and the runtime would stop
    /// at the first rollout.
    pub(super) fn generation_budget(&mut self, policy: Option<EntityId>, host: &dyn Host) {
        let Some(model) = policy.and_then(|p| self.typed.call(p)) else {
            return;
        };
        if model.name() != "hf" {
            return;
        }
        let Some(dir) = model.str("dir") else {
            return;
        };
        let Some(context) = host.model_context(dir) else {
            return;
        };
        let policy_name = policy.map(|p| self.res.name(p)).unwrap_or("policy");
        for (id, e) in self.res.entities.iter().enumerate() {
            if !matches!(
                e.kind,
                crate::resolve::EntityKind::Decl(
                    crate::ast::DeclKind::Objective | crate::ast::DeclKind::Eval
                )
            ) {
                continue;
            }
            let Some(c) = self.typed.call(id) else {
                continue;
            };
            if !matches!(c.name(), "grpo" | "probe") {
                continue;
            }
            let Some(budget) = c.int("max_tokens") else {
                continue;
            };
            if budget.max(0) as u64 >= context {
                let problem = ValidateProblem::ContextTooShort {
                    user: self.res.name(id),
                    budget,
                    policy: policy_name,
                    context,
                };
                self.diags
                    .push(problem.at(arg_span(c, "max_tokens"), format!("{budget} new tokens")));
            }
        }
    }
}

/// The raw-row field that an extractor chain such as `field("answer").after("####")` starts
/// from, when it starts from one.
fn field_read(v: &Val) -> Option<&str> {
    let Value::Call(c) = &v.v else {
        return None;
    };
    if c.name() == "field" {
        return c.str("name");
    }
    c.get("self").and_then(field_read)
}
