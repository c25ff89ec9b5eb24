//! The drivers of the bulk copy into an empty receiver ([`crate::proto::bulk`]).
//!
//! Sender: [`BulkSink`] is the source scan's [`crate::scan::Sink`]; it holds the scan's
//! first file until the receiver has answered `Probe` ([`probe`]), then hands each file
//! the scan reads whole to [`send_files`], whose writers (one per bulk stream) send it as
//! `File` and its chunks, through the compression policy and the `--bwlimit` throttle,
//! under a byte budget so that a slow link holds the scan back rather than fill memory.
//! Then [`send_dirs`] sends the directories' metadata and `BulkDone`.
//!
//! Receiver: [`receive`] answers `Probe`, reads each bulk stream on a blocking thread of
//! its own (read, decompress, hash each chunk, write the part file: no hand-off per file),
//! and writes through the first local copy's [`Copier`] (batches, one `syncfs`, then the
//! renames, stat-cache records committed as it goes). After `BulkDone` it makes the
//! missing directories, sets every directory's metadata, makes the renames durable and
//! refreshes its manifest, which then finds the files it wrote in the stat cache.

use std::collections::HashSet;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::frames::{DataFrame, read_data_frame, read_frame, unpacked, write_frame};
use super::prepare::{Prepared, ReceiveOptions, prepare_receiver};
use super::receive::{Bases, apply_meta, decode_chunk};
use super::seed::{Copier, Counters, make_dirs, set_dirs_meta};
use super::send::{DataTx, SendStats, Wire, policy};
use super::{DATA_STREAMS, PushError, PushOptions, join_err, lock, observe};
use crate::apply::{self, Target};
use crate::chunk::{ChunkId, Chunked};
use crate::fsmeta;
use crate::manifest::FileNode;
use crate::proto::bulk::{self, Incoming};
use crate::proto::codec::{DirItem, Frame, NodeItem, Offered, batched};
use crate::proto::stream::StreamDecoder;
use crate::proto::{Meta, ProtoError, VERSION};
use crate::transport::{self, Throttle};

/// Bytes of file content the scan may have handed over and the writers not sent yet.
const BUDGET: u64 = 64 << 20;

/// Most chunk ids the sink remembers for finding duplicate files (~100 MB of memory at
/// most); a tree with more chunks sends the duplicates of the later ones again.
const MAX_TRACKED: usize = 2 << 20;

/// A file the scan read whole, on its way to a bulk stream.
pub(super) struct Outgoing {
    path: Vec<u8>,
    node: FileNode,
    meta: Meta,
    data: Chunked,
}

enum State {
    /// The receiver has not answered yet: the scan's threads wait.
    Undecided,
    /// Bulk copy: files go to the writers.
    On(mpsc::Sender<Outgoing>),
    /// No bulk copy (refused, not asked, over, or failed): files are left to the session.
    Off,
}

/// The sender's scan sink for a bulk copy ([`crate::scan::ScanOptions::sink`]).
pub(super) struct BulkSink {
    state: Mutex<State>,
    decided: Condvar,
    used: Mutex<u64>,
    room: Condvar,
    /// Chunk ids sent so far: a file made only of those is left to the session, whose
    /// receiver copies them from the files the bulk copy wrote (a tree's duplicate files
    /// travel once, as in the session).
    sent: Mutex<HashSet<ChunkId>>,
    /// The rest of the tree, once the scan has read every file ([`Sink::tree`]).
    tree: Mutex<Option<Tree>>,
}

/// The source's root and its directories and symlinks, as the scan gives them to
/// [`BulkSink`].
pub(super) type Tree = (PathBuf, crate::scan::Tree);

impl BulkSink {
    pub(super) fn new() -> Arc<BulkSink> {
        Arc::new(BulkSink {
            state: Mutex::new(State::Undecided),
            decided: Condvar::new(),
            used: Mutex::new(0),
            room: Condvar::new(),
            sent: Mutex::new(HashSet::new()),
            tree: Mutex::new(None),
        })
    }

    /// The rest of the tree, if the scan got that far.
    pub(super) fn take_tree(&self) -> Option<Tree> {
        lock(&self.tree).take()
    }

    /// The receiver takes the copy: files go to `tx`.
    fn start(&self, tx: mpsc::Sender<Outgoing>) {
        let mut s = lock(&self.state);
        if matches!(*s, State::Undecided) {
            *s = State::On(tx);
        }
        self.decided.notify_all();
    }

    /// No (more) bulk copy: the scan's threads stop waiting, and the writers end once
    /// the files handed over are sent.
    pub(super) fn off(&self) {
        *lock(&self.state) = State::Off;
        self.decided.notify_all();
        self.room.notify_all();
    }

