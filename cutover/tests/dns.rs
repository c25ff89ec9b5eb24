//! End-to-end tests of `cutover dns` against real BIND 9 servers (`named -g`, spawned per test
//! on loopback by `integration_tests::bind`), with a test zone and TSIG keys.
//!
//! - `switch_*`: the answer changes (checked with our query and with `dig`), and a second run
//!   changes nothing;
//! - `lower_ttl_*`: signed with the hmac-sha512 key;
//! - `wrong_key_*`: an unknown key (BADKEY), a wrong secret (BADSIG) and a key without update
//!   rights (REFUSED) are reported by name;
//! - `changed_behind_our_back_*`: the prerequisite fails (NXRRSET) and nothing changes;
//! - `late_secondary_*`: a secondary notified 5 s late shows as lagging, then catches up.

// The helpers below are test code too; clippy's `allow-unwrap-in-tests` covers only `#[test]`
// functions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use integration_tests::bind::{self, Bind, KEY_READER, KEY_SHA256, KEY_SHA512, Key};

const RECORD: &str = "svc.example.test.";

fn runbook(dir: &Path, primary: &Bind, key_file: &Path, extra: &str) -> PathBuf {
    let path = dir.join("runbook.toml");
    std::fs::write(
        &path,
        format!(
            "[dns]\nserver = \"127.0.0.1:{port}\"\nzone = \"example.test.\"\nrecord = \"{RECORD}\"\n\
             source_address = \"127.0.0.1\"\ndestination_address = \"127.0.0.2\"\nttl = 60\nlow_ttl = 30\n\
             tsig_key_file = {key:?}\nns_port = {port}\npoll_interval = \"100ms\"\ntimeout = \"1s\"\n{extra}",
            port = primary.port,
            key = key_file.display().to_string(),
        ),
    )
    .unwrap();
    path
}

fn cutover(args: &[&str], runbook: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cutover"))
        .args(args)
        .arg(runbook)
        .output()
        .expect("run cutover")
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

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn key_file(dir: &Path, key: &Key) -> PathBuf {
    let p = dir.join(format!("{}.key", key.name));
    std::fs::write(&p, key.file_text()).unwrap();
    p
}

#[test]
fn switch_changes_the_answer_and_a_second_run_changes_nothing() {
    if !Bind::available() {
        return;
    }
    let primary = Bind::primary("svc 60 IN A 127.0.0.1", None);
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &primary, &key_file(dir.path(), &KEY_SHA256), "");
    assert_eq!(primary.dig(RECORD, "A"), vec!["127.0.0.1"]);
    let out = cutover(&["dns", "switch", "--json"], &rb);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = json(&out);
    assert_eq!(r["before"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(r["after"], serde_json::json!(["127.0.0.2"]));
    assert_eq!(r["ttl"], 60);
    assert_eq!(r["already"], false);
    assert_eq!(r["serial"], 2);
    assert_eq!(r["propagation"]["done"], true, "{r}");
    // The primary (also the zone's only NS, at ns1 = 127.0.0.1) is asked once.
    assert_eq!(
        r["propagation"]["servers"].as_array().unwrap().len(),
        1,
        "{r}"
    );
    assert_eq!(primary.dig(RECORD, "A"), vec!["127.0.0.2"]);
    let status = cutover(&["dns", "status", "--json"], &rb);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let s = json(&status);
    assert_eq!(
        s["servers"][0]["addresses"],
        serde_json::json!(["127.0.0.2"])
    );
    assert_eq!(s["servers"][0]["serial"], 2);
    assert_eq!(s["servers"][0]["ttl"], 60);
    let again = cutover(&["dns", "switch"], &rb);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(
        text(&again).contains("already holds 127.0.0.2"),
        "{}",
        text(&again)
    );
    assert_eq!(primary.serial(), Some(2));
}

#[test]
fn lower_ttl_signed_with_hmac_sha512() {
    if !Bind::available() {
        return;
    }
    let primary = Bind::primary("svc 60 IN A 127.0.0.1", None);
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &primary, &key_file(dir.path(), &KEY_SHA512), "");
    let out = cutover(&["dns", "lower-ttl", "--json"], &rb);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = json(&out);
    assert_eq!(
        (r["before_ttl"].as_u64(), r["ttl"].as_u64()),
        (Some(60), Some(30))
    );
    assert_eq!(r["old_ttl_expires_in_s"], 60);
    assert_eq!(r["after"], serde_json::json!(["127.0.0.1"]));
    let answer = Command::new(bind_dig())
        .args(["+noall", "+answer", "@127.0.0.1", "-p"])
        .arg(primary.port.to_string())
        .arg(RECORD)
        .arg("A")
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer.stdout);
    assert!(answer.split_whitespace().nth(1) == Some("30"), "{answer}");
}

