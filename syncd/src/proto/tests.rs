//! A sender and a receiver driven against each other in memory, without sockets or files,
//! with every frame going through the codec and chunk frames delivered out of order.

use std::collections::HashMap;

use proptest::prelude::*;

use super::codec::{self, decode};
use super::*;
use crate::manifest::tests::{build, link_files, mutate, rehash, set_attrs, spec};
use crate::manifest::{FileNode, Tree};

/// Every chunk id the manifest test trees use, with the bytes it stands for.
fn contents() -> HashMap<ChunkId, Vec<u8>> {
    let mut m = HashMap::new();
    for c in 0..=255u8 {
        for i in 0..3u8 {
            m.insert(ChunkId::of(&[c, i]), vec![c, i]);
        }
    }
    for v in [big(0), big(1)] {
        m.insert(ChunkId::of(&v), v);
    }
    m
}

/// A 64 KiB chunk, large enough for a delta; `version` 1 differs from 0 in one byte.
fn big(version: u8) -> Vec<u8> {
    let mut v: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
    v[30_000] ^= version;
    v
}

/// The metadata the sender reads for `node`. Its attributes digest travels as an xattr,
/// which the simulated receiver below turns back into its node's digest ([`attrs_in`]), the
/// way a real one applies owner and xattrs and then has them.
fn meta_of(node: &Node) -> Meta {
    let attrs = match node {
        Node::File(f) => f.attrs,
        Node::Symlink { attrs, .. } | Node::Dir { attrs, .. } => *attrs,
    };
    Meta {
        mtime_ns: match node {
            Node::File(f) => f.mtime_ns,
            _ => 0,
        },
        xattrs: attrs
            .map(|h| (b"user.digest".to_vec(), h.0.to_vec()))
            .into_iter()
            .collect(),
        ..Meta::default()
    }
}

/// The attributes an entry has once `meta` is applied to it (see [`meta_of`]).
fn attrs_in(meta: &Meta) -> Option<Hash> {
    let (_, v) = meta.xattrs.first()?;
    Some(Hash(v.as_slice().try_into().unwrap()))
}

fn roundtrip(f: &Frame) -> Frame {
    let bytes = f.to_bytes();
    let (g, used) = decode(&bytes).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    g
}

struct Part {
    path: Vec<u8>,
    node: FileNode,
}

struct Outcome {
    receiver_tree: Tree,
    sender_root: Hash,
    receiver_root: Hash,
    totals: Totals,
    report: Vec<(u8, Vec<u8>)>,
    /// `WantDelta` frames the receiver sent.
    deltas_asked: usize,
    /// Source files the sender gave up on.
    gave_up: Vec<Vec<u8>>,
}

/// Runs one session: `a` is the sender's tree, `b` the receiver's starting tree.
/// `shuffle` picks which pending message to deliver next.
fn run(
    a: &Tree,
    b: &Tree,
    delete: bool,
    dry_run: bool,
    shuffle: impl FnMut(usize) -> usize,
) -> Outcome {
    run_with(a, b, delete, dry_run, shuffle, None, &[])
}

