//! `[database]`: the source/replica pair of `cutover db` and how to switch between them.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Keys, ReadFile, RunbookError, parse_duration, parse_host_port};

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
    /// `cutover run` promotes with `--reverse` (the default): the old source then replicates
    /// from the new primary, so a rollback after the switch keeps the writes the new primary
    /// took. `false` is for a pair where that cannot run (no binary log on the replica); a
    /// rollback then switches back only while the new primary holds nothing the old source
    /// lacks.
    pub reverse: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
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
    reverse: Option<bool>,
}

pub(super) fn validate(
    d: RawDatabase,
    keys: &Keys<'_>,
    read_file: ReadFile<'_>,
) -> Result<Database, RunbookError> {
    let invalid = |key: &str, message: String| keys.err(key, message);
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
        reverse: d.reverse.unwrap_or(true),
    })
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
