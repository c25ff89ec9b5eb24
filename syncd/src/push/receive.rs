//! The receiver's driver: [`run_receiver`] feeds the [`Receiver`] state machine the
//! sender's control frames and the verified chunks of the data streams, and a
//! [`ReceiveSession`] carries out each [`Action`] it polls on the tree ([`Target`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::bulk::{self, BulkReceived};
use super::finish::{FINISHERS, FinishJob, Finished, dispatch_finishes};
use super::frames::{ControlTx, read_chunk_frame, refuse, spawn_control_reader};
use super::index::{Index, build_index, read_checked};
use super::prepare::{Prepared, Preparing, ReceiveOptions, prepare_receiver, refresh_blocking};
use super::{PushError, join_err, lock};
use crate::apply::{self, Target};
use crate::chunk::{ChunkId, Verified};
use crate::fsmeta;
use crate::manifest::Hash;
use crate::manifest::store::{Snapshot, Store};
use crate::proto::codec::{self, ChunkHead, Codec, Frame};
use crate::proto::delta::{self, Signature};
use crate::proto::stream::StreamDecoder;
use crate::proto::{Action, ChunkLoc, FileKey, Meta, ProtoError, Receiver};
use crate::scan;

pub(super) fn apply_meta(mode: u32, meta: &Meta) -> apply::Meta {
    apply::Meta {
        mode,
        mtime_ns: meta.mtime_ns,
        uid: Some(meta.uid),
        gid: Some(meta.gid),
        xattrs: meta.xattrs.clone(),
    }
}

