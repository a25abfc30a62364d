//! The `recapc` command-line front end as a library: takes command-line arguments and the
//! files they name; gives rendered diagnostics, plans, graphs, new pipeline files and exit
//! codes. The binary in `main.rs` is a thin wrapper so that tests can call the same code the
//! user runs.

pub mod cli;
pub mod commands;
pub mod exit;
pub mod host;
pub mod input;
pub mod lsp;
pub mod render;
pub mod report;
pub mod templates;

pub use cli::Cli;
pub use exit::ExitCode;
