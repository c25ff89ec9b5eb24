//! Scanning a directory tree into its manifest: parallel walk, stat, chunk only what changed.
//!
//! [`refresh`] is the IO driver around the sans-IO [`crate::chunk`] and [`crate::manifest`]
//! cores:
//! 1. a parallel walk with the `ignore` crate. Nothing is filtered by default (a migration
//!    must copy everything, dotfiles and ignored files included); `--exclude` globs and
//!    `.gitignore` rules apply only when asked;
//! 2. a parallel stat-cache check against the stored manifest: a file whose size, mtime,
//!    ctime and inode are unchanged is not read again;
//! 3. parallel chunking of new and changed files (large files are also cut in parallel);
//! 4. one pass that rebuilds directory nodes bottom-up and commits only the records that
//!    changed, in one transaction.
//!
//! Special files (sockets, fifos, devices) are reported and skipped. Unreadable entries are
//! reported with their path and the scan goes on; the caller decides what that means.
//! A file that changes while it is read is read again, and reported if it keeps changing:
//! it is never recorded torn.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use ignore::{DirEntry, ParallelVisitor, ParallelVisitorBuilder, WalkBuilder, WalkState};
use rayon::prelude::*;

use crate::chunk::{self, ChunkParams};
use crate::fsmeta::{file_xattrs, read_xattrs, stat_of};
use crate::manifest::store::{Record, Snapshot, Stat, Store, StoreError};
use crate::manifest::{
    ChunkRef, Entry, FileNode, Hash, Kind, Node, attrs_hash, component_order, file_name, join,
    parent,
};

/// Files up to this size are read whole; larger ones are streamed in windows.
const WHOLE_FILE: u64 = 16 << 20;
/// Window size for streaming large files.
const WINDOW: usize = 32 << 20;
/// Entries whose leaves are computed together (see [`refresh`]).
const LEAF_BATCH: usize = 32 * 1024;
/// How often a file that changes while being read is retried.
const READ_RETRIES: usize = 3;
/// Files modified this recently are not trusted to the stat cache (timestamps are coarse:
/// a write in the same tick after our read would otherwise go unnoticed).
const RACY_NS: i64 = 100_000_000;

/// Errors that stop a scan. Per-entry problems are [`Warning`]s instead.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The tree root cannot be used.
    #[error("{}: {source}", path.display())]
    Root {
        /// The root as given.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The root is not a directory.
    #[error("{}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    /// A glob given with `--exclude` is invalid.
    #[error("invalid --exclude pattern {pattern:?}: {message}")]
    BadExclude {
        /// The pattern.
        pattern: String,
        /// The parser's complaint.
        message: String,
    },
    /// The manifest store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A directory outside [`Changed::dirs`] has no stored record to keep.
    #[error("{}: not in the stored manifest, so it cannot be kept without a walk", .0.display())]
    NotStored(PathBuf),
}

/// Something about one entry that the scan reported and went past.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// The entry.
    pub path: PathBuf,
    /// What happened.
    pub message: String,
    /// True for skipped special files (expected), false for errors (unreadable entries).
    pub skipped_special: bool,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.message)
    }
}

/// Options of a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Include/exclude rules ([`crate::filter`]): excluded entries are left out, and
    /// directories among them are not walked into.
    pub filter: crate::filter::Filter,
    /// Honour `.gitignore`, `.ignore` and `.git/info/exclude` files.
    pub gitignore: bool,
    /// Chunk sizes.
    pub params: ChunkParams,
    /// A path to leave out whatever the filters say (the state directory, when it lies
    /// inside the tree).
    pub exclude_path: Option<PathBuf>,
    /// Leave out the part files this key made ([`crate::partname`]): the in-progress files
    /// of a push destination are not part of its tree. They are listed in
    /// [`Summary::parts`] instead.
    pub parts: Option<crate::partname::PartKey>,
    /// Look only at what changed: for a receiver that knows what it wrote into its tree
    /// since the last refresh, and that no one else writes to it. See [`Changed`].
    pub changed_only: Option<Arc<Changed>>,
    /// Cover owner and group, and every xattr but `security.*` labels, in node hashes
    /// (the default when running as root); otherwise only `user.*` xattrs are covered. See
    /// [`crate::manifest::attrs_hash`]. A store holds the manifest of one mode.
    pub owners: bool,
}

