//! The `recapc` binary: parses the command line and hands it to the library, then exits with
//! the documented code (0 clean, 1 diagnostics with errors, 2 usage or IO, 3 runtime missing).

use clap::Parser;

fn main() {
    let cli = recapc::Cli::parse();
    let code = recapc::commands::run(cli);
    std::process::exit(code.as_i32());
}
