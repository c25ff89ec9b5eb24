//! `cutover dns`: the record's switch by RFC 2136 UPDATE, signed with TSIG, and the watch of
//! its propagation.
//!
//! - [`lower_ttl`]: rewrites the record's RRset (same addresses) with `low_ttl`, on the
//!   prerequisite that it still holds what was read, and says when the old TTL will have
//!   expired in every cache.
//! - [`switch`]: replaces the A/AAAA RRset with `destination_address`, on the prerequisite that
//!   it holds exactly `source_address`: a record changed behind our back fails with NXRRSET
//!   and nothing is changed.
//! - After either, [`propagation`] polls the primary, every `check_servers` entry and the
//!   zone's NS set until all answer the new data and their SOA serials agree, or
//!   `propagation_timeout` passes; the report lists who still lags and why.
//! - [`status`]: every server's answer, TTL and SOA serial.
//!
//! Messages, signing and verdicts are in [`msg`], which does no IO and reads no clock; this
//! module sends (UDP for queries, falling back to TCP on truncation; TCP for updates) and keeps
//! time. Every error names the server.

pub mod msg;

use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use hickory_proto::rr::{Name, RecordType};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::runbook::Dns;
use msg::{Answer, Laggard, Observation, Rejection, Target};

/// Why a `dns` command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// A socket operation failed.
    #[error("DNS server {server}: {error}")]
    Io {
        /// The server.
        server: SocketAddr,
        /// The cause.
        error: std::io::Error,
    },
    /// The server did not answer in time.
    #[error("DNS server {server} did not answer {what} within {timeout:?}")]
    Timeout {
        /// The server.
        server: SocketAddr,
        /// What was asked.
        what: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The answer could not be read.
    #[error("DNS server {server}: {message}")]
    Malformed {
        /// The server.
        server: SocketAddr,
        /// What is wrong.
        message: String,
    },
    /// The primary refused the update; nothing was changed.
    #[error("DNS server {server} rejected the update of {record}: {code}{hint}")]
    Rejected {
        /// The primary.
        server: SocketAddr,
        /// The record.
        record: String,
        /// The rcode (and TSIG error): `NOTAUTH/BADKEY`, `REFUSED`, `NXRRSET`, ...
        code: String,
        /// What it most likely means.
        hint: String,
    },
    /// The record has no address RRset to rewrite.
    #[error("DNS server {server}: {record} has no {rtype} record ({rcode})")]
    NoRecord {
        /// The primary.
        server: SocketAddr,
        /// The record.
        record: String,
        /// A or AAAA.
        rtype: String,
        /// The answer's rcode.
        rcode: String,
    },
    /// The message could not be built or signed.
    #[error("{0}")]
    Message(String),
}

/// One server's view of the record, for `status` and the propagation table.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    /// `IP:PORT`.
    pub server: String,
    /// `primary`, `check`, or `ns NAME`.
    pub role: String,
    /// Its rcode for the record's query, when it answered.
    pub rcode: Option<String>,
    /// The addresses it answers.
    pub addresses: Vec<IpAddr>,
    /// Their TTL.
    pub ttl: Option<u32>,
    /// Its SOA serial of the zone.
    pub serial: Option<u32>,
    /// Why it could not be asked, if so.
    pub error: Option<String>,
}

/// What `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The record.
    pub record: String,
    /// Every server asked.
    pub servers: Vec<ServerView>,
    /// Whether all answered, with the same addresses and the same serial.
    pub consistent: bool,
}

/// How propagation went.
#[derive(Debug, Clone, Serialize)]
pub struct Propagation {
    /// Whether every server answered the new data with the same serial.
    pub done: bool,
    /// How long it took (or how long we waited).
    pub waited_ms: u64,
    /// Polling rounds.
    pub rounds: u32,
    /// The servers still lagging at the end (empty when done).
    pub laggards: Vec<Laggard>,
    /// Every server's view in the last round.
    pub servers: Vec<ServerView>,
}

