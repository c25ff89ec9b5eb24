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

/// Refuses names that are not a single, plain path component.
pub fn check_name(name: &[u8]) -> Result<(), DecodeError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(DecodeError::BadName(display_path(name)));
    }
    Ok(())
}

/// Refuses relative paths that are not `/`-joined plain components (so also the empty
/// path, which is the root and never a file).
pub fn check_path(path: &[u8]) -> Result<(), DecodeError> {
    for name in path.split(|&b| b == b'/') {
        check_name(name).map_err(|_| DecodeError::BadName(display_path(path)))?;
    }
    Ok(())
}

/// Orders paths component by component, so that a directory is directly followed by its
/// subtree: names never contain NUL, so comparing with `/` mapped to NUL does exactly that.
/// Scans walk in this order, and [`FileNode::link`] names the first path of an inode in it.
pub fn component_order(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let map = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.iter().map(map).cmp(b.iter().map(map))
}

impl FileNode {
    /// The canonical encoding of [`Node::File`] holding this.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let tag_at = out.len();
        out.push(match self.link {
            None => Kind::File.tag(),
            Some(_) => LINKED_FILE_TAG,
        });
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.mode.to_le_bytes());
        out.extend_from_slice(&self.mtime_ns.to_le_bytes());
        out.extend_from_slice(&(self.chunks.len() as u32).to_le_bytes());
        for c in &self.chunks {
            out.extend_from_slice(&c.id.0);
            out.extend_from_slice(&c.len.to_le_bytes());
        }
        if let Some(link) = &self.link {
            out.extend_from_slice(&(link.len() as u32).to_le_bytes());
            out.extend_from_slice(link);
        }
        encode_attrs(self.attrs.as_ref(), tag_at, out);
    }
}

/// The canonical encoding of [`Node::Symlink`] with this target and attributes.
pub fn encode_symlink(target: &[u8], attrs: Option<&Hash>, out: &mut Vec<u8>) {
    let tag_at = out.len();
    out.push(Kind::Symlink.tag());
    out.extend_from_slice(&(target.len() as u32).to_le_bytes());
    out.extend_from_slice(target);
    encode_attrs(attrs, tag_at, out);
}

/// Ends a node's encoding with its attributes digest, if any, flagged in its tag at
/// `tag_at`: a node without one encodes (and hashes) as before attributes were covered.
pub(crate) fn encode_attrs(attrs: Option<&Hash>, tag_at: usize, out: &mut Vec<u8>) {
    if let Some(a) = attrs {
        out[tag_at] |= ATTRS_FLAG;
        out.extend_from_slice(&a.0);
    }
}

/// Set in a node's tag when its encoding ends with a 32-byte attributes digest.
pub(crate) const ATTRS_FLAG: u8 = 0x80;

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

/// The tag of a file node that is a hard link ([`FileNode::link`]): a plain file's
/// encoding with the tag replaced, followed by the length-prefixed link path. Never a
/// directory entry's kind, which is [`Kind::File`] either way.
const LINKED_FILE_TAG: u8 = 4;

/// Decoding stops early rather than allocate for counts the input cannot hold.
const FILE_CHUNK_BYTES: usize = 32 + 4;

impl Node {
    /// The node's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Node::File(_) => Kind::File,
            Node::Symlink { .. } => Kind::Symlink,
            Node::Dir { .. } => Kind::Dir,
        }
    }

    /// Canonical encoding (little-endian, length-prefixed). The hash is taken over this.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Node::File(f) => f.encode(out),
            Node::Symlink { target, attrs } => encode_symlink(target, attrs.as_ref(), out),
            Node::Dir {
                mode,
                entries,
                attrs,
            } => {
                let tag_at = out.len();
                out.push(Kind::Dir.tag());
                out.extend_from_slice(&mode.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    out.extend_from_slice(&(e.name.len() as u32).to_le_bytes());
                    out.extend_from_slice(&e.name);
                    out.push(e.kind.tag());
                    out.extend_from_slice(&e.hash.0);
                }
                encode_attrs(attrs.as_ref(), tag_at, out);
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// The node hash: BLAKE3 of [`Node::encode`].
    pub fn hash(&self) -> Hash {
        Hash(*blake3::hash(&self.to_bytes()).as_bytes())
    }

    /// Decodes and validates one node. Never panics and never allocates more than the
    /// input's length could justify.
    pub fn decode(bytes: &[u8]) -> Result<Node, DecodeError> {
        let mut r = Reader::new(bytes);
        let flagged = r.u8()?;
        let tag = flagged & !ATTRS_FLAG;
        let kind = match tag {
            LINKED_FILE_TAG => Kind::File,
            _ => Kind::from_tag(tag).ok_or(DecodeError::BadTag(tag))?,
        };
        let node = match kind {
            Kind::File => {
                let size = r.u64()?;
                let mode = r.u32()?;
                let mtime_ns = r.u64()? as i64;
                let n = r.count(FILE_CHUNK_BYTES)?;
                let mut chunks = Vec::with_capacity(n);
                let mut sum = 0u64;
                for _ in 0..n {
                    let id = ChunkId(r.array()?);
                    let len = r.u32()?;
                    if len == 0 {
                        return Err(DecodeError::SizeMismatch { size, sum });
                    }
                    sum += u64::from(len);
                    chunks.push(ChunkRef { id, len });
                }
                if sum != size {
                    return Err(DecodeError::SizeMismatch { size, sum });
                }
                let link = if tag == LINKED_FILE_TAG {
                    let n = r.count(1)?;
                    let link = r.take(n)?.to_vec();
                    check_path(&link)?;
                    Some(link)
                } else {
                    None
                };
                Node::File(FileNode {
                    size,
                    mode,
                    mtime_ns,
                    chunks,
                    link,
                    attrs: read_attrs(&mut r, flagged)?,
                })
            }
            Kind::Symlink => {
                let n = r.count(1)?;
                let target = r.take(n)?.to_vec();
                Node::Symlink {
                    target,
                    attrs: read_attrs(&mut r, flagged)?,
                }
            }
            Kind::Dir => {
                let (mode, entries) = decode_listing(
                    &mut r,
                    |name, kind, hash| Entry {
                        name,
                        kind,
                        hash: Hash(hash),
                    },
                    |e| &e.name,
                )?;
                Node::Dir {
                    mode,
                    entries,
                    attrs: read_attrs(&mut r, flagged)?,
                }
            }
        };
        if !r.rest().is_empty() {
            return Err(DecodeError::Trailing(r.rest().len()));
        }
        Ok(node)
    }
}

