use std::cell::Cell;
use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

/// A filesystem shape to build trees from.
#[derive(Debug, Clone)]
pub(crate) enum Spec {
    File {
        content: u8,
        len: u8,
        mode: u32,
        mtime: i64,
    },
    Link(Vec<u8>),
    Dir(u32, BTreeMap<Vec<u8>, Spec>),
}

fn file_node(content: u8, len: u8, mode: u32, mtime: i64) -> Node {
    let chunks = (0..len)
        .map(|i| ChunkRef {
            id: ChunkId::of(&[content, i]),
            len: 100 + u32::from(i),
        })
        .collect::<Vec<_>>();
    Node::File(FileNode {
        size: chunks.iter().map(|c| u64::from(c.len)).sum(),
        mode,
        mtime_ns: mtime,
        chunks,
        link: None,
        attrs: None,
    })
}

pub(crate) fn build(spec: &Spec) -> Tree {
    fn go(path: Vec<u8>, spec: &Spec, tree: &mut Tree) -> Entry {
        let node = match spec {
            Spec::File {
                content,
                len,
                mode,
                mtime,
            } => file_node(*content, *len, *mode, *mtime),
            Spec::Link(t) => Node::Symlink {
                target: t.clone(),
                attrs: None,
            },
            Spec::Dir(mode, children) => {
                let entries = children
                    .iter()
                    .map(|(name, c)| {
                        let mut e = go(join(&path, name), c, tree);
                        e.name = name.clone();
                        e
                    })
                    .collect();
                Node::Dir {
                    mode: *mode,
                    entries,
                    attrs: None,
                }
            }
        };
        let e = Entry {
            name: Vec::new(),
            kind: node.kind(),
            hash: node.hash(),
        };
        tree.nodes.insert(path, node);
        e
    }
    let mut t = Tree::default();
    go(Vec::new(), spec, &mut t);
    t
}

/// Hard-links files of `t` as a scan would record it: for each pick `(i, j)`, the later (in
/// component order) of the i-th and j-th files becomes a link of the earlier one's group
/// (its content and metadata, and the group's first path as its link). Picks that would
/// split or merge existing groups are skipped. Rehashes.
pub(crate) fn link_files(t: &mut Tree, picks: &[(u8, u8)]) {
    let mut files: Vec<Vec<u8>> = t
        .nodes
        .iter()
        .filter(|(_, n)| n.kind() == Kind::File)
        .map(|(p, _)| p.clone())
        .collect();
    files.sort_by(|a, b| component_order(a, b));
    if files.len() < 2 {
        return;
    }
    let link_of = |t: &Tree, p: &[u8]| match t.nodes.get(p) {
        Some(Node::File(f)) => f.link.clone(),
        _ => None,
    };
    for &(i, j) in picks {
        let (mut a, mut b) = (
            files[i as usize % files.len()].clone(),
            files[j as usize % files.len()].clone(),
        );
        if component_order(&a, &b).is_gt() {
            std::mem::swap(&mut a, &mut b);
        }
        let leader = link_of(t, &a).unwrap_or(a);
        let has_followers = t
            .nodes
            .values()
            .any(|n| matches!(n, Node::File(f) if f.link.as_deref() == Some(b.as_slice())));
        if leader == b || link_of(t, &b).is_some() || has_followers {
            continue;
        }
        let Some(Node::File(lead)) = t.nodes.get(&leader).cloned() else {
            continue;
        };
        t.nodes.insert(
            b,
            Node::File(FileNode {
                link: Some(leader),
                ..lead
            }),
        );
    }
    rehash(t);
}

