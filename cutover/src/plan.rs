//! The go-time plan and its execution state machine, sans IO.
//!
//! [`Plan::from`] turns a [`Runbook`] into the ordered [`Step`]s whose tables are present,
//! each with its `do`, `check` and `undo` as data ([`Op`]), and says which steps it skips and
//! why. [`Execution`] runs a plan the way `quinn-proto` runs a connection: the driver asks
//! [`Execution::poll`] for the next [`Action`] (do, check or undo a step, or done), marks it
//! begun with [`Execution::begin`], performs it, and hands the result back with
//! [`Execution::finish`]. Both return the [`Event`] the driver must make durable (the journal)
//! before it goes on; [`Execution::replay`] rebuilds the same state from those events after a
//! crash. Time is passed in as milliseconds since the Unix epoch: this module reads no clock,
//! touches no file, socket or process, and so cannot fail on IO.
//!
//! The rollback order is not written anywhere: it is the reverse of the order in which the
//! steps' `do`s *began* (a `do` that began may have taken effect even if it failed or the
//! process died during it), keeping the steps that have an undo.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::runbook::Runbook;
use crate::runbook::service::Side;

/// One step of go-time, in the order [`Step::ALL`] runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// Wait until syncd's push has converged (its lag within bound).
    ConvergeSync,
    /// Drain the source server in HAProxy, then put it in maint.
    Drain,
    /// Stop the source's services.
    StopServices,
    /// Fence the source and promote the replica, with the reverse replication.
    Promote,
    /// syncd's final sync, then the merkle roots must be equal.
    FinalSync,
    /// Start the destination's services.
    StartServices,
    /// Put the destination server in rotation and wait for it to be UP.
    Ready,
    /// Switch the DNS record to the destination and wait for propagation.
    DnsSwitch,
    /// Run the health checks against the destination.
    HealthGate,
}

impl Step {
    /// Every step, in the order go-time runs them.
    pub const ALL: [Step; 9] = [
        Step::ConvergeSync,
        Step::Drain,
        Step::StopServices,
        Step::Promote,
        Step::FinalSync,
        Step::StartServices,
        Step::Ready,
        Step::DnsSwitch,
        Step::HealthGate,
    ];

    /// Its name in the journal and the output (`converge-sync`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Step::ConvergeSync => "converge-sync",
            Step::Drain => "drain",
            Step::StopServices => "stop-services",
            Step::Promote => "promote",
            Step::FinalSync => "final-sync",
            Step::StartServices => "start-services",
            Step::Ready => "ready",
            Step::DnsSwitch => "dns-switch",
            Step::HealthGate => "health-gate",
        }
    }

    /// The runbook table it needs.
    pub fn table(self) -> &'static str {
        match self {
            Step::ConvergeSync | Step::FinalSync => "[sync]",
            Step::Drain | Step::Ready => "[loadbalancer]",
            Step::StopServices => "[[service]] with side = \"source\"",
            Step::StartServices => "[[service]] with side = \"destination\"",
            Step::Promote => "[database]",
            Step::DnsSwitch => "[dns]",
            Step::HealthGate => "[[health]]",
        }
    }

    /// Whether doing it again after an interrupted attempt is safe: every `do` except the
    /// promotion reads the state first and does only what is missing. An interrupted
    /// promotion has an unknown outcome, so `--resume` rolls it back instead.
    pub fn redo_safe(self) -> bool {
        self != Step::Promote
    }
}

/// An operation, as data: what the driver does for a step's `do`, `check` or `undo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "op")]
pub enum Op {
    /// Poll syncd's status until it is converged.
    SyncConverged,
    /// Ask syncd for the final sync and require equal roots.
    SyncFinal,
    /// HAProxy: drain `server` and put it in maint.
    LbDrain {
        /// The server.
        server: String,
    },
    /// HAProxy: put `server` in rotation and wait for UP.
    LbReady {
        /// The server.
        server: String,
    },
    /// HAProxy: read back that `server` is in `state` (`maint` or `ready`).
    LbIs {
        /// The server.
        server: String,
        /// `maint` or `ready`.
        state: String,
    },
    /// Stop these services (verified by their check).
    ServicesStop {
        /// The service names.
        names: Vec<String>,
    },
    /// Start these services (verified by their check).
    ServicesStart {
        /// The service names.
        names: Vec<String>,
    },
    /// Zero-loss promotion of the replica, with the reverse replication.
    DbPromote,
    /// Read back that the pair is promoted.
    DbPromoted,
    /// Put the source back as the primary: a promotion in reverse when the pair was promoted
    /// (using the recorded final position), else unfence the source and restart the replica.
    DbRestore,
    /// Replace the record's addresses `from` with `to`, then wait for propagation.
    DnsSet {
        /// What the record must hold now (the update's prerequisite).
        from: String,
        /// What it gets.
        to: String,
    },
    /// Run these health checks.
    Health {
        /// The check names.
        names: Vec<String>,
    },
}

