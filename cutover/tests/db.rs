//! End-to-end tests of `cutover db` against real `mariadbd` pairs.
//!
//! Each test starts its own source/replica pair (`integration_tests::mariadb::Pair`) and runs the
//! real `cutover` binary against a runbook for it, so the tests run in parallel. They live in
//! the `cutover` package because only there does Cargo build the binary for them
//! (`CARGO_BIN_EXE_cutover`); the server harness lives in the `integration-tests` package.
//!
//! Index:
//! - `setup_seeds_an_empty_replica_and_replicates_later_writes`
//! - `promote_under_a_continuous_writer_loses_no_acknowledged_write`
//! - `promote_reverse_replicates_new_writes_back_to_the_old_source`
//! - `catch_up_timeout_aborts_and_makes_the_source_writable_again`
//! - `interrupted_promotion_is_undone`
//! - `interrupted_verify_restarts_replication`
//! - `stopped_applier_refuses_promotion_and_changes_nothing`
//! - `broken_replication_shows_in_status_with_exit_1`
//! - `verify_names_the_table_and_chunk_of_a_row_altered_behind_replications_back`
//! - `verify_handles_composite_string_and_missing_primary_keys`
//! - `wrong_password_and_unreachable_host_give_one_clear_line`
//! - `refuses_a_replica_with_data_unless_forced`
//! - `setup_sets_row_format_and_refuses_equal_server_ids`
//!
//! Regressions of issue #12 (hardening) and #13 (rsync habits), named after the rule:
//! - `verify_refuses_a_pattern_that_matches_no_table` (#12.8)
//! - `verify_compares_floating_columns_at_full_precision` (#12.8)
//! - `promote_with_a_replica_stalled_after_the_fence_is_bounded_and_undone` (#12.11)
//! - `promote_fences_root_writers_that_reconnect` (#12.12)
//! - `setup_checks_the_replication_password_before_changing_anything` (#12.13)
//! - `setup_that_fails_after_changing_things_says_what_it_changed` (#12.13)
//! - `status_and_setup_recognise_a_promoted_pair` (#12.14)
//! - `setup_ignores_empty_schemas` (#13.6)

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use integration_tests::mariadb::{MariaDb, Pair};

const APP_USER: &str = "app";
const APP_PASSWORD: &str = "apppw";

fn cutover(args: &[&str], runbook: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .arg(runbook)
        .output()
        .expect("run cutover");
    eprintln!(
        "$ cutover {} RUNBOOK -> {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// An application account without SUPER/READ_ONLY ADMIN, as real clients have, created on
/// both servers outside the binary log.
fn create_app_user(server: &MariaDb) {
    server.sql(&format!(
        "SET sql_log_bin = 0; CREATE USER '{APP_USER}'@'127.0.0.1' IDENTIFIED BY '{APP_PASSWORD}'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON app.* TO '{APP_USER}'@'127.0.0.1'"
    ));
}

/// A pair with the app schema on the source (`rows` rows in `app.items`), the app account on
/// both, and `cutover db setup` done.
fn replicating_pair(rows: u32, runbook_extra: &str) -> Option<(Pair, std::path::PathBuf)> {
    let pair = Pair::start()?;
    create_app_user(&pair.source);
    create_app_user(&pair.replica);
    pair.source.sql(&format!(
        "CREATE DATABASE app; \
         CREATE TABLE app.items (id INT PRIMARY KEY, name VARCHAR(40), note VARCHAR(40) NULL); \
         CREATE TABLE app.seq (id BIGINT PRIMARY KEY, at TIMESTAMP(6) DEFAULT NOW(6)); \
         INSERT INTO app.items (id, name, note) \
           SELECT seq, CONCAT('item-', seq), IF(seq % 3 = 0, NULL, 'n') FROM app.seq_1_to_{rows}"
    ));
    let runbook = pair.runbook(runbook_extra);
    let out = cutover(&["db", "setup"], &runbook);
    assert_eq!(out.status.code(), Some(0), "setup failed: {}", stderr(&out));
    Some((pair, runbook))
}

fn count(server: &MariaDb, sql: &str) -> u64 {
    server.sql(sql).trim().parse().expect("a number")
}

#[test]
fn setup_seeds_an_empty_replica_and_replicates_later_writes() {
    let Some((pair, runbook)) = replicating_pair(500, "") else {
        return;
    };
    assert_eq!(count(&pair.replica, "SELECT COUNT(*) FROM app.items"), 500);
    assert_eq!(pair.replica.sql("SELECT @@read_only"), "1");
    assert!(
        pair.replica
            .sql("SELECT @@gtid_slave_pos")
            .starts_with("0-1-"),
        "the seed's GTID was recorded"
    );

    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (1001, 'later'); DELETE FROM app.items WHERE id = 7");
    pair.replica
        .wait_for(
            "SELECT COUNT(*), SUM(id = 1001), SUM(id = 7) FROM app.items",
            Duration::from_secs(10),
            |o| o == "500\t1\t0",
        )
        .expect("later writes replicate");

    let out = cutover(&["db", "status", "--json"], &runbook);
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(json["ok"], true);
    assert_eq!(json["replication"]["io"]["state"], "running");
    assert_eq!(json["replication"]["sql"]["state"], "running");
    assert!(json["heartbeat_lag_seconds"].as_f64().is_some(), "{json}");
    assert_eq!(json["transactions_behind"], 0, "{json}");

    // Idempotent: a second setup leaves the running replication alone.
    let out = cutover(&["db", "setup"], &runbook);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("already replicates"),
        "{}",
        stdout(&out)
    );
}

/// Inserts sequential ids into `app.seq` as the app user until stopped, reconnecting after
/// errors, and returns the ids whose INSERT was acknowledged plus the errors seen.
fn continuous_writer(
    port: u16,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<u64>, Vec<String>)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use mysql_async::prelude::Queryable;
            let url = format!("mysql://{APP_USER}:{APP_PASSWORD}@127.0.0.1:{port}/app");
            let opts = mysql_async::Opts::from_url(&url).expect("url");
            let opts: mysql_async::Opts = mysql_async::OptsBuilder::from_opts(opts)
                .prefer_socket(false)
                .into();
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let mut conn = None;
            let mut next = 1u64;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    match mysql_async::Conn::new(opts.clone()).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            errors.push(e.to_string());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = conn.as_mut() else { continue };
                match c
                    .exec_drop("INSERT INTO seq (id) VALUES (?)", (next,))
                    .await
                {
                    Ok(()) => acked.push(next),
                    Err(e) => {
                        errors.push(e.to_string());
                        conn = None;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                next += 1;
            }
            (acked, errors)
        })
    })
}

