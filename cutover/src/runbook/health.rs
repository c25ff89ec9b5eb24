//! `[[health]]`: the checks `cutover health` runs. Each entry has exactly one kind of check
//! (`http`, `tcp`, `sql`, `disk` or `memory`), a timeout, and optional retries.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Keys, ReadFile, RunbookError};

/// An amount of space: bytes, or a percentage of the total.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Amount {
    /// Bytes (`"10GB"`, `"512MiB"`, `"4096"`).
    Bytes(u64),
    /// Percent of the total (`"10%"`).
    Percent(f64),
}

impl Amount {
    /// Parses `10%`, `512MiB`, `10GB`, `1.5G` or a plain byte count.
    pub fn parse(s: &str) -> Result<Amount, String> {
        let t = s.trim();
        let bad = || format!("{s:?} is not an amount like \"10%\", \"512MiB\" or \"10GB\"");
        if let Some(p) = t.strip_suffix('%') {
            let p: f64 = p.trim().parse().map_err(|_| bad())?;
            if !(0.0..=100.0).contains(&p) {
                return Err(bad());
            }
            return Ok(Amount::Percent(p));
        }
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number.parse().map_err(|_| bad())?;
        let factor: f64 = match unit.trim() {
            "" | "B" => 1.0,
            "K" | "KB" => 1e3,
            "M" | "MB" => 1e6,
            "G" | "GB" => 1e9,
            "T" | "TB" => 1e12,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(bad()),
        };
        Ok(Amount::Bytes((number * factor) as u64))
    }
}

/// What one health check looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthCheck {
    /// An HTTP(S) GET.
    Http {
        /// The URL, `http://` or `https://`.
        url: String,
        /// For `https://`: the PEM certificates to trust instead of the system's (`ca_file`).
        ca_pem: Option<String>,
        /// The status the answer must have.
        expect_status: u16,
        /// A substring the body must contain.
        body_contains: Option<String>,
        /// A regular expression (Rust `regex` syntax) the body must match; checked here.
        body_regex: Option<String>,
        /// A header the answer must have: name (any case) and exact value.
        header: Option<(String, String)>,
    },
    /// A TCP connect to `HOST:PORT`.
    Tcp {
        /// Host.
        host: String,
        /// Port.
        port: u16,
    },
    /// A query whose first cell must equal `expect`.
    Sql {
        /// `mysql://user:password@host:port/db`.
        url: String,
        /// The query.
        query: String,
        /// The expected first cell, as text.
        expect: String,
    },
    /// Free space on the filesystem of `path`.
    Disk {
        /// A path on the filesystem.
        path: PathBuf,
        /// The least free space that passes.
        min_free: Amount,
    },
    /// Available memory (`MemAvailable`).
    Memory {
        /// The least available memory that passes.
        min_available: Amount,
    },
}

/// One `[[health]]` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Its name in the report.
    pub name: String,
    /// What it checks.
    pub check: HealthCheck,
    /// How long one attempt may take.
    pub timeout: Duration,
    /// How many more attempts after a failed one.
    pub retries: u32,
    /// The pause between attempts.
    pub interval: Duration,
    /// The same check aimed at the source (`source = ...`), which `cutover preflight` runs
    /// and requires to pass; `None` when the runbook gives no source target.
    pub source: Option<HealthCheck>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    name: String,
    http: Option<String>,
    expect_status: Option<u16>,
    body_contains: Option<String>,
    body_regex: Option<String>,
    header: Option<String>,
    ca_file: Option<PathBuf>,
    tcp: Option<String>,
    sql: Option<String>,
    sql_password_file: Option<PathBuf>,
    query: Option<String>,
    expect: Option<String>,
    disk: Option<PathBuf>,
    min_free: Option<String>,
    memory: Option<String>,
    timeout: Option<String>,
    retries: Option<u32>,
    interval: Option<String>,
    source: Option<String>,
}