/// A step's `do`, `check` and `undo`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepSpec {
    /// The step.
    pub step: Step,
    /// What makes the change (or, for a gate, measures).
    pub do_op: Op,
    /// What reads the change back, if anything beyond the `do`'s own verification.
    pub check: Option<Op>,
    /// What puts it back; `None` for steps that change nothing that needs putting back.
    pub undo: Option<Op>,
}

/// Why the runbook cannot be planned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// A `[[service]]` has no `side`, so it is neither stopped nor started.
    #[error("service[{index}].side: cutover run needs side = \"source\" or \"destination\"")]
    ServiceWithoutSide {
        /// Its index in the runbook.
        index: usize,
    },
    /// No step at all.
    #[error("the runbook has none of the tables cutover run uses")]
    Empty,
}

/// The ordered steps of one runbook, and the ones left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The steps to run, in order.
    pub steps: Vec<StepSpec>,
    /// The steps left out, with the table that is missing.
    pub skipped: Vec<(Step, String)>,
}

impl Plan {
    /// The plan for `runbook`: every step whose table is present, in [`Step::ALL`] order.
    pub fn from(runbook: &Runbook) -> Result<Plan, PlanError> {
        if let Some(index) = runbook.service.iter().position(|s| s.side.is_none()) {
            return Err(PlanError::ServiceWithoutSide { index });
        }
        let names = |side: Side| -> Vec<String> {
            runbook
                .service
                .iter()
                .filter(|s| s.side == Some(side))
                .map(|s| s.name.clone())
                .collect()
        };
        let (source_services, destination_services) =
            (names(Side::Source), names(Side::Destination));
        let mut steps = Vec::new();
        let mut skipped = Vec::new();
        for step in Step::ALL {
            let spec = match step {
                Step::ConvergeSync | Step::FinalSync => runbook.sync.as_ref().map(|_| StepSpec {
                    step,
                    do_op: if step == Step::ConvergeSync {
                        Op::SyncConverged
                    } else {
                        Op::SyncFinal
                    },
                    check: None,
                    undo: None,
                }),
                Step::Drain => runbook.loadbalancer.as_ref().map(|lb| StepSpec {
                    step,
                    do_op: Op::LbDrain {
                        server: lb.source_server.clone(),
                    },
                    check: Some(Op::LbIs {
                        server: lb.source_server.clone(),
                        state: "maint".into(),
                    }),
                    undo: Some(Op::LbReady {
                        server: lb.source_server.clone(),
                    }),
                }),
                Step::Ready => runbook.loadbalancer.as_ref().map(|lb| StepSpec {
                    step,
                    do_op: Op::LbReady {
                        server: lb.destination_server.clone(),
                    },
                    check: Some(Op::LbIs {
                        server: lb.destination_server.clone(),
                        state: "ready".into(),
                    }),
                    undo: Some(Op::LbDrain {
                        server: lb.destination_server.clone(),
                    }),
                }),
                Step::StopServices => (!source_services.is_empty()).then(|| StepSpec {
                    step,
                    do_op: Op::ServicesStop {
                        names: source_services.clone(),
                    },
                    check: None,
                    undo: Some(Op::ServicesStart {
                        names: source_services.clone(),
                    }),
                }),
                Step::StartServices => (!destination_services.is_empty()).then(|| StepSpec {
                    step,
                    do_op: Op::ServicesStart {
                        names: destination_services.clone(),
                    },
                    check: None,
                    undo: Some(Op::ServicesStop {
                        names: destination_services.clone(),
                    }),
                }),
                Step::Promote => runbook.database.as_ref().map(|_| StepSpec {
                    step,
                    do_op: Op::DbPromote,
                    check: Some(Op::DbPromoted),
                    undo: Some(Op::DbRestore),
                }),
                Step::DnsSwitch => runbook.dns.as_ref().map(|d| StepSpec {
                    step,
                    do_op: Op::DnsSet {
                        from: d.source_address.to_string(),
                        to: d.destination_address.to_string(),
                    },
                    check: None,
                    undo: Some(Op::DnsSet {
                        from: d.destination_address.to_string(),
                        to: d.source_address.to_string(),
                    }),
                }),
                Step::HealthGate => (!runbook.health.is_empty()).then(|| StepSpec {
                    step,
                    do_op: Op::Health {
                        names: runbook.health.iter().map(|h| h.name.clone()).collect(),
                    },
                    check: None,
                    undo: None,
                }),
            };
            match spec {
                Some(s) => steps.push(s),
                None => skipped.push((step, format!("no {}", step.table()))),
            }
        }
        if steps.is_empty() {
            return Err(PlanError::Empty);
        }
        Ok(Plan { steps, skipped })
    }

