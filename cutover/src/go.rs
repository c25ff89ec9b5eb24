//! The binary's `cutover run` and `cutover rollback`: the journal's life cycle (refuse an
//! unfinished one, resume, archive a finished one), confirmation, and output. The steps are
//! decided by `cutover::plan` and carried out by `cutover::run`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::json;

use cutover::journal::{self, Header, Journal};
use cutover::plan::{Execution, Outcome, Plan, Step, timings};
use cutover::run::{self, StepReport};
use cutover::runbook::Runbook;

/// `cutover run`'s options.
#[derive(Debug)]
pub struct Options {
    pub runbook: PathBuf,
    pub dry_run: bool,
    pub yes: bool,
    pub json: bool,
    pub resume: bool,
    pub state: Option<PathBuf>,
}

fn load(path: &Path) -> anyhow::Result<(Runbook, Plan)> {
    let rb = Runbook::load(path)?;
    let plan = Plan::from(&rb).with_context(|| format!("runbook {}", path.display()))?;
    Ok((rb, plan))
}

fn steps(plan: &Plan) -> Vec<Step> {
    plan.steps.iter().map(|s| s.step).collect()
}

/// The dialect of the source, read without changing anything, for the dry run's statements.
async fn dialect(rb: &Runbook) -> Option<cutover::db::dialect::Dialect> {
    let d = rb.database.as_ref()?;
    let s = cutover::db::Server::connect_to(d, cutover::db::Role::Source)
        .await
        .ok()?;
    let dialect = s.dialect;
    s.close().await;
    Some(dialect)
}

async fn dry_run(rb: &Runbook, plan: &Plan, json: bool) -> anyhow::Result<u8> {
    let dialect = dialect(rb).await;
    for (i, spec) in plan.steps.iter().enumerate() {
        let doing = run::describe(rb, &spec.do_op, dialect.as_ref());
        let check = spec
            .check
            .as_ref()
            .map(|c| run::describe(rb, c, dialect.as_ref()))
            .unwrap_or_default();
        let undo = spec
            .undo
            .as_ref()
            .map(|u| run::describe(rb, u, dialect.as_ref()))
            .unwrap_or_default();
        if json {
            println!(
                "{}",
                json!({"step": spec.step, "do": doing, "check": check, "undo": undo})
            );
        } else {
            println!("{}. {}", i + 1, spec.step.name());
            for l in &doing {
                println!("     do    {l}");
            }
            for l in &check {
                println!("     check {l}");
            }
            for l in &undo {
                println!("     undo  {l}");
            }
        }
    }
    if json {
        println!(
            "{}",
            json!({"summary": {"dry_run": true, "skipped": plan.skipped}})
        );
    } else {
        for (step, why) in &plan.skipped {
            println!("   skipped: {} ({why})", step.name());
        }
        println!("dry run: nothing was changed");
    }
    Ok(0)
}

fn confirm(runbook: &Path, plan: &Plan) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to run go-time without --yes: there is no TTY to confirm on");
    }
    let names: Vec<&str> = plan.steps.iter().map(|s| s.step.name()).collect();
    print!(
        "go-time for {}: {}.\nType yes to start: ",
        runbook.display(),
        names.join(", ")
    );
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

fn state_dir(state: Option<PathBuf>) -> PathBuf {
    state.unwrap_or_else(journal::default_state_dir)
}

fn interrupts() -> anyhow::Result<tokio::sync::watch::Receiver<bool>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut int = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut term = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        let _ = tx.send(true);
    });
    Ok(rx)
}

fn print_step(r: &StepReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).unwrap_or_default());
        return;
    }
    let verdict = if r.ok { "ok" } else { "FAILED" };
    let why = r
        .reason
        .as_ref()
        .map_or(String::new(), |w| format!(": {w}"));
    println!(
        "  {:<5} {:<15} {verdict} ({} ms){why}",
        r.action,
        r.step.name(),
        r.elapsed_ms
    );
}

