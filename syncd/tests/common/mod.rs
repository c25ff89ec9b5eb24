//! Helpers shared by the end-to-end tests: run the real `syncd` binary with a private
//! state directory, build sample trees, compare trees.
#![allow(dead_code)] // each test binary uses a different subset

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use tempfile::TempDir;

/// A private `SYNCD_HOME` for one test.
pub struct Env {
    pub home: TempDir,
}

impl Env {
    pub fn new() -> Self {
        Env {
            home: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_syncd"));
        c.env("SYNCD_HOME", self.home.path());
        c
    }

    pub fn syncd(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
        self.cmd()
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap()
    }
}

pub fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\nstderr: {}", stdout(o), stderr(o)))
}

pub fn write(root: &Path, rel: &str, content: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, content).unwrap();
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A small tree with nested dirs, a symlink, an empty dir, a dotfile and a large file.
pub fn sample(root: &Path) {
    write(root, "a.txt", b"hello");
    write(root, "dir/b.bin", &vec![7u8; 100_000]);
    write(root, "dir/sub/c", b"c");
    write(root, ".hidden", b"dot");
    write(root, "big", &noise(12_000_000, 1));
    fs::create_dir_all(root.join("empty")).unwrap();
    std::os::unix::fs::symlink("a.txt", root.join("link")).unwrap();
}

/// `cp -a`, so that mtimes match.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", from.display()))
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// Asserts two trees are byte-equal (contents, symlink targets, entries), with `diff -r`.
pub fn assert_trees_equal(a: &Path, b: &Path) {
    let o = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "trees differ:\n{}{}",
        stdout(&o),
        stderr(&o)
    );
}
