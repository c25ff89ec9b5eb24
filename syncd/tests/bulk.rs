//! The bulk copy of a first remote sync into an empty `syncd serve` root (protocol 8):
//! what it carries and what it leaves to the session, when it is not used, an interrupted
//! one, and a hostile sender's bulk streams.

// Test helpers unwrap freely: a failure is a test failure with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use syncd::chunk::ChunkId;
use syncd::manifest::{ChunkRef, FileNode};
use syncd::proto::codec::{ChunkHead, Codec, Frame, Meta, NodeItem, Offered, VERSION};

/// A tree with what a bulk copy carries (small files, an empty one, one of several chunks)
/// and what it leaves to the session (a symlink, a hard link, a file over 16 MiB, an empty
/// directory), with modes and mtimes of its own on directories.
fn tree(root: &Path) {
    sample(root);
    write(root, "d/empty-file", b"");
    write(root, "d/chunks", &noise(3 << 20, 7));
    write(root, "d/deep/er/x", b"x");
    write(root, "huge", &noise(20 << 20, 9));
    fs::hard_link(root.join("a.txt"), root.join("d/hard")).unwrap();
    fs::set_permissions(root.join("d/deep"), fs::Permissions::from_mode(0o750)).unwrap();
    for (dir, secs) in [
        ("d/deep/er", 1_500_000_000),
        ("d", 1_400_000_000),
        ("", 1_300_000_000),
    ] {
        let t = filetime::FileTime::from_unix_time(secs, 7);
        filetime::set_file_mtime(root.join(dir), t).unwrap();
    }
}

fn mtime_mode(p: &Path) -> (i64, i64, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec(), m.mode())
}

#[test]
fn a_first_sync_into_an_empty_root_goes_as_a_bulk_copy_and_the_session_completes_it() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    tree(src.path());
    let server = Server::start(&receiver, dst.path(), &sid);
    let v = server.push_ok(&sender, src.path(), &rid, &[]);
    // Every regular file read whole went in bulk: all but the 20 MiB one and the link,
    // which the session sent and made.
    assert_eq!(v["bulk_files"], 8, "{v}");
    assert_eq!(v["files_transferred"], 9, "{v}");
    assert_trees_equal(src.path(), dst.path());
    for rel in [
        ".",
        "d",
        "d/deep",
        "d/deep/er",
        "d/chunks",
        "empty",
        "link",
        "huge",
    ] {
        assert_eq!(
            mtime_mode(&src.path().join(rel)),
            mtime_mode(&dst.path().join(rel)),
            "mtime/mode of {rel}"
        );
    }
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&dst.path().join("a.txt")),
        ino(&dst.path().join("d/hard"))
    );
    let o = receiver.syncd(&[&"diff", &src.path(), &dst.path()]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    // The root now holds a tree: the next push is the ordinary session, and sends nothing.
    let v = server.push_ok(&sender, src.path(), &rid, &[]);
    assert_eq!(v["bulk_files"], 0, "{v}");
    assert_eq!(v["chunks_sent"], 0, "{v}");
}

#[test]
fn a_root_that_holds_anything_or_a_push_that_reports_per_file_gets_no_bulk_copy() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let src = tempfile::tempdir().unwrap();
    sample(src.path());
    // One stray file, even one the source has not: the session compares, deletes, resumes.
    let dst = tempfile::tempdir().unwrap();
    write(dst.path(), "stray", b"s");
    let server = Server::start(&receiver, dst.path(), &sid);
    let v = server.push_ok(&sender, src.path(), &rid, &["--delete"]);
    assert_eq!(
        (&v["bulk_files"], &v["removed"]),
        (&0.into(), &1.into()),
        "{v}"
    );
    assert_trees_equal(src.path(), dst.path());
    drop(server);
    // Reports per file: --itemize-changes and --dry-run list every file, as rsync does.
    for flag in ["--itemize-changes", "--dry-run"] {
        let dst = tempfile::tempdir().unwrap();
        let server = Server::start(&receiver, dst.path(), &sid);
        let (rc, v, err) = push_json(
            &sender,
            src.path(),
            &server.addr,
            &["--peer-id", &rid, flag],
        );
        assert!(rc == 0 || flag == "--dry-run", "{err}");
        assert_eq!(v["bulk_files"].as_u64().unwrap_or(0), 0, "{flag}: {v}");
        assert!(v["changes"].as_array().unwrap().len() >= 6, "{flag}: {v}");
    }
}

