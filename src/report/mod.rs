//! Reports on finished runs: takes run directories written by `recapc run`, gives charts
//! (`charts`), a per-run summary (`summary`, also printed when a run ends) and a comparison of
//! variants over seeds (`compare`). Everything here reads `metrics.jsonl` through `metrics`;
//! the commands in `commands/report.rs` and `commands/compare.rs` do the file writing.

pub mod charts;
pub mod compare;
pub mod metrics;
pub mod summary;

pub use metrics::{load_run, load_runs, Run};