    fn is_off(&self) -> bool {
        matches!(*lock(&self.state), State::Off)
    }

    /// Waits until `n` more bytes fit the budget (one file always fits an empty budget);
    /// false once the copy is off.
    fn take(&self, n: u64) -> bool {
        let mut used = lock(&self.used);
        while *used > 0 && *used + n > BUDGET {
            if self.is_off() {
                return false;
            }
            used = self.room.wait(used).unwrap_or_else(|e| e.into_inner());
        }
        *used += n;
        true
    }

    fn give(&self, n: u64) {
        let mut used = lock(&self.used);
        *used = used.saturating_sub(n);
        self.room.notify_all();
    }
}

impl crate::scan::Sink for BulkSink {
    fn file(
        &self,
        rel: &[u8],
        node: &FileNode,
        data: Chunked,
        owner: (u32, u32),
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) {
        let tx = {
            let mut s = lock(&self.state);
            while matches!(*s, State::Undecided) {
                s = self.decided.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            match &*s {
                State::On(tx) => tx.clone(),
                _ => return,
            }
        };
        let chunks = data.chunks();
        let duplicate = {
            let mut sent = lock(&self.sent);
            let known = !chunks.is_empty() && chunks.iter().all(|c| sent.contains(&c.id));
            if sent.len() < MAX_TRACKED {
                sent.extend(chunks.iter().map(|c| c.id));
            }
            known
        };
        if duplicate {
            return;
        }
        let n = node.size;
        if !self.take(n) {
            return;
        }
        let out = Outgoing {
            path: rel.to_vec(),
            node: node.clone(),
            meta: Meta {
                mtime_ns: node.mtime_ns,
                uid: owner.0,
                gid: owner.1,
                xattrs: xattrs.to_vec(),
            },
            data,
        };
        if tx.blocking_send(out).is_err() {
            // The writers are gone (the connection failed): the session reports it.
            self.give(n);
            self.off();
        }
    }

    /// Every file has been given: the writers end once they have sent what they hold,
    /// and the directories and symlinks follow them while the scan commits its manifest.
    fn tree(&self, root: &Path, tree: crate::scan::Tree) {
        *lock(&self.tree) = Some((root.to_path_buf(), tree));
        self.off();
    }
}

/// Turns the sink off when dropped, on every way out of the sender's bulk phase.
struct OffOnDrop(Arc<BulkSink>);

impl Drop for OffOnDrop {
    fn drop(&mut self) {
        self.0.off();
    }
}

/// Asks the receiver whether it takes a bulk copy (`Probe`, `ProbeAck`). Until this
/// returns, the scan waits at its first file; whatever it returns, the sink is decided
/// (off unless the copy is on and `tx` takes the files).
pub(super) async fn probe<CW, CR>(
    cw: &mut CW,
    cr: &mut CR,
    owners: bool,
    sink: &BulkSink,
    tx: mpsc::Sender<Outgoing>,
    peer: &str,
) -> Result<bool, PushError>
where
    CW: AsyncWrite + Unpin,
    CR: AsyncRead + Unpin,
{
    let asked = async {
        let probe = Frame::Probe {
            version: VERSION,
            owners,
            streams: DATA_STREAMS as u32,
        };
        write_frame(cw, &probe, peer).await?;
        let Some(answer) = read_frame(cr, peer).await? else {
            return Err(PushError::Closed {
                peer: peer.to_string(),
            });
        };
        bulk::answered(answer).map_err(|source| match source {
            ProtoError::Refused(reason) => PushError::Remote {
                peer: peer.to_string(),
                reason,
            },
            source => PushError::Proto {
                peer: peer.to_string(),
                source,
            },
        })
    }
    .await;
    match asked {
        Ok(true) => sink.start(tx),
        _ => sink.off(),
    }
    asked
}

/// What the bulk copy sent.
#[derive(Debug, Default)]
pub(super) struct BulkSent {
    pub(super) files: u64,
    pub(super) chunks: u64,
    pub(super) raw: u64,
    pub(super) encoded: u64,
    pub(super) wire: u64,
}

/// Sends the files `rx` brings on [`DATA_STREAMS`] bulk streams of `conn`, until the sink
/// is off and they are all sent; then ends the streams. `scanned` (files, bytes) is the
/// source's, for progress, once its scan is over.
pub(super) async fn send_files(
    conn: &quinn::Connection,
    rx: mpsc::Receiver<Outgoing>,
    sink: Arc<BulkSink>,
    opts: &PushOptions,
    throttle: Option<Throttle>,
    scanned: Arc<(AtomicU64, AtomicU64)>,
    peer: &str,
) -> Result<BulkSent, PushError> {
    let _off = OffOnDrop(sink.clone());
    let stats = Arc::new(SendStats::default());
    let same_host = transport::same_host(conn.remote_address());
    let adapt = Arc::new(Mutex::new(policy(opts, Wire::Quic, same_host)));
    let observer = tokio::spawn(observe::observe(
        stats.clone(),
        adapt.clone(),
        opts.progress.clone(),
        Some(conn.clone()),
        scanned,
        DATA_STREAMS,
    ));
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..DATA_STREAMS {
        let w = conn.open_uni().await.map_err(|e| PushError::Io {
            peer: peer.to_string(),
            source: std::io::Error::other(e),
        })?;
        let mut tx = DataTx::new(
            w,
            adapt.clone(),
            throttle.clone(),
            stats.clone(),
            Wire::Quic,
            peer.to_string(),
        );
        let (rx, sink, stats) = (rx.clone(), sink.clone(), stats.clone());
        writers.spawn(async move {
            let mut files = 0u64;
            loop {
                let next = rx.lock().await.recv().await;
                let Some(Outgoing {
                    path,
                    node,
                    meta,
                    data,
                }) = next
                else {
                    break;
                };
                let size = node.size;
                let (bytes, chunks) = data.into_parts();
                let key = path.clone();
                for _ in &chunks {
                    lock(&stats.files).queued(&key);
                }
                let item = NodeItem {
                    path,
                    node: Offered::File(node),
                    meta,
                };
                let sent = async {
                    tx.frame(&Frame::File { item }).await?;
                    send_chunks(&mut tx, bytes, &chunks).await
                }
                .await;
                sink.give(size);
                sent?;
                for _ in &chunks {
                    lock(&stats.files).sent_one(&key);
                }
                files += 1;
            }
            tx.finish().await?;
            Ok::<u64, PushError>(files)
        });
    }
    drop(rx);
    let mut files = 0;
    let mut first = None;
    while let Some(r) = writers.join_next().await {
        match r.map_err(join_err).and_then(|r| r) {
            Ok(n) => files += n,
            Err(e) => {
                sink.off();
                first.get_or_insert(e);
            }
        }
    }
    observer.abort();
    if let Some(e) = first {
        return Err(e);
    }
    Ok(BulkSent {
        files,
        chunks: stats.chunks.load(Ordering::Relaxed),
        raw: stats.raw.load(Ordering::Relaxed),
        encoded: stats.encoded.load(Ordering::Relaxed),
        wire: stats.wire.load(Ordering::Relaxed),
    })
}

/// Sends a file's chunks, in order: the file's own buffer when it is one chunk (most
/// files), else a copy of each chunk's bytes.
async fn send_chunks<W: AsyncWrite + Unpin>(
    tx: &mut DataTx<W>,
    bytes: Vec<u8>,
    chunks: &[crate::chunk::Chunk],
) -> Result<(), PushError> {
    if let [one] = chunks {
        return tx.chunk(one.id, bytes, None).await;
    }
    for c in chunks {
        let at = c.offset as usize;
        tx.chunk(c.id, bytes[at..at + c.len as usize].to_vec(), None)
            .await?;
    }
    Ok(())
}

/// Sends every directory of the source's `tree` with its metadata, parents first, and
/// every symlink with its own, then `BulkDone{files}`. An entry whose metadata cannot be
/// read now is left to the session. Returns the bytes written.
pub(super) async fn send_tree<CW: AsyncWrite + Unpin>(
    cw: &mut CW,
    tree: Tree,
    files: u64,
    peer: &str,
) -> Result<u64, PushError> {
    // One lstat (and for a directory an xattr read) per entry, on the blocking pool.
    let (dirs, links) = tokio::task::spawn_blocking(move || {
        let (src, crate::scan::Tree { dirs, symlinks, .. }) = tree;
        let dirs: Vec<DirItem> = dirs
            .into_iter()
            .filter_map(|(path, mode)| dir_meta(&src, &path, mode))
            .collect();
        let links: Vec<NodeItem> = symlinks
            .into_iter()
            .filter_map(|(path, node)| {
                let meta = super::send::source_meta(&src, &path, &node)?;
                Some(NodeItem {
                    path,
                    node: node.into(),
                    meta,
                })
            })
            .collect();
        (dirs, links)
    })
    .await
    .map_err(join_err)?;
    let mut wire = 0;
    for items in batched(dirs, |d| d.path.len() + 64) {
        wire += write_frame(cw, &Frame::Dirs { items }, peer).await?;
    }
    for items in batched(links, |l| l.path.len() + 64) {
        wire += write_frame(cw, &Frame::Symlinks { items }, peer).await?;
    }
    wire += write_frame(cw, &Frame::BulkDone { files }, peer).await?;
    Ok(wire)
}

/// The mode (as the manifest has it), owner, xattrs and mtime of the source directory
/// `rel`, or `None` if it cannot be read.
fn dir_meta(src: &Path, rel: &[u8], mode: u32) -> Option<DirItem> {
    let abs = src.join(std::ffi::OsStr::from_bytes(rel));
    let m = std::fs::symlink_metadata(&abs).ok()?;
    if !m.is_dir() {
        return None;
    }
    Some(DirItem {
        path: rel.to_vec(),
        mode,
        meta: Meta {
            mtime_ns: fsmeta::mtime_ns(&m),
            uid: m.uid(),
            gid: m.gid(),
            xattrs: fsmeta::read_xattrs(&abs).ok()?,
        },
    })
}

/// What the receiver's bulk copy wrote.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct BulkReceived {
    /// Files placed.
    pub(super) files: u64,
    /// Their chunks.
    pub(super) chunks: u64,
}