#[test]
fn promote_under_a_continuous_writer_loses_no_acknowledged_write() {
    let Some((pair, runbook)) = replicating_pair(10, "fence_grace = \"100ms\"") else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writer = continuous_writer(pair.source.port, stop.clone());
    std::thread::sleep(Duration::from_millis(700));

    let out = cutover(&["db", "promote", "--json"], &runbook);
    // Keep writing against the fenced old source for a while: every attempt must fail.
    let acked_before_stop = Instant::now();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.join().expect("writer");
    let _ = acked_before_stop;
    assert_eq!(out.status.code(), Some(0), "promote failed");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("promote JSON");
    assert_eq!(report["outcome"], "promoted", "{report}");
    let window = report["write_unavailable_ms"].as_u64().expect("window");
    assert!(
        acked.len() > 20,
        "the writer made progress before the switch: {}",
        acked.len()
    );

    // Zero lost writes: every acknowledged id is on the new primary.
    let on_new: std::collections::HashSet<u64> = pair
        .replica
        .sql("SELECT id FROM app.seq")
        .lines()
        .map(|l| l.parse().expect("id"))
        .collect();
    let lost: Vec<&u64> = acked.iter().filter(|id| !on_new.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged ids missing on the new primary, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );

    // The old source is fenced: the writer's attempts failed after the fence, and a fresh
    // write fails with the read-only error.
    assert!(
        errors
            .iter()
            .any(|e| e.contains("read-only") || e.contains("1290")),
        "the writer saw read-only errors after the fence: {errors:?}"
    );
    let err = pair
        .source
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            "INSERT INTO app.seq (id) VALUES (99999999)",
        )
        .expect_err("writes to the fenced old source fail");
    assert!(err.contains("read-only") || err.contains("1290"), "{err}");

    // The new primary takes writes and replicates from nobody.
    pair.replica
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            "INSERT INTO app.seq (id) VALUES (99999999)",
        )
        .expect("the new primary is writable");
    assert_eq!(pair.replica.sql("SHOW SLAVE STATUS"), "");
    eprintln!(
        "acknowledged {} inserts, {} errors, window {window} ms",
        acked.len(),
        errors.len()
    );
}

#[test]
fn promote_reverse_replicates_new_writes_back_to_the_old_source() {
    let Some((pair, runbook)) = replicating_pair(10, "") else {
        return;
    };
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (2000, 'before switch')");
    let out = cutover(&["db", "promote", "--reverse"], &runbook);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("now replicates from the new primary"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        count(
            &pair.replica,
            "SELECT COUNT(*) FROM app.items WHERE id = 2000"
        ),
        1
    );

    pair.replica
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            "INSERT INTO app.items (id, name) VALUES (3000, 'after switch')",
        )
        .expect("the new primary is writable");
    pair.source
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id = 3000",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("a write on the new primary reaches the old source");
    assert_eq!(
        pair.source.sql("SELECT @@read_only"),
        "1",
        "the old source stays read-only"
    );

    // The rollback direction: with the roles swapped in the runbook, the pair is a healthy
    // replication pair, identical, and can be switched back without losing the writes made
    // on the new primary.
    let swapped = runbook.with_file_name("swapped.toml");
    std::fs::write(
        &swapped,
        format!(
            "[database]\nsource = \"{}\"\nreplica = \"{}\"\nreplication_password = \"replpw\"\n\
             verify_tables = [\"app.*\"]\n",
            pair.replica.url(),
            pair.source.url()
        ),
    )
    .expect("write runbook");
    assert_eq!(cutover(&["db", "status"], &swapped).status.code(), Some(0));
    assert_eq!(cutover(&["db", "verify"], &swapped).status.code(), Some(0));
    let out = cutover(&["db", "promote", "--reverse"], &swapped);
    assert_eq!(out.status.code(), Some(0), "switch back");
    pair.source
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            "INSERT INTO app.items (id, name) VALUES (3001, 'switched back')",
        )
        .expect("the original source is the primary again");
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id IN (2000, 3000, 3001)",
            Duration::from_secs(10),
            |o| o == "3",
        )
        .expect("and replicates to the replica again");
    assert_eq!(cutover(&["db", "status"], &runbook).status.code(), Some(0));
}

