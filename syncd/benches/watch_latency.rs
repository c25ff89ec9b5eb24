//! Continuous-mode latency (issue 15): `write()+close()` of one file on the source until it
//! is complete at the destination, through a `syncd push --watch` to a `syncd serve` on
//! loopback (or into a local directory), over N single-file changes, one at a time.
//!
//! ```text
//! cargo bench -p syncd --bench watch_latency -- [--changes N] [--local] [--debounce DUR] [--files N]
//! cargo bench -p syncd --bench watch_latency -- --sustained SECS [--rate N]
//! ```
//!
//! `--sustained` writes `--rate` changes per second (default 1,000, spread over 1,000
//! paths) for SECS seconds instead, and reports the sync lag (`status`'s `lag_seconds`,
//! sampled every 100 ms) and the watching push's RSS at the start and the end.
//!
//! It lives in `syncd/benches` (not the workspace's `benches/` package) so that Cargo builds
//! the `syncd` binary with it, in the same optimised profile (`$SYNCD_BIN` overrides it).
//! The trees live in a temporary directory under
//! `/dev/shm` when it exists (else the system temp dir); `--files N` pre-fills the source
//! with N small files (default 1,000) so that a batch is not pushed into an empty tree.
//! Prints p50, p99 and max in milliseconds, and a final-sync's round trip on the converged
//! tree. Every process started here is killed at the end.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

fn main() {
    if let Err(e) = real_main() {
        eprintln!("watch_latency: error: {e:#}");
        std::process::exit(2);
    }
}

/// Kills the child on drop.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn syncd_bin() -> Result<PathBuf> {
    let path = std::env::var_os("SYNCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_syncd")));
    if !path.is_file() {
        bail!("syncd binary not found at {}", path.display());
    }
    Ok(path)
}

fn syncd(bin: &Path, home: &Path) -> Command {
    let mut c = Command::new(bin);
    c.env("SYNCD_HOME", home);
    c
}

