//! The bottom-up pass of a refresh: a leaf (file, symlink, kept record) per walked entry,
//! computed in parallel batches, then directory nodes rebuilt from their children and only
//! changed records written.

use super::*;

pub(super) struct OpenDir {
    pub(super) path: Vec<u8>,
    pub(super) mode: u32,
    pub(super) entries: Vec<Entry>,
    pub(super) attrs: Option<Hash>,
}

pub(super) struct TreeBuild<'a> {
    pub(super) snap: &'a Snapshot,
    pub(super) puts: Vec<(Vec<u8>, Vec<u8>)>,
    pub(super) deletes: Vec<Vec<u8>>,
    pub(super) summary: Summary,
}

impl TreeBuild<'_> {
    /// Pops the innermost open directory, records it, and adds it to its parent.
    pub(super) fn close_dir(&mut self, stack: &mut Vec<OpenDir>) -> Result<Hash, StoreError> {
        let Some(dir) = stack.pop() else {
            return Ok(Hash([0; 32]));
        };
        self.summary.dirs += 1;
        let node = Node::Dir {
            mode: dir.mode,
            entries: dir.entries,
            attrs: dir.attrs,
        };
        let hash = node.hash();
        // The header is enough to see that nothing changed (the common case); decode the
        // old node only when it did, to find children that vanished.
        let unchanged = self.snap.header(&dir.path)?.map(|(h, _)| h) == Some(hash);
        if !unchanged {
            let old = self.snap.record(&dir.path)?;
            // Children that vanished (or stopped being directories) leave with their subtree.
            if let Some(Record {
                node: Node::Dir { entries: old, .. },
                ..
            }) = &old
                && let Node::Dir { entries: new, .. } = &node
            {
                for e in old {
                    let still = new
                        .binary_search_by(|n| n.name.as_slice().cmp(&e.name))
                        .ok()
                        .map(|i| new[i].kind);
                    if still != Some(e.kind) {
                        self.deletes.push(join(&dir.path, &e.name));
                    }
                }
            }
            let rec = Record {
                hash,
                stat: Stat::default(),
                node,
            };
            self.puts.push((dir.path.clone(), rec.encode()));
        }
        if let Some(parent) = stack.last_mut() {
            let name = file_name(&dir.path).to_vec();
            parent.entries.push(Entry {
                name,
                kind: Kind::Dir,
                hash,
            });
        }
        Ok(hash)
    }

    pub(super) fn put_if_changed(&mut self, path: &[u8], rec: &Record) -> Result<(), StoreError> {
        if self.snap.header(path)? != Some((rec.hash, rec.stat)) {
            self.puts.push((path.to_vec(), rec.encode()));
        }
        Ok(())
    }
}

pub(super) enum Leaf {
    /// A directory to walk into: its attributes, and why they may be incomplete.
    Dir {
        attrs: Option<Hash>,
        warning: Option<Warning>,
    },
    /// A directory not walked into ([`ScanOptions::changed_only`]): its stored hash.
    KeptDir(Option<Hash>),
    /// A file or symlink whose stored record still holds: its stat matched, or it was
    /// not looked at ([`ScanOptions::changed_only`]).
    Reused {
        kind: Kind,
        hash: Hash,
        size: u64,
    },
    New(Record),
    Skipped(Warning),
}

/// The stored hash of `path` from its parent's stored listing, if it is there as `kind`.
pub(super) fn listed(
    listings: &HashMap<Vec<u8>, Vec<Entry>>,
    path: &[u8],
    kind: Kind,
) -> Option<Hash> {
    let name = file_name(path);
    let entries = listings.get(parent(path))?;
    let i = entries
        .binary_search_by(|e| e.name.as_slice().cmp(name))
        .ok()?;
    (entries[i].kind == kind).then_some(entries[i].hash)
}

/// What every leaf of one scan shares: when it started, and how many re-reads it made.
pub(super) struct Pass {
    /// The wall clock at the start, in nanoseconds since the epoch.
    pub(super) start_ns: i64,
    /// [`Summary::rereads`], counted from the parallel reads.
    pub(super) rereads: AtomicU64,
}

