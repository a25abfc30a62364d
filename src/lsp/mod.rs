//! `recapc lsp`: a language server over standard input and output (lsp-server, synchronous).
//! Takes the client's requests and notifications; gives diagnostics on open, change and save
//! (from the same pure `check` as `recapc check`), hover, go to definition, references, rename,
//! completion, document symbols, code actions and formatting. One module per concern: `text` (positions),
//! `document` (what an edit rebuilds), `navigate`, `complete`, `actions`, `bench`.

mod actions;
mod bench;
mod complete;
mod document;
mod navigate;
mod text;

use std::collections::HashMap;

use lsp_server::{Connection, ErrorCode, Message, Notification, Request, Response, ResponseError};
use lsp_types::notification::Notification as _;
use lsp_types::request::Request as _;
use lsp_types::{notification as n, request as r};
use lsp_types::{
    CodeActionProviderCapability, CompletionOptions, HoverProviderCapability, OneOf,
    PublishDiagnosticsParams, ServerCapabilities, TextDocumentSyncCapability, TextDocumentSyncKind,
    TextDocumentSyncOptions, TextDocumentSyncSaveOptions, Uri,
};
use serde_json::Value;

use crate::cli::LspArgs;
use crate::exit::ExitCode;
use document::Document;

pub use bench::bench;

/// Runs the command: the server on standard input and output, or the benchmark.
pub fn run(args: &LspArgs) -> ExitCode {
    if let Some(file) = &args.bench {
        return bench(file);
    }
    let (connection, io) = Connection::stdio();
    let served = serve(&connection);
    drop(connection);
    match served.and_then(|()| io.join().map_err(|e| e.to_string())) {
        Ok(()) => ExitCode::Success,
        Err(e) => {
            eprintln!("error: recapc lsp: {e}");
            ExitCode::Usage
        }
    }
}

/// What the server can do, as it tells the client at `initialize`.
pub fn capabilities() -> ServerCapabilities {
    ServerCapabilities {
        text_document_sync: Some(TextDocumentSyncCapability::Options(
            TextDocumentSyncOptions {
                open_close: Some(true),
                change: Some(TextDocumentSyncKind::FULL),
                save: Some(TextDocumentSyncSaveOptions::Supported(true)),
                ..Default::default()
            },
        )),
        hover_provider: Some(HoverProviderCapability::Simple(true)),
        definition_provider: Some(OneOf::Left(true)),
        references_provider: Some(OneOf::Left(true)),
        rename_provider: Some(OneOf::Left(true)),
        document_symbol_provider: Some(OneOf::Left(true)),
        completion_provider: Some(CompletionOptions {
            trigger_characters: Some(vec![".".into(), "(".into(), " ".into()]),
            ..Default::default()
        }),
        code_action_provider: Some(CodeActionProviderCapability::Simple(true)),
        document_formatting_provider: Some(OneOf::Left(true)),
        ..Default::default()
    }
}

/// Serves one client on `connection` until it asks to shut down and exits.
pub fn serve(connection: &Connection) -> Result<(), String> {
    let caps = serde_json::to_value(capabilities()).map_err(|e| e.to_string())?;
    connection.initialize(caps).map_err(|e| e.to_string())?;
    let mut server = Server::default();
    for msg in &connection.receiver {
        match msg {
            Message::Request(req) => {
                if connection
                    .handle_shutdown(&req)
                    .map_err(|e| e.to_string())?
                {
                    return Ok(());
                }
                let resp = server.request(req);
                send(connection, resp.into())?;
            }
            Message::Notification(note) => {
                for out in server.notify(note) {
                    send(connection, out.into())?;
                }
            }
            Message::Response(_) => {}
        }
    }
    Ok(())
}

fn send(connection: &Connection, msg: Message) -> Result<(), String> {
    connection.sender.send(msg).map_err(|e| e.to_string())
}

/// The open documents, by URI.
#[derive(Default)]
pub struct Server {
    docs: HashMap<Uri, Document>,
}

