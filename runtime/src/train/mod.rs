//! The training engine's self-contained parts: takes rewards, log-probabilities, histories and
//! gradients; gives verifier outcomes, GRPO/SFT losses, objective weights, source draws,
//! optimiser updates and the chunking of a step's rows across cores. The learning-rate schedule
//! and the per-step metrics record live in the engine (`engine::optim`, `engine::progress`).
//!
//! Each part takes the plan's own type (`recap_plan::Verifier`, `Optimizer`, `Reweight`, `Mix`,
//! the GRPO objective's enums) with every default already filled in by the compiler from the
//! stdlib, which is their only home; and every stateful part (reweighters, mixers, optimisers,
//! RNG) exposes a serialisable state for checkpoints, so a resumed run continues exactly.

pub mod grpo;
pub mod math;
pub mod mix;
pub mod optim;
pub mod parallel;
pub mod reweight;
pub mod rng;
pub mod verifiers;