/// Gives nodes of `t` attributes digests, as a scan records owners and xattrs: for each pick
/// `(i, v)`, the i-th node in path order gets digest `[v % 3; 32]`, or none when that is 0.
/// Rehashes.
pub(crate) fn set_attrs(t: &mut Tree, picks: &[(u8, u8)]) {
    let paths: Vec<Vec<u8>> = t.nodes.keys().cloned().collect();
    for &(i, v) in picks {
        let digest = (v % 3 != 0).then_some(Hash([v % 3; 32]));
        match t.nodes.get_mut(&paths[i as usize % paths.len()]) {
            Some(Node::File(f)) => f.attrs = digest,
            Some(Node::Symlink { attrs, .. } | Node::Dir { attrs, .. }) => *attrs = digest,
            None => {}
        }
    }
    rehash(t);
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    // A tiny alphabet so that independent trees overlap; 0xff is not UTF-8.
    prop_oneof![
        Just(b"a".to_vec()),
        Just(b"b".to_vec()),
        Just(b"c.d".to_vec()),
        Just(vec![0xff, b'x']),
        Just(b"z z".to_vec()),
    ]
}

pub(crate) fn spec() -> impl Strategy<Value = Spec> {
    let leaf = prop_oneof![
        (
            0u8..3,
            0u8..3,
            prop_oneof![Just(0o644u32), Just(0o755)],
            0i64..2
        )
            .prop_map(|(content, len, mode, mtime)| Spec::File {
                content,
                len,
                mode,
                mtime
            }),
        prop_oneof![Just(b"t1".to_vec()), Just(vec![b'/', 0xfe])].prop_map(Spec::Link),
    ];
    let tree = leaf.prop_recursive(4, 48, 5, |inner| {
        (
            prop_oneof![Just(0o755u32), Just(0o700)],
            prop::collection::btree_map(name(), inner, 0..5),
        )
            .prop_map(|(m, c)| Spec::Dir(m, c))
    });
    (
        prop_oneof![Just(0o755u32), Just(0o700)],
        prop::collection::btree_map(name(), tree, 0..5),
    )
        .prop_map(|(m, c)| Spec::Dir(m, c))
}

fn remove_subtree(t: &mut Tree, path: &[u8]) {
    let keys: Vec<Vec<u8>> = t
        .nodes
        .keys()
        .filter(|k| {
            k.as_slice() == path || (k.starts_with(path) && k.get(path.len()) == Some(&b'/'))
        })
        .cloned()
        .collect();
    for k in keys {
        t.nodes.remove(&k);
    }
}

fn copy_subtree(t: &mut Tree, from: &Tree, path: &[u8]) {
    for (k, v) in &from.nodes {
        if k.as_slice() == path || (k.starts_with(path) && k.get(path.len()) == Some(&b'/')) {
            t.nodes.insert(k.clone(), v.clone());
        }
    }
}

/// Recomputes every directory's entries from the nodes below it, deepest first.
pub(crate) fn rehash(t: &mut Tree) {
    let mut dirs: Vec<Vec<u8>> = t
        .nodes
        .iter()
        .filter(|(_, n)| n.kind() == Kind::Dir)
        .map(|(k, _)| k.clone())
        .collect();
    dirs.sort_by_key(|d| {
        std::cmp::Reverse(d.iter().filter(|&&b| b == b'/').count() + usize::from(!d.is_empty()))
    });
    for d in dirs {
        let mut entries: Vec<Entry> = t
            .nodes
            .iter()
            .filter(|(k, _)| {
                !k.is_empty() && k.as_slice() != d.as_slice() && parent(k) == d.as_slice()
            })
            .map(|(k, n)| Entry {
                name: k[if d.is_empty() { 0 } else { d.len() + 1 }..].to_vec(),
                kind: n.kind(),
                hash: n.hash(),
            })
            .collect();
        entries.sort_by(|x, y| x.name.cmp(&y.name));
        if let Some(Node::Dir { entries: e, .. }) = t.nodes.get_mut(&d) {
            *e = entries;
        }
    }
}

