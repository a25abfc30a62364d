//! `recapc generate CKPT --prompt TEXT`: takes a checkpoint (see
//! `recap_runtime::engine::trial::checkpoint_dir`) and a prompt; prints the model's completion
//! on stdout, and why it ended on stderr. A path that is not a checkpoint, or one without a
//! tokenizer, is a usage error (exit code 2); a model that fails while generating is exit 3.

use recap_runtime::engine::trial::{self, CheckpointError, GenerateOptions};

use super::{error_line, write_stdout};
use crate::cli::GenerateArgs;
use crate::exit::ExitCode;

pub fn run(args: &GenerateArgs) -> ExitCode {
    if !(args.temperature >= 0.0 && args.temperature.is_finite()) {
        error_line(&format!(
            "--temperature {} is not a temperature; give 0 (the most likely token) or more",
            args.temperature
        ));
        return ExitCode::Usage;
    }
    if args.max_tokens == 0 {
        error_line("--max-tokens 0 would generate nothing; give 1 or more");
        return ExitCode::Usage;
    }
    let result = trial::load_checkpoint(&args.checkpoint, &args.device).and_then(|(m, tok)| {
        let opts = GenerateOptions {
            max_tokens: args.max_tokens,
            temperature: args.temperature,
            seed: args.seed,
        };
        trial::generate_text(&m, &tok, &args.prompt, &opts)
    });
    match result {
        Ok((text, finish)) => {
            eprintln!("finished: {finish}");
            write_stdout(&format!("{text}\n"))
        }
        Err(e) => exit_for(&e),
    }
}

/// Reports `e` and gives its exit code: a checkpoint that cannot be used is a usage error, a
/// failure of the model a failed run.
pub(super) fn exit_for(e: &anyhow::Error) -> ExitCode {
    error_line(&format!("{e:#}"));
    if e.downcast_ref::<CheckpointError>().is_some() {
        ExitCode::Usage
    } else {
        ExitCode::RunFailed
    }
}