    /// The spec of `step`, if the plan has it.
    pub fn spec(&self, step: Step) -> Option<&StepSpec> {
        self.steps.iter().find(|s| s.step == step)
    }

    /// The undo operations for a rollback after the steps in `begun` (in the order they began):
    /// reversed, keeping those with an undo.
    pub fn rollback_order(&self, begun: &[Step]) -> Vec<Step> {
        begun
            .iter()
            .rev()
            .copied()
            .filter(|s| self.spec(*s).is_some_and(|spec| spec.undo.is_some()))
            .collect()
    }
}

/// What the driver does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Perform the step's `do`.
    Do(Step, Op),
    /// Perform the step's `check`.
    Check(Step, Op),
    /// Perform the step's `undo`; `recorded` is what the journal holds about its `do` (the
    /// observations of `do-ok`/`do-failed`, null when the `do` never reported).
    Undo(Step, Op, serde_json::Value),
    /// Nothing is left to do.
    Done(Outcome),
}

/// How an execution ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "outcome")]
pub enum Outcome {
    /// Every step was done and checked.
    Completed,
    /// A step failed (or a rollback was asked for) and every begun step was undone.
    RolledBack {
        /// Why the rollback started.
        reason: String,
    },
    /// An undo failed: the rollback stopped there, the journal stays unfinished.
    RollbackFailed {
        /// The step whose undo failed.
        step: Step,
        /// Why.
        reason: String,
    },
}

/// What a journal line records: one change of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The `do` is about to start.
    DoStarted,
    /// The `do` reported success.
    DoOk,
    /// The `do` reported failure.
    DoFailed,
    /// The check is about to start.
    CheckStarted,
    /// The check passed.
    CheckOk,
    /// The check failed.
    CheckFailed,
    /// The undo is about to start.
    UndoStarted,
    /// The undo reported success.
    UndoOk,
    /// The undo reported failure.
    UndoFailed,
    /// A rollback was asked for (`cutover rollback`, an interrupt, a crashed promotion).
    RollbackRequested,
}

/// One state change, as the journal stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The step (absent for a whole-run event such as a rollback request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// What happened.
    pub phase: Phase,
    /// Milliseconds since the Unix epoch, as the driver read them.
    pub time_ms: u64,
    /// Why it failed, or why the rollback was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What was observed: positions, previous DNS answers, previous server states.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub observed: serde_json::Value,
}

/// Where one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepState {
    /// Not begun.
    Pending,
    /// `do` begun, no result yet (in flight, or the process died).
    Doing,
    /// `do` succeeded; its check has not passed yet.
    Done,
    /// Check begun.
    Checking,
    /// Done and checked.
    Checked,
    /// `do` or check failed.
    Failed,
    /// Undo begun, no result yet.
    Undoing,
    /// Undone.
    Undone,
    /// The undo failed.
    UndoFailed,
}

/// The execution state machine of one plan.
///
/// Call order: [`poll`](Execution::poll) → [`begin`](Execution::begin) (journal its event) →
/// do the IO → [`finish`](Execution::finish) (journal its event) → `poll` again, until
/// [`Action::Done`]. Between `begin` and `finish`, `poll` returns the same action.
#[derive(Debug, Clone)]
pub struct Execution {
    plan: Plan,
    states: BTreeMap<Step, StepState>,
    /// Steps in the order their `do` began.
    begun: Vec<Step>,
    /// Set once a rollback started: why.
    rollback: Option<String>,
    /// What each step's `do` reported (its observations).
    recorded: BTreeMap<Step, serde_json::Value>,
    events: Vec<Event>,
}

