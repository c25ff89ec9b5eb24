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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::apply::{self, Target};
use crate::chunk::{ChunkId, Verified};
use crate::identity::{Identity, PeerId};
use crate::manifest::store::{Opened, Snapshot, Store};
use crate::manifest::{Hash, Node};
use crate::partname::PartKey;
use crate::proto::adapt::Adapt;
use crate::proto::codec::{self, ChunkHead, Codec, Frame, FrameError};
use crate::proto::delta::{self, Signature};
use crate::proto::stream::{self, StreamDecoder, StreamEncoder};
use crate::proto::{Action, ChunkLoc, FileKey, Meta, ProtoError, Receiver, Sender, SenderEvent};
use crate::scan::{self, ScanOptions, Summary};
use crate::transport::{self, Throttle};

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
    /// The sender compares owners, which this receiver cannot set.
    #[error(
        "the sender pushes with owners, ACLs and xattrs (it runs as root), but this receiver \
         does not run as root and cannot set them: run the receiver as root, or push with \
         --no-owner"
    )]
    CannotOwn,
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
    /// Dry run or `itemize`: what would change or changed (marker, [`codec::attr`] bits,
    /// path).
    pub changes: Vec<(char, u8, Vec<u8>)>,
    /// Source files given up on during the push, with why: they kept changing (or became
    /// unreadable) whenever a chunk of theirs was read. The receiver kept its copy.
    pub unsettled: Vec<(Vec<u8>, String)>,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl PushReport {
    /// True when the receiver ended with exactly the sender's tree.
    pub fn identical(&self) -> bool {
        self.root == self.receiver_root
    }
}

// ------------------------------------------------------------------ frame IO

/// Reads a frame's length prefix and checks it against the frame limit; `None` at the end
/// of the stream.
async fn read_frame_len<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Option<usize>, PushError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(source) => {
            return Err(PushError::Io {
                peer: peer.to_string(),
                source,
            });
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    codec::check_len(len).map_err(|source| PushError::Frame {
        peer: peer.to_string(),
        source,
    })?;
    Ok(Some(len))
}

async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Option<Frame>, PushError> {
    let io = |source| PushError::Io {
        peer: peer.to_string(),
        source,
    };
    let Some(len) = read_frame_len(r, peer).await? else {
        return Ok(None);
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(io)?;
    codec::decode_body(&body)
        .map(Some)
        .map_err(|source| PushError::Frame {
            peer: peer.to_string(),
            source,
        })
}

/// Reads one chunk frame from a data stream, its data straight into a buffer of its own;
/// `None` at the end of the stream.
async fn read_chunk_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Option<(ChunkHead, Vec<u8>)>, PushError> {
    let io = |source| PushError::Io {
        peer: peer.to_string(),
        source,
    };
    let frame = |source| PushError::Frame {
        peer: peer.to_string(),
        source,
    };
    let Some(len) = read_frame_len(r, peer).await? else {
        return Ok(None);
    };
    let mut head = [0u8; codec::CHUNK_HEAD];
    if len < head.len() {
        return Err(frame(FrameError::Malformed {
            frame: "chunk",
            reason: format!("frame of {len} bytes on a data stream"),
        }));
    }
    r.read_exact(&mut head).await.map_err(io)?;
    let head = ChunkHead::decode(len, &head).map_err(frame)?;
    let mut data = vec![0u8; head.data_len];
    r.read_exact(&mut data).await.map_err(io)?;
    Ok(Some((head, data)))
}

/// Reads control frames on a task of their own and hands them over a channel.
///
/// `read_frame` is not cancellation-safe (a `read_exact` interrupted mid-frame loses the
/// bytes it had read), so it must never be a `tokio::select!` branch that another branch can
/// win; receiving from this channel is. The task ends at end of stream or on an error,
/// which it delivers as the last item.
///
/// Packed frames are unpacked here, with this direction's zstd stream; `packed` is set once
/// the peer has sent one (the receiver then packs its own large frames too).
fn spawn_control_reader<R>(
    mut r: R,
    peer: &str,
    packed: Arc<AtomicBool>,
) -> mpsc::Receiver<Result<Option<Frame>, PushError>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let peer = peer.to_string();
    tokio::spawn(async move {
        let mut zstd = StreamDecoder::new();
        loop {
            let item = match read_frame(&mut r, &peer).await {
                Ok(Some(Frame::Packed { raw_len, data })) => {
                    packed.store(true, Ordering::Relaxed);
                    stream::unpack(&mut zstd, raw_len, &data)
                        .map(Some)
                        .map_err(|e| PushError::Frame {
                            peer: peer.clone(),
                            source: FrameError::Malformed {
                                frame: "packed",
                                reason: e.to_string(),
                            },
                        })
                }
                other => other,
            };
            let last = !matches!(item, Ok(Some(_)));
            if tx.send(item).await.is_err() || last {
                break;
            }
        }
    });
    rx
}

/// zstd level of packed control frames: cheap, and control frames are mostly names.
const CONTROL_LEVEL: i32 = 1;

/// The writing half of a control stream. Once `pack` is set, frames that carry names
/// (nodes, paths, reports) are packed, one zstd stream per direction; the rest go plain,
/// `Refuse` always (its reason must reach a peer that cannot decode).
struct ControlTx<W> {
    w: W,
    /// Set from the start (the sender, unless compression is off) or once the peer packs
    /// (the receiver).
    pack: Arc<AtomicBool>,
    zstd: Option<StreamEncoder>,
}

