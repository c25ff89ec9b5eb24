//! Throw-away BIND 9 servers for end-to-end tests of `cutover dns`.
//!
//! [`Bind::primary`] writes a zone and a `named.conf` into a temporary directory and runs
//! `named -g` (foreground) on a free loopback port (UDP and TCP), authoritative for the zone,
//! which accepts RFC 2136 updates signed with either of two TSIG keys: [`KEY_SHA256`]
//! (`hmac-sha256`) and [`KEY_SHA512`] (`hmac-sha512`); it also knows [`KEY_READER`], which may
//! not update. It can notify a secondary, after a
//! delay, so that a test sees it transfer late. [`Bind::secondary`] runs a secondary of the
//! zone that transfers from a primary. Dropping a value kills `named` and removes its
//! directory.
//!
//! When `named` or `dig` is missing, [`Bind::available`] fails the test under `CI=true` and
//! otherwise lets the caller skip it with a printed message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::haproxy::{binary, require};

/// A TSIG key the test servers know.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Its name.
    pub name: &'static str,
    /// Its BIND algorithm name.
    pub algorithm: &'static str,
    /// Its base64 secret.
    pub secret: &'static str,
}

/// The `hmac-sha256` key `cutover` (32 bytes).
pub const KEY_SHA256: Key = Key {
    name: "cutover",
    algorithm: "hmac-sha256",
    secret: "Wc0b40QBP3zOxloVjRPvOQxGpPHWLLgjDJs9gobmu10=",
};

/// The `hmac-sha512` key `cutover512` (64 bytes).
pub const KEY_SHA512: Key = Key {
    name: "cutover512",
    algorithm: "hmac-sha512",
    secret: "f3L2KaWMQtp8IhhWnesfv1gE7uDSWMAQ/dY39ubgOXJNXewrkLhasdPwnud2N6oYluTFqF6vnAeAes9aTGy+kw==",
};

impl Key {
    /// The key in BIND's key-file format (what `tsig-keygen` prints).
    pub fn file_text(&self) -> String {
        format!(
            "key \"{}\" {{\n\talgorithm {};\n\tsecret \"{}\";\n}};\n",
            self.name, self.algorithm, self.secret
        )
    }
}

/// The `hmac-sha256` key `reader`: known to the servers, but not allowed to update.
pub const KEY_READER: Key = Key {
    name: "reader",
    algorithm: "hmac-sha256",
    secret: "c2VjcmV0IG9mIGEga2V5IHRoYXQgbWF5IG5vdCB3cml0ZQ==",
};

/// The zone the test servers serve.
pub const ZONE: &str = "example.test";

