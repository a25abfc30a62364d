//! `recapc completions SHELL`: takes a shell name, gives its completion script on stdout
//! (e.g. `recapc completions bash > ~/.local/share/bash-completion/completions/recapc`).

use clap::CommandFactory;

use super::write_stdout;
use crate::cli::{Cli, CompletionsArgs};
use crate::exit::ExitCode;

pub fn run(args: &CompletionsArgs) -> ExitCode {
    let mut command = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "recapc", &mut script);
    write_stdout(&String::from_utf8_lossy(&script))
}
