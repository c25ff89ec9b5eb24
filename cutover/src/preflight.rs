//! `cutover preflight`: every dependency of the runbook, checked without changing anything
//! that go-time depends on, as a pass/fail table.
//!
//! Each table present gets its checks; one failing never stops the others, so the table is
//! whole. A check that cannot be made (a server that does not answer) is a failure that says
//! so. A health check with a `source` target runs against the source and must pass; one
//! without is written only for the destination, which need not serve before go-time, so it
//! is reported without failing the preflight (`warn`); the health gate is where it counts.
//! (`db status` writes its heartbeat row on the source, as it always does.)

use serde::Serialize;

use crate::runbook::Runbook;
use crate::runbook::service::Side;
use crate::{db, dns, health, lb, service, sync};

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// `sync`, `database`, `loadbalancer`, `dns`, `service` or `health`.
    pub area: &'static str,
    /// What was checked.
    pub name: String,
    /// `pass`, `fail` or `warn` (reported, does not fail the preflight).
    pub verdict: &'static str,
    /// What was seen.
    pub detail: String,
}

/// The whole table.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Every check, by area in runbook order.
    pub checks: Vec<Check>,
    /// No check failed.
    pub ok: bool,
}

struct Table(Vec<Check>);

impl Table {
    fn add(&mut self, area: &'static str, name: impl Into<String>, ok: bool, detail: String) {
        self.0.push(Check {
            area,
            name: name.into(),
            verdict: if ok { "pass" } else { "fail" },
            detail,
        });
    }
}

/// Whether the destination has room for the tree (`None`: not known yet, before the push's
/// first full session), and what was seen. The destination holds the tree as of the last
/// full push, so what it must still take is what is pending (whole files: a changed file is
/// written next to the old copy before it replaces it); before that push, the whole tree.
fn space(st: &syncd::control::Status) -> (Option<bool>, String) {
    let gib = |b: u64| format!("{:.2} GiB", b as f64 / f64::from(1u32 << 30));
    match (st.tree_bytes, st.destination_free_bytes) {
        (Some(tree), Some(free)) => (
            Some(free >= st.pending_bytes),
            format!(
                "tree {}, destination free {}, still to write {}",
                gib(tree),
                gib(free),
                gib(st.pending_bytes)
            ),
        ),
        (tree, _) => (
            None,
            format!(
                "not known yet: {} (the push reports both after its first full session)",
                match tree {
                    None => "no full scan of the tree",
                    Some(_) => "the receiver did not say its free space",
                }
            ),
        ),
    }
}

