//! `--bwlimit`'s three forms against the real binary: bad input, the timetable (its slot in
//! `syncd status`), and `auto` (the scavenger congestion controller) on a real push.
#![allow(clippy::unwrap_used)]
mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// `syncd push SRC DEST --bwlimit=VALUE` (the `=` form, as a shell user would write a
/// negative value) with `extra` flags: exit code and stderr.
fn push_with(env: &Env, src: &Path, dest: &str, value: &str, extra: &[&str]) -> (i32, String) {
    let o = env
        .cmd()
        .arg("push")
        .arg(src)
        .arg(dest)
        .arg(format!("--bwlimit={value}"))
        .args(extra)
        .output()
        .unwrap();
    (code(&o), stderr(&o))
}

#[test]
fn bad_rates_are_usage_errors_that_name_the_accepted_forms() {
    let env = Env::new();
    let [t] = tempdirs();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let dest = format!("{}/", dst.display());
    for (value, needle) in [
        ("-5M", "cannot be negative"),
        ("1e99", "exponents (e) are not accepted"),
        ("5X", "unknown unit \"X\""),
        ("99999999999999999999T", "too large"),
        ("fast", "expected a number"),
    ] {
        let (rc, err) = push_with(&env, &src, &dest, value, &[]);
        assert_eq!(rc, 2, "{value}: {err}");
        assert!(
            err.contains(&format!("invalid rate \"{value}\"")),
            "{value}: {err}"
        );
        assert!(err.contains(needle), "{value}: {err}");
        assert!(
            err.contains("bits/s as 50M"),
            "{value}: names no accepted form: {err}"
        );
        assert!(!dst.exists(), "{value}: a refused push wrote DEST");
    }
    // Space-separated, a negative value is still the option's value, not a flag.
    let o = env
        .cmd()
        .arg("push")
        .arg(&src)
        .arg(&dest)
        .args(["--bwlimit", "-5M"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot be negative"), "{}", stderr(&o));
}

#[test]
fn zero_means_no_limit_as_in_rsync() {
    let env = Env::new();
    let [t] = tempdirs();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let (rc, err) = push_with(&env, &src, &format!("{}/", dst.display()), "0", &[]);
    assert_eq!(rc, 0, "{err}");
    assert_trees_equal(&src, &dst);
    let help = stdout(&env.syncd(&[&"push", &"--help"]));
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(help.contains("0 means no limit"), "{help}");
    assert!(
        help.contains("08:00,50M 20:00,200M"),
        "--help shows no timetable: {help}"
    );
    assert!(help.contains("auto:MAX"), "{help}");
}

#[test]
fn bad_timetables_name_the_slot() {
    let env = Env::new();
    let [t] = tempdirs();
    let src = t.path().join("src");
    sample(&src);
    let dest = format!("{}/", t.path().join("dst").display());
    for (value, needle) in [
        (
            "20:00,50M 08:00,200M",
            "slot \"08:00,200M\": starts before the slot before it",
        ),
        (
            "08:00,50M 08:00,200M",
            "slot \"08:00,200M\": overlaps \"08:00,50M\"",
        ),
        (
            "08:00,50M 24:30,1M",
            "slot \"24:30,1M\": bad time \"24:30\"",
        ),
        ("08:00,50M 9:00", "slot \"9:00\": expected [Day-]HH:MM,RATE"),
        (
            "Mon-08:00,50M 10:00,1M",
            "slot \"10:00,1M\": either every slot names a day",
        ),
        ("Xyz-08:00,50M", "unknown day \"Xyz\""),
        (
            "08:00,50M 10:00,-1M",
            "slot \"10:00,-1M\": invalid rate \"-1M\": a rate cannot be negative",
        ),
    ] {
        let (rc, err) = push_with(&env, &src, &dest, value, &[]);
        assert_eq!(rc, 2, "{value}: {err}");
        assert!(err.contains(needle), "{value}: {err}");
    }
}

#[test]
fn auto_is_refused_on_a_local_push() {
    let env = Env::new();
    let [t] = tempdirs();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let dest = format!("{}/", dst.display());
    for (value, extra) in [("auto", &[][..]), ("auto:50M", &["--watch"][..])] {
        let (rc, err) = push_with(&env, &src, &dest, value, extra);
        assert_eq!(rc, 2, "{value}: {err}");
        assert!(
            err.contains("--bwlimit auto applies to network pushes"),
            "{value}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(!dst.exists());
    }
    let (rc, err) = push_with(&env, &src, &dest, "auto:0", &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("auto:MAX needs a non-zero RATE"), "{err}");
}

#[test]
fn auto_pushes_a_tree_through_the_scavenger_controller() {
    let (sender, receiver) = (Env::new(), Env::new());
    let sid = init(&sender);
    let rid = init(&receiver);
    let [t] = tempdirs();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    write(&src, "noise.bin", &noise(8 << 20, 19));
    std::fs::create_dir_all(&dst).unwrap();
    let server = Server::start(&receiver, &dst, &sid);
    server.push_ok(&sender, &src, &rid, &["--bwlimit", "auto"]);
    assert_trees_equal(&src, &dst);
    write(&src, "noise.bin", &noise(8 << 20, 20));
    let v = server.push_ok(&sender, &src, &rid, &["--bwlimit", "auto:400M"]);
    assert!(v["bytes_sent"].as_u64().unwrap() > 4 << 20, "{v}");
    assert_trees_equal(&src, &dst);
}

#[test]
fn a_timetable_push_reaches_dest() {
    let (sender, receiver) = (Env::new(), Env::new());
    let sid = init(&sender);
    let rid = init(&receiver);
    let [t] = tempdirs();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    std::fs::create_dir_all(&dst).unwrap();
    let server = Server::start(&receiver, &dst, &sid);
    server.push_ok(&sender, &src, &rid, &["--bwlimit", "00:00,400M 12:00,off"]);
    assert_trees_equal(&src, &dst);
}

/// A `push --watch` with a control socket, killed on drop.
struct Watching(Child, std::sync::Arc<std::sync::Mutex<String>>);

impl Drop for Watching {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn watch(
    env: &Env,
    src: &Path,
    dest: &str,
    sock: &Path,
    bwlimit: &str,
    extra: &[&str],
) -> Watching {
    let mut child = env
        .cmd()
        .env("TZ", "UTC")
        .arg("push")
        .arg(src)
        .arg(dest)
        .args(["--watch", "--control"])
        .arg(sock)
        .arg("--bwlimit")
        .arg(bwlimit)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (l, stderr) = (log.clone(), child.stderr.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            l.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    Watching(child, log)
}

/// `syncd status --json` once the socket answers.
fn status(env: &Env, sock: &Path, w: &Watching) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let o = env.syncd(&[&"status", &"--json", &"--control", &sock]);
        if code(&o) != 2 {
            return json(&o);
        }
        assert!(
            Instant::now() < deadline,
            "no status: {}",
            w.1.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn utc_hour() -> u64 {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    secs / 3600 % 24
}

#[test]
fn status_shows_the_timetable_slot_in_force_and_set_bwlimit_overrides_it() {
    let env = Env::new();
    let [t] = tempdirs();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let sock = t.path().join("c.sock");
    // In UTC: 8 Mbit/s before noon, 16 Mbit/s after.
    let w = watch(
        &env,
        &src,
        dst.to_str().unwrap(),
        &sock,
        "00:00,8M 12:00,16M",
        &[],
    );
    let (before, s, after) = (utc_hour(), status(&env, &sock, &w), utc_hour());
    if before == after {
        let (slot, rate) = if before < 12 {
            ("00:00,8M", 1_000_000)
        } else {
            ("12:00,16M", 2_000_000)
        };
        assert_eq!(s["bwlimit_slot"], slot, "{s}");
        assert_eq!(s["bwlimit"], rate, "{s}");
        let o = env.syncd(&[&"status", &"--control", &sock]);
        assert!(
            stdout(&o).contains(&format!("timetable   slot {slot} in force")),
            "{}",
            stdout(&o)
        );
    }
    // set-bwlimit holds until the next slot boundary (hours away at most 12).
    let mut c = syncd::control::Client::connect(&sock).unwrap();
    assert_eq!(c.set_bwlimit("40M").unwrap(), Some(5_000_000));
    std::thread::sleep(Duration::from_millis(2500));
    let s = status(&env, &sock, &w);
    if utc_hour() == after {
        assert_eq!(
            s["bwlimit"], 5_000_000,
            "the timetable undid set-bwlimit: {s}"
        );
    }
}

#[test]
fn status_says_when_the_scavenger_is_in_use() {
    let (sender, receiver) = (Env::new(), Env::new());
    let sid = init(&sender);
    let rid = init(&receiver);
    let [t] = tempdirs();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    std::fs::create_dir_all(&dst).unwrap();
    let server = Server::start(&receiver, &dst, &sid);
    let sock = t.path().join("c.sock");
    let w = watch(
        &sender,
        &src,
        &server.addr,
        &sock,
        "auto:80M",
        &["--peer-id", &rid],
    );
    let s = status(&sender, &sock, &w);
    assert_eq!(s["scavenger"], true, "{s}");
    assert_eq!(s["bwlimit"], 10_000_000, "{s}");
    let o = sender.syncd(&[&"status", &"--control", &sock]);
    assert!(
        stdout(&o).contains("congestion  scavenger"),
        "{}",
        stdout(&o)
    );
}
