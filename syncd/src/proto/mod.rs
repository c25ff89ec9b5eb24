//! The sync protocol: frames ([`codec`]) and the two session state machines.
//!
//! Sans-IO, in the style of quinn-proto: no sockets, no files, no clock. A driver feeds
//! what arrives into `handle_*` methods and executes what `poll_*` returns. Storage is passed
//! in as the [`Nodes`] trait (the sender's manifest, the receiver's own manifest) and, for
//! the receiver, as a chunk index lookup. The drivers live in [`crate::push`].
//!
//! The flow (receiver-driven merkle descent):
//! 1. sender → `Hello{version, root, owners}`; receiver → `HelloAck{root}`. Equal roots:
//!    done. The driver refreshes the receiver's manifest in the sender's mode (with or
//!    without owners) before it hands `Hello` on, or refuses when it cannot set owners.
//! 2. The receiver asks for nodes (`GetNodes`) where its own hashes differ, starting at the
//!    root; the sender answers with `Nodes` (node + metadata).
//! 3. For each differing file the receiver reuses every chunk it already has (the partial
//!    file of an interrupted push, or any file of its tree through its chunk index) and asks
//!    for the rest with `Want`, or with `WantDelta` and a [`delta::Signature`] when its old
//!    version of the file has a chunk at the same offset; each id is asked for once,
//!    whatever number of files need it.
//! 4. The sender answers with `Chunk` frames (on data streams, in any order), a wanted
//!    delta as copy/literal ops when those are smaller than the chunk.
//! 5. When no node and no file is outstanding, the receiver removes extraneous entries
//!    (`--delete`), applies directory metadata, rescans, and sends `Done{root}`. The sender
//!    compares that root with its own: equal means the push succeeded.
//!
//! Invariants: every path that reaches an [`Action`] was validated by the codec (no `..`,
//! no absolute path, no NUL); a chunk is written only after its BLAKE3 matched its id (the
//! driver checks, and [`crate::apply`] checks again).

pub mod adapt;
pub mod codec;
pub mod delta;
pub mod stream;

use std::collections::{HashMap, VecDeque};

pub use codec::{
    Codec, Frame, FrameError, Listed, MAX_FRAME, Meta, NodeItem, Offered, Totals, VERSION,
};

use crate::chunk::{ChunkId, Verified};
use crate::manifest::{ChangeKind, FileNode, Hash, Node, Nodes, join};

/// Where a chunk's bytes can be read: a file (relative path), an offset and a length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLoc {
    /// Relative path of the file holding the chunk.
    pub path: Vec<u8>,
    /// Byte offset of the chunk in that file.
    pub offset: u64,
    /// Chunk length.
    pub len: u32,
}

/// Protocol-level failures (the peer misbehaved or is incompatible).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this build speaks {VERSION}")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// A frame arrived that is not valid in the current state.
    #[error("unexpected {frame} frame {state}")]
    Unexpected {
        /// Which frame.
        frame: &'static str,
        /// In which state.
        state: &'static str,
    },
    /// The receiver asked for a chunk the sender never offered.
    #[error("peer asked for unknown chunk {0}")]
    UnknownChunk(String),
    /// The peer refused or aborted, with its reason.
    #[error("peer refused: {0}")]
    Refused(String),
    /// The peer asked for a path the sender's manifest does not have.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Builds chunk locations for every chunk of `node` stored at `path`.
pub fn chunk_locs(path: &[u8], node: &FileNode) -> impl Iterator<Item = (ChunkId, ChunkLoc)> {
    let mut offset = 0u64;
    node.chunks.iter().map(move |c| {
        let loc = ChunkLoc {
            path: path.to_vec(),
            offset,
            len: c.len,
        };
        offset += u64::from(c.len);
        (c.id, loc)
    })
}

fn batch_paths(paths: Vec<Vec<u8>>) -> Vec<Frame> {
    let mut frames = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for p in paths {
        size += p.len() + 4;
        cur.push(p);
        if size >= codec::BATCH_BYTES {
            frames.push(Frame::GetNodes {
                paths: std::mem::take(&mut cur),
            });
            size = 0;
        }
    }
    if !cur.is_empty() {
        frames.push(Frame::GetNodes { paths: cur });
    }
    frames
}

// ---------------------------------------------------------------------------------------
// Sender
// ---------------------------------------------------------------------------------------

/// What the sender's driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SenderEvent {
    /// Send this frame on the control stream.
    Send(Frame),
    /// Read this chunk from the source tree, check its hash, and send it as a
    /// [`Frame::Chunk`] on a data stream. If the bytes do not match (the file changed), call
    /// [`Sender::source_changed`].
    Read {
        /// The chunk.
        id: ChunkId,
        /// Where it is.
        loc: ChunkLoc,
        /// Send it as a delta ([`Codec::Delta`]) against the base this describes, if that
        /// is smaller than the chunk.
        against: Option<delta::Signature>,
    },
    /// A dry-run report line from the receiver.
    Report(u8, u8, Vec<u8>),
    /// The receiver finished: its root and totals.
    Finished {
        /// The receiver's root after the push.
        root: Hash,
        /// What it did.
        totals: Totals,
    },
}

