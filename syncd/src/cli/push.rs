//! `syncd init`, `serve` and a one-time `push`: the commands that move data once or receive
//! it (`push --watch` and `status` are in [`super::watch`]).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use syncd::manifest::display_path;
use syncd::scan::{self};

use super::*;
use crate::*;

pub(crate) fn cmd_init(home: &Path) -> Result<Outcome> {
    let (id, created) = syncd::identity::Identity::load_or_create(home)?;
    let path = syncd::identity::Identity::path_in(home);
    if created {
        eprintln!("syncd: created a new identity in {}", path.display());
    } else {
        eprintln!("syncd: identity already exists in {}", path.display());
    }
    writeln!(std::io::stdout().lock(), "{}", id.peer_id())?;
    Ok(Outcome::Ok)
}

pub(crate) fn cmd_serve(
    root: PathBuf,
    listen: std::net::SocketAddr,
    allow: Vec<syncd::identity::PeerId>,
    home: &Path,
    idle_timeout: std::time::Duration,
    shutdown_timeout: std::time::Duration,
    // Continuous mode's additions: --control, --metrics, and the log verbosity.
    (control, metrics, verbosity): (Option<PathBuf>, Option<std::net::SocketAddr>, i8),
) -> Result<Outcome> {
    syncd::logging::init(verbosity);
    let identity = syncd::identity::Identity::load(home)?;
    let root = scan::canonical_root(&root)?;
    let h = planned(home)?;
    if h.starts_with(&root) || root.starts_with(&h) {
        anyhow::bail!(
            "--root {} and the state directory --home {} overlap: a push with --delete would remove syncd's identity and manifests; choose another --home",
            root.display(),
            home.display()
        );
    }
    let rt = runtime()?;
    let end = rt.block_on(async {
        // Watched before anything else: a signal right after start is not lost.
        // Every SIGINT/SIGTERM is a message: the first stops new pushes and lets the
        // running one finish, the second cuts it off.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot watch SIGINT")?;
        let allowed: Vec<String> = allow.iter().map(|p| p.to_string()).collect();
        let endpoint = syncd::transport::server_endpoint(&identity, listen, allow)?;
        let local = endpoint.local_addr().unwrap_or(listen);
        eprintln!(
            "syncd serve: listening on {local} as {} into {}",
            identity.peer_id(),
            root.display()
        );
        eprintln!("syncd serve: allowed peers: {}", allowed.join(", "));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(|line: String| {
            if line.contains("failed") || line.contains("rejected") || line.contains("cutting off")
            {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line}");
            }
        });
        let (mut shared, _unlink) = start_control(control.as_deref(), "serve", 0, |_| ())?;
        if let Some(addr) = metrics {
            let s = shared.get_or_insert_with(|| {
                syncd::control::Shared::new("serve", syncd::transport::Throttle::new(0))
            });
            syncd::metrics::install(addr, s.clone())?;
            eprintln!("syncd serve: metrics at http://{addr}/metrics");
        }
        let end = syncd::push::serve_with(
            endpoint,
            root,
            home.to_path_buf(),
            rx,
            log,
            idle_timeout,
            shutdown_timeout,
            shared,
        )
        .await?;
        Ok::<_, anyhow::Error>(end)
    })?;
    Ok(match end {
        syncd::push::ServeEnd::Clean => Outcome::Ok,
        syncd::push::ServeEnd::CutOff => Outcome::Found,
    })
}

pub(crate) struct PushArgs {
    pub(crate) peer_id: Option<syncd::identity::PeerId>,
    pub(crate) json: bool,
    pub(crate) quiet: bool,
    pub(crate) null: bool,
    pub(crate) progress: bool,
    pub(crate) push: syncd::push::PushOptions,
}

/// `path` made absolute and canonical as far as it exists (a DEST may not exist yet).
pub(crate) fn planned(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_owned());
                existing = p;
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    Ok(out)
}

