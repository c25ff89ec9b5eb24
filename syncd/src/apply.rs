//! Receiver-side filesystem application: turns verified chunks and metadata into files,
//! symlinks, directories and hard links under one destination root, safely and atomically.
//!
//! Every relative path that reaches this module came from the network. [`Target`] refuses
//! absolute paths, empty, `.` and `..` components and NUL bytes, and it never writes through
//! a symlink: every ancestor of a path it touches must be a real directory (checked with
//! `lstat`, component by component), and final components are opened with `O_NOFOLLOW` or
//! replaced with `rename`, which does not follow them.
//!
//! A file is assembled in a part file next to its final path ([`Target::begin_file`]), named
//! `.syncd-<name>.<16 hex of the file node hash>.part` so that an interrupted transfer of the
//! same content finds it again and resumes ([`PartFile::present`]). Each chunk is checked
//! against its BLAKE3 id before it is written; all-zero chunks are not written, so sparse
//! files stay sparse. [`PartFile::finish`] applies ownership, xattrs, mode and mtime to the
//! part file, fsyncs it and renames it onto the final path: a final path only ever holds a
//! complete, verified file. Directory mtimes are set last ([`Target::set_dir_meta`]), once
//! their content is final.
//!
//! Deliberately absent: networking, the protocol, scanning or hashing whole trees, deciding
//! what to transfer or delete, and async. The calls are blocking std IO, meant to run on
//! `spawn_blocking` threads or directly from the local push path.
//!
//! Limits, stated rather than hidden:
//! - The ancestor check is `lstat` per component, not `openat` traversal (the workspace
//!   denies `unsafe`, and std wraps no `openat`). Someone who can write inside the
//!   destination tree *while* a push runs could swap a checked directory for a symlink
//!   between the check and the use. A remote sender cannot: it only names paths.
//! - Ownership is applied only when running as root; xattrs outside `user.*` likewise. A
//!   filesystem without xattr support silently keeps none (as [`Meta::read`] reads none).
//! - Two writers of the same path at once are not supported; the driver serialises them.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use filetime::FileTime;
use xattr::FileExt as _;

use crate::chunk::{ChunkId, Verified};
use crate::fsmeta;
use crate::manifest::{
    ChunkRef, FileNode, Hash, attrs_hash, check_name, display_path, file_name, hashed_xattr, parent,
};
use crate::partname::{PartKey, Temp};

/// Why a relative path from the network is refused, or `None` if it is a plain relative
/// path (the empty path is the root). Ancestors are checked separately, against the disk.
fn path_problem(rel: &[u8]) -> Option<&'static str> {
    if rel.is_empty() {
        return None;
    }
    if rel.first() == Some(&b'/') {
        return Some("absolute path");
    }
    for component in rel.split(|&b| b == b'/') {
        if check_name(component).is_err() {
            return Some(match component {
                b"" => "empty path component",
                b"." => "`.` component",
                b".." => "`..` component",
                _ => "NUL byte in path",
            });
        }
    }
    None
}

/// What went wrong while applying changes to the destination tree. Paths are relative to
/// the target root (raw bytes), except in [`Meta::read`], which names the path it was given.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A path is not a plain relative path, or reaching it would go through a symlink or a
    /// non-directory.
    #[error("refusing unsafe path {}: {reason}", display_path(path))]
    UnsafePath {
        /// The path as received.
        path: Vec<u8>,
        /// What is wrong with it.
        reason: String,
    },
    /// A chunk's bytes do not hash to, or are not as long as, the chunk the file node lists.
    #[error(
        "chunk {index} of {} does not match: expected {expected} ({expected_len} bytes), got {actual} ({actual_len} bytes)",
        display_path(path)
    )]
    ChunkMismatch {
        /// The file being assembled.
        path: Vec<u8>,
        /// Index into the file node's chunks.
        index: usize,
        /// The id the file node lists.
        expected: ChunkId,
        /// The length the file node lists.
        expected_len: u32,
        /// The id of the bytes received.
        actual: ChunkId,
        /// The length of the bytes received.
        actual_len: usize,
    },
    /// A chunk index is beyond the file node's chunk list.
    #[error(
        "chunk {index} of {} is out of range ({count} chunks)",
        display_path(path)
    )]
    NoSuchChunk {
        /// The file being assembled.
        path: Vec<u8>,
        /// The index asked for.
        index: usize,
        /// How many chunks the file has.
        count: usize,
    },
    /// The file node's chunk lengths do not add up to its size, or a chunk is empty.
    #[error(
        "file node for {} is inconsistent: size {size}, chunks add up to {sum}",
        display_path(path)
    )]
    BadNode {
        /// The file.
        path: Vec<u8>,
        /// The declared size.
        size: u64,
        /// The sum of chunk lengths (a zero-length chunk also lands here).
        sum: u64,
    },
    /// `finish` was called before every chunk was written or found present.
    #[error(
        "{} is incomplete: {missing} of {total} chunks missing (first: {first})",
        display_path(path)
    )]
    Incomplete {
        /// The file.
        path: Vec<u8>,
        /// How many chunks are missing.
        missing: usize,
        /// How many chunks the file has.
        total: usize,
        /// Index of the first missing chunk.
        first: usize,
    },
    /// The destination filesystem is full (`ENOSPC`).
    #[error("no space left on device while writing {}", display_path(path))]
    NoSpace {
        /// The entry being written.
        path: Vec<u8>,
    },
    /// Any other filesystem error.
    #[error("cannot {op} {}: {source}", display_path(path))]
    Io {
        /// The entry involved.
        path: Vec<u8>,
        /// The operation, e.g. `write`, `rename into place`.
        op: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &[u8], op: &'static str, source: io::Error) -> ApplyError {
    if source.raw_os_error() == Some(libc::ENOSPC) {
        ApplyError::NoSpace {
            path: path.to_vec(),
        }
    } else {
        ApplyError::Io {
            path: path.to_vec(),
            op,
            source,
        }
    }
}

fn unsafe_path(path: &[u8], reason: impl Into<String>) -> ApplyError {
    ApplyError::UnsafePath {
        path: path.to_vec(),
        reason: reason.into(),
    }
}

fn not_found() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

fn is_unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP))
}

/// Metadata carried alongside an entry: what `rsync -a` (as root: `-aAX` and owners)
/// preserves beyond the content.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Owner; applied only when running as root.
    pub uid: Option<u32>,
    /// Group; applied only when running as root.
    pub gid: Option<u32>,
    /// Extended attributes (ACLs are `system.posix_acl_*` xattrs), sorted by name.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Meta {
    /// Reads the metadata of an existing file, directory or symlink without following it.
    /// A filesystem without xattr support yields no xattrs.
    pub fn read(path: &Path) -> Result<Meta, ApplyError> {
        let bytes = path.as_os_str().as_bytes();
        let m = fs::symlink_metadata(path).map_err(|e| io_err(bytes, "read metadata of", e))?;
        let xattrs = fsmeta::read_xattrs(path)
            .map_err(|e| io_err(bytes, "read extended attributes of", e))?;
        Ok(Meta {
            mode: m.mode() & 0o7777,
            mtime_ns: fsmeta::mtime_ns(&m),
            uid: Some(m.uid()),
            gid: Some(m.gid()),
            xattrs,
        })
    }

    fn mtime(&self) -> FileTime {
        use fsmeta::NS;
        // rem_euclid is within 0..NS, so the cast is exact.
        FileTime::from_unix_time(
            self.mtime_ns.div_euclid(NS),
            self.mtime_ns.rem_euclid(NS) as u32,
        )
    }
}

/// The attributes digest ([`crate::manifest::attrs_hash`]) of the entry at `abs` (relative
/// path `rel`), whose metadata after [`PartFile::finish`] or [`Target::set_file_meta`] is
/// `m`, and which was given `meta`'s xattrs: its owner as it now is, and those xattrs read
/// back when some of them are covered (a filesystem without xattr support drops them
/// silently). Without covered xattrs there is nothing to read: applying removed every
/// covered xattr the source lacks.
pub fn attrs_after(
    abs: &Path,
    rel: &[u8],
    m: &fs::Metadata,
    meta: &Meta,
    owners: bool,
) -> Result<Option<Hash>, ApplyError> {
    let owner = owners.then(|| (m.uid(), m.gid()));
    if !meta.xattrs.iter().any(|(n, _)| hashed_xattr(n, owners)) {
        return Ok(attrs_hash(owner, &[]));
    }
    let xattrs =
        fsmeta::read_xattrs(abs).map_err(|e| io_err(rel, "read extended attributes of", e))?;
    Ok(attrs_hash(owner, &xattrs))
}