/// The sending side of one session.
///
/// Call [`Sender::new`] (it queues `Hello`), then alternately feed each frame from the
/// control stream to [`Sender::handle`] and drain [`Sender::poll`] until it returns `None`.
#[derive(Debug)]
pub struct Sender {
    root: Hash,
    /// Every offered place of each chunk: a read that fails at one (its file changed) is
    /// tried at the next, so a file waiting on a chunk it shares with a changed file still
    /// gets it.
    locs: HashMap<ChunkId, Vec<ChunkLoc>>,
    out: VecDeque<SenderEvent>,
    acked: bool,
    finished: bool,
}

impl Sender {
    /// A session offering a tree whose root is `root`, computed with or without `owners`
    /// ([`crate::scan::ScanOptions::owners`]).
    pub fn new(root: Hash, delete: bool, dry_run: bool, owners: bool) -> Sender {
        let mut out = VecDeque::new();
        out.push_back(SenderEvent::Send(Frame::Hello {
            version: VERSION,
            root,
            delete,
            dry_run,
            owners,
            verify_dest: false,
            options: false,
            itemize: false,
        }));
        Sender {
            root,
            locs: HashMap::new(),
            out,
            acked: false,
            finished: false,
        }
    }

    /// Asks the receiver to check its whole tree by a stat walk at the end, not only what
    /// the session changed ([`Frame::Hello`]'s `verify_dest`). Call it before the first
    /// [`Sender::poll`].
    pub fn verify_dest(&mut self) {
        if let Some(SenderEvent::Send(Frame::Hello { verify_dest, .. })) = self.out.front_mut() {
            *verify_dest = true;
        }
    }

    /// Asks the receiver to report each path it creates, updates, re-attributes or deletes
    /// (`--itemize-changes`). Call it before the first [`Sender::poll`].
    pub fn itemize(&mut self) {
        if let Some(SenderEvent::Send(Frame::Hello { itemize, .. })) = self.out.front_mut() {
            *itemize = true;
        }
    }

    /// Sends the session's [`Frame::Options`] right after `Hello` (and says so in it): the
    /// filter rules the source was scanned with, `--delete-excluded` and `--max-delete`.
    /// Call it before the first [`Sender::poll`].
    pub fn options(&mut self, rules: Vec<u8>, delete_excluded: bool, max_delete: u64) {
        if let Some(SenderEvent::Send(Frame::Hello { options, .. })) = self.out.front_mut() {
            *options = true;
            self.out.insert(
                1,
                SenderEvent::Send(Frame::Options {
                    rules,
                    delete_excluded,
                    max_delete,
                }),
            );
        }
    }

    /// Tells the receiver which paths the source has but could not read consistently
    /// (the scan's errors): it keeps its copy of each, whatever `--delete` says. Call it
    /// before the first [`Sender::poll`].
    pub fn unsettled(&mut self, mut paths: Vec<Vec<u8>>) {
        paths.sort();
        paths.dedup();
        let mut batch = Vec::new();
        let mut size = 0;
        for p in paths {
            size += p.len() + 4;
            batch.push(p);
            if size >= codec::BATCH_BYTES {
                self.out.push_back(SenderEvent::Send(Frame::Unsettled {
                    paths: std::mem::take(&mut batch),
                }));
                size = 0;
            }
        }
        if !batch.is_empty() {
            self.out
                .push_back(SenderEvent::Send(Frame::Unsettled { paths: batch }));
        }
    }

    /// The next thing to do.
    pub fn poll(&mut self) -> Option<SenderEvent> {
        self.out.pop_front()
    }

    /// True once the receiver sent `Done`.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Handles one frame from the receiver. `nodes` is the sender's manifest; `meta` gives
    /// the metadata of a path (`None` if it vanished from disk).
    pub fn handle<N: Nodes>(
        &mut self,
        frame: Frame,
        nodes: &N,
        meta: &mut dyn FnMut(&[u8], &Node) -> Option<Meta>,
    ) -> Result<(), ProtoError>
    where
        N::Error: std::fmt::Display,
    {
        match frame {
            Frame::HelloAck { version, .. } => {
                if version != VERSION {
                    return Err(ProtoError::Version { theirs: version });
                }
                self.acked = true;
            }
            Frame::Refuse { reason } => return Err(ProtoError::Refused(reason)),
            Frame::GetNodes { paths } if self.acked => {
                let mut items = Vec::new();
                let mut size = 0usize;
                for path in paths {
                    let node = nodes
                        .node(&path)
                        .map_err(|e| ProtoError::Storage(e.to_string()))?;
                    let Some(node) = node else {
                        self.out
                            .push_back(SenderEvent::Send(Frame::Vanished { path }));
                        continue;
                    };
                    let Some(m) = meta(&path, &node) else {
                        self.out
                            .push_back(SenderEvent::Send(Frame::Vanished { path }));
                        continue;
                    };
                    if let Node::File(f) = &node {
                        self.add_locs(&path, f);
                    }
                    size += path.len() + 64 + node_size_hint(&node);
                    items.push(NodeItem {
                        path,
                        node: node.into(),
                        meta: m,
                    });
                    if size >= codec::BATCH_BYTES {
                        self.out.push_back(SenderEvent::Send(Frame::Nodes {
                            items: std::mem::take(&mut items),
                        }));
                        size = 0;
                    }
                }
                if !items.is_empty() {
                    self.out
                        .push_back(SenderEvent::Send(Frame::Nodes { items }));
                }
            }
            Frame::Want { ids } if self.acked => {
                for id in ids {
                    self.read(id, None)?;
                }
            }
            Frame::WantDelta { id, sig, .. } if self.acked => self.read(id, Some(sig))?,
            Frame::Report { items } if self.acked => {
                for (m, a, p) in items {
                    self.out.push_back(SenderEvent::Report(m, a, p));
                }
            }
            Frame::Done { root, totals } if self.acked => {
                self.finished = true;
                self.out.push_back(SenderEvent::Finished { root, totals });
            }
            other => {
                return Err(ProtoError::Unexpected {
                    frame: other.name(),
                    state: if self.acked {
                        "from a receiver"
                    } else {
                        "before hello-ack"
                    },
                });
            }
        }
        Ok(())
    }

