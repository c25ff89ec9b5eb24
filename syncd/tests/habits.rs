//! What an operator coming from rsync expects (issue #13), against the real binary. Each
//! test is named after the habit it protects.

// Test helpers unwrap freely: a failure is a test failure with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Sends `sig` to `child`.
fn signal(child: &Child, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits for `child` to exit, at most `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A slow remote push (about 3 s of data at 80 Mbit/s) to `server`.
fn slow(sender: &Env, src: &std::path::Path, server: &Server, rid: &str) -> Child {
    for i in 0..4 {
        write(src, &format!("f{i}"), &noise(8 << 20, 70 + i));
    }
    sender
        .cmd()
        .arg("push")
        .arg(src)
        .arg(&server.addr)
        .args(["--peer-id", rid, "--bwlimit", "80M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `systemctl restart` sends SIGTERM: the running push finishes, then serve exits 0.
#[test]
fn sigterm_on_serve_lets_the_running_push_finish() {
    let (receiver, sender) = (Env::new(), Env::new());
    let (rid, sid) = (init(&receiver), init(&sender));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut server = Server::start(&receiver, dst.path(), &sid);
    let mut push = slow(&sender, src.path(), &server, &rid);
    server.wait_log("push from");
    std::thread::sleep(Duration::from_millis(500));
    signal(&server.child, "TERM");
    let st = wait_exit(&mut push, Duration::from_secs(60));
    let o = push.wait_with_output().unwrap();
    assert!(
        st.success(),
        "the push was cut off: {}\n{}",
        stderr(&o),
        server.log()
    );
    let st = wait_exit(&mut server.child, Duration::from_secs(30));
    assert!(st.success(), "serve: {st:?}\n{}", server.log());
    assert_trees_equal(src.path(), dst.path());
}

/// A second signal cuts the running push off at once, and serve says so with exit 1.
#[test]
fn a_second_signal_on_serve_cuts_the_push_off() {
    let (receiver, sender) = (Env::new(), Env::new());
    let (rid, sid) = (init(&receiver), init(&sender));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut server = Server::start(&receiver, dst.path(), &sid);
    let mut push = slow(&sender, src.path(), &server, &rid);
    server.wait_log("push from");
    std::thread::sleep(Duration::from_millis(300));
    signal(&server.child, "TERM");
    server.wait_log("letting the running push finish");
    signal(&server.child, "INT");
    let st = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "{}", server.log());
    let st = wait_exit(&mut push, Duration::from_secs(30));
    assert!(!st.success());
}