/// Applies a diff of `a` → `b` to `a`, taking new content from `b` by path.
fn apply(a: &Tree, changes: &[Change], b: &Tree) -> Tree {
    let mut t = a.clone();
    for c in changes {
        match c.kind {
            ChangeKind::Removed => remove_subtree(&mut t, &c.path),
            ChangeKind::Added | ChangeKind::TypeChanged => {
                remove_subtree(&mut t, &c.path);
                copy_subtree(&mut t, b, &c.path);
            }
            ChangeKind::Modified => {
                t.nodes.insert(c.path.clone(), b.nodes[&c.path].clone());
            }
            ChangeKind::Metadata => match (t.nodes.get_mut(&c.path), &b.nodes[&c.path]) {
                (
                    Some(Node::Dir { mode, attrs, .. }),
                    Node::Dir {
                        mode: m, attrs: a, ..
                    },
                ) => (*mode, *attrs) = (*m, *a),
                (Some(Node::File(f)), Node::File(g)) => {
                    assert_eq!(f.chunks, g.chunks, "metadata change with different content");
                    f.mode = g.mode;
                    f.mtime_ns = g.mtime_ns;
                    f.link = g.link.clone();
                    f.attrs = g.attrs;
                }
                (
                    Some(Node::Symlink { target, attrs }),
                    Node::Symlink {
                        target: t,
                        attrs: a,
                    },
                ) => {
                    assert_eq!(target, t, "metadata change with a different target");
                    *attrs = *a;
                }
                other => panic!("metadata change on {other:?}"),
            },
        }
    }
    rehash(&mut t);
    t
}

fn check_diff_applies(a: &Tree, b: &Tree) -> Result<(), TestCaseError> {
    let changes = diff(a, b).unwrap();
    prop_assert_eq!(changes.is_empty(), a.root_hash() == b.root_hash());
    let patched = apply(a, &changes, b);
    prop_assert_eq!(patched.root_hash(), b.root_hash(), "changes: {:?}", changes);
    prop_assert_eq!(&patched, b);
    Ok(())
}

pub(crate) fn mutate(spec: &Spec, ops: &[(u8, u8)]) -> Spec {
    let mut s = spec.clone();
    for &(which, op) in ops {
        if let Spec::Dir(_, children) = &mut s {
            let keys: Vec<_> = children.keys().cloned().collect();
            if keys.is_empty() {
                children.insert(b"new".to_vec(), Spec::Link(b"n".to_vec()));
                continue;
            }
            let k = keys[which as usize % keys.len()].clone();
            match op % 4 {
                0 => {
                    children.remove(&k);
                }
                1 => {
                    if let Some(Spec::File { mtime, .. }) = children.get_mut(&k) {
                        *mtime += 1;
                    }
                }
                2 => {
                    if let Some(Spec::File { content, .. }) = children.get_mut(&k) {
                        *content = content.wrapping_add(7);
                    }
                }
                _ => {
                    if let Some(child) = children.get(&k).cloned() {
                        children.insert(k, mutate(&child, &[(which / 2, op / 4)]));
                    }
                }
            }
        }
    }
    s
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Applying diff(a, b) to a yields b, for independent trees.
    #[test]
    fn diff_applied_to_a_gives_b(sa in spec(), sb in spec()) {
        check_diff_applies(&build(&sa), &build(&sb))?;
    }

    /// The same for b a mutation of a (small diffs: the common case).
    #[test]
    fn diff_of_mutation_applies(sa in spec(), ops in prop::collection::vec((any::<u8>(), any::<u8>()), 1..4)) {
        let a = build(&sa);
        let b = build(&mutate(&sa, &ops));
        check_diff_applies(&a, &b)?;
        check_diff_applies(&b, &a)?;
    }

    /// The same with hard links, the same tree linked two ways included.
    #[test]
    fn diff_with_hard_links_applies(
        sa in spec(),
        la in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        lb in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
    ) {
        let (mut a, mut b) = (build(&sa), build(&sa));
        link_files(&mut a, &la);
        link_files(&mut b, &lb);
        check_diff_applies(&a, &b)?;
        for node in a.nodes.values() {
            prop_assert_eq!(&Node::decode(&node.to_bytes()).unwrap(), node);
        }
    }

    /// The same, with owners and xattrs on some nodes; between two trees that differ only
    /// in those, every change is a metadata change.
    #[test]
    fn diff_with_attributes_applies(
        sa in spec(),
        sb in spec(),
        pa in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        pb in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
    ) {
        let (mut a, mut b) = (build(&sa), build(&sb));
        set_attrs(&mut a, &pa);
        set_attrs(&mut b, &pb);
        check_diff_applies(&a, &b)?;
        let (mut a, mut b) = (build(&sa), build(&sa));
        set_attrs(&mut a, &pa);
        set_attrs(&mut b, &pb);
        check_diff_applies(&a, &b)?;
        for c in diff(&a, &b).unwrap() {
            prop_assert_eq!(c.kind, ChangeKind::Metadata, "{:?}", c);
        }
    }

    #[test]
    fn encode_decode_roundtrip(
        s in spec(),
        picks in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
    ) {
        let mut t = build(&s);
        set_attrs(&mut t, &picks);
        for node in t.nodes.values() {
            prop_assert_eq!(&Node::decode(&node.to_bytes()).unwrap(), node);
        }
    }

    #[test]
    fn decode_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = Node::decode(&bytes);
    }
}

