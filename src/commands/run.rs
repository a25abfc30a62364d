//! `recapc run FILE [--set k=v]`: takes a pipeline, compiles it with missing files as errors
//! (a run cannot start without its data), and then would execute the plan. The runtime is not
//! built yet, so after a successful compile it says so and exits with code 3, documented in
//! README.md, so scripts can tell "the pipeline is wrong" (1) from "nothing can run it" (3).

use super::{compile_for_plan, error_line};
use crate::cli::RunArgs;
use crate::exit::ExitCode;

pub fn run(args: &RunArgs) -> ExitCode {
    let compiled = match compile_for_plan(&args.file, args.set.pairs(), true) {
        Ok((compiled, _plan)) => compiled,
        Err(code) => return code,
    };
    eprintln!("`{}` compiled without errors.", compiled.source.name());
    error_line(
        "the recap runtime is not built yet, so `recapc run` cannot execute the plan; \
         `recapc plan FILE` prints the plan it would run (exit code 3 means exactly this)",
    );
    ExitCode::RuntimeMissing
}