/// Runs the receiving side of one session into `root`, whose refresh `preparing` runs;
/// if preparing it failed, tells the sender why. The caller settles `preparing`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_receiver<CR, CW, DR>(
    peer: &str,
    root: &Path,
    preparing: &mut Preparing,
    opts: &ReceiveOptions,
    control_r: CR,
    mut control_w: CW,
    mut data: mpsc::Receiver<DR>,
) -> Result<Received, PushError>
where
    CR: AsyncRead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin,
    DR: AsyncRead + Unpin + Send + 'static,
{
    let peer_packs = Arc::new(AtomicBool::new(false));
    let mut control = spawn_control_reader(control_r, peer, peer_packs.clone());
    // `Hello` says whether the sender's manifest covers owners: one prepared in the other
    // mode is refreshed again in the sender's (a receiver that cannot set owners refuses).
    let mut first = first_frame(&mut control, &mut control_w, peer).await?;
    let mut opts = opts.clone();
    let mut prepared = None;
    let mut bulk_done = BulkReceived::default();
    // A sender that may begin with a bulk copy probes first; `Hello` comes after it.
    if let Frame::Probe {
        version,
        owners,
        streams,
    } = first
    {
        let probe = (version, owners, streams);
        let received = async {
            if !bulk::answer(probe, root, &mut control_w, peer).await? {
                return Ok(None);
            }
            let p = preparing.take().await?;
            let (cr, data) = (&mut control, &mut data);
            bulk::receive((owners, streams), p, &mut opts, cr, data, peer)
                .await
                .map(Some)
        }
        .await;
        match received {
            Ok(Some((p, done))) => (prepared, bulk_done) = (Some(p), done),
            Ok(None) => {}
            Err(e) => {
                refuse(&mut control_w, &e, peer).await;
                let _ = control_w.shutdown().await;
                return Err(e);
            }
        }
        first = first_frame(&mut control, &mut control_w, peer).await?;
    }
    let prepared = match prepared {
        Some(p) => Ok(p),
        None => preparing.take().await,
    };
    // The sender's filter rules, if `Hello` says they follow: the receiver's tree is
    // compared under the same rules, so what they exclude is neither sent nor deleted
    // (unless --delete-excluded, which compares the whole tree).
    let mut second = None;
    let mut filter = crate::filter::Filter::default();
    if let Frame::Hello { options: true, .. } = &first {
        match control.recv().await {
            Some(Ok(Some(f @ Frame::Options { .. }))) => {
                if let Frame::Options {
                    rules,
                    delete_excluded: false,
                    ..
                } = &f
                {
                    // The codec checked that the rules decode.
                    filter = crate::filter::Filter::decode(rules).unwrap_or_default();
                }
                second = Some(f);
            }
            Some(Err(e)) => {
                refuse(&mut control_w, &e, peer).await;
                return Err(e);
            }
            _ => {
                let e = PushError::Proto {
                    peer: peer.to_string(),
                    source: ProtoError::Unexpected {
                        frame: "other",
                        state: "where hello announced options",
                    },
                };
                refuse(&mut control_w, &e, peer).await;
                return Err(e);
            }
        }
    }
    let (sender_root, sender_owners) = match &first {
        Frame::Hello { root, owners, .. } => (Some(*root), Some(*owners)),
        _ => (None, None),
    };
    let can_own = fsmeta::running_as_root();
    // The machine decides which scan the `Hello` needs (and refuses what it cannot do).
    let rescan = sender_owners.and_then(|owners| {
        crate::proto::rescan_for(owners, opts.owners, !filter.is_empty(), can_own)
    });
    let prepared = match (rescan, prepared) {
        (Some(owners), Ok(p)) => {
            opts.owners = owners;
            opts.filter = filter;
            let root = p.root.clone();
            drop(p);
            prepare_receiver(&root, &opts).await
        }
        (_, prepared) => prepared,
    };
    let Prepared {
        root,
        store,
        summary,
    } = match prepared {
        Ok(p) => p,
        Err(e) => {
            refuse(&mut control_w, &e, peer).await;
            let _ = control_w.shutdown().await;
            return Err(e);
        }
    };
    let opts = &opts;
    let snap = store.snapshot()?;
    let target = Target::open(&root, opts.parts.clone())?;
    // Part files left by earlier sessions: reused if this one needs them, removed once it
    // has applied everything (then they are stale).
    let stale_parts = summary.parts.clone();
    let mut s = ReceiveSession {
        peer,
        opts,
        root: &root,
        store,
        snap,
        target,
        control_w: ControlTx::new(control_w, peer_packs),
        r: Receiver::new()
            .with_free_bytes(crate::fsmeta::free_bytes(&root))
            .with_can_own(can_own),
        index: None,
        parts: HashMap::new(),
        bases: Arc::default(),
        written: Vec::new(),
        finishing: Vec::new(),
        session_parts: Vec::new(),
        last: None,
    };
    // Files are finished (fsync, metadata, rename) in parallel on the blocking pool: an
    // fsync waits on the disk, and one at a time made a 44k-file push take a minute.
    let (fin_tx, mut fin_rx) = mpsc::unbounded_channel::<Vec<Finished>>();
    let finishers = Arc::new(tokio::sync::Semaphore::new(FINISHERS));

    // Data streams: each reader decodes, decompresses and verifies chunks in parallel.
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Verified, PushError>>(64);
    let peer_s = peer.to_string();
    let bases_r = s.bases.clone();
    let acceptor = tokio::spawn(async move {
        let mut readers = tokio::task::JoinSet::new();
        while let Some(mut stream) = data.recv().await {
            let tx = chunk_tx.clone();
            let peer = peer_s.clone();
            let bases = bases_r.clone();
            readers.spawn(async move {
                let mut zstd = StreamDecoder::new();
                loop {
                    let item = match read_chunk_frame(&mut stream, &peer).await {
                        Ok(None) => break,
                        // Inline, not spawn_blocking: decompressing and hashing one chunk
                        // takes microseconds, less than a thread hand-off.
                        Ok(Some((h, data))) => decode_chunk(&peer, &mut zstd, &bases, h, data),
                        Err(e) => Err(e),
                    };
                    let failed = item.is_err();
                    if tx.send(item).await.is_err() || failed {
                        break;
                    }
                }
            });
        }
        while readers.join_next().await.is_some() {}
    });

    let proto = |source| PushError::Proto {
        peer: peer.to_string(),
        source,
    };
    // Ends with the `Done` frame, which is sent only once the store is closed: the sender
    // exits when it reads `Done`, and a `syncd diff` run right after must be able to open
    // the receiver's manifest.
    let result: Result<Frame, PushError> = async {
        for f in std::iter::once(first).chain(second) {
            s.r.handle(f, &s.snap, summary.root).map_err(proto)?;
        }
        loop {
            while let Some(act) = s.r.poll() {
                s.execute(act).await?;
                if let Some(last) = s.last.take() {
                    return Ok(last);
                }
            }
            dispatch_finishes(&mut s.finishing, &fin_tx, &finishers).await;
            tokio::select! {
                frame = control.recv() => {
                    let Some(frame) = frame.unwrap_or(Ok(None))? else {
                        return Err(PushError::Closed { peer: peer.to_string() });
                    };
                    s.r.handle(frame, &s.snap, summary.root).map_err(proto)?;
                }
                Some(item) = chunk_rx.recv() => {
                    s.r.handle_chunk(item?);
                }
                Some(batch) = fin_rx.recv() => {
                    for (key, done) in batch {
                        let (path, record) = done?;
                        s.written.push((path, record));
                        s.r.file_finished(key);
                    }
                }
                // Every event above is progress and starts this wait again.
                _ = tokio::time::sleep(opts.idle_timeout) => {
                    return Err(PushError::Stalled {
                        peer: peer.to_string(),
                        after: opts.idle_timeout,
                        waiting: s.r.waiting_for(),
                    });
                }
            }
        }
    }
    .await;
    acceptor.abort();
    let ReceiveSession {
        store,
        snap,
        target,
        mut control_w,
        r,
        index,
        parts,
        finishing,
        session_parts,
        ..
    } = s;
    let result = match result {
        Ok(mut done) => {
            if let Frame::Done { totals, .. } = &mut done {
                totals.files += bulk_done.files;
                totals.chunks_received += bulk_done.chunks;
            }
            drop((snap, index));
            drop(store);
            // Everything is applied, so what is left of earlier sessions' part files is
            // stale (a dry run changes nothing, not even that).
            if !r.is_dry_run() {
                for p in &stale_parts {
                    // One that cannot be removed is found and tried again next time.
                    let _ = target.remove_part(p);
                }
            }
            let received = match &done {
                Frame::Done { totals, root } => Received {
                    totals: *totals,
                    sender_root,
                    owners: sender_owners,
                    root: Some(*root),
                },
                _ => Received {
                    sender_root,
                    owners: sender_owners,
                    ..Received::default()
                },
            };
            control_w.send(&done, peer).await.map(|_| received)
        }
        Err(e) => {
            // Tell the sender why. Partial files stay for a resume, except where they are
            // useless (no space): then every part file goes, this session's (those still
            // being finished included) and earlier ones'.
            refuse(&mut control_w.w, &e, peer).await;
            let no_space = matches!(e, PushError::Apply(apply::ApplyError::NoSpace { .. }));
            if no_space {
                drop(parts);
                drop(finishing);
                // Finishers still running hold their part files open; let them end.
                let _ = finishers.acquire_many(FINISHERS as u32).await;
                for p in &session_parts {
                    let _ = std::fs::remove_file(p);
                }
                for p in &stale_parts {
                    let _ = target.remove_part(p);
                }
            }
            Err(e)
        }
    };
    let _ = control_w.w.shutdown().await;
    result
}

