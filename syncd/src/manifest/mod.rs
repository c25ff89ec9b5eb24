//! The merkle manifest: a hash tree shaped like the directory tree.
//!
//! Every entry of a tree is a [`Node`] keyed by its relative path (raw bytes, `/`-separated,
//! the root is the empty path). A node's [`Hash`] is the BLAKE3 of its canonical encoding:
//! - a file covers its kind, size, mode, mtime and ordered chunk ids and lengths, and, for
//!   a hard link, the path of the first entry of the tree that shares its inode (see
//!   [`FileNode::link`]);
//! - a symlink covers its target bytes;
//! - a directory covers its mode and its sorted `(name, kind, hash)` children;
//! - each of them covers its attributes digest when it has one ([`attrs_hash`]): owner,
//!   group and xattrs (ACLs included) when the scan preserves owners (it runs as root), only
//!   `user.*` xattrs otherwise.
//!
//! So the root hash summarises the whole tree, and [`diff`] descends only where hashes
//! differ: its cost grows with the number of changes (times depth and directory fan-out),
//! not with the size of the tree.
//!
//! Deliberately absent from the hash: directory mtimes (any write inside a directory changes
//! them, so they would make every ancestor of a change differ), and `security.*` labels
//! other than file capabilities (they belong to the receiving host's policy). Links to
//! inodes outside the tree are not part of the tree either: a file whose other links all
//! lie outside it is a plain file.
//!
//! This module is sans-IO. [`store`] persists manifests in redb and is the only part that
//! does IO; it implements [`Nodes`] so that [`diff`] runs over stored manifests without
//! loading them whole.

pub mod store;

use std::collections::BTreeMap;
use std::fmt;

use crate::chunk::ChunkId;
use crate::wire::{Reader, Short};

mod attrs;
mod diff;
mod encode;
mod path;

pub use attrs::{attrs_hash, hashed_xattr};
pub use diff::{Change, ChangeKind, DiffError, Nodes, Shape, Tree, change_of, diff};
pub(crate) use encode::{ATTRS_FLAG, encode_attrs};
pub use encode::{decode_listing, encode_symlink, read_attrs};
pub use path::{check_name, check_path, component_order, display_path, file_name, join, parent};

/// Hash of an encoded node.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Lower-case hex, 64 characters.
    pub fn to_hex(&self) -> String {
        self.to_string()
    }

    /// The first 8 bytes, as directory listings on the wire carry them.
    pub fn short(&self) -> ShortHash {
        let mut s = [0u8; 8];
        s.copy_from_slice(&self.0[..8]);
        ShortHash(s)
    }
}

/// The first 8 bytes of a [`Hash`]: enough to tell a changed child from an unchanged one
/// (a chance collision, 2^-64 per compared child, cannot go unnoticed: the receiver's root
/// would not equal the sender's), a quarter of the bytes of a whole hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ShortHash(pub [u8; 8]);

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", &self.to_string()[..12])
    }
}

/// What an entry is. Special files (sockets, fifos, devices) are never in a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A regular file.
    File,
    /// A symbolic link (never followed).
    Symlink,
    /// A directory.
    Dir,
}

impl Kind {
    /// The kind's tag in encodings.
    pub(crate) fn tag(self) -> u8 {
        match self {
            Kind::File => 1,
            Kind::Symlink => 2,
            Kind::Dir => 3,
        }
    }
    /// The kind of an encoding's tag.
    pub(crate) fn from_tag(tag: u8) -> Option<Kind> {
        match tag {
            1 => Some(Kind::File),
            2 => Some(Kind::Symlink),
            3 => Some(Kind::Dir),
            _ => None,
        }
    }
    /// A short lower-case name: `file`, `symlink`, `dir`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::File => "file",
            Kind::Symlink => "symlink",
            Kind::Dir => "dir",
        }
    }
}

/// A chunk of a file, in file order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk bytes.
    pub id: ChunkId,
    /// Chunk length in bytes.
    pub len: u32,
}

/// A directory entry as its parent sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name: raw bytes, never empty, never `.` or `..`, no `/` and no NUL.
    pub name: Vec<u8>,
    /// What the child is.
    pub kind: Kind,
    /// The child's node hash.
    pub hash: Hash,
}

/// A file's identity: what [`Node::File`] covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileNode {
    /// Size in bytes; equals the sum of chunk lengths.
    pub size: u64,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
    /// For a hard link: the first path of the tree (in component order, see
    /// [`component_order`]) that is the same inode, when that is another path. The first
    /// path itself, and a file with no other link in the tree, have none. So two trees
    /// compare equal only if their files are linked the same way.
    pub link: Option<Vec<u8>>,
    /// Owner, group and xattrs ([`attrs_hash`]).
    pub attrs: Option<Hash>,
}

/// One entry of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A regular file.
    File(FileNode),
    /// A symlink and its target bytes.
    Symlink {
        /// The target, unresolved.
        target: Vec<u8>,
        /// Owner and group ([`attrs_hash`]; a symlink's xattrs are not copied).
        attrs: Option<Hash>,
    },
    /// A directory and its children sorted by name.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Children, strictly ascending by name.
        entries: Vec<Entry>,
        /// Owner, group and xattrs ([`attrs_hash`]).
        attrs: Option<Hash>,
    },
}

/// Why bytes do not decode to a node, or a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended before the node did.
    #[error("node encoding is truncated")]
    Truncated,
    /// Bytes remain after the node.
    #[error("node encoding has {0} trailing bytes")]
    Trailing(usize),
    /// The kind tag is unknown.
    #[error("unknown node kind tag {0}")]
    BadTag(u8),
    /// A file's chunk lengths do not add up to its size, or a chunk is empty.
    #[error("file size {size} does not match its chunks ({sum} bytes)")]
    SizeMismatch {
        /// Declared size.
        size: u64,
        /// Sum of chunk lengths.
        sum: u64,
    },
    /// Directory entries are not strictly ascending.
    #[error("directory entries are not sorted or not unique")]
    Unsorted,
    /// A stored record's hash does not match its node.
    #[error("stored hash does not match the node")]
    HashMismatch,
    /// An entry name is not a single path component.
    #[error("invalid entry name {0:?}")]
    BadName(String),
}

#[cfg(test)]
pub(crate) mod tests;