    /// Queues the read of an offered chunk, to be sent whole or as a delta `against` a base.
    fn read(&mut self, id: ChunkId, against: Option<delta::Signature>) -> Result<(), ProtoError> {
        let loc = self
            .locs
            .get(&id)
            .and_then(|l| l.first())
            .cloned()
            .ok_or_else(|| ProtoError::UnknownChunk(id.to_string()))?;
        self.out.push_back(SenderEvent::Read { id, loc, against });
        Ok(())
    }

    fn add_locs(&mut self, path: &[u8], node: &FileNode) {
        for (id, loc) in chunk_locs(path, node) {
            let locs = self.locs.entry(id).or_default();
            if !locs.contains(&loc) {
                locs.push(loc);
            }
        }
    }

    /// The read of chunk `id` at `loc` did not give the chunk (the file there changed or
    /// cannot be read). That place is forgotten and the read is queued at the next place
    /// the chunk was offered, if any. The driver also reads the file at `loc` again and
    /// calls [`Sender::source_changed`] (or [`Sender::retry`] if it is unchanged).
    pub fn read_failed(&mut self, id: ChunkId, loc: &ChunkLoc, against: Option<delta::Signature>) {
        let Some(locs) = self.locs.get_mut(&id) else {
            return;
        };
        locs.retain(|l| l.path != loc.path);
        if let Some(next) = locs.first().cloned() {
            self.out.push_back(SenderEvent::Read {
                id,
                loc: next,
                against,
            });
        } else {
            self.locs.remove(&id);
        }
    }

    /// The file at `path` reads as `node` again, the node last offered for it, after a read
    /// of chunk `id` there failed: its places are restored and the read is queued again.
    pub fn retry(
        &mut self,
        path: &[u8],
        node: &FileNode,
        id: ChunkId,
        against: Option<delta::Signature>,
    ) {
        self.add_locs(path, node);
        if self.locs.get(&id).is_some_and(|l| !l.is_empty()) {
            // `read` cannot fail here: the chunk has a place.
            let _ = self.read(id, against);
        }
    }

    /// The file at `path` no longer matches what was offered (it changed while the push
    /// ran). `now` is its fresh node and metadata, or `None` if it cannot be read: the
    /// receiver is told to start that file over, or to drop it.
    pub fn source_changed(&mut self, path: Vec<u8>, now: Option<(FileNode, Meta)>) {
        match now {
            Some((node, meta)) => {
                self.add_locs(&path, &node);
                self.out.push_back(SenderEvent::Send(Frame::Nodes {
                    items: vec![NodeItem {
                        path,
                        node: Offered::File(node),
                        meta,
                    }],
                }));
            }
            None => self
                .out
                .push_back(SenderEvent::Send(Frame::Vanished { path })),
        }
    }

    /// The root this session offers.
    pub fn root(&self) -> Hash {
        self.root
    }
}

fn node_size_hint(node: &Node) -> usize {
    match node {
        Node::File(f) => f.chunks.len() * 36,
        Node::Symlink { target, .. } => target.len(),
        Node::Dir { entries, .. } => entries.iter().map(|e| e.name.len() + 4 + 1 + 8).sum(),
    }
}

// ---------------------------------------------------------------------------------------
// Receiver
// ---------------------------------------------------------------------------------------

/// Identifies one file being assembled in this session.
pub type FileKey = u64;

