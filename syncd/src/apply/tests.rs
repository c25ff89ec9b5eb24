use super::attrs::*;
use super::guard::*;
use super::*;
use crate::chunk::tests::noise;
use crate::chunk::{ChunkParams, chunk};
use std::os::unix::fs::symlink as make_symlink;
use std::process::Command;

fn node_of(data: &[u8], mode: u32, mtime_ns: i64) -> FileNode {
    FileNode {
        size: data.len() as u64,
        mode,
        mtime_ns,
        chunks: chunk(data, ChunkParams::default())
            .iter()
            .map(|c| ChunkRef {
                id: c.id,
                len: c.len,
            })
            .collect(),
        link: None,
        attrs: None,
    }
}

/// `(offset, end)` of every chunk.
fn spans(node: &FileNode) -> Vec<(usize, usize)> {
    let mut at = 0;
    node.chunks
        .iter()
        .map(|c| {
            let s = (at, at + c.len as usize);
            at = s.1;
            s
        })
        .collect()
}

fn meta(mode: u32, mtime_ns: i64) -> Meta {
    Meta {
        mode,
        mtime_ns,
        ..Meta::default()
    }
}

fn setup() -> (tempfile::TempDir, Target) {
    let tmp = tempfile::tempdir().unwrap();
    let t = Target::open(tmp.path(), PartKey::from_bytes([1; 32])).unwrap();
    (tmp, t)
}

fn at(t: &Target, rel: &[u8]) -> PathBuf {
    t.abs(rel)
}

fn part_files(dir: &Path) -> Vec<Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_bytes().to_vec())
        .filter(|n| n.starts_with(b".syncd-") && n.ends_with(b".part"))
        .collect()
}

/// Assembles `data` at `rel`, writing chunks last to first.
fn assemble(t: &Target, rel: &[u8], data: &[u8], m: &Meta) {
    let node = node_of(data, m.mode, m.mtime_ns);
    let mut part = t.begin_file(rel, &node).unwrap();
    for (i, (s, e)) in spans(&node).into_iter().enumerate().rev() {
        part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
            .unwrap();
    }
    part.finish(m).unwrap();
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    fsmeta::mtime_ns(m)
}

#[test]
fn path_problems() {
    let cases: &[(&[u8], Option<&str>)] = &[
        (b"", None),
        (b"a", None),
        (b"a/b/c", None),
        (b"a\xff/\xfe", None),
        (b"..a/b..", None),
        (b"/etc/x", Some("absolute")),
        (b"../x", Some("`..`")),
        (b"a/../../x", Some("`..`")),
        (b"a/..", Some("`..`")),
        (b"./a", Some("`.`")),
        (b"a/./b", Some("`.`")),
        (b"a//b", Some("empty")),
        (b"a/", Some("empty")),
        (b"a\0b", Some("NUL")),
        (b"d/.syncd-f.0123456789abcdef.part", None),
    ];
    for &(rel, want) in cases {
        let got = path_problem(rel);
        match (got, want) {
            (None, None) => {}
            (Some(g), Some(w)) if g.contains(w) => {}
            _ => panic!("path {}: got {got:?}, want {want:?}", display_path(rel)),
        }
    }
}

#[test]
fn assembles_a_multi_chunk_file_with_mode_and_mtime() {
    let (_tmp, t) = setup();
    let data = noise(1_500_000, 1);
    let node = node_of(&data, 0o640, 1_600_000_000_123_456_789);
    assert!(node.chunks.len() > 5, "{} chunks", node.chunks.len());
    let rel = b"d/sub/f";
    let mut part = t.begin_file(rel, &node).unwrap();
    assert!(!part.resumed());
    assert_eq!(part.present().unwrap(), vec![false; node.chunks.len()]);
    for (i, (s, e)) in spans(&node).into_iter().enumerate().rev() {
        part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
            .unwrap();
    }
    assert!(!at(&t, rel).exists(), "final file exists before finish");
    assert_eq!(part_files(&at(&t, b"d/sub")).len(), 1);
    part.finish(&meta(0o640, node.mtime_ns)).unwrap();

    assert_eq!(fs::read(at(&t, rel)).unwrap(), data);
    let m = fs::symlink_metadata(at(&t, rel)).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o640);
    assert_eq!(mtime_ns(&m), node.mtime_ns);
    assert!(part_files(&at(&t, b"d/sub")).is_empty());
}