#[test]
fn identical_trees_have_no_diff() {
    let s = Spec::Dir(
        0o755,
        BTreeMap::from([(
            b"f".to_vec(),
            Spec::File {
                content: 1,
                len: 2,
                mode: 0o644,
                mtime: 5,
            },
        )]),
    );
    assert!(diff(&build(&s), &build(&s)).unwrap().is_empty());
}

#[test]
fn reports_each_kind_of_change() {
    let file = |content, mtime| Spec::File {
        content,
        len: 1,
        mode: 0o644,
        mtime,
    };
    let a = Spec::Dir(
        0o755,
        BTreeMap::from([
            (b"same".to_vec(), file(1, 0)),
            (b"content".to_vec(), file(1, 0)),
            (b"meta".to_vec(), file(1, 0)),
            (b"gone".to_vec(), file(1, 0)),
            (b"retyped".to_vec(), file(1, 0)),
            (
                b"d".to_vec(),
                Spec::Dir(0o755, BTreeMap::from([(b"inner".to_vec(), file(1, 0))])),
            ),
        ]),
    );
    let b = Spec::Dir(
        0o755,
        BTreeMap::from([
            (b"same".to_vec(), file(1, 0)),
            (b"content".to_vec(), file(2, 0)),
            (b"meta".to_vec(), file(1, 9)),
            (b"new".to_vec(), file(1, 0)),
            (b"retyped".to_vec(), Spec::Link(b"x".to_vec())),
            (
                b"d".to_vec(),
                Spec::Dir(0o700, BTreeMap::from([(b"inner".to_vec(), file(3, 0))])),
            ),
        ]),
    );
    let got: Vec<(String, ChangeKind)> = diff(&build(&a), &build(&b))
        .unwrap()
        .into_iter()
        .map(|c| (display_path(&c.path), c.kind))
        .collect();
    let want = vec![
        ("content".to_string(), ChangeKind::Modified),
        ("d".to_string(), ChangeKind::Metadata),
        ("d/inner".to_string(), ChangeKind::Modified),
        ("gone".to_string(), ChangeKind::Removed),
        ("meta".to_string(), ChangeKind::Metadata),
        ("new".to_string(), ChangeKind::Added),
        ("retyped".to_string(), ChangeKind::TypeChanged),
    ];
    assert_eq!(got, want);
}

/// Counts node reads, to show that diff cost follows the changes, not the tree size.
struct Counting<'a>(&'a Tree, Cell<usize>);

impl Nodes for Counting<'_> {
    type Error = std::convert::Infallible;
    fn node(&self, path: &[u8]) -> Result<Option<Node>, Self::Error> {
        self.1.set(self.1.get() + 1);
        self.0.node(path)
    }
}

