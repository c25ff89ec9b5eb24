//! `cutover plan`: a Markdown migration plan from the runbook and from measured state.
//!
//! [`measure`] asks each server what it has (syncd's status, the database's size,
//! connections and replication, HAProxy's servers, the record's TTL); [`render`] turns the
//! plan and those facts into Markdown and does no IO, so every sentence of the document comes
//! from a fact or says that the fact could not be measured, and why.

use std::fmt::Write as _;

use serde::Serialize;

use crate::plan::Plan;
use crate::runbook::Runbook;
use crate::runbook::service::Side;
use crate::{db, dns, lb, run, sync};

/// What was measured; each `Err` says why a fact is missing.
#[derive(Debug, Clone, Serialize)]
pub struct Facts {
    /// syncd's status.
    pub sync: Option<Result<syncd::control::Status, String>>,
    /// The database.
    pub database: Option<Result<DbFacts, String>>,
    /// HAProxy.
    pub loadbalancer: Option<Result<lb::StatusReport, String>>,
    /// The record's addresses and TTL at the primary.
    pub dns: Option<Result<Answer, String>>,
    /// The source's dialect, for the promotion's statements.
    #[serde(skip)]
    pub dialect: Option<db::dialect::Dialect>,
}

/// The record at the primary: its addresses and TTL.
pub type Answer = (Vec<String>, Option<u32>);

/// The database, measured.
#[derive(Debug, Clone, Serialize)]
pub struct DbFacts {
    /// Data and index bytes of the application schemas on the source.
    pub size_bytes: u64,
    /// Client sessions on the source other than ours.
    pub connections: u64,
    /// Replication: `None` when running without error, else the problem.
    pub problem: Option<String>,
    /// Transactions the replica is behind.
    pub transactions_behind: Option<u64>,
    /// The source's dialect.
    pub dialect: String,
}

async fn db_facts(d: &crate::runbook::Database) -> Result<DbFacts, String> {
    let mut s = db::Server::connect_to(d, db::Role::Source)
        .await
        .map_err(|e| e.to_string())?;
    let size = s
        .query_string(
            "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables \
             WHERE table_schema NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')",
        )
        .await
        .map_err(|e| e.to_string())?;
    let conns = s
        .query_string(
            "SELECT COUNT(*) FROM information_schema.processlist \
             WHERE id <> CONNECTION_ID() AND command NOT IN ('Daemon', 'Binlog Dump', 'Binlog Dump GTID') \
             AND user NOT IN ('system user', 'event_scheduler')",
        )
        .await
        .map_err(|e| e.to_string())?;
    let dialect = s.dialect.describe();
    s.close().await;
    let st = db::status::status(d).await.map_err(|e| e.to_string())?;
    Ok(DbFacts {
        size_bytes: size.and_then(|v| v.parse().ok()).unwrap_or(0),
        connections: conns.and_then(|v| v.parse().ok()).unwrap_or(0),
        problem: st.problem,
        transactions_behind: st.transactions_behind,
        dialect,
    })
}

/// Measures what the plan needs.
pub async fn measure(rb: &Runbook) -> Facts {
    let sync = match &rb.sync {
        Some(s) => Some(sync::status(s).await.map_err(|e| e.to_string())),
        None => None,
    };
    let database = match &rb.database {
        Some(d) => Some(db_facts(d).await),
        None => None,
    };
    let dialect = match &rb.database {
        Some(d) => match db::Server::connect_to(d, db::Role::Source).await {
            Ok(s) => {
                let dialect = s.dialect;
                s.close().await;
                Some(dialect)
            }
            Err(_) => None,
        },
        None => None,
    };
    let loadbalancer = match &rb.loadbalancer {
        Some(l) => Some(lb::status(l).await.map_err(|e| e.to_string())),
        None => None,
    };
    let dns = match &rb.dns {
        Some(d) => Some(
            dns::status(d)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let p = r.servers.first().ok_or("no server answered")?;
                    Ok((p.addresses.iter().map(ToString::to_string).collect(), p.ttl))
                }),
        ),
        None => None,
    };
    Facts {
        sync,
        database,
        loadbalancer,
        dns,
        dialect,
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn redact(url: &str) -> String {
    match url.rsplit_once('@') {
        Some((_, host)) => host.to_string(),
        None => url.trim_start_matches("mysql://").to_string(),
    }
}

/// One risk: what, its weight, and the fact behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Risk {
    /// Points (higher is riskier).
    pub points: u32,
    /// The fact.
    pub fact: String,
}

