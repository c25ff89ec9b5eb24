//! The sender's driver: [`run_sender`] feeds the [`Sender`] state machine the receiver's
//! control frames, hands the chunks it asks for to data workers (one per data stream: read
//! from the source, encode, write through the `--bwlimit` throttle), and reads a file again
//! whose chunk read failed (it changed during the push).

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::frames::{CONTROL_LEVEL, ControlTx, spawn_control_reader};
use super::observe;
use super::{PushError, PushOptions, PushReport, lock};
use crate::chunk::ChunkId;
use crate::fsmeta;
use crate::manifest::store::Snapshot;
use crate::manifest::{Hash, Node};
use crate::proto::ProtoError;
use crate::proto::adapt::Adapt;
use crate::proto::codec::Frame;
use crate::proto::delta::Signature;
use crate::proto::encode::{Policy, encode_chunk};
use crate::proto::stream::{self, StreamEncoder};
use crate::proto::{ChunkLoc, Meta, Sender, SenderEvent};
use crate::scan;
use crate::transport::{self, Throttle};

/// Metadata of a source path for the wire (owner, xattrs, mtime). Hard links are part of
/// the node ([`crate::manifest::FileNode::link`]).
pub(super) fn source_meta(root: &Path, rel: &[u8], node: &Node) -> Option<Meta> {
    let abs = root.join(std::ffi::OsStr::from_bytes(rel));
    let m = std::fs::symlink_metadata(&abs).ok()?;
    let xattrs = if matches!(node, Node::Symlink { .. }) {
        Vec::new()
    } else {
        // Unreadable xattrs go as none: the digests then differ, and the push says so.
        fsmeta::read_xattrs(&abs).unwrap_or_default()
    };
    Some(Meta {
        mtime_ns: match node {
            Node::File(f) => f.mtime_ns,
            _ => fsmeta::mtime_ns(&m),
        },
        uid: m.uid(),
        gid: m.gid(),
        xattrs,
    })
}

/// Counters shared by the sender's data workers.
#[derive(Debug, Default)]
pub(super) struct SendStats {
    pub(super) chunks: AtomicU64,
    pub(super) raw: AtomicU64,
    pub(super) encoded: AtomicU64,
    pub(super) wire: AtomicU64,
    pub(super) wait_ns: AtomicU64,
    /// Files with chunks to send, for progress.
    pub(super) files: Mutex<FilesSent>,
}

/// Which source files have chunks queued to be sent, and how many were sent in full (for
/// progress: "N of M files"). A file counts once all the chunks asked of it went out;
/// chunks the receiver already had are never asked, and a chunk shared by several files
/// is sent from one of them.
#[derive(Debug, Default)]
pub(super) struct FilesSent {
    /// Chunks queued but not yet sent, per file.
    outstanding: HashMap<Vec<u8>, u32>,
    /// Files that had chunks queued.
    pub(super) asked: u64,
    /// Files whose queued chunks were all sent.
    pub(super) sent: u64,
}

impl FilesSent {
    pub(super) fn queued(&mut self, path: &[u8]) {
        match self.outstanding.get_mut(path) {
            Some(n) => *n += 1,
            None => {
                self.outstanding.insert(path.to_vec(), 1);
                self.asked += 1;
            }
        }
    }

    pub(super) fn sent_one(&mut self, path: &[u8]) {
        if let Some(n) = self.outstanding.get_mut(path) {
            *n -= 1;
            if *n == 0 {
                self.outstanding.remove(path);
                self.sent += 1;
            }
        }
    }
}

pub(super) struct Job {
    id: ChunkId,
    loc: ChunkLoc,
    against: Option<Signature>,
}

/// Reads one chunk from the source, or says the file changed. Like every source open, it
/// never follows a symlink and never blocks on a FIFO swapped in ([`scan::open_source`]).
pub(super) fn read_chunk(root: &Path, id: &ChunkId, loc: &ChunkLoc) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let abs = root.join(std::ffi::OsStr::from_bytes(&loc.path));
    let (f, _) = scan::open_source(&abs, None).ok()?;
    let mut buf = vec![0u8; loc.len as usize];
    f.read_exact_at(&mut buf, loc.offset).ok()?;
    (ChunkId::of(&buf) == *id).then_some(buf)
}

