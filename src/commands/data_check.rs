//! The pre-run data check: takes a checked plan (and the pipeline's syntax tree, for spans),
//! gives a diagnostic for each problem the head of its data shows before anything runs. The
//! compiler is pure and reads no data, so this is the CLI's part, as hashing files is: `check`,
//! `plan` and `run` (a pipeline or a saved plan) all hold the plan against the first rows of
//! every source, read exactly as the run reads them (`Dataset::load_head`), and render those
//! rows' prompts with the policy's chat template (read from its tokenizer configuration; no
//! weights are loaded). Each problem has a `recap::data::*` code (`DataProblem` in the runtime).

use std::collections::HashMap;
use std::path::Path;

use recap_compiler::ast::{Args, DeclKind, Expr, ExprKind, File, Item, ItemKind};
use recap_compiler::{Diagnostic, Label, Severity, Span};
use recap_plan::{ModelSpec, Plan, Source, SourceSpec, TableSource};
use recap_runtime::engine::data::{resolve_path, DataProblem, Dataset, Row};
use recap_runtime::tokenizer::ChatTemplate;

use crate::host::ROWS_CHECKED;

/// Where the pipeline declares each source and model, to point diagnostics at.
#[derive(Default)]
struct Spans {
    /// A source's call, and its data path argument when it has one.
    sources: HashMap<String, (Span, Option<Span>)>,
    models: HashMap<String, Span>,
}

impl Spans {
    /// The spans of the declarations of `file`: declared sources and models by name, and an
    /// inline source by the name the plan gives it (`<owner>.source`).
    fn of(file: &File) -> Spans {
        let mut spans = Spans::default();
        let mut items: Vec<&Item> = file.items.iter().collect();
        while let Some(item) = items.pop() {
            match &item.kind {
                ItemKind::Stage { items: inner, .. } => items.extend(inner),
                ItemKind::Decl {
                    kind, name, value, ..
                } => match kind {
                    DeclKind::Source => {
                        spans
                            .sources
                            .entry(name.name.to_string())
                            .or_insert_with(|| (value.span, data_arg(value)));
                    }
                    DeclKind::Model => {
                        spans
                            .models
                            .entry(name.name.to_string())
                            .or_insert(value.span);
                    }
                    _ => {
                        if let Some(inline) = call_args(value).and_then(source_arg) {
                            spans
                                .sources
                                .entry(format!("{}.source", name.name))
                                .or_insert_with(|| (inline.span, data_arg(inline)));
                        }
                    }
                },
                _ => {}
            }
        }
        spans
    }

    /// The labels of a diagnostic about source `name`: its data path, else its call.
    fn source(&self, name: &str, label: String) -> Vec<Label> {
        self.sources
            .get(name)
            .map(|(call, data)| Label {
                span: data.unwrap_or(*call),
                message: label,
            })
            .into_iter()
            .collect()
    }

    fn model(&self, name: &str, label: String) -> Option<Label> {
        self.models.get(name).map(|span| Label {
            span: *span,
            message: label,
        })
    }
}

fn call_args(e: &Expr) -> Option<&Args> {
    match &e.kind {
        ExprKind::Call { args, .. } | ExprKind::Method { args, .. } => Some(args),
        _ => None,
    }
}

/// A call's argument named `name`, or its first positional one.
fn arg<'a>(args: &'a Args, name: &str) -> Option<&'a Expr> {
    args.named
        .iter()
        .find(|a| a.name.name == name)
        .map(|a| &a.value)
        .or_else(|| args.positional.first())
}

/// The span of a source call's data path (`jsonl(file)`, `parquet(path)`, `hf_dataset(path)`).
fn data_arg(source: &Expr) -> Option<Span> {
    let args = call_args(source)?;
    let ExprKind::Call { func, .. } = &source.kind else {
        return None;
    };
    let key = match func.name.as_str() {
        "jsonl" => "file",
        "parquet" | "hf_dataset" => "path",
        _ => return None,
    };
    arg(args, key).map(|e| e.span)
}

/// An objective's or probe's inline source (`grpo(jsonl(...))`), when it is a call.
fn source_arg(args: &Args) -> Option<&Expr> {
    arg(args, "source").filter(|e| matches!(e.kind, ExprKind::Call { .. }))
}

