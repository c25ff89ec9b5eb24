//! Metadata on the receiver: [`Meta`] (mode, mtime, owner, xattrs), applying it to files,
//! directories and symlinks (owner and non-`user.*` xattrs only as root), the attributes
//! digest read back after applying, and a metadata-only change that becomes a copy when
//! the inode has links the tree does not account for.

use super::*;

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

    pub(super) fn mtime(&self) -> FileTime {
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
pub(super) fn applies_xattr(name: &[u8], as_root: bool) -> bool {
    as_root || name.starts_with(b"user.")
}

/// Applies ownership (as root) and xattrs to an open file or directory. The entry ends with
/// exactly the source's xattrs among those this process applies: one it has and the source
/// lacks is removed, such as an ACL a new entry inherited from its directory's default ACL,
/// or an attribute an older version of the file had. `security.*` labels other than file
/// capabilities are left to the receiver's policy unless the source has them. So the
/// entry's xattrs that [`crate::manifest::hashed_xattr`] covers end equal to the source's.
pub(super) fn apply_owner_xattrs(
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
pub(super) fn set_user_xattrs_by_path(
    abs: &Path,
    meta: &Meta,
    rel: &[u8],
) -> Result<(), ApplyError> {
    for (name, value) in meta.xattrs.iter().filter(|(n, _)| applies_xattr(n, false)) {
        match xattr::set(abs, OsStr::from_bytes(name), value) {
            Err(e) if is_unsupported(&e) => break,
            r => r.map_err(|e| io_err(rel, "set extended attribute of", e))?,
        }
    }
    Ok(())
}

impl Target {
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
    pub(super) fn replace_with_copy(
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
}
