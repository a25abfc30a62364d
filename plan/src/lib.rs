//! The serialisable, versioned Plan: the contract between the recap compiler and runtime.
//! The compiler produces it; the runtime executes it without the compiler. Takes nothing in.

use serde::{Deserialize, Serialize};

/// Bumped on every incompatible change of the plan's shape.
pub const PLAN_VERSION: u32 = 1;

/// The resolved job (filled in by the front-end work).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
}
