//! The runbook: the TOML file that drives every `cutover` command.
//!
//! This module parses and validates the file and nothing else: it opens no connection and reads
//! no clock. Every error names the key it is about (`database.catch_up_timeout: ...`), so that
//! the operator knows which line to fix. Only the `[database]` table is modelled in detail; the
//! other tables of the design (`[loadbalancer]`, `[dns]`, `[sync]`, `[[health]]`,
//! `[[service]]`) are accepted as opaque TOML so that one runbook serves every command, and will
//! be modelled by the commands that use them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

/// A parsed and validated runbook.
#[derive(Debug, Clone)]
pub struct Runbook {
    /// The `[database]` table, if present.
    pub database: Option<Database>,
}

/// The `[database]` table: the pair of servers and how to switch between them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Database {
    /// URL of the current primary, `mysql://user:password@host:port`.
    pub source: String,
    /// URL of the destination, the replica to be promoted.
    pub replica: String,
    /// The source's password from `source_password_file`, overriding the URL's.
    pub source_password: Option<String>,
    /// The replica's password from `replica_password_file`, overriding the URL's.
    pub replica_password: Option<String>,
    /// The replication account created on the source.
    pub replication_user: String,
    /// Its password (from `replication_password` or `replication_password_file`).
    pub replication_password: String,
    /// How the replica reaches the source (`HOST:PORT`); defaults to the source URL's host/port.
    pub source_address_for_replica: Option<(String, u16)>,
    /// How the old source reaches the new primary for `promote --reverse` (`HOST:PORT`);
    /// defaults to the replica URL's host/port.
    pub replica_address_for_source: Option<(String, u16)>,
    /// How long the replica may take to reach the source's final position during `promote`.
    pub catch_up_timeout: Duration,
    /// How long clients of the fenced source get to finish before their sessions are ended.
    pub fence_grace: Duration,
    /// How long to wait for a server to accept a connection.
    pub connect_timeout: Duration,
    /// Tables checksummed by `verify`: `schema.table`, where either part may use `*`.
    pub verify_tables: Vec<String>,
    /// Rows per checksum chunk in `verify`.
    pub chunk_rows: u64,
    /// `promote` fences the source only once the replica is at most this many transactions
    /// behind (GTID dialects), waiting up to `catch_up_timeout` for it; the lag at the fence
    /// is what the write-unavailable window has to absorb.
    pub max_lag_at_fence: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRunbook {
    database: Option<RawDatabase>,
    // Accepted but not modelled yet: the commands that use them will.
    #[allow(dead_code)] // kept so that `deny_unknown_fields` accepts the design's tables
    loadbalancer: Option<toml::Table>,
    #[allow(dead_code)]
    dns: Option<toml::Table>,
    #[allow(dead_code)]
    sync: Option<toml::Table>,
    #[allow(dead_code)]
    health: Option<Vec<toml::Table>>,
    #[allow(dead_code)]
    service: Option<Vec<toml::Table>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    source: String,
    replica: String,
    source_password_file: Option<PathBuf>,
    replica_password_file: Option<PathBuf>,
    replication_user: Option<String>,
    replication_password: Option<String>,
    replication_password_file: Option<PathBuf>,
    source_address_for_replica: Option<String>,
    replica_address_for_source: Option<String>,
    catch_up_timeout: Option<String>,
    fence_grace: Option<String>,
    connect_timeout: Option<String>,
    #[serde(default)]
    verify_tables: Vec<String>,
    chunk_rows: Option<u64>,
    max_lag_at_fence: Option<u64>,
}

impl Runbook {
    /// Reads and validates the runbook at `path`. A relative `replication_password_file` is
    /// resolved against the runbook's directory.
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
    /// runbook; passing it in keeps this function free of IO.
    pub fn parse(
        text: &str,
        path: &Path,
        read_file: &dyn Fn(&Path) -> Result<String, String>,
    ) -> Result<Runbook, RunbookError> {
        let raw: RawRunbook = toml::from_str(text).map_err(|e| {
            // The parser's own rendering spans several lines with a caret diagram; keep the
            // line number and the message, which names the key.
            let line = e
                .span()
                .map(|span| text[..span.start.min(text.len())].matches('\n').count() + 1);
            RunbookError::Parse {
                path: path.to_path_buf(),
                message: match line {
                    Some(line) => format!("line {line}: {}", e.message()),
                    None => e.message().to_string(),
                },
            }
        })?;
        let invalid = |key: &str, message: String| RunbookError::Invalid {
            path: path.to_path_buf(),
            key: format!("database.{key}"),
            message,
        };
        let database = match raw.database {
            None => None,
            Some(d) => Some(validate_database(d, &invalid, read_file)?),
        };
        Ok(Runbook { database })
    }

    /// The `[database]` table, or an error naming it when it is missing.
    pub fn database(&self, path: &Path) -> Result<&Database, RunbookError> {
        self.database.as_ref().ok_or_else(|| RunbookError::Invalid {
            path: path.to_path_buf(),
            key: "database".into(),
            message: "the table is missing; `cutover db` needs it".into(),
        })
    }
}