/// What the receiver's driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this frame on the control stream.
    Send(Frame),
    /// Remove whatever is at `path` (file, symlink or whole directory), never following
    /// symlinks.
    Remove {
        /// Relative path.
        path: Vec<u8>,
    },
    /// Make sure a directory exists at `path` (replacing a non-directory).
    MakeDir {
        /// Relative path.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Owner, xattrs (mtime is applied later by `SetDirMeta`).
        meta: Meta,
    },
    /// Create or replace a symlink atomically.
    Symlink {
        /// Relative path.
        path: Vec<u8>,
        /// Target bytes.
        target: Vec<u8>,
        /// Metadata.
        meta: Meta,
    },
    /// Only the metadata of an existing, content-identical file changed.
    SetFileMeta {
        /// Relative path.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Metadata.
        meta: Meta,
    },
    /// Open (or reopen, to resume) the part file for `path` and report which chunks it
    /// already holds with [`Receiver::file_started`].
    StartFile {
        /// The session's key for this file.
        key: FileKey,
        /// Relative path.
        path: Vec<u8>,
        /// The file's node (size, chunks).
        node: FileNode,
    },
    /// Copy chunk `index` of file `key` from a local file, verify it, write it, and report
    /// with [`Receiver::chunk_written`] (or [`Receiver::copy_failed`]).
    CopyLocal {
        /// The file.
        key: FileKey,
        /// Chunk index.
        index: usize,
        /// Where the receiver already has those bytes.
        from: ChunkLoc,
    },
    /// Read `from`, the receiver's chunk `base` (of the old version of the file being
    /// replaced), check it, keep it, and ask for chunk `id` as a delta against it
    /// ([`Frame::WantDelta`]). If it cannot be read or does not match, call
    /// [`Receiver::base_failed`].
    ReadBase {
        /// The chunk wanted.
        id: ChunkId,
        /// The base's id.
        base: ChunkId,
        /// Where the base is.
        from: ChunkLoc,
    },
    /// Write chunk `index` of file `key` with these (verified) bytes, then report with
    /// [`Receiver::chunk_written`].
    Write {
        /// The file.
        key: FileKey,
        /// Chunk index.
        index: usize,
        /// The chunk bytes.
        data: std::sync::Arc<Verified>,
    },
    /// Every chunk of `key` is in place: verify, fsync, apply metadata and rename it over
    /// its final path, then call [`Receiver::file_finished`].
    FinishFile {
        /// The file.
        key: FileKey,
        /// Permission bits.
        mode: u32,
        /// Metadata.
        meta: Meta,
    },
    /// Give up on file `key` (the sender lost it): remove its part file.
    AbortFile {
        /// The file.
        key: FileKey,
    },
    /// Make `path` a hard link of `to` (an entry already complete in the receiver's tree).
    HardLink {
        /// Relative path of the new link.
        path: Vec<u8>,
        /// The existing path it links to.
        to: Vec<u8>,
    },
    /// Apply a directory's mode and mtime (after its content is final).
    SetDirMeta {
        /// Relative path.
        path: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Metadata.
        meta: Meta,
    },
    /// The session cannot end well (e.g. `--max-delete` would be exceeded): tell the
    /// sender `reason` and end it with an error. Nothing more is to be done.
    Fail {
        /// Why, for a person.
        reason: String,
    },
    /// Everything is applied: rescan the tree and call [`Receiver::rescanned`]. Only the
    /// root, `dirs` and `entries` need looking at: everything else had the sender's hash
    /// when the session started, and this session did not touch it.
    Rescan {
        /// Directories this session received nodes for (created, changed or emptied).
        dirs: Vec<Vec<u8>>,
        /// Files, symlinks and hard links this session wrote or set metadata on.
        entries: Vec<Vec<u8>>,
        /// Walk and stat the whole tree instead (`--verify-dest`): writes by others count.
        full: bool,
    },
}

