//! `cutover health`: the `[[health]]` checks, each with a timeout and optional retries, and a
//! pass/fail table.
//!
//! Kinds: HTTP and HTTPS (status, a body substring or regex, a header), TCP connect, SQL (the first cell
//! of a query over `mysql_async`), disk free space (`statvfs`) and available memory
//! (`/proc/meminfo`). Measuring is here; every verdict is in [`verdict`], which does no IO.
//! Checks run one after the other, in runbook order, so that the table reads like the file.

pub mod verdict;

use mysql_async::prelude::Queryable;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::runbook::health::{Health, HealthCheck};

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// `http`, `tcp`, `sql`, `disk` or `memory`.
    pub kind: &'static str,
    /// What it looked at (URL, address, path).
    pub target: String,
    /// Whether it passed.
    pub ok: bool,
    /// Attempts made (1 + retries used).
    pub attempts: u32,
    /// What the last attempt found (the reason, when it failed).
    pub detail: String,
    /// Time from the first attempt to the verdict, in milliseconds.
    pub elapsed_ms: u64,
}

/// What `cutover health` found.
#[derive(Debug, Clone, Serialize)]
pub struct HealthReport {
    /// Every check, in runbook order.
    pub checks: Vec<CheckResult>,
    /// Whether all passed.
    pub ok: bool,
}

fn kind(check: &HealthCheck) -> (&'static str, String) {
    match check {
        HealthCheck::Http { url, .. } => ("http", url.clone()),
        HealthCheck::Tcp { host, port } if host.contains(':') => {
            ("tcp", format!("[{host}]:{port}"))
        }
        HealthCheck::Tcp { host, port } => ("tcp", format!("{host}:{port}")),
        HealthCheck::Sql { url, .. } => ("sql", redact(url)),
        HealthCheck::Disk { path, .. } => ("disk", path.display().to_string()),
        HealthCheck::Memory { .. } => ("memory", "/proc/meminfo".into()),
    }
}

/// A check in words: its kind and target (`http http://10.0.0.2/health`), no password.
pub fn describe(h: &Health) -> String {
    let (kind, target) = kind(&h.check);
    format!("{kind} {target}")
}

/// A `mysql://` URL without its password.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(_)) => {
            let (userinfo, host) = rest.rsplit_once('@').unwrap_or(("", rest));
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{host}")
        }
        _ => url.to_string(),
    }
}

/// Runs every check of `checks`.
pub async fn run(checks: &[Health]) -> HealthReport {
    let mut results = Vec::new();
    for h in checks {
        results.push(run_one(h).await);
    }
    HealthReport {
        ok: results.iter().all(|r| r.ok),
        checks: results,
    }
}

