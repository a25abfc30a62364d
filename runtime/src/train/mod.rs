//! The training engine's self-contained parts: takes rewards, log-probabilities, histories and
//! gradients; gives verifier outcomes, GRPO/SFT losses, objective weights, source draws,
//! optimiser updates and the chunking of a step's rows across cores. The learning-rate schedule
//! and the per-step metrics record live in the engine (`engine::optim`, `engine::progress`), which
//! maps the plan's types onto these parts.
//!
//! Each module carries its own small serde config structs so the plan can map onto them, and
//! every stateful part (reweighters, mixers, optimisers, RNG) exposes a serialisable state for
//! checkpoints, so a resumed run continues exactly.

pub mod grpo;
pub mod math;
pub mod mix;
pub mod optim;
pub mod parallel;
pub mod reweight;
pub mod rng;
pub mod verifiers;