impl Execution {
    /// A fresh execution of `plan`.
    pub fn new(plan: Plan) -> Execution {
        let states = plan
            .steps
            .iter()
            .map(|s| (s.step, StepState::Pending))
            .collect();
        Execution {
            plan,
            states,
            begun: Vec::new(),
            rollback: None,
            recorded: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    /// The execution the journal's `events` describe.
    pub fn replay(plan: Plan, events: &[Event]) -> Result<Execution, String> {
        let mut e = Execution::new(plan);
        for ev in events {
            e.apply(ev.clone())?;
        }
        Ok(e)
    }

    /// The plan.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Every event so far.
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// The state of `step`.
    pub fn state(&self, step: Step) -> Option<StepState> {
        self.states.get(&step).copied()
    }

    /// Whether a rollback has started.
    pub fn rolling_back(&self) -> bool {
        self.rollback.is_some()
    }

    /// Whether any step has begun.
    pub fn started(&self) -> bool {
        !self.begun.is_empty()
    }

    /// Whether the execution is over (completed, or rolled back whole). A rollback that
    /// failed is not over: `cutover rollback` retries it.
    pub fn finished(&self) -> bool {
        matches!(
            self.poll(),
            Action::Done(Outcome::Completed | Outcome::RolledBack { .. })
        )
    }

    /// The next action.
    pub fn poll(&self) -> Action {
        if let Some(reason) = &self.rollback {
            for step in self.plan.rollback_order(&self.begun) {
                let st = self.states[&step];
                if st == StepState::Undone {
                    continue;
                }
                if st == StepState::UndoFailed {
                    return Action::Done(Outcome::RollbackFailed {
                        step,
                        reason: self.last_reason(step).unwrap_or_default(),
                    });
                }
                let Some(undo) = self.plan.spec(step).and_then(|s| s.undo.clone()) else {
                    continue;
                };
                let recorded = self
                    .recorded
                    .get(&step)
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                return Action::Undo(step, undo, recorded);
            }
            return Action::Done(Outcome::RolledBack {
                reason: reason.clone(),
            });
        }
        for spec in &self.plan.steps {
            match self.states[&spec.step] {
                StepState::Checked => continue,
                StepState::Pending | StepState::Doing => {
                    return Action::Do(spec.step, spec.do_op.clone());
                }
                StepState::Done | StepState::Checking => match &spec.check {
                    Some(check) => return Action::Check(spec.step, check.clone()),
                    None => continue,
                },
                // A failure always starts a rollback (see `apply`); these cannot be reached
                // without one.
                StepState::Failed
                | StepState::Undoing
                | StepState::Undone
                | StepState::UndoFailed => {
                    return Action::Done(Outcome::RolledBack {
                        reason: "inconsistent state".into(),
                    });
                }
            }
        }
        Action::Done(Outcome::Completed)
    }

    /// Marks the action [`poll`](Execution::poll) returned as begun, at `now_ms`. Returns the
    /// event to journal *before* doing it; `None` when the action is `Done`.
    pub fn begin(&mut self, now_ms: u64) -> Option<Event> {
        let (step, phase) = match self.poll() {
            Action::Do(s, _) => (s, Phase::DoStarted),
            Action::Check(s, _) => (s, Phase::CheckStarted),
            Action::Undo(s, _, _) => (s, Phase::UndoStarted),
            Action::Done(_) => return None,
        };
        let ev = Event {
            step: Some(step),
            phase,
            time_ms: now_ms,
            reason: None,
            observed: serde_json::Value::Null,
        };
        self.apply(ev.clone()).ok()?;
        Some(ev)
    }

    /// Hands in the result of the begun action: `Ok(observations)` or `Err((reason,
    /// observations))`. Returns the event to journal. A failed `do` or check starts the
    /// rollback; a failed undo stops it.
    pub fn finish(
        &mut self,
        result: Result<serde_json::Value, (String, serde_json::Value)>,
        now_ms: u64,
    ) -> Option<Event> {
        let (step, phase) = self.in_flight()?;
        let ok = result.is_ok();
        let phase = match (phase, ok) {
            (Phase::DoStarted, true) => Phase::DoOk,
            (Phase::DoStarted, false) => Phase::DoFailed,
            (Phase::CheckStarted, true) => Phase::CheckOk,
            (Phase::CheckStarted, false) => Phase::CheckFailed,
            (_, true) => Phase::UndoOk,
            (_, false) => Phase::UndoFailed,
        };
        let (reason, observed) = match result {
            Ok(v) => (None, v),
            Err((r, v)) => (Some(r), v),
        };
        let ev = Event {
            step: Some(step),
            phase,
            time_ms: now_ms,
            reason,
            observed,
        };
        self.apply(ev.clone()).ok()?;
        Some(ev)
    }

    /// Asks for a rollback (or, after a failed one, for another try) at `now_ms`. Returns the
    /// event to journal; `None` when nothing needs undoing or a rollback already runs.
    pub fn request_rollback(&mut self, reason: &str, now_ms: u64) -> Option<Event> {
        let retry = matches!(self.poll(), Action::Done(Outcome::RollbackFailed { .. }));
        if self.rollback.is_some() && !retry {
            return None;
        }
        let ev = Event {
            step: None,
            phase: Phase::RollbackRequested,
            time_ms: now_ms,
            reason: Some(reason.to_string()),
            observed: serde_json::Value::Null,
        };
        self.apply(ev.clone()).ok()?;
        Some(ev)
    }

    /// After a replay for `--resume`: a promotion that was in flight when the process died
    /// has an unknown outcome, so it is rolled back rather than done again. Returns the event
    /// to journal, if any.
    pub fn recover(&mut self, now_ms: u64) -> Option<Event> {
        if self.rollback.is_some() {
            return None;
        }
        let (step, phase) = self.in_flight()?;
        if phase == Phase::DoStarted && !step.redo_safe() {
            return self.request_rollback(
                &format!("{} was interrupted: its outcome is unknown", step.name()),
                now_ms,
            );
        }
        None
    }

    /// The step whose action has begun and not finished, with the phase that began it.
    fn in_flight(&self) -> Option<(Step, Phase)> {
        self.states.iter().find_map(|(s, st)| match st {
            StepState::Doing => Some((*s, Phase::DoStarted)),
            StepState::Checking => Some((*s, Phase::CheckStarted)),
            StepState::Undoing => Some((*s, Phase::UndoStarted)),
            _ => None,
        })
    }

    fn last_reason(&self, step: Step) -> Option<String> {
        self.events
            .iter()
            .rev()
            .find(|e| e.step == Some(step) && e.reason.is_some())
            .and_then(|e| e.reason.clone())
    }

    /// Applies one event: the only place state changes, shared by the live run and replay.
    fn apply(&mut self, ev: Event) -> Result<(), String> {
        if ev.phase == Phase::RollbackRequested {
            if self.rollback.is_none() {
                self.rollback = Some(ev.reason.clone().unwrap_or_default());
            }
            // A retry: failed undos are tried again.
            for st in self.states.values_mut() {
                if *st == StepState::UndoFailed {
                    *st = StepState::Failed;
                }
            }
            self.events.push(ev);
            return Ok(());
        }
        let step = ev
            .step
            .ok_or_else(|| format!("a {:?} event without a step", ev.phase))?;
        let st = self
            .states
            .get_mut(&step)
            .ok_or_else(|| format!("step {} is not in this plan", step.name()))?;
        let next = match ev.phase {
            Phase::DoStarted => {
                if !self.begun.contains(&step) {
                    self.begun.push(step);
                }
                StepState::Doing
            }
            Phase::DoOk => StepState::Done,
            Phase::DoFailed | Phase::CheckFailed => StepState::Failed,
            Phase::CheckStarted => StepState::Checking,
            Phase::CheckOk => StepState::Checked,
            // An undo may be retried after a crash or a failure: any state.
            Phase::UndoStarted => StepState::Undoing,
            Phase::UndoOk => StepState::Undone,
            Phase::UndoFailed => StepState::UndoFailed,
            // Handled above.
            Phase::RollbackRequested => return Ok(()),
        };
        *st = next;
        if matches!(ev.phase, Phase::DoOk | Phase::DoFailed) && !ev.observed.is_null() {
            self.recorded.insert(step, ev.observed.clone());
        }
        if matches!(ev.phase, Phase::DoFailed | Phase::CheckFailed) && self.rollback.is_none() {
            self.rollback = Some(format!(
                "{} failed: {}",
                step.name(),
                ev.reason.clone().unwrap_or_default()
            ));
        }
        // A check with no check op passes with the do.
        if ev.phase == Phase::DoOk && self.plan.spec(step).is_some_and(|s| s.check.is_none()) {
            *self.states.get_mut(&step).ok_or("step vanished")? = StepState::Checked;
        }
        self.events.push(ev);
        Ok(())
    }
}

/// Timings of a run, from its events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    /// From the first event to the last, in milliseconds.
    pub total_ms: u64,
    /// From the source's drain finishing (the source in maint: no server takes new requests)
    /// to the destination being UP; `None` without both steps done.
    pub http_unavailable_ms: Option<u64>,
    /// Per step: from its `do` starting to its last event, in milliseconds.
    pub steps: Vec<(Step, u64)>,
}

/// The timings of `events`. The write-unavailable window is the promotion's own
/// measurement (its observation `write_unavailable_ms`), not derived here.
pub fn timings(events: &[Event]) -> Timings {
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        return Timings::default();
    };
    let at = |step: Step, phase: Phase| {
        events
            .iter()
            .find(|e| e.step == Some(step) && e.phase == phase)
            .map(|e| e.time_ms)
    };
    let http_unavailable_ms = match (at(Step::Drain, Phase::DoOk), at(Step::Ready, Phase::DoOk)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let mut steps = Vec::new();
    for step in Step::ALL {
        if let Some(start) = at(step, Phase::DoStarted) {
            let end = events
                .iter()
                .rev()
                .find(|e| e.step == Some(step))
                .map_or(start, |e| e.time_ms);
            steps.push((step, end.saturating_sub(start)));
        }
    }
    Timings {
        total_ms: last.time_ms.saturating_sub(first.time_ms),
        http_unavailable_ms,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const FULL: &str = r#"
[database]
source = "mysql://root@127.0.0.1:3401"
replica = "mysql://root@127.0.0.1:3402"
replication_password = "x"

[loadbalancer]
admin_socket = "127.0.0.1:9999"
backend = "web"
source_server = "old"
destination_server = "new"

[dns]
server = "127.0.0.1:5353"
zone = "example.test."
record = "svc.example.test."
source_address = "127.0.0.1"
destination_address = "127.0.0.2"
tsig_key_file = "k"

[sync]
control = "/run/syncd/push.sock"

[[health]]
name = "web"
http = "http://127.0.0.2:8080/health"

[[service]]
name = "app-old"
side = "source"
stop = "true"
start = "true"

[[service]]
name = "app-new"
side = "destination"
stop = "true"
start = "true"
"#;

    const KEY: &str =
        "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0\"; };";

    fn runbook(text: &str) -> Runbook {
        let files = |_: &Path| Ok(KEY.to_string());
        Runbook::parse(text, Path::new("rb.toml"), &files).unwrap()
    }

    fn full() -> Plan {
        Plan::from(&runbook(FULL)).unwrap()
    }

    /// Drives `e` with `script(action) -> result` until done; returns the outcome and the
    /// actions taken, as `do:step`, `check:step`, `undo:step`.
    fn drive(
        e: &mut Execution,
        mut script: impl FnMut(&Action) -> Result<serde_json::Value, String>,
    ) -> (Outcome, Vec<String>) {
        let mut log = Vec::new();
        for t in 0..100 {
            let a = e.poll();
            let label = match &a {
                Action::Do(s, _) => format!("do:{}", s.name()),
                Action::Check(s, _) => format!("check:{}", s.name()),
                Action::Undo(s, _, _) => format!("undo:{}", s.name()),
                Action::Done(o) => return (o.clone(), log),
            };
            e.begin(t).unwrap();
            let r = script(&a).map_err(|r| (r, serde_json::Value::Null));
            e.finish(r, t).unwrap();
            log.push(label);
        }
        panic!("no end after 100 actions: {log:?}");
    }

    #[test]
    fn full_runbook_has_every_step_in_order() {
        let p = full();
        let steps: Vec<Step> = p.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, Step::ALL.to_vec());
        assert!(p.skipped.is_empty());
    }

    #[test]
    fn missing_tables_are_skipped_and_named() {
        let text = FULL
            .split("[sync]")
            .next()
            .unwrap()
            .replace("[dns]", "[dnsx]");
        let text = text.split("[dnsx]").next().unwrap();
        let p = Plan::from(&runbook(text)).unwrap();
        let steps: Vec<Step> = p.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, vec![Step::Drain, Step::Promote, Step::Ready]);
        let skipped: Vec<Step> = p.skipped.iter().map(|s| s.0).collect();
        assert_eq!(
            skipped,
            vec![
                Step::ConvergeSync,
                Step::StopServices,
                Step::FinalSync,
                Step::StartServices,
                Step::DnsSwitch,
                Step::HealthGate
            ]
        );
        assert_eq!(p.skipped[0].1, "no [sync]");
    }

