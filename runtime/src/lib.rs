//! The recap runtime: executes a `recap_plan::Plan` with candle. Takes a plan (and the data and
//! weights it names); gives a training run: metrics, samples and checkpoints in a run directory.
//! Depends on the plan crate only, never on the compiler.

pub mod alloc;
pub mod checkpoint;
pub mod dist;
pub mod engine;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod ops;
pub mod tokenizer;
pub mod train;