/// A directory listing after its tag: the mode, then entries (name, kind, an `N`-byte
/// hash) strictly sorted by name, each made by `entry`. [`Node::decode`] reads directories
/// with whole hashes, the codec's listings ([`crate::proto::Offered`]) with short ones.
pub fn decode_listing<T, const N: usize>(
    r: &mut Reader<'_>,
    entry: impl Fn(Vec<u8>, Kind, [u8; N]) -> T,
    name: impl Fn(&T) -> &[u8],
) -> Result<(u32, Vec<T>), DecodeError> {
    let mode = r.u32()?;
    let n = r.count(4 + 1 + N)?;
    let mut entries: Vec<T> = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.count(1)?;
        let child = r.take(len)?.to_vec();
        check_name(&child)?;
        let tag = r.u8()?;
        let kind = Kind::from_tag(tag).ok_or(DecodeError::BadTag(tag))?;
        let hash = r.array()?;
        if entries.last().is_some_and(|prev| name(prev) >= &child[..]) {
            return Err(DecodeError::Unsorted);
        }
        entries.push(entry(child, kind, hash));
    }
    Ok((mode, entries))
}

/// The attributes digest that ends a node whose tag (`flagged`) says it has one.
pub fn read_attrs(r: &mut Reader<'_>, flagged: u8) -> Result<Option<Hash>, DecodeError> {
    Ok(if flagged & ATTRS_FLAG != 0 {
        Some(Hash(r.array()?))
    } else {
        None
    })
}

impl From<Short> for DecodeError {
    fn from(_: Short) -> DecodeError {
        DecodeError::Truncated
    }
}

/// `parent/name`, or `name` at the root.
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The parent of a non-root relative path (the root's parent is itself).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => &[],
    }
}

/// The last component of a non-root relative path.
pub fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// A path for humans, one per line: UTF-8 as is, newline and tab as `\n` and `\t`, other
/// control characters and bytes that are not UTF-8 as `\xNN`, backslash doubled.
pub fn display_path(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for chunk in path.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\\' => out.push_str("\\\\"),
                // One name per line: a newline or another control character in a name is
                // escaped, never printed.
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Read access to a manifest's nodes by path. Implemented in memory by [`Tree`] and on
/// disk by [`store::Snapshot`].
pub trait Nodes {
    /// The error of the backing storage.
    type Error;
    /// The node at `path` (the root is `b""`), if present.
    fn node(&self, path: &[u8]) -> Result<Option<Node>, Self::Error>;
}

/// An in-memory manifest: every node by path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tree {
    /// Nodes by relative path; the root directory is at `b""`.
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

impl Tree {
    /// The root hash, if the tree has a root.
    pub fn root_hash(&self) -> Option<Hash> {
        self.nodes.get(&b""[..]).map(Node::hash)
    }
}

impl Nodes for Tree {
    type Error = std::convert::Infallible;
    fn node(&self, path: &[u8]) -> Result<Option<Node>, Self::Error> {
        Ok(self.nodes.get(path).cloned())
    }
}

/// How an entry differs between two trees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Present only in the second tree (a whole subtree, for a directory).
    Added,
    /// Present only in the first tree (a whole subtree, for a directory).
    Removed,
    /// Same kind, different content (file chunks or size, symlink target).
    Modified,
    /// Same content, different metadata (mode, mtime, hard links, owner, xattrs, ACLs).
    Metadata,
    /// The kind changed (file, dir, symlink).
    TypeChanged,
}