pub(super) fn validate(
    h: RawHealth,
    keys: &Keys<'_>,
    read_file: ReadFile<'_>,
) -> Result<Health, RunbookError> {
    let name = keys.non_empty("name", h.name)?;
    let kinds = [
        h.http.is_some(),
        h.tcp.is_some(),
        h.sql.is_some(),
        h.disk.is_some(),
        h.memory.is_some(),
    ];
    if kinds.iter().filter(|k| **k).count() != 1 {
        return Err(keys.err(
            "",
            format!("{name:?}: give exactly one of http, tcp, sql, disk, memory"),
        ));
    }
    let only_for = |key: &str, present: bool, kind: &str| {
        if present {
            Err(keys.err(key, format!("applies only to a {kind} check")))
        } else {
            Ok(())
        }
    };
    if h.sql.is_none() && h.sql_password_file.is_some() {
        return Err(keys.err("sql_password_file", "applies only to a sql check"));
    }
    let password = h
        .sql_password_file
        .as_ref()
        .map(|file| keys.secret_file("sql_password_file", file, read_file))
        .transpose()?;
    let check = if let Some(url) = h.http {
        http_url(keys, "http", &url)?;
        let ca_pem = match &h.ca_file {
            None => None,
            Some(_) if !url.starts_with("https://") => {
                return Err(keys.err("ca_file", "applies only to an https:// check"));
            }
            Some(file) => {
                let pem = keys.secret_file("ca_file", file, read_file)?;
                use rustls::pki_types::{CertificateDer, pem::PemObject};
                let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| keys.err("ca_file", format!("{}: {e}", file.display())))?;
                if certs.is_empty() {
                    return Err(keys.err(
                        "ca_file",
                        format!("{}: no PEM certificate in it", file.display()),
                    ));
                }
                Some(pem)
            }
        };
        if let Some(r) = &h.body_regex {
            regex::Regex::new(r).map_err(|e| {
                keys.err(
                    "body_regex",
                    format!("{r:?} is not a regular expression: {e}"),
                )
            })?;
        }
        let header = h
            .header
            .map(|s| match s.split_once(':') {
                Some((n, v)) if !n.trim().is_empty() => {
                    Ok((n.trim().to_string(), v.trim().to_string()))
                }
                _ => Err(keys.err("header", format!("{s:?} is not \"Name: value\""))),
            })
            .transpose()?;
        HealthCheck::Http {
            url,
            ca_pem,
            expect_status: h.expect_status.unwrap_or(200),
            body_contains: h.body_contains,
            body_regex: h.body_regex,
            header,
        }
    } else {
        only_for("expect_status", h.expect_status.is_some(), "http")?;
        only_for("body_contains", h.body_contains.is_some(), "http")?;
        only_for("body_regex", h.body_regex.is_some(), "http")?;
        only_for("ca_file", h.ca_file.is_some(), "https")?;
        only_for("header", h.header.is_some(), "http")?;
        if let Some(tcp) = h.tcp {
            let (host, port) = keys.host_port("tcp", Some(&tcp))?.unwrap_or_default();
            HealthCheck::Tcp { host, port }
        } else if let Some(url) = h.sql {
            let url = sql_url(keys, "sql", url, password.as_deref())?;
            HealthCheck::Sql {
                url,
                query: keys.non_empty(
                    "query",
                    h.query
                        .ok_or_else(|| keys.err("query", "is required for sql"))?,
                )?,
                expect: h
                    .expect
                    .ok_or_else(|| keys.err("expect", "is required for sql"))?,
            }
        } else if let Some(path) = h.disk {
            let min_free = h
                .min_free
                .ok_or_else(|| keys.err("min_free", "is required for disk"))?;
            HealthCheck::Disk {
                path,
                min_free: Amount::parse(&min_free).map_err(|m| keys.err("min_free", m))?,
            }
        } else {
            let memory = h.memory.unwrap_or_default();
            HealthCheck::Memory {
                min_available: Amount::parse(&memory).map_err(|m| keys.err("memory", m))?,
            }
        }
    };
    let source = h
        .source
        .map(|target| aimed_at(&check, target, keys, password.as_deref()))
        .transpose()?;
    Ok(Health {
        name,
        source,
        check,
        timeout: keys.positive_duration("timeout", h.timeout.as_deref(), Duration::from_secs(5))?,
        retries: h.retries.unwrap_or(0),
        interval: keys.duration("interval", h.interval.as_deref(), Duration::from_secs(1))?,
    })
}

fn http_url(keys: &Keys<'_>, key: &str, url: &str) -> Result<(), RunbookError> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(keys.err(key, format!("{url:?} is not an http:// or https:// URL")))
    }
}

fn sql_url(
    keys: &Keys<'_>,
    key: &str,
    url: String,
    password: Option<&str>,
) -> Result<String, RunbookError> {
    if !url.starts_with("mysql://") && !url.starts_with("mariadb://") {
        return Err(keys.err(key, format!("{url:?} is not a mysql:// URL")));
    }
    Ok(match password {
        Some(p) => with_password(&url, p),
        None => url,
    })
}

/// `check` with its target replaced by `target` (`source = ...`): a URL for http (of the same
/// scheme, so that `ca_file` still applies), `HOST:PORT` for tcp, a `mysql://` URL for sql
/// (`sql_password_file` applies to it too). disk and memory look at this host, so they have
/// no other target.
fn aimed_at(
    check: &HealthCheck,
    target: String,
    keys: &Keys<'_>,
    password: Option<&str>,
) -> Result<HealthCheck, RunbookError> {
    let mut aimed = check.clone();
    match &mut aimed {
        HealthCheck::Http { url, .. } => {
            http_url(keys, "source", &target)?;
            if url.starts_with("https://") != target.starts_with("https://") {
                return Err(keys.err(
                    "source",
                    format!("{target:?} must use the same scheme as http = {url:?}"),
                ));
            }
            *url = target;
        }
        HealthCheck::Tcp { host, port } => {
            (*host, *port) = keys.host_port("source", Some(&target))?.unwrap_or_default();
        }
        HealthCheck::Sql { url, .. } => *url = sql_url(keys, "source", target, password)?,
        HealthCheck::Disk { .. } | HealthCheck::Memory { .. } => {
            return Err(keys.err(
                "source",
                "applies to http, tcp and sql checks (disk and memory look at this host)",
            ));
        }
    }
    Ok(aimed)
}

/// `mysql://user@host` with `password` put in (percent-encoding the characters a URL needs).
fn with_password(url: &str, password: &str) -> String {
    let encoded: String = password
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (userinfo, host) = rest.split_once('@').unwrap_or(("", rest));
    let user = userinfo.split(':').next().unwrap_or("");
    format!("{scheme}://{user}:{encoded}@{host}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts() {
        assert_eq!(Amount::parse("10%"), Ok(Amount::Percent(10.0)));
        assert_eq!(Amount::parse("512MiB"), Ok(Amount::Bytes(512 << 20)));
        assert_eq!(Amount::parse("10GB"), Ok(Amount::Bytes(10_000_000_000)));
        assert_eq!(Amount::parse("4096"), Ok(Amount::Bytes(4096)));
        assert!(Amount::parse("101%").is_err());
        assert!(Amount::parse("lots").is_err());
        assert!(Amount::parse("").is_err());
    }

    #[test]
    fn password_goes_into_the_url() {
        assert_eq!(
            with_password("mysql://app@127.0.0.1:3306/db", "p@ss"),
            "mysql://app:p%40ss@127.0.0.1:3306/db"
        );
    }
}
