//! How far the models are explored: the CI bound, which finishes in
//! seconds in a debug build, or the deeper one (`LB_MODELS_DEPTH=long`,
//! or `lb-models --long`).

/// How deep a check goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// Small enough for every `cargo test`.
    Ci,
    /// More faults, changes and workers: minutes, for `cargo xtask verify --long`.
    Long,
}

/// The environment variable that asks the tests for the deeper bound.
pub const DEPTH_VAR: &str = "LB_MODELS_DEPTH";

impl Depth {
    /// `Long` when [`DEPTH_VAR`] is `long`, else `Ci`.
    pub fn from_env() -> Self {
        match std::env::var(DEPTH_VAR).as_deref() {
            Ok("long") => Self::Long,
            _ => Self::Ci,
        }
    }
}
