//! Side-by-side push benchmarks for issue #3: `syncd push` against rsync (and `cp -a`).
//!
//! ```text
//! cargo run --release -p benches --bin compare_push -- <scenario|all> [--reps N] [--keep] [--work DIR]
//! ```
//!
//! Scenarios: `loopback-full`, `loopback-1pct`, `link-100mbit`, `veth-fast`, `bwlimit`,
//! `local`, `local-ext4`, or `all`.
//!
//! `loopback-full` also runs rsync over ssh (`-a`, and the seed guide's `-avz --checksum`) to
//! an `sshd` it starts on loopback with a key it generates. `local-ext4` pushes onto an ext4
//! image loop-mounted from the disk (`/var/tmp`), where durability costs what it costs on a
//! server: each tool's time includes a `sync` (or its own fsyncs). Every table has the CPU
//! seconds (user + system) of each side.
//! The syncd binary is `$SYNCD_BIN`, else `$CARGO_TARGET_DIR/release/syncd`, else the
//! workspace's `target/release/syncd` (build it first: `cargo build --release -p syncd`).
//! `$SYNCD_PUSH_ARGS` adds flags to every `syncd push`, e.g. `--compress-level 3`.
//!
//! Corpora live on tmpfs under `--work` (default `/dev/shm/pushbench`): a copy of `/usr/share`,
//! its 1%-changed variant (every 100th regular file in sorted path order gets bytes appended or
//! overwritten), a `doc`+`man` subset for the 100 Mbit link, and 400 MB of random data for the
//! bandwidth cap. `--keep` keeps them for the next run (and reuses them); otherwise the work
//! directory is removed at the end.
//!
//! The network scenarios create two network namespaces (`pbA`, the sender, and `pbB`, the
//! receiver) joined by a veth pair with link-local addresses 169.254.77.2/30 and .1/30. They
//! need root, `ip` and `tc`, and are always deleted again (also stale ones from a killed run).
//! Every process started here (serve, rsync daemons, namespace anchors) is stopped by a guard.

use anyhow::{Context, Result, bail};
use serde_json::Value;
use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SCENARIOS: [&str; 7] = [
    "loopback-full",
    "loopback-1pct",
    "link-100mbit",
    "veth-fast",
    "bwlimit",
    "local",
    "local-ext4",
];
const NS_SEND: &str = "pbA";
const NS_RECV: &str = "pbB";
const VETH_SEND: &str = "pbvA";
const VETH_RECV: &str = "pbvB";
const ADDR_SEND: &str = "169.254.77.2";
const ADDR_RECV: &str = "169.254.77.1";
const RANDOM_MB: usize = 400;
/// Tries per rep for a syncd push before the rep counts as failed.
const ATTEMPTS: usize = 3;

fn main() {
    if let Err(e) = real_main() {
        eprintln!("compare_push: error: {e:#}");
        std::process::exit(2);
    }
}

struct Opts {
    scenarios: Vec<&'static str>,
    reps: usize,
    keep: bool,
    work: PathBuf,
}

fn usage() -> String {
    format!(
        "usage: compare_push <{}|all> [--reps N] [--keep] [--work DIR]",
        SCENARIOS.join("|")
    )
}

fn parse_args() -> Result<Opts> {
    let mut scenarios = Vec::new();
    let mut reps = 3;
    let mut keep = false;
    let mut work = PathBuf::from("/dev/shm/pushbench");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--reps" => {
                reps = args
                    .next()
                    .context("--reps needs a number")?
                    .parse()
                    .context("--reps needs a number")?;
                if reps == 0 {
                    bail!("--reps must be at least 1");
                }
            }
            "--keep" => keep = true,
            "--work" => work = PathBuf::from(args.next().context("--work needs a directory")?),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            "all" => scenarios.extend(SCENARIOS),
            s => match SCENARIOS.iter().find(|&&k| k == s) {
                Some(k) => scenarios.push(*k),
                None => bail!("unknown argument {s:?}; {}", usage()),
            },
        }
    }
    if scenarios.is_empty() {
        bail!("{}", usage());
    }
    scenarios.dedup();
    Ok(Opts {
        scenarios,
        reps,
        keep,
        work,
    })
}

fn real_main() -> Result<()> {
    let opts = parse_args()?;
    let syncd = syncd_bin()?;
    // Check every prerequisite before any work starts.
    for s in &opts.scenarios {
        match *s {
            "loopback-full" => {
                require("rsync")?;
                require("sshd")?;
            }
            "loopback-1pct" | "local" => require("rsync")?,
            "local-ext4" => {
                require("rsync")?;
                require("mkfs.ext4")?;
                if !is_root()? {
                    bail!(
                        "scenario local-ext4 needs root (mount -o loop); run as root or leave it out"
                    );
                }
            }
            _ => {
                require("rsync")?;
                require("ip")?;
                require("tc")?;
                if !is_root()? {
                    bail!(
                        "scenario {s} needs root (network namespaces, veth, tc); run as root or leave it out"
                    );
                }
            }
        }
    }
    require("diff")?;
    std::fs::create_dir_all(&opts.work)
        .with_context(|| format!("creating {}", opts.work.display()))?;
    let bench = Bench {
        syncd,
        work: opts.work.clone(),
        reps: opts.reps,
        warm: std::cell::Cell::new(false),
    };
    println!("# syncd push vs rsync ({})\n", utc_now());
    println!("- machine: {}", machine_info());
    println!("- syncd: {} ({})", bench.syncd.display(), source_state());
    println!(
        "- {}; reps per scenario: {} (median reported)",
        rsync_version(),
        opts.reps
    );
    println!("- load average at start: {}\n", load_average());
    let started = Instant::now();
    let mut failures = Vec::new();
    for s in &opts.scenarios {
        println!("## {s}\n");
        println!("load average before: {}\n", load_average());
        let t = Instant::now();
        let r = match *s {
            "loopback-full" => bench.loopback_full(),
            "loopback-1pct" => bench.loopback_1pct(),
            "link-100mbit" => bench.link_100mbit(),
            "veth-fast" => bench.veth_fast(),
            "bwlimit" => bench.bwlimit(),
            "local-ext4" => bench.local_ext4(),
            _ => bench.local(),
        };
        match r {
            Ok(report) => println!("{report}"),
            Err(e) => {
                println!("**scenario failed:** {e:#}\n");
                failures.push(format!("{s}: {e:#}"));
            }
        }
        println!(
            "load average after: {}; scenario took {:.0}s\n",
            load_average(),
            t.elapsed().as_secs_f64()
        );
        let _ = std::io::stdout().flush();
    }
    println!("total: {:.0}s", started.elapsed().as_secs_f64());
    if !opts.keep {
        let _ = std::fs::remove_dir_all(&opts.work);
    }
    if !failures.is_empty() {
        bail!(
            "{} scenario(s) failed: {}",
            failures.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Environment

fn syncd_bin() -> Result<PathBuf> {
    let path = if let Some(p) = std::env::var_os("SYNCD_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(t).join("release/syncd")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/syncd")
    };
    if !path.is_file() {
        bail!(
            "syncd binary not found at {} (build it with `cargo build --release -p syncd` or set SYNCD_BIN)",
            path.display()
        );
    }
    Ok(path)
}

fn require(program: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        bail!("`{program}` is not installed (or not on PATH); it is needed for this benchmark");
    }
    Ok(())
}

fn is_root() -> Result<bool> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no effective Uid in /proc/self/status")?;
    Ok(uid == "0")
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn machine_info() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or_else(|| "?".into(), |kib| format!("{} GiB", kib / 1024 / 1024));
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpus} CPUs ({model}), {mem} RAM, Linux {kernel}")
}

/// The workspace's commit and whether syncd's sources differ from it (the binary is
/// whatever was last built from the working tree).
fn source_state() -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&root)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let head = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = git(&["status", "--short", "--", "syncd"]);
    if dirty.is_empty() {
        format!("workspace at {head}, syncd/ clean")
    } else {
        format!(
            "workspace at {head}, syncd/ has uncommitted changes: {}",
            dirty.lines().map(str::trim).collect::<Vec<_>>().join(", ")
        )
    }
}