/// What a receiver changed in its tree since its manifest was last refreshed
/// ([`ScanOptions::changed_only`]). The root and the `dirs` are listed and stat'ed, and the
/// `entries` in them are stat'ed (and read if their stat is not the stored one). Everything
/// else keeps its stored hash without a system call: a directory not in `dirs` is not
/// walked at all, a file or symlink in a listed directory is taken as its stored record
/// (its kind from the listing). A directory without a stored record fails the refresh
/// ([`ScanError::NotStored`]); a file or symlink without one is looked at as usual. The
/// summary's counts cover only what was listed, and its bytes only files that were
/// stat'ed (the root hash covers everything).
#[derive(Debug, Clone, Default)]
pub struct Changed {
    /// Directories whose listing may have changed.
    pub dirs: HashSet<Vec<u8>>,
    /// Files, symlinks and hard links written, or whose metadata was set.
    pub entries: HashSet<Vec<u8>>,
}

/// What a refresh found.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Canonical root path.
    pub root_path: PathBuf,
    /// The root hash.
    pub root: Hash,
    /// Regular files in the manifest.
    pub files: u64,
    /// Their total size.
    pub bytes: u64,
    /// Directories (the root included).
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Files that were (re-)read and chunked.
    pub hashed_files: u64,
    /// Bytes that were read and chunked.
    pub hashed_bytes: u64,
    /// Records written to the store.
    pub written: u64,
    /// Entries reported and skipped.
    pub warnings: Vec<Warning>,
    /// Part files found and left out ([`ScanOptions::parts`]), relative to the root.
    pub parts: Vec<Vec<u8>>,
}

impl Summary {
    /// Warnings that are errors (unreadable entries), not skipped special files.
    pub fn errors(&self) -> impl Iterator<Item = &Warning> {
        self.warnings.iter().filter(|w| !w.skipped_special)
    }
}

/// One walked entry.
#[derive(Debug)]
struct Walked {
    path: Vec<u8>,
    kind: Kind,
    mode: u32,
    stat: Stat,
    /// Owner and group.
    owner: (u32, u32),
    /// Device and link count (0 when kept): hard links are files with the same
    /// `(dev, stat.ino)`.
    dev: u64,
    nlink: u64,
    /// Taken as stored, not looked at ([`ScanOptions::changed_only`]).
    kept: bool,
}

/// Canonicalises and checks a tree root.
pub fn canonical_root(root: &Path) -> Result<PathBuf, ScanError> {
    let canon = std::fs::canonicalize(root).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let meta = std::fs::metadata(&canon).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ScanError::NotADirectory(root.to_path_buf()));
    }
    Ok(canon)
}

