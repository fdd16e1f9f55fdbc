//! What was built: version, git hash, build time, cargo features. Recorded in every run's state.json.

use serde::{Deserialize, Serialize};

/// Facts about the running binary, fixed at build time by `build.rs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Crate version.
    pub version: String,
    /// Short git hash, `-dirty` when the tree had uncommitted changes, `unknown` outside git.
    pub git_hash: String,
    /// Build time, seconds since the Unix epoch.
    pub build_unix_secs: u64,
    /// Enabled cargo features, comma-separated.
    pub features: String,
    /// Cargo profile (`debug` or `release`).
    pub profile: String,
}

impl BuildInfo {
    /// Build information of this binary.
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").to_string(),
            git_hash: env!("WICK_GIT_HASH").to_string(),
            build_unix_secs: env!("WICK_BUILD_UNIX_SECS").parse().unwrap_or(0),
            features: env!("WICK_FEATURES").to_string(),
            profile: env!("WICK_PROFILE").to_string(),
        }
    }

    /// One line for `wick --version`.
    pub fn summary(&self) -> String {
        let features = if self.features.is_empty() { "cpu" } else { self.features.as_str() };
        format!("{} ({}, {}, features: {})", self.version, self.git_hash, self.profile, features)
    }
}