/// [`run`], where the source files become those of `after` as soon as the session starts
/// (a read of a chunk a file no longer has there fails, and the driver offers the new
/// node, the way `push` does), and the sender reports `unsettled` paths.
fn run_with(
    a: &Tree,
    b: &Tree,
    delete: bool,
    dry_run: bool,
    mut shuffle: impl FnMut(usize) -> usize,
    after: Option<&Tree>,
    unsettled: &[&str],
) -> Outcome {
    let content = contents();
    let a_root = a.root_hash().unwrap();
    let b_root = b.root_hash().unwrap();
    // The receiver's chunk index: chunks present in its own starting tree.
    let mut index: HashMap<ChunkId, ChunkLoc> = HashMap::new();
    for (p, n) in &b.nodes {
        if let Node::File(f) = n {
            index.extend(chunk_locs(p, f));
        }
    }
    let mut fs = b.clone();
    let mut parts: HashMap<FileKey, Part> = HashMap::new();
    let mut bases: HashMap<ChunkId, Vec<u8>> = HashMap::new();

    let mut s = Sender::new(a_root, delete, dry_run, false);
    s.unsettled(unsettled.iter().map(|p| p.as_bytes().to_vec()).collect());
    let mut r = Receiver::new();
    let mut to_r: Vec<Frame> = Vec::new(); // control, in order
    let mut data: Vec<Frame> = Vec::new(); // chunks, any order
    let mut to_s: Vec<Frame> = Vec::new();
    let mut report = Vec::new();
    let mut finished = None;
    let mut deltas_asked = 0;
    let mut gave_up = Vec::new();

    for _round in 0..100_000 {
        while let Some(ev) = s.poll() {
            match ev {
                SenderEvent::Send(f) => to_r.push(roundtrip(&f)),
                SenderEvent::Read { id, loc, against } => {
                    if let Some(t) = after {
                        let now = t.nodes.get(&loc.path);
                        let there = match now {
                            Some(Node::File(f)) => {
                                chunk_locs(&loc.path, f).any(|(i, l)| i == id && l == loc)
                            }
                            _ => false,
                        };
                        if !there {
                            // What the push driver does: the machine decides.
                            s.read_failed(id, &loc, against.clone());
                            if s.wants_reread(&loc.path, a) {
                                let found = match now {
                                    // A file read again has no link: the scan finds those.
                                    Some(Node::File(f)) => {
                                        let f = FileNode {
                                            link: None,
                                            ..f.clone()
                                        };
                                        let meta = meta_of(&Node::File(f.clone()));
                                        Ok((f, meta))
                                    }
                                    _ => Err("vanished".to_string()),
                                };
                                s.reread(loc.path, id, against, found);
                            }
                            continue;
                        }
                    }
                    let bytes = content[&id].clone();
                    assert!(a.nodes.contains_key(&loc.path));
                    let raw_len = bytes.len() as u32;
                    let (codec, data_bytes) = match against {
                        Some(sig) => (Codec::Delta, delta::delta(&sig, &bytes)),
                        None => (Codec::Raw, bytes),
                    };
                    data.push(roundtrip(&Frame::Chunk {
                        id,
                        raw_len,
                        codec,
                        data: data_bytes,
                    }));
                }
                SenderEvent::Report(m, _, p) => report.push((m, p)),
                SenderEvent::GaveUp { path, .. } => gave_up.push(path),
                SenderEvent::Finished { root, totals } => finished = Some((root, totals)),
            }
        }
        while let Some(act) = r.poll() {
            match act {
                Action::Send(f) | Action::Finish(f) => to_s.push(roundtrip(&f)),
                Action::Remove { path } => {
                    fs.nodes.retain(|k, _| {
                        !(k == &path || (k.starts_with(&path) && k.get(path.len()) == Some(&b'/')))
                    });
                }
                Action::MakeDir { path, mode, meta } => {
                    fs.nodes.insert(
                        path,
                        Node::Dir {
                            mode,
                            entries: Vec::new(),
                            attrs: attrs_in(&meta),
                        },
                    );
                }
                Action::Symlink { path, target, meta } => {
                    fs.nodes.insert(
                        path,
                        Node::Symlink {
                            target,
                            attrs: attrs_in(&meta),
                        },
                    );
                }
                Action::SetFileMeta { path, mode, meta } => match fs.nodes.get_mut(&path) {
                    Some(Node::File(f)) => {
                        f.mode = mode;
                        f.mtime_ns = meta.mtime_ns;
                        f.attrs = attrs_in(&meta);
                    }
                    other => panic!("SetFileMeta on {other:?}"),
                },
                Action::StartFile { key, path, node } => {
                    let n = node.chunks.len();
                    parts.insert(key, Part { path, node });
                    r.file_started(key, &vec![false; n], &|id| index.get(id).cloned());
                }
                Action::CopyLocal {
                    key,
                    index: i,
                    from,
                } => {
                    // The simulated local read: bytes of the chunk at `from` in b.
                    let Some(Node::File(f)) = b.nodes.get(&from.path) else {
                        panic!("copy from a non-file {from:?}");
                    };
                    let src = f.chunks.iter().find(|c| index[&c.id] == from).unwrap();
                    assert_eq!(src.id, parts[&key].node.chunks[i].id);
                    r.chunk_written(key, i, true);
                }
                Action::ReadBase { id, base, from } => {
                    assert!(b.nodes.contains_key(&from.path));
                    let sig = delta::Signature::of(&content[&base]);
                    bases.insert(id, content[&base].clone());
                    r.base_read(id, base, sig);
                }
                Action::Write {
                    key,
                    index: i,
                    data,
                } => {
                    assert_eq!(ChunkId::of(data.bytes()), parts[&key].node.chunks[i].id);
                    r.chunk_written(key, i, false);
                }
                Action::FinishFile { key, mode, meta } => {
                    let p = parts.remove(&key).unwrap();
                    let mut node = p.node;
                    node.mode = mode;
                    node.mtime_ns = meta.mtime_ns;
                    node.attrs = attrs_in(&meta);
                    fs.nodes.insert(p.path, Node::File(node));
                    r.file_finished(key);
                }
                Action::AbortFile { key } => {
                    parts.remove(&key);
                }
                Action::HardLink { path, to } => {
                    // The same inode: `to`'s content and metadata, and `to` as the link.
                    let Some(Node::File(mut f)) = fs.nodes.get(&to).cloned() else {
                        panic!("hard link to a non-file {to:?}");
                    };
                    f.link = Some(to);
                    fs.nodes.insert(path, Node::File(f));
                }
                Action::SetDirMeta { path, mode, meta } => {
                    if let Some(Node::Dir {
                        mode: m, attrs: a, ..
                    }) = fs.nodes.get_mut(&path)
                    {
                        (*m, *a) = (mode, attrs_in(&meta));
                    }
                }
                Action::Fail { reason } => panic!("the receiver gave up: {reason}"),
                Action::Rescan { .. } => {
                    rehash(&mut fs);
                    r.rescanned(fs.root_hash().unwrap());
                }
            }
        }
        if finished.is_some() {
            break;
        }
        // Deliver one message: control frames in order per direction, chunks in any order.
        let total = to_r.len().min(1) + to_s.len().min(1) + data.len();
        assert!(total > 0, "deadlock: nothing to deliver and not finished");
        let pick = shuffle(total) % total;
        if pick == 0 && !to_r.is_empty() {
            let f = to_r.remove(0);
            r.handle(f, b, b_root).unwrap();
        } else if pick <= 1 && !to_s.is_empty() {
            let f = to_s.remove(0);
            deltas_asked += usize::from(matches!(f, Frame::WantDelta { .. }));
            s.handle(f, a, &mut |_, n| Some(meta_of(n))).unwrap();
        } else {
            let i = pick
                .saturating_sub(to_r.len().min(1) + to_s.len().min(1))
                .min(data.len() - 1);
            if let Frame::Chunk {
                id,
                data: d,
                codec,
                raw_len,
            } = data.remove(i)
            {
                let d = match codec {
                    Codec::Delta => delta::apply(&bases[&id], &d, raw_len as usize).unwrap(),
                    _ => d,
                };
                r.handle_chunk(Verified::check(&id, d).expect("the sender sent a wrong chunk"));
            }
        }
    }
    let (receiver_root, totals) = finished.expect("session did not finish");
    Outcome {
        receiver_tree: fs,
        sender_root: a_root,
        receiver_root,
        totals,
        report,
        deltas_asked,
        gave_up,
    }
}