    #[test]
    fn a_service_without_side_is_refused_and_an_empty_runbook_too() {
        let text = FULL.replace("side = \"source\"\n", "");
        assert_eq!(
            Plan::from(&runbook(&text)),
            Err(PlanError::ServiceWithoutSide { index: 0 })
        );
        assert_eq!(Plan::from(&runbook("")), Err(PlanError::Empty));
    }

    #[test]
    fn happy_path_does_and_checks_every_step() {
        let mut e = Execution::new(full());
        let (outcome, log) = drive(&mut e, |_| Ok(serde_json::Value::Null));
        assert_eq!(outcome, Outcome::Completed);
        assert_eq!(
            log,
            [
                "do:converge-sync",
                "do:drain",
                "check:drain",
                "do:stop-services",
                "do:promote",
                "check:promote",
                "do:final-sync",
                "do:start-services",
                "do:ready",
                "check:ready",
                "do:dns-switch",
                "do:health-gate"
            ]
        );
        assert!(e.finished());
    }

    /// Every step failing in turn (its do, then its check): the begun steps are undone in
    /// reverse, the failed one included.
    #[test]
    fn each_step_failing_rolls_back_what_began_in_reverse() {
        let plan = full();
        for failing in Step::ALL {
            for in_check in [false, true] {
                if in_check && plan.spec(failing).unwrap().check.is_none() {
                    continue;
                }
                let mut e = Execution::new(plan.clone());
                let (outcome, log) = drive(&mut e, |a| match a {
                    Action::Do(s, _) if *s == failing && !in_check => Err("boom".into()),
                    Action::Check(s, _) if *s == failing => Err("boom".into()),
                    _ => Ok(serde_json::Value::Null),
                });
                assert!(
                    matches!(&outcome, Outcome::RolledBack { reason } if reason.contains(failing.name())),
                    "{failing:?}: {outcome:?}"
                );
                let upto = Step::ALL.iter().position(|s| *s == failing).unwrap();
                let want: Vec<String> = Step::ALL[..=upto]
                    .iter()
                    .rev()
                    .filter(|s| plan.spec(**s).unwrap().undo.is_some())
                    .map(|s| format!("undo:{}", s.name()))
                    .collect();
                let undos: Vec<String> = log
                    .iter()
                    .filter(|l| l.starts_with("undo:"))
                    .cloned()
                    .collect();
                assert_eq!(undos, want, "{failing:?} check={in_check}");
                // Nothing after the failing step was done.
                assert!(
                    !log.iter().any(|l| Step::ALL[upto + 1..]
                        .iter()
                        .any(|s| *l == format!("do:{}", s.name()))),
                    "{failing:?}: {log:?}"
                );
                assert!(e.finished());
            }
        }
    }