/// One running `named`.
#[derive(Debug)]
pub struct Bind {
    /// The loopback port (UDP and TCP).
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    // A port free for TCP is almost always free for UDP too; `named` failing to bind is
    // retried below.
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl Bind {
    /// Whether `named` and `dig` are installed (see [`require`]).
    pub fn available() -> bool {
        require("named", "bind9") && require("dig", "bind9-dnsutils")
    }

    /// A primary for [`ZONE`] with `records` (zone-file lines, relative names) besides its SOA
    /// (serial 1), `NS ns1` and `ns1 A 127.0.0.1`. With `notify = Some((port, delay))` it
    /// notifies a secondary on `127.0.0.1:port`, `delay` seconds after a change.
    pub fn primary(records: &str, notify: Option<(u16, u32)>) -> Bind {
        let zone_text = format!(
            "$ORIGIN {ZONE}.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 60\n\
             @ IN NS ns1\nns1 IN A 127.0.0.1\n{records}\n"
        );
        let (notify_opts, delay) = match notify {
            Some((port, delay)) => (
                format!("notify explicit;\n  also-notify {{ 127.0.0.1 port {port}; }};"),
                delay,
            ),
            None => ("notify no;".to_string(), 0),
        };
        let zone_conf = format!(
            "zone \"{ZONE}\" {{\n  type primary;\n  file \"zone.db\";\n  \
             allow-update {{ key \"{}\"; key \"{}\"; }};\n  notify-delay {delay};\n}};\n",
            KEY_SHA256.name, KEY_SHA512.name
        );
        Bind::start(&zone_conf, &notify_opts, Some(&zone_text))
    }

    /// A secondary for [`ZONE`] that transfers from the primary on `127.0.0.1:primary_port`.
    /// `port` is its own port (pass the one the primary notifies), or `None` for a free one.
    pub fn secondary(primary_port: u16, port: Option<u16>) -> Bind {
        let zone_conf = format!(
            "zone \"{ZONE}\" {{\n  type secondary;\n  file \"secondary.db\";\n  \
             primaries port {primary_port} {{ 127.0.0.1; }};\n}};\n"
        );
        Bind::start_on(&zone_conf, "notify no;", None, port)
    }

    fn start(zone_conf: &str, options: &str, zone_text: Option<&str>) -> Bind {
        Bind::start_on(zone_conf, options, zone_text, None)
    }

    fn start_on(
        zone_conf: &str,
        options: &str,
        zone_text: Option<&str>,
        port: Option<u16>,
    ) -> Bind {
        let dir = tempfile::Builder::new()
            .prefix("named-test-")
            .tempdir()
            .expect("temp dir");
        if let Some(z) = zone_text {
            std::fs::write(dir.path().join("zone.db"), z).expect("write zone");
        }
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = port.unwrap_or_else(free_port);
            let d = dir.path().display();
            let conf = format!(
                "options {{\n  directory \"{d}\";\n  pid-file \"{d}/named.pid\";\n  \
                 session-keyfile \"{d}/session.key\";\n  managed-keys-directory \"{d}\";\n  \
                 listen-on port {port} {{ 127.0.0.1; }};\n  listen-on-v6 {{ none; }};\n  \
                 recursion no;\n  dnssec-validation no;\n  allow-transfer {{ any; }};\n  \
                 allow-query {{ any; }};\n  {options}\n}};\ncontrols {{ }};\n{}{}{}{zone_conf}",
                KEY_SHA256.file_text(),
                KEY_SHA512.file_text(),
                KEY_READER.file_text()
            );
            let path = dir.path().join("named.conf");
            std::fs::write(&path, conf).expect("write named.conf");
            let log = dir.path().join("named.log");
            let mut child = Command::new(binary("named"))
                .arg("-g")
                .arg("-n")
                .arg("1")
                .arg("-c")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("log file"))
                .spawn()
                .expect("spawn named");
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    last_error = format!(
                        "named exited ({status}): {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                    break;
                }
                if serial_at(port).is_some() {
                    return Bind { port, child, dir };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!(
                        "named did not serve {ZONE} within 20s: {}",
                        std::fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("named would not start: {last_error}");
    }

    /// `dig +short @127.0.0.1 -p PORT NAME TYPE`, the lines of its answer.
    pub fn dig(&self, name: &str, rtype: &str) -> Vec<String> {
        dig_at(self.port, name, rtype)
    }

    /// The zone's SOA serial, if the server answers for it.
    pub fn serial(&self) -> Option<u32> {
        serial_at(self.port)
    }

    /// Runs `nsupdate` with `key` against this server: `commands` are nsupdate lines (without
    /// `server` and `send`). Returns nsupdate's stderr when it fails.
    pub fn nsupdate(&self, key: &Key, commands: &str) -> Result<(), String> {
        let keyfile = self.dir.path().join(format!("{}.key", key.name));
        std::fs::write(&keyfile, key.file_text()).expect("write key file");
        let script = format!("server 127.0.0.1 {}\n{commands}\nsend\n", self.port);
        let mut child = Command::new(binary("nsupdate"))
            .arg("-k")
            .arg(&keyfile)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nsupdate");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write nsupdate script");
        let out = child.wait_with_output().expect("nsupdate");
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// The temporary directory (configuration, zone, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Where a key file for `key` is (written on first call).
    pub fn key_file(&self, key: &Key) -> PathBuf {
        let path = self.dir.path().join(format!("{}.key", key.name));
        std::fs::write(&path, key.file_text()).expect("write key file");
        path
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `dig +short @127.0.0.1 -p PORT NAME TYPE`, the lines of its answer.
pub fn dig_at(port: u16, name: &str, rtype: &str) -> Vec<String> {
    let out = Command::new(binary("dig"))
        .args(["+short", "+norecurse", "+time=1", "+tries=1"])
        .arg("@127.0.0.1")
        .arg("-p")
        .arg(port.to_string())
        .arg(name)
        .arg(rtype)
        .output()
        .expect("run dig");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.starts_with(";;"))
        .collect()
}

/// The SOA serial of [`ZONE`] at `127.0.0.1:port`, if it answers for it.
pub fn serial_at(port: u16) -> Option<u32> {
    dig_at(port, &format!("{ZONE}."), "SOA")
        .first()?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}
