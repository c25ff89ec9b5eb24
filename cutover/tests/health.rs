//! End-to-end tests of `cutover health`: every kind of check, passing and failing, against real
//! targets on loopback (a test HTTP server, a TCP port, a throw-away MariaDB, the real disk and
//! memory of this machine), through the `cutover` binary.
//!
//! - `http_*`: status, body substring and regex, header, timeout, retries;
//! - `tcp_*`, `sql_*`, `disk_and_memory_*`;
//! - `no_checks_is_a_usage_error`.

// The helpers below are test code too; clippy's `allow-unwrap-in-tests` covers only `#[test]`
// functions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use integration_tests::http::HttpServer;
use integration_tests::mariadb::MariaDb;

fn runbook(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("runbook.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn health(runbook: &Path) -> (Option<i32>, serde_json::Value, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(["health", "--json"])
        .arg(runbook)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, text)
}

/// Every check's (name, ok, detail).
fn verdicts(report: &serde_json::Value) -> Vec<(String, bool, String)> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["ok"].as_bool().unwrap(),
                c["detail"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn check(v: &[(String, bool, String)], name: &str, ok: bool, detail: &str) {
    let (_, got, d) = v
        .iter()
        .find(|(n, ..)| n == name)
        .unwrap_or_else(|| panic!("no check {name} in {v:?}"));
    assert_eq!(*got, ok, "{name}: {d}");
    assert!(d.contains(detail), "{name}: {d:?} lacks {detail:?}");
}

#[test]
fn http_checks_pass_and_fail_on_status_body_regex_header_and_timeout() {
    let web = HttpServer::start("old");
    let dir = tempfile::tempdir().unwrap();
    let base = format!("http://127.0.0.1:{}", web.port);
    let rb = runbook(
        dir.path(),
        &format!(
            r#"
[[health]]
name = "health"
http = "{base}/health"

[[health]]
name = "body"
http = "{base}/"
body_contains = "old"
body_regex = "^o.d$"
header = "X-Server: old"

[[health]]
name = "wrong-status"
http = "{base}/health"
expect_status = 204

[[health]]
name = "wrong-body"
http = "{base}/"
body_contains = "new"

[[health]]
name = "wrong-regex"
http = "{base}/"
body_regex = "^new$"

[[health]]
name = "wrong-header"
http = "{base}/"
header = "X-Server: new"

[[health]]
name = "slow"
http = "{base}/slow?ms=3000"
timeout = "300ms"
"#
        ),
    );
    let (code, report, text) = health(&rb);
    assert_eq!(code, Some(1), "{text}");
    let v = verdicts(&report);
    check(&v, "health", true, "status 200");
    check(&v, "body", true, "status 200, 3 body bytes");
    check(&v, "wrong-status", false, "status 200, expected 204");
    check(&v, "wrong-body", false, "the body lacks \"new\"");
    check(&v, "wrong-regex", false, "does not match /^new$/");
    check(
        &v,
        "wrong-header",
        false,
        "header X-Server: \"old\", expected \"new\"",
    );
    check(&v, "slow", false, "timed out after 300ms");
    // Only the passing ones: exit 0.
    let rb = runbook(
        dir.path(),
        &format!("[[health]]\nname = \"health\"\nhttp = \"{base}/health\"\n"),
    );
    let (code, report, text) = health(&rb);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(report["ok"], true);
}

#[test]
fn http_retries_until_the_service_recovers() {
    let web = std::sync::Arc::new(HttpServer::start("app"));
    web.set_health(503);
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(
        dir.path(),
        &format!(
            "[[health]]\nname = \"app\"\nhttp = \"http://127.0.0.1:{}/health\"\n\
             retries = 20\ninterval = \"100ms\"\n",
            web.port
        ),
    );
    let w = web.clone();
    let recover = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(500));
        w.set_health(200);
    });
    let (code, report, text) = health(&rb);
    recover.join().unwrap();
    assert_eq!(code, Some(0), "{text}");
    let attempts = report["checks"][0]["attempts"].as_u64().unwrap();
    assert!((2..=20).contains(&attempts), "{attempts} attempts");
    // With no retries left the 503 is the verdict.
    web.set_health(503);
    let rb = runbook(
        dir.path(),
        &format!(
            "[[health]]\nname = \"app\"\nhttp = \"http://127.0.0.1:{}/health\"\nretries = 1\ninterval = \"10ms\"\n",
            web.port
        ),
    );
    let (code, report, text) = health(&rb);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(report["checks"][0]["attempts"], 2);
    assert!(text.contains("status 503, expected 200"), "{text}");
}

