//! `syncd push SRC DEST --watch`: a full push, then a push of each debounced batch of
//! changes that inotify reports, until stopped.
//!
//! The flow, top to bottom in [`watch`]: start watching (before the first push, so that
//! nothing written during it is missed) → full push → loop { wait for events, a final-sync
//! request, the safety rescan or the stop signal → debounce → rescan only the changed
//! paths through the stat cache (`ScanOptions::changed_only`) → push }. A push that fails
//! (network cut, receiver restarted) is retried after a capped, jittered backoff; the
//! merkle descent of the retry finds whatever the failed one left, since the source's
//! manifest already holds the changes. An inotify queue overflow, or too few watches for
//! the tree, turns into full rescans with a warning naming the sysctl to raise: changes are
//! never missed silently.
//!
//! [`Batcher`] is the sans-IO part: which paths are dirty, since when, and when the batch
//! is due, with `now` passed in. It does no IO and reads no clock.
//!
//! Each batch is one push: a new QUIC connection and session per batch over one client
//! endpoint (UDP socket) kept for the daemon's life, not one long session. A handshake on
//! loopback costs about a millisecond, far under the debounce window, and it keeps every
//! push the same well-tested session (its root check included); the receiver side pays no
//! full walk for it (see ARCHITECTURE.md, "The receiver's side of a long session").

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::control::{FinalSync, Reply, Shared};
use crate::identity::{Identity, PeerId};
use crate::manifest::display_path;
use crate::push::{self, PushError, PushOptions, PushReport};
use crate::scan::{self, Changed, Summary};

mod batch;

pub use batch::{Batch, Batcher, changed_for};

use batch::subdirs_of;

/// `--debounce`'s default.
pub const DEBOUNCE: Duration = Duration::from_millis(20);

/// `--rescan-interval`'s default.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(600);

/// The longest the backoff between failed pushes grows to.
pub const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// How often the tree is rescanned in full when inotify cannot watch all of it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Where a watching push sends to.
#[derive(Debug)]
pub enum Dest {
    /// A local directory.
    Local(PathBuf),
    /// A `syncd serve`.
    Remote {
        /// Its address.
        addr: SocketAddr,
        /// Its peer id.
        peer_id: PeerId,
        /// Our identity.
        identity: Box<Identity>,
    },
}

impl Dest {
    fn name(&self) -> String {
        match self {
            Dest::Local(p) => p.display().to_string(),
            Dest::Remote { addr, .. } => addr.to_string(),
        }
    }
}

/// Options of a watch.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Quiet time after an event before the batch goes (`--debounce`).
    pub debounce: Duration,
    /// Full rescan this often even without events (`--rescan-interval`).
    pub rescan_interval: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            debounce: DEBOUNCE,
            rescan_interval: RESCAN_INTERVAL,
        }
    }
}

/// Errors that end a watch (a failing push does not: it is retried).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify could not be set up on the tree.
    #[error("{}: cannot watch: {source}", path.display())]
    Watch {
        /// The tree.
        path: PathBuf,
        /// Why.
        #[source]
        source: notify::Error,
    },
    /// The source tree is not usable.
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
}

// ------------------------------------------------------------------ sans-IO batching

// ------------------------------------------------------------------ the loop

/// A jittered, capped exponential backoff: 100 ms doubling per failure, at most
/// [`BACKOFF_CAP`], times a factor in [0.5, 1).
fn backoff(failures: u32) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.min(10))
        .min(BACKOFF_CAP);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(failures);
    let jitter = 0.5 + (h.finish() % 1000) as f64 / 2000.0;
    base.mul_f64(jitter)
}

/// The daemon's state between batches.
struct Daemon {
    src: PathBuf,
    root: PathBuf,
    dest: Dest,
    home: PathBuf,
    opts: PushOptions,
    shared: Arc<Shared>,
    /// Files the last push gave up on (they kept changing): pending until a push settles
    /// them.
    unsettled: Vec<Vec<u8>>,
    /// When the oldest change not yet applied remotely was seen.
    unapplied_since: Option<Instant>,
    /// The last push succeeded with equal roots.
    in_sync: bool,
    failures: u32,
    /// `exclude_path` relative to the root, if the state directory is inside the tree.
    skip: Option<Vec<u8>>,
    /// One client endpoint (UDP socket) for every push to a remote DEST.
    endpoint: Option<quinn::Endpoint>,
}

