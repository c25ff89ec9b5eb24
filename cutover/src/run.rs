//! `cutover run` and `cutover rollback`: the IO driver of a [`plan::Execution`].
//!
//! [`perform`] carries out one [`Op`] with the library function of its command (`db promote`,
//! `lb drain`/`ready`, `service stop`/`start`, `dns switch`, `health`, syncd's control
//! socket) and returns what it observed, as JSON for the journal. [`drive`] is the loop:
//! poll the machine, journal the `begin` event (fsynced), perform, journal the `finish`
//! event, until done. [`describe`] says what an op would do, for `--dry-run`, without
//! changing anything. Deciding what to do next is the machine's job, never this module's.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::{Value, json};

use crate::db;
use crate::dns;
use crate::health;
use crate::journal::{Journal, JournalError};
use crate::lb;
use crate::plan::{Action, Event, Execution, Op, Outcome, Step};
use crate::runbook::{Runbook, Service};
use crate::service;
use crate::sync;

/// Milliseconds since the Unix epoch, the time the machine and the journal are given.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a failed op returns: why, and what it observed anyway.
pub type Failure = (String, Value);

fn fail(reason: impl Into<String>) -> Failure {
    (reason.into(), Value::Null)
}

fn to_json<T: Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn lb_for(rb: &Runbook, server: &str) -> Result<crate::runbook::LoadBalancer, Failure> {
    let lb = rb
        .loadbalancer
        .as_ref()
        .ok_or_else(|| fail("no [loadbalancer]"))?;
    // The lb commands act on `source_server` (drain) or `destination_server` (ready); the
    // other one is only checked to exist.
    let mut l = lb.clone();
    let other = if server == lb.source_server {
        lb.destination_server.clone()
    } else {
        lb.source_server.clone()
    };
    l.source_server = server.to_string();
    l.destination_server = other;
    Ok(l)
}

fn services<'a>(rb: &'a Runbook, names: &[String]) -> Vec<&'a Service> {
    rb.service
        .iter()
        .filter(|s| names.contains(&s.name))
        .collect()
}