/// A bulk copy killed at points through its run (SIGKILL of the pusher): whatever is at a
/// final path is whole, and the next push converges and leaves no part file.
#[test]
fn a_bulk_copy_killed_mid_way_leaves_whole_files_and_the_next_push_converges() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let src = tempfile::tempdir().unwrap();
    for d in 0..10 {
        for f in 0..40 {
            write(
                src.path(),
                &format!("d{d}/f{f}"),
                &noise(40_000, d * 100 + f),
            );
        }
    }
    for after_ms in [150, 400, 900] {
        let dst = tempfile::tempdir().unwrap();
        let server = Server::start(&receiver, dst.path(), &sid);
        let mut push = sender
            .cmd()
            .arg("push")
            .arg(src.path())
            .arg(&server.addr)
            .args(["--peer-id", &rid, "--bwlimit", "40M"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(after_ms));
        push.kill().unwrap();
        push.wait().unwrap();
        let mut whole = 0;
        for e in walkdir(dst.path()) {
            let rel = e.strip_prefix(dst.path()).unwrap();
            let name = rel.file_name().unwrap().to_string_lossy();
            if name.starts_with(".syncd-") || e.is_dir() {
                continue;
            }
            assert_eq!(
                fs::read(&e).unwrap(),
                fs::read(src.path().join(rel)).unwrap(),
                "{rel:?} is torn"
            );
            whole += 1;
        }
        assert!(
            whole < 400,
            "killed at {after_ms} ms, the push had finished; slow it down"
        );
        let v = server.push_ok(&sender, src.path(), &rid, &[]);
        assert_eq!(v["bulk_files"], 0, "the root is not empty any more: {v}");
        assert_trees_equal(src.path(), dst.path());
        let parts: Vec<_> = walkdir(dst.path())
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".syncd-")
            })
            .collect();
        assert!(parts.is_empty(), "part files left: {parts:?}");
    }
}

/// Every path below `root` (not `root` itself).
fn walkdir(root: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// What a hostile sender does after `Probe`: the frames of its one bulk stream and those
/// of its control stream; returns the receiver's answer to the probe and its last words.
fn hostile(
    rid: &str,
    sender: &Env,
    addr: &str,
    probe: Frame,
    bulk: Vec<u8>,
    control: Vec<u8>,
) -> (Vec<u8>, String) {
    let (rt, conn) = raw_client(sender, rid, addr);
    rt.block_on(async move {
        let (mut w, mut r) = conn.open_bi().await.unwrap();
        w.write_all(&probe.to_bytes()).await.unwrap();
        let mut len = [0u8; 4];
        r.read_exact(&mut len).await.unwrap();
        let mut ack = vec![0u8; u32::from_le_bytes(len) as usize];
        r.read_exact(&mut ack).await.unwrap();
        if !bulk.is_empty() {
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(&bulk).await.unwrap();
            let _ = s.finish();
        }
        w.write_all(&control).await.unwrap();
        let got = read_rest(&mut r).await;
        conn.close(0u32.into(), b"bye");
        (ack, got)
    })
}

fn probe(streams: u32) -> Frame {
    Frame::Probe {
        version: VERSION,
        owners: false,
        streams,
    }
}

/// A `File` frame for `path` whose one chunk is `content`, and the chunk frame that
/// carries `sent` as that chunk.
fn file_and_chunk(path: &[u8], content: &[u8], sent: &[u8]) -> Vec<u8> {
    let id = ChunkId::of(content);
    let node = FileNode {
        size: content.len() as u64,
        mode: 0o644,
        mtime_ns: 0,
        chunks: vec![ChunkRef {
            id,
            len: content.len() as u32,
        }],
        link: None,
        attrs: None,
    };
    let mut out = Frame::File {
        item: NodeItem {
            path: path.to_vec(),
            node: Offered::File(node),
            meta: Meta::default(),
        },
    }
    .to_bytes();
    let head = ChunkHead {
        id,
        raw_len: sent.len() as u32,
        codec: Codec::Raw,
        data_len: sent.len(),
    };
    out.extend_from_slice(&head.encode());
    out.extend_from_slice(sent);
    out
}

#[test]
fn a_hostile_bulk_stream_is_refused_and_writes_nothing() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let server = Server::start(&receiver, &root, &sid);
    let done = |files| Frame::BulkDone { files }.to_bytes();
    let took = Frame::ProbeAck {
        version: VERSION,
        bulk: true,
    }
    .to_bytes();
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "a path out of the root",
            file_and_chunk(b"../escape", b"x", b"x"),
            done(1),
            "unsafe path",
        ),
        (
            "bytes that are not the chunk's",
            file_and_chunk(b"f", b"good", b"evil"),
            done(1),
            "does not match its hash",
        ),
        (
            "a chunk of another file",
            [file_frame(b"f", b"one"), chunk_frame(b"g", b"two")].concat(),
            done(1),
            "is not chunk 0 of bulk file f",
        ),
        (
            "fewer files than it says",
            file_and_chunk(b"f", b"one", b"one"),
            done(2),
            "sent 2 files, 1 arrived",
        ),
        (
            "a file cut short by the end of its stream",
            file_frame(b"f", b"one"),
            done(1),
            "ended inside f",
        ),
    ];
    for (what, bulk, control, says) in cases {
        let (ack, reply) = hostile(&rid, &sender, &server.addr, probe(1), bulk, control);
        assert_eq!(
            &ack[..],
            &took[4..],
            "{what}: the empty root takes the bulk copy"
        );
        assert!(
            reply.contains(says),
            "{what}: the receiver says why: {reply:?}\n{}",
            server.log()
        );
        let names: Vec<_> = fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| !n.to_string_lossy().starts_with(".syncd-"))
            .collect();
        assert!(names.is_empty(), "{what}: written into the root: {names:?}");
        // Part files of a refused session are left for a resume; none may be whole and
        // placed, and the next case needs an empty root again.
        for e in fs::read_dir(&root).unwrap() {
            fs::remove_file(e.unwrap().path()).unwrap();
        }
    }
    assert!(!outer.path().join("escape").exists());
    // Another version, and a number of streams it will not take.
    let (ack, _) = hostile(
        &rid,
        &sender,
        &server.addr,
        Frame::Probe {
            version: VERSION - 1,
            owners: false,
            streams: 1,
        },
        Vec::new(),
        Vec::new(),
    );
    assert!(
        String::from_utf8_lossy(&ack).contains("protocol version"),
        "{ack:?}"
    );
    let (ack, _) = hostile(
        &rid,
        &sender,
        &server.addr,
        probe(1000),
        Vec::new(),
        Vec::new(),
    );
    let declined = Frame::ProbeAck {
        version: VERSION,
        bulk: false,
    }
    .to_bytes();
    assert_eq!(&ack[..], &declined[4..]);
    // The server is still up and serves a legitimate push, in bulk.
    let src = tempfile::tempdir().unwrap();
    sample(src.path());
    let v = server.push_ok(&sender, src.path(), &rid, &[]);
    assert!(v["bulk_files"].as_u64().unwrap() > 0, "{v}");
    assert_trees_equal(src.path(), &root);
}