fn lcg(seed: u64) -> impl FnMut(usize) -> usize {
    let mut x = seed;
    move |n| {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((x >> 33) as usize) % n.max(1)
    }
}

/// Sender trees use mtime from the node; give directories mode only (no mtime in nodes).
fn tree(s: &crate::manifest::tests::Spec) -> Tree {
    build(s)
}

/// Pushes tree `sa` linked by `la` into tree `sb` linked by `lb` (with --delete): the
/// receiver must end equal to the sender, links included.
fn push_linked(
    sa: &crate::manifest::tests::Spec,
    la: &[(u8, u8)],
    sb: &crate::manifest::tests::Spec,
    lb: &[(u8, u8)],
    seed: u64,
) -> Result<(), TestCaseError> {
    push_with((sa, la, &[]), (sb, lb, &[]), seed)
}

/// A tree to push: its shape, hard links ([`link_files`]) and attributes ([`set_attrs`]).
type Shaped<'a> = (
    &'a crate::manifest::tests::Spec,
    &'a [(u8, u8)],
    &'a [(u8, u8)],
);

/// Pushes tree `a` into tree `b` (with --delete): the receiver must end equal to the
/// sender, links and attributes included.
fn push_with(a: Shaped, b: Shaped, seed: u64) -> Result<(), TestCaseError> {
    let shaped = |(s, links, attrs): Shaped| {
        let mut t = tree(s);
        // Attributes first: a hard link shares its inode's, as link_files copies them.
        set_attrs(&mut t, attrs);
        link_files(&mut t, links);
        t
    };
    let (a, b) = (shaped(a), shaped(b));
    let out = run(&a, &b, true, false, lcg(seed));
    prop_assert_eq!(out.receiver_root, out.sender_root);
    prop_assert_eq!(&out.receiver_tree, &a);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// After a push with --delete, the receiver's tree equals the sender's, whatever the
    /// starting trees and the delivery order of chunks.
    #[test]
    fn push_makes_receiver_equal_sender(sa in spec(), sb in spec(), seed in any::<u64>()) {
        let (a, b) = (tree(&sa), tree(&sb));
        let out = run(&a, &b, true, false, lcg(seed));
        prop_assert_eq!(out.receiver_root, out.sender_root);
        prop_assert_eq!(&out.receiver_tree, &a);
    }

    /// The same with hard links on both sides, linked differently: the receiver ends linked
    /// exactly as the sender, whatever the order in which the descent meets the paths.
    #[test]
    fn push_makes_receiver_linked_as_sender(
        sa in spec(),
        sb in spec(),
        la in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        lb in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        seed in any::<u64>(),
    ) {
        push_linked(&sa, &la, &sb, &lb, seed)?;
    }

    /// A receiver with the sender's tree, linked differently (or not at all).
    #[test]
    fn relinking_the_same_tree(
        sa in spec(),
        la in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        lb in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        seed in any::<u64>(),
    ) {
        push_linked(&sa, &la, &sa, &lb, seed)?;
    }

    /// With owners and xattrs on some nodes, also on a receiver whose tree differs from the
    /// sender's only in those: it ends with the sender's, on files, symlinks and
    /// directories, linked or not.
    #[test]
    fn push_makes_attributes_equal(
        sa in spec(),
        sb in spec(),
        la in prop::collection::vec((any::<u8>(), any::<u8>()), 0..4),
        pa in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        pb in prop::collection::vec((any::<u8>(), any::<u8>()), 0..6),
        seed in any::<u64>(),
    ) {
        push_with((&sa, &la, &pa), (&sb, &[], &pb), seed)?;
        push_with((&sa, &la, &pa), (&sa, &la, &pb), seed)?;
    }

    /// The common case: the receiver holds an older version of the same tree.
    #[test]
    fn push_of_a_mutation(sa in spec(), ops in prop::collection::vec((any::<u8>(), any::<u8>()), 1..4), seed in any::<u64>()) {
        let a = tree(&sa);
        let b = tree(&mutate(&sa, &ops));
        let out = run(&a, &b, true, false, lcg(seed));
        prop_assert_eq!(out.receiver_root, out.sender_root);
        prop_assert_eq!(&out.receiver_tree, &a);
    }
}

/// A tree with the given files (path, chunk content byte, link) and the directories above
/// them, hashed.
fn files_tree(files: &[(&str, u8, Option<&str>)]) -> Tree {
    let mut t = Tree::default();
    let dir = || Node::Dir {
        mode: 0o755,
        entries: Vec::new(),
        attrs: None,
    };
    t.nodes.insert(Vec::new(), dir());
    for (path, content, link) in files {
        let path = path.as_bytes().to_vec();
        let mut at = crate::manifest::parent(&path);
        while !at.is_empty() {
            t.nodes.insert(at.to_vec(), dir());
            at = crate::manifest::parent(at);
        }
        let chunk = crate::manifest::ChunkRef {
            id: ChunkId::of(&[*content, 0]),
            len: 2,
        };
        let node = FileNode {
            size: 2,
            mode: 0o644,
            mtime_ns: 1,
            chunks: vec![chunk],
            link: link.map(|l| l.as_bytes().to_vec()),
            attrs: None,
        };
        t.nodes.insert(path, Node::File(node));
    }
    rehash(&mut t);
    t
}