/// Drives `exec` to the end and prints the summary.
async fn finish(
    rb: &Runbook,
    mut exec: Execution,
    mut journal: Journal,
    json: bool,
    asked_for_rollback: bool,
) -> anyhow::Result<u8> {
    let stall = std::env::var("CUTOVER_TEST_STALL")
        .ok()
        .and_then(|s| run::Stall::parse(&s));
    // A live line per action on a terminal (indicatif draws nothing when stderr is not one,
    // and nothing with --json); the finished actions are printed above it.
    let bar = if json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new_spinner();
        b.enable_steady_tick(std::time::Duration::from_millis(120));
        b
    };
    let mut starting = |step: Step, action: &'static str| {
        bar.set_message(format!("{action} {} ...", step.name()));
    };
    let mut print = |r: &StepReport| bar.suspend(|| print_step(r, json));
    let outcome = run::drive(
        rb,
        &mut exec,
        &mut journal,
        stall,
        Some(interrupts()?),
        &mut starting,
        &mut print,
    )
    .await;
    bar.finish_and_clear();
    let outcome = outcome?;
    let t = timings(exec.events());
    let (window, back) = run::write_unavailable_ms(exec.events());
    // The journal stays where it is: a completed run can still be rolled back, and the next
    // `cutover run` moves a finished journal aside.
    let path = journal.path().to_path_buf();
    let journal_at = path.clone();
    drop(journal);
    if json {
        println!(
            "{}",
            json!({"summary": {
                "outcome": outcome,
                "total_ms": t.total_ms,
                "write_unavailable_ms": window,
                "rollback_write_unavailable_ms": back,
                "http_unavailable_ms": t.http_unavailable_ms,
                "steps": t.steps.iter().map(|(s, ms)| json!({"step": s, "ms": ms})).collect::<Vec<_>>(),
                "journal": journal_at,
            }})
        );
    } else {
        let ms = |v: Option<u64>| v.map_or("-".to_string(), |v| format!("{v} ms"));
        match &outcome {
            Outcome::Completed => println!("go-time completed"),
            Outcome::RolledBack { reason } => println!("ROLLED BACK: {reason}"),
            Outcome::RollbackFailed { step, reason } => {
                println!("ROLLBACK FAILED at {}: {reason}", step.name());
            }
        }
        println!(
            "  total {} ms; write-unavailable window {}; HTTP-unavailable window {}{}",
            t.total_ms,
            ms(window),
            ms(t.http_unavailable_ms),
            back.map_or(String::new(), |b| format!(
                "; switch back {b} ms without writes"
            ))
        );
        println!("  journal: {}", journal_at.display());
    }
    match outcome {
        Outcome::Completed => Ok(0),
        // A rollback that was asked for and done is a success; one that a failed gate forced
        // is the run's failure.
        Outcome::RolledBack { .. } => Ok(if asked_for_rollback { 0 } else { 1 }),
        Outcome::RollbackFailed { step, reason } => bail!(
            "rollback failed at {}: {reason}; the journal {} is kept: fix it and run `cutover rollback` again",
            step.name(),
            path.display()
        ),
    }
}

fn check_header(header: &Header, plan: &Plan, path: &Path) -> anyhow::Result<()> {
    if header.steps != steps(plan) {
        bail!(
            "journal {}: it was written for the steps {:?}, but the runbook now plans {:?}; \
             restore the runbook the run used",
            path.display(),
            header.steps,
            steps(plan)
        );
    }
    Ok(())
}

fn describe_last(exec: &Execution) -> String {
    exec.events().last().map_or("nothing".into(), |e| {
        format!("{} {:?}", e.step.map_or("run", |s| s.name()), e.phase)
    })
}

/// `cutover run`.
pub async fn run(o: &Options) -> anyhow::Result<u8> {
    let (rb, plan) = load(&o.runbook)?;
    if o.dry_run {
        return dry_run(&rb, &plan, o.json).await;
    }
    if !o.yes {
        confirm(&o.runbook, &plan)?;
    }
    let path = journal::path_for(&state_dir(o.state.clone()), &o.runbook);
    if !path.exists() {
        // Nothing journaled: a new run (its preflight comes before the journal exists).
        if o.resume {
            bail!("journal {}: no run to resume", path.display());
        }
        return start_new(&o.runbook, rb, plan, &path, o.json).await;
    }
    let (mut j, contents) = Journal::open(&path)?;
    if let Some(torn) = contents.as_ref().and_then(|c| c.torn.as_ref()) {
        eprintln!(
            "cutover: journal {}: a torn last line was cut off (the process died writing it): {torn:?}",
            path.display()
        );
    }
    let exec = match contents {
        Some(c) => {
            check_header(&c.header, &plan, &path)?;
            let mut exec = Execution::replay(plan.clone(), &c.events)
                .map_err(|e| anyhow::anyhow!("journal {}: {e}", path.display()))?;
            if exec.finished() {
                if o.resume {
                    bail!(
                        "journal {}: the journaled run is over; nothing to resume",
                        path.display()
                    );
                }
                j.archive(run::now_ms())?;
                return start_new(&o.runbook, rb, plan, &path, o.json).await;
            }
            if !o.resume {
                bail!(
                    "an unfinished run of {} is journaled in {} (last: {}): \
                     `cutover run --resume` continues it, `cutover rollback` undoes it",
                    o.runbook.display(),
                    path.display(),
                    describe_last(&exec)
                );
            }
            if let Some(ev) = exec.recover(run::now_ms()) {
                j.append(&ev)?;
            }
            exec
        }
        None if o.resume => bail!("journal {}: no run to resume", path.display()),
        None => {
            drop(j);
            return start_new(&o.runbook, rb, plan, &path, o.json).await;
        }
    };
    finish(&rb, exec, j, o.json, false).await
}

