//! `recapc lsp --bench FILE` (hidden): takes a pipeline file; gives the latency of each kind of
//! request on it, through the same dispatch (JSON in, JSON out) that the server runs, so the
//! figures include the protocol's (de)serialisation but not the pipe to the editor.

use std::path::Path;
use std::time::{Duration, Instant};

use lsp_server::Notification;
use lsp_types::notification::Notification as _;
use lsp_types::request::Request as _;
use lsp_types::{notification as n, request as r};
use serde_json::{json, Value};

use super::Server;
use crate::exit::ExitCode;

/// How many positions of the file each request is timed at.
const SAMPLES: usize = 40;

pub fn bench(file: &Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: cannot read {}: {e}", file.display());
            return ExitCode::Usage;
        }
    };
    let uri = match std::fs::canonicalize(file) {
        Ok(p) => format!("file://{}", p.display()),
        Err(_) => "untitled:bench.recap".to_string(),
    };
    let mut server = Server::default();
    let open = |server: &mut Server, text: &str, method: &str| {
        let params = json!({
            "textDocument": {"uri": uri, "languageId": "recap", "version": 1, "text": text},
            "contentChanges": [{"text": text}],
        });
        server.notify(Notification::new(method.to_string(), params))
    };
    let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
    let mut time = |name: &str, f: &mut dyn FnMut()| {
        let mut times = Vec::with_capacity(SAMPLES);
        for _ in 0..SAMPLES.min(10) {
            let t = Instant::now();
            f();
            times.push(t.elapsed());
        }
        rows.push((name.to_string(), times));
    };
    time("didOpen (check + index + diagnostics)", &mut || {
        open(&mut server, &text, n::DidOpenTextDocument::METHOD);
    });
    time("didChange (check + index + diagnostics)", &mut || {
        open(&mut server, &text, n::DidChangeTextDocument::METHOD);
    });
    // Positions spread over the file: the starts of names the index knows.
    let positions: Vec<Value> = {
        let doc = server.docs.values().next();
        let occ = doc
            .map(|d| d.index.occurrences.as_slice())
            .unwrap_or_default();
        let step = (occ.len() / SAMPLES).max(1);
        occ.iter()
            .step_by(step)
            .take(SAMPLES)
            .filter_map(|o| {
                let d = doc?;
                serde_json::to_value(d.lines.position(&d.text, o.span.start() + 1)).ok()
            })
            .collect()
    };
    let lines = text.lines().count();
    let mut errors = 0;
    for (name, method, extra) in [
        ("hover", r::HoverRequest::METHOD, json!({})),
        ("definition", r::GotoDefinition::METHOD, json!({})),
        (
            "references",
            r::References::METHOD,
            json!({"context": {"includeDeclaration": true}}),
        ),
        ("rename", r::Rename::METHOD, json!({"newName": "renamed"})),
        ("completion", r::Completion::METHOD, json!({})),
        (
            "documentSymbol",
            r::DocumentSymbolRequest::METHOD,
            json!({}),
        ),
        (
            "formatting",
            r::Formatting::METHOD,
            json!({"options": {"tabSize": 2, "insertSpaces": true}}),
        ),
        (
            "codeAction",
            r::CodeActionRequest::METHOD,
            json!({"context": {"diagnostics": []}}),
        ),
    ] {
        let mut times = Vec::new();
        for pos in &positions {
            // `range` is for code actions; the other requests ignore it.
            let mut params = json!({
                "textDocument": {"uri": uri},
                "position": pos,
                "range": {"start": pos, "end": pos},
            });
            if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            let t = Instant::now();
            // A rename of a stdlib name is refused, which is an answer too.
            if server.answer(method, params).is_err() && method != r::Rename::METHOD {
                errors += 1;
            }
            times.push(t.elapsed());
        }
        rows.push((name.to_string(), times));
    }
    println!(
        "{}: {lines} lines, {} positions per request",
        file.display(),
        positions.len()
    );
    println!("{:<42} {:>10} {:>10}", "request", "median ms", "max ms");
    for (name, mut times) in rows {
        times.sort();
        let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        println!(
            "{name:<42} {:>10.2} {:>10.2}",
            ms(times.get(times.len() / 2)),
            ms(times.last())
        );
    }
    if errors > 0 {
        eprintln!("error: {errors} requests failed");
        return ExitCode::Errors;
    }
    ExitCode::Success
}
