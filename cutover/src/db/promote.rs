//! `cutover db promote`: make the replica the primary without losing an acknowledged write.
//!
//! The order is the whole point:
//!
//! 1. Pre-checks, which change nothing: the replica replicates from this source with both
//!    threads running and no error, and it is (or gets, within `catch_up_timeout`) at most
//!    `max_lag_at_fence` transactions behind.
//! 2. **Fence** the source so that no session can write, root included: `read_only` (plus
//!    `super_read_only` on MySQL, which stops SUPER too). MariaDB has no `super_read_only`
//!    and its `read_only` does not stop accounts with `READ_ONLY ADMIN`, so there the client
//!    sessions that remain after `fence_grace` are ended, and then this command's own session
//!    takes the global read lock (`FLUSH TABLES WITH READ LOCK`), which a privileged session
//!    that reconnects cannot get past either. Replication threads are left alone.
//! 3. Read the source's final position: nothing can be added to it any more.
//! 4. Wait on the replica for exactly that position, up to `catch_up_timeout`.
//! 5. Stop replication, forget the replica configuration, make the replica writable.
//! 6. **Prove** it: the old source's position must still be the final one. Otherwise the
//!    promotion is reported with the number of transactions written after the fence (they are
//!    not on the new primary) and the command exits 1. Then the sessions still waiting on the
//!    lock are ended (their writes must fail, not land on the old source once the lock goes),
//!    and the lock is released; the old source stays read-only.
//! 7. With `--reverse`, make the old source a replica of the new primary.
//!
//! Every statement has a client-side deadline (the connect timeout; a position wait gets its
//! own timeout plus that), because a stopped server keeps its connections open and never
//! answers: the server-side timeout of `MASTER_GTID_WAIT` does not run then. A connection
//! whose statement timed out is abandoned.
//!
//! A failure anywhere before the replica is writable, SIGINT/SIGTERM included, is undone: the
//! source first, which needs nothing from the replica (the lock released, or its session
//! ended from a fresh connection; writable again unless it was read-only before), then the
//! replica, whose state is reported as unknown when it does not answer rather than failing
//! the undo. The report says what happened and the write-unavailable window (fence → replica
//! writable). After the replica is writable nothing is undone: from then on, undoing would
//! lose the writes it accepts.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::dialect::{Position, StartAt, WaitOutcome};
use super::position::{ThreadState, transactions_behind, written_after};
use super::{DbError, Interrupts, Role, Server, connect_pair, source_address};
use crate::runbook::Database;

/// The longest single position wait during the window; see [`fence_and_switch`].
const WAIT_SLICE: Duration = Duration::from_secs(1);

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
        /// Transactions on the old source after the final position, read after the switch
        /// while the fence still held: 0 is the proof that nothing was lost; more were written
        /// after the fence and are not on the new primary. `None`: the old source's position
        /// could not be read or compared.
        written_after_fence: Option<u64>,
        /// The proof in words.
        proof: String,
        /// What `--reverse` did, if asked.
        reverse: Option<String>,
        /// Set when `--reverse` was asked but did not work (or was not attempted because the
        /// proof failed).
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
    /// True when promoted, proven (nothing written on the old source after the fence) and,
    /// with `--reverse`, the reverse replication runs.
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
    /// The global read lock was asked for, by the session [`Progress::lock_holder`].
    locked: bool,
    /// The connection id of the source session that holds (or asked for) the lock.
    lock_holder: u32,
    /// The replica's replication may have been stopped (and reset, and made writable).
    replica_stopped: bool,
}

/// What [`fence_and_switch`] hands on once the replica is writable.
struct Switched {
    final_pos: Position,
    sessions_ended: usize,
    /// The new primary's binlog coordinate before its first write (file/position reverse).
    start: Option<(String, u64)>,
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
                written_after_fence: Some(0),
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
    let mut log = |steps: &mut Vec<String>, s: String| {
        steps.push(format!("{:>6} ms  {s}", started.elapsed().as_millis()));
    };

