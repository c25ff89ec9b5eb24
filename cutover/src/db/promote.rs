//! `cutover db promote`: make the replica the primary without losing an acknowledged write.
//!
//! The order is the whole point:
//!
//! 1. Pre-checks, which change nothing: the replica replicates from this source with both
//!    threads running and no error, and it is (or gets, within `catch_up_timeout`) at most
//!    `max_lag_at_fence` transactions behind.
//! 2. **Fence** the source (`read_only`, plus `super_read_only` on MySQL). On MariaDB, which
//!    has no `super_read_only`, the client sessions that remain after `fence_grace` are ended,
//!    because accounts with `READ_ONLY ADMIN` could still write; replication threads are left
//!    alone.
//! 3. Read the source's final position: nothing can be added to it any more.
//! 4. Wait on the replica for exactly that position, up to `catch_up_timeout`.
//! 5. Stop replication, forget the replica configuration, make the replica writable.
//! 6. With `--reverse`, make the old source a replica of the new primary.
//!
//! A failure anywhere before the replica is writable is undone: the source is made writable
//! again (or left read-only when it was so before), and the replica is made to replicate
//! again. The report says what happened and the write-unavailable window (fence → replica
//! writable). After the replica is writable nothing is undone: from then on, undoing would
//! lose the writes it accepts.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::dialect::{Position, SourceSpec, StartAt, WaitOutcome};
use super::position::{ThreadState, transactions_behind};
use super::{DbError, Server, connect_pair, interrupted, source_address};
use crate::runbook::Database;

/// How a promotion ended.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum PromoteOutcome {
    /// The replica is the primary.
    Promoted {
        /// Milliseconds from the fence to the replica being writable.
        write_unavailable_ms: u64,
        /// The source's final position, reached by the replica.
        final_position: String,
        /// Sessions ended on the source after the grace period.
        sessions_ended: usize,
        /// What `--reverse` did, if asked.
        reverse: Option<String>,
        /// Set when `--reverse` was asked but did not work.
        reverse_failed: Option<String>,
    },
    /// Nothing was changed: a pre-check failed.
    Refused {
        /// Why.
        reason: String,
    },
    /// A step failed after the fence; it was undone.
    Aborted {
        /// Why.
        reason: String,
        /// What the undo did, one line per action.
        undone: Vec<String>,
        /// Milliseconds the source was fenced.
        fenced_ms: u64,
    },
}

/// The result of `promote`.
#[derive(Debug, Clone, Serialize)]
pub struct PromoteReport {
    /// True when promoted (and, with `--reverse`, the reverse replication runs).
    pub ok: bool,
    /// The source's dialect.
    pub dialect: String,
    /// The outcome.
    #[serde(flatten)]
    pub outcome: PromoteOutcome,
    /// One line per step taken, in order, with milliseconds since the start.
    pub steps: Vec<String>,
}

/// How far a promotion got. Each flag is set before its step runs, because a step that
/// fails or is interrupted may still have taken effect; the undo restores the replica from its
/// actual state and uses these only to know what it may have to put back.
#[derive(Debug, Default)]
struct Progress {
    /// The fence statement was sent to the source.
    fenced: bool,
    /// The replica's replication may have been stopped (and reset, and made writable).
    replica_stopped: bool,
}

