//! A throw-away MariaDB server, and a source/replica pair of them, for end-to-end tests.
//!
//! [`MariaDb::start`] initialises a data directory with `mariadb-install-db` in a temporary
//! directory and runs `mariadbd` on a free loopback port with its socket in that directory,
//! the binary log on (`binlog_format=ROW`, `log_slave_updates`) and the given `server_id`. The
//! account `root@127.0.0.1` gets the password [`ROOT_PASSWORD`]; the server's own setup is kept
//! out of its binary log, so a fresh server has an empty GTID history. Dropping the value kills
//! the server and removes the directory. Servers share nothing, so tests run in parallel.
//!
//! It does not configure replication: that is what `cutover db setup` is tested for. When
//! `mariadbd` is missing, [`MariaDb::available`] fails the test under `CI=true` and otherwise
//! lets the caller skip it with a printed message.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The password of `root@127.0.0.1` on every test server.
pub const ROOT_PASSWORD: &str = "rootpw";

const MARIADBD: &str = "/usr/sbin/mariadbd";

/// One running `mariadbd`.
#[derive(Debug)]
pub struct MariaDb {
    /// The loopback TCP port.
    pub port: u16,
    /// `@@server_id`.
    pub server_id: u32,
    child: Child,
    dir: tempfile::TempDir,
}

