//! `recapc import gguf FILE --out DIR`: takes a GGUF model file and gives a Hugging Face
//! directory that `hf("DIR")` loads, so quantised community checkpoints can be trained (after
//! dequantisation to f32). Failures name the file and the tensor or metadata key at fault.

use super::error_line;
use crate::cli::ImportCommand;
use crate::exit::ExitCode;

pub fn run(cmd: &ImportCommand) -> ExitCode {
    match cmd {
        ImportCommand::Gguf(args) => match recap_runtime::gguf::import(&args.file, &args.out) {
            Ok(summary) => {
                println!("{summary}");
                ExitCode::Success
            }
            Err(e) => {
                error_line(&e.to_string());
                ExitCode::Usage
            }
        },
    }
}