#[test]
fn an_empty_file_has_no_chunks() {
    let (_tmp, t) = setup();
    assemble(&t, b"empty", b"", &meta(0o600, 0));
    assert_eq!(fs::read(at(&t, b"empty")).unwrap(), b"");
}

#[test]
fn wrong_chunk_is_refused_and_nothing_written() {
    let (_tmp, t) = setup();
    let data = noise(300_000, 2);
    let node = node_of(&data, 0o644, 0);
    let (s, e) = spans(&node)[0];
    let mut part = t.begin_file(b"f", &node).unwrap();
    let mut wrong = data[s..e].to_vec();
    wrong[7] ^= 1;
    for bad in [wrong.as_slice(), &data[s..e - 1]] {
        match part.write_chunk(0, &Verified::of(bad.to_vec())) {
            Err(ApplyError::ChunkMismatch { path, index: 0, .. }) => assert_eq!(path, b"f"),
            other => panic!("expected ChunkMismatch, got {other:?}"),
        }
    }
    assert!(matches!(
        part.write_chunk(node.chunks.len(), &Verified::of(b"x".to_vec())),
        Err(ApplyError::NoSuchChunk { .. })
    ));
    let name = part_files(t.root()).pop().unwrap();
    let bytes = fs::read(t.root().join(OsStr::from_bytes(&name))).unwrap();
    assert!(bytes.iter().all(|&b| b == 0), "part file was written to");
    match part.finish(&meta(0o644, 0)) {
        Err(ApplyError::Incomplete {
            missing, first: 0, ..
        }) => {
            assert_eq!(missing, node.chunks.len())
        }
        other => panic!("expected Incomplete, got {other:?}"),
    }
    assert!(!at(&t, b"f").exists());
}

#[test]
fn inconsistent_node_is_refused() {
    let (_tmp, t) = setup();
    let mut node = node_of(&noise(100_000, 3), 0o644, 0);
    node.size += 1;
    assert!(matches!(
        t.begin_file(b"f", &node),
        Err(ApplyError::BadNode { .. })
    ));
}

#[test]
fn resume_reports_exactly_the_chunks_written() {
    let (_tmp, t) = setup();
    let data = noise(1_200_000, 4);
    let node = node_of(&data, 0o644, 5);
    let written: Vec<bool> = (0..node.chunks.len()).map(|i| i % 2 == 0).collect();
    let mut part = t.begin_file(b"f", &node).unwrap();
    for (i, (s, e)) in spans(&node).into_iter().enumerate() {
        if written[i] {
            part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                .unwrap();
        }
    }
    drop(part);
    assert!(!at(&t, b"f").exists());

    let mut part = t.begin_file(b"f", &node).unwrap();
    assert!(part.resumed());
    assert_eq!(part.present().unwrap(), written);
    for (i, (s, e)) in spans(&node).into_iter().enumerate() {
        if !written[i] {
            part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                .unwrap();
        }
    }
    part.finish(&meta(0o644, 5)).unwrap();
    assert_eq!(fs::read(at(&t, b"f")).unwrap(), data);
}

#[test]
fn a_hard_linked_part_file_is_not_reused() {
    let (_tmp, t) = setup();
    let data = noise(200_000, 9);
    let node = node_of(&data, 0o644, 0);
    drop(t.begin_file(b"f", &node).unwrap());
    let name = part_files(t.root()).pop().unwrap();
    let other = at(&t, b"other");
    fs::hard_link(t.root().join(OsStr::from_bytes(&name)), &other).unwrap();
    let mut part = t.begin_file(b"f", &node).unwrap();
    assert!(!part.resumed());
    for (i, (s, e)) in spans(&node).into_iter().enumerate() {
        part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
            .unwrap();
    }
    part.finish(&meta(0o644, 0)).unwrap();
    assert_eq!(fs::read(at(&t, b"f")).unwrap(), data);
    assert!(
        fs::read(&other).unwrap().iter().all(|&b| b == 0),
        "wrote through a link"
    );
}