/// Whether an xattr is applied: everything as root, only `user.*` otherwise (the other
/// namespaces need privileges).
fn applies_xattr(name: &[u8], as_root: bool) -> bool {
    as_root || name.starts_with(b"user.")
}

/// Applies ownership (as root) and xattrs to an open file or directory. The entry ends with
/// exactly the source's xattrs among those this process applies: one it has and the source
/// lacks is removed, such as an ACL a new entry inherited from its directory's default ACL,
/// or an attribute an older version of the file had. `security.*` labels other than file
/// capabilities are left to the receiver's policy unless the source has them. So the
/// entry's xattrs that [`crate::manifest::hashed_xattr`] covers end equal to the source's.
fn apply_owner_xattrs(
    handle: &File,
    meta: &Meta,
    as_root: bool,
    rel: &[u8],
) -> Result<(), ApplyError> {
    // Ownership first: chown clears set-id bits, which the mode applied afterwards restores.
    if as_root && (meta.uid.is_some() || meta.gid.is_some()) {
        std::os::unix::fs::fchown(handle, meta.uid, meta.gid)
            .map_err(|e| io_err(rel, "set owner of", e))?;
    }
    for (name, value) in &meta.xattrs {
        if !applies_xattr(name, as_root) {
            continue;
        }
        match handle.set_xattr(OsStr::from_bytes(name), value) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) => return Ok(()),
            Err(e) => return Err(io_err(rel, "set extended attribute of", e)),
        }
    }
    let names = match handle.list_xattr() {
        Ok(names) => names,
        Err(e) if is_unsupported(&e) => return Ok(()),
        Err(e) => return Err(io_err(rel, "list extended attributes of", e)),
    };
    for name in names {
        let n = name.as_bytes();
        if !applies_xattr(n, as_root)
            || !hashed_xattr(n, true)
            || meta.xattrs.iter().any(|(k, _)| k.as_slice() == n)
        {
            continue;
        }
        match handle.remove_xattr(&name) {
            Ok(()) => {}
            Err(e) if is_unsupported(&e) || e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(io_err(rel, "remove extended attribute of", e)),
        }
    }
    Ok(())
}

/// Sets the `user.*` xattrs of `meta` on an entry this process cannot open (not root, mode
/// without u+r), by path: the caller checked with an lstat that it is not a symlink.
fn set_user_xattrs_by_path(abs: &Path, meta: &Meta, rel: &[u8]) -> Result<(), ApplyError> {
    for (name, value) in meta.xattrs.iter().filter(|(n, _)| applies_xattr(n, false)) {
        match xattr::set(abs, OsStr::from_bytes(name), value) {
            Err(e) if is_unsupported(&e) => break,
            r => r.map_err(|e| io_err(rel, "set extended attribute of", e))?,
        }
    }
    Ok(())
}

fn dir_open_err(rel: &[u8], e: io::Error) -> ApplyError {
    match e.raw_os_error() {
        Some(libc::ELOOP) => unsafe_path(rel, "is a symlink, not a directory"),
        Some(libc::ENOTDIR) => unsafe_path(rel, "is not a directory"),
        _ => io_err(rel, "open directory", e),
    }
}

fn open_dir(abs: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(abs)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes the directory tree at `abs` (without following symlinks in it), making `target`
/// forget the directories it had checked: they may have been inside. Only a directory's
/// removal can invalidate them.
fn remove_tree(target: &Target, abs: &Path) -> io::Result<()> {
    target.forget_dirs();
    let removed = fs::remove_dir_all(abs);
    target.forget_dirs();
    removed
}

/// Removes whatever is at `abs` (a directory tree, without following symlinks in it).
fn remove_any(target: &Target, abs: &Path, rel: &[u8]) -> Result<(), ApplyError> {
    let result = match fs::symlink_metadata(abs) {
        Ok(m) if m.is_dir() => remove_tree(target, abs),
        Ok(_) => fs::remove_file(abs),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(rel, "remove", e)),
        _ => Ok(()),
    }
}

/// Removes a directory tree at `abs` so that a non-directory can be renamed there. Anything
/// else is left for `rename` to replace atomically.
fn clear_dir(target: &Target, abs: &Path, rel: &[u8]) -> Result<(), ApplyError> {
    match fs::symlink_metadata(abs) {
        Ok(m) if m.is_dir() => {
            remove_tree(target, abs).map_err(|e| io_err(rel, "remove directory tree at", e))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(rel, "inspect", e)),
    }
}

/// Removes a temporary name on drop unless disarmed.
struct TempName<'a>(Option<&'a Path>);

impl Drop for TempName<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            let _ = fs::remove_file(p);
        }
    }
}

/// The chunk a long run of zeros is cut into, if `node` has one: content-defined chunking
/// cuts zeros at the maximum length, so this looks for zeros of the file's longest chunk
/// length when that length occurs at least twice. One hash of one chunk per file at most,
/// so that fresh part files need not be read to find their holes.
fn zero_run_chunk(node: &FileNode) -> Option<ChunkRef> {
    let longest = node.chunks.iter().map(|c| c.len).max()?;
    // At least two chunks of that length.
    node.chunks.iter().filter(|c| c.len == longest).nth(1)?;
    let zero = ChunkRef {
        id: ChunkId::of(&vec![0; longest as usize]),
        len: longest,
    };
    node.chunks.contains(&zero).then_some(zero)
}

/// A destination tree: the root every received relative path is applied under.
///
/// Relative paths are raw bytes, `/`-separated, the root being `b""`. A driver applies a
/// push in this order: [`mkdir`](Target::mkdir) for directories, parents first; per file
/// [`begin_file`](Target::begin_file), [`PartFile::present`], [`PartFile::write_chunk`]
/// for the chunks not present (from the wire, or [`read_span`](Target::read_span) of a
/// copy already in the tree), then [`PartFile::finish`]; [`symlink`](Target::symlink);
/// [`hard_link`](Target::hard_link) once the linked entry is in place;
/// [`remove`](Target::remove) for extraneous entries after the new content; and last
/// [`set_dir_meta`](Target::set_dir_meta), children before parents.
///
/// ```
/// use syncd::apply::{Meta, Target};
/// use syncd::chunk::{ChunkParams, Verified, chunk};
/// use syncd::manifest::{ChunkRef, FileNode};
/// use syncd::partname::PartKey;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dest = tempfile::tempdir()?;
/// let data = b"hello, world\n";
/// let chunks = chunk(data, ChunkParams::default());
/// let node = FileNode {
///     size: data.len() as u64,
///     mode: 0o644,
///     mtime_ns: 1_700_000_000_000_000_000,
///     chunks: chunks.iter().map(|c| ChunkRef { id: c.id, len: c.len }).collect(),
///     link: None,
///     attrs: None,
/// };
/// let dir = Meta { mode: 0o755, ..Meta::default() };
/// let file = Meta { mode: node.mode, mtime_ns: node.mtime_ns, ..Meta::default() };
///
/// let home = tempfile::tempdir()?;
/// let target = Target::open(dest.path(), PartKey::load(home.path())?)?;
/// target.mkdir(b"docs", &dir)?;
/// let mut part = target.begin_file(b"docs/hello.txt", &node)?;
/// let present = part.present()?;
/// for (i, c) in chunks.iter().enumerate().filter(|(i, _)| !present[*i]) {
///     let span = c.offset as usize..(c.offset + u64::from(c.len)) as usize;
///     part.write_chunk(i, &Verified::of(data[span].to_vec()))?;
/// }
/// part.finish(&file)?;
/// target.set_dir_meta(b"docs", &dir)?;
/// assert_eq!(std::fs::read(dest.path().join("docs/hello.txt"))?, data);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Target {
    root: PathBuf,
    /// Names and recognises this receiver's part files.
    key: PartKey,
    as_root: bool,
    /// Ancestors already checked to be real directories (this session is the only writer;
    /// cleared whenever a directory is removed).
    known_dirs: Arc<Mutex<HashSet<Vec<u8>>>>,
    /// Directories holding renames not yet fsynced (see [`Target::sync_dirs`]).
    unsynced: Arc<Mutex<HashSet<Vec<u8>>>>,
}