/// A file the receiver has in another version is asked for as a delta against the old
/// version's chunk at the same offset (`WantDelta`, produced by the receiver's machine once
/// the driver says the base was read), and ends equal.
#[test]
fn a_changed_file_is_asked_for_as_a_delta_against_its_old_version() {
    let with_big = |version: u8| {
        let mut t = files_tree(&[("f", 0, None), ("same", 3, None)]);
        if let Some(Node::File(f)) = t.nodes.get_mut(&b"f"[..]) {
            let bytes = big(version);
            f.chunks = vec![crate::manifest::ChunkRef {
                id: ChunkId::of(&bytes),
                len: bytes.len() as u32,
            }];
            f.size = bytes.len() as u64;
        }
        rehash(&mut t);
        t
    };
    let (a, b) = (with_big(1), with_big(0));
    for seed in 0..20 {
        let out = run(&a, &b, true, false, lcg(seed));
        assert_eq!(out.receiver_root, out.sender_root);
        assert_eq!(out.receiver_tree, a);
        assert_eq!(out.deltas_asked, 1, "seed {seed}");
    }
}

/// Links are made where the receiver has separate copies, also when the first path of the
/// inode is new and is offered after its links (a deeper path, reached one round trip
/// later), and separate files are unlinked where the receiver has them linked.
#[test]
fn hard_links_follow_the_sender_whatever_the_descent_order() {
    let a = files_tree(&[
        ("a/x", 9, None),
        ("b", 9, Some("a/x")),
        ("c", 9, Some("a/x")),
        ("d", 4, None),
        ("e", 4, None),
    ]);
    let b = files_tree(&[
        ("b", 9, None),
        ("c", 9, None),
        ("d", 4, None),
        ("e", 4, Some("d")),
    ]);
    for seed in 0..20 {
        let out = run(&a, &b, true, false, lcg(seed));
        assert_eq!(out.receiver_tree, a, "seed {seed}");
        assert_eq!(out.receiver_root, out.sender_root);
        assert_eq!(out.totals.chunks_received, 0, "every chunk is local");
    }
}

#[test]
fn equal_roots_finish_without_descending() {
    let s = crate::manifest::tests::Spec::Dir(0o755, Default::default());
    let a = tree(&s);
    let out = run(&a, &a, false, false, lcg(1));
    assert_eq!(out.totals, Totals::default());
}

#[test]
fn without_delete_extraneous_entries_survive() {
    use crate::manifest::tests::Spec;
    let f = |c| Spec::File {
        content: c,
        len: 2,
        mode: 0o644,
        mtime: 1,
    };
    let a = tree(&Spec::Dir(0o755, [(b"keep".to_vec(), f(1))].into()));
    let b = tree(&Spec::Dir(0o755, [(b"extra".to_vec(), f(2))].into()));
    let out = run(&a, &b, false, false, lcg(2));
    assert!(out.receiver_tree.nodes.contains_key(&b"extra"[..]));
    assert!(out.receiver_tree.nodes.contains_key(&b"keep"[..]));
    assert_ne!(out.receiver_root, out.sender_root);
}

#[test]
fn chunks_the_receiver_has_are_reused_not_sent() {
    use crate::manifest::tests::Spec;
    let f = |c, len| Spec::File {
        content: c,
        len,
        mode: 0o644,
        mtime: 1,
    };
    // Receiver has a file with chunks (7,0),(7,1); the sender renamed it and appended one.
    let a = tree(&Spec::Dir(0o755, [(b"renamed".to_vec(), f(7, 3))].into()));
    let b = tree(&Spec::Dir(0o755, [(b"old".to_vec(), f(7, 2))].into()));
    let out = run(&a, &b, true, false, lcg(3));
    assert_eq!(out.receiver_tree, a);
    assert_eq!(out.totals.chunks_reused, 2);
    assert_eq!(out.totals.chunks_received, 1);
}

#[test]
fn dry_run_reports_and_changes_nothing() {
    use crate::manifest::tests::Spec;
    let f = |c| Spec::File {
        content: c,
        len: 1,
        mode: 0o644,
        mtime: 1,
    };
    let a = tree(&Spec::Dir(
        0o755,
        [(b"new".to_vec(), f(1)), (b"same".to_vec(), f(2))].into(),
    ));
    let b = tree(&Spec::Dir(
        0o755,
        [(b"old".to_vec(), f(3)), (b"same".to_vec(), f(2))].into(),
    ));
    let out = run(&a, &b, true, true, lcg(4));
    assert_eq!(out.receiver_tree, b);
    let mut report = out.report;
    report.sort();
    assert_eq!(
        report,
        vec![(b'+', b"new".to_vec()), (b'-', b"old".to_vec())]
    );
}

#[test]
fn unknown_version_is_refused_cleanly() {
    let mut r = Receiver::new();
    let t = Tree::default();
    let err = r
        .handle(
            Frame::Hello {
                version: 99,
                root: Hash([0; 32]),
                delete: false,
                dry_run: false,
                owners: false,
                verify_dest: false,
                options: false,
                itemize: false,
            },
            &t,
            Hash([1; 32]),
        )
        .unwrap_err();
    assert_eq!(err, ProtoError::Version { theirs: 99 });
    assert!(matches!(r.poll(), Some(Action::Send(Frame::Refuse { .. }))));
}

