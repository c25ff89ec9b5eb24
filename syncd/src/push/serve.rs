//! `syncd serve`: accepts QUIC connections, admits one session at a time into the root,
//! supersedes a peer's older connection, and shuts down gracefully.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::prepare::{Preparing, ReceiveOptions};
use super::receive::{Received, run_receiver};
use super::{DATA_STREAMS, PushError, lock, part_key};
use crate::fsmeta;
use crate::identity::PeerId;
use crate::scan;
use crate::transport;

/// How a [`serve`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServeEnd {
    /// Every running push finished (or none was running).
    Clean,
    /// A push was still running when the shutdown timeout passed or a second signal came,
    /// and was cut off (the pusher's next push resumes it).
    CutOff,
}

/// Serves pushes into `root` until the first message on `signals`; sessions are serialised
/// (one writer at a time). On that first message no new session starts (connections
/// waiting for their turn are told the server is shutting down) and the running one may
/// finish, for up to `shutdown_timeout`; a second message cuts it off at once. A session
/// that makes no progress for `idle_timeout` ends with an error naming what it waited
/// for, so that one stalled peer never holds the others up for longer.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    endpoint: quinn::Endpoint,
    root: PathBuf,
    home: PathBuf,
    signals: mpsc::UnboundedReceiver<()>,
    log: Arc<dyn Fn(String) + Send + Sync>,
    idle_timeout: Duration,
    shutdown_timeout: Duration,
) -> Result<ServeEnd, PushError> {
    serve_with(
        endpoint,
        root,
        home,
        signals,
        log,
        idle_timeout,
        shutdown_timeout,
        None,
    )
    .await
}

/// [`serve`], reporting each session's outcome to a control socket's state.
#[allow(clippy::too_many_arguments)]
pub async fn serve_with(
    endpoint: quinn::Endpoint,
    root: PathBuf,
    home: PathBuf,
    mut signals: mpsc::UnboundedReceiver<()>,
    log: Arc<dyn Fn(String) + Send + Sync>,
    idle_timeout: Duration,
    shutdown_timeout: Duration,
    control: Option<Arc<crate::control::Shared>>,
) -> Result<ServeEnd, PushError> {
    let root = scan::canonical_root(&root)?;
    // The mode of the manifest that the last session left current, if it succeeded: the
    // next session then lists only the root instead of walking the tree.
    let current: Arc<Mutex<Option<bool>>> = Arc::default();
    let gate = Arc::new(tokio::sync::Mutex::new(()));
    let stopping = Arc::new(AtomicBool::new(false));
    // The newest connection of each peer, running or waiting for its turn.
    let latest: Latest = Arc::default();
    let mut serial = 0u64;
    let mut sessions = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = signals.recv() => break,
            incoming = endpoint.accept() => {
                let Some(incoming) = incoming else { break };
                let (root, home, gate, log) = (root.clone(), home.clone(), gate.clone(), log.clone());
                let (latest, stopping) = (latest.clone(), stopping.clone());
                let (current, control) = (current.clone(), control.clone());
                serial += 1;
                let me = serial;
                sessions.spawn(async move {
                    let addr = incoming.remote_address();
                    match transport::accept(incoming).await {
                        Err(e) => log(format!("rejected connection from {addr}: {}", untold(&e.to_string(), &addr.to_string()))),
                        Ok((conn, peer_id)) => {
                            let peer = format!("{addr} ({})", peer_id.short());
                            // A peer pushes one tree at a time into this root, so its older
                            // connection is one whose pusher was killed or cut off: end it
                            // now rather than make the new push wait out its idle timeout.
                            let older = lock(&latest).insert(peer_id, (me, conn.clone()));
                            if let Some((_, old)) = older {
                                log(format!("push from {peer} supersedes its older connection from {}", old.remote_address()));
                                old.close(quinn::VarInt::from_u32(2), SUPERSEDED);
                            }
                            let turn = gate.lock().await;
                            if let Some(why) = conn.close_reason() {
                                log(format!("push from {peer} ended before its turn: {why}"));
                            } else if stopping.load(Ordering::Relaxed) {
                                log(format!("push from {peer} refused: shutting down"));
                                conn.close(quinn::VarInt::from_u32(3), SHUTTING_DOWN);
                            } else {
                                let t = Instant::now();
                                log(format!("push from {peer} into {}", root.display()));
                                let trusted = lock(&current).take();
                                match serve_session(&conn, &peer, &root, &home, idle_timeout, trusted).await {
                                    Ok(r) => {
                                        let n = r.totals;
                                        crate::metrics::session_received(&n, conn.stats().udp_rx.bytes);
                                        *lock(&current) = r.owners;
                                        if let Some(c) = &control {
                                            c.update(|s| {
                                                s.local_root = r.root.map(|h| h.to_hex()).unwrap_or_default();
                                                s.peer_root = r.sender_root.map(|h| h.to_hex());
                                                s.converged = r.root.is_some() && r.root == r.sender_root;
                                                s.last_error = None;
                                            });
                                        }
                                        log(format!(
                                            "push from {peer} done: {} files written, {} chunks received, {} reused, {} removed, {:.2}s",
                                            n.files, n.chunks_received, n.chunks_reused, n.removed, t.elapsed().as_secs_f64()
                                        ))
                                    }
                                    Err(e) => {
                                        crate::metrics::error();
                                        if let Some(c) = &control {
                                            c.update(|s| {
                                                s.converged = false;
                                                s.last_error = Some(format!("push from {peer}: {e}"));
                                            });
                                        }
                                        log(format!("push from {peer} failed: {e}"))
                                    }
                                }
                            }
                            conn.close(quinn::VarInt::from_u32(0), b"done");
                            drop(turn);
                            let mut l = lock(&latest);
                            if l.get(&peer_id).is_some_and(|(id, _)| *id == me) {
                                l.remove(&peer_id);
                            }
                        }
                    }
                });
            }
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    // No new session: new connections are refused, waiting ones told why on their turn.
    stopping.store(true, Ordering::Relaxed);
    endpoint.set_server_config(None);
    let running = !sessions.is_empty();
    if running {
        log(format!(
            "shutting down: letting the running push finish (up to {}s; a second signal stops it now)",
            shutdown_timeout.as_secs_f64()
        ));
    }
    let finished = tokio::select! {
        _ = async { while sessions.join_next().await.is_some() {} } => true,
        _ = tokio::time::sleep(shutdown_timeout) => false,
        _ = signals.recv() => false,
    };
    let end = if finished {
        ServeEnd::Clean
    } else {
        log("shutting down: cutting off the running push (its next push resumes it)".into());
        ServeEnd::CutOff
    };
    endpoint.close(quinn::VarInt::from_u32(3), SHUTTING_DOWN);
    sessions.abort_all();
    while sessions.join_next().await.is_some() {}
    let _ = tokio::time::timeout(Duration::from_secs(2), endpoint.wait_idle()).await;
    Ok(end)
}