#[test]
fn catch_up_timeout_aborts_and_makes_the_source_writable_again() {
    let Some((pair, runbook)) = replicating_pair(10, "catch_up_timeout = \"1s\"") else {
        return;
    };
    // The applier is running but cannot commit: a session on the replica holds the global
    // read lock, so the replica cannot reach the source's final position.
    let mut lock = pair
        .replica
        .hold_session("FLUSH TABLES WITH READ LOCK; SELECT SLEEP(60)");
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("the lock is held");
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (4000, 'stuck')");

    let out = cutover(&["db", "promote"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("ABORTED"), "{text}");
    assert!(text.contains("catch_up_timeout"), "{text}");
    assert!(text.contains("source writable again"), "{text}");
    assert_eq!(pair.source.sql("SELECT @@read_only"), "0");
    pair.source
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            "INSERT INTO app.items (id, name) VALUES (4001, 'writable again')",
        )
        .expect("the source takes writes again");

    // With no lag allowed at the fence, the same stuck replica is refused before the fence.
    let strict = pair.runbook("catch_up_timeout = \"1s\"\nmax_lag_at_fence = 0");
    let out = cutover(&["db", "promote"], &strict);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("promotion refused") && text.contains("max_lag_at_fence 0"),
        "{text}"
    );
    assert!(!text.contains("fenced source"), "never fenced: {text}");

    // The replica kept replicating: once the lock is gone it catches up. End the lock's
    // session on the server (a killed client is noticed only when SLEEP returns).
    let id = pair
        .replica
        .sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'");
    pair.replica.sql(&format!("KILL {id}"));
    let _ = lock.kill();
    let _ = lock.wait();
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id IN (4000, 4001)",
            Duration::from_secs(10),
            |o| o == "2",
        )
        .expect("the replica still replicates");
    assert_eq!(pair.replica.sql("SELECT @@read_only"), "1");
}

#[test]
fn interrupted_promotion_is_undone() {
    let Some((pair, runbook)) = replicating_pair(10, "catch_up_timeout = \"60s\"") else {
        return;
    };
    let mut lock = pair
        .replica
        .hold_session("FLUSH TABLES WITH READ LOCK; SELECT SLEEP(60)");
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("the lock is held");
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (4500, 'stuck')");
    let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["db", "promote"])
        .arg(&runbook)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cutover");
    // Ctrl-C while the source is fenced and the replica cannot catch up.
    pair.source
        .wait_for("SELECT @@read_only", Duration::from_secs(10), |o| o == "1")
        .expect("the source gets fenced");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let interrupted_at = Instant::now();
    let out = child.wait_with_output().expect("wait");
    let fenced_for = interrupted_at.elapsed();
    let text = stdout(&out);
    eprintln!("{text}{}", stderr(&out));
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("interrupted by SIGINT"), "{text}");
    assert!(text.contains("source writable again"), "{text}");
    assert_eq!(pair.source.sql("SELECT @@read_only"), "0");

    assert!(
        fenced_for < Duration::from_secs(10),
        "undone promptly, not after the replica's wait times out: {fenced_for:?}"
    );
    let id = pair
        .replica
        .sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'");
    pair.replica.sql(&format!("KILL {id}"));
    let _ = lock.kill();
    let _ = lock.wait();
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id = 4500",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("the replica still replicates");
}

#[test]
fn interrupted_verify_restarts_replication() {
    // One row per chunk: checksumming takes long enough to be interrupted in the middle.
    let Some((pair, runbook)) =
        replicating_pair(50_000, "verify_tables = [\"app.*\"]\nchunk_rows = 1")
    else {
        return;
    };
    let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["db", "verify"])
        .arg(&runbook)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cutover");
    // Verify has stopped replication once the replica shows no running applier.
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND = 'Slave_SQL'",
            Duration::from_secs(10),
            |o| o == "0",
        )
        .expect("verify stops the replica's applier");
    std::thread::sleep(Duration::from_millis(500));
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (60000, 'while verifying')");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let out = child.wait_with_output().expect("wait");
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("interrupted by SIGINT"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");

    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id = 60000",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("the replica replicates again");
    let out = cutover(&["db", "status"], &runbook);
    assert_eq!(out.status.code(), Some(0), "both threads running again");
}

