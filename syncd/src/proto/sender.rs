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
    /// What the receiver's `HelloAck` said of its free space.
    receiver_free: Option<u64>,
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
        }
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