fn print_preflight(r: &cutover::preflight::Report, json: bool) {
    if json {
        println!("{}", json!({"preflight": r}));
        return;
    }
    for c in &r.checks {
        println!(
            "  {:<4} {:<12} {:<52} {}",
            c.verdict.to_uppercase(),
            c.area,
            c.name,
            c.detail
        );
    }
}

/// `cutover plan`.
pub async fn plan(runbook: &Path) -> anyhow::Result<u8> {
    let (rb, plan) = load(runbook)?;
    let facts = cutover::migration_plan::measure(&rb).await;
    print!(
        "{}",
        cutover::migration_plan::render(&runbook.display().to_string(), &rb, &plan, &facts)
    );
    Ok(0)
}

/// `cutover preflight`.
pub async fn preflight(runbook: &Path, json: bool) -> anyhow::Result<u8> {
    let rb = Runbook::load(runbook)?;
    let r = cutover::preflight::preflight(&rb, false).await;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        print_preflight(&r, false);
        let failed = r.checks.iter().filter(|c| c.verdict == "fail").count();
        println!(
            "preflight: {} check(s), {failed} failed{}",
            r.checks.len(),
            if r.ok { "" } else { ": FAILED" }
        );
    }
    Ok(if r.ok { 0 } else { 1 })
}

async fn start_new(
    runbook: &Path,
    rb: Runbook,
    plan: Plan,
    path: &Path,
    json: bool,
) -> anyhow::Result<u8> {
    // A new run starts with the preflight; a failure changes nothing and writes no journal.
    let pre = cutover::preflight::preflight(&rb, true).await;
    if !pre.ok {
        print_preflight(&pre, json);
        if json {
            println!(
                "{}",
                json!({"summary": {"outcome": {"outcome": "preflight-failed"}}})
            );
        } else {
            println!("preflight FAILED: nothing was changed");
        }
        return Ok(1);
    }
    let (mut j, _) = Journal::open(path)?;
    j.start(&Header {
        cutover_journal: journal::VERSION,
        runbook: runbook.display().to_string(),
        steps: steps(&plan),
        started_ms: run::now_ms(),
    })?;
    finish(&rb, Execution::new(plan), j, json, false).await
}

/// `cutover rollback`: of an unfinished run, or of a completed one (the journal of the last
/// run stays until the next `cutover run`).
pub async fn rollback(runbook: &Path, state: Option<PathBuf>, json: bool) -> anyhow::Result<u8> {
    let (rb, plan) = load(runbook)?;
    let path = journal::path_for(&state_dir(state), runbook);
    let (mut j, contents) = Journal::open(&path)?;
    let Some(c) = contents else {
        println!(
            "no run of {} is journaled in {}: nothing to roll back",
            runbook.display(),
            path.display()
        );
        return Ok(0);
    };
    if let Some(torn) = &c.torn {
        eprintln!(
            "cutover: journal {}: a torn last line was cut off (the process died writing it): {torn:?}",
            path.display()
        );
    }
    check_header(&c.header, &plan, &path)?;
    let mut exec = Execution::replay(plan, &c.events)
        .map_err(|e| anyhow::anyhow!("journal {}: {e}", path.display()))?;
    if let cutover::plan::Action::Done(Outcome::RolledBack { reason }) = exec.poll() {
        println!(
            "the journaled run of {} was rolled back already ({reason}): nothing to do",
            runbook.display(),
        );
        return Ok(0);
    }
    if let Some(ev) = exec.request_rollback("cutover rollback", run::now_ms()) {
        j.append(&ev)?;
    }
    finish(&rb, exec, j, json, true).await
}
