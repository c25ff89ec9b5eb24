//! `compare`: syncd side by side with the tools operators use today, on corpora in tmpfs.
//!
//! Scenarios (each prints a Markdown section on stdout; progress goes to stderr):
//! - `diff`: `syncd diff` with warm manifests, `syncd diff --cached` and `syncd diff` after 1%
//!   of the files changed, against `rsync -a --checksum --dry-run --itemize-changes`, on a
//!   copy of `/usr/share` and a second copy with every 100th file changed. Checks that
//!   syncd (and rsync) list exactly the changed paths.
//! - `manifest`: a cold `syncd manifest` against `find | xargs -P2 b3sum` and the
//!   `find -exec sha256sum` status quo.
//! - `scale`: 1,000,000 small files: cold build and no-change refresh, time and peak RSS.
//!
//! Runs are interleaved round-robin and the median is reported. Corpora live under
//! `--shm` (default `/dev/shm/syncd-bench`) and are removed afterwards unless `--keep`
//! (a kept corpus is reused by the next run). The syncd binary is `$SYNCD_BIN`, else
//! `$CARGO_TARGET_DIR/release/syncd`, else `target/release/syncd`.
//!
//! A new scenario is a function `fn(&Ctx) -> anyhow::Result<String>` added to [`SCENARIOS`];
//! the helpers it needs (corpora, timing, tables) are in the `benches` library.
//!
//! Run: `cargo build --release -p syncd && cargo run --release -p benches --bin compare -- all`

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, bail};
use benches::{
    CommandSpec, Corpus, Job, Sample, Table, change_every_nth, copy_tree, fmt_duration,
    generate_small_files, load_average, machine_info, measure, require, side_by_side,
};

/// A named comparison.
struct Scenario {
    name: &'static str,
    about: &'static str,
    run: fn(&Ctx) -> anyhow::Result<String>,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "diff",
        about: "syncd diff (warm, --cached, after 1% changed) vs rsync --checksum --dry-run",
        run: scenario_diff,
    },
    Scenario {
        name: "manifest",
        about: "cold syncd manifest vs find|xargs -P2 b3sum and find -exec sha256sum",
        run: scenario_manifest,
    },
    Scenario {
        name: "scale",
        about: "1M small files: cold manifest build and no-change refresh, time and peak RSS",
        run: scenario_scale,
    },
];

/// What every scenario gets: options and the syncd binary.
#[derive(Debug)]
struct Ctx {
    syncd: PathBuf,
    reps: usize,
    scale_reps: usize,
    keep: bool,
    shm: PathBuf,
    source: PathBuf,
    scale_dirs: usize,
    scale_files: usize,
    per_file_sha256: bool,
}