/// The leaf of walked entry `w`; `link` is its [`FileNode::link`].
pub(super) fn leaf(
    root: &Path,
    w: &Walked,
    link: Option<&[u8]>,
    snap: &Snapshot,
    listings: &HashMap<Vec<u8>, Vec<Entry>>,
    opts: &ScanOptions,
    pass: &Pass,
) -> Result<Leaf, StoreError> {
    if w.kept
        && let Some(hash) = listed(listings, &w.path, w.kind)
    {
        return Ok(match w.kind {
            Kind::Dir => Leaf::KeptDir(Some(hash)),
            kind => Leaf::Reused {
                kind,
                hash,
                size: 0,
            },
        });
    }
    let abs = root.join(OsStr::from_bytes(&w.path));
    let skipped = |e: std::io::Error| {
        Leaf::Skipped(Warning {
            path: abs.clone(),
            message: e.to_string(),
            skipped_special: false,
        })
    };
    Ok(match w.kind {
        Kind::Dir if w.kept => Leaf::KeptDir(snap.header(&w.path)?.map(|(hash, _)| hash)),
        Kind::File | Kind::Symlink if w.kept => match snap.header(&w.path)? {
            Some((hash, stat)) => Leaf::Reused {
                kind: w.kind,
                hash,
                size: stat.size,
            },
            // New to the store (not written by the receiver): look at it as usual.
            None => match std::fs::symlink_metadata(&abs) {
                Ok(m) => {
                    let fresh = Walked {
                        path: w.path.clone(),
                        kind: w.kind,
                        mode: m.mode() & 0o7777,
                        stat: stat_of(&m),
                        owner: (m.uid(), m.gid()),
                        dev: m.dev(),
                        nlink: m.nlink(),
                        kept: false,
                    };
                    return leaf(root, &fresh, None, snap, listings, opts, pass);
                }
                Err(e) => skipped(e),
            },
        },
        Kind::Dir => match dir_attrs(&abs, w.owner, opts.owners) {
            Ok(attrs) => Leaf::Dir {
                attrs,
                warning: None,
            },
            // Still walked into (its entries are in the batch); its digest then differs
            // from the source's, so a push fails its final check rather than pass.
            Err(e) => Leaf::Dir {
                attrs: attrs_hash(opts.owners.then_some(w.owner), &[]),
                warning: Some(Warning {
                    path: abs.clone(),
                    message: format!("cannot read extended attributes: {e}"),
                    skipped_special: false,
                }),
            },
        },
        Kind::Symlink => match std::fs::read_link(&abs) {
            Ok(t) => {
                let node = Node::Symlink {
                    target: t.as_os_str().as_bytes().to_vec(),
                    attrs: attrs_hash(opts.owners.then_some(w.owner), &[]),
                };
                Leaf::New(Record {
                    hash: node.hash(),
                    stat: Stat::default(),
                    node,
                })
            }
            Err(e) => skipped(e),
        },
        Kind::File => {
            if let Some(rec) = opts.known.as_ref().and_then(|k| k.get(&w.path))
                && rec.stat == w.stat
                && w.nlink < 2
            {
                return Ok(Leaf::New(rec.clone()));
            }
            if let Some((hash, stat)) = snap.header(&w.path)?
                && stat == w.stat
            {
                // A file with other links: its stat does not say whether the first path
                // of its inode changed, so compare the stored link. (A file that lost its
                // other links has a new ctime, and is read again.)
                if w.nlink < 2 {
                    return Ok(Leaf::Reused {
                        kind: Kind::File,
                        hash,
                        size: stat.size,
                    });
                }
                if let Some(Record {
                    node: Node::File(mut f),
                    ..
                }) = snap.record(&w.path)?
                {
                    if f.link.as_deref() == link {
                        return Ok(Leaf::Reused {
                            kind: Kind::File,
                            hash,
                            size: stat.size,
                        });
                    }
                    f.link = link.map(<[u8]>::to_vec);
                    let node = Node::File(f);
                    return Ok(Leaf::New(Record {
                        hash: node.hash(),
                        stat,
                        node,
                    }));
                }
            }
            let expect = Some((w.dev, w.stat.ino));
            // A later path of a linked inode is linked, not written.
            let give = match (&opts.sink, link) {
                (Some(ReadSink(sink)), None) => Some((&**sink, w.path.as_slice())),
                _ => None,
            };
            match read::read_file_to(&abs, expect, opts.params, opts.owners, &pass.rereads, give) {
                Ok((mut node, mut stat)) => {
                    if stat.mtime_ns + RACY_NS >= pass.start_ns {
                        stat.mtime_ns = i64::MIN; // never matches: re-read next time
                    }
                    node.link = link.map(<[u8]>::to_vec);
                    let node = Node::File(node);
                    Leaf::New(Record {
                        hash: node.hash(),
                        stat,
                        node,
                    })
                }
                Err(e) => skipped(e),
            }
        }
    })
}

/// The wall clock in nanoseconds since the epoch (0 if it is before it).
pub(super) fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The attributes digest ([`attrs_hash`]) of the directory at `path`, owned by `owner`.
pub(super) fn dir_attrs(
    path: &Path,
    owner: (u32, u32),
    owners: bool,
) -> std::io::Result<Option<Hash>> {
    Ok(attrs_hash(owners.then_some(owner), &read_xattrs(path)?))
}
