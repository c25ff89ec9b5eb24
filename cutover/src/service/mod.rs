//! `cutover service`: the `[[service]]` hooks, run locally (`sh -c`) or over `ssh` in
//! BatchMode when `host` is set.
//!
//! - [`stop`]: the graceful stop command, then the check until it fails (`wait`); if it still
//!   passes, the kill (the `kill` command, or SIGKILL to the process group of the pid in
//!   `pid_file`), then the check again. Succeeds only when the check fails at the end.
//! - [`start`]: the start command, then the check until it passes (`wait`).
//! - [`status`]: the check.
//!
//! Every command's exit status and output are captured in the report. A command that runs
//! past `timeout` is killed with its whole process group (locally; over ssh, the local ssh
//! client's group, which closes the connection). Output goes to temporary files, not pipes,
//! so that a start command that leaves a daemon running returns at once and the daemon is
//! not hit by SIGPIPE later. The decisions are in [`plan`], which does no IO.

pub mod plan;

use std::process::Stdio;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::runbook::Service;
use plan::{StartNext, StopNext, StopPhase};

/// How often the check is run while waiting.
const POLL: Duration = Duration::from_millis(200);
/// How much of each output stream the report keeps.
const OUTPUT_TAIL: usize = 4096;

/// Why a `service` command could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// No `[[service]]` has that name.
    #[error("no [[service]] named {0:?} in the runbook")]
    Unknown(String),
    /// The runbook has no `[[service]]`.
    #[error("the runbook has no [[service]]; `cutover service` needs one")]
    None,
    /// The service lacks the command this action needs.
    #[error("service {service:?} has no {key} command")]
    Missing {
        /// The service.
        service: String,
        /// `stop`, `start` or `check`.
        key: &'static str,
    },
    /// A command could not be started at all.
    #[error("service {service:?}: cannot run `{command}`{on}: {error}")]
    Spawn {
        /// The service.
        service: String,
        /// The command.
        command: String,
        /// ` on HOST` when remote.
        on: String,
        /// The cause.
        error: std::io::Error,
    },
}

/// One command that ran.
#[derive(Debug, Clone, Serialize)]
pub struct CommandResult {
    /// Why it ran: `stop`, `check`, `kill`, `start`.
    pub role: &'static str,
    /// The command line (for ssh, the remote command).
    pub command: String,
    /// The host it ran on, when remote.
    pub host: Option<String>,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    /// Whether it was killed at `timeout`.
    pub timed_out: bool,
    /// The end of its standard output.
    pub stdout: String,
    /// The end of its standard error.
    pub stderr: String,
    /// How long it ran.
    pub elapsed_ms: u64,
}

impl CommandResult {
    /// Exit 0, in time.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }

    fn describe(&self) -> String {
        if self.timed_out {
            format!("killed at the timeout after {} ms", self.elapsed_ms)
        } else if let Some(c) = self.exit_code {
            format!("exit {c}")
        } else {
            format!("signal {}", self.signal.unwrap_or(0))
        }
    }
}

/// What one service action did.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceReport {
    /// The service.
    pub name: String,
    /// `stop`, `start` or `status`.
    pub action: &'static str,
    /// Whether the check passes at the end (`None` without a check).
    pub running: Option<bool>,
    /// Whether the kill was needed (stop).
    pub killed: bool,
    /// Whether the action reached its goal.
    pub ok: bool,
    /// One line on how it went.
    pub summary: String,
    /// Every command that ran, in order (repeated checks: the first and the last).
    pub commands: Vec<CommandResult>,
}

/// What `cutover service ...` did, per service.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Per service, in runbook order.
    pub services: Vec<ServiceReport>,
    /// Whether all reached their goal.
    pub ok: bool,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Runs `command` for `service` (locally or over ssh) with its timeout.
