//! `cutover db verify`: do the replica's tables hold the same rows as the source's?
//!
//! Both sides are checksummed at the same replication point, so the answer is right while the
//! source keeps taking writes:
//!
//! 1. On the replica, stop the applier (on MariaDB both threads: its `UNTIL master_gtid_pos`
//!    needs them stopped).
//! 2. On the source, open a consistent snapshot and read its exact position (MariaDB reports
//!    the binlog coordinate of the snapshot, `BINLOG_GTID_POS` turns it into a GTID list; no
//!    lock is taken). The replica is at or behind this point, never ahead.
//! 3. On the replica, run the applier until exactly that position
//!    (`START SLAVE UNTIL master_gtid_pos`) and wait for it (`MASTER_GTID_WAIT`).
//! 4. Checksum every chunk on both sides (see [`super::checksum`]): the source inside its
//!    snapshot, the replica with its applier stopped.
//! 5. Start the replica's applier again, whatever happened.
//!
//! When the replica does not replicate (after a promotion, say), both sides are checksummed as
//! they are, which is only meaningful on a quiescent pair; the report says so. It does not
//! repair anything, and it does not checksum tables outside `verify_tables`.

use std::time::{Duration, Instant};

use mysql_async::Value;
use serde::Serialize;

use super::checksum::{Chunk, ChunkDiff, ChunkSum, Column, TableShape};
use super::dialect::{Position, WaitOutcome, quote};
use super::{DbError, Interrupts, Role, SYSTEM_SCHEMAS, Server, connect_pair};
use crate::runbook::{Database, TablePattern};

/// The result of `verify`.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    /// True when every chunk of every table matches.
    pub ok: bool,
    /// The position both sides were checksummed at, or `None` on a non-replicating pair.
    pub position: Option<String>,
    /// How the consistent point was obtained.
    pub method: String,
    /// Tables checksummed.
    pub tables: Vec<TableResult>,
    /// Chunks that differ.
    pub differences: Vec<ChunkDiff>,
    /// Rows checksummed on the source.
    pub rows: u64,
    /// Wall-clock seconds spent checksumming.
    pub seconds: f64,
}

/// One table's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct TableResult {
    /// `schema.table`.
    pub table: String,
    /// Chunks compared.
    pub chunks: usize,
    /// Rows on the source.
    pub rows: u64,
    /// A structural problem (missing on one side, different columns), if any.
    pub problem: Option<String>,
    /// Whether every chunk matched and there was no problem.
    pub matches: bool,
}

/// The client-side deadline of one checksum statement. A checksum is work, not a wait (a
/// table without a primary key is one statement over the whole table), so the bound is
/// generous; it is there so that a stopped server cannot hang `verify` for ever.
const CHECKSUM_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3600);