/// The data path of a file source, as written in the pipeline.
fn data_path(source: &Source) -> Option<&str> {
    match &source.spec {
        SourceSpec::Jsonl { file, .. } => Some(file),
        SourceSpec::Parquet(t) | SourceSpec::HfDataset(t) => Some(&t.path),
        _ => None,
    }
}

/// Whether the rows of a source are chat `messages` rather than a prompt template's.
fn is_chat(source: &Source) -> bool {
    matches!(
        &source.spec,
        SourceSpec::Jsonl { prompt: None, .. }
            | SourceSpec::Parquet(TableSource { prompt: None, .. })
            | SourceSpec::HfDataset(TableSource { prompt: None, .. })
    )
}

/// What to do about a data problem, one line.
fn help(problem: DataProblem, chat: bool) -> &'static str {
    match problem {
        DataProblem::Unreadable => "point the source at a readable file (for a directory of Parquet shards of several splits, name one with `split = \"train\"`)",
        DataProblem::BadRow => "every line of a JSON Lines file is one JSON object; fix or remove this line",
        DataProblem::MissingField if chat => "a source without `prompt` reads each row's `messages`; for rows that hold a question, give a template such as `prompt = \"{question}\"`",
        DataProblem::MissingField => "fix the name in the pipeline, or map the data's own field: `question = field(\"problem\")`",
        DataProblem::WrongType => "read a field that holds text, a number or a boolean, or map one out of this value with `field(...)`",
        DataProblem::Unextractable => "check the extractor against this row (a marker it lacks, a tag it does not hold), or fix the row",
        DataProblem::BadMessages => "write `messages` as a list of `{\"role\": ..., \"content\": ...}` turns (roles `system`, `user`, `assistant`, `tool`) that ends with a user turn",
        DataProblem::Empty => "give the source a file with rows in it",
        DataProblem::NoChatTemplate => "train a model whose tokenizer has a chat template (an instruct model), or give the source a `prompt` template and no `system`",
        DataProblem::BadChatTemplate => "fix the model's `chat_template` in tokenizer_config.json, or leave out what it refuses (many templates take no `system` turn)",
    }
}

fn diagnostic(
    problem: DataProblem,
    severity: Severity,
    message: String,
    labels: Vec<Label>,
    help: &str,
) -> Diagnostic {
    Diagnostic {
        code: problem.code().to_string(),
        severity,
        message,
        labels,
        help: Some(help.to_string()),
        fixes: Vec::new(),
    }
}

/// The policy's chat template as the run will have it: the tokenizer configuration of the
/// model directory, GGUF file or tokenizer the plan names, or none for the character-level
/// tokenizer. `None` when it cannot be told without the model (a path that does not exist,
/// which the checker reports as missing).
fn policy_template(plan: &Plan, base: &Path) -> Option<Result<ChatTemplate, String>> {
    let spec = |name: &str| plan.models.iter().find(|m| m.name == name).map(|m| &m.spec);
    let mut model = spec(&plan.policy)?;
    // A LoRA policy speaks through its base's tokenizer.
    for _ in 0..plan.models.len() {
        match model {
            ModelSpec::Lora { of, .. } => model = spec(of)?,
            _ => break,
        }
    }
    let at = |p: &str| -> Option<Result<ChatTemplate, String>> {
        let path = resolve_path(base, p);
        let is_gguf = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        if is_gguf && path.is_file() {
            Some(
                recap_runtime::gguf::read_tokenizer(&path)
                    .map(|(_, config)| ChatTemplate::from_config(Some(&config)))
                    .map_err(|e| e.to_string()),
            )
        } else if path.is_dir() {
            Some(ChatTemplate::from_dir(&path).map_err(|e| e.to_string()))
        } else if path.is_file() {
            // A bare `tokenizer.json` carries no template.
            Some(Ok(ChatTemplate::Raw))
        } else {
            None
        }
    };
    match model {
        ModelSpec::Hf { dir, .. } => at(dir),
        ModelSpec::Gguf {
            tokenizer: Some(p), ..
        }
        | ModelSpec::Tiny {
            tokenizer: Some(p), ..
        }
        | ModelSpec::Init {
            tokenizer: Some(p), ..
        } => at(p),
        ModelSpec::Gguf { file, .. } => at(file),
        ModelSpec::Tiny { .. } | ModelSpec::Init { .. } => Some(Ok(ChatTemplate::Raw)),
        ModelSpec::Frozen { .. } | ModelSpec::Lora { .. } => None,
    }
}