/// What `switch` or `lower-ttl` did.
#[derive(Debug, Clone, Serialize)]
pub struct ChangeReport {
    /// `switch` or `lower-ttl`.
    pub command: &'static str,
    /// The record.
    pub record: String,
    /// The primary that took the update.
    pub server: String,
    /// Its addresses before.
    pub before: Vec<IpAddr>,
    /// Their TTL before.
    pub before_ttl: Option<u32>,
    /// The addresses after.
    pub after: Vec<IpAddr>,
    /// The TTL after.
    pub ttl: u32,
    /// Whether the record already was so (no update was sent).
    pub already: bool,
    /// The primary's SOA serial after the update.
    pub serial: Option<u32>,
    /// `lower-ttl`: seconds after which no cache holds the old TTL any more.
    pub old_ttl_expires_in_s: Option<u32>,
    /// The propagation watch.
    pub propagation: Propagation,
    /// True when propagation completed.
    pub ok: bool,
}

fn random_id() -> u16 {
    // RandomState is seeded from the OS per instance; 16 bits of it are enough for a query id.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0);
    (h.finish() & 0xffff) as u16
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends `bytes` over UDP and returns the answer with id `id` (TCP when it is truncated).
async fn exchange(
    server: SocketAddr,
    bytes: &[u8],
    id: u16,
    timeout: Duration,
    what: &str,
) -> Result<Vec<u8>, DnsError> {
    let io = |error| DnsError::Io { server, error };
    let local: SocketAddr = if server.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        ([0u16; 8], 0).into()
    };
    let udp = async {
        let socket = tokio::net::UdpSocket::bind(local).await.map_err(io)?;
        socket.connect(server).await.map_err(io)?;
        socket.send(bytes).await.map_err(io)?;
        let mut buf = vec![0u8; 65_535];
        loop {
            let n = socket.recv(&mut buf).await.map_err(io)?;
            // Ignore stray datagrams: only our id is our answer.
            if n >= 12 && u16::from_be_bytes([buf[0], buf[1]]) == id {
                buf.truncate(n);
                return Ok::<_, DnsError>(buf);
            }
        }
    };
    let answer = tokio::time::timeout(timeout, udp)
        .await
        .map_err(|_| DnsError::Timeout {
            server,
            what: what.to_string(),
            timeout,
        })??;
    // TC bit: ask again over TCP.
    if answer.get(2).is_some_and(|b| b & 0x02 != 0) {
        return exchange_tcp(server, bytes, timeout, what).await;
    }
    Ok(answer)
}

/// Sends `bytes` over TCP (2-byte length prefix) and reads one answer.
async fn exchange_tcp(
    server: SocketAddr,
    bytes: &[u8],
    timeout: Duration,
    what: &str,
) -> Result<Vec<u8>, DnsError> {
    let io = |error| DnsError::Io { server, error };
    let tcp = async {
        let mut s = tokio::net::TcpStream::connect(server).await.map_err(io)?;
        let len =
            u16::try_from(bytes.len()).map_err(|_| DnsError::Message("message too long".into()))?;
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(bytes);
        s.write_all(&framed).await.map_err(io)?;
        let n = s.read_u16().await.map_err(io)?;
        let mut buf = vec![0u8; usize::from(n)];
        s.read_exact(&mut buf).await.map_err(io)?;
        Ok::<_, DnsError>(buf)
    };
    tokio::time::timeout(timeout, tcp)
        .await
        .map_err(|_| DnsError::Timeout {
            server,
            what: what.to_string(),
            timeout,
        })?
}

fn names(dns: &Dns) -> Result<(Name, Name, RecordType), DnsError> {
    Ok((
        msg::name(&dns.zone).map_err(DnsError::Message)?,
        msg::name(&dns.record).map_err(DnsError::Message)?,
        msg::address_type(dns.source_address),
    ))
}