/// The owners negotiation, both ways: a sender that compares owners is answered with a
/// `HelloAck` by a receiver that can set them, and refused (with the reason, which the
/// sender's machine turns into its error) by one that cannot.
#[test]
fn owners_are_accepted_only_by_a_receiver_that_can_set_them() {
    let t = Tree::default();
    for can_own in [true, false] {
        let mut s = Sender::new(Hash([1; 32]), false, false, true);
        let mut r = Receiver::new().with_can_own(can_own);
        let Some(SenderEvent::Send(hello)) = s.poll() else {
            panic!("the sender does not start with a frame")
        };
        assert!(
            matches!(hello, Frame::Hello { owners: true, .. }),
            "{hello:?}"
        );
        let handled = r.handle(roundtrip(&hello), &t, Hash([2; 32]));
        let Some(Action::Send(reply)) = r.poll() else {
            panic!("the receiver does not answer the Hello")
        };
        let answered = s.handle(roundtrip(&reply), &t, &mut |_, _| None);
        if can_own {
            assert_eq!(handled, Ok(()));
            assert!(matches!(reply, Frame::HelloAck { .. }), "{reply:?}");
            assert_eq!(answered, Ok(()));
        } else {
            assert_eq!(handled, Err(ProtoError::CannotOwn));
            let why = ProtoError::CannotOwn.to_string();
            assert_eq!(
                reply,
                Frame::Refuse {
                    reason: why.clone()
                }
            );
            assert_eq!(answered, Err(ProtoError::Refused(why)));
        }
    }
}

/// Which scan a `Hello` needs: again in the sender's owners mode when it differs, or with
/// the sender's filter rules; none when the session will be refused.
#[test]
fn the_scan_a_hello_needs() {
    use crate::proto::rescan_for;
    // (hello owners, scanned owners, filtered, can own) -> rescan
    for (case, want) in [
        ((false, false, false, false), None),
        ((true, true, false, true), None),
        ((false, true, false, true), Some(false)),
        ((true, false, false, true), Some(true)),
        ((false, false, true, false), Some(false)),
        ((true, true, true, true), Some(true)),
        ((true, false, false, false), None),
        ((true, false, true, false), None),
    ] {
        assert_eq!(rescan_for(case.0, case.1, case.2, case.3), want, "{case:?}");
    }
}

#[test]
fn frames_out_of_order_are_errors_not_panics() {
    let mut r = Receiver::new();
    let t = Tree::default();
    assert!(
        r.handle(Frame::Want { ids: vec![] }, &t, Hash([0; 32]))
            .is_err()
    );
    let mut s = Sender::new(Hash([0; 32]), false, false, false);
    assert!(
        s.handle(Frame::GetNodes { paths: vec![] }, &t, &mut |_, _| None)
            .is_err()
    );
}

// ------------------------------- codec -------------------------------