#[test]
fn resume_rewrites_a_torn_zero_chunk() {
    let (_tmp, t) = setup();
    let mut data = noise(300_000, 5);
    data.extend(vec![0u8; 1 << 20]);
    data.extend(noise(300_000, 6));
    let node = node_of(&data, 0o644, 0);
    let (zi, (zs, _)) = spans(&node)
        .into_iter()
        .enumerate()
        .find(|&(_, (s, e))| data[s..e].iter().all(|&b| b == 0))
        .expect("a zero chunk");
    drop(t.begin_file(b"f", &node).unwrap());
    // An earlier attempt died in the middle of some write over the zero region.
    let name = part_files(t.root()).pop().unwrap();
    let pf = OpenOptions::new()
        .write(true)
        .open(t.root().join(OsStr::from_bytes(&name)))
        .unwrap();
    pf.write_all_at(b"torn", zs as u64 + 10).unwrap();

    let mut part = t.begin_file(b"f", &node).unwrap();
    let present = part.present().unwrap();
    assert!(!present[zi], "a torn zero chunk must not count as present");
    for (i, (s, e)) in spans(&node).into_iter().enumerate() {
        if !present[i] {
            part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                .unwrap();
        }
    }
    part.finish(&meta(0o644, 0)).unwrap();
    assert_eq!(fs::read(at(&t, b"f")).unwrap(), data);
}

#[test]
fn zeros_stay_sparse() {
    let (_tmp, t) = setup();
    let data = vec![0u8; 64 << 20];
    let node = node_of(&data, 0o644, 0);
    let mut part = t.begin_file(b"sparse", &node).unwrap();
    // A fresh part file is all holes: the zero chunks need not be sent at all.
    let present = part.present().unwrap();
    let missing: Vec<usize> = (0..present.len()).filter(|&i| !present[i]).collect();
    assert!(
        missing.len() <= 1,
        "zero chunks reported missing: {missing:?}"
    );
    for (i, (s, e)) in spans(&node).into_iter().enumerate() {
        if !present[i] {
            part.write_chunk(i, &Verified::of(data[s..e].to_vec()))
                .unwrap();
        }
    }
    part.finish(&meta(0o644, 0)).unwrap();
    let m = fs::symlink_metadata(at(&t, b"sparse")).unwrap();
    assert_eq!(m.len(), 64 << 20);
    assert!(
        m.blocks() * 512 < m.len() / 16,
        "{} bytes allocated for a {}-byte file of zeros",
        m.blocks() * 512,
        m.len()
    );
}

#[test]
fn traversal_is_refused_and_nothing_outside_is_touched() {
    let (_tmp, t) = setup();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), b"keep").unwrap();
    make_symlink(outside.path(), at(&t, b"evil")).unwrap();
    assemble(&t, b"x", b"x", &meta(0o644, 0));
    let node = node_of(b"data", 0o644, 0);
    let m = meta(0o755, 0);
    let paths: &[&[u8]] = &[
        b"../x",
        b"/etc/x",
        b"a/../../x",
        b"evil/f",
        b"evil/sub/f",
        b"evil/keep",
    ];
    for &rel in paths {
        let results = [
            t.begin_file(rel, &node).map(drop),
            t.symlink(rel, b"/etc/passwd", &m),
            t.mkdir(rel, &m),
            t.hard_link(rel, b"x"),
            t.hard_link(b"y", rel),
            t.remove(rel),
            t.set_dir_meta(rel, &m),
            t.set_file_meta(rel, &m, 1),
            t.read_span(rel, 0, 1).map(drop),
            t.cleanup_parts(rel).map(drop),
        ];
        for (op, r) in results.into_iter().enumerate() {
            match r {
                Err(ApplyError::UnsafePath { path, .. }) => assert_eq!(path, rel),
                other => panic!("op {op} on {}: {other:?}", display_path(rel)),
            }
        }
    }
    let mut names: Vec<_> = fs::read_dir(outside.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["keep"], "something was created outside the root");
    assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"keep");
    assert!(!at(&t, b"a").exists(), "a/../../x created a/");
    // The final component is never followed either.
    assert!(matches!(
        t.set_dir_meta(b"evil", &m),
        Err(ApplyError::UnsafePath { .. })
    ));
    assert!(matches!(
        t.read_span(b"evil", 0, 1),
        Err(ApplyError::Io { .. })
    ));
}

