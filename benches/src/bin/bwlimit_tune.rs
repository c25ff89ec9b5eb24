//! The bandwidth tuning suite of issue #19: which `--bwlimit` does production not feel?
//!
//! ```text
//! cargo build --release -p syncd -p benches
//! sudo target/release/bwlimit_tune [--link 100mbit] [--tree /usr/share/locale] [--max-slowdown 1.2]
//!                                  [--clients 4] [--object 16384] [--think-ms 50] [--out DIR]
//! ```
//!
//! It builds the path out of four network namespaces around a bridge (`bwt-sw`):
//! `bwt-src` (10.77.0.1) runs a foreground HTTP service and `syncd push`; `bwt-cli`
//! (10.77.0.2) fetches from it continuously (`--clients` loops, each a new TCP connection,
//! a `--object`-byte reply, then `--think-ms`) and records every request's latency;
//! `bwt-dst` (10.77.0.3) runs `syncd serve`. The shared bottleneck is
//! `tc qdisc … tbf rate R burst 32kbit latency 200ms` on the source's uplink, which both
//! the HTTP replies and the sync's data cross.
//!
//! It measures the foreground alone (idle), then pushes `--tree` to an empty destination
//! with the caps off, 90/75/50/25% of R and `auto`, each under the same foreground load;
//! then `auto` alone on the link. For each it prints foreground p50/p99 and their ratio to
//! idle, the sync's throughput, and the time to converge (the push's wall time), writes
//! `p99-vs-throughput.svg`, and recommends the highest fixed cap whose p99 stays within
//! `--max-slowdown` × idle. Then, with the bottleneck removed (veth at CPU speed), it
//! checks fixed caps of 10M, 50M and 200M per 1-s window of the source's transmitted
//! bytes, and a `set-bwlimit` from 50M to 20M on a running `push --watch`.
//!
//! The syncd binary is `$SYNCD_BIN`, else `target/release/syncd` next to this one. Needs
//! root, `ip` and `tc`. The namespaces are deleted again on exit (stale ones first).
//! The same binary is the HTTP server and the client loop (`http-serve`, `http-load`),
//! run inside the namespaces.

use anyhow::{Context, Result, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NS_SRC: &str = "bwt-src";
const NS_CLI: &str = "bwt-cli";
const NS_DST: &str = "bwt-dst";
const NS_SW: &str = "bwt-sw";
const ADDR_SRC: &str = "10.77.0.1";
const ADDR_DST: &str = "10.77.0.3";
const HTTP_PORT: u16 = 8080;
const SYNC_PORT: u16 = 7700;
const RANDOM_MB: usize = 200;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("http-serve") => http_serve(&args[1..]),
        Some("http-load") => http_load(&args[1..]),
        _ => suite(&args),
    };
    if let Err(e) = result {
        eprintln!("bwlimit_tune: error: {e:#}");
        std::process::exit(2);
    }
}

// ------------------------------------------------------------------ the foreground service

/// `http-serve ADDR SIZE`: answers every request with SIZE bytes, a thread per connection.
fn http_serve(args: &[String]) -> Result<()> {
    let [addr, size] = args else {
        bail!("usage: http-serve ADDR SIZE");
    };
    let size: usize = size.parse().context("SIZE")?;
    let listener = TcpListener::bind(addr.as_str()).with_context(|| format!("binding {addr}"))?;
    let mut reply =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n")
            .into_bytes();
    reply.extend(std::iter::repeat_n(b'x', size));
    let reply: Arc<[u8]> = reply.into();
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let reply = reply.clone();
        std::thread::spawn(move || {
            let _ = conn.set_nodelay(true);
            let mut r = BufReader::new(match conn.try_clone() {
                Ok(c) => c,
                Err(_) => return,
            });
            let mut line = String::new();
            // Read the request head up to its blank line.
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                if line == "\r\n" || line == "\n" {
                    break;
                }
                line.clear();
            }
            let _ = conn.write_all(&reply);
        });
    }
    Ok(())
}