/// The risks the facts show.
pub fn risks(rb: &Runbook, facts: &Facts) -> Vec<Risk> {
    let mut r = Vec::new();
    if let Some(Ok(d)) = &facts.database {
        if d.connections > 0 {
            r.push(Risk {
                points: 2,
                fact: format!(
                    "the source database has {} client session(s): they are ended by the fence",
                    d.connections
                ),
            });
        }
        if d.size_bytes > 100 * (1 << 30) {
            r.push(Risk {
                points: 3,
                fact: format!("{} of database data (over 100 GiB)", bytes(d.size_bytes)),
            });
        }
        if let Some(p) = &d.problem {
            r.push(Risk {
                points: 5,
                fact: format!("replication is not healthy: {p}"),
            });
        }
    }
    if let Some(Ok(s)) = facts
        .sync
        .as_ref()
        .filter(|s| matches!(s, Ok(st) if st.pending_bytes > 100 * (1 << 30)))
    {
        r.push(Risk {
            points: 3,
            fact: format!("{} still to sync (over 100 GiB)", bytes(s.pending_bytes)),
        });
    }
    let ttl = match (&rb.dns, &facts.dns) {
        (Some(d), Some(Ok((_, Some(ttl))))) if *ttl > d.low_ttl => Some((d, *ttl)),
        _ => None,
    };
    if let Some((d, ttl)) = ttl {
        r.push(Risk {
            points: 2,
            fact: format!(
                "the record's TTL is {ttl} s, above low_ttl {} s: the lowered TTL is not in effect",
                d.low_ttl
            ),
        });
    }
    let local_state: Vec<&str> = rb
        .service
        .iter()
        .filter(|s| s.side == Some(Side::Source) && s.host.is_none())
        .map(|s| s.name.as_str())
        .collect();
    if !local_state.is_empty() && rb.sync.is_none() {
        r.push(Risk {
            points: 2,
            fact: format!(
                "services run on this machine ({}) and no [sync] carries their files",
                local_state.join(", ")
            ),
        });
    }
    if let Some(d) = &rb.database {
        if !d.reverse {
            r.push(Risk {
                points: 2,
                fact: "database.reverse = false: no reverse replication, so a rollback after the \
                       switch is refused once the new primary has taken writes"
                    .into(),
            });
        }
    } else if !rb.service.is_empty() {
        r.push(Risk {
            points: 1,
            fact: "no [database]: no reverse replication protects writes made after the switch"
                .into(),
        });
    }
    r
}

