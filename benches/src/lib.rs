//! Shared helpers of the benchmarks: deterministic data, corpora on tmpfs, timing of child
//! processes (wall time and peak RSS), medians and Markdown tables.
//!
//! The `compare` binary (`src/bin/compare.rs`) is built from these pieces; a new scenario
//! (e.g. `syncd push` against an rsync daemon) needs only a function that prepares its
//! corpus with [`Corpus`], times its commands with [`measure`], and returns a [`Table`].
//! Nothing here knows about a particular scenario.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// A deterministic pseudo-random byte stream (SplitMix64), fast enough to fill 1 GiB in well
/// under a second per core and identical on every machine.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A stream starting from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Fills `buf`.
    pub fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next_u64().to_le_bytes();
        let n = rest.len();
        rest.copy_from_slice(&last[..n]);
    }
}

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    Rng::new(seed).fill(&mut v);
    v
}

/// A directory that the benchmark created and removes when dropped, unless kept.
#[derive(Debug)]
pub struct Corpus {
    path: PathBuf,
    keep: bool,
}

impl Corpus {
    /// Takes ownership of `path` (which the caller created or is about to create).
    pub fn new(path: PathBuf, keep: bool) -> Self {
        Corpus { path, keep }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Corpus {
    fn drop(&mut self) {
        if self.keep || !self.path.exists() {
            return;
        }
        if let Err(e) = fs::remove_dir_all(&self.path) {
            eprintln!("compare: could not remove {}: {e}", self.path.display());
        }
    }
}

/// Fails with one line if a program the benchmark needs is not on `PATH`.
pub fn require(program: &str) -> anyhow::Result<()> {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    if !found {
        bail!("`{program}` is not installed (needed for this scenario); install it and rerun");
    }
    Ok(())
}

/// Runs a command to completion and fails (naming it) unless it exits with one of `ok`.
pub fn run(cmd: &mut Command, ok: &[i32]) -> anyhow::Result<std::process::Output> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let code = out.status.code().unwrap_or(-1);
    if !ok.contains(&code) {
        bail!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// `cp -a SRC DST` (DST must not exist).
pub fn copy_tree(src: &Path, dst: &Path) -> anyhow::Result<()> {
    run(Command::new("cp").arg("-a").arg(src).arg(dst), &[0])?;
    Ok(())
}

/// Regular files below `root`, as sorted paths relative to it (symlinks are not followed).
pub fn regular_files(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry.with_context(|| format!("{}", dir.display()))?;
            let ty = entry.file_type()?;
            let path = entry.path();
            if ty.is_dir() {
                walk(root, &path, out)?;
            } else if ty.is_file() {
                out.push(path.strip_prefix(root)?.to_path_buf());
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(root, root, &mut out)?;
    out.sort();
    Ok(out)
}

/// Changes every `nth` single-link regular file of `root` (in sorted order) by appending a
/// few bytes, and returns the changed relative paths, sorted. Files with other hard links
/// are passed over so that exactly the returned paths differ. Calling it again changes the
/// same files again (they grow by the same few bytes each time).
pub fn change_every_nth(root: &Path, nth: usize) -> anyhow::Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let mut seen = 0usize;
    for rel in regular_files(root)? {
        let abs = root.join(&rel);
        let meta = fs::symlink_metadata(&abs)?;
        if meta.nlink() != 1 {
            continue;
        }
        seen += 1;
        if seen % nth != 0 {
            continue;
        }
        append(&abs, b"\nsyncd-bench: changed\n")?;
        changed.push(rel);
    }
    Ok(changed)
}

/// Appends `bytes` to the file at `path`.
pub fn append(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {} to change it", path.display()))?;
    f.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes a tree of `dirs` directories of `files` files each, sizes 0..=`max_size` bytes of
/// deterministic content, on `threads` threads. Layout: `d0000/f0000`.
pub fn generate_small_files(
    root: &Path,
    dirs: usize,
    files: usize,
    max_size: usize,
    threads: usize,
) -> anyhow::Result<()> {
    fs::create_dir_all(root).with_context(|| format!("cannot create {}", root.display()))?;
    let threads = threads.max(1);
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || -> anyhow::Result<()> {
                    let mut buf = vec![0u8; max_size];
                    for d in (t..dirs).step_by(threads) {
                        let dir = root.join(format!("d{d:04}"));
                        fs::create_dir(&dir)
                            .with_context(|| format!("cannot create {}", dir.display()))?;
                        let mut rng = Rng::new(d as u64);
                        for f in 0..files {
                            let len = (rng.next_u64() % (max_size as u64 + 1)) as usize;
                            rng.fill(&mut buf[..len]);
                            let path = dir.join(format!("f{f:04}"));
                            fs::write(&path, &buf[..len])
                                .with_context(|| format!("cannot write {}", path.display()))?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(r) => r?,
                Err(_) => bail!("a file-generating thread panicked"),
            }
        }
        Ok(())
    })
}

/// One timed run of a child process.
#[derive(Debug, Clone)]
pub struct Run {
    /// Wall-clock time from spawn to exit.
    pub wall: Duration,
    /// Peak resident set size of the child in KiB, when measured with `/usr/bin/time`.
    pub max_rss_kib: Option<u64>,
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
}

/// Where GNU time lives; peak RSS is measured only if it exists.
pub const GNU_TIME: &str = "/usr/bin/time";

/// Runs `program args…` (through `sh -c` when `shell` is set, so pipes work), measuring wall
/// time and, with `rss`, peak RSS via `/usr/bin/time -f %M`. Fails unless the exit code is
/// in `ok`. Environment variables in `env` are set for the child.
pub fn measure(spec: &CommandSpec, rss: bool) -> anyhow::Result<Run> {
    let rss_file = if rss && Path::new(GNU_TIME).exists() {
        Some(tempfile_path("rss")?)
    } else {
        None
    };
    let mut cmd = match &rss_file {
        Some(f) => {
            let mut c = Command::new(GNU_TIME);
            c.arg("-f").arg("%M").arg("-o").arg(f);
            c.args(spec.argv());
            c
        }
        None => {
            let argv = spec.argv();
            let mut c = Command::new(&argv[0]);
            c.args(&argv[1..]);
            c
        }
    };
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", spec.display()))?;
    let wall = start.elapsed();
    let code = out.status.code().unwrap_or(-1);
    if !spec.ok.contains(&code) {
        bail!(
            "`{}` exited with {}: {}",
            spec.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let max_rss_kib = match &rss_file {
        Some(f) => {
            let text = fs::read_to_string(f).with_context(|| format!("{}", f.display()))?;
            fs::remove_file(f).ok();
            // GNU time prints "Command exited with non-zero status N" before the figure.
            text.lines().last().and_then(|l| l.trim().parse().ok())
        }
        None => None,
    };
    Ok(Run {
        wall,
        max_rss_kib,
        code,
        stdout: out.stdout,
    })
}

fn tempfile_path(tag: &str) -> anyhow::Result<PathBuf> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    Ok(std::env::temp_dir().join(format!("syncd-bench-{}-{tag}-{n}", std::process::id())))
}

/// A command to time: a program with arguments, or a shell pipeline.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// Program and arguments, or one shell command line when `shell` is set.
    pub args: Vec<String>,
    /// Run `args[0]` with `sh -c`.
    pub shell: bool,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Accepted exit codes.
    pub ok: Vec<i32>,
}

impl CommandSpec {
    /// A program with arguments; exit code 0 expected.
    pub fn new<I, S>(args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        CommandSpec {
            args: args.into_iter().map(Into::into).collect(),
            shell: false,
            env: Vec::new(),
            ok: vec![0],
        }
    }

    /// A shell command line (`sh -c LINE`); exit code 0 expected.
    pub fn shell(line: impl Into<String>) -> Self {
        CommandSpec {
            args: vec![line.into()],
            shell: true,
            env: Vec::new(),
            ok: vec![0],
        }
    }

    /// Sets an environment variable for the child.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Accepts these exit codes instead of just 0.
    pub fn ok(mut self, codes: &[i32]) -> Self {
        self.ok = codes.to_vec();
        self
    }

    fn argv(&self) -> Vec<String> {
        if self.shell {
            vec!["sh".into(), "-c".into(), self.args[0].clone()]
        } else {
            self.args.clone()
        }
    }

    /// The command as a user would type it (environment first).
    pub fn display(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s.push_str(&format!("{k}={v} "));
        }
        s.push_str(&self.args.join(" "));
        s
    }
}

/// The median of `xs` (the mean of the middle two for an even count); zero when empty.
pub fn median(xs: &[Duration]) -> Duration {
    let mut v = xs.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

/// Several runs of one command: the figures a table row reports.
#[derive(Debug, Clone)]
pub struct Sample {
    /// What was run (the table's label).
    pub label: String,
    /// Every run, in order.
    pub runs: Vec<Run>,
}

impl Sample {
    /// Median wall time.
    pub fn median(&self) -> Duration {
        median(&self.runs.iter().map(|r| r.wall).collect::<Vec<_>>())
    }

    /// Smallest and largest wall time.
    pub fn range(&self) -> (Duration, Duration) {
        let walls = self.runs.iter().map(|r| r.wall);
        (
            walls.clone().min().unwrap_or_default(),
            walls.max().unwrap_or_default(),
        )
    }

    /// Largest peak RSS over the runs, in KiB.
    pub fn max_rss_kib(&self) -> Option<u64> {
        self.runs.iter().filter_map(|r| r.max_rss_kib).max()
    }
}

/// Something to run before each timed run of a [`Job`] (untimed), e.g. resetting a state
/// directory for a cold run.
pub type Before<'a> = Box<dyn FnMut() -> anyhow::Result<()> + 'a>;

/// One command of a side-by-side comparison.
pub struct Job<'a> {
    /// The row label.
    pub label: String,
    /// What to run.
    pub spec: CommandSpec,
    /// Measure peak RSS too.
    pub rss: bool,
    /// Called before each timed run.
    pub before: Option<Before<'a>>,
    /// How many runs (`None`: the comparison's count).
    pub reps: Option<usize>,
}

impl std::fmt::Debug for Job<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("label", &self.label)
            .field("spec", &self.spec)
            .field("rss", &self.rss)
            .field("reps", &self.reps)
            .finish_non_exhaustive()
    }
}

