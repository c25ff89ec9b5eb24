//! The sender's session state machine: answers the receiver's requests for nodes and
//! chunks from its manifest, and reports what the receiver did.

use super::*;

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
    /// The file at `path` kept changing (or could not be read again): it is not sent, and
    /// the receiver keeps its copy.
    GaveUp {
        /// The relative path.
        path: Vec<u8>,
        /// Why, for humans.
        reason: String,
    },
    /// The receiver finished: its root and totals.
    Finished {
        /// The receiver's root after the push.
        root: Hash,
        /// What it did.
        totals: Totals,
    },
}

/// How many times a source file whose chunks keep moving under the reads is read again
/// before the push gives up on it.
pub const MAX_REREADS: u32 = 5;

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
    /// What the receiver's `HelloAck` said of its free space.
    receiver_free: Option<u64>,
    /// Per source path one of whose chunks was not where it was offered: the hash of the
    /// node last offered for it, and how many times it was read again.
    rereads: HashMap<Vec<u8>, (Option<Hash>, u32)>,
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
            receiver_free: None,
            rereads: HashMap::new(),
        }
    }

    /// Whether the file at `path`, one of whose chunks was not where it was offered, is to
    /// be read again ([`Sender::reread`]): until it has been given up on, and never for a
    /// later path of a hard-linked inode (its scanned node has a `link`): its content is the
    /// first path's, which is read again itself, and the receiver makes it a link to that
    /// path. (Offering it anew raced the receiver, which could have finished already.)
    pub fn wants_reread<N: Nodes>(&mut self, path: &[u8], nodes: &N) -> bool {
        let scanned = nodes.node(path).ok().flatten();
        if let Some(Node::File(FileNode { link: Some(_), .. })) = &scanned {
            return false;
        }
        let (_, tries) = self
            .rereads
            .entry(path.to_vec())
            .or_insert_with(|| (scanned.map(|n| n.hash()), 0));
        *tries <= MAX_REREADS
    }

    /// What reading the file at `path` again found (`Err`: why it could not be), after the
    /// read of its chunk `id` failed ([`Sender::wants_reread`] said to). As last offered:
    /// chunk `id` is read at its place in it (a read that met the file between two changes
    /// counts as a try). Changed: offered anew. After [`MAX_REREADS`] tries, or when it
    /// cannot be read: given up on ([`SenderEvent::GaveUp`]), and dropped from the session
    /// so that the receiver keeps its copy.
    pub fn reread(
        &mut self,
        path: Vec<u8>,
        id: ChunkId,
        against: Option<delta::Signature>,
        found: Result<(FileNode, Meta), String>,
    ) {
        let (mut offered, mut tries) = self.rereads.get(&path).copied().unwrap_or((None, 0));
        let give_up = match found {
            Ok((node, meta)) => {
                let hash = Node::File(node.clone()).hash();
                if offered == Some(hash) {
                    if node.chunks.iter().any(|c| c.id == id) {
                        tries += 1;
                    }
                    self.retry(&path, &node, id, against);
                } else {
                    tries += 1;
                    offered = Some(hash);
                    self.source_changed(path.clone(), Some((node, meta)));
                }
                (tries > MAX_REREADS).then(|| {
                    format!("changed each of the {MAX_REREADS} times it was read during the push")
                })
            }
            Err(why) => Some(why),
        };
        if let Some(why) = give_up {
            tries = MAX_REREADS + 1;
            self.out.push_back(SenderEvent::GaveUp {
                path: path.clone(),
                reason: format!("{why}; not sent, the receiver keeps its copy"),
            });
            self.source_changed(path.clone(), None);
        }
        self.rereads.insert(path, (offered, tries));
    }

    /// The bytes available on the receiver's filesystem, as its `HelloAck` said (`None`
    /// before it, or when the receiver could not tell).
    pub fn receiver_free_bytes(&self) -> Option<u64> {
        self.receiver_free
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
        for paths in codec::batched(paths, |p| p.len() + 4) {
            self.out
                .push_back(SenderEvent::Send(Frame::Unsettled { paths }));
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
            Frame::HelloAck { version, free, .. } => {
                if version != VERSION {
                    return Err(ProtoError::Version { theirs: version });
                }
                self.acked = true;
                self.receiver_free = free;
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
