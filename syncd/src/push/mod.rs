//! The push pipeline, top to bottom: scan → hello/root compare → merkle descent →
//! want/have → send chunks → apply → rescan → verify roots.
//!
//! These are the IO drivers around the sans-IO [`crate::proto`] state machines. Both drivers
//! are generic over tokio byte streams: a remote push runs them over QUIC streams
//! ([`push_remote`] / [`serve`]), a local push ([`push_local`]) runs them over in-memory
//! pipes in one process, so both modes exercise the same code.
//!
//! Streams: one bidirectional control stream (hello, nodes, wants, done) and several
//! unidirectional data streams from sender to receiver carrying only `Chunk` frames, so that
//! chunk reads, compression, decompression and verification run in parallel.

//! The rooms: [`frames`] (frame IO), [`send`] (the sender's driver and data workers),
//! [`observe`] (the link sampler for the compression policy), [`prepare`] (the receiver's
//! manifest refresh), [`receive`] (the receiver's driver and `ReceiveSession`), [`finish`]
//! (the finisher pool) and [`serve`] (`syncd serve`). This module holds the entry points
//! and what they share.

use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::apply;
use crate::identity::{Identity, PeerId};
use crate::lock::lock;
use crate::manifest::store::Store;
use crate::manifest::{Hash, Node};
use crate::partname::PartKey;
use crate::proto::ProtoError;
use crate::proto::codec::FrameError;
use crate::scan::{self, ScanOptions, Summary};
use crate::transport::{self, Throttle};

mod bulk;
mod finish;
mod frames;
mod index;
mod observe;
mod prepare;
mod receive;
mod seed;
mod send;
mod serve;

pub use prepare::ReceiveOptions;
pub use serve::{ServeEnd, serve, serve_with};

use prepare::{Preparing, open_store};
use receive::run_receiver;
use send::{Link, Wire, run_sender};

/// Data streams per session.
pub const DATA_STREAMS: usize = 4;