impl<W: AsyncWrite + Unpin> ControlTx<W> {
    fn new(w: W, pack: Arc<AtomicBool>) -> ControlTx<W> {
        ControlTx {
            w,
            pack,
            zstd: None,
        }
    }

    /// Writes `f`; returns the bytes written.
    async fn send(&mut self, f: &Frame, peer: &str) -> Result<u64, PushError> {
        if self.zstd.is_none() && self.pack.load(Ordering::Relaxed) {
            self.zstd = Some(StreamEncoder::new());
        }
        let packable = matches!(
            f,
            Frame::Nodes { .. } | Frame::GetNodes { .. } | Frame::Report { .. }
        );
        match &mut self.zstd {
            Some(z) if packable => {
                let packed = stream::pack(z, f, CONTROL_LEVEL).map_err(|source| PushError::Io {
                    peer: peer.to_string(),
                    source,
                })?;
                write_frame(&mut self.w, &packed, peer).await
            }
            _ => write_frame(&mut self.w, f, peer).await,
        }
    }
}

async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    f: &Frame,
    peer: &str,
) -> Result<u64, PushError> {
    let bytes = f.to_bytes();
    w.write_all(&bytes).await.map_err(|source| PushError::Io {
        peer: peer.to_string(),
        source,
    })?;
    Ok(bytes.len() as u64)
}

// ------------------------------------------------------------------ sender

/// Metadata of a source path for the wire (owner, xattrs, mtime). Hard links are part of
/// the node ([`crate::manifest::FileNode::link`]).
fn source_meta(root: &Path, rel: &[u8], node: &Node) -> Option<Meta> {
    let abs = root.join(std::ffi::OsStr::from_bytes(rel));
    let m = std::fs::symlink_metadata(&abs).ok()?;
    let xattrs = if matches!(node, Node::Symlink { .. }) {
        Vec::new()
    } else {
        // Unreadable xattrs go as none: the digests then differ, and the push says so.
        scan::read_xattrs(&abs).unwrap_or_default()
    };
    Some(Meta {
        mtime_ns: match node {
            Node::File(f) => f.mtime_ns,
            _ => m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        },
        uid: m.uid(),
        gid: m.gid(),
        xattrs,
    })
}

/// Counters shared by the sender's data workers.
#[derive(Debug, Default)]
struct SendStats {
    chunks: AtomicU64,
    raw: AtomicU64,
    encoded: AtomicU64,
    wire: AtomicU64,
    wait_ns: AtomicU64,
}

struct Job {
    id: ChunkId,
    loc: ChunkLoc,
    against: Option<Signature>,
}

/// Reads one chunk from the source, or says the file changed. Like every source open, it
/// never follows a symlink and never blocks on a FIFO swapped in ([`scan::open_source`]).
fn read_chunk(root: &Path, id: &ChunkId, loc: &ChunkLoc) -> Option<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let abs = root.join(std::ffi::OsStr::from_bytes(&loc.path));
    let (f, _) = scan::open_source(&abs, None).ok()?;
    let mut buf = vec![0u8; loc.len as usize];
    f.read_exact_at(&mut buf, loc.offset).ok()?;
    (ChunkId::of(&buf) == *id).then_some(buf)
}

/// Encodes a chunk for the data stream that `stream` compresses: as delta ops `against` the
/// receiver's base if those are smaller than the chunk, else raw or (at the level `adapt`
/// picks) as the next part of that stream. Returns the frame's head and its data, written
/// one after the other (the data is not copied into a frame).
fn encode_chunk(
    adapt: &Mutex<Adapt>,
    stream: &mut StreamEncoder,
    id: ChunkId,
    raw: Vec<u8>,
    against: Option<&Signature>,
) -> (ChunkHead, Vec<u8>) {
    let raw_len = raw.len() as u32;
    let head = |codec, data: &Vec<u8>| ChunkHead {
        id,
        raw_len,
        codec,
        data_len: data.len(),
    };
    if let Some(ops) = against.map(|sig| delta::delta(sig, &raw))
        && ops.len() < raw.len()
    {
        return (head(Codec::Delta, &ops), ops);
    }
    let level = lock(adapt).next_level();
    if level > 0 {
        // CPU time, not wall time: on a busy machine a wall clock also counts the time this
        // thread was preempted, which made level 1 look ten times slower than it is.
        let t = thread_cpu_secs();
        if let Ok(z) = stream.compress(&raw, level) {
            let secs = thread_cpu_secs() - t;
            lock(adapt).observe_compress(level, raw.len(), secs);
            // Sent even if it did not shrink: the receiver's context must see it (zstd
            // stores incompressible blocks raw, so it costs a few bytes at most).
            return (head(Codec::Zstd, &z), z);
        }
    }
    (head(Codec::Raw, &raw), raw)
}

