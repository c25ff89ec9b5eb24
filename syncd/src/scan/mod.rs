//! Scanning a directory tree into its manifest: parallel walk, stat, chunk only what changed.
//!
//! [`refresh`] is the IO driver around the sans-IO [`crate::chunk`] and [`crate::manifest`]
//! cores:
//! 1. a parallel walk through directory descriptors ([`fdwalk`]; with `.gitignore` rules,
//!    the `ignore` crate's), in component order. Nothing is filtered by default (a
//!    migration must copy everything, dotfiles and ignored files included); `--exclude`
//!    globs and `.gitignore` rules apply only when asked;
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
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

mod build;
mod fdwalk;
mod read;
mod verify;
mod walk;

pub use read::{open_source, read_file};
pub use verify::{Finding, Problem, verify};

use build::{Leaf, OpenDir, Pass, TreeBuild, dir_attrs, leaf, now_ns};
use walk::walk;

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
    /// Given every file this refresh reads whole (up to 16 MiB) and records, with the
    /// bytes it read: the first local copy writes them out instead of reading them again.
    pub sink: Option<ReadSink>,
    /// Records of files just written, not yet stored: a file whose stat is its record's is
    /// taken as that record (and stored), as if the stat cache had it. The first local copy
    /// passes what it wrote, so the destination's refresh neither reads those files nor
    /// needs a commit of its own before it.
    pub known: Option<Arc<HashMap<Vec<u8>, Record>>>,
}

/// Receives the files a refresh reads ([`ScanOptions::sink`]), each once its read is known
/// to be one consistent version of the file (the `fstat` before and after agree), from the
/// scan's worker threads. A later path of a hard-linked inode is not given.
pub trait Sink: Send + Sync {
    /// `rel` is recorded as `node`, whose content is `data`; `owner` and `xattrs` are what
    /// its attributes digest covers.
    fn file(
        &self,
        rel: &[u8],
        node: &FileNode,
        data: chunk::Chunked,
        owner: (u32, u32),
        xattrs: &[(Vec<u8>, Vec<u8>)],
    );

    /// The tree at `root` as this refresh recorded it, given once every file has been
    /// given to [`Sink::file`] and before the manifest is committed (a refresh that fails
    /// before then gives nothing).
    fn tree(&self, root: &Path, tree: Tree) {
        let _ = (root, tree);
    }

    /// Whether [`Sink::tree`] lists the tree's files too.
    fn wants_files(&self) -> bool {
        false
    }
}

/// What a refresh gives its [`Sink`] of the tree besides the files it read.
#[derive(Debug, Default)]
pub struct Tree {
    /// Every directory (path, and mode as the manifest has it), parents first, the root
    /// first.
    pub dirs: Vec<(Vec<u8>, u32)>,
    /// Every symlink (path and node).
    pub symlinks: Vec<(Vec<u8>, Node)>,
    /// Every file (path and node), if the sink [wants them](Sink::wants_files).
    pub files: Vec<(Vec<u8>, FileNode)>,
}

/// A shared [`Sink`].
#[derive(Clone)]
pub struct ReadSink(pub Arc<dyn Sink>);

impl std::fmt::Debug for ReadSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadSink(..)")
    }
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
    /// Files read again because they changed while being read ([`read_file`]'s retries).
    pub rereads: u64,
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

impl Walked {
    /// An entry taken as stored, not looked at ([`ScanOptions::changed_only`]).
    fn kept(path: Vec<u8>, kind: Kind) -> Walked {
        Walked {
            path,
            kind,
            mode: 0,
            stat: Stat::default(),
            owner: (0, 0),
            dev: 0,
            nlink: 0,
            kept: true,
        }
    }
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
    let pass = Pass {
        start_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0),
        rereads: AtomicU64::new(0),
    };
    let (walked, mut warnings, root_meta, mut found_parts) = walk(&root, opts)?;
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
            rereads: 0,
        },
    };
    let root_attrs =
        dir_attrs(&root, (root_meta.uid(), root_meta.gid()), opts.owners).map_err(|source| {
            ScanError::Root {
                path: root.clone(),
                source,
            }
        })?;
    // What a sink is given of the tree besides its files ([`Sink::tree`]).
    let sink = opts.sink.as_ref().map(|ReadSink(s)| s);
    let sink_files = sink.is_some_and(|s| s.wants_files());
    let mut given = Tree::default();
    if sink.is_some() {
        given.dirs.push((Vec::new(), root_meta.mode() & 0o7777));
    }
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
                    leaf(&root, w, link, &snap, &listings, opts, &pass)
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
                if sink.is_some() {
                    given.dirs.push((w.path.clone(), w.mode));
                }
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
                let wanted = (kind == Kind::Symlink && sink.is_some()) || sink_files;
                if wanted && let Some(rec) = snap.record(&w.path)? {
                    match rec.node {
                        Node::File(f) => given.files.push((w.path.clone(), f)),
                        node => given.symlinks.push((w.path.clone(), node)),
                    }
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
                match record.node {
                    Node::File(f) if sink_files => given.files.push((w.path.clone(), f)),
                    node @ Node::Symlink { .. } if sink.is_some() => {
                        given.symlinks.push((w.path.clone(), node))
                    }
                    _ => {}
                }
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
    if let Some(sink) = sink {
        sink.tree(&root, given);
    }
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
    summary.rereads = pass.rereads.into_inner();
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