pub async fn run_command(
    service: &Service,
    role: &'static str,
    command: &str,
) -> Result<CommandResult, ServiceError> {
    let spawn_error = |error| ServiceError::Spawn {
        service: service.name.clone(),
        command: command.to_string(),
        on: service
            .host
            .as_ref()
            .map_or(String::new(), |h| format!(" on {h}")),
        error,
    };
    let mut cmd = match &service.host {
        None => {
            let mut c = tokio::process::Command::new("sh");
            c.arg("-c").arg(command);
            c
        }
        Some(host) => {
            let mut c = tokio::process::Command::new("ssh");
            c.args(plan::ssh_args(
                host,
                service.ssh_port,
                &service.ssh_options,
                service.timeout,
                command,
            ));
            c
        }
    };
    let out = tempfile::tempfile().map_err(spawn_error)?;
    let err = tempfile::tempfile().map_err(spawn_error)?;
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone().map_err(spawn_error)?)
        .stderr(err.try_clone().map_err(spawn_error)?)
        .process_group(0)
        .kill_on_drop(true);
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let pid = child.id();
    let (status, timed_out) = match tokio::time::timeout(service.timeout, child.wait()).await {
        Ok(status) => (Some(status.map_err(spawn_error)?), false),
        Err(_) => {
            // The command and everything it started in its group.
            if let Some(pgid) = pid
                .and_then(|p| i32::try_from(p).ok())
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
            }
            let status = child.wait().await.ok();
            (status, true)
        }
    };
    let elapsed_ms = millis(started.elapsed());
    let read = |mut f: std::fs::File| {
        use std::io::{Read, Seek, SeekFrom};
        let mut buf = Vec::new();
        let _ = f.seek(SeekFrom::Start(0));
        let _ = f.take(1 << 20).read_to_end(&mut buf);
        plan::tail(&buf, OUTPUT_TAIL)
    };
    use std::os::unix::process::ExitStatusExt;
    Ok(CommandResult {
        role,
        command: command.to_string(),
        host: service.host.clone(),
        exit_code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        timed_out,
        stdout: read(out),
        stderr: read(err),
        elapsed_ms,
    })
}

/// The services `name` selects: that one, or all of them.
pub fn select<'a>(
    services: &'a [Service],
    name: Option<&str>,
) -> Result<Vec<&'a Service>, ServiceError> {
    if services.is_empty() {
        return Err(ServiceError::None);
    }
    match name {
        None => Ok(services.iter().collect()),
        Some(n) => services
            .iter()
            .find(|s| s.name == n)
            .map(|s| vec![s])
            .ok_or_else(|| ServiceError::Unknown(n.to_string())),
    }
}

fn needs<'a>(
    s: &'a Service,
    key: &'static str,
    v: &'a Option<String>,
) -> Result<&'a str, ServiceError> {
    v.as_deref().ok_or_else(|| ServiceError::Missing {
        service: s.name.clone(),
        key,
    })
}

/// Keeps the first and the latest check of a wait, so that a long wait does not fill the
/// report with identical lines.
fn push_check(commands: &mut Vec<CommandResult>, first_of_wait: usize, r: CommandResult) {
    if commands.len() > first_of_wait + 1 && commands.last().is_some_and(|c| c.role == "check") {
        commands.pop();
    }
    commands.push(r);
}

/// Stops each selected service gracefully, kills what does not stop, and verifies.
pub async fn stop(services: &[&Service]) -> Result<Report, ServiceError> {
    let mut out = Vec::new();
    for s in services {
        out.push(stop_one(s).await?);
    }
    Ok(Report {
        ok: out.iter().all(|r| r.ok),
        services: out,
    })
}

async fn stop_one(s: &Service) -> Result<ServiceReport, ServiceError> {
    let stop_cmd = needs(s, "stop", &s.stop)?;
    let mut commands = vec![run_command(s, "stop", stop_cmd).await?];
    let stop_result = commands[0].describe();
    let Some(check) = s.check.as_deref() else {
        let ok = commands[0].success();
        return Ok(ServiceReport {
            name: s.name.clone(),
            action: "stop",
            running: None,
            killed: false,
            ok,
            summary: format!("stop: {stop_result}; NOT verified (no check command)"),
            commands,
        });
    };
    let can_kill = s.kill.is_some() || s.pid_file.is_some();
    let mut phase = StopPhase::Graceful;
    let mut phase_started = Instant::now();
    let mut wait_start = commands.len();
    let mut killed = false;
    let mut kill_note = String::new();
    let stopped = loop {
        let c = run_command(s, "check", check).await?;
        let running = c.success();
        push_check(&mut commands, wait_start, c);
        match plan::stop_next(
            phase,
            running,
            phase_started.elapsed(),
            s.wait,
            POLL,
            can_kill,
        ) {
            StopNext::CheckAfter(d) => tokio::time::sleep(d).await,
            StopNext::Done { stopped } => break stopped,
            StopNext::Kill => {
                killed = true;
                if let Some(k) = s.kill.as_deref() {
                    let r = run_command(s, "kill", k).await?;
                    kill_note = format!("kill: {}", r.describe());
                    commands.push(r);
                } else if let Some(p) = &s.pid_file {
                    kill_note = kill_pid_file_group(p);
                }
                phase = StopPhase::Killed;
                phase_started = Instant::now();
                wait_start = commands.len();
            }
        }
    };
    let summary = match (stopped, killed) {
        (true, false) => format!("stopped gracefully (stop: {stop_result}); the check now fails"),
        (true, true) => format!(
            "did not stop within {:?} of the stop ({stop_result}); killed ({kill_note}); the check now fails",
            s.wait
        ),
        (false, true) => {
            format!("STILL RUNNING after the stop ({stop_result}) and the kill ({kill_note})")
        }
        (false, false) => format!(
            "STILL RUNNING {:?} after the stop ({stop_result}); no kill or pid_file configured",
            s.wait
        ),
    };
    Ok(ServiceReport {
        name: s.name.clone(),
        action: "stop",
        running: Some(!stopped),
        killed,
        ok: stopped,
        summary,
        commands,
    })
}

