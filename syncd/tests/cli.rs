//! End-to-end tests of `syncd manifest`, `syncd diff` and `syncd verify`, run as the real
//! binary against real directories.

// Test helpers unwrap freely: a failure is a test failure with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

fn diff_lines(env: &Env, a: &Path, b: &Path) -> (i32, Vec<String>) {
    let o = env.syncd(&[&"diff", &a, &b]);
    assert!(code(&o) <= 1, "diff failed: {}", stderr(&o));
    let mut lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    lines.sort();
    (code(&o), lines)
}

#[test]
fn identical_copies_diff_clean_and_share_a_root() {
    let env = Env::new();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sample(a.path());
    copy_tree(a.path(), b.path());
    assert_eq!(diff_lines(&env, a.path(), b.path()), (0, vec![]));
    let root = |d: &Path| {
        let o = env.syncd(&[&"manifest", &d, &"--json"]);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["files"], 5, "{v}");
        v["root"].as_str().unwrap().to_owned()
    };
    assert_eq!(root(a.path()), root(b.path()));
}

#[test]
fn diff_names_exactly_the_changed_paths() {
    let env = Env::new();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    sample(a.path());
    copy_tree(a.path(), b.path());
    // Build both manifests first so that the second diff exercises the stat cache.
    assert_eq!(diff_lines(&env, a.path(), b.path()).0, 0);
    let bp = b.path();
    write(bp, "dir/sub/c", b"C"); // same size, new content
    write(bp, "new/deep/file", b"n");
    fs::remove_file(bp.join("a.txt")).unwrap();
    fs::remove_file(bp.join("link")).unwrap();
    fs::create_dir(bp.join("link")).unwrap(); // symlink -> dir
    fs::set_permissions(bp.join("dir/b.bin"), fs::Permissions::from_mode(0o600)).unwrap();
    // Append to the big file: content change deep inside a multi-chunk file.
    let mut big = fs::read(bp.join("big")).unwrap();
    big[5_000_000] ^= 0xff;
    fs::write(bp.join("big"), big).unwrap();
    let (rc, lines) = diff_lines(&env, a.path(), b.path());
    assert_eq!(rc, 1);
    assert_eq!(
        lines,
        vec![
            "+ a.txt",
            "- new",
            "M big",
            "M dir/sub/c",
            "T link",
            "m dir/b.bin (mode)"
        ],
    );
    // And the reverse direction mirrors it.
    let (_, rev) = diff_lines(&env, b.path(), a.path());
    assert_eq!(
        rev,
        vec![
            "+ new",
            "- a.txt",
            "M big",
            "M dir/sub/c",
            "T link",
            "m dir/b.bin (mode)"
        ],
    );
}