#[test]
fn tcp_connect_passes_on_a_listener_and_fails_on_a_closed_port() {
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_port = closed.local_addr().unwrap().port();
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(
        dir.path(),
        &format!(
            "[[health]]\nname = \"open\"\ntcp = \"127.0.0.1:{}\"\n\n\
             [[health]]\nname = \"closed\"\ntcp = \"127.0.0.1:{closed_port}\"\n",
            open.local_addr().unwrap().port()
        ),
    );
    let (code, report, text) = health(&rb);
    assert_eq!(code, Some(1), "{text}");
    let v = verdicts(&report);
    check(&v, "open", true, "connected in");
    check(&v, "closed", false, "refused");
}

#[test]
fn sql_first_cell_must_equal_the_expected_value() {
    if !MariaDb::available() {
        return;
    }
    let db = MariaDb::start(1);
    let dir = tempfile::tempdir().unwrap();
    let url = db.url();
    let rb = runbook(
        dir.path(),
        &format!(
            "[[health]]\nname = \"one\"\nsql = \"{url}\"\nquery = \"SELECT 1\"\nexpect = \"1\"\n\n\
             [[health]]\nname = \"version\"\nsql = \"{url}\"\nquery = \"SELECT @@server_id\"\nexpect = \"2\"\n\n\
             [[health]]\nname = \"null\"\nsql = \"{url}\"\nquery = \"SELECT NULL\"\nexpect = \"1\"\n\n\
             [[health]]\nname = \"denied\"\nsql = \"mysql://root:wrong@127.0.0.1:{}\"\nquery = \"SELECT 1\"\nexpect = \"1\"\n",
            db.port
        ),
    );
    let (code, report, text) = health(&rb);
    assert_eq!(code, Some(1), "{text}");
    let v = verdicts(&report);
    check(&v, "one", true, "first cell \"1\"");
    check(&v, "version", false, "first cell \"1\", expected \"2\"");
    check(&v, "null", false, "no row (or NULL)");
    check(&v, "denied", false, "Access denied");
    // The password never shows in the report.
    assert!(
        !text.contains(integration_tests::mariadb::ROOT_PASSWORD),
        "{text}"
    );
}

#[test]
fn disk_and_memory_pass_on_small_minimums_and_fail_on_impossible_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let rb = runbook(
        dir.path(),
        &format!(
            "[[health]]\nname = \"disk-ok\"\ndisk = {path:?}\nmin_free = \"1KiB\"\n\n\
             [[health]]\nname = \"disk-full\"\ndisk = {path:?}\nmin_free = \"1000000TB\"\n\n\
             [[health]]\nname = \"disk-pct\"\ndisk = {path:?}\nmin_free = \"100%\"\n\n\
             [[health]]\nname = \"mem-ok\"\nmemory = \"1MiB\"\n\n\
             [[health]]\nname = \"mem-all\"\nmemory = \"100%\"\n\n\
             [[health]]\nname = \"no-such-path\"\ndisk = \"/nonexistent/x\"\nmin_free = \"1B\"\n"
        ),
    );
    let (code, report, text) = health(&rb);
    assert_eq!(code, Some(1), "{text}");
    let v = verdicts(&report);
    check(&v, "disk-ok", true, "free ");
    check(&v, "disk-full", false, "wanted at least");
    check(&v, "disk-pct", false, "wanted at least 100%");
    check(&v, "mem-ok", true, "available ");
    check(&v, "mem-all", false, "wanted at least 100%");
    check(&v, "no-such-path", false, "statvfs");
}

#[test]
fn no_checks_is_a_usage_error_and_bad_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), "[sync]\ncontrol = \"/run/x.sock\"\n");
    let (code, _, text) = health(&rb);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no [[health]] entries"), "{text}");
    let rb = runbook(
        dir.path(),
        "[[health]]\nname = \"x\"\nhttp = \"http://127.0.0.1:1/\"\nbody_regex = \"(\"\n",
    );
    let (code, _, text) = health(&rb);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("health[0].body_regex"), "{text}");
}

#[test]
fn https_trusts_ca_file_and_refuses_an_unknown_issuer() {
    let web = integration_tests::http::HttpsServer::start("secure");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &web.ca_pem).unwrap();
    let rb = runbook(
        dir.path(),
        &format!(
            "[[health]]\nname = \"trusted\"\nhttp = \"https://127.0.0.1:{port}/\"\n\
             ca_file = \"ca.pem\"\nbody_contains = \"secure\"\nheader = \"X-Server: secure\"\n\n\
             [[health]]\nname = \"system-roots\"\nhttp = \"https://127.0.0.1:{port}/health\"\n",
            port = web.port
        ),
    );
    let (code, report, text) = health(&rb);
    assert_eq!(code, Some(1), "{text}");
    let v = verdicts(&report);
    check(&v, "trusted", true, "status 200, 6 body bytes");
    check(&v, "system-roots", false, "");
    let detail = &v[1].2;
    assert!(
        detail.contains("certificate") || detail.contains("no system CA"),
        "{detail}"
    );
}