/// Length of a chunk frame's prefix and head.
fn codec_head() -> usize {
    4 + syncd::proto::codec::CHUNK_HEAD
}

/// Length of the `File` frame [`file_and_chunk`] starts with.
fn file_frame_len(path: &[u8], content: &[u8]) -> usize {
    file_and_chunk(path, content, content).len() - content.len() - codec_head()
}

/// The `File` frame of [`file_and_chunk`] alone.
fn file_frame(path: &[u8], content: &[u8]) -> Vec<u8> {
    file_and_chunk(path, content, content)[..file_frame_len(path, content)].to_vec()
}

/// The `Chunk` frame of [`file_and_chunk`] alone.
fn chunk_frame(path: &[u8], content: &[u8]) -> Vec<u8> {
    file_and_chunk(path, content, content)[file_frame_len(path, content)..].to_vec()
}

/// `--progress` of a bulk copy: totals once the scan is over, files done of files sent.
#[test]
fn a_bulk_copy_reports_progress_with_the_scans_totals() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..2 {
        write(src.path(), &format!("f{i}"), &noise(8 << 20, 70 + 2 * i));
    }
    let server = Server::start(&receiver, dst.path(), &sid);
    let o = sender
        .cmd()
        .arg("push")
        .arg(src.path())
        .arg(&server.addr)
        .args([
            "--peer-id",
            &rid,
            "--bwlimit",
            "20M",
            "--progress",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(json(&o)["bulk_files"], 2);
    let err = stderr(&o);
    let lines: Vec<_> = err.lines().filter(|l| l.contains(": sent ")).collect();
    assert!(!lines.is_empty(), "{err}");
    assert!(
        lines.iter().all(|l| l.contains("of at most 16.0 MiB")
            && l.contains("of 2 files (of 2 scanned)")
            && l.contains("bit/s on the wire")),
        "{err}"
    );
}