/// The session's first control frame (or the first after a bulk copy); a failure to read
/// one is told to the sender.
async fn first_frame<CW: AsyncWrite + Unpin>(
    control: &mut mpsc::Receiver<Result<Option<Frame>, PushError>>,
    control_w: &mut CW,
    peer: &str,
) -> Result<Frame, PushError> {
    match control.recv().await {
        Some(Ok(Some(frame))) => Ok(frame),
        Some(Err(e)) => {
            refuse(control_w, &e, peer).await;
            Err(e)
        }
        Some(Ok(None)) | None => Err(PushError::Closed {
            peer: peer.to_string(),
        }),
    }
}

/// What a receiver's session ended with.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Received {
    pub(super) totals: codec::Totals,
    /// The sender's root, from its `Hello`.
    pub(super) sender_root: Option<Hash>,
    /// The receiver's root it answered with `Done`.
    pub(super) root: Option<Hash>,
    /// The session's mode (`Hello`'s `owners`).
    pub(super) owners: Option<bool>,
}

/// Base chunks kept for the deltas asked for, by the id of the chunk asked for.
pub(super) type Bases = Arc<Mutex<HashMap<ChunkId, Vec<u8>>>>;

pub(super) fn decode_chunk(
    peer: &str,
    stream: &mut StreamDecoder,
    bases: &Bases,
    head: ChunkHead,
    data: Vec<u8>,
) -> Result<Verified, PushError> {
    let ChunkHead {
        id, raw_len, codec, ..
    } = head;
    let bad = || PushError::BadChunk {
        peer: peer.to_string(),
        id: id.to_string(),
    };
    // A chunk asked for as a delta may come whole (when that was smaller): its base goes too.
    let base = {
        let mut b = lock(bases);
        if b.is_empty() { None } else { b.remove(&id) }
    };
    let raw = match codec {
        Codec::Raw => data,
        Codec::Zstd => stream
            .decompress(&data, raw_len as usize)
            .map_err(|_| bad())?,
        Codec::Delta => {
            delta::apply(&base.ok_or_else(bad)?, &data, raw_len as usize).map_err(|_| bad())?
        }
    };
    if raw.len() != raw_len as usize {
        return Err(bad());
    }
    Verified::check(&id, raw).map_err(|_| bad())
}

