//! End-to-end tests of `cutover lb` against a real HAProxy (spawned per test on loopback by
//! `integration_tests::haproxy`), with two backends served by small HTTP servers.
//!
//! - `status_*`: both servers' states, over the unix and the TCP admin socket;
//! - `drain_*`: a long request holds a session; the drain waits for it, or times out and says
//!   how many sessions were left;
//! - `ready_*`: the destination gets new requests once its check is UP; one that stays DOWN is
//!   an error and the source is left alone;
//! - `errors_*`: a `level user` socket, unknown names, sockets that refuse or never answer.

// The helpers below are test code too; clippy's `allow-unwrap-in-tests` covers only `#[test]`
// functions.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use integration_tests::haproxy::{Haproxy, Server};
use integration_tests::http::{self, HttpServer};

struct Setup {
    haproxy: Haproxy,
    old: HttpServer,
    new: HttpServer,
    dir: tempfile::TempDir,
}

/// HAProxy with `old` in rotation and `new` disabled (`new_port` overrides where `new` points).
fn setup(new_port: Option<u16>) -> Setup {
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
            port: new_port.unwrap_or(new.port),
            disabled: true,
        },
    ]);
    let s = Setup {
        haproxy,
        old,
        new,
        dir: tempfile::tempdir().unwrap(),
    };
    // `old` must be UP before the test starts.
    wait_for(|| status_of(&s.haproxy, "old").0 == "UP", "old to be UP");
    s
}

fn wait_for(mut f: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `(status, scur)` of a server, read with the test's own runtime API client.
fn status_of(h: &Haproxy, server: &str) -> (String, u64) {
    let answer = h.command("show stat web 4 -1");
    let mut lines = answer.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap()
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |n: &str| header.iter().position(|c| *c == n).unwrap();
    for line in lines {
        let cells: Vec<&str> = line.split(',').collect();
        if cells.len() > 1 && cells[1] == server {
            return (
                cells[col("status")].to_string(),
                cells[col("scur")].parse().unwrap(),
            );
        }
    }
    panic!("no server {server} in {answer}");
}

fn runbook(s: &Setup, socket: &str, extra: &str) -> std::path::PathBuf {
    let path = s.dir.path().join("runbook.toml");
    std::fs::write(
        &path,
        format!(
            "[loadbalancer]\nadmin_socket = {socket:?}\nbackend = \"web\"\n\
             source_server = \"old\"\ndestination_server = \"new\"\npoll_interval = \"50ms\"\n{extra}"
        ),
    )
    .unwrap();
    path
}

fn unix(s: &Setup) -> String {
    s.haproxy.admin_socket.display().to_string()
}

fn cutover(args: &[&str], runbook: &Path) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.args(args).arg(runbook);
    cmd.output().expect("run cutover")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): stdout {}\nstderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn status_shows_both_servers_over_unix_and_tcp() {
    if !Haproxy::available() {
        return;
    }
    let s = setup(None);
    for socket in [unix(&s), format!("127.0.0.1:{}", s.haproxy.admin_tcp_port)] {
        let rb = runbook(&s, &socket, "");
        let out = cutover(&["lb", "status", "--json"], &rb);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let r = json(&out);
        let servers = r["servers"].as_array().unwrap();
        assert_eq!(servers[0]["server"], "old");
        assert_eq!(servers[0]["admin_state"], "ready");
        assert_eq!(servers[0]["op_state"], "running");
        assert_eq!(servers[0]["status"], "UP");
        assert_eq!(servers[0]["check_status"], "L7OK");
        assert_eq!(servers[1]["server"], "new");
        assert_eq!(servers[1]["admin_state"], "maint");
        assert_eq!(servers[1]["status"], "MAINT");
        let text = cutover(&["lb", "status"], &rb);
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(
            text.contains("source") && text.contains("admin maint"),
            "{text}"
        );
    }
}

#[test]
fn drain_waits_for_a_long_request_to_end() {
    if !Haproxy::available() {
        return;
    }
    let s = setup(None);
    let port = s.haproxy.frontend_port;
    let slow = std::thread::spawn(move || http::get(port, "/slow?ms=4000"));
    wait_for(
        || status_of(&s.haproxy, "old").1 == 1,
        "the slow request to hold a session",
    );
    let rb = runbook(&s, &unix(&s), "drain_timeout = \"20s\"\n");
    let out = cutover(&["lb", "drain", "--json"], &rb);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["sessions_at_start"], 1, "{r}");
    assert_eq!(r["sessions_open"], 0, "{r}");
    assert_eq!(r["timed_out"], false);
    let drain_ms = r["drain_ms"].as_u64().unwrap();
    assert!(
        (1000..15_000).contains(&drain_ms),
        "drain took {drain_ms} ms"
    );
    assert_eq!(r["after"]["admin_state"], "maint");
    assert_eq!(status_of(&s.haproxy, "old").0, "MAINT");
    // The drained request was served to the end.
    assert_eq!(slow.join().unwrap().unwrap(), (200, "old".to_string()));
    // Maint again is a no-op that says so.
    let out = cutover(&["lb", "drain"], &rb);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("already in maint"));
}