async fn ask(
    server: SocketAddr,
    record: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> Result<Answer, DnsError> {
    let id = random_id();
    let q = msg::query(id, record, rtype).map_err(DnsError::Message)?;
    let what = format!("{record} {rtype}");
    let answer = exchange(server, &q, id, timeout, &what).await?;
    msg::parse_answer(&answer, id, record, rtype)
        .map_err(|message| DnsError::Malformed { server, message })
}

async fn serial(
    server: SocketAddr,
    zone: &Name,
    timeout: Duration,
) -> Result<Option<u32>, DnsError> {
    let id = random_id();
    let q = msg::query(id, zone, RecordType::SOA).map_err(DnsError::Message)?;
    let answer = exchange(server, &q, id, timeout, &format!("{zone} SOA")).await?;
    msg::parse_soa_serial(&answer, id).map_err(|message| DnsError::Malformed { server, message })
}

/// Where to look: the primary, `check_servers`, then the zone's NS set (from the primary, with
/// the addresses its answer carries, at `ns_port`). An NS without a known address is listed
/// with its name, so it shows as lagging rather than being skipped.
async fn watched(
    dns: &Dns,
    zone: &Name,
) -> Result<Vec<(Result<SocketAddr, String>, String)>, DnsError> {
    let mut out: Vec<(Result<SocketAddr, String>, String)> =
        vec![(Ok(dns.server), "primary".into())];
    for s in &dns.check_servers {
        out.push((Ok(*s), "check".into()));
    }
    if dns.check_ns {
        let id = random_id();
        let q = msg::query(id, zone, RecordType::NS).map_err(DnsError::Message)?;
        let answer = exchange(dns.server, &q, id, dns.timeout, &format!("{zone} NS")).await?;
        let ns = msg::parse_ns(&answer, id).map_err(|message| DnsError::Malformed {
            server: dns.server,
            message,
        })?;
        for (name, addrs) in ns {
            if addrs.is_empty() {
                out.push((
                    Err(format!("no address for NS {name} in the zone's answer")),
                    format!("ns {name}"),
                ));
            }
            for a in addrs {
                out.push((Ok(SocketAddr::new(a, dns.ns_port)), format!("ns {name}")));
            }
        }
    }
    let mut seen = Vec::new();
    out.retain(|(addr, _)| match addr {
        Ok(a) if seen.contains(a) => false,
        Ok(a) => {
            seen.push(*a);
            true
        }
        Err(_) => true,
    });
    Ok(out)
}

async fn observe(
    targets: &[(Result<SocketAddr, String>, String)],
    zone: &Name,
    record: &Name,
    rtype: RecordType,
    timeout: Duration,
) -> (Vec<Observation>, Vec<ServerView>) {
    let mut observations = Vec::new();
    let mut views = Vec::new();
    for (addr, role) in targets {
        let (server, answer, serial) = match addr {
            Err(e) => (role.clone(), Err(e.clone()), Err(e.clone())),
            Ok(a) => (
                a.to_string(),
                ask(*a, record, rtype, timeout).await.map_err(|e| short(&e)),
                serial(*a, zone, timeout).await.map_err(|e| short(&e)),
            ),
        };
        views.push(ServerView {
            server: server.clone(),
            role: role.clone(),
            rcode: answer.as_ref().ok().map(|a| a.rcode.clone()),
            addresses: answer
                .as_ref()
                .map(|a| a.addresses.clone())
                .unwrap_or_default(),
            ttl: answer.as_ref().ok().and_then(|a| a.ttl),
            serial: serial.as_ref().ok().copied().flatten(),
            error: answer.as_ref().err().or(serial.as_ref().err()).cloned(),
        });
        observations.push(Observation {
            server,
            answer,
            serial,
        });
    }
    (observations, views)
}

/// An error without the server (the table names it).
fn short(e: &DnsError) -> String {
    match e {
        DnsError::Timeout { timeout, .. } => format!("timed out after {timeout:?}"),
        DnsError::Io { error, .. } => error.to_string(),
        DnsError::Malformed { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

/// Polls every watched server until all show `target` with the newest serial, or the timeout.
pub async fn propagation(
    dns: &Dns,
    target: &Target,
    min_serial: Option<u32>,
) -> Result<Propagation, DnsError> {
    let (zone, record, rtype) = names(dns)?;
    let targets = watched(dns, &zone).await?;
    let started = Instant::now();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let (observations, servers) = observe(&targets, &zone, &record, rtype, dns.timeout).await;
        let laggards = msg::laggards(&observations, target, min_serial);
        let done = laggards.is_empty();
        if done || started.elapsed() >= dns.propagation_timeout {
            return Ok(Propagation {
                done,
                waited_ms: millis(started.elapsed()),
                rounds,
                laggards,
                servers,
            });
        }
        tokio::time::sleep(dns.poll_interval).await;
    }
}

/// Every server's answer, TTL and serial.
pub async fn status(dns: &Dns) -> Result<StatusReport, DnsError> {
    let (zone, record, rtype) = names(dns)?;
    let targets = watched(dns, &zone).await?;
    let (_, servers) = observe(&targets, &zone, &record, rtype, dns.timeout).await;
    let first = servers.first();
    let consistent = servers.iter().all(|s| {
        s.error.is_none()
            && first.is_some_and(|f| f.addresses == s.addresses && f.serial == s.serial)
    });
    Ok(StatusReport {
        record: dns.record.clone(),
        servers,
        consistent,
    })
}

fn hint(r: &Rejection, dns: &Dns, expected: &[IpAddr], now_holds: Option<&Answer>) -> String {
    let Rejection::Code { rcode, tsig_error } = r else {
        return String::new();
    };
    let holds = now_holds.map_or(String::new(), |a| {
        let addrs: Vec<String> = a.addresses.iter().map(ToString::to_string).collect();
        format!(
            "; it now holds {}",
            if addrs.is_empty() {
                "no address".into()
            } else {
                addrs.join(",")
            }
        )
    });
    let expected: Vec<String> = expected.iter().map(ToString::to_string).collect();
    match (rcode.as_str(), tsig_error.as_deref()) {
        (_, Some("BADKEY")) => format!(
            " (the server does not know TSIG key {} with {})",
            dns.tsig.name, dns.tsig.algorithm
        ),
        (_, Some("BADSIG")) => format!(
            " (the secret of TSIG key {} differs from the server's)",
            dns.tsig.name
        ),
        (_, Some("BADTIME")) => format!(
            " (this clock and the server's differ by more than {} s)",
            msg::FUDGE
        ),
        ("NXRRSET", _) => format!(
            " (prerequisite failed: {} no longer holds exactly {}{holds}; nothing was changed)",
            dns.record,
            expected.join(",")
        ),
        ("YXRRSET", _) => format!(
            " (prerequisite failed: {} exists{holds}; nothing was changed)",
            dns.record
        ),
        ("REFUSED", _) => format!(
            " (TSIG key {} may not update zone {}: check allow-update/update-policy)",
            dns.tsig.name, dns.zone
        ),
        ("NOTAUTH", _) => format!(" (the server is not authoritative for zone {})", dns.zone),
        ("NOTZONE", _) => format!(" ({} is not in zone {})", dns.record, dns.zone),
        _ => String::new(),
    }
}

/// Sends a signed update replacing `expect` with `new` at `ttl`.
async fn update(dns: &Dns, expect: &[IpAddr], new: &[IpAddr], ttl: u32) -> Result<(), DnsError> {
    let (zone, record, _) = names(dns)?;
    let message = msg::replace_update(random_id(), &zone, &record, expect, new, ttl)
        .map_err(DnsError::Message)?;
    send_update(dns, message, expect).await
}

/// Proves that the primary accepts the TSIG key for the zone, changing nothing: a signed
/// UPDATE whose only content is the prerequisite that the record exists.
pub async fn check_key(dns: &Dns) -> Result<(), DnsError> {
    let (zone, record, rtype) = names(dns)?;
    let message = msg::prerequisite_only_update(random_id(), &zone, &record, rtype);
    send_update(dns, message, &[]).await
}

/// Signs and sends `message`, and reads the answer; `expect` is for the error's hint.
async fn send_update(
    dns: &Dns,
    message: hickory_proto::op::Message,
    expect: &[IpAddr],
) -> Result<(), DnsError> {
    let (_, record, rtype) = names(dns)?;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_err(|_| DnsError::Message("the clock is before 1970".into()))?
        .as_secs();
    let mut signed = msg::sign(message, &dns.tsig, now).map_err(DnsError::Message)?;
    let answer = exchange_tcp(
        dns.server,
        &signed.bytes,
        dns.timeout,
        &format!("the UPDATE of {}", dns.record),
    )
    .await?;
    match msg::interpret_update(&answer, &mut signed) {
        Ok(()) => Ok(()),
        Err(Rejection::Malformed(message)) => Err(DnsError::Malformed {
            server: dns.server,
            message,
        }),
        Err(r) => {
            let holds = ask(dns.server, &record, rtype, dns.timeout).await.ok();
            Err(DnsError::Rejected {
                server: dns.server,
                record: dns.record.clone(),
                code: r.to_string(),
                hint: hint(&r, dns, expect, holds.as_ref()),
            })
        }
    }
}

async fn current(dns: &Dns) -> Result<Answer, DnsError> {
    let (_, record, rtype) = names(dns)?;
    ask(dns.server, &record, rtype, dns.timeout).await
}

/// Replaces `source_address` with `destination_address` and watches propagation.
pub async fn switch(dns: &Dns) -> Result<ChangeReport, DnsError> {
    let (zone, _, _) = names(dns)?;
    let before = current(dns).await?;
    let want = vec![dns.destination_address];
    let ttl = before.ttl.unwrap_or(dns.ttl);
    let already = before.addresses == want;
    if !already {
        // The prerequisite, not this read, is what makes the switch safe: a record changed
        // between the read and the update fails with NXRRSET.
        update(dns, &[dns.source_address], &want, ttl).await?;
    }
    let serial = serial(dns.server, &zone, dns.timeout).await?;
    let propagation = propagation(dns, &Target::Addresses(want.clone()), serial).await?;
    Ok(ChangeReport {
        command: "switch",
        record: dns.record.clone(),
        server: dns.server.to_string(),
        before: before.addresses,
        before_ttl: before.ttl,
        after: want,
        ttl,
        already,
        serial,
        old_ttl_expires_in_s: None,
        ok: propagation.done,
        propagation,
    })
}

/// Rewrites the record with `low_ttl` and watches propagation.
pub async fn lower_ttl(dns: &Dns) -> Result<ChangeReport, DnsError> {
    let (zone, _, rtype) = names(dns)?;
    let before = current(dns).await?;
    if before.addresses.is_empty() {
        return Err(DnsError::NoRecord {
            server: dns.server,
            record: dns.record.clone(),
            rtype: rtype.to_string(),
            rcode: before.rcode,
        });
    }
    let already = before.ttl.is_some_and(|t| t <= dns.low_ttl);
    if !already {
        update(dns, &before.addresses, &before.addresses, dns.low_ttl).await?;
    }
    let serial = serial(dns.server, &zone, dns.timeout).await?;
    let propagation = propagation(dns, &Target::TtlAtMost(dns.low_ttl), serial).await?;
    Ok(ChangeReport {
        command: "lower-ttl",
        record: dns.record.clone(),
        server: dns.server.to_string(),
        after: before.addresses.clone(),
        before: before.addresses,
        before_ttl: before.ttl,
        ttl: if already {
            before.ttl.unwrap_or(dns.low_ttl)
        } else {
            dns.low_ttl
        },
        already,
        serial,
        old_ttl_expires_in_s: Some(if already { 0 } else { before.ttl.unwrap_or(0) }),
        ok: propagation.done,
        propagation,
    })
}