#[test]
fn stopped_applier_refuses_promotion_and_changes_nothing() {
    let Some((pair, runbook)) = replicating_pair(10, "catch_up_timeout = \"1s\"") else {
        return;
    };
    pair.replica.sql("STOP SLAVE SQL_THREAD");
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (5000, 'unapplied')");
    let out = cutover(&["db", "promote"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("refused") && text.contains("SQL thread stopped"),
        "{text}"
    );
    assert_eq!(
        pair.source.sql("SELECT @@read_only"),
        "0",
        "source stays writable"
    );
    assert_eq!(pair.replica.sql("SELECT @@read_only"), "1");

    // status says why and how far behind, by position.
    let out = cutover(&["db", "status", "--json"], &runbook);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert_eq!(json["replication"]["sql"]["state"], "stopped", "{json}");
    assert_eq!(json["replication"]["io"]["state"], "running", "{json}");
    assert!(
        json["problem"]
            .as_str()
            .is_some_and(|p| p.contains("SQL thread stopped")),
        "{json}"
    );
    assert!(
        json["transactions_behind"].as_u64().is_some_and(|n| n >= 1),
        "{json}"
    );
    assert!(
        json["bytes_behind"].as_u64().is_some_and(|n| n > 0),
        "{json}"
    );
}

#[test]
fn broken_replication_shows_in_status_with_exit_1() {
    let Some((pair, runbook)) = replicating_pair(10, "") else {
        return;
    };
    // A row written on the replica behind replication's back, then the same key on the source.
    pair.replica
        .sql("SET sql_log_bin = 0; INSERT INTO app.items (id, name) VALUES (6000, 'rogue')");
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (6000, 'legit')");
    pair.replica
        .wait_for("SHOW SLAVE STATUS", Duration::from_secs(10), |o| {
            o.contains("1062")
        })
        .expect("replication breaks");
    let out = cutover(&["db", "status"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("BROKEN"), "{text}");
    assert!(text.contains("1062"), "{text}");

    let out = cutover(&["db", "status", "--json"], &runbook);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(json["ok"], false);
    assert_eq!(json["replication"]["sql"]["last_errno"], 1062);
}

#[test]
fn verify_names_the_table_and_chunk_of_a_row_altered_behind_replications_back() {
    let Some((pair, runbook)) =
        replicating_pair(1000, "verify_tables = [\"app.*\"]\nchunk_rows = 100")
    else {
        return;
    };
    // Identical, while the source takes writes.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = continuous_writer(pair.source.port, stop.clone());
    std::thread::sleep(Duration::from_millis(200));
    let out = cutover(&["db", "verify", "--json"], &runbook);
    stop.store(true, Ordering::Relaxed);
    let (acked, _) = writer.join().expect("writer");
    assert!(!acked.is_empty(), "the writer ran during verify");
    assert_eq!(out.status.code(), Some(0), "verify under writes");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    assert_eq!(json["ok"], true, "{json}");
    assert!(
        json["position"]
            .as_str()
            .is_some_and(|p| p.starts_with("0-1-")),
        "{json}"
    );
    // Replication was resumed afterwards.
    let status = cutover(&["db", "status"], &runbook);
    assert_eq!(
        status.status.code(),
        Some(0),
        "replication resumed after verify"
    );

    pair.replica
        .sql("SET sql_log_bin = 0; UPDATE app.items SET name = 'tampered' WHERE id = 537");
    let out = cutover(&["db", "verify"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("app.items: chunk 5 (id in (500, 600]) differs"),
        "the report names the table and the chunk: {text}"
    );
    assert!(
        !text.contains("app.seq: chunk"),
        "only the altered chunk differs: {text}"
    );

    // A row deleted on the replica beyond every boundary is found too (open last chunk).
    pair.replica
        .sql("SET sql_log_bin = 0; INSERT INTO app.items (id, name) VALUES (99999, 'extra')");
    let out = cutover(&["db", "verify", "--json"], &runbook);
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    let ranges: Vec<&str> = json["differences"]
        .as_array()
        .expect("differences")
        .iter()
        .filter_map(|d| d["range"].as_str())
        .collect();
    assert!(ranges.iter().any(|r| r.ends_with("+inf]")), "{ranges:?}");
}

#[test]
fn verify_handles_composite_string_and_missing_primary_keys() {
    let Some((pair, runbook)) = replicating_pair(
        10,
        "verify_tables = [\"app.p*\", \"app.nokey\", \"app.strkey\"]\nchunk_rows = 50",
    ) else {
        return;
    };
    // Created after setup: they reach the replica by replication, and verify aligns on it.
    pair.source.sql(
        "CREATE TABLE app.pairs (a INT, b VARCHAR(10), v INT NULL, PRIMARY KEY (a, b)); \
         INSERT INTO app.pairs SELECT seq DIV 10, CONCAT('k', seq % 10), IF(seq % 4 = 0, NULL, seq) \
           FROM app.seq_0_to_499; \
         CREATE TABLE app.nokey (x INT, y VARCHAR(10)); \
         INSERT INTO app.nokey SELECT seq, 'y' FROM app.seq_1_to_50; \
         CREATE TABLE app.strkey (k VARCHAR(20) PRIMARY KEY, v INT); \
         INSERT INTO app.strkey SELECT CONCAT('key-', LPAD(seq, 4, '0')), seq FROM app.seq_1_to_300",
    );
    let out = cutover(&["db", "verify", "--json"], &runbook);
    assert_eq!(out.status.code(), Some(0), "identical");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    let tables: Vec<(&str, u64)> = json["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["table"].as_str().unwrap_or(""),
                t["chunks"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        tables,
        vec![("app.nokey", 1), ("app.pairs", 11), ("app.strkey", 7)],
        "pattern selection and chunk counts (the last chunk is open-ended, so one more)"
    );

    pair.replica.sql(
        "SET sql_log_bin = 0; \
         UPDATE app.pairs SET v = NULL WHERE a = 13 AND b = 'k7'; \
         DELETE FROM app.nokey WHERE x = 17; \
         UPDATE app.strkey SET v = -1 WHERE k = 'key-0042'",
    );
    let out = cutover(&["db", "verify"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    for want in [
        "app.pairs: chunk 2 ((a, b) in ((9, 'k9'), (14, 'k9')]) differs",
        "app.nokey: chunk 0 (whole table (no primary key)) differs: source 50 rows",
        "app.strkey: chunk 0 (k in (-inf, 'key-0050']) differs",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn wrong_password_and_unreachable_host_give_one_clear_line() {
    if !MariaDb::available() {
        return;
    }
    let server = MariaDb::start(1);
    let dir = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let cases = [
        (
            format!("mysql://root:wrong@127.0.0.1:{}", server.port),
            "Access denied",
            format!("source 127.0.0.1:{}", server.port),
        ),
        (
            format!("mysql://root:x@127.0.0.1:{closed_port}"),
            "cannot connect",
            format!("source 127.0.0.1:{closed_port}"),
        ),
    ];
    for (url, want, who) in cases {
        let runbook = dir.path().join("rb.toml");
        std::fs::write(
            &runbook,
            format!(
                "[database]\nsource = \"{url}\"\nreplica = \"{}\"\nreplication_password = \"p\"\n",
                server.url()
            ),
        )
        .expect("write");
        let out = cutover(&["db", "status"], &runbook);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
        assert!(err.contains(want) && err.contains(&who), "{err}");
    }
    // The password can come from a file instead of the URL.
    let runbook = dir.path().join("pwfile.toml");
    std::fs::write(dir.path().join("root.pw"), "rootpw\n").expect("write");
    std::fs::write(
        &runbook,
        format!(
            "[database]\nsource = \"mysql://root@127.0.0.1:{}\"\nsource_password_file = \"root.pw\"\n\
             replica = \"{}\"\nreplication_password = \"p\"\n",
            server.port,
            server.url()
        ),
    )
    .expect("write");
    let out = cutover(&["db", "status"], &runbook);
    assert_eq!(
        out.status.code(),
        Some(1),
        "connected, found no replication"
    );
    assert!(
        stdout(&out).contains("does not replicate"),
        "{}",
        stdout(&out)
    );

    // A runbook error names the key.
    let runbook = dir.path().join("bad.toml");
    std::fs::write(
        &runbook,
        format!(
            "[database]\nsource = \"{}\"\nreplica = \"mysql://r@127.0.0.1:1\"\nreplication_password = \"p\"\ncatch_up_timeout = \"soon\"\n",
            server.url()
        ),
    )
    .expect("write");
    let out = cutover(&["db", "promote"], &runbook);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("database.catch_up_timeout"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn refuses_a_replica_with_data_unless_forced() {
    let Some(pair) = Pair::start() else {
        return;
    };
    pair.source
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1), (2)");
    pair.replica
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (9)");
    let runbook = pair.runbook("");
    let out = cutover(&["db", "setup"], &runbook);
    assert_eq!(out.status.code(), Some(1), "refused");
    assert!(stdout(&out).contains("holds data"), "{}", stdout(&out));
    assert_eq!(
        pair.replica.sql("SELECT GROUP_CONCAT(id) FROM app.t"),
        "9",
        "untouched"
    );
    assert_eq!(
        pair.replica
            .sql("SELECT COUNT(*) FROM mysql.user WHERE User = 'repl'"),
        "0",
        "not even the replication account was created on it"
    );

    // Its data was written on it, with its binary log on: it has taken writes as a primary,
    // and --force refuses until its binary log is cleared, as the message says (#12.14).
    let out = cutover(&["db", "setup", "--force"], &runbook);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("has taken writes as a primary")
            && stdout(&out).contains("RESET MASTER"),
        "{}",
        stdout(&out)
    );
    assert_eq!(pair.replica.sql("SELECT GROUP_CONCAT(id) FROM app.t"), "9");
    pair.replica.sql("RESET MASTER");
    let out = cutover(&["db", "setup", "--force"], &runbook);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        pair.replica
            .sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM app.t"),
        "1,2"
    );
}

#[test]
fn setup_sets_row_format_and_refuses_equal_server_ids() {
    let Some(pair) = Pair::start_with(&["--binlog-format=MIXED"]) else {
        return;
    };
    let out = cutover(&["db", "setup"], &pair.runbook(""));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stdout(&out).contains("set binlog_format=ROW (was MIXED)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(pair.source.sql("SELECT @@GLOBAL.binlog_format"), "ROW");
    drop(pair);

    // Later options win: both servers get server_id 7.
    let Some(pair) = Pair::start_with(&["--server-id=7"]) else {
        return;
    };
    let out = cutover(&["db", "setup"], &pair.runbook(""));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("same server_id (7)"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        pair.replica
            .sql("SELECT COUNT(*) FROM mysql.user WHERE User = 'repl'"),
        "0",
        "nothing was written"
    );
}

// Regression tests of the hardening issue #12 (items 8, 11-14) and #13 (item 6).

/// Sends `signal` (e.g. `-STOP`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {signal} {pid}");
}

/// Ends the `SELECT SLEEP(60)` session that `hold_session` started on `server` (a killed
/// client is noticed only when SLEEP returns).
fn end_sleeper(server: &MariaDb, mut lock: std::process::Child) {
    let id =
        server.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'");
    if !id.is_empty() {
        server.sql(&format!("KILL {id}"));
    }
    let _ = lock.kill();
    let _ = lock.wait();
}

/// Waits for `child` for at most `limit`; kills it and returns `None` when it is still
/// running then (a hang must fail the test, not hang it).
fn wait_bounded(mut child: std::process::Child, limit: Duration) -> Option<Output> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Holds the global read lock on the replica, so that its applier runs but cannot commit.
fn block_the_applier(replica: &MariaDb) -> std::process::Child {
    let lock = replica.hold_session("FLUSH TABLES WITH READ LOCK; SELECT SLEEP(60)");
    replica
        .wait_for(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO = 'SELECT SLEEP(60)'",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("the lock is held");
    lock
}

/// #12.8: a `verify_tables` pattern that selects nothing is a typo, not "identical: 0 rows".
#[test]
fn verify_refuses_a_pattern_that_matches_no_table() {
    let Some((pair, runbook)) = replicating_pair(10, "verify_tables = [\"app.*\", \"nosuch.*\"]")
    else {
        return;
    };
    let out = cutover(&["db", "verify"], &runbook);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{}{err}", stdout(&out));
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(
        err.contains("\"nosuch.*\" matches no table") && err.contains("verify_tables"),
        "{err}"
    );
    assert!(!stdout(&out).contains("identical"), "{}", stdout(&out));
    // Checked before the replica was stopped: it still replicates.
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (7000, 'after verify')");
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id = 7000",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("the replica still replicates");
}

/// #12.8: FLOAT and DOUBLE columns compare at full precision (a FLOAT's text has 6 digits).
#[test]
fn verify_compares_floating_columns_at_full_precision() {
    let Some((pair, runbook)) = replicating_pair(10, "verify_tables = [\"app.measures\"]") else {
        return;
    };
    pair.source.sql(
        "CREATE TABLE app.measures (id INT PRIMARY KEY, f FLOAT, d DOUBLE NULL); \
         INSERT INTO app.measures VALUES (1, 250, 0.3), (2, 1.5, 1e300)",
    );
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.measures",
            Duration::from_secs(10),
            |o| o == "2",
        )
        .expect("replicated");
    let out = cutover(&["db", "verify"], &runbook);
    assert_eq!(out.status.code(), Some(0), "identical: {}", stdout(&out));

    // 250 and 250.00002 are different FLOATs that both print as 250.
    pair.replica
        .sql("SET sql_log_bin = 0; UPDATE app.measures SET f = 250.00002 WHERE id = 1");
    assert_eq!(
        pair.replica.sql("SELECT f FROM app.measures WHERE id = 1"),
        "250",
        "the FLOAT's text hides the change"
    );
    let out = cutover(&["db", "verify"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("app.measures: chunk 0"), "{text}");

    // And a DOUBLE that differs in its 17th significant digit.
    pair.replica.sql(
        "SET sql_log_bin = 0; UPDATE app.measures SET f = 250 WHERE id = 1; \
         UPDATE app.measures SET d = 0.1e0 + 0.2e0 WHERE id = 1",
    );
    let out = cutover(&["db", "verify"], &runbook);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

/// #12.11: a replica that stops answering after the fence (SIGSTOP) is not an unbounded
/// outage: the wait has a client-side deadline, the undo unfences the source without the
/// replica and says the replica's state is unknown; and the same on SIGTERM.
#[test]
fn promote_with_a_replica_stalled_after_the_fence_is_bounded_and_undone() {
    // A long catch_up_timeout: a replica that stops answering is given up within a wait
    // slice plus the answer margin, not after the whole catch_up_timeout.
    let Some((pair, _)) = replicating_pair(10, "catch_up_timeout = \"30s\"") else {
        return;
    };
    // The short client-side deadline for promote only: setup's RESET MASTER and seeding
    // took over 1 s on a loaded CI machine.
    let runbook = pair.runbook("catch_up_timeout = \"30s\"\nconnect_timeout = \"1s\"");
    // The applier cannot commit, so promote is waiting for the final position when the
    // replica's server stops.
    let lock = block_the_applier(&pair.replica);
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (8000, 'stuck')");
    let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["db", "promote"])
        .arg(&runbook)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cutover");
    pair.source
        .wait_for("SELECT @@read_only", Duration::from_secs(10), |o| o == "1")
        .expect("the source gets fenced");
    std::thread::sleep(Duration::from_millis(300));
    signal(pair.replica.pid(), "-STOP");
    let stopped_at = Instant::now();
    let out = wait_bounded(child, Duration::from_secs(20));
    let took = stopped_at.elapsed();
    let Some(out) = out else {
        signal(pair.replica.pid(), "-CONT");
        panic!("promote did not end within 20 s of the replica stopping (catch_up_timeout 30s)");
    };
    let text = stdout(&out);
    eprintln!("{text}{}", stderr(&out));
    let source_read_only = pair.source.sql("SELECT @@read_only");
    signal(pair.replica.pid(), "-CONT");
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("ABORTED"), "{text}");
    assert!(text.contains("source writable again"), "{text}");
    assert!(text.contains("replica state unknown"), "{text}");
    assert_eq!(source_read_only, "0", "the source was unfenced");
    assert!(text.contains("no answer within"), "{text}");
    assert!(
        took < Duration::from_secs(10),
        "given up long before catch_up_timeout (30s): {took:?}"
    );
    pair.source
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            "INSERT INTO app.items (id, name) VALUES (8001, 'writable again')",
        )
        .expect("the source takes writes again");
    end_sleeper(&pair.replica, lock);
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id IN (8000, 8001)",
            Duration::from_secs(20),
            |o| o == "2",
        )
        .expect("the replica, untouched by the promotion, replicates on");

    // SIGTERM while the replica is stopped: the undo unfences the source all the same.
    let runbook = pair.runbook("catch_up_timeout = \"60s\"\nconnect_timeout = \"1s\"");
    let lock = block_the_applier(&pair.replica);
    pair.source
        .sql("INSERT INTO app.items (id, name) VALUES (8002, 'stuck again')");
    let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["db", "promote"])
        .arg(&runbook)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run cutover");
    pair.source
        .wait_for("SELECT @@read_only", Duration::from_secs(10), |o| o == "1")
        .expect("the source gets fenced");
    std::thread::sleep(Duration::from_millis(300));
    signal(pair.replica.pid(), "-STOP");
    // Before promote gives the stopped replica up by itself (at least a wait slice later).
    std::thread::sleep(Duration::from_millis(200));
    signal(child.id(), "-TERM");
    let termed_at = Instant::now();
    let out = wait_bounded(child, Duration::from_secs(20));
    let took = termed_at.elapsed();
    let Some(out) = out else {
        signal(pair.replica.pid(), "-CONT");
        panic!("promote did not end within 20 s of SIGTERM");
    };
    let text = stdout(&out);
    eprintln!("{text}{}", stderr(&out));
    let source_read_only = pair.source.sql("SELECT @@read_only");
    signal(pair.replica.pid(), "-CONT");
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("interrupted by SIGTERM"), "{text}");
    assert!(text.contains("source writable again"), "{text}");
    assert_eq!(source_read_only, "0", "the source was unfenced");
    assert!(took < Duration::from_secs(10), "undone promptly: {took:?}");
    end_sleeper(&pair.replica, lock);
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.items WHERE id = 8002",
            Duration::from_secs(20),
            |o| o == "1",
        )
        .expect("the replica replicates on");
}

/// Inserts ids `base+1, base+2, ...` into `app.seq` as root (whom `read_only` does not stop),
/// reconnecting after every error, until it sees the replica writable (a client that follows
/// the primary: it checks before every insert, on a connection of its own to the replica) or
/// `stop` is set. Returns the acknowledged ids and the errors seen.
fn root_writer(
    source_port: u16,
    replica_port: u16,
    base: u64,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<u64>, Vec<String>)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            use mysql_async::prelude::Queryable;
            let opts = |port: u16| -> mysql_async::Opts {
                let url = format!(
                    "mysql://root:{}@127.0.0.1:{port}/app",
                    integration_tests::mariadb::ROOT_PASSWORD
                );
                mysql_async::OptsBuilder::from_opts(mysql_async::Opts::from_url(&url).expect("url"))
                    .prefer_socket(false)
                    .into()
            };
            let mut probe = mysql_async::Conn::new(opts(replica_port))
                .await
                .expect("connect to the replica");
            let mut acked = Vec::new();
            let mut errors = Vec::new();
            let mut conn: Option<mysql_async::Conn> = None;
            let mut next = base + 1;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    match mysql_async::Conn::new(opts(source_port)).await {
                        Ok(c) => conn = Some(c),
                        Err(e) => {
                            errors.push(e.to_string());
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                    }
                }
                // Checked while our session to the source exists: a promotion that switches
                // after this check still finds this session and ends it.
                let read_only: Option<u8> = probe
                    .query_first("SELECT @@GLOBAL.read_only")
                    .await
                    .expect("probe the replica");
                if read_only == Some(0) {
                    break;
                }
                let Some(c) = conn.as_mut() else { continue };
                match c
                    .exec_drop("INSERT INTO seq (id) VALUES (?)", (next,))
                    .await
                {
                    Ok(()) => acked.push(next),
                    Err(e) => {
                        errors.push(e.to_string());
                        conn = None;
                    }
                }
                next += 1;
            }
            (acked, errors)
        })
    })
}