#[derive(Debug)]
struct FileState {
    path: Vec<u8>,
    node: FileNode,
    meta: Meta,
    /// The receiver's own old version of this file, the base for deltas.
    old: Option<FileNode>,
    /// Chunks not yet written.
    missing: usize,
    done: Vec<bool>,
    /// `file_started` was called.
    started: bool,
    /// Holds one of the [`MAX_OPEN_FILES`] slots.
    slot: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RState {
    AwaitHello,
    Descending,
    Rescanning,
    Done,
}

/// The receiving side of one session. See the module docs for the flow.
///
/// Feed control-stream frames to [`Receiver::handle`], chunk frames (already decoded and
/// verified) to [`Receiver::handle_chunk`], and the outcome of each executed [`Action`] to
/// the matching method; drain [`Receiver::poll`] after each call.
#[derive(Debug)]
pub struct Receiver {
    state: RState,
    delete: bool,
    dry_run: bool,
    outstanding: usize,
    files: HashMap<FileKey, FileState>,
    by_path: HashMap<Vec<u8>, FileKey>,
    waiters: HashMap<ChunkId, Vec<(FileKey, usize)>>,
    next_key: FileKey,
    dirs: Vec<(Vec<u8>, u32, Meta)>,
    deletes: Vec<Vec<u8>>,
    report: Vec<(u8, u8, Vec<u8>)>,
    /// Report what is done as it is done ([`Frame::Hello`]'s `itemize`), not only in a
    /// dry run.
    itemize: bool,
    out: VecDeque<Action>,
    totals: Totals,
    /// Files waiting for a slot, and how many are open (started, not finished).
    queued: VecDeque<FileKey>,
    open: usize,
    /// Hard links waiting for the file they point to (by its key) to be finished.
    links: HashMap<FileKey, Vec<LinkTo>>,
    /// Hard links offered during the descent, made (or attached to [`Receiver::links`])
    /// once it is over.
    pending_links: Vec<LinkTo>,
    /// Chunk ids to ask for, sent by [`Receiver::poll`] once the other actions are drained.
    want: Vec<ChunkId>,
    /// Non-directory paths this session writes (for [`Action::Rescan`]).
    touched: Vec<Vec<u8>>,
    /// The final rescan walks the whole tree ([`Frame::Hello`]'s `verify_dest`).
    verify_dest: bool,
    /// At most this many entries are deleted ([`Frame::Options`]); 0 = no limit.
    max_delete: u64,
    /// Entries the deletes would remove, directories counted with what is in them.
    delete_count: u64,
    /// Paths the sender has but could not read ([`Frame::Unsettled`]), sorted: never
    /// deleted, nor anything below them.
    unsettled: Vec<Vec<u8>>,
}

/// Records that chunk `index` of file `key` waits for chunk `id`. True for the first
/// waiter of an id, which must ask the sender for it.
fn wait_for(
    waiters: &mut HashMap<ChunkId, Vec<(FileKey, usize)>>,
    id: ChunkId,
    waiter: (FileKey, usize),
) -> bool {
    let waiting = waiters.entry(id).or_default();
    waiting.push(waiter);
    waiting.len() == 1
}

/// True if `e`, a child the sender lists, is in `old` (the receiver's sorted children) with
/// the same kind and (short) hash: nothing to fetch below it.
fn unchanged(old: &[crate::manifest::Entry], e: &Listed) -> bool {
    old.binary_search_by(|o| o.name.as_slice().cmp(&e.name))
        .is_ok_and(|i| e.is(&old[i]))
}

/// The chunk of `old` that covers byte `at`, as a delta base: (id, offset, length). Bases
/// smaller than a delta block have nothing to match.
fn base_at(old: Option<&FileNode>, at: u64) -> Option<(ChunkId, u64, u32)> {
    let mut offset = 0u64;
    for c in &old?.chunks {
        let end = offset + u64::from(c.len);
        if at < end {
            return (c.len as usize >= delta::block_size(c.len as usize))
                .then_some((c.id, offset, c.len));
        }
        offset = end;
    }
    None
}

/// What a push changes at a path where the receiver has `mine` and the sender offers
/// `theirs` (`retyped`: of another kind): the marker, as in `syncd diff`, and for a
/// metadata-only change which attributes ([`codec::attr`] bits). `None` if nothing
/// changes there (a directory whose children may still differ).
pub fn classify(mine: Option<&Node>, theirs: &Offered, retyped: bool) -> Option<(ChangeKind, u8)> {
    use codec::attr;
    let bit = |differs: bool, b: u8| if differs { b } else { 0 };
    match mine {
        None => Some((ChangeKind::Added, 0)),
        Some(_) if retyped => Some((ChangeKind::TypeChanged, 0)),
        Some(m) if theirs.matches(m) => None,
        Some(Node::Dir { mode, attrs, .. }) => match theirs {
            Offered::Dir {
                mode: m, attrs: a, ..
            } if (m, a) != (mode, attrs) => Some((
                ChangeKind::Metadata,
                bit(m != mode, attr::MODE) | bit(a != attrs, attr::OWNER_XATTRS),
            )),
            _ => None,
        },
        Some(Node::File(a)) => match theirs {
            Offered::File(b) if a.chunks == b.chunks => Some((
                ChangeKind::Metadata,
                bit(a.mode != b.mode, attr::MODE)
                    | bit(a.mtime_ns != b.mtime_ns, attr::MTIME)
                    | bit(a.attrs != b.attrs, attr::OWNER_XATTRS)
                    | bit(a.link != b.link, attr::LINK),
            )),
            _ => Some((ChangeKind::Modified, 0)),
        },
        Some(Node::Symlink { target: a, .. }) => match theirs {
            Offered::Symlink { target: b, .. } if a == b => {
                Some((ChangeKind::Metadata, attr::OWNER_XATTRS))
            }
            _ => Some((ChangeKind::Modified, 0)),
        },
    }
}

/// How many entries removing the entry of `kind` at `path` removes: 1, or for a directory
/// 1 plus everything below it in the receiver's manifest `local`.
fn entries_below<N: Nodes>(local: &N, path: &[u8], kind: crate::manifest::Kind) -> u64 {
    if kind != crate::manifest::Kind::Dir {
        return 1;
    }
    let mut n = 1;
    let mut stack = vec![path.to_vec()];
    while let Some(dir) = stack.pop() {
        if let Ok(Some(Node::Dir { entries, .. })) = local.node(&dir) {
            for e in entries {
                n += 1;
                if e.kind == crate::manifest::Kind::Dir {
                    stack.push(join(&dir, &e.name));
                }
            }
        }
    }
    n
}

/// A hard link to make: (new path, existing path).
type LinkTo = (Vec<u8>, Vec<u8>);

/// At most this many part files are open at once on the receiver.
pub const MAX_OPEN_FILES: usize = 256;

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

impl Receiver {
    /// A receiver waiting for `Hello`.
    pub fn new() -> Receiver {
        Receiver {
            state: RState::AwaitHello,
            delete: false,
            dry_run: false,
            outstanding: 0,
            files: HashMap::new(),
            by_path: HashMap::new(),
            waiters: HashMap::new(),
            next_key: 0,
            dirs: Vec::new(),
            deletes: Vec::new(),
            report: Vec::new(),
            out: VecDeque::new(),
            totals: Totals::default(),
            queued: VecDeque::new(),
            open: 0,
            links: HashMap::new(),
            pending_links: Vec::new(),
            want: Vec::new(),
            touched: Vec::new(),
            unsettled: Vec::new(),
            verify_dest: false,
            max_delete: 0,
            delete_count: 0,
            itemize: false,
        }
    }

    /// True if `path` is, is inside or contains a path the sender could not read: its
    /// receiver copy must stay.
    fn is_unsettled(&self, path: &[u8]) -> bool {
        if self.unsettled.is_empty() {
            return false;
        }
        let listed = |p: &[u8]| {
            self.unsettled
                .binary_search_by(|u| u.as_slice().cmp(p))
                .is_ok()
        };
        // The path itself or one of its ancestors (the root stands for everything).
        if listed(b"")
            || listed(path)
            || path
                .iter()
                .enumerate()
                .any(|(i, &b)| b == b'/' && listed(&path[..i]))
        {
            return true;
        }
        // A descendant: every `path/...` sorts at or after `path/`, contiguously.
        let mut below = path.to_vec();
        below.push(b'/');
        let i = self
            .unsettled
            .partition_point(|u| u.as_slice() < below.as_slice());
        self.unsettled.get(i).is_some_and(|u| u.starts_with(&below))
    }