/// Runs `verify` against the pair in `db`.
pub async fn verify(db: &Database) -> Result<VerifyReport, DbError> {
    let (mut source, mut replica) = connect_pair(db).await?;
    let mut patterns = Vec::new();
    for raw in &db.verify_tables {
        let p = TablePattern::parse(raw)
            .map_err(|e| source.refused(format!("database.verify_tables: {raw:?}: {e}")))?;
        patterns.push(p);
    }
    if patterns.is_empty() {
        return Err(source.refused(
            "database.verify_tables is empty in the runbook: name the tables to checksum, e.g. [\"app.*\"]",
        ));
    }
    // A pattern that selects nothing is a typo until proven otherwise: checksumming nothing
    // must not read as "identical". Checked before the replica is stopped.
    let on_source = list_tables(&mut source, &patterns).await?;
    let on_replica = list_tables(&mut replica, &patterns).await?;
    let unmatched = db.verify_tables.iter().zip(&patterns).find(|(_, p)| {
        !on_source
            .iter()
            .chain(&on_replica)
            .any(|(s, t)| p.matches(s, t))
    });
    if let Some((raw, _)) = unmatched {
        return Err(DbError::NoSuchTables {
            role: source.role,
            addr: source.addr.clone(),
            pattern: raw.clone(),
        });
    }
    let d = source.dialect;
    let row = replica.replica_status().await?;
    let replicating = match &row {
        None => false,
        Some(r) if r.status.sql.last_errno != 0 => {
            return Err(replica.refused(format!(
                "replication is broken ({}); the two sides cannot be brought to a common point \
                 until it is repaired",
                r.status.problem().unwrap_or_default()
            )));
        }
        Some(r) => r
            .source_server_id
            .is_none_or(|id| id == 0 || id == source.server_id),
    };
    // 1-4, abandoned (and step 5 still done) on SIGINT/SIGTERM.
    let mut restart_applier = false;
    let mut interrupts = Interrupts::new();
    let outcome = tokio::select! {
        r = compare(
            db,
            &patterns,
            &mut source,
            &mut replica,
            row.as_ref().filter(|_| replicating),
            &mut restart_applier,
        ) => r.map_err(|e| (e, true)),
        signal = interrupts.recv() => Err((
            DbError::Interrupted(format!(
                "verify interrupted by {signal}; the replica's replication was restarted"
            )),
            false,
        )),
    };

    // 5. The replica replicates again, whatever happened. After an interruption the old
    // connection may be in the middle of a query: use a fresh one.
    if restart_applier {
        let usable =
            outcome.as_ref().err().is_none_or(|(_, usable)| *usable) && !replica.is_abandoned();
        if usable {
            replica.exec(d.start_replica()).await?;
        } else {
            let mut fresh = Server::connect_to(db, Role::Replica).await?;
            fresh.exec(d.start_replica()).await?;
            fresh.close().await;
        }
    }
    let (position, method, tables, differences, seconds) = outcome.map_err(|(e, _)| e)?;
    let _ = source.exec("COMMIT").await;
    source.close().await;
    replica.close().await;
    let rows = tables.iter().map(|t| t.rows).sum();
    Ok(VerifyReport {
        ok: differences.is_empty() && tables.iter().all(|t| t.matches),
        position,
        method,
        tables,
        differences,
        rows,
        seconds,
    })
}

/// What [`compare`] found: position, method, tables, differing chunks, seconds.
type Comparison = (
    Option<String>,
    String,
    Vec<TableResult>,
    Vec<ChunkDiff>,
    f64,
);

/// Steps 1-4: bring both sides to the same point and checksum them. Sets `restart_applier`
/// as soon as the replica's replication was stopped and must be started again.
async fn compare(
    db: &Database,
    patterns: &[TablePattern],
    source: &mut Server,
    replica: &mut Server,
    replication: Option<&super::ReplicaRow>,
    restart_applier: &mut bool,
) -> Result<Comparison, DbError> {
    let d = source.dialect;
    let (position, method) = if let Some(row) = replication {
        *restart_applier = row.status.sql.state == super::position::ThreadState::Running;
        replica.exec(d.stop_for_until()).await?;
        let pos = align(db, source, replica).await?;
        (
            Some(pos.to_string()),
            format!("replica applier stopped at the source's consistent-snapshot position {pos}"),
        )
    } else {
        for sql in d.snapshot().open {
            source.exec(sql).await?;
        }
        for sql in d.snapshot().release {
            source.exec(sql).await?;
        }
        (
            None,
            "the replica does not replicate from the source: both checksummed as they are \
             (meaningful only when neither takes writes)"
                .to_string(),
        )
    };
    let started = Instant::now();
    source.set_statement_timeout(CHECKSUM_STATEMENT_TIMEOUT);
    replica.set_statement_timeout(CHECKSUM_STATEMENT_TIMEOUT);
    let (tables, differences) = checksum_tables(db, patterns, source, replica).await?;
    Ok((
        position,
        method,
        tables,
        differences,
        started.elapsed().as_secs_f64(),
    ))
}