/// #12.12: root sessions, which `read_only` does not stop on MariaDB, reconnect after the
/// fence ends them and write again: none of their acknowledged writes may be lost, and the
/// old source's position after the switch must be the promoted one. `status` lists them.
#[test]
fn promote_fences_root_writers_that_reconnect() {
    let Some((pair, runbook)) = replicating_pair(10, "fence_grace = \"100ms\"") else {
        return;
    };
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|k| {
            root_writer(
                pair.source.port,
                pair.replica.port,
                k * 1_000_000,
                stop.clone(),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    // Asserted at the end: the acknowledged writes matter most.
    let status = cutover(&["db", "status", "--json"], &runbook);

    let out = cutover(&["db", "promote", "--json"], &runbook);
    let deadline = Instant::now() + Duration::from_secs(10);
    while writers.iter().any(|w| !w.is_finished()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    let mut errors = Vec::new();
    for w in writers {
        let (a, e) = w.join().expect("writer");
        acked.extend(a);
        errors.extend(e);
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("promote JSON");
    assert_eq!(report["outcome"], "promoted", "{report}");
    assert!(
        acked.len() > 20,
        "the writers made progress: {}",
        acked.len()
    );
    let on_new: std::collections::HashSet<u64> = pair
        .replica
        .sql("SELECT id FROM app.seq")
        .lines()
        .map(|l| l.parse().expect("id"))
        .collect();
    let lost: Vec<&u64> = acked.iter().filter(|id| !on_new.contains(id)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged root writes missing on the new primary, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(10)]
    );
    let final_position = report["final_position"].as_str().expect("final position");
    assert_eq!(
        pair.source.sql("SELECT @@GLOBAL.gtid_binlog_pos"),
        final_position,
        "nothing was written on the old source after the fence"
    );
    assert_eq!(report["written_after_fence"], 0, "the proof: {report}");
    assert_eq!(out.status.code(), Some(0), "promote proved it");
    assert!(
        !errors.is_empty(),
        "the writers' sessions were ended (and they reconnected)"
    );

    let json: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let privileged = json["source_privileged_sessions"]
        .as_array()
        .expect("status lists privileged sessions");
    assert!(
        privileged.len() >= 4
            && privileged
                .iter()
                .all(|s| s.as_str().is_some_and(|s| s.contains("root@127.0.0.1"))),
        "status lists the root writers: {json}"
    );
    eprintln!(
        "{} acknowledged root writes, {} errors",
        acked.len(),
        errors.len()
    );
}

/// #12.13: a replication password that does not log in is found before anything changes;
/// a re-run with the right one converges, also from a replica whose stored password went
/// stale.
#[test]
fn setup_checks_the_replication_password_before_changing_anything() {
    let Some(pair) = Pair::start() else {
        return;
    };
    pair.source.sql(
        "CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); \
         INSERT INTO app.t VALUES (1), (2); \
         CREATE USER 'repl'@'%' IDENTIFIED BY 'not-the-runbooks'; \
         GRANT REPLICATION SLAVE ON *.* TO 'repl'@'%'",
    );
    let runbook = pair.runbook("");
    let gtid_before = pair.source.sql("SELECT @@GLOBAL.gtid_binlog_pos");
    let out = cutover(&["db", "setup"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(
        text.contains("refused")
            && text.contains("replication_password")
            && text.contains("nothing was changed"),
        "{text}"
    );
    // Nothing was changed, on either side.
    assert_eq!(pair.replica.sql("SHOW SLAVE STATUS"), "", "no replication");
    assert_eq!(
        pair.replica
            .sql("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME IN ('app', 'cutover')"),
        "0",
        "not seeded"
    );
    assert_eq!(
        pair.replica
            .sql("SELECT COUNT(*) FROM mysql.user WHERE User = 'repl'"),
        "0"
    );
    assert_eq!(pair.replica.sql("SELECT @@read_only"), "0");
    assert_eq!(
        pair.source.sql("SELECT @@GLOBAL.gtid_binlog_pos"),
        gtid_before,
        "nothing written on the source"
    );

    // The corrected re-run converges.
    pair.source
        .sql("ALTER USER 'repl'@'%' IDENTIFIED BY 'replpw'");
    let out = cutover(&["db", "setup"], &runbook);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(
        pair.replica
            .sql("SELECT GROUP_CONCAT(id ORDER BY id) FROM app.t"),
        "1,2"
    );

    // The account's password changes on the source: the replica's IO thread fails to log in.
    pair.source
        .sql("SET sql_log_bin = 0; ALTER USER 'repl'@'%' IDENTIFIED BY 'newpw'");
    pair.replica.sql("STOP SLAVE; START SLAVE");
    pair.replica
        .wait_for("SHOW SLAVE STATUS", Duration::from_secs(10), |o| {
            o.contains("1045")
        })
        .expect("the IO thread fails on the old password");
    let fixed = runbook.with_file_name("fixed.toml");
    std::fs::write(
        &fixed,
        std::fs::read_to_string(&runbook).expect("runbook").replace(
            "replication_password = \"replpw\"",
            "replication_password = \"newpw\"",
        ),
    )
    .expect("write runbook");
    let out = cutover(&["db", "setup"], &fixed);
    assert_eq!(out.status.code(), Some(0), "converges: {}", stdout(&out));
    pair.source.sql("INSERT INTO app.t VALUES (3)");
    pair.replica
        .wait_for(
            "SELECT COUNT(*) FROM app.t WHERE id = 3",
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("replicates with the new password");
    assert_eq!(pair.replica.sql("SELECT @@read_only"), "1");
}

/// #12.14: after a promotion `status` recognises the pair (it does not suggest `setup`), and
/// `setup` refuses the new primary, `--force` or not; `--force` also refuses a server that
/// has taken writes as a primary.
#[test]
fn status_and_setup_recognise_a_promoted_pair() {
    let Some((pair, runbook)) = replicating_pair(10, "") else {
        return;
    };
    let out = cutover(&["db", "promote"], &runbook);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    pair.replica
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            "INSERT INTO app.items (id, name) VALUES (9000, 'on the new primary')",
        )
        .expect("the new primary takes writes");

    let out = cutover(&["db", "status"], &runbook);
    let text = stdout(&out);
    assert!(text.contains("PROMOTED"), "{text}");
    assert!(
        !text.contains("db setup`)"),
        "does not suggest setup: {text}"
    );
    let out = cutover(&["db", "status", "--json"], &runbook);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    assert!(json["promoted"].is_string(), "{json}");

    for args in [&["db", "setup"][..], &["db", "setup", "--force"][..]] {
        let out = cutover(args, &runbook);
        let text = stdout(&out);
        assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
        assert!(
            text.contains("refused") && text.contains("promoted"),
            "{text}"
        );
    }
    // Not recognisable as a promoted pair any more (the old source made writable by hand),
    // but the new primary has taken writes of its own: --force still refuses.
    pair.source.sql("SET GLOBAL read_only = 0");
    let out = cutover(&["db", "setup", "--force"], &runbook);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}{}", stderr(&out));
    assert!(text.contains("has taken writes as a primary"), "{text}");
    assert_eq!(
        count(
            &pair.replica,
            "SELECT COUNT(*) FROM app.items WHERE id = 9000"
        ),
        1,
        "the new primary's write is still there"
    );
    assert_eq!(pair.replica.sql("SHOW SLAVE STATUS"), "");
    assert_eq!(pair.replica.sql("SELECT @@read_only"), "0");
}

/// #13.6: the stock, empty `test` schema of `mariadb-install-db` (the harness skips it, so it
/// is created here) is not data: `setup` seeds such a replica.
#[test]
fn setup_ignores_empty_schemas() {
    let Some(pair) = Pair::start() else {
        return;
    };
    pair.source
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)");
    pair.replica
        .sql("CREATE DATABASE test; CREATE DATABASE empty_too");
    let out = cutover(&["db", "setup"], &pair.runbook(""));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert_eq!(pair.replica.sql("SELECT GROUP_CONCAT(id) FROM app.t"), "1");

    // A schema with a table in it is data, even an empty table.
    let Some(pair) = Pair::start() else {
        return;
    };
    pair.replica
        .sql("CREATE DATABASE test; CREATE TABLE test.t (id INT)");
    let out = cutover(&["db", "setup"], &pair.runbook(""));
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("holds data (schemas: test)"),
        "{}",
        stdout(&out)
    );
}

/// #12.13: a failure after `setup` has changed something is not a "refused" (which means
/// nothing changed): it is an error that lists what was changed; the replica was made
/// read-only before it was seeded; and a re-run converges.
#[test]
fn setup_that_fails_after_changing_things_says_what_it_changed() {
    let Some(pair) = Pair::start() else {
        return;
    };
    pair.source
        .sql("CREATE DATABASE app; CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)");
    // The replica is told to reach the source on a port where nothing listens.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed_port = closed.local_addr().expect("addr").port();
    drop(closed);
    let runbook = pair.runbook(&format!(
        "source_address_for_replica = \"127.0.0.1:{closed_port}\"\ncatch_up_timeout = \"1s\""
    ));
    let out = cutover(&["db", "setup"], &runbook);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{}{err}", stdout(&out));
    assert!(!stdout(&out).contains("refused"), "{}", stdout(&out));
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    for want in [
        "replication is not running",
        "changed before the failure",
        "source: created the replication user",
        "app, cutover loaded from the source",
        &format!("replicating from 127.0.0.1:{closed_port}"),
    ] {
        assert!(err.contains(want), "missing {want:?} in {err}");
    }
    assert_eq!(
        pair.replica.sql("SELECT @@read_only"),
        "1",
        "a half-set-up replica is read-only"
    );

    // With the address fixed, a re-run (--force: it is configured for another address)
    // converges.
    let runbook = pair.runbook("");
    let out = cutover(&["db", "setup", "--force"], &runbook);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    pair.source.sql("INSERT INTO app.t VALUES (2)");
    pair.replica
        .wait_for("SELECT COUNT(*) FROM app.t", Duration::from_secs(10), |o| {
            o == "2"
        })
        .expect("replicates");
}