#[test]
fn every_frame_round_trips() {
    let node = Node::Symlink {
        target: b"t".to_vec(),
        attrs: None,
    };
    let frames = vec![
        Frame::Hello {
            version: VERSION,
            root: Hash([1; 32]),
            delete: true,
            dry_run: false,
            owners: true,
            verify_dest: true,
            options: true,
            itemize: true,
        },
        Frame::HelloAck {
            version: VERSION,
            root: Hash([2; 32]),
            free: Some(123_456),
        },
        Frame::HelloAck {
            version: VERSION,
            root: Hash([2; 32]),
            free: None,
        },
        Frame::Refuse {
            reason: "no".into(),
        },
        Frame::GetNodes {
            paths: vec![vec![], b"a/b".to_vec(), vec![0xff]],
        },
        Frame::Nodes {
            items: vec![
                NodeItem {
                    path: b"a".to_vec(),
                    node: node.into(),
                    meta: Meta {
                        mtime_ns: -5,
                        uid: 1,
                        gid: 2,
                        xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
                    },
                },
                NodeItem {
                    path: b"f".to_vec(),
                    node: Offered::File(FileNode {
                        size: 3,
                        mode: 0o644,
                        mtime_ns: 7,
                        chunks: vec![crate::manifest::ChunkRef {
                            id: ChunkId([4; 32]),
                            len: 3,
                        }],
                        link: Some(b"b/c".to_vec()),
                        attrs: None,
                    }),
                    meta: Meta::default(),
                },
                NodeItem {
                    path: Vec::new(),
                    node: Offered::Dir {
                        mode: 0o755,
                        entries: vec![
                            Listed {
                                name: b"a".to_vec(),
                                kind: crate::manifest::Kind::Symlink,
                                hash: Hash([5; 32]).short(),
                            },
                            Listed {
                                name: vec![0xff],
                                kind: crate::manifest::Kind::Dir,
                                hash: Hash([6; 32]).short(),
                            },
                        ],
                        attrs: None,
                    },
                    meta: Meta::default(),
                },
            ],
        },
        Frame::Vanished {
            path: b"x".to_vec(),
        },
        Frame::Unsettled {
            paths: vec![Vec::new(), b"a/b".to_vec()],
        },
        Frame::Options {
            rules: b"+ keep\n- *.tmp\n".to_vec(),
            delete_excluded: true,
            max_delete: 7,
        },
        Frame::Want {
            ids: vec![ChunkId([3; 32])],
        },
        Frame::WantDelta {
            id: ChunkId([3; 32]),
            base: ChunkId([7; 32]),
            sig: delta::Signature::of(&[5; 200]),
        },
        Frame::Chunk {
            id: ChunkId([4; 32]),
            raw_len: 70,
            codec: Codec::Delta,
            data: vec![64, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0],
        },
        Frame::Chunk {
            id: ChunkId([4; 32]),
            raw_len: 3,
            codec: Codec::Raw,
            data: vec![1, 2, 3],
        },
        Frame::Chunk {
            id: ChunkId([4; 32]),
            raw_len: 300,
            codec: Codec::Zstd,
            data: vec![9],
        },
        Frame::Report {
            items: vec![(b'+', 0, b"p".to_vec()), (b'm', 5, b"q".to_vec())],
        },
        Frame::Done {
            root: Hash([5; 32]),
            totals: Totals {
                files: 1,
                chunks_received: 2,
                chunks_reused: 3,
                bytes_reused: 4,
                removed: 5,
            },
        },
        Frame::Packed {
            raw_len: 40,
            data: vec![7, 8],
        },
        Frame::Probe {
            version: VERSION,
            owners: true,
            streams: 4,
        },
        Frame::ProbeAck {
            version: VERSION,
            bulk: true,
        },
        Frame::File {
            item: NodeItem {
                path: b"d/f".to_vec(),
                node: Offered::File(FileNode {
                    size: 3,
                    mode: 0o600,
                    mtime_ns: 9,
                    chunks: vec![crate::manifest::ChunkRef {
                        id: ChunkId([4; 32]),
                        len: 3,
                    }],
                    link: None,
                    attrs: Some(Hash([8; 32])),
                }),
                meta: Meta {
                    mtime_ns: 9,
                    uid: 3,
                    gid: 4,
                    xattrs: vec![(b"user.a".to_vec(), Vec::new())],
                },
            },
        },
        Frame::Dirs {
            items: vec![
                DirItem {
                    path: Vec::new(),
                    mode: 0o755,
                    meta: Meta::default(),
                },
                DirItem {
                    path: b"d".to_vec(),
                    mode: 0o1777,
                    meta: Meta {
                        mtime_ns: -1,
                        uid: 0,
                        gid: 0,
                        xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
                    },
                },
            ],
        },
        Frame::Symlinks {
            items: vec![NodeItem {
                path: b"d/l".to_vec(),
                node: Offered::Symlink {
                    target: b"../f".to_vec(),
                    attrs: None,
                },
                meta: Meta {
                    mtime_ns: 5,
                    uid: 1,
                    gid: 1,
                    xattrs: Vec::new(),
                },
            }],
        },
        Frame::BulkDone { files: 12 },
    ];
    let mut stream = Vec::new();
    for f in &frames {
        f.encode(&mut stream);
    }
    let mut got = Vec::new();
    let mut at = 0;
    while let Some((f, used)) = decode(&stream[at..]).unwrap() {
        got.push(f);
        at += used;
    }
    assert_eq!(got, frames);
    // Every strict prefix of a frame is "need more", never an error.
    let one = frames[4].to_bytes();
    for cut in 0..one.len() {
        assert_eq!(decode(&one[..cut]), Ok(None), "prefix {cut}");
    }
}

#[test]
fn packed_frames_unpack_in_order_and_refuse_nesting_and_trailing_bytes() {
    use super::stream::{PackError, StreamDecoder, StreamEncoder, pack, unpack};
    let nodes = |n: u8| Frame::GetNodes {
        paths: (0..50)
            .map(|i| format!("usr/share/doc/package-{n}-{i}").into_bytes())
            .collect(),
    };
    let (mut enc, mut dec) = (StreamEncoder::new(), StreamDecoder::new());
    let mut sizes = Vec::new();
    for n in 0..3 {
        let Frame::Packed { raw_len, data } = pack(&mut enc, &nodes(n), 1).unwrap() else {
            panic!("not packed");
        };
        sizes.push((raw_len, data.len()));
        assert_eq!(unpack(&mut dec, raw_len, &data).unwrap(), nodes(n));
    }
    assert!(
        sizes.iter().all(|&(raw, z)| z * 2 < raw as usize),
        "{sizes:?}"
    );

    let bad = |frames: &[Frame]| {
        let mut raw = Vec::new();
        for f in frames {
            f.encode(&mut raw);
        }
        let data = StreamEncoder::new().compress(&raw, 1).unwrap();
        unpack(&mut StreamDecoder::new(), raw.len() as u32, &data)
    };
    let inner = Frame::Packed {
        raw_len: 1,
        data: vec![0],
    };
    assert!(matches!(bad(&[inner]), Err(PackError::Frame(_))));
    assert!(matches!(
        bad(&[nodes(0), nodes(1)]),
        Err(PackError::Frame(_))
    ));
    assert!(matches!(
        bad(&[]),
        Err(PackError::Stream(_) | PackError::Frame(_))
    ));
}

#[test]
fn oversized_and_empty_frames_are_refused_from_the_header() {
    let mut b = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
    b.push(1);
    assert_eq!(decode(&b), Err(FrameError::TooLarge(MAX_FRAME + 1)));
    assert_eq!(decode(&[0, 0, 0, 0]), Err(FrameError::Empty));
    assert_eq!(decode(&[1, 0, 0, 0, 200]), Err(FrameError::UnknownTag(200)));
}

