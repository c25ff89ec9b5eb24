//! `db_bench`: the figures the README reports for `cutover db`, measured on real `mariadbd`.
//!
//! 1. **Promotion under load.** For each run, a fresh source/replica pair (durable settings:
//!    `innodb_flush_log_at_trx_commit=1`, `sync_binlog=1`) is set up with `cutover db setup`,
//!    `WRITERS` clients insert sequential ids as an application account (no `READ_ONLY ADMIN`)
//!    and record every acknowledged insert, and `promote` runs with the runbook defaults. It
//!    reports the write-unavailable window (p50 and max over the runs) and the acknowledged
//!    inserts missing on the new primary (must be 0).
//! 2. **Verify throughput.** A table of `VERIFY_ROWS` rows (default 1,000,000) is seeded to the
//!    replica and checksummed with `verify`; rows per second over the best of 3 runs.
//!
//! It is a benchmark, not a test: it asserts nothing but prints the numbers (and exits 1 when
//! a write was lost). Environment: `RUNS` (default 7), `WRITERS` (default 4), `VERIFY_ROWS`,
//! and `VERBOSE=1` to print each promotion's timed steps.
//! Run: `cargo run --release -p benches --bin db_bench`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use cutover::db::promote::PromoteOutcome;
use cutover::runbook::Runbook;
use integration_tests::mariadb::{MariaDb, Pair};
use mysql_async::prelude::Queryable;

const DURABLE: &[&str] = &[
    "--innodb-flush-log-at-trx-commit=1",
    "--sync-binlog=1",
    "--innodb-buffer-pool-size=256M",
    // A durable replica applies one transaction per fsync pair unless it applies in parallel.
    "--slave-parallel-threads=4",
    "--slave-parallel-mode=optimistic",
];

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn database(pair: &Pair, extra: &str) -> anyhow::Result<cutover::runbook::Database> {
    let path = pair.runbook(extra);
    let runbook = Runbook::load(&path)?;
    Ok(runbook.database(&path)?.clone())
}

fn app_user(server: &MariaDb) {
    server.sql(
        "SET sql_log_bin = 0; CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'apppw'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON app.* TO 'app'@'127.0.0.1'",
    );
}

/// One writer: inserts ids `start, start + step, ...` until `stop`; returns acknowledged ids.
async fn writer(port: u16, start: u64, step: u64, stop: Arc<AtomicBool>) -> Vec<u64> {
    let url = format!("mysql://app:apppw@127.0.0.1:{port}/app");
    let Ok(opts) = mysql_async::Opts::from_url(&url) else {
        return Vec::new();
    };
    let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(opts)
        .prefer_socket(false)
        .into();
    let mut acked = Vec::new();
    let mut conn: Option<mysql_async::Conn> = None;
    let mut next = start;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            conn = mysql_async::Conn::new(opts.clone()).await.ok();
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        match c
            .exec_drop("INSERT INTO seq (id) VALUES (?)", (next,))
            .await
        {
            Ok(()) => acked.push(next),
            Err(_) => {
                conn = None;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        next += step;
    }
    acked
}

struct PromoteRun {
    window_ms: u64,
    acked: usize,
    lost: usize,
}

async fn promote_run(writers: usize) -> anyhow::Result<PromoteRun> {
    let pair = Pair::start_with(DURABLE).context("mariadbd is not installed")?;
    app_user(&pair.source);
    app_user(&pair.replica);
    pair.source
        .sql("CREATE DATABASE app; CREATE TABLE app.seq (id BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT NOW(6))");
    let db = database(&pair, "")?;
    cutover::db::setup::setup(&db, false).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            tokio::spawn(writer(
                pair.source.port,
                i as u64 + 1,
                writers as u64,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = cutover::db::promote::promote(&db, false).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await?);
    }
    if std::env::var_os("VERBOSE").is_some() {
        for step in &report.steps {
            println!("    {step}");
        }
    }
    let PromoteOutcome::Promoted {
        write_unavailable_ms,
        ..
    } = report.outcome
    else {
        bail!("promotion did not complete: {:?}", report.outcome);
    };
    let present: HashSet<u64> = pair
        .replica
        .sql("SELECT id FROM app.seq")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let lost = acked.iter().filter(|id| !present.contains(id)).count();
    Ok(PromoteRun {
        window_ms: write_unavailable_ms,
        acked: acked.len(),
        lost,
    })
}

async fn verify_throughput(rows: usize) -> anyhow::Result<(u64, f64)> {
    let pair = Pair::start_with(DURABLE).context("mariadbd is not installed")?;
    pair.source.sql(&format!(
        "CREATE DATABASE app; \
         CREATE TABLE app.big (id BIGINT PRIMARY KEY, name VARCHAR(40) NOT NULL, \
           qty INT NULL, note VARCHAR(80) NULL, at DATETIME NOT NULL); \
         INSERT INTO app.big SELECT seq, CONCAT('name-', seq), IF(seq % 7 = 0, NULL, seq % 1000), \
           REPEAT('x', seq % 50), '2026-01-01 00:00:00' + INTERVAL seq SECOND FROM app.seq_1_to_{rows}"
    ));
    let db = database(&pair, "verify_tables = [\"app.*\"]")?;
    cutover::db::setup::setup(&db, false).await?;
    let mut best = 0.0f64;
    let mut checked = 0;
    for _ in 0..3 {
        let report = cutover::db::verify::verify(&db).await?;
        if !report.ok {
            bail!(
                "verify found differences on an identical pair: {:?}",
                report.differences
            );
        }
        checked = report.rows;
        best = best.max(report.rows as f64 / report.seconds);
    }
    Ok((checked, best))
}

fn main() -> anyhow::Result<()> {
    if !MariaDb::available() {
        bail!("mariadbd is not installed");
    }
    let runs = env_number("RUNS", 7);
    let writers = env_number("WRITERS", 4);
    let verify_rows = env_number("VERIFY_ROWS", 1_000_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut windows = Vec::new();
        let mut lost = 0;
        let mut acked = 0;
        for i in 0..runs {
            let r = promote_run(writers).await?;
            println!(
                "promote run {}: window {} ms, {} acknowledged inserts, {} lost",
                i + 1,
                r.window_ms,
                r.acked,
                r.lost
            );
            windows.push(r.window_ms);
            lost += r.lost;
            acked += r.acked;
        }
        windows.sort_unstable();
        let p50 = windows.get(windows.len() / 2).copied().unwrap_or(0);
        let max = windows.last().copied().unwrap_or(0);
        println!(
            "promote: write-unavailable window p50 {p50} ms, max {max} ms over {runs} runs \
             ({writers} writers, {acked} acknowledged inserts, {lost} lost)"
        );
        let (rows, rate) = verify_throughput(verify_rows).await?;
        println!("verify: {rows} rows checksummed on both sides, best {rate:.0} rows/s");
        if lost > 0 {
            bail!("{lost} acknowledged writes were lost");
        }
        Ok(())
    })
}