#[test]
fn diff_reads_only_the_changed_branch() {
    // 20 dirs x 500 files = 10,000 files; change one file.
    let file = |c| Spec::File {
        content: c,
        len: 1,
        mode: 0o644,
        mtime: 0,
    };
    let dirs: BTreeMap<Vec<u8>, Spec> = (0..20)
        .map(|d| {
            let files = (0..500)
                .map(|f| (format!("f{f}").into_bytes(), file(1)))
                .collect();
            (format!("d{d}").into_bytes(), Spec::Dir(0o755, files))
        })
        .collect();
    let a = Spec::Dir(0o755, dirs.clone());
    let mut dirs_b = dirs;
    if let Some(Spec::Dir(_, files)) = dirs_b.get_mut(&b"d7"[..]) {
        files.insert(b"f123".to_vec(), file(2));
    }
    let b = Spec::Dir(0o755, dirs_b);
    let (ta, tb) = (build(&a), build(&b));
    let (ca, cb) = (Counting(&ta, Cell::new(0)), Counting(&tb, Cell::new(0)));
    let changes = diff(&ca, &cb).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path, b"d7/f123");
    // root, d7, d7/f123 on each side.
    assert_eq!((ca.1.get(), cb.1.get()), (3, 3));
}

#[test]
fn decode_rejects_bad_names_and_order() {
    let entry = |name: &[u8]| Entry {
        name: name.to_vec(),
        kind: Kind::File,
        hash: Hash([0; 32]),
    };
    for bad in [&b""[..], b".", b"..", b"a/b", b"a\0"] {
        let n = Node::Dir {
            mode: 0,
            entries: vec![entry(bad)],
            attrs: None,
        };
        assert!(
            matches!(Node::decode(&n.to_bytes()), Err(DecodeError::BadName(_))),
            "{bad:?}"
        );
    }
    let n = Node::Dir {
        mode: 0,
        entries: vec![entry(b"b"), entry(b"a")],
        attrs: None,
    };
    assert_eq!(Node::decode(&n.to_bytes()), Err(DecodeError::Unsorted));
    // A huge declared count with no bytes behind it is refused before allocating.
    let mut bytes = vec![3u8, 0, 0, 0, 0];
    bytes.extend_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(Node::decode(&bytes), Err(DecodeError::Truncated));
}

#[test]
fn parent_and_file_name_split_a_path() {
    for (path, dir, name) in [
        (&b"a"[..], &b""[..], &b"a"[..]),
        (b"a/b", b"a", b"b"),
        (b"a/b/\xffc", b"a/b", b"\xffc"),
    ] {
        assert_eq!(parent(path), dir);
        assert_eq!(file_name(path), name);
        assert_eq!(join(parent(path), file_name(path)), path);
    }
}

/// A tree whose root holds one entry, `name`, that is `node`.
fn single(name: &[u8], node: &Node) -> Tree {
    let mut t = Tree::default();
    t.nodes.insert(name.to_vec(), node.clone());
    t.nodes.insert(
        Vec::new(),
        Node::Dir {
            mode: 0o755,
            entries: Vec::new(),
            attrs: None,
        },
    );
    rehash(&mut t);
    t
}

