//! The `syncd` command line. Exit codes: 0 ok/identical, 1 a difference or a failed check
//! was found, 2 a usage or runtime error (one line on stderr).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::json;

use syncd::manifest::store::{Opened, Store};
use syncd::manifest::{self, Change, display_path};
use syncd::scan::{self, Problem, ScanOptions, Summary};

#[derive(Parser, Debug)]
#[command(
    name = "syncd",
    version,
    about = "Fast, verifiable file sync: merkle manifests of trees, instant diffs, chunk-level transfer",
    long_about = "Fast, verifiable file sync.\n\n\
        syncd fingerprints a directory tree into a merkle manifest (FastCDC chunks hashed with \
        BLAKE3, persisted in redb under --home) so that two trees compare in milliseconds and a \
        diff names the exact paths that differ. Refreshing a manifest re-reads only files whose \
        size, mtime, ctime or inode changed.\n\n\
        Exit status: 0 ok or identical, 1 a difference or a failed check was found, 2 usage or \
        runtime error.",
    after_help = "Examples:\n  syncd manifest /srv/data\n  syncd diff /srv/data /mnt/copy\n  syncd verify /srv/data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Home {
    /// State directory (manifests, identity). Never inside a synced tree.
    /// Default: $XDG_DATA_HOME/syncd, i.e. ~/.local/share/syncd.
    #[arg(long, env = "SYNCD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
}

