//! The runbook: the TOML file that drives every `cutover` command.
//!
//! This module parses and validates the file and nothing else: it opens no connection, reads no
//! clock and reads no file. Loading the runbook and the files it names (passwords, the TSIG key)
//! is the binary's job: [`Runbook::load`] reads them and hands their text to [`Runbook::parse`]
//! through a closure. Every error names its full key (`dns.tsig_key_file: ...`,
//! `health[1].timeout: ...`) through one helper, [`Keys`], so that the operator knows which line
//! to fix.
//!
//! One submodule per table: [`database`], [`loadbalancer`], [`dns`], [`health`], [`service`] and
//! [`sync`]. A table that is absent is `None` (or empty); the command that needs it says so
//! ([`Runbook::database`] and its siblings).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub mod database;
pub mod dns;
pub mod health;
pub mod loadbalancer;
pub mod service;
pub mod sync;

pub use database::{Database, TablePattern};
pub use dns::{Dns, TsigAlgorithm, TsigKey};
pub use health::{Health, HealthCheck};
pub use loadbalancer::{AdminSocket, LoadBalancer};
pub use service::Service;
pub use sync::Sync;

/// Why a runbook could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RunbookError {
    /// The file could not be read.
    #[error("cannot read runbook {path}: {error}")]
    Read {
        /// The runbook path.
        path: PathBuf,
        /// The IO error (in the message, so not also a `source`).
        error: std::io::Error,
    },
    /// The file is not valid TOML or does not have the expected shape.
    #[error("runbook {path}: {message}")]
    Parse {
        /// The runbook path.
        path: PathBuf,
        /// `line N: ` and the parser's message, which names the key.
        message: String,
    },
    /// A key has a value that parses but makes no sense.
    #[error("runbook {path}: {key}: {message}")]
    Invalid {
        /// The runbook path.
        path: PathBuf,
        /// The dotted key, e.g. `database.catch_up_timeout`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// Reads a file named in the runbook (a password or key file), relative paths against the
/// runbook's directory; passed to [`Runbook::parse`] so that parsing does no IO.
pub type ReadFile<'a> = &'a dyn Fn(&Path) -> Result<String, String>;

/// Builds the errors of one table (or array element), so that each names its full key path.
///
/// `Keys::new(path, "dns").err("tsig_key_file", "...")` is the error
/// `runbook rb.toml: dns.tsig_key_file: ...`; `Keys::new(path, "health[2]")` serves the third
/// `[[health]]` entry. The typed helpers ([`Keys::duration`], [`Keys::host_port`]) parse a value
/// and name the key when it does not parse.
#[derive(Debug, Clone)]
pub struct Keys<'a> {
    path: &'a Path,
    prefix: String,
}

