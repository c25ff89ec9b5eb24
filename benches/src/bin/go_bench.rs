//! `go_bench`: `cutover run` end to end under load, on real servers (the test harness's
//! MariaDB pair with durable settings, HAProxy in front of two HTTP backends, `named` with
//! TSIG), driven in-process through the library exactly as the binary drives it.
//!
//! During each run, `WRITERS` application clients insert sequential ids and record every
//! acknowledged insert (each writes to the source, and to the destination once the source
//! refuses: what an application that follows the switch does), and one HTTP client requests
//! HAProxy's frontend every 5 ms. Reported per run, then p50/max:
//!
//! - the write-unavailable window (the promotion's fence → replica writable);
//! - acknowledged writes missing on the new primary (must be 0);
//! - HTTP requests that failed, and the HTTP-unavailable window (drain → destination UP);
//! - the total;
//! - in a second series whose health gate fails: the rollback time (gate failed → last undo).
//!
//! A benchmark, not a test: it prints numbers and exits 1 only if a write was lost.
//! Environment: `RUNS` (default 3), `WRITERS` (default 4).
//! Run: `cargo run --release -p benches --bin go_bench`.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use cutover::journal::{Header, Journal};
use cutover::plan::{Execution, Outcome, Phase, Plan, Step, timings};
use cutover::runbook::Runbook;
use integration_tests::bind::{Bind, KEY_SHA256};
use integration_tests::haproxy::{Haproxy, Server};
use integration_tests::http::{self, HttpServer};
use integration_tests::mariadb::{MariaDb, Pair};
use mysql_async::prelude::Queryable;

const DURABLE: &[&str] = &[
    "--innodb-flush-log-at-trx-commit=1",
    "--sync-binlog=1",
    "--innodb-buffer-pool-size=256M",
    "--slave-parallel-threads=4",
    "--slave-parallel-mode=optimistic",
];

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn app_user(server: &MariaDb) {
    server.sql(
        "SET sql_log_bin = 0; CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'apppw'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON app.* TO 'app'@'127.0.0.1'",
    );
}

fn opts(port: u16) -> Option<mysql_async::Opts> {
    let url = format!("mysql://app:apppw@127.0.0.1:{port}/app");
    let o = mysql_async::Opts::from_url(&url).ok()?;
    Some(
        mysql_async::OptsBuilder::from_opts(o)
            .prefer_socket(false)
            .into(),
    )
}