fn find_mariadbd() -> Option<PathBuf> {
    if Path::new(MARIADBD).exists() {
        return Some(PathBuf::from(MARIADBD));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("mariadbd"))
        .find(|p| p.exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl MariaDb {
    /// Whether the MariaDB server binaries are installed. Panics when they are not and
    /// `CI=true`, because CI must run the database tests; otherwise prints why the caller
    /// skips.
    pub fn available() -> bool {
        let ok = find_mariadbd().is_some()
            && Command::new("mariadb-install-db")
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok();
        if !ok {
            if crate::under_ci() {
                panic!(
                    "mariadbd/mariadb-install-db not found, and CI=true: install mariadb-server"
                );
            }
            eprintln!("SKIPPED: mariadbd/mariadb-install-db not found (install mariadb-server)");
        }
        ok
    }

    /// Starts a server with `server_id` and default test settings.
    pub fn start(server_id: u32) -> MariaDb {
        MariaDb::start_with(server_id, &[])
    }

    /// Starts a server with `server_id` and extra `mariadbd` options.
    pub fn start_with(server_id: u32, extra: &[&str]) -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("mariadb-test-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        // Each server gets its own tmpdir: parallel bootstraps collide in a shared /tmp.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp dir");
        let out = Command::new("mariadb-install-db")
            .env("TMPDIR", &tmp)
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg("--auth-root-authentication-method=socket")
            .arg("--skip-test-db")
            .args(if running_as_root() {
                vec!["--user=root"]
            } else {
                vec![]
            })
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let init = dir.path().join("init.sql");
        std::fs::write(
            &init,
            format!(
                "SET sql_log_bin = 0;\n\
                 CREATE USER IF NOT EXISTS 'root'@'127.0.0.1' IDENTIFIED BY '{ROOT_PASSWORD}';\n\
                 GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;\n"
            ),
        )
        .expect("write init file");
        // A port taken between our probe and the server's bind makes the server exit: retry.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join("error.log");
            let mut cmd = Command::new(find_mariadbd().expect("mariadbd"));
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--socket={}", dir.path().join("sock").display()))
                .arg(format!("--pid-file={}", dir.path().join("pid").display()))
                .arg(format!("--log-error={}", log.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .arg(format!("--port={port}"))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--server-id={server_id}"))
                .arg(format!("--log-bin={}", data.join("binlog").display()))
                .arg("--binlog-format=ROW")
                .arg("--log-slave-updates")
                .arg("--skip-name-resolve")
                .arg(format!("--init-file={}", init.display()))
                .arg("--innodb-buffer-pool-size=32M")
                .arg("--innodb-log-file-size=32M")
                .arg("--innodb-flush-log-at-trx-commit=2")
                .arg("--sync-binlog=0")
                .arg("--max-connections=200")
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if running_as_root() {
                cmd.arg("--user=root");
            }
            let mut child = cmd.spawn().expect("spawn mariadbd");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "mariadbd exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    let server = MariaDb {
                        port,
                        server_id,
                        child,
                        dir,
                    };
                    // The init file has run once a login with the password works.
                    let login = Instant::now();
                    while login.elapsed() < Duration::from_secs(10) {
                        if server.try_sql("SELECT 1").is_ok() {
                            return server;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    panic!(
                        "mariadbd on port {port} accepts connections but root login fails: {:?}",
                        server.try_sql("SELECT 1")
                    );
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("mariadbd did not start within 30s");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("mariadbd would not start: {last_error}");
    }

    /// The URL for the runbook: `mysql://root:rootpw@127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mysql://root:{ROOT_PASSWORD}@127.0.0.1:{}", self.port)
    }

    /// The process id of this `mariadbd` (to stop it with SIGSTOP in a test, say).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The temporary directory of this server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn client(&self, user: &str, password: &str) -> Command {
        let mut c = Command::new("mariadb");
        c.arg("--no-defaults")
            .arg("--protocol=TCP")
            .arg("-h127.0.0.1")
            .arg(format!("-P{}", self.port))
            .arg(format!("-u{user}"))
            .arg(format!("-p{password}"))
            .arg("--batch")
            .arg("--skip-column-names");
        c
    }

    /// Runs SQL as root with the `mariadb` client; the tab-separated output, or the error.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_sql_as("root", ROOT_PASSWORD, sql)
    }

    /// Runs SQL as `user` with the `mariadb` client.
    pub fn try_sql_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let out: Output = self
            .client(user, password)
            .arg("-e")
            .arg(sql)
            .output()
            .map_err(|e| format!("cannot run mariadb: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Runs SQL as root and panics with the server's message when it fails.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL on port {} failed: {sql}\n{e}", self.port))
    }

    /// Starts a `mariadb` client that keeps a session open running `sql` (e.g. a lock followed
    /// by `SELECT SLEEP(60)`), for tests that need a session to hold something. Kill the child
    /// to end the session.
    pub fn hold_session(&self, sql: &str) -> Child {
        self.client("root", ROOT_PASSWORD)
            .arg("-e")
            .arg(sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mariadb client")
    }

    /// Polls `sql` until its output satisfies `done`, up to `timeout`; returns the last output.
    pub fn wait_for(
        &self,
        sql: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> Result<String, String> {
        let start = Instant::now();
        loop {
            let out = self.try_sql(sql);
            match &out {
                Ok(o) if done(o) => return Ok(o.clone()),
                _ if start.elapsed() > timeout => {
                    return Err(format!("timed out waiting on {sql}: last {out:?}"));
                }
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two servers, source (`server_id` 1) and replica (`server_id` 2), not yet replicating,
/// plus a directory for the runbook.
#[derive(Debug)]
pub struct Pair {
    /// The current primary.
    pub source: MariaDb,
    /// The destination.
    pub replica: MariaDb,
    dir: tempfile::TempDir,
}

impl Pair {
    /// Starts both servers (in parallel), or `None` when MariaDB is not installed outside CI.
    pub fn start() -> Option<Pair> {
        Pair::start_with(&[])
    }

    /// Starts both servers with extra `mariadbd` options.
    pub fn start_with(extra: &[&str]) -> Option<Pair> {
        if !MariaDb::available() {
            return None;
        }
        let extra_owned: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let replica = std::thread::spawn(move || {
            let e: Vec<&str> = extra_owned.iter().map(String::as_str).collect();
            MariaDb::start_with(2, &e)
        });
        let source = MariaDb::start_with(1, extra);
        let replica = replica.join().expect("replica start");
        Some(Pair {
            source,
            replica,
            dir: tempfile::tempdir().expect("temp dir"),
        })
    }

    /// Writes a runbook for this pair with `extra` lines appended to `[database]`, and returns
    /// its path.
    pub fn runbook(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("runbook.toml");
        let text = format!(
            "[database]\n\
             source = \"{}\"\n\
             replica = \"{}\"\n\
             replication_user = \"repl\"\n\
             replication_password = \"replpw\"\n\
             {extra}\n",
            self.source.url(),
            self.replica.url()
        );
        std::fs::write(&path, text).expect("write runbook");
        path
    }
}
