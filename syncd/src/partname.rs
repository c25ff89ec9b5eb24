//! Names of the receiver's temporary files (part files), and how it recognises its own.
//!
//! A part file sits next to the file it becomes (so that the final rename is atomic and
//! within one directory and one filesystem) and is named `.syncd-<name>.<tag>.part`. The
//! 16-hex tag is a keyed BLAKE3 hash of the kind of temporary and of the visible name, under
//! a key only this receiver has ([`PartKey`], a random 32-byte file in its home). So a name
//! is recognised as a part file only if this receiver made it: a user's file that merely
//! looks like one (`.syncd-foo.0123456789abcdef.part`) is an ordinary file, scanned, sent,
//! received and deleted like any other. Nothing here does IO except [`PartKey::load`].

use std::path::Path;

/// Every temporary name starts with this prefix.
pub const PART_PREFIX: &[u8] = b".syncd-";

/// Every temporary name ends with this suffix.
pub const PART_SUFFIX: &[u8] = b".part";

/// Hex digits of the tag that follows the name.
const TAG_HEX: usize = 16;

/// Longest file name Linux filesystems accept.
const NAME_MAX: usize = 255;

/// What a temporary name stands for; each kind has its own tag, so the temporaries of one
/// final name never collide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temp {
    /// A file being assembled.
    File,
    /// A symlink about to be renamed into place.
    Symlink,
    /// A hard link about to be renamed into place.
    Link,
    /// A copy of a shared inode that gets new metadata.
    Copy,
}

const KINDS: [Temp; 4] = [Temp::File, Temp::Symlink, Temp::Link, Temp::Copy];

/// The receiver's key for naming and recognising its part files.
#[derive(Clone, PartialEq, Eq)]
pub struct PartKey([u8; 32]);

impl std::fmt::Debug for PartKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PartKey(..)")
    }
}

impl PartKey {
    /// The key file's name inside a home directory.
    pub const FILE: &'static str = "part.key";

    /// A key from its 32 bytes (tests, and [`PartKey::load`]).
    pub fn from_bytes(b: [u8; 32]) -> PartKey {
        PartKey(b)
    }

    /// Loads the key of `home`, creating it (32 random bytes, mode 0600) if missing.
    pub fn load(home: &Path) -> std::io::Result<PartKey> {
        use std::io::{Read, Write};
        use std::os::unix::fs::OpenOptionsExt;
        let path = home.join(Self::FILE);
        let mut key = [0u8; 32];
        match std::fs::File::open(&path) {
            Ok(mut f) => {
                f.read_exact(&mut key).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
                })?;
                return Ok(PartKey(key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e}", path.display()),
                ));
            }
        }
        std::fs::create_dir_all(home)?;
        std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
        // Written under a temporary name and renamed, so that two processes starting at
        // once agree on one key (the second rename wins, and both re-read it).
        let tmp = home.join(format!("{}.{}", Self::FILE, std::process::id()));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
        if std::fs::hard_link(&tmp, &path).is_err() {
            // Someone else made it first: theirs is the key.
            let _ = std::fs::remove_file(&tmp);
            return Self::load(home);
        }
        let _ = std::fs::remove_file(&tmp);
        Ok(PartKey(key))
    }

    fn tag(&self, kind: Temp, head: &[u8]) -> [u8; TAG_HEX] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(&[kind as u8]);
        h.update(head);
        hex(h.finalize().as_bytes())
    }

    /// The temporary name of `kind` for the final name `name`. Names too long to fit are
    /// shortened and told apart by a hash of the whole name; the result is at most 255
    /// bytes.
    pub fn name(&self, name: &[u8], kind: Temp) -> Vec<u8> {
        let fixed = PART_PREFIX.len() + 1 + TAG_HEX + PART_SUFFIX.len();
        let mut head = Vec::with_capacity(NAME_MAX);
        if name.len() + fixed <= NAME_MAX {
            head.extend_from_slice(name);
        } else {
            let keep = NAME_MAX - fixed - 1 - TAG_HEX;
            head.extend_from_slice(&name[..keep]);
            head.push(b'~');
            head.extend_from_slice(&hex(blake3::hash(name).as_bytes()));
        }
        let mut out = Vec::with_capacity(NAME_MAX);
        out.extend_from_slice(PART_PREFIX);
        out.extend_from_slice(&head);
        out.push(b'.');
        out.extend_from_slice(&self.tag(kind, &head));
        out.extend_from_slice(PART_SUFFIX);
        out
    }

    /// Whether `name` (one path component) is a temporary name made with this key.
    pub fn is_part(&self, name: &[u8]) -> bool {
        let Some(rest) = name
            .strip_prefix(PART_PREFIX)
            .and_then(|r| r.strip_suffix(PART_SUFFIX))
        else {
            return false;
        };
        let Some(head_len) = rest.len().checked_sub(TAG_HEX + 1) else {
            return false;
        };
        let (head, dot_tag) = rest.split_at(head_len);
        let (dot, tag) = dot_tag.split_at(1);
        dot == b"." && !head.is_empty() && KINDS.iter().any(|&k| self.tag(k, head) == tag)
    }
}

/// The first 16 hex digits of a hash.
fn hex(hash: &[u8; 32]) -> [u8; TAG_HEX] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; TAG_HEX];
    for (i, b) in hash[..TAG_HEX / 2].iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_recognised_only_under_their_key() {
        let k = PartKey::from_bytes([7; 32]);
        let other = PartKey::from_bytes([8; 32]);
        for name in [
            &b"f"[..],
            b"\xff.x",
            &[b'n'; 255],
            b"a.part",
            b".syncd-x.part",
        ] {
            for kind in KINDS {
                let p = k.name(name, kind);
                assert!(p.len() <= NAME_MAX);
                assert!(k.is_part(&p), "{p:?}");
                assert!(!other.is_part(&p), "another receiver's key does not match");
            }
            assert_ne!(k.name(name, Temp::File), k.name(name, Temp::Symlink));
        }
        let long = vec![b'n'; 255];
        let mut long2 = long.clone();
        long2[254] = b'm';
        assert_ne!(k.name(&long, Temp::File), k.name(&long2, Temp::File));
        for name in [
            &b".syncd-f.0123456789abcdef.part"[..],
            b".syncd-f.part",
            b".syncd-.0123456789abcdef.part",
            b"f",
        ] {
            assert!(
                !k.is_part(name),
                "a user's name that only looks like a part"
            );
        }
    }

    #[test]
    fn the_key_is_created_once_and_kept() {
        let home = tempfile::tempdir().unwrap();
        let a = PartKey::load(home.path()).unwrap();
        let b = PartKey::load(home.path()).unwrap();
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.path().join(PartKey::FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