/// Builds or refreshes the manifest of `root` in `store`.
pub fn refresh(root: &Path, store: &Store, opts: &ScanOptions) -> Result<Summary, ScanError> {
    let root = canonical_root(root)?;
    let scan_start_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let (mut walked, mut warnings, root_meta, mut found_parts) = walk(&root, opts)?;
    walked.par_sort_unstable_by(|a, b| component_order(&a.path, &b.path));
    if opts.changed_only.is_some()
        && walked
            .iter()
            .any(|w| !w.kept && w.kind == Kind::File && w.nlink > 1)
    {
        // A hard link's node names the first path of its inode, which may be an entry
        // this rescan would not look at: walk everything (the stat cache still spares
        // the reads).
        let full = ScanOptions {
            changed_only: None,
            ..opts.clone()
        };
        return refresh(&root, store, &full);
    }
    let links = hard_links(&walked);

    let snap = store.snapshot()?;
    // With `changed_only`, untouched entries of a listed directory take their hash from
    // that directory's stored listing: one record per directory, not one per entry.
    let mut listings = HashMap::new();
    if let Some(changed) = &opts.changed_only {
        for dir in changed.dirs.iter().chain(std::iter::once(&Vec::new())) {
            if let Some(Record {
                node: Node::Dir { entries, .. },
                ..
            }) = snap.record(dir)?
            {
                listings.insert(dir.clone(), entries);
            }
        }
    }
    let mut b = TreeBuild {
        snap: &snap,
        puts: Vec::new(),
        deletes: Vec::new(),
        summary: Summary {
            root_path: root.clone(),
            root: Hash([0; 32]),
            files: 0,
            bytes: 0,
            dirs: 0,
            symlinks: 0,
            hashed_files: 0,
            hashed_bytes: 0,
            written: 0,
            warnings: Vec::new(),
            parts: Vec::new(),
        },
    };
    let root_attrs =
        dir_attrs(&root, (root_meta.uid(), root_meta.gid()), opts.owners).map_err(|source| {
            ScanError::Root {
                path: root.clone(),
                source,
            }
        })?;
    let mut stack: Vec<OpenDir> = vec![OpenDir {
        path: Vec::new(),
        mode: root_meta.mode() & 0o7777,
        entries: Vec::new(),
        attrs: root_attrs,
    }];
    // Leaves (reuse the stored hash when the stat matches, otherwise read) are computed in
    // parallel one batch at a time, so that a million-file tree never holds a million of
    // them at once.
    let mut batch_leaves: Vec<Leaf> = Vec::new();
    for (i, w) in walked.iter().enumerate() {
        if i % LEAF_BATCH == 0 {
            let end = (i + LEAF_BATCH).min(walked.len());
            batch_leaves = walked[i..end]
                .par_iter()
                .enumerate()
                .map(|(k, w)| {
                    let link = links.get(&(i + k)).map(Vec::as_slice);
                    leaf(&root, w, link, &snap, &listings, opts, scan_start_ns)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            batch_leaves.reverse(); // popped from the end, in order
        }
        let Some(leaf) = batch_leaves.pop() else {
            break;
        };
        while !is_inside(&w.path, &stack[stack.len() - 1].path) {
            b.close_dir(&mut stack)?;
        }
        let name = file_name(&w.path).to_vec();
        let entry = match leaf {
            Leaf::KeptDir(Some(hash)) => Entry {
                name,
                kind: Kind::Dir,
                hash,
            },
            Leaf::KeptDir(None) => {
                return Err(ScanError::NotStored(root.join(OsStr::from_bytes(&w.path))));
            }
            Leaf::Dir { attrs, warning } => {
                warnings.extend(warning);
                stack.push(OpenDir {
                    path: w.path.clone(),
                    mode: w.mode,
                    entries: Vec::new(),
                    attrs,
                });
                continue;
            }
            Leaf::Skipped(warning) => {
                warnings.push(warning);
                continue;
            }
            Leaf::Reused { kind, hash, size } => {
                if kind == Kind::File {
                    b.summary.files += 1;
                    b.summary.bytes += size;
                } else {
                    b.summary.symlinks += 1;
                }
                Entry { name, kind, hash }
            }
            Leaf::New(record) => {
                let kind = record.node.kind();
                if let Node::File(f) = &record.node {
                    b.summary.files += 1;
                    b.summary.bytes += f.size;
                    b.summary.hashed_files += 1;
                    b.summary.hashed_bytes += f.size;
                } else {
                    b.summary.symlinks += 1;
                }
                let hash = record.hash;
                b.put_if_changed(&w.path, &record)?;
                Entry { name, kind, hash }
            }
        };
        let top = stack.len() - 1;
        stack[top].entries.push(entry);
    }
    while stack.len() > 1 {
        b.close_dir(&mut stack)?;
    }
    let root_hash = b.close_dir(&mut stack)?;
    let TreeBuild {
        puts,
        deletes,
        mut summary,
        ..
    } = b;
    drop(snap);
    if !puts.is_empty() || !deletes.is_empty() {
        store.commit(&puts, &deletes)?;
    }
    summary.written = puts.len() as u64;
    summary.root = root_hash;
    warnings.sort_by(|a, b| a.path.cmp(&b.path));
    summary.warnings = warnings;
    found_parts.sort();
    summary.parts = found_parts;
    Ok(summary)
}

/// For each walked file that shares its inode with an earlier walked file (`walked` is in
/// component order), the path of the first one: its [`FileNode::link`].
fn hard_links(walked: &[Walked]) -> HashMap<usize, Vec<u8>> {
    let mut first: HashMap<(u64, u64), usize> = HashMap::new();
    let mut links = HashMap::new();
    for (i, w) in walked.iter().enumerate() {
        if w.kind != Kind::File || w.nlink < 2 || w.kept {
            continue;
        }
        match first.entry((w.dev, w.stat.ino)) {
            std::collections::hash_map::Entry::Occupied(f) => {
                links.insert(i, walked[*f.get()].path.clone());
            }
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
            }
        }
    }
    links
}

fn is_inside(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/')
}

struct OpenDir {
    path: Vec<u8>,
    mode: u32,
    entries: Vec<Entry>,
    attrs: Option<Hash>,
}

struct TreeBuild<'a> {
    snap: &'a Snapshot,
    puts: Vec<(Vec<u8>, Vec<u8>)>,
    deletes: Vec<Vec<u8>>,
    summary: Summary,
}