#[test]
fn json_diff_and_non_utf8_names_round_trip() {
    let env = Env::new();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    fs::write(a.path().join(name), b"x").unwrap();
    let o = env.syncd(&[&"diff", &a.path(), &b.path(), &"--json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["identical"], false);
    assert_eq!(v["changes"][0]["path"], "caf\\xe9");
    assert_eq!(v["changes"][0]["marker"], "+");
    assert_eq!(v["changes"][0]["change"], "create");
    fs::write(b.path().join(name), b"x").unwrap();
    let o = env.syncd(&[&"diff", &a.path(), &b.path()]);
    // mtimes differ (written at different times), content equal: metadata only.
    let out = stdout(&o);
    assert!(out.is_empty() || out == "m caf\\xe9 (mtime)\n", "{out}");
}

#[test]
fn missing_path_is_one_clear_line_and_exit_2() {
    let env = Env::new();
    let o = env.syncd(&[&"manifest", &"/nonexistent/tree"]);
    assert_eq!(code(&o), 2);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("/nonexistent/tree") && err.contains("No such file"),
        "{err}"
    );

    let f = tempfile::NamedTempFile::new().unwrap();
    let o = env.syncd(&[&"diff", &f.path(), &"/tmp"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("not a directory"), "{}", stderr(&o));
}

#[test]
fn special_files_are_reported_and_skipped() {
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "f", b"x");
    let _sock = std::os::unix::net::UnixListener::bind(d.path().join("sock")).unwrap();
    let st = Command::new("mkfifo")
        .arg(d.path().join("fifo"))
        .status()
        .unwrap();
    assert!(st.success());
    let o = env.syncd(&[&"manifest", &d.path(), &"--json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("sock: skipped socket"), "{err}");
    assert!(err.contains("fifo: skipped fifo"), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"], 1);
}

#[test]
fn unreadable_file_is_named_and_the_scan_goes_on() {
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    fs::set_permissions(d.path(), fs::Permissions::from_mode(0o755)).unwrap();
    fs::set_permissions(env.home.path(), fs::Permissions::from_mode(0o777)).unwrap();
    write(d.path(), "ok", b"fine");
    write(d.path(), "secret", b"no");
    fs::set_permissions(d.path().join("secret"), fs::Permissions::from_mode(0o000)).unwrap();
    // Root reads anything: drop to `nobody` to get a real EACCES.
    let mut cmd = if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_syncd"));
        c
    } else {
        Command::new(env!("CARGO_BIN_EXE_syncd"))
    };
    let o = cmd
        .args(["manifest", "--json"])
        .arg(d.path())
        .env("SYNCD_HOME", env.home.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("secret: Permission denied"),
        "{}",
        stderr(&o)
    );
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"], 1, "the readable file is still there: {v}");
}

#[test]
fn corrupt_store_is_reported_and_rebuilt() {
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    sample(d.path());
    let o = env.syncd(&[&"manifest", &d.path()]);
    assert_eq!(code(&o), 0);
    let dbs: Vec<_> = fs::read_dir(env.home.path().join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dbs.len(), 1);
    fs::write(&dbs[0], b"not a database at all, just some bytes").unwrap();
    let o = env.syncd(&[&"manifest", &d.path()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains("rebuilding"), "{}", stderr(&o));
    // The rebuilt manifest is complete: it compares equal to a fresh copy.
    let c = tempfile::tempdir().unwrap();
    copy_tree(d.path(), c.path());
    assert_eq!(diff_lines(&env, d.path(), c.path()), (0, vec![]));
}

#[test]
fn filters_apply_only_when_asked() {
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    write(d.path(), ".gitignore", b"*.log\n");
    write(d.path(), "app.log", b"log");
    write(d.path(), "keep", b"k");
    write(d.path(), "cache/x.tmp", b"t");
    let files = |extra: &[&str]| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"manifest", &"--json"];
        for e in extra {
            args.push(e);
        }
        let p = d.path();
        args.push(&p);
        let o = env.syncd(&args);
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["files"].as_u64().unwrap()
    };
    assert_eq!(files(&[]), 4, "nothing is filtered by default");
    assert_eq!(files(&["--filter-gitignore"]), 3);
    assert_eq!(files(&["--exclude", "cache/"]), 3);
    assert_eq!(files(&["--exclude", "*.tmp", "--exclude", "*.log"]), 2);
}

#[test]
fn verify_reports_bitrot_and_modification() {
    let env = Env::new();
    let d = tempfile::tempdir().unwrap();
    sample(d.path());
    write(d.path(), "victim", b"original content");
    write(d.path(), "edited", b"before");
    // Back-date mtimes so that nothing is "racily" recent.
    for f in ["victim", "edited"] {
        filetime_set(&d.path().join(f), 1_600_000_000);
    }
    assert_eq!(code(&env.syncd(&[&"manifest", &d.path()])), 0);
    let o = env.syncd(&[&"verify", &d.path()]);
    assert_eq!(code(&o), 0, "{}{}", stdout(&o), stderr(&o));

    // Bit-rot: same size, mtime restored.
    write(d.path(), "victim", b"original c0ntent");
    filetime_set(&d.path().join("victim"), 1_600_000_000);
    write(d.path(), "edited", b"after!");
    fs::remove_file(d.path().join("dir/sub/c")).unwrap();
    let o = env.syncd(&[&"verify", &d.path()]);
    assert_eq!(code(&o), 1);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    let p = |s: &str| d.path().join(s).display().to_string();
    assert_eq!(
        lines,
        vec![
            format!("missing {}", p("dir/sub/c")),
            format!("modified {}", p("edited")),
            format!("bitrot {}", p("victim")),
        ]
    );
}

fn filetime_set(p: &Path, secs: i64) {
    let st = Command::new("touch")
        .arg("-m")
        .arg("-d")
        .arg(format!("@{secs}"))
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn help_teaches_the_exit_codes() {
    let env = Env::new();
    let o = env.syncd(&[&"--help"]);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("Exit status: 0 ok or identical, 1"));
    let o = env.syncd(&[&"diff"]);
    assert_eq!(code(&o), 2, "usage errors exit 2");
}