/// The receiver's answer to `Probe{version, owners, streams}`: a bulk copy only into a root
/// with no entry at all. It needs the root's listing, not the refreshed manifest, so that
/// the sender's scan (which waits for it at its first file) is not held up by the
/// receiver's refresh.
pub(super) async fn answer<CW: AsyncWrite + Unpin>(
    probe: (u32, bool, u32),
    root: &Path,
    control_w: &mut CW,
    peer: &str,
) -> Result<bool, PushError> {
    let (version, owners, streams) = probe;
    let empty = std::fs::read_dir(root).is_ok_and(|mut d| d.next().is_none());
    let can_own = fsmeta::running_as_root();
    let take = bulk::takes_bulk(version, owners, streams, empty, can_own).map_err(|source| {
        PushError::Proto {
            peer: peer.to_string(),
            source,
        }
    })?;
    write_frame(
        control_w,
        &Frame::ProbeAck {
            version: VERSION,
            bulk: take,
        },
        peer,
    )
    .await?;
    Ok(take)
}

/// Receives the bulk copy a `Probe` with `owners` announced on `streams` streams, which
/// [`answer`] took, into the prepared tree, and refreshes that tree's manifest in the
/// probe's mode (`opts.owners` is set to it). Returns the tree as the session starts.
#[allow(clippy::too_many_arguments)]
pub(super) async fn receive<DR>(
    (owners, streams): (bool, u32),
    prepared: Prepared,
    opts: &mut ReceiveOptions,
    control: &mut mpsc::Receiver<Result<Option<Frame>, PushError>>,
    data: &mut mpsc::Receiver<DR>,
    peer: &str,
) -> Result<(Prepared, BulkReceived), PushError>
where
    DR: AsyncRead + Unpin + Send + 'static,
{
    let proto = |source| PushError::Proto {
        peer: peer.to_string(),
        source,
    };
    let target = Target::open(&prepared.root, opts.parts.clone())?;
    let counters = Arc::new(Counters::default());
    let copier = Arc::new(Copier::new(
        target.clone(),
        owners,
        counters.clone(),
        prepared.store.clone(),
    ));
    // Each reader stops at the end of its stream, or when `cancel` says the session
    // failed; every way out waits for them and for the copier's flusher, so that nothing
    // of this session still holds the store when the next one opens it.
    let (cancel, cancelled) = tokio::sync::watch::channel(false);
    let mut readers = tokio::task::JoinSet::new();
    let copied = async {
        for _ in 0..streams {
            let Some(stream) = data.recv().await else {
                return Err(PushError::Closed {
                    peer: peer.to_string(),
                });
            };
            let (rt, copier, peer) = (
                tokio::runtime::Handle::current(),
                copier.clone(),
                peer.to_string(),
            );
            let cancelled = cancelled.clone();
            readers.spawn_blocking(move || read_stream(&rt, stream, &copier, cancelled, &peer));
        }
        // A stream that fails ends the session at once; the others are waited for after
        // `BulkDone`.
        let (mut dirs, mut links) = (Vec::new(), Vec::new());
        let mut received = 0;
        let said = loop {
            tokio::select! {
                frame = control.recv() => {
                    let Some(frame) = frame.unwrap_or(Ok(None))? else {
                        return Err(PushError::Closed { peer: peer.to_string() });
                    };
                    match frame {
                        Frame::Dirs { items } => dirs.extend(items),
                        Frame::Symlinks { items } => links.extend(items),
                        Frame::BulkDone { files } => break files,
                        Frame::Refuse { reason } => {
                            return Err(PushError::Remote { peer: peer.to_string(), reason });
                        }
                        f => {
                            return Err(proto(ProtoError::Unexpected {
                                frame: f.name(),
                                state: "during a bulk copy",
                            }));
                        }
                    }
                }
                Some(r) = readers.join_next() => received += r.map_err(join_err)??,
            }
        };
        while let Some(r) = readers.join_next().await {
            received += r.map_err(join_err)??;
        }
        bulk::check_done(said, received).map_err(proto)?;
        Ok((dirs, links))
    }
    .await;
    let (dirs, links) = match copied {
        Ok(entries) => entries,
        Err(e) => {
            // What is sealed and not placed stays as part files, for a resume.
            copier.halt();
            let _ = cancel.send(true);
            while readers.join_next().await.is_some() {}
            copier.finish();
            return Err(e);
        }
    };
    let seeded = copier.finish();
    drop(copier);
    let dirs: Vec<_> = dirs
        .into_iter()
        .map(|d| (d.path, apply_meta(d.mode, &d.meta)))
        .collect();
    // Directories, then symlinks (on the rayon pool), then the directories' metadata: a
    // symlink made later would change its directory's mtime. A destination error (a full
    // disk) stops the copy: the session meets it again and reports it.
    let t = target.clone();
    let placed = tokio::task::spawn_blocking(move || {
        let made = make_dirs(&t, &dirs);
        let linked = made.is_ok().then(|| make_symlinks(&t, links)).flatten();
        let meta = set_dirs_meta(&t, &dirs);
        [made.err(), linked, meta, t.sync_dirs().err()]
    })
    .await
    .map_err(join_err)?;
    for e in [seeded.stopped].into_iter().chain(placed).flatten() {
        tracing::debug!("bulk copy from {peer} stopped: {e}; the session goes on");
    }
    let root = prepared.root.clone();
    drop(prepared);
    opts.owners = owners;
    let prepared = prepare_receiver(&root, opts).await?;
    let done = BulkReceived {
        files: counters.files.load(Ordering::Relaxed),
        chunks: counters.chunks.load(Ordering::Relaxed),
    };
    Ok((prepared, done))
}

