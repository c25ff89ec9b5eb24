//! End-to-end tests of `cutover run` and `cutover rollback` against real servers, all spawned
//! per test on loopback: a replicating MariaDB pair, HAProxy in front of two HTTP backends,
//! `named` with a TSIG key, and two local services (one per side) run by the hooks.
//!
//! - `happy_path_*`: everything at once, with a real `syncd push --watch` as `[sync]`: the
//!   destination serves through HAProxy, DNS answers its address, the database is promoted
//!   with the old source replicating from it, the rows are equal (`cutover db verify`) and
//!   the trees are equal (the final sync's root, `diff -r`);
//! - `run_without_reverse_*`: `database.reverse = false` promotes without the reverse
//!   replication, and a rollback with nothing written since still restores the source;
//! - `failing_health_*`: the health gate fails on the destination and everything points back
//!   at the source, asserted against each server; the old source takes writes again;
//! - `sigkill_*`: `cutover run` killed at every step in turn (after the step's IO, before
//!   its result is journaled; and before the promotion's IO), then `cutover rollback`;
//! - `refusals_*`: an unfinished journal is refused, no TTY without `--yes` is refused, and a
//!   dry run changes nothing (every server's state compared before and after);
//! - `a_failed_undo_*`: the rollback stops at a failed undo, keeps the journal, and
//!   `cutover rollback` retries from there;
//! - `sigterm_*`: SIGTERM during a long gate cancels it and rolls back;
//! - `ansible_*`: `contrib/ansible/cutover.yml` with `-i localhost, -c local`;
//! - `sync_*`: the sync steps against a real `syncd push --watch --control`, and a `[sync]`
//!   whose control socket does not answer.

// The helpers below are test code too; clippy's `allow-unwrap-in-tests` covers only `#[test]`
// functions.
#![allow(clippy::unwrap_used)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use integration_tests::bind::{Bind, KEY_SHA256};
use integration_tests::haproxy::{Haproxy, Server};
use integration_tests::http::{self, HttpServer};
use integration_tests::mariadb::{MariaDb, Pair};

const RECORD: &str = "svc.example.test.";
const APP_USER: &str = "app";
const APP_PASSWORD: &str = "apppw";

/// Every server of one go-time, and the runbook that drives it.
struct GoTime {
    pair: Pair,
    haproxy: Haproxy,
    _old: HttpServer,
    _new: HttpServer,
    bind: Bind,
    dir: tempfile::TempDir,
    runbook: PathBuf,
    state: PathBuf,
    /// The `syncd push --watch` of `[sync]`, when the runbook has one.
    _push: Option<Push>,
}

