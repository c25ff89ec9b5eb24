//! `[[service]]`: the stop, start and check commands of a service that `cutover service` runs,
//! locally or over ssh.

use std::time::Duration;

use serde::Deserialize;

use super::{Keys, RunbookError};

/// One `[[service]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name (unique in the runbook; `cutover service stop RUNBOOK NAME`).
    pub name: String,
    /// Where the commands run: `None` locally, else `[user@]host` for `ssh -o BatchMode=yes`.
    pub host: Option<String>,
    /// The graceful stop command.
    pub stop: Option<String>,
    /// The start command.
    pub start: Option<String>,
    /// A command that exits 0 while the service runs.
    pub check: Option<String>,
    /// What to run when the graceful stop did not stop it in time.
    pub kill: Option<String>,
    /// How long one command may run before it is killed with its process group.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: String,
    host: Option<String>,
    stop: Option<String>,
    start: Option<String>,
    check: Option<String>,
    kill: Option<String>,
    timeout: Option<String>,
}

pub(super) fn validate(s: RawService, keys: &Keys<'_>) -> Result<Service, RunbookError> {
    let name = keys.non_empty("name", s.name)?;
    let host = s.host.map(|h| keys.non_empty("host", h)).transpose()?;
    if host.as_deref().is_some_and(|h| h.starts_with('-')) {
        return Err(keys.err("host", "must not start with '-'"));
    }
    let command = |key: &str, v: Option<String>| v.map(|c| keys.non_empty(key, c)).transpose();
    Ok(Service {
        name,
        host,
        stop: command("stop", s.stop)?,
        start: command("start", s.start)?,
        check: command("check", s.check)?,
        kill: command("kill", s.kill)?,
        timeout: keys.positive_duration(
            "timeout",
            s.timeout.as_deref(),
            Duration::from_secs(30),
        )?,
    })
}
