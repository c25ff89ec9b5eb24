//! The first copy into an empty local destination, without the protocol: rsync's
//! `--whole-file` for a local copy, with every chunk still checked against its id.
//!
//! A local push into an empty directory has nothing to compare, reuse or delete, so the
//! merkle descent, the wants and the chunk frames between two in-process peers are pure
//! cost (44k small files paid about 2.7 CPU-seconds for them, where `cp -a` needs 0.65 for
//! the whole copy). Here the source's scan and its fresh manifest drive the copy directly:
//!
//! 1. while the source is scanned, every file the scan reads whole goes to the [`Copier`]
//!    (the scan's [`crate::scan::Sink`]) with the bytes and chunk ids the scan computed from
//!    them ([`crate::chunk::Chunked`]): written into a part file and sealed on the scan's
//!    thread, so the file is read and hashed once;
//! 2. then, from the tree the scan recorded ([`crate::scan::Tree`], given to the copier
//!    once every file is read, so this runs while the scan commits its manifest),
//!    directories are made, parents first (owner and xattrs now, mode and mtime last), and
//!    the files the scan did not read (a source manifest that was current already, files
//!    over 16 MiB) and symlinks are copied on the rayon pool:
//!    each file read chunk by chunk into one reused buffer, each chunk hashed and compared
//!    with the manifest's id before it is written ([`crate::chunk::Verified`], the
//!    receiver's own rule: nothing unhashed is written), then sealed;
//! 3. sealed files go in batches: one `syncfs`, and only then the renames, as the
//!    receiver's finisher does (for the scan's files, on a thread of their own, so that
//!    the scan waits on a flush only when two batches are queued already);
//! 4. hard links, then directory metadata deepest first, then the renames made durable.
//!
//! Whatever the seed could not copy exactly (a source file that changed since the scan, a
//! source entry gone or unreadable) is only skipped, and the first error on the destination
//! stops it: the caller then refreshes the destination's manifest and compares roots, and a
//! difference goes through the ordinary protocol session, which finds and reports it.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rayon::prelude::*;

use super::PushError;
use crate::apply::{self, ApplyError, Meta, Target};
use crate::chunk::{Chunked, Verified};
use crate::fsmeta;
use crate::lock::lock;
use crate::manifest::store::{Record, Store};
use crate::manifest::{FileNode, Node};

/// A batch is flushed together once it has [`batch_files`] files or this many bytes.
const BATCH_BYTES: u64 = 32 << 20;

/// Files per batch: each `syncfs` waits for the disk, so the fewer the better (onto ext4,
/// 128 files per batch took 3.3–3.6 s for 44k files, 1024 took 2.7–2.8 s, interleaved on
/// one fresh image), but each sealed file holds its descriptor until it is placed, and up
/// to four batches are open at once.
/// So: an eighth of the descriptor limit, between 32 and 1024, after raising the soft limit
/// towards the hard one (to 65536 at most), as a copier of many files may.
fn batch_files() -> usize {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    const WANT: u64 = 65536;
    let l = getrlimit(Resource::Nofile);
    let soft = l.current.unwrap_or(WANT);
    let raised = match l.maximum.unwrap_or(WANT).min(WANT) {
        hard if hard > soft => {
            let r = Rlimit {
                current: Some(hard),
                maximum: l.maximum,
            };
            if setrlimit(Resource::Nofile, r).is_ok() {
                hard
            } else {
                soft
            }
        }
        _ => soft,
    };
    (raised / 8).clamp(32, 1024) as usize
}

/// What the seed did so far (read by the progress ticker while it runs).
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Files placed.
    pub(super) files: AtomicU64,
    /// Their bytes.
    pub(super) bytes: AtomicU64,
    /// Their chunks.
    pub(super) chunks: AtomicU64,
    /// Files and bytes of the source, once its scan is over (0 until then).
    pub(super) scanned: (AtomicU64, AtomicU64),
}