fn peer_id(bin: &Path, home: &Path) -> Result<String> {
    let o = syncd(bin, home).arg("init").output()?;
    if !o.status.success() {
        bail!("syncd init: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn real_main() -> Result<()> {
    let mut changes = 1000usize;
    let mut files = 1000usize;
    let mut local = false;
    let mut sustained: Option<u64> = None;
    let mut rate = 1000u64;
    let mut debounce = "20ms".to_string();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--changes" => changes = args.next().context("--changes N")?.parse()?,
            "--files" => files = args.next().context("--files N")?.parse()?,
            "--debounce" => debounce = args.next().context("--debounce DUR")?,
            "--local" => local = true,
            "--sustained" => sustained = Some(args.next().context("--sustained SECS")?.parse()?),
            "--rate" => rate = args.next().context("--rate N")?.parse()?,
            // `cargo bench` passes this to every bench target.
            "--bench" => {}
            other => bail!("unknown argument {other:?}"),
        }
    }
    let bin = syncd_bin()?;
    let base = if Path::new("/dev/shm").is_dir() {
        tempfile::tempdir_in("/dev/shm")?
    } else {
        tempfile::tempdir()?
    };
    let (src, dst) = (base.path().join("src"), base.path().join("dst"));
    let (hs, hr) = (base.path().join("home-s"), base.path().join("home-r"));
    for d in [&src, &dst, &hs, &hr] {
        std::fs::create_dir_all(d)?;
    }
    for i in 0..files {
        let p = src.join(format!("pre/d{}/f{i}", i % 32));
        std::fs::create_dir_all(p.parent().context("parent")?)?;
        std::fs::write(p, format!("pre-filled file {i}\n"))?;
    }
    std::fs::create_dir_all(src.join("lat"))?;
    let sock = base.path().join("push.sock");
    let mut guards = Vec::new();
    let dest = if local {
        dst.to_string_lossy().into_owned()
    } else {
        let (sid, rid) = (peer_id(&bin, &hs)?, peer_id(&bin, &hr)?);
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut serve = syncd(&bin, &hr)
            .args(["serve", "--listen", &addr, "--allow", &sid, "--root"])
            .arg(&dst)
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = serve.stderr.take().context("serve stderr")?;
        guards.push(Guard(serve));
        let mut lines = BufReader::new(stderr).lines();
        loop {
            let line = lines.next().context("serve exited")??;
            if line.contains("listening on") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        guards.push(Guard(
            syncd(&bin, &hs)
                .arg("push")
                .arg(&src)
                .arg(&addr)
                .args([
                    "--peer-id",
                    &rid,
                    "--delete",
                    "--watch",
                    "--debounce",
                    &debounce,
                ])
                .arg("--control")
                .arg(&sock)
                .stderr(Stdio::null())
                .spawn()?,
        ));
        addr
    };
    if local {
        guards.push(Guard(
            syncd(&bin, &hs)
                .arg("push")
                .arg(&src)
                .arg(&dest)
                .args(["--delete", "--watch", "--debounce", &debounce])
                .arg("--control")
                .arg(&sock)
                .stderr(Stdio::null())
                .spawn()?,
        ));
    }
    // Wait for the first full push.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut c) = syncd::control::Client::connect(&sock)
            && c.status().is_ok_and(|s| s.converged)
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("the first push did not converge within 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(secs) = sustained {
        let pid = guards.last().map(|g| g.0.id()).context("no push")?;
        return run_sustained(&src, &sock, pid, secs, rate);
    }
    let mut lat = Vec::with_capacity(changes);
    for i in 0..changes {
        let content = format!("change {i} {}\n", "x".repeat(i % 200));
        let rel = format!("lat/f{}", i % 50);
        let t = Instant::now();
        std::fs::write(src.join(&rel), &content)?;
        let target = dst.join(&rel);
        let give_up = t + Duration::from_secs(30);
        loop {
            if std::fs::read(&target).is_ok_and(|b| b == content.as_bytes()) {
                break;
            }
            if Instant::now() > give_up {
                bail!("change {i} ({rel}) did not arrive within 30 s");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        lat.push(t.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let t = Instant::now();
    let f = syncd::control::Client::connect(&sock)?.final_sync()?;
    let final_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "watch_latency: {} to {}: {changes} single-file changes, debounce {debounce}, {files} files in the tree",
        if local { "local" } else { "loopback serve" },
        dest
    );
    println!(
        "  write+close -> complete at destination: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  final-sync on the converged tree: {final_ms:.1} ms ({})",
        match f {
            syncd::control::FinalSync::Converged { .. } => "converged",
            syncd::control::FinalSync::Differs { .. } => "NOT converged",
        }
    );
    drop(guards);
    Ok(())
}

/// The resident set of process `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `rate` changes per second for `secs` seconds; lag sampled from the control socket.
fn run_sustained(src: &Path, sock: &Path, pid: u32, secs: u64, rate: u64) -> Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, sock) = (stop.clone(), sock.to_path_buf());
        std::thread::spawn(move || {
            let mut lags = Vec::new();
            let mut c = syncd::control::Client::connect(&sock).ok();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(s) = c.as_mut().and_then(|c| c.status().ok()) {
                    lags.push(s.lag_seconds.unwrap_or(0.0) * 1e3);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            lags
        })
    };
    let rss_start = rss_kib(pid);
    let start = Instant::now();
    let mut n = 0u64;
    let mut rss_mid = None;
    while start.elapsed() < Duration::from_secs(secs) {
        // Keep to the schedule: change n is due at n / rate seconds.
        let due = Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
        let p = src.join(format!("sus/d{}/f{}", n % 20, n % 1000));
        if n < 1000 {
            std::fs::create_dir_all(p.parent().context("parent")?)?;
        }
        std::fs::write(&p, format!("change {n}\n"))?;
        n += 1;
        if rss_mid.is_none() && start.elapsed() > Duration::from_secs(secs / 2) {
            rss_mid = rss_kib(pid);
        }
    }
    let wrote = start.elapsed().as_secs_f64();
    // Let it catch up, then stop sampling.
    let t = Instant::now();
    let converged = loop {
        let ok = syncd::control::Client::connect(sock)
            .and_then(|mut c| c.status())
            .is_ok_and(|s| s.converged);
        if ok || t.elapsed() > Duration::from_secs(60) {
            break ok;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let catch_up = t.elapsed().as_secs_f64();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lags = sampler
        .join()
        .map_err(|_| anyhow::anyhow!("sampler panicked"))?;
    lags.sort_by(f64::total_cmp);
    println!(
        "watch_latency --sustained: {n} changes in {wrote:.1} s ({:.0}/s) over 1,000 paths",
        n as f64 / wrote
    );
    println!(
        "  lag (status, every 100 ms): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; converged {catch_up:.2} s after the last write{}",
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().copied().unwrap_or(f64::NAN),
        if converged {
            ""
        } else {
            " (NOT converged within 60 s)"
        }
    );
    let kib =
        |v: Option<u64>| v.map_or("?".to_string(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
    println!(
        "  push --watch RSS: {} at the start, {} half-way, {} at the end",
        kib(rss_start),
        kib(rss_mid),
        kib(rss_kib(pid))
    );
    Ok(())
}