    // 1. Pre-checks: nothing changes if these fail.
    if let Some(reason) = precheck(&mut source, &mut replica, reverse).await? {
        return Ok(report(PromoteOutcome::Refused { reason }, steps));
    }
    let was_read_only = source.global_bool("read_only").await?;
    let privileged = source.privileged_sessions().await?;
    if !privileged.is_empty() {
        log(
            &mut steps,
            format!(
                "source has {} session(s) of accounts that read_only does not stop ({}); the \
                 fence ends them{}",
                privileged.len(),
                privileged.join(", "),
                if d.fence_lock().is_some() {
                    " and holds the global read lock against their reconnecting"
                } else {
                    ""
                }
            ),
        );
    }
    if reverse {
        // The old source will log in to the new primary with this account.
        replica.exec("SET SESSION sql_log_bin = 0").await?;
        for sql in d.replication_user_on_replica(&db.replication_user, &db.replication_password) {
            replica
                .exec_secret("creating the replication user", &sql)
                .await?;
        }
        replica.exec("SET SESSION sql_log_bin = 1").await?;
    }
    // A second connection for ending sessions, opened before the fence so that the fence
    // does not wait for a connection handshake.
    let mut killer = source.fork().await?;
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
            killer.close().await;
            return Ok(report(PromoteOutcome::Refused { reason }, steps));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let source_addr = source_address(db, &source);