/// One receiving session's state on this side: the state machine, the tree it applies to,
/// and what the actions it polls leave behind (open part files, files being finished,
/// records for the stat cache, the delta bases kept for the data streams). Each
/// [`Action`] is carried out by one of its methods ([`ReceiveSession::execute`]).
struct ReceiveSession<'a, CW> {
    peer: &'a str,
    opts: &'a ReceiveOptions,
    /// The canonical root of the tree.
    root: &'a Path,
    store: Arc<Store>,
    /// The manifest as the session began (the sender's descent is compared against it).
    snap: Snapshot,
    target: Target,
    control_w: ControlTx<CW>,
    r: Receiver,
    /// Built once, when first needed.
    index: Option<Index>,
    /// Part files being written.
    parts: HashMap<FileKey, apply::PartFile>,
    /// Bases of the chunks asked for as deltas (by the id asked for): a data-stream reader
    /// takes out the base of the chunk it rebuilds.
    bases: Bases,
    /// Records of files written in this session, for the stat cache of the final rescan.
    written: Vec<(Vec<u8>, Vec<u8>)>,
    /// Complete part files waiting for a finisher.
    finishing: Vec<FinishJob>,
    /// Every part file this session opened (removed when the disk is full).
    session_parts: Vec<PathBuf>,
    /// The machine's last frame ([`Action::Finish`]), sent once the store is closed.
    last: Option<Frame>,
}

