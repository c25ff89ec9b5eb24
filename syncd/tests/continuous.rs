//! Continuous mode against the real binary: `syncd push --watch` with real inotify, the
//! control socket over a real unix socket, `syncd serve` over QUIC on loopback.
//!
//! - `watch_local_*`: a watching pair converges through create/modify/chmod/rename/delete
//!   storms, 1,000 files in one burst among them.
//! - `watch_remote_*`: the same to a `serve`, which is killed mid-stream and restarted.
//! - `control_*`: status and final-sync on a converged tree and on one that differs, a
//!   malformed request, another uid (as `nobody`, which needs root: fails under CI=true
//!   when not root).
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
        let mut child = env
            .cmd()
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
    storm(&src, 1200);
    w.wait_converged(&env, &src, &dst, Duration::from_secs(120));
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
