//! `recapc graph FILE [--format dot|mermaid|text]`: takes a pipeline, gives its dataflow graph
//! (the nodes that run each training step and what feeds them) on stdout.

use super::{compile_for_plan, write_stdout};
use crate::cli::{GraphArgs, GraphFormat};
use crate::exit::ExitCode;

pub fn run(args: &GraphArgs) -> ExitCode {
    let plan = match compile_for_plan(&args.file, args.set.pairs(), false) {
        Ok((_, plan)) => plan,
        Err(code) => return code,
    };
    let format = match args.format {
        GraphFormat::Dot => recap_compiler::GraphFormat::Dot,
        GraphFormat::Mermaid => recap_compiler::GraphFormat::Mermaid,
        GraphFormat::Text => recap_compiler::GraphFormat::Text,
    };
    let mut text = recap_compiler::render_graph(&plan, format);
    if !text.ends_with('\n') {
        text.push('\n');
    }
    write_stdout(&text)
}