impl TreeBuild<'_> {
    /// Pops the innermost open directory, records it, and adds it to its parent.
    fn close_dir(&mut self, stack: &mut Vec<OpenDir>) -> Result<Hash, StoreError> {
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

    fn put_if_changed(&mut self, path: &[u8], rec: &Record) -> Result<(), StoreError> {
        if self.snap.header(path)? != Some((rec.hash, rec.stat)) {
            self.puts.push((path.to_vec(), rec.encode()));
        }
        Ok(())
    }
}

enum Leaf {
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
fn listed(listings: &HashMap<Vec<u8>, Vec<Entry>>, path: &[u8], kind: Kind) -> Option<Hash> {
    let name = file_name(path);
    let entries = listings.get(parent(path))?;
    let i = entries
        .binary_search_by(|e| e.name.as_slice().cmp(name))
        .ok()?;
    (entries[i].kind == kind).then_some(entries[i].hash)
}

/// The leaf of walked entry `w`; `link` is its [`FileNode::link`].
fn leaf(
    root: &Path,
    w: &Walked,
    link: Option<&[u8]>,
    snap: &Snapshot,
    listings: &HashMap<Vec<u8>, Vec<Entry>>,
    opts: &ScanOptions,
    scan_start_ns: i64,
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
                    return leaf(root, &fresh, None, snap, listings, opts, scan_start_ns);
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
            match read_file(&abs, Some((w.dev, w.stat.ino)), opts.params, opts.owners) {
                Ok((mut node, mut stat)) => {
                    if stat.mtime_ns + RACY_NS >= scan_start_ns {
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
fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// The attributes digest ([`attrs_hash`]) of the directory at `path`, owned by `owner`.
fn dir_attrs(path: &Path, owner: (u32, u32), owners: bool) -> std::io::Result<Option<Hash>> {
    Ok(attrs_hash(owners.then_some(owner), &read_xattrs(path)?))
}

/// Opens a source file for reading the way every source open must: never through a
/// symlink (`O_NOFOLLOW`: a link swapped in for a file is not followed out of the tree),
/// never blocking on a FIFO swapped in (`O_NONBLOCK`), and only if what was opened is a
/// regular file that is, when `expect` gives the walk's `(device, inode)`, the one the walk
/// saw. Anything else is an error, so the entry counts as changed.
pub fn open_source(
    path: &Path,
    expect: Option<(u64, u64)>,
) -> std::io::Result<(File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::ELOOP) {
                std::io::Error::other("replaced by a symlink while being read")
            } else {
                e
            }
        })?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(std::io::Error::other(
            "replaced by something that is not a regular file while being read",
        ));
    }
    if let Some((dev, ino)) = expect
        && (m.dev(), m.ino()) != (dev, ino)
    {
        return Err(std::io::Error::other(
            "replaced by another file while being read",
        ));
    }
    Ok((f, m))
}

/// Reads and chunks one file, with its attributes digest in mode `owners`
/// ([`ScanOptions::owners`]), checking with `fstat` before and after that it did not change
/// meanwhile. The file is opened with [`open_source`] (`expect` is the walk's device and
/// inode). Retries a few times, then fails with the path in the error.
pub fn read_file(
    path: &Path,
    expect: Option<(u64, u64)>,
    params: ChunkParams,
    owners: bool,
) -> std::io::Result<(FileNode, Stat)> {
    for _ in 0..READ_RETRIES {
        let (mut f, before) = open_source(path, expect)?;
        let chunks = read_chunks(&mut f, before.size(), params)?;
        let after = f.metadata()?;
        let (s0, s1) = (stat_of(&before), stat_of(&after));
        let read: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
        // Timestamps move in clock ticks (milliseconds), so a file written in place twice
        // within one tick while we read it keeps its stat: one modified that recently is
        // read a second time, and counts as consistent only if both reads agree.
        let racy = s1.mtime_ns + RACY_NS >= now_ns() || s1.ctime_ns + RACY_NS >= now_ns();
        let stable = !racy || {
            use std::io::Seek;
            f.rewind()?;
            read_chunks(&mut f, before.size(), params)? == chunks && stat_of(&f.metadata()?) == s1
        };
        if s0 == s1 && read == s0.size && stable {
            // The owner is the one the returned stat saw, and the xattrs are read after it:
            // a change after the stat moves the ctime, so the next scan looks again.
            let owner = (before.uid(), before.gid());
            return Ok((
                FileNode {
                    size: s0.size,
                    mode: before.mode() & 0o7777,
                    mtime_ns: s0.mtime_ns,
                    chunks,
                    link: None,
                    attrs: attrs_hash(owners.then_some(owner), &file_xattrs(&f)?),
                },
                s0,
            ));
        }
    }
    Err(std::io::Error::other(format!(
        "changed while being read ({READ_RETRIES} attempts); not recorded"
    )))
}

fn read_chunks(f: &mut File, size: u64, params: ChunkParams) -> std::io::Result<Vec<ChunkRef>> {
    let to_refs = |cs: Vec<chunk::Chunk>| {
        cs.into_iter().map(|c| ChunkRef {
            id: c.id,
            len: c.len,
        })
    };
    if size <= WHOLE_FILE {
        // One byte more than the stat said shows a file that grew. Through `take`, not
        // `File::read_to_end`, which asks the file for its size and position again (a
        // statx and an lseek per file that the caller's fstat already answered).
        let mut buf = Vec::with_capacity(size as usize + 1);
        f.take(size + 1).read_to_end(&mut buf)?;
        return Ok(to_refs(chunk::chunk(&buf, params)).collect());
    }
    let mut out = Vec::with_capacity((size / u64::from(params.avg())) as usize + 1);
    let mut buf = vec![0u8; WINDOW];
    let (mut filled, mut base, mut eof) = (0usize, 0u64, false);
    while !eof || filled > 0 {
        while !eof && filled < buf.len() {
            let n = f.read(&mut buf[filled..])?;
            if n == 0 {
                eof = true;
            }
            filled += n;
        }
        let (chunks, consumed) = chunk::chunk_window(&buf[..filled], base, eof, params);
        out.extend(to_refs(chunks));
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;
        base += consumed as u64;
        if eof && filled == 0 {
            break;
        }
    }
    Ok(out)
}

/// What a walk found: the entries, the warnings, the root's metadata, and the part files
/// it left out.
type WalkOut = (Vec<Walked>, Vec<Warning>, std::fs::Metadata, Vec<Vec<u8>>);

/// Walks the tree at `root`.
fn walk(root: &Path, opts: &ScanOptions) -> Result<WalkOut, ScanError> {
    let root_meta = std::fs::metadata(root).map_err(|source| ScanError::Root {
        path: root.to_path_buf(),
        source,
    })?;
    let mut builder = WalkBuilder::new(root);
    builder
        .standard_filters(false)
        .hidden(false)
        .follow_links(false)
        .threads(rayon::current_num_threads().max(2));
    if opts.gitignore {
        builder
            .git_ignore(true)
            .git_exclude(true)
            .ignore(true)
            .parents(false)
            .require_git(false);
    }
    if !opts.filter.is_empty() {
        let filter = opts.filter.clone();
        let root = root.to_path_buf();
        builder.filter_entry(move |e| {
            let Ok(rel) = e.path().strip_prefix(&root) else {
                return true;
            };
            let rel = rel.as_os_str().as_bytes();
            rel.is_empty() || !filter.excludes(rel, e.file_type().is_some_and(|t| t.is_dir()))
        });
    }
    let mut ov = ignore::overrides::OverrideBuilder::new(root);
    let mut any_override = false;
    if let Some(p) = &opts.exclude_path
        && let Ok(rel) = p.strip_prefix(root)
        && !rel.as_os_str().is_empty()
    {
        ov.add(&format!("!/{}", rel.display()))
            .map_err(|e| ScanError::BadExclude {
                pattern: rel.display().to_string(),
                message: e.to_string(),
            })?;
        any_override = true;
    }
    if any_override {
        let built = ov.build().map_err(|e| ScanError::BadExclude {
            pattern: "the state directory".into(),
            message: e.to_string(),
        })?;
        builder.overrides(built);
    }
    let shared = Arc::new(Mutex::new((Vec::new(), Vec::new(), Vec::new())));
    let mut vb = CollectorBuilder {
        root: root.to_path_buf(),
        shared: shared.clone(),
        parts: opts.parts.clone(),
        changed_only: opts.changed_only.clone(),
    };
    builder.build_parallel().visit(&mut vb);
    drop(vb);
    let (walked, warnings, parts) = match Arc::try_unwrap(shared) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(arc) => {
            let mut g = arc.lock().unwrap_or_else(|p| p.into_inner());
            (
                std::mem::take(&mut g.0),
                std::mem::take(&mut g.1),
                std::mem::take(&mut g.2),
            )
        }
    };
    Ok((walked, warnings, root_meta, parts))
}

