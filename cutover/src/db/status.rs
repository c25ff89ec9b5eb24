//! `cutover db status`: is the replica replicating, and how far behind is it?
//!
//! It reports both threads' states and last errors, both servers' positions, the lag by
//! position (transactions behind by GTID, and binlog bytes behind when both coordinates are in
//! the same file), and a heartbeat lag in seconds: a timestamp row is written on the source in
//! `cutover.heartbeat` (pt-heartbeat style) and read back on the replica. `Seconds_Behind_Master`
//! is shown for reference only and never trusted. The report is `ok` only when both threads run
//! without error; the binary exits 1 otherwise.
//!
//! A pair that `promote` has switched is recognised as such (the replica replicates from
//! nobody, is writable and has replicated before, and the old source is read-only or follows
//! it): the report says so instead of suggesting `setup`, which would overwrite the new
//! primary. It also lists the source's sessions whose accounts `read_only` does not stop
//! (SUPER, MariaDB's READ_ONLY ADMIN), which a promotion has to end.
//!
//! It writes nothing but the heartbeat row, and skips that when the source is read-only.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::position::{ReplicaStatus, bytes_behind, transactions_behind};
use super::{DbError, HEARTBEAT_SCHEMA, Server, connect_pair};
use crate::runbook::Database;

/// How long `status` waits for its heartbeat to arrive on the replica.
const HEARTBEAT_WAIT: Duration = Duration::from_secs(2);

/// The result of `status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// True when replication runs without error.
    pub ok: bool,
    /// Why not, when `ok` is false.
    pub problem: Option<String>,
    /// The source's dialect.
    pub dialect: String,
    /// The source's position (GTID set or file:offset).
    pub source_position: String,
    /// The source's binlog coordinate.
    pub source_binlog: Option<(String, u64)>,
    /// What the replica has applied (GTID dialects).
    pub replica_applied: Option<String>,
    /// Replication threads and coordinates; `None` when the replica replicates from nobody.
    pub replication: Option<ReplicaStatus>,
    /// Transactions the replica has not applied yet (GTID dialects).
    pub transactions_behind: Option<u64>,
    /// Source binlog bytes not yet applied, when both coordinates are in one file.
    pub bytes_behind: Option<u64>,
    /// Heartbeat lag in seconds, when measurable.
    pub heartbeat_lag_seconds: Option<f64>,
    /// Why the heartbeat lag is missing or only a lower bound.
    pub heartbeat_note: Option<String>,
    /// Whether the source is read-only (fenced), and the replica.
    pub source_read_only: bool,
    /// Whether the replica is read-only.
    pub replica_read_only: bool,
    /// Set when the pair has been promoted: the replica is the primary. Says what was seen.
    pub promoted: Option<String>,
    /// Sessions on the source whose accounts `read_only` does not stop, as
    /// `id user@host (command)`.
    pub source_privileged_sessions: Vec<String>,
}