#[test]
fn type_changes() {
    let (_tmp, t) = setup();
    let outside = tempfile::tempdir().unwrap();
    let m = meta(0o755, 0);
    // File over a directory tree.
    t.mkdir(b"d", &m).unwrap();
    t.mkdir(b"d/sub", &m).unwrap();
    assemble(&t, b"d/sub/f", b"inner", &meta(0o644, 0));
    assemble(&t, b"d", b"now a file", &meta(0o644, 0));
    assert_eq!(fs::read(at(&t, b"d")).unwrap(), b"now a file");
    // Directory over a file.
    t.mkdir(b"d", &m).unwrap();
    assert!(fs::symlink_metadata(at(&t, b"d")).unwrap().is_dir());
    // Symlink over a directory tree.
    assemble(&t, b"d/f", b"inner", &meta(0o644, 0));
    t.symlink(b"d", b"target/elsewhere", &m).unwrap();
    assert_eq!(
        fs::read_link(at(&t, b"d")).unwrap(),
        Path::new("target/elsewhere")
    );
    // File over a symlink to outside: the link is replaced, its target untouched.
    fs::write(outside.path().join("o"), b"outside").unwrap();
    make_symlink(outside.path().join("o"), at(&t, b"l")).unwrap();
    assemble(&t, b"l", b"inside", &meta(0o644, 0));
    assert!(fs::symlink_metadata(at(&t, b"l")).unwrap().is_file());
    assert_eq!(fs::read(outside.path().join("o")).unwrap(), b"outside");
    // Directory over a symlink to a directory outside.
    make_symlink(outside.path(), at(&t, b"l2")).unwrap();
    t.mkdir(b"l2", &m).unwrap();
    assert!(fs::symlink_metadata(at(&t, b"l2")).unwrap().is_dir());
    assert!(outside.path().join("o").exists());
    assert!(part_files(t.root()).is_empty());
}

#[test]
fn remove_does_not_follow_symlinks() {
    let (_tmp, t) = setup();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("keep"), b"keep").unwrap();
    t.mkdir(b"tree", &meta(0o755, 0)).unwrap();
    t.mkdir(b"tree/sub", &meta(0o755, 0)).unwrap();
    assemble(&t, b"tree/sub/f", b"f", &meta(0o644, 0));
    make_symlink(outside.path(), at(&t, b"tree/sub/out")).unwrap();
    make_symlink(outside.path(), at(&t, b"link")).unwrap();
    t.remove(b"tree").unwrap();
    t.remove(b"link").unwrap();
    t.remove(b"never/was").unwrap();
    assert!(!at(&t, b"tree").exists());
    assert!(fs::symlink_metadata(at(&t, b"link")).is_err());
    assert_eq!(fs::read(outside.path().join("keep")).unwrap(), b"keep");
    assert!(matches!(t.remove(b""), Err(ApplyError::UnsafePath { .. })));
}