/// Every data problem the first rows of the plan's sources show, in source order. `file` is
/// the pipeline's syntax tree, to point at declarations; `None` for a saved plan.
pub fn check(plan: &Plan, base: &Path, file: Option<&File>) -> Vec<Diagnostic> {
    let spans = file.map(Spans::of).unwrap_or_default();
    let mut out = Vec::new();
    let mut heads: Vec<(&Source, Dataset)> = Vec::new();
    for source in &plan.sources {
        // A path that does not exist is the checker's `missing_file` already.
        if data_path(source).is_some_and(|p| !resolve_path(base, p).exists()) {
            continue;
        }
        match Dataset::load_head(source, base, ROWS_CHECKED) {
            Ok(head) => heads.push((source, head)),
            Err(e) => {
                let prefix = format!("source `{}`: ", source.name);
                let message = if e.message.starts_with(&prefix) {
                    e.message.clone()
                } else {
                    format!("{prefix}{}", e.message)
                };
                out.push(diagnostic(
                    e.problem,
                    Severity::Error,
                    message,
                    spans.source(&source.name, "read here".to_string()),
                    help(e.problem, is_chat(source)),
                ));
            }
        }
    }
    let Some(template) = policy_template(plan, base) else {
        return out;
    };
    let policy = plan.policy.as_str();
    let at_policy = |what: &str| spans.model(policy, what.to_string());
    let template = match template {
        Ok(ChatTemplate::Broken(why)) => Err(why),
        Ok(t) => Ok(t),
        Err(why) => Err(format!("the tokenizer configuration cannot be read: {why}")),
    };
    let template = match template {
        Ok(t) => t,
        Err(why) => {
            // Every prompt goes through the template, so one that cannot be had stops the run
            // at its first prompt whatever the data.
            out.push(diagnostic(
                DataProblem::BadChatTemplate,
                Severity::Error,
                format!("the chat template of model `{policy}` cannot be used: {why}"),
                at_policy("the policy").into_iter().collect(),
                help(DataProblem::BadChatTemplate, false),
            ));
            return out;
        }
    };
    for (source, head) in &heads {
        if let Some(d) = template_problem(&template, source, &head.rows, policy, &spans) {
            out.push(d);
        }
    }
    out
}

/// The first problem of rendering a source's rows with the policy's template, if any.
fn template_problem(
    template: &ChatTemplate,
    source: &Source,
    rows: &[Row],
    policy: &str,
    spans: &Spans,
) -> Option<Diagnostic> {
    let name = source.name.as_str();
    let labels = |source_label: String| {
        let mut labels = spans.source(name, source_label);
        labels.extend(spans.model(policy, "the policy".to_string()));
        labels
    };
    if matches!(template, ChatTemplate::Raw) {
        if let Some(row) = rows.iter().find(|r| !r.context.is_empty()) {
            let what = if row.context.iter().all(|m| m.role == "system") {
                "a system prompt"
            } else {
                "turns before its prompt"
            };
            return Some(diagnostic(
                DataProblem::NoChatTemplate,
                Severity::Error,
                format!(
                    "row `{}` of source `{name}` has {what}, which only a chat template can write, \
                     and the tokenizer of model `{policy}` has none",
                    row.id
                ),
                labels(format!("row `{}`", row.id)),
                help(DataProblem::NoChatTemplate, false),
            ));
        }
        if is_chat(source) && !rows.is_empty() {
            return Some(diagnostic(
                DataProblem::NoChatTemplate,
                Severity::Warning,
                format!(
                    "the rows of source `{name}` are chat `messages`, but the tokenizer of model \
                     `{policy}` has no chat template: each prompt goes in as the raw text of its \
                     user turn"
                ),
                labels("chat rows".to_string()),
                help(DataProblem::NoChatTemplate, false),
            ));
        }
        return None;
    }
    rows.iter().find_map(|row| {
        let why = template.render_prompt(&row.context, &row.prompt).err()?;
        Some(diagnostic(
            DataProblem::BadChatTemplate,
            Severity::Error,
            format!(
                "the chat template of model `{policy}` fails on row `{}` of source `{name}`: {why}",
                row.id
            ),
            labels(format!("row `{}`", row.id)),
            help(DataProblem::BadChatTemplate, false),
        ))
    })
}