/// Runs `status` against the pair in `db`.
pub async fn status(db: &Database) -> Result<StatusReport, DbError> {
    let (mut source, mut replica) = connect_pair(db).await?;
    let source_read_only = source.global_bool("read_only").await?;
    let replica_read_only = replica.global_bool("read_only").await?;

    // Heartbeat first, so that the positions read afterwards include it.
    let heartbeat = heartbeat(&mut source, &mut replica, source_read_only).await?;

    let source_pos = source.own_position().await?;
    let source_binlog = source.binlog_coordinate().await?;
    let row = replica.replica_status().await?;
    let replica_applied = replica.applied_position().await?;
    let tx_behind = match (&source_pos, &replica_applied) {
        (super::dialect::Position::Gtid(s), Some(r)) => {
            transactions_behind(&source.dialect, s, r).ok()
        }
        _ => None,
    };
    let replication = row.map(|r| r.status);
    let bytes = match (&source_binlog, &replication) {
        (Some((f, p)), Some(r)) => bytes_behind((f, *p), (&r.executed.0, r.executed.1)),
        _ => None,
    };
    let source_replicates_from_replica = source
        .replica_status()
        .await?
        .and_then(|r| r.source_server_id)
        .is_some_and(|id| id == replica.server_id);
    // Promoted: the replica replicates from nobody, is writable, and has replicated before
    // (it has an applied position), while the old source is fenced or follows it.
    let promoted = (replication.is_none()
        && !replica_read_only
        && replica_applied.as_deref().is_some_and(|a| !a.is_empty())
        && (source_read_only || source_replicates_from_replica))
        .then(|| {
            format!(
                "the pair has been promoted: the replica {} is the primary (writable, replicates \
                 from nobody) and the old source {} {}; to watch the pair from now on, swap \
                 source and replica in the runbook (do not run setup: it would overwrite the \
                 new primary)",
                replica.addr,
                source.addr,
                if source_replicates_from_replica {
                    "replicates from it"
                } else {
                    "is read-only"
                }
            )
        });
    let problem = match (&replication, &promoted) {
        (None, Some(p)) => Some(p.clone()),
        (None, None) => {
            Some("the replica does not replicate from anything (run `cutover db setup`)".into())
        }
        (Some(r), _) => r.problem(),
    };
    let source_privileged_sessions = source.privileged_sessions().await?;
    let report = StatusReport {
        ok: problem.is_none(),
        problem,
        dialect: source.dialect.describe(),
        source_position: source_pos.to_string(),
        source_binlog,
        replica_applied,
        replication,
        transactions_behind: tx_behind,
        bytes_behind: bytes,
        heartbeat_lag_seconds: heartbeat.0,
        heartbeat_note: heartbeat.1,
        source_read_only,
        replica_read_only,
        promoted,
        source_privileged_sessions,
    };
    source.close().await;
    replica.close().await;
    Ok(report)
}

/// Writes a heartbeat on the source and waits for it on the replica. Returns the lag in
/// seconds (time until it arrived, or the source's clock minus the last heartbeat the replica
/// has when the new one does not arrive in time) and a note when the figure is partial.
async fn heartbeat(
    source: &mut Server,
    replica: &mut Server,
    source_read_only: bool,
) -> Result<(Option<f64>, Option<String>), DbError> {
    let sid = source.server_id;
    let select = format!("SELECT ts FROM {HEARTBEAT_SCHEMA}.heartbeat WHERE server_id = {sid}");
    let mut note = None;
    let mut written = None;
    if source_read_only {
        note = Some("source is read-only: no fresh heartbeat written".to_string());
    } else {
        let write = format!(
            "INSERT INTO {HEARTBEAT_SCHEMA}.heartbeat (server_id, ts) VALUES ({sid}, NOW(6)) \
             ON DUPLICATE KEY UPDATE ts = VALUES(ts)"
        );
        match source.try_exec(&write).await? {
            None => written = source.query_string(&select).await?,
            Some((_, message)) => {
                note = Some(format!(
                    "no heartbeat written ({message}); run `cutover db setup` to create the table"
                ));
            }
        }
    }
    let sent = Instant::now();
    let mut seen: Option<String>;
    loop {
        seen = match replica.query_strings(&select).await {
            Ok(rows) => rows
                .into_iter()
                .next()
                .and_then(|r| r.into_iter().next().flatten()),
            Err(_) => None, // the table may not have reached the replica yet
        };
        match (&written, &seen) {
            (Some(w), Some(s)) if s >= w => {
                return Ok((Some(sent.elapsed().as_secs_f64()), note));
            }
            (Some(_), _) if sent.elapsed() < HEARTBEAT_WAIT => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            _ => break,
        }
    }
    // The fresh heartbeat did not arrive (or none was written): the lag is at least the age of
    // the newest heartbeat the replica has, by the source's clock.
    let Some(seen) = seen else {
        let note = note.unwrap_or_else(|| "no heartbeat has reached the replica".into());
        return Ok((None, Some(note)));
    };
    let age = source
        .query_string(&format!(
            "SELECT TIMESTAMPDIFF(MICROSECOND, {}, NOW(6))",
            super::dialect::quote(&seen)
        ))
        .await?
        .and_then(|s| s.parse::<f64>().ok())
        .map(|us| us / 1e6);
    let note = note.unwrap_or_else(|| {
        format!(
            "the fresh heartbeat did not arrive within {}s; lag is at least the age of the last one",
            HEARTBEAT_WAIT.as_secs()
        )
    });
    Ok((age, Some(note)))
}