/// Makes the symlinks `links` (each an [`Offered::Symlink`]) on the rayon pool; returns the
/// first destination error.
fn make_symlinks(target: &Target, links: Vec<NodeItem>) -> Option<apply::ApplyError> {
    use rayon::prelude::*;
    links
        .into_par_iter()
        .filter_map(|l| match l.node {
            Offered::Symlink { target: to, .. } => target
                .symlink(&l.path, &to, &apply_meta(0o777, &l.meta))
                .err(),
            _ => None,
        })
        .find_any(|_| true)
}

/// Reads one bulk stream to its end on this blocking thread (reads wait on `rt`):
/// each file's chunks decompressed and hashed against its node, then written through
/// `copier`. Returns the files the stream carried.
fn read_stream<R: AsyncRead + Unpin>(
    rt: &tokio::runtime::Handle,
    mut stream: R,
    copier: &Copier,
    mut cancelled: tokio::sync::watch::Receiver<bool>,
    peer: &str,
) -> Result<u64, PushError> {
    let proto = |source| PushError::Proto {
        peer: peer.to_string(),
        source,
    };
    let mut zstd = StreamDecoder::new();
    let bases = Bases::default();
    let mut incoming = Incoming::new();
    loop {
        let next = rt.block_on(async {
            tokio::select! {
                next = read_data_frame(&mut stream, peer) => Some(next),
                _ = cancelled.wait_for(|c| *c) => None,
            }
        });
        let Some(next) = next else {
            return Err(PushError::Closed {
                peer: peer.to_string(),
            });
        };
        let arrived = match next? {
            None => return incoming.end().map_err(proto),
            Some(DataFrame::Chunk(h, data)) => {
                let v = decode_chunk(peer, &mut zstd, &bases, h, data)?;
                incoming.chunk(v).map_err(proto)?
            }
            Some(DataFrame::Other(Frame::Packed { raw_len, data })) => {
                let f = unpacked(&mut zstd, raw_len, &data, peer)?;
                incoming.frame(f).map_err(proto)?
            }
            Some(DataFrame::Other(f)) => incoming.frame(f).map_err(proto)?,
        };
        if let Some(a) = arrived {
            let meta = apply_meta(a.node.mode, &a.meta);
            copier.write_verified(&a.path, &a.node, &a.chunks, meta);
        }
    }
}