#[test]
fn a_hard_link_is_part_of_the_file_node() {
    let Node::File(plain) = file_node(3, 2, 0o644, 1) else {
        unreachable!()
    };
    let linked = FileNode {
        link: Some(b"a/x".to_vec()),
        ..plain.clone()
    };
    let (p, l) = (Node::File(plain), Node::File(linked.clone()));
    assert_ne!(p.hash(), l.hash());
    assert_eq!(Node::decode(&l.to_bytes()).unwrap(), l);
    assert_eq!(Node::decode(&p.to_bytes()).unwrap(), p);

    // The same content and metadata, linked differently: a metadata change.
    let changes = diff(&single(b"f", &p), &single(b"f", &l)).unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].kind, ChangeKind::Metadata);

    // A link path from a stored record or the network is a relative path of plain names.
    for bad in [
        &b""[..],
        b"..",
        b"a/../b",
        b"/abs",
        b"a//b",
        b"a/",
        b"./a",
        b"a\0b",
    ] {
        let node = Node::File(FileNode {
            link: Some(bad.to_vec()),
            ..linked.clone()
        });
        assert!(
            matches!(Node::decode(&node.to_bytes()), Err(DecodeError::BadName(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn attributes_are_part_of_every_node() {
    let x = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
    // Without owners only user.* counts, and nothing to cover is no digest: such nodes
    // encode, and hash, exactly as before attributes were covered.
    assert_eq!(attrs_hash(None, &[]), None);
    assert_eq!(
        attrs_hash(None, &[x("security.selinux", "l"), x("trusted.t", "v")]),
        None
    );
    let user = attrs_hash(None, &[x("user.a", "1")]);
    assert!(user.is_some());
    assert_eq!(
        attrs_hash(
            None,
            &[x("user.a", "1"), x("system.posix_acl_access", "acl")]
        ),
        user
    );
    // With owners: owner and group always, every namespace but security.* labels (file
    // capabilities are covered), in any order.
    let owned = attrs_hash(Some((1, 2)), &[x("user.a", "1"), x("trusted.t", "v")]);
    assert_eq!(
        attrs_hash(
            Some((1, 2)),
            &[
                x("trusted.t", "v"),
                x("security.selinux", "l"),
                x("user.a", "1")
            ]
        ),
        owned
    );
    for other in [
        attrs_hash(Some((1, 3)), &[x("user.a", "1"), x("trusted.t", "v")]),
        attrs_hash(Some((2, 2)), &[x("user.a", "1"), x("trusted.t", "v")]),
        attrs_hash(Some((1, 2)), &[x("user.a", "2"), x("trusted.t", "v")]),
        attrs_hash(Some((1, 2)), &[x("user.a", "1")]),
        attrs_hash(
            Some((1, 2)),
            &[
                x("user.a", "1"),
                x("trusted.t", "v"),
                x("security.capability", "c"),
            ],
        ),
        attrs_hash(None, &[x("user.a", "1"), x("trusted.t", "v")]),
    ] {
        assert_ne!(other, owned);
    }
    // No ambiguity between a name and a value.
    assert_ne!(
        attrs_hash(None, &[x("user.ab", "c")]),
        attrs_hash(None, &[x("user.a", "bc")])
    );

    let digest = Some(Hash([7; 32]));
    let Node::File(plain) = file_node(3, 2, 0o644, 1) else {
        unreachable!()
    };
    let nodes = [
        Node::File(plain.clone()),
        Node::File(FileNode {
            link: Some(b"a/x".to_vec()),
            ..plain.clone()
        }),
        Node::Symlink {
            target: b"t".to_vec(),
            attrs: None,
        },
        Node::Dir {
            mode: 0o755,
            entries: vec![Entry {
                name: b"f".to_vec(),
                kind: Kind::File,
                hash: Hash([1; 32]),
            }],
            attrs: None,
        },
    ];
    for node in nodes {
        let mut with = node.clone();
        match &mut with {
            Node::File(f) => f.attrs = digest,
            Node::Symlink { attrs, .. } | Node::Dir { attrs, .. } => *attrs = digest,
        }
        assert_ne!(with.hash(), node.hash(), "{node:?}");
        let (a, b) = (node.to_bytes(), with.to_bytes());
        assert_eq!(b.len(), a.len() + 32);
        assert_eq!(b[0], a[0] | ATTRS_FLAG);
        assert_eq!(Node::decode(&b).unwrap(), with);
        assert_eq!(Node::decode(&a).unwrap(), node);
        // A flagged tag without its digest is truncated, not misread.
        let mut cut = b.clone();
        cut.truncate(b.len() - 1);
        assert_eq!(Node::decode(&cut), Err(DecodeError::Truncated));

        // Attributes alone differ: a metadata change, at the right path.
        let changes = diff(&single(b"e", &node), &single(b"e", &with)).unwrap();
        assert_eq!(changes.len(), 1, "{node:?}");
        assert_eq!(changes[0].kind, ChangeKind::Metadata, "{node:?}");
        assert_eq!(changes[0].path, b"e");
    }
}
