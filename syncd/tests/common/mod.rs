//! Helpers shared by the end-to-end tests: run the real `syncd` binary with a private
//! state directory, build sample trees, compare trees.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

/// A private `SYNCD_HOME` for one test.
pub struct Env {
    pub home: TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_syncd"));
        c.env("SYNCD_HOME", self.home.path());
        c
    }

    pub fn syncd(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        self.cmd()
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap()
    }
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A small tree with nested dirs, a symlink, an empty dir, a dotfile and a large file.
pub fn sample(root: &Path) {
    write(root, "a.txt", b"hello");
    write(root, "dir/b.bin", &vec![7u8; 100_000]);
    write(root, "dir/sub/c", b"c");
    write(root, ".hidden", b"dot");
    write(root, "big", &noise(12_000_000, 1));
    fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
}

/// `cp -a`, so that mtimes match.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Asserts two trees are byte-equal (contents, symlink targets, entries), with `diff -r`.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "trees differ:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}

/// A UDP relay on loopback between a QUIC client and a server, whose link can be cut: the
/// network fault that killing a process does not give (neither side learns anything; both
/// time out). Packets are forwarded from one client to `upstream` and back.
pub struct Relay {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Relay {
    pub fn start(upstream: &str) -> Relay {
        use std::net::UdpSocket;
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let front = UdpSocket::bind("127.0.0.1:0").unwrap();
        let back = UdpSocket::bind("127.0.0.1:0").unwrap();
        back.connect(upstream).unwrap();
        for s in [&front, &back] {
            s.set_read_timeout(Some(std::time::Duration::from_millis(50)))
                .unwrap();
        }
        let addr = front.local_addr().unwrap();
        let (cut, stop) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let client = Arc::new(Mutex::new(None));
        let (front2, back2) = (front.try_clone().unwrap(), back.try_clone().unwrap());
        let up = {
            let (cut, stop, client) = (cut.clone(), stop.clone(), client.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = front.recv_from(&mut buf) {
                        *client.lock().unwrap() = Some(from);
                        if !cut.load(Ordering::Relaxed) {
                            let _ = back.send(&buf[..n]);
                        }
                    }
                }
            })
        };
        let down = {
            let (cut, stop) = (cut.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(n) = back2.recv(&mut buf) {
                        let to = *client.lock().unwrap();
                        if let (false, Some(to)) = (cut.load(Ordering::Relaxed), to) {
                            let _ = front2.send_to(&buf[..n], to);
                        }
                    }
                }
            })
        };
        Relay {
            addr,
            cut,
            stop,
            threads: vec![up, down],
        }
    }

    /// From now on, every packet in either direction is dropped.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// True when the tests run as root (effective uid 0, read from /proc: no unsafe needed).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .is_some_and(|l| l.split_whitespace().nth(2) == Some("0"))
}