#[test]
fn non_utf8_names() {
    let (_tmp, t) = setup();
    t.mkdir(b"d\xff", &meta(0o750, 0)).unwrap();
    assemble(&t, b"d\xff/f\xfe", b"bytes", &meta(0o644, 0));
    t.symlink(b"d\xff/l\x80", b"f\xfe", &meta(0o777, 0))
        .unwrap();
    t.hard_link(b"h\xc3", b"d\xff/f\xfe").unwrap();
    t.set_dir_meta(b"d\xff", &meta(0o750, 7)).unwrap();
    let d = t.root().join(OsStr::from_bytes(b"d\xff"));
    assert_eq!(
        fs::read(d.join(OsStr::from_bytes(b"f\xfe"))).unwrap(),
        b"bytes"
    );
    assert_eq!(
        fs::read_link(d.join(OsStr::from_bytes(b"l\x80"))).unwrap(),
        Path::new(OsStr::from_bytes(b"f\xfe"))
    );
    let err = t
        .begin_file(b"d\xff/../x", &node_of(b"", 0, 0))
        .unwrap_err();
    assert!(err.to_string().contains("d\\xff/../x"), "{err}");
}

#[test]
fn hard_link_shares_the_inode() {
    let (_tmp, t) = setup();
    assemble(&t, b"a", b"linked", &meta(0o644, 0));
    assemble(&t, b"b/c", b"old", &meta(0o644, 0));
    t.hard_link(b"b/c", b"a").unwrap();
    t.hard_link(b"b/c", b"a").unwrap(); // already linked: nothing to do
    let ino = |rel: &[u8]| fs::symlink_metadata(at(&t, rel)).unwrap().ino();
    assert_eq!(ino(b"a"), ino(b"b/c"));
    assert_eq!(fs::read(at(&t, b"b/c")).unwrap(), b"linked");
    assert!(part_files(&at(&t, b"b")).is_empty());
    assert!(matches!(
        t.hard_link(b"z", b"missing"),
        Err(ApplyError::Io { .. })
    ));
}

