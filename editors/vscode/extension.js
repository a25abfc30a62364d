// The recap extension's client: starts `recapc lsp` (the path is the `recap.server.path`
// setting) over standard input and output for every `.recap` file. Plain JavaScript, so the
// extension needs no build step.
"use strict";

const vscode = require("vscode");
const { LanguageClient } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const config = vscode.workspace.getConfiguration("recap");
  const command = config.get("server.path") || "recapc";
  const run = { command, args: ["lsp"] };
  client = new LanguageClient(
    "recap",
    "recap language server",
    { run, debug: run },
    { documentSelector: [{ language: "recap" }] }
  );
  // A changed server path takes effect only in a new server, so offer to reload.
  context.subscriptions.push(
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration("recap.server.path")) {
        vscode.commands.executeCommand("workbench.action.restartExtensionHost");
      }
    })
  );
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
