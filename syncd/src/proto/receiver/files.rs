//! Files being assembled: which chunks are present, copied locally, asked for whole or as
//! deltas, written, finished; and the end of the session once nothing is outstanding.

use super::*;

/// The chunk of `old` that covers byte `at`, as a delta base: (id, offset, length). Bases
/// smaller than a delta block have nothing to match.
pub(super) fn base_at(old: Option<&FileNode>, at: u64) -> Option<(ChunkId, u64, u32)> {
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

impl Receiver {
    /// Forgets file `key` (restarted or vanished), releasing its slot if it had one. The
    /// hard links waiting for it wait for its next offer if it is `restarted`; the links of
    /// a vanished file are not made (the push then ends with different roots).
    pub(super) fn drop_file(&mut self, key: FileKey, restarted: bool) {
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

    /// The base `base` for a delta of chunk `id` was read and kept: ask for the delta against
    /// its signature `sig`.
    pub fn base_read(&mut self, id: ChunkId, base: ChunkId, sig: crate::proto::delta::Signature) {
        self.out
            .push_back(Action::Send(Frame::WantDelta { id, base, sig }));
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

    pub(super) fn maybe_finish(&mut self, key: FileKey) {
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

    pub(super) fn check_complete(&mut self) {
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
            self.out.push_back(Action::Finish(Frame::Done {
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