fn service_failure(r: &service::Report) -> String {
    r.services
        .iter()
        .filter(|s| !s.ok)
        .map(|s| format!("{}: {}", s.name, s.summary))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Carries out `op`. `recorded` is, for an undo, what the step's `do` observed (the journal's
/// copy), so that the undo puts back what was there rather than what the runbook assumes.
pub async fn perform(rb: &Runbook, op: &Op, recorded: Option<&Value>) -> Result<Value, Failure> {
    match op {
        Op::SyncConverged => {
            let s = rb.sync.as_ref().ok_or_else(|| fail("no [sync]"))?;
            let r = sync::converge(s).await.map_err(|e| fail(e.to_string()))?;
            Ok(to_json(&r))
        }
        Op::SyncFinal => {
            let s = rb.sync.as_ref().ok_or_else(|| fail("no [sync]"))?;
            let r = sync::final_sync(s).await.map_err(|e| fail(e.to_string()))?;
            Ok(to_json(&r))
        }
        Op::LbDrain { server } => {
            // As an undo (of `ready`): a server that was in rotation before the run stays.
            let before = recorded
                .and_then(|r| r.get("before"))
                .and_then(Value::as_str)
                .filter(|b| !b.starts_with("maint"));
            if let Some(before) = before {
                return Ok(json!({"skipped": format!("{server} was {before} before the run")}));
            }
            let l = lb_for(rb, server)?;
            let r = lb::drain(&l).await.map_err(|e| fail(e.to_string()))?;
            if r.ok {
                Ok(to_json(&r))
            } else {
                Err((
                    format!(
                        "{}: {} session(s) still open after drain_timeout",
                        r.server, r.sessions_open
                    ),
                    to_json(&r),
                ))
            }
        }
        Op::LbReady { server } => {
            // As an undo (of `drain`): a server that was in maint before the run stays.
            if recorded
                .and_then(|r| r.get("already_maint"))
                .and_then(Value::as_bool)
                == Some(true)
            {
                return Ok(json!({"skipped": format!("{server} was in maint before the run")}));
            }
            let l = lb_for(rb, server)?;
            // `lb::ready` acts on the destination server.
            let mut l2 = l.clone();
            std::mem::swap(&mut l2.source_server, &mut l2.destination_server);
            let r = lb::ready(&l2).await.map_err(|e| fail(e.to_string()))?;
            if r.ok {
                Ok(to_json(&r))
            } else {
                Err((
                    format!(
                        "{}: not UP after {} ms ({} {})",
                        r.server, r.waited_ms, r.after.status, r.after.check_desc
                    ),
                    to_json(&r),
                ))
            }
        }
        Op::LbIs { server, state } => {
            let l = lb_for(rb, server)?;
            let r = lb::status(&l).await.map_err(|e| fail(e.to_string()))?;
            let view = r
                .servers
                .iter()
                .find(|v| &v.server == server)
                .ok_or_else(|| fail(format!("{server} not in the status")))?;
            // `set server ... state maint` after a drain reads back as `maint+drain`.
            let matches = view.admin_state == *state
                || (state == "maint" && view.admin_state.starts_with("maint"));
            if matches {
                Ok(to_json(view))
            } else {
                Err((
                    format!(
                        "{}/{server} reads back as {}, not {state}",
                        r.backend, view.admin_state
                    ),
                    to_json(view),
                ))
            }
        }
        Op::ServicesStop { names } => {
            let r = service::stop(&services(rb, names))
                .await
                .map_err(|e| fail(e.to_string()))?;
            if r.ok {
                Ok(to_json(&r))
            } else {
                Err((service_failure(&r), to_json(&r)))
            }
        }
        Op::ServicesStart { names } => {
            let r = service::start(&services(rb, names))
                .await
                .map_err(|e| fail(e.to_string()))?;
            if r.ok {
                Ok(to_json(&r))
            } else {
                Err((service_failure(&r), to_json(&r)))
            }
        }
        Op::DbPromote => {
            let d = rb.database.as_ref().ok_or_else(|| fail("no [database]"))?;
            let r = db::promote::promote(d, d.reverse)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if r.ok {
                return Ok(to_json(&r));
            }
            let reason = match &r.outcome {
                db::promote::PromoteOutcome::Refused { reason } => {
                    format!("promotion refused: {reason}")
                }
                db::promote::PromoteOutcome::Aborted { reason, .. } => {
                    format!("promotion aborted and undone: {reason}")
                }
                db::promote::PromoteOutcome::Promoted {
                    written_after_fence,
                    reverse_failed,
                    ..
                } => format!(
                    "promoted, but not proven or without reverse replication: \
                     written after the fence {written_after_fence:?}, reverse {}",
                    reverse_failed.as_deref().unwrap_or("ok")
                ),
            };
            Err((reason, to_json(&r)))
        }
        Op::DbPromoted => {
            let d = rb.database.as_ref().ok_or_else(|| fail("no [database]"))?;
            let r = db::status::status(d)
                .await
                .map_err(|e| fail(e.to_string()))?;
            match &r.promoted {
                Some(_) => Ok(to_json(&r)),
                None => Err((
                    format!(
                        "the pair does not read back as promoted: {}",
                        r.problem
                            .as_deref()
                            .unwrap_or("the replica still replicates")
                    ),
                    to_json(&r),
                )),
            }
        }
        Op::DbRestore => {
            let d = rb.database.as_ref().ok_or_else(|| fail("no [database]"))?;
            let r = db::restore::restore(d)
                .await
                .map_err(|e| fail(e.to_string()))?;
            Ok(to_json(&r))
        }
        Op::DnsSet { from, to } => {
            let d = rb.dns.as_ref().ok_or_else(|| fail("no [dns]"))?;
            let parse = |s: &str| s.parse::<IpAddr>().map_err(|e| fail(format!("{s:?}: {e}")));
            let mut d2 = d.clone();
            d2.source_address = parse(from)?;
            d2.destination_address = parse(to)?;
            // As an undo: back to what the record held before the switch, as recorded.
            if let Some(before) = recorded
                .and_then(|r| r.get("before"))
                .and_then(Value::as_array)
                .filter(|a| a.len() == 1)
                .and_then(|a| a[0].as_str())
            {
                d2.destination_address = parse(before)?;
            }
            let r = dns::switch(&d2).await.map_err(|e| fail(e.to_string()))?;
            if r.ok {
                Ok(to_json(&r))
            } else {
                let lag = r
                    .propagation
                    .laggards
                    .iter()
                    .map(|l| format!("{} {}", l.server, l.reason))
                    .collect::<Vec<_>>()
                    .join("; ");
                Err((format!("{} not propagated: {lag}", r.record), to_json(&r)))
            }
        }
        Op::Health { names } => {
            let checks: Vec<_> = rb
                .health
                .iter()
                .filter(|h| names.contains(&h.name))
                .cloned()
                .collect();
            let r = health::run(&checks).await;
            if r.ok {
                Ok(to_json(&r))
            } else {
                let failed = r
                    .checks
                    .iter()
                    .filter(|c| !c.ok)
                    .map(|c| format!("{} ({}): {}", c.name, c.target, c.detail))
                    .collect::<Vec<_>>()
                    .join("; ");
                Err((format!("health check failed: {failed}"), to_json(&r)))
            }
        }
    }
}

/// What `--dry-run` prints for `op`: every command, statement and update, in order. With the
/// database's `dialect` (read from the server, which changes nothing), the promotion's
/// statements are listed as that dialect writes them.
pub fn describe(rb: &Runbook, op: &Op, dialect: Option<&db::dialect::Dialect>) -> Vec<String> {
    let lb = rb.loadbalancer.as_ref();
    let socket = lb.map_or(String::new(), |l| l.admin_socket.to_string());
    let backend = lb.map_or("", |l| l.backend.as_str());
    match op {
        Op::SyncConverged => vec![format!(
            "syncd {}: {{\"cmd\":\"status\"}} until converged or lag <= {:?} (at most {:?})",
            rb.sync
                .as_ref()
                .map_or(String::new(), |s| s.control.display().to_string()),
            rb.sync.as_ref().map_or(Duration::ZERO, |s| s.max_lag),
            rb.sync
                .as_ref()
                .map_or(Duration::ZERO, |s| s.converge_timeout),
        )],
        Op::SyncFinal => vec![format!(
            "syncd {}: {{\"cmd\":\"final-sync\"}}; the roots must be equal",
            rb.sync
                .as_ref()
                .map_or(String::new(), |s| s.control.display().to_string()),
        )],
        Op::LbDrain { server } => vec![
            format!(
                "haproxy {socket}: {}",
                lb::api::set_state(backend, server, lb::api::SetState::Drain)
            ),
            format!(
                "haproxy {socket}: show stat {backend} 4 -1 until {server} has 0 sessions (at most {:?})",
                lb.map_or(Duration::ZERO, |l| l.drain_timeout)
            ),
            format!(
                "haproxy {socket}: {}",
                lb::api::set_state(backend, server, lb::api::SetState::Maint)
            ),
        ],
        Op::LbReady { server } => vec![
            format!(
                "haproxy {socket}: {}",
                lb::api::set_state(backend, server, lb::api::SetState::Ready)
            ),
            format!(
                "haproxy {socket}: show stat {backend} 4 -1 until {server}'s check says UP (at most {:?})",
                lb.map_or(Duration::ZERO, |l| l.ready_timeout)
            ),
        ],
        Op::LbIs { server, state } => vec![format!(
            "haproxy {socket}: show servers state {backend}: {server} must be {state}"
        )],
        Op::ServicesStop { names } => services(rb, names)
            .iter()
            .flat_map(|s| {
                let on = s
                    .host
                    .as_ref()
                    .map_or(String::new(), |h| format!(" on {h}"));
                let mut v = vec![format!(
                    "{}: `{}`{on}",
                    s.name,
                    s.stop.as_deref().unwrap_or("(no stop command)")
                )];
                if let Some(c) = &s.check {
                    v.push(format!(
                        "{}: `{c}`{on} until it fails (at most {:?})",
                        s.name, s.wait
                    ));
                }
                if let Some(k) = &s.kill {
                    v.push(format!("{}: if still running, `{k}`{on}", s.name));
                }
                v
            })
            .collect(),
        Op::ServicesStart { names } => services(rb, names)
            .iter()
            .flat_map(|s| {
                let on = s
                    .host
                    .as_ref()
                    .map_or(String::new(), |h| format!(" on {h}"));
                let mut v = vec![format!(
                    "{}: `{}`{on}",
                    s.name,
                    s.start.as_deref().unwrap_or("(no start command)")
                )];
                if let Some(c) = &s.check {
                    v.push(format!(
                        "{}: `{c}`{on} until it passes (at most {:?})",
                        s.name, s.wait
                    ));
                }
                v
            })
            .collect(),
        Op::DbPromote => match (rb.database.as_ref(), dialect) {
            (Some(d), Some(dia)) => {
                let mut v = vec![format!(
                    "database: wait until the replica is at most {} transaction(s) behind (at most {:?})",
                    d.max_lag_at_fence, d.catch_up_timeout
                )];
                for sql in dia.fence() {
                    v.push(format!("source: {sql}"));
                }
                if dia.fence_ends_sessions() {
                    v.push(format!(
                        "source: after at most {:?}, KILL CONNECTION of every client session but ours",
                        d.fence_grace
                    ));
                }
                if let Some(lock) = dia.fence_lock() {
                    v.push(format!("source: {lock}"));
                }
                v.push(format!(
                    "source: {} (the final position F)",
                    dia.own_position_query()
                ));
                v.push(format!(
                    "replica: {} (repeated until {:?})",
                    dia.wait_for_position(
                        &db::dialect::Position::Gtid("F".into()),
                        Duration::from_secs(1)
                    ),
                    d.catch_up_timeout
                ));
                v.push(format!("replica: {}", dia.stop_replica()));
                v.push(format!("replica: {}", dia.reset_replica_all()));
                for sql in dia.unfence() {
                    v.push(format!("replica: {sql}"));
                }
                v.push("source: the position again, which must still be F (the proof)".into());
                v.push(format!("source: {}", dia.fence_unlock()));
                if d.reverse {
                    for sql in dia.resume_as_replica_at(&db::dialect::Position::Gtid("F".into())) {
                        v.push(format!("source: {sql}"));
                    }
                    v.push(format!(
                        "source: CHANGE MASTER TO the replica as {} (password not shown); {}",
                        d.replication_user,
                        dia.start_replica()
                    ));
                } else {
                    v.push("source: stays fenced (read_only), not replicating (database.reverse = false)".into());
                }
                v
            }
            _ => vec![format!(
                "database: promote{} (the database did not answer: statements not listed)",
                if rb.database.as_ref().is_some_and(|d| d.reverse) {
                    " with --reverse"
                } else {
                    ""
                }
            )],
        },
        Op::DbPromoted => vec!["database: status must read the pair as promoted".into()],
        Op::DbRestore => {
            vec!["database: the source back as the primary (see cutover rollback)".into()]
        }
        Op::DnsSet { from, to } => match rb.dns.as_ref() {
            Some(d) => vec![
                format!(
                    "dns {}: UPDATE zone {} signed with TSIG key {} ({}): prerequisite {} {} = {from}; delete that RRset; add {} {to} with its current TTL",
                    d.server,
                    d.zone,
                    d.tsig.name,
                    d.tsig.algorithm,
                    d.record,
                    if d.source_address.is_ipv4() {
                        "A"
                    } else {
                        "AAAA"
                    },
                    d.record
                ),
                format!(
                    "dns: query {} and the SOA serial at {}{}{} until all agree (at most {:?})",
                    d.record,
                    d.server,
                    d.check_servers
                        .iter()
                        .map(|s| format!(", {s}"))
                        .collect::<String>(),
                    if d.check_ns {
                        " and the zone's NS set"
                    } else {
                        ""
                    },
                    d.propagation_timeout
                ),
            ],
            None => vec![],
        },
        Op::Health { names } => rb
            .health
            .iter()
            .filter(|h| names.contains(&h.name))
            .map(|h| format!("health {}: {}", h.name, health::describe(h)))
            .collect(),
    }
}

/// One action as the run reports it (a line of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// `do`, `check` or `undo`.
    pub action: &'static str,
    /// Whether it succeeded.
    pub ok: bool,
    /// How long it took.
    pub elapsed_ms: u64,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it observed.
    pub observed: Value,
}