impl Home {
    fn dir(&self) -> Result<PathBuf> {
        match &self.home {
            Some(h) => Ok(h.clone()),
            None => dirs::data_dir()
                .map(|d| d.join("syncd"))
                .context("cannot find the user's data directory; pass --home DIR"),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct Filters {
    /// Leave out entries matching this gitignore-style glob (relative to the tree root);
    /// repeatable. Nothing is excluded by default: a migration copies everything.
    #[arg(long, value_name = "PAT")]
    exclude: Vec<String>,
    /// Honour .gitignore / .ignore / .git/info/exclude files in the tree. Off by default.
    #[arg(long)]
    filter_gitignore: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build or refresh DIR's manifest and print its root hash, files, bytes and time.
    ///
    /// The first run reads every file; later runs re-read only files whose stat changed.
    /// Exits 1 if some entries could not be read (they are listed on stderr).
    Manifest {
        /// The tree to fingerprint.
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        filters: Filters,
    },
    /// Compare two trees; print one line per differing path.
    ///
    /// Both manifests are refreshed first (a parallel stat walk; only changed files are read),
    /// then compared by descending only where hashes differ. Line markers: `+` only in B,
    /// `-` only in A, `M` content differs, `m` only metadata (mode, mtime) differs, `T` the
    /// type differs (file, dir, symlink). Exits 0 if identical, 1 if they differ.
    Diff {
        /// The first tree.
        a: PathBuf,
        /// The second tree.
        b: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Compare the stored manifests without refreshing them (milliseconds, but blind to
        /// changes made since the last refresh).
        #[arg(long)]
        cached: bool,
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        filters: Filters,
    },
    /// Re-hash DIR from disk against its stored manifest and report bit-rot.
    ///
    /// Every file is read, whatever its stat says. `bitrot` means the content changed while
    /// size and mtime did not; `modified` means it changed the ordinary way since
    /// the manifest was built. Exits 1 if anything differs. The manifest is not updated.
    Verify {
        /// The tree to check.
        dir: PathBuf,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: Home,
    },
}

/// What a command concluded.
enum Outcome {
    Ok,
    Found,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::SUCCESS,
        Ok(Outcome::Found) => ExitCode::from(1),
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("syncd: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// The error chain on one line, without repeating a cause already in its context.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if out.contains(&s) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&s);
    }
    out
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Manifest {
            dir,
            json,
            home,
            filters,
        } => cmd_manifest(&dir, json, &home.dir()?, &filters),
        Command::Diff {
            a,
            b,
            json,
            cached,
            home,
            filters,
        } => cmd_diff(&a, &b, json, cached, &home.dir()?, &filters),
        Command::Verify { dir, json, home } => cmd_verify(&dir, json, &home.dir()?),
    }
}

fn options(home: &Path, filters: &Filters) -> ScanOptions {
    ScanOptions {
        excludes: filters.exclude.clone(),
        gitignore: filters.filter_gitignore,
        params: Default::default(),
        exclude_path: std::fs::canonicalize(home).ok(),
    }
}

/// Opens (or creates, or rebuilds) the store of `dir` and refreshes it.
fn refresh(dir: &Path, home: &Path, filters: &Filters) -> Result<(Store, Summary)> {
    let root = scan::canonical_root(dir)?;
    let store = match Store::open(home, &root)? {
        Opened::Rebuilt {
            store,
            reason,
            moved_to,
        } => {
            eprintln!(
                "syncd: warning: {reason}; moved it to {} and rebuilding the manifest",
                moved_to.display()
            );
            store
        }
        other => other.into_store(),
    };
    let summary = scan::refresh(&root, &store, &options(home, filters))?;
    for w in &summary.warnings {
        eprintln!("syncd: warning: {w}");
    }
    Ok((store, summary))
}

fn cmd_manifest(dir: &Path, json: bool, home: &Path, filters: &Filters) -> Result<Outcome> {
    let t = Instant::now();
    let (store, s) = refresh(dir, home, filters)?;
    let secs = t.elapsed().as_secs_f64();
    let errors = s.errors().count();
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "path": s.root_path,
            "root": s.root.to_hex(),
            "files": s.files,
            "dirs": s.dirs,
            "symlinks": s.symlinks,
            "bytes": s.bytes,
            "hashed_files": s.hashed_files,
            "hashed_bytes": s.hashed_bytes,
            "seconds": secs,
            "store": store.path(),
            "unreadable": errors,
            "warnings": s.warnings.iter().map(|w| json!({"path": w.path, "message": w.message})).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        writeln!(
            out,
            "root {}  files {}  bytes {} ({})  dirs {}  symlinks {}  read {} files ({})  {:.3}s",
            s.root,
            s.files,
            s.bytes,
            human_bytes(s.bytes),
            s.dirs,
            s.symlinks,
            s.hashed_files,
            human_bytes(s.hashed_bytes),
            secs
        )?;
    }
    if errors > 0 {
        eprintln!("syncd: {errors} entries could not be read; the manifest leaves them out");
        return Ok(Outcome::Found);
    }
    Ok(Outcome::Ok)
}

fn cmd_diff(
    a: &Path,
    b: &Path,
    json: bool,
    cached: bool,
    home: &Path,
    filters: &Filters,
) -> Result<Outcome> {
    let t = Instant::now();
    let (sa, sb) = if cached {
        let open = |dir: &Path| -> Result<Store> {
            let root = scan::canonical_root(dir)?;
            Store::open_existing(home, &root)?.with_context(|| {
                format!(
                    "no stored manifest for {}; run `syncd manifest {}` first",
                    dir.display(),
                    dir.display()
                )
            })
        };
        (open(a)?, open(b)?)
    } else {
        let (sa, _) = refresh(a, home, filters)?;
        let (sb, _) = refresh(b, home, filters)?;
        (sa, sb)
    };
    let (na, nb) = (sa.snapshot()?, sb.snapshot()?);
    let changes: Vec<Change> = manifest::diff(&na, &nb)?;
    let (ra, rb) = (na.root()?, nb.root()?);
    let secs = t.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "identical": changes.is_empty(),
            "root_a": ra.map(|h| h.to_hex()),
            "root_b": rb.map(|h| h.to_hex()),
            "seconds": secs,
            "changes": changes.iter().map(|c| json!({
                "path": display_path(&c.path),
                "change": c.kind.as_str(),
                "old": c.old.map(|k| k.as_str()),
                "new": c.new.map(|k| k.as_str()),
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        for c in &changes {
            writeln!(out, "{} {}", c.kind.marker(), display_path(&c.path))?;
        }
    }
    Ok(if changes.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Found
    })
}

fn cmd_verify(dir: &Path, json: bool, home: &Path) -> Result<Outcome> {
    let t = Instant::now();
    let root = scan::canonical_root(dir)?;
    let store = Store::open_existing(home, &root)?.with_context(|| {
        format!(
            "no stored manifest for {}; run `syncd manifest {}` first",
            dir.display(),
            dir.display()
        )
    })?;
    let snap = store.snapshot()?;
    let findings = scan::verify(&root, &snap, Default::default())?;
    let label = |p: &Problem| match p {
        Problem::BitRot => "bitrot",
        Problem::Modified => "modified",
        Problem::Missing => "missing",
        Problem::Unreadable(_) => "unreadable",
    };
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "ok": findings.is_empty(),
            "root": snap.root()?.map(|h| h.to_hex()),
            "seconds": t.elapsed().as_secs_f64(),
            "findings": findings.iter().map(|f| json!({
                "path": f.path,
                "problem": label(&f.problem),
                "detail": match &f.problem { Problem::Unreadable(m) => Some(m.as_str()), _ => None },
            })).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        for f in &findings {
            match &f.problem {
                Problem::Unreadable(m) => writeln!(out, "unreadable {}: {m}", f.path.display())?,
                p => writeln!(out, "{} {}", label(p), f.path.display())?,
            }
        }
        if findings.is_empty() {
            writeln!(
                out,
                "ok: every file matches the manifest ({:.3}s)",
                t.elapsed().as_secs_f64()
            )?;
        }
    }
    Ok(if findings.is_empty() {
        Outcome::Ok
    } else {
        Outcome::Found
    })
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