/// CPU seconds this thread has used.
pub(super) fn thread_cpu_secs() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Per-packet overhead estimate for wire accounting: QUIC for remote pushes, none locally.
#[derive(Debug, Clone, Copy)]
pub(super) enum Wire {
    Quic,
    Local,
}

impl Wire {
    fn bytes(self, payload: u64) -> u64 {
        match self {
            Wire::Quic => transport::wire_bytes(payload),
            Wire::Local => payload,
        }
    }
}

/// The transport under a sender's streams.
pub(super) struct Link {
    /// How wire bytes are counted.
    pub(super) wire: Wire,
    /// The `--bwlimit` bucket.
    pub(super) throttle: Option<Throttle>,
    /// The QUIC connection, whose round-trip time tells the compression policy when a
    /// queue builds at a bottleneck.
    pub(super) conn: Option<quinn::Connection>,
    /// Files and bytes of the scanned source, for progress.
    pub(super) scanned: (u64, u64),
}

/// The compression policy of a push over `wire`, to a receiver on this host or not.
pub(super) fn policy(opts: &PushOptions, wire: Wire, same_host: bool) -> Adapt {
    match (opts.compress_level, wire) {
        (Some(l), _) => Adapt::fixed(l),
        (None, Wire::Local) => Adapt::fixed(0),
        // A receiver on this machine has no link to save: compressing only moves the work
        // of a memory copy onto the CPUs both sides share. (With --bwlimit the cap is a
        // link, and the policy decides as usual.)
        (None, Wire::Quic) if same_host && opts.bwlimit.is_none() => Adapt::fixed(0),
        (None, Wire::Quic) => Adapt::new(opts.bwlimit)
            .with_cpus(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }
}

/// One data stream's writer: encodes each chunk as the compression policy says (the
/// stream's zstd stream), writes it through the `--bwlimit` throttle, and counts it.
pub(super) struct DataTx<W> {
    w: W,
    stream: StreamEncoder,
    adapt: Arc<Mutex<Adapt>>,
    throttle: Option<Throttle>,
    stats: Arc<SendStats>,
    wire: Wire,
    peer: String,
}

impl<W: AsyncWrite + Unpin> DataTx<W> {
    pub(super) fn new(
        w: W,
        adapt: Arc<Mutex<Adapt>>,
        throttle: Option<Throttle>,
        stats: Arc<SendStats>,
        wire: Wire,
        peer: String,
    ) -> DataTx<W> {
        DataTx {
            w,
            stream: StreamEncoder::new(),
            adapt,
            throttle,
            stats,
            wire,
            peer,
        }
    }

    /// Writes `parts` one after the other through the throttle; returns their length.
    async fn write(&mut self, parts: [&[u8]; 2]) -> Result<usize, PushError> {
        let t = Instant::now();
        for bytes in parts {
            match &self.throttle {
                Some(th) => th.write_all(&mut self.w, bytes).await,
                None => self.w.write_all(bytes).await,
            }
            .map_err(|source| PushError::Io {
                peer: self.peer.clone(),
                source,
            })?;
        }
        self.stats
            .wait_ns
            .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let n = parts[0].len() + parts[1].len();
        self.stats
            .wire
            .fetch_add(self.wire.bytes(n as u64), Ordering::Relaxed);
        Ok(n)
    }

    /// Sends chunk `id` (bytes `raw`), as delta ops `against` the receiver's base if given
    /// and smaller.
    pub(super) async fn chunk(
        &mut self,
        id: ChunkId,
        raw: Vec<u8>,
        against: Option<&Signature>,
    ) -> Result<(), PushError> {
        let raw_len = raw.len();
        let adapt = &self.adapt;
        let (head, data) = encode_chunk(
            &mut self.stream,
            id,
            raw,
            against,
            Policy {
                next_level: &mut || lock(adapt).next_level(),
                cpu_secs: &thread_cpu_secs,
                observe: &mut |level, n, secs| lock(adapt).observe_compress(level, n, secs),
            },
        );
        let head = head.encode();
        self.write([&head[..], &data[..]]).await?;
        let s = &self.stats;
        s.chunks.fetch_add(1, Ordering::Relaxed);
        s.raw.fetch_add(raw_len as u64, Ordering::Relaxed);
        s.encoded.fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends a frame other than a chunk, packed into the stream's zstd stream when the
    /// policy compresses.
    pub(super) async fn frame(&mut self, f: &Frame) -> Result<(), PushError> {
        let level = lock(&self.adapt).next_level();
        let packed = match level > 0 {
            true => stream::pack(&mut self.stream, f, CONTROL_LEVEL).ok(),
            false => None,
        };
        let bytes = packed.as_ref().unwrap_or(f).to_bytes();
        self.write([&bytes, &[]]).await.map(|_| ())
    }

    /// Ends the stream.
    pub(super) async fn finish(mut self) -> Result<(), PushError> {
        self.w.shutdown().await.map_err(|source| PushError::Io {
            peer: self.peer.clone(),
            source,
        })
    }
}

/// Runs the sending side of one session over the given streams. `unsettled` are the
/// source paths the scan could not read (relative): the receiver keeps its copies.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_sender<CR, CW, DW>(
    peer: &str,
    root_path: &Path,
    snap: Snapshot,
    root: Hash,
    unsettled: Vec<Vec<u8>>,
    control_r: CR,
    control_w: CW,
    data: Vec<DW>,
    opts: &PushOptions,
    link: Link,
) -> Result<PushReport, PushError>
where
    CR: AsyncRead + Unpin + Send + 'static,
    CW: AsyncWrite + Unpin,
    DW: AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let Link {
        wire,
        throttle,
        conn,
        scanned,
    } = link;
    let stats = Arc::new(SendStats::default());
    let same_host = conn
        .as_ref()
        .is_some_and(|c| transport::same_host(c.remote_address()));
    let adapt = Arc::new(Mutex::new(policy(opts, wire, same_host)));
    let (job_tx, job_rx) = async_channel();
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<Job>();
    let mut workers = tokio::task::JoinSet::new();
    let senders = data.len();
    for w in data {
        let job_rx = job_rx.clone();
        let changed_tx = changed_tx.clone();
        let stats = stats.clone();
        let adapt = adapt.clone();
        let throttle = throttle.clone();
        let root_path = root_path.to_path_buf();
        let peer = peer.to_string();
        workers.spawn(async move {
            let mut tx = DataTx::new(w, adapt, throttle, stats.clone(), wire, peer);
            while let Some(batch) = recv_job(&job_rx).await {
                for job in batch {
                    // Inline, not spawn_blocking: a chunk read and encode take microseconds to
                    // a millisecond, and a thread hand-off per chunk cost more than the work
                    // (measured: half the CPU of a local push went to scheduler wake-ups).
                    let Some(raw) = read_chunk(&root_path, &job.id, &job.loc) else {
                        let _ = changed_tx.send(job);
                        continue;
                    };
                    tx.chunk(job.id, raw, job.against.as_ref()).await?;
                    lock(&stats.files).sent_one(&job.loc.path);
                }
            }
            tx.finish().await
        });
    }
    drop(changed_tx);

    // Link observations for the compression policy, four times a second.
    let observer = tokio::spawn(observe::observe(
        stats.clone(),
        adapt.clone(),
        opts.progress.clone(),
        conn,
        Arc::new((AtomicU64::new(scanned.0), AtomicU64::new(scanned.1))),
        senders,
    ));

    let mut control = spawn_control_reader(control_r, peer, Arc::default());
    // Control frames are compressed on the network, unless compression is turned off.
    let mut control_w = ControlTx::new(
        control_w,
        Arc::new(AtomicBool::new(
            matches!(wire, Wire::Quic) && opts.compress_level != Some(0),
        )),
    );
    let mut s = Sender::new(root, opts.delete, opts.dry_run, opts.scan.owners);
    if !opts.scan.filter.is_empty() || opts.delete_excluded || opts.max_delete > 0 {
        s.options(
            opts.scan.filter.encode(),
            opts.delete_excluded,
            opts.max_delete,
        );
    }
    s.unsettled(unsettled);
    if opts.verify_dest {
        s.verify_dest();
    }
    if opts.itemize {
        s.itemize();
    }
    let mut report = PushReport {
        root,
        ..PushReport::default()
    };
    let mut control_wire = 0u64;
    let result: Result<(), PushError> = async {
        let mut jobs = Vec::new();
        loop {
            while let Some(ev) = s.poll() {
                match ev {
                    SenderEvent::Send(f) => {
                        control_wire += control_w.send(&f, peer).await?;
                    }
                    SenderEvent::Read { id, loc, against } => {
                        lock(&stats.files).queued(&loc.path);
                        jobs.push(Job { id, loc, against });
                    }
                    SenderEvent::Report(m, a, p) => report.changes.push((m as char, a, p)),
                    SenderEvent::GaveUp { path, reason } => report.unsettled.push((path, reason)),
                    SenderEvent::Finished { root, totals } => {
                        report.receiver_free_bytes = s.receiver_free_bytes();
                        report.receiver_root = root;
                        report.files_transferred = totals.files;
                        report.chunks_deduplicated = totals.chunks_reused;
                        report.bytes_deduplicated = totals.bytes_reused;
                        report.removed = totals.removed;
                    }
                }
            }
            job_tx.send_all(&mut jobs, senders);
            if s.is_finished() {
                return Ok(());
            }
            tokio::select! {
                frame = control.recv() => {
                    let Some(frame) = frame.unwrap_or(Ok(None))? else {
                        return Err(PushError::Closed { peer: peer.to_string() });
                    };
                    let mut meta = |p: &[u8], n: &Node| source_meta(root_path, p, n);
                    // The machine decides what a frame means, a refusal included.
                    s.handle(frame, &snap, &mut meta).map_err(|source| match source {
                        ProtoError::Refused(reason) => PushError::Remote { peer: peer.to_string(), reason },
                        source => PushError::Proto { peer: peer.to_string(), source },
                    })?;
                }
                Some(Job { id, loc, against }) = changed_rx.recv() => {
                    // The chunk was not where it was offered: the machine tries its other
                    // places, and decides what reading that file again means.
                    s.read_failed(id, &loc, against.clone());
                    let path = loc.path;
                    if !s.wants_reread(&path, &snap) {
                        continue; // given up on already
                    }
                    let abs = root_path.join(std::ffi::OsStr::from_bytes(&path));
                    let retries = std::sync::atomic::AtomicU64::new(0);
                    let fresh = scan::read_file(&abs, None, opts.scan.params, opts.scan.owners, &retries);
                    report.rereads += 1 + retries.into_inner();
                    let found = fresh.map_err(|e| e.to_string()).and_then(|(node, _)| {
                        let meta = source_meta(root_path, &path, &Node::File(node.clone()));
                        Ok((node, meta.ok_or("vanished")?))
                    });
                    s.reread(path, id, against, found);
                }
            }
        }
    }
    .await;
    job_tx.close();
    while let Some(r) = workers.join_next().await {
        if let Ok(Err(e)) = r
            && result.is_ok()
        {
            observer.abort();
            return Err(e);
        }
    }
    observer.abort();
    result?;
    let _ = control_w.w.shutdown().await;
    report.chunks_sent = stats.chunks.load(Ordering::Relaxed);
    report.bytes_sent = stats.raw.load(Ordering::Relaxed);
    report.bytes_encoded = stats.encoded.load(Ordering::Relaxed);
    report.wire_bytes = stats.wire.load(Ordering::Relaxed) + wire.bytes(control_wire);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// A tiny multi-consumer job queue (tokio has none): an unbounded mpsc behind a mutex,
/// carrying batches of chunks so that workers take and wake per batch, not per chunk.
pub(super) type JobRx = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<Job>>>>;

pub(super) struct JobTx(Option<mpsc::UnboundedSender<Vec<Job>>>);

/// Most chunks per batch handed to one sender worker.
pub(super) const JOB_BATCH: usize = 16;

impl JobTx {
    /// Queues `jobs` (emptying it) in batches spread over `workers`.
    fn send_all(&self, jobs: &mut Vec<Job>, workers: usize) {
        if jobs.is_empty() {
            return;
        }
        let per = jobs.len().div_ceil(workers.max(1)).clamp(1, JOB_BATCH);
        let Some(tx) = &self.0 else {
            jobs.clear();
            return;
        };
        let mut rest = std::mem::take(jobs).into_iter().peekable();
        while rest.peek().is_some() {
            let _ = tx.send(rest.by_ref().take(per).collect());
        }
    }
    fn close(mut self) {
        self.0 = None;
    }
}

pub(super) fn async_channel() -> (JobTx, JobRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    (JobTx(Some(tx)), Arc::new(tokio::sync::Mutex::new(rx)))
}

pub(super) async fn recv_job(rx: &JobRx) -> Option<Vec<Job>> {
    rx.lock().await.recv().await
}
