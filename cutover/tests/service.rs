//! End-to-end tests of `cutover service` with real processes on this machine.
//!
//! - `stop_*`: a process that exits on SIGTERM stops gracefully; one that ignores SIGTERM is
//!   killed (its process group, from `pid_file`) after `wait`; one that cannot be stopped is
//!   reported as still running;
//! - `hung_command_*`: a command past its timeout is killed with its process group;
//! - `output_and_exit_codes_*`: captured in the report;
//! - `unknown_name_*`.

// The helpers below are test code too; clippy's `allow-unwrap-in-tests` covers only `#[test]`
// functions.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn runbook(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("runbook.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn service(args: &[&str], runbook: &Path) -> (Option<i32>, serde_json::Value, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
    cmd.arg("service")
        .arg(args[0])
        .arg(runbook)
        .args(&args[1..]);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, text)
}

/// Whether `pid` is a live process (a zombie is not: nobody may reap orphans here).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map(|s| {
            !s.lines()
                .any(|l| l.starts_with("State:") && l.contains('Z'))
        })
        .unwrap_or(false)
}

fn read_pid(path: &Path) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            if let Ok(p) = t.trim().parse() {
                return p;
            }
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `[[service]]` whose daemon is a shell loop in its own session; `on_term` is its TERM trap.
fn daemon(dir: &Path, on_term: &str, wait: &str, extra: &str) -> PathBuf {
    let pid = dir.join("svc.pid");
    let p = pid.display();
    runbook(
        dir,
        &format!(
            r#"
[[service]]
name = "app"
start = "setsid sh -c 'trap \"{on_term}\" TERM; echo $$ > {p}; while :; do sleep 0.05; done' >/dev/null 2>&1 &"
stop = "kill -TERM $(cat {p})"
check = "test -e /proc/$(cat {p})/status && ! grep -q '^State:.*Z' /proc/$(cat {p})/status"
wait = "{wait}"
{extra}
"#
        ),
    )
}

#[test]
fn stop_a_real_process_gracefully() {
    let dir = tempfile::tempdir().unwrap();
    let rb = daemon(dir.path(), "exit 0", "2s", "");
    let (code, r, text) = service(&["start", "app", "--json"], &rb);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(r["services"][0]["running"], true);
    let pid = read_pid(&dir.path().join("svc.pid"));
    assert!(alive(pid));
    assert_eq!(service(&["status"], &rb).0, Some(0));
    let (code, r, text) = service(&["stop", "--json"], &rb);
    assert_eq!(code, Some(0), "{text}");
    let s = &r["services"][0];
    assert_eq!(s["killed"], false, "{s}");
    assert_eq!(s["running"], false);
    assert!(
        s["summary"]
            .as_str()
            .unwrap()
            .starts_with("stopped gracefully"),
        "{s}"
    );
    assert_eq!(s["commands"][0]["role"], "stop");
    assert_eq!(s["commands"][0]["exit_code"], 0);
    assert!(!alive(pid));
    let (code, _, text) = service(&["status"], &rb);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("NOT running"), "{text}");
}

#[test]
fn stop_kills_the_process_group_of_a_process_that_ignores_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("svc.pid");
    let rb = daemon(
        dir.path(),
        "",
        "2s",
        &format!("pid_file = {:?}\n", pid_file.display().to_string()),
    );
    assert_eq!(service(&["start"], &rb).0, Some(0));
    let pid = read_pid(&pid_file);
    let started = Instant::now();
    let (code, r, text) = service(&["stop", "app", "--json"], &rb);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let s = &r["services"][0];
    assert_eq!(s["killed"], true, "{s}");
    let summary = s["summary"].as_str().unwrap();
    assert!(
        summary.contains("did not stop within 2s")
            && summary.contains(&format!("SIGKILL to process group {pid}")),
        "{summary}"
    );
    assert!(!alive(pid));
}

#[test]
fn stop_reports_a_service_that_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let rb = daemon(dir.path(), "", "500ms", "");
    assert_eq!(service(&["start"], &rb).0, Some(0));
    let pid = read_pid(&dir.path().join("svc.pid"));
    let (code, _, text) = service(&["stop"], &rb);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(
            "STILL RUNNING 500ms after the stop (exit 0); no kill or pid_file configured"
        ),
        "{text}"
    );
    // Clean up with an explicit kill command.
    let kill = runbook(
        dir.path(),
        &std::fs::read_to_string(&rb).unwrap().replace(
            "wait = \"500ms\"",
            &format!("wait = \"500ms\"\nkill = \"kill -KILL {pid}\""),
        ),
    );
    let (code, r, text) = service(&["stop", "--json"], &kill);
    assert_eq!(code, Some(0), "{text}");
    let roles: Vec<&str> = r["services"][0]["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["role"].as_str().unwrap())
        .collect();
    assert!(roles.contains(&"kill"), "{roles:?}");
    assert!(!alive(pid));
}

