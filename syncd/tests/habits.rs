//! What an operator coming from rsync expects (issue #13), against the real binary. Each
//! test is named after the habit it protects.

// Test helpers unwrap freely: a failure is a test failure with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Sends `sig` to `child`.
fn signal(child: &Child, sig: &str) {
    let st = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Waits for `child` to exit, at most `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "did not exit within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A slow remote push (about 3 s of data at 80 Mbit/s) to `server`.
fn slow(sender: &Env, src: &std::path::Path, server: &Server, rid: &str) -> Child {
    for i in 0..4 {
        write(src, &format!("f{i}"), &noise(8 << 20, 70 + i));
    }
    sender
        .cmd()
        .arg("push")
        .arg(src)
        .arg(&server.addr)
        .args(["--peer-id", rid, "--bwlimit", "80M"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `systemctl restart` sends SIGTERM: the running push finishes, then serve exits 0.
#[test]
fn sigterm_on_serve_lets_the_running_push_finish() {
    let (receiver, sender) = (Env::new(), Env::new());
    let (rid, sid) = (init(&receiver), init(&sender));
    let [src, dst] = tempdirs();
    let mut server = Server::start(&receiver, dst.path(), &sid);
    let mut push = slow(&sender, src.path(), &server, &rid);
    server.wait_log("push from");
    std::thread::sleep(Duration::from_millis(500));
    signal(&server.child, "TERM");
    let st = wait_exit(&mut push, Duration::from_secs(60));
    let o = push.wait_with_output().unwrap();
    assert!(
        st.success(),
        "the push was cut off: {}\n{}",
        stderr(&o),
        server.log()
    );
    let st = wait_exit(&mut server.child, Duration::from_secs(30));
    assert!(st.success(), "serve: {st:?}\n{}", server.log());
    assert_trees_equal(src.path(), dst.path());
}

/// A second signal cuts the running push off at once, and serve says so with exit 1.
#[test]
fn a_second_signal_on_serve_cuts_the_push_off() {
    let (receiver, sender) = (Env::new(), Env::new());
    let (rid, sid) = (init(&receiver), init(&sender));
    let [src, dst] = tempdirs();
    let mut server = Server::start(&receiver, dst.path(), &sid);
    let mut push = slow(&sender, src.path(), &server, &rid);
    server.wait_log("push from");
    std::thread::sleep(Duration::from_millis(300));
    signal(&server.child, "TERM");
    server.wait_log("letting the running push finish");
    signal(&server.child, "INT");
    let st = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(st.code(), Some(1), "{}", server.log());
    let st = wait_exit(&mut push, Duration::from_secs(30));
    assert!(!st.success());
}

fn tree_with_local_files(src: &std::path::Path, dst: &std::path::Path) {
    write(src, "app/main.conf", b"from source");
    write(src, "app/cache.tmp", b"source tmp");
    write(dst, "app/local.tmp", b"destination-local");
    write(dst, "app/stale", b"stale");
    write(dst, "run/app.pid", b"123");
}

/// rsync keeps excluded receiver files under --delete: they are destination-local config,
/// caches and pid files.
#[test]
fn exclude_with_delete_keeps_excluded_files_at_dest() {
    let env = Env::new();
    let [src, dst] = tempdirs();
    tree_with_local_files(src.path(), dst.path());
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--delete",
        &"--exclude",
        &"*.tmp",
        &"--exclude",
        &"/run/",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let d = dst.path();
    assert_eq!(
        std::fs::read(d.join("app/local.tmp")).unwrap(),
        b"destination-local"
    );
    assert_eq!(std::fs::read(d.join("run/app.pid")).unwrap(), b"123");
    assert!(
        !d.join("app/cache.tmp").exists(),
        "excluded files are not sent"
    );
    assert!(!d.join("app/stale").exists(), "the rest is deleted");
    assert_eq!(
        std::fs::read(d.join("app/main.conf")).unwrap(),
        b"from source"
    );
    // The same over QUIC.
    let (receiver, sender) = (Env::new(), Env::new());
    let (rid, sid) = (init(&receiver), init(&sender));
    let dst2 = tempfile::tempdir().unwrap();
    tree_with_local_files(src.path(), dst2.path());
    let server = Server::start(&receiver, dst2.path(), &sid);
    server.push_ok(
        &sender,
        src.path(),
        &rid,
        &["--delete", "--exclude", "*.tmp", "--exclude", "/run/"],
    );
    assert!(dst2.path().join("app/local.tmp").exists());
    assert!(dst2.path().join("run/app.pid").exists());
    assert!(!dst2.path().join("app/stale").exists());
}

/// --delete-excluded removes them too, as in rsync.
#[test]
fn delete_excluded_removes_excluded_files_at_dest() {
    let env = Env::new();
    let [src, dst] = tempdirs();
    tree_with_local_files(src.path(), dst.path());
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--delete",
        &"--delete-excluded",
        &"--exclude",
        &"*.tmp",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!dst.path().join("app/local.tmp").exists());
    assert!(!dst.path().join("run").exists());
    assert!(!dst.path().join("app/cache.tmp").exists());
}

/// --include before --exclude wins (first match), --exclude-from reads a file, and
/// --files-from sends only what it lists.
#[test]
fn include_exclude_from_and_files_from_have_rsync_meanings() {
    let env = Env::new();
    let [src, dst, lists] = tempdirs();
    write(src.path(), "keep.tmp", b"k");
    write(src.path(), "drop.tmp", b"d");
    write(src.path(), "logs/a.log", b"l");
    write(src.path(), "etc/app/conf", b"c");
    write(src.path(), "etc/other", b"o");
    write(lists.path(), "ex", b"# logs are not migrated\nlogs/\n");
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--include",
        &"keep.tmp",
        &"--exclude",
        &"*.tmp",
        &"--exclude-from",
        &lists.path().join("ex"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(dst.path().join("keep.tmp").exists());
    assert!(!dst.path().join("drop.tmp").exists());
    assert!(!dst.path().join("logs").exists());
    let dst2 = tempfile::tempdir().unwrap();
    write(lists.path(), "files", b"etc/app/conf\n");
    write(dst2.path(), "unrelated", b"stays");
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst2.path().join(""),
        &"--delete",
        &"--files-from",
        &lists.path().join("files"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(
        std::fs::read(dst2.path().join("etc/app/conf")).unwrap(),
        b"c"
    );
    assert!(!dst2.path().join("etc/other").exists());
    assert!(
        dst2.path().join("unrelated").exists(),
        "--files-from deletes only what it covers"
    );
}

/// rsync's `host:/path` is refused with the right form, never taken for a local directory.
#[test]
fn rsync_host_path_form_is_refused_with_a_hint() {
    let env = Env::new();
    let (src, cwd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write(src.path(), "a", b"a");
    let o = env
        .cmd()
        .current_dir(cwd.path())
        .args(["push"])
        .arg(src.path())
        .arg("newhost:/srv/data")
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("HOST:PORT"), "{}", stderr(&o));
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "nothing created locally"
    );
    // A local path with a colon is written ./a:b.
    let o = env
        .cmd()
        .current_dir(cwd.path())
        .args(["push"])
        .arg(src.path())
        .arg("./a:b/")
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(cwd.path().join("a:b/a").exists());
}

/// A host name that does not resolve says so; a closed UDP port says what to check, within
/// --connect-timeout.
#[test]
fn unreachable_receivers_get_a_clear_message() {
    let env = Env::new();
    init(&env);
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", b"a");
    let id = stdout(&env.syncd(&[&"id"])).trim().to_string();
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &"no-such-host.invalid:7700",
        &"--peer-id",
        &id,
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("cannot resolve"), "{}", stderr(&o));
    // A UDP port nobody listens on.
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = Instant::now();
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &format!("127.0.0.1:{port}"),
        &"--peer-id",
        &id,
        &"--connect-timeout",
        &"2s",
    ]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("firewall pass UDP"), "{}", stderr(&o));
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
}

/// --delete into a DEST that holds --home would delete the node's identity: refused, and
/// so are DEST inside SRC and a serve root holding its home.
#[test]
fn pushes_that_would_eat_their_own_state_or_source_are_refused() {
    let base = tempfile::tempdir().unwrap();
    let (src, dst) = (base.path().join("src"), base.path().join("dst"));
    write(&src, "a", b"a");
    let home = dst.join(".syncd-home");
    let env = Env::new();
    let o = env
        .cmd()
        .env("SYNCD_HOME", &home)
        .arg("push")
        .arg(&src)
        .arg(dst.join(""))
        .arg("--delete")
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("--home"), "{}", stderr(&o));
    let o = env.syncd(&[&"push", &src, &src.join("copy/")]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("inside SRC"), "{}", stderr(&o));
    assert!(!src.join("copy").exists());
    let o = env.syncd(&[&"push", &dst.join("sub"), &dst.join(""), &"--delete"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    // serve --root holding --home.
    let o = env
        .cmd()
        .env("SYNCD_HOME", src.join("state"))
        .args(["init"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = env
        .cmd()
        .env("SYNCD_HOME", src.join("state"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow",
            stdout(&o).trim(),
            "--root",
        ])
        .arg(&src)
        .output()
        .unwrap();
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("overlap"), "{}", stderr(&o));
}

/// --max-delete N stops before deleting anything when more would go.
#[test]
fn max_delete_stops_before_deleting_anything() {
    let env = Env::new();
    let [src, dst] = tempdirs();
    write(src.path(), "keep", b"k");
    for i in 0..5 {
        write(dst.path(), &format!("old/f{i}"), b"x");
    }
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--delete",
        &"--max-delete",
        &"3",
    ]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-delete 3"), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_dir(dst.path().join("old")).unwrap().count(),
        5,
        "nothing deleted"
    );
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--delete",
        &"--max-delete",
        &"6",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(!dst.path().join("old").exists());
}

/// `syncd push FILE DIR/` copies that one file into DIR, like rsync; `-n` is --dry-run.
#[test]
fn a_single_file_src_and_short_dry_run_work_as_in_rsync() {
    let env = Env::new();
    let [src, dst] = tempdirs();
    write(src.path(), "one.txt", b"one");
    write(src.path(), "other", b"other");
    write(dst.path(), "existing", b"stays");
    let o = env.syncd(&[
        &"push",
        &src.path().join("one.txt"),
        &dst.path().join(""),
        &"-n",
    ]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stdout(&o).contains("+ one.txt"), "{}", stdout(&o));
    assert!(!dst.path().join("one.txt").exists(), "-n changes nothing");
    let o = env.syncd(&[
        &"push",
        &src.path().join("one.txt"),
        &dst.path().join(""),
        &"--delete",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(std::fs::read(dst.path().join("one.txt")).unwrap(), b"one");
    assert!(!dst.path().join("other").exists());
    assert!(dst.path().join("existing").exists());
}

/// `syncd diff A A` is identical; a missing B is named plainly.
#[test]
fn diff_of_a_tree_with_itself_is_identical() {
    let env = Env::new();
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", b"a");
    let o = env.syncd(&[&"diff", &src.path(), &src.path()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = env.syncd(&[&"diff", &src.path(), &src.path().join("nope")]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("no such directory"), "{}", stderr(&o));
}

/// `syncd diff SRC DEST` and `syncd push --dry-run SRC DEST` say the same thing the same
/// way: what DEST lacks (`+`) or has extra (`-`), and the same JSON shape.
#[test]
fn diff_and_dry_run_agree_on_markers_and_json() {
    let env = Env::new();
    let [src, dst] = tempdirs();
    write(src.path(), "new", b"n");
    write(src.path(), "same", b"s");
    write(dst.path(), "same", b"s");
    write(dst.path(), "old", b"o");
    let o = env.syncd(&[&"push", &src.path(), &dst.path().join(""), &"--delete"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    write(src.path(), "new2", b"n");
    write(dst.path(), "old2", b"o");
    let diff = env.syncd(&[&"diff", &src.path(), &dst.path(), &"--json"]);
    let dry = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--delete",
        &"-n",
        &"--json",
    ]);
    let shape = |v: serde_json::Value| -> Vec<(String, String, String)> {
        v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["marker"].as_str().unwrap().to_string(),
                    c["change"].as_str().unwrap().to_string(),
                    c["path"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let (d, r) = (shape(json(&diff)), shape(json(&dry)));
    assert_eq!(d, r);
    assert_eq!(
        d,
        vec![
            ("+".into(), "create".into(), "new2".into()),
            ("-".into(), "delete".into(), "old2".into())
        ]
    );
}

/// `--version` names the wire protocol, which both sides of a push must share.
#[test]
fn version_names_the_protocol() {
    let o = Env::new().syncd(&[&"--version"]);
    assert_eq!(code(&o), 0);
    let want = format!("(protocol {})", syncd::proto::VERSION);
    assert!(stdout(&o).contains(&want), "{}", stdout(&o));
}

/// Shell completions and a man page come from the binary itself.
#[test]
fn completions_and_man_page_are_generated() {
    let env = Env::new();
    let o = env.syncd(&[&"completions", &"bash"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stdout(&o).contains("--delete-excluded"));
    let o = env.syncd(&[&"man"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stdout(&o).contains(".TH syncd"),
        "{}",
        &stdout(&o)[..200.min(o.stdout.len())]
    );
}

/// `push -i` lists what it does, with which attributes changed, like `syncd diff` does.
#[test]
fn itemize_changes_lists_each_path_and_which_attribute() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let [src, dst] = tempdirs();
    write(src.path(), "moded", b"a");
    write(src.path(), "timed", b"b");
    write(src.path(), "gone", b"c");
    let o = env.syncd(&[&"push", &src.path(), &dst.path().join("")]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    std::fs::set_permissions(
        src.path().join("moded"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let t = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    filetime::set_file_mtime(src.path().join("timed"), t).unwrap();
    std::fs::remove_file(src.path().join("gone")).unwrap();
    write(src.path(), "new\nline", b"d");
    let want = vec![
        "- gone".to_string(),
        "m moded (mode)".to_string(),
        "+ new\\nline".to_string(),
        "m timed (mtime)".to_string(),
    ];
    let diff = env.syncd(&[&"diff", &src.path(), &dst.path()]);
    let mut got: Vec<String> = stdout(&diff).lines().map(str::to_string).collect();
    got.sort_by(|a, b| a[2..].cmp(&b[2..]));
    assert_eq!(got, want, "diff");
    let o = env.syncd(&[
        &"push",
        &src.path(),
        &dst.path().join(""),
        &"--delete",
        &"-i",
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let listed: Vec<String> = stdout(&o)
        .lines()
        .filter(|l| !l.starts_with("pushed") && !l.starts_with("root"))
        .map(str::to_string)
        .collect();
    assert_eq!(listed, want, "push -i");
}

/// `-0` carries names exactly, newlines and all, for `xargs -0`.
#[test]
fn null_separated_listings_carry_names_exactly() {
    let env = Env::new();
    let [src, dst] = tempdirs();
    write(src.path(), "two\nlines", b"x");
    let o = env.syncd(&[&"diff", &src.path(), &dst.path(), &"-0"]);
    assert_eq!(code(&o), 1);
    assert_eq!(o.stdout, b"+ two\nlines\0");
    let o = env.syncd(&[&"push", &src.path(), &dst.path().join(""), &"-n", &"-0"]);
    assert_eq!(o.stdout, b"+ two\nlines\0");
}

/// A peer that is not allowed is named once in serve's log, not twice.
#[test]
fn a_rejected_peer_is_logged_once() {
    let (receiver, stranger, allowed) = (Env::new(), Env::new(), Env::new());
    let rid = init(&receiver);
    init(&stranger);
    let aid = init(&allowed);
    let dst = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    write(src.path(), "a", b"a");
    let server = Server::start(&receiver, dst.path(), &aid);
    let (rc, _, _) = push_json(&stranger, src.path(), &server.addr, &["--peer-id", &rid]);
    assert_eq!(rc, 2);
    let log = server.wait_log("rejected connection");
    let line = log
        .lines()
        .find(|l| l.contains("rejected connection"))
        .unwrap();
    assert_eq!(
        line.matches("rejected connection from").count(),
        1,
        "{line}"
    );
    assert!(log.contains("allowed peers: "), "{log}");
}

/// `--progress` into a pipe prints a plain line every few seconds, with totals, files done
/// of files being sent, the wire rate in --bwlimit's units and an ETA (rsync's
/// --info=progress2).
#[test]
fn progress_off_a_terminal_prints_plain_lines() {
    let (receiver, sender) = (Env::new(), Env::new());
    let (rid, sid) = (init(&receiver), init(&sender));
    let [src, dst] = tempdirs();
    for i in 0..4 {
        write(src.path(), &format!("f{i}"), &noise(8 << 20, 90 + i));
    }
    // Not empty: the session, whose lines have totals (a bulk copy's come below).
    for root in [src.path(), dst.path()] {
        write(root, "same", b"in both");
    }
    let server = Server::start(&receiver, dst.path(), &sid);
    let o = sender
        .cmd()
        .arg("push")
        .arg(src.path())
        .arg(&server.addr)
        .args(["--peer-id", &rid, "--bwlimit", "20M", "--progress"])
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains(": sent "))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("of at most 32.0 MiB")
            && line.contains("files (of 5 scanned)")
            && line.contains("bit/s on the wire")
            && line.contains("ETA"),
        "{line}"
    );
    // Files sent in full of files asked for so far: each line's "N of M files" with
    // N ≤ M ≤ 4, N never going back, and some file done while the push runs (13 s at
    // 20 Mbit/s: several lines).
    let counts: Vec<(u64, u64)> = err
        .lines()
        .filter_map(|l| {
            let (before, _) = l.split_once(" files (of")?;
            let mut w = before.rsplit(' ');
            let m = w.next()?.parse().ok()?;
            w.next().filter(|&x| x == "of")?;
            let n = w.next()?.parse().ok()?;
            Some((n, m))
        })
        .collect();
    assert!(counts.len() >= 2, "{err}");
    assert!(counts.iter().all(|&(n, m)| n <= m && m <= 4), "{counts:?}");
    assert!(counts.windows(2).all(|w| w[0].0 <= w[1].0), "{counts:?}");
    assert!(counts.iter().any(|&(n, _)| n >= 1), "{counts:?}");
    assert!(stdout(&o).contains("(DEST is identical)"), "{}", stdout(&o));
}