fn parse<T: serde::de::DeserializeOwned>(params: Value) -> Result<T, ResponseError> {
    serde_json::from_value(params).map_err(|e| ResponseError {
        code: ErrorCode::InvalidParams as i32,
        message: e.to_string(),
        data: None,
    })
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, ResponseError> {
    serde_json::to_value(v).map_err(|e| ResponseError {
        code: ErrorCode::InternalError as i32,
        message: e.to_string(),
        data: None,
    })
}

impl Server {
    /// Answers one request.
    pub fn request(&mut self, req: Request) -> Response {
        Response {
            id: req.id,
            response_result: self.answer(&req.method, req.params),
        }
    }

    fn doc(&self, uri: &Uri) -> Result<&Document, ResponseError> {
        self.docs.get(uri).ok_or_else(|| ResponseError {
            code: ErrorCode::InvalidParams as i32,
            message: format!("{} is not open", uri.as_str()),
            data: None,
        })
    }

    /// The result of request `method`, as JSON.
    pub fn answer(&mut self, method: &str, params: Value) -> Result<Value, ResponseError> {
        match method {
            r::HoverRequest::METHOD => {
                let p: lsp_types::HoverParams = parse(params)?;
                let at = p.text_document_position_params;
                to_value(navigate::hover(
                    self.doc(&at.text_document.uri)?,
                    at.position,
                ))
            }
            r::GotoDefinition::METHOD => {
                let p: lsp_types::GotoDefinitionParams = parse(params)?;
                let at = p.text_document_position_params;
                to_value(navigate::definition(
                    self.doc(&at.text_document.uri)?,
                    at.position,
                ))
            }
            r::References::METHOD => {
                let p: lsp_types::ReferenceParams = parse(params)?;
                let at = p.text_document_position;
                let doc = self.doc(&at.text_document.uri)?;
                let include = p.context.include_declaration;
                to_value(navigate::references(doc, at.position, include))
            }
            r::Rename::METHOD => {
                let p: lsp_types::RenameParams = parse(params)?;
                let at = p.text_document_position;
                let doc = self.doc(&at.text_document.uri)?;
                let edit = navigate::rename(doc, at.position, &p.new_name).map_err(|message| {
                    ResponseError {
                        code: ErrorCode::InvalidRequest as i32,
                        message,
                        data: None,
                    }
                })?;
                to_value(edit)
            }
            r::Completion::METHOD => {
                let p: lsp_types::CompletionParams = parse(params)?;
                let at = p.text_document_position;
                to_value(complete::completion(
                    self.doc(&at.text_document.uri)?,
                    at.position,
                ))
            }
            r::DocumentSymbolRequest::METHOD => {
                let p: lsp_types::DocumentSymbolParams = parse(params)?;
                to_value(navigate::document_symbols(self.doc(&p.text_document.uri)?))
            }
            r::CodeActionRequest::METHOD => {
                let p: lsp_types::CodeActionParams = parse(params)?;
                to_value(actions::code_actions(
                    self.doc(&p.text_document.uri)?,
                    p.range,
                ))
            }
            r::Formatting::METHOD => {
                let p: lsp_types::DocumentFormattingParams = parse(params)?;
                let doc = self.doc(&p.text_document.uri)?;
                let edits = actions::formatting(doc).map_err(|message| ResponseError {
                    code: ErrorCode::RequestFailed as i32,
                    message,
                    data: None,
                })?;
                to_value(edits)
            }
            _ => Err(ResponseError {
                code: ErrorCode::MethodNotFound as i32,
                message: format!("recapc lsp does not answer {method}"),
                data: None,
            }),
        }
    }

    /// Takes one notification; gives the notifications to send back (fresh diagnostics).
    pub fn notify(&mut self, note: Notification) -> Vec<Notification> {
        let uri = match note.method.as_str() {
            n::DidOpenTextDocument::METHOD => {
                let Ok(p) = parse::<lsp_types::DidOpenTextDocumentParams>(note.params) else {
                    return Vec::new();
                };
                let doc = Document::new(p.text_document.uri.clone(), p.text_document.text);
                self.docs.insert(p.text_document.uri.clone(), doc);
                p.text_document.uri
            }
            n::DidChangeTextDocument::METHOD => {
                let Ok(p) = parse::<lsp_types::DidChangeTextDocumentParams>(note.params) else {
                    return Vec::new();
                };
                // Full synchronisation: the last change holds the whole text.
                let Some(change) = p.content_changes.into_iter().last() else {
                    return Vec::new();
                };
                let doc = Document::new(p.text_document.uri.clone(), change.text);
                self.docs.insert(p.text_document.uri.clone(), doc);
                p.text_document.uri
            }
            n::DidSaveTextDocument::METHOD => {
                // Files the pipeline names may have appeared since the last check.
                let Ok(p) = parse::<lsp_types::DidSaveTextDocumentParams>(note.params) else {
                    return Vec::new();
                };
                let Some(old) = self.docs.remove(&p.text_document.uri) else {
                    return Vec::new();
                };
                let text = p.text.unwrap_or(old.text);
                let doc = Document::new(p.text_document.uri.clone(), text);
                self.docs.insert(p.text_document.uri.clone(), doc);
                p.text_document.uri
            }
            n::DidCloseTextDocument::METHOD => {
                let Ok(p) = parse::<lsp_types::DidCloseTextDocumentParams>(note.params) else {
                    return Vec::new();
                };
                self.docs.remove(&p.text_document.uri);
                // Clear what the editor shows for a closed file.
                return vec![publish(p.text_document.uri, Vec::new())];
            }
            _ => return Vec::new(),
        };
        let diags = self
            .docs
            .get(&uri)
            .map(|d| d.lsp_diagnostics())
            .unwrap_or_default();
        vec![publish(uri, diags)]
    }
}

fn publish(uri: Uri, diagnostics: Vec<lsp_types::Diagnostic>) -> Notification {
    Notification::new(
        n::PublishDiagnostics::METHOD.to_string(),
        PublishDiagnosticsParams {
            uri,
            diagnostics,
            version: None,
        },
    )
}