fn cutover(args: &[&str], g: &GoTime) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.args(args).arg(&g.runbook);
    if matches!(args.first(), Some(&"run" | &"rollback")) {
        cmd.arg("--state").arg(&g.state);
    }
    let out = cmd.stdin(Stdio::null()).output().expect("run cutover");
    eprintln!(
        "$ cutover {} RUNBOOK -> {:?}\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn available() -> bool {
    // Each `available` panics under CI=true when its binary is missing.
    MariaDb::available() && Haproxy::available() && Bind::available()
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn create_app_user(server: &MariaDb) {
    server.sql(&format!(
        "SET sql_log_bin = 0; CREATE USER '{APP_USER}'@'127.0.0.1' IDENTIFIED BY '{APP_PASSWORD}'; \
         GRANT SELECT, INSERT, UPDATE, DELETE ON app.* TO '{APP_USER}'@'127.0.0.1'"
    ));
}

/// A service hook pair for `side`: a `sleep` daemon whose pid is in `DIR/SIDE.pid`.
fn service(dir: &Path, side: &str) -> String {
    let pid = dir.join(format!("{side}.pid"));
    let pid = pid.display();
    format!(
        "[[service]]\nname = \"app-{side}\"\nside = \"{side}\"\n\
         start = \"setsid sleep 100000 >/dev/null 2>&1 & echo $! > {pid}\"\n\
         stop = \"kill $(cat {pid})\"\n\
         check = \"test -s {pid} && kill -0 $(cat {pid}) 2>/dev/null\"\n\
         wait = \"5s\"\ntimeout = \"5s\"\n\n"
    )
}

fn running(g: &GoTime, side: &str) -> bool {
    let pid = std::fs::read_to_string(g.dir.path().join(format!("{side}.pid"))).unwrap_or_default();
    let pid = pid.trim();
    !pid.is_empty()
        && Command::new("kill")
            .args(["-0", pid])
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
}

fn start_source_service(dir: &Path) {
    let pid = dir.join("source.pid");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "setsid sleep 100000 >/dev/null 2>&1 & echo $! > {}",
            pid.display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
}

/// Everything up: the pair replicating (`cutover db setup`), HAProxy with `old` in rotation
/// and `new` in maint, `named` answering the source address, the source's service running.
/// `health_extra` is added to the destination's health check.
fn start(health_extra: &str) -> Option<GoTime> {
    start_with("", health_extra, false)
}

/// `db_extra` goes into `[database]`, `health_extra` into `[[health]]` (`{oldport}` in it is
/// the source HTTP server's port); with `sync`, the
/// runbook has a `[sync]` whose control socket is a real `syncd push SRC DST --watch` of
/// `DIR/src` into `DIR/dst`.
fn start_with(db_extra: &str, health_extra: &str, sync: bool) -> Option<GoTime> {
    if !available() {
        return None;
    }
    let syncd = match sync {
        true => Some(syncd_binary()?),
        false => None,
    };
    let pair = Pair::start()?;
    create_app_user(&pair.source);
    create_app_user(&pair.replica);
    pair.source.sql(
        "CREATE DATABASE app; \
         CREATE TABLE app.items (id INT PRIMARY KEY, name VARCHAR(40)); \
         INSERT INTO app.items SELECT seq, CONCAT('item-', seq) FROM app.seq_1_to_100",
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
    let dir = tempfile::tempdir().unwrap();
    let key = bind.key_file(&KEY_SHA256);
    let runbook_text = format!(
        "[database]\nsource = \"{src}\"\nreplica = \"{rep}\"\nreplication_user = \"repl\"\n\
         replication_password = \"replpw\"\ncatch_up_timeout = \"10s\"\n\
         verify_tables = [\"app.*\"]\n{db_extra}\n\n\
         [loadbalancer]\nadmin_socket = {admin:?}\nbackend = \"web\"\nsource_server = \"old\"\n\
         destination_server = \"new\"\ndrain_timeout = \"5s\"\nready_timeout = \"10s\"\n\
         poll_interval = \"50ms\"\n\n\
         [dns]\nserver = \"127.0.0.1:{dns}\"\nzone = \"example.test.\"\nrecord = \"{RECORD}\"\n\
         source_address = \"127.0.0.1\"\ndestination_address = \"127.0.0.2\"\nttl = 60\nlow_ttl = 60\n\
         tsig_key_file = {key:?}\nns_port = {dns}\npoll_interval = \"100ms\"\ntimeout = \"1s\"\n\
         propagation_timeout = \"10s\"\n\n\
         [[health]]\nname = \"web\"\nhttp = \"http://127.0.0.1:{newport}/health\"\n{health_extra}\n\n\
         {src_svc}{dst_svc}{sync_table}",
        src = pair.source.url(),
        rep = pair.replica.url(),
        admin = haproxy.admin_socket.display().to_string(),
        dns = bind.port,
        key = key.display().to_string(),
        newport = new.port,
        health_extra = health_extra.replace("{oldport}", &old.port.to_string()),
        src_svc = service(dir.path(), "source"),
        dst_svc = service(dir.path(), "destination"),
        sync_table = match sync {
            true =>
                "\n[sync]\ncontrol = \"push.sock\"\nmax_lag = \"0s\"\nconverge_timeout = \"30s\"\n",
            false => "",
        },
    );
    let push = syncd.map(|syncd| Push::start(&syncd, dir.path(), "syncd-home", 40));
    let runbook = dir.path().join("runbook.toml");
    std::fs::write(&runbook, runbook_text).unwrap();
    let state = dir.path().join("state");
    start_source_service(dir.path());
    let g = GoTime {
        pair,
        haproxy,
        _old: old,
        _new: new,
        bind,
        runbook,
        state,
        dir,
        _push: push,
    };
    let out = cutover(&["db", "setup"], &g);
    assert_eq!(out.status.code(), Some(0), "setup: {}", text(&out));
    wait_for(|| lb_status(&g, "old") == "UP", "old to be UP");
    Some(g)
}

/// `runbook` with its health check's `source = ...` line aimed at `url`.
fn with_health_source(runbook: &str, url: &str) -> String {
    runbook
        .lines()
        .map(|l| match l.starts_with("source = \"http") {
            true => format!("source = {url:?}"),
            false => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `status` of a server in HAProxy's `show stat`, read with the test's own client.
fn lb_status(g: &GoTime, server: &str) -> String {
    let answer = g.haproxy.command("show stat web 4 -1");
    let mut lines = answer.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or("")
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = header.iter().position(|c| *c == "status").unwrap();
    lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|c| c.len() > col && c[1] == server)
        .map(|c| c[col].to_string())
        .unwrap_or_default()
}

/// Who answers through HAProxy's frontend (the backend's name in the body).
fn served_by(g: &GoTime) -> String {
    http::get(g.haproxy.frontend_port, "/")
        .map(|(code, body)| format!("{code} {}", body.trim()))
        .unwrap_or_else(|e| format!("error {e}"))
}

impl Drop for GoTime {
    fn drop(&mut self) {
        for side in ["source", "destination"] {
            if let Ok(pid) = std::fs::read_to_string(self.dir.path().join(format!("{side}.pid"))) {
                let _ = Command::new("kill").arg(pid.trim()).status();
            }
        }
    }
}

/// The state a rollback must restore and a dry run must not change, as each server says.
#[derive(Debug, PartialEq)]
struct World {
    old: String,
    new: String,
    dns: Vec<String>,
    source_read_only: String,
    replica_read_only: String,
    replica_replicates: bool,
    source_replicates: bool,
    source_service: bool,
    destination_service: bool,
}

fn world(g: &GoTime) -> World {
    let replicates = |m: &MariaDb| !m.sql("SHOW SLAVE STATUS").trim().is_empty();
    World {
        old: lb_status(g, "old"),
        new: lb_status(g, "new"),
        dns: g.bind.dig(RECORD, "A"),
        source_read_only: g.pair.source.sql("SELECT @@read_only"),
        replica_read_only: g.pair.replica.sql("SELECT @@read_only"),
        replica_replicates: replicates(&g.pair.replica),
        source_replicates: replicates(&g.pair.source),
        source_service: running(g, "source"),
        destination_service: running(g, "destination"),
    }
}

fn at_source() -> World {
    World {
        old: "UP".into(),
        new: "MAINT".into(),
        dns: vec!["127.0.0.1".into()],
        source_read_only: "0".into(),
        replica_read_only: "1".into(),
        replica_replicates: true,
        source_replicates: false,
        source_service: true,
        destination_service: false,
    }
}

/// The source takes an application write and the replica receives it.
fn assert_source_is_primary(g: &GoTime, id: u32) {
    g.pair
        .source
        .try_sql_as(
            APP_USER,
            APP_PASSWORD,
            &format!("INSERT INTO app.items VALUES ({id}, 'after rollback')"),
        )
        .expect("the old source takes writes again");
    g.pair
        .replica
        .wait_for(
            &format!("SELECT COUNT(*) FROM app.items WHERE id = {id}"),
            Duration::from_secs(10),
            |o| o == "1",
        )
        .expect("and replicates them to the destination again");
}

fn checksum(m: &MariaDb) -> String {
    m.sql("CHECKSUM TABLE app.items")
}

#[test]
fn happy_path_moves_traffic_dns_files_and_the_primary_to_the_destination() {
    let Some(g) = start_with("", "", true) else {
        return;
    };
    assert_eq!(served_by(&g), "200 old");
    // Written just before go-time: the promotion and the final sync must carry them.
    g.pair
        .source
        .sql("INSERT INTO app.items VALUES (4000, 'just before go-time')");
    let src = g.dir.path().join("src");
    std::fs::write(src.join("late.txt"), "written just before go-time").unwrap();
    let out = cutover(&["run", "--yes", "--json"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // One JSON object per action, then the summary.
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let summary = &lines.last().unwrap()["summary"];
    assert_eq!(summary["outcome"]["outcome"], "completed", "{summary}");
    assert!(
        summary["write_unavailable_ms"].as_u64().is_some(),
        "{summary}"
    );
    assert!(
        summary["http_unavailable_ms"].as_u64().is_some(),
        "{summary}"
    );
    let done: Vec<&str> = lines[..lines.len() - 1]
        .iter()
        .filter(|l| l["action"] == "do")
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        done,
        [
            "converge-sync",
            "drain",
            "stop-services",
            "promote",
            "final-sync",
            "start-services",
            "ready",
            "dns-switch",
            "health-gate"
        ]
    );
    // The trees are equal: the final sync's root is the source's, and so are the bytes.
    assert_final_sync_equal(
        &lines,
        &g.dir.path().join("syncd-home"),
        &src,
        &g.dir.path().join("dst"),
    );

    wait_for(
        || served_by(&g) == "200 new",
        "HAProxy to serve the destination",
    );
    assert_eq!(lb_status(&g, "old"), "MAINT");
    assert_eq!(g.bind.dig(RECORD, "A"), vec!["127.0.0.2"]);
    assert_eq!(g.pair.replica.sql("SELECT @@read_only"), "0");
    assert_eq!(g.pair.source.sql("SELECT @@read_only"), "1");
    assert!(
        !g.pair.source.sql("SHOW SLAVE STATUS").trim().is_empty(),
        "the old source replicates from the new primary (--reverse)"
    );
    // The data is equal, by cutover's own chunked checksum and by the server's.
    let out = cutover(&["db", "verify"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(checksum(&g.pair.source), checksum(&g.pair.replica));
    assert_eq!(
        g.pair
            .replica
            .sql("SELECT name FROM app.items WHERE id = 4000"),
        "just before go-time"
    );
    assert!(!running(&g, "source") && running(&g, "destination"));

    // The journal of a completed run stays until the next run: rolling it back points
    // everything at the source again.
    let out = cutover(&["rollback"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for(|| world(&g) == at_source(), "the world back at the source");
    assert_source_is_primary(&g, 5000);
    assert_eq!(served_by(&g), "200 old");
}

#[test]
fn run_without_reverse_leaves_the_old_source_fenced_and_not_replicating() {
    let Some(g) = start_with("reverse = false", "", false) else {
        return;
    };
    let out = cutover(&["run", "--yes"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(g.pair.replica.sql("SELECT @@read_only"), "0");
    assert_eq!(g.pair.source.sql("SELECT @@read_only"), "1");
    assert!(
        g.pair.source.sql("SHOW SLAVE STATUS").trim().is_empty(),
        "database.reverse = false: the old source does not replicate"
    );
    // Nothing was written to the new primary: the rollback can switch back, losing nothing.
    let out = cutover(&["rollback"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for(|| world(&g) == at_source(), "the world back at the source");
    assert_source_is_primary(&g, 6000);
}

#[test]
fn failing_health_gate_rolls_everything_back_to_the_source() {
    let Some(g) = start("body_contains = \"no such text\"") else {
        return;
    };
    g.pair
        .source
        .sql("INSERT INTO app.items VALUES (1000, 'before the run')");
    let out = cutover(&["run", "--yes"], &g);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("ROLLED BACK: health-gate failed"), "{t}");
    for undo in [
        "undo  dns-switch",
        "undo  ready",
        "undo  start-services",
        "undo  promote",
        "undo  stop-services",
        "undo  drain",
    ] {
        assert!(t.contains(undo), "{undo} missing: {t}");
    }
    wait_for(|| world(&g) == at_source(), "the world back at the source");
    assert_eq!(served_by(&g), "200 old");
    assert_source_is_primary(&g, 1001);
    assert_eq!(checksum(&g.pair.source), checksum(&g.pair.replica));
    // The journal is finished: a new run is not refused (it would run again).
    let out = cutover(&["rollback"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains("rolled back already"));
}

/// Spawns `cutover run` stalled at `stall`, waits for it to say so, and SIGKILLs it.
fn run_and_kill(g: &GoTime, stall: &str) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--yes"])
        .arg(&g.runbook)
        .arg("--state")
        .arg(&g.state)
        .env("CUTOVER_TEST_STALL", stall)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let line = line.unwrap_or_default();
            let stalled = line.contains("test stall at");
            let _ = tx.send(line);
            if stalled {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) if l.contains("test stall at") => break,
            Ok(l) => seen.push(l),
            Err(_) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("cutover exited ({status}) before the stall at {stall}: {seen:?}");
        }
        assert!(Instant::now() < deadline, "no stall at {stall}: {seen:?}");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn sigkill_at_every_step_then_rollback_restores_everything() {
    let Some(g) = start("") else { return };
    for (id, stall) in (2000..).zip([
        "drain:after",
        "stop-services:after",
        "promote:before",
        "promote:after",
        "start-services:after",
        "ready:after",
        "dns-switch:after",
        "health-gate:after",
    ]) {
        run_and_kill(&g, stall);
        // An unfinished journal blocks a new run.
        let out = cutover(&["run", "--yes"], &g);
        assert_eq!(out.status.code(), Some(2), "{stall}: {}", text(&out));
        assert!(
            text(&out).contains("unfinished run"),
            "{stall}: {}",
            text(&out)
        );
        let out = cutover(&["rollback"], &g);
        assert_eq!(out.status.code(), Some(0), "{stall}: {}", text(&out));
        wait_for(
            || world(&g) == at_source(),
            &format!("the world back at the source after a kill at {stall}"),
        );
        assert_source_is_primary(&g, id);
        assert_eq!(
            checksum(&g.pair.source),
            checksum(&g.pair.replica),
            "{stall}"
        );
    }
}

#[test]
fn resume_after_a_kill_finishes_the_run() {
    let Some(g) = start("") else { return };
    run_and_kill(&g, "ready:after");
    let out = cutover(&["run", "--yes", "--resume"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    wait_for(
        || served_by(&g) == "200 new",
        "HAProxy to serve the destination",
    );
    assert_eq!(g.bind.dig(RECORD, "A"), vec!["127.0.0.2"]);

    // A promotion killed mid-way is not done again on resume: it is rolled back.
    drop(g);
    let Some(g) = start("") else { return };
    run_and_kill(&g, "promote:before");
    let out = cutover(&["run", "--yes", "--resume"], &g);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("promote was interrupted"),
        "{}",
        text(&out)
    );
    wait_for(|| world(&g) == at_source(), "the world back at the source");
}

#[test]
fn refusals_dry_run_changes_nothing_and_no_tty_needs_yes() {
    let Some(g) = start("source = \"http://127.0.0.1:{oldport}/health\"") else {
        return;
    };
    let before = world(&g);
    let gtid = g.pair.source.sql("SELECT @@gtid_binlog_pos");
    let serial = g.bind.serial();
    let out = cutover(&["run", "--dry-run"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    for want in [
        "set server web/old state drain",
        "set server web/new state ready",
        "SET GLOBAL read_only",
        "FLUSH TABLES WITH READ LOCK",
        "UPDATE zone example.test.",
        "kill $(cat",
        "undo",
        "nothing was changed",
    ] {
        assert!(t.contains(want), "dry run lacks {want:?}: {t}");
    }
    assert_eq!(world(&g), before);
    assert_eq!(g.pair.source.sql("SELECT @@gtid_binlog_pos"), gtid);
    assert_eq!(g.bind.serial(), serial);
    assert!(!g.state.exists(), "a dry run writes no journal");

    // Without --yes and without a TTY: refused, nothing changed.
    let out = cutover(&["run"], &g);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no TTY"), "{}", text(&out));
    assert_eq!(world(&g), before);

    // The plan: measured facts, the derived rollback, no password.
    let out = cutover(&["plan"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let md = String::from_utf8_lossy(&out.stdout);
    for want in [
        "# Migration plan",
        "replicating, 0 transaction(s) behind",
        "old UP (ready), new MAINT (maint)",
        "answers 127.0.0.1 TTL 60",
        "## Risks",
        "1. undo **dns-switch**",
        "6. undo **drain**",
        "- [ ] svc.example.test. answers 127.0.0.2",
    ] {
        assert!(md.contains(want), "plan lacks {want:?}:\n{md}");
    }
    assert!(!md.contains("rootpw"), "{md}");
    assert_eq!(world(&g), before);

    // Preflight: everything passes (the health check runs against the source).
    let out = cutover(&["preflight", "--json"], &g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<String> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("{} {} {}", c["verdict"], c["area"], c["name"]))
        .collect();
    for want in [
        "\"pass\" \"database\" \"replica replicating without error\"",
        "\"pass\" \"loadbalancer\" \"admin socket at level admin\"",
        "\"pass\" \"dns\" \"TSIG key",
        "\"pass\" \"service\" \"source service app-source running\"",
        "\"pass\" \"health\" \"web on the source (http http://127.0.0.1:",
    ] {
        assert!(
            names.iter().any(|n| n.starts_with(want)),
            "{want}: {names:?}"
        );
    }
    // A source that fails the health check fails the preflight.
    let good = std::fs::read_to_string(&g.runbook).unwrap();
    let dead = with_health_source(&good, "http://127.0.0.1:1/health");
    std::fs::write(&g.runbook, &dead).unwrap();
    let out = cutover(&["preflight"], &g);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("FAIL health") && text(&out).contains("127.0.0.1:1/health"),
        "{}",
        text(&out)
    );
    std::fs::write(&g.runbook, &good).unwrap();
    // A TTL above low_ttl fails the preflight, and `run` then changes nothing.
    g.bind
        .nsupdate(
            &KEY_SHA256,
            "update delete svc.example.test. A\nupdate add svc.example.test. 300 A 127.0.0.1",
        )
        .unwrap();
    let out = cutover(&["preflight"], &g);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("TTL 300: run `cutover dns lower-ttl`"),
        "{}",
        text(&out)
    );
    let out = cutover(&["run", "--yes"], &g);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(world(&g), before);
    assert!(!g.state.exists(), "a failed preflight writes no journal");

    // --resume with nothing journaled.
    let out = cutover(&["run", "--yes", "--resume"], &g);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("no run to resume"), "{}", text(&out));
    assert_eq!(world(&g), before);
}

#[test]
fn sync_socket_that_does_not_answer_is_named_and_nothing_else_runs() {
    let dir = tempfile::tempdir().unwrap();
    let runbook = dir.path().join("runbook.toml");
    std::fs::write(
        &runbook,
        "[sync]\ncontrol = \"push.sock\"\nconverge_timeout = \"1s\"\n\n\
         [[health]]\nname = \"x\"\ntcp = \"127.0.0.1:1\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--yes"])
        .arg(&runbook)
        .arg("--state")
        .arg(dir.path().join("state"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("FAIL sync"), "{t}");
    assert!(t.contains("push.sock"), "{t}");
    assert!(t.contains("preflight FAILED: nothing was changed"), "{t}");
    assert!(!dir.path().join("state").exists(), "no journal: {t}");
}

/// The `syncd` binary of this workspace: `target/debug/syncd` next to this package (built by
/// `cargo build -p syncd`, which a workspace test run does first). Missing: built here with
/// the cargo that runs the tests; if that fails, the test fails under `CI=true` and is
/// skipped otherwise.
fn syncd_binary() -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/syncd");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let _ = Command::new(cargo)
            .args(["build", "-p", "syncd", "--bin", "syncd", "--locked"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status();
    }
    if bin.exists() {
        return Some(bin);
    }
    assert!(
        !integration_tests::under_ci(),
        "{} not found, and CI=true: run cargo build -p syncd",
        bin.display()
    );
    eprintln!("SKIPPED: {} not found", bin.display());
    None
}

/// A running `syncd push SRC DEST --watch --control SOCK`, killed on drop.
struct Push(std::process::Child);

/// The run's `final-sync` step succeeded with the root of `src` as `syncd manifest` (home
/// `home`) computes it, and `diff -r src dst` finds nothing.
fn assert_final_sync_equal(lines: &[serde_json::Value], home: &Path, src: &Path, dst: &Path) {
    let final_sync = lines
        .iter()
        .find(|l| l["step"] == "final-sync" && l["action"] == "do")
        .unwrap();
    assert_eq!(final_sync["ok"], true, "{final_sync}");
    let manifest = Command::new(syncd_binary().unwrap())
        .env("SYNCD_HOME", home)
        .arg("manifest")
        .arg(src)
        .arg("--json")
        .output()
        .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&manifest.stdout).unwrap();
    assert_eq!(final_sync["observed"]["root"], m["root"], "{final_sync}");
    let diff = Command::new("diff")
        .arg("-r")
        .arg(src)
        .arg(dst)
        .output()
        .unwrap();
    assert!(diff.status.success(), "{}", text(&diff));
}

impl Push {
    /// `files` files in `DIR/src`, then `syncd push DIR/src DIR/dst --watch --control
    /// DIR/push.sock` with the home `DIR/HOME`; returns once the socket is up.
    fn start(syncd: &Path, dir: &Path, home: &str, files: usize) -> Push {
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        for i in 0..files {
            let p = src.join(format!("d{}/f{i}", i % 5));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, format!("file {i} ").repeat(20 * (i + 1))).unwrap();
        }
        let sock = dir.join("push.sock");
        let push = Push(
            Command::new(syncd)
                .env("SYNCD_HOME", dir.join(home))
                .arg("push")
                .arg(&src)
                .arg(&dst)
                .args(["--watch", "--control"])
                .arg(&sock)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        wait_for(|| sock.exists(), "the syncd control socket");
        push
    }
}

impl Drop for Push {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn raw(sock: &Path, line: &str) -> serde_json::Value {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap()
}

#[test]
fn sync_steps_against_a_real_syncd_push_watch() {
    let Some(syncd) = syncd_binary() else { return };
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let sock = t.path().join("push.sock");
    let _push = Push::start(&syncd, t.path(), "home", 50);
    let runbook = t.path().join("runbook.toml");
    std::fs::write(
        &runbook,
        "[sync]\ncontrol = \"push.sock\"\nmax_lag = \"0s\"\nconverge_timeout = \"30s\"\n",
    )
    .unwrap();
    let go = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.args(args).arg(&runbook);
        if args[0] == "run" {
            cmd.arg("--state").arg(t.path().join("state"));
        }
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        eprintln!("$ cutover {args:?}\n{}", text(&out));
        out
    };
    // A change made while the run starts is in the final sync.
    std::fs::write(src.join("late.txt"), "written just before go-time").unwrap();
    let out = go(&["run", "--yes", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_final_sync_equal(&lines, &t.path().join("home"), &src, &dst);

    // Paused with a change pending: not converged within converge_timeout, the run stops
    // at the first step and changes nothing.
    std::fs::write(
        &runbook,
        "[sync]\ncontrol = \"push.sock\"\nmax_lag = \"0s\"\nconverge_timeout = \"1s\"\n",
    )
    .unwrap();
    assert_eq!(raw(&sock, "{\"cmd\":\"pause\"}\n")["ok"], true);
    std::fs::write(src.join("paused.txt"), "waits").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = go(&["preflight"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("converged false"), "{}", text(&out));
    let out = go(&["run", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("converge-sync failed") && text(&out).contains("not converged"),
        "{}",
        text(&out)
    );
    assert!(!dst.join("paused.txt").exists());
}

/// Unmounts the test's filesystem at drop (lazily: a process may still hold it).
struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn preflight_compares_the_destination_free_space_with_what_is_still_to_write() {
    let Some(syncd) = syncd_binary() else { return };
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    std::fs::create_dir(&dst).unwrap();
    // The destination is a 4 MiB filesystem of its own.
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&dst)
        .status();
    if !matches!(mounted, Ok(s) if s.success()) {
        assert!(
            !integration_tests::under_ci(),
            "mounting a tmpfs needs root, which CI has"
        );
        eprintln!("skipped: cannot mount a tmpfs (not root)");
        return;
    }
    let _mounted = Mounted(dst.clone());
    let sock = t.path().join("push.sock");
    let _push = Push::start(&syncd, t.path(), "home", 5);
    let runbook = t.path().join("runbook.toml");
    std::fs::write(
        &runbook,
        "[sync]\ncontrol = \"push.sock\"\nmax_lag = \"0s\"\nconverge_timeout = \"30s\"\n",
    )
    .unwrap();
    let preflight = || {
        let out = Command::new(env!("CARGO_BIN_EXE_cutover"))
            .args(["preflight", "--json"])
            .arg(&runbook)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        eprintln!("$ cutover preflight --json\n{}", text(&out));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let space = report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "destination free space for the tree")
            .cloned()
            .unwrap();
        (out.status.code(), space)
    };
    wait_for(
        || raw(&sock, "{\"cmd\":\"status\"}\n")["status"]["converged"] == true,
        "the push to converge",
    );
    let status = raw(&sock, "{\"cmd\":\"status\"}\n")["status"].clone();
    let free = status["destination_free_bytes"].as_u64().unwrap();
    assert!(free > 3 << 20 && free <= 4 << 20, "{status}");
    assert!(status["tree_bytes"].as_u64().unwrap() > 0, "{status}");
    let (code, space) = preflight();
    assert_eq!(code, Some(0), "{space}");
    assert_eq!(space["verdict"], "pass", "{space}");

    // 8 MiB more in the source, which the destination cannot hold: the preflight fails.
    assert_eq!(raw(&sock, "{\"cmd\":\"pause\"}\n")["ok"], true);
    std::fs::write(src.join("big"), vec![1u8; 8 << 20]).unwrap();
    wait_for(
        || raw(&sock, "{\"cmd\":\"status\"}\n")["status"]["pending_bytes"] == 8 << 20,
        "the big file to be pending",
    );
    let (code, space) = preflight();
    assert_eq!(code, Some(1), "{space}");
    assert_eq!(space["verdict"], "fail", "{space}");
    assert!(
        space["detail"]
            .as_str()
            .unwrap()
            .contains("still to write 0.01 GiB"),
        "{space}"
    );
}

fn ansible_available() -> bool {
    // Fails under CI=true when missing (scripts/test installs ansible-core).
    integration_tests::haproxy::require("ansible-playbook", "ansible-core")
}

fn playbook(g: &GoTime) -> Output {
    let out = Command::new("ansible-playbook")
        .args(["-i", "localhost,", "-c", "local"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/ansible/cutover.yml"))
        .arg("-e")
        .arg(format!("cutover_runbook={}", g.runbook.display()))
        .arg("-e")
        .arg(format!("cutover_bin={}", env!("CARGO_BIN_EXE_cutover")))
        .arg("-e")
        .arg(format!("cutover_state={}", g.state.display()))
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_LOCALHOST_WARNING", "false")
        .env("ANSIBLE_HOME", g.dir.path().join("ansible"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    eprintln!(
        "$ ansible-playbook ... -> {:?}\n{}",
        out.status.code(),
        text(&out)
    );
    out
}

#[test]
fn ansible_playbook_runs_preflight_then_go_time() {
    if !ansible_available() {
        return;
    }
    let Some(g) = start("") else { return };
    let out = playbook(&g);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("\"cutover_summary\""), "{t}");
    assert!(t.contains("\"outcome\": \"completed\""), "{t}");
    wait_for(
        || served_by(&g) == "200 new",
        "HAProxy to serve the destination",
    );
    drop(g);

    // A host whose gate fails stops the rollout, rolled back, with its summary registered.
    let Some(g) = start("body_contains = \"no such text\"") else {
        return;
    };
    let out = playbook(&g);
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("\"outcome\": \"rolled-back\""), "{t}");
    assert!(t.contains("cutover run exited 1"), "{t}");
    wait_for(|| world(&g) == at_source(), "the world back at the source");
}

#[test]
fn sigterm_during_a_gate_rolls_back_at_once() {
    // A gate that would retry for a minute: SIGTERM cancels it and the run rolls back.
    let Some(g) = start("body_contains = \"no such text\"\nretries = 60\ninterval = \"1s\"") else {
        return;
    };
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["run", "--yes"])
        .arg(&g.runbook)
        .arg("--state")
        .arg(&g.state)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let journal_has = |what: &str| {
        std::fs::read_dir(&g.state)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                std::fs::read_to_string(e.path())
                    .unwrap_or_default()
                    .contains(what)
            })
    };
    wait_for(
        || journal_has("\"step\":\"health-gate\",\"phase\":\"do-started\""),
        "the health gate to start",
    );
    std::thread::sleep(Duration::from_millis(500));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("interrupted (SIGINT/SIGTERM)"), "{t}");
    assert!(started.elapsed() < Duration::from_secs(40), "{t}");
    wait_for(|| world(&g) == at_source(), "the world back at the source");
}

#[test]
fn a_failed_undo_stops_the_rollback_keeps_the_journal_and_rollback_retries_it() {
    let Some(g) = start("body_contains = \"no such text\"") else {
        return;
    };
    // The destination's service will not stop: its stop command does nothing.
    let original = std::fs::read_to_string(&g.runbook).unwrap();
    let stop_line = original
        .lines()
        .find(|l| l.starts_with("stop = ") && l.contains("destination.pid"))
        .unwrap()
        .to_string();
    std::fs::write(
        &g.runbook,
        original.replace(&stop_line, "stop = \"true\"\nkill = \"false\""),
    )
    .unwrap();
    let out = cutover(&["run", "--yes"], &g);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("ROLLBACK FAILED at start-services"), "{t}");
    assert!(t.contains("the journal"), "{t}");
    // Undone so far: DNS and the destination out of rotation; not the database.
    assert_eq!(g.bind.dig(RECORD, "A"), vec!["127.0.0.1"]);
    assert_eq!(lb_status(&g, "new"), "MAINT");
    assert_eq!(g.pair.replica.sql("SELECT @@read_only"), "0");
    // The journal is unfinished: run is refused.
    let out = cutover(&["run", "--yes"], &g);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("unfinished run"), "{}", text(&out));

    // Fixed, the rollback goes on from the failed undo.
    std::fs::write(&g.runbook, &original).unwrap();
    let out = cutover(&["rollback"], &g);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(0), "{t}");
    assert!(
        !t.contains("undo  dns-switch") && t.contains("undo  start-services"),
        "the retry starts at the failed undo: {t}"
    );
    wait_for(|| world(&g) == at_source(), "the world back at the source");
    assert_source_is_primary(&g, 7000);
}