    /// Starts queued files while fewer than [`MAX_OPEN_FILES`] are open.
    fn pump(&mut self) {
        while self.open < MAX_OPEN_FILES {
            let Some(key) = self.queued.pop_front() else {
                return;
            };
            if let Some(f) = self.files.get_mut(&key) {
                f.slot = true;
                self.open += 1;
                self.out.push_back(Action::StartFile {
                    key,
                    path: f.path.clone(),
                    node: f.node.clone(),
                });
            }
        }
    }

    /// Forgets file `key` (restarted or vanished), releasing its slot if it had one. The
    /// hard links waiting for it wait for its next offer if it is `restarted`; the links of
    /// a vanished file are not made (the push then ends with different roots).
    fn drop_file(&mut self, key: FileKey, restarted: bool) {
        if let Some(f) = self.files.remove(&key) {
            if f.slot {
                self.open -= 1;
            }
            // Its chunks are no longer waited for by it. A chunk nobody waits for any more
            // is asked for again by the next file that needs it: the sender may have given
            // up on it (every place it had for it changed).
            for c in &f.node.chunks {
                if let Some(w) = self.waiters.get_mut(&c.id) {
                    w.retain(|(k, _)| *k != key);
                    if w.is_empty() {
                        self.waiters.remove(&c.id);
                    }
                }
            }
            self.out.push_back(Action::AbortFile { key });
        }
        let links = self.links.remove(&key).unwrap_or_default();
        if restarted {
            self.pending_links.extend(links);
        }
        self.pump();
    }

    /// The next action. Chunk ids to ask for are collected while other actions are
    /// pending and sent as one `Want` once those are drained: a Want per file (one chunk,
    /// for most) cost a control frame and a wake-up of the sender per file.
    pub fn poll(&mut self) -> Option<Action> {
        if let Some(a) = self.out.pop_front() {
            return Some(a);
        }
        if self.want.is_empty() {
            return None;
        }
        let n = self.want.len().min(codec::BATCH_BYTES / 32);
        let ids: Vec<ChunkId> = self.want.drain(..n).collect();
        Some(Action::Send(Frame::Want { ids }))
    }

    /// What the session is waiting for, for a person: the answers, chunks and files still
    /// outstanding (used when a session makes no progress for too long).
    pub fn waiting_for(&self) -> String {
        let chunks: usize = self.waiters.len() + self.want.len();
        let example = self
            .files
            .values()
            .map(|f| f.path.as_slice())
            .min()
            .map(|p| format!(", e.g. {}", crate::manifest::display_path(p)))
            .unwrap_or_default();
        format!(
            "{} node answers, {chunks} chunks and {} files{example}",
            self.outstanding,
            self.files.len()
        )
    }

    /// True if the sender asked for a dry run (known once `Hello` is handled).
    pub fn is_dry_run(&self) -> bool {
        self.dry_run
    }

    /// True once `Done` has been queued.
    pub fn is_done(&self) -> bool {
        self.state == RState::Done
    }

    /// The path of an active file.
    pub fn file_path(&self, key: FileKey) -> Option<&[u8]> {
        self.files.get(&key).map(|f| f.path.as_slice())
    }

    /// The node of an active file.
    pub fn file_node(&self, key: FileKey) -> Option<&FileNode> {
        self.files.get(&key).map(|f| &f.node)
    }

    /// Handles a control-stream frame. `local` is the receiver's own manifest (as of the
    /// start of the session) and `root` its root hash.
    pub fn handle<N: Nodes>(
        &mut self,
        frame: Frame,
        local: &N,
        root: Hash,
    ) -> Result<(), ProtoError>
    where
        N::Error: std::fmt::Display,
    {
        match (self.state, frame) {
            (
                RState::AwaitHello,
                Frame::Hello {
                    version,
                    root: theirs,
                    delete,
                    dry_run,
                    verify_dest,
                    itemize,
                    ..
                },
            ) => {
                self.verify_dest = verify_dest;
                self.itemize = itemize;
                if version != VERSION {
                    self.out.push_back(Action::Send(Frame::Refuse {
                        reason: format!(
                            "protocol version {version} is not supported (this receiver speaks {VERSION})"
                        ),
                    }));
                    return Err(ProtoError::Version { theirs: version });
                }
                self.delete = delete;
                self.dry_run = dry_run;
                self.out.push_back(Action::Send(Frame::HelloAck {
                    version: VERSION,
                    root,
                }));
                self.state = RState::Descending;
                if theirs == root {
                    self.state = RState::Done;
                    self.out.push_back(Action::Send(Frame::Done {
                        root,
                        totals: Totals::default(),
                    }));
                } else {
                    self.outstanding = 1;
                    self.out.push_back(Action::Send(Frame::GetNodes {
                        paths: vec![Vec::new()],
                    }));
                }
            }
            (RState::Descending, Frame::Nodes { items }) => {
                let mut fetch = Vec::new();
                for item in items {
                    self.node(item, local, &mut fetch)?;
                }
                self.outstanding += fetch.len();
                for f in batch_paths(fetch) {
                    self.out.push_back(Action::Send(f));
                }
                self.check_complete();
            }
            (RState::Descending | RState::Done, Frame::Options { max_delete, .. }) => {
                self.max_delete = max_delete;
            }
            (
                RState::Descending | RState::Rescanning | RState::Done,
                Frame::Unsettled { paths },
            ) => {
                self.unsettled.extend(paths);
                self.unsettled.sort();
                self.unsettled.dedup();
            }
            (RState::Descending, Frame::Vanished { path }) => {
                if let Some(key) = self.by_path.remove(&path) {
                    self.drop_file(key, false);
                } else {
                    self.outstanding = self.outstanding.saturating_sub(1);
                }
                self.check_complete();
            }
            (_, Frame::Refuse { reason }) => return Err(ProtoError::Refused(reason)),
            (state, other) => {
                return Err(ProtoError::Unexpected {
                    frame: other.name(),
                    state: match state {
                        RState::AwaitHello => "before hello",
                        RState::Descending => "during transfer",
                        RState::Rescanning | RState::Done => "after the transfer",
                    },
                });
            }
        }
        Ok(())
    }