type Shared = Arc<Mutex<(Vec<Walked>, Vec<Warning>, Vec<Vec<u8>>)>>;

struct CollectorBuilder {
    root: PathBuf,
    shared: Shared,
    parts: Option<crate::partname::PartKey>,
    changed_only: Option<Arc<Changed>>,
}

impl<'s> ParallelVisitorBuilder<'s> for CollectorBuilder {
    fn build(&mut self) -> Box<dyn ParallelVisitor + 's> {
        Box::new(Collector {
            root: self.root.clone(),
            shared: self.shared.clone(),
            parts: self.parts.clone(),
            changed_only: self.changed_only.clone(),
            walked: Vec::new(),
            warnings: Vec::new(),
            found_parts: Vec::new(),
        })
    }
}

struct Collector {
    root: PathBuf,
    shared: Shared,
    parts: Option<crate::partname::PartKey>,
    changed_only: Option<Arc<Changed>>,
    walked: Vec<Walked>,
    warnings: Vec<Warning>,
    found_parts: Vec<Vec<u8>>,
}

impl Collector {
    fn flush(&mut self) {
        let mut g = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        g.0.append(&mut self.walked);
        g.1.append(&mut self.warnings);
        g.2.append(&mut self.found_parts);
    }

    /// Collects one entry; says whether to walk into it (a directory).
    fn entry(&mut self, e: DirEntry) -> WalkState {
        if e.depth() == 0 {
            return WalkState::Continue; // the root itself
        }
        let Ok(rel) = e.path().strip_prefix(&self.root) else {
            return WalkState::Continue;
        };
        let path = rel.as_os_str().as_bytes();
        if let Some(key) = &self.parts
            && key.is_part(e.file_name().as_bytes())
        {
            self.found_parts.push(path.to_vec());
            return WalkState::Continue;
        }
        if let Some(changed) = &self.changed_only
            && !changed.dirs.contains(path)
            && !changed.entries.contains(path)
            && let Some(ft) = e.file_type()
        {
            // Untouched: its kind from the listing, its hash from the store.
            if let Some(kind) = kind_of(ft) {
                self.walked.push(Walked {
                    path: path.to_vec(),
                    kind,
                    mode: 0,
                    stat: Stat::default(),
                    owner: (0, 0),
                    dev: 0,
                    nlink: 0,
                    kept: true,
                });
                if self.walked.len() >= 8192 {
                    self.flush();
                }
                return if kind == Kind::Dir {
                    WalkState::Skip
                } else {
                    WalkState::Continue
                };
            }
        }
        let warn = |message: String, special: bool| Warning {
            path: e.path().to_path_buf(),
            message,
            skipped_special: special,
        };
        let meta = match e.metadata() {
            Ok(m) => m,
            Err(err) => {
                self.warnings.push(warn(io_message(&err), false));
                return WalkState::Continue;
            }
        };
        let ft = meta.file_type();
        let Some(kind) = kind_of(ft) else {
            let what = if ft.is_socket() {
                "socket"
            } else if ft.is_fifo() {
                "fifo"
            } else if ft.is_block_device() {
                "block device"
            } else if ft.is_char_device() {
                "character device"
            } else {
                "special file"
            };
            self.warnings.push(warn(format!("skipped {what}"), true));
            return WalkState::Continue;
        };
        self.walked.push(Walked {
            path: path.to_vec(),
            kind,
            mode: meta.mode() & 0o7777,
            stat: stat_of(&meta),
            owner: (meta.uid(), meta.gid()),
            dev: meta.dev(),
            nlink: meta.nlink(),
            kept: false,
        });
        if self.walked.len() >= 8192 {
            self.flush();
        }
        WalkState::Continue
    }
}