/// Errors of a push or of serving one.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Scanning a tree failed.
    #[error(transparent)]
    Scan(#[from] scan::ScanError),
    /// The manifest store failed.
    #[error(transparent)]
    Store(#[from] crate::manifest::store::StoreError),
    /// Applying on the receiver failed.
    #[error(transparent)]
    Apply(#[from] apply::ApplyError),
    /// The peer broke the protocol or refused.
    #[error("{peer}: {source}")]
    Proto {
        /// Who.
        peer: String,
        /// What.
        #[source]
        source: ProtoError,
    },
    /// A frame did not decode.
    #[error("{peer}: {source}")]
    Frame {
        /// Who sent it.
        peer: String,
        /// What is wrong with it.
        #[source]
        source: FrameError,
    },
    /// A chunk's bytes did not match its id after decoding.
    #[error("{peer}: chunk {id} does not match its hash")]
    BadChunk {
        /// Who sent it.
        peer: String,
        /// Which chunk.
        id: String,
    },
    /// The connection or a stream failed.
    #[error("{peer}: {source}")]
    Io {
        /// Who.
        peer: String,
        /// What.
        #[source]
        source: std::io::Error,
    },
    /// QUIC / TLS setup failed.
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
    /// The node identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The receiver refused or aborted the push (its reason).
    #[error("{peer} aborted the push: {reason}")]
    Remote {
        /// Who.
        peer: String,
        /// Why.
        reason: String,
    },
    /// The receiver stopped the session before a step it must not take (`--max-delete`).
    #[error("{reason}")]
    Stopped {
        /// Why.
        reason: String,
    },
    /// The session made no progress for the idle timeout (`--timeout`).
    #[error("{peer}: no progress for {}s while waiting for {waiting}; giving up", after.as_secs_f64())]
    Stalled {
        /// Who.
        peer: String,
        /// The timeout.
        after: Duration,
        /// What was outstanding.
        waiting: String,
    },
    /// The peer closed the session early.
    #[error("{peer} closed the connection before the push finished")]
    Closed {
        /// Who.
        peer: String,
    },
}

/// Options of a push.
#[derive(Debug, Clone)]
pub struct PushOptions {
    /// Remove receiver entries the sender does not have.
    pub delete: bool,
    /// Report what would change; change nothing.
    pub dry_run: bool,
    /// Scan filters for the source.
    pub scan: ScanOptions,
    /// Bandwidth cap on wire bytes per second (remote pushes).
    pub bwlimit: Option<u64>,
    /// Use the scavenger congestion controller (`--bwlimit auto`, remote pushes).
    pub scavenger: bool,
    /// Fixed zstd level (`0` = off); `None` adapts.
    pub compress_level: Option<i32>,
    /// Called with (raw bytes sent, chunks sent) four times a second, for progress display.
    pub progress: Option<Progress>,
    /// Report every path created, updated, re-attributed or deleted (`--itemize-changes`).
    pub itemize: bool,
    /// Also delete receiver entries that the filter rules exclude (`--delete-excluded`);
    /// otherwise they are protected.
    pub delete_excluded: bool,
    /// Refuse to delete more than this many entries (`--max-delete`; 0 = no limit).
    pub max_delete: u64,
    /// The receiver's final root check walks its whole tree (a stat walk), so that a write
    /// into it by someone else during the push is not missed (`--verify-dest`).
    pub verify_dest: bool,
    /// How long a remote push waits for the receiver to answer at all (`--connect-timeout`).
    pub connect_timeout: Duration,
    /// How long a local receiver waits for anything to happen before it gives up on the
    /// session, naming what it waited for (`--timeout`; a remote receiver has its own).
    pub idle_timeout: Duration,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            delete: false,
            dry_run: false,
            scan: ScanOptions::default(),
            bwlimit: None,
            scavenger: false,
            compress_level: None,
            progress: None,
            itemize: false,
            delete_excluded: false,
            max_delete: 0,
            verify_dest: false,
            connect_timeout: CONNECT_TIMEOUT,
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// `--connect-timeout`'s default.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `--timeout`'s default: the longest a session waits without any progress.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where a push stands, four times a second ([`Progress`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Sent {
    /// Chunk bytes sent (before compression).
    pub raw: u64,
    /// Estimated wire bytes so far.
    pub wire: u64,
    /// Chunks sent.
    pub chunks: u64,
    /// Files and bytes of the scanned source: what at most has to travel.
    pub scanned_files: u64,
    /// See `scanned_files`.
    pub scanned_bytes: u64,
    /// Files whose content is being sent: asked for so far (grows while the trees are
    /// compared) ...
    pub files_asked: u64,
    /// ... and of those, sent in full.
    pub files_sent: u64,
}

/// A progress callback.
#[derive(Clone)]
pub struct Progress(pub Arc<dyn Fn(&Sent) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress(..)")
    }
}

/// What a push did.
#[derive(Debug, Clone, Default)]
pub struct PushReport {
    /// Source files scanned.
    pub files_scanned: u64,
    /// Their bytes.
    pub bytes_scanned: u64,
    /// The source root.
    pub root: Hash,
    /// The receiver's root after the push.
    pub receiver_root: Hash,
    /// Files written on the receiver.
    pub files_transferred: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Raw bytes of the chunks sent.
    pub bytes_sent: u64,
    /// Encoded bytes of the chunks sent (after compression).
    pub bytes_encoded: u64,
    /// Estimated wire bytes (all frames, plus per-packet overhead on QUIC).
    pub wire_bytes: u64,
    /// Chunks the receiver already had.
    pub chunks_deduplicated: u64,
    /// Bytes the receiver already had.
    pub bytes_deduplicated: u64,
    /// Entries removed on the receiver.
    pub removed: u64,
    /// Dry run or `itemize`: what would change or changed (marker, [`crate::proto::codec::attr`] bits,
    /// path).
    pub changes: Vec<(char, u8, Vec<u8>)>,
    /// Source files given up on during the push, with why: they kept changing (or became
    /// unreadable) whenever a chunk of theirs was read. The receiver kept its copy.
    pub unsettled: Vec<(Vec<u8>, String)>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Bytes available on the receiver's filesystem when the session began, as it said.
    pub receiver_free_bytes: Option<u64>,
    /// Source files read again during the push because a chunk was not where the scan had
    /// put it (the file changed under the read).
    pub rereads: u64,
    /// A local push into an empty DEST that the first copy ([`push_local`]) finished alone,
    /// without the protocol session.
    pub direct: bool,
    /// Files a remote push sent as a bulk copy into an empty receiver, before the session
    /// ([`crate::proto::bulk`]).
    pub bulk_files: u64,
}

impl PushReport {
    /// True when the receiver ended with exactly the sender's tree.
    pub fn identical(&self) -> bool {
        self.root == self.receiver_root
    }

    /// What the metrics count of it.
    pub fn sent(&self) -> crate::metrics::BatchSent {
        crate::metrics::BatchSent {
            wire_bytes: self.wire_bytes,
            logical_bytes: self.bytes_sent,
            chunks: self.chunks_sent,
            chunks_deduplicated: self.chunks_deduplicated,
            bytes_deduplicated: self.bytes_deduplicated,
            files: self.files_transferred,
        }
    }
}

/// Scans the source tree (refreshing its manifest) on the blocking pool and returns its
/// canonical root, its store and the scan summary.
async fn scan_source(
    src: &Path,
    home: &Path,
    opts: &ScanOptions,
) -> Result<(PathBuf, Store, Summary), PushError> {
    let (src, home, opts) = (src.to_path_buf(), home.to_path_buf(), opts.clone());
    tokio::task::spawn_blocking(move || {
        let root = scan::canonical_root(&src)?;
        let store = open_store(&home, &root, opts.owners)?;
        let summary = scan::refresh(&root, &store, &opts)?;
        Ok((root, store, summary))
    })
    .await
    .map_err(join_err)?
}

/// The source paths, relative to `root`, that its scan reported and left out of its
/// manifest: unreadable entries, and special files (FIFOs, sockets, devices), which are not
/// copied. The source has them, so the receiver must keep its copies. A warning outside
/// the root (it cannot be placed) stands for the whole tree.
fn unsettled_paths(root: &Path, summary: &Summary) -> Vec<Vec<u8>> {
    summary
        .warnings
        .iter()
        .map(|w| match w.path.strip_prefix(root) {
            Ok(rel) => rel.as_os_str().as_bytes().to_vec(),
            Err(_) => Vec::new(),
        })
        .collect()
}

/// The part-file key of the receiver whose state directory is `home`.
fn part_key(home: &Path) -> Result<PartKey, PushError> {
    PartKey::load(home).map_err(|source| PushError::Io {
        peer: "local".into(),
        source,
    })
}

/// A blocking task that panicked or was cancelled.
fn join_err(e: tokio::task::JoinError) -> PushError {
    PushError::Io {
        peer: "local".into(),
        source: std::io::Error::other(e),
    }
}

/// Pushes `src` into the local directory `dest` (created if missing): the same pipeline as
/// a remote push, over in-memory pipes instead of QUIC. Into an empty `dest`, the first
/// copy is made without the protocol ([`seed`]); the session then runs only if that copy
/// did not end with the source's root.
pub async fn push_local(
    src: &Path,
    dest: &Path,
    home: &Path,
    opts: &PushOptions,
) -> Result<(PushReport, Summary), PushError> {
    let io_err = |source| PushError::Io {
        peer: dest.display().to_string(),
        source,
    };
    if !dest.exists() {
        if opts.dry_run {
            return dry_run_into_nothing(src, home, opts).await;
        }
        std::fs::create_dir_all(dest).map_err(io_err)?;
    }
    // Itemized output and dry runs come from the session's comparison.
    let empty = std::fs::read_dir(dest).map_err(io_err)?.next().is_none();
    if !(empty && !opts.dry_run && !opts.itemize) {
        return session_local(src, dest, home, opts).await;
    }
    let started = std::time::Instant::now();
    let (seeded, summary, done) = seed_local(src, dest, home, opts).await?;
    if done {
        let mut report = seeded;
        report.seconds = started.elapsed().as_secs_f64();
        report.direct = true;
        return Ok((report, summary));
    }
    let (mut report, summary) = session_local(src, dest, home, opts).await?;
    report.files_transferred += seeded.files_transferred;
    report.chunks_sent += seeded.chunks_sent;
    report.bytes_sent += seeded.bytes_sent;
    report.bytes_encoded += seeded.bytes_encoded;
    report.seconds = started.elapsed().as_secs_f64();
    Ok((report, summary))
}

/// The first copy into the empty local directory `dest` ([`seed`]), then a refresh of its
/// manifest (a stat walk: the files copied are in its stat cache) for the root it ended
/// with, the report's `receiver_root`. Done (`true`) when that is the source's root, with
/// nothing left behind; otherwise something was not copied exactly, and [`push_local`]
/// runs the session.
async fn seed_local(
    src: &Path,
    dest: &Path,
    home: &Path,
    opts: &PushOptions,
) -> Result<(PushReport, Summary, bool), PushError> {
    let counters = Arc::new(seed::Counters::default());
    let parts = part_key(home)?;
    let target = apply::Target::open(dest, parts.clone())?;
    let dstore = Arc::new(open_store(home, target.root(), opts.scan.owners)?);
    let copier = Arc::new(seed::Copier::new(
        target.clone(),
        opts.scan.owners,
        counters.clone(),
        dstore.clone(),
    ));
    let scan = ScanOptions {
        sink: Some(scan::ReadSink(copier.clone())),
        ..opts.scan.clone()
    };
    let ticker = opts.progress.clone().map(|Progress(p)| {
        let c = counters.clone();
        tokio::spawn(async move {
            let period = Duration::from_millis(250);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                let ordering = std::sync::atomic::Ordering::Relaxed;
                let files = c.files.load(ordering);
                let raw = c.bytes.load(ordering);
                let scanned = (c.scanned.0.load(ordering), c.scanned.1.load(ordering));
                p(&Sent {
                    raw,
                    wire: 0,
                    chunks: c.chunks.load(ordering),
                    scanned_files: scanned.0,
                    scanned_bytes: scanned.1,
                    files_asked: scanned.0,
                    files_sent: files,
                });
            }
        })
    });
    // The rest of the copy starts as soon as the scan has read every file and gives its
    // tree, while the scan commits the source's manifest.
    let owners = opts.scan.owners;
    let tree = copier.tree_to();
    let (c, cp, t) = (counters.clone(), copier.clone(), target.clone());
    let seeding = tokio::spawn(async move {
        let (src_root, tree) = tree.await.ok()?;
        let seeded = tokio::task::spawn_blocking(move || {
            let scanned = cp.finish();
            seed::seed(&src_root, tree, &t, owners, &c, scanned)
        });
        Some(seeded.await.map_err(join_err).and_then(|r| r))
    });
    let scanned = scan_source(src, home, &scan).await;
    copier.no_tree();
    let seeded = seeding.await.map_err(join_err);
    let (_, store, summary) = match scanned {
        Ok(s) => s,
        Err(e) => {
            copier.finish();
            if let Some(t) = ticker {
                t.abort();
            }
            return Err(e);
        }
    };
    drop(store);
    let ordering = std::sync::atomic::Ordering::Relaxed;
    counters.scanned.0.store(summary.files, ordering);
    counters.scanned.1.store(summary.bytes, ordering);
    let home = home.to_path_buf();
    let filter = opts.scan.filter.clone();
    let copied = tokio::task::spawn_blocking(move || {
        // A scan that succeeded gave its tree.
        let seeded = match seeded? {
            Some(seeded) => seeded?,
            None => {
                return Err(PushError::Io {
                    peer: "local".into(),
                    source: std::io::Error::other("the source's scan gave no tree"),
                });
            }
        };
        let root = target.root().to_path_buf();
        let scan = ScanOptions {
            filter,
            known: Some(Arc::new(seeded.records.into_iter().collect())),
            ..prepare::dest_scan_options(&home, owners, parts)
        };
        let dest_summary = scan::refresh(&root, &dstore, &scan)?;
        Ok::<_, PushError>((seeded.stopped, dest_summary, root))
    })
    .await
    .map_err(join_err);
    if let Some(t) = ticker {
        t.abort();
    }
    let (stopped, dest_summary, root) = copied??;
    let bytes = counters.bytes.load(ordering);
    let report = PushReport {
        files_scanned: summary.files,
        bytes_scanned: summary.bytes,
        root: summary.root,
        receiver_root: dest_summary.root,
        files_transferred: counters.files.load(ordering),
        chunks_sent: counters.chunks.load(ordering),
        bytes_sent: bytes,
        bytes_encoded: bytes,
        receiver_free_bytes: crate::fsmeta::free_bytes(&root),
        rereads: summary.rereads,
        ..PushReport::default()
    };
    if let Some(e) = &stopped {
        tracing::debug!("the first copy stopped ({e}); the session goes on from there");
    }
    let done = report.identical() && stopped.is_none() && dest_summary.parts.is_empty();
    Ok((report, summary, done))
}