impl<CW: AsyncWrite + Unpin> ReceiveSession<'_, CW> {
    /// Carries out one action of the state machine.
    async fn execute(&mut self, act: Action) -> Result<(), PushError> {
        let t = &self.target;
        match act {
            Action::Send(f) => {
                self.control_w.send(&f, self.peer).await?;
            }
            Action::Finish(f) => self.last = Some(f),
            Action::Fail { reason } => return Err(PushError::Stopped { reason }),
            Action::Remove { path } => t.remove(&path)?,
            Action::MakeDir { path, mode, meta } => t.mkdir(&path, &apply_meta(mode, &meta))?,
            Action::Symlink {
                path,
                target: to,
                meta,
            } => t.symlink(&path, &to, &apply_meta(0o777, &meta))?,
            Action::SetFileMeta { path, mode, meta } => self.set_file_meta(&path, mode, &meta)?,
            Action::StartFile { key, path, node } => self.start_file(key, &path, &node)?,
            Action::CopyLocal { key, index, from } => self.copy_local(key, index, &from)?,
            Action::ReadBase { id, base, from } => self.read_base(id, base, &from),
            Action::Write { key, index, data } => {
                if let Some(part) = self.parts.get_mut(&key) {
                    part.write_chunk(index, &data)?;
                    self.r.chunk_written(key, index, false);
                }
            }
            Action::FinishFile { key, mode, meta } => self.finish_file(key, mode, &meta),
            Action::AbortFile { key } => {
                if let Some(part) = self.parts.remove(&key) {
                    part.abort()?;
                }
            }
            Action::HardLink { path, to } => t.hard_link(&path, &to)?,
            Action::SetDirMeta { path, mode, meta } => {
                gone_is_fine(&path, t.set_dir_meta(&path, &apply_meta(mode, &meta)))?
            }
            Action::Rescan {
                dirs,
                entries,
                full,
            } => {
                let changed = (!full).then(|| scan::Changed {
                    dirs: dirs.into_iter().collect(),
                    entries: entries.into_iter().collect(),
                });
                self.rescan(changed).await?
            }
        }
        Ok(())
    }

    /// The manifest's index of the tree, built on first use.
    fn index(&mut self) -> Result<&Index, PushError> {
        let index = match self.index.take() {
            Some(i) => i,
            None => build_index(&self.snap)?,
        };
        Ok(self.index.insert(index))
    }

    /// A metadata-only change: applied in place unless the inode has links the tree does
    /// not account for ([`Target::set_file_meta`]).
    fn set_file_meta(&mut self, path: &[u8], mode: u32, meta: &Meta) -> Result<(), PushError> {
        let links = self.index()?.links_of(path);
        gone_is_fine(
            path,
            self.target
                .set_file_meta(path, &apply_meta(mode, meta), links),
        )
    }

    /// Opens (or reopens) the part file of `path` and tells the state machine which chunks
    /// it already holds and where the tree has the others.
    fn start_file(
        &mut self,
        key: FileKey,
        path: &[u8],
        node: &crate::manifest::FileNode,
    ) -> Result<(), PushError> {
        let mut part = self.target.begin_file(path, node)?;
        self.session_parts.push(part.part_path().to_path_buf());
        let present = part.present()?;
        self.parts.insert(key, part);
        self.index()?;
        let idx = self.index.as_ref();
        self.r.file_started(key, &present, &|id| {
            idx.and_then(|i| i.chunks.get(id).cloned())
        });
        Ok(())
    }

    /// Copies chunk `i` of a file from where this tree already has it, verified.
    fn copy_local(&mut self, key: FileKey, i: usize, from: &ChunkLoc) -> Result<(), PushError> {
        let want = self
            .r
            .file_node(key)
            .and_then(|n| n.chunks.get(i))
            .map(|c| c.id);
        let verified = want.and_then(|id| read_checked(&self.target, from, &id));
        match (verified, self.parts.get_mut(&key)) {
            (Some(v), Some(part)) => {
                part.write_chunk(i, &v)?;
                self.r.chunk_written(key, i, true);
            }
            _ => self.r.copy_failed(key, i),
        }
        Ok(())
    }

    /// Reads the base of a chunk to be asked for as a delta and keeps it for the data
    /// streams; the machine then asks for the delta against its signature.
    fn read_base(&mut self, id: ChunkId, base: ChunkId, from: &ChunkLoc) {
        match read_checked(&self.target, from, &base) {
            Some(v) => {
                let sig = Signature::of(v.bytes());
                lock(&self.bases).insert(id, v.into_bytes());
                self.r.base_read(id, base, sig);
            }
            None => self.r.base_failed(id),
        }
    }

    /// Queues a complete part file for a finisher.
    fn finish_file(&mut self, key: FileKey, mode: u32, meta: &Meta) {
        let (Some(part), Some(node)) = (self.parts.remove(&key), self.r.file_node(key).cloned())
        else {
            self.r.file_finished(key);
            return;
        };
        self.finishing.push(FinishJob {
            key,
            part,
            node,
            meta: apply_meta(mode, meta),
            owners: self.opts.owners,
        });
    }

    /// Makes what was applied durable, records the files written for the stat cache, and
    /// refreshes the manifest (only what `changed` names, if given) for the root check.
    async fn rescan(&mut self, changed: Option<scan::Changed>) -> Result<(), PushError> {
        self.target.sync_dirs()?;
        let (st, recs) = (self.store.clone(), std::mem::take(&mut self.written));
        tokio::task::spawn_blocking(move || st.commit(&recs, &[]))
            .await
            .map_err(join_err)??;
        let (_, summary) = refresh_blocking(
            self.root.to_path_buf(),
            self.opts.clone(),
            Some(self.store.clone()),
            changed,
        )
        .await?;
        self.r.rescanned(summary.root);
        Ok(())
    }
}

/// A metadata change for an entry that is no longer there is not an error: a later change
/// of the same session removed or replaced it (a file renamed over a directory by a
/// finisher, while a change for something inside that directory was still queued; the
/// source mutated during the push). The final rescan and root check decide whether the
/// tree is what the sender has, so nothing is lost by going on; aborting made the whole
/// push fail (exit 2) instead.
fn gone_is_fine(path: &[u8], r: Result<(), apply::ApplyError>) -> Result<(), PushError> {
    match r {
        Err(e) if e.is_not_found() => {
            tracing::debug!(
                "{}: gone before its metadata was set ({e})",
                crate::manifest::display_path(path)
            );
            Ok(())
        }
        r => Ok(r?),
    }
}