#[test]
fn drain_times_out_and_reports_the_open_session() {
    if !Haproxy::available() {
        return;
    }
    let s = setup(None);
    let port = s.haproxy.frontend_port;
    let slow = std::thread::spawn(move || http::get(port, "/slow?ms=6000"));
    wait_for(
        || status_of(&s.haproxy, "old").1 == 1,
        "the slow request to hold a session",
    );
    let rb = runbook(&s, &unix(&s), "drain_timeout = \"500ms\"\n");
    let started = Instant::now();
    let out = cutover(&["lb", "drain"], &rb);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 still open at maint (drain_timeout reached)"),
        "{text}"
    );
    assert_eq!(status_of(&s.haproxy, "old").0, "MAINT");
    // HAProxy does not cut the session it reported: it ends normally.
    assert_eq!(slow.join().unwrap().unwrap(), (200, "old".to_string()));
}

#[test]
fn ready_routes_new_requests_to_the_destination() {
    if !Haproxy::available() {
        return;
    }
    let s = setup(None);
    for _ in 0..3 {
        assert_eq!(http::get(s.haproxy.frontend_port, "/").unwrap().1, "old");
    }
    let rb = runbook(
        &s,
        &unix(&s),
        "drain_timeout = \"5s\"\nready_timeout = \"10s\"\n",
    );
    let out = cutover(&["lb", "ready", "--json"], &rb);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = json(&out);
    assert_eq!(r["before"], "maint");
    assert_eq!(r["after"]["status"], "UP", "{r}");
    assert_eq!(r["after"]["admin_state"], "ready");
    assert_eq!(r["ok"], true);
    // Both are in rotation now; with the source drained every new request goes to `new`.
    let out = cutover(&["lb", "drain"], &rb);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let before = s.new.served();
    for _ in 0..4 {
        assert_eq!(
            http::get(s.haproxy.frontend_port, "/").unwrap(),
            (200, "new".to_string())
        );
    }
    assert_eq!(s.new.served() - before, 4);
    let _ = &s.old;
}

#[test]
fn ready_fails_when_the_destination_stays_down_and_leaves_the_source() {
    if !Haproxy::available() {
        return;
    }
    // `new` points at a port nobody listens on: its check never passes.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let s = setup(Some(dead_port));
    let rb = runbook(&s, &unix(&s), "ready_timeout = \"800ms\"\n");
    let out = cutover(&["lb", "ready"], &rb);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("NOT UP after") && text.contains("DOWN"),
        "{text}"
    );
    let out = cutover(&["lb", "status", "--json"], &rb);
    // `new` is in rotation now, and DOWN: status says so with exit 1.
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    assert!(
        r["problems"][0]
            .as_str()
            .unwrap()
            .starts_with("new is in rotation but DOWN"),
        "{r}"
    );
    assert_eq!(r["servers"][0]["admin_state"], "ready");
    assert_eq!(r["servers"][0]["status"], "UP");
    assert_eq!(http::get(s.haproxy.frontend_port, "/").unwrap().1, "old");
}

#[test]
fn errors_user_level_socket_is_refused_clearly() {
    if !Haproxy::available() {
        return;
    }
    let s = setup(None);
    let rb = runbook(&s, &s.haproxy.user_socket.display().to_string(), "");
    for cmd in ["drain", "ready"] {
        let out = cutover(&["lb", cmd], &rb);
        assert_eq!(out.status.code(), Some(2));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("permission denied for `set server web/")
                && err.contains("not at admin level"),
            "{err}"
        );
    }
    // status only reads, which a user-level socket may.
    assert_eq!(cutover(&["lb", "status"], &rb).status.code(), Some(0));
    assert_eq!(status_of(&s.haproxy, "old").0, "UP");
}

#[test]
fn errors_unknown_names_and_sockets_that_fail() {
    if !Haproxy::available() {
        return;
    }
    let s = setup(None);
    let socket = unix(&s);
    let dir = s.dir.path();
    let write = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    // A listener that accepts and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let cases = [
        (
            write(
                "a.toml",
                format!(
                    "[loadbalancer]\nadmin_socket = {socket:?}\nbackend = \"nope\"\n\
                     source_server = \"old\"\ndestination_server = \"new\"\n"
                ),
            ),
            "no backend \"nope\"".to_string(),
        ),
        (
            write(
                "b.toml",
                format!(
                    "[loadbalancer]\nadmin_socket = {socket:?}\nbackend = \"web\"\n\
                     source_server = \"gone\"\ndestination_server = \"new\"\n"
                ),
            ),
            "backend \"web\" has no server \"gone\"".to_string(),
        ),
        (
            write(
                "c.toml",
                "[loadbalancer]\nadmin_socket = \"/nonexistent/admin.sock\"\nbackend = \"web\"\n\
                 source_server = \"old\"\ndestination_server = \"new\"\n"
                    .to_string(),
            ),
            "cannot connect to the HAProxy admin socket /nonexistent/admin.sock".to_string(),
        ),
        (
            write(
                "d.toml",
                format!(
                    "[loadbalancer]\nadmin_socket = \"127.0.0.1:{silent_port}\"\nbackend = \"web\"\n\
                     source_server = \"old\"\ndestination_server = \"new\"\ntimeout = \"300ms\"\n"
                ),
            ),
            format!("the HAProxy admin socket 127.0.0.1:{silent_port} did not answer"),
        ),
    ];
    for (rb, want) in &cases {
        for cmd in ["drain", "status"] {
            let out = cutover(&["lb", cmd], rb);
            assert_eq!(out.status.code(), Some(2), "{cmd} {}", rb.display());
            let err = stderr(&out);
            assert_eq!(err.lines().count(), 1, "{err}");
            assert!(err.contains(want.as_str()), "{err} lacks {want}");
        }
    }
    drop(silent);
    // Nothing was changed by the failed drains.
    assert_eq!(status_of(&s.haproxy, "old").0, "UP");
}
