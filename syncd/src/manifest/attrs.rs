//! The attributes digest: which xattrs a tree covers, and the hash of owner + xattrs.

use super::*;

/// Whether xattr `name` is part of an entry's attributes ([`attrs_hash`]): with `owners`
/// (the scan runs as root, and so does a receiver that preserves them) every xattr but the
/// `security.*` labels, which belong to the receiving host's policy, except file
/// capabilities; without, only `user.*`, the namespace anyone may write. The receiver makes
/// exactly this set equal to the source's ([`crate::apply`]).
pub fn hashed_xattr(name: &[u8], owners: bool) -> bool {
    if owners {
        !name.starts_with(b"security.") || name == b"security.capability"
    } else {
        name.starts_with(b"user.")
    }
}

/// The attributes digest of an entry: `owner` is `Some((uid, gid))` when owners are
/// preserved, and `xattrs` are all its xattrs (those [`hashed_xattr`] leaves out are
/// skipped). `None` when there is nothing to cover: no owner and no hashed xattr.
pub fn attrs_hash(owner: Option<(u32, u32)>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Option<Hash> {
    let mut kept: Vec<&(Vec<u8>, Vec<u8>)> = xattrs
        .iter()
        .filter(|(n, _)| hashed_xattr(n, owner.is_some()))
        .collect();
    if owner.is_none() && kept.is_empty() {
        return None;
    }
    kept.sort();
    let mut h = blake3::Hasher::new();
    h.update(b"syncd attrs 1");
    match owner {
        Some((uid, gid)) => {
            h.update(&[1]);
            h.update(&uid.to_le_bytes());
            h.update(&gid.to_le_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
    h.update(&(kept.len() as u32).to_le_bytes());
    for (n, v) in kept {
        h.update(&(n.len() as u32).to_le_bytes());
        h.update(n);
        h.update(&(v.len() as u32).to_le_bytes());
        h.update(v);
    }
    Some(Hash(*h.finalize().as_bytes()))
}