#[test]
fn chunk_head_is_the_chunk_frame_without_its_data() {
    use super::codec::{CHUNK_HEAD, ChunkHead};
    let f = Frame::Chunk {
        id: ChunkId([4; 32]),
        raw_len: 5,
        codec: Codec::Raw,
        data: b"hello".to_vec(),
    };
    let bytes = f.to_bytes();
    let head: &[u8; CHUNK_HEAD] = bytes[4..4 + CHUNK_HEAD].try_into().unwrap();
    let h = ChunkHead::decode(bytes.len() - 4, head).unwrap();
    assert_eq!(h.encode()[..], bytes[..4 + CHUNK_HEAD]);
    assert_eq!((h.id, h.raw_len, h.data_len), (ChunkId([4; 32]), 5, 5));
    // Another length than the frame's, or another frame, is refused.
    assert!(ChunkHead::decode(bytes.len() - 3, head).is_err());
    let mut want = Frame::Want {
        ids: vec![ChunkId([1; 32])],
    }
    .to_bytes();
    want.resize(4 + CHUNK_HEAD, 0);
    let other: &[u8; CHUNK_HEAD] = want[4..].try_into().unwrap();
    assert!(ChunkHead::decode(CHUNK_HEAD, other).is_err());
}

#[test]
fn compressed_chunk_announcing_more_than_the_frame_limit_is_refused() {
    let frame = |raw_len: u32| Frame::Chunk {
        id: ChunkId([7; 32]),
        raw_len,
        codec: Codec::Zstd,
        data: vec![1, 2, 3],
    };
    assert!(decode(&frame(MAX_FRAME as u32).to_bytes()).is_ok());
    assert!(matches!(
        decode(&frame(MAX_FRAME as u32 + 1).to_bytes()),
        Err(FrameError::Malformed { .. })
    ));
}

#[test]
fn traversal_paths_are_refused_by_the_decoder() {
    for bad in [
        &b".."[..],
        b"../x",
        b"/etc/passwd",
        b"a//b",
        b"a/./b",
        b"a/..",
        b"a\0b",
    ] {
        for f in [
            Frame::GetNodes {
                paths: vec![bad.to_vec()],
            },
            Frame::Vanished { path: bad.to_vec() },
            Frame::Unsettled {
                paths: vec![bad.to_vec()],
            },
            Frame::Nodes {
                items: vec![NodeItem {
                    path: bad.to_vec(),
                    node: Node::Symlink {
                        target: vec![],
                        attrs: None,
                    }
                    .into(),
                    meta: Meta::default(),
                }],
            },
        ] {
            let err = decode(&f.to_bytes()).unwrap_err();
            assert!(err.to_string().contains("unsafe path"), "{bad:?}: {err}");
        }
    }
}

#[test]
fn directory_listings_are_canonical_and_never_whole_directories() {
    use crate::manifest::{Entry, Kind};
    let item = |node: Offered| Frame::Nodes {
        items: vec![NodeItem {
            path: b"d".to_vec(),
            node,
            meta: Meta::default(),
        }],
    };
    let listed = |name: &[u8]| Listed {
        name: name.to_vec(),
        kind: Kind::File,
        hash: Hash([1; 32]).short(),
    };
    for (entries, want) in [
        (vec![listed(b"b"), listed(b"a")], "not sorted"),
        (vec![listed(b"a"), listed(b"a")], "not sorted"),
        (vec![listed(b"..")], "invalid entry name"),
        (vec![listed(b"a/b")], "invalid entry name"),
    ] {
        let err = decode(
            &item(Offered::Dir {
                mode: 0,
                entries,
                attrs: None,
            })
            .to_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().contains(want), "{err}");
    }
    // A directory node with whole hashes is not a listing: it does not decode as one.
    let whole = Node::Dir {
        mode: 0o755,
        entries: vec![Entry {
            name: b"a".to_vec(),
            kind: Kind::File,
            hash: Hash([1; 32]),
        }],
        attrs: None,
    };
    let mut body = vec![5];
    body.extend_from_slice(&1u32.to_le_bytes());
    body.extend_from_slice(&1u32.to_le_bytes());
    body.push(b'd');
    let bytes = whole.to_bytes();
    body.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    body.extend_from_slice(&bytes);
    body.extend_from_slice(&[0; 8 + 4 + 4 + 4 + 1]);
    assert!(codec::decode_body(&body).is_err());
    // What the receiver compares: names, kinds and short hashes, and the mode.
    let listing = Offered::from(whole.clone());
    assert!(listing.matches(&whole));
    let Node::Dir {
        mut entries, mode, ..
    } = whole.clone()
    else {
        unreachable!()
    };
    entries[0].hash.0[31] ^= 1; // beyond the short hash: not seen
    assert!(listing.matches(&Node::Dir {
        mode,
        entries: entries.clone(),
        attrs: None,
    }));
    entries[0].hash.0[0] ^= 1;
    assert!(!listing.matches(&Node::Dir {
        mode,
        entries,
        attrs: None
    }));
    assert!(!listing.matches(&Node::Symlink {
        target: vec![],
        attrs: None
    }));
}

#[test]
fn signatures_outside_what_a_receiver_sends_are_refused() {
    let want = |block: u32, n: usize| Frame::WantDelta {
        id: ChunkId([1; 32]),
        base: ChunkId([2; 32]),
        sig: delta::Signature {
            block,
            blocks: vec![
                delta::BlockSig {
                    weak: 0,
                    strong: [0; 8],
                };
                n
            ],
        },
    };
    assert!(decode(&want(64, 3).to_bytes()).is_ok());
    for f in [
        want(0, 1),
        want(1, 1),
        want(63, 1),
        want(2 << 20, 1),
        want(4096, 16385),
    ] {
        let err = decode(&f.to_bytes()).unwrap_err();
        assert!(err.to_string().contains("signature"), "{err}");
    }
}