impl<'a> Job<'a> {
    /// A job timing `spec`, labelled `label`.
    pub fn new(label: impl Into<String>, spec: CommandSpec) -> Self {
        Job {
            label: label.into(),
            spec,
            rss: false,
            before: None,
            reps: None,
        }
    }

    /// Runs `f` (untimed) before each timed run.
    pub fn before(mut self, f: impl FnMut() -> anyhow::Result<()> + 'a) -> Self {
        self.before = Some(Box::new(f));
        self
    }

    /// Measures peak RSS.
    pub fn rss(mut self) -> Self {
        self.rss = true;
        self
    }

    /// Runs this job `n` times whatever the comparison's count (e.g. 1 for a very slow one).
    pub fn reps(mut self, n: usize) -> Self {
        self.reps = Some(n);
        self
    }
}

/// Runs `jobs` side by side: round-robin, `reps` rounds, so that a burst of load from other
/// processes spreads over every command instead of hitting one. Prints progress on stderr.
/// Returns one [`Sample`] per job, in order.
pub fn side_by_side(jobs: &mut [Job<'_>], reps: usize) -> anyhow::Result<Vec<Sample>> {
    let mut samples: Vec<Sample> = jobs
        .iter()
        .map(|j| Sample {
            label: j.label.clone(),
            runs: Vec::new(),
        })
        .collect();
    let rounds = jobs
        .iter()
        .map(|j| j.reps.unwrap_or(reps))
        .max()
        .unwrap_or(0);
    for round in 0..rounds {
        for (job, sample) in jobs.iter_mut().zip(samples.iter_mut()) {
            let n = job.reps.unwrap_or(reps);
            if round >= n {
                continue;
            }
            if let Some(f) = job.before.as_mut() {
                f()?;
            }
            let r = measure(&job.spec, job.rss)?;
            eprintln!(
                "compare:   {} [{}/{n}]: {}{}",
                job.label,
                round + 1,
                fmt_duration(r.wall),
                r.max_rss_kib
                    .map_or(String::new(), |k| format!(", peak RSS {} MB", k / 1024))
            );
            sample.runs.push(r);
        }
    }
    Ok(samples)
}

/// A duration for humans: ms below 10 s, otherwise seconds.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 0.01 {
        format!("{:.2} ms", s * 1e3)
    } else if s < 10.0 {
        format!("{:.0} ms", s * 1e3)
    } else {
        format!("{s:.1} s")
    }
}