fn rsync_version() -> String {
    Command::new("rsync")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .unwrap_or_else(|| "rsync ?".into())
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Processes

fn display(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// No command here legitimately runs this long (the slowest, a 400 MB push at 50 Mbit/s,
/// takes ~75 s): past it a command counts as hung and is killed.
const HANG_LIMIT: Duration = Duration::from_secs(300);

/// Runs `cmd` to completion; fails (with its stderr) unless it exits 0 within [`HANG_LIMIT`].
fn run(cmd: &mut Command) -> Result<Output> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", display(cmd)))?;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + HANG_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{}` hung: no exit after {}s, killed",
                display(cmd),
                HANG_LIMIT.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    };
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `cmd` and returns its wall time (the program must exit 0).
fn timed(cmd: &mut Command) -> Result<(Duration, Output)> {
    let t = timed_cpu(cmd)?;
    Ok((t.time, t.out))
}

/// One timed run of a client command.
struct Timed {
    time: Duration,
    /// CPU seconds (user + system) of the command and of every process it waited for
    /// (rsync's local receiver, ssh).
    cpu: f64,
    out: Output,
}

/// Runs `cmd` (which must exit 0) and measures its wall time and CPU.
fn timed_cpu(cmd: &mut Command) -> Result<Timed> {
    let cpu = children_cpu()?;
    let t = Instant::now();
    let out = run(cmd)?;
    let time = t.elapsed();
    Ok(Timed {
        time,
        cpu: children_cpu()? - cpu,
        out,
    })
}

/// USER_HZ: the unit of /proc's CPU times, 100 on every Linux architecture we run on.
const CLOCK_TICKS: f64 = 100.0;

/// Fields 3.. of `/proc/PID/stat` (after the command name, which may hold spaces).
fn proc_stat(pid: &str) -> Result<Vec<u64>> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("{path}: no command name"))?;
    // Field 3 (the state) is a letter; the numbers from field 4 on are what is needed.
    Ok(rest
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect())
}

/// CPU seconds of this process's children that it has waited for (cutime + cstime).
fn children_cpu() -> Result<f64> {
    let f = proc_stat("self")?;
    // Fields 16 and 17, counted from 4.
    Ok((f[12] + f[13]) as f64 / CLOCK_TICKS)
}

/// CPU seconds of process `pid` itself and of the children it has waited for
/// (utime + stime + cutime + cstime): a daemon's total, its reaped sessions included.
fn process_cpu(pid: u32) -> Result<f64> {
    let f = proc_stat(&pid.to_string())?;
    Ok((f[10] + f[11] + f[12] + f[13]) as f64 / CLOCK_TICKS)
}

/// Runs `f` and returns what it gave and the CPU seconds daemon `pid` used meanwhile (read
/// again after a pause, so that the sessions it forked have exited and been reaped).
fn daemon_cpu<T>(pid: u32, f: impl FnOnce() -> Result<T>) -> Result<(T, f64)> {
    let before = process_cpu(pid)?;
    let v = f()?;
    std::thread::sleep(Duration::from_millis(200));
    Ok((v, process_cpu(pid)? - before))
}

/// A background process, stopped with SIGTERM (then SIGKILL after 5 s) when dropped.
struct Daemon {
    child: Child,
    label: String,
    log: PathBuf,
}

