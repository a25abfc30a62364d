// Packages the extension with the pinned vsce (which needs no network to package) and checks
// that the package holds every file that package.json's `main` and `contributes` name, and the
// language client the extension loads. Exits 1 with what is missing.
"use strict";

const fs = require("fs");
const os = require("os");
const path = require("path");
const { execFileSync } = require("child_process");

const dir = path.join(__dirname, "..");
const manifest = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
const vsce = path.join(dir, "node_modules", ".bin", "vsce");
const run = (args) => execFileSync(vsce, args, { cwd: dir, encoding: "utf8" });

const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "recap-vsix-")), "recap.vsix");
run(["package", "--skip-license", "--out", out]);
if (!fs.existsSync(out) || fs.statSync(out).size === 0) {
  console.error(`package test: vsce wrote no ${out}`);
  process.exit(1);
}
const listed = new Set(run(["ls"]).split("\n").map((l) => l.trim()).filter(Boolean));

const c = manifest.contributes;
const wanted = [
  manifest.main,
  ...c.languages.map((l) => l.configuration),
  ...c.grammars.map((g) => g.path),
  "node_modules/vscode-languageclient/node.js",
].map((p) => path.normalize(p).replace(/^\.\//, ""));
const missing = wanted.filter((p) => !listed.has(p));
for (const p of wanted) {
  if (!fs.existsSync(path.join(dir, p))) missing.push(`${p} (not on disk)`);
}
if (!c.languages.some((l) => l.extensions.includes(".recap"))) missing.push("the .recap language");
if (missing.length > 0) {
  console.error(`package test: missing from the package: ${missing.join(", ")}`);
  process.exit(1);
}
console.log(`package test: ${out} holds ${wanted.join(", ")}`);