/// A Markdown table.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// Column headers.
    pub headers: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers.
    pub fn new(headers: &[&str]) -> Self {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The standard comparison table: one row per sample with median, min–max, runs and the
    /// ratio `sample / baseline` (how many times longer than the first sample took).
    pub fn timings(samples: &[&Sample], with_rss: bool) -> Self {
        let mut headers = vec!["command", "median", "min–max", "runs", "time ÷ row 1"];
        if with_rss {
            headers.push("peak RSS");
        }
        let mut t = Table::new(&headers);
        let base = samples.first().map(|s| s.median().as_secs_f64());
        for s in samples {
            let m = s.median();
            let (lo, hi) = s.range();
            let ratio = match base {
                Some(b) if b > 0.0 => format!("{:.1}×", m.as_secs_f64() / b),
                _ => "–".into(),
            };
            let mut row = vec![
                s.label.clone(),
                fmt_duration(m),
                format!("{}–{}", fmt_duration(lo), fmt_duration(hi)),
                s.runs.len().to_string(),
                ratio,
            ];
            if with_rss {
                row.push(
                    s.max_rss_kib()
                        .map_or("–".into(), |k| format!("{:.0} MB", k as f64 / 1024.0)),
                );
            }
            t.row(row);
        }
        t
    }

    /// Markdown text.
    pub fn to_markdown(&self) -> String {
        let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
        let mut s = line(&self.headers);
        s.push_str(&line(&vec!["---".to_string(); self.headers.len()]));
        for r in &self.rows {
            s.push_str(&line(r));
        }
        s
    }
}

/// `nproc`, total memory and the 1/5/15-minute load average, for the report.
pub fn machine_info() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or("?".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    format!(
        "nproc {cpus}, memory {mem}, load average {}",
        load_average()
    )
}

/// The 1/5/15-minute load average from `/proc/loadavg`.
pub fn load_average() -> String {
    fs::read_to_string("/proc/loadavg").map_or("?".into(), |l| {
        l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    })
}