/// Refuses the pushes that would copy a tree into itself, delete the source, or delete
/// syncd's own state: DEST equal to or inside SRC, SRC inside DEST with --delete, and a
/// DEST that is, contains or lies inside `--home`.
pub(crate) fn check_local_push(src: &Path, dest: &Path, home: &Path, delete: bool) -> Result<()> {
    let (s, d, h) = (planned(src)?, planned(dest)?, planned(home)?);
    if d == s {
        anyhow::bail!("DEST {} is SRC itself", dest.display());
    }
    if d.starts_with(&s) {
        anyhow::bail!(
            "DEST {} is inside SRC {}: the push would copy its own output; choose a DEST outside SRC",
            dest.display(),
            src.display()
        );
    }
    if delete && s.starts_with(&d) {
        anyhow::bail!(
            "SRC {} is inside DEST {}: --delete would remove the source itself",
            src.display(),
            dest.display()
        );
    }
    if h.starts_with(&d) || d.starts_with(&h) {
        anyhow::bail!(
            "DEST {} and the state directory --home {} overlap: a push there would overwrite or delete syncd's identity and manifests; choose another DEST or --home",
            dest.display(),
            home.display()
        );
    }
    Ok(())
}

pub(crate) fn cmd_push(
    src: &Path,
    dest: &str,
    home: &Path,
    mut args: PushArgs,
    table: Option<syncd::timetable::Timetable>,
) -> Result<Outcome> {
    // A one-shot push shows the library's warnings (a store moved aside and rebuilt, say),
    // not its session logs; -q shows neither. RUST_LOG overrides both.
    if !args.quiet || std::env::var_os("RUST_LOG").is_some() {
        syncd::logging::init(-1);
    }
    let dest = syncd::dest::parse(dest)?;
    // A single file is pushed like rsync's `rsync FILE DIR/`: its directory is the tree,
    // and the filter lets only that file through (nothing else is sent or deleted).
    let meta = std::fs::metadata(src).with_context(|| format!("SRC {}", src.display()))?;
    let single;
    let src = if meta.is_file() {
        let (Some(parent), Some(name)) = (src.parent(), src.file_name()) else {
            anyhow::bail!("SRC {}: cannot tell its directory", src.display());
        };
        if let syncd::dest::Dest::Local(d) = &dest
            && !(d.as_os_str().as_encoded_bytes().ends_with(b"/") || d.is_dir())
        {
            anyhow::bail!(
                "SRC {} is a file: DEST must be the directory to put it in (end it with /, e.g. {}/); syncd does not rename a file as it copies it",
                src.display(),
                d.display()
            );
        }
        let name = name.to_string_lossy().into_owned();
        let mut rules = args.push.scan.filter.rules().to_vec();
        rules.extend(syncd::filter::files_from_rules(&[name]));
        args.push.scan.filter = syncd::filter::Filter::new(rules)?;
        single = if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent.to_path_buf()
        };
        single.as_path()
    } else {
        src
    };
    if let syncd::dest::Dest::Local(d) = &dest {
        check_local_push(src, d, home, args.push.delete)?;
    }
    let rt = runtime()?;
    // Progress: a bar on a terminal; otherwise (--progress into a file or a pipe) one
    // plain line every 2 seconds.
    let tty = std::io::stderr().is_terminal();
    let bar = (args.progress && tty).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        bar
    });
    if args.progress {
        let b = bar.clone();
        let start = Instant::now();
        let last_line = std::sync::Mutex::new(Instant::now());
        args.push.progress = Some(syncd::push::Progress(std::sync::Arc::new(
            move |s: &syncd::push::Sent| {
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                let rate = match (s.wire as f64 / secs) as u64 {
                    0 => "0 bit/s".to_string(),
                    r => syncd::rate::Rate::from_bytes_per_sec(r).to_string(),
                };
                // What is left is at most the scanned bytes not sent yet (less, where DEST
                // already has chunks), so the estimate is an upper bound.
                let eta = match s.raw as f64 / secs {
                    r if r > 0.0 => format!(
                        ", ETA at most {:.0}s",
                        s.scanned_bytes.saturating_sub(s.raw) as f64 / r
                    ),
                    _ => String::new(),
                };
                let line = if s.scanned_files == 0 && s.wire > 0 {
                    // A bulk copy into an empty remote root sends while the source is still
                    // being scanned: no total yet.
                    format!(
                        "sent {} in {} files, {rate} on the wire, still scanning the source",
                        human_bytes(s.raw),
                        s.files_sent
                    )
                } else if s.scanned_files == 0 && s.files_sent > 0 {
                    // The first copy into an empty local DEST writes while the source is
                    // still being scanned: no total yet.
                    format!(
                        "copied {} in {} files, still scanning the source",
                        human_bytes(s.raw),
                        s.files_sent
                    )
                } else if s.files_sent == s.scanned_files && s.scanned_files > 0 && s.wire == 0 {
                    // Locally, everything is written: what remains is the root's proof.
                    format!(
                        "copied all {} files ({}), checking DEST's root",
                        s.files_sent,
                        human_bytes(s.raw)
                    )
                } else {
                    format!(
                        "sent {} of at most {}, {} of {} files (of {} scanned), {rate} on the wire{eta}",
                        human_bytes(s.raw),
                        human_bytes(s.scanned_bytes),
                        s.files_sent,
                        s.files_asked,
                        s.scanned_files,
                    )
                };
                match &b {
                    Some(b) => {
                        b.set_length(s.scanned_bytes.max(s.raw));
                        b.set_position(s.raw);
                        b.set_message(line);
                    }
                    None => {
                        let mut l = syncd::lock::lock(&last_line);
                        if l.elapsed() >= std::time::Duration::from_secs(2) {
                            *l = Instant::now();
                            eprintln!("syncd: {:.0}s: {line}", secs);
                        }
                    }
                }
            },
        )));
    }
    let remote = matches!(dest, syncd::dest::Dest::Remote { .. });
    let t = Instant::now();
    let result = rt.block_on(async {
        match &dest {
            syncd::dest::Dest::Local(d) => syncd::push::push_local(src, d, home, &args.push)
                .await
                .map_err(anyhow::Error::from),
            syncd::dest::Dest::Remote { host, port } => {
            let dest = format!("{host}:{port}");
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .with_context(|| format!("cannot resolve the receiver's host name {host:?}"))?
                .next()
                .with_context(|| format!("{host}: no address found"))?;
            let peer_id = args.peer_id.with_context(|| {
                format!("--peer-id is required to push to {dest}: run `syncd id` on the receiver and pass it here (syncd never trusts on first use)")
            })?;
            let identity = syncd::identity::Identity::load(home)?;
            // A timetable's slots change the throttle's rate while the push runs.
            let throttle = syncd::transport::Throttle::new(args.push.bwlimit.unwrap_or(0));
            let follow = table.map(|t| {
                tokio::spawn(syncd::bwlimit::follow(t, throttle.clone(), None)).abort_handle()
            });
            let throttle = (args.push.bwlimit.is_some() || follow.is_some()).then_some(throttle);
            let pushed = syncd::push::push_remote_throttled(src, addr, &peer_id, &identity, home, &args.push, throttle, None)
                .await
                .map_err(anyhow::Error::from);
            if let Some(f) = follow {
                f.abort();
            }
            pushed
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (report, summary) = result?;
    for w in &summary.warnings {
        if !(args.quiet && w.skipped_special) {
            eprintln!("syncd: warning: {w}");
        }
    }
    for (p, why) in &report.unsettled {
        eprintln!(
            "syncd: warning: {}: {why}",
            src.join(display_path(p)).display()
        );
    }
    // Entries the source has but could not read are not in its manifest, so the receiver's
    // root may well equal it: that is not "identical". They were kept as they were at the
    // destination (never deleted), and the push says so and exits 1.
    let unreadable = summary.errors().count() + report.unsettled.len();
    let secs = t.elapsed().as_secs_f64();
    let ratio = if report.bytes_encoded > 0 {
        report.bytes_sent as f64 / report.bytes_encoded as f64
    } else {
        1.0
    };
    let mut out = std::io::stdout().lock();
    if args.push.dry_run {
        let mut changes = report.changes.clone();
        changes.sort_by(|a, b| a.2.cmp(&b.2));
        if args.json {
            let v = json!({
                "dry_run": true,
                "identical": changes.is_empty(),
                "root": report.root.to_hex(),
                "changes": changes.iter().map(|(m, a, p)| change_json(*m, *a, p)).collect::<Vec<_>>(),
            });
            writeln!(out, "{v}")?;
        } else {
            for (m, a, p) in &changes {
                write_change(&mut out, args.null, *m, *a, p)?;
            }
        }
        if unreadable > 0 {
            eprintln!(
                "syncd: {unreadable} source entries could not be read (listed above): a push would not send them"
            );
            return Ok(Outcome::Found);
        }
        return Ok(if changes.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Found
        });
    }
    if args.json {
        let v = json!({
            "files_scanned": report.files_scanned,
            "bytes_scanned": report.bytes_scanned,
            "files_transferred": report.files_transferred,
            "chunks_sent": report.chunks_sent,
            "bytes_sent": report.bytes_sent,
            "bytes_encoded": report.bytes_encoded,
            "wire_bytes": report.wire_bytes,
            "chunks_deduplicated": report.chunks_deduplicated,
            "bytes_deduplicated": report.bytes_deduplicated,
            "compression_ratio": ratio,
            "removed": report.removed,
            "rereads": report.rereads,
            "changes": sorted_changes(&report.changes).iter().map(|(m, a, p)| change_json(*m, *a, p)).collect::<Vec<_>>(),
            "seconds": secs,
            "root": report.root.to_hex(),
            "receiver_root": report.receiver_root.to_hex(),
            "identical": report.identical() && unreadable == 0,
            "unreadable": summary.errors().map(|w| w.path.display().to_string()).chain(report.unsettled.iter().map(|(p, _)| display_path(p))).collect::<Vec<_>>(),
            "owners": args.push.scan.owners,
            "direct_copy": report.direct,
            "bulk_files": report.bulk_files,
        });
        writeln!(out, "{v}")?;
    } else {
        for (m, a, p) in sorted_changes(&report.changes) {
            write_change(&mut out, args.null, m, a, &p)?;
        }
        if !args.quiet {
            // A sentence: what was written, what travelled, what was already there.
            let travelled = if remote {
                format!(
                    "sent {} ({} on the wire{})",
                    human_bytes(report.bytes_sent),
                    human_bytes(report.wire_bytes),
                    if ratio > 1.005 {
                        format!(", compressed {ratio:.2}x")
                    } else {
                        String::new()
                    }
                )
            } else {
                format!("copied {}", human_bytes(report.bytes_sent))
            };
            writeln!(
                out,
                "pushed {} files ({}) in {:.2}s: wrote {} files, {travelled}, reused {} already at DEST, removed {} entries",
                report.files_scanned,
                human_bytes(report.bytes_scanned),
                secs,
                report.files_transferred,
                human_bytes(report.bytes_deduplicated),
                report.removed,
            )?;
            writeln!(
                out,
                "root {} {}",
                report.root,
                if report.identical() && unreadable == 0 {
                    "(DEST is identical)"
                } else {
                    "(DEST differs)"
                },
            )?;
        }
    }
    if unreadable > 0 {
        eprintln!(
            "syncd: {unreadable} source entries could not be read consistently (listed above); they were not sent, and DEST keeps its copies of them"
        );
        return Ok(Outcome::Found);
    }
    if !report.identical() {
        eprintln!(
            "syncd: the receiver's root {} differs from the source's {}: it keeps entries the source lacks (use --delete) or the source changed during the push (push again)",
            report.receiver_root, report.root
        );
        return Ok(Outcome::Found);
    }
    Ok(Outcome::Ok)
}
