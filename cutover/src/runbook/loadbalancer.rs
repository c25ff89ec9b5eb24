//! `[loadbalancer]`: the HAProxy whose runtime API `cutover lb` drives.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{Keys, RunbookError, parse_host_port};

/// Where HAProxy's runtime API listens (`stats socket` in its configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminSocket {
    /// A unix socket; a relative path in the runbook is joined to the runbook's directory.
    Unix(PathBuf),
    /// A TCP listener, `HOST:PORT`.
    Tcp {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
    },
}

impl fmt::Display for AdminSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminSocket::Unix(path) => write!(f, "{}", path.display()),
            AdminSocket::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            AdminSocket::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// The `[loadbalancer]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadBalancer {
    /// The runtime API socket; it must be at `level admin`.
    pub admin_socket: AdminSocket,
    /// The HAProxy backend that holds both servers.
    pub backend: String,
    /// The server traffic moves away from (drained).
    pub source_server: String,
    /// The server traffic moves to (made ready).
    pub destination_server: String,
    /// How long `drain` waits for the source's sessions to end before it sets `maint` anyway.
    pub drain_timeout: Duration,
    /// How long `ready` waits for HAProxy's health check to report the destination UP.
    pub ready_timeout: Duration,
    /// How often `show stat` is polled while waiting.
    pub poll_interval: Duration,
    /// How long one runtime API command may take to answer.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLoadBalancer {
    admin_socket: String,
    backend: String,
    source_server: String,
    destination_server: String,
    drain_timeout: Option<String>,
    ready_timeout: Option<String>,
    poll_interval: Option<String>,
    timeout: Option<String>,
}

/// A proxy or server name as the runtime API takes it: one word without `/`.
fn proxy_name(keys: &Keys<'_>, key: &str, value: String) -> Result<String, RunbookError> {
    if value.is_empty() || value.contains('/') || value.contains(char::is_whitespace) {
        return Err(keys.err(
            key,
            format!("{value:?} is not a HAProxy name (one word, no '/')"),
        ));
    }
    Ok(value)
}

pub(super) fn validate(
    l: RawLoadBalancer,
    keys: &Keys<'_>,
    base: &Path,
) -> Result<LoadBalancer, RunbookError> {
    let admin_socket = if l.admin_socket.contains('/') {
        AdminSocket::Unix(base.join(&l.admin_socket))
    } else {
        let (host, port) = parse_host_port(&l.admin_socket).map_err(|_| {
            keys.err(
                "admin_socket",
                format!(
                    "{:?} is neither a unix socket path (with a '/') nor HOST:PORT",
                    l.admin_socket
                ),
            )
        })?;
        AdminSocket::Tcp { host, port }
    };
    let backend = proxy_name(keys, "backend", l.backend)?;
    let source_server = proxy_name(keys, "source_server", l.source_server)?;
    let destination_server = proxy_name(keys, "destination_server", l.destination_server)?;
    if source_server == destination_server {
        return Err(keys.err(
            "destination_server",
            "is the same server as loadbalancer.source_server",
        ));
    }
    Ok(LoadBalancer {
        admin_socket,
        backend,
        source_server,
        destination_server,
        drain_timeout: keys.duration(
            "drain_timeout",
            l.drain_timeout.as_deref(),
            Duration::from_secs(30),
        )?,
        ready_timeout: keys.positive_duration(
            "ready_timeout",
            l.ready_timeout.as_deref(),
            Duration::from_secs(30),
        )?,
        poll_interval: keys.positive_duration(
            "poll_interval",
            l.poll_interval.as_deref(),
            Duration::from_millis(200),
        )?,
        timeout: keys.positive_duration("timeout", l.timeout.as_deref(), Duration::from_secs(5))?,
    })
}