impl Target {
    /// Opens the destination rooted at `root`, which must exist and be a directory. The
    /// root is canonicalised once here; paths are resolved against it from then on.
    pub fn open(root: &Path, key: PartKey) -> Result<Target, ApplyError> {
        let bytes = root.as_os_str().as_bytes();
        let root = fs::canonicalize(root).map_err(|e| io_err(bytes, "open target root", e))?;
        let m = fs::metadata(&root).map_err(|e| io_err(bytes, "open target root", e))?;
        if !m.is_dir() {
            return Err(io_err(
                bytes,
                "open target root",
                io::Error::from(io::ErrorKind::NotADirectory),
            ));
        }
        Ok(Target {
            root,
            key,
            as_root: fsmeta::running_as_root(),
            known_dirs: Arc::default(),
            unsynced: Arc::default(),
        })
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn abs(&self, rel: &[u8]) -> PathBuf {
        if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(OsStr::from_bytes(rel))
        }
    }

    /// Checks every ancestor of `rel` (not `rel` itself) is a real directory, creating
    /// missing ones (mode 0755) if `create`. Returns false if one is missing and not created.
    fn ancestors(&self, rel: &[u8], create: bool) -> Result<bool, ApplyError> {
        for (i, _) in rel.iter().enumerate().filter(|&(_, &b)| b == b'/') {
            let prefix = &rel[..i];
            if lock(&self.known_dirs).contains(prefix) {
                continue;
            }
            let abs = self.abs(prefix);
            let meta = match fs::symlink_metadata(&abs) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(false);
                    }
                    match DirBuilder::new().mode(0o755).create(&abs) {
                        Ok(()) => continue,
                        // Created concurrently: check what it is.
                        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                            fs::symlink_metadata(&abs).map_err(|e| io_err(prefix, "inspect", e))?
                        }
                        Err(e) => return Err(io_err(prefix, "create directory", e)),
                    }
                }
                Err(e) => return Err(io_err(prefix, "inspect", e)),
                Ok(m) => m,
            };
            if meta.file_type().is_symlink() {
                return Err(unsafe_path(
                    rel,
                    format!("{} is a symlink", display_path(prefix)),
                ));
            }
            if !meta.is_dir() {
                return Err(unsafe_path(
                    rel,
                    format!("{} is not a directory", display_path(prefix)),
                ));
            }
            lock(&self.known_dirs).insert(prefix.to_vec());
        }
        Ok(true)
    }

    /// Forgets which directories were checked: something was removed.
    fn forget_dirs(&self) {
        lock(&self.known_dirs).clear();
    }

    /// Fsyncs every directory that received a rename since the last call, once each. Call
    /// it before reporting a transfer complete: until then a crash may lose a rename (the
    /// file is then absent or old, never torn: its data was fsynced before the rename).
    pub fn sync_dirs(&self) -> Result<(), ApplyError> {
        let dirs: Vec<Vec<u8>> = lock(&self.unsynced).drain().collect();
        for dir in dirs {
            open_dir(&self.abs(&dir))
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(&dir, "fsync directory", e))?;
        }
        Ok(())
    }

    fn check(rel: &[u8]) -> Result<(), ApplyError> {
        match path_problem(rel) {
            Some(reason) => Err(unsafe_path(rel, reason)),
            None => Ok(()),
        }
    }

    fn check_entry(rel: &[u8]) -> Result<(), ApplyError> {
        if rel.is_empty() {
            return Err(unsafe_path(rel, "the root itself is not an entry"));
        }
        Self::check(rel)
    }

    /// Validates a non-root `rel` and creates its missing ancestors; returns its path.
    fn place(&self, rel: &[u8]) -> Result<PathBuf, ApplyError> {
        Self::check_entry(rel)?;
        self.ancestors(rel, true)?;
        Ok(self.abs(rel))
    }

    /// Validates `rel` (the root allowed) and checks its ancestors; `None` if one is missing.
    fn existing(&self, rel: &[u8]) -> Result<Option<PathBuf>, ApplyError> {
        Self::check(rel)?;
        Ok(self.ancestors(rel, false)?.then(|| self.abs(rel)))
    }

    /// Records that `rel`'s directory needs an fsync; [`Target::sync_dirs`] does it once per
    /// directory instead of once per file.
    fn sync_dir(&self, rel: &[u8]) -> Result<(), ApplyError> {
        lock(&self.unsynced).insert(parent(rel).to_vec());
        Ok(())
    }

    /// Starts assembling the file `rel` with content `node`: creates missing parent
    /// directories (mode 0755, fixed later by [`Target::set_dir_meta`]) and opens the part
    /// file, reusing one left by an interrupted attempt at the same content.
    pub fn begin_file(&self, rel: &[u8], node: &FileNode) -> Result<PartFile, ApplyError> {
        Self::check_entry(rel)?;
        let mut offsets = Vec::with_capacity(node.chunks.len());
        let mut sum = 0u64;
        let mut empty_chunk = false;
        for c in &node.chunks {
            offsets.push(sum);
            sum = sum.saturating_add(u64::from(c.len));
            empty_chunk |= c.len == 0;
        }
        if sum != node.size || empty_chunk {
            return Err(ApplyError::BadNode {
                path: rel.to_vec(),
                size: node.size,
                sum,
            });
        }
        let dest = self.place(rel)?;
        let part = self.abs(parent(rel)).join(OsStr::from_bytes(
            &self.key.name(file_name(rel), Temp::File),
        ));
        let open = |create_new: bool| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(create_new)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&part)
        };
        let create = || open(true).map_err(|e| io_err(rel, "create part file for", e));
        // O_CREAT|O_EXCL|O_NOFOLLOW makes a new regular file or fails: the common case
        // needs no other check. Something already there is inspected before it is opened.
        let (file, resumed) = match open(true) {
            Ok(f) => (f, false),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let regular = fs::symlink_metadata(&part).is_ok_and(|m| m.is_file());
                match regular.then(|| open(false)) {
                    Some(Ok(f)) if f.metadata().is_ok_and(|m| m.is_file() && m.nlink() == 1) => {
                        (f, true)
                    }
                    // Our own name but unusable: a symlink or a directory, left read-only
                    // by a failed `finish`, or linked to another name (writing would
                    // change that file too). Start over.
                    _ => {
                        remove_any(self, &part, rel)?;
                        (create()?, false)
                    }
                }
            }
            Err(e) => return Err(io_err(rel, "create part file for", e)),
        };
        if resumed {
            // Cut off what a longer earlier attempt left; a fresh file grows as it is
            // written and gets its length in `finish` only if it ends in a hole.
            file.set_len(node.size)
                .map_err(|e| io_err(rel, "size part file for", e))?;
        }
        Ok(PartFile {
            target: self.clone(),
            rel: rel.to_vec(),
            done: vec![false; node.chunks.len()],
            node: node.clone(),
            offsets,
            dest,
            part,
            file,
            resumed,
            sized: resumed || node.size == 0,
        })
    }

    /// Makes `rel` a symlink to `target` (never followed), atomically replacing whatever is
    /// there (a directory tree is removed first). Sets owner (as root) and mtime.
    pub fn symlink(&self, rel: &[u8], target: &[u8], meta: &Meta) -> Result<(), ApplyError> {
        let dest = self.place(rel)?;
        let tmp = self.abs(parent(rel)).join(OsStr::from_bytes(
            &self.key.name(file_name(rel), Temp::Symlink),
        ));
        remove_any(self, &tmp, rel)?;
        std::os::unix::fs::symlink(OsStr::from_bytes(target), &tmp)
            .map_err(|e| io_err(rel, "create symlink", e))?;
        let mut guard = TempName(Some(&tmp));
        if self.as_root && (meta.uid.is_some() || meta.gid.is_some()) {
            std::os::unix::fs::lchown(&tmp, meta.uid, meta.gid)
                .map_err(|e| io_err(rel, "set owner of", e))?;
        }
        let mtime = meta.mtime();
        filetime::set_symlink_file_times(&tmp, mtime, mtime)
            .map_err(|e| io_err(rel, "set mtime of", e))?;
        clear_dir(self, &dest, rel)?;
        fs::rename(&tmp, &dest).map_err(|e| io_err(rel, "rename into place", e))?;
        guard.0 = None;
        self.sync_dir(rel)
    }

    /// Makes `rel` a directory (the root is `b""`), removing a non-directory that is there,
    /// and applies owner (as root), xattrs and mode now. The mode keeps owner rwx until
    /// [`Target::set_dir_meta`] sets the exact mode and mtime, once the content is final.
    pub fn mkdir(&self, rel: &[u8], meta: &Meta) -> Result<(), ApplyError> {
        let abs = if rel.is_empty() {
            self.root.clone()
        } else {
            let abs = self.place(rel)?;
            let create = match fs::symlink_metadata(&abs) {
                Ok(m) if m.is_dir() => false,
                Ok(_) => {
                    fs::remove_file(&abs).map_err(|e| io_err(rel, "remove", e))?;
                    true
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => true,
                Err(e) => return Err(io_err(rel, "inspect", e)),
            };
            if create {
                match DirBuilder::new().mode(0o700).create(&abs) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                        return Err(io_err(rel, "create directory", e));
                    }
                    _ => {}
                }
            }
            abs
        };
        let dir = open_dir(&abs).map_err(|e| dir_open_err(rel, e))?;
        apply_owner_xattrs(&dir, meta, self.as_root, rel)?;
        dir.set_permissions(Permissions::from_mode((meta.mode & 0o7777) | 0o700))
            .map_err(|e| io_err(rel, "set mode of", e))
    }

    /// Sets a directory's owner (as root), xattrs, exact mode and mtime: an existing
    /// directory may differ in any of them. Call it after everything inside the directory is
    /// final, children before parents.
    pub fn set_dir_meta(&self, rel: &[u8], meta: &Meta) -> Result<(), ApplyError> {
        let abs = self
            .existing(rel)?
            .ok_or_else(|| io_err(rel, "set metadata of", not_found()))?;
        let mode = Permissions::from_mode(meta.mode & 0o7777);
        match open_dir(&abs) {
            Ok(dir) => {
                apply_owner_xattrs(&dir, meta, self.as_root, rel)?;
                dir.set_permissions(mode)
                    .map_err(|e| io_err(rel, "set mode of", e))?;
                filetime::set_file_handle_times(&dir, None, Some(meta.mtime()))
                    .map_err(|e| io_err(rel, "set mtime of", e))
            }
            // Not readable by us (not root, mode without u+r): by path, after an lstat.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let m = fs::symlink_metadata(&abs).map_err(|e| io_err(rel, "inspect", e))?;
                if !m.is_dir() {
                    return Err(unsafe_path(rel, "is not a directory"));
                }
                set_user_xattrs_by_path(&abs, meta, rel)?;
                fs::set_permissions(&abs, mode).map_err(|e| io_err(rel, "set mode of", e))?;
                filetime::set_file_mtime(&abs, meta.mtime())
                    .map_err(|e| io_err(rel, "set mtime of", e))
            }
            Err(e) => Err(dir_open_err(rel, e)),
        }
    }

    /// Applies owner (as root), xattrs, mode and mtime to the existing regular file `rel`,
    /// whose content is already right (a metadata-only change). `links` is how many paths
    /// of this tree the receiver's manifest says are that inode (1 for a file not linked
    /// within the tree): an inode with more links is shared with something else, maybe
    /// outside the tree, and is never changed in place. `rel` then gets a copy of its own,
    /// with the new metadata, renamed over it.
    pub fn set_file_meta(&self, rel: &[u8], meta: &Meta, links: u64) -> Result<(), ApplyError> {
        Self::check_entry(rel)?;
        let abs = self
            .existing(rel)?
            .ok_or_else(|| io_err(rel, "set metadata of", not_found()))?;
        let mode = Permissions::from_mode(meta.mode & 0o7777);
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&abs);
        let file = match opened {
            Ok(f) => f,
            // Not readable by us (not root, mode without u+r): by path, after an lstat.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                let m = fs::symlink_metadata(&abs).map_err(|e| io_err(rel, "inspect", e))?;
                if !m.is_file() {
                    return Err(unsafe_path(rel, "is not a regular file"));
                }
                if m.nlink() > links {
                    return Err(unsafe_path(
                        rel,
                        "shares its inode with a path outside what this tree links, and cannot be read to be copied",
                    ));
                }
                set_user_xattrs_by_path(&abs, meta, rel)?;
                fs::set_permissions(&abs, mode).map_err(|e| io_err(rel, "set mode of", e))?;
                return filetime::set_file_mtime(&abs, meta.mtime())
                    .map_err(|e| io_err(rel, "set mtime of", e));
            }
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                return Err(unsafe_path(rel, "is a symlink, not a regular file"));
            }
            Err(e) => return Err(io_err(rel, "open", e)),
        };
        let m = file.metadata().map_err(|e| io_err(rel, "inspect", e))?;
        if !m.is_file() {
            return Err(unsafe_path(rel, "is not a regular file"));
        }
        if m.nlink() > links {
            return self.replace_with_copy(rel, &abs, file, meta);
        }
        apply_owner_xattrs(&file, meta, self.as_root, rel)?;
        file.set_permissions(mode)
            .map_err(|e| io_err(rel, "set mode of", e))?;
        filetime::set_file_handle_times(&file, None, Some(meta.mtime()))
            .map_err(|e| io_err(rel, "set mtime of", e))
    }

    /// Gives `rel` (at `abs`, open as `from`) an inode of its own: its content is copied
    /// into a new part file that gets `meta`, is fsynced and renamed over `abs`. The old
    /// inode, with its other links, is not changed.
    fn replace_with_copy(
        &self,
        rel: &[u8],
        abs: &Path,
        mut from: File,
        meta: &Meta,
    ) -> Result<(), ApplyError> {
        let tmp = self.abs(parent(rel)).join(OsStr::from_bytes(
            &self.key.name(file_name(rel), Temp::Copy),
        ));
        remove_any(self, &tmp, rel)?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(|e| io_err(rel, "create a copy of", e))?;
        let mut guard = TempName(Some(&tmp));
        io::copy(&mut from, &mut to).map_err(|e| io_err(rel, "copy", e))?;
        apply_owner_xattrs(&to, meta, self.as_root, rel)?;
        to.set_permissions(Permissions::from_mode(meta.mode & 0o7777))
            .map_err(|e| io_err(rel, "set mode of", e))?;
        filetime::set_file_handle_times(&to, None, Some(meta.mtime()))
            .map_err(|e| io_err(rel, "set mtime of", e))?;
        to.sync_all().map_err(|e| io_err(rel, "fsync", e))?;
        fs::rename(&tmp, abs).map_err(|e| io_err(rel, "rename into place", e))?;
        guard.0 = None;
        self.sync_dir(rel)
    }

    /// Removes the file, symlink or whole directory tree at `rel`, never following symlinks.
    /// Nothing there is not an error.
    pub fn remove(&self, rel: &[u8]) -> Result<(), ApplyError> {
        Self::check_entry(rel)?;
        match self.existing(rel)? {
            Some(abs) => remove_any(self, &abs, rel),
            None => Ok(()),
        }
    }

    /// Makes `rel` a hard link to `existing_rel`, an entry already applied in this tree,
    /// atomically replacing whatever is at `rel`.
    pub fn hard_link(&self, rel: &[u8], existing_rel: &[u8]) -> Result<(), ApplyError> {
        Self::check_entry(existing_rel)?;
        let src = self
            .existing(existing_rel)?
            .ok_or_else(|| io_err(existing_rel, "hard-link to", not_found()))?;
        let src_meta =
            fs::symlink_metadata(&src).map_err(|e| io_err(existing_rel, "hard-link to", e))?;
        if src_meta.is_dir() {
            return Err(io_err(
                existing_rel,
                "hard-link to",
                io::Error::from(io::ErrorKind::IsADirectory),
            ));
        }
        let dest = self.place(rel)?;
        if let Ok(m) = fs::symlink_metadata(&dest) {
            if (m.dev(), m.ino()) == (src_meta.dev(), src_meta.ino()) {
                return Ok(());
            }
        }
        let tmp = self.abs(parent(rel)).join(OsStr::from_bytes(
            &self.key.name(file_name(rel), Temp::Link),
        ));
        remove_any(self, &tmp, rel)?;
        fs::hard_link(&src, &tmp).map_err(|e| io_err(rel, "create hard link", e))?;
        // Also removes `tmp` if `rename` found both names on one inode and did nothing.
        let _guard = TempName(Some(&tmp));
        clear_dir(self, &dest, rel)?;
        fs::rename(&tmp, &dest).map_err(|e| io_err(rel, "rename into place", e))?;
        self.sync_dir(rel)
    }

    /// Reads `len` bytes at `offset` of the regular file `rel` in this tree (to reuse a chunk
    /// the receiver already has). The caller verifies the bytes against the chunk id.
    pub fn read_span(&self, rel: &[u8], offset: u64, len: u32) -> Result<Vec<u8>, ApplyError> {
        Self::check_entry(rel)?;
        let abs = self
            .existing(rel)?
            .ok_or_else(|| io_err(rel, "read", not_found()))?;
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&abs)
            .map_err(|e| io_err(rel, "open for reading", e))?;
        let m = file.metadata().map_err(|e| io_err(rel, "inspect", e))?;
        if !m.is_file() {
            return Err(io_err(
                rel,
                "read",
                io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
            ));
        }
        if offset.saturating_add(u64::from(len)) > m.len() {
            return Err(io_err(
                rel,
                "read",
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("span {offset}+{len} is beyond the end ({} bytes)", m.len()),
                ),
            ));
        }
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| io_err(rel, "read", e))?;
        Ok(buf)
    }

    /// Removes the part file at `rel` (a path from this tree's scan, [`crate::scan::Summary::parts`]),
    /// if it is still there and still one of this receiver's part files.
    pub fn remove_part(&self, rel: &[u8]) -> Result<(), ApplyError> {
        if !self.key.is_part(file_name(rel)) {
            return Ok(());
        }
        Self::check_entry(rel)?;
        match self.existing(rel)? {
            Some(abs) => remove_any(self, &abs, rel),
            None => Ok(()),
        }
    }

    /// Removes the part files (and temporary link names) directly inside the directory
    /// `dir_rel`, left by interrupted transfers. Returns how many were removed. Call it only
    /// when no transfer into that directory is running.
    pub fn cleanup_parts(&self, dir_rel: &[u8]) -> Result<usize, ApplyError> {
        let Some(abs) = self.existing(dir_rel)? else {
            return Ok(0);
        };
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.is_dir() => {}
            Ok(m) if m.file_type().is_symlink() => {
                return Err(unsafe_path(dir_rel, "is a symlink, not a directory"));
            }
            Ok(_) => return Err(unsafe_path(dir_rel, "is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io_err(dir_rel, "inspect", e)),
        }
        let entries = fs::read_dir(&abs).map_err(|e| io_err(dir_rel, "list", e))?;
        let mut removed = 0;
        for entry in entries {
            let entry = entry.map_err(|e| io_err(dir_rel, "list", e))?;
            let name = entry.file_name();
            if self.key.is_part(name.as_bytes()) {
                let rel = crate::manifest::join(dir_rel, name.as_bytes());
                remove_any(self, &entry.path(), &rel)?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// A file being assembled in its part file. Write every chunk (or find it
/// [present](PartFile::present)), then [`finish`](PartFile::finish). Dropping it keeps the
/// part file for a later resume; [`abort`](PartFile::abort) removes it.
#[derive(Debug)]
pub struct PartFile {
    target: Target,
    rel: Vec<u8>,
    node: FileNode,
    offsets: Vec<u64>,
    done: Vec<bool>,
    dest: PathBuf,
    part: PathBuf,
    file: File,
    resumed: bool,
    /// The file already has its final length (set, or written up to the end).
    sized: bool,
}

impl PartFile {
    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The final relative path.
    pub fn rel(&self) -> &[u8] {
        &self.rel
    }

    /// The part file's own path.
    pub fn part_path(&self) -> &Path {
        &self.part
    }

    /// Whether the part file existed already (an earlier attempt at the same content), so
    /// that [`PartFile::present`] is worth calling.
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// Which chunks (by index into the node's chunks) are already correct in the part file.
    /// A resumed part file is read and each chunk span hashed; a hole reads as zeros and so
    /// matches only an all-zero chunk. A fresh part file is not read: it is all holes, so
    /// the zero runs of a sparse file are present (recognised as repeated chunks of the
    /// file's longest chunk length, which is how content-defined chunking cuts long zero
    /// runs), and otherwise only what was written through this handle counts.
    pub fn present(&mut self) -> Result<Vec<bool>, ApplyError> {
        if self.resumed {
            let mut buf = Vec::new();
            for (i, c) in self.node.chunks.iter().enumerate() {
                if self.done[i] {
                    continue;
                }
                buf.resize(c.len as usize, 0);
                self.file
                    .read_exact_at(&mut buf, self.offsets[i])
                    .map_err(|e| io_err(&self.rel, "read part file for", e))?;
                self.done[i] = ChunkId::of(&buf) == c.id;
            }
        } else if let Some(zero) = zero_run_chunk(&self.node) {
            for (done, c) in self.done.iter_mut().zip(&self.node.chunks) {
                *done |= *c == zero;
            }
        }
        Ok(self.done.clone())
    }

    /// Writes `chunk` as chunk `index` at its offset, if its id (computed when it was
    /// verified) and length are that chunk's; nothing is written otherwise. An all-zero
    /// chunk is not written (the file stays sparse), unless a resumed part file holds other
    /// bytes there.
    pub fn write_chunk(&mut self, index: usize, chunk: &Verified) -> Result<(), ApplyError> {
        let data = chunk.bytes();
        let Some(c) = self.node.chunks.get(index) else {
            return Err(ApplyError::NoSuchChunk {
                path: self.rel.clone(),
                index,
                count: self.node.chunks.len(),
            });
        };
        let actual = *chunk.id();
        if actual != c.id || data.len() != c.len as usize {
            return Err(ApplyError::ChunkMismatch {
                path: self.rel.clone(),
                index,
                expected: c.id,
                expected_len: c.len,
                actual,
                actual_len: data.len(),
            });
        }
        if self.done[index] {
            return Ok(());
        }
        let offset = self.offsets[index];
        let mut write = !data.iter().all(|&b| b == 0);
        if !write && self.resumed {
            // An earlier attempt may have been cut off in the middle of writing here.
            let mut old = vec![0; data.len()];
            self.file
                .read_exact_at(&mut old, offset)
                .map_err(|e| io_err(&self.rel, "read part file for", e))?;
            write = old.iter().any(|&b| b != 0);
        }
        if write {
            self.file
                .write_all_at(data, offset)
                .map_err(|e| io_err(&self.rel, "write", e))?;
            self.sized |= offset + data.len() as u64 == self.node.size;
        }
        self.done[index] = true;
        Ok(())
    }

    /// Completes the file: checks that every chunk is in place, applies owner (as root),
    /// xattrs, mode and mtime, fsyncs, and renames the part file onto the final path
    /// (removing a directory tree there first). The directory is fsynced later, once for
    /// all its files, by [`Target::sync_dirs`]. Returns the file's final metadata.
    pub fn finish(self, meta: &Meta) -> Result<fs::Metadata, ApplyError> {
        let missing = self.done.iter().filter(|d| !**d).count();
        if let Some(first) = self.done.iter().position(|d| !*d) {
            return Err(ApplyError::Incomplete {
                path: self.rel,
                missing,
                total: self.done.len(),
                first,
            });
        }
        let rel = &self.rel;
        if !self.sized {
            // Ends in a hole that was not written: give the file its length.
            self.file
                .set_len(self.node.size)
                .map_err(|e| io_err(rel, "size", e))?;
        }
        apply_owner_xattrs(&self.file, meta, self.target.as_root, rel)?;
        self.file
            .set_permissions(Permissions::from_mode(meta.mode & 0o7777))
            .map_err(|e| io_err(rel, "set mode of", e))?;
        // Last: nothing below writes to the file again.
        filetime::set_file_handle_times(&self.file, None, Some(meta.mtime()))
            .map_err(|e| io_err(rel, "set mtime of", e))?;
        self.file.sync_all().map_err(|e| io_err(rel, "fsync", e))?;
        // The tree may have changed since `begin_file`.
        if !self.target.ancestors(rel, false)? {
            return Err(io_err(rel, "rename into place", not_found()));
        }
        // A directory at the destination (a type change) is removed first; renaming a file
        // over one fails, so try the rename before looking.
        if fs::rename(&self.part, &self.dest).is_err() {
            clear_dir(&self.target, &self.dest, rel)?;
            fs::rename(&self.part, &self.dest).map_err(|e| io_err(rel, "rename into place", e))?;
        }
        self.target.sync_dir(rel)?;
        // The stat of the file now at its final path, for the receiver's stat cache.
        self.file.metadata().map_err(|e| io_err(rel, "inspect", e))
    }

    /// Gives up on this file and removes its part file (for errors that make it useless,
    /// such as a full disk).
    pub fn abort(self) -> Result<(), ApplyError> {
        let PartFile {
            rel, part, file, ..
        } = self;
        drop(file);
        match fs::remove_file(&part) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(io_err(&rel, "remove part file for", e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::noise;
    use crate::chunk::{ChunkParams, chunk};
    use std::os::unix::fs::symlink as make_symlink;
    use std::process::Command;

    fn node_of(data: &[u8], mode: u32, mtime_ns: i64) -> FileNode {
        FileNode {
            size: data.len() as u64,
            mode,
            mtime_ns,
            chunks: chunk(data, ChunkParams::default())
                .iter()
                .map(|c| ChunkRef {
                    id: c.id,
                    len: c.len,
                })
                .collect(),
            link: None,
            attrs: None,
        }
    }

    /// `(offset, end)` of every chunk.
    fn spans(node: &FileNode) -> Vec<(usize, usize)> {
        let mut at = 0;
        node.chunks
            .iter()
            .map(|c| {
                let s = (at, at + c.len as usize);
                at = s.1;
                s
            })
            .collect()
    }

    fn meta(mode: u32, mtime_ns: i64) -> Meta {
        Meta {
            mode,
            mtime_ns,
            ..Meta::default()
        }
    }

    fn setup() -> (tempfile::TempDir, Target) {
        let tmp = tempfile::tempdir().unwrap();
        let t = Target::open(tmp.path(), PartKey::from_bytes([1; 32])).unwrap();
        (tmp, t)
    }

    fn at(t: &Target, rel: &[u8]) -> PathBuf {
        t.abs(rel)
    }

    fn part_files(dir: &Path) -> Vec<Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().as_bytes().to_vec())
            .filter(|n| n.starts_with(b".syncd-") && n.ends_with(b".part"))
            .collect()
    }

    /// Assembles `data` at `rel`, writing chunks last to first.
    fn assemble(t: &Target, rel: &[u8], data: &[u8], m: &Meta) {
        let node = node_of(data, m.mode, m.mtime_ns);
        let mut part = t.begin_file(rel, &node).unwrap();
        for (i, (s, e)) in spans(&node).into_iter().enumerate().rev() {
            part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                .unwrap();
        }
        part.finish(m).unwrap();
    }

    fn mtime_ns(m: &fs::Metadata) -> i64 {
        fsmeta::mtime_ns(m)
    }

    #[test]
    fn path_problems() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"", None),
            (b"a", None),
            (b"a/b/c", None),
            (b"a\xff/\xfe", None),
            (b"..a/b..", None),
            (b"/etc/x", Some("absolute")),
            (b"../x", Some("`..`")),
            (b"a/../../x", Some("`..`")),
            (b"a/..", Some("`..`")),
            (b"./a", Some("`.`")),
            (b"a/./b", Some("`.`")),
            (b"a//b", Some("empty")),
            (b"a/", Some("empty")),
            (b"a\0b", Some("NUL")),
            (b"d/.syncd-f.0123456789abcdef.part", None),
        ];
        for &(rel, want) in cases {
            let got = path_problem(rel);
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) if g.contains(w) => {}
                _ => panic!("path {}: got {got:?}, want {want:?}", display_path(rel)),
            }
        }
    }

    #[test]
    fn assembles_a_multi_chunk_file_with_mode_and_mtime() {
        let (_tmp, t) = setup();
        let data = noise(1_500_000, 1);
        let node = node_of(&data, 0o640, 1_600_000_000_123_456_789);
        assert!(node.chunks.len() > 5, "{} chunks", node.chunks.len());
        let rel = b"d/sub/f";
        let mut part = t.begin_file(rel, &node).unwrap();
        assert!(!part.resumed());
        assert_eq!(part.present().unwrap(), vec![false; node.chunks.len()]);
        for (i, (s, e)) in spans(&node).into_iter().enumerate().rev() {
            part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                .unwrap();
        }
        assert!(!at(&t, rel).exists(), "final file exists before finish");
        assert_eq!(part_files(&at(&t, b"d/sub")).len(), 1);
        part.finish(&meta(0o640, node.mtime_ns)).unwrap();

        assert_eq!(fs::read(at(&t, rel)).unwrap(), data);
        let m = fs::symlink_metadata(at(&t, rel)).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o640);
        assert_eq!(mtime_ns(&m), node.mtime_ns);
        assert!(part_files(&at(&t, b"d/sub")).is_empty());
    }

    #[test]
    fn an_empty_file_has_no_chunks() {
        let (_tmp, t) = setup();
        assemble(&t, b"empty", b"", &meta(0o600, 0));
        assert_eq!(fs::read(at(&t, b"empty")).unwrap(), b"");
    }

    #[test]
    fn wrong_chunk_is_refused_and_nothing_written() {
        let (_tmp, t) = setup();
        let data = noise(300_000, 2);
        let node = node_of(&data, 0o644, 0);
        let (s, e) = spans(&node)[0];
        let mut part = t.begin_file(b"f", &node).unwrap();
        let mut wrong = data[s..e].to_vec();
        wrong[7] ^= 1;
        for bad in [wrong.as_slice(), &data[s..e - 1]] {
            match part.write_chunk(0, &Verified::of(bad.to_vec())) {
                Err(ApplyError::ChunkMismatch { path, index: 0, .. }) => assert_eq!(path, b"f"),
                other => panic!("expected ChunkMismatch, got {other:?}"),
            }
        }
        assert!(matches!(
            part.write_chunk(node.chunks.len(), &Verified::of(b"x".to_vec())),
            Err(ApplyError::NoSuchChunk { .. })
        ));
        let name = part_files(t.root()).pop().unwrap();
        let bytes = fs::read(t.root().join(OsStr::from_bytes(&name))).unwrap();
        assert!(bytes.iter().all(|&b| b == 0), "part file was written to");
        match part.finish(&meta(0o644, 0)) {
            Err(ApplyError::Incomplete {
                missing, first: 0, ..
            }) => {
                assert_eq!(missing, node.chunks.len())
            }
            other => panic!("expected Incomplete, got {other:?}"),
        }
        assert!(!at(&t, b"f").exists());
    }

    #[test]
    fn inconsistent_node_is_refused() {
        let (_tmp, t) = setup();
        let mut node = node_of(&noise(100_000, 3), 0o644, 0);
        node.size += 1;
        assert!(matches!(
            t.begin_file(b"f", &node),
            Err(ApplyError::BadNode { .. })
        ));
    }

    #[test]
    fn resume_reports_exactly_the_chunks_written() {
        let (_tmp, t) = setup();
        let data = noise(1_200_000, 4);
        let node = node_of(&data, 0o644, 5);
        let written: Vec<bool> = (0..node.chunks.len()).map(|i| i % 2 == 0).collect();
        let mut part = t.begin_file(b"f", &node).unwrap();
        for (i, (s, e)) in spans(&node).into_iter().enumerate() {
            if written[i] {
                part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                    .unwrap();
            }
        }
        drop(part);
        assert!(!at(&t, b"f").exists());

        let mut part = t.begin_file(b"f", &node).unwrap();
        assert!(part.resumed());
        assert_eq!(part.present().unwrap(), written);
        for (i, (s, e)) in spans(&node).into_iter().enumerate() {
            if !written[i] {
                part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                    .unwrap();
            }
        }
        part.finish(&meta(0o644, 5)).unwrap();
        assert_eq!(fs::read(at(&t, b"f")).unwrap(), data);
    }

    #[test]
    fn a_hard_linked_part_file_is_not_reused() {
        let (_tmp, t) = setup();
        let data = noise(200_000, 9);
        let node = node_of(&data, 0o644, 0);
        drop(t.begin_file(b"f", &node).unwrap());
        let name = part_files(t.root()).pop().unwrap();
        let other = at(&t, b"other");
        fs::hard_link(t.root().join(OsStr::from_bytes(&name)), &other).unwrap();
        let mut part = t.begin_file(b"f", &node).unwrap();
        assert!(!part.resumed());
        for (i, (s, e)) in spans(&node).into_iter().enumerate() {
            part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                .unwrap();
        }
        part.finish(&meta(0o644, 0)).unwrap();
        assert_eq!(fs::read(at(&t, b"f")).unwrap(), data);
        assert!(
            fs::read(&other).unwrap().iter().all(|&b| b == 0),
            "wrote through a link"
        );
    }

    #[test]
    fn resume_rewrites_a_torn_zero_chunk() {
        let (_tmp, t) = setup();
        let mut data = noise(300_000, 5);
        data.extend(vec![0u8; 1 << 20]);
        data.extend(noise(300_000, 6));
        let node = node_of(&data, 0o644, 0);
        let (zi, (zs, _)) = spans(&node)
            .into_iter()
            .enumerate()
            .find(|&(_, (s, e))| data[s..e].iter().all(|&b| b == 0))
            .expect("a zero chunk");
        drop(t.begin_file(b"f", &node).unwrap());
        // An earlier attempt died in the middle of some write over the zero region.
        let name = part_files(t.root()).pop().unwrap();
        let pf = OpenOptions::new()
            .write(true)
            .open(t.root().join(OsStr::from_bytes(&name)))
            .unwrap();
        pf.write_all_at(b"torn", zs as u64 + 10).unwrap();

        let mut part = t.begin_file(b"f", &node).unwrap();
        let present = part.present().unwrap();
        assert!(!present[zi], "a torn zero chunk must not count as present");
        for (i, (s, e)) in spans(&node).into_iter().enumerate() {
            if !present[i] {
                part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                    .unwrap();
            }
        }
        part.finish(&meta(0o644, 0)).unwrap();
        assert_eq!(fs::read(at(&t, b"f")).unwrap(), data);
    }

    #[test]
    fn zeros_stay_sparse() {
        let (_tmp, t) = setup();
        let data = vec![0u8; 64 << 20];
        let node = node_of(&data, 0o644, 0);
        let mut part = t.begin_file(b"sparse", &node).unwrap();
        // A fresh part file is all holes: the zero chunks need not be sent at all.
        let present = part.present().unwrap();
        let missing: Vec<usize> = (0..present.len()).filter(|&i| !present[i]).collect();
        assert!(
            missing.len() <= 1,
            "zero chunks reported missing: {missing:?}"
        );
        for (i, (s, e)) in spans(&node).into_iter().enumerate() {
            if !present[i] {
                part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                    .unwrap();
            }
        }
        part.finish(&meta(0o644, 0)).unwrap();
        let m = fs::symlink_metadata(at(&t, b"sparse")).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < m.len() / 16,
            "{} bytes allocated for a {}-byte file of zeros",
            m.blocks() * 512,
            m.len()
        );
    }

    #[test]
    fn traversal_is_refused_and_nothing_outside_is_touched() {
        let (_tmp, t) = setup();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"keep").unwrap();
        make_symlink(outside.path(), at(&t, b"evil")).unwrap();
        assemble(&t, b"x", b"x", &meta(0o644, 0));
        let node = node_of(b"data", 0o644, 0);
        let m = meta(0o755, 0);
        let paths: &[&[u8]] = &[
            b"../x",
            b"/etc/x",
            b"a/../../x",
            b"evil/f",
            b"evil/sub/f",
            b"evil/keep",
        ];
        for &rel in paths {
            let results = [
                t.begin_file(rel, &node).map(drop),
                t.symlink(rel, b"/etc/passwd", &m),
                t.mkdir(rel, &m),
                t.hard_link(rel, b"x"),
                t.hard_link(b"y", rel),
                t.remove(rel),
                t.set_dir_meta(rel, &m),
                t.set_file_meta(rel, &m, 1),
                t.read_span(rel, 0, 1).map(drop),
                t.cleanup_parts(rel).map(drop),
            ];
            for (op, r) in results.into_iter().enumerate() {
                match r {
                    Err(ApplyError::UnsafePath { path, .. }) => assert_eq!(path, rel),
                    other => panic!("op {op} on {}: {other:?}", display_path(rel)),
                }
            }
        }
        let mut names: Vec<_> = fs::read_dir(outside.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["keep"], "something was created outside the root");
        assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"keep");
        assert!(!at(&t, b"a").exists(), "a/../../x created a/");
        // The final component is never followed either.
        assert!(matches!(
            t.set_dir_meta(b"evil", &m),
            Err(ApplyError::UnsafePath { .. })
        ));
        assert!(matches!(
            t.read_span(b"evil", 0, 1),
            Err(ApplyError::Io { .. })
        ));
    }

    #[test]
    fn type_changes() {
        let (_tmp, t) = setup();
        let outside = tempfile::tempdir().unwrap();
        let m = meta(0o755, 0);
        // File over a directory tree.
        t.mkdir(b"d", &m).unwrap();
        t.mkdir(b"d/sub", &m).unwrap();
        assemble(&t, b"d/sub/f", b"inner", &meta(0o644, 0));
        assemble(&t, b"d", b"now a file", &meta(0o644, 0));
        assert_eq!(fs::read(at(&t, b"d")).unwrap(), b"now a file");
        // Directory over a file.
        t.mkdir(b"d", &m).unwrap();
        assert!(fs::symlink_metadata(at(&t, b"d")).unwrap().is_dir());
        // Symlink over a directory tree.
        assemble(&t, b"d/f", b"inner", &meta(0o644, 0));
        t.symlink(b"d", b"target/elsewhere", &m).unwrap();
        assert_eq!(
            fs::read_link(at(&t, b"d")).unwrap(),
            Path::new("target/elsewhere")
        );
        // File over a symlink to outside: the link is replaced, its target untouched.
        fs::write(outside.path().join("o"), b"outside").unwrap();
        make_symlink(outside.path().join("o"), at(&t, b"l")).unwrap();
        assemble(&t, b"l", b"inside", &meta(0o644, 0));
        assert!(fs::symlink_metadata(at(&t, b"l")).unwrap().is_file());
        assert_eq!(fs::read(outside.path().join("o")).unwrap(), b"outside");
        // Directory over a symlink to a directory outside.
        make_symlink(outside.path(), at(&t, b"l2")).unwrap();
        t.mkdir(b"l2", &m).unwrap();
        assert!(fs::symlink_metadata(at(&t, b"l2")).unwrap().is_dir());
        assert!(outside.path().join("o").exists());
        assert!(part_files(t.root()).is_empty());
    }

    #[test]
    fn remove_does_not_follow_symlinks() {
        let (_tmp, t) = setup();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"keep").unwrap();
        t.mkdir(b"tree", &meta(0o755, 0)).unwrap();
        t.mkdir(b"tree/sub", &meta(0o755, 0)).unwrap();
        assemble(&t, b"tree/sub/f", b"f", &meta(0o644, 0));
        make_symlink(outside.path(), at(&t, b"tree/sub/out")).unwrap();
        make_symlink(outside.path(), at(&t, b"link")).unwrap();
        t.remove(b"tree").unwrap();
        t.remove(b"link").unwrap();
        t.remove(b"never/was").unwrap();
        assert!(!at(&t, b"tree").exists());
        assert!(fs::symlink_metadata(at(&t, b"link")).is_err());
        assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"keep");
        assert!(matches!(t.remove(b""), Err(ApplyError::UnsafePath { .. })));
    }

    #[test]
    fn non_utf8_names() {
        let (_tmp, t) = setup();
        t.mkdir(b"d\xff", &meta(0o750, 0)).unwrap();
        assemble(&t, b"d\xff/f\xfe", b"bytes", &meta(0o644, 0));
        t.symlink(b"d\xff/l\x80", b"f\xfe", &meta(0o777, 0))
            .unwrap();
        t.hard_link(b"h\xc3", b"d\xff/f\xfe").unwrap();
        t.set_dir_meta(b"d\xff", &meta(0o750, 7)).unwrap();
        let d = t.root().join(OsStr::from_bytes(b"d\xff"));
        assert_eq!(
            fs::read(d.join(OsStr::from_bytes(b"f\xfe"))).unwrap(),
            b"bytes"
        );
        assert_eq!(
            fs::read_link(d.join(OsStr::from_bytes(b"l\x80"))).unwrap(),
            Path::new(OsStr::from_bytes(b"f\xfe"))
        );
        let err = t
            .begin_file(b"d\xff/../x", &node_of(b"", 0, 0))
            .unwrap_err();
        assert!(err.to_string().contains("d\\xff/../x"), "{err}");
    }

    #[test]
    fn hard_link_shares_the_inode() {
        let (_tmp, t) = setup();
        assemble(&t, b"a", b"linked", &meta(0o644, 0));
        assemble(&t, b"b/c", b"old", &meta(0o644, 0));
        t.hard_link(b"b/c", b"a").unwrap();
        t.hard_link(b"b/c", b"a").unwrap(); // already linked: nothing to do
        let ino = |rel: &[u8]| fs::symlink_metadata(at(&t, rel)).unwrap().ino();
        assert_eq!(ino(b"a"), ino(b"b/c"));
        assert_eq!(fs::read(at(&t, b"b/c")).unwrap(), b"linked");
        assert!(part_files(&at(&t, b"b")).is_empty());
        assert!(matches!(
            t.hard_link(b"z", b"missing"),
            Err(ApplyError::Io { .. })
        ));
    }

    /// Unmounts on drop, so a failing test does not leave a mount behind.
    struct Mount(PathBuf);

    impl Drop for Mount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }

    #[test]
    fn disk_full_is_no_space_and_abort_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mnt)
            .output()
            .unwrap();
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr);
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("cannot mount a tmpfs for the disk-full test: {msg}");
            }
            eprintln!("skipping disk-full test: cannot mount a tmpfs (needs root): {msg}");
            return;
        }
        let _mount = Mount(mnt.clone());
        let t = Target::open(&mnt, PartKey::from_bytes([1; 32])).unwrap();
        let data = noise(4 << 20, 7);
        let node = node_of(&data, 0o644, 0);
        let mut part = t.begin_file(b"big", &node).unwrap();
        let mut failure = None;
        for (i, (s, e)) in spans(&node).into_iter().enumerate() {
            if let Err(e) = part.write_chunk(i, &Verified::of(data[s..e].to_vec())) {
                failure = Some(e);
                break;
            }
        }
        match failure {
            Some(e @ ApplyError::NoSpace { .. }) => {
                assert_eq!(e.to_string(), "no space left on device while writing big")
            }
            other => panic!("expected NoSpace, got {other:?}"),
        }
        part.abort().unwrap();
        let left: Vec<_> = fs::read_dir(&mnt).unwrap().collect();
        assert!(left.is_empty(), "left behind: {left:?}");
    }

    #[test]
    fn ownership_as_root() {
        let (_tmp, t) = setup();
        if !t.as_root {
            eprintln!("skipping ownership test: not running as root");
            return;
        }
        let m = Meta {
            mode: 0o4755,
            mtime_ns: 0,
            uid: Some(1234),
            gid: Some(5678),
            xattrs: vec![(b"trusted.syncd".to_vec(), b"t".to_vec())],
        };
        t.mkdir(b"d", &m).unwrap();
        assemble(&t, b"d/f", b"owned", &m);
        t.symlink(b"d/l", b"f", &m).unwrap();
        for rel in [&b"d"[..], b"d/f", b"d/l"] {
            let got = fs::symlink_metadata(at(&t, rel)).unwrap();
            assert_eq!(
                (got.uid(), got.gid()),
                (1234, 5678),
                "{}",
                display_path(rel)
            );
        }
        // The set-uid bit survives the chown that precedes it.
        let f = fs::symlink_metadata(at(&t, b"d/f")).unwrap();
        assert_eq!(f.mode() & 0o7777, 0o4755);
        match xattr::get(at(&t, b"d/f"), "trusted.syncd") {
            Ok(v) => assert_eq!(v.as_deref(), Some(&b"t"[..])),
            Err(e) if is_unsupported(&e) => {}
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn directory_meta_is_applied_last() {
        let (_tmp, t) = setup();
        t.mkdir(b"ro", &meta(0o555, 0)).unwrap();
        // Still writable until set_dir_meta, even when not root.
        assemble(&t, b"ro/f", b"x", &meta(0o644, 0));
        let when = 1_500_000_000_000_000_001;
        t.set_dir_meta(b"ro", &meta(0o555, when)).unwrap();
        t.set_dir_meta(b"", &meta(0o700, when)).unwrap();
        let m = fs::symlink_metadata(at(&t, b"ro")).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o555);
        assert_eq!(mtime_ns(&m), when);
        assert_eq!(mtime_ns(&fs::metadata(t.root()).unwrap()), when);
        fs::set_permissions(at(&t, b"ro"), Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn metadata_round_trips_through_meta_read() {
        let (_tmp, t) = setup();
        let src = at(&t, b"src");
        fs::write(&src, b"content").unwrap();
        fs::set_permissions(&src, Permissions::from_mode(0o640)).unwrap();
        let xattrs = match xattr::set(&src, "user.syncd.test", b"\x00value\xff") {
            Ok(()) => true,
            Err(e) if is_unsupported(&e) => false,
            Err(e) => panic!("{e}"),
        };
        filetime::set_file_mtime(&src, FileTime::from_unix_time(1_234_567_890, 42)).unwrap();
        let m = Meta::read(&src).unwrap();
        assert_eq!(m.mode, 0o640);
        assert_eq!(m.mtime_ns, 1_234_567_890_000_000_042);
        if xattrs {
            assert!(
                m.xattrs
                    .contains(&(b"user.syncd.test".to_vec(), b"\x00value\xff".to_vec()))
            );
        }
        assemble(&t, b"dst", b"content", &m);
        let mut back = Meta::read(&at(&t, b"dst")).unwrap();
        // Security labels and the like are the destination's own.
        back.xattrs.retain(|(n, _)| n.starts_with(b"user."));
        let mut want = m.clone();
        want.xattrs.retain(|(n, _)| n.starts_with(b"user."));
        assert_eq!(back, want);

        // A metadata-only change in place.
        let changed = meta(0o600, 99);
        t.set_file_meta(b"dst", &changed, 1).unwrap();
        let got = Meta::read(&at(&t, b"dst")).unwrap();
        assert_eq!((got.mode, got.mtime_ns), (0o600, 99));
        assert_eq!(fs::read(at(&t, b"dst")).unwrap(), b"content");
    }

    #[test]
    fn cleanup_removes_only_part_files() {
        let (_tmp, t) = setup();
        let node = node_of(&noise(50_000, 8), 0o644, 0);
        drop(t.begin_file(b"d/a", &node).unwrap());
        drop(t.begin_file(b"d/b", &node).unwrap());
        assemble(&t, b"d/keep", b"keep", &meta(0o644, 0));
        assert_eq!(t.cleanup_parts(b"d").unwrap(), 2);
        assert_eq!(t.cleanup_parts(b"d").unwrap(), 0);
        assert_eq!(t.cleanup_parts(b"missing").unwrap(), 0);
        let names: Vec<_> = fs::read_dir(at(&t, b"d"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["keep"]);
    }

    #[test]
    fn read_span_reads_existing_bytes_only() {
        let (_tmp, t) = setup();
        assemble(&t, b"d/f", b"0123456789", &meta(0o644, 0));
        assert_eq!(t.read_span(b"d/f", 2, 3).unwrap(), b"234");
        assert_eq!(t.read_span(b"d/f", 10, 0).unwrap(), b"");
        assert!(matches!(
            t.read_span(b"d/f", 8, 3),
            Err(ApplyError::Io { .. })
        ));
        assert!(matches!(
            t.read_span(b"d/f", u64::MAX, u32::MAX),
            Err(ApplyError::Io { .. })
        ));
        assert!(matches!(
            t.read_span(b"d", 0, 1),
            Err(ApplyError::Io { .. })
        ));
        assert!(matches!(
            t.read_span(b"nope", 0, 1),
            Err(ApplyError::Io { .. })
        ));
    }
}