/// Opens the snapshot on the source and brings the stopped replica applier to its position.
async fn align(
    db: &Database,
    source: &mut Server,
    replica: &mut Server,
) -> Result<Position, DbError> {
    let d = source.dialect;
    let snap = d.snapshot();
    for sql in &snap.open {
        source.exec(sql).await?;
    }
    let rows = source.query_strings(snap.position).await?;
    for sql in &snap.release {
        source.exec(sql).await?;
    }
    let first = rows.into_iter().next().unwrap_or_default();
    let pos = match d.positioning {
        super::dialect::Positioning::Gtid => {
            Position::Gtid(first.into_iter().next().flatten().unwrap_or_default())
        }
        super::dialect::Positioning::FilePosition => {
            let mut it = first.into_iter();
            match (it.next().flatten(), it.next().flatten()) {
                (Some(file), Some(pos)) => Position::File {
                    file,
                    pos: pos.parse().unwrap_or(0),
                },
                _ => return Err(source.refused("cannot read the snapshot's binlog position")),
            }
        }
    };
    if matches!(&pos, Position::Gtid(g) if g.is_empty()) {
        // Nothing was ever logged: the replica has nothing to apply.
        return Ok(pos);
    }
    replica.exec(&d.start_sql_thread_until(&pos)).await?;
    let wait = d.wait_for_position(&pos, db.catch_up_timeout);
    let value = replica.wait_query(&wait, db.catch_up_timeout).await?;
    if d.wait_outcome(&pos, value) != WaitOutcome::Reached {
        return Err(replica.refused(format!(
            "did not reach the source's snapshot position {pos} within catch_up_timeout {}",
            humantime::format_duration(db.catch_up_timeout)
        )));
    }
    // UNTIL has stopped the applier right after the position; make sure.
    replica.exec(d.stop_for_until()).await?;
    Ok(pos)
}

/// Tables on `server` selected by `patterns`, as `(schema, table)`.
async fn list_tables(
    server: &mut Server,
    patterns: &[TablePattern],
) -> Result<Vec<(String, String)>, DbError> {
    let rows = server
        .query_strings(
            "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let mut it = r.into_iter();
            Some((it.next().flatten()?, it.next().flatten()?))
        })
        .filter(|(s, _)| !SYSTEM_SCHEMAS.contains(&s.as_str()))
        .filter(|(s, t)| patterns.iter().any(|p| p.matches(s, t)))
        .collect())
}

async fn table_shape(
    server: &mut Server,
    schema: &str,
    table: &str,
) -> Result<TableShape, DbError> {
    let cols = server
        .query_strings(&format!(
            "SELECT COLUMN_NAME, IS_NULLABLE, LOWER(DATA_TYPE) FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            quote(schema),
            quote(table)
        ))
        .await?;
    let pk = server
        .query_strings(&format!(
            "SELECT COLUMN_NAME FROM information_schema.KEY_COLUMN_USAGE \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} AND CONSTRAINT_NAME = 'PRIMARY' \
             ORDER BY ORDINAL_POSITION",
            quote(schema),
            quote(table)
        ))
        .await?;
    Ok(TableShape {
        schema: schema.to_string(),
        table: table.to_string(),
        columns: cols
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                let name = it.next().flatten()?;
                let nullable = it.next().flatten().is_some_and(|v| v == "YES");
                let data_type = it.next().flatten().unwrap_or_default();
                Some(Column {
                    name,
                    nullable,
                    data_type,
                })
            })
            .collect(),
        primary_key: pk
            .into_iter()
            .filter_map(|r| r.into_iter().next().flatten())
            .collect(),
    })
}