    #[test]
    fn the_health_gate_failing_undoes_dns_then_lb_then_services_then_db() {
        let mut e = Execution::new(full());
        let (_, log) = drive(&mut e, |a| match a {
            Action::Do(Step::HealthGate, _) => Err("web: 503".into()),
            _ => Ok(serde_json::Value::Null),
        });
        let undos: Vec<&str> = log.iter().filter_map(|l| l.strip_prefix("undo:")).collect();
        assert_eq!(
            undos,
            [
                "dns-switch",
                "ready",
                "start-services",
                "promote",
                "stop-services",
                "drain"
            ]
        );
    }

    #[test]
    fn a_failed_undo_stops_the_rollback_and_a_retry_resumes_it() {
        let mut e = Execution::new(full());
        let (outcome, log) = drive(&mut e, |a| match a {
            Action::Do(Step::HealthGate, _) => Err("503".into()),
            Action::Undo(Step::Promote, _, _) => Err("source unreachable".into()),
            _ => Ok(serde_json::Value::Null),
        });
        assert_eq!(
            outcome,
            Outcome::RollbackFailed {
                step: Step::Promote,
                reason: "source unreachable".into()
            }
        );
        assert_eq!(log.last().unwrap(), "undo:promote");
        assert!(
            !e.finished(),
            "a failed rollback leaves the journal unfinished"
        );
        // The retry starts again at the failed undo, not at the top.
        assert!(e.request_rollback("retry", 500).is_some());
        let (outcome, log) = drive(&mut e, |_| Ok(serde_json::Value::Null));
        assert!(matches!(outcome, Outcome::RolledBack { .. }));
        assert_eq!(log, ["undo:promote", "undo:stop-services", "undo:drain"]);
        assert!(e.finished());
    }

