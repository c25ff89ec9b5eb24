//! The receiver's session state machine: the merkle descent against its own manifest
//! ([`descent`]), the files it assembles ([`files`]), and the actions it polls for the
//! driver to carry out on the tree.

use super::*;

mod descent;
mod files;

pub use descent::classify;

/// What the receiver's driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this frame on the control stream.
    Send(Frame),
    /// The session is over: close the manifest store (a `syncd diff` run as soon as the
    /// sender exits must be able to open it), then send this last frame (`Done`).
    Finish(Frame),
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
    /// replaced), check it, keep it for the delta, and call [`Receiver::base_read`] with its
    /// signature, which asks for chunk `id` as a delta against it ([`Frame::WantDelta`]). If
    /// it cannot be read or does not match, call [`Receiver::base_failed`].
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
    /// The free space the driver measured on the tree's filesystem, for the `HelloAck`.
    free: Option<u64>,
    /// This receiver can set owners (it runs as root): a `Hello` with `owners` is refused
    /// otherwise.
    can_own: bool,
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

/// A hard link to make: (new path, existing path).
type LinkTo = (Vec<u8>, Vec<u8>);

/// At most this many part files are open at once on the receiver.
pub const MAX_OPEN_FILES: usize = 256;

impl Default for Receiver {
    fn default() -> Self {
        Self::new()
    }
}

/// The scan of its tree a receiver needs before it answers a `Hello`: `Some(owners)` when the
/// tree must be scanned again, in that mode (the sender compares in the other mode, or sent
/// filter rules, `filtered`); `None` when the scan it has stands, or when the `Hello` will
/// be refused anyway (owners asked of a receiver that cannot set them).
pub fn rescan_for(
    hello_owners: bool,
    scanned_owners: bool,
    filtered: bool,
    can_own: bool,
) -> Option<bool> {
    if hello_owners && !can_own {
        return None;
    }
    (hello_owners != scanned_owners || filtered).then_some(hello_owners)
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
            free: None,
            can_own: false,
        }
    }

    /// Says whether this receiver can set owners, groups and xattrs (it runs as root): only
    /// then does it accept a `Hello` with `owners` (the default is that it cannot).
    pub fn with_can_own(mut self, can_own: bool) -> Receiver {
        self.can_own = can_own;
        self
    }

    /// Says `free` bytes are available on the tree's filesystem, in the `HelloAck` (what
    /// `cutover preflight` compares with the tree's size).
    pub fn with_free_bytes(mut self, free: Option<u64>) -> Receiver {
        self.free = free;
        self
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
                    owners,
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
                if owners && !self.can_own {
                    self.out.push_back(Action::Send(Frame::Refuse {
                        reason: ProtoError::CannotOwn.to_string(),
                    }));
                    return Err(ProtoError::CannotOwn);
                }
                self.delete = delete;
                self.dry_run = dry_run;
                self.out.push_back(Action::Send(Frame::HelloAck {
                    version: VERSION,
                    root,
                    free: self.free,
                }));
                self.state = RState::Descending;
                if theirs == root {
                    self.state = RState::Done;
                    self.out.push_back(Action::Finish(Frame::Done {
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
}