/// Runs every check of `rb`. `before_run`: as the first thing `cutover run` does, where a
/// push that has not converged yet is only reported, since the run's first step waits for it.
pub async fn preflight(rb: &Runbook, before_run: bool) -> Report {
    let mut t = Table(Vec::new());
    if let Some(s) = &rb.sync {
        match sync::status(s).await {
            Ok(st) => {
                t.add(
                    "sync",
                    "control socket answers",
                    true,
                    format!("{} at {}", st.role, s.control.display()),
                );
                let ok = sync::converged(&st, s.max_lag);
                t.0.push(Check {
                    area: "sync",
                    name: format!("converged or lag <= {:?}", s.max_lag),
                    // Within `cutover run`, its first step waits for this.
                    verdict: match (ok, before_run) {
                        (true, _) => "pass",
                        (false, true) => "warn",
                        (false, false) => "fail",
                    },
                    detail: format!(
                        "converged {}, lag {}, {} file(s) / {} byte(s) pending, {:.0} B/s",
                        st.converged,
                        st.lag_seconds.map_or("-".into(), |l| format!("{l:.1} s")),
                        st.pending_files,
                        st.pending_bytes,
                        st.rate_bytes_per_sec
                    ),
                });
                let (verdict, detail) = space(&st);
                t.0.push(Check {
                    area: "sync",
                    name: "destination free space for the tree".into(),
                    verdict: match (verdict, before_run) {
                        (Some(true), _) => "pass",
                        (None, true) => "warn",
                        (Some(false), _) | (None, false) => "fail",
                    },
                    detail,
                });
            }
            Err(e) => t.add("sync", "control socket answers", false, e.to_string()),
        }
    }
    if let Some(d) = &rb.database {
        match db::Server::connect_to(d, db::Role::Source).await {
            Ok(mut s) => {
                let binlog = s.global_bool("log_bin").await;
                t.add(
                    "database",
                    "source reachable, binary log on",
                    matches!(binlog, Ok(true)),
                    match binlog {
                        Ok(b) => format!(
                            "{} ({}), log_bin={}",
                            s.addr,
                            s.dialect.describe(),
                            u8::from(b)
                        ),
                        Err(e) => e.to_string(),
                    },
                );
                s.close().await;
            }
            Err(e) => t.add(
                "database",
                "source reachable, binary log on",
                false,
                e.to_string(),
            ),
        }
        match db::status::status(d).await {
            Ok(r) => {
                t.add(
                    "database",
                    "replica replicating without error",
                    r.ok,
                    r.problem
                        .clone()
                        .unwrap_or_else(|| "both threads running".into()),
                );
                let behind = r.transactions_behind;
                t.add(
                    "database",
                    format!(
                        "lag by position <= max_lag_at_fence ({})",
                        d.max_lag_at_fence
                    ),
                    behind.is_some_and(|b| b <= d.max_lag_at_fence),
                    format!(
                        "{} transaction(s) behind; heartbeat {}",
                        behind.map_or("-".into(), |b| b.to_string()),
                        r.heartbeat_lag_seconds
                            .map_or("-".into(), |s| format!("{s:.3} s"))
                    ),
                );
                t.0.push(Check {
                    area: "database",
                    name: "privileged sessions on the source (ended by the fence)".into(),
                    verdict: if r.source_privileged_sessions.is_empty() {
                        "pass"
                    } else {
                        "warn"
                    },
                    detail: if r.source_privileged_sessions.is_empty() {
                        "none".into()
                    } else {
                        r.source_privileged_sessions.join(", ")
                    },
                });
            }
            Err(e) => t.add(
                "database",
                "replica replicating without error",
                false,
                e.to_string(),
            ),
        }
    }
    if let Some(l) = &rb.loadbalancer {
        match lb::cli_level(l).await {
            Ok(level) => t.add(
                "loadbalancer",
                "admin socket at level admin",
                level == "admin",
                format!("{}: level {level}", l.admin_socket),
            ),
            Err(e) => t.add(
                "loadbalancer",
                "admin socket at level admin",
                false,
                e.to_string(),
            ),
        }
        match lb::status(l).await {
            Ok(r) => {
                t.add(
                    "loadbalancer",
                    format!("backend {} has both servers", r.backend),
                    true,
                    format!("{}, {}", l.source_server, l.destination_server),
                );
                for v in &r.servers {
                    let (ok, note) = match (v.role, v.status.as_str()) {
                        ("source", "UP") => (true, ""),
                        ("source", _) => (false, " (the source must serve until the drain)"),
                        ("destination", "UP") => (true, ""),
                        ("destination", "MAINT") => (
                            true,
                            " (in maint HAProxy does not check it; ready waits for its check)",
                        ),
                        _ => (false, " (its health check fails)"),
                    };
                    t.add(
                        "loadbalancer",
                        format!("{} {} by health check", v.role, v.server),
                        ok,
                        format!("{} {} {}{note}", v.status, v.check_status, v.check_desc),
                    );
                }
            }
            Err(e) => t.add(
                "loadbalancer",
                "backend and servers exist",
                false,
                e.to_string(),
            ),
        }
    }
    if let Some(d) = &rb.dns {
        match dns::check_key(d).await {
            Ok(()) => t.add(
                "dns",
                format!("TSIG key {} accepted", d.tsig.name),
                true,
                format!(
                    "a prerequisite-only UPDATE of {} at {}: NOERROR",
                    d.zone, d.server
                ),
            ),
            Err(e) => t.add(
                "dns",
                format!("TSIG key {} accepted", d.tsig.name),
                false,
                e.to_string(),
            ),
        }
        match dns::status(d).await {
            Ok(r) => {
                let primary = r.servers.first();
                let addrs = primary.map(|p| p.addresses.clone()).unwrap_or_default();
                t.add(
                    "dns",
                    format!("{} holds source_address", d.record),
                    addrs == vec![d.source_address],
                    addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                );
                let ttl = primary.and_then(|p| p.ttl);
                t.add(
                    "dns",
                    format!("TTL <= low_ttl ({})", d.low_ttl),
                    ttl.is_some_and(|x| x <= d.low_ttl),
                    match ttl {
                        Some(x) if x > d.low_ttl => format!(
                            "TTL {x}: run `cutover dns lower-ttl`, then wait {x} s for caches"
                        ),
                        Some(x) => format!("TTL {x}"),
                        None => "no answer".into(),
                    },
                );
            }
            Err(e) => t.add("dns", format!("{} answers", d.record), false, e.to_string()),
        }
    }
    let sources: Vec<_> = rb
        .service
        .iter()
        .filter(|s| s.side == Some(Side::Source))
        .collect();
    if !sources.is_empty() {
        match service::status(&sources).await {
            Ok(r) => {
                for s in &r.services {
                    t.add(
                        "service",
                        format!("source service {} running", s.name),
                        s.running == Some(true),
                        s.summary.clone(),
                    );
                }
            }
            Err(e) => t.add("service", "source services running", false, e.to_string()),
        }
    }
    // One attempt each (the gate has the retries). A check with a `source` target must pass
    // against the source, which serves now; one without is written only for the destination,
    // which need not serve before go-time, so it is reported without failing.
    let once =
        |check: crate::runbook::HealthCheck, h: &crate::runbook::Health| crate::runbook::Health {
            retries: 0,
            check,
            ..h.clone()
        };
    let on_source: Vec<_> = rb
        .health
        .iter()
        .filter_map(|h| h.source.clone().map(|c| once(c, h)))
        .collect();
    let on_destination: Vec<_> = rb
        .health
        .iter()
        .filter(|h| h.source.is_none())
        .map(|h| once(h.check.clone(), h))
        .collect();
    for c in health::run(&on_source).await.checks {
        t.add(
            "health",
            format!("{} on the source ({} {})", c.name, c.kind, c.target),
            c.ok,
            c.detail,
        );
    }
    for c in health::run(&on_destination).await.checks {
        t.0.push(Check {
            area: "health",
            name: format!("{} ({} {})", c.name, c.kind, c.target),
            verdict: if c.ok { "pass" } else { "warn" },
            detail: format!("{} (no `source` target: reported only)", c.detail),
        });
    }
    let ok = t.0.iter().all(|c| c.verdict != "fail");
    Report { checks: t.0, ok }
}