/// The plan as Markdown.
pub fn render(runbook: &str, rb: &Runbook, plan: &Plan, facts: &Facts) -> String {
    let mut m = String::new();
    let _ = writeln!(m, "# Migration plan: `{runbook}`\n");
    let _ = writeln!(m, "## Source and destination\n");
    let _ = writeln!(m, "| part | source | destination | measured |");
    let _ = writeln!(m, "|---|---|---|---|");
    if let Some(d) = &rb.database {
        let measured = match &facts.database {
            Some(Ok(f)) => format!(
                "{}, {} of data, {} session(s), {}",
                f.dialect,
                bytes(f.size_bytes),
                f.connections,
                match (&f.problem, f.transactions_behind) {
                    (Some(p), _) => format!("replication BROKEN: {p}"),
                    (None, Some(b)) => format!("replicating, {b} transaction(s) behind"),
                    (None, None) => "replicating".into(),
                }
            ),
            Some(Err(e)) => format!("not measured: {e}"),
            None => String::new(),
        };
        let _ = writeln!(
            m,
            "| database | {} | {} | {measured} |",
            redact(&d.source),
            redact(&d.replica)
        );
    }
    if let Some(l) = &rb.loadbalancer {
        let measured = match &facts.loadbalancer {
            Some(Ok(r)) => r
                .servers
                .iter()
                .map(|v| format!("{} {} ({})", v.server, v.status, v.admin_state))
                .collect::<Vec<_>>()
                .join(", "),
            Some(Err(e)) => format!("not measured: {e}"),
            None => String::new(),
        };
        let _ = writeln!(
            m,
            "| HAProxy {} backend {} | {} | {} | {measured} |",
            l.admin_socket, l.backend, l.source_server, l.destination_server
        );
    }
    if let Some(d) = &rb.dns {
        let measured = match &facts.dns {
            Some(Ok((a, ttl))) => format!(
                "answers {} TTL {}",
                a.join(","),
                ttl.map_or("-".into(), |t| t.to_string())
            ),
            Some(Err(e)) => format!("not measured: {e}"),
            None => String::new(),
        };
        let _ = writeln!(
            m,
            "| DNS {} at {} | {} | {} | {measured} |",
            d.record, d.server, d.source_address, d.destination_address
        );
    }
    if let Some(s) = &rb.sync {
        let measured = match &facts.sync {
            Some(Ok(st)) => format!(
                "root {}, peer {}, {} file(s) / {} pending, {}/s",
                &st.local_root.get(..12).unwrap_or(&st.local_root),
                st.peer_root
                    .as_deref()
                    .map_or("-", |p| p.get(..12).unwrap_or(p)),
                st.pending_files,
                bytes(st.pending_bytes),
                bytes(st.rate_bytes_per_sec as u64)
            ),
            Some(Err(e)) => format!("not measured: {e}"),
            None => String::new(),
        };
        let _ = writeln!(
            m,
            "| files (syncd {}) | source tree | destination tree | {measured} |",
            s.control.display()
        );
    }
    for s in &rb.service {
        let side = match s.side {
            Some(Side::Source) => "stopped",
            Some(Side::Destination) => "started",
            None => "no side: `cutover run` refuses it",
        };
        let _ = writeln!(
            m,
            "| service {} | {} | {} | {side} |",
            s.name,
            if s.side == Some(Side::Source) {
                s.host.as_deref().unwrap_or("this machine")
            } else {
                ""
            },
            if s.side == Some(Side::Destination) {
                s.host.as_deref().unwrap_or("this machine")
            } else {
                ""
            },
        );
    }

    let _ = writeln!(m, "\n## Steps, in order\n");
    for (i, spec) in plan.steps.iter().enumerate() {
        let _ = writeln!(m, "{}. **{}**", i + 1, spec.step.name());
        for l in run::describe(rb, &spec.do_op, facts.dialect.as_ref()) {
            let _ = writeln!(m, "   - {l}");
        }
    }
    for (step, why) in &plan.skipped {
        let _ = writeln!(m, "- skipped: {} ({why})", step.name());
    }

    let _ = writeln!(m, "\n## Estimated duration\n");
    let mut low = 0.0_f64;
    let mut high = 0.0_f64;
    if let (Some(s), Some(Ok(st))) = (&rb.sync, &facts.sync) {
        if st.pending_bytes == 0 {
            let _ = writeln!(m, "- sync: nothing pending");
        } else if st.rate_bytes_per_sec > 0.0 {
            let t = st.pending_bytes as f64 / st.rate_bytes_per_sec;
            low += t;
            high += t.max(s.converge_timeout.as_secs_f64().min(t * 2.0));
            let _ = writeln!(
                m,
                "- sync: {} pending at the measured {}/s: about {t:.0} s",
                bytes(st.pending_bytes),
                bytes(st.rate_bytes_per_sec as u64)
            );
        } else {
            high += s.converge_timeout.as_secs_f64();
            let _ = writeln!(
                m,
                "- sync: {} pending and no measured rate: up to converge_timeout ({:?})",
                bytes(st.pending_bytes),
                s.converge_timeout
            );
        }
    }
    if let Some(l) = &rb.loadbalancer {
        high += l.drain_timeout.as_secs_f64() + l.ready_timeout.as_secs_f64();
        let _ = writeln!(
            m,
            "- drain and ready: up to {:?} + {:?}",
            l.drain_timeout, l.ready_timeout
        );
    }
    if let Some(d) = &rb.database {
        high += d.catch_up_timeout.as_secs_f64();
        let _ = writeln!(
            m,
            "- promotion: seconds at the measured lag; up to catch_up_timeout ({:?})",
            d.catch_up_timeout
        );
    }
    for s in &rb.service {
        high += s.timeout.as_secs_f64() + s.wait.as_secs_f64();
    }
    if let Some(d) = &rb.dns {
        let ttl = match &facts.dns {
            Some(Ok((_, Some(t)))) => *t,
            _ => d.ttl,
        };
        low += f64::from(ttl);
        high += f64::from(ttl) + d.propagation_timeout.as_secs_f64();
        let _ = writeln!(
            m,
            "- DNS: propagation up to {:?}, then clients follow within the TTL ({ttl} s)",
            d.propagation_timeout
        );
    }
    let _ = writeln!(
        m,
        "\nEstimate: about {low:.0} s of waiting that cannot be avoided, at most {high:.0} s by the timeouts."
    );

    let _ = writeln!(m, "\n## Risks\n");
    let rs = risks(rb, facts);
    let score: u32 = rs.iter().map(|r| r.points).sum();
    let level = match score {
        0 => "low",
        1..=3 => "medium",
        _ => "high",
    };
    let _ = writeln!(m, "Score {score} ({level}).\n");
    if rs.is_empty() {
        let _ = writeln!(m, "- none of the scored facts applies");
    }
    for r in &rs {
        let _ = writeln!(m, "- (+{}) {}", r.points, r.fact);
    }
    if rb.database.as_ref().is_some_and(|d| d.reverse) {
        let _ = writeln!(
            m,
            "- (0) `cutover run` promotes with `--reverse`: the old source replicates from the new primary, so a rollback keeps the writes made after the switch"
        );
    }

    let _ = writeln!(m, "\n## Rollback (derived from the undo of each step)\n");
    let all: Vec<_> = plan.steps.iter().map(|s| s.step).collect();
    let order = plan.rollback_order(&all);
    if order.is_empty() {
        let _ = writeln!(m, "Nothing to undo: no step changes anything.");
    }
    for (i, step) in order.iter().enumerate() {
        if let Some(undo) = plan.spec(*step).and_then(|s| s.undo.as_ref()) {
            let _ = writeln!(m, "{}. undo **{}**", i + 1, step.name());
            for l in run::describe(rb, undo, None) {
                let _ = writeln!(m, "   - {l}");
            }
        }
    }
    let _ = writeln!(
        m,
        "\n`cutover run` does this by itself when a gate fails; after a crash, `cutover rollback {runbook}`."
    );

    let _ = writeln!(m, "\n## Success criteria\n");
    if let Some(l) = &rb.loadbalancer {
        let _ = writeln!(
            m,
            "- [ ] HAProxy backend {}: {} UP and in rotation, {} in maint",
            l.backend, l.destination_server, l.source_server
        );
    }
    if let Some(d) = &rb.dns {
        let _ = writeln!(
            m,
            "- [ ] {} answers {} on every server, with one SOA serial",
            d.record, d.destination_address
        );
    }
    if rb.database.is_some() {
        let _ = writeln!(
            m,
            "- [ ] the destination database is writable; the old source is read-only and replicates from it"
        );
    }
    if rb.sync.is_some() {
        let _ = writeln!(m, "- [ ] the final sync reports equal merkle roots");
    }
    for s in &rb.service {
        if let Some(side) = s.side {
            let _ = writeln!(
                m,
                "- [ ] service {} {}",
                s.name,
                if side == Side::Source {
                    "stopped on the source"
                } else {
                    "running on the destination"
                }
            );
        }
    }
    for h in &rb.health {
        let _ = writeln!(m, "- [ ] health check {} passes", h.name);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn rb(text: &str) -> Runbook {
        Runbook::parse(text, Path::new("rb.toml"), &|_| Err("no files".into())).unwrap()
    }

    const DB: &str = "[database]\nsource = \"mysql://root:pw@10.0.0.1:3306\"\nreplica = \"mysql://root:pw@10.0.0.2:3306\"\nreplication_password = \"x\"\n";

    fn facts(conns: u64, size: u64) -> Facts {
        Facts {
            sync: None,
            database: Some(Ok(DbFacts {
                size_bytes: size,
                connections: conns,
                problem: None,
                transactions_behind: Some(0),
                dialect: "MariaDB 10.11".into(),
            })),
            loadbalancer: None,
            dns: None,
            dialect: None,
        }
    }

    #[test]
    fn risks_are_scored_from_facts() {
        let r = rb(DB);
        assert!(risks(&r, &facts(0, 1 << 20)).is_empty());
        let rs = risks(&r, &facts(3, 200 * (1 << 30)));
        assert_eq!(rs.iter().map(|r| r.points).sum::<u32>(), 5, "{rs:?}");
        assert!(rs[0].fact.contains("3 client session(s)"));
    }

    #[test]
    fn no_reverse_replication_is_a_risk_and_the_plan_does_not_promise_it() {
        let with = rb(DB);
        let without = rb(&format!("{DB}reverse = false\n"));
        assert!(risks(&with, &facts(0, 1 << 20)).is_empty());
        let rs = risks(&without, &facts(0, 1 << 20));
        assert_eq!(rs.len(), 1, "{rs:?}");
        assert!(rs[0].fact.contains("database.reverse = false"), "{rs:?}");
        let md = |r: &Runbook| render("rb.toml", r, &Plan::from(r).unwrap(), &facts(0, 1 << 20));
        assert!(md(&with).contains("promotes with `--reverse`"));
        assert!(!md(&without).contains("promotes with `--reverse`"));
        assert!(
            md(&without).contains("Score 2 (medium)"),
            "{}",
            md(&without)
        );
    }

    #[test]
    fn render_has_no_password_and_derives_the_rollback() {
        let r = rb(DB);
        let plan = Plan::from(&r).unwrap();
        let md = render("rb.toml", &r, &plan, &facts(0, 5 << 20));
        assert!(!md.contains("pw@"), "{md}");
        assert!(md.contains("| database | 10.0.0.1:3306 | 10.0.0.2:3306 | MariaDB 10.11, 5.0 MiB of data, 0 session(s), replicating, 0 transaction(s) behind |"), "{md}");
        assert!(md.contains("1. undo **promote**"), "{md}");
        assert!(md.contains("Score 0 (low)"), "{md}");
        assert!(
            md.contains("- [ ] the destination database is writable"),
            "{md}"
        );
    }
}