/// One writer: ids `start, start + step, ...`, to `ports[0]` and, once it refuses, to the next.
async fn writer(ports: [u16; 2], start: u64, step: u64, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut acked = Vec::new();
    let mut target = 0usize;
    let mut conn: Option<mysql_async::Conn> = None;
    let mut next = start;
    while !stop.load(Ordering::Relaxed) {
        if conn.is_none() {
            let Some(o) = opts(ports[target]) else {
                return acked;
            };
            conn = mysql_async::Conn::new(o).await.ok();
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
            Ok(()) => {
                acked.push(next);
                next += step;
            }
            Err(_) => {
                // Read-only or killed: the application follows the switch.
                conn = None;
                target = 1 - target;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    acked
}

/// GETs the frontend every 5 ms; returns (requests, failures).
async fn http_client(port: u16, stop: Arc<AtomicBool>) -> (u64, u64) {
    let failed = Arc::new(AtomicU64::new(0));
    let mut total = 0;
    while !stop.load(Ordering::Relaxed) {
        total += 1;
        let f = failed.clone();
        let ok = tokio::task::spawn_blocking(move || matches!(http::get(port, "/"), Ok((200, _))))
            .await
            .unwrap_or(false);
        if !ok {
            f.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (total, failed.load(Ordering::Relaxed))
}

struct RunFigures {
    outcome: Outcome,
    write_ms: Option<u64>,
    http_ms: Option<u64>,
    total_ms: u64,
    rollback_ms: Option<u64>,
    acked: usize,
    lost: usize,
    requests: u64,
    http_failed: u64,
}

async fn one_run(writers: usize, failing_gate: bool) -> anyhow::Result<RunFigures> {
    let pair = Pair::start_with(DURABLE).context("mariadbd is not installed")?;
    app_user(&pair.source);
    app_user(&pair.replica);
    pair.source.sql(
        "CREATE DATABASE app; CREATE TABLE app.seq (id BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT NOW(6))",
    );
    let old = HttpServer::start("old");
    let new = HttpServer::start("new");
    let haproxy = Haproxy::start(&[
        Server {
            name: "old".into(),
            port: old.port,
            disabled: false,
        },
        Server {
            name: "new".into(),
            port: new.port,
            disabled: true,
        },
    ]);
    let bind = Bind::primary("svc 60 IN A 127.0.0.1", None);
    let dir = tempfile_dir()?;
    let runbook_path = dir.join("runbook.toml");
    std::fs::write(
        &runbook_path,
        format!(
            "[database]\nsource = \"{}\"\nreplica = \"{}\"\nreplication_password = \"replpw\"\n\n\
             [loadbalancer]\nadmin_socket = {:?}\nbackend = \"web\"\nsource_server = \"old\"\n\
             destination_server = \"new\"\npoll_interval = \"20ms\"\n\n\
             [dns]\nserver = \"127.0.0.1:{p}\"\nzone = \"example.test.\"\nrecord = \"svc.example.test.\"\n\
             source_address = \"127.0.0.1\"\ndestination_address = \"127.0.0.2\"\nttl = 60\nlow_ttl = 60\n\
             tsig_key_file = {:?}\nns_port = {p}\npoll_interval = \"50ms\"\n\n\
             [[health]]\nname = \"web\"\nhttp = \"http://127.0.0.1:{}/health\"\n{}\n",
            pair.source.url(),
            pair.replica.url(),
            haproxy.admin_socket.display().to_string(),
            bind.key_file(&KEY_SHA256).display().to_string(),
            new.port,
            if failing_gate {
                "body_contains = \"not served\""
            } else {
                ""
            },
            p = bind.port,
        ),
    )?;
    let rb = Runbook::load(&runbook_path)?;
    let db = rb.database(&runbook_path)?.clone();
    cutover::db::setup::setup(&db, false).await?;
    // HAProxy's check must see the source UP before go-time.
    for _ in 0..200 {
        if matches!(http::get(haproxy.frontend_port, "/"), Ok((200, _))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = (0..writers)
        .map(|i| {
            tokio::spawn(writer(
                [pair.source.port, pair.replica.port],
                i as u64 + 1,
                writers as u64,
                stop.clone(),
            ))
        })
        .collect();
    let web = tokio::spawn(http_client(haproxy.frontend_port, stop.clone()));
    tokio::time::sleep(Duration::from_secs(1)).await;

    let plan = Plan::from(&rb)?;
    let mut journal = Journal::open(&dir.join("state/run.journal"))?.0;
    journal.start(&Header {
        cutover_journal: cutover::journal::VERSION,
        runbook: runbook_path.display().to_string(),
        steps: plan.steps.iter().map(|s| s.step).collect(),
        started_ms: cutover::run::now_ms(),
    })?;
    let mut exec = Execution::new(plan);
    let outcome = cutover::run::drive(
        &rb,
        &mut exec,
        &mut journal,
        None,
        None,
        &mut |_, _| {},
        &mut |_| {},
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await?);
    }
    let (requests, http_failed) = web.await?;

    let events = exec.events();
    let t = timings(events);
    let (write_ms, _) = cutover::run::write_unavailable_ms(events);
    let gate_failed = events
        .iter()
        .find(|e| e.step == Some(Step::HealthGate) && e.phase == Phase::DoFailed)
        .map(|e| e.time_ms);
    let rollback_ms = gate_failed.and_then(|start| {
        events
            .iter()
            .rev()
            .find(|e| e.phase == Phase::UndoOk)
            .map(|e| e.time_ms.saturating_sub(start))
    });
    // Every acknowledged write must be on the primary at the end: the destination after a
    // completed run, the source after a rollback.
    let primary = if failing_gate {
        &pair.source
    } else {
        &pair.replica
    };
    let present: HashSet<u64> = primary
        .sql("SELECT id FROM app.seq")
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    let lost = acked.iter().filter(|id| !present.contains(id)).count();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RunFigures {
        outcome,
        write_ms,
        http_ms: t.http_unavailable_ms,
        total_ms: t.total_ms,
        rollback_ms,
        acked: acked.len(),
        lost,
        requests,
        http_failed,
    })
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!(
        "go-bench-{}-{}",
        std::process::id(),
        cutover::run::now_ms()
    ));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn stats(mut v: Vec<u64>) -> String {
    if v.is_empty() {
        return "-".into();
    }
    v.sort_unstable();
    format!("p50 {} max {}", v[v.len() / 2], v[v.len() - 1])
}

fn main() -> anyhow::Result<()> {
    let runs = env_number("RUNS", 3);
    let writers = env_number("WRITERS", 4);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut lost_any = false;
    for failing in [false, true] {
        let mut all = Vec::new();
        for i in 0..runs {
            let f = rt.block_on(one_run(writers, failing))?;
            println!(
                "{} run {}: {:?}; write-unavailable {:?} ms; HTTP-unavailable {:?} ms; total {} ms; \
                 rollback {:?} ms; {} writes acked, {} lost; {} HTTP requests, {} failed",
                if failing { "failing-gate" } else { "go-time" },
                i + 1,
                f.outcome,
                f.write_ms,
                f.http_ms,
                f.total_ms,
                f.rollback_ms,
                f.acked,
                f.lost,
                f.requests,
                f.http_failed
            );
            lost_any |= f.lost > 0;
            all.push(f);
        }
        let col =
            |g: &dyn Fn(&RunFigures) -> Option<u64>| stats(all.iter().filter_map(g).collect());
        println!(
            "{}: {runs} runs, {writers} writers: write-unavailable ms {}; HTTP-unavailable ms {}; \
             total ms {}; rollback ms {}; lost writes {}; failed HTTP requests {}",
            if failing {
                "failing gate (rolled back)"
            } else {
                "go-time"
            },
            col(&|f| f.write_ms),
            col(&|f| f.http_ms),
            col(&|f| Some(f.total_ms)),
            col(&|f| f.rollback_ms),
            all.iter().map(|f| f.lost).sum::<usize>(),
            col(&|f| Some(f.http_failed)),
        );
    }
    if lost_any {
        bail!("an acknowledged write was lost");
    }
    Ok(())
}
