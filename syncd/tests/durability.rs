//! Durability against a crash of the destination's filesystem itself, not only of syncd.
//!
//! The destination is an ext4 image on a loop device. While a local `syncd push` writes new
//! versions of every file over old ones, the filesystem is shut down as a power cut would
//! stop it (`xfs_io -x -c shutdown`: no further write reaches the device, the log is not
//! flushed). It is mounted `data=writeback,noauto_da_alloc`, where ext4 itself orders
//! nothing, so only syncd's own ordering (data durable, then rename) keeps files whole. After an unmount and a fresh mount (journal replay), every file at its final
//! path must be exactly its old or exactly its new version, never torn; and when the push had
//! exited 0 before the cut, every file must be the new version: exit 0 means durable.
//!
//! Needs root, `mkfs.ext4`, `mount` and `xfs_io` (xfsprogs): fails under `CI=true` without
//! them, is skipped otherwise.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn available() -> bool {
    if !root_or_skip("loop mounts need root") {
        return false;
    }
    for tool in ["mkfs.ext4", "xfs_io", "mount", "umount"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{tool} not found, and CI=true (scripts/test installs e2fsprogs and xfsprogs)"
            );
            eprintln!("skipping: {tool} not found");
            return false;
        }
    }
    true
}

fn sh(cmd: &mut Command) {
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{cmd:?}: {}", stderr(&o));
}

/// An ext4 image on tmpfs, loop-mounted; unmounted on drop.
struct Ext4 {
    image: PathBuf,
    mnt: PathBuf,
}

impl Ext4 {
    fn new(dir: &Path) -> Ext4 {
        let e = Ext4 {
            image: dir.join("fs.img"),
            mnt: dir.join("mnt"),
        };
        sh(Command::new("truncate").args(["-s", "256M"]).arg(&e.image));
        sh(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&e.image));
        fs::create_dir(&e.mnt).unwrap();
        e.mount();
        e
    }

    fn mount(&self) {
        // The harshest ext4 ordering: data may reach the disk after the metadata that names
        // it, and a rename over a file does not force the new data out first. A rename that
        // came before its file's data was durable then shows as a torn (zero-filled or
        // short) file after the crash.
        sh(Command::new("mount")
            .args(["-o", "loop,data=writeback,noauto_da_alloc"])
            .arg(&self.image)
            .arg(&self.mnt));
    }

    fn umount(&self) {
        sh(Command::new("umount").arg(&self.mnt));
    }

    /// The power cut: nothing written after this reaches the device.
    fn shutdown(&self) {
        sh(Command::new("xfs_io")
            .args(["-x", "-c", "shutdown"])
            .arg(&self.mnt));
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
    }
}

/// Version `v` of the tree: 600 small files over 30 directories and 12 larger ones, each
/// file's size and bytes depending on `v`; version 2 adds 100 files version 1 lacks.
fn version(v: u64) -> BTreeMap<String, Vec<u8>> {
    let mut t = BTreeMap::new();
    for i in 0..600u64 {
        t.insert(
            format!("d{}/f{i}", i % 30),
            noise(
                1000 + ((i * 37 + v * 11) % 9000) as usize,
                v * 1_000_003 + i,
            ),
        );
    }
    for i in 0..12u64 {
        t.insert(
            format!("big/b{i}"),
            noise(400_000 + (v * 5000) as usize, v * 7_000_001 + i),
        );
    }
    if v == 2 {
        for i in 0..100u64 {
            t.insert(format!("new/n{i}"), noise(3000, 9_000_000 + i));
        }
    }
    t
}

fn materialize(root: &Path, tree: &BTreeMap<String, Vec<u8>>) {
    for (rel, data) in tree {
        write(root, rel, data);
    }
}

#[test]
fn a_filesystem_crash_mid_push_leaves_old_or_new_files_never_torn_and_exit_0_is_durable() {
    crash_rounds(Mode::Session);
}

/// The same cuts during the first copy into an empty DEST, which goes without the protocol
/// session (`push::seed`): a file at its final path is whole, and after exit 0 all are there.
#[test]
fn a_filesystem_crash_mid_first_copy_leaves_no_torn_file_and_exit_0_is_durable() {
    crash_rounds(Mode::FirstCopy);
}

/// The same cuts under a `syncd serve` during a first remote sync, which goes as a bulk
/// copy (`push::bulk`): a file at its final path is whole, and after exit 0 all are there.
#[test]
fn a_filesystem_crash_mid_bulk_copy_leaves_no_torn_file_and_exit_0_is_durable() {
    crash_rounds(Mode::Bulk);
}

/// What is pushed when the power is cut.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// A local push of version 2 over version 1: the protocol session.
    Session,
    /// A local push into nothing: the first copy.
    FirstCopy,
    /// A remote push into an empty `serve` root: the bulk copy, then the session.
    Bulk,
}