/// What the copy leaves to its caller.
#[derive(Default)]
pub(super) struct Seeded {
    /// Stat-cache records of the files it placed and did not store yet, for the
    /// destination's refresh.
    pub(super) records: Records,
    /// The files written (placed, or sealed and waiting for a flush).
    copied: HashSet<Vec<u8>>,
    /// The destination error that stopped it, if one did.
    pub(super) stopped: Option<ApplyError>,
}

/// Stat-cache records, by path.
type Records = Vec<(Vec<u8>, Record)>;

/// A sealed file waiting for its batch's flush, with what its record needs.
type Written = (apply::Sealed, Vec<u8>, FileNode, Meta);

/// The first destination error, which stops the copy.
struct Stop {
    flag: AtomicBool,
    first: Mutex<Option<ApplyError>>,
}

impl Stop {
    fn new() -> Stop {
        Stop {
            flag: AtomicBool::new(false),
            first: Mutex::new(None),
        }
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    fn set(&self, e: ApplyError) {
        self.flag.store(true, Ordering::Relaxed);
        lock(&self.first).get_or_insert(e);
    }

    fn take(&self) -> Option<ApplyError> {
        lock(&self.first).take()
    }
}

/// The scan's [`crate::scan::Sink`] for the first copy into an empty `target`: each file
/// the source's scan reads whole is written into a part file and sealed on the scan's own
/// thread; batches of them are flushed and renamed on a thread of their own, which also
/// commits their stat-cache records to the destination's store as it goes (off the
/// critical path: the final refresh then finds them stored, and writes only directories).
pub(super) struct Copier {
    target: Target,
    batch: usize,
    pending: Mutex<(Vec<Written>, u64)>,
    copied: Mutex<HashSet<Vec<u8>>>,
    tx: Mutex<Option<mpsc::SyncSender<Vec<Written>>>>,
    flusher: Mutex<Option<std::thread::JoinHandle<Records>>>,
    stop: Arc<Stop>,
    /// Where the scan's [`crate::scan::Tree`] goes ([`Copier::tree_to`]).
    tree: Mutex<Option<tokio::sync::oneshot::Sender<(PathBuf, crate::scan::Tree)>>>,
}

impl Copier {
    /// A copier into `target` in mode `owners`, recording what it placed in `store` (the
    /// destination's manifest).
    pub(super) fn new(
        target: Target,
        owners: bool,
        counters: Arc<Counters>,
        store: Arc<Store>,
    ) -> Copier {
        // Each sealed file holds its descriptor until it is placed: at most two batches
        // wait for the flusher (which may be slow, a `syncfs` on a disk), so that the scan
        // waits rather than run out of descriptors ([`batch_files`]).
        let (tx, rx) = mpsc::sync_channel::<Vec<Written>>(2);
        let stop = Arc::new(Stop::new());
        let (t, c, st) = (target.clone(), counters.clone(), stop.clone());
        let flusher = std::thread::spawn(move || {
            let mut records = Vec::new();
            for batch in rx {
                if st.is_set() {
                    continue;
                }
                match place_batch(&t, batch, owners, &HashSet::new(), &c) {
                    Ok(placed) => {
                        let encoded: Vec<_> = placed
                            .iter()
                            .map(|(p, r)| (p.clone(), r.encode()))
                            .collect();
                        // Stored, or else kept for the final refresh: either way the files
                        // are not read again.
                        if let Err(e) = store.commit(&encoded, &[]) {
                            tracing::debug!("{e}; the records go with the final refresh");
                            records.extend(placed);
                        }
                    }
                    Err(e) => st.set(e),
                }
            }
            records
        });
        Copier {
            target,
            batch: batch_files(),
            pending: Mutex::new((Vec::new(), 0)),
            copied: Mutex::new(HashSet::new()),
            tx: Mutex::new(Some(tx)),
            flusher: Mutex::new(Some(flusher)),
            stop,
            tree: Mutex::new(None),
        }
    }