/// `http-load ADDR CLIENTS THINK_MS OUT`: CLIENTS loops of connect, GET, read to the end,
/// think; one line `start_unix_ms latency_us` per request appended to OUT, until killed.
fn http_load(args: &[String]) -> Result<()> {
    let [addr, clients, think, out] = args else {
        bail!("usage: http-load ADDR CLIENTS THINK_MS OUT");
    };
    let clients: usize = clients.parse().context("CLIENTS")?;
    let think = Duration::from_millis(think.parse().context("THINK_MS")?);
    let out = Arc::new(Mutex::new(
        std::fs::File::create(out).with_context(|| format!("creating {out}"))?,
    ));
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (addr, out) = (addr.clone(), out.clone());
        threads.push(std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let start = Instant::now();
                let wall = unix_ms();
                let ok = (|| -> std::io::Result<()> {
                    let mut s = TcpStream::connect(addr.as_str())?;
                    s.set_nodelay(true)?;
                    s.write_all(b"GET / HTTP/1.1\r\nHost: src\r\n\r\n")?;
                    while s.read(&mut buf)? > 0 {}
                    Ok(())
                })();
                if ok.is_ok() {
                    let us = start.elapsed().as_micros();
                    if let Ok(mut f) = out.lock() {
                        let _ = writeln!(f, "{wall} {us}");
                    }
                }
                std::thread::sleep(think);
            }
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn unix_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

// ------------------------------------------------------------------ processes and the net

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn sh(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip(args: &[&str]) -> Result<()> {
    sh(Command::new("ip").args(args))
}

fn in_ns(ns: &str, program: &Path) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

/// The four namespaces; deleted on drop.
struct Net;

impl Net {
    fn new() -> Result<Net> {
        Net::delete();
        let net = Net;
        for ns in [NS_SRC, NS_CLI, NS_DST, NS_SW] {
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        ip(&["-n", NS_SW, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", NS_SW, "link", "set", "br0", "up"])?;
        for (ns, addr) in [
            (NS_SRC, ADDR_SRC),
            (NS_CLI, "10.77.0.2"),
            (NS_DST, ADDR_DST),
        ] {
            let peer = format!("{ns}-p");
            ip(&["link", "add", ns, "type", "veth", "peer", "name", &peer])?;
            ip(&["link", "set", ns, "netns", ns])?;
            ip(&["link", "set", &peer, "netns", NS_SW])?;
            ip(&["-n", NS_SW, "link", "set", &peer, "master", "br0", "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", ns])?;
            ip(&["-n", ns, "link", "set", ns, "up"])?;
        }
        // Wait for the bridge ports to forward (no STP: at once, but the links come up async).
        std::thread::sleep(Duration::from_secs(2));
        Ok(net)
    }

    /// The bottleneck on the source's uplink: `tbf rate RATE`, or none.
    fn bottleneck(&self, rate: Option<&str>) -> Result<()> {
        let _ = sh(Command::new("ip").args([
            "netns", "exec", NS_SRC, "tc", "qdisc", "del", "dev", NS_SRC, "root",
        ]));
        if let Some(rate) = rate {
            sh(Command::new("ip").args([
                "netns", "exec", NS_SRC, "tc", "qdisc", "add", "dev", NS_SRC, "root", "tbf",
                "rate", rate, "burst", "32kbit", "latency", "200ms",
            ]))?;
        }
        Ok(())
    }

    fn delete() {
        for ns in [NS_SRC, NS_CLI, NS_DST, NS_SW] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        Net::delete();
    }
}

/// Samples the source veth's transmitted bytes every 100 ms (through a `sleep` inside the
/// namespace, whose `/proc/PID/net/dev` shows that namespace's counters).
struct Tx {
    _anchor: Proc,
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl Tx {
    fn start() -> Result<Tx> {
        let anchor = Proc(
            in_ns(NS_SRC, Path::new("sleep"))
                .arg("86400")
                .spawn()
                .context("starting the namespace anchor")?,
        );
        let path = format!("/proc/{}/net/dev", anchor.0.id());
        let deadline = Instant::now() + Duration::from_secs(5);
        while read_tx(&path).is_err() {
            if Instant::now() > deadline {
                bail!("cannot read {path}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, st) = (samples.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut next = Instant::now();
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(tx) = read_tx(&path)
                    && let Ok(mut v) = s.lock()
                {
                    v.push((Instant::now(), tx));
                }
                next += Duration::from_millis(100);
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        });
        Ok(Tx {
            _anchor: anchor,
            samples,
            stop,
        })
    }

    /// Transmitted bytes at `t` (the last sample at or before it).
    fn at(&self, t: Instant) -> u64 {
        let v = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.iter()
            .take_while(|(when, _)| *when <= t)
            .last()
            .or(v.first())
            .map_or(0, |(_, b)| *b)
    }

    /// Bytes per second between `a` and `b`.
    fn rate(&self, a: Instant, b: Instant) -> f64 {
        let secs = b.saturating_duration_since(a).as_secs_f64().max(1e-3);
        self.at(b).saturating_sub(self.at(a)) as f64 / secs
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn read_tx(path: &str) -> Result<u64> {
    let text = std::fs::read_to_string(path)?;
    for line in text.lines() {
        if let Some(rest) = line.trim_start().strip_prefix(&format!("{NS_SRC}:")) {
            let f: Vec<u64> = rest
                .split_whitespace()
                .map(|x| x.parse().unwrap_or(0))
                .collect();
            if f.len() >= 9 {
                return Ok(f[8]);
            }
        }
    }
    bail!("{NS_SRC} not in {path}")
}

// ------------------------------------------------------------------ syncd

struct Syncd {
    bin: PathBuf,
    sender: PathBuf,
    receiver: PathBuf,
    sid: String,
    rid: String,
    root: PathBuf,
    work: PathBuf,
}

impl Syncd {
    fn new(work: &Path) -> Result<Syncd> {
        let bin = match std::env::var_os("SYNCD_BIN") {
            Some(b) => PathBuf::from(b),
            None => std::env::current_exe()?
                .parent()
                .context("no directory for this binary")?
                .join("syncd"),
        };
        if !bin.exists() {
            bail!(
                "{} not found: cargo build --release -p syncd, or set SYNCD_BIN",
                bin.display()
            );
        }
        let (sender, receiver) = (work.join("home-send"), work.join("home-recv"));
        let id = |home: &Path| -> Result<String> {
            let o = Command::new(&bin)
                .arg("init")
                .env("SYNCD_HOME", home)
                .output()?;
            if !o.status.success() {
                bail!("syncd init: {}", String::from_utf8_lossy(&o.stderr));
            }
            Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
        };
        Ok(Syncd {
            sid: id(&sender)?,
            rid: id(&receiver)?,
            bin,
            sender,
            receiver,
            root: work.join("dest"),
            work: work.to_path_buf(),
        })
    }

    /// A `syncd serve` into a fresh, empty root.
    fn serve(&self) -> Result<Proc> {
        let _ = std::fs::remove_dir_all(&self.root);
        std::fs::create_dir_all(&self.root)?;
        let log = self.work.join("serve.log");
        let mut c = in_ns(NS_DST, &self.bin);
        c.env("SYNCD_HOME", &self.receiver)
            .args(["serve", "--listen", &format!("{ADDR_DST}:{SYNC_PORT}")])
            .args(["--allow", &self.sid, "--root"])
            .arg(&self.root)
            .stderr(std::fs::File::create(&log)?);
        let p = Proc(c.spawn().context("starting syncd serve")?);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("listening on")
        {
            if Instant::now() > deadline {
                bail!("serve did not start: {}", std::fs::read_to_string(&log)?);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(p)
    }

    fn push_cmd(&self, tree: &Path, bwlimit: Option<&str>) -> Command {
        let mut c = in_ns(NS_SRC, &self.bin);
        c.env("SYNCD_HOME", &self.sender)
            .arg("push")
            .arg(tree)
            .arg(format!("{ADDR_DST}:{SYNC_PORT}"))
            .args(["--peer-id", &self.rid, "--json", "--compress-level", "0"]);
        if let Some(b) = bwlimit {
            c.arg(format!("--bwlimit={b}"));
        }
        c
    }

    /// Pushes `tree` and waits: (wall time, wire bytes sent). Compression is off in every
    /// push of the suite: it measures the link and the cap, not the compressor.
    fn push(&self, tree: &Path, bwlimit: Option<&str>) -> Result<(Duration, u64)> {
        let t = Instant::now();
        let o = self.push_cmd(tree, bwlimit).stdin(Stdio::null()).output()?;
        let took = t.elapsed();
        if !o.status.success() {
            bail!(
                "push --bwlimit {bwlimit:?}: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)?;
        Ok((took, v["wire_bytes"].as_u64().unwrap_or(0)))
    }
}

// ------------------------------------------------------------------ the suite

struct Opts {
    link: String,
    link_bits: u64,
    tree: PathBuf,
    max_slowdown: f64,
    clients: usize,
    object: usize,
    think_ms: u64,
    out: PathBuf,
}

fn parse(args: &[String]) -> Result<Opts> {
    let mut o = Opts {
        link: "100mbit".into(),
        link_bits: 100_000_000,
        tree: PathBuf::from("/usr/share/locale"),
        max_slowdown: 1.2,
        clients: 4,
        object: 16 * 1024,
        think_ms: 50,
        out: PathBuf::from("benches/bwlimit-tune"),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--link" => {
                let v = val()?;
                let mbit = v
                    .strip_suffix("mbit")
                    .and_then(|m| m.parse::<u64>().ok())
                    .with_context(|| format!("--link {v}: write it as Nmbit, e.g. 100mbit"))?;
                o.link = v.clone();
                o.link_bits = mbit * 1_000_000;
            }
            "--tree" => o.tree = PathBuf::from(val()?),
            "--max-slowdown" => o.max_slowdown = val()?.parse().context("--max-slowdown")?,
            "--clients" => o.clients = val()?.parse().context("--clients")?,
            "--object" => o.object = val()?.parse().context("--object")?,
            "--think-ms" => o.think_ms = val()?.parse().context("--think-ms")?,
            "--out" => o.out = PathBuf::from(val()?),
            other => bail!(
                "unknown argument {other:?} (see the doc comment at the top of bwlimit_tune.rs)"
            ),
        }
    }
    Ok(o)
}

/// Foreground latencies (ms) of requests that started in `[from, to]` (unix ms).
fn latencies(file: &Path, from: u128, to: u128) -> Vec<f64> {
    let mut v: Vec<f64> = std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (t, us) = l.split_once(' ')?;
            let (t, us) = (t.parse::<u128>().ok()?, us.parse::<f64>().ok()?);
            (from..=to).contains(&t).then_some(us / 1000.0)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn pct(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

struct Row {
    cap: String,
    p50: f64,
    p99: f64,
    requests: usize,
    sync_mbit: f64,
    link_mbit: f64,
    converge: Duration,
    fixed_fraction: Option<f64>,
}

fn suite(args: &[String]) -> Result<()> {
    let o = parse(args)?;
    if !o.tree.is_dir() {
        bail!("--tree {}: not a directory", o.tree.display());
    }
    let work = PathBuf::from("/dev/shm/bwlimit-tune");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::create_dir_all(&o.out)?;
    let syncd = Syncd::new(&work)?;
    let net = Net::new()?;
    net.bottleneck(Some(&o.link))?;
    let me = std::env::current_exe()?;
    let _http = Proc(
        in_ns(NS_SRC, &me)
            .args([
                "http-serve",
                &format!("{ADDR_SRC}:{HTTP_PORT}"),
                &o.object.to_string(),
            ])
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(500));
    let tx = Tx::start()?;
    let load = |name: &str| -> Result<(Proc, PathBuf)> {
        let file = work.join(format!("lat-{name}.txt"));
        let p = Proc(
            in_ns(NS_CLI, &me)
                .args([
                    "http-load",
                    &format!("{ADDR_SRC}:{HTTP_PORT}"),
                    &o.clients.to_string(),
                    &o.think_ms.to_string(),
                ])
                .arg(&file)
                .spawn()?,
        );
        Ok((p, file))
    };
    // Warm the sender's manifest of the tree, so that every push scans from its cache.
    {
        let _serve = syncd.serve()?;
        syncd.push(&o.tree, None)?;
    }

    // Idle: the foreground alone.
    let (p, file) = load("idle")?;
    std::thread::sleep(Duration::from_secs(1));
    let (from, t0) = (unix_ms(), Instant::now());
    std::thread::sleep(Duration::from_secs(15));
    let idle = latencies(&file, from, unix_ms());
    let idle_link = tx.rate(t0, Instant::now()) * 8.0 / 1e6;
    drop(p);
    let (idle_p50, idle_p99) = (pct(&idle, 0.5), pct(&idle, 0.99));
    eprintln!(
        "idle: p50 {idle_p50:.2} ms, p99 {idle_p99:.2} ms over {} requests, link {idle_link:.1} Mbit/s",
        idle.len()
    );

    let link_kbit = o.link_bits / 1000;
    let mut sweep: Vec<(String, Option<String>, Option<f64>)> = vec![("off".into(), None, None)];
    for p in [90u64, 75, 50, 25] {
        sweep.push((
            format!("{p}% ({}M)", link_kbit * p / 100 / 1000),
            Some(format!("{}k", link_kbit * p / 100)),
            Some(p as f64 / 100.0),
        ));
    }
    sweep.push(("auto".into(), Some("auto".into()), None));
    let mut rows = Vec::new();
    for (cap, flag, fraction) in &sweep {
        let _serve = syncd.serve()?;
        let (p, file) = load(&cap.replace(['%', ' ', '(', ')'], ""))?;
        std::thread::sleep(Duration::from_secs(1));
        let (from, t0) = (unix_ms(), Instant::now());
        let (took, sent) = syncd.push(&o.tree, flag.as_deref())?;
        let t1 = Instant::now();
        let lat = latencies(&file, from, unix_ms());
        drop(p);
        let row = Row {
            cap: cap.clone(),
            p50: pct(&lat, 0.5),
            p99: pct(&lat, 0.99),
            requests: lat.len(),
            sync_mbit: sent as f64 * 8.0 / took.as_secs_f64() / 1e6,
            link_mbit: tx.rate(t0, t1) * 8.0 / 1e6,
            converge: took,
            fixed_fraction: *fraction,
        };
        eprintln!(
            "{cap}: p50 {:.2} ms, p99 {:.2} ms, sync {:.1} Mbit/s, {:.1}s",
            row.p50,
            row.p99,
            row.sync_mbit,
            took.as_secs_f64()
        );
        rows.push(row);
    }
    // auto with the link to itself.
    let alone = {
        let _serve = syncd.serve()?;
        let t0 = Instant::now();
        let (took, sent) = syncd.push(&o.tree, Some("auto"))?;
        // The link's use in the push's middle (after its first 2 s, before its last second).
        let t1 = Instant::now();
        let mid = tx.rate(
            t0 + Duration::from_secs(2),
            t1.checked_sub(Duration::from_secs(1)).unwrap_or(t1),
        );
        (
            took,
            sent as f64 * 8.0 / took.as_secs_f64() / 1e6,
            mid * 8.0 / 1e6,
        )
    };
    eprintln!(
        "auto alone: sync {:.1} Mbit/s wire, link {:.1} Mbit/s mid-push, {:.1}s",
        alone.1,
        alone.2,
        alone.0.as_secs_f64()
    );

    // Fixed-cap accuracy and set-bwlimit, with the bottleneck removed.
    net.bottleneck(None)?;
    let big = work.join("random");
    make_random(&big)?;
    {
        let _serve = syncd.serve()?;
        syncd.push(&big, None)?; // the sender's manifest, once
    }
    let mut accuracy = Vec::new();
    for cap in ["10M", "50M", "200M"] {
        let bytes_per_sec = syncd_rate(cap)?;
        let _serve = syncd.serve()?;
        let mut child = Proc(
            syncd
                .push_cmd(&big, Some(cap))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let start = first_bytes(&tx, Instant::now())?;
        let windows = windows(&tx, start + Duration::from_secs(1), 5, &mut child.0);
        let ratios: Vec<f64> = windows.iter().map(|w| w / bytes_per_sec as f64).collect();
        eprintln!("fixed {cap}: windows {}", fmt_ratios(&ratios));
        accuracy.push((cap, ratios));
    }
    let set = {
        let _serve = syncd.serve()?;
        let sock = work.join("control.sock");
        let mut c = in_ns(NS_SRC, &syncd.bin);
        c.env("SYNCD_HOME", &syncd.sender)
            .arg("push")
            .arg(&big)
            .arg(format!("{ADDR_DST}:{SYNC_PORT}"))
            .args([
                "--peer-id",
                &syncd.rid,
                "--bwlimit",
                "50M",
                "--watch",
                "--control",
            ])
            .arg(&sock)
            .stderr(Stdio::null());
        let mut child = Proc(c.spawn()?);
        let start = first_bytes(&tx, Instant::now())?;
        std::thread::sleep(
            (start + Duration::from_secs(3)).saturating_duration_since(Instant::now()),
        );
        let mut client = syncd::control::Client::connect(&sock)?;
        let changed = Instant::now();
        client.set_bwlimit("20M")?;
        let before = windows(&tx, changed - Duration::from_secs(2), 2, &mut child.0);
        let after = windows(&tx, changed, 5, &mut child.0);
        let new = syncd_rate("20M")? as f64;
        let (b, a): (Vec<f64>, Vec<f64>) = (
            before
                .iter()
                .map(|w| w / syncd_rate("50M").unwrap_or(1) as f64)
                .collect(),
            after.iter().map(|w| w / new).collect(),
        );
        eprintln!(
            "set-bwlimit 50M→20M: before {} (of 50M), after {} (of 20M)",
            fmt_ratios(&b),
            fmt_ratios(&a)
        );
        (b, a)
    };

    // Report.
    let limit = o.max_slowdown * idle_p99;
    let recommend = rows
        .iter()
        .filter(|r| r.fixed_fraction.is_some() && r.p99 <= limit)
        .max_by(|a, b| {
            a.fixed_fraction
                .partial_cmp(&b.fixed_fraction)
                .unwrap_or(std::cmp::Ordering::Equal)
        });
    let mut md = String::new();
    md += &format!(
        "link: tbf rate {} on the source's uplink (burst 32kbit, latency 200ms); foreground: {} clients, {} B replies, {} ms think; tree: {}\n\n",
        o.link,
        o.clients,
        o.object,
        o.think_ms,
        o.tree.display()
    );
    md += "| cap | fg p50 ms | fg p99 ms | p50 / idle | p99 / idle | requests | sync Mbit/s (wire) | link Mbit/s (all tx) | converge s |\n|---|---|---|---|---|---|---|---|---|\n";
    md += &format!(
        "| idle (no sync) | {idle_p50:.2} | {idle_p99:.2} | 1.00 | 1.00 | {} | – | {idle_link:.1} | – |\n",
        idle.len()
    );
    for r in &rows {
        md += &format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {:.1} | {:.1} | {:.1} |\n",
            r.cap,
            r.p50,
            r.p99,
            r.p50 / idle_p50,
            r.p99 / idle_p99,
            r.requests,
            r.sync_mbit,
            r.link_mbit,
            r.converge.as_secs_f64()
        );
    }
    md += &format!(
        "| auto, sync alone | – | – | – | – | – | {:.1} | {:.1} mid-push ({:.0}% of the link) | {:.1} |\n\n",
        alone.1,
        alone.2,
        alone.2 * 1e6 / o.link_bits as f64 * 100.0,
        alone.0.as_secs_f64()
    );
    md += &match recommend {
        Some(r) => format!(
            "recommended fixed cap (p99 ≤ {:.2} × idle = {limit:.2} ms): **{}**\n\n",
            o.max_slowdown, r.cap
        ),
        None => format!(
            "no fixed cap of the sweep keeps p99 ≤ {:.2} × idle = {limit:.2} ms\n\n",
            o.max_slowdown
        ),
    };
    md += "fixed-cap accuracy, veth without a bottleneck, source tx bytes per 1-s window after the first second of data (goal: within ±3%):\n\n| cap | windows (ratio to cap) |\n|---|---|\n";
    for (cap, r) in &accuracy {
        md += &format!("| {cap} | {} |\n", fmt_ratios(r));
    }
    md += &format!(
        "\nset-bwlimit 50M → 20M on a running push --watch (goal: the new rate within 1 s, no window above 110%):\nbefore, of 50M: {}; after, 1-s windows from the change, of 20M: {}\n",
        fmt_ratios(&set.0),
        fmt_ratios(&set.1)
    );
    println!("{md}");
    std::fs::write(o.out.join("results.md"), &md)?;
    let svg = o.out.join("p99-vs-throughput.svg");
    plot(&svg, &rows, idle_p99, limit)?;
    eprintln!(
        "wrote {} and {}",
        o.out.join("results.md").display(),
        svg.display()
    );
    drop(tx);
    drop(net);
    Ok(())
}

fn fmt_ratios(r: &[f64]) -> String {
    r.iter()
        .map(|x| format!("{x:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn syncd_rate(s: &str) -> Result<u64> {
    Ok(syncd::rate::parse_rate(s)?)
}

/// When the source first sent more than 64 KiB after `since`.
fn first_bytes(tx: &Tx, since: Instant) -> Result<Instant> {
    let base = tx.at(since);
    let deadline = since + Duration::from_secs(60);
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if tx.at(now) > base + 64 * 1024 {
            return Ok(now);
        }
        if now > deadline {
            bail!("no data flowed within 60 s");
        }
    }
}

/// `n` consecutive 1-s windows from `start` (bytes/s), waiting for each; stops early if
/// `child` exits.
fn windows(tx: &Tx, start: Instant, n: u32, child: &mut Child) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..n {
        let (a, b) = (
            start + Duration::from_secs(u64::from(i)),
            start + Duration::from_secs(u64::from(i) + 1),
        );
        std::thread::sleep(
            (b + Duration::from_millis(150)).saturating_duration_since(Instant::now()),
        );
        if matches!(child.try_wait(), Ok(Some(_))) {
            break;
        }
        out.push(tx.rate(a, b));
    }
    out
}

/// A file of incompressible bytes, `RANDOM_MB` MB.
fn make_random(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(dir.join("random.bin"))?);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..RANDOM_MB {
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        f.write_all(&buf)?;
    }
    f.flush()?;
    Ok(())
}

fn plot(path: &Path, rows: &[Row], idle_p99: f64, limit: f64) -> Result<()> {
    use plotters::prelude::*;
    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .context("the plot's font, /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf (Debian's fonts-dejavu-core)")?;
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        Box::leak(font.into_boxed_slice()),
    )
    .map_err(|_| anyhow::anyhow!("cannot load the plot's font"))?;
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let xmax = rows.iter().map(|r| r.sync_mbit).fold(1.0, f64::max) * 1.15;
    let ymax = rows.iter().map(|r| r.p99).fold(limit, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "bwlimit-tune: foreground p99 vs sync throughput",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("sync throughput, Mbit/s (wire bytes)")
        .y_desc("foreground p99, ms")
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (y, label, color) in [(idle_p99, "idle p99", BLUE), (limit, "max slowdown", RED)] {
        chart
            .draw_series(LineSeries::new(
                [(0.0, y), (xmax, y)],
                color.stroke_width(1),
            ))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(label)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color));
    }
    chart
        .draw_series(rows.iter().map(|r| {
            EmptyElement::at((r.sync_mbit, r.p99))
                + Circle::new((0, 0), 4, BLACK.filled())
                + Text::new(r.cap.clone(), (6, -12), ("sans-serif", 13))
        }))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