/// [`push_local`] through the protocol session.
async fn session_local(
    src: &Path,
    dest: &Path,
    home: &Path,
    opts: &PushOptions,
) -> Result<(PushReport, Summary), PushError> {
    let peer = dest.display().to_string();
    const PIPE: usize = 4 << 20;
    let (c1, c2) = tokio::io::duplex(PIPE);
    let (sr, sw) = tokio::io::split(c1);
    let (rr, rw) = tokio::io::split(c2);
    let (data_tx, data_rx) = mpsc::channel(DATA_STREAMS);
    let mut writers = Vec::new();
    for _ in 0..DATA_STREAMS {
        let (w, r) = tokio::io::duplex(PIPE);
        writers.push(w);
        let _ = data_tx.send(r).await;
    }
    drop(data_tx);
    let ropts = ReceiveOptions {
        home: home.to_path_buf(),
        owners: opts.scan.owners,
        parts: part_key(home)?,
        idle_timeout: opts.idle_timeout,
        filter: crate::filter::Filter::default(),
    };
    let dest = dest.to_path_buf();
    // The receiver refreshes its manifest while the sender scans the source.
    let receiver = tokio::spawn(async move {
        let mut preparing = Preparing::start(&dest, &ropts, None);
        let peer = dest.display().to_string();
        let r = run_receiver(&peer, &dest, &mut preparing, &ropts, rr, rw, data_rx).await;
        preparing.settle().await;
        r
    });
    let scanned = scan_source(src, home, &opts.scan).await;
    let (src_root, store, summary) = match scanned {
        Ok(s) => s,
        Err(e) => {
            receiver.abort();
            return Err(e);
        }
    };
    let snap = store.snapshot()?;
    let sent = run_sender(
        &peer,
        &src_root,
        snap,
        summary.root,
        unsettled_paths(&src_root, &summary),
        sr,
        sw,
        writers,
        opts,
        Link {
            wire: Wire::Local,
            throttle: None,
            conn: None,
            scanned: (summary.files, summary.bytes),
        },
    )
    .await;
    let received = receiver.await.map_err(join_err)?;
    // The receiver's error is the cause; the sender's is usually just "closed".
    received?;
    let mut report = sent?;
    report.files_scanned = summary.files;
    report.bytes_scanned = summary.bytes;
    report.rereads += summary.rereads;
    Ok((report, summary))
}