    /// Where the scan's root and tree will come, once it has read every file; nothing comes
    /// once [`Copier::no_tree`] has been called before.
    pub(super) fn tree_to(&self) -> tokio::sync::oneshot::Receiver<(PathBuf, crate::scan::Tree)> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *lock(&self.tree) = Some(tx);
        rx
    }

    /// The scan is over: a tree that did not come will not.
    pub(super) fn no_tree(&self) {
        lock(&self.tree).take();
    }

    /// Writes and places nothing more: what is sealed and not placed yet stays as part
    /// files (a failed session's, for a resume).
    pub(super) fn halt(&self) {
        self.stop.flag.store(true, Ordering::Relaxed);
    }

    /// Flushes and places what is still pending (unless halted), and waits for the
    /// flusher.
    pub(super) fn finish(&self) -> Seeded {
        let rest = std::mem::take(&mut lock(&self.pending).0);
        if let Some(tx) = lock(&self.tx).take()
            && !rest.is_empty()
        {
            let _ = tx.send(rest);
        }
        let records = match lock(&self.flusher).take().map(|h| h.join()) {
            Some(Ok(records)) => records,
            _ => Vec::new(),
        };
        Seeded {
            records,
            copied: std::mem::take(&mut lock(&self.copied)),
            stopped: self.stop.take(),
        }
    }

    fn write(
        &self,
        rel: &[u8],
        node: &FileNode,
        data: &Chunked,
        meta: Meta,
    ) -> Result<(), ApplyError> {
        let mut part = self.target.begin_file(rel, node)?;
        part.write_chunked(data)?;
        let sealed = part.seal(&meta)?;
        self.queue(sealed, rel, node, meta);
        Ok(())
    }

    /// Writes the file `rel` of `node` from its verified `chunks` (in order) and queues it
    /// for its batch, as the scan's files are (a bulk copy's receiver). A destination error
    /// stops the copy; a chunk that is not the node's is an error too.
    pub(super) fn write_verified(
        &self,
        rel: &[u8],
        node: &FileNode,
        chunks: &[Verified],
        meta: Meta,
    ) {
        if self.stop.is_set() {
            return;
        }
        let written = (|| {
            let mut part = self.target.begin_file(rel, node)?;
            for (i, v) in chunks.iter().enumerate() {
                part.write_chunk(i, v)?;
            }
            part.seal(&meta)
        })();
        match written {
            Ok(sealed) => self.queue(sealed, rel, node, meta),
            Err(e) => self.stop.set(e),
        }
    }

    /// Queues a sealed file for its batch's flush, and hands a full batch to the flusher.
    fn queue(&self, sealed: apply::Sealed, rel: &[u8], node: &FileNode, meta: Meta) {
        lock(&self.copied).insert(rel.to_vec());
        let full = {
            let mut p = lock(&self.pending);
            p.0.push((sealed, rel.to_vec(), node.clone(), meta));
            p.1 += node.size;
            if p.0.len() >= self.batch || p.1 >= BATCH_BYTES {
                p.1 = 0;
                Some(std::mem::take(&mut p.0))
            } else {
                None
            }
        };
        if let Some(batch) = full {
            // Not under the lock: the send waits while the flusher is two batches behind.
            let tx = lock(&self.tx).clone();
            if let Some(tx) = tx {
                let _ = tx.send(batch);
            }
        }
    }
}

impl crate::scan::Sink for Copier {
    fn file(
        &self,
        rel: &[u8],
        node: &FileNode,
        data: Chunked,
        owner: (u32, u32),
        xattrs: &[(Vec<u8>, Vec<u8>)],
    ) {
        if self.stop.is_set() {
            return;
        }
        let meta = file_meta(node, owner, xattrs.to_vec());
        if let Err(e) = self.write(rel, node, &data, meta) {
            self.stop.set(e);
        }
    }