    fn node<N: Nodes>(
        &mut self,
        item: NodeItem,
        local: &N,
        fetch: &mut Vec<Vec<u8>>,
    ) -> Result<(), ProtoError>
    where
        N::Error: std::fmt::Display,
    {
        let NodeItem { path, node, meta } = item;
        // An update for a file already in progress (the source changed): start it over.
        if let Some(key) = self.by_path.remove(&path) {
            self.drop_file(key, true);
        } else {
            self.outstanding = self.outstanding.saturating_sub(1);
        }
        let mine = local
            .node(&path)
            .map_err(|e| ProtoError::Storage(e.to_string()))?;
        let kind = node.kind();
        let retyped = mine.as_ref().is_some_and(|m| m.kind() != kind);
        if self.dry_run || self.itemize {
            if let Some((m, attrs)) = classify(mine.as_ref(), &node, retyped) {
                self.report.push((m.marker() as u8, attrs, path.clone()));
            }
        }
        if self.dry_run {
            if let (Offered::Dir { entries, .. }, Some(Node::Dir { entries: old, .. })) =
                (&node, &mine)
            {
                for e in entries {
                    if !unchanged(old, e) {
                        fetch.push(join(&path, &e.name));
                    }
                }
                if self.delete {
                    for o in old {
                        let p = join(&path, &o.name);
                        if entries
                            .binary_search_by(|e| e.name.as_slice().cmp(&o.name))
                            .is_err()
                            && !self.is_unsettled(&p)
                        {
                            self.report.push((b'-', 0, p));
                        }
                    }
                }
            }
            return Ok(());
        }
        if retyped {
            self.totals.removed += 1;
            self.out.push_back(Action::Remove { path: path.clone() });
        }
        if !matches!(node, Offered::Dir { .. }) {
            self.touched.push(path.clone());
        }
        match node {
            Offered::Dir { mode, entries, .. } => {
                let old = match &mine {
                    Some(Node::Dir { entries, .. }) if !retyped => Some(entries),
                    _ => None,
                };
                if old.is_none() {
                    self.out.push_back(Action::MakeDir {
                        path: path.clone(),
                        mode,
                        meta: meta.clone(),
                    });
                }
                for e in &entries {
                    if !old.is_some_and(|old| unchanged(old, e)) {
                        fetch.push(join(&path, &e.name));
                    }
                }
                if self.delete
                    && let Some(old) = old
                {
                    for o in old {
                        let p = join(&path, &o.name);
                        if entries
                            .binary_search_by(|e| e.name.as_slice().cmp(&o.name))
                            .is_err()
                            && !self.is_unsettled(&p)
                        {
                            self.delete_count += entries_below(local, &p, o.kind);
                            if self.itemize {
                                self.report.push((b'-', 0, p.clone()));
                            }
                            self.deletes.push(p);
                        }
                    }
                }
                self.dirs.push((path, mode, meta));
            }
            Offered::Symlink { target, .. } => {
                self.out.push_back(Action::Symlink { path, target, meta });
            }
            Offered::File(f) => {
                if let Some(to) = f.link.clone() {
                    // A hard link of `to`, the first path of its inode, which may be
                    // offered later in the descent: linked once the descent is over.
                    self.pending_links.push((path, to));
                    return Ok(());
                }
                // Same content, and not a link of another path here (which must become an
                // inode of its own, rebuilt from local chunks): only metadata to set.
                if let Some(Node::File(old)) = &mine
                    && old.chunks == f.chunks
                    && old.link.is_none()
                {
                    self.out.push_back(Action::SetFileMeta {
                        path,
                        mode: f.mode,
                        meta,
                    });
                    return Ok(());
                }
                let key = self.next_key;
                self.next_key += 1;
                let n = f.chunks.len();
                self.by_path.insert(path.clone(), key);
                self.files.insert(
                    key,
                    FileState {
                        path: path.clone(),
                        node: f.clone(),
                        meta,
                        old: match mine {
                            Some(Node::File(old)) => Some(old),
                            _ => None,
                        },
                        missing: n,
                        done: vec![false; n],
                        started: false,
                        slot: false,
                    },
                );
                self.queued.push_back(key);
                self.pump();
            }
        }
        Ok(())
    }