impl Daemon {
    fn spawn(label: &str, cmd: &mut Command, log: PathBuf) -> Result<Self> {
        let f = std::fs::File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("starting {}", display(cmd)))?;
        Ok(Self {
            child,
            label: label.into(),
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `ready()` holds; fails if the process exits or 20 s pass.
    fn wait_until(&mut self, mut ready: impl FnMut(&Self) -> bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if ready(self) {
                return Ok(());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!("{} exited ({st}): {}", self.label, self.log_text().trim());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} not ready after 20s: {}",
                    self.label,
                    self.log_text().trim()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two network namespaces joined by a veth pair; deleted again on drop.
struct NetPair;

impl NetPair {
    fn new(tbf_rate: Option<&str>) -> Result<Self> {
        Self::delete();
        // From here on, drop deletes whatever was created.
        let pair = Self;
        run(Command::new("ip").args(["netns", "add", NS_SEND]))?;
        run(Command::new("ip").args(["netns", "add", NS_RECV]))?;
        run(Command::new("ip").args([
            "link", "add", VETH_SEND, "type", "veth", "peer", "name", VETH_RECV,
        ]))?;
        for (ns, dev, addr) in [
            (NS_SEND, VETH_SEND, ADDR_SEND),
            (NS_RECV, VETH_RECV, ADDR_RECV),
        ] {
            run(Command::new("ip").args(["link", "set", dev, "netns", ns]))?;
            run(Command::new("ip").args([
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/30"),
                "dev",
                dev,
            ]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", dev, "up"]))?;
            run(Command::new("ip").args(["-n", ns, "link", "set", "lo", "up"]))?;
            if let Some(rate) = tbf_rate {
                run(Command::new("ip").args([
                    "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                    rate, "burst", "32kbit", "latency", "400ms",
                ]))?;
            }
        }
        // Wait for the link to come up (ping is not assumed to exist: poll operstate).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out =
                run(Command::new("ip").args(["-n", NS_SEND, "-o", "link", "show", VETH_SEND]))?;
            if String::from_utf8_lossy(&out.stdout).contains("state UP") {
                break;
            }
            if Instant::now() > deadline {
                bail!("veth {VETH_SEND} did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pair)
    }

    fn delete() {
        for ns in [NS_SEND, NS_RECV] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
        // The veth normally goes with its namespace; a half-made one may be left in ours.
        let _ = Command::new("ip")
            .args(["link", "del", VETH_SEND])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        Self::delete();
    }
}

/// A command run inside namespace `ns` (or directly when `ns` is None).
fn in_ns(ns: Option<&str>, program: &Path) -> Command {
    match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// A `sleep` inside the sender namespace: `/proc/<pid>/net/dev` shows that namespace's
/// interface counters, read without spawning anything.
struct NsCounters {
    anchor: Daemon,
}

impl NsCounters {
    fn new(work: &Path) -> Result<Self> {
        let mut anchor = Daemon::spawn(
            "namespace anchor",
            in_ns(Some(NS_SEND), Path::new("sleep")).arg("86400"),
            work.join("logs/anchor.log"),
        )?;
        // `ip netns exec` execs sleep in the same pid once it has joined the namespace.
        anchor.wait_until(|d| {
            std::fs::read_to_string(format!("/proc/{}/comm", d.pid()))
                .map(|c| c.trim() == "sleep")
                .unwrap_or(false)
        })?;
        Ok(Self { anchor })
    }

    fn path(&self) -> String {
        format!("/proc/{}/net/dev", self.anchor.pid())
    }

    /// (tx, rx) bytes of the sender's veth.
    fn read(path: &str) -> Result<(u64, u64)> {
        let text = std::fs::read_to_string(path)?;
        for line in text.lines() {
            if let Some(rest) = line.trim_start().strip_prefix(&format!("{VETH_SEND}:")) {
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .map(|x| x.parse().unwrap_or(0))
                    .collect();
                if f.len() >= 9 {
                    return Ok((f[8], f[0]));
                }
            }
        }
        bail!("{VETH_SEND} not found in {path}")
    }

    fn tx_rx(&self) -> Result<(u64, u64)> {
        Self::read(&self.path())
    }
}

// ---------------------------------------------------------------------------------------------
// Files

fn rm_rf(p: &Path) -> Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => {
            std::fs::remove_dir_all(p).with_context(|| format!("removing {}", p.display()))
        }
        Ok(_) => std::fs::remove_file(p).with_context(|| format!("removing {}", p.display())),
        Err(_) => Ok(()),
    }
}

fn fresh_dir(p: &Path) -> Result<PathBuf> {
    rm_rf(p)?;
    std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    Ok(p.to_path_buf())
}

fn cp_a(src: &Path, dst: &Path) -> Result<()> {
    rm_rf(dst)?;
    run(Command::new("cp").arg("-a").arg(src).arg(dst))?;
    Ok(())
}

/// Every regular file under `root`, sorted by path bytes (symlinks are not followed).
fn regular_files(root: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                out.push(e.path());
            }
        }
    }
    out.sort_by(|a, b| {
        a.as_os_str()
            .as_encoded_bytes()
            .cmp(b.as_os_str().as_encoded_bytes())
    });
    Ok(out)
}

/// The 1% change: every 100th regular file (index 99, 199, ... in sorted path order) gets
/// 16 bytes appended (even k) or 8 bytes overwritten in its middle (odd k; size unchanged).
/// Deterministic for a given tree. Returns the number of files changed.
fn change_1pct(root: &Path) -> Result<usize> {
    let files = regular_files(root)?;
    let mut n = 0;
    for (k, f) in files.iter().skip(99).step_by(100).enumerate() {
        let len = std::fs::metadata(f)?.len();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .with_context(|| format!("opening {}", f.display()))?;
        if k % 2 == 0 || len < 8 {
            use std::io::Seek;
            file.seek(std::io::SeekFrom::End(0))?;
            file.write_all(format!("#pushbench{k:06}\n").as_bytes())?;
        } else {
            use std::os::unix::fs::FileExt;
            file.write_all_at(format!("PB{k:06}").as_bytes(), len / 2 - 4)?;
        }
        n += 1;
    }
    Ok(n)
}

/// `dir`'s total bytes and regular-file count.
fn tree_size(dir: &Path) -> Result<(u64, usize)> {
    let files = regular_files(dir)?;
    let mut bytes = 0;
    for f in &files {
        bytes += std::fs::symlink_metadata(f)?.len();
    }
    Ok((bytes, files.len()))
}

/// Compares two trees: contents with `diff -r --no-dereference`, then type, mode, size,
/// mtime (ns) and symlink targets of every entry with `find -printf`. Ok(None) when equal.
fn verify(a: &Path, b: &Path) -> Result<Option<String>> {
    let out = Command::new("diff")
        .args(["-rq", "--no-dereference"])
        .arg(a)
        .arg(b)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stdout);
        let n = text.lines().count();
        let first = text.lines().next().unwrap_or("").to_string();
        let err = String::from_utf8_lossy(&out.stderr);
        return Ok(Some(format!(
            "diff -r: {n} differences (first: {first}) {}",
            err.trim()
        )));
    }
    let listing = |root: &Path| -> Result<Vec<String>> {
        let out = run(Command::new("find").arg(root).args([
            "-mindepth",
            "1",
            "-printf",
            "%P\t%y\t%m\t%s\t%T@\t%l\n",
        ]))?;
        let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            // A directory's size is filesystem bookkeeping, not content.
            .map(|l| {
                let f: Vec<&str> = l.split('\t').collect();
                if f.get(1) == Some(&"d") && f.len() == 6 {
                    format!("{}\t{}\t{}\t-\t{}\t{}", f[0], f[1], f[2], f[4], f[5])
                } else {
                    l.to_string()
                }
            })
            .collect();
        v.sort();
        Ok(v)
    };
    let (la, lb) = (listing(a)?, listing(b)?);
    if la != lb {
        let sa: std::collections::HashSet<&String> = la.iter().collect();
        let diffs: Vec<&String> = lb.iter().filter(|l| !sa.contains(l)).collect();
        let first = diffs.first().map_or("", |s| s.as_str());
        let src = first
            .split('\t')
            .next()
            .and_then(|p| la.iter().find(|l| l.split('\t').next() == Some(p)))
            .map_or("(missing in source)", |s| s.as_str());
        return Ok(Some(format!(
            "metadata: {} of {} entries differ; first: dest `{}` vs source `{}`",
            diffs.len(),
            lb.len(),
            first.replace('\t', " "),
            src.replace('\t', " ")
        )));
    }
    Ok(None)
}

// ---------------------------------------------------------------------------------------------
// Statistics and tables

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

fn secs(xs: &[Duration]) -> Vec<f64> {
    xs.iter().map(Duration::as_secs_f64).collect()
}

fn fmt_s(x: f64) -> String {
    if x.is_nan() {
        "failed".into()
    } else if x < 10.0 {
        format!("{x:.2}s")
    } else {
        format!("{x:.1}s")
    }
}

fn fmt_runs(xs: &[f64]) -> String {
    xs.iter()
        .map(|&x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn fmt_bytes(b: f64) -> String {
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{b:.0} B")
    }
}

struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(headers: &[&str]) -> Self {
        Self {
            rows: vec![headers.iter().map(|s| s.to_string()).collect()],
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn markdown(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.rows.iter().enumerate() {
            let _ = writeln!(s, "| {} |", r.join(" | "));
            if i == 0 {
                let _ = writeln!(s, "|{}", "---|".repeat(r.len()));
            }
        }
        s
    }
}

/// Per-tool results of one scenario.
#[derive(Default)]
struct Sample {
    times: Vec<Duration>,
    /// CPU seconds of the sending side (the client) per run.
    cpu_send: Vec<f64>,
    /// CPU seconds of the receiving side (the daemon) per run; empty where one process (or
    /// one process tree) does both, which `cpu_send` then holds.
    cpu_recv: Vec<f64>,
    wire: Vec<f64>,
    verified: Option<Result<(), String>>,
    attempts: usize,
    failures: Vec<String>,
}

impl Sample {
    fn median_s(&self) -> f64 {
        median(&secs(&self.times))
    }

    /// Runs one rep: up to [`ATTEMPTS`] tries, each from a fresh state (`f` sets it up),
    /// recording the errors of failed tries. None if every try failed.
    fn attempt<T>(&mut self, what: &str, mut f: impl FnMut() -> Result<T>) -> Option<T> {
        for _ in 0..ATTEMPTS {
            self.attempts += 1;
            match f() {
                Ok(v) => return Some(v),
                Err(e) => {
                    let e = format!("{e:#}");
                    eprintln!("compare_push: {what} failed: {e}");
                    self.failures.push(e);
                }
            }
        }
        None
    }

    /// A Markdown paragraph about failed tries (empty when none failed).
    fn failure_note(&self, tool: &str) -> String {
        if self.failures.is_empty() {
            return String::new();
        }
        let mut s = format!(
            "**{tool} failed {} of {} attempts** (each failed attempt was retried from scratch: fresh destination, homes and serve; only successful attempts are timed). Errors (stderr of the failing command, last part):\n\n",
            self.failures.len(),
            self.attempts
        );
        for e in &self.failures {
            let short: String = match e.rfind("): ") {
                Some(i) => e[i + 3..].to_string(),
                None => e.clone(),
            };
            let _ = writeln!(s, "- `{}`", short.replace('`', "'"));
        }
        s.push('\n');
        s
    }

    /// `sender / receiver` CPU seconds (medians), or one figure for both sides.
    fn cpu_cell(&self) -> String {
        match (self.cpu_send.is_empty(), self.cpu_recv.is_empty()) {
            (true, _) => "-".into(),
            (false, true) => format!("{:.2} s (both sides)", median(&self.cpu_send)),
            (false, false) => format!(
                "{:.2} s / {:.2} s",
                median(&self.cpu_send),
                median(&self.cpu_recv)
            ),
        }
    }

    fn verify_cell(&self) -> String {
        match &self.verified {
            None => "not checked".into(),
            Some(Ok(())) => "ok".into(),
            Some(Err(e)) => format!("**FAILED**: {e}"),
        }
    }

    fn check(&mut self, a: &Path, b: &Path) -> Result<()> {
        if self.verified.is_none() {
            self.verified = Some(match verify(a, b)? {
                None => Ok(()),
                Some(e) => Err(e),
            });
        }
        Ok(())
    }
}

fn parse_json(out: &Output) -> Result<Value> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .context("syncd push --json printed no JSON")?;
    serde_json::from_str(line).context("parsing syncd push --json")
}

fn json_f64(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// "Total bytes sent: 1,234,567" from `rsync --stats`.
fn rsync_bytes_sent(out: &Output) -> Result<f64> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("Total bytes sent:"))
        .context("no \"Total bytes sent\" in rsync --stats output")?;
    let digits: String = line.chars().filter(char::is_ascii_digit).collect();
    Ok(digits.parse()?)
}

// ---------------------------------------------------------------------------------------------
// The scenarios

struct Bench {
    syncd: PathBuf,
    work: PathBuf,
    reps: usize,
    /// Memory for the copies was touched once (see [`Bench::corpus_ready`]).
    warm: std::cell::Cell<bool>,
}

/// A syncd receiver: fresh identities for both sides and a `syncd serve` into `root`.
struct Receiver {
    send_home: PathBuf,
    recv_id: String,
    addr: String,
    serve: Daemon,
}

impl Bench {
    fn p(&self, rel: &str) -> PathBuf {
        self.work.join(rel)
    }

    /// The /usr/share copy, made once (and kept across runs with --keep).
    fn corpus_ready(&self) -> Result<PathBuf> {
        let dir = self.p("usr-share");
        if !self.p("usr-share.complete").exists() || !dir.is_dir() {
            eprintln!("compare_push: copying /usr/share to {}", dir.display());
            let tmp = self.p("usr-share.tmp");
            cp_a(Path::new("/usr/share"), &tmp)?;
            rm_rf(&dir)?;
            std::fs::rename(&tmp, &dir)?;
            std::fs::write(self.p("usr-share.complete"), b"")?;
        }
        if !self.warm.replace(true) {
            // On a VM, the first write to a guest page the machine never used costs the
            // hypervisor's allocation: a `cp -a` of the corpus into such memory took 3.2–4.0 s
            // here, into memory freed a moment before 1.8–2.1 s. Whichever tool ran first
            // paid for it. Two copies, made and removed untimed, leave memory for the
            // copies the scenarios make.
            eprintln!("compare_push: warming memory for the copies (two untimed cp -a)");
            let (a, b) = (self.p("warm-a"), self.p("warm-b"));
            cp_a(&dir, &a)?;
            cp_a(&dir, &b)?;
            rm_rf(&a)?;
            rm_rf(&b)?;
        }
        Ok(dir)
    }

    fn corpus_line(&self, dir: &Path, what: &str) -> Result<String> {
        let (bytes, files) = tree_size(dir)?;
        Ok(format!(
            "corpus: {what} at `{}`: {files} regular files, {}",
            dir.display(),
            fmt_bytes(bytes as f64)
        ))
    }

    fn home(&self, name: &str) -> Result<(PathBuf, String)> {
        let h = fresh_dir(&self.p(&format!("homes/{name}")))?;
        let out = run(Command::new(&self.syncd).args(["init", "--home"]).arg(&h))?;
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if id.is_empty() {
            bail!("`syncd init` printed no peer id");
        }
        Ok((h, id))
    }

    /// Fresh sender and receiver homes and a `syncd serve` into `root`, in namespace `ns`
    /// (listening on `listen`).
    fn receiver(&self, root: &Path, ns: Option<&str>, listen: &str) -> Result<Receiver> {
        self.receiver_seeded(root, ns, listen, |_, _| Ok(()))
    }

    /// [`Self::receiver`], with `seed(sender home, receiver home)` run before serve starts.
    fn receiver_seeded(
        &self,
        root: &Path,
        ns: Option<&str>,
        listen: &str,
        seed: impl FnOnce(&Path, &Path) -> Result<()>,
    ) -> Result<Receiver> {
        let (send_home, send_id) = self.home("sender")?;
        let (recv_home, recv_id) = self.home("receiver")?;
        seed(&send_home, &recv_home)?;
        let mut serve = Daemon::spawn(
            "syncd serve",
            in_ns(ns, &self.syncd)
                .arg("serve")
                .arg("--root")
                .arg(root)
                .args(["--listen", listen, "--allow", &send_id, "--home"])
                .arg(&recv_home),
            self.p("logs/serve.log"),
        )?;
        serve.wait_until(|d| d.log_text().contains("listening on"))?;
        Ok(Receiver {
            send_home,
            recv_id,
            addr: listen.to_string(),
            serve,
        })
    }

    fn push_cmd(&self, ns: Option<&str>, src: &Path, r: &Receiver) -> Command {
        let mut c = in_ns(ns, &self.syncd);
        c.arg("push")
            .arg(src)
            .arg(&r.addr)
            .args(["--peer-id", &r.recv_id, "--home"])
            .arg(&r.send_home)
            .args(["--json", "--no-progress"]);
        // Extra push flags for experiments, e.g. SYNCD_PUSH_ARGS="--compress-level 3".
        if let Ok(extra) = std::env::var("SYNCD_PUSH_ARGS") {
            c.args(extra.split_whitespace());
        }
        c
    }

    /// An rsync daemon (in `ns`, bound to `addr`) with module `mod` at `root`.
    ///
    /// `use chroot = yes`: without a chroot the daemon sanitizes symlink targets (an absolute
    /// `/etc/X11/rgb.txt` arrives as `etc/X11/rgb.txt`; 330 of /usr/share's symlinks), and the
    /// copy would not be exact. We run as root, so the chroot costs nothing else.
    fn rsync_daemon(&self, root: &Path, ns: Option<&str>, addr: &str, port: u16) -> Result<Daemon> {
        let conf = self.p("rsyncd.conf");
        std::fs::write(
            &conf,
            format!(
                "use chroot = yes\nuid = root\ngid = root\nlog file = {}\n[mod]\n    path = {}\n    read only = no\n",
                self.p("logs/rsyncd-transfers.log").display(),
                root.display()
            ),
        )?;
        let mut d = Daemon::spawn(
            "rsync daemon",
            in_ns(ns, Path::new("rsync"))
                .args(["--daemon", "--no-detach"])
                .arg(format!("--config={}", conf.display()))
                .arg(format!("--port={port}"))
                .arg(format!("--address={addr}")),
            self.p("logs/rsyncd.log"),
        )?;
        let probe = format!("rsync://{addr}:{port}/");
        d.wait_until(|_| {
            in_ns(ns, Path::new("rsync"))
                .arg(&probe)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        })?;
        Ok(d)
    }

    fn logs(&self) -> Result<()> {
        std::fs::create_dir_all(self.p("logs"))?;
        Ok(())
    }

    // -- 1. loopback-full ---------------------------------------------------------------------

    fn loopback_full(&self) -> Result<String> {
        self.logs()?;
        let src = self.corpus_ready()?;
        let mut out = self.corpus_line(&src, "copy of /usr/share on tmpfs")? + "\n\n";
        let (dst_s, dst_r) = (self.p("dst-syncd"), self.p("dst-rsync"));
        let port = free_port()?;
        let mut syncd = Sample::default();
        let mut rsync = Sample::default();
        let mut ssh = Sample::default();
        let mut seed = Sample::default();
        let sshd = integration_tests::sshd::Sshd::start();
        let ssh_e = std::iter::once("ssh".to_string())
            .chain(sshd.client_options())
            .chain(["-p".into(), sshd.port.to_string()])
            .collect::<Vec<_>>()
            .join(" ");
        let mut pushes = Vec::new();
        for rep in 0..self.reps {
            eprintln!("compare_push: loopback-full rep {}", rep + 1);
            // syncd: fresh destination, fresh homes on both sides (cold caches), new serve.
            let res = syncd.attempt("syncd push", || {
                fresh_dir(&dst_s)?;
                let r = self.receiver(&dst_s, None, &format!("127.0.0.1:{port}"))?;
                let (t, recv) = daemon_cpu(r.serve.pid(), || {
                    timed_cpu(&mut self.push_cmd(None, &src, &r))
                })?;
                drop(r);
                Ok((t, recv))
            });
            if let Some((t, recv)) = res {
                let j = parse_json(&t.out)?;
                syncd.times.push(t.time);
                syncd.cpu_send.push(t.cpu);
                syncd.cpu_recv.push(recv);
                syncd.wire.push(json_f64(&j, "wire_bytes"));
                pushes.push(j);
                syncd.check(&src, &dst_s)?;
            }
            rm_rf(&dst_s)?;
            // rsync: fresh destination, daemon on loopback.
            fresh_dir(&dst_r)?;
            let d = self.rsync_daemon(&dst_r, None, "127.0.0.1", port)?;
            let (t, recv) = daemon_cpu(d.pid(), || {
                timed_cpu(
                    Command::new("rsync")
                        .arg("-a")
                        .arg(slash(&src))
                        .arg(format!("rsync://127.0.0.1:{port}/mod/")),
                )
            })?;
            drop(d);
            rsync.times.push(t.time);
            rsync.cpu_send.push(t.cpu);
            rsync.cpu_recv.push(recv);
            rsync.check(&src, &dst_r)?;
            rm_rf(&dst_r)?;
            // rsync over ssh (encrypted, like syncd's QUIC), to an sshd on loopback; and the
            // seed guide's `rsync -avz --checksum` over the same ssh.
            for (sample, flags) in [
                (&mut ssh, &["-a"][..]),
                (&mut seed, &["-avz", "--checksum"]),
            ] {
                fresh_dir(&dst_r)?;
                let (t, recv) = daemon_cpu(sshd.pid(), || {
                    timed_cpu(
                        Command::new("rsync")
                            .args(flags)
                            .args(["-e", &ssh_e])
                            .arg(slash(&src))
                            .arg(format!("{}:{}", sshd.host(), slash(&dst_r))),
                    )
                })?;
                sample.times.push(t.time);
                sample.cpu_send.push(t.cpu);
                sample.cpu_recv.push(recv);
                sample.check(&src, &dst_r)?;
                rm_rf(&dst_r)?;
            }
        }
        let (s, r) = (syncd.median_s(), rsync.median_s());
        let mut t = Table::new(&[
            "tool",
            "median",
            "runs (s)",
            "CPU sender / receiver",
            "wire bytes (syncd estimate)",
            "x/rsync daemon",
            "syncd speed-up",
            "verified",
        ]);
        for (name, sample, wire) in [
            (
                "`syncd push` → `syncd serve` (QUIC+TLS)",
                &syncd,
                fmt_bytes(median(&syncd.wire)),
            ),
            ("`rsync -a` → rsync daemon", &rsync, "-".into()),
            ("`rsync -a -e ssh` → sshd on loopback", &ssh, "-".into()),
            (
                "`rsync -avz --checksum -e ssh` (the seed guide's)",
                &seed,
                "-".into(),
            ),
        ] {
            let m = sample.median_s();
            t.row(vec![
                name.into(),
                fmt_s(m),
                fmt_runs(&secs(&sample.times)),
                sample.cpu_cell(),
                wire,
                format!("{:.2}", m / r),
                format!("{:.2}×", m / s),
                sample.verify_cell(),
            ]);
        }
        out += &t.markdown();
        let (sh, sd) = (ssh.median_s(), seed.median_s());
        let cpu_le = |a: &[f64], b: &[f64]| median(a) <= median(b);
        let _ = writeln!(
            out,
            "\nTargets: ≥1.0× the rsync daemon: **{}** ({:.2}×); ≥1.5× faster than `rsync -a` over ssh: **{}** ({:.2}×); ≥3× faster than `rsync -avz --checksum` over ssh: **{}** ({:.2}×); CPU per side ≤ rsync-over-ssh's: sender **{}**, receiver **{}**.\n",
            met(r / s >= 1.0),
            r / s,
            met(sh / s >= 1.5),
            sh / s,
            met(sd / s >= 3.0),
            sd / s,
            met(cpu_le(&syncd.cpu_send, &ssh.cpu_send)),
            met(cpu_le(&syncd.cpu_recv, &ssh.cpu_recv)),
        );
        out += "CPU is user + system from /proc: the client's own and its reaped children's (ssh, rsync's forks); the daemon's over the run, its reaped session processes included (sshd's and the rsync daemon's per-connection children).\n\n";
        out += &syncd.failure_note("syncd push");
        out += &push_json_note(&pushes);
        Ok(out)
    }

    // -- 2. loopback-1pct ---------------------------------------------------------------------

    fn loopback_1pct(&self) -> Result<String> {
        self.logs()?;
        let orig = self.corpus_ready()?;
        let mut out = self.corpus_line(&orig, "copy of /usr/share on tmpfs")? + "\n";
        let (src, dst_s, dst_r) = (self.p("src-1pct"), self.p("dst-syncd"), self.p("dst-rsync"));
        let port = free_port()?;
        let mut syncd = Sample::default();
        let mut rsync = Sample::default();
        let mut pushes = Vec::new();
        let mut changed = 0;
        for rep in 0..self.reps {
            eprintln!("compare_push: loopback-1pct rep {}", rep + 1);
            // syncd: the source is pushed once (warm sender cache and receiver manifest),
            // then changed in place and pushed again (timed).
            let res = syncd.attempt("syncd push (initial or 1%)", || {
                cp_a(&orig, &src)?;
                fresh_dir(&dst_s)?;
                // Seeding: a local push fills the destination and the receiver's manifest
                // (same home as serve's), `syncd manifest` warms the sender's cache: the same
                // state a remote initial push leaves, in less time.
                let r = self.receiver_seeded(
                    &dst_s,
                    None,
                    &format!("127.0.0.1:{port}"),
                    |send_home, recv_home| {
                        run(Command::new(&self.syncd)
                            .arg("push")
                            .arg(&src)
                            .arg(slash(&dst_s))
                            .arg("--home")
                            .arg(recv_home)
                            .args(["--json", "--no-progress"]))
                        .context("seeding the destination (local push)")?;
                        run(Command::new(&self.syncd)
                            .arg("manifest")
                            .arg(&src)
                            .arg("--home")
                            .arg(send_home))
                        .context("warming the sender's manifest")?;
                        Ok(())
                    },
                )?;
                change_1pct(&src)?;
                let (t, recv) = daemon_cpu(r.serve.pid(), || {
                    timed_cpu(&mut self.push_cmd(None, &src, &r))
                })?;
                drop(r);
                let j = parse_json(&t.out)?;
                Ok((t, recv, j))
            });
            if let Some((t, recv, j)) = res {
                syncd.times.push(t.time);
                syncd.cpu_send.push(t.cpu);
                syncd.cpu_recv.push(recv);
                syncd.wire.push(json_f64(&j, "wire_bytes"));
                pushes.push(j);
                syncd.check(&src, &dst_s)?;
            }
            rm_rf(&dst_s)?;
            // rsync: the same, through an rsync daemon.
            cp_a(&orig, &src)?;
            fresh_dir(&dst_r)?;
            let d = self.rsync_daemon(&dst_r, None, "127.0.0.1", port)?;
            let url = format!("rsync://127.0.0.1:{port}/mod/");
            run(Command::new("rsync").arg("-a").arg(slash(&src)).arg(&url))?;
            changed = change_1pct(&src)?;
            let (t, recv) = daemon_cpu(d.pid(), || {
                timed_cpu(
                    Command::new("rsync")
                        .args(["-a", "--stats"])
                        .arg(slash(&src))
                        .arg(&url),
                )
            })?;
            drop(d);
            rsync.times.push(t.time);
            rsync.cpu_send.push(t.cpu);
            rsync.cpu_recv.push(recv);
            rsync.wire.push(rsync_bytes_sent(&t.out)?);
            rsync.check(&src, &dst_r)?;
            rm_rf(&dst_r)?;
        }
        rm_rf(&src)?;
        let _ = writeln!(
            out,
            "change: {changed} regular files (every 100th in sorted path order: half get 17 bytes appended, half 8 bytes overwritten in the middle)\n"
        );
        let (s, r) = (syncd.median_s(), rsync.median_s());
        let (ws, wr) = (median(&syncd.wire), median(&rsync.wire));
        let mut t = Table::new(&[
            "tool",
            "median",
            "runs (s)",
            "CPU sender / receiver",
            "wire bytes",
            "time syncd/rsync",
            "wire syncd/rsync",
            "verified",
        ]);
        t.row(vec![
            "`syncd push` → `syncd serve` (warm)".into(),
            fmt_s(s),
            fmt_runs(&secs(&syncd.times)),
            syncd.cpu_cell(),
            format!("{} (`wire_bytes`)", fmt_bytes(ws)),
            format!("{:.2}", s / r),
            format!("{:.2}", ws / wr),
            syncd.verify_cell(),
        ]);
        t.row(vec![
            "`rsync -a --stats` → rsync daemon".into(),
            fmt_s(r),
            fmt_runs(&secs(&rsync.times)),
            rsync.cpu_cell(),
            format!("{} (\"Total bytes sent\")", fmt_bytes(wr)),
            "1.00".into(),
            "1.00".into(),
            rsync.verify_cell(),
        ]);
        out += &t.markdown();
        let _ = writeln!(
            out,
            "\nTargets: ≥1.5× faster: **{}** ({:.2}×); wire bytes ≤ rsync's: **{}** ({:.2}).\n",
            met(r / s >= 1.5),
            r / s,
            met(ws <= wr),
            ws / wr
        );
        out += &syncd.failure_note("syncd push");
        out += &push_json_note(&pushes);
        Ok(out)
    }

    // -- 3. link-100mbit ----------------------------------------------------------------------

    fn link_corpus(&self) -> Result<PathBuf> {
        let orig = self.corpus_ready()?;
        let dir = self.p("link-corpus");
        if !self.p("link-corpus.complete").exists() || !dir.is_dir() {
            fresh_dir(&dir)?;
            for sub in ["doc", "man"] {
                cp_a(&orig.join(sub), &dir.join(sub))?;
            }
            std::fs::write(self.p("link-corpus.complete"), b"")?;
        }
        Ok(dir)
    }

    fn link_100mbit(&self) -> Result<String> {
        self.logs()?;
        let src = self.link_corpus()?;
        let mut out =
            self.corpus_line(&src, "/usr/share/doc + /usr/share/man (copy on tmpfs)")? + "\n";
        let _net = NetPair::new(Some("100mbit"))?;
        let counters = NsCounters::new(&self.work)?;
        let _ = writeln!(
            out,
            "link: netns {NS_SEND} ({ADDR_SEND}) → {NS_RECV} ({ADDR_RECV}) over veth, `tc qdisc add dev <veth> root tbf rate 100mbit burst 32kbit latency 400ms` on both ends\n"
        );
        let (dst_s, dst_r) = (self.p("dst-syncd"), self.p("dst-rsync"));
        let mut syncd = Sample::default();
        let mut rsync = Sample::default();
        let mut veth_s = Vec::new();
        let mut veth_r = Vec::new();
        let mut pushes = Vec::new();
        for rep in 0..self.reps {
            eprintln!("compare_push: link-100mbit rep {}", rep + 1);
            if let Some((j, veth)) =
                self.push_over_veth(&[], &src, &dst_s, &counters, &mut syncd)?
            {
                veth_s.push(veth);
                pushes.push(j);
            }

            veth_r.push(self.rsync_over_veth(
                &["-az", "--zc=zstd"],
                &src,
                &dst_r,
                &counters,
                &mut rsync,
            )?);
        }
        let (s, r) = (syncd.median_s(), rsync.median_s());
        let mut t = Table::new(&[
            "tool",
            "median",
            "runs (s)",
            "wire bytes (tool's count)",
            "veth bytes (tx+rx, sender side)",
            "time syncd/rsync",
            "verified",
        ]);
        t.row(vec![
            "`syncd push` (adaptive compression) → `syncd serve`".into(),
            fmt_s(s),
            fmt_runs(&secs(&syncd.times)),
            fmt_bytes(median(&syncd.wire)),
            fmt_bytes(median(&veth_s)),
            format!("{:.2}", s / r),
            syncd.verify_cell(),
        ]);
        t.row(vec![
            "`rsync -az --zc=zstd` → rsync daemon".into(),
            fmt_s(r),
            fmt_runs(&secs(&rsync.times)),
            fmt_bytes(median(&rsync.wire)),
            fmt_bytes(median(&veth_r)),
            "1.00".into(),
            rsync.verify_cell(),
        ]);
        out += &t.markdown();
        let _ = writeln!(
            out,
            "\nTarget: syncd ≤0.8× rsync's time: **{}** ({:.2}).\n",
            met(s / r <= 0.8),
            s / r
        );
        out += &syncd.failure_note("syncd push");
        out += &push_json_note(&pushes);
        Ok(out)
    }

    /// One timed `syncd push SRC` (plus `extra` flags) from the sender's namespace to a fresh
    /// `serve` at `dst` in the receiver's, tried up to [`ATTEMPTS`] times: `sample` gets the
    /// time, the wire bytes and the check of the copy. Returns the push's JSON summary and
    /// the veth bytes (tx + rx, sender side) it took; None if every try failed.
    fn push_over_veth(
        &self,
        extra: &[&str],
        src: &Path,
        dst: &Path,
        counters: &NsCounters,
        sample: &mut Sample,
    ) -> Result<Option<(Value, f64)>> {
        let listen = format!("{ADDR_RECV}:7700");
        let res = sample.attempt("syncd push", || {
            fresh_dir(dst)?;
            let r = self.receiver(dst, Some(NS_RECV), &listen)?;
            let before = counters.tx_rx()?;
            let (t, o) = timed(self.push_cmd(Some(NS_SEND), src, &r).args(extra))?;
            let after = counters.tx_rx()?;
            drop(r);
            Ok((t, parse_json(&o)?, before, after))
        });
        let got = match res {
            Some((t, j, before, after)) => {
                sample.times.push(t);
                sample.wire.push(json_f64(&j, "wire_bytes"));
                sample.check(src, dst)?;
                Some((j, (after.0 - before.0 + after.1 - before.1) as f64))
            }
            None => None,
        };
        rm_rf(dst)?;
        Ok(got)
    }

    /// One timed `rsync FLAGS --stats SRC/` from the sender's namespace into a fresh rsync
    /// daemon at `dst` in the receiver's: `sample` gets the time, the bytes rsync sent and
    /// the check of the copy. Returns the veth bytes (tx + rx, sender side) it took.
    fn rsync_over_veth(
        &self,
        flags: &[&str],
        src: &Path,
        dst: &Path,
        counters: &NsCounters,
        sample: &mut Sample,
    ) -> Result<f64> {
        fresh_dir(dst)?;
        let d = self.rsync_daemon(dst, Some(NS_RECV), ADDR_RECV, 8730)?;
        let before = counters.tx_rx()?;
        let (t, o) = timed(
            in_ns(Some(NS_SEND), Path::new("rsync"))
                .args(flags)
                .arg("--stats")
                .arg(slash(src))
                .arg(format!("rsync://{ADDR_RECV}:8730/mod/")),
        )?;
        let after = counters.tx_rx()?;
        drop(d);
        sample.times.push(t);
        sample.wire.push(rsync_bytes_sent(&o)?);
        sample.check(src, dst)?;
        rm_rf(dst)?;
        Ok((after.0 - before.0 + after.1 - before.1) as f64)
    }

    /// The full corpus over an uncapped veth between two namespaces, where the CPUs, not the
    /// link, are the bottleneck: adaptive compression must not make the push slower than
    /// `--compress-level 0`.
    fn veth_fast(&self) -> Result<String> {
        self.logs()?;
        let src = self.corpus_ready()?;
        let mut out = self.corpus_line(&src, "copy of /usr/share on tmpfs")? + "\n";
        let _net = NetPair::new(None)?;
        let counters = NsCounters::new(&self.work)?;
        let _ = writeln!(
            out,
            "link: netns {NS_SEND} ({ADDR_SEND}) → {NS_RECV} ({ADDR_RECV}) over veth, no qdisc (the CPUs are the bottleneck)\n"
        );
        let (dst_s, dst_r) = (self.p("dst-syncd"), self.p("dst-rsync"));
        let mut adaptive = Sample::default();
        let mut raw = Sample::default();
        let mut rsync = Sample::default();
        let mut pushes = Vec::new();
        for rep in 0..self.reps {
            eprintln!("compare_push: veth-fast rep {}", rep + 1);
            // Alternate which goes first: the first push of a rep was the slower one in
            // most reps, whichever it was.
            let order = if rep % 2 == 0 {
                [(&mut adaptive, false), (&mut raw, true)]
            } else {
                [(&mut raw, true), (&mut adaptive, false)]
            };
            for (sample, level0) in order {
                let extra: &[&str] = if level0 {
                    &["--compress-level", "0"]
                } else {
                    &[]
                };
                if let Some((j, _)) = self.push_over_veth(extra, &src, &dst_s, &counters, sample)?
                    && !level0
                {
                    pushes.push(j);
                }
            }
            self.rsync_over_veth(&["-a"], &src, &dst_r, &counters, &mut rsync)?;
        }
        let (a, z, r) = (adaptive.median_s(), raw.median_s(), rsync.median_s());
        let mut t = Table::new(&[
            "tool",
            "median",
            "runs (s)",
            "wire bytes (tool's count)",
            "time ÷ rsync",
            "verified",
        ]);
        for (name, sample, m) in [
            (
                "`syncd push` (adaptive compression) → `syncd serve`",
                &adaptive,
                a,
            ),
            ("`syncd push --compress-level 0` → `syncd serve`", &raw, z),
            ("`rsync -a` → rsync daemon", &rsync, r),
        ] {
            t.row(vec![
                name.into(),
                fmt_s(m),
                fmt_runs(&secs(&sample.times)),
                fmt_bytes(median(&sample.wire)),
                format!("{:.2}", m / r),
                sample.verify_cell(),
            ]);
        }
        out += &t.markdown();
        let _ = writeln!(
            out,
            "\nTarget: adaptive compression no slower than none (≤1.05×, this machine's noise between neighbouring runs): **{}** ({:.2}).\n",
            met(a / z <= 1.05),
            a / z
        );
        out += &adaptive.failure_note("syncd push");
        out += &raw.failure_note("syncd push --compress-level 0");
        out += &push_json_note(&pushes);
        Ok(out)
    }

    // -- 4. bwlimit ---------------------------------------------------------------------------

    fn random_corpus(&self) -> Result<PathBuf> {
        let dir = self.p("random");
        if !self.p("random.complete").exists() || !dir.is_dir() {
            fresh_dir(&dir)?;
            let mut urandom = std::fs::File::open("/dev/urandom")?;
            let mut buf = vec![0u8; 8 << 20];
            for i in 0..RANDOM_MB / 8 {
                urandom.read_exact(&mut buf)?;
                std::fs::write(dir.join(format!("r{i:03}.bin")), &buf)?;
            }
            std::fs::write(self.p("random.complete"), b"")?;
        }
        Ok(dir)
    }

    fn bwlimit(&self) -> Result<String> {
        self.logs()?;
        let src = self.random_corpus()?;
        let mut out =
            self.corpus_line(&src, "random data from /dev/urandom (incompressible)")? + "\n";
        let _net = NetPair::new(None)?;
        let counters = NsCounters::new(&self.work)?;
        let _ = writeln!(
            out,
            "link: netns {NS_SEND} → {NS_RECV} over veth, no qdisc. The rate is the sender veth's tx bytes \
             (Ethernet+IP+UDP headers included) per 1-second window, read from `/proc/<pid in {NS_SEND}>/net/dev` \
             (the namespace's counters, same as `/sys/class/net/{VETH_SEND}/statistics/tx_bytes` inside it). \
             Windows while the transfer is running: from the 2nd window above 10% of the cap to the \
             last-but-one such window (ramp-up and the partial last window left out). One run per cap.\n"
        );
        let mut t = Table::new(&[
            "`--bwlimit`",
            "cap",
            "windows",
            "min / median / max (of cap)",
            "within ±5%",
            "average over run",
            "wire_bytes / seconds",
            "push time",
            "verified",
        ]);
        let dst = self.p("dst-syncd");
        let mut all_ok = true;
        for (rate, mbit) in [("50M", 50.0f64), ("200M", 200.0)] {
            eprintln!("compare_push: bwlimit {rate}");
            let cap = mbit * 1e6 / 8.0;
            let mut sample = Sample::default();
            let res = sample.attempt("syncd push --bwlimit", || {
                fresh_dir(&dst)?;
                let r = self.receiver(&dst, Some(NS_RECV), &format!("{ADDR_RECV}:7700"))?;
                let stop = Arc::new(AtomicBool::new(false));
                let sampler = {
                    let (path, stop) = (counters.path(), stop.clone());
                    std::thread::spawn(move || sample_every_second(&path, &stop))
                };
                let before = counters.tx_rx();
                let res = timed(
                    self.push_cmd(Some(NS_SEND), &src, &r)
                        .args(["--bwlimit", rate]),
                );
                stop.store(true, Ordering::SeqCst);
                let samples = sampler
                    .join()
                    .map_err(|_| anyhow::anyhow!("sampler thread panicked"))?;
                let after = counters.tx_rx()?;
                drop(r);
                let (dur, o) = res?;
                Ok((dur, parse_json(&o)?, samples?, before?, after))
            });
            let Some((dur, j, samples, before, after)) = res else {
                out += &sample.failure_note(&format!("syncd push --bwlimit {rate}"));
                all_ok = false;
                rm_rf(&dst)?;
                continue;
            };
            sample.check(&src, &dst)?;
            rm_rf(&dst)?;
            out += &sample.failure_note(&format!("syncd push --bwlimit {rate}"));
            let rates: Vec<f64> = samples
                .windows(2)
                .map(|w| (w[1].1 - w[0].1) as f64 / (w[1].0 - w[0].0).as_secs_f64())
                .collect();
            let active: Vec<usize> = (0..rates.len()).filter(|&i| rates[i] > 0.1 * cap).collect();
            let steady: Vec<f64> = match (active.first(), active.last()) {
                (Some(&a), Some(&b)) if b > a + 1 => rates[a + 1..b].to_vec(),
                _ => Vec::new(),
            };
            let rel: Vec<f64> = steady.iter().map(|x| x / cap).collect();
            let (mn, md, mx) = (
                rel.iter().copied().fold(f64::INFINITY, f64::min),
                median(&rel),
                rel.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            );
            let ok = !rel.is_empty() && mn >= 0.95 && mx <= 1.05;
            all_ok &= ok;
            let avg = (after.0 - before.0) as f64 / dur.as_secs_f64();
            let _ = writeln!(
                out,
                "per-second rates for {rate} (MB/s, all windows): {}\n",
                rates
                    .iter()
                    .map(|x| format!("{:.2}", x / 1e6))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            t.row(vec![
                format!("`{rate}`"),
                format!("{:.2} MB/s", cap / 1e6),
                rel.len().to_string(),
                format!(
                    "{:.1}% / {:.1}% / {:.1}%",
                    mn * 100.0,
                    md * 100.0,
                    mx * 100.0
                ),
                met(ok).into(),
                format!("{:.1}% (veth tx / push time)", avg / cap * 100.0),
                format!(
                    "{:.1}%",
                    json_f64(&j, "wire_bytes") / json_f64(&j, "seconds") / cap * 100.0
                ),
                fmt_s(dur.as_secs_f64()),
                sample.verify_cell(),
            ]);
        }
        out += &t.markdown();
        let _ = writeln!(
            out,
            "\nTarget: every steady 1-second window within ±5% of the cap: **{}**.\n",
            met(all_ok)
        );
        Ok(out)
    }

    // -- 6. local-ext4 ------------------------------------------------------------------------

    /// The main job onto a real filesystem: each tool is timed until its copy is durable
    /// (syncd and `rsync --fsync` by their own fsyncs, the others followed by `sync`).
    fn local_ext4(&self) -> Result<String> {
        self.logs()?;
        let src = self.corpus_ready()?;
        let fs = Ext4::new(
            PathBuf::from("/var/tmp/compare_push-ext4.img"),
            self.p("ext4"),
        )?;
        let dst = fs.mnt.join("dst");
        let mut out = self.corpus_line(&src, "copy of /usr/share on tmpfs")?
            + &format!(
                "; destination on ext4 (a 4 GiB image at {}, loop-mounted at {})\n\n",
                fs.image.display(),
                fs.mnt.display()
            );
        type Job<'a> = (&'a str, Box<dyn Fn(&Path) -> Result<Timed> + 'a>, bool);
        let jobs: Vec<Job> = vec![
            (
                "`syncd push SRC DST/` (fresh home; durable at exit 0)",
                Box::new(|dst: &Path| {
                    let (home, _) = self.home("ext4")?;
                    timed_cpu(
                        Command::new(&self.syncd)
                            .arg("push")
                            .arg(&src)
                            .arg(slash(dst))
                            .arg("--home")
                            .arg(&home)
                            .args(["--json", "--no-progress"]),
                    )
                }),
                false,
            ),
            (
                "`rsync -a SRC/ DST/ && sync`",
                Box::new(|dst: &Path| {
                    timed_cpu(
                        Command::new("rsync")
                            .arg("-a")
                            .arg(slash(&src))
                            .arg(slash(dst)),
                    )
                }),
                true,
            ),
            (
                "`rsync -a --fsync SRC/ DST/`",
                Box::new(|dst: &Path| {
                    timed_cpu(
                        Command::new("rsync")
                            .args(["-a", "--fsync"])
                            .arg(slash(&src))
                            .arg(slash(dst)),
                    )
                }),
                false,
            ),
            (
                "`cp -a SRC DST && sync`",
                Box::new(|dst: &Path| timed_cpu(Command::new("cp").arg("-a").arg(&src).arg(dst))),
                true,
            ),
        ];
        let mut samples: Vec<Sample> = jobs.iter().map(|_| Sample::default()).collect();
        for rep in 0..self.reps {
            eprintln!("compare_push: local-ext4 rep {}", rep + 1);
            for ((name, job, then_sync), sample) in jobs.iter().zip(samples.iter_mut()) {
                rm_rf(&dst)?;
                run(&mut Command::new("sync"))?;
                let res = sample.attempt(name, || {
                    let t0 = Instant::now();
                    let mut t = job(&dst)?;
                    if *then_sync {
                        run(&mut Command::new("sync"))?;
                    }
                    t.time = t0.elapsed();
                    Ok(t)
                });
                if let Some(t) = res {
                    sample.times.push(t.time);
                    sample.cpu_send.push(t.cpu);
                    sample.check(&src, &dst)?;
                }
            }
        }
        rm_rf(&dst)?;
        let (sy, rs, rf, cp) = (
            samples[0].median_s(),
            samples[1].median_s(),
            samples[2].median_s(),
            samples[3].median_s(),
        );
        let mut t = Table::new(&[
            "tool",
            "median",
            "runs (s)",
            "CPU",
            "x/(rsync && sync)",
            "verified",
        ]);
        for ((name, _, _), s) in jobs.iter().zip(&samples) {
            t.row(vec![
                (*name).into(),
                fmt_s(s.median_s()),
                fmt_runs(&secs(&s.times)),
                s.cpu_cell(),
                format!("{:.2}", s.median_s() / rs),
                s.verify_cell(),
            ]);
        }
        out += &t.markdown();
        let _ = writeln!(
            out,
            "\nTargets: ≥1.5× faster than `rsync -a && sync`: **{}** ({:.2}×); ≥5× faster than `rsync --fsync`: **{}** ({:.2}×). `cp -a && sync` is the floor: syncd at {:.2}× its time.\n",
            met(rs / sy >= 1.5),
            rs / sy,
            met(rf / sy >= 5.0),
            rf / sy,
            sy / cp
        );
        out += "CPU is the tool's own (with its reaped children); the kernel's writeback for `sync` runs in kernel threads and is in the time only.\n\n";
        out += &samples[0].failure_note("syncd push (ext4)");
        Ok(out)
    }

    // -- 5. local -----------------------------------------------------------------------------

    fn local(&self) -> Result<String> {
        self.logs()?;
        let src = self.corpus_ready()?;
        let mut out = self.corpus_line(&src, "copy of /usr/share on tmpfs")?
            + "; destinations on the same tmpfs\n\n";
        let dst = self.p("dst-local");
        let mut tools: Vec<(String, Sample)> = vec![
            (
                "`syncd push SRC DST/` (fresh home)".into(),
                Sample::default(),
            ),
            ("`rsync -a SRC/ DST/`".into(), Sample::default()),
            ("`cp -a SRC DST`".into(), Sample::default()),
        ];
        let mut pushes = Vec::new();
        for rep in 0..self.reps {
            eprintln!("compare_push: local rep {}", rep + 1);
            for (i, (_, sample)) in tools.iter_mut().enumerate() {
                rm_rf(&dst)?;
                let t = match i {
                    0 => {
                        let res = sample.attempt("syncd push (local)", || {
                            rm_rf(&dst)?;
                            let (home, _) = self.home("local")?;
                            let t = timed_cpu(
                                Command::new(&self.syncd)
                                    .arg("push")
                                    .arg(&src)
                                    .arg(slash(&dst))
                                    .arg("--home")
                                    .arg(&home)
                                    .args(["--json", "--no-progress"]),
                            )?;
                            let j = parse_json(&t.out)?;
                            Ok((t, j))
                        });
                        let Some((t, j)) = res else {
                            continue;
                        };
                        pushes.push(j);
                        t
                    }
                    1 => timed_cpu(
                        Command::new("rsync")
                            .arg("-a")
                            .arg(slash(&src))
                            .arg(slash(&dst)),
                    )?,
                    _ => timed_cpu(Command::new("cp").arg("-a").arg(&src).arg(&dst))?,
                };
                sample.times.push(t.time);
                sample.cpu_send.push(t.cpu);
                sample.check(&src, &dst)?;
            }
        }
        rm_rf(&dst)?;
        let r = tools[1].1.median_s();
        let c = tools[2].1.median_s();
        let mut t = Table::new(&[
            "tool", "median", "runs (s)", "CPU", "x/rsync", "x/cp", "verified",
        ]);
        for (name, s) in &tools {
            t.row(vec![
                name.clone(),
                fmt_s(s.median_s()),
                fmt_runs(&secs(&s.times)),
                s.cpu_cell(),
                format!("{:.2}", s.median_s() / r),
                format!("{:.2}", s.median_s() / c),
                s.verify_cell(),
            ]);
        }
        out += &t.markdown();
        let sy = tools[0].1.median_s();
        let _ = writeln!(
            out,
            "\nTargets: ≥1.5× faster than `rsync -a`: **{}** ({:.2}×); ≤1.3× `cp -a`'s time: **{}** ({:.2}).\n",
            met(r / sy >= 1.5),
            r / sy,
            met(sy / c <= 1.3),
            sy / c
        );
        out += &tools[0].1.failure_note("syncd push (local)");
        out += &push_json_note(&pushes);
        Ok(out)
    }
}

/// An ext4 image on the disk, loop-mounted; unmounted and removed on drop.
struct Ext4 {
    image: PathBuf,
    mnt: PathBuf,
}

impl Ext4 {
    fn new(image: PathBuf, mnt: PathBuf) -> Result<Self> {
        let _ = Command::new("umount")
            .arg(&mnt)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(&image);
        run(Command::new("truncate").args(["-s", "4G"]).arg(&image))?;
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&image))?;
        std::fs::create_dir_all(&mnt)?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mnt))?;
        Ok(Self { image, mnt })
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "missed" }
}