/// The manifest kind of a file type; `None` for sockets, fifos and devices.
fn kind_of(ft: std::fs::FileType) -> Option<Kind> {
    if ft.is_dir() {
        Some(Kind::Dir)
    } else if ft.is_file() {
        Some(Kind::File)
    } else if ft.is_symlink() {
        Some(Kind::Symlink)
    } else {
        None
    }
}

/// The innermost message of an `ignore` error, without the path it repeats.
fn io_message(e: &ignore::Error) -> String {
    match e.io_error() {
        Some(io) => io.to_string(),
        None => e.to_string(),
    }
}

fn error_path(e: &ignore::Error) -> Option<PathBuf> {
    match e {
        ignore::Error::WithPath { path, .. } => Some(path.clone()),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        _ => None,
    }
}

impl ParallelVisitor for Collector {
    fn visit(&mut self, entry: Result<DirEntry, ignore::Error>) -> WalkState {
        match entry {
            Ok(e) => return self.entry(e),
            Err(err) => {
                let path = error_path(&err).unwrap_or_else(|| self.root.clone());
                self.warnings.push(Warning {
                    path,
                    message: io_message(&err),
                    skipped_special: false,
                });
            }
        }
        WalkState::Continue
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.flush();
    }
}

/// One finding of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The entry.
    pub path: PathBuf,
    /// What is wrong.
    pub problem: Problem,
}