/// Close reason for connections refused because the server is shutting down.
pub(super) const SHUTTING_DOWN: &[u8] = b"server shutting down";

/// `message` without a leading repetition of `who` (an error that already names the peer,
/// logged after "from {who}").
pub(super) fn untold<'a>(message: &'a str, who: &str) -> &'a str {
    message
        .strip_prefix(&format!("rejected connection from {who}: "))
        .unwrap_or(message)
}

/// Each peer's newest connection, with the number `serve` gave it.
pub(super) type Latest = Arc<Mutex<HashMap<PeerId, (u64, quinn::Connection)>>>;

/// Close reason for a connection a newer one from the same peer replaced.
pub(super) const SUPERSEDED: &[u8] = b"superseded by a newer push from the same peer";

pub(super) async fn serve_session(
    conn: &quinn::Connection,
    peer: &str,
    root: &Path,
    home: &Path,
    idle_timeout: Duration,
    trusted: Option<bool>,
) -> Result<Received, PushError> {
    let conn_err = |e: quinn::ConnectionError| PushError::Io {
        peer: peer.to_string(),
        source: std::io::Error::other(e),
    };
    let opts = ReceiveOptions {
        home: home.to_path_buf(),
        owners: fsmeta::running_as_root(),
        parts: part_key(home)?,
        idle_timeout,
        filter: crate::filter::Filter::default(),
    };
    // Refresh the manifest now, while the sender scans; its first stream shows up only
    // once it sends `Hello`.
    // A manifest the previous session left current in this mode needs no walk.
    let changed = (trusted == Some(opts.owners)).then(scan::Changed::default);
    let mut preparing = Preparing::start(root, &opts, changed);
    let (cw, cr) = match conn.accept_bi().await {
        Ok(s) => s,
        Err(e) => {
            preparing.settle().await;
            return Err(conn_err(e));
        }
    };
    let (tx, rx) = mpsc::channel(DATA_STREAMS);
    let c = conn.clone();
    let accept_data = tokio::spawn(async move {
        while let Ok(s) = c.accept_uni().await {
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    let result = run_receiver(peer, root, &mut preparing, &opts, cr, cw, rx).await;
    preparing.settle().await;
    accept_data.abort();
    // Give the last frame (Done, or Refuse with the reason) time to reach the sender
    // before the connection is closed: the sender closes once it has read it.
    let linger = if result.is_ok() { 5 } else { 2 };
    let _ = tokio::time::timeout(Duration::from_secs(linger), conn.closed()).await;
    result
}
