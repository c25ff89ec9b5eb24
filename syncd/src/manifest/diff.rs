//! The [`Nodes`] trait (read a node by path), the in-memory [`Tree`], and [`diff`], which
//! descends only where hashes differ and owns the `+ - M m T` classification.

use super::*;

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

/// What of an entry [`change_of`] compares: a directory's metadata (its children are compared
/// one by one), a file's chunks, a symlink's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape<'a> {
    /// A directory's mode and attributes digest.
    Dir(u32, Option<&'a Hash>),
    /// A file's chunks.
    File(&'a [ChunkRef]),
    /// A symlink's target.
    Symlink(&'a [u8]),
}

impl<'a> Shape<'a> {
    /// The shape of `node`.
    pub fn of(node: &'a Node) -> Shape<'a> {
        match node {
            Node::Dir { mode, attrs, .. } => Shape::Dir(*mode, attrs.as_ref()),
            Node::File(f) => Shape::File(&f.chunks),
            Node::Symlink { target, .. } => Shape::Symlink(target),
        }
    }
}

/// How an entry that differs from its old version at the same path changed, the one rule
/// of the `+ - M m T` classification for an entry in both trees (`syncd diff`, and the
/// receiver's dry run and `--itemize-changes`): `T` for another kind; `M` for other content
/// (a file's chunks, a symlink's target); `m` when only metadata differs. A directory's
/// content is its children, so it is `m` when its mode or attributes differ, else nothing.
pub fn change_of(old: Shape<'_>, new: Shape<'_>) -> Option<ChangeKind> {
    match (old, new) {
        (Shape::Dir(ma, aa), Shape::Dir(mb, ab)) => {
            ((ma, aa) != (mb, ab)).then_some(ChangeKind::Metadata)
        }
        (Shape::File(a), Shape::File(b)) if a == b => Some(ChangeKind::Metadata),
        (Shape::Symlink(a), Shape::Symlink(b)) if a == b => Some(ChangeKind::Metadata),
        (Shape::File(_), Shape::File(_)) | (Shape::Symlink(_), Shape::Symlink(_)) => {
            Some(ChangeKind::Modified)
        }
        _ => Some(ChangeKind::TypeChanged),
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
    if change_of(Shape::Dir(*ma, aa.as_ref()), Shape::Dir(*mb, ab.as_ref())).is_some() {
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
                if let (Node::Dir { .. }, Node::Dir { .. }) = (&cx, &cy) {
                    diff_dirs(a, b, child, &cx, &cy, out)?;
                    continue;
                }
                let Some(kind) = change_of(Shape::of(&cx), Shape::of(&cy)) else {
                    continue;
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
