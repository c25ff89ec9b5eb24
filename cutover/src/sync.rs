//! The go-time steps' side of syncd's control socket (`[sync]`): wait until the push has
//! converged, then the final sync with equal merkle roots.
//!
//! It speaks syncd's JSON-lines protocol through `syncd::control::Client`, which is
//! blocking, so every request runs on tokio's blocking pool under a deadline. The verdicts
//! ([`converged`]) are pure functions of the status the daemon sent.

use std::time::Duration;

use serde::Serialize;
use syncd::control::{Client, ControlError, FinalSync, Status};
use tokio::time::Instant;

use crate::runbook::Sync;

/// Errors talking to the push; each names the socket.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The control socket did not answer, refused or answered nonsense.
    #[error("syncd control socket {0}")]
    Control(#[from] ControlError),
    /// The push did not converge in time.
    #[error("syncd control socket {socket}: not converged after {waited_ms} ms ({detail})")]
    NotConverged {
        /// The socket.
        socket: String,
        /// How long we waited.
        waited_ms: u64,
        /// The last status in words.
        detail: String,
    },
    /// The final sync found differences.
    #[error("syncd control socket {socket}: the final sync left {} differing path(s): {}", differences.len(), differences.iter().take(5).cloned().collect::<Vec<_>>().join(", "))]
    Differs {
        /// The socket.
        socket: String,
        /// The differing paths.
        differences: Vec<String>,
    },
    /// The blocking task failed.
    #[error("syncd control socket {socket}: {message}")]
    Task {
        /// The socket.
        socket: String,
        /// What happened.
        message: String,
    },
}

/// What [`converge`] saw last.
#[derive(Debug, Clone, Serialize)]
pub struct ConvergeReport {
    /// The source's root.
    pub local_root: String,
    /// The destination's root, as the push last saw it.
    pub peer_root: Option<String>,
    /// Whether the push said converged.
    pub converged: bool,
    /// Its lag.
    pub lag_seconds: Option<f64>,
    /// Files and bytes still to send.
    pub pending_files: u64,
    /// Bytes still to send.
    pub pending_bytes: u64,
    /// How long the wait took.
    pub waited_ms: u64,
}

/// What [`final_sync`] found.
#[derive(Debug, Clone, Serialize)]
pub struct FinalReport {
    /// The root both sides hold.
    pub root: String,
    /// How long it took.
    pub elapsed_ms: u64,
}

/// Whether `status` is good enough to go on: converged, or lagging at most `max_lag` with
/// nothing pending that the lag does not cover.
pub fn converged(status: &Status, max_lag: Duration) -> bool {
    status.converged
        || status
            .lag_seconds
            .is_some_and(|l| l <= max_lag.as_secs_f64())
}

fn describe(s: &Status) -> String {
    format!(
        "converged {}, lag {}, {} file(s) / {} byte(s) pending{}",
        s.converged,
        s.lag_seconds
            .map_or("unknown".into(), |l| format!("{l:.1} s")),
        s.pending_files,
        s.pending_bytes,
        s.last_error
            .as_ref()
            .map_or(String::new(), |e| format!(", last error: {e}"))
    )
}

async fn blocking<T: Send + 'static>(
    sync: &Sync,
    f: impl FnOnce() -> Result<T, ControlError> + Send + 'static,
) -> Result<T, SyncError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SyncError::Task {
            socket: sync.control.display().to_string(),
            message: e.to_string(),
        })?
        .map_err(SyncError::from)
}

/// One `status` request.
pub async fn status(sync: &Sync) -> Result<Status, SyncError> {
    let (path, timeout) = (sync.control.clone(), sync.timeout);
    blocking(sync, move || {
        let mut c = Client::connect(&path)?;
        c.set_timeout(timeout)?;
        c.status()
    })
    .await
}

/// Polls `status` until [`converged`], up to `converge_timeout`.
pub async fn converge(sync: &Sync) -> Result<ConvergeReport, SyncError> {
    let started = Instant::now();
    loop {
        let s = status(sync).await?;
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if converged(&s, sync.max_lag) {
            return Ok(ConvergeReport {
                local_root: s.local_root,
                peer_root: s.peer_root,
                converged: s.converged,
                lag_seconds: s.lag_seconds,
                pending_files: s.pending_files,
                pending_bytes: s.pending_bytes,
                waited_ms,
            });
        }
        if started.elapsed() >= sync.converge_timeout {
            return Err(SyncError::NotConverged {
                socket: sync.control.display().to_string(),
                waited_ms,
                detail: describe(&s),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The final sync: the push flushes what is pending and compares roots; differences fail.
pub async fn final_sync(sync: &Sync) -> Result<FinalReport, SyncError> {
    let started = Instant::now();
    let (path, timeout) = (sync.control.clone(), sync.converge_timeout);
    let r = blocking(sync, move || {
        let mut c = Client::connect(&path)?;
        c.set_timeout(timeout)?;
        c.final_sync()
    })
    .await?;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    match r {
        FinalSync::Converged { root } => Ok(FinalReport { root, elapsed_ms }),
        FinalSync::Differs { differences } => Err(SyncError::Differs {
            socket: sync.control.display().to_string(),
            differences,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converged_by_flag_or_by_lag() {
        let mut s = Status {
            converged: true,
            ..Status::default()
        };
        assert!(converged(&s, Duration::ZERO));
        s.converged = false;
        assert!(!converged(&s, Duration::from_secs(5)), "unknown lag");
        s.lag_seconds = Some(4.9);
        assert!(converged(&s, Duration::from_secs(5)));
        s.lag_seconds = Some(5.1);
        assert!(!converged(&s, Duration::from_secs(5)));
    }
}
