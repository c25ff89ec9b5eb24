//! End-to-end tests of `syncd push` (local and over QUIC to `syncd serve`), with the real
//! binary, real sockets on loopback and real filesystems, including the failure paths.

// Test helpers unwrap freely: a failure is a test failure with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A richer tree: modes, a sparse file, non-UTF-8 names, a dangling symlink.
fn rich(root: &Path) {
    sample(root);
    write(root, "exec.sh", b"#!/bin/sh\n");
    fs::set_permissions(root.join("exec.sh"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::create_dir_all(root.join("private")).unwrap();
    write(root, "private/key", b"k");
    fs::set_permissions(root.join("private/key"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9")),
        b"latin1",
    )
    .unwrap();
    std::os::unix::fs::symlink("/nonexistent/target", root.join("dangling")).unwrap();
    let sparse = fs::File::create(root.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    drop(sparse);
    let st = Command::new("touch")
        .args(["-h", "-d", "@1600000000"])
        .arg(root.join("link"))
        .status()
        .unwrap();
    assert!(st.success());
}

fn mtime_mode(p: &Path) -> (i64, i64, u32) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec(), m.mode())
}

#[test]
fn local_push_copies_everything_and_checks_the_root() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    rich(src.path());
    let dest = dst.path().join("copy/"); // created by push
    let (rc, v, err) = push_json(&env, src.path(), &dest, &[]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(v["identical"], true, "{v}");
    // Into nothing: the first copy finished without the protocol session.
    assert_eq!(v["direct_copy"], true, "{v}");
    assert_trees_equal(src.path(), &dest);
    for rel in [
        "exec.sh",
        "private",
        "private/key",
        "link",
        "dir/sub",
        "empty",
        "big",
        ".",
    ] {
        assert_eq!(
            mtime_mode(&src.path().join(rel)),
            mtime_mode(&dest.join(rel)),
            "mtime/mode of {rel}"
        );
    }
    // Sparse stays sparse.
    assert!(fs::metadata(dest.join("sparse")).unwrap().blocks() * 512 < (1 << 20));
    // syncd itself agrees, and a second push sends nothing.
    let o = env.syncd(&[&"diff", &src.path(), &dest]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    let (rc, v, _) = push_json(&env, src.path(), &dest, &[]);
    assert_eq!(rc, 0);
    assert_eq!(
        (v["files_transferred"].as_u64(), v["chunks_sent"].as_u64()),
        (Some(0), Some(0)),
        "{v}"
    );
    assert_eq!(v["direct_copy"], false, "{v}");
}

/// The first copy into an empty DEST when the source's manifest is current already: the
/// scan reads nothing, so every file is read again (and each chunk checked against its id)
/// by the copy itself, large and small, sparse and linked.
#[test]
fn a_first_copy_from_a_current_source_manifest_reads_the_files_again() {
    let env = Env::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rich(src.path());
    write(src.path(), "large", &noise(20 << 20, 3)); // over the 16 MiB a scan reads whole
    fs::hard_link(src.path().join("exec.sh"), src.path().join("dir/exec-link")).unwrap();
    xattr::set(src.path().join("a.txt"), "user.note", b"file").unwrap();
    xattr::set(src.path().join("dir"), "user.note", b"dir").unwrap();
    if is_root() {
        std::os::unix::fs::chown(src.path().join("private/key"), Some(1234), Some(5678)).unwrap();
    }
    let o = env.syncd(&[&"manifest", &src.path()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let (rc, v, err) = push_json(&env, src.path(), &dst.path().join(""), &[]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        (&v["identical"], &v["direct_copy"]),
        (&true.into(), &true.into()),
        "{v}"
    );
    assert_trees_equal(src.path(), dst.path());
    for rel in ["exec.sh", "private", "private/key", "link", "large", "."] {
        assert_eq!(
            mtime_mode(&src.path().join(rel)),
            mtime_mode(&dst.path().join(rel)),
            "mtime/mode of {rel}"
        );
    }
    for rel in ["a.txt", "dir"] {
        assert_eq!(
            xattr::get(dst.path().join(rel), "user.note").unwrap(),
            xattr::get(src.path().join(rel), "user.note").unwrap(),
            "xattr of {rel}"
        );
    }
    let owner = |root: &Path| {
        let m = fs::metadata(root.join("private/key")).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(dst.path()), owner(src.path()));
    let ino = |p: &str| fs::metadata(dst.path().join(p)).unwrap().ino();
    assert_eq!(ino("exec.sh"), ino("dir/exec-link"));
    assert!(fs::metadata(dst.path().join("sparse")).unwrap().blocks() * 512 < (1 << 20));
    let leftovers = Command::new("find")
        .arg(dst.path())
        .args(["-name", ".syncd-*"])
        .output()
        .unwrap();
    assert_eq!(stdout(&leftovers), "", "part files left behind");
    let o = env.syncd(&[&"diff", &src.path(), &dst.path()]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

#[test]
fn delete_removes_extraneous_entries_only_when_asked() {
    let env = Env::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sample(src.path());
    write(dst.path(), "stale/file", b"old");
    write(dst.path(), "a.txt", b"other content");
    let (rc, v, err) = push_json(&env, src.path(), &dst.path().join(""), &[]);
    assert_eq!(
        rc, 1,
        "roots differ while extraneous entries remain: {v} {err}"
    );
    assert!(err.contains("--delete"), "{err}");
    assert!(dst.path().join("stale/file").exists());
    assert_eq!(fs::read(dst.path().join("a.txt")).unwrap(), b"hello");
    let (rc, v, err) = push_json(&env, src.path(), &dst.path().join(""), &["--delete"]);
    assert_eq!(rc, 0, "{v} {err}");
    assert!(!dst.path().join("stale").exists());
    assert_trees_equal(src.path(), dst.path());
}

#[test]
fn renamed_big_file_is_deduplicated_not_resent() {
    let env = Env::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sample(src.path());
    assert_eq!(push_json(&env, src.path(), &dst.path().join(""), &[]).0, 0);
    fs::rename(src.path().join("big"), src.path().join("moved-big")).unwrap();
    let (rc, v, err) = push_json(&env, src.path(), &dst.path().join(""), &["--delete"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(v["chunks_sent"], 0, "the receiver had every chunk: {v}");
    assert!(
        v["bytes_deduplicated"].as_u64().unwrap() >= 12_000_000,
        "{v}"
    );
    assert_trees_equal(src.path(), dst.path());
}

#[test]
fn small_edits_travel_as_deltas_against_the_old_version() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, local, remote) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    write(src.path(), "small", &noise(1341, 1));
    write(src.path(), "d/big", &noise(600_000, 2));
    let server = Server::start(&receiver, remote.path(), &sid);
    let push = |dest: &dyn AsRef<std::ffi::OsStr>| {
        let (rc, v, err) = push_json(&sender, src.path(), dest, &["--peer-id", &rid]);
        assert_eq!(rc, 0, "{err}\n{}", server.log());
        v
    };
    push(&local.path().join(""));
    push(&server.addr);
    // A 17-byte append to a one-chunk file and 8 bytes overwritten inside a big file.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(src.path().join("small"))
        .unwrap();
    std::io::Write::write_all(&mut f, b"#pushbench000001\n").unwrap();
    drop(f);
    let f = fs::OpenOptions::new()
        .write(true)
        .open(src.path().join("d/big"))
        .unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, b"PB000001", 300_000).unwrap();
    drop(f);
    for v in [push(&local.path().join("")), push(&server.addr)] {
        assert_eq!(v["identical"], true);
        assert_eq!(v["chunks_sent"], 2, "{v}");
        // The two changed chunks hold at least 1358 + 16 KiB bytes; their deltas a block or
        // two each, plus the nodes of the root, `d` and the two files.
        let (sent, wire) = (
            v["bytes_sent"].as_u64().unwrap(),
            v["wire_bytes"].as_u64().unwrap(),
        );
        assert!(sent >= 1358 + 16384, "{v}");
        assert!(wire < 4096, "deltas, not whole chunks: {v}");
    }
    assert_trees_equal(src.path(), local.path());
    assert_trees_equal(src.path(), remote.path());
}

#[test]
fn dry_run_lists_changes_and_touches_nothing() {
    let env = Env::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(src.path(), "new", b"n");
    write(src.path(), "same", b"s");
    write(dst.path(), "old", b"o");
    let st = Command::new("cp")
        .arg("-a")
        .arg(src.path().join("same"))
        .arg(dst.path())
        .status()
        .unwrap();
    assert!(st.success());
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--dry-run",
        &"--delete",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(stdout(&o), "+ new\n- old\n");
    assert!(!dst.path().join("new").exists() && dst.path().join("old").exists());
}

#[test]
fn a_file_changing_during_the_push_is_never_stored_torn() {
    let env = Env::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = noise(4 << 20, 11);
    let b = noise(4 << 20, 12);
    write(src.path(), "hot", &a);
    let path = src.path().join("hot");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, path, a, b) = (stop.clone(), path.clone(), a.clone(), b.clone());
        std::thread::spawn(move || {
            let mut flip = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Rewrite in place, in two halves: readers can see torn states.
                use std::os::unix::fs::FileExt;
                let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
                let data = if flip { &a } else { &b };
                f.write_all_at(&data[..2 << 20], 0).unwrap();
                f.write_all_at(&data[2 << 20..], 2 << 20).unwrap();
                flip = !flip;
            }
        })
    };
    // What the source really holds at some moment: either version, or (the writer preempted
    // between its two writes, for longer than two reads of the file) one half of each. A
    // store assembled from chunks of different reads would cut elsewhere: FastCDC's chunk
    // boundaries are not at the middle.
    let held = |got: &[u8]| {
        let half = 2 << 20;
        let mixed = |x: &[u8], y: &[u8]| got[..half] == x[..half] && got[half..] == y[half..];
        got.len() == a.len() && (got == a || got == b || mixed(&a, &b) || mixed(&b, &a))
    };
    let mut rereads = 0;
    for _ in 0..3 {
        let (rc, v, err) = push_json(&env, src.path(), &dst.path().join(""), &[]);
        rereads += v["rereads"].as_u64().expect("the report counts re-reads");
        let unreadable = v["unreadable"].as_array().cloned().unwrap_or_default();
        let names_hot = unreadable
            .iter()
            .any(|p| p.as_str().is_some_and(|p| p.ends_with("hot")));
        match rc {
            // Sent: the destination holds one whole version, never a torn one.
            0 => {
                assert!(unreadable.is_empty(), "exit 0 leaves nothing unread: {v}");
                let got = fs::read(dst.path().join("hot")).expect("exit 0: hot was pushed");
                assert!(held(&got), "a torn file was stored");
            }
            // Read again each time it changed under the read, then given up on: exit 1
            // names it, and the destination keeps what it had (a whole version or none).
            1 => {
                assert!(names_hot, "exit 1 names the file given up on: {v}\n{err}");
                if let Ok(got) = fs::read(dst.path().join("hot")) {
                    assert!(held(&got), "a torn file was stored");
                }
            }
            _ => panic!("push failed: {err}"),
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    // The change under the read was seen: the file was read again (by the scan, or by the
    // sender when a chunk was no longer where the scan put it) in the three pushes of a file
    // rewritten without pause, and what was stored above was whole.
    assert!(rereads > 0, "no push read the changing file again");
    // Once the source is quiet, a push converges.
    let (rc, _, err) = push_json(&env, src.path(), &dst.path().join(""), &[]);
    assert_eq!(rc, 0, "{err}");
    assert_trees_equal(src.path(), dst.path());
}

// ------------------------------------------------------------------ remote

#[test]
fn remote_push_over_quic_with_pinned_peers() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    rich(src.path());
    let server = Server::start(&receiver, dst.path(), &sid);
    let v = server.push_ok(&sender, src.path(), &rid, &[]);
    assert_trees_equal(src.path(), dst.path());
    assert!(
        v["wire_bytes"].as_u64().unwrap() > v["bytes_sent"].as_u64().unwrap(),
        "wire bytes include overhead: {v}"
    );
    // The receiver is on this machine: no link to save, nothing is compressed, also not
    // 16 MB of text (some hundred chunks: elsewhere, one chunk in 64 is compressed to
    // measure what it would save).
    let text: String = (0..600_000)
        .map(|i| format!("line {i} of a text\n"))
        .collect();
    write(src.path(), "text", text.as_bytes());
    let (rc, v, err) = push_json(&sender, src.path(), &server.addr, &["--peer-id", &rid]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(v["bytes_encoded"], v["bytes_sent"], "{v}");
    // 1% change: only the changed file's chunks travel.
    write(src.path(), "dir/sub/c", b"changed");
    let (rc, v, err) = push_json(&sender, src.path(), &server.addr, &["--peer-id", &rid]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(v["chunks_sent"], 1, "{v}");
    assert_trees_equal(src.path(), dst.path());
    // The receiver has closed its manifest by the time the push exits: a check on the
    // receiving machine right after (same home as `serve`) can open it, several times over.
    for _ in 0..5 {
        write(src.path(), "dir/sub/c", &noise(100, 7));
        let (rc, _, err) = push_json(&sender, src.path(), &server.addr, &["--peer-id", &rid]);
        assert_eq!(rc, 0, "{err}");
        let o = receiver.syncd(&[&"diff", &src.path(), &dst.path()]);
        assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));
    }
}

#[test]
fn wrong_or_unknown_peers_are_rejected_in_the_handshake() {
    let (sender, receiver, stranger) = (Env::new(), Env::new(), Env::new());
    let (sid, rid, xid) = (init(&sender), init(&receiver), init(&stranger));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sample(src.path());
    let server = Server::start(&receiver, dst.path(), &sid);
    // The sender expects someone else at that address.
    let (rc, _, err) = push_json(&sender, src.path(), &server.addr, &["--peer-id", &xid]);
    assert_eq!(rc, 2);
    assert!(
        err.contains(&format!("expected {xid}")) && err.contains(&rid),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    // A client the server does not allow.
    let (rc, _, err) = push_json(&stranger, src.path(), &server.addr, &["--peer-id", &rid]);
    assert_eq!(rc, 2);
    assert!(err.contains("--allow"), "{err}");
    let log = server.wait_log("is not in --allow");
    assert!(
        log.contains(&format!("client {xid} is not in --allow")),
        "{log}"
    );
    // Nothing was written.
    assert_eq!(fs::read_dir(dst.path()).unwrap().count(), 0);
    // No TOFU: a remote push without --peer-id is refused before connecting.
    let (rc, _, err) = push_json(&sender, src.path(), &server.addr, &[]);
    assert_eq!(rc, 2);
    assert!(err.contains("--peer-id is required"), "{err}");
}

#[test]
fn serve_stops_cleanly_on_sigterm() {
    let (sender, receiver) = (Env::new(), Env::new());
    let sid = init(&sender);
    init(&receiver);
    let dst = tempfile::tempdir().unwrap();
    let mut server = Server::start(&receiver, dst.path(), &sid);
    let st = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}: {}", server.log());
            break;
        }
        assert!(Instant::now() < deadline, "serve ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A hand-driven client speaking the protocol, to play a malicious sender.
fn malicious(
    receiver_id: &str,
    sender: &Env,
    addr: &str,
    script: impl FnOnce(&mut Vec<u8>) + Send + 'static,
) -> String {
    let (rt, conn) = raw_client(sender, receiver_id, addr);
    rt.block_on(async move {
        let (mut w, mut r) = conn.open_bi().await.unwrap();
        let hello = plain_hello();
        w.write_all(&hello.to_bytes()).await.unwrap();
        let mut bytes = Vec::new();
        script(&mut bytes);
        w.write_all(&bytes).await.unwrap();
        let _ = w.finish();
        let got = read_rest(&mut r).await;
        conn.close(0u32.into(), b"bye");
        got
    })
}

#[test]
fn malicious_frames_are_refused_and_nothing_escapes_the_root() {
    use syncd::proto::codec::{Frame, Meta, NodeItem, Offered};
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let server = Server::start(&receiver, &root, &sid);

    // 1. Path traversal in a node.
    let reply = malicious(&rid, &sender, &server.addr, |out| {
        for path in [&b"../escape"[..], b"/tmp/abs-escape"] {
            Frame::Nodes {
                items: vec![NodeItem {
                    path: path.to_vec(),
                    node: Offered::Symlink {
                        target: b"/etc/passwd".to_vec(),
                        attrs: None,
                    },
                    meta: Meta::default(),
                }],
            }
            .encode(out);
        }
    });
    assert!(
        reply.contains("unsafe path"),
        "the receiver says why: {reply:?}"
    );
    // 2. An oversized frame header.
    let reply = malicious(&rid, &sender, &server.addr, |out| {
        out.extend_from_slice(&u32::MAX.to_le_bytes());
        out.extend_from_slice(&[0; 64]);
    });
    assert!(reply.contains("exceeds"), "{reply:?}");
    // 3. Garbage: its first four bytes read as a length far above the limit.
    let reply = malicious(&rid, &sender, &server.addr, |out| {
        out.extend_from_slice(&[7; 300])
    });
    let len = u32::from_le_bytes([7; 4]);
    assert!(
        reply.contains(&format!("frame of {len} bytes exceeds")),
        "the receiver refuses the garbage and says why: {reply:?}"
    );
    // 4. Garbage inside a frame of a valid length: an unknown tag.
    let reply = malicious(&rid, &sender, &server.addr, |out| {
        out.extend_from_slice(&296u32.to_le_bytes());
        out.extend_from_slice(&[0xee; 296]);
    });
    assert!(
        reply.contains("unknown frame tag 238"),
        "the receiver refuses the garbage and says why: {reply:?}"
    );

    assert!(!outer.path().join("escape").exists());
    assert!(!Path::new("/tmp/abs-escape").exists());
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        0,
        "nothing written into the root"
    );
    // The server is still up and serves a legitimate push.
    let src = tempfile::tempdir().unwrap();
    sample(src.path());
    let (rc, _, err) = push_json(&sender, src.path(), &server.addr, &["--peer-id", &rid]);
    assert_eq!(rc, 0, "{err}\n{}", server.log());
    assert_trees_equal(src.path(), &root);
}

/// A tmpfs of `size` mounted for the test (root only), unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .ok()?;
        if st.success() {
            Some(Mount(at.to_path_buf()))
        } else {
            assert!(
                !integration_tests::under_ci(),
                "cannot mount a tmpfs under CI=true (need root)"
            );
            eprintln!("skipping: cannot mount a tmpfs (not root?)");
            None
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn disk_full_is_a_clear_error_with_no_partial_file() {
    let env = Env::new();
    let (src, outer) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(src.path(), "small", b"fits");
    write(src.path(), "huge", &noise(8 << 20, 5));
    let before = fs::read(src.path().join("huge")).unwrap();
    let Some(mnt) = Mount::tmpfs(&outer.path().join("mnt"), "2m") else {
        return;
    };
    let o = env.syncd(&[&"push", &src.path(), &mnt.0.join("")]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("no space left on device while writing huge"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let leftovers: Vec<_> = fs::read_dir(&mnt.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !leftovers
            .iter()
            .any(|n| n == "huge" || n.as_bytes().starts_with(b".syncd-")),
        "{leftovers:?}"
    );
    assert_eq!(
        fs::read(src.path().join("huge")).unwrap(),
        before,
        "source unaffected"
    );
}

/// 64 MiB of incompressible files in `src` (8 of 8 MiB, from `seed`), for pushes that are
/// interrupted mid-way.
fn big_source(src: &Path, seed: u64) {
    for i in 0..8 {
        write(src, &format!("f{i}"), &noise(8 << 20, seed + i));
    }
}

/// A push of `src` to `addr` slowed to 80 Mbit/s (~6 s for [`big_source`]), so that it is
/// surely mid-way when the test interrupts it.
fn slow_push(sender: &Env, src: &Path, addr: &str, rid: &str) -> Child {
    sender
        .cmd()
        .arg("push")
        .arg(src)
        .arg(addr)
        .args(["--peer-id", rid, "--bwlimit", "80M", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// After an interrupted push: the next one succeeds, does not send again what arrived
/// before the interruption, and leaves `dst` equal to `src` (`diff -r` and `syncd diff`).
fn next_push_resumes(
    sender: &Env,
    receiver: &Env,
    src: &Path,
    dst: &Path,
    server: &Server,
    rid: &str,
) {
    let (rc, v, err) = push_json(sender, src, &server.addr, &["--peer-id", rid]);
    assert_eq!(rc, 0, "{err}\n{}", server.log());
    // What arrived before the interruption does not travel again: whole files a bulk copy
    // placed, and the chunks of part files.
    assert!(
        v["bytes_sent"].as_u64().unwrap() < v["bytes_scanned"].as_u64().unwrap(),
        "what arrived before the interruption was reused: {v}"
    );
    assert_trees_equal(src, dst);
    let o = receiver.syncd(&[&"diff", &src, &dst]);
    assert_eq!(code(&o), 0, "{}", stdout(&o));
}

#[test]
fn receiver_killed_mid_push_resumes_and_converges() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    big_source(src.path(), 100);
    let mut server = Server::start(&receiver, dst.path(), &sid);
    let push = slow_push(&sender, src.path(), &server.addr, &rid);
    std::thread::sleep(Duration::from_millis(3500));
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let o = push.wait_with_output().unwrap();
    assert_eq!(
        code(&o),
        2,
        "the push must fail when the receiver dies: {}",
        stderr(&o)
    );
    // No partial file at a final path: every final file is complete.
    assert!(
        complete_files(src.path(), dst.path()) < 8,
        "the push finished before the kill; slow it down"
    );
    // Restart; the push resumes and only sends what is missing.
    let server = Server::start(&receiver, dst.path(), &sid);
    next_push_resumes(&sender, &receiver, src.path(), dst.path(), &server, &rid);
}

/// Every final (non-part) file in `dst` equals its source; returns how many there are.
fn complete_files(src: &Path, dst: &Path) -> usize {
    let mut complete = 0;
    for e in fs::read_dir(dst).unwrap() {
        let name = e.unwrap().file_name();
        if name.as_bytes().starts_with(b".syncd-") {
            continue;
        }
        assert_eq!(
            fs::read(dst.join(&name)).unwrap(),
            fs::read(src.join(&name)).unwrap(),
            "{name:?} is torn"
        );
        complete += 1;
    }
    complete
}

/// A first local copy killed (SIGKILL) at points through its run: whatever is at a final
/// path is whole, and the next push, into the now non-empty DEST, goes through the session,
/// converges and leaves no part file.
#[test]
fn a_first_local_copy_killed_mid_way_leaves_whole_files_and_the_next_push_converges() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    for d in 0..20 {
        for f in 0..100 {
            write(
                src.path(),
                &format!("d{d}/f{f}"),
                &noise(20_000 + f * 300, d * 1000 + f as u64),
            );
        }
    }
    big_source(&src.path().join("big"), 40);
    // A full copy's time, then kills at fractions of it.
    let dst0 = tempfile::tempdir().unwrap();
    let t = Instant::now();
    let o = env.syncd(&[&"push", &"-q", &src.path(), &dst0.path().join("d/")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let full = t.elapsed();
    let mut cut_mid_copy = 0;
    // The copy itself is the first third or so; the rest is the scan's commit and the
    // destination's refresh.
    let files = 20 * 100 + 8;
    for fraction in [0.08, 0.12, 0.16, 0.2, 0.25, 0.3, 0.4, 0.6] {
        let dst = tempfile::tempdir().unwrap();
        let dest = dst.path().join("d");
        let mut child = env
            .cmd()
            .args(["push", "-q"])
            .arg(src.path())
            .arg(dest.join(""))
            .spawn()
            .unwrap();
        std::thread::sleep(full.mul_f64(fraction));
        let _ = child.kill();
        let _ = child.wait();
        // Whole or absent, never torn.
        let mut placed = 0;
        let walk = Command::new("find")
            .arg(&dest)
            .args(["-type", "f"])
            .output()
            .unwrap();
        for path in stdout(&walk).lines() {
            let rel = Path::new(path).strip_prefix(&dest).unwrap();
            if rel.file_name().unwrap().as_bytes().starts_with(b".syncd-") {
                continue;
            }
            assert_eq!(
                fs::read(path).unwrap(),
                fs::read(src.path().join(rel)).unwrap(),
                "{rel:?} is torn after a kill at {fraction}"
            );
            placed += 1;
        }
        eprintln!("kill at {fraction} of {full:?}: {placed} files placed");
        if placed > 0 && placed < files {
            cut_mid_copy += 1;
        }
        let (rc, v, err) = push_json(&env, src.path(), &dest.join(""), &[]);
        assert_eq!(rc, 0, "{err}");
        assert_eq!(v["identical"], true, "{v}");
        assert_trees_equal(src.path(), &dest);
        let parts = Command::new("find")
            .arg(&dest)
            .args(["-name", ".syncd-*"])
            .output()
            .unwrap();
        assert_eq!(stdout(&parts), "", "part files left after the next push");
    }
    assert!(
        cut_mid_copy > 0,
        "no kill landed while files were being placed"
    );
}

#[test]
fn network_cut_mid_push_fails_cleanly_and_the_next_push_resumes() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    big_source(src.path(), 300);
    let server = Server::start(&receiver, dst.path(), &sid);
    let relay = Relay::start(&server.addr);
    let push = slow_push(&sender, src.path(), &relay.addr.to_string(), &rid);
    std::thread::sleep(Duration::from_millis(3000));
    relay.cut();
    // Neither side hears from the other again: the push gives up after the idle timeout.
    let o = push.wait_with_output().unwrap();
    assert_eq!(code(&o), 2, "a cut push fails: {}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("timed out"), "says why: {err}");
    assert!(
        complete_files(src.path(), dst.path()) < 8,
        "the push finished before the cut; slow it down"
    );
    // The receiver gives the session up too, and keeps serving.
    server.wait_log("failed");
    next_push_resumes(&sender, &receiver, src.path(), dst.path(), &server, &rid);
}

#[test]
fn sender_killed_mid_push_leaves_no_torn_file_and_the_next_push_resumes() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    big_source(src.path(), 500);
    let server = Server::start(&receiver, dst.path(), &sid);
    let mut push = slow_push(&sender, src.path(), &server.addr, &rid);
    std::thread::sleep(Duration::from_millis(3000));
    push.kill().unwrap();
    push.wait().unwrap();
    assert!(
        complete_files(src.path(), dst.path()) < 8,
        "the push finished before the kill; slow it down"
    );
    // The next push from the same peer supersedes the dead session at once (without that it
    // waited out the 30 s idle timeout, sessions being serialised) and reuses what arrived.
    next_push_resumes(&sender, &receiver, src.path(), dst.path(), &server, &rid);
    let log = server.log();
    assert!(log.contains("supersedes its older connection"), "{log}");
    assert!(
        !log.contains("timed out"),
        "the dead session was not waited out: {log}"
    );
}

#[test]
fn hard_links_within_the_tree_are_preserved() {
    let env = Env::new();
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(src.path(), "a/original", &noise(300_000, 9));
    fs::hard_link(src.path().join("a/original"), src.path().join("b-link")).unwrap();
    fs::hard_link(src.path().join("a/original"), src.path().join("a/z-link")).unwrap();
    write(src.path(), "lonely", b"single");
    let (rc, v, err) = push_json(&env, src.path(), &dst.path().join(""), &[]);
    assert_eq!(rc, 0, "{v} {err}");
    assert_eq!(v["direct_copy"], true, "{v}");
    assert_trees_equal(src.path(), dst.path());
    let ino = |p: &str| fs::metadata(dst.path().join(p)).unwrap().ino();
    assert_eq!(ino("a/original"), ino("b-link"));
    assert_eq!(ino("a/original"), ino("a/z-link"));
    assert_ne!(ino("a/original"), ino("lonely"));
    assert_eq!(
        fs::metadata(dst.path().join("a/original")).unwrap().nlink(),
        3
    );
}

/// A receiver whose copies of linked files are equal but separate (copied without keeping
/// links) gets the links, and copies the sender has separated are separated again: how
/// files are linked is part of the manifest, so `diff` sees it and `push` makes it equal.
#[test]
fn hard_links_are_made_and_broken_where_only_the_linking_differs() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(src.path(), "a/original", &noise(300_000, 9));
    write(src.path(), "lonely", b"single");
    fs::create_dir(dst.path().join("a")).unwrap();
    let copy = |from: &Path, to: &Path| {
        let st = Command::new("cp")
            .arg("--preserve=mode,timestamps")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(st.success());
    };
    for p in ["a/original", "b-link", "a/z-link", "lonely"] {
        copy(&src.path().join("a/original"), &dst.path().join(p));
    }
    copy(&src.path().join("lonely"), &dst.path().join("lonely"));
    for p in ["b-link", "a/z-link"] {
        fs::hard_link(src.path().join("a/original"), src.path().join(p)).unwrap();
    }
    let diff = sender.syncd(&[&"diff", &src.path(), &dst.path()]);
    assert_eq!(code(&diff), 1, "{}", stderr(&diff));
    assert_eq!(stdout(&diff), "m a/z-link (link)\nm b-link (link)\n");

    let server = Server::start(&receiver, dst.path(), &sid);
    let v = server.push_ok(&sender, src.path(), &rid, &[]);
    assert_eq!(v["chunks_sent"], 0, "linking sends no content: {v}");
    let ino = |p: &str| fs::metadata(dst.path().join(p)).unwrap().ino();
    assert_eq!(ino("a/original"), ino("b-link"));
    assert_eq!(ino("a/original"), ino("a/z-link"));
    assert_ne!(ino("a/original"), ino("lonely"));

    // The sender turns one link into a copy of its own.
    copy(&src.path().join("b-link"), &src.path().join("b-copy"));
    fs::rename(src.path().join("b-copy"), src.path().join("b-link")).unwrap();
    server.push_ok(&sender, src.path(), &rid, &[]);
    assert_ne!(ino("a/original"), ino("b-link"));
    assert_eq!(ino("a/original"), ino("a/z-link"));
    let diff = sender.syncd(&[&"diff", &src.path(), &dst.path()]);
    assert_eq!(code(&diff), 0, "{}", stdout(&diff));
    assert_trees_equal(src.path(), dst.path());
}

fn run_ok(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
    stdout(&o)
}

/// The access and default ACLs of `p`, without the header that names the file.
fn acls(p: &Path) -> String {
    run_ok(Command::new("getfacl").args(["-n", "-p"]).arg(p))
        .lines()
        .filter(|l| !l.starts_with("# file:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `rsync -aHAX` keeps and a migration needs, over the network: owner and group,
/// POSIX ACLs (access and default) and extended attributes, on files, directories and
/// symlinks (owner only). Runs as root (CI does); outside CI it is skipped otherwise.
#[test]
fn owners_acls_and_xattrs_arrive_over_quic() {
    if !root_or_skip("owners and ACLs need root") {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let s = src.path();
    write(s, "team/report", b"quarterly numbers");
    write(s, "team/plain", b"no acl here");
    std::os::unix::fs::symlink("report", s.join("team/latest")).unwrap();
    std::os::unix::fs::lchown(s.join("team/latest"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(s.join("team/report"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(s.join("team"), Some(1234), Some(5678)).unwrap();
    run_ok(
        Command::new("setfacl")
            .args(["-m", "u:1001:rw-,g:2002:r--"])
            .arg(s.join("team/report")),
    );
    run_ok(
        Command::new("setfacl")
            .args(["-m", "d:u:1001:rwx,u:1001:r-x"])
            .arg(s.join("team")),
    );
    xattr::set(s.join("team/report"), "user.origin", b"old-server").unwrap();
    xattr::set(s.join("team"), "user.owner-team", b"finance").unwrap();
    let server = Server::start(&receiver, dst.path(), &sid);
    server.push_ok(&sender, s, &rid, &[]);
    assert_trees_equal(s, dst.path());
    for rel in ["team", "team/report", "team/plain", "team/latest"] {
        let (a, b) = (
            fs::symlink_metadata(s.join(rel)).unwrap(),
            fs::symlink_metadata(dst.path().join(rel)).unwrap(),
        );
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {rel}");
        assert_eq!(a.mode(), b.mode(), "mode of {rel}");
    }
    for rel in ["team", "team/report", "team/plain"] {
        assert_eq!(
            acls(&s.join(rel)),
            acls(&dst.path().join(rel)),
            "ACLs of {rel}"
        );
    }
    assert!(acls(&dst.path().join("team")).contains("default:user:1001:rwx"));
    assert_eq!(
        xattr::get(dst.path().join("team/report"), "user.origin").unwrap(),
        Some(b"old-server".to_vec())
    );
    assert_eq!(
        xattr::get(dst.path().join("team"), "user.owner-team").unwrap(),
        Some(b"finance".to_vec())
    );
}

/// Regression: control frames used to be read inside `tokio::select!`, where a chunk
/// arriving mid-frame cancelled the read and lost bytes ("frame of N bytes exceeds the
/// limit" on large trees). Many small files interleave control and data traffic heavily.
#[test]
fn many_files_over_quic_keep_the_control_stream_framed() {
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    for i in 0..4000u64 {
        write(
            src.path(),
            &format!("d{}/f{i}", i % 40),
            &noise(2000 + (i as usize % 5000), i),
        );
    }
    let server = Server::start(&receiver, dst.path(), &sid);
    for _ in 0..2 {
        server.push_ok(&sender, src.path(), &rid, &[]);
    }
    assert_trees_equal(src.path(), dst.path());
}

/// A change to owner, group, ACLs or xattrs alone is a difference: `diff` reports it as
/// metadata (unless --no-owner), and the next push makes it equal, on files, directories and
/// symlinks, including an ACL the receiver has and the source lacks. Runs as root (CI does).
#[test]
fn owner_acl_and_xattr_changes_alone_are_seen_and_sent() {
    if !root_or_skip("owners and ACLs need root") {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (s, d) = (src.path(), dst.path());
    write(s, "dir/file", b"same content throughout");
    write(s, "dir/other", b"untouched");
    std::os::unix::fs::symlink("file", s.join("dir/link")).unwrap();
    let server = Server::start(&receiver, d, &sid);
    let push = || server.push_ok(&sender, s, &rid, &[]);
    let diff = |extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"diff"];
        for e in extra {
            args.push(e);
        }
        args.push(&s);
        args.push(&d);
        let o = sender.syncd(&args);
        (code(&o), stdout(&o))
    };
    push();
    assert_eq!(diff(&[]), (0, String::new()));

    std::os::unix::fs::chown(s.join("dir/file"), Some(4321), Some(8765)).unwrap();
    run_ok(
        Command::new("setfacl")
            .args(["-m", "u:1001:r-x"])
            .arg(s.join("dir")),
    );
    xattr::set(s.join("dir/other"), "user.tag", b"v2").unwrap();
    std::os::unix::fs::lchown(s.join("dir/link"), Some(99), Some(98)).unwrap();
    // An ACL only the receiver has: the push must remove it.
    run_ok(
        Command::new("setfacl")
            .args(["-m", "u:1002:rw-"])
            .arg(d.join("dir/file")),
    );
    let (rc, out) = diff(&[]);
    assert_eq!(rc, 1, "{out}");
    assert_eq!(
        out,
        "m dir (owner/xattrs)\nm dir/file (mode, owner/xattrs)\nm dir/link (owner/xattrs)\nm dir/other (owner/xattrs)\n"
    );
    // Without owners, only the user.* xattr counts, and the mode of the file, whose group
    // bits the receiver's extra ACL changed (they show its mask).
    assert_eq!(
        diff(&["--no-owner"]),
        (
            1,
            "m dir/file (mode)\nm dir/other (owner/xattrs)\n".to_string()
        )
    );

    let v = push();
    assert_eq!(v["files_transferred"], 0, "metadata only: {v}");
    assert_eq!(diff(&[]), (0, String::new()));
    for rel in ["dir", "dir/file", "dir/other", "dir/link"] {
        let (a, b) = (
            fs::symlink_metadata(s.join(rel)).unwrap(),
            fs::symlink_metadata(d.join(rel)).unwrap(),
        );
        assert_eq!((a.uid(), a.gid()), (b.uid(), b.gid()), "owner of {rel}");
        assert_eq!(a.mode(), b.mode(), "mode of {rel}");
    }
    for rel in ["dir", "dir/file", "dir/other"] {
        assert_eq!(acls(&s.join(rel)), acls(&d.join(rel)), "ACLs of {rel}");
    }
    assert!(acls(&d.join("dir")).contains("user:1001:r-x"));
    assert!(!acls(&d.join("dir/file")).contains("1002"));
    assert_eq!(
        xattr::get(d.join("dir/other"), "user.tag").unwrap(),
        Some(b"v2".to_vec())
    );
}

/// A receiver that does not run as root cannot set owners: a push that compares them is
/// refused before anything is written, with a message that says what to do on both sides;
/// with --no-owner the same push goes through. Runs as root, to start `serve` as nobody.
#[test]
fn a_receiver_not_running_as_root_refuses_owners_clearly() {
    if !root_or_skip("needs root to run serve as another user") {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let src = tempfile::tempdir().unwrap();
    let dst = tempfile::tempdir().unwrap();
    write(src.path(), "a/file", b"content");
    let nobody = "65534";
    run_ok(
        Command::new("chown")
            .args(["-R", &format!("{nobody}:{nobody}")])
            .arg(receiver.home.path())
            .arg(dst.path()),
    );
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid", nobody, "--regid", nobody, "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_syncd"))
        .env("SYNCD_HOME", receiver.home.path());
    let server = Server::start_with(cmd, dst.path(), &sid);
    let o = sender.syncd(&[&"push", &src.path(), &server.addr, &"--peer-id", &rid]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let why = "the sender pushes with owners, ACLs and xattrs (it runs as root), but this \
               receiver does not run as root and cannot set them: run the receiver as root, \
               or push with --no-owner";
    assert!(stderr(&o).contains(why), "{}", stderr(&o));
    assert!(server.wait_log("failed").contains(why), "{}", server.log());
    assert_eq!(
        fs::read_dir(dst.path()).unwrap().count(),
        0,
        "nothing written"
    );

    server.push_ok(&sender, src.path(), &rid, &["--no-owner"]);
    assert_trees_equal(src.path(), dst.path());
}

/// A push with --no-owner into a `serve` that runs as root: the receiver prepared its
/// manifest with owners, refreshes it again without them, and the push succeeds; a later
/// owner-only change is then not a difference for such a push, and is one for a push that
/// compares owners. Runs as root.
#[test]
fn a_push_without_owners_into_a_root_receiver_compares_without_them() {
    if !root_or_skip("needs root to compare owners") {
        return;
    }
    let (sender, receiver) = (Env::new(), Env::new());
    let (sid, rid) = (init(&sender), init(&receiver));
    let (src, dst) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(src.path(), "a/file", b"content");
    let server = Server::start(&receiver, dst.path(), &sid);
    let push = |extra: &[&str]| server.push_ok(&sender, src.path(), &rid, extra);
    let v = push(&["--no-owner"]);
    assert_eq!(
        (v["owners"].as_bool(), v["files_transferred"].as_u64()),
        (Some(false), Some(1))
    );
    assert_trees_equal(src.path(), dst.path());

    std::os::unix::fs::chown(src.path().join("a/file"), Some(4321), Some(8765)).unwrap();
    let v = push(&["--no-owner"]);
    assert_eq!(v["root"], v["receiver_root"]);
    let owner = |root: &Path| {
        let m = fs::metadata(root.join("a/file")).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner(dst.path()), (0, 0), "not compared, so not sent");

    let v = push(&[]);
    assert_eq!(v["owners"].as_bool(), Some(true));
    assert_eq!(owner(dst.path()), (4321, 8765));
}
