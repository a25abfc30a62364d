//! The compiler's name table and the plan's graph builder share one hash index over keyed
//! lists; it lives in the plan crate, which the graph builder is part of.

pub(crate) use recap_plan::key_index::KeyIndex;