async fn checksum_tables(
    db: &Database,
    patterns: &[TablePattern],
    source: &mut Server,
    replica: &mut Server,
) -> Result<(Vec<TableResult>, Vec<ChunkDiff>), DbError> {
    let on_source = list_tables(source, patterns).await?;
    let on_replica = list_tables(replica, patterns).await?;
    let mut results = Vec::new();
    let mut diffs = Vec::new();
    for (schema, table) in &on_replica {
        if !on_source.contains(&(schema.clone(), table.clone())) {
            results.push(TableResult {
                table: format!("{schema}.{table}"),
                chunks: 0,
                rows: 0,
                problem: Some("exists only on the replica".into()),
                matches: false,
            });
        }
    }
    for (schema, table) in &on_source {
        let name = format!("{schema}.{table}");
        if !on_replica.contains(&(schema.clone(), table.clone())) {
            results.push(TableResult {
                table: name,
                chunks: 0,
                rows: 0,
                problem: Some("missing on the replica".into()),
                matches: false,
            });
            continue;
        }
        let shape = table_shape(source, schema, table).await?;
        let replica_shape = table_shape(replica, schema, table).await?;
        if shape != replica_shape {
            results.push(TableResult {
                table: name,
                chunks: 0,
                rows: 0,
                problem: Some(format!(
                    "structure differs: source columns ({}) key {:?}, replica columns ({}) key {:?}",
                    shape.describe_columns(),
                    shape.primary_key,
                    replica_shape.describe_columns(),
                    replica_shape.primary_key
                )),
                matches: false,
            });
            continue;
        }
        let before = diffs.len();
        let (chunks, rows) = checksum_table(db, &shape, source, replica, &mut diffs).await?;
        results.push(TableResult {
            table: name,
            chunks,
            rows,
            problem: None,
            matches: diffs.len() == before,
        });
    }
    Ok((results, diffs))
}

/// Walks the table's key on the source, chunk by chunk, checksumming each chunk on both sides
/// at once. Returns the chunk and source row counts.
async fn checksum_table(
    db: &Database,
    shape: &TableShape,
    source: &mut Server,
    replica: &mut Server,
    diffs: &mut Vec<ChunkDiff>,
) -> Result<(usize, u64), DbError> {
    let mut lower: Option<Vec<Value>> = None;
    let mut index = 0;
    let mut rows = 0;
    loop {
        let upper = if shape.primary_key.is_empty() {
            None
        } else {
            let sql = shape.next_boundary_query(lower.is_some(), db.chunk_rows);
            let params = lower
                .as_deref()
                .map(|l| shape.lower_params(l))
                .unwrap_or_default();
            source.exec_first(&sql, params).await?
        };
        let chunk = Chunk {
            index,
            lower: lower.clone(),
            upper: upper.clone(),
        };
        let sql = shape.checksum_query(chunk.lower.is_some(), chunk.upper.is_some());
        let mut params = Vec::new();
        if let Some(l) = &chunk.lower {
            params.extend(shape.bound_params(l));
        }
        if let Some(u) = &chunk.upper {
            params.extend(shape.bound_params(u));
        }
        let (s, r) = tokio::join!(
            source.exec_first(&sql, params.clone()),
            replica.exec_first(&sql, params)
        );
        let (s, r) = (chunk_sum(s?), chunk_sum(r?));
        rows += s.rows;
        if s != r {
            diffs.push(ChunkDiff {
                table: shape.name(),
                chunk: index,
                range: chunk.describe(shape),
                source: s,
                replica: r,
            });
        }
        index += 1;
        match upper {
            Some(u) => lower = Some(u),
            None => return Ok((index, rows)),
        }
    }
}

fn chunk_sum(row: Option<Vec<Value>>) -> ChunkSum {
    let row = row.unwrap_or_default();
    let text = |v: Option<&Value>| match v {
        Some(Value::Bytes(b)) => String::from_utf8_lossy(b).into_owned(),
        Some(Value::Int(i)) => i.to_string(),
        Some(Value::UInt(u)) => u.to_string(),
        _ => String::new(),
    };
    ChunkSum {
        rows: text(row.first()).parse().unwrap_or(0),
        crc: text(row.get(1)),
    }
}
