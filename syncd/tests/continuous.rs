//! Continuous mode against the real binary: `syncd push --watch` with real inotify, the
//! control socket over a real unix socket, `syncd serve` over QUIC on loopback.
//!
//! - `watch_local_*`: a watching pair converges through create/modify/chmod/rename/delete
//!   storms, 10,000 files in one burst among them.
//! - `watch_remote_*`: the same to a `serve`, which is killed mid-stream and restarted.
//! - `control_*`: status and final-sync on a converged tree and on one that differs, a
//!   malformed request, another uid (as `nobody`, which needs root: fails under CI=true
//!   when not root).
//! - `watch_remote_converges_after_the_link_*`: the veth link between two network
//!   namespaces (sender in one, `serve` in the other) goes down and up again.
//! - `watch_log_levels_*`: `-v` logs each batch, `-q` only warnings and errors.
//! - `watch_falls_back_*`: too few inotify watches (a user namespace with a low limit) turns
//!   into rescans with a warning naming the sysctl, and changes still arrive.
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A running `syncd push SRC DEST --watch`, killed on drop.
struct Watcher {
    child: Child,
    sock: PathBuf,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watcher {
    fn start(env: &Env, src: &Path, dest: &str, sock: &Path, extra: &[&str]) -> Watcher {
        Watcher::spawn(env.cmd(), src, dest, sock, extra)
    }

    /// `cmd` runs `syncd` (perhaps through a wrapper such as `unshare`) with these arguments.
    fn spawn(mut cmd: Command, src: &Path, dest: &str, sock: &Path, extra: &[&str]) -> Watcher {
        let mut child = cmd
            .arg("push")
            .arg(src)
            .arg(dest)
            .args(["--watch", "--control"])
            .arg(sock)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        Watcher {
            child,
            sock: sock.to_path_buf(),
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `syncd status --json`, `None` while the socket is not up.
    fn status(&self, env: &Env) -> Option<serde_json::Value> {
        let o = env.syncd(&[&"status", &"--json", &"--control", &self.sock]);
        (code(&o) != 2).then(|| json(&o))
    }

    /// Waits until the daemon says converged and the trees are equal by `diff -r`.
    fn wait_converged(&self, env: &Env, src: &Path, dst: &Path, within: Duration) {
        let deadline = Instant::now() + within;
        let mut last = None;
        loop {
            if let Some(s) = self.status(env) {
                let converged = s["converged"] == true;
                if converged && trees_equal(src, dst) {
                    return;
                }
                last = Some(s);
            }
            assert!(
                Instant::now() < deadline,
                "not converged after {within:?}: {last:?}\n{}\n{}",
                diff_r(src, dst),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn diff_r(a: &Path, b: &Path) -> String {
    let o = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    stdout(&o) + &stderr(&o)
}

fn trees_equal(a: &Path, b: &Path) -> bool {
    Command::new("diff")
        .args(["-rq", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap()
        .status
        .success()
}

/// Asserts that `syncd diff` finds the manifests equal (mode, mtimes, everything hashed).
fn assert_roots_equal(env: &Env, a: &Path, b: &Path) {
    let o = env.syncd(&[&"diff", &a, &b]);
    assert_eq!(code(&o), 0, "roots differ:\n{}{}", stdout(&o), stderr(&o));
}

/// One request line on the raw socket, its reply parsed.
fn raw(sock: &Path, line: &[u8]) -> serde_json::Value {
    let mut s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    s.write_all(line).unwrap();
    let mut r = BufReader::new(s);
    let mut reply = String::new();
    r.read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

/// Storms on `src`: a burst of `burst` new files, modifications, chmods, a directory
/// rename, deletions.
fn storm(src: &Path, burst: usize) {
    for i in 0..burst {
        write(
            src,
            &format!("burst/d{}/f{i}", i % 10),
            format!("file {i}").as_bytes(),
        );
    }
    for i in 0..50 {
        write(
            src,
            &format!("burst/d{}/f{i}", i % 10),
            &noise(3000 + i, i as u64),
        );
    }
    for i in 50..80 {
        let p = src.join(format!("burst/d{}/f{i}", i % 10));
        fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
    }
    fs::rename(src.join("burst/d3"), src.join("burst/renamed")).unwrap();
    fs::rename(src.join("dir"), src.join("dir-moved")).unwrap();
    for i in 100..200 {
        let _ = fs::remove_file(src.join(format!("burst/d{}/f{i}", i % 10)));
    }
    fs::remove_dir_all(src.join("burst/d7")).unwrap();
    fs::remove_file(src.join("a.txt")).unwrap();
    write(src, "a.txt", b"recreated");
}

#[test]
fn watch_local_converges_through_storms() {
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let w = Watcher::start(
        &env,
        &src,
        dst.to_str().unwrap(),
        &t.path().join("c.sock"),
        &["--delete"],
    );
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    storm(&src, 10_000);
    w.wait_converged(&env, &src, &dst, Duration::from_secs(180));
    // A second storm right after the first settles, on the renamed paths.
    for i in 0..300 {
        write(&src, &format!("burst/renamed/g{i}"), b"g");
    }
    fs::remove_dir_all(src.join("dir-moved")).unwrap();
    w.wait_converged(&env, &src, &dst, Duration::from_secs(120));
    assert_trees_equal(&src, &dst);
    assert_roots_equal(&env, &src, &dst);
    let s = w.status(&env).unwrap();
    assert_eq!(s["pending_files"], 0, "{s}");
    assert_eq!(s["local_root"], s["peer_root"], "{s}");
}

/// A free UDP port on loopback.
fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `syncd serve` on a fixed address; waits until it listens.
fn serve_on(env: &Env, root: &Path, allow: &str, listen: &str, extra: &[&str]) -> Child {
    let mut child = env
        .cmd()
        .args(["serve", "--listen", listen, "--allow", allow, "--root"])
        .arg(root)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("serve did not start");
    child
}

#[test]
fn watch_remote_converges_after_the_receiver_restarts_mid_stream() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    fs::create_dir(&dst).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let rsock = t.path().join("r.sock");
    let rsock_s = rsock.to_str().unwrap().to_string();
    let mut serve = serve_on(&receiver, &dst, &sid, &addr, &["--control", &rsock_s]);
    let w = Watcher::start(
        &sender,
        &src,
        &addr,
        &t.path().join("c.sock"),
        &["--peer-id", &rid, "--delete", "--connect-timeout", "1s"],
    );
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    // The receiver's own socket agrees.
    let r = receiver.syncd(&[&"status", &"--json", &"--control", &rsock]);
    assert_eq!(code(&r), 0, "{}", stdout(&r));
    assert_eq!(json(&r)["role"], "serve");
    // Kill the receiver while a storm is being pushed, change more, restart it.
    for i in 0..400 {
        write(&src, &format!("mid/f{i}"), &noise(20_000, i));
    }
    std::thread::sleep(Duration::from_millis(30));
    serve.kill().unwrap();
    serve.wait().unwrap();
    storm(&src, 1000);
    // Down for longer than the connect timeout: pushes fail and are retried.
    std::thread::sleep(Duration::from_millis(2500));
    let s = w.status(&sender).unwrap();
    assert_eq!(s["converged"], false, "{s}\n{}", w.log());
    let mut serve = serve_on(&receiver, &dst, &sid, &addr, &[]);
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(120));
    assert_trees_equal(&src, &dst);
    let s = w.status(&sender).unwrap();
    assert!(s["reconnects"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["last_error"].is_null(), "{s}");
    let _ = serve.kill();
    let _ = serve.wait();
}

#[test]
fn control_status_and_final_sync_on_converged_and_differing_trees() {
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let sock = t.path().join("c.sock");
    let w = Watcher::start(&env, &src, dst.to_str().unwrap(), &sock, &[]);
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    let mode = fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Converged: status exits 0; final-sync answers the root, which is the source's.
    let o = env.syncd(&[&"status", &"--control", &sock]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("push converged"), "{}", stdout(&o));
    let v = raw(&sock, b"{\"cmd\":\"final-sync\"}\n");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["converged"], true, "{v}");
    let m = env.syncd(&[&"manifest", &src, &"--json"]);
    assert_eq!(v["root"], json(&m)["root"], "{v}");

    // A tree that differs: an entry only DEST has (no --delete), and one DEST changed
    // behind the daemon's back (no event on the source says so).
    write(&dst, "extra.txt", b"only at dest");
    write(&dst, "dir/sub/c", b"changed at dest");
    let v = raw(&sock, b"{\"cmd\":\"final-sync\"}\n");
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["converged"], false, "{v}");
    let diffs: Vec<&str> = v["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(diffs.contains(&"extra.txt"), "{v}");
    // The final sync rewrote the changed file (it is the source's again), but the extra
    // entry stays without --delete, so not converged.
    assert_eq!(fs::read(dst.join("dir/sub/c")).unwrap(), b"c");
    let o = env.syncd(&[&"status", &"--control", &sock, &"--json"]);
    assert_eq!(code(&o), 1, "{}", stdout(&o));
    assert_eq!(json(&o)["converged"], false);

    // Malformed requests get error replies; the daemon goes on syncing.
    for bad in [
        &b"not json\n"[..],
        b"{\"cmd\":\"explode\"}\n",
        b"{\"cmd\":\"set-bwlimit\",\"rate\":\"lots\"}\n",
        b"{}\n",
    ] {
        let v = raw(&sock, bad);
        assert_eq!(v["ok"], false, "{v}");
        assert!(v["error"].as_str().unwrap().len() > 5, "{v}");
    }
    let v = raw(&sock, b"{\"cmd\":\"set-bwlimit\",\"rate\":\"80M\"}\n");
    assert_eq!(v["bwlimit"], 10_000_000, "{v}");
    let v = raw(&sock, b"{\"cmd\":\"status\"}\n");
    assert_eq!(v["status"]["bwlimit"], 10_000_000, "{v}");
    fs::remove_file(dst.join("extra.txt")).unwrap();
    write(&src, "after/malformed", b"still syncing");
    let v = raw(&sock, b"{\"cmd\":\"final-sync\"}\n");
    assert_eq!(v["converged"], true, "{v}");
    assert_trees_equal(&src, &dst);

    // Pause: changes wait; resume: they go.
    assert_eq!(raw(&sock, b"{\"cmd\":\"pause\"}\n")["ok"], true);
    write(&src, "paused.txt", b"waits");
    std::thread::sleep(Duration::from_millis(500));
    assert!(!dst.join("paused.txt").exists());
    let v = raw(&sock, b"{\"cmd\":\"status\"}\n");
    assert_eq!(v["status"]["paused"], true, "{v}");
    assert_eq!(v["status"]["converged"], false, "{v}");
    assert!(v["status"]["lag_seconds"].as_f64().unwrap() > 0.2, "{v}");
    assert_eq!(raw(&sock, b"{\"cmd\":\"resume\"}\n")["ok"], true);
    w.wait_converged(&env, &src, &dst, Duration::from_secs(30));
}

#[test]
fn control_refuses_another_uid() {
    if !root_or_skip("running the client as nobody needs root") {
        return;
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    assert!(
        setpriv.is_ok_and(|o| o.status.success()),
        "setpriv (util-linux) is needed"
    );
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let sock = t.path().join("c.sock");
    let w = Watcher::start(&env, &src, dst.to_str().unwrap(), &sock, &[]);
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    let as_nobody = || {
        Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_syncd"))
            .args(["status", "--control"])
            .arg(&sock)
            .output()
            .unwrap()
    };
    // Mode 0600: nobody cannot even connect.
    let o = as_nobody();
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(stderr(&o).contains("c.sock"), "{}", stderr(&o));
    // Opened up by mistake: the uid check still refuses, with a reply that says why.
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666)).unwrap();
    let o = as_nobody();
    assert_eq!(code(&o), 2, "{}{}", stdout(&o), stderr(&o));
    assert!(
        stderr(&o).contains("permission denied: uid"),
        "{}",
        stderr(&o)
    );
    // And the daemon is fine.
    let o = env.syncd(&[&"status", &"--control", &sock]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
}

/// A free TCP port on loopback.
fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /metrics` from `addr`: the series' values by name (labels included), retried until
/// the exporter is up.
fn scrape(addr: &str) -> std::collections::HashMap<String, f64> {
    use std::io::Read;
    let deadline = Instant::now() + Duration::from_secs(20);
    let body = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            if s.read_to_string(&mut out).is_ok() && out.starts_with("HTTP/1.1 200") {
                break out;
            }
        }
        assert!(Instant::now() < deadline, "no /metrics at {addr}");
        std::thread::sleep(Duration::from_millis(100));
    };
    body.lines()
        .filter(|l| l.starts_with("syncd_"))
        .filter_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            Some((name.to_string(), v.parse().ok()?))
        })
        .collect()
}

#[test]
fn metrics_are_served_by_a_watching_push_and_by_serve() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    fs::create_dir(&dst).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let (pm, sm) = (
        format!("127.0.0.1:{}", free_tcp_port()),
        format!("127.0.0.1:{}", free_tcp_port()),
    );
    let mut serve = serve_on(&receiver, &dst, &sid, &addr, &["--metrics", &sm]);
    let w = Watcher::start(
        &sender,
        &src,
        &addr,
        &t.path().join("c.sock"),
        &["--peer-id", &rid, "--metrics", &pm, "--bwlimit", "800M"],
    );
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    for i in 0..20 {
        write(&src, &format!("m/f{i}"), &noise(5000, i));
    }
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(400)); // one gauge sampling period and more
    let m = scrape(&pm);
    let get = |m: &std::collections::HashMap<String, f64>, k: &str| {
        *m.get(k).unwrap_or_else(|| panic!("{k} missing from {m:?}"))
    };
    assert!(
        get(&m, "syncd_sent_bytes_total{kind=\"wire\"}") > 12e6,
        "{m:?}"
    );
    assert!(
        get(&m, "syncd_sent_bytes_total{kind=\"logical\"}") > 12e6,
        "{m:?}"
    );
    assert!(get(&m, "syncd_files_synced_total") >= 25.0, "{m:?}");
    assert!(get(&m, "syncd_batches_total") >= 2.0, "{m:?}");
    // At least the new directory's event: files written into it before its watch was
    // added raise none (the batch walks the new directory instead).
    assert!(get(&m, "syncd_watch_events_total") >= 1.0, "{m:?}");
    assert_eq!(get(&m, "syncd_bwlimit_bytes_per_second"), 100e6, "{m:?}");
    assert_eq!(get(&m, "syncd_converged"), 1.0, "{m:?}");
    assert_eq!(get(&m, "syncd_pending_files"), 0.0, "{m:?}");
    assert_eq!(get(&m, "syncd_lag_seconds"), 0.0, "{m:?}");
    for k in [
        "syncd_pending_bytes",
        "syncd_reconnects_total",
        "syncd_errors_total",
        "syncd_overflow_rescans_total",
        "syncd_chunks_deduplicated_total",
        "syncd_chunks_sent_total",
    ] {
        get(&m, k);
    }
    let m = scrape(&sm);
    assert!(get(&m, "syncd_received_bytes_total") > 12e6, "{m:?}");
    assert!(get(&m, "syncd_files_synced_total") >= 25.0, "{m:?}");
    assert!(get(&m, "syncd_chunks_received_total") > 0.0, "{m:?}");
    assert_eq!(get(&m, "syncd_converged"), 1.0, "{m:?}");
    let _ = serve.kill();
    let _ = serve.wait();
}

/// Sets a sysctl for as long as it lives, then restores it.
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = fs::read_to_string(path).unwrap();
        fs::write(path, value).unwrap_or_else(|e| panic!("{path}: {e}"));
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        let _ = fs::write(self.path, self.old.trim());
    }
}

#[test]
fn watch_rescans_after_an_inotify_queue_overflow() {
    if !root_or_skip("setting fs.inotify.max_queued_events needs root") {
        return;
    }
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    // The limit is read when an inotify instance is created: tiny only until the watcher
    // has made its own, so that other programs on the machine are hardly affected.
    let tiny = Sysctl::set("/proc/sys/fs/inotify/max_queued_events", "16");
    let w = Watcher::start(
        &env,
        &src,
        dst.to_str().unwrap(),
        &t.path().join("c.sock"),
        &["--delete"],
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !w.log().contains("inotify watch set") {
        assert!(Instant::now() < deadline, "{}", w.log());
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(tiny);
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    for i in 0..500 {
        write(
            &src,
            &format!("over/d{}/f{i}", i % 5),
            b"more than 16 events",
        );
    }
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    assert_trees_equal(&src, &dst);
    let log = w.log();
    assert!(
        log.contains("inotify queue overflowed") && log.contains("fs.inotify.max_queued_events"),
        "{log}"
    );
    // The first push, and at least one after the overflow.
    assert!(log.matches("(full rescan)").count() >= 2, "{log}");
}

#[test]
fn watch_log_levels_follow_v_and_q() {
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    sample(&src);
    let mut logs = Vec::new();
    for (i, flag) in ["-v", "-q"].into_iter().enumerate() {
        let dst = t.path().join(format!("dst{i}"));
        let w = Watcher::start(
            &env,
            &src,
            dst.to_str().unwrap(),
            &t.path().join(format!("c{i}.sock")),
            &[flag],
        );
        w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
        write(&src, &format!("changed-{i}"), b"one batch");
        w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
        logs.push(w.log());
    }
    // -v: each batch at debug; -q: not even the info lines (the watch being set).
    assert!(logs[0].contains("batch of 1 paths"), "{}", logs[0]);
    assert!(logs[0].contains("inotify watch set"), "{}", logs[0]);
    assert!(!logs[1].contains("inotify watch set"), "{}", logs[1]);
    assert!(!logs[1].contains("batch of"), "{}", logs[1]);
}

#[test]
fn watch_falls_back_to_rescans_when_max_user_watches_is_too_low() {
    if !root_or_skip("a user namespace whose inotify watch limit can be lowered") {
        return;
    }
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    // 60 directories, 60 watches needed; the namespace allows 20. The limit is per user
    // namespace (`/proc/sys/user/max_inotify_watches`), so the rest of the machine keeps its.
    for i in 0..60 {
        write(&src, &format!("d{i}/f"), b"first");
    }
    let mut cmd = Command::new("unshare");
    cmd.env("SYNCD_HOME", env.home.path()).args([
        "-U",
        "-r",
        "sh",
        "-c",
        "echo 20 > /proc/sys/user/max_inotify_watches && exec \"$@\"",
        "sh",
        env!("CARGO_BIN_EXE_syncd"),
    ]);
    let w = Watcher::spawn(
        cmd,
        &src,
        dst.to_str().unwrap(),
        &t.path().join("c.sock"),
        &["--delete"],
    );
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    // Changes deep in directories no watch covers still arrive, by the rescans.
    write(&src, "d59/f", b"changed where no watch looks");
    write(&src, "d0/new", b"new");
    fs::remove_file(src.join("d30/f")).unwrap();
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    assert_trees_equal(&src, &dst);
    let log = w.log();
    assert!(
        log.contains("too few inotify watches") && log.contains("fs.inotify.max_user_watches"),
        "the warning names the sysctl to raise: {log}"
    );
}

#[test]
fn watch_sends_a_renamed_directory_and_large_file_as_a_move() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src); // `big` is 12 MB of noise; `dir` holds 100 kB
    for i in 0..50 {
        write(
            &src,
            &format!("tree/d{}/f{i}", i % 5),
            &noise(40_000, 100 + i),
        );
    }
    fs::create_dir(&dst).unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let pm = format!("127.0.0.1:{}", free_tcp_port());
    let mut serve = serve_on(&receiver, &dst, &sid, &addr, &[]);
    let w = Watcher::start(
        &sender,
        &src,
        &addr,
        &t.path().join("c.sock"),
        &["--peer-id", &rid, "--delete", "--metrics", &pm],
    );
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    let sent = |m: &std::collections::HashMap<String, f64>| {
        (
            m["syncd_sent_bytes_total{kind=\"logical\"}"],
            m["syncd_sent_bytes_total{kind=\"wire\"}"],
        )
    };
    let before = sent(&scrape(&pm));
    assert!(before.0 > 12e6, "{before:?}");
    fs::create_dir(src.join("moved")).unwrap();
    fs::rename(src.join("big"), src.join("moved/big-renamed")).unwrap();
    fs::rename(src.join("tree"), src.join("moved/tree")).unwrap();
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    let after = sent(&scrape(&pm));
    // 13 MB moved: no chunk data travels, only nodes and hashes.
    let (logical, wire) = (after.0 - before.0, after.1 - before.1);
    assert!(logical < 1.0, "chunk bytes sent for a move: {logical}");
    assert!(wire < 200_000.0, "wire bytes for a move: {wire}");
    assert_trees_equal(&src, &dst);
    let _ = serve.kill();
    let _ = serve.wait();
}

#[test]
fn a_file_rewritten_without_pause_does_not_hold_up_the_others() {
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    let w = Watcher::start(
        &env,
        &src,
        dst.to_str().unwrap(),
        &t.path().join("c.sock"),
        &["--delete"],
    );
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hot = src.join("hot.log");
    let writer = {
        let (stop, hot) = (stop.clone(), hot.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::write(&hot, noise(2_000_000, n)).unwrap();
                n += 1;
            }
        })
    };
    for i in 0..200 {
        write(
            &src,
            &format!("others/f{i}"),
            format!("other {i}").as_bytes(),
        );
    }
    // Everything but the hot file arrives while it is being rewritten.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = Command::new("diff")
            .args(["-rq", "--no-dereference", "-x", "hot.log"])
            .arg(&src)
            .arg(&dst)
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the others did not converge: {}\n{}",
            stdout(&o),
            w.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    assert_roots_equal(&env, &src, &dst);
}

#[test]
fn watch_remote_converges_after_a_network_cut() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    fs::create_dir(&dst).unwrap();
    let server = Server::start(&receiver, &dst, &sid);
    let relay = Relay::start(&server.addr);
    let w = Watcher::start(
        &sender,
        &src,
        &relay.addr.to_string(),
        &t.path().join("c.sock"),
        &["--peer-id", &rid, "--delete", "--connect-timeout", "1s"],
    );
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    relay.cut();
    for i in 0..300 {
        write(&src, &format!("during-cut/f{i}"), &noise(10_000, 1000 + i));
    }
    fs::remove_file(src.join("a.txt")).unwrap();
    // Long enough for a push to fail and be retried at least once.
    std::thread::sleep(Duration::from_secs(3));
    let s = w.status(&sender).unwrap();
    assert_eq!(s["converged"], false, "{s}");
    assert!(s["pending_files"].as_u64().unwrap() > 0, "{s}");
    relay.restore();
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    assert_trees_equal(&src, &dst);
    let s = w.status(&sender).unwrap();
    assert!(s["reconnects"].as_u64().unwrap() >= 1, "{s}");
    drop(server);
}

/// Two network namespaces joined by a veth pair, removed on drop.
struct Netns {
    a: String,
    b: String,
    /// The address of the veth end in `b`.
    b_addr: String,
}

impl Netns {
    fn new() -> Netns {
        let id = std::process::id();
        let (a, b) = (format!("syncd-a-{id}"), format!("syncd-b-{id}"));
        let net = format!("10.{}.{}", 200 + (id >> 16) % 50, (id >> 8) % 256);
        let n = Netns {
            a: a.clone(),
            b: b.clone(),
            b_addr: format!("{net}.2"),
        };
        let ip = |args: &str| {
            let o = Command::new("ip")
                .args(args.split(' '))
                .output()
                .expect("ip (iproute2)");
            assert!(o.status.success(), "ip {args}: {}", stderr(&o));
        };
        ip(&format!("netns add {a}"));
        ip(&format!("netns add {b}"));
        ip(&format!(
            "link add va netns {a} type veth peer name vb netns {b}"
        ));
        ip(&format!("-n {a} addr add {net}.1/30 dev va"));
        ip(&format!("-n {b} addr add {net}.2/30 dev vb"));
        for (ns, dev) in [(&a, "va"), (&b, "vb")] {
            ip(&format!("-n {ns} link set lo up"));
            ip(&format!("-n {ns} link set {dev} up"));
        }
        n
    }

    /// `syncd` run inside namespace `ns` with `env`'s home.
    fn syncd(&self, ns: &str, env: &Env) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_syncd")])
            .env("SYNCD_HOME", env.home.path());
        c
    }

    fn link(&self, state: &str) {
        let o = Command::new("ip")
            .args(["-n", &self.a, "link", "set", "va", state])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn watch_remote_converges_after_the_link_between_two_netns_is_cut() {
    if !root_or_skip("network namespaces need root") {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    sample(&src);
    fs::create_dir(&dst).unwrap();
    let net = Netns::new();
    let addr = format!("{}:7711", net.b_addr);
    let mut serve = net
        .syncd(&net.b, &receiver)
        .args(["serve", "--listen", &addr, "--allow", &sid, "--root"])
        .arg(&dst)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let w = Watcher::spawn(
        net.syncd(&net.a, &sender),
        &src,
        &addr,
        &t.path().join("c.sock"),
        &["--peer-id", &rid, "--delete", "--connect-timeout", "1s"],
    );
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(60));
    net.link("down");
    for i in 0..300 {
        write(&src, &format!("during-cut/f{i}"), &noise(10_000, 2000 + i));
    }
    fs::remove_file(src.join("a.txt")).unwrap();
    // Longer than the connect timeout and QUIC's idle timeout: pushes fail and are retried.
    std::thread::sleep(Duration::from_secs(10));
    let s = w.status(&sender).unwrap();
    assert_eq!(s["converged"], false, "{s}");
    assert!(!dst.join("during-cut/f299").exists());
    net.link("up");
    w.wait_converged(&sender, &src, &dst, Duration::from_secs(90));
    assert_trees_equal(&src, &dst);
    let s = w.status(&sender).unwrap();
    assert!(s["reconnects"].as_u64().unwrap() >= 1, "{s}\n{}", w.log());
    drop(w);
    let _ = serve.kill();
    let _ = serve.wait();
}

/// A symlink to a directory of the tree (like /usr/share/perl/5.36 -> 5.36.0) must not
/// hide that directory's changes: followed by the watcher, its events came named by the
/// link's path, which the changed-only rescan does not look into.
#[test]
fn watch_sees_changes_under_a_directory_that_a_symlink_also_names() {
    let env = Env::new();
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    let outside = t.path().join("outside");
    for i in 0..20 {
        write(&src, &format!("perl/5.36.0/lib/f{i}.pm"), b"old");
    }
    write(&outside, "o.txt", b"not in the tree");
    std::os::unix::fs::symlink("5.36.0", src.join("perl/5.36")).unwrap();
    std::os::unix::fs::symlink(&outside, src.join("out")).unwrap();
    let w = Watcher::start(
        &env,
        &src,
        dst.to_str().unwrap(),
        &t.path().join("c.sock"),
        &["--delete"],
    );
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(200));
    for i in 0..20 {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(src.join(format!("perl/5.36.0/lib/f{i}.pm")))
            .unwrap();
        f.write_all(b" and new").unwrap();
    }
    write(&outside, "o.txt", b"changed outside the tree");
    w.wait_converged(&env, &src, &dst, Duration::from_secs(60));
    assert_trees_equal(&src, &dst);
    assert_eq!(
        fs::read(dst.join("perl/5.36.0/lib/f7.pm")).unwrap(),
        b"old and new"
    );
}