/// Runs `promote` against the pair in `db`.
pub async fn promote(db: &Database, reverse: bool) -> Result<PromoteReport, DbError> {
    let (mut source, mut replica) = connect_pair(db).await?;
    let started = Instant::now();
    let mut steps = Vec::new();
    let d = source.dialect;
    let dialect = d.describe();
    let report = |outcome: PromoteOutcome, steps: Vec<String>| {
        let ok = matches!(
            outcome,
            PromoteOutcome::Promoted {
                reverse_failed: None,
                ..
            }
        );
        PromoteReport {
            ok,
            dialect: dialect.clone(),
            outcome,
            steps,
        }
    };

    // 1. Pre-checks: nothing changes if these fail.
    if let Some(reason) = precheck(&mut source, &mut replica, reverse).await? {
        return Ok(report(PromoteOutcome::Refused { reason }, steps));
    }
    let was_read_only = source.global_bool("read_only").await?;
    if reverse {
        // The old source will log in to the new primary with this account.
        replica.exec("SET SESSION sql_log_bin = 0").await?;
        for sql in d.create_replication_user(&db.replication_user, &db.replication_password) {
            replica
                .exec_secret("creating the replication user", &sql)
                .await?;
        }
        replica.exec("SET SESSION sql_log_bin = 1").await?;
    }
    // A second connection for ending sessions, opened before the fence so that the fence
    // does not wait for a connection handshake.
    let mut killer = source.reconnect().await?;
    let mut log = |steps: &mut Vec<String>, s: String| {
        steps.push(format!("{:>6} ms  {s}", started.elapsed().as_millis()));
    };
    // The replica's lag at the fence is what the window has to absorb: fence only once it is
    // small (as Vitess and MySQL Shell sync the candidate before demoting the primary).
    let deadline = Instant::now() + db.catch_up_timeout;
    loop {
        let (Position::Gtid(at_source), Some(applied)) = (
            source.own_position().await?,
            replica.applied_position().await?,
        ) else {
            break; // file/position: no transaction count to compare
        };
        let Ok(behind) = transactions_behind(&d, &at_source, &applied) else {
            break;
        };
        if behind <= db.max_lag_at_fence {
            log(
                &mut steps,
                format!(
                    "pre-checks passed; replica {behind} transaction(s) behind \
                     (max_lag_at_fence {})",
                    db.max_lag_at_fence
                ),
            );
            break;
        }
        if Instant::now() >= deadline {
            let reason = format!(
                "replica {} stayed {behind} transactions behind, more than max_lag_at_fence {}, \
                 for catch_up_timeout {}; nothing was changed and the source stays writable",
                replica.addr,
                db.max_lag_at_fence,
                humantime::format_duration(db.catch_up_timeout)
            );
            let _ = killer.disconnect().await;
            return Ok(report(PromoteOutcome::Refused { reason }, steps));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 2. Fence.
    let mut progress = Progress::default();
    let fenced_at = Instant::now();
    // An operator's Ctrl-C (or a SIGTERM) while fenced is a failure like any other: undo.
    let result = tokio::select! {
        r = fence_and_switch(
            db,
            &mut source,
            &mut replica,
            &mut killer,
            &mut progress,
            &mut steps,
            &mut log,
        ) => r.map_err(|reason| (reason, true)),
        // The statement in flight was abandoned mid-way: its connection is not reusable.
        signal = interrupted() => Err((format!("interrupted by {signal}"), false)),
    };
    let _ = killer.disconnect().await;
    match result {
        Ok((final_pos, sessions_ended, start)) => {
            let window = fenced_at.elapsed();
            log(
                &mut steps,
                format!(
                    "replica is writable: write-unavailable window {} ms",
                    window.as_millis()
                ),
            );
            let (reverse_done, reverse_failed) = if reverse {
                match reverse_replication(db, &mut source, &mut replica, &final_pos, &start).await {
                    Ok(msg) => {
                        log(&mut steps, msg.clone());
                        (Some(msg), None)
                    }
                    Err(e) => {
                        let msg = format!(
                            "promoted, but the old source could not be made a replica of the \
                             new primary: {e}; it stays read-only"
                        );
                        log(&mut steps, msg.clone());
                        (None, Some(msg))
                    }
                }
            } else {
                (None, None)
            };
            source.close().await;
            replica.close().await;
            Ok(report(
                PromoteOutcome::Promoted {
                    write_unavailable_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
                    final_position: final_pos.to_string(),
                    sessions_ended,
                    reverse: reverse_done,
                    reverse_failed,
                },
                steps,
            ))
        }
        Err((reason, connections_usable)) => {
            let fenced_ms = u64::try_from(fenced_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            log(&mut steps, format!("failed: {reason}; undoing"));
            let first = if connections_usable {
                undo(db, &mut source, &mut replica, &progress, was_read_only)
                    .await
                    .map_err(|e| format!("{e}; on fresh connections: "))
            } else {
                Err(String::new())
            };
            let undone = match first {
                Ok(undone) => {
                    source.close().await;
                    replica.close().await;
                    undone
                }
                // The connections may be what failed: (try again) on fresh ones.
                Err(first) => {
                    let retry = async {
                        let (mut s, mut r) = connect_pair(db).await?;
                        let undone = undo(db, &mut s, &mut r, &progress, was_read_only).await?;
                        s.close().await;
                        r.close().await;
                        Ok::<_, DbError>(undone)
                    };
                    retry.await.map_err(|second| DbError::UndoFailed {
                        reason: reason.clone(),
                        message: format!("{first}{second}"),
                    })?
                }
            };
            for u in &undone {
                log(&mut steps, format!("undo: {u}"));
            }
            Ok(report(
                PromoteOutcome::Aborted {
                    reason,
                    undone,
                    fenced_ms,
                },
                steps,
            ))
        }
    }
}

/// Returns why the promotion must not start, or `None`.
async fn precheck(
    source: &mut Server,
    replica: &mut Server,
    reverse: bool,
) -> Result<Option<String>, DbError> {
    let Some(row) = replica.replica_status().await? else {
        return Ok(Some(format!(
            "replica {} does not replicate from anything; nothing was changed",
            replica.addr
        )));
    };
    if let Some(id) = row.source_server_id.filter(|id| *id != 0)
        && id != source.server_id
    {
        return Ok(Some(format!(
            "replica {} replicates from server_id {id}, not from the source {} (server_id {}); \
             nothing was changed",
            replica.addr, source.addr, source.server_id
        )));
    }
    if let Some(problem) = row.status.problem() {
        return Ok(Some(format!(
            "replica {} is not replicating cleanly ({problem}); nothing was changed and the \
             source stays writable",
            replica.addr
        )));
    }
    if reverse && !(source.global_bool("log_bin").await? && replica.global_bool("log_bin").await?) {
        return Ok(Some(
            "--reverse needs the binary log on both servers; nothing was changed".into(),
        ));
    }
    Ok(None)
}

type Log<'a> = dyn FnMut(&mut Vec<String>, String) + 'a;

/// Steps 2–5. On error returns the reason; `progress` says how far it got.
async fn fence_and_switch(
    db: &Database,
    source: &mut Server,
    replica: &mut Server,
    killer: &mut mysql_async::Conn,
    progress: &mut Progress,
    steps: &mut Vec<String>,
    log: &mut Log<'_>,
) -> Result<(Position, usize, Option<(String, u64)>), String> {
    let d = source.dialect;
    for sql in d.fence() {
        progress.fenced = true;
        source.exec(sql).await.map_err(|e| e.to_string())?;
    }
    log(
        steps,
        format!("fenced source {}: {}", source.addr, d.fence().join("; ")),
    );

    let mut ended = 0;
    if d.fence_ends_sessions() {
        let waited = grace(source, db.fence_grace)
            .await
            .map_err(|e| e.to_string())?;
        ended = end_sessions(source, killer)
            .await
            .map_err(|e| e.to_string())?;
        log(
            steps,
            format!(
                "ended {ended} remaining client session(s) after {} ms of grace (at most {} ms, \
                 less when no session is running a statement)",
                waited.as_millis(),
                db.fence_grace.as_millis()
            ),
        );
    }

    let mut final_pos = source.own_position().await.map_err(|e| e.to_string())?;
    log(steps, format!("source final position {final_pos}"));

    // Wait for the final position. On MariaDB an account with READ_ONLY ADMIN that
    // reconnected after its session was ended could still have written: so re-read the
    // source's position once the replica is there, and wait again if it moved.
    let deadline = std::time::Instant::now() + db.catch_up_timeout;
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let wait = d.wait_for_position(&final_pos, left);
        let value = replica
            .query_string(&wait)
            .await
            .map_err(|e| e.to_string())?
            .and_then(|v| v.trim().parse::<i64>().ok());
        let outcome = d.wait_outcome(&final_pos, value);
        if outcome == WaitOutcome::Reached {
            let now = source.own_position().await.map_err(|e| e.to_string())?;
            if now == final_pos {
                log(steps, format!("replica reached {final_pos}"));
                break;
            }
            log(
                steps,
                format!(
                    "source moved from {final_pos} to {now} after the fence (a privileged \
                     session wrote); waiting for that"
                ),
            );
            if d.fence_ends_sessions() {
                let ended = end_sessions(source, killer)
                    .await
                    .map_err(|e| e.to_string())?;
                log(steps, format!("ended {ended} more session(s)"));
            }
            final_pos = now;
            continue;
        }
        let state = match replica.replica_status().await {
            Ok(Some(r)) => r
                .status
                .problem()
                .unwrap_or_else(|| "both threads running".into()),
            Ok(None) => "replication not configured".into(),
            Err(e) => e.to_string(),
        };
        let applied = replica
            .applied_position()
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        return Err(match outcome {
            WaitOutcome::TimedOut => format!(
                "replica did not reach the source's final position {final_pos} within \
                 catch_up_timeout {} (it has applied {applied}; {state})",
                humantime::format_duration(db.catch_up_timeout)
            ),
            _ => format!("replica is not replicating ({state})"),
        });
    }

    progress.replica_stopped = true;
    replica
        .exec(d.stop_replica())
        .await
        .map_err(|e| e.to_string())?;
    replica
        .exec(d.reset_replica_all())
        .await
        .map_err(|e| e.to_string())?;
    // Where the new primary's own history starts, for a file/position reverse replication:
    // read before it accepts its first write.
    let start = replica
        .binlog_coordinate()
        .await
        .map_err(|e| e.to_string())?;
    for sql in d.unfence() {
        replica.exec(sql).await.map_err(|e| e.to_string())?;
    }
    Ok((final_pos, ended, start))
}

/// Lets statements that were running at the fence finish, for at most `limit`; returns early
/// once no client session is running one (idle sessions have nothing in flight to lose).
async fn grace(source: &mut Server, limit: Duration) -> Result<Duration, DbError> {
    let start = Instant::now();
    let query = source.dialect.busy_sessions_query();
    loop {
        let busy = source.query_string(&query).await?;
        if busy.as_deref() == Some("0") || start.elapsed() >= limit {
            return Ok(start.elapsed());
        }
        let left = limit.saturating_sub(start.elapsed());
        tokio::time::sleep(left.min(Duration::from_millis(5))).await;
    }
}

/// Ends every client session on the source except ours and the replication threads.
async fn end_sessions(
    source: &mut Server,
    killer: &mut mysql_async::Conn,
) -> Result<usize, DbError> {
    use mysql_async::prelude::Queryable;
    let rows = source
        .query_strings(&source.dialect.sessions_to_end_query())
        .await?;
    let mine = u64::from(killer.id());
    let mut ended = 0;
    for id in rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|s| s.parse::<u64>().ok())
        .filter(|id| *id != mine)
    {
        // A session that ended by itself in the meantime is fine (unknown thread id).
        if killer
            .query_drop(source.dialect.kill_session(id))
            .await
            .is_ok()
        {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Puts everything back as it was before the fence, as far as `progress` got.
async fn undo(
    db: &Database,
    source: &mut Server,
    replica: &mut Server,
    progress: &Progress,
    was_read_only: bool,
) -> Result<Vec<String>, DbError> {
    let d = source.dialect;
    let mut done = Vec::new();
    // The source first: its availability is what the fence took away.
    if progress.fenced {
        if was_read_only {
            done.push("source left read-only, as it was before".into());
        } else {
            for sql in d.unfence() {
                source.exec(sql).await?;
            }
            done.push("source writable again (read_only=0)".into());
        }
    }
    // Then the replica, by its actual state rather than by how far we think we got: an
    // interrupted statement may or may not have taken effect.
    if progress.replica_stopped {
        // It may have been made writable just before the failure; a replica is read-only.
        for sql in d.fence() {
            replica.exec(sql).await?;
        }
    }
    match replica.replica_status().await? {
        None => {
            let (host, port) = source_address(db, source);
            let spec = SourceSpec {
                host: host.clone(),
                port,
                user: db.replication_user.clone(),
                password: db.replication_password.clone(),
                start: StartAt::Gtid,
            };
            replica
                .exec_secret(
                    "re-pointing the replica at the source",
                    &d.change_source(&spec),
                )
                .await?;
            replica.exec(d.start_replica()).await?;
            done.push(format!(
                "replica re-pointed at {host}:{port} and replicating again"
            ));
        }
        Some(row)
            if row.status.io.state == ThreadState::Stopped
                || row.status.sql.state == ThreadState::Stopped =>
        {
            replica.exec(d.start_replica()).await?;
            done.push("replica replicating again".into());
        }
        Some(_) => done.push("replica kept replicating".into()),
    }
    Ok(done)
}

/// Makes the old source replicate from the new primary, starting at the final position.
async fn reverse_replication(
    db: &Database,
    source: &mut Server,
    replica: &mut Server,
    final_pos: &Position,
    new_primary_start: &Option<(String, u64)>,
) -> Result<String, DbError> {
    let d = source.dialect;
    let (host, port) = db
        .replica_address_for_source
        .clone()
        .unwrap_or_else(|| (replica.host.clone(), replica.port));
    // The old source has applied exactly everything up to the final position.
    if source.replica_status().await?.is_some() {
        source.exec(d.stop_replica()).await?;
        source.exec(d.reset_replica_all()).await?;
    }
    let start = match final_pos {
        Position::Gtid(_) => {
            for sql in d.resume_as_replica_at(final_pos) {
                source.exec(&sql).await?;
            }
            StartAt::Gtid
        }
        Position::File { .. } => {
            let (file, pos) = new_primary_start
                .clone()
                .ok_or_else(|| replica.refused("its binary log is off"))?;
            StartAt::File { file, pos }
        }
    };
    let spec = SourceSpec {
        host: host.clone(),
        port,
        user: db.replication_user.clone(),
        password: db.replication_password.clone(),
        start,
    };
    source
        .exec_secret(
            "pointing the old source at the new primary",
            &d.change_source(&spec),
        )
        .await?;
    source.exec(d.start_replica()).await?;
    source
        .wait_replicating(db.connect_timeout.max(Duration::from_secs(5)))
        .await?;
    Ok(format!(
        "old source {} now replicates from the new primary {host}:{port} and stays read-only",
        source.addr
    ))
}