    /// A crash between a `do` and its journal line: the replayed journal shows the `do`
    /// begun with no result. A rollback undoes it too; `--resume` does a redo-safe step
    /// again and rolls a promotion back.
    #[test]
    fn a_crash_between_do_and_journal() {
        for crashed in Step::ALL {
            let mut e = Execution::new(full());
            // Run until the crashing step's do begins.
            loop {
                match e.poll() {
                    Action::Do(s, _) if s == crashed => {
                        e.begin(1).unwrap();
                        break;
                    }
                    _ => {
                        e.begin(1).unwrap();
                        e.finish(Ok(serde_json::Value::Null), 1).unwrap();
                    }
                }
            }
            let journal = e.events().to_vec();

            // Rollback after the crash.
            let mut r = Execution::replay(full(), &journal).unwrap();
            assert!(!r.finished());
            r.request_rollback("operator", 2).unwrap();
            let (outcome, log) = drive(&mut r, |_| Ok(serde_json::Value::Null));
            assert!(matches!(outcome, Outcome::RolledBack { .. }));
            let first = log.first().map(String::as_str);
            if full().spec(crashed).unwrap().undo.is_some() {
                assert_eq!(first, Some(format!("undo:{}", crashed.name()).as_str()));
            }

            // Resume after the crash.
            let mut r = Execution::replay(full(), &journal).unwrap();
            let ev = r.recover(2);
            if crashed.redo_safe() {
                assert!(ev.is_none());
                assert!(matches!(r.poll(), Action::Do(s, _) if s == crashed));
            } else {
                assert_eq!(ev.unwrap().phase, Phase::RollbackRequested);
                assert!(matches!(
                    r.poll(),
                    Action::Undo(Step::Promote, Op::DbRestore, _)
                ));
            }
        }
    }

