//! `[sync]`: the `syncd push --watch` whose control socket the go-time steps talk to.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Keys, RunbookError};

/// The `[sync]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// The control socket of the `syncd push --watch` on the source (relative to the runbook).
    pub control: PathBuf,
    /// `cutover run` goes on once the push is converged or its lag is at most this.
    pub max_lag: Duration,
    /// How long to wait for that, and for the final sync.
    pub converge_timeout: Duration,
    /// How long one request may take to be answered (a status; a final sync gets
    /// `converge_timeout`).
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    control: PathBuf,
    max_lag: Option<String>,
    converge_timeout: Option<String>,
    timeout: Option<String>,
}

pub(super) fn validate(s: RawSync, keys: &Keys<'_>, base: &Path) -> Result<Sync, RunbookError> {
    if s.control.as_os_str().is_empty() {
        return Err(keys.err("control", "must not be empty"));
    }
    Ok(Sync {
        control: base.join(s.control),
        max_lag: keys.duration("max_lag", s.max_lag.as_deref(), Duration::from_secs(5))?,
        converge_timeout: keys.positive_duration(
            "converge_timeout",
            s.converge_timeout.as_deref(),
            Duration::from_secs(300),
        )?,
        timeout: keys.positive_duration("timeout", s.timeout.as_deref(), Duration::from_secs(5))?,
    })
}