/// A dry run into a local DEST that does not exist: everything at the top of the source
/// would be created (as against an empty DEST, whose new directories are listed, not their
/// contents).
async fn dry_run_into_nothing(
    src: &Path,
    home: &Path,
    opts: &PushOptions,
) -> Result<(PushReport, Summary), PushError> {
    let (_, store, summary) = scan_source(src, home, &opts.scan).await?;
    let snap = store.snapshot()?;
    let mut changes = Vec::new();
    if let Some(Node::Dir { entries, .. }) =
        crate::manifest::Nodes::node(&snap, b"").map_err(PushError::Store)?
    {
        changes.extend(entries.into_iter().map(|e| ('+', 0, e.name)));
    }
    let report = PushReport {
        root: summary.root,
        files_scanned: summary.files,
        bytes_scanned: summary.bytes,
        changes,
        ..PushReport::default()
    };
    Ok((report, summary))
}

/// Pushes `src` to the `syncd serve` at `addr`, which must present `peer_id`.
pub async fn push_remote(
    src: &Path,
    addr: SocketAddr,
    peer_id: &PeerId,
    identity: &Identity,
    home: &Path,
    opts: &PushOptions,
) -> Result<(PushReport, Summary), PushError> {
    let throttle = opts.bwlimit.map(Throttle::new);
    push_remote_throttled(src, addr, peer_id, identity, home, opts, throttle, None).await
}

