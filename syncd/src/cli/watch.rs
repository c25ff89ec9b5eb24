//! `syncd push --watch` and `syncd status`: the continuous mode's daemon, its control
//! socket, and the command that asks it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::*;
use crate::*;

/// Binds and serves the control socket at `path` (if given) for a daemon of `role`, whose
/// shared state `prepare` fills in before the socket answers (a status read at once must not
/// see a default); the socket file is removed when the returned guard drops. Needs a
/// runtime.
pub(crate) fn start_control(
    path: Option<&Path>,
    role: &str,
    bwlimit: u64,
    prepare: impl FnOnce(&mut syncd::control::Status),
) -> Result<(
    Option<std::sync::Arc<syncd::control::Shared>>,
    Option<syncd::control::Unlink>,
)> {
    let Some(path) = path else {
        return Ok((None, None));
    };
    let shared = syncd::control::Shared::new(role, syncd::transport::Throttle::new(bwlimit));
    shared.update(prepare);
    let listener = syncd::control::bind(path)?;
    tokio::spawn(syncd::control::serve(
        listener,
        path.to_path_buf(),
        shared.clone(),
    ));
    eprintln!("syncd {role}: control socket at {}", path.display());
    Ok((
        Some(shared),
        Some(syncd::control::Unlink(path.to_path_buf())),
    ))
}

pub(crate) fn cmd_watch(
    src: &Path,
    dest: &str,
    home: &Path,
    args: PushArgs,
    c: Continuous,
    table: Option<syncd::timetable::Timetable>,
) -> Result<Outcome> {
    // Levels from RUST_LOG, else -q (warnings and errors) or -v (each batch, at debug), as
    // for serve.
    syncd::logging::init(if args.quiet {
        -1
    } else if args.push.itemize {
        1
    } else {
        0
    });
    let rt = runtime()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot watch SIGINT")?;
        let target = if dest.contains('/') {
            syncd::watch::Dest::Local(PathBuf::from(dest))
        } else {
            let addr = tokio::net::lookup_host(dest)
                .await
                .with_context(|| {
                    format!("DEST {dest:?} is neither HOST:PORT nor a directory path containing '/' (write ./{dest} for a local directory)")
                })?
                .next()
                .with_context(|| format!("{dest}: no address found"))?;
            let peer_id = args.peer_id.with_context(|| {
                format!("--peer-id is required to push to {dest}: run `syncd id` on the receiver and pass it here (syncd never trusts on first use)")
            })?;
            let identity = Box::new(syncd::identity::Identity::load(home)?);
            syncd::watch::Dest::Remote { addr, peer_id, identity }
        };
        let bwlimit = args.push.bwlimit.unwrap_or(0);
        // What a status read at once must already say (`follow` below records later slots).
        let scavenger = args.push.scavenger;
        let slot = table
            .as_ref()
            .map(|t| t.slot_at(syncd::bwlimit::local_now()).text.clone());
        let prepare = |s: &mut syncd::control::Status| {
            s.scavenger = scavenger;
            s.bwlimit_slot.clone_from(&slot);
        };
        let (shared, _unlink) = start_control(c.control.as_deref(), "push", bwlimit, prepare)?;
        let shared = shared.unwrap_or_else(|| {
            let s = syncd::control::Shared::new("push", syncd::transport::Throttle::new(bwlimit));
            s.update(prepare);
            s
        });
        if let Some(t) = table {
            tokio::spawn(syncd::bwlimit::follow(t, shared.throttle().clone(), Some(shared.clone())));
        }
        if let Some(addr) = c.metrics {
            syncd::metrics::install(addr, shared.clone())?;
            eprintln!("syncd push: metrics at http://{addr}/metrics");
        }
        let wopts = syncd::watch::WatchOptions {
            debounce: c.debounce,
            rescan_interval: c.rescan_interval,
        };
        eprintln!("syncd push: watching {} -> {dest}", src.display());
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        syncd::watch::watch(src, target, home, args.push, wopts, shared, stop).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Outcome::Ok)
}

pub(crate) fn cmd_status(path: &Path, json: bool) -> Result<Outcome> {
    let s = syncd::control::Client::connect(path)?.status()?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&s)?)?;
    } else {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{} {}",
            s.role,
            if s.converged {
                "converged"
            } else {
                "not converged"
            }
        )?;
        writeln!(out, "local root  {}", s.local_root)?;
        writeln!(out, "peer root   {}", opt(&s.peer_root))?;
        writeln!(
            out,
            "pending     {} files, {}{}",
            s.pending_files,
            human_bytes(s.pending_bytes),
            s.lag_seconds
                .map(|l| format!(", lag {l:.3}s"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "rate        {}/s, bwlimit {}",
            human_bytes(s.rate_bytes_per_sec as u64),
            s.bwlimit
                .map(|b| format!("{}/s", human_bytes(b)))
                .unwrap_or_else(|| "none".into())
        )?;
        let size = |b: Option<u64>| b.map_or("-".into(), human_bytes);
        writeln!(
            out,
            "space       tree {}, destination free {}",
            size(s.tree_bytes),
            size(s.destination_free_bytes)
        )?;
        if let Some(slot) = &s.bwlimit_slot {
            writeln!(out, "timetable   slot {slot} in force")?;
        }
        if s.scavenger {
            writeln!(out, "congestion  scavenger (--bwlimit auto, LEDBAT)")?;
        }
        writeln!(
            out,
            "reconnects  {}{}",
            s.reconnects,
            if s.paused { ", paused" } else { "" }
        )?;
        if let Some(e) = &s.last_error {
            writeln!(out, "last error  {e}")?;
        }
    }
    Ok(if s.converged {
        Outcome::Ok
    } else {
        Outcome::Found
    })
}
