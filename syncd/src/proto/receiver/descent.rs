//! The descent: a `Nodes` answer compared entry by entry with the receiver's manifest,
//! deciding what to ask for next, what to create, update, link or remove, and how each
//! change is classified for a dry run or `--itemize-changes`.

use super::*;

/// True if `e`, a child the sender lists, is in `old` (the receiver's sorted children) with
/// the same kind and (short) hash: nothing to fetch below it.
pub(super) fn unchanged(old: &[crate::manifest::Entry], e: &Listed) -> bool {
    old.binary_search_by(|o| o.name.as_slice().cmp(&e.name))
        .is_ok_and(|i| e.is(&old[i]))
}

/// What a push changes at a path where the receiver has `mine` and the sender offers
/// `theirs` (`retyped`: of another kind): the marker, as [`crate::manifest::change_of`]
/// decides it for `syncd diff`, and for a metadata-only change which attributes
/// ([`codec::attr`] bits). `None` if nothing changes there (a directory whose children may
/// still differ).
pub fn classify(mine: Option<&Node>, theirs: &Offered, retyped: bool) -> Option<(ChangeKind, u8)> {
    let Some(m) = mine else {
        return Some((ChangeKind::Added, 0));
    };
    if retyped {
        return Some((ChangeKind::TypeChanged, 0));
    }
    if theirs.matches(m) {
        return None;
    }
    let kind = crate::manifest::change_of(crate::manifest::Shape::of(m), shape(theirs))?;
    let bits = match kind {
        ChangeKind::Metadata => metadata_bits(m, theirs),
        _ => 0,
    };
    Some((kind, bits))
}

/// [`crate::manifest::Shape`] of an offered node.
fn shape(o: &Offered) -> crate::manifest::Shape<'_> {
    use crate::manifest::Shape;
    match o {
        Offered::Dir { mode, attrs, .. } => Shape::Dir(*mode, attrs.as_ref()),
        Offered::File(f) => Shape::File(&f.chunks),
        Offered::Symlink { target, .. } => Shape::Symlink(target),
    }
}

/// Which attributes ([`codec::attr`] bits) differ between `mine` and `theirs`, two nodes of
/// one kind with the same content.
fn metadata_bits(mine: &Node, theirs: &Offered) -> u8 {
    use codec::attr;
    let bit = |differs: bool, b: u8| if differs { b } else { 0 };
    match (mine, theirs) {
        (
            Node::Dir { mode, attrs, .. },
            Offered::Dir {
                mode: m, attrs: a, ..
            },
        ) => bit(m != mode, attr::MODE) | bit(a != attrs, attr::OWNER_XATTRS),
        (Node::File(a), Offered::File(b)) => {
            bit(a.mode != b.mode, attr::MODE)
                | bit(a.mtime_ns != b.mtime_ns, attr::MTIME)
                | bit(a.attrs != b.attrs, attr::OWNER_XATTRS)
                | bit(a.link != b.link, attr::LINK)
        }
        _ => attr::OWNER_XATTRS,
    }
}

/// How many entries removing the entry of `kind` at `path` removes: 1, or for a directory
/// 1 plus everything below it in the receiver's manifest `local`.
pub(super) fn entries_below<N: Nodes>(local: &N, path: &[u8], kind: crate::manifest::Kind) -> u64 {
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

impl Receiver {
    pub(super) fn node<N: Nodes>(
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
                    for (p, _) in self.vanished(&path, old, entries) {
                        self.report.push((b'-', 0, p));
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
                    for (p, o) in self.vanished(&path, old, &entries) {
                        self.delete_count += entries_below(local, &p, o.kind);
                        if self.itemize {
                            self.report.push((b'-', 0, p.clone()));
                        }
                        self.deletes.push(p);
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

    /// The children of `path` in `old` (the receiver's listing) that `entries` (the
    /// sender's) lack and that are not unsettled: what `--delete` removes, with their paths.
    fn vanished<'a>(
        &self,
        path: &[u8],
        old: &'a [crate::manifest::Entry],
        entries: &[Listed],
    ) -> Vec<(Vec<u8>, &'a crate::manifest::Entry)> {
        old.iter()
            .filter_map(|o| {
                let p = join(path, &o.name);
                let gone = entries
                    .binary_search_by(|e| e.name.as_slice().cmp(&o.name))
                    .is_err();
                (gone && !self.is_unsettled(&p)).then_some((p, o))
            })
            .collect()
    }
}
