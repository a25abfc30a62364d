//! A scripted editor session against `recapc lsp` over lsp-server's in-memory connection:
//! every request the server answers, with the exact response asserted.

use std::thread;

use lsp_server::{Connection, Message, Notification, Request, RequestId, Response};
use serde_json::{json, Value};

const URI: &str = "file:///recap-lsp-test/t.recap";

/// The file as first opened: an `é` and an emoji stand before the error on line 4, so a
/// column counted in bytes (45) or characters (41) instead of UTF-16 units (42) shows.
const BROKEN: &str = "\
# Café ☕ pipeline 🙂
model policy = tiny(seed = 1)
source sums = arithmetic(count = 10)
verifier correct = regex(\"é🙂\", extract = frist_number)
objective learn = grpo(sums, rewards = [correct])
train { steps = 10 }
";

struct Client {
    conn: Connection,
    server: thread::JoinHandle<Result<(), String>>,
    next_id: i32,
}

impl Client {
    fn start() -> Self {
        let (server_side, conn) = Connection::memory();
        let server = thread::spawn(move || recapc::lsp::serve(&server_side));
        Client {
            conn,
            server,
            next_id: 0,
        }
    }

    fn request(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = RequestId::from(self.next_id);
        let req = Request::new(id.clone(), method.to_string(), params);
        self.conn.sender.send(Message::Request(req)).unwrap();
        match self.conn.receiver.recv().unwrap() {
            Message::Response(Response {
                id: got,
                response_result,
            }) => {
                assert_eq!(got, id);
                match response_result {
                    Ok(v) => v,
                    Err(e) => json!({"error": e.message}),
                }
            }
            other => panic!("expected the response to {method}, got {other:?}"),
        }
    }

    fn rename(&mut self, mut params: Value, new_name: &str) -> Value {
        params["newName"] = json!(new_name);
        self.request("textDocument/rename", params)
    }

    fn notify(&self, method: &str, params: Value) {
        let note = Notification::new(method.to_string(), params);
        self.conn.sender.send(Message::Notification(note)).unwrap();
    }

    /// The next message, which must be a diagnostics notification; gives its params.
    fn diagnostics(&self) -> Value {
        match self.conn.receiver.recv().unwrap() {
            Message::Notification(n) if n.method == "textDocument/publishDiagnostics" => n.params,
            other => panic!("expected diagnostics, got {other:?}"),
        }
    }
}

fn at(line: u32, character: u32) -> Value {
    json!({"textDocument": {"uri": URI}, "position": {"line": line, "character": character}})
}

fn range(l0: u32, c0: u32, l1: u32, c1: u32) -> Value {
    json!({"start": {"line": l0, "character": c0}, "end": {"line": l1, "character": c1}})
}

#[test]
fn a_scripted_session_gets_exact_answers() {
    let mut c = Client::start();

    let init = c.request("initialize", json!({"capabilities": {}}));
    let caps = &init["capabilities"];
    assert_eq!(caps["hoverProvider"], json!(true));
    assert_eq!(caps["definitionProvider"], json!(true));
    assert_eq!(caps["referencesProvider"], json!(true));
    assert_eq!(caps["renameProvider"], json!(true));
    assert_eq!(caps["documentSymbolProvider"], json!(true));
    assert_eq!(caps["codeActionProvider"], json!(true));
    assert_eq!(caps["documentFormattingProvider"], json!(true));
    assert_eq!(
        caps["completionProvider"]["triggerCharacters"],
        json!([".", "(", " "])
    );
    c.notify("initialized", json!({}));

    c.notify(
        "textDocument/didOpen",
        json!({"textDocument": {"uri": URI, "languageId": "recap", "version": 1, "text": BROKEN}}),
    );
    let diags = c.diagnostics();
    assert_eq!(
        diags,
        json!({"uri": URI, "diagnostics": [{
            "range": range(3, 42, 3, 54),
            "severity": 1,
            "code": "recap::resolve::unknown_name",
            "source": "recapc",
            "message": "unknown name `frist_number`\nhelp: did you mean `first_number`?",
        }]}),
        "{diags:#}"
    );

    // The did-you-mean of the diagnostic is offered as a quick fix.
    let actions = c.request(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": URI}, "range": range(3, 45, 3, 45),
               "context": {"diagnostics": diags["diagnostics"]}}),
    );
    assert_eq!(
        actions,
        json!([{
            "title": "replace `frist_number` with `first_number`",
            "kind": "quickfix",
            "diagnostics": diags["diagnostics"],
            "edit": {"changes": {URI: [{"range": range(3, 42, 3, 54), "newText": "first_number"}]}},
            "isPreferred": true,
        }]),
        "{actions:#}"
    );
    // Nowhere near the error, nothing is offered.
    let none = c.request(
        "textDocument/codeAction",
        json!({"textDocument": {"uri": URI}, "range": range(1, 0, 1, 5),
               "context": {"diagnostics": []}}),
    );
    assert_eq!(none, json!([]));

    let fixed = BROKEN.replace("frist_number", "first_number");
    c.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": URI, "version": 2}, "contentChanges": [{"text": fixed}]}),
    );
    let diags = c.diagnostics();
    assert_eq!(diags, json!({"uri": URI, "diagnostics": []}), "{diags:#}");

    let hover = c.request("textDocument/hover", at(4, 20));
    // The stdlib's own signature and doc comment of the callee `grpo`.
    let grpo = recap_compiler::stdlib_docs()
        .into_iter()
        .find(|d| d.name == "grpo")
        .unwrap();
    assert!(grpo
        .signature
        .starts_with("fn grpo(source: Source, rewards: list[Reward] = []"));
    assert_eq!(
        hover,
        json!({
            "contents": {
                "kind": "markdown",
                "value": format!("```recap\n{}\n```\n\n{}", grpo.signature, grpo.doc),
            },
            "range": range(4, 18, 4, 22),
        }),
        "{hover:#}"
    );

    // `sums` used in `grpo(sums, ...)` is defined on line 3.
    let def = c.request("textDocument/definition", at(4, 25));
    assert_eq!(
        def,
        json!({"uri": URI, "range": range(2, 7, 2, 11)}),
        "{def:#}"
    );

    let refs = c.request(
        "textDocument/references",
        json!({"textDocument": {"uri": URI}, "position": {"line": 3, "character": 10},
               "context": {"includeDeclaration": true}}),
    );
    assert_eq!(
        refs,
        json!([
            {"uri": URI, "range": range(3, 9, 3, 16)},
            {"uri": URI, "range": range(4, 40, 4, 47)},
        ]),
        "{refs:#}"
    );

    let rename = c.rename(at(2, 8), "math");
    assert_eq!(
        rename,
        json!({"changes": {URI: [
            {"range": range(2, 7, 2, 11), "newText": "math"},
            {"range": range(4, 23, 4, 27), "newText": "math"},
        ]}}),
        "{rename:#}"
    );
    let refused = c.rename(at(4, 19), "ppo");
    assert_eq!(
        refused,
        json!({"error": "only a declared name can be renamed here"})
    );

    // After `[c` in `rewards = [correct]`: rewards take verifiers and reward terms, so the
    // verifier `correct` and the stdlib verifier `choice` are offered, not the source
    // `copying`, the schedule `cosine` or the mixer `coreset`.
    let completion = c.request("textDocument/completion", at(4, 41));
    let labels: Vec<&str> = completion["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["correct", "choice"], "{completion:#}");
    assert_eq!(
        completion["items"][0]["textEdit"],
        json!({"range": range(4, 40, 4, 41), "newText": "correct"})
    );

    let symbols = c.request(
        "textDocument/documentSymbol",
        json!({"textDocument": {"uri": URI}}),
    );
    let names: Vec<&str> = symbols
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["policy", "sums", "correct", "learn"]);

    // Formatting gives the layout of `recapc fmt` as one edit of the whole document.
    let messy = "model   policy = tiny( seed=1 )\n";
    c.notify(
        "textDocument/didChange",
        json!({"textDocument": {"uri": URI, "version": 3}, "contentChanges": [{"text": messy}]}),
    );
    c.diagnostics();
    let formatting = c.request(
        "textDocument/formatting",
        json!({"textDocument": {"uri": URI}, "options": {"tabSize": 2, "insertSpaces": true}}),
    );
    let formatted = recap_compiler::format::format(messy).unwrap();
    assert_ne!(formatted, messy);
    assert_eq!(
        formatting,
        json!([{"range": range(0, 0, 1, 0), "newText": formatted}]),
        "{formatting:#}"
    );

    let shutdown = c.request("shutdown", Value::Null);
    assert_eq!(shutdown, Value::Null);
    c.notify("exit", Value::Null);
    let Client { server, .. } = c;
    assert_eq!(server.join().unwrap(), Ok(()));
}