/// What a successful push tells the status: both roots, no error, the destination's free
/// space, and (only a `full` scan counts the whole tree) the tree's bytes.
fn pushed(s: &mut crate::control::Status, report: &PushReport, full: bool) {
    s.local_root = report.root.to_hex();
    s.peer_root = Some(report.receiver_root.to_hex());
    s.last_error = None;
    if full {
        s.tree_bytes = Some(report.bytes_scanned);
    }
    s.destination_free_bytes = report.receiver_free_bytes;
}

impl Daemon {
    /// One push of `changed` (all of the tree if `None`).
    async fn push(
        &self,
        changed: Option<Changed>,
        verify_dest: bool,
        dry_run: bool,
    ) -> Result<(PushReport, Summary), PushError> {
        let mut opts = self.opts.clone();
        opts.scan.changed_only = changed.map(Arc::new);
        opts.verify_dest |= verify_dest;
        opts.dry_run = dry_run;
        // A dry run lists differences: extraneous entries too, whatever --delete says.
        opts.delete |= dry_run;
        let rate = self.shared.throttle().rate();
        opts.bwlimit = Some(rate).filter(|&r| r > 0);
        match self.push_once(&opts).await {
            // A directory the partial rescan would keep has no record (it appeared and
            // vanished between events, say): rescan everything.
            Err(PushError::Scan(scan::ScanError::NotStored(_)))
                if opts.scan.changed_only.is_some() =>
            {
                opts.scan.changed_only = None;
                self.push_once(&opts).await
            }
            r => r,
        }
    }

    async fn push_once(&self, opts: &PushOptions) -> Result<(PushReport, Summary), PushError> {
        match &self.dest {
            Dest::Local(d) => push::push_local(&self.src, d, &self.home, opts).await,
            Dest::Remote {
                addr,
                peer_id,
                identity,
            } => {
                push::push_remote_throttled(
                    &self.src,
                    *addr,
                    peer_id,
                    identity,
                    &self.home,
                    opts,
                    Some(self.shared.throttle().clone()),
                    self.endpoint.as_ref(),
                )
                .await
            }
        }
    }

