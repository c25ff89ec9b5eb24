//! `[sync]`: the `syncd push --watch` whose control socket the go-time steps talk to.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{Keys, RunbookError};

/// The `[sync]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// The control socket of the `syncd push --watch` on the source (relative to the runbook).
    pub control: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    control: PathBuf,
}

pub(super) fn validate(s: RawSync, keys: &Keys<'_>, base: &Path) -> Result<Sync, RunbookError> {
    if s.control.as_os_str().is_empty() {
        return Err(keys.err("control", "must not be empty"));
    }
    Ok(Sync {
        control: base.join(s.control),
    })
}