#[test]
fn hung_command_is_killed_at_the_timeout_with_its_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let child = dir.path().join("child.pid");
    let rb = runbook(
        dir.path(),
        &format!(
            "[[service]]\nname = \"hang\"\nstop = \"sleep 30 & echo $! > {}; sleep 30\"\n\
             check = \"false\"\ntimeout = \"500ms\"\n",
            child.display()
        ),
    );
    let started = Instant::now();
    let (code, r, text) = service(&["stop", "--json"], &rb);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(0), "{text}"); // the check says it is down
    let stop = &r["services"][0]["commands"][0];
    assert_eq!(stop["timed_out"], true, "{stop}");
    assert_eq!(stop["signal"], 9, "{stop}");
    // The background sleep was in the command's process group: it is gone too.
    let pid = read_pid(&child);
    let deadline = Instant::now() + Duration::from_secs(2);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the command's child {pid} survived");
    assert!(
        r["services"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("killed at the timeout")
    );
}

#[test]
fn output_and_exit_codes_are_captured() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(
        dir.path(),
        "[[service]]\nname = \"noisy\"\nstart = \"echo hello; echo oops >&2; exit 3\"\n\n\
         [[service]]\nname = \"other\"\nstart = \"true\"\n",
    );
    let (code, r, text) = service(&["start", "noisy", "--json"], &rb);
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(r["services"].as_array().unwrap().len(), 1);
    let c = &r["services"][0]["commands"][0];
    assert_eq!(c["exit_code"], 3);
    assert_eq!(c["stdout"], "hello\n");
    assert_eq!(c["stderr"], "oops\n");
    assert!(
        r["services"][0]["summary"]
            .as_str()
            .unwrap()
            .contains("NOT verified")
    );
    let (_, _, text) = service(&["start", "noisy"], &rb);
    assert!(
        text.contains("out| hello") && text.contains("err| oops"),
        "{text}"
    );
}

#[test]
fn unknown_name_and_missing_commands_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let rb = runbook(
        dir.path(),
        "[[service]]\nname = \"app\"\nstart = \"true\"\n",
    );
    let (code, _, text) = service(&["stop", "nope"], &rb);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("no [[service]] named \"nope\""), "{text}");
    let (code, _, text) = service(&["stop"], &rb);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("service \"app\" has no stop command"),
        "{text}"
    );
}

#[test]
fn hooks_run_over_ssh_in_batch_mode() {
    use integration_tests::sshd::Sshd;
    if !Sshd::available() {
        return;
    }
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("svc.pid");
    let p = pid.display();
    let options: Vec<String> = sshd.client_options();
    let rb = runbook(
        dir.path(),
        &format!(
            r#"
[[service]]
name = "remote"
host = "{host}"
ssh_port = {port}
ssh_options = {options:?}
start = "setsid sh -c 'trap \"exit 0\" TERM; echo $$ > {p}; while :; do sleep 0.05; done' >/dev/null 2>&1 < /dev/null &"
stop = "kill -TERM $(cat {p})"
check = "test -e /proc/$(cat {p})/status && ! grep -q '^State:.*Z' /proc/$(cat {p})/status"
wait = "5s"
timeout = "20s"

[[service]]
name = "locked-out"
host = "{host}"
ssh_port = {port}
ssh_options = ["-i", "{dir}/no-such-key", "-o", "UserKnownHostsFile={dir}/none", "-o", "StrictHostKeyChecking=no", "-o", "IdentitiesOnly=yes"]
check = "true"
timeout = "20s"
"#,
            host = sshd.host(),
            port = sshd.port,
            dir = dir.path().display(),
        ),
    );
    let (code, r, text) = service(&["start", "remote", "--json"], &rb);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(r["services"][0]["commands"][0]["host"], sshd.host());
    let daemon = read_pid(&pid);
    assert!(alive(daemon));
    let (code, _, text) = service(&["status", "remote"], &rb);
    assert_eq!(code, Some(0), "{text}");
    let (code, r, text) = service(&["stop", "remote", "--json"], &rb);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(r["services"][0]["killed"], false);
    assert!(!alive(daemon));
    // BatchMode: a login that would need a password fails at once, with ssh's reason kept.
    let started = Instant::now();
    let (code, r, text) = service(&["status", "locked-out", "--json"], &rb);
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(code, Some(1), "{text}");
    let c = &r["services"][0]["commands"][0];
    assert_eq!(c["exit_code"], 255, "{c}");
    assert!(
        c["stderr"].as_str().unwrap().contains("Permission denied"),
        "{c}"
    );
}
