//! Path checks: a relative path from the network is refused when it is absolute, has an
//! empty, `.` or `..` component or a NUL byte, and every ancestor of a path the target
//! touches must be a real directory (`lstat`, component by component, remembered per
//! session).

use super::*;

/// Why a relative path from the network is refused, or `None` if it is a plain relative
/// path (the empty path is the root). Ancestors are checked separately, against the disk.
pub(super) fn path_problem(rel: &[u8]) -> Option<&'static str> {
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

impl Target {
    /// Checks every ancestor of `rel` (not `rel` itself) is a real directory, creating
    /// missing ones (mode 0755) if `create`. Returns false if one is missing and not created.
    pub(super) fn ancestors(&self, rel: &[u8], create: bool) -> Result<bool, ApplyError> {
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

    pub(super) fn check(rel: &[u8]) -> Result<(), ApplyError> {
        match path_problem(rel) {
            Some(reason) => Err(unsafe_path(rel, reason)),
            None => Ok(()),
        }
    }

    pub(super) fn check_entry(rel: &[u8]) -> Result<(), ApplyError> {
        if rel.is_empty() {
            return Err(unsafe_path(rel, "the root itself is not an entry"));
        }
        Self::check(rel)
    }

    /// Validates a non-root `rel` and creates its missing ancestors; returns its path.
    pub(super) fn place(&self, rel: &[u8]) -> Result<PathBuf, ApplyError> {
        Self::check_entry(rel)?;
        self.ancestors(rel, true)?;
        Ok(self.abs(rel))
    }

    /// Validates `rel` (the root allowed) and checks its ancestors; `None` if one is missing.
    pub(super) fn existing(&self, rel: &[u8]) -> Result<Option<PathBuf>, ApplyError> {
        Self::check(rel)?;
        Ok(self.ancestors(rel, false)?.then(|| self.abs(rel)))
    }
}
