//! Rules a parsed [`RunConfig`](super::RunConfig) must satisfy.

use super::RunConfig;

/// One problem in a config: the field path, what is wrong, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Field path such as `stages[1].steps`.
    pub path: String,
    /// What is wrong and what to do, e.g. `must be > 0 — this stage would train no steps`.
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl RunConfig {
    /// Every problem of the config, or `Ok` when it can run.
    pub fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        Ok(())
    }
}