/// Pushes `version(2)` over `version(1)` (or, for a first copy or a bulk one, into
/// nothing) and cuts power at fractions of the push's time.
fn crash_rounds(mode: Mode) {
    if !available() {
        return;
    }
    let first_copy = mode != Mode::Session;
    let (old, new) = match first_copy {
        true => (BTreeMap::new(), version(2)),
        false => (version(1), version(2)),
    };
    // The first round cuts after the push exited and times it; the others cut at fractions
    // of that time, where the files are being finished and renamed.
    let mut full = Duration::ZERO;
    let fractions = match mode {
        // Most of a first copy's time is the scan and the final refresh around the writes.
        Mode::FirstCopy => [0.2, 0.28, 0.31, 0.33, 0.35, 0.37, 0.4, 0.5],
        Mode::Session => [0.35, 0.45, 0.55, 0.62, 0.7, 0.77, 0.85, 0.92],
        // A bulk copy writes while the source is scanned, then the session completes it.
        Mode::Bulk => [0.2, 0.25, 0.3, 0.33, 0.36, 0.4, 0.5, 0.7],
    };
    for round in 0..=fractions.len() {
        let cut_after = match round {
            0 => None,
            r => Some(full.mul_f64(fractions[r - 1])),
        };
        let env = Env::new();
        let t = tempfile::tempdir_in("/dev/shm").unwrap();
        let fs_ = Ext4::new(t.path());
        let src = t.path().join("src");
        let dst = fs_.mnt.join("dst");
        if !first_copy {
            materialize(&src, &old);
            let o = env.syncd(&[&"push", &src, &dst, &"-q"]);
            assert_eq!(code(&o), 0, "{}", stderr(&o));
            sh(&mut Command::new("sync"));
            fs::remove_dir_all(&src).unwrap();
        }
        materialize(&src, &new);
        // The receiver of a bulk copy: a `serve` into the (empty) root on the image.
        let sender = Env::new();
        let server = (mode == Mode::Bulk).then(|| {
            let (sid, rid) = (init(&sender), init(&env));
            fs::create_dir(&dst).unwrap();
            (Server::start(&env, &dst, &sid), rid)
        });

        // A neighbour on the same filesystem fsyncs a file of its own every 10 ms, as a
        // database would: each fsync commits the journal, and with it whatever renames
        // syncd made so far, whether or not their files' data is on disk yet.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let neighbour = {
            let (stop, path) = (stop.clone(), fs_.mnt.join("neighbour"));
            std::thread::spawn(move || {
                let Ok(mut f) = fs::File::create(path) else {
                    return;
                };
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    use std::io::Write;
                    i += 1;
                    if f.write_all(&i.to_le_bytes())
                        .and_then(|()| f.sync_all())
                        .is_err()
                    {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let started = Instant::now();
        let mut push = match &server {
            None => env
                .cmd()
                .args(["push", "-q"])
                .arg(&src)
                .arg(&dst)
                .stderr(Stdio::piped())
                .spawn(),
            Some((server, rid)) => sender
                .cmd()
                .arg("push")
                .arg(&src)
                .arg(&server.addr)
                .args(["--peer-id", rid, "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn(),
        }
        .unwrap();
        let exited_ok_before_cut = match cut_after {
            None => {
                let st = push.wait().unwrap();
                assert!(st.success(), "round {round}: the push without a cut failed");
                if let Some(mut out) = push.stdout.take() {
                    let mut json = String::new();
                    std::io::Read::read_to_string(&mut out, &mut json).unwrap();
                    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
                    // All but the duplicates (the session copies those on the receiver).
                    let bulk = v["bulk_files"].as_u64().unwrap();
                    assert!(bulk > 600, "the first sync went in bulk: {v}");
                }
                full = started.elapsed();
                true
            }
            Some(after) => {
                std::thread::sleep(after);
                match push.try_wait().unwrap() {
                    Some(st) => st.success(),
                    None => false,
                }
            }
        };
        fs_.shutdown();
        let _ = push.kill();
        let _ = push.wait();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        neighbour.join().unwrap();
        eprintln!(
            "round {round}: cut after {:?}, push had exited 0: {exited_ok_before_cut}",
            started.elapsed()
        );
        // The receiver dies with the power, and lets go of the image.
        drop(server);
        fs_.umount();
        fs_.mount();

        let (mut old_n, mut new_n, mut absent) = (0, 0, 0);
        for (rel, new_data) in &new {
            match fs::read(dst.join(rel)) {
                Ok(got) if &got == new_data => new_n += 1,
                Ok(got) if old.get(rel) == Some(&got) => old_n += 1,
                Ok(got) => panic!(
                    "round {round}: {rel} is torn: {} bytes, neither its old ({:?} bytes) nor its new version ({} bytes)",
                    got.len(),
                    old.get(rel).map(Vec::len),
                    new_data.len()
                ),
                Err(e) => {
                    assert!(
                        !old.contains_key(rel),
                        "round {round}: {rel}, durable before the push, is gone: {e}"
                    );
                    absent += 1;
                }
            }
        }
        eprintln!("round {round}: {new_n} new, {old_n} old, {absent} not yet created");
        if exited_ok_before_cut {
            assert_eq!(
                (old_n, absent),
                (0, 0),
                "round {round}: the push exited 0 before the cut, so every file must be new"
            );
        }
    }
}