    fn tree(&self, root: &Path, tree: crate::scan::Tree) {
        if let Some(tx) = lock(&self.tree).take() {
            let _ = tx.send((root.to_path_buf(), tree));
        }
    }

    fn wants_files(&self) -> bool {
        true
    }
}

/// A file or symlink to copy.
enum Item {
    File(Vec<u8>, FileNode),
    Symlink(Vec<u8>),
}

impl Item {
    fn size(&self) -> u64 {
        match self {
            Item::File(_, f) => f.size,
            Item::Symlink(_) => 0,
        }
    }
}

/// Completes the copy of `tree` (as the source's scan recorded it) from `src` into
/// `target`, which was empty before `scanned` (what the [`Copier`] wrote during the scan)
/// was written. `owners` is the session's mode ([`crate::scan::ScanOptions::owners`]).
pub(super) fn seed(
    src: &Path,
    tree: crate::scan::Tree,
    target: &Target,
    owners: bool,
    counters: &Counters,
    scanned: Seeded,
) -> Result<Seeded, PushError> {
    let Seeded {
        mut records,
        copied,
        stopped,
    } = scanned;
    let crate::scan::Tree {
        dirs,
        symlinks,
        files,
    } = tree;
    let mut items: Vec<Item> = symlinks
        .into_iter()
        .map(|(path, _)| Item::Symlink(path))
        .collect();
    let mut links = Vec::new();
    for (path, f) in files {
        match &f.link {
            Some(first) => links.push((path, first.clone())),
            None if copied.contains(&path) => {}
            None => items.push(Item::File(path, f)),
        }
    }
    // A hard link changes its inode's ctime: the stat of a linked file is taken by the
    // final refresh, not here.
    let linked: HashSet<&[u8]> = links.iter().map(|(_, first)| first.as_slice()).collect();
    let stop = Stop::new();
    let fail = |e: ApplyError| stop.set(e);
    if let Some(e) = stopped {
        fail(e);
    }

    // The tree lists every directory before what is inside it.
    let dirs: Vec<_> = dirs
        .into_iter()
        .filter_map(|(rel, mode)| source_meta(src, &rel, Some(mode)).map(|m| (rel, m)))
        .collect();
    if let Err(e) = make_dirs(target, &dirs) {
        fail(e);
    }

    let batches = batches(items, batch_files());
    if !stop.is_set() {
        let more: Records = batches
            .into_par_iter()
            .flat_map_iter(|batch| {
                if stop.is_set() {
                    return Vec::new();
                }
                match copy_batch(src, target, batch, owners, &linked, counters) {
                    Ok(records) => records,
                    Err(e) => {
                        fail(e);
                        Vec::new()
                    }
                }
            })
            .collect();
        records.extend(more);
    }

    if !stop.is_set() {
        for (rel, first) in &links {
            if let Err(e) = target.hard_link(rel, first) {
                fail(e);
                break;
            }
        }
    }
    if let Some(e) = set_dirs_meta(target, &dirs) {
        fail(e);
    }
    // Whatever was renamed is made durable, also when the seed stopped early.
    if let Err(e) = target.sync_dirs() {
        fail(e);
    }
    Ok(Seeded {
        records,
        copied: HashSet::new(),
        stopped: stop.take(),
    })
}

/// Makes the directories of `dirs` that `target` lacks (those the copy's files needed are
/// there already), in the order given, which must put parents first. Their mode and mtime
/// are set by [`set_dirs_meta`], once the files are in.
pub(super) fn make_dirs(target: &Target, dirs: &[(Vec<u8>, Meta)]) -> Result<(), ApplyError> {
    for (rel, meta) in dirs {
        if rel.is_empty() || target.root().join(OsStr::from_bytes(rel)).is_dir() {
            continue;
        }
        target.mkdir(rel, meta)?;
    }
    Ok(())
}