/// Unmounts on drop, so a failing test does not leave a mount behind.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_is_no_space_and_abort_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .output()
        .unwrap();
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stderr);
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("cannot mount a tmpfs for the disk-full test: {msg}");
        }
        eprintln!("skipping disk-full test: cannot mount a tmpfs (needs root): {msg}");
        return;
    }
    let _mount = Mount(mnt.clone());
    let t = Target::open(&mnt, PartKey::from_bytes([1; 32])).unwrap();
    let data = noise(4 << 20, 7);
    let node = node_of(&data, 0o644, 0);
    let mut part = t.begin_file(b"big", &node).unwrap();
    let mut failure = None;
    for (i, (s, e)) in spans(&node).into_iter().enumerate() {
        if let Err(e) = part.write_chunk(i, &Verified::of(data[s..e].to_vec())) {
            failure = Some(e);
            break;
        }
    }
    match failure {
        Some(e @ ApplyError::NoSpace { .. }) => {
            assert_eq!(e.to_string(), "no space left on device while writing big")
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    part.abort().unwrap();
    let left: Vec<_> = fs::read_dir(&mnt).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn ownership_as_root() {
    let (_tmp, t) = setup();
    if !t.as_root {
        eprintln!("skipping ownership test: not running as root");
        return;
    }
    let m = Meta {
        mode: 0o4755,
        mtime_ns: 0,
        uid: Some(1234),
        gid: Some(5678),
        xattrs: vec![(b"trusted.syncd".to_vec(), b"t".to_vec())],
    };
    t.mkdir(b"d", &m).unwrap();
    assemble(&t, b"d/f", b"owned", &m);
    t.symlink(b"d/l", b"f", &m).unwrap();
    for rel in [&b"d"[..], b"d/f", b"d/l"] {
        let got = fs::symlink_metadata(at(&t, rel)).unwrap();
        assert_eq!(
            (got.uid(), got.gid()),
            (1234, 5678),
            "{}",
            display_path(rel)
        );
    }
    // The set-uid bit survives the chown that precedes it.
    let f = fs::symlink_metadata(at(&t, b"d/f")).unwrap();
    assert_eq!(f.mode() & 0o7777, 0o4755);
    match xattr::get(at(&t, b"d/f"), "trusted.syncd") {
        Ok(v) => assert_eq!(v.as_deref(), Some(&b"t"[..])),
        Err(e) if is_unsupported(&e) => {}
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn directory_meta_is_applied_last() {
    let (_tmp, t) = setup();
    t.mkdir(b"ro", &meta(0o555, 0)).unwrap();
    // Still writable until set_dir_meta, even when not root.
    assemble(&t, b"ro/f", b"x", &meta(0o644, 0));
    let when = 1_500_000_000_000_000_001;
    t.set_dir_meta(b"ro", &meta(0o555, when)).unwrap();
    t.set_dir_meta(b"", &meta(0o700, when)).unwrap();
    let m = fs::symlink_metadata(at(&t, b"ro")).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o555);
    assert_eq!(mtime_ns(&m), when);
    assert_eq!(mtime_ns(&fs::metadata(t.root()).unwrap()), when);
    fs::set_permissions(at(&t, b"ro"), Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn metadata_round_trips_through_meta_read() {
    let (_tmp, t) = setup();
    let src = at(&t, b"src");
    fs::write(&src, b"content").unwrap();
    fs::set_permissions(&src, Permissions::from_mode(0o640)).unwrap();
    let xattrs = match xattr::set(&src, "user.syncd.test", b"\x00value\xff") {
        Ok(()) => true,
        Err(e) if is_unsupported(&e) => false,
        Err(e) => panic!("{e}"),
    };
    filetime::set_file_mtime(&src, FileTime::from_unix_time(1_234_567_890, 42)).unwrap();
    let m = Meta::read(&src).unwrap();
    assert_eq!(m.mode, 0o640);
    assert_eq!(m.mtime_ns, 1_234_567_890_000_000_042);
    if xattrs {
        assert!(
            m.xattrs
                .contains(&(b"user.syncd.test".to_vec(), b"\x00value\xff".to_vec()))
        );
    }
    assemble(&t, b"dst", b"content", &m);
    let mut back = Meta::read(&at(&t, b"dst")).unwrap();
    // Security labels and the like are the destination's own.
    back.xattrs.retain(|(n, _)| n.starts_with(b"user."));
    let mut want = m.clone();
    want.xattrs.retain(|(n, _)| n.starts_with(b"user."));
    assert_eq!(back, want);

    // A metadata-only change in place.
    let changed = meta(0o600, 99);
    t.set_file_meta(b"dst", &changed, 1).unwrap();
    let got = Meta::read(&at(&t, b"dst")).unwrap();
    assert_eq!((got.mode, got.mtime_ns), (0o600, 99));
    assert_eq!(fs::read(at(&t, b"dst")).unwrap(), b"content");
}

#[test]
fn cleanup_removes_only_part_files() {
    let (_tmp, t) = setup();
    let node = node_of(&noise(50_000, 8), 0o644, 0);
    drop(t.begin_file(b"d/a", &node).unwrap());
    drop(t.begin_file(b"d/b", &node).unwrap());
    assemble(&t, b"d/keep", b"keep", &meta(0o644, 0));
    assert_eq!(t.cleanup_parts(b"d").unwrap(), 2);
    assert_eq!(t.cleanup_parts(b"d").unwrap(), 0);
    assert_eq!(t.cleanup_parts(b"missing").unwrap(), 0);
    let names: Vec<_> = fs::read_dir(at(&t, b"d"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["keep"]);
}

#[test]
fn read_span_reads_existing_bytes_only() {
    let (_tmp, t) = setup();
    assemble(&t, b"d/f", b"0123456789", &meta(0o644, 0));
    assert_eq!(t.read_span(b"d/f", 2, 3).unwrap(), b"234");
    assert_eq!(t.read_span(b"d/f", 10, 0).unwrap(), b"");
    assert!(matches!(
        t.read_span(b"d/f", 8, 3),
        Err(ApplyError::Io { .. })
    ));
    assert!(matches!(
        t.read_span(b"d/f", u64::MAX, u32::MAX),
        Err(ApplyError::Io { .. })
    ));
    assert!(matches!(
        t.read_span(b"d", 0, 1),
        Err(ApplyError::Io { .. })
    ));
    assert!(matches!(
        t.read_span(b"nope", 0, 1),
        Err(ApplyError::Io { .. })
    ));
}
