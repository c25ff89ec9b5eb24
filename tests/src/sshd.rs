//! A throw-away `sshd` on a free loopback port, for tests of hooks that run over ssh.
//!
//! [`Sshd::start`] makes a host key and a client key with `ssh-keygen` in a temporary
//! directory, authorizes the client key for the current user, and runs `sshd -D -e` with its
//! own configuration (public-key login only, no PAM). [`Sshd::client_options`] are the `ssh`
//! options that log in with that key and accept only that host key. Dropping the value kills
//! `sshd` and removes the directory.
//!
//! When `sshd` or `ssh` is missing, [`Sshd::available`] fails the test under `CI=true` and
//! otherwise lets the caller skip it with a printed message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::haproxy::{binary, require};

/// One running `sshd`.
#[derive(Debug)]
pub struct Sshd {
    /// Its loopback port.
    pub port: u16,
    /// The user the client key logs in as (the current user).
    pub user: String,
    child: Child,
    dir: tempfile::TempDir,
}

fn keygen(path: &Path) {
    let out = Command::new(binary("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(
        out.status.success(),
        "ssh-keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Sshd {
    /// Whether `sshd`, `ssh` and `ssh-keygen` are installed (see [`require`]).
    pub fn available() -> bool {
        require("sshd", "openssh-server")
            && require("ssh", "openssh-client")
            && require("ssh-keygen", "openssh-client")
    }

    /// Starts `sshd`.
    pub fn start() -> Sshd {
        let dir = tempfile::Builder::new()
            .prefix("sshd-test-")
            .tempdir()
            .expect("temp dir");
        let d = dir.path();
        keygen(&d.join("host_key"));
        keygen(&d.join("id"));
        std::fs::copy(d.join("id.pub"), d.join("authorized_keys")).expect("authorized_keys");
        // sshd insists on its privilege separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let user = String::from_utf8_lossy(
            &Command::new("id")
                .arg("-un")
                .output()
                .expect("id -un")
                .stdout,
        )
        .trim()
        .to_string();
        let host_pub = std::fs::read_to_string(d.join("host_key.pub")).expect("host key");
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .expect("free port");
            std::fs::write(
                d.join("known_hosts"),
                format!("[127.0.0.1]:{port} {host_pub}"),
            )
            .expect("known_hosts");
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nPidFile {d}/sshd.pid\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n",
                hk = d.join("host_key").display(),
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).expect("sshd_config");
            let log = d.join("sshd.log");
            let mut child = Command::new(binary("sshd"))
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("spawn sshd");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "sshd exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Sshd {
                        port,
                        user,
                        child,
                        dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("sshd did not listen within 10s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("sshd would not start: {last_error}");
    }

    /// `user@127.0.0.1`.
    pub fn host(&self) -> String {
        format!("{}@127.0.0.1", self.user)
    }

    /// The private key that logs in.
    pub fn key(&self) -> PathBuf {
        self.dir.path().join("id")
    }

    /// `ssh` options: this key, this host key only.
    pub fn client_options(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key().display().to_string(),
            "-o".into(),
            format!(
                "UserKnownHostsFile={}",
                self.dir.path().join("known_hosts").display()
            ),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]
    }

    /// The process id of the `sshd` listener (whose reaped session processes count in its
    /// `cutime`/`cstime`, for benchmarks that measure the server side's CPU).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