/// Errors of the driver itself (not of a step: a step's failure is a result).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The journal could not be written: the run stops, since what is not journaled cannot
    /// be rolled back.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// A test hook: stop forever at a step, before its IO or after it (before its result is
/// journaled), so that a test can SIGKILL the process there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stall {
    /// The step.
    pub step: Step,
    /// After the IO (`true`) or before it.
    pub after_io: bool,
}

impl Stall {
    /// Parses `STEP:before` / `STEP:after` (`CUTOVER_TEST_STALL`).
    pub fn parse(s: &str) -> Option<Stall> {
        let (step, when) = s.split_once(':')?;
        let step = Step::ALL.into_iter().find(|st| st.name() == step)?;
        Some(Stall {
            step,
            after_io: when == "after",
        })
    }
}

async fn stall_here(stall: Option<Stall>, step: Step, after_io: bool) {
    if stall == Some(Stall { step, after_io }) {
        eprintln!(
            "cutover: test stall at {} {}",
            step.name(),
            if after_io { "after" } else { "before" }
        );
        loop {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
    }
}

/// Runs `exec` to its end, journaling every event before going on; calls `starting` before
/// each action and `report` after it. `interrupt` turns true on SIGINT/SIGTERM.
pub async fn drive(
    rb: &Runbook,
    exec: &mut Execution,
    journal: &mut Journal,
    stall: Option<Stall>,
    mut interrupt: Option<tokio::sync::watch::Receiver<bool>>,
    starting: &mut dyn FnMut(Step, &'static str),
    report: &mut dyn FnMut(&StepReport),
) -> Result<Outcome, RunError> {
    loop {
        let action = exec.poll();
        let (step, kind, op, recorded) = match &action {
            Action::Done(outcome) => return Ok(outcome.clone()),
            Action::Do(s, op) => (*s, "do", op.clone(), None),
            Action::Check(s, op) => (*s, "check", op.clone(), None),
            Action::Undo(s, op, rec) => (*s, "undo", op.clone(), Some(rec.clone())),
        };
        starting(step, kind);
        let started = std::time::Instant::now();
        if let Some(ev) = exec.begin(now_ms()) {
            journal.append(&ev)?;
        }
        stall_here(stall, step, false).await;
        // SIGINT/SIGTERM cancels a forward step and so starts the rollback; an undo is never
        // cancelled, and the promotion handles the signal itself (it undoes its fence).
        let cancellable = kind != "undo" && op != Op::DbPromote;
        let result = match interrupt.as_mut() {
            Some(rx) if cancellable => {
                tokio::select! {
                    r = perform(rb, &op, recorded.as_ref()) => r,
                    _ = rx.wait_for(|v| *v) => Err(fail("interrupted (SIGINT/SIGTERM)")),
                }
            }
            _ => perform(rb, &op, recorded.as_ref()).await,
        };
        stall_here(stall, step, true).await;
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let (ok, reason, observed) = match &result {
            Ok(v) => (true, None, v.clone()),
            Err((r, v)) => (false, Some(r.clone()), v.clone()),
        };
        if let Some(ev) = exec.finish(result, now_ms()) {
            journal.append(&ev)?;
        }
        report(&StepReport {
            step,
            action: kind,
            ok,
            elapsed_ms,
            reason,
            observed,
        });
    }
}

/// The write-unavailable window the promotion measured (fence to the replica writable), and
/// that of a switch back, from the journal's events.
pub fn write_unavailable_ms(events: &[Event]) -> (Option<u64>, Option<u64>) {
    let find = |phase: crate::plan::Phase, key: &str| {
        events
            .iter()
            .filter(|e| e.step == Some(Step::Promote) && e.phase == phase)
            .find_map(|e| e.observed.get(key).and_then(Value::as_u64))
    };
    (
        find(crate::plan::Phase::DoOk, "write_unavailable_ms"),
        find(crate::plan::Phase::UndoOk, "write_unavailable_ms"),
    )
}