/// CPU seconds this thread has used.
fn thread_cpu_secs() -> f64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Per-packet overhead estimate for wire accounting: QUIC for remote pushes, none locally.
#[derive(Debug, Clone, Copy)]
enum Wire {
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
struct Link {
    /// How wire bytes are counted.
    wire: Wire,
    /// The `--bwlimit` bucket.
    throttle: Option<Throttle>,
    /// The QUIC connection, whose round-trip time tells the compression policy when a
    /// queue builds at a bottleneck.
    conn: Option<quinn::Connection>,
    /// Files and bytes of the scanned source, for progress.
    scanned: (u64, u64),
}

/// How many times the sender reads a file again whose chunk reads fail (it keeps
/// changing) before it gives up on it for this push.
const MAX_REREADS: u32 = 5;

/// Runs the sending side of one session over the given streams. `unsettled` are the
/// source paths the scan could not read (relative): the receiver keeps its copies.
#[allow(clippy::too_many_arguments)]
async fn run_sender<CR, CW, DW>(
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
    let adapt = Arc::new(Mutex::new(match (opts.compress_level, wire) {
        (Some(l), _) => Adapt::fixed(l),
        (None, Wire::Local) => Adapt::fixed(0),
        // A receiver on this machine has no link to save: compressing only moves the work
        // of a memory copy onto the CPUs both sides share. (With --bwlimit the cap is a
        // link, and the policy decides as usual.)
        (None, Wire::Quic) if same_host && opts.bwlimit.is_none() => Adapt::fixed(0),
        (None, Wire::Quic) => Adapt::new(opts.bwlimit)
            .with_cpus(std::thread::available_parallelism().map_or(1, |n| n.get())),
    }));
    let (job_tx, job_rx) = async_channel();
    let (changed_tx, mut changed_rx) = mpsc::unbounded_channel::<Job>();
    let mut workers = tokio::task::JoinSet::new();
    let senders = data.len();
    for mut w in data {
        let job_rx = job_rx.clone();
        let changed_tx = changed_tx.clone();
        let stats = stats.clone();
        let adapt = adapt.clone();
        let throttle = throttle.clone();
        let root_path = root_path.to_path_buf();
        let peer = peer.to_string();
        workers.spawn(async move {
            let mut stream = StreamEncoder::new();
            while let Some(batch) = recv_job(&job_rx).await {
                for job in batch {
                    // Inline, not spawn_blocking: a chunk read and encode take microseconds to
                    // a millisecond, and a thread hand-off per chunk cost more than the work
                    // (measured: half the CPU of a local push went to scheduler wake-ups).
                    let encoded = read_chunk(&root_path, &job.id, &job.loc).map(|raw| {
                        let raw_len = raw.len();
                        let against = job.against.as_ref();
                        (
                            raw_len,
                            encode_chunk(&adapt, &mut stream, job.id, raw, against),
                        )
                    });
                    let Some((raw_len, (head, data))) = encoded else {
                        let _ = changed_tx.send(job);
                        continue;
                    };
                    let head = head.encode();
                    let enc_len = data.len();
                    let frame_len = head.len() + data.len();
                    let t = Instant::now();
                    for bytes in [&head[..], &data[..]] {
                        let piece = throttle.as_ref().map_or(bytes.len(), |th| th.piece());
                        for part in bytes.chunks(piece.max(1)) {
                            if let Some(th) = &throttle {
                                th.acquire(part.len()).await;
                            }
                            w.write_all(part).await.map_err(|source| PushError::Io {
                                peer: peer.clone(),
                                source,
                            })?;
                        }
                    }
                    stats
                        .wait_ns
                        .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    stats.chunks.fetch_add(1, Ordering::Relaxed);
                    stats.raw.fetch_add(raw_len as u64, Ordering::Relaxed);
                    stats.encoded.fetch_add(enc_len as u64, Ordering::Relaxed);
                    stats
                        .wire
                        .fetch_add(wire.bytes(frame_len as u64), Ordering::Relaxed);
                }
            }
            w.shutdown().await.map_err(|source| PushError::Io {
                peer: peer.clone(),
                source,
            })?;
            Ok::<(), PushError>(())
        });
    }
    drop(changed_tx);

    // Link observations for the compression policy, four times a second.
    let observer = {
        let stats = stats.clone();
        let adapt = adapt.clone();
        let progress = opts.progress.clone();
        tokio::spawn(async move {
            let mut last = (Instant::now(), 0u64, 0u64);
            let mut udp_last = 0u64;
            let mut cpu = cpu_times();
            // The round trip of the handshake is the path's before any data queued: the
            // baseline that shows a queue building. (Taken after the first window, it
            // already included the queue on a 100 Mbit/s link, and no queue was ever seen.)
            if let Some(c) = &conn {
                lock(&adapt).observe_rtt(c.rtt().as_secs_f64());
            }
            // The first window ends a period after the start (a plain `interval` ticks at
            // once, and a window of no time told the policy nothing).
            let period = Duration::from_millis(250);
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                tick.tick().await;
                let now = Instant::now();
                let wire = stats.wire.load(Ordering::Relaxed);
                let wait = stats.wait_ns.load(Ordering::Relaxed);
                let secs = now.duration_since(last.0).as_secs_f64();
                let cpu_now = cpu_times();
                let idle = match (cpu, cpu_now) {
                    (Some((i0, t0)), Some((i1, t1))) if t1 > t0 => {
                        Some((i1 - i0) as f64 / (t1 - t0) as f64)
                    }
                    _ => None,
                };
                cpu = cpu_now;
                // What the transport sent, when it is QUIC: what we wrote may only have
                // gone into its send buffer.
                let sent = match &conn {
                    Some(c) => {
                        let udp = c.stats().udp_tx.bytes;
                        udp.saturating_sub(std::mem::replace(&mut udp_last, udp))
                    }
                    None => wire - last.1,
                };
                let mut a = lock(&adapt);
                if let Some(c) = &conn {
                    a.observe_rtt(c.rtt().as_secs_f64());
                }
                a.observe_link(sent, secs, (wait - last.2) as f64 / 1e9, senders, idle);
                drop(a);
                if let Some(Progress(p)) = &progress {
                    p(&Sent {
                        raw: stats.raw.load(Ordering::Relaxed),
                        wire: stats.wire.load(Ordering::Relaxed),
                        chunks: stats.chunks.load(Ordering::Relaxed),
                        scanned_files: scanned.0,
                        scanned_bytes: scanned.1,
                    });
                }
                last = (now, wire, wait);
            }
        })
    };

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
    // Per source path that failed a chunk read: the node last offered for it, and how many
    // times it was read again.
    let mut rereads: HashMap<Vec<u8>, (Option<Hash>, u32)> = HashMap::new();
    let result: Result<(), PushError> = async {
        let mut jobs = Vec::new();
        loop {
            while let Some(ev) = s.poll() {
                match ev {
                    SenderEvent::Send(f) => {
                        control_wire += control_w.send(&f, peer).await?;
                    }
                    SenderEvent::Read { id, loc, against } => jobs.push(Job { id, loc, against }),
                    SenderEvent::Report(m, a, p) => report.changes.push((m as char, a, p)),
                    SenderEvent::Finished { root, totals } => {
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
                    if let Frame::Refuse { reason } = &frame {
                        return Err(PushError::Remote { peer: peer.to_string(), reason: reason.clone() });
                    }
                    let mut meta = |p: &[u8], n: &Node| source_meta(root_path, p, n);
                    s.handle(frame, &snap, &mut meta).map_err(|source| PushError::Proto {
                        peer: peer.to_string(),
                        source,
                    })?;
                }
                Some(Job { id, loc, against }) = changed_rx.recv() => {
                    // The chunk was not where it was offered: try its other places, and
                    // read that file again.
                    s.read_failed(id, &loc, against.clone());
                    let path = loc.path;
                    let (offered, tries) = rereads.entry(path.clone()).or_insert_with(|| {
                        let h = match crate::manifest::Nodes::node(&snap, &path) {
                            Ok(Some(n)) => Some(n.hash()),
                            _ => None,
                        };
                        (h, 0)
                    });
                    if *tries > MAX_REREADS {
                        continue; // given up on already
                    }
                    let abs = root_path.join(std::ffi::OsStr::from_bytes(&path));
                    let fresh = scan::read_file(&abs, None, opts.scan.params, opts.scan.owners);
                    // Linked as scanned: the link is a property of the tree, not of content.
                    let link = match crate::manifest::Nodes::node(&snap, &path) {
                        Ok(Some(Node::File(f))) => f.link,
                        _ => None,
                    };
                    let update = fresh.map_err(|e| e.to_string()).and_then(|(mut node, _)| {
                        node.link = link;
                        let n = Node::File(node.clone());
                        let meta = source_meta(root_path, &path, &n).ok_or("vanished")?;
                        Ok((node, meta, n.hash()))
                    });
                    let give_up = match update {
                        // As last offered: a read of an older version's chunk (nothing to
                        // count), or one that met the file between two changes.
                        Ok((node, _, h)) if *offered == Some(h) => {
                            if node.chunks.iter().any(|c| c.id == id) {
                                *tries += 1;
                            }
                            s.retry(&path, &node, id, against);
                            None
                        }
                        Ok((node, meta, h)) => {
                            *tries += 1;
                            *offered = Some(h);
                            s.source_changed(path.clone(), Some((node, meta)));
                            None
                        }
                        Err(why) => Some(why),
                    };
                    let give_up = give_up.or_else(|| (*tries > MAX_REREADS).then(|| {
                        format!("changed each of the {MAX_REREADS} times it was read during the push")
                    }));
                    if let Some(why) = give_up {
                        *tries = MAX_REREADS + 1;
                        report.unsettled.push((path.clone(), format!("{why}; not sent, the receiver keeps its copy")));
                        s.source_changed(path, None);
                    }
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

/// The machine's (idle + iowait, total) CPU time from `/proc/stat`, in clock ticks.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0);
    Some((idle, v.iter().take(8).sum()))
}

/// A tiny multi-consumer job queue (tokio has none): an unbounded mpsc behind a mutex,
/// carrying batches of chunks so that workers take and wake per batch, not per chunk.
type JobRx = Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Vec<Job>>>>;

struct JobTx(Option<mpsc::UnboundedSender<Vec<Job>>>);

/// Most chunks per batch handed to one sender worker.
const JOB_BATCH: usize = 16;

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

fn async_channel() -> (JobTx, JobRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    (JobTx(Some(tx)), Arc::new(tokio::sync::Mutex::new(rx)))
}

async fn recv_job(rx: &JobRx) -> Option<Vec<Job>> {
    rx.lock().await.recv().await
}

// ------------------------------------------------------------------ receiver

/// Receiver-side configuration.
#[derive(Debug, Clone)]
pub struct ReceiveOptions {
    /// State directory (the receiver's manifest store).
    pub home: PathBuf,
    /// Names and recognises the receiver's part files ([`crate::partname`]).
    pub parts: PartKey,
    /// A session that makes no progress for this long ends with an error.
    pub idle_timeout: Duration,
    /// Filter rules the tree is compared under (the sender's, from [`Frame::Options`]).
    pub filter: crate::filter::Filter,
    /// The mode its manifest is refreshed in before the sender's `Hello` says which one the
    /// session uses ([`ScanOptions::owners`]): the one a sender most likely uses.
    pub owners: bool,
}

fn dest_scan_options(home: &Path, owners: bool, parts: PartKey) -> ScanOptions {
    ScanOptions {
        exclude_path: std::fs::canonicalize(home).ok(),
        parts: Some(parts),
        owners,
        ..ScanOptions::default()
    }
}

fn open_store(home: &Path, root: &Path, owners: bool) -> Result<Store, PushError> {
    Ok(match Store::open(home, root, owners)? {
        Opened::Rebuilt { store, .. } => store,
        other => other.into_store(),
    })
}

/// Refreshes the receiver's manifest (opening its store first if `store` is `None`),
/// looking only at what `changed` names if given (falling back to a full walk if a
/// directory it keeps has no stored record).
async fn refresh_blocking(
    root: PathBuf,
    opts: ReceiveOptions,
    store: Option<Arc<Store>>,
    changed: Option<scan::Changed>,
) -> Result<(Arc<Store>, Summary), PushError> {
    tokio::task::spawn_blocking(move || {
        let ReceiveOptions {
            home,
            owners,
            parts,
            filter,
            ..
        } = opts;
        let store = match store {
            Some(s) => s,
            None => Arc::new(open_store(&home, &root, owners)?),
        };
        let full = ScanOptions {
            filter,
            ..dest_scan_options(&home, owners, parts)
        };
        let partial = changed.map(|c| ScanOptions {
            changed_only: Some(Arc::new(c)),
            ..full.clone()
        });
        let summary = match partial.map(|p| scan::refresh(&root, &store, &p)) {
            Some(Err(scan::ScanError::NotStored(_))) | None => scan::refresh(&root, &store, &full)?,
            Some(result) => result?,
        };
        Ok::<_, PushError>((store, summary))
    })
    .await
    .map_err(join_err)?
}

fn apply_meta(mode: u32, meta: &Meta) -> apply::Meta {
    apply::Meta {
        mode,
        mtime_ns: meta.mtime_ns,
        uid: Some(meta.uid),
        gid: Some(meta.gid),
        xattrs: meta.xattrs.clone(),
    }
}

/// Batches of files finished concurrently by the receiver, and files per batch.
const FINISHERS: usize = 16;
const FINISH_BATCH: usize = 32;

/// A finished file: its key and (path, stat-cache record), or why it failed.
type Finished = (FileKey, Result<(Vec<u8>, Vec<u8>), PushError>);

/// A complete part file waiting to be finished.
struct FinishJob {
    key: FileKey,
    part: apply::PartFile,
    node: crate::manifest::FileNode,
    meta: apply::Meta,
    /// The session's mode ([`ScanOptions::owners`]).
    owners: bool,
}

/// Finishes files (fsync, metadata, rename) on the blocking pool, in batches: an fsync waits
/// on the disk, so one file at a time made a 44k-file push to disk take a minute, while a
/// thread hand-off per file cost more than the work on tmpfs. Up to [`FINISHERS`] batches
/// of [`FINISH_BATCH`] run at once. A batch goes out when it is full, or when no batch is
/// running (so nothing waits on a batch that does not fill): before, a batch went out on
/// every turn of the session loop, which on a fast source meant one file per batch, a
/// thread wake-up per file. A batch's outcomes come back on `tx` together, after its
/// permit is released, so that the loop that receives them can dispatch the next one.
async fn dispatch_finishes(
    pending: &mut Vec<FinishJob>,
    tx: &mpsc::UnboundedSender<Vec<Finished>>,
    finishers: &Arc<tokio::sync::Semaphore>,
) {
    while pending.len() >= FINISH_BATCH
        || (!pending.is_empty() && finishers.available_permits() == FINISHERS)
    {
        let take = pending.len().min(FINISH_BATCH);
        let batch: Vec<FinishJob> = pending.drain(..take).collect();
        let permit = finishers.clone().acquire_owned().await;
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(batch.len());
            for job in batch {
                let path = job.part.rel().to_vec();
                let dest = job.part.dest().to_path_buf();
                let done = job.part.finish(&job.meta).and_then(|m| {
                    // Every chunk was verified as it was written: record the file for the
                    // final rescan's stat cache, so that the rescan need not read it again.
                    // Its attributes are what this side now has, not what the sender said.
                    let mut f = job.node;
                    f.attrs = apply::attrs_after(&dest, &path, &m, &job.meta, job.owners)?;
                    let node = Node::File(f);
                    let rec = crate::manifest::store::Record {
                        hash: node.hash(),
                        stat: scan::stat_of(&m),
                        node,
                    };
                    Ok((path, rec.encode()))
                });
                out.push((job.key, done.map_err(PushError::from)));
            }
            drop(permit);
            let _ = tx.send(out);
        });
    }
}

/// The receiver's tree at the start of a session: its canonical root, its store, and the
/// refresh that brought its manifest up to date.
struct Prepared {
    root: PathBuf,
    store: Arc<Store>,
    summary: Summary,
}

/// Refreshes the receiver's manifest of `root`. The drivers start this as soon as a session
/// begins, so that it runs while the sender scans its own tree.
async fn prepare_receiver(root: &Path, opts: &ReceiveOptions) -> Result<Prepared, PushError> {
    prepare_receiver_from(root, opts, None).await
}

/// [`prepare_receiver`], looking only at what `changed` names if given (a `serve` whose
/// previous session left the manifest current passes an empty set: only the root is
/// listed; see "The receiver's side of a long session" in ARCHITECTURE.md).
async fn prepare_receiver_from(
    root: &Path,
    opts: &ReceiveOptions,
    changed: Option<scan::Changed>,
) -> Result<Prepared, PushError> {
    let root = scan::canonical_root(root)?;
    let (store, summary) = refresh_blocking(root.clone(), opts.clone(), None, changed).await?;
    Ok(Prepared {
        root,
        store,
        summary,
    })
}

/// Tells the sender why the receiver gives up, if the connection still carries it.
async fn refuse<CW: AsyncWrite + Unpin>(control_w: &mut CW, e: &PushError, peer: &str) {
    let _ = write_frame(
        control_w,
        &Frame::Refuse {
            reason: e.to_string(),
        },
        peer,
    )
    .await;
}

/// Runs the receiving side of one session into the prepared tree; if preparing it failed,
/// tells the sender why.
async fn run_receiver<CR, CW, DR>(
    peer: &str,
    prepared: Result<Prepared, PushError>,
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
    let first = match control.recv().await {
        Some(Ok(Some(frame))) => frame,
        Some(Err(e)) => {
            refuse(&mut control_w, &e, peer).await;
            return Err(e);
        }
        Some(Ok(None)) | None => {
            return Err(PushError::Closed {
                peer: peer.to_string(),
            });
        }
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
    let mut opts = opts.clone();
    let prepared = match (&first, prepared) {
        (Frame::Hello { owners, .. }, Ok(p)) if *owners != opts.owners || !filter.is_empty() => {
            if *owners && !apply::running_as_root() {
                Err(PushError::CannotOwn)
            } else {
                opts.owners = *owners;
                opts.filter = filter;
                let root = p.root.clone();
                drop(p);
                prepare_receiver(&root, &opts).await
            }
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
    let mut session_parts: Vec<PathBuf> = Vec::new();
    let mut control_w = ControlTx::new(control_w, peer_packs);
    let mut r = Receiver::new();
    let mut index: Option<Index> = None;
    let mut parts: HashMap<FileKey, apply::PartFile> = HashMap::new();
    // Bases of the chunks asked for as deltas (by the id asked for): a data-stream reader
    // takes out the base of the chunk it rebuilds.
    let bases: Bases = Arc::default();
    // Records of files written in this session, for the stat cache of the final rescan.
    let mut written: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Files are finished (fsync, metadata, rename) in parallel on the blocking pool: an
    // fsync waits on the disk, and one at a time made a 44k-file push take a minute.
    let (fin_tx, mut fin_rx) = mpsc::unbounded_channel::<Vec<Finished>>();
    let finishers = Arc::new(tokio::sync::Semaphore::new(FINISHERS));
    let mut finishing: Vec<FinishJob> = Vec::new();

    // Data streams: each reader decodes, decompresses and verifies chunks in parallel.
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Verified, PushError>>(64);
    let peer_s = peer.to_string();
    let bases_r = bases.clone();
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

    // Ends with the `Done` frame, which is sent only once the store is closed: the sender
    // exits when it reads `Done`, and a `syncd diff` run right after must be able to open
    // the receiver's manifest.
    let result: Result<Frame, PushError> = async {
        for f in std::iter::once(first).chain(second) {
            r.handle(f, &snap, summary.root)
                .map_err(|source| PushError::Proto {
                    peer: peer.to_string(),
                    source,
                })?;
        }
        loop {
            while let Some(act) = r.poll() {
                if let Action::Send(done @ Frame::Done { .. }) = act {
                    return Ok(done);
                }
                execute(
                    &mut r,
                    act,
                    &target,
                    &mut parts,
                    &mut written,
                    &mut finishing,
                    &mut index,
                    &mut session_parts,
                    &bases,
                    &snap,
                    &store,
                    &root,
                    opts,
                    &mut control_w,
                    peer,
                )
                .await?;
            }
            dispatch_finishes(&mut finishing, &fin_tx, &finishers).await;
            tokio::select! {
                frame = control.recv() => {
                    let Some(frame) = frame.unwrap_or(Ok(None))? else {
                        return Err(PushError::Closed { peer: peer.to_string() });
                    };
                    r.handle(frame, &snap, summary.root).map_err(|source| PushError::Proto {
                        peer: peer.to_string(),
                        source,
                    })?;
                }
                Some(item) = chunk_rx.recv() => {
                    r.handle_chunk(item?);
                }
                Some(batch) = fin_rx.recv() => {
                    for (key, done) in batch {
                        let (path, record) = done?;
                        written.push((path, record));
                        r.file_finished(key);
                    }
                }
                // Every event above is progress and starts this wait again.
                _ = tokio::time::sleep(opts.idle_timeout) => {
                    return Err(PushError::Stalled {
                        peer: peer.to_string(),
                        after: opts.idle_timeout,
                        waiting: r.waiting_for(),
                    });
                }
            }
        }
    }
    .await;
    acceptor.abort();
    let result = match result {
        Ok(done) => {
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

/// What a receiver's session ended with.
#[derive(Debug, Clone, Copy, Default)]
struct Received {
    totals: codec::Totals,
    /// The sender's root, from its `Hello`.
    sender_root: Option<Hash>,
    /// The receiver's root it answered with `Done`.
    root: Option<Hash>,
    /// The session's mode (`Hello`'s `owners`).
    owners: Option<bool>,
}

/// Base chunks kept for the deltas asked for, by the id of the chunk asked for.
type Bases = Arc<Mutex<HashMap<ChunkId, Vec<u8>>>>;

fn decode_chunk(
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

#[allow(clippy::too_many_arguments)]
async fn execute<CW: AsyncWrite + Unpin>(
    r: &mut Receiver,
    act: Action,
    target: &Target,
    parts: &mut HashMap<FileKey, apply::PartFile>,
    written: &mut Vec<(Vec<u8>, Vec<u8>)>,
    finishing: &mut Vec<FinishJob>,
    index: &mut Option<Index>,
    session_parts: &mut Vec<PathBuf>,
    bases: &Bases,
    snap: &Snapshot,
    store: &Arc<Store>,
    root: &Path,
    opts: &ReceiveOptions,
    control_w: &mut ControlTx<CW>,
    peer: &str,
) -> Result<(), PushError> {
    match act {
        Action::Send(f) => {
            control_w.send(&f, peer).await?;
        }
        Action::Fail { reason } => return Err(PushError::Stopped { reason }),
        Action::Remove { path } => target.remove(&path)?,
        Action::MakeDir { path, mode, meta } => target.mkdir(&path, &apply_meta(mode, &meta))?,
        Action::Symlink {
            path,
            target: t,
            meta,
        } => target.symlink(&path, &t, &apply_meta(0o777, &meta))?,
        Action::SetFileMeta { path, mode, meta } => {
            if index.is_none() {
                *index = Some(build_index(snap)?);
            }
            let links = index.as_ref().map_or(1, |i| i.links_of(&path));
            target.set_file_meta(&path, &apply_meta(mode, &meta), links)?
        }
        Action::StartFile { key, path, node } => {
            let mut part = target.begin_file(&path, &node)?;
            session_parts.push(part.part_path().to_path_buf());
            let present = part.present()?;
            parts.insert(key, part);
            if index.is_none() {
                *index = Some(build_index(snap)?);
            }
            let idx = index.as_ref();
            r.file_started(key, &present, &|id| {
                idx.and_then(|i| i.chunks.get(id).cloned())
            });
        }
        Action::CopyLocal {
            key,
            index: i,
            from,
        } => {
            let want = r.file_node(key).and_then(|n| n.chunks.get(i)).map(|c| c.id);
            let verified = want.and_then(|id| read_checked(target, &from, &id));
            match (verified, parts.get_mut(&key)) {
                (Some(v), Some(part)) => {
                    part.write_chunk(i, &v)?;
                    r.chunk_written(key, i, true);
                }
                _ => r.copy_failed(key, i),
            }
        }
        Action::ReadBase { id, base, from } => match read_checked(target, &from, &base) {
            Some(v) => {
                let sig = Signature::of(v.bytes());
                lock(bases).insert(id, v.into_bytes());
                control_w
                    .send(&Frame::WantDelta { id, base, sig }, peer)
                    .await?;
            }
            None => r.base_failed(id),
        },
        Action::Write {
            key,
            index: i,
            data,
        } => {
            if let Some(part) = parts.get_mut(&key) {
                part.write_chunk(i, &data)?;
                r.chunk_written(key, i, false);
            }
        }
        Action::FinishFile { key, mode, meta } => {
            let (Some(part), Some(node)) = (parts.remove(&key), r.file_node(key).cloned()) else {
                r.file_finished(key);
                return Ok(());
            };
            finishing.push(FinishJob {
                key,
                part,
                node,
                meta: apply_meta(mode, &meta),
                owners: opts.owners,
            });
        }
        Action::AbortFile { key } => {
            if let Some(part) = parts.remove(&key) {
                part.abort()?;
            }
        }
        Action::HardLink { path, to } => target.hard_link(&path, &to)?,
        Action::SetDirMeta { path, mode, meta } => {
            target.set_dir_meta(&path, &apply_meta(mode, &meta))?
        }
        Action::Rescan {
            dirs,
            entries,
            full,
        } => {
            target.sync_dirs()?;
            let (st, recs) = (store.clone(), std::mem::take(written));
            tokio::task::spawn_blocking(move || st.commit(&recs, &[]))
                .await
                .map_err(join_err)??;
            let (_, summary) = refresh_blocking(
                root.to_path_buf(),
                opts.clone(),
                Some(store.clone()),
                (!full).then(|| scan::Changed {
                    dirs: dirs.into_iter().collect(),
                    entries: entries.into_iter().collect(),
                }),
            )
            .await?;
            r.rescanned(summary.root);
        }
    }
    Ok(())
}

/// Reads chunk `id` from where the receiver's tree has it; `None` if it cannot be read or
/// is no longer that chunk (the file changed).
fn read_checked(target: &Target, from: &ChunkLoc, id: &ChunkId) -> Option<Verified> {
    let bytes = target.read_span(&from.path, from.offset, from.len).ok()?;
    Verified::check(id, bytes).ok()
}

/// What the receiver's manifest says about its own tree, built once per session when
/// first needed.
struct Index {
    /// Every chunk of the tree, by id: the basis for reusing data it already has.
    chunks: HashMap<ChunkId, ChunkLoc>,
    /// For each first path of a hard-linked inode, how many other paths link to it.
    links: HashMap<Vec<u8>, u64>,
}

impl Index {
    /// How many paths of the tree are the inode at `path`, as far as the manifest knows.
    fn links_of(&self, path: &[u8]) -> u64 {
        1 + self.links.get(path).copied().unwrap_or(0)
    }
}

fn build_index(snap: &Snapshot) -> Result<Index, PushError> {
    let mut chunks = HashMap::new();
    let mut links: HashMap<Vec<u8>, u64> = HashMap::new();
    snap.for_each(|path, rec| {
        if let Node::File(f) = &rec.node {
            for (id, loc) in crate::proto::chunk_locs(path, f) {
                chunks.entry(id).or_insert(loc);
            }
            if let Some(first) = &f.link {
                *links.entry(first.clone()).or_default() += 1;
            }
        }
        Ok(())
    })?;
    Ok(Index { chunks, links })
}

// ------------------------------------------------------------------ entry points

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
/// a remote push, over in-memory pipes instead of QUIC.
pub async fn push_local(
    src: &Path,
    dest: &Path,
    home: &Path,
    opts: &PushOptions,
) -> Result<(PushReport, Summary), PushError> {
    if !dest.exists() {
        if opts.dry_run {
            return dry_run_into_nothing(src, home, opts).await;
        }
        std::fs::create_dir_all(dest).map_err(|source| PushError::Io {
            peer: dest.display().to_string(),
            source,
        })?;
    }
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
        let prepared = prepare_receiver(&dest, &ropts).await;
        run_receiver(
            &dest.display().to_string(),
            prepared,
            &ropts,
            rr,
            rw,
            data_rx,
        )
        .await
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
    // Connect while the source is scanned: the receiver refreshes its own manifest as soon
    // as the session starts, so both scans run at once.
    let (scanned, conn) = tokio::join!(
        scan_source(src, home, &opts.scan),
        tokio::time::timeout(
            opts.connect_timeout,
            transport::connect_with(&endpoint, identity, addr, peer_id, opts.scavenger)
        )
    );
    let conn = conn.map_err(|_| {
        PushError::Transport(transport::TransportError::NoAnswer {
            addr,
            after: opts.connect_timeout,
        })
    })??;
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
    let conn_err = |e: quinn::ConnectionError| PushError::Io {
        peer: peer.clone(),
        source: std::io::Error::other(e),
    };
    let (cw, cr) = conn.open_bi().await.map_err(conn_err)?;
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
    report.files_scanned = summary.files;
    report.bytes_scanned = summary.bytes;
    Ok((report, summary))
}

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
const SHUTTING_DOWN: &[u8] = b"server shutting down";

/// `message` without a leading repetition of `who` (an error that already names the peer,
/// logged after "from {who}").
fn untold<'a>(message: &'a str, who: &str) -> &'a str {
    message
        .strip_prefix(&format!("rejected connection from {who}: "))
        .unwrap_or(message)
}

/// Each peer's newest connection, with the number `serve` gave it.
type Latest = Arc<Mutex<HashMap<PeerId, (u64, quinn::Connection)>>>;

/// Close reason for a connection a newer one from the same peer replaced.
const SUPERSEDED: &[u8] = b"superseded by a newer push from the same peer";

async fn serve_session(
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
        owners: apply::running_as_root(),
        parts: part_key(home)?,
        idle_timeout,
        filter: crate::filter::Filter::default(),
    };
    // Refresh the manifest now, while the sender scans; its first stream shows up only
    // once it sends `Hello`.
    // A manifest the previous session left current in this mode needs no walk.
    let changed = (trusted == Some(opts.owners)).then(scan::Changed::default);
    let (prepared, streams) = tokio::join!(
        prepare_receiver_from(root, &opts, changed),
        conn.accept_bi()
    );
    let (cw, cr) = streams.map_err(conn_err)?;
    let (tx, rx) = mpsc::channel(DATA_STREAMS);
    let c = conn.clone();
    let accept_data = tokio::spawn(async move {
        while let Ok(s) = c.accept_uni().await {
            if tx.send(s).await.is_err() {
                break;
            }
        }
    });
    let result = run_receiver(peer, prepared, &opts, cr, cw, rx).await;
    accept_data.abort();
    // Give the last frame (Done, or Refuse with the reason) time to reach the sender
    // before the connection is closed: the sender closes once it has read it.
    let linger = if result.is_ok() { 5 } else { 2 };
    let _ = tokio::time::timeout(Duration::from_secs(linger), conn.closed()).await;
    result
}