impl<'a> Keys<'a> {
    /// The keys under `prefix` (`"dns"`, `"health[0]"`) of the runbook at `path`.
    pub fn new(path: &'a Path, prefix: impl Into<String>) -> Keys<'a> {
        Keys {
            path,
            prefix: prefix.into(),
        }
    }

    /// The full dotted name of `key`, e.g. `dns.tsig_key_file`.
    pub fn name(&self, key: &str) -> String {
        if key.is_empty() {
            self.prefix.clone()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    /// The error for `key` with `message`.
    pub fn err(&self, key: &str, message: impl Into<String>) -> RunbookError {
        RunbookError::Invalid {
            path: self.path.to_path_buf(),
            key: self.name(key),
            message: message.into(),
        }
    }

    /// Parses an optional duration (`"30s"`), `default` when absent.
    pub fn duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, RunbookError> {
        match value {
            None => Ok(default),
            Some(s) => parse_duration(s).map_err(|m| self.err(key, m)),
        }
    }

    /// Parses an optional duration that must be at least 1 ms (a timeout or poll interval).
    pub fn positive_duration(
        &self,
        key: &str,
        value: Option<&str>,
        default: Duration,
    ) -> Result<Duration, RunbookError> {
        let d = self.duration(key, value, default)?;
        if d < Duration::from_millis(1) {
            return Err(self.err(key, "must be at least 1ms"));
        }
        Ok(d)
    }

    /// Parses an optional `HOST:PORT`.
    pub fn host_port(
        &self,
        key: &str,
        value: Option<&str>,
    ) -> Result<Option<(String, u16)>, RunbookError> {
        value
            .map(|s| parse_host_port(s).map_err(|m| self.err(key, m)))
            .transpose()
    }

    /// Reads a secret file through `read_file`, without its trailing newline.
    pub fn secret_file(
        &self,
        key: &str,
        file: &Path,
        read_file: ReadFile<'_>,
    ) -> Result<String, RunbookError> {
        read_file(file)
            .map(|p| p.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| self.err(key, format!("{}: {e}", file.display())))
    }

    /// A string key that must not be empty.
    pub fn non_empty(&self, key: &str, value: String) -> Result<String, RunbookError> {
        if value.trim().is_empty() {
            return Err(self.err(key, "must not be empty"));
        }
        Ok(value)
    }
}

/// A parsed and validated runbook.
#[derive(Debug, Clone, Default)]
pub struct Runbook {
    /// The `[database]` table, if present.
    pub database: Option<Database>,
    /// The `[loadbalancer]` table, if present.
    pub loadbalancer: Option<LoadBalancer>,
    /// The `[dns]` table, if present.
    pub dns: Option<Dns>,
    /// The `[sync]` table, if present.
    pub sync: Option<Sync>,
    /// The `[[health]]` entries, in file order.
    pub health: Vec<Health>,
    /// The `[[service]]` entries, in file order.
    pub service: Vec<Service>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunbook {
    database: Option<database::RawDatabase>,
    loadbalancer: Option<loadbalancer::RawLoadBalancer>,
    dns: Option<dns::RawDns>,
    sync: Option<sync::RawSync>,
    #[serde(default)]
    health: Vec<health::RawHealth>,
    #[serde(default)]
    service: Vec<service::RawService>,
}

impl Runbook {
    /// Reads and validates the runbook at `path`. Relative paths in it (secret files, the TSIG
    /// key, a unix admin socket) are resolved against the runbook's directory.
    pub fn load(path: &Path) -> Result<Runbook, RunbookError> {
        let text = std::fs::read_to_string(path).map_err(|error| RunbookError::Read {
            path: path.to_path_buf(),
            error,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Runbook::parse(&text, path, &|file| {
            std::fs::read_to_string(base.join(file)).map_err(|e| e.to_string())
        })
    }

    /// Parses `text` (named `path` in errors). `read_file` reads a secret file named in the
    /// runbook; passing it in keeps this function free of IO. Relative paths that are kept
    /// (a unix admin socket) are joined to `path`'s directory.
    pub fn parse(
        text: &str,
        path: &Path,
        read_file: ReadFile<'_>,
    ) -> Result<Runbook, RunbookError> {
        // The parser's own rendering spans several lines with a caret diagram; keep the line
        // number and the message, prefixed with the full key when the message is about a
        // value (a wrong type names no key by itself).
        let parse_error = |e: toml::de::Error, key: Option<String>| {
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            let message = match key.filter(|k| !k.is_empty() && k != ".") {
                Some(key) => format!("{key}: {}", e.message()),
                None => e.message().to_string(),
            };
            RunbookError::Parse {
                path: path.to_path_buf(),
                message: match line {
                    Some(line) => format!("line {line}: {message}"),
                    None => message,
                },
            }
        };
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(e, None))?;
        let raw: RawRunbook = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_error(e.into_inner(), Some(key))
        })?;
        let base = path.parent().unwrap_or(Path::new(""));
        let database = raw
            .database
            .map(|d| database::validate(d, &Keys::new(path, "database"), read_file))
            .transpose()?;
        let loadbalancer = raw
            .loadbalancer
            .map(|l| loadbalancer::validate(l, &Keys::new(path, "loadbalancer"), base))
            .transpose()?;
        let dns = raw
            .dns
            .map(|d| dns::validate(d, &Keys::new(path, "dns"), read_file))
            .transpose()?;
        let sync = raw
            .sync
            .map(|s| sync::validate(s, &Keys::new(path, "sync"), base))
            .transpose()?;
        let health = raw
            .health
            .into_iter()
            .enumerate()
            .map(|(i, h)| health::validate(h, &Keys::new(path, format!("health[{i}]")), read_file))
            .collect::<Result<Vec<_>, _>>()?;
        let service = raw
            .service
            .into_iter()
            .enumerate()
            .map(|(i, s)| service::validate(s, &Keys::new(path, format!("service[{i}]")), base))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, s) in service.iter().enumerate() {
            if service[..i].iter().any(|t| t.name == s.name) {
                return Err(Keys::new(path, format!("service[{i}]")).err(
                    "name",
                    format!("{:?} is used by an earlier [[service]]", s.name),
                ));
            }
        }
        Ok(Runbook {
            database,
            loadbalancer,
            dns,
            sync,
            health,
            service,
        })
    }

    /// The `[database]` table, or an error naming it when it is missing.
    pub fn database(&self, path: &Path) -> Result<&Database, RunbookError> {
        self.database
            .as_ref()
            .ok_or_else(|| missing(path, "database", "cutover db"))
    }

    /// The `[loadbalancer]` table, or an error naming it when it is missing.
    pub fn loadbalancer(&self, path: &Path) -> Result<&LoadBalancer, RunbookError> {
        self.loadbalancer
            .as_ref()
            .ok_or_else(|| missing(path, "loadbalancer", "cutover lb"))
    }

    /// The `[dns]` table, or an error naming it when it is missing.
    pub fn dns(&self, path: &Path) -> Result<&Dns, RunbookError> {
        self.dns
            .as_ref()
            .ok_or_else(|| missing(path, "dns", "cutover dns"))
    }
}

fn missing(path: &Path, table: &str, command: &str) -> RunbookError {
    Keys::new(path, table).err("", format!("the table is missing; `{command}` needs it"))
}

/// Parses a human duration such as `30s`, `500ms` or `2m`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"30s\" or \"500ms\" ({e})"))
}

/// Parses `HOST:PORT` (IPv6 as `[::1]:3306`).
pub fn parse_host_port(s: &str) -> Result<(String, u16), String> {
    let bad = || format!("{s:?} is not HOST:PORT");
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Runbook, String> {
        Runbook::parse(text, Path::new("rb.toml"), &|p| {
            if p == Path::new("pw.txt") {
                Ok("s3cret\n".into())
            } else if p == Path::new("tsig.key") {
                Ok(KEY.into())
            } else {
                Err("No such file or directory".into())
            }
        })
        .map_err(|e| e.to_string())
    }

    const KEY: &str = "key \"cutover\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; };\n";

    const MINIMAL: &str = r#"
[database]
source = "mysql://root@127.0.0.1:3401"
replica = "mysql://root@127.0.0.1:3402"
replication_password = "secret"
"#;

    /// The runbook of `shared/design.md`, every table as written there.
    const DESIGN: &str = r#"
[database]
source   = "mysql://root@127.0.0.1:3401"
replica  = "mysql://root@127.0.0.1:3402"
replication_user = "repl"
replication_password = "secret"
source_address_for_replica = "127.0.0.1:3401"
catch_up_timeout = "30s"
verify_tables = ["app.*"]

[loadbalancer]
admin_socket = "/run/haproxy/admin.sock"
backend = "web"
source_server = "old"
destination_server = "new"
drain_timeout = "30s"

[dns]
server = "127.0.0.1:5353"
zone = "example.test."
record = "svc.example.test."
source_address = "127.0.0.1"
destination_address = "127.0.0.2"
ttl = 60
low_ttl = 30
tsig_key_file = "tsig.key"
check_servers = ["127.0.0.1:5353"]

[sync]
control = "/run/syncd/push.sock"

[[health]]
name = "web"
http = "http://127.0.0.1:8080/health"
expect_status = 200

[[service]]
name = "app"
stop  = "systemctl stop app"
start = "systemctl start app"
"#;

    #[test]
    fn design_example_is_accepted() {
        let rb = parse(DESIGN).unwrap();
        let db = rb.database.unwrap();
        assert_eq!(db.replication_user, "repl");
        assert_eq!(db.catch_up_timeout, Duration::from_secs(30));
        assert_eq!(
            db.source_address_for_replica,
            Some(("127.0.0.1".into(), 3401))
        );
        assert_eq!(db.verify_tables, vec!["app.*".to_string()]);
        assert_eq!(db.fence_grace, Duration::from_millis(200));
        let lb = rb.loadbalancer.unwrap();
        assert_eq!(
            lb.admin_socket,
            AdminSocket::Unix("/run/haproxy/admin.sock".into())
        );
        assert_eq!(
            (lb.backend.as_str(), lb.source_server.as_str()),
            ("web", "old")
        );
        assert_eq!(lb.drain_timeout, Duration::from_secs(30));
        let dns = rb.dns.unwrap();
        assert_eq!(dns.record, "svc.example.test.");
        assert_eq!((dns.ttl, dns.low_ttl), (60, 30));
        assert_eq!(dns.tsig.name, "cutover.");
        assert_eq!(dns.check_servers.len(), 1);
        assert_eq!(rb.sync.unwrap().control, Path::new("/run/syncd/push.sock"));
        assert_eq!(rb.health.len(), 1);
        assert!(matches!(
            rb.health[0].check,
            HealthCheck::Http {
                expect_status: 200,
                ..
            }
        ));
        assert_eq!(rb.service[0].name, "app");
    }

    #[test]
    fn every_table_names_its_keys() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "admin_socket = \"/run/haproxy/admin.sock\"",
                "admin_socket = \"nohost\"",
                "loadbalancer.admin_socket",
            ),
            (
                "drain_timeout = \"30s\"",
                "drain_timeout = \"soon\"",
                "loadbalancer.drain_timeout",
            ),
            (
                "destination_server = \"new\"",
                "destination_server = \"old\"",
                "loadbalancer.destination_server",
            ),
            (
                "backend = \"web\"",
                "backend = \"a/b\"",
                "loadbalancer.backend",
            ),
            (
                "tsig_key_file = \"tsig.key\"",
                "tsig_key_file = \"gone.key\"",
                "dns.tsig_key_file: gone.key",
            ),
            (
                "tsig_key_file = \"tsig.key\"",
                "tsig_key_file = \"pw.txt\"",
                "dns.tsig_key_file: pw.txt",
            ),
            (
                "record = \"svc.example.test.\"",
                "record = \"svc.other.test.\"",
                "dns.record",
            ),
            (
                "destination_address = \"127.0.0.2\"",
                "destination_address = \"::2\"",
                "dns.destination_address",
            ),
            ("low_ttl = 30", "low_ttl = 90", "dns.low_ttl"),
            (
                "server = \"127.0.0.1:5353\"",
                "server = \"ns1.example.test\"",
                "dns.server",
            ),
            (
                "check_servers = [\"127.0.0.1:5353\"]",
                "check_servers = [\"127.0.0.1:5353\", \"x\"]",
                "dns.check_servers[1]",
            ),
            (
                "expect_status = 200",
                "expect_status = 200\ntimeout = \"x\"",
                "health[0].timeout",
            ),
            (
                "http = \"http://127.0.0.1:8080/health\"",
                "tcp = \"127.0.0.1:1\"",
                "health[0].expect_status",
            ),
            (
                "start = \"systemctl start app\"",
                "start = \"\"",
                "service[0].start",
            ),
        ];
        for (from, to, key) in cases {
            assert!(DESIGN.contains(from), "{from}");
            let err = parse(&DESIGN.replace(from, to)).unwrap_err();
            assert!(err.contains(key), "{to}: error {err:?} does not name {key}");
        }
        let err = parse(&format!("{DESIGN}\n[[service]]\nname = \"app\"\n")).unwrap_err();
        assert!(err.contains("service[1].name"), "{err}");
        let err = Runbook::default().dns(Path::new("rb.toml")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "runbook rb.toml: dns: the table is missing; `cutover dns` needs it"
        );
    }

    #[test]
    fn relative_paths_follow_the_runbook() {
        let text = DESIGN.replace("/run/haproxy/admin.sock", "run/admin.sock");
        let rb = Runbook::parse(&text, Path::new("/etc/cutover/rb.toml"), &|p| {
            if p == Path::new("tsig.key") {
                Ok(KEY.into())
            } else {
                Ok("pw".into())
            }
        })
        .unwrap();
        assert_eq!(
            rb.loadbalancer.unwrap().admin_socket,
            AdminSocket::Unix("/etc/cutover/run/admin.sock".into())
        );
    }

    #[test]
    fn defaults_apply() {
        let db = parse(MINIMAL).unwrap().database.unwrap();
        assert_eq!(db.replication_user, "repl");
        assert_eq!(db.chunk_rows, 10_000);
        assert_eq!(db.max_lag_at_fence, 100);
        assert_eq!(db.replica_address_for_source, None);
        assert!(
            db.reverse,
            "cutover run promotes with --reverse unless told otherwise"
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            (r#"catch_up_timeout = "soon""#, "database.catch_up_timeout"),
            (r#"catch_up_timeout = "0s""#, "database.catch_up_timeout"),
            (r#"fence_grace = "x""#, "database.fence_grace"),
            (
                r#"source_address_for_replica = "nohost""#,
                "database.source_address_for_replica",
            ),
            (r#"verify_tables = ["app"]"#, "database.verify_tables[0]"),
            (r#"chunk_rows = 0"#, "database.chunk_rows"),
            (r#"reverse = "no""#, "reverse"),
            (r#"replication_passwrd = "x""#, "replication_passwrd"),
            (
                r#"replication_password_file = "pw.txt""#,
                "database.replication_password_file",
            ),
        ];
        for (extra, key) in cases {
            let text = format!("{MINIMAL}{extra}\n");
            let err = parse(&text).unwrap_err();
            assert!(
                err.contains(key),
                "{extra}: error {err:?} does not name {key}"
            );
        }
    }

    #[test]
    fn health_source_is_the_same_check_aimed_at_the_source() {
        let health = |body: &str| parse(&format!("[[health]]\nname = \"h\"\n{body}\n"));
        let rb = health(
            "http = \"https://10.0.0.2/health\"\nbody_contains = \"ok\"\n\
             source = \"https://10.0.0.1/health\"",
        )
        .unwrap();
        let HealthCheck::Http {
            url, body_contains, ..
        } = rb.health[0].source.clone().unwrap()
        else {
            panic!("not http: {:?}", rb.health[0].source)
        };
        assert_eq!(url, "https://10.0.0.1/health");
        assert_eq!(body_contains.as_deref(), Some("ok"));
        let rb = health("tcp = \"10.0.0.2:443\"\nsource = \"10.0.0.1:443\"").unwrap();
        assert_eq!(
            rb.health[0].source,
            Some(HealthCheck::Tcp {
                host: "10.0.0.1".into(),
                port: 443
            })
        );
        let rb = health(
            "sql = \"mysql://m@10.0.0.2\"\nsql_password_file = \"pw.txt\"\nquery = \"SELECT 1\"\n\
             expect = \"1\"\nsource = \"mysql://m@10.0.0.1\"",
        )
        .unwrap();
        let Some(HealthCheck::Sql { url, .. }) = rb.health[0].source.clone() else {
            panic!("not sql")
        };
        assert_eq!(url, "mysql://m:s3cret@10.0.0.1");
        assert_eq!(
            health("tcp = \"10.0.0.2:443\"").unwrap().health[0].source,
            None
        );
        for (body, says) in [
            (
                "http = \"https://10.0.0.2/\"\nsource = \"http://10.0.0.1/\"",
                "the same scheme",
            ),
            (
                "http = \"http://10.0.0.2/\"\nsource = \"10.0.0.1:80\"",
                "not an http",
            ),
            (
                "tcp = \"10.0.0.2:443\"\nsource = \"nohost\"",
                "health[0].source",
            ),
            (
                "disk = \"/\"\nmin_free = \"1%\"\nsource = \"/x\"",
                "disk and memory",
            ),
            (
                "tcp = \"10.0.0.2:443\"\nsql_password_file = \"pw.txt\"",
                "applies only to a sql check",
            ),
        ] {
            let err = health(body).unwrap_err();
            assert!(err.contains(says), "{body}: {err}");
        }
    }

    #[test]
    fn parse_errors_are_one_line_with_the_line_number() {
        let err = parse(&format!("{MINIMAL}extra = 1\n")).unwrap_err();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("runbook rb.toml: line 6: database.extra: unknown field `extra`"),
            "{err}"
        );
    }

    #[test]
    fn password_from_file_and_missing() {
        let text = MINIMAL.replace(
            r#"replication_password = "secret""#,
            r#"replication_password_file = "pw.txt""#,
        );
        assert_eq!(
            parse(&text).unwrap().database.unwrap().replication_password,
            "s3cret"
        );
        let text = format!("{MINIMAL}source_password_file = \"pw.txt\"\n");
        let db = parse(&text).unwrap().database.unwrap();
        assert_eq!(db.source_password.as_deref(), Some("s3cret"));
        assert_eq!(db.replica_password, None);
        let text = format!("{MINIMAL}replica_password_file = \"gone.txt\"\n");
        assert!(
            parse(&text)
                .unwrap_err()
                .contains("database.replica_password_file: gone.txt")
        );
        let text = MINIMAL.replace(r#"replication_password = "secret""#, "");
        assert!(
            parse(&text)
                .unwrap_err()
                .contains("database.replication_password")
        );
        let text = MINIMAL.replace("pw.txt", "nope.txt").replace(
            r#"replication_password = "secret""#,
            r#"replication_password_file = "nope.txt""#,
        );
        assert!(parse(&text).unwrap_err().contains("nope.txt"));
    }

    #[test]
    fn bad_urls_and_same_server() {
        let err =
            parse(&MINIMAL.replace("mysql://root@127.0.0.1:3401", "127.0.0.1:3401")).unwrap_err();
        assert!(err.contains("database.source"), "{err}");
        let err = parse(&MINIMAL.replace("3402", "3401")).unwrap_err();
        assert!(err.contains("database.replica"), "{err}");
    }

    #[test]
    fn host_port() {
        assert_eq!(parse_host_port("db:3306"), Ok(("db".into(), 3306)));
        assert_eq!(parse_host_port("[::1]:3306"), Ok(("::1".into(), 3306)));
        assert!(parse_host_port(":3306").is_err());
        assert!(parse_host_port("db:0").is_err());
        assert!(parse_host_port("db:x").is_err());
    }

    #[test]
    fn table_patterns() {
        let cases = [
            ("app.*", "app", "users", true),
            ("app.*", "app2", "users", false),
            ("app.users", "app", "users", true),
            ("app.user*", "app", "users", true),
            ("*.t", "x", "t", true),
            ("a*c.t", "abc", "t", true),
            ("a*c.t", "ab", "t", false),
            ("a*b*c.t", "axxbyyc", "t", true),
        ];
        for (pattern, schema, table, want) in cases {
            let p = TablePattern::parse(pattern).unwrap();
            assert_eq!(
                p.matches(schema, table),
                want,
                "{pattern} vs {schema}.{table}"
            );
        }
    }
}