/// SIGKILL to the process group of the pid in `pid_file`.
fn kill_pid_file_group(pid_file: &std::path::Path) -> String {
    let text = match std::fs::read_to_string(pid_file) {
        Ok(t) => t,
        Err(e) => return format!("cannot read {}: {e}", pid_file.display()),
    };
    let Some(pid) = text
        .trim()
        .parse::<i32>()
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return format!(
            "{} does not hold a pid: {:?}",
            pid_file.display(),
            text.trim()
        );
    };
    let group = rustix::process::getpgid(Some(pid)).unwrap_or(pid);
    match rustix::process::kill_process_group(group, rustix::process::Signal::KILL) {
        Ok(()) => format!("SIGKILL to process group {}", group.as_raw_nonzero()),
        Err(e) => format!("SIGKILL to process group {}: {e}", group.as_raw_nonzero()),
    }
}

/// Starts each selected service and waits for its check to pass.
pub async fn start(services: &[&Service]) -> Result<Report, ServiceError> {
    let mut out = Vec::new();
    for s in services {
        let start_cmd = needs(s, "start", &s.start)?;
        let mut commands = vec![run_command(s, "start", start_cmd).await?];
        let started_ok = commands[0].success();
        let start_result = commands[0].describe();
        let report = match s.check.as_deref() {
            None => ServiceReport {
                name: s.name.clone(),
                action: "start",
                running: None,
                killed: false,
                ok: started_ok,
                summary: format!("start: {start_result}; NOT verified (no check command)"),
                commands,
            },
            Some(check) => {
                let begun = Instant::now();
                let running = loop {
                    let c = run_command(s, "check", check).await?;
                    let running = c.success();
                    push_check(&mut commands, 1, c);
                    match plan::start_next(running, begun.elapsed(), s.wait, POLL) {
                        StartNext::CheckAfter(d) => tokio::time::sleep(d).await,
                        StartNext::Done { running } => break running,
                    }
                };
                ServiceReport {
                    name: s.name.clone(),
                    action: "start",
                    running: Some(running),
                    killed: false,
                    ok: running,
                    summary: if running {
                        format!("started (start: {start_result}); the check passes")
                    } else {
                        format!(
                            "NOT RUNNING {:?} after the start ({start_result}): the check still fails",
                            s.wait
                        )
                    },
                    commands,
                }
            }
        };
        out.push(report);
    }
    Ok(Report {
        ok: out.iter().all(|r| r.ok),
        services: out,
    })
}

/// Runs each selected service's check.
pub async fn status(services: &[&Service]) -> Result<Report, ServiceError> {
    let mut out = Vec::new();
    for s in services {
        let check = needs(s, "check", &s.check)?;
        let c = run_command(s, "check", check).await?;
        let running = c.success();
        out.push(ServiceReport {
            name: s.name.clone(),
            action: "status",
            running: Some(running),
            killed: false,
            ok: running,
            summary: if running {
                "running (the check passes)".into()
            } else {
                format!("NOT running (the check: {})", c.describe())
            },
            commands: vec![c],
        });
    }
    Ok(Report {
        ok: out.iter().all(|r| r.ok),
        services: out,
    })
}