impl ChangeKind {
    /// One-character marker used in `syncd diff` output.
    pub fn marker(self) -> char {
        match self {
            ChangeKind::Added => '+',
            ChangeKind::Removed => '-',
            ChangeKind::Modified => 'M',
            ChangeKind::Metadata => 'm',
            ChangeKind::TypeChanged => 'T',
        }
    }
    /// Lower-case name for JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Added => "added",
            ChangeKind::Removed => "removed",
            ChangeKind::Modified => "modified",
            ChangeKind::Metadata => "metadata",
            ChangeKind::TypeChanged => "type_changed",
        }
    }
}

/// One differing path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Relative path (raw bytes).
    pub path: Vec<u8>,
    /// How it differs.
    pub kind: ChangeKind,
    /// Its kind in the first tree, if present there.
    pub old: Option<Kind>,
    /// Its kind in the second tree, if present there.
    pub new: Option<Kind>,
}

/// Why a diff could not be computed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError<E> {
    /// A node the parent references is missing (a corrupt or incomplete manifest).
    #[error("manifest has no node for {path}", path = display_path(.0))]
    Missing(Vec<u8>),
    /// Reading a node failed.
    #[error(transparent)]
    Source(E),
}

/// The differences that turn tree `a` into tree `b`, ordered by path (parents first).
/// A missing root compares as an empty directory.
pub fn diff<A, B, E>(a: &A, b: &B) -> Result<Vec<Change>, DiffError<E>>
where
    A: Nodes<Error = E>,
    B: Nodes<Error = E>,
{
    let empty = Node::Dir {
        mode: 0,
        entries: Vec::new(),
        attrs: None,
    };
    let ra = a.node(b"").map_err(DiffError::Source)?;
    let rb = b.node(b"").map_err(DiffError::Source)?;
    let ra = ra.unwrap_or_else(|| empty.clone());
    let rb = rb.unwrap_or(empty);
    let mut out = Vec::new();
    if ra != rb {
        diff_dirs(a, b, Vec::new(), &ra, &rb, &mut out)?;
    }
    Ok(out)
}

fn diff_dirs<A, B, E>(
    a: &A,
    b: &B,
    path: Vec<u8>,
    na: &Node,
    nb: &Node,
    out: &mut Vec<Change>,
) -> Result<(), DiffError<E>>
where
    A: Nodes<Error = E>,
    B: Nodes<Error = E>,
{
    let (
        Node::Dir {
            mode: ma,
            entries: ea,
            attrs: aa,
        },
        Node::Dir {
            mode: mb,
            entries: eb,
            attrs: ab,
        },
    ) = (na, nb)
    else {
        return Ok(());
    };
    if ma != mb || aa != ab {
        out.push(Change {
            path: path.clone(),
            kind: ChangeKind::Metadata,
            old: Some(Kind::Dir),
            new: Some(Kind::Dir),
        });
    }
    let (mut i, mut j) = (0, 0);
    while i < ea.len() || j < eb.len() {
        let order = match (ea.get(i), eb.get(j)) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match order {
            std::cmp::Ordering::Less => {
                let x = &ea[i];
                out.push(Change {
                    path: join(&path, &x.name),
                    kind: ChangeKind::Removed,
                    old: Some(x.kind),
                    new: None,
                });
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                let y = &eb[j];
                out.push(Change {
                    path: join(&path, &y.name),
                    kind: ChangeKind::Added,
                    old: None,
                    new: Some(y.kind),
                });
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ea[i], &eb[j]);
                i += 1;
                j += 1;
                if x.hash == y.hash && x.kind == y.kind {
                    continue;
                }
                let child = join(&path, &x.name);
                if x.kind != y.kind {
                    out.push(Change {
                        path: child,
                        kind: ChangeKind::TypeChanged,
                        old: Some(x.kind),
                        new: Some(y.kind),
                    });
                    continue;
                }
                let cx = fetch(a, &child)?;
                let cy = fetch(b, &child)?;
                let kind = match (&cx, &cy) {
                    (Node::Dir { .. }, Node::Dir { .. }) => {
                        diff_dirs(a, b, child, &cx, &cy, out)?;
                        continue;
                    }
                    (Node::File(fx), Node::File(fy))
                        if fx.size == fy.size && fx.chunks == fy.chunks =>
                    {
                        ChangeKind::Metadata
                    }
                    (Node::Symlink { target: tx, .. }, Node::Symlink { target: ty, .. })
                        if tx == ty =>
                    {
                        ChangeKind::Metadata
                    }
                    _ => ChangeKind::Modified,
                };
                out.push(Change {
                    path: child,
                    kind,
                    old: Some(x.kind),
                    new: Some(y.kind),
                });
            }
        }
    }
    Ok(())
}

fn fetch<N: Nodes<Error = E>, E>(n: &N, path: &[u8]) -> Result<Node, DiffError<E>> {
    n.node(path)
        .map_err(DiffError::Source)?
        .ok_or_else(|| DiffError::Missing(path.to_vec()))
}

#[cfg(test)]
pub(crate) mod tests;