/// What [`verify`] can find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// Content differs while size and mtime are unchanged: bit-rot, or a write that
    /// restored the mtime afterwards (either way, the stat cache would not have noticed).
    BitRot,
    /// The file was modified since the manifest was built (its stat changed too).
    Modified,
    /// The entry is gone.
    Missing,
    /// It could not be read.
    Unreadable(String),
}

/// Re-hashes every file and symlink of the stored manifest from disk, ignoring the stat
/// cache, and reports those that differ. The store is not modified.
pub fn verify(
    root: &Path,
    snap: &Snapshot,
    params: ChunkParams,
) -> Result<Vec<Finding>, ScanError> {
    let root = canonical_root(root)?;
    let mut todo = Vec::new();
    snap.for_each(|k, rec| {
        if !matches!(rec.node, Node::Dir { .. }) {
            todo.push((k.to_vec(), rec));
        }
        Ok(())
    })?;
    let mut findings: Vec<Finding> = todo
        .par_iter()
        .filter_map(|(k, rec)| {
            let path = root.join(OsStr::from_bytes(k));
            let problem = match &rec.node {
                Node::Symlink { target, .. } => match std::fs::read_link(&path) {
                    Ok(t) if t.as_os_str().as_bytes() == target.as_slice() => None,
                    Ok(_) => Some(Problem::Modified),
                    Err(e) => Some(io_problem(e)),
                },
                Node::File(old) => match read_file(&path, None, params, false) {
                    Ok((new, stat)) => {
                        if new.chunks == old.chunks {
                            None
                        } else if stat.size == rec.stat.size && stat.mtime_ns == rec.stat.mtime_ns {
                            Some(Problem::BitRot)
                        } else {
                            Some(Problem::Modified)
                        }
                    }
                    Err(e) => Some(io_problem(e)),
                },
                Node::Dir { .. } => None,
            };
            problem.map(|problem| Finding { path, problem })
        })
        .collect();
    findings.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(findings)
}