    #[test]
    fn a_crash_during_an_undo_retries_that_undo() {
        let mut e = Execution::new(full());
        let _ = drive(&mut e, |a| match a {
            Action::Do(Step::Ready, _) => Err("DOWN".into()),
            _ => Ok(serde_json::Value::Null),
        });
        // Cut the journal just after `undo-started` of the promotion.
        let cut = e
            .events()
            .iter()
            .position(|ev| ev.step == Some(Step::Promote) && ev.phase == Phase::UndoStarted)
            .unwrap();
        let mut r = Execution::replay(full(), &e.events()[..=cut]).unwrap();
        assert!(!r.finished());
        assert!(matches!(r.poll(), Action::Undo(Step::Promote, ..)));
        let (outcome, log) = drive(&mut r, |_| Ok(serde_json::Value::Null));
        assert!(matches!(outcome, Outcome::RolledBack { .. }));
        assert_eq!(log, ["undo:promote", "undo:stop-services", "undo:drain"]);
    }

    #[test]
    fn the_undo_gets_what_the_do_recorded() {
        let mut e = Execution::new(full());
        let mut seen = None;
        let _ = drive(&mut e, |a| match a {
            Action::Do(Step::DnsSwitch, _) => Ok(serde_json::json!({"before": ["127.0.0.9"]})),
            Action::Do(Step::HealthGate, _) => Err("503".into()),
            Action::Undo(Step::DnsSwitch, _, recorded) => {
                seen = Some(recorded.clone());
                Ok(serde_json::Value::Null)
            }
            _ => Ok(serde_json::Value::Null),
        });
        assert_eq!(seen, Some(serde_json::json!({"before": ["127.0.0.9"]})));
    }

    #[test]
    fn replay_gives_the_same_state_and_rejects_foreign_steps() {
        let mut e = Execution::new(full());
        let _ = drive(&mut e, |a| match a {
            Action::Do(Step::FinalSync, _) => Err("roots differ".into()),
            _ => Ok(serde_json::Value::Null),
        });
        let r = Execution::replay(full(), e.events()).unwrap();
        assert_eq!(r.poll(), e.poll());
        for s in Step::ALL {
            assert_eq!(r.state(s), e.state(s));
        }
        let small = Plan::from(&runbook(FULL.split("[loadbalancer]").next().unwrap())).unwrap();
        assert!(Execution::replay(small, e.events()).is_err());
    }

    #[test]
    fn a_rollback_before_anything_began_is_done_at_once() {
        let mut e = Execution::new(full());
        e.request_rollback("operator", 0).unwrap();
        assert!(matches!(e.poll(), Action::Done(Outcome::RolledBack { .. })));
    }

    #[test]
    fn timings_from_events() {
        let mut e = Execution::new(full());
        let mut t = 0;
        loop {
            if let Action::Done(_) = e.poll() {
                break;
            }
            t += 10;
            e.begin(t).unwrap();
            t += 100;
            e.finish(Ok(serde_json::Value::Null), t).unwrap();
        }
        let tm = timings(e.events());
        assert_eq!(tm.total_ms, 12 * 110 - 100 - 10 + 100);
        // drain do-ok at 220 .. ready do-ok: after stop, promote+check, final, start.
        assert_eq!(tm.http_unavailable_ms, Some(7 * 110));
        assert_eq!(tm.steps.len(), 9);
    }
}