/// `p` with a trailing slash (rsync: the directory's contents).
fn slash(p: &Path) -> String {
    format!("{}/", p.display())
}

fn free_port() -> Result<u16> {
    // The port must be free for TCP (rsync) and UDP (QUIC) alike.
    for _ in 0..50 {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = tcp.local_addr()?.port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// (elapsed since start, tx bytes) every second until `stop` is set.
fn sample_every_second(path: &str, stop: &AtomicBool) -> Result<Vec<(Duration, u64)>> {
    let start = Instant::now();
    let mut out = Vec::new();
    let mut k = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let (tx, _) = NsCounters::read(path)?;
        out.push((start.elapsed(), tx));
        k += 1;
        let next = start + Duration::from_secs(u64::from(k));
        while Instant::now() < next && !stop.load(Ordering::SeqCst) {
            std::thread::sleep((next - Instant::now()).min(Duration::from_millis(50)));
        }
    }
    Ok(out)
}

/// A line per push with syncd's own --json figures.
fn push_json_note(pushes: &[Value]) -> String {
    let mut s = String::from(
        "syncd `--json` per run (seconds, bytes_scanned, bytes_sent, wire_bytes, chunks_sent, chunks_deduplicated, compression_ratio, identical):\n\n",
    );
    for j in pushes {
        let _ = writeln!(
            s,
            "- {:.2}s, scanned {}, sent {}, wire {}, {} chunks sent, {} deduplicated, ratio {:.2}, identical {}",
            json_f64(j, "seconds"),
            fmt_bytes(json_f64(j, "bytes_scanned")),
            fmt_bytes(json_f64(j, "bytes_sent")),
            fmt_bytes(json_f64(j, "wire_bytes")),
            j.get("chunks_sent").and_then(Value::as_u64).unwrap_or(0),
            j.get("chunks_deduplicated")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            json_f64(j, "compression_ratio"),
            j.get("identical").and_then(Value::as_bool).unwrap_or(false),
        );
    }
    s
}