    /// The part file for `key` is open; `present[i]` says chunk `i` is already in it.
    /// `index` finds chunks elsewhere in the receiver's tree.
    pub fn file_started(
        &mut self,
        key: FileKey,
        present: &[bool],
        index: &dyn Fn(&ChunkId) -> Option<ChunkLoc>,
    ) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        f.started = true;
        let chunks = f.node.chunks.clone();
        let mut offset = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            let at = offset;
            offset += u64::from(c.len);
            if present.get(i).copied().unwrap_or(false) {
                f.done[i] = true;
                f.missing -= 1;
                self.totals.chunks_reused += 1;
                self.totals.bytes_reused += u64::from(c.len);
                continue;
            }
            if let Some(from) = index(&c.id) {
                self.out.push_back(Action::CopyLocal {
                    key,
                    index: i,
                    from,
                });
                continue;
            }
            if !wait_for(&mut self.waiters, c.id, (key, i)) {
                continue;
            }
            match base_at(f.old.as_ref(), at) {
                Some((base, from_offset, len)) => self.out.push_back(Action::ReadBase {
                    id: c.id,
                    base,
                    from: ChunkLoc {
                        path: f.path.clone(),
                        offset: from_offset,
                        len,
                    },
                }),
                None => self.want.push(c.id),
            }
        }
        self.maybe_finish(key);
    }

    /// The base for a delta of chunk `id` could not be read: ask for the whole chunk.
    pub fn base_failed(&mut self, id: ChunkId) {
        if self.waiters.get(&id).is_some_and(|w| !w.is_empty()) {
            self.want.push(id);
        }
    }

    /// A local copy for chunk `index` of `key` did not match (the local file changed): ask
    /// the sender instead.
    pub fn copy_failed(&mut self, key: FileKey, index: usize) {
        let Some(id) = self
            .files
            .get(&key)
            .and_then(|f| f.node.chunks.get(index))
            .map(|c| c.id)
        else {
            return;
        };
        if wait_for(&mut self.waiters, id, (key, index)) {
            self.want.push(id);
        }
    }

    /// A verified chunk arrived from the sender.
    pub fn handle_chunk(&mut self, data: Verified) {
        let Some(waiting) = self.waiters.remove(data.id()) else {
            return; // nobody needs it any more (its file was restarted or dropped)
        };
        self.totals.chunks_received += 1;
        let data = std::sync::Arc::new(data);
        for (key, index) in waiting {
            if self.files.contains_key(&key) {
                self.out.push_back(Action::Write {
                    key,
                    index,
                    data: data.clone(),
                });
            }
        }
    }

    /// Chunk `index` of `key` is written (from a copy or from the wire).
    pub fn chunk_written(&mut self, key: FileKey, index: usize, reused: bool) {
        let Some(f) = self.files.get_mut(&key) else {
            return;
        };
        if let Some(d) = f.done.get_mut(index)
            && !*d
        {
            *d = true;
            f.missing -= 1;
            if reused {
                self.totals.chunks_reused += 1;
                self.totals.bytes_reused += u64::from(f.node.chunks[index].len);
            }
        }
        self.maybe_finish(key);
    }

    fn maybe_finish(&mut self, key: FileKey) {
        if let Some(f) = self.files.get(&key)
            && f.started
            && f.missing == 0
        {
            self.out.push_back(Action::FinishFile {
                key,
                mode: f.node.mode,
                meta: f.meta.clone(),
            });
        }
    }

    /// File `key` is renamed into place.
    pub fn file_finished(&mut self, key: FileKey) {
        if let Some(f) = self.files.remove(&key) {
            self.by_path.remove(&f.path);
            self.totals.files += 1;
            self.open -= 1;
        }
        for (path, to) in self.links.remove(&key).unwrap_or_default() {
            self.out.push_back(Action::HardLink { path, to });
        }
        self.pump();
        self.check_complete();
    }

    fn check_complete(&mut self) {
        if self.state != RState::Descending || self.outstanding > 0 {
            return;
        }
        // The descent is over, so every path that differs was offered: a link whose first
        // path is still being written waits for it, the others are made now.
        for (path, to) in std::mem::take(&mut self.pending_links) {
            match self.by_path.get(&to) {
                Some(&key) => self.links.entry(key).or_default().push((path, to)),
                None => self.out.push_back(Action::HardLink { path, to }),
            }
        }
        if !self.files.is_empty() {
            return;
        }
        self.state = RState::Rescanning;
        if self.dry_run || self.itemize {
            let report = std::mem::take(&mut self.report);
            for items in report.chunks(4096) {
                self.out.push_back(Action::Send(Frame::Report {
                    items: items.to_vec(),
                }));
            }
        }
        if self.delete && self.max_delete > 0 && self.delete_count > self.max_delete {
            // Nothing is deleted: the session ends with the reason.
            self.state = RState::Done;
            self.out.push_back(Action::Fail {
                reason: format!(
                    "--max-delete {}: this push would delete {} entries; nothing was deleted",
                    self.max_delete, self.delete_count
                ),
            });
            return;
        }
        if self.delete {
            self.deletes.sort();
            for path in std::mem::take(&mut self.deletes) {
                self.totals.removed += 1;
                self.out.push_back(Action::Remove { path });
            }
        }
        // Deepest first, so that a parent's mtime is set after its children are final.
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by(|a, b| b.0.cmp(&a.0));
        let changed = dirs.iter().map(|d| d.0.clone()).collect();
        for (path, mode, meta) in dirs {
            self.out.push_back(Action::SetDirMeta { path, mode, meta });
        }
        self.out.push_back(Action::Rescan {
            dirs: changed,
            entries: std::mem::take(&mut self.touched),
            full: self.verify_dest,
        });
    }

    /// The rescan after applying found this root.
    pub fn rescanned(&mut self, root: Hash) {
        if self.state == RState::Rescanning {
            self.state = RState::Done;
            self.out.push_back(Action::Send(Frame::Done {
                root,
                totals: self.totals,
            }));
        }
    }

    /// What was done so far.
    pub fn totals(&self) -> Totals {
        self.totals
    }
}

#[cfg(test)]
mod tests;