/// [`push_remote`] through a given `throttle` (which outlives the push, so that a watching
/// daemon's control socket can change its rate while a push runs); `opts.bwlimit` is then
/// ignored. A daemon that pushes again and again passes its own client `endpoint`: it
/// keeps running after the push, so the push does not wait for its close to go out.
#[allow(clippy::too_many_arguments)]
pub async fn push_remote_throttled(
    src: &Path,
    addr: SocketAddr,
    peer_id: &PeerId,
    identity: &Identity,
    home: &Path,
    opts: &PushOptions,
    throttle: Option<Throttle>,
    endpoint: Option<&quinn::Endpoint>,
) -> Result<(PushReport, Summary), PushError> {
    let peer = addr.to_string();
    let owned = endpoint.is_none();
    let endpoint = match endpoint {
        Some(e) => e.clone(),
        None => transport::client_endpoint()?,
    };
    // A first sync into an empty receiver goes as a bulk copy while the source is scanned
    // (`bulk`), unless the push reports per file or filters: the sink holds the scan's
    // first file until the receiver has answered the probe.
    let filtered = !opts.scan.filter.is_empty() || opts.delete_excluded;
    let sink = (crate::proto::bulk::probes(opts.dry_run, opts.itemize, filtered)
        && opts.scan.changed_only.is_none()
        && opts.scan.sink.is_none())
    .then(bulk::BulkSink::new);
    let mut scan_opts = opts.scan.clone();
    if let Some(s) = &sink {
        scan_opts.sink = Some(scan::ReadSink(s.clone()));
    }
    let totals = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
    let scan = async {
        let scanned = scan_source(src, home, &scan_opts).await;
        if let Some(s) = &sink {
            s.off();
        }
        if let Ok((_, _, summary)) = &scanned {
            totals.0.store(summary.files, Ordering::Relaxed);
            totals.1.store(summary.bytes, Ordering::Relaxed);
        }
        scanned
    };
    let conn_err = |e: quinn::ConnectionError| PushError::Io {
        peer: peer.clone(),
        source: std::io::Error::other(e),
    };
    // Connect while the source is scanned: the receiver refreshes its own manifest as soon
    // as the session starts, so both scans run at once.
    let net = async {
        let conn = tokio::time::timeout(
            opts.connect_timeout,
            transport::connect_with(&endpoint, identity, addr, peer_id, opts.scavenger),
        )
        .await
        .map_err(|_| {
            PushError::Transport(transport::TransportError::NoAnswer {
                addr,
                after: opts.connect_timeout,
            })
        })??;
        let Some(sink) = &sink else {
            return Ok((conn, None));
        };
        let (mut cw, mut cr) = conn.open_bi().await.map_err(conn_err)?;
        let (tx, rx) = mpsc::channel(64);
        let owners = opts.scan.owners;
        let sent = match bulk::probe(&mut cw, &mut cr, owners, sink, tx, &peer).await? {
            true => {
                let (th, totals) = (throttle.clone(), totals.clone());
                let sent = bulk::send_files(&conn, rx, sink.clone(), opts, th, totals, &peer);
                let sent = sent.await?;
                // The files are sent once the scan has read them all: the directories and
                // symlinks go while it commits its manifest (nothing, if it failed).
                let wire = match sink.take_tree() {
                    Some(tree) => bulk::send_tree(&mut cw, tree, sent.files, &peer).await?,
                    None => 0,
                };
                Some((sent, wire))
            }
            false => None,
        };
        Ok::<_, PushError>((conn, Some((cw, cr, sent))))
    };
    let net = async {
        let r = net.await;
        if let (Err(_), Some(s)) = (&r, &sink) {
            s.off();
        }
        r
    };
    let (scanned, connected) = tokio::join!(scan, net);
    let (conn, probed) = connected?;
    let (src_root, store, summary) = match scanned {
        Ok(s) => s,
        Err(e) => {
            conn.close(quinn::VarInt::from_u32(1), b"source scan failed");
            if owned {
                endpoint.wait_idle().await;
            }
            return Err(e);
        }
    };
    let snap = store.snapshot()?;
    let (cw, cr, bulk_sent) = match probed {
        Some(p) => p,
        None => {
            let (cw, cr) = conn.open_bi().await.map_err(conn_err)?;
            (cw, cr, None)
        }
    };
    let mut data = Vec::new();
    for _ in 0..DATA_STREAMS {
        data.push(conn.open_uni().await.map_err(conn_err)?);
    }
    let result = run_sender(
        &peer,
        &src_root,
        snap,
        summary.root,
        unsettled_paths(&src_root, &summary),
        cr,
        cw,
        data,
        opts,
        Link {
            wire: Wire::Quic,
            throttle,
            conn: Some(conn.clone()),
            scanned: (summary.files, summary.bytes),
        },
    )
    .await;
    conn.close(quinn::VarInt::from_u32(0), b"done");
    // Give the close time to go out, but do not sit out quinn's whole draining period
    // (three probe timeouts, ~0.1 s even on loopback): the receiver has said `Done`, and
    // if the close is lost it ends the session after its own linger.
    if owned {
        let _ = tokio::time::timeout(Duration::from_millis(20), endpoint.wait_idle()).await;
    }
    let mut report = result?;
    if let Some((b, bulk_wire)) = bulk_sent {
        report.bulk_files = b.files;
        report.chunks_sent += b.chunks;
        report.bytes_sent += b.raw;
        report.bytes_encoded += b.encoded;
        report.wire_bytes += b.wire + transport::wire_bytes(bulk_wire);
    }
    report.files_scanned = summary.files;
    report.bytes_scanned = summary.bytes;
    report.rereads += summary.rereads;
    Ok((report, summary))
}