/// Gives every directory of `dirs` that exists its metadata, children before their
/// parents (the reverse of `dirs`' order), even after an error, which is returned (the
/// first). Also when the copy stopped: a directory's mtime is not in its hash, so the
/// session that goes on from there sets it only on the directories it changes, and the
/// others must already have theirs.
pub(super) fn set_dirs_meta(target: &Target, dirs: &[(Vec<u8>, Meta)]) -> Option<ApplyError> {
    let mut first = None;
    for (rel, meta) in dirs.iter().rev() {
        let exists = rel.is_empty() || target.root().join(OsStr::from_bytes(rel)).is_dir();
        if exists && let Err(e) = target.set_dir_meta(rel, meta) {
            first.get_or_insert(e);
        }
    }
    first
}

/// The items in batches of `size` files or [`BATCH_BYTES`], in path order.
fn batches(items: Vec<Item>, size: usize) -> Vec<Vec<Item>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0;
    for item in items {
        bytes += item.size();
        cur.push(item);
        if cur.len() >= size || bytes >= BATCH_BYTES {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The owner, xattrs and mtime of the source entry `rel` (`mode`, if given, as the
/// manifest has it), or `None` if it cannot be read: the entry is then skipped.
fn source_meta(src: &Path, rel: &[u8], mode: Option<u32>) -> Option<Meta> {
    let abs = src.join(OsStr::from_bytes(rel));
    let m = std::fs::symlink_metadata(&abs).ok()?;
    let xattrs = if m.file_type().is_symlink() {
        Vec::new()
    } else {
        fsmeta::read_xattrs(&abs).ok()?
    };
    Some(Meta {
        mode: mode.unwrap_or(m.mode() & 0o7777),
        mtime_ns: fsmeta::mtime_ns(&m),
        uid: Some(m.uid()),
        gid: Some(m.gid()),
        xattrs,
    })
}

/// A file's metadata: mode and mtime as the manifest has them, the owner and xattrs its
/// source has.
fn file_meta(node: &FileNode, owner: (u32, u32), xattrs: Vec<(Vec<u8>, Vec<u8>)>) -> Meta {
    Meta {
        mode: node.mode,
        mtime_ns: node.mtime_ns,
        uid: Some(owner.0),
        gid: Some(owner.1),
        xattrs,
    }
}

/// Copies one batch: every file written and sealed, one flush, then the renames. Returns
/// the stat-cache records of the files placed; a destination error stops the batch.
fn copy_batch(
    src: &Path,
    target: &Target,
    batch: Vec<Item>,
    owners: bool,
    linked: &HashSet<&[u8]>,
    counters: &Counters,
) -> Result<Records, ApplyError> {
    let mut buf = Vec::new();
    let mut sealed = Vec::with_capacity(batch.len());
    for item in batch {
        match item {
            Item::Symlink(rel) => {
                let abs = src.join(OsStr::from_bytes(&rel));
                let (Ok(to), Some(meta)) = (std::fs::read_link(&abs), source_meta(src, &rel, None))
                else {
                    continue;
                };
                target.symlink(&rel, to.as_os_str().as_bytes(), &meta)?;
            }
            Item::File(rel, node) => {
                if let Some((file, meta)) = write_file(src, target, &rel, &node, &mut buf)? {
                    sealed.push((file, rel, node, meta));
                }
            }
        }
    }
    place_batch(target, sealed, owners, linked, counters)
}

/// Flushes a batch of sealed files with one `syncfs` and then renames them into place.
/// Returns the stat-cache records of those placed (not of `linked` ones: a hard link made
/// later changes their ctime); a destination error stops the batch.
fn place_batch(
    target: &Target,
    batch: Vec<Written>,
    owners: bool,
    linked: &HashSet<&[u8]>,
    counters: &Counters,
) -> Result<Records, ApplyError> {
    let (files, done): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|(s, rel, node, meta)| (s, (rel, node, meta)))
        .unzip();
    let flushed = apply::flush_together(&files);
    let mut records = Vec::with_capacity(files.len());
    for ((file, flush), (rel, node, meta)) in files.into_iter().zip(flushed).zip(done) {
        flush?;
        let m = file.place()?;
        counters.files.fetch_add(1, Ordering::Relaxed);
        counters.bytes.fetch_add(node.size, Ordering::Relaxed);
        counters
            .chunks
            .fetch_add(node.chunks.len() as u64, Ordering::Relaxed);
        if linked.contains(rel.as_slice()) {
            continue;
        }
        let abs = target.root().join(OsStr::from_bytes(&rel));
        let mut f = node;
        f.attrs = apply::attrs_after(&abs, &rel, &m, &meta, owners)?;
        let node = Node::File(f);
        let rec = Record {
            hash: node.hash(),
            stat: fsmeta::stat_of(&m),
            node,
        };
        records.push((rel, rec));
    }
    Ok(records)
}

/// Reads `rel` from the source chunk by chunk, checks each chunk against the manifest's id
/// and writes it into a part file, then seals it. `None` when the source no longer has
/// exactly that content (or cannot be opened): the file is skipped and its part file
/// removed. `buf` is reused from file to file.
fn write_file(
    src: &Path,
    target: &Target,
    rel: &[u8],
    node: &FileNode,
    buf: &mut Vec<u8>,
) -> Result<Option<(apply::Sealed, Meta)>, ApplyError> {
    let abs = src.join(OsStr::from_bytes(rel));
    let Ok((mut f, m)) = crate::scan::open_source(&abs, None) else {
        return Ok(None);
    };
    let Ok(xattrs) = fsmeta::file_xattrs(&f) else {
        return Ok(None);
    };
    let meta = file_meta(node, (m.uid(), m.gid()), xattrs);
    let mut part = target.begin_file(rel, node)?;
    for (i, c) in node.chunks.iter().enumerate() {
        buf.resize(c.len as usize, 0);
        let mut bytes = std::mem::take(buf);
        if f.read_exact(&mut bytes).is_err() {
            *buf = bytes;
            part.abort()?;
            return Ok(None);
        }
        match Verified::check(&c.id, bytes) {
            Ok(v) => {
                part.write_chunk(i, &v)?;
                *buf = v.into_bytes();
            }
            Err(bytes) => {
                // Changed since the scan: the protocol session sends its new content.
                *buf = bytes;
                part.abort()?;
                return Ok(None);
            }
        }
    }
    Ok(Some((part.seal(&meta)?, meta)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::store::Store;
    use crate::partname::PartKey;
    use crate::scan::{self, ScanOptions};

    /// Source, destination and home directories.
    fn dirs() -> [tempfile::TempDir; 3] {
        std::array::from_fn(|_| tempfile::tempdir().unwrap())
    }

    /// A scan's sink that takes no file (the seed then copies them all) and keeps the tree.
    #[derive(Default)]
    struct Keep(Mutex<Option<scan::Tree>>);

    impl scan::Sink for Keep {
        fn file(
            &self,
            _: &[u8],
            _: &FileNode,
            _: Chunked,
            _: (u32, u32),
            _: &[(Vec<u8>, Vec<u8>)],
        ) {
        }

        fn tree(&self, _: &Path, tree: scan::Tree) {
            *lock(&self.0) = Some(tree);
        }

        fn wants_files(&self) -> bool {
            true
        }
    }

    /// The source's tree, as its scan into a store under `home` gives it, and the target
    /// `dst`.
    fn scanned(src: &Path, dst: &Path, home: &Path) -> (std::path::PathBuf, scan::Tree, Target) {
        let root = scan::canonical_root(src).unwrap();
        let store = Store::open(home, &root, false).unwrap().into_store();
        let keep = Arc::new(Keep::default());
        let opts = ScanOptions {
            sink: Some(scan::ReadSink(keep.clone())),
            ..ScanOptions::default()
        };
        scan::refresh(&root, &store, &opts).unwrap();
        let target = Target::open(dst, PartKey::load(home).unwrap()).unwrap();
        let tree = lock(&keep.0).take().unwrap();
        (root, tree, target)
    }

    /// A source file that changed after the scan (same size, other bytes) does not match
    /// its chunk ids: the copy skips it and removes its part file, and copies the rest.
    #[test]
    fn a_file_changed_since_the_scan_is_skipped_whole() {
        let [src, dst, home] = dirs();
        std::fs::create_dir(src.path().join("d")).unwrap();
        std::fs::write(src.path().join("d/same"), b"unchanged").unwrap();
        std::fs::write(src.path().join("d/edited"), vec![1u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("same", src.path().join("d/link")).unwrap();
        let (root, tree, target) = scanned(src.path(), dst.path(), home.path());
        std::fs::write(src.path().join("d/edited"), vec![2u8; 100_000]).unwrap();
        let counters = Counters::default();
        let seeded = seed(&root, tree, &target, false, &counters, Seeded::default()).unwrap();
        assert!(seeded.stopped.is_none());
        assert_eq!(
            std::fs::read(dst.path().join("d/same")).unwrap(),
            b"unchanged"
        );
        assert_eq!(
            std::fs::read_link(dst.path().join("d/link")).unwrap(),
            Path::new("same")
        );
        let names: Vec<_> = std::fs::read_dir(dst.path().join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.contains("edited")), "{names:?}");
        let records: Vec<_> = seeded.records.iter().map(|(p, _)| p.as_slice()).collect();
        assert_eq!(records, [b"d/same".as_slice()]);
        assert_eq!(counters.files.load(Ordering::Relaxed), 1);
    }

    /// A copy the destination stopped (here: an error the scan's copier met) copies nothing
    /// more, but still gives every directory its metadata: a directory's mtime is not in
    /// its hash, so the session that goes on from there would not.
    #[test]
    fn a_stopped_copy_still_sets_the_directories_metadata() {
        let [src, dst, home] = dirs();
        std::fs::create_dir_all(src.path().join("a/b")).unwrap();
        std::fs::write(src.path().join("a/b/f"), b"x").unwrap();
        for (dir, secs) in [
            ("a/b", 1_500_000_000),
            ("a", 1_400_000_000),
            ("", 1_300_000_000),
        ] {
            let t = filetime::FileTime::from_unix_time(secs, 0);
            filetime::set_file_mtime(src.path().join(dir), t).unwrap();
        }
        std::fs::set_permissions(
            src.path().join("a"),
            std::os::unix::fs::PermissionsExt::from_mode(0o750),
        )
        .unwrap();
        let (root, tree, target) = scanned(src.path(), dst.path(), home.path());
        // What the scan's copier had done: "a/b" made for its file, then a full disk.
        std::fs::create_dir_all(dst.path().join("a/b")).unwrap();
        let full = ApplyError::Io {
            path: b"a/b/f".to_vec(),
            op: "write",
            source: std::io::Error::from_raw_os_error(libc::ENOSPC),
        };
        let scanned = Seeded {
            stopped: Some(full),
            ..Seeded::default()
        };
        let seeded = seed(&root, tree, &target, false, &Counters::default(), scanned).unwrap();
        assert!(seeded.stopped.is_some(), "the error is passed on");
        assert!(
            !dst.path().join("a/b/f").exists(),
            "nothing copied after it"
        );
        for dir in ["a/b", "a", ""] {
            let (s, d) = (
                std::fs::metadata(src.path().join(dir)).unwrap(),
                std::fs::metadata(dst.path().join(dir)).unwrap(),
            );
            assert_eq!((d.mtime(), d.mode()), (s.mtime(), s.mode()), "{dir:?}");
        }
    }
}
