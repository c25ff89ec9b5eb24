//! Reading a filesystem entry's metadata, written once: extended attributes, the
//! stat-cache fields, nanosecond timestamps, a filesystem's free space, and whether this
//! process runs as root.
//!
//! Every module that reads metadata ([`crate::scan`], [`crate::apply`], [`crate::push`])
//! comes here; this module depends on none of them (only on the plain
//! [`Stat`](crate::manifest::store::Stat) record it fills), so no import circle runs
//! through it. It never writes.

use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::manifest::store::Stat;

/// Nanoseconds in a second.
pub const NS: i64 = 1_000_000_000;

/// Seconds and nanoseconds (as `stat` gives them) as nanoseconds since the epoch,
/// saturating far outside any real timestamp.
pub fn ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(NS).saturating_add(nsec)
}

/// The modification time of `m` in nanoseconds since the epoch.
pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    ns(m.mtime(), m.mtime_nsec())
}

/// The stat-cache fields of a file's metadata.
pub fn stat_of(m: &std::fs::Metadata) -> Stat {
    Stat {
        size: m.size(),
        mtime_ns: mtime_ns(m),
        ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        ino: m.ino(),
    }
}

/// The xattrs of `path` (not following a symlink), sorted by name. A filesystem without
/// xattr support has none; an attribute removed while it is listed is left out.
pub fn read_xattrs(path: &Path) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    collect_xattrs(xattr::list(path), |n| xattr::get(path, n))
}

/// [`read_xattrs`] of an open file.
pub fn file_xattrs(f: &File) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    use xattr::FileExt as _;
    collect_xattrs(f.list_xattr(), |n| f.get_xattr(n))
}

fn collect_xattrs(
    names: std::io::Result<xattr::XAttrs>,
    get: impl Fn(&OsStr) -> std::io::Result<Option<Vec<u8>>>,
) -> std::io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match names {
        Ok(names) => names,
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for name in names {
        match get(&name) {
            Ok(Some(value)) => out.push((name.as_bytes().to_vec(), value)),
            Ok(None) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => {}
            Err(e) => return Err(e),
        }
    }
    out.sort();
    Ok(out)
}

/// Bytes available to unprivileged users on the filesystem of `path` (`statvfs`:
/// `f_bavail × f_frsize`), or `None` when it cannot be read.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let v = rustix::fs::statvfs(path).ok()?;
    Some(v.f_bavail.saturating_mul(v.f_frsize))
}

/// Whether this process runs with effective uid 0 (read from `/proc/self/status`, since
/// `geteuid` is an `unsafe` FFI call). Anything unreadable counts as "not root".
pub fn running_as_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        == Some("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_joins_and_saturates() {
        assert_eq!(ns(0, 0), 0);
        assert_eq!(ns(1, 5), NS + 5);
        assert_eq!(ns(-1, 999_999_999), -1);
        assert_eq!(ns(i64::MAX, 0), i64::MAX);
    }

    #[test]
    fn stat_of_matches_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let m = std::fs::metadata(&p).unwrap();
        let s = stat_of(&m);
        assert_eq!(s.size, 3);
        assert_eq!(s.ino, m.ino());
        assert_eq!(s.mtime_ns, m.mtime() * NS + m.mtime_nsec());
        assert_eq!(s.ctime_ns, m.ctime() * NS + m.ctime_nsec());
    }
}
