//! A throw-away HAProxy for end-to-end tests of `cutover lb`.
//!
//! [`Haproxy::start`] writes a configuration into a temporary directory and runs `haproxy -db`
//! (foreground) with: an HTTP frontend on a free loopback port; one backend `web` whose servers
//! are health-checked every 100 ms with `GET /health` (rise 1, fall 1); and three runtime API
//! sockets: a unix socket at `level admin`, one at `level user`, and a TCP one at `level admin`
//! on a free port. Dropping the value kills HAProxy and removes the directory.
//!
//! When `haproxy` is missing, [`Haproxy::available`] fails the test under `CI=true` and
//! otherwise lets the caller skip it with a printed message.

use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One server of the `web` backend.
#[derive(Debug, Clone)]
pub struct Server {
    /// Its name in HAProxy.
    pub name: String,
    /// The loopback port it forwards to.
    pub port: u16,
    /// Starts in maintenance (`disabled`).
    pub disabled: bool,
}

/// A running `haproxy`.
#[derive(Debug)]
pub struct Haproxy {
    /// The HTTP frontend's loopback port.
    pub frontend_port: u16,
    /// The runtime API at `level admin`, a unix socket.
    pub admin_socket: PathBuf,
    /// The runtime API at `level user`, a unix socket.
    pub user_socket: PathBuf,
    /// The runtime API at `level admin` over TCP on loopback.
    pub admin_tcp_port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

fn find(binary: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(binary))
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

/// Whether `binary` is installed; panics when it is not and `CI=true` (CI must run every
/// test), otherwise prints why the caller skips.
pub fn require(binary: &str, package: &str) -> bool {
    if find(binary).is_some() {
        return true;
    }
    if crate::under_ci() {
        panic!("{binary} not found, and CI=true: install {package}");
    }
    eprintln!("SKIPPED: {binary} not found (install {package})");
    false
}

/// The full path of an installed binary (`/usr/sbin` included).
pub fn binary(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| panic!("{name} not found"))
}

impl Haproxy {
    /// Whether `haproxy` is installed (see [`require`]).
    pub fn available() -> bool {
        require("haproxy", "haproxy")
    }

    /// Starts HAProxy with the backend `web` made of `servers`.
    pub fn start(servers: &[Server]) -> Haproxy {
        let dir = tempfile::Builder::new()
            .prefix("haproxy-test-")
            .tempdir()
            .expect("temp dir");
        let admin_socket = dir.path().join("admin.sock");
        let user_socket = dir.path().join("user.sock");
        let mut last_error = String::new();
        for _ in 0..5 {
            let (frontend_port, admin_tcp_port) = (free_port(), free_port());
            let mut cfg = format!(
                "global\n\
                 \x20 stats socket {admin} level admin\n\
                 \x20 stats socket {user} level user\n\
                 \x20 stats socket 127.0.0.1:{admin_tcp_port} level admin\n\
                 defaults\n\
                 \x20 mode http\n\
                 \x20 timeout connect 1s\n\
                 \x20 timeout client 30s\n\
                 \x20 timeout server 30s\n\
                 frontend fe\n\
                 \x20 bind 127.0.0.1:{frontend_port}\n\
                 \x20 default_backend web\n\
                 backend web\n\
                 \x20 option httpchk GET /health\n",
                admin = admin_socket.display(),
                user = user_socket.display(),
            );
            for s in servers {
                cfg.push_str(&format!(
                    "  server {} 127.0.0.1:{} check inter 100ms rise 1 fall 1{}\n",
                    s.name,
                    s.port,
                    if s.disabled { " disabled" } else { "" }
                ));
            }
            let config = dir.path().join("haproxy.cfg");
            std::fs::write(&config, cfg).expect("write haproxy.cfg");
            let log = dir.path().join("haproxy.log");
            let mut child = Command::new(binary("haproxy"))
                .arg("-db")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log).expect("log file"))
                .stderr(std::fs::File::create(dir.path().join("haproxy.err")).expect("log"))
                .spawn()
                .expect("spawn haproxy");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "haproxy exited ({status}): {}",
                        std::fs::read_to_string(dir.path().join("haproxy.err")).unwrap_or_default()
                    );
                    break;
                }
                if UnixStream::connect(&admin_socket).is_ok()
                    && std::net::TcpStream::connect(("127.0.0.1", frontend_port)).is_ok()
                {
                    return Haproxy {
                        frontend_port,
                        admin_socket,
                        user_socket,
                        admin_tcp_port,
                        child,
                        dir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("haproxy did not start within 10s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("haproxy would not start: {last_error}");
    }

    /// Sends one runtime API command on the admin socket and returns the answer.
    pub fn command(&self, command: &str) -> String {
        use std::io::{Read, Write};
        let mut s = UnixStream::connect(&self.admin_socket).expect("connect admin socket");
        s.write_all(format!("{command}\n").as_bytes())
            .expect("write");
        let mut answer = String::new();
        s.read_to_string(&mut answer).expect("read");
        answer
    }

    /// The temporary directory (configuration and logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
