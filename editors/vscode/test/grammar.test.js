// Tokenises every `.recap` file of the repository with the extension's TextMate grammar (the
// engine VS Code runs: vscode-textmate on vscode-oniguruma) and checks, against a small lexer
// of its own, that every comment, string, number and keyword gets its scope. Exits 1 with a
// line per miss.
"use strict";

const fs = require("fs");
const path = require("path");
const { execFileSync } = require("child_process");
const vsctm = require("vscode-textmate");
const oniguruma = require("vscode-oniguruma");

const root = path.resolve(__dirname, "..", "..", "..");
const grammarPath = path.join(__dirname, "..", "syntaxes", "recap.tmLanguage.json");

const ITEM_KEYWORDS = [
  "use", "param", "let", "model", "source", "verifier", "objective", "eval",
  "reweight", "mix", "train", "stage", "fn", "enum",
];

// The repository's `.recap` files: as git lists them, or by walking the tree outside git.
function recapFiles() {
  try {
    const out = execFileSync("git", ["ls-files", "*.recap"], { cwd: root, encoding: "utf8" });
    const files = out.split("\n").filter(Boolean);
    if (files.length > 0) return files;
  } catch (_) {
    // Not a git checkout: walk it.
  }
  if (!fs.existsSync(path.join(root, "Cargo.toml"))) {
    throw new Error(`${root} is not the recap repository`);
  }
  const found = [];
  const walk = (dir) => {
    for (const e of fs.readdirSync(path.join(root, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory() && !["node_modules", "target", ".git"].includes(e.name)) walk(rel);
      else if (e.isFile() && e.name.endsWith(".recap")) found.push(rel);
    }
  };
  walk(".");
  return found;
}

// The tokens a reader expects scoped, found independently of the grammar: [start, end, kind]
// with kind one of comment, string, number, keyword.
function expectedTokens(line) {
  const out = [];
  // A keyword starts an item; the same word before `:` or `=` is a parameter's name.
  const keyword = line.match(/^\s*([a-z]+)\b(?!\s*[:=])/);
  if (keyword && ITEM_KEYWORDS.includes(keyword[1])) {
    const start = line.indexOf(keyword[1]);
    out.push([start, start + keyword[1].length, "keyword"]);
  }
  let i = 0;
  while (i < line.length) {
    const c = line[i];
    if (c === "#") {
      out.push([i, line.length, "comment"]);
      break;
    }
    const raw = c === "r" && line[i + 1] === '"' && !/[A-Za-z0-9_]/.test(line[i - 1] || "");
    if (c === '"' || raw) {
      const start = i;
      i += raw ? 2 : 1;
      while (i < line.length && line[i] !== '"') i += !raw && line[i] === "\\" ? 2 : 1;
      i += 1;
      out.push([start, Math.min(i, line.length), "string"]);
      continue;
    }
    if (/[A-Za-z_]/.test(c)) {
      const m = line.slice(i).match(/^[A-Za-z_][A-Za-z0-9_]*/)[0];
      const next = line.slice(i + m.length).trimStart()[0];
      if ((m === "true" || m === "false")) out.push([i, i + m.length, "boolean"]);
      if (m === "in" && (next === "[" || next === "(")) out.push([i, i + 2, "keyword"]);
      i += m.length;
      continue;
    }
    if (/[0-9]/.test(c)) {
      const m = line.slice(i).match(/^[0-9][0-9_]*(\.[0-9]+)?([eE][+-]?[0-9]+)?%?/)[0];
      out.push([i, i + m.length, "number"]);
      i += m.length;
      continue;
    }
    i += 1;
  }
  return out;
}

const SCOPE = {
  comment: "comment.",
  string: "string.",
  number: "constant.numeric.",
  keyword: "keyword.",
  boolean: "constant.language.boolean.",
};

async function main() {
  const wasm = fs.readFileSync(require.resolve("vscode-oniguruma/release/onig.wasm"));
  await oniguruma.loadWASM(wasm.buffer.slice(wasm.byteOffset, wasm.byteOffset + wasm.byteLength));
  const registry = new vsctm.Registry({
    onigLib: Promise.resolve({
      createOnigScanner: (sources) => new oniguruma.OnigScanner(sources),
      createOnigString: (s) => new oniguruma.OnigString(s),
    }),
    loadGrammar: async () =>
      vsctm.parseRawGrammar(fs.readFileSync(grammarPath, "utf8"), grammarPath),
  });
  const grammar = await registry.loadGrammar("source.recap");
  const files = recapFiles();
  const misses = [];
  const counts = { comment: 0, string: 0, number: 0, keyword: 0, boolean: 0 };
  for (const file of files) {
    const lines = fs.readFileSync(path.join(root, file), "utf8").split(/\r?\n/);
    let stack = vsctm.INITIAL;
    lines.forEach((line, n) => {
      const result = grammar.tokenizeLine(line, stack);
      stack = result.ruleStack;
      for (const [start, end, kind] of expectedTokens(line)) {
        counts[kind] += 1;
        // Every grammar token inside the expected one must carry its scope.
        const inside = result.tokens.filter((t) => t.startIndex < end && t.endIndex > start);
        const bad = inside.filter((t) => !t.scopes.some((s) => s.startsWith(SCOPE[kind])));
        if (inside.length === 0 || bad.length > 0) {
          const text = line.slice(start, end);
          const got = (bad[0] || { scopes: [] }).scopes.join(" ");
          misses.push(`${file}:${n + 1}:${start + 1}: ${kind} \`${text}\` scoped as [${got}]`);
        }
      }
    });
  }
  if (misses.length > 0) {
    console.error(misses.slice(0, 50).join("\n"));
    console.error(`grammar test: ${misses.length} tokens without their scope`);
    process.exit(1);
  }
  const summary = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ");
  console.log(`grammar test: ${files.length} files, every token scoped (${summary})`);
  if (files.length === 0 || counts.keyword === 0) {
    console.error("grammar test: found nothing to check");
    process.exit(1);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
