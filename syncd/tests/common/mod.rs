//! Helpers shared by the end-to-end tests: run the real `syncd` binary with a private
//! state directory, build sample trees, compare trees.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

    /// Packets flow again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::Relaxed);
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

/// `syncd push SRC DEST --json EXTRA…`: exit code, JSON summary (or null), stderr.
pub fn push_json(
    env: &Env,
    src: &Path,
    dest: &dyn AsRef<std::ffi::OsStr>,
    extra: &[&str],
) -> (i32, serde_json::Value, String) {
    let mut c = env.cmd();
    c.arg("push").arg(src).arg(dest).arg("--json").args(extra);
    let o = c.output().unwrap();
    let v = if o.stdout.is_empty() {
        serde_json::Value::Null
    } else {
        json(&o)
    };
    (code(&o), v, stderr(&o))
}

/// A `syncd serve` on a free loopback port, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub fn start(env: &Env, root: &Path, allow: &str) -> Server {
        Server::start_with(env.cmd(), root, allow)
    }

    /// `serve` run by `cmd` (the binary, or a wrapper that runs it).
    pub fn start_with(cmd: Command, root: &Path, allow: &str) -> Server {
        Server::start_args(cmd, root, allow, &[])
    }

    /// `serve` run by `cmd`, with `extra` arguments after the usual ones.
    pub fn start_args(mut cmd: Command, root: &Path, allow: &str, extra: &[&str]) -> Server {
        let mut child = cmd
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--allow",
                allow,
                "--root",
            ])
            .arg(root)
            .args(extra)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("syncd serve: listening on ") {
                    let _ = tx.send(rest.split(' ').next().unwrap_or("").to_string());
                }
                l.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("serve did not start: {}", log.lock().unwrap()));
        Server { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Pushes `src` from `sender` to this server, whose peer id is `rid`, with `extra`
    /// flags: the push must succeed with the receiver's root equal to the source's. Its
    /// `--json` summary.
    pub fn push_ok(
        &self,
        sender: &Env,
        src: &Path,
        rid: &str,
        extra: &[&str],
    ) -> serde_json::Value {
        let mut args = vec!["--peer-id", rid];
        args.extend_from_slice(extra);
        let (rc, v, err) = push_json(sender, src, &self.addr, &args);
        assert_eq!(rc, 0, "{err}\n{}", self.log());
        assert_eq!(v["identical"], true, "{v}");
        v
    }

    pub fn wait_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let l = self.log();
            if l.contains(needle) || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `syncd init` then `syncd id`: the new peer id.
pub fn init(env: &Env) -> String {
    let o = env.syncd(&[&"init"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let id = stdout(&o).trim().to_string();
    let o = env.syncd(&[&"id"]);
    assert_eq!(stdout(&o).trim(), id, "`syncd id` prints the same id");
    id
}

/// True when running as root; otherwise says why the test is skipped (and fails under CI,
/// which runs as root).
pub fn root_or_skip(why: &str) -> bool {
    if is_root() {
        return true;
    }
    assert!(
        !integration_tests::under_ci(),
        "CI=true must run this as root"
    );
    eprintln!("skipping: {why}");
    false
}

/// `N` fresh temporary directories.
pub fn tempdirs<const N: usize>() -> [TempDir; N] {
    std::array::from_fn(|_| tempfile::tempdir().unwrap())
}

/// A QUIC connection to the `syncd serve` at `addr` (whose peer id is `rid`) as `sender`,
/// for a hand-driven client, with the runtime it lives on.
pub fn raw_client(
    sender: &Env,
    rid: &str,
    addr: &str,
) -> (tokio::runtime::Runtime, quinn::Connection) {
    let identity = syncd::identity::Identity::load(sender.home.path()).unwrap();
    let expected: syncd::identity::PeerId = rid.parse().unwrap();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let conn = rt.block_on(async {
        let ep = syncd::transport::client_endpoint().unwrap();
        syncd::transport::connect(&ep, &identity, addr, &expected)
            .await
            .unwrap()
    });
    (rt, conn)
}

/// What the peer writes on `r` until it ends the stream (10 s at most), as text.
pub async fn read_rest(r: &mut quinn::RecvStream) -> String {
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while let Ok(Some(n)) = r.read(&mut buf).await {
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

/// The `Hello` a hand-driven client sends: a root no tree has, every option off.
pub fn plain_hello() -> syncd::proto::codec::Frame {
    syncd::proto::codec::Frame::Hello {
        version: syncd::proto::codec::VERSION,
        root: syncd::manifest::Hash([9; 32]),
        delete: false,
        dry_run: false,
        owners: false,
        verify_dest: false,
        options: false,
        itemize: false,
    }
}