const USAGE: &str = "usage: compare [--reps N] [--scale-reps N] [--keep] [--shm DIR] [--source DIR] \
[--scale-dirs N] [--scale-files N] [--no-per-file-sha256] <diff|manifest|scale|all>...";

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("compare: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let mut ctx = Ctx {
        syncd: PathBuf::new(),
        reps: 5,
        scale_reps: 3,
        keep: false,
        shm: PathBuf::from("/dev/shm/syncd-bench"),
        source: PathBuf::from("/usr/share"),
        scale_dirs: 1000,
        scale_files: 1000,
        per_file_sha256: true,
    };
    let mut names = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--reps" => ctx.reps = value("--reps")?.parse().context("--reps")?,
            "--scale-reps" => {
                ctx.scale_reps = value("--scale-reps")?.parse().context("--scale-reps")?
            }
            "--keep" => ctx.keep = true,
            "--shm" => ctx.shm = value("--shm")?.into(),
            "--source" => ctx.source = value("--source")?.into(),
            "--scale-dirs" => {
                ctx.scale_dirs = value("--scale-dirs")?.parse().context("--scale-dirs")?
            }
            "--scale-files" => {
                ctx.scale_files = value("--scale-files")?.parse().context("--scale-files")?
            }
            "--no-per-file-sha256" => ctx.per_file_sha256 = false,
            "-h" | "--help" => {
                println!("{USAGE}\n\nscenarios:");
                for s in SCENARIOS {
                    println!("  {:<9} {}", s.name, s.about);
                }
                return Ok(());
            }
            "all" => names.extend(SCENARIOS.iter().map(|s| s.name.to_string())),
            s if s.starts_with('-') => bail!("unknown option {s}; {USAGE}"),
            s => names.push(s.to_string()),
        }
    }
    if names.is_empty() {
        bail!("no scenario given; {USAGE}");
    }
    let chosen = names
        .iter()
        .map(|n| {
            SCENARIOS
                .iter()
                .find(|s| s.name == n)
                .with_context(|| format!("unknown scenario {n:?}; {USAGE}"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ctx.reps = ctx.reps.max(1);
    ctx.scale_reps = ctx.scale_reps.max(1);
    ctx.syncd = syncd_binary()?;
    // The base directory is removed at the end only if this run created it (so that
    // `--shm /dev/shm` never removes anybody else's files).
    let created = !ctx.shm.exists();
    fs::create_dir_all(&ctx.shm).with_context(|| format!("cannot create {}", ctx.shm.display()))?;
    let shm_guard = Corpus::new(ctx.shm.clone(), ctx.keep || !created);

    println!("# syncd comparison\n");
    println!("- machine: {}", machine_info());
    println!("- syncd: `{}`", ctx.syncd.display());
    println!("- corpora under `{}` (tmpfs)\n", ctx.shm.display());
    for s in chosen {
        eprintln!("compare: scenario {} ({})", s.name, s.about);
        let t = Instant::now();
        let section = (s.run)(&ctx).with_context(|| format!("scenario {}", s.name))?;
        println!("{section}");
        eprintln!(
            "compare: scenario {} took {}",
            s.name,
            fmt_duration(t.elapsed())
        );
    }
    drop(shm_guard);
    Ok(())
}

/// `$SYNCD_BIN`, else `$CARGO_TARGET_DIR/release/syncd`, else `target/release/syncd` of this
/// workspace.
fn syncd_binary() -> anyhow::Result<PathBuf> {
    let candidates: Vec<PathBuf> = if let Some(p) = std::env::var_os("SYNCD_BIN") {
        vec![PathBuf::from(p)]
    } else {
        let mut v = Vec::new();
        if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
            v.push(PathBuf::from(t).join("release/syncd"));
        }
        v.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/syncd"));
        v.push(PathBuf::from("target/release/syncd"));
        v
    };
    for c in &candidates {
        if c.is_file() {
            return fs::canonicalize(c).with_context(|| format!("{}", c.display()));
        }
    }
    bail!(
        "no syncd binary at {}; build it with `cargo build --release -p syncd` or set SYNCD_BIN",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// Removes a marker file when dropped, unless kept.
struct RemoveFile(PathBuf, bool);

impl Drop for RemoveFile {
    fn drop(&mut self) {
        if !self.1 {
            fs::remove_file(&self.0).ok();
        }
    }
}

/// A fresh, empty directory (removed first if present).
fn fresh_dir(p: &Path) -> anyhow::Result<()> {
    if p.exists() {
        fs::remove_dir_all(p).with_context(|| format!("cannot remove {}", p.display()))?;
    }
    fs::create_dir_all(p).with_context(|| format!("cannot create {}", p.display()))
}

/// The `/usr/share` corpus: `a` (a copy of the source) and `b` (a copy of `a` with every
/// 100th single-link file changed), plus the sorted list of changed paths.
struct ShareCorpus {
    guard: Corpus,
    changed: Vec<PathBuf>,
}

impl ShareCorpus {
    fn a(&self) -> PathBuf {
        self.guard.path().join("a")
    }
    fn b(&self) -> PathBuf {
        self.guard.path().join("b")
    }
}

const CHANGED_LIST: &str = "changed.list";

fn share_corpus(ctx: &Ctx) -> anyhow::Result<ShareCorpus> {
    let base = ctx.shm.join("share");
    let list = base.join(CHANGED_LIST);
    if ctx.keep && list.is_file() && base.join("b").is_dir() {
        let text = fs::read_to_string(&list)?;
        let changed = text.lines().map(PathBuf::from).collect();
        eprintln!("compare: reusing the kept corpus {}", base.display());
        return Ok(ShareCorpus {
            guard: Corpus::new(base, true),
            changed,
        });
    }
    if base.exists() {
        fs::remove_dir_all(&base).with_context(|| format!("cannot remove {}", base.display()))?;
    }
    fs::create_dir_all(&base)?;
    let guard = Corpus::new(base.clone(), ctx.keep);
    let t = Instant::now();
    copy_tree(&ctx.source, &base.join("a"))?;
    copy_tree(&base.join("a"), &base.join("b"))?;
    let changed = change_every_nth(&base.join("b"), 100)?;
    eprintln!(
        "compare: copied {} twice to {} and changed {} files in b ({})",
        ctx.source.display(),
        base.display(),
        changed.len(),
        fmt_duration(t.elapsed())
    );
    let mut text = String::new();
    for c in &changed {
        text.push_str(&c.display().to_string());
        text.push('\n');
    }
    // Outside `a` and `b`, so that it is part of neither tree.
    fs::write(&list, text)?;
    Ok(ShareCorpus { guard, changed })
}

/// `syncd diff` lines (`M path`) as (marker, path).
fn diff_lines(stdout: &[u8]) -> Vec<(String, PathBuf)> {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(m, p)| (m.to_string(), PathBuf::from(p)))
        .collect()
}

/// Compares a tool's reported paths with the changed list; a one-line verdict.
fn check_paths(tool: &str, got: &BTreeSet<PathBuf>, want: &[PathBuf]) -> (bool, String) {
    let want: BTreeSet<PathBuf> = want.iter().cloned().collect();
    if *got == want {
        return (
            true,
            format!("{tool} listed exactly the {} changed paths", want.len()),
        );
    }
    let missing: Vec<_> = want.difference(got).take(3).collect();
    let extra: Vec<_> = got.difference(&want).take(3).collect();
    (
        false,
        format!(
            "{tool} did NOT list exactly the changed paths: {} listed, {} changed; \
             missing e.g. {missing:?}; unexpected e.g. {extra:?}",
            got.len(),
            want.len()
        ),
    )
}

fn syncd(ctx: &Ctx, home: &Path, args: &[&str]) -> CommandSpec {
    let mut v = vec![s(&ctx.syncd)];
    v.extend(args.iter().map(|a| a.to_string()));
    CommandSpec::new(v).env("SYNCD_HOME", s(home))
}

fn scenario_diff(ctx: &Ctx) -> anyhow::Result<String> {
    require("rsync")?;
    let load_before = load_average();
    let corpus = share_corpus(ctx)?;
    let (a, b) = (s(&corpus.a()), s(&corpus.b()));
    let home = Corpus::new(ctx.shm.join("home-diff"), false);
    fresh_dir(home.path())?;

    // Warm both manifests, then one untimed diff (it also re-reads files that were modified
    // too recently for the stat cache to trust them).
    let mut notes = Vec::new();
    for dir in [&a, &b] {
        let r = measure(&syncd(ctx, home.path(), &["manifest", dir]), false)?;
        eprintln!(
            "compare:   warm-up syncd manifest {dir}: {}",
            fmt_duration(r.wall)
        );
    }
    let diff_spec = syncd(ctx, home.path(), &["diff", &a, &b]).ok(&[1]);
    measure(&diff_spec, false)?;

    // 1. Warm manifests, side by side with rsync.
    let rsync = CommandSpec::new([
        "rsync",
        "-a",
        "--checksum",
        "--dry-run",
        "--itemize-changes",
        &format!("{a}/"),
        &format!("{b}/"),
    ]);
    let mut jobs = vec![
        Job::new("`syncd diff A B` (warm manifests)", diff_spec.clone()),
        Job::new(
            "`syncd diff --cached A B` (stored manifests only)",
            syncd(ctx, home.path(), &["diff", "--cached", &a, &b]).ok(&[1]),
        ),
        Job::new(
            "`rsync -a --checksum --dry-run --itemize-changes A/ B/`",
            rsync,
        ),
    ];
    let mut samples = side_by_side(&mut jobs, ctx.reps)?;

    // Correctness: syncd and rsync list exactly the changed paths.
    let mut all_ok = true;
    for (i, tool) in [(0, "syncd diff"), (1, "syncd diff --cached")] {
        let runs = &samples[i].runs;
        let lines = diff_lines(&runs.last().context("no run")?.stdout);
        let markers: BTreeSet<String> = lines.iter().map(|(m, _)| m.clone()).collect();
        let got: BTreeSet<PathBuf> = lines.into_iter().map(|(_, p)| p).collect();
        let (ok, mut line) = check_paths(tool, &got, &corpus.changed);
        line.push_str(&format!(" (markers: {markers:?})"));
        all_ok &= ok;
        notes.push(line);
    }
    {
        let out = &samples[2].runs.last().context("no run")?.stdout;
        let got: BTreeSet<PathBuf> = String::from_utf8_lossy(out)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(items, _)| items.as_bytes().get(1) == Some(&b'f'))
            .map(|(_, p)| PathBuf::from(p))
            .collect();
        notes.push(check_paths("rsync", &got, &corpus.changed).1);
    }

    // 2. The 1% changed since the last refresh: syncd re-reads just those files.
    let b_path = corpus.b();
    let mut changed_jobs = vec![
        Job::new(
            "`syncd diff A B` (1% of B changed since its last refresh)",
            diff_spec.clone(),
        )
        .before(|| {
            change_every_nth(&b_path, 100)?;
            Ok(())
        }),
    ];
    let changed = side_by_side(&mut changed_jobs, ctx.reps)?;
    {
        let got = diff_lines(&changed[0].runs.last().context("no run")?.stdout)
            .into_iter()
            .map(|(_, p)| p)
            .collect();
        let (ok, line) = check_paths(
            "syncd diff (after changing them again)",
            &got,
            &corpus.changed,
        );
        all_ok &= ok;
        notes.push(line);
    }
    samples.extend(changed);

    let refs: Vec<&Sample> = samples.iter().collect();
    let table = Table::timings(&refs, false);
    let ratio = samples[2].median().as_secs_f64() / samples[0].median().as_secs_f64();
    let mut out = String::new();
    out.push_str(&format!(
        "## diff: `syncd diff` vs `rsync --checksum --dry-run`\n\n\
         A = copy of `{}`, B = copy of A with {} files (every 100th single-link file in sorted \
         order) changed by appending bytes. {} runs each, interleaved; load average before: \
         {load_before}, after: {}.\n\n",
        ctx.source.display(),
        corpus.changed.len(),
        ctx.reps,
        load_average()
    ));
    out.push_str(&table.to_markdown());
    out.push_str(&format!(
        "\n- rsync / syncd diff (warm): **{ratio:.1}×** (goal ≥ 5×: {})\n",
        if ratio >= 5.0 { "met" } else { "MISSED" }
    ));
    for n in notes {
        out.push_str(&format!("- {n}\n"));
    }
    if !all_ok {
        bail!("{out}\nsyncd diff did not list exactly the changed paths");
    }
    Ok(out)
}

fn scenario_manifest(ctx: &Ctx) -> anyhow::Result<String> {
    require("b3sum")?;
    require("sha256sum")?;
    require("xargs")?;
    let load_before = load_average();
    let corpus = share_corpus(ctx)?;
    let a = s(&corpus.a());
    let home = Corpus::new(ctx.shm.join("home-manifest"), false);
    let warm_home = Corpus::new(ctx.shm.join("home-manifest-warm"), false);
    fresh_dir(warm_home.path())?;
    measure(
        &syncd(ctx, warm_home.path(), &["manifest", "--json", &a]),
        false,
    )?;
    let home_path = home.path().to_path_buf();
    let mut jobs = vec![
        Job::new(
            "`syncd manifest A` (cold: empty SYNCD_HOME)",
            syncd(ctx, home.path(), &["manifest", "--json", &a]),
        )
        .rss()
        .before(move || fresh_dir(&home_path)),
        Job::new(
            "`syncd manifest A` (no change: stat walk)",
            syncd(ctx, warm_home.path(), &["manifest", "--json", &a]),
        )
        .rss(),
        Job::new(
            "`find A -type f -print0 | xargs -0 -P2 -n 64 b3sum`",
            CommandSpec::shell(format!(
                "find {a} -type f -print0 | xargs -0 -P2 -n 64 b3sum > /dev/null"
            )),
        ),
        Job::new(
            "`find A -type f -print0 | xargs -0 -P2 -n 64 sha256sum`",
            CommandSpec::shell(format!(
                "find {a} -type f -print0 | xargs -0 -P2 -n 64 sha256sum > /dev/null"
            )),
        ),
        Job::new(
            "`find A -type f -exec sha256sum {} +`",
            CommandSpec::shell(format!(
                "find {a} -type f -exec sha256sum {{}} + > /dev/null"
            )),
        ),
    ];
    if ctx.per_file_sha256 {
        jobs.push(
            Job::new(
                "`find A -type f -exec sha256sum {} \\;` (status quo, 1 run)",
                CommandSpec::shell(format!(
                    "find {a} -type f -exec sha256sum {{}} \\; > /dev/null"
                )),
            )
            .reps(1),
        );
    }
    let samples = side_by_side(&mut jobs, ctx.reps)?;
    let summary: serde_json::Value =
        serde_json::from_slice(&samples[0].runs.last().context("no run")?.stdout)
            .context("syncd manifest --json output")?;
    let refs: Vec<&Sample> = samples.iter().collect();
    let table = Table::timings(&refs, true);
    let mut out = format!(
        "## manifest: cold `syncd manifest` vs hashing every file\n\n\
         A = copy of `{}`: {} files, {} bytes (syncd read {} files). {} runs each{}, interleaved; \
         load average before: {load_before}, after: {}.\n\n",
        ctx.source.display(),
        summary["files"],
        summary["bytes"],
        summary["hashed_files"],
        ctx.reps,
        if ctx.per_file_sha256 {
            " (the per-file sha256sum once)"
        } else {
            ""
        },
        load_average()
    );
    out.push_str(&table.to_markdown());
    out.push_str(&format!(
        "\n- b3sum pipeline / cold syncd manifest: {:.2}×; a ratio > 1 means syncd is faster\n",
        samples[2].median().as_secs_f64() / samples[0].median().as_secs_f64()
    ));
    Ok(out)
}

fn scenario_scale(ctx: &Ctx) -> anyhow::Result<String> {
    let load_before = load_average();
    let total = ctx.scale_dirs * ctx.scale_files;
    let tree = Corpus::new(ctx.shm.join("scale"), ctx.keep);
    let done = ctx.shm.join("scale.done");
    let _done_guard = RemoveFile(done.clone(), ctx.keep);
    if ctx.keep && done.is_file() && tree.path().is_dir() {
        eprintln!("compare: reusing the kept tree {}", tree.path().display());
    } else {
        fs::remove_file(&done).ok();
        if tree.path().exists() {
            fs::remove_dir_all(tree.path())?;
        }
        let t = Instant::now();
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        generate_small_files(tree.path(), ctx.scale_dirs, ctx.scale_files, 200, threads)?;
        eprintln!(
            "compare: generated {total} files in {} ({})",
            tree.path().display(),
            fmt_duration(t.elapsed())
        );
        if ctx.keep {
            fs::write(&done, format!("{total}\n"))?;
        }
        // The stat cache distrusts mtimes within 100 ms of a scan's start.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let dir = s(tree.path());
    let home = Corpus::new(ctx.shm.join("home-scale"), false);
    let home_path = home.path().to_path_buf();
    let mut cold = vec![
        Job::new(
            format!("`syncd manifest` cold, {total} files"),
            syncd(ctx, home.path(), &["manifest", "--json", &dir]),
        )
        .rss()
        .before(move || fresh_dir(&home_path)),
    ];
    let mut samples = side_by_side(&mut cold, ctx.scale_reps)?;
    let summary: serde_json::Value =
        serde_json::from_slice(&samples[0].runs.last().context("no run")?.stdout)
            .context("syncd manifest --json output")?;
    let store_bytes: u64 = fs::read_dir(home.path().join("manifests"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    let mut refresh = vec![
        Job::new(
            format!("`syncd manifest` no-change refresh, {total} files"),
            syncd(ctx, home.path(), &["manifest", "--json", &dir]),
        )
        .rss(),
    ];
    samples.extend(side_by_side(&mut refresh, ctx.scale_reps)?);
    let hashed: serde_json::Value =
        serde_json::from_slice(&samples[1].runs.last().context("no run")?.stdout)
            .context("syncd manifest --json output")?;
    let refs: Vec<&Sample> = samples.iter().collect();
    let mut table = Table::timings(&refs, true);
    for row in &mut table.rows {
        row[4] = "–".into();
    }
    let rss_mb = |i: usize| {
        samples[i]
            .max_rss_kib()
            .map_or(f64::NAN, |k| k as f64 / 1024.0)
    };
    let refresh_s = samples[1].median().as_secs_f64();
    let worst_rss = rss_mb(0).max(rss_mb(1));
    let mut out = format!(
        "## scale: {total} small files ({} dirs × {} files, 0–200 bytes)\n\n\
         Files {}, bytes {}; the store is {:.0} MB on tmpfs. {} runs each; load average \
         before: {load_before}, after: {}.\n\n",
        ctx.scale_dirs,
        ctx.scale_files,
        summary["files"],
        summary["bytes"],
        store_bytes as f64 / 1e6,
        ctx.scale_reps,
        load_average()
    );
    out.push_str(&table.to_markdown());
    out.push_str(&format!(
        "\n- peak RSS: cold {:.0} MB, refresh {:.0} MB (goal < 400 MB: {})\n\
         - no-change refresh: {} (goal < 10 s: {}); it read {} files\n",
        rss_mb(0),
        rss_mb(1),
        if worst_rss < 400.0 { "met" } else { "MISSED" },
        fmt_duration(samples[1].median()),
        if refresh_s < 10.0 { "met" } else { "MISSED" },
        hashed["hashed_files"],
    ));
    let t = Instant::now();
    drop(home);
    drop(tree);
    if !ctx.keep {
        eprintln!(
            "compare: removed the scale tree ({})",
            fmt_duration(t.elapsed())
        );
    }
    Ok(out)
}