#[test]
fn huge_counts_are_refused_before_allocating() {
    // A `want` frame claiming 2^32-1 ids in a 9-byte body.
    let mut b = 9u32.to_le_bytes().to_vec();
    b.push(7);
    b.extend_from_slice(&u32::MAX.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    assert!(matches!(decode(&b), Err(FrameError::Malformed { .. })));
    let _ = codec::check_len(5);
}

proptest! {
    #[test]
    fn decoder_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode(&bytes);
    }
}

/// Two paths of one inode change before their chunk is read: the sender reads the first
/// path again and offers it anew, never the second (its content is the first's), so the
/// receiver ends linked as the scan found them, with the new content, whatever the order
/// of the failed reads. (Offering the second path anew raced the receiver: a `Nodes` frame
/// after the transfer was over failed the push.)
#[test]
fn a_changing_hard_linked_file_is_read_again_only_at_its_first_path() {
    let a = files_tree(&[("f1", 7, None), ("f2", 7, Some("f1"))]);
    let after = files_tree(&[("f1", 8, None), ("f2", 8, None)]);
    let b = files_tree(&[]);
    for seed in 0..40 {
        let out = run_with(&a, &b, false, false, lcg(seed), Some(&after), &[]);
        assert!(out.gave_up.is_empty(), "seed {seed}: {:?}", out.gave_up);
        let Some(Node::File(f2)) = out.receiver_tree.nodes.get(&b"f2"[..]) else {
            panic!("seed {seed}: no f2")
        };
        assert_eq!(f2.link.as_deref(), Some(&b"f1"[..]), "seed {seed}");
        let Some(Node::File(new)) = after.nodes.get(&b"f2"[..]) else {
            unreachable!()
        };
        assert_eq!(f2.chunks, new.chunks, "seed {seed}");
        assert_eq!(out.receiver_root, out.receiver_tree.root_hash().unwrap());
    }
}

/// Two files share a chunk and one of them changes before the chunk is read: the session
/// still ends (the sender keeps every place of a chunk, and tries the next when one fails),
/// with each file as it was scanned or as it is now, never without it.
#[test]
fn a_chunk_shared_with_a_changed_file_still_reaches_the_others() {
    let a = files_tree(&[("f1", 7, None), ("f2", 7, None), ("g", 3, None)]);
    let after = files_tree(&[("f1", 8, None), ("f2", 9, None), ("g", 3, None)]);
    let b = files_tree(&[]);
    for seed in 0..40 {
        let out = run_with(&a, &b, false, false, lcg(seed), Some(&after), &[]);
        for p in [&b"f1"[..], b"f2", b"g"] {
            let chunks = |t: &Tree| match t.nodes.get(p) {
                Some(Node::File(f)) => Some(f.chunks.clone()),
                _ => None,
            };
            let got = chunks(&out.receiver_tree);
            assert!(
                got.is_some() && (got == chunks(&a) || got == chunks(&after)),
                "seed {seed}: {} is {got:?}",
                String::from_utf8_lossy(p)
            );
        }
    }
}

/// Paths the sender could not read are never deleted, nor what is below them, even with
/// `--delete`; the rest is deleted as usual, and a dry run does not list them.
#[test]
fn unsettled_paths_survive_delete() {
    let a = files_tree(&[("keep", 1, None), ("d/x", 2, None)]);
    let b = files_tree(&[
        ("keep", 1, None),
        ("unread", 5, None),
        ("closed/inner", 6, None),
        ("d/x", 2, None),
        ("d/extra", 3, None),
    ]);
    for seed in 0..20 {
        let out = run_with(&a, &b, true, false, lcg(seed), None, &["unread", "closed"]);
        let has = |p: &str| out.receiver_tree.nodes.contains_key(p.as_bytes());
        assert!(has("unread") && has("closed/inner"), "seed {seed}");
        assert!(!has("d/extra"), "seed {seed}: the rest is deleted");
        let dry = run_with(&a, &b, true, true, lcg(seed), None, &["unread", "closed"]);
        let listed: Vec<_> = dry.report.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(listed, vec![b"d/extra".to_vec()], "seed {seed}");
    }
}

/// A `File` frame carries a file below the root, a `Symlinks` frame only symlinks below
/// it: anything else is refused by the decoder, before a driver sees it.
#[test]
fn bulk_frames_carry_only_their_kind_below_the_root() {
    let file = Offered::File(FileNode {
        size: 0,
        mode: 0o644,
        mtime_ns: 0,
        chunks: Vec::new(),
        link: None,
        attrs: None,
    });
    let link = Offered::Symlink {
        target: b"t".to_vec(),
        attrs: None,
    };
    let item = |path: &[u8], node: &Offered| NodeItem {
        path: path.to_vec(),
        node: node.clone(),
        meta: Meta::default(),
    };
    for bad in [
        Frame::File {
            item: item(b"l", &link),
        },
        Frame::File {
            item: item(b"", &file),
        },
        Frame::Symlinks {
            items: vec![item(b"f", &file)],
        },
        Frame::Symlinks {
            items: vec![item(b"", &link)],
        },
    ] {
        assert!(decode(&bad.to_bytes()).is_err(), "{bad:?}");
    }
    for good in [
        Frame::File {
            item: item(b"f", &file),
        },
        Frame::Symlinks {
            items: vec![item(b"d/l", &link)],
        },
    ] {
        assert!(decode(&good.to_bytes()).is_ok(), "{good:?}");
    }
}