fn io_problem(e: std::io::Error) -> Problem {
    if e.kind() == std::io::ErrorKind::NotFound {
        Problem::Missing
    } else {
        Problem::Unreadable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::store::Opened;
    use std::fs;

    fn store(home: &Path, root: &Path) -> Store {
        match Store::open(home, root, false).unwrap() {
            Opened::Rebuilt { store, .. } => store,
            other => other.into_store(),
        }
    }

    fn only(dirs: &[&str], entries: &[&str]) -> ScanOptions {
        let set = |v: &[&str]| v.iter().map(|d| d.as_bytes().to_vec()).collect();
        ScanOptions {
            changed_only: Some(Arc::new(Changed {
                dirs: set(dirs),
                entries: set(entries),
            })),
            ..ScanOptions::default()
        }
    }

    fn full_root_from_scratch(root: &Path) -> Hash {
        let home = tempfile::tempdir().unwrap();
        refresh(root, &store(home.path(), root), &ScanOptions::default())
            .unwrap()
            .root
    }

    #[test]
    fn changed_only_looks_at_what_changed_and_keeps_the_rest() {
        let (tree, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root = canonical_root(tree.path()).unwrap();
        for d in ["a/b", "c", "e"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        for (f, body) in [("a/x", "x"), ("a/b/y", "y"), ("c/z", "z"), ("top", "t")] {
            fs::write(root.join(f), body).unwrap();
        }
        std::os::unix::fs::symlink("x", root.join("a/l")).unwrap();
        let s = store(home.path(), &root);
        let before = refresh(&root, &s, &ScanOptions::default()).unwrap().root;

        // Changes named in `Changed` are found, and the root is exactly what a full walk
        // from scratch computes: a changed file, a new file, a new symlink, a removal.
        fs::write(root.join("a/b/y"), "changed").unwrap();
        fs::write(root.join("a/b/new"), "new").unwrap();
        std::os::unix::fs::symlink("y", root.join("a/b/l2")).unwrap();
        fs::remove_file(root.join("top")).unwrap();
        let partial = refresh(
            &root,
            &s,
            &only(&["a", "a/b"], &["a/b/y", "a/b/new", "a/b/l2"]),
        )
        .unwrap();
        assert_ne!(partial.root, before);
        assert_eq!(partial.root, full_root_from_scratch(&root));
        // Counts cover what was listed: c/z is inside a directory that was not walked.
        assert_eq!((partial.files, partial.symlinks), (3, 2));

        // A new file that is not named is still found (it is not in the store).
        fs::write(root.join("a/b/stranger"), "s").unwrap();
        let found = refresh(&root, &s, &only(&["a", "a/b"], &[])).unwrap();
        assert_eq!(found.root, full_root_from_scratch(&root));

        // A change that is not named is not seen: the stored hash is kept, in a directory
        // not walked (c) and in one walked but for an entry not named (a/x).
        fs::write(root.join("c/z"), "changed behind our back").unwrap();
        fs::write(root.join("a/x"), "this one too").unwrap();
        let kept = refresh(&root, &s, &only(&["a"], &[])).unwrap();
        assert_eq!(kept.root, found.root);
        let full = refresh(&root, &s, &ScanOptions::default()).unwrap();
        assert_ne!(full.root, kept.root);
        assert_eq!(full.root, full_root_from_scratch(&root));
    }

    #[test]
    fn hard_links_name_the_first_path_of_their_inode() {
        let (tree, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root = canonical_root(tree.path()).unwrap();
        fs::create_dir(root.join("a")).unwrap();
        fs::write(root.join("a/x"), "linked").unwrap();
        fs::write(root.join("d"), "linked").unwrap(); // same content, its own inode
        for l in ["b", "c"] {
            fs::hard_link(root.join("a/x"), root.join(l)).unwrap();
        }
        let s = store(home.path(), &root);
        let links = |s: &Store| {
            let snap = s.snapshot().unwrap();
            ["a/0", "a/x", "b", "c", "d", "e"].map(|p| {
                match crate::manifest::Nodes::node(&snap, p.as_bytes()).unwrap() {
                    Some(Node::File(f)) => Some(f.link.map(|l| String::from_utf8(l).unwrap())),
                    _ => None,
                }
            })
        };
        let some = |p: &str| Some(Some(p.to_string()));
        let check = |s: &Store, opts: &ScanOptions| {
            let sum = refresh(&root, s, opts).unwrap();
            assert_eq!(sum.root, full_root_from_scratch(&root));
            sum.root
        };
        let first = check(&s, &ScanOptions::default());
        assert_eq!(
            links(&s),
            [None, Some(None), some("a/x"), some("a/x"), Some(None), None]
        );
        // Unlinking one changes the tree: the same content, separate.
        fs::remove_file(root.join("c")).unwrap();
        fs::copy(root.join("a/x"), root.join("c")).unwrap();
        assert_ne!(check(&s, &ScanOptions::default()), first);
        assert_eq!(links(&s)[3], Some(None));

        // A new link earlier in component order becomes the first path of the inode.
        fs::hard_link(root.join("a/x"), root.join("a/0")).unwrap();
        check(&s, &ScanOptions::default());
        assert_eq!(
            links(&s),
            [
                Some(None),
                some("a/0"),
                some("a/0"),
                Some(None),
                Some(None),
                None
            ]
        );
        // ... and when it goes, the next one is.
        fs::remove_file(root.join("a/0")).unwrap();
        fs::remove_file(root.join("a/x")).unwrap();
        check(&s, &ScanOptions::default());
        assert_eq!(links(&s)[2], Some(None));

        // A rescan of only what changed cannot see the other paths of a linked entry's
        // inode: it walks everything instead, and gets the same root as a walk from scratch.
        fs::hard_link(root.join("b"), root.join("e")).unwrap();
        check(&s, &only(&[], &["e"]));
        assert_eq!(links(&s)[5], some("b"));
    }

    #[test]
    fn changed_only_without_stored_records_is_an_error() {
        let (tree, home) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let root = canonical_root(tree.path()).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        let s = store(home.path(), &root);
        match refresh(&root, &s, &only(&[], &[])) {
            Err(ScanError::NotStored(p)) => assert_eq!(p, root.join("d")),
            other => panic!("expected NotStored, got {other:?}"),
        }
    }
}