    /// Pushes `batch`; on failure puts it back into `batcher` and returns the backoff.
    async fn run_batch(&mut self, batch: Batch, batcher: &mut Batcher) -> Option<Duration> {
        let t = Instant::now();
        if let Some(s) = batch.since {
            self.unapplied_since = Some(self.unapplied_since.map_or(s, |u| u.min(s)));
        }
        let changed = (!batch.full).then(|| {
            let mut paths = batch.paths.clone();
            paths.extend(self.unsettled.iter().cloned());
            changed_for(&paths, |p| subdirs_of(&self.root, p))
        });
        let result = self.push(changed, false, false).await;
        match result {
            Ok((report, summary)) => {
                crate::metrics::batch_pushed(report.sent());
                self.failures = 0;
                self.unsettled = self.unsettled_after(&report, &summary);
                self.in_sync = report.identical();
                let secs = t.elapsed().as_secs_f64().max(1e-6);
                // Applied: unless more came meanwhile, or files are left pending.
                self.unapplied_since = if self.unsettled.is_empty() {
                    None
                } else {
                    self.unapplied_since
                };
                self.shared.update(|s| {
                    pushed(s, &report, batch.full);
                    s.rate_bytes_per_sec = report.wire_bytes as f64 / secs;
                });
                let line = format!(
                    "batch of {} paths{} to {}: {} files sent, {} bytes on the wire, {:.3}s",
                    batch.paths.len(),
                    if batch.full { " (full rescan)" } else { "" },
                    self.dest.name(),
                    report.files_transferred,
                    report.wire_bytes,
                    secs,
                );
                // A full rescan is rare and worth seeing; ordinary batches are debug.
                if batch.full {
                    tracing::info!("{line}");
                } else {
                    tracing::debug!("{line}");
                }
                if !report.unsettled.is_empty() {
                    tracing::warn!(
                        "{} files kept changing during the push and stay pending: {}",
                        report.unsettled.len(),
                        report
                            .unsettled
                            .iter()
                            .take(5)
                            .map(|(p, _)| display_path(p))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                // A push that ended with different roots without leaving files pending
                // met a source that changed during it: the events that say so are queued,
                // and the next batch picks them up.
                None
            }
            Err(e) => {
                crate::metrics::error();
                self.failures += 1;
                self.in_sync = false;
                let wait = backoff(self.failures);
                tracing::warn!(
                    "push to {} failed: {e}; retrying in {:.1}s",
                    self.dest.name(),
                    wait.as_secs_f64()
                );
                self.shared.update(|s| {
                    s.reconnects += 1;
                    s.last_error = Some(e.to_string());
                    s.rate_bytes_per_sec = 0.0;
                });
                batcher.restore(batch);
                Some(wait)
            }
        }
    }

    /// `final-sync`: a full stat-walk push whose receiver also walks its whole tree; the
    /// roots must be equal and nothing left pending.
    async fn final_sync(&mut self, batcher: &mut Batcher) -> Reply {
        let mut pending = batcher.take();
        pending.full = true;
        let since = pending.since;
        match self.push(None, true, false).await {
            Err(e) => {
                batcher.restore(pending);
                self.in_sync = false;
                self.shared
                    .update(|s| s.last_error = Some(format!("final sync: {e}")));
                Reply::Error(format!("final sync failed: {e}"))
            }
            Ok((report, summary)) => {
                crate::metrics::batch_pushed(report.sent());
                self.unsettled = self.unsettled_after(&report, &summary);
                self.in_sync = report.identical();
                self.failures = 0;
                self.shared.update(|s| pushed(s, &report, true));
                if report.identical() && self.unsettled.is_empty() {
                    self.unapplied_since = None;
                    return Reply::FinalSync(FinalSync::Converged {
                        root: report.root.to_hex(),
                    });
                }
                if let Some(s) = since {
                    self.unapplied_since = Some(self.unapplied_since.map_or(s, |u| u.min(s)));
                }
                // Name what differs: a dry run against the receiver as it is now.
                let mut differences: BTreeSet<String> =
                    self.unsettled.iter().map(|p| display_path(p)).collect();
                match self.push(None, false, true).await {
                    Ok((dry, _)) => {
                        differences.extend(dry.changes.iter().map(|(_, _, p)| display_path(p)))
                    }
                    Err(e) => {
                        differences.insert(format!("(could not list the differences: {e})"));
                    }
                }
                if differences.is_empty() {
                    differences.insert("(the source changed during the final sync)".into());
                }
                Reply::FinalSync(FinalSync::Differs {
                    differences: differences.into_iter().collect(),
                })
            }
        }
    }

    /// What a push left pending: the files it gave up on (they kept changing while it read
    /// them) and the entries the scan could not read consistently.
    fn unsettled_after(&self, report: &PushReport, summary: &Summary) -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = report.unsettled.iter().map(|(p, _)| p.clone()).collect();
        v.extend(summary.errors().filter_map(|w| {
            let rel = w.path.strip_prefix(&self.root).ok()?;
            Some(rel.as_os_str().as_bytes().to_vec())
        }));
        v.sort();
        v.dedup();
        v
    }

    fn publish(&self, batcher: &Batcher) {
        let oldest = match (self.unapplied_since, batcher.since()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let pending = (batcher.len() + self.unsettled.len()) as u64;
        let pending_bytes: u64 = batcher
            .paths
            .iter()
            .chain(self.unsettled.iter())
            .filter_map(|p| {
                std::fs::symlink_metadata(self.root.join(std::ffi::OsStr::from_bytes(p))).ok()
            })
            .filter(|m| m.is_file())
            .map(|m| m.len())
            .sum();
        let converged = self.in_sync && batcher.is_empty() && self.unsettled.is_empty();
        self.shared.set_unapplied_since(oldest);
        self.shared.update(|s| {
            s.converged = converged && s.peer_root.as_deref() == Some(s.local_root.as_str());
            s.pending_files = pending.max(u64::from(!batcher.is_empty() && pending == 0));
            s.pending_bytes = pending_bytes;
        });
    }

    /// The path of an event relative to the root, if it is inside the tree and not the
    /// state directory's.
    fn relative(&self, p: &Path) -> Option<Vec<u8>> {
        let rel = p.strip_prefix(&self.root).ok()?.as_os_str().as_bytes();
        if let Some(skip) = &self.skip
            && (rel == skip.as_slice()
                || (rel.starts_with(skip) && rel.get(skip.len()) == Some(&b'/')))
        {
            return None;
        }
        Some(rel.to_vec())
    }
}

/// Watches `src` and keeps `dest` equal to it until `stop` resolves. Status and final
/// syncs go through `shared` (its throttle is the bandwidth cap).
pub async fn watch(
    src: &Path,
    dest: Dest,
    home: &Path,
    opts: PushOptions,
    wopts: WatchOptions,
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), WatchError> {
    use notify::Watcher;
    let root = scan::canonical_root(src)?;
    let (tx, mut events) = mpsc::unbounded_channel();
    // Symlinks are never followed: the tree has them as links. Followed, a link to a
    // directory of the tree re-registers that directory's inotify watch under the link's
    // path, and its events then name paths the changed-only rescan never looks at (a
    // /usr/share copy lost perl/5.36.0's changes to perl/5.36 -> 5.36.0 that way).
    let config = notify::Config::default().with_follow_symlinks(false);
    let mut watcher = notify::RecommendedWatcher::new(
        move |r| {
            let _ = tx.send(r);
        },
        config,
    )
    .map_err(|source| WatchError::Watch {
        path: root.clone(),
        source,
    })?;
    let mut polling = false;
    if let Err(e) = watcher.watch(&root, notify::RecursiveMode::Recursive) {
        if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
            tracing::warn!(
                "too few inotify watches for {} ({e}); rescanning the whole tree every {}s instead: raise the sysctl fs.inotify.max_user_watches",
                root.display(),
                POLL_INTERVAL.as_secs()
            );
            polling = true;
        } else {
            return Err(WatchError::Watch {
                path: root.clone(),
                source: e,
            });
        }
    }
    if !polling {
        tracing::info!("inotify watch set on {}", root.display());
    }
    let skip = opts
        .scan
        .exclude_path
        .as_ref()
        .and_then(|p| p.strip_prefix(&root).ok())
        .map(|r| r.as_os_str().as_bytes().to_vec())
        .filter(|r| !r.is_empty());
    let mut d = Daemon {
        src: src.to_path_buf(),
        root: root.clone(),
        dest,
        home: home.to_path_buf(),
        opts,
        shared: shared.clone(),
        unsettled: Vec::new(),
        unapplied_since: None,
        in_sync: false,
        failures: 0,
        skip,
        endpoint: None,
    };
    if matches!(d.dest, Dest::Remote { .. }) {
        match crate::transport::client_endpoint() {
            Ok(e) => d.endpoint = Some(e),
            // Each push then makes its own and says why it cannot.
            Err(e) => tracing::warn!("cannot keep a client endpoint: {e}"),
        }
    }
    let mut finals = shared.final_syncs();
    let mut batcher = Batcher::new(wopts.debounce);
    // The first push is a full one.
    batcher.note_full(Instant::now());
    let mut retry_at: Option<tokio::time::Instant> = Some(tokio::time::Instant::now());
    let rescan_every = if polling {
        POLL_INTERVAL
    } else {
        wopts.rescan_interval
    };
    let mut rescan =
        tokio::time::interval_at(tokio::time::Instant::now() + rescan_every, rescan_every);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        // What inotify queued while a batch ran counts before the status says converged.
        while let Ok(ev) = events.try_recv() {
            note_event(&d, &mut batcher, ev);
        }
        d.publish(&batcher);
        // The next batch is due at the debounce deadline, or after the backoff.
        let due = match (batcher.due(), retry_at) {
            (_, Some(r)) => Some(r),
            (Some(t), None) => Some(tokio::time::Instant::from_std(t)),
            (None, None) => None,
        };
        let paused = shared.is_paused();
        tokio::select! {
            _ = &mut stop => break,
            Some(reply) = finals.recv() => {
                // Drain what inotify already queued, so the final sync covers it.
                while let Ok(ev) = events.try_recv() {
                    note_event(&d, &mut batcher, ev);
                }
                let r = d.final_sync(&mut batcher).await;
                let _ = reply.send(r);
                retry_at = None;
            }
            Some(ev) = events.recv() => {
                note_event(&d, &mut batcher, ev);
                while let Ok(ev) = events.try_recv() {
                    note_event(&d, &mut batcher, ev);
                }
            }
            _ = rescan.tick() => batcher.note_full(Instant::now()),
            _ = async {
                match due {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            }, if !paused && !batcher.is_empty() => {
                // `pause` may have come while this select waited: no batch starts after
                // its reply.
                if shared.is_paused() {
                    continue;
                }
                let batch = batcher.take();
                retry_at = d
                    .run_batch(batch, &mut batcher)
                    .await
                    .map(|wait| tokio::time::Instant::now() + wait);
            }
            _ = shared.wait_unpaused(), if paused => {}
        }
    }
    drop(watcher);
    Ok(())
}

/// Adds one inotify event (or error) to the batch.
fn note_event(d: &Daemon, batcher: &mut Batcher, ev: notify::Result<notify::Event>) {
    use notify::event::{AccessKind, AccessMode, EventKind};
    let now = Instant::now();
    match ev {
        Err(e) => {
            tracing::warn!(
                "inotify error ({e}); rescanning the whole tree{}",
                if matches!(e.kind, notify::ErrorKind::MaxFilesWatch) {
                    ": raise the sysctl fs.inotify.max_user_watches"
                } else {
                    ""
                }
            );
            d.shared
                .update(|s| s.last_error = Some(format!("inotify: {e}")));
            crate::metrics::overflow_rescan();
            batcher.note_full(now);
        }
        Ok(ev) => {
            if ev.need_rescan() {
                tracing::warn!(
                    "the inotify queue overflowed; rescanning the whole tree: raise the sysctl fs.inotify.max_queued_events"
                );
                crate::metrics::overflow_rescan();
                batcher.note_full(now);
                return;
            }
            match ev.kind {
                EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
                EventKind::Access(_) => return,
                _ => {}
            }
            crate::metrics::watch_events(1);
            for p in &ev.paths {
                if let Some(rel) = d.relative(p) {
                    batcher.note(rel, now);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn set(paths: &[&str]) -> BTreeSet<Vec<u8>> {
        paths.iter().map(|p| p.as_bytes().to_vec()).collect()
    }

    fn strs(s: &HashSet<Vec<u8>>) -> Vec<String> {
        let mut v: Vec<String> = s.iter().map(|p| display_path(p)).collect();
        v.sort();
        v
    }

    #[test]
    fn changed_lists_every_ancestor_and_new_directories() {
        let c = changed_for(&set(&["a/b/c.txt", "top", "", "new"]), |p| {
            (p == b"new").then(|| vec![b"new/x".to_vec(), b"new/x/y".to_vec()])
        });
        assert_eq!(strs(&c.dirs), ["a", "a/b", "new", "new/x", "new/x/y"]);
        assert_eq!(strs(&c.entries), ["a/b/c.txt", "new", "top"]);
    }

    #[test]
    fn batches_are_due_after_quiet_and_capped_when_never_quiet() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Batcher::new(ms(20));
        assert_eq!(b.due(), None);
        b.note(b"a".to_vec(), t0);
        assert_eq!(b.due(), Some(t0 + ms(20)));
        b.note(b"b".to_vec(), t0 + ms(15));
        assert_eq!(b.due(), Some(t0 + ms(35)));
        // An event every 15 ms forever: due at the 200 ms cap.
        for i in 2..40 {
            b.note(b"c".to_vec(), t0 + ms(15 * i));
        }
        assert_eq!(b.due(), Some(t0 + ms(200)));
        let batch = b.take();
        assert_eq!(batch.paths.len(), 3);
        assert!(b.is_empty() && b.due().is_none());
        // A failed batch goes back, keeping its age.
        b.note(b"d".to_vec(), t0 + ms(700));
        b.restore(batch);
        assert_eq!(b.since(), Some(t0));
        assert_eq!(b.len(), 4);
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for n in 0..40 {
            let d = backoff(n);
            assert!(d <= BACKOFF_CAP, "{n}: {d:?}");
            assert!(d >= Duration::from_millis(50), "{n}: {d:?}");
        }
        assert!(backoff(30) >= BACKOFF_CAP / 2);
    }
}