fn bind_dig() -> PathBuf {
    integration_tests::haproxy::binary("dig")
}

#[test]
fn wrong_key_is_rejected_with_badkey_badsig_or_refused_and_changes_nothing() {
    if !Bind::available() {
        return;
    }
    let primary = Bind::primary("svc 60 IN A 127.0.0.1", None);
    let dir = tempfile::tempdir().unwrap();
    let unknown = Key {
        name: "intruder",
        ..KEY_SHA256
    };
    let wrong_secret = Key {
        secret: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ..KEY_SHA256
    };
    for (key, want) in [
        (
            unknown,
            "NOTAUTH/BADKEY (the server does not know TSIG key intruder.",
        ),
        (
            wrong_secret,
            "NOTAUTH/BADSIG (the secret of TSIG key cutover.",
        ),
        (
            KEY_READER,
            "REFUSED (TSIG key reader. may not update zone example.test.",
        ),
    ] {
        let file = dir.path().join("k.key");
        std::fs::write(&file, key.file_text()).unwrap();
        let rb = runbook(dir.path(), &primary, &file, "");
        let out = cutover(&["dns", "switch"], &rb);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "DNS server 127.0.0.1:{} rejected the update",
                primary.port
            )),
            "{err}"
        );
        assert!(err.contains(want), "{err} lacks {want}");
    }
    assert_eq!(primary.dig(RECORD, "A"), vec!["127.0.0.1"]);
    assert_eq!(primary.serial(), Some(1));
}

#[test]
fn changed_behind_our_back_fails_the_prerequisite() {
    if !Bind::available() {
        return;
    }
    let primary = Bind::primary("svc 60 IN A 127.0.0.1", None);
    primary
        .nsupdate(
            &KEY_SHA256,
            &format!("update delete {RECORD} A\nupdate add {RECORD} 60 A 127.0.0.9"),
        )
        .unwrap();
    assert_eq!(primary.dig(RECORD, "A"), vec!["127.0.0.9"]);
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(dir.path(), &primary, &key_file(dir.path(), &KEY_SHA256), "");
    let out = cutover(&["dns", "switch"], &rb);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("NXRRSET (prerequisite failed: svc.example.test. no longer holds exactly 127.0.0.1; it now holds 127.0.0.9; nothing was changed)"),
        "{err}"
    );
    assert_eq!(primary.dig(RECORD, "A"), vec!["127.0.0.9"]);
    assert_eq!(primary.serial(), Some(2));
}

#[test]
fn late_secondary_shows_as_lagging_until_it_catches_up() {
    if !Bind::available() {
        return;
    }
    let secondary_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The primary notifies the secondary 5 s after a change; the secondary's SOA refresh
    // (3600 s) would not bring it sooner.
    let primary = Bind::primary("svc 60 IN A 127.0.0.1", Some((secondary_port, 5)));
    let secondary = Bind::secondary(primary.port, Some(secondary_port));
    assert_eq!(secondary.dig(RECORD, "A"), vec!["127.0.0.1"]);
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), &KEY_SHA256);
    let check = format!("check_servers = [\"127.0.0.1:{secondary_port}\"]\n");
    let rb = runbook(
        dir.path(),
        &primary,
        &key,
        &format!("{check}propagation_timeout = \"1s\"\n"),
    );
    let out = cutover(&["dns", "switch"], &rb);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("NOT propagated after"), "{t}");
    assert!(
        t.contains(&format!("127.0.0.1:{secondary_port}"))
            && t.contains("answers 127.0.0.1 (wanted 127.0.0.2)"),
        "{t}"
    );
    let status = cutover(&["dns", "status"], &rb);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(text(&status).contains("DISAGREE"));
    // Run again with room to wait: the record is switched already, so only the watch runs.
    let rb = runbook(
        dir.path(),
        &primary,
        &key,
        &format!("{check}propagation_timeout = \"20s\"\n"),
    );
    let out = cutover(&["dns", "switch", "--json"], &rb);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = json(&out);
    assert_eq!(r["already"], true);
    assert_eq!(r["propagation"]["done"], true);
    assert!(r["propagation"]["rounds"].as_u64().unwrap() > 1, "{r}");
    assert_eq!(secondary.dig(RECORD, "A"), vec!["127.0.0.2"]);
    assert_eq!(bind::serial_at(secondary_port), Some(2));
}
