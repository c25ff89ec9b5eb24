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

use crate::chunk::{ChunkId, Chunked, Verified};
use crate::fsmeta;
use crate::lock::lock;
use crate::manifest::{
    ChunkRef, FileNode, Hash, attrs_hash, check_name, display_path, file_name, hashed_xattr, parent,
};
use crate::partname::{PartKey, Temp};

mod attrs;
mod guard;
mod part;
#[cfg(test)]
mod tests;

pub use attrs::{Meta, attrs_after};
pub use part::{PartFile, Sealed, flush_together};

use attrs::apply_owner_xattrs;

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

impl ApplyError {
    /// The entry was not there (any more): a later change of the same session replaced or
    /// removed it meanwhile.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApplyError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The filesystems one pass has flushed with `syncfs(2)`, so that each gets one call
/// ([`flush_together`], [`Target::sync_dirs`]).
#[derive(Default)]
struct Flushed(Vec<(u64, bool)>);

impl Flushed {
    /// Whether `file`'s filesystem is flushed: the first file of each filesystem makes the
    /// `syncfs` call, the others share its outcome. `false` (the call failed, or the
    /// filesystem is unknown) means the caller fsyncs `file` itself.
    fn syncfs(&mut self, file: &File) -> bool {
        let Ok(dev) = file.metadata().map(|m| m.dev()) else {
            return false;
        };
        if let Some(&(_, ok)) = self.0.iter().find(|(d, _)| *d == dev) {
            return ok;
        }
        let ok = rustix::fs::syncfs(file).is_ok();
        self.0.push((dev, ok));
        ok
    }
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

    /// Forgets which directories were checked: something was removed.
    fn forget_dirs(&self) {
        lock(&self.known_dirs).clear();
    }

    /// Makes every rename since the last call durable. Call it before reporting a transfer
    /// complete: until then a crash may lose a rename (the file is then absent or old, never
    /// torn: its data was durable before the rename). One directory is fsynced; several
    /// get one `syncfs(2)` per filesystem they are on (the journal commit that makes their
    /// entries durable is the same for all of them), falling back to an fsync per
    /// directory where `syncfs` fails.
    pub fn sync_dirs(&self) -> Result<(), ApplyError> {
        let dirs: Vec<Vec<u8>> = lock(&self.unsynced).drain().collect();
        let mut flushed = Flushed::default();
        for dir in &dirs {
            let d = open_dir(&self.abs(dir)).map_err(|e| io_err(dir, "open directory", e))?;
            if dirs.len() > 1 && flushed.syncfs(&d) {
                continue;
            }
            d.sync_all()
                .map_err(|e| io_err(dir, "fsync directory", e))?;
        }
        Ok(())
    }

    /// Records that `rel`'s directory needs an fsync; [`Target::sync_dirs`] does it once per
    /// directory instead of once per file.
    fn sync_dir(&self, rel: &[u8]) -> Result<(), ApplyError> {
        lock(&self.unsynced).insert(parent(rel).to_vec());
        Ok(())
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