/// Runs one check, retrying up to `retries` times `interval` apart.
pub async fn run_one(h: &Health) -> CheckResult {
    let (kind, target) = kind(&h.check);
    let started = Instant::now();
    let mut attempts = 0;
    let outcome = loop {
        attempts += 1;
        let outcome = match tokio::time::timeout(h.timeout, attempt(&h.check)).await {
            Ok(o) => o,
            Err(_) => Err(format!("timed out after {:?}", h.timeout)),
        };
        if outcome.is_ok() || attempts > h.retries {
            break outcome;
        }
        tokio::time::sleep(h.interval).await;
    };
    CheckResult {
        name: h.name.clone(),
        kind,
        target,
        ok: outcome.is_ok(),
        attempts,
        detail: outcome.unwrap_or_else(|e| e),
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
}

/// One attempt: `Ok(detail)` or `Err(reason)`.
async fn attempt(check: &HealthCheck) -> Result<String, String> {
    match check {
        HealthCheck::Http {
            url,
            ca_pem,
            expect_status,
            body_contains,
            body_regex,
            header,
        } => {
            let target = verdict::parse_url(url)?;
            let regex = body_regex
                .as_deref()
                .map(regex::Regex::new)
                .transpose()
                .map_err(|e| e.to_string())?;
            let raw = if target.tls {
                https_get(target.clone(), ca_pem.clone()).await?
            } else {
                http_get(&target).await?
            };
            let response = verdict::parse_response(&raw)?;
            verdict::http_verdict(
                &response,
                &verdict::HttpWant {
                    status: *expect_status,
                    body_contains: body_contains.as_deref(),
                    body_regex: regex.as_ref(),
                    header: header.as_ref().map(|(n, v)| (n.as_str(), v.as_str())),
                },
            )
        }
        HealthCheck::Tcp { host, port } => {
            let started = Instant::now();
            tokio::net::TcpStream::connect((host.as_str(), *port))
                .await
                .map(|_| format!("connected in {} ms", started.elapsed().as_millis()))
                .map_err(|e| e.to_string())
        }
        HealthCheck::Sql { url, query, expect } => {
            let opts = mysql_async::Opts::from_url(url).map_err(|e| e.to_string())?;
            let mut conn = mysql_async::Conn::new(opts)
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let row: Option<mysql_async::Row> = conn
                .query_first(query.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.disconnect().await;
            let cell = row
                .and_then(|r| r.as_ref(0).cloned())
                .and_then(|v| match v {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(String::from_utf8_lossy(&b).into_owned()),
                    other => Some(other.as_sql(true).trim_matches('\'').to_string()),
                });
            verdict::sql_verdict(cell.as_deref(), expect)
        }
        HealthCheck::Disk { path, min_free } => {
            let path = path.clone();
            let stat = tokio::task::spawn_blocking(move || rustix::fs::statvfs(&path))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("statvfs: {e}"))?;
            let free = stat.f_bavail.saturating_mul(stat.f_frsize);
            let total = stat.f_blocks.saturating_mul(stat.f_frsize);
            verdict::amount_verdict("free", free, total, *min_free)
        }
        HealthCheck::Memory { min_available } => {
            let text = tokio::fs::read_to_string("/proc/meminfo")
                .await
                .map_err(|e| format!("/proc/meminfo: {e}"))?;
            let (available, total) = verdict::meminfo(&text)?;
            verdict::amount_verdict("available", available, total, *min_available)
        }
    }
}

/// GET over plain TCP, read until the server closes (at most 16 MiB).
async fn http_get(target: &verdict::Target) -> Result<Vec<u8>, String> {
    let mut s = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    s.write_all(verdict::http_request(target).as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut raw)
        .await
        .map_err(|e| e.to_string())?;
    Ok(raw)
}

/// GET over TLS (rustls, ring), trusting `ca_pem` or else the system's certificates. Runs on
/// the blocking pool with socket timeouts; the caller's timeout bounds it as well.
async fn https_get(target: verdict::Target, ca_pem: Option<String>) -> Result<Vec<u8>, String> {
    tokio::task::spawn_blocking(move || https_get_blocking(&target, ca_pem.as_deref()))
        .await
        .map_err(|e| e.to_string())?
}

fn https_get_blocking(target: &verdict::Target, ca_pem: Option<&str>) -> Result<Vec<u8>, String> {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    use std::io::{Read, Write};
    use std::sync::Arc;
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let cert = cert.map_err(|e| format!("ca_file: {e}"))?;
                roots.add(cert).map_err(|e| format!("ca_file: {e}"))?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err("no system CA certificates found (give ca_file)".into());
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name =
        ServerName::try_from(target.host.clone()).map_err(|e| format!("{}: {e}", target.host))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name).map_err(|e| e.to_string())?;
    let tcp = std::net::TcpStream::connect((target.host.as_str(), target.port))
        .map_err(|e| format!("cannot connect: {e}"))?;
    // Bounded by the caller's timeout too; these keep the blocking thread from lingering.
    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(60)));
    let _ = tcp.set_write_timeout(Some(std::time::Duration::from_secs(60)));
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(verdict::http_request(target).as_bytes())
        .map_err(|e| format!("TLS: {e}"))?;
    let mut raw = Vec::new();
    match Read::by_ref(&mut tls).take(16 << 20).read_to_end(&mut raw) {
        Ok(_) => {}
        // A server that closes without close_notify after a complete answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(format!("TLS: {e}")),
    }
    Ok(raw)
}