    // 2. Fence. The signal handlers are installed before it, so that an operator's Ctrl-C (or
    // a SIGTERM) from the first fenced instant on is a failure like any other: undone.
    let mut interrupts = Interrupts::new();
    let mut progress = Progress {
        lock_holder: source.connection_id(),
        ..Progress::default()
    };
    let fenced_at = Instant::now();
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
        signal = interrupts.recv() => Err((format!("interrupted by {signal}"), false)),
    };
    match result {
        Ok(switched) => {
            let window = fenced_at.elapsed();
            log(
                &mut steps,
                format!(
                    "replica is writable: write-unavailable window {} ms",
                    window.as_millis()
                ),
            );
            // 6. The proof, read while the fence still holds, then the lock goes.
            let (written_after_fence, proof) = prove(&mut source, &switched.final_pos).await;
            for line in release(db, &mut source, &mut killer, &progress).await {
                log(&mut steps, line);
            }
            killer.close().await;
            let (reverse_done, reverse_failed) = if !reverse {
                (None, None)
            } else if written_after_fence != Some(0) {
                let msg = "not attempted: the old source's history is not the promoted one \
                           (see the proof), so it cannot simply follow the new primary"
                    .to_string();
                log(&mut steps, format!("reverse {msg}"));
                (None, Some(msg))
            } else {
                match reverse_replication(
                    db,
                    &mut source,
                    &mut replica,
                    &switched.final_pos,
                    &switched.start,
                )
                .await
                {
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
            };
            source.close().await;
            replica.close().await;
            Ok(report(
                PromoteOutcome::Promoted {
                    write_unavailable_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
                    final_position: switched.final_pos.to_string(),
                    sessions_ended: switched.sessions_ended,
                    written_after_fence,
                    proof,
                    reverse: reverse_done,
                    reverse_failed,
                },
                steps,
            ))
        }
        Err((reason, connections_usable)) => {
            let fenced_ms = u64::try_from(fenced_at.elapsed().as_millis()).unwrap_or(u64::MAX);
            log(&mut steps, format!("failed: {reason}; undoing"));
            // After an interruption the old connections may be inside a statement: not reused.
            let (s, r) = if connections_usable {
                (Some(&mut source), Some(&mut replica))
            } else {
                (None, None)
            };
            let undone = undo(db, s, r, &progress, was_read_only, &source_addr).await;
            killer.close().await;
            source.close().await;
            replica.close().await;
            let undone = undone.map_err(|message| DbError::UndoFailed {
                reason: reason.clone(),
                message,
            })?;
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
    killer: &mut Server,
    progress: &mut Progress,
    steps: &mut Vec<String>,
    log: &mut Log<'_>,
) -> Result<Switched, String> {
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
    if let Some(lock) = d.fence_lock() {
        // The lock waits for running statements (the sessions were just ended, so there
        // should be none); bounded on the server as well as by the client-side deadline.
        source
            .exec(&d.lock_wait_timeout(source.connect_timeout()))
            .await
            .map_err(|e| e.to_string())?;
        progress.locked = true;
        source.exec(lock).await.map_err(|e| e.to_string())?;
        log(
            steps,
            format!("{lock} held by this session: no session can write now, root included"),
        );
    }

    let mut final_pos = source.own_position().await.map_err(|e| e.to_string())?;
    log(steps, format!("source final position {final_pos}"));

    // Wait for the final position. The fence should keep it final; if it moved all the same
    // (a session the fence did not stop wrote), wait for the new one within the same deadline
    // rather than lose it; the proof after the switch reports such writes in any case.
    //
    // The wait runs in slices of at most WAIT_SLICE: a replica that is slow but alive gets the
    // whole catch_up_timeout, while one that stops answering (a stopped server, whose own wait
    // timeout never fires) is given up within a slice plus the answer margin, not after the
    // whole catch_up_timeout.
    let deadline = Instant::now() + db.catch_up_timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let slice = left.min(WAIT_SLICE);
        let wait = d.wait_for_position(&final_pos, slice);
        let value = replica
            .wait_query(&wait, slice)
            .await
            .map_err(|e| format!("waiting for the final position {final_pos}: {e}"))?;
        let outcome = d.wait_outcome(&final_pos, value);
        if outcome == WaitOutcome::TimedOut && Instant::now() < deadline {
            continue;
        }
        if outcome == WaitOutcome::Reached {
            let now = source.own_position().await.map_err(|e| e.to_string())?;
            if now == final_pos {
                log(steps, format!("replica reached {final_pos}"));
                break;
            }
            log(
                steps,
                format!(
                    "source moved from {final_pos} to {now} after the fence (a session the \
                     fence did not stop wrote); waiting for that"
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
    Ok(Switched {
        final_pos,
        sessions_ended: ended,
        start,
    })
}

/// Step 6: compares the old source's position, read while the fence still holds, with the
/// promoted one. Returns the number of transactions written after the fence (`None` when it
/// cannot be told) and the verdict in words.
async fn prove(source: &mut Server, promoted: &Position) -> (Option<u64>, String) {
    let now = match source.own_position().await {
        Ok(now) => now,
        Err(e) => {
            return (
                None,
                format!(
                    "UNPROVEN: cannot read the old source's position ({e}); check that it is \
                     still {promoted} before trusting the new primary with the application"
                ),
            );
        }
    };
    let count = written_after(&source.dialect, &now, promoted);
    if count == Some(0) {
        return (
            Some(0),
            format!(
                "the old source is at {now}, the promoted position {promoted}: nothing was \
                 written on it after the fence"
            ),
        );
    }
    let how_many = count.map_or("some".to_string(), |n| n.to_string());
    (
        // `None`: moved by an amount a file/position cannot tell.
        count,
        format!(
            "LOST WRITES: {how_many} transaction(s) were written on the old source after the \
             fence (it is at {now}, the new primary was promoted at {promoted}); they are not \
             on the new primary"
        ),
    )
}

/// The end of step 6: ends the sessions still waiting on the fence lock, so that their
/// writes fail instead of landing on the old source once the lock goes, then releases it.
/// Returns what it did; a failure is reported, not raised (the promotion has happened).
async fn release(
    db: &Database,
    source: &mut Server,
    killer: &mut Server,
    progress: &Progress,
) -> Vec<String> {
    let mut done = Vec::new();
    if !progress.locked {
        return done;
    }
    match end_sessions(source, killer).await {
        Ok(n) => done.push(format!(
            "ended {n} session(s) waiting on the old source's global read lock"
        )),
        Err(e) => done.push(format!(
            "could not end the sessions waiting on the lock: {e}"
        )),
    }
    match unlock(db, Some(source), progress).await {
        Ok(line) => done.push(format!("{line}; the old source stays read-only")),
        Err(e) => done.push(format!(
            "could not release the old source's global read lock ({e}); it is released when \
             session {} ends",
            progress.lock_holder
        )),
    }
    done
}

/// Releases the fence lock: `UNLOCK TABLES` when `server` is the usable session that holds
/// it; otherwise the holder's session is ended (which releases its lock) from `server` or, when
/// that is not usable either, from a fresh connection.
async fn unlock(
    db: &Database,
    server: Option<&mut Server>,
    progress: &Progress,
) -> Result<String, DbError> {
    let holder = progress.lock_holder;
    let mut fresh = None;
    let s = match server.filter(|s| !s.is_abandoned()) {
        Some(s) if s.connection_id() == holder => {
            if s.exec(s.dialect.fence_unlock()).await.is_ok() {
                return Ok("global read lock released".into());
            }
            fresh.insert(Server::connect_to(db, Role::Source).await?)
        }
        Some(s) => s,
        None => fresh.insert(Server::connect_to(db, Role::Source).await?),
    };
    // An unknown thread id means the session is gone, and its lock with it.
    let r = s.try_exec(&s.dialect.kill_session(u64::from(holder))).await;
    if let Some(f) = fresh {
        f.close().await;
    }
    r?;
    Ok(format!(
        "global read lock released (the session {holder} that held it was ended)"
    ))
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

/// Ends every client session on the source except ours (the listing session's and the
/// killer's) and the replication threads.
async fn end_sessions(source: &mut Server, killer: &mut Server) -> Result<usize, DbError> {
    let rows = source
        .query_strings(&source.dialect.sessions_to_end_query())
        .await?;
    let mine = u64::from(killer.connection_id());
    let mut ended = 0;
    for id in rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter_map(|s| s.parse::<u64>().ok())
        .filter(|id| *id != mine)
    {
        // A session that ended by itself in the meantime is fine (unknown thread id).
        if killer
            .try_exec(&source.dialect.kill_session(id))
            .await?
            .is_none()
        {
            ended += 1;
        }
    }
    Ok(ended)
}

/// Puts everything back as it was before the fence, as far as `progress` got: the source
/// first, on `source` if given and usable, else on a fresh connection, since its availability
/// is what the fence took away and it must not depend on the replica; then the replica, the
/// same way, whose state is reported as unknown when neither connection answers. `Err` (with
/// what was tried) only when the source could not be restored.
async fn undo(
    db: &Database,
    source: Option<&mut Server>,
    replica: Option<&mut Server>,
    progress: &Progress,
    was_read_only: bool,
    source_addr: &(String, u16),
) -> Result<Vec<String>, String> {
    let mut done = Vec::new();
    let mut source_failed = None;
    if progress.fenced {
        let usable = source.filter(|s| !s.is_abandoned());
        let first = match usable {
            Some(s) => restore_source(db, Some(s), progress, was_read_only)
                .await
                .map_err(|e| format!("{e}; on a fresh connection: ")),
            None => Err(String::new()),
        };
        match first {
            Ok(lines) => done.extend(lines),
            Err(first) => match restore_source(db, None, progress, was_read_only).await {
                Ok(lines) => done.extend(lines),
                Err(second) => source_failed = Some(format!("source: {first}{second}")),
            },
        }
    }
    // Then the replica, by its actual state rather than by how far we think we got: an
    // interrupted statement may or may not have taken effect.
    let usable = replica.filter(|r| !r.is_abandoned());
    let first = match usable {
        Some(r) => restore_replica(r, progress, db, source_addr).await,
        None => Err(DbError::Interrupted("not reused".into())),
    };
    let replica_line = match first {
        Ok(line) => line,
        Err(_) => {
            let fresh = async {
                let mut r = Server::connect_to(db, Role::Replica).await?;
                let line = restore_replica(&mut r, progress, db, source_addr).await;
                r.close().await;
                line
            };
            match fresh.await {
                Ok(line) => line,
                Err(e) if progress.replica_stopped => format!(
                    "replica state UNKNOWN ({e}): its replication may have been stopped and \
                     reset and it may have been made writable; check it before pointing \
                     anything at it"
                ),
                Err(e) => format!(
                    "replica state unknown ({e}); the promotion did not change it, so it \
                     replicates on once it answers again"
                ),
            }
        }
    };
    done.push(replica_line);
    match source_failed {
        None => Ok(done),
        Some(f) => Err(format!("{f}; {}", done.join("; "))),
    }
}

/// Releases the fence lock and makes the source writable again (unless it was read-only
/// before), on `source` or, when `None`, on a fresh connection.
async fn restore_source(
    db: &Database,
    source: Option<&mut Server>,
    progress: &Progress,
    was_read_only: bool,
) -> Result<Vec<String>, DbError> {
    let mut fresh = None;
    let s = match source {
        Some(s) => s,
        None => fresh.insert(Server::connect_to(db, Role::Source).await?),
    };
    let mut done = Vec::new();
    if progress.locked {
        done.push(unlock(db, Some(&mut *s), progress).await?);
    }
    if was_read_only {
        done.push("source left read-only, as it was before".into());
    } else {
        for sql in s.dialect.unfence() {
            s.exec(sql).await?;
        }
        done.push("source writable again (read_only=0)".into());
    }
    if let Some(f) = fresh {
        f.close().await;
    }
    Ok(done)
}

/// Makes the replica replicate from the source again and read-only, from its actual state.
async fn restore_replica(
    replica: &mut Server,
    progress: &Progress,
    db: &Database,
    (host, port): &(String, u16),
) -> Result<String, DbError> {
    let d = replica.dialect;
    if progress.replica_stopped {
        // It may have been made writable just before the failure; a replica is read-only.
        for sql in d.fence() {
            replica.exec(sql).await?;
        }
    }
    match replica.replica_status().await? {
        None => {
            replica
                .replicate_from(
                    db,
                    (host, *port),
                    StartAt::Gtid,
                    "re-pointing the replica at the source",
                )
                .await?;
            Ok(format!(
                "replica re-pointed at {host}:{port} and replicating again"
            ))
        }
        Some(row)
            if row.status.io.state == ThreadState::Stopped
                || row.status.sql.state == ThreadState::Stopped =>
        {
            replica.exec(d.start_replica()).await?;
            Ok("replica replicating again".into())
        }
        Some(_) => Ok("replica kept replicating".into()),
    }
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
    source
        .replicate_from(
            db,
            (&host, port),
            start,
            "pointing the old source at the new primary",
        )
        .await?;
    source
        .wait_replicating(db.connect_timeout.max(Duration::from_secs(5)))
        .await?;
    Ok(format!(
        "old source {} now replicates from the new primary {host}:{port} and stays read-only",
        source.addr
    ))
}

/// Makes `replica` a read-only replica of the source again, from its actual state (for
/// `cutover rollback` after a promotion that did not finish).
pub(crate) async fn reattach_replica(
    replica: &mut Server,
    db: &Database,
    source_addr: &(String, u16),
) -> Result<String, DbError> {
    let progress = Progress {
        replica_stopped: true,
        ..Progress::default()
    };
    restore_replica(replica, &progress, db, source_addr).await
}
