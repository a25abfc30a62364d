//! Prints the diagnostics of the files given as arguments, one JSON object per line, using the
//! fixture conventions (`# set:`, `# missing:`, `# mode: run`); with one file and no
//! diagnostics also the plan and its text graph. A tool for writing fixtures and debugging.
use recap_compiler::{check, CheckOptions, Host};

struct Missing(Vec<String>);
impl Host for Missing {
    fn file_exists(&self, p: &str) -> bool {
        !self.0.iter().any(|m| m == p)
    }
}

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    for path in &files {
        let src = std::fs::read_to_string(path).unwrap_or_default();
        let mut options = CheckOptions::default();
        let mut missing = Vec::new();
        for line in src.lines() {
            let l = line.trim();
            if let Some(kv) = l.strip_prefix("# set:") {
                if let Some((k, v)) = kv.trim().split_once('=') {
                    options.overrides.push((k.to_string(), v.to_string()));
                }
            } else if let Some(m) = l.strip_prefix("# missing:") {
                missing.push(m.trim().to_string());
            } else if l == "# mode: run" {
                options.missing_files_are_errors = true;
            }
        }
        let out = check(path, &src, &options, &Missing(missing));
        for d in &out.diagnostics {
            let s = d.primary_span();
            println!(
                "{}",
                serde_json::json!({"file": path, "severity": d.severity, "code": d.code, "start": s.start(), "end": s.end(),
                    "labelled": !d.labels.is_empty(), "message": d.message, "text": src.get(s.start()..s.end()), "help": d.help})
            );
        }
        if files.len() == 1 {
            if let Some(p) = out.plan {
                println!("{}", p.to_json());
                println!(
                    "{}",
                    recap_compiler::render_graph(&p, recap_compiler::GraphFormat::Text)
                );
            }
        }
    }
}
