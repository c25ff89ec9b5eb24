//! `[[service]]`: the stop, start and check commands of a service that `cutover service` runs,
//! locally or over ssh.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Keys, RunbookError};

/// Which server a service runs on, for `cutover run`: the source's services are stopped
/// before the promotion, the destination's started after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// On the source: stopped by `cutover run`, started again by its rollback.
    Source,
    /// On the destination: started by `cutover run`, stopped again by its rollback.
    Destination,
}

/// One `[[service]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Its name (unique in the runbook; `cutover service stop RUNBOOK NAME`).
    pub name: String,
    /// Where the commands run: `None` locally, else `[user@]host` for `ssh -o BatchMode=yes`.
    pub host: Option<String>,
    /// `side = "source"` or `"destination"`; `cutover run` needs it, `cutover service` not.
    pub side: Option<Side>,
    /// The ssh port, when not 22.
    pub ssh_port: Option<u16>,
    /// Extra `ssh` options (`-i KEY`, `-o ...`), each one argument.
    pub ssh_options: Vec<String>,
    /// The graceful stop command.
    pub stop: Option<String>,
    /// The start command.
    pub start: Option<String>,
    /// A command that exits 0 while the service runs.
    pub check: Option<String>,
    /// What to run when the graceful stop did not stop it within `wait`.
    pub kill: Option<String>,
    /// Local only (relative: from the runbook's directory): a file holding the service's pid; its process group gets SIGKILL when the
    /// graceful stop did not work and no `kill` command is given.
    pub pid_file: Option<PathBuf>,
    /// How long one command may run before it is killed with its process group.
    pub timeout: Duration,
    /// How long the check may take to change after a stop or start (and after the kill).
    pub wait: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    name: String,
    host: Option<String>,
    side: Option<Side>,
    ssh_port: Option<u16>,
    #[serde(default)]
    ssh_options: Vec<String>,
    stop: Option<String>,
    start: Option<String>,
    check: Option<String>,
    kill: Option<String>,
    pid_file: Option<PathBuf>,
    timeout: Option<String>,
    wait: Option<String>,
}

pub(super) fn validate(
    s: RawService,
    keys: &Keys<'_>,
    base: &Path,
) -> Result<Service, RunbookError> {
    let name = keys.non_empty("name", s.name)?;
    let host = s.host.map(|h| keys.non_empty("host", h)).transpose()?;
    if host.as_deref().is_some_and(|h| h.starts_with('-')) {
        return Err(keys.err("host", "must not start with '-'"));
    }
    if host.is_none() && (s.ssh_port.is_some() || !s.ssh_options.is_empty()) {
        return Err(keys.err("ssh_port", "ssh_port and ssh_options need host"));
    }
    if host.is_some() && s.pid_file.is_some() {
        return Err(keys.err(
            "pid_file",
            "is local only; give a kill command for a remote service",
        ));
    }
    let command = |key: &str, v: Option<String>| v.map(|c| keys.non_empty(key, c)).transpose();
    Ok(Service {
        name,
        host,
        side: s.side,
        ssh_port: s.ssh_port,
        ssh_options: s.ssh_options,
        stop: command("stop", s.stop)?,
        start: command("start", s.start)?,
        check: command("check", s.check)?,
        kill: command("kill", s.kill)?,
        pid_file: s.pid_file.map(|p| base.join(p)),
        timeout: keys.positive_duration(
            "timeout",
            s.timeout.as_deref(),
            Duration::from_secs(30),
        )?,
        wait: keys.duration("wait", s.wait.as_deref(), Duration::from_secs(30))?,
    })
}