fn validate_database(
    d: RawDatabase,
    invalid: &dyn Fn(&str, String) -> RunbookError,
    read_file: &dyn Fn(&Path) -> Result<String, String>,
) -> Result<Database, RunbookError> {
    for (key, url) in [("source", &d.source), ("replica", &d.replica)] {
        if !url.starts_with("mysql://") && !url.starts_with("mariadb://") {
            return Err(invalid(
                key,
                format!("expected a URL like mysql://user:password@host:3306, got {url:?}"),
            ));
        }
    }
    if d.source == d.replica {
        return Err(invalid(
            "replica",
            "is the same server as database.source".into(),
        ));
    }
    let replication_user = d.replication_user.unwrap_or_else(|| "repl".into());
    if replication_user.is_empty() || replication_user.len() > 80 {
        return Err(invalid(
            "replication_user",
            "must be 1 to 80 characters".into(),
        ));
    }
    let replication_password = match (d.replication_password, d.replication_password_file) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "replication_password_file",
                "give either replication_password or replication_password_file, not both".into(),
            ));
        }
        (Some(p), None) => p,
        (None, Some(file)) => read_file(&file)
            .map_err(|e| {
                invalid(
                    "replication_password_file",
                    format!("{}: {e}", file.display()),
                )
            })?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => {
            return Err(invalid(
                "replication_password",
                "is required (or replication_password_file)".into(),
            ));
        }
    };
    if replication_password.is_empty() {
        return Err(invalid("replication_password", "must not be empty".into()));
    }
    let secret = |key: &str, file: Option<PathBuf>| -> Result<Option<String>, RunbookError> {
        file.map(|f| {
            read_file(&f)
                .map(|p| p.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| invalid(key, format!("{}: {e}", f.display())))
        })
        .transpose()
    };
    let source_password = secret("source_password_file", d.source_password_file)?;
    let replica_password = secret("replica_password_file", d.replica_password_file)?;
    let address = |key: &str, v: Option<String>| -> Result<Option<(String, u16)>, RunbookError> {
        v.map(|s| parse_host_port(&s).map_err(|m| invalid(key, m)))
            .transpose()
    };
    let duration = |key: &str, v: Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).map_err(|m| invalid(key, m)),
    };
    let catch_up_timeout = duration(
        "catch_up_timeout",
        d.catch_up_timeout,
        Duration::from_secs(30),
    )?;
    if catch_up_timeout < Duration::from_millis(1) {
        return Err(invalid(
            "catch_up_timeout",
            "must be at least 1ms (0 would mean \"wait forever\" on MySQL)".into(),
        ));
    }
    let chunk_rows = d.chunk_rows.unwrap_or(10_000);
    if chunk_rows == 0 {
        return Err(invalid("chunk_rows", "must be at least 1".into()));
    }
    for (i, pattern) in d.verify_tables.iter().enumerate() {
        TablePattern::parse(pattern).map_err(|m| invalid(&format!("verify_tables[{i}]"), m))?;
    }
    Ok(Database {
        source: d.source,
        replica: d.replica,
        source_password,
        replica_password,
        replication_user,
        replication_password,
        source_address_for_replica: address(
            "source_address_for_replica",
            d.source_address_for_replica,
        )?,
        replica_address_for_source: address(
            "replica_address_for_source",
            d.replica_address_for_source,
        )?,
        catch_up_timeout,
        fence_grace: duration("fence_grace", d.fence_grace, Duration::from_millis(200))?,
        connect_timeout: duration(
            "connect_timeout",
            d.connect_timeout,
            Duration::from_secs(10),
        )?,
        verify_tables: d.verify_tables,
        chunk_rows,
        max_lag_at_fence: d.max_lag_at_fence.unwrap_or(100),
    })
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

/// One `verify_tables` entry: `schema.table`, with `*` matching any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TablePattern {
    /// The schema part.
    pub schema: String,
    /// The table part.
    pub table: String,
}

impl TablePattern {
    /// Parses `schema.table`.
    pub fn parse(s: &str) -> Result<TablePattern, String> {
        match s.split_once('.') {
            Some((schema, table)) if !schema.is_empty() && !table.is_empty() => Ok(TablePattern {
                schema: schema.to_string(),
                table: table.to_string(),
            }),
            _ => Err(format!("{s:?} is not schema.table (e.g. \"app.*\")")),
        }
    }

    /// Whether `schema.table` is selected by this pattern.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        glob(&self.schema, schema) && glob(&self.table, table)
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first) || s.len() < first.len() + last.len() || !s.ends_with(last) {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for part in &parts[1..parts.len() - 1] {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Runbook, String> {
        Runbook::parse(text, Path::new("rb.toml"), &|p| {
            if p == Path::new("pw.txt") {
                Ok("s3cret\n".into())
            } else {
                Err("No such file or directory".into())
            }
        })
        .map_err(|e| e.to_string())
    }

    const MINIMAL: &str = r#"
[database]
source = "mysql://root@127.0.0.1:3401"
replica = "mysql://root@127.0.0.1:3402"
replication_password = "secret"
"#;

    #[test]
    fn design_example_is_accepted() {
        let text = r#"
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

[dns]
server = "127.0.0.1:5353"
ttl = 60

[sync]
control = "/run/syncd/push.sock"

[[health]]
name = "web"
expect_status = 200

[[service]]
name = "app"
stop  = "systemctl stop app"
"#;
        let rb = parse(text).unwrap();
        let db = rb.database.unwrap();
        assert_eq!(db.replication_user, "repl");
        assert_eq!(db.catch_up_timeout, Duration::from_secs(30));
        assert_eq!(
            db.source_address_for_replica,
            Some(("127.0.0.1".into(), 3401))
        );
        assert_eq!(db.verify_tables, vec!["app.*".to_string()]);
        assert_eq!(db.fence_grace, Duration::from_millis(200));
    }

    #[test]
    fn defaults_apply() {
        let db = parse(MINIMAL).unwrap().database.unwrap();
        assert_eq!(db.replication_user, "repl");
        assert_eq!(db.chunk_rows, 10_000);
        assert_eq!(db.max_lag_at_fence, 100);
        assert_eq!(db.replica_address_for_source, None);
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
    fn parse_errors_are_one_line_with_the_line_number() {
        let err = parse(&format!("{MINIMAL}extra = 1\n")).unwrap_err();
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.starts_with("runbook rb.toml: line 6: unknown field `extra`"),
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
