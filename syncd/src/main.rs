//! The `syncd` command line. Exit codes: 0 ok/identical, 1 a difference or a failed check
//! was found, 2 a usage or runtime error (one line on stderr).

use std::io::{IsTerminal, Write};
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
    version = VERSION,
    about = "Fast, verifiable file sync: merkle manifests of trees, instant diffs, chunk-level transfer",
    long_about = "Fast, verifiable file sync.\n\n\
        syncd fingerprints a directory tree into a merkle manifest (FastCDC chunks hashed with \
        BLAKE3, persisted in redb under --home) so that two trees compare in milliseconds and a \
        diff names the exact paths that differ. Refreshing a manifest re-reads only files whose \
        size, mtime, ctime or inode changed.\n\n\
        Exit status: 0 ok or identical, 1 a difference or a failed check was found, 2 usage or \
        runtime error.",
    after_help = "Examples:\n  syncd manifest /srv/data\n  syncd diff /srv/data /mnt/copy\n  syncd verify /srv/data\n  \
        syncd push /srv/data /mnt/copy/            # local, no server needed\n  \
        syncd init && syncd id                      # on both nodes; exchange the ids\n  \
        syncd serve --root /srv/data --listen 0.0.0.0:7700 --allow SENDER-ID\n  \
        syncd push /srv/data newhost:7700 --peer-id RECEIVER-ID --delete --bwlimit 200M"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// `--version`: the build and the wire protocol it speaks (both sides of a push must
/// speak the same one).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (protocol ",
    // Checked against `syncd::proto::VERSION` by the test `version_names_the_protocol`.
    "6",
    ")"
);

#[derive(Args, Debug, Clone)]
struct Home {
    /// State directory (manifests, identity, part-file key). Never inside a synced tree:
    /// a push or serve whose tree overlaps it is refused.
    /// Default: /var/lib/syncd as root, else $XDG_DATA_HOME/syncd (~/.local/share/syncd).
    #[arg(long, env = "SYNCD_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
}

impl Home {
    fn dir(&self) -> Result<PathBuf> {
        match &self.home {
            Some(h) => Ok(h.clone()),
            None if syncd::apply::running_as_root() => Ok(PathBuf::from("/var/lib/syncd")),
            None => dirs::data_dir()
                .map(|d| d.join("syncd"))
                .context("cannot find the user's data directory; pass --home DIR"),
        }
    }
}

#[derive(Args, Debug, Clone)]
struct Filters {
    /// Leave out entries matching PAT; repeatable. rsync's rules: `*.tmp` or `cache/` match
    /// the last component anywhere (a trailing `/` only directories), `app/x.conf` the end
    /// of the path, `/run` only at the tree root; `**` crosses `/`. With --include, the
    /// first rule that matches wins, in command-line order. An excluded path is neither
    /// sent nor deleted at DEST (unless --delete-excluded). Nothing is excluded by default:
    /// a migration copies everything.
    #[arg(long, value_name = "PAT")]
    exclude: Vec<String>,
    /// Keep entries matching PAT even where a later --exclude matches (rsync's --include).
    #[arg(long, value_name = "PAT")]
    include: Vec<String>,
    /// Read --exclude patterns from FILE, one per line (blank lines and lines starting with
    /// `#` or `;` are skipped; a line `+ PAT` is an --include).
    #[arg(long, value_name = "FILE")]
    exclude_from: Vec<PathBuf>,
    /// Read --include patterns from FILE, one per line (a line `- PAT` is an --exclude).
    #[arg(long, value_name = "FILE")]
    include_from: Vec<PathBuf>,
    /// Only the paths listed in FILE (one per line, relative to SRC; `-` is stdin), their
    /// parent directories and, for a directory, what is in it; nothing else is sent or
    /// deleted.
    #[arg(long, value_name = "FILE")]
    files_from: Option<PathBuf>,
    /// The rules above in command-line order (filled in after parsing).
    #[arg(skip)]
    rules: Vec<syncd::filter::Rule>,
    /// Honour .gitignore / .ignore / .git/info/exclude files in the tree. Off by default.
    #[arg(long)]
    filter_gitignore: bool,
    /// Leave owner, group, ACLs and xattrs outside user.* out of the comparison (and, for
    /// push, do not ask the receiver to make them equal). This is the default when not
    /// running as root, since only root can set them; as root they are compared, and a push
    /// makes them equal, so a receiver must then run as root too.
    #[arg(long)]
    no_owner: bool,
}

impl Filters {
    /// Whether owners and all xattrs are part of the manifest: as root, unless --no-owner.
    fn owners(&self) -> bool {
        !self.no_owner && syncd::apply::running_as_root()
    }
}

// `Push` carries every flag of a push; the value is built once per run and never moved
// around, so its size costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
enum Command {
    /// Create this node's identity (key pair + self-signed certificate) if missing, and
    /// print its peer id.
    ///
    /// The peer id is the fingerprint of the certificate. Give it to the other side: a
    /// `syncd serve` accepts only `--allow`ed peer ids, and a `syncd push` talks only to the
    /// `--peer-id` it was given. There is no trust on first use.
    Init {
        #[command(flatten)]
        home: Home,
    },
    /// Print this node's peer id (one line).
    Id {
        #[command(flatten)]
        home: Home,
    },
    /// Receive pushes into ROOT over QUIC, from allowed peers only, until SIGTERM/SIGINT.
    ///
    /// Every file is assembled in a part file next to its destination, each chunk verified
    /// against its BLAKE3 id, then fsynced and renamed into place. An interrupted push
    /// leaves no partially written file at a final path, and the next push reuses what
    /// arrived. Pushes are applied one at a time; a new push from a peer ends that peer's
    /// older connection (a killed or cut-off pusher) instead of waiting for it to time out.
    Serve {
        /// Directory to receive into (must exist).
        #[arg(long, value_name = "DIR")]
        root: PathBuf,
        /// UDP address to listen on, e.g. 0.0.0.0:7700 or [::]:7700.
        #[arg(long, value_name = "ADDR")]
        listen: std::net::SocketAddr,
        /// Peer id allowed to push (from its `syncd id`); repeatable; at least one.
        #[arg(long = "allow", value_name = "PEER_ID", required = true)]
        allow: Vec<syncd::identity::PeerId>,
        /// End a push that makes no progress for this long (nothing arrives, nothing is
        /// written), naming what it waited for, so the next peer's push can start.
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// On SIGTERM/SIGINT, let the running push finish for up to this long before it is
        /// cut off (a second signal cuts it off at once). Exit 1 if one was cut off.
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
        shutdown_timeout: std::time::Duration,
        /// Serve a control socket (mode 0600) here: `syncd status --control PATH`.
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9700).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Log more: -v each session's steps, -vv quinn's and rustls's too (RUST_LOG, when
        /// set, decides instead).
        #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
        verbose: u8,
        /// Log only warnings and errors.
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        home: Home,
    },
    /// Make DEST an exact copy of SRC's contents, sending only the chunks DEST lacks.
    ///
    /// SRC always means its contents (rsync's `SRC/`): `syncd push /srv/data /mnt/copy/`
    /// makes /mnt/copy/X of /srv/data/X. A single file SRC goes into the directory DEST.
    /// DEST is HOST:PORT or [V6]:PORT of a `syncd serve` (then --peer-id is required), or
    /// a local directory, created if missing (a path with a colon before its first '/' is
    /// written ./a:b; rsync's host:/path is refused); a local push runs the same pipeline
    /// without the network. Preserves mode, mtime,
    /// symlinks, empty directories, hard links within the tree, sparse files, user.* xattrs,
    /// and, when running as root, owner, group, ACLs and all other xattrs (the receiver must
    /// then run as root too; --no-owner leaves them out).
    /// The push ends by comparing the receiver's manifest root with the source's: exit 0 only
    /// if they are equal. Exit 1 if they differ (e.g. extraneous entries without --delete,
    /// or the source changed meanwhile) or, with --dry-run, if anything would change.
    Push {
        /// The source tree.
        src: PathBuf,
        /// HOST:PORT of a `syncd serve`, or a local directory path containing '/'.
        dest: String,
        /// The receiver's peer id (required for a remote DEST; see `syncd id` there).
        #[arg(long, value_name = "PEER_ID")]
        peer_id: Option<syncd::identity::PeerId>,
        /// Remove entries in DEST that SRC does not have (after new content is in place).
        /// Entries the filter rules exclude are kept (rsync's meaning), and so is whatever
        /// SRC has but could not read.
        #[arg(long)]
        delete: bool,
        /// With --delete, also remove DEST entries that the filter rules exclude.
        #[arg(long, requires = "delete")]
        delete_excluded: bool,
        /// Stop before deleting anything if --delete would remove more than N entries (a
        /// directory counts with everything in it). Default: no limit, as in rsync.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_delete: Option<u64>,
        #[arg(long, value_name = "RATE|auto[:MAX]|TIMETABLE", help = syncd::bwlimit::BWLIMIT_HELP, allow_hyphen_values = true)]
        bwlimit: Option<syncd::bwlimit::BwLimit>,
        /// Fixed zstd level for chunk data (0 = off). Default: adapt to the link: level 1
        /// until the first quarter second shows whether the link is the bottleneck, then
        /// the highest level that keeps up with a slow link, and off on fast links where
        /// compressing costs more time than it saves; off to a receiver on this machine (a
        /// loopback address) unless --bwlimit is set.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(i32).range(0..=19))]
        compress_level: Option<i32>,
        /// List what would change (like `syncd diff SRC DEST`), change nothing.
        #[arg(short = 'n', long)]
        dry_run: bool,
        /// Print only errors (no summary, no warnings about skipped special files).
        #[arg(short, long, conflicts_with_all = ["itemize_changes", "verbose"])]
        quiet: bool,
        /// List every path the push creates (`+`), changes (`M`), re-attributes (`m`, with
        /// which attributes: mode, mtime, owner/xattrs, link), retypes (`T`) or deletes
        /// (`-`), as `syncd diff` marks them. Names are escaped (`\n`, `\xff`); --json
        /// carries them in `changes`.
        #[arg(short = 'i', long)]
        itemize_changes: bool,
        /// Verbose: --itemize-changes.
        #[arg(short, long)]
        verbose: bool,
        /// With --dry-run or --itemize-changes, end each listed entry with NUL instead of a
        /// newline and print its name as it is, unescaped (for `xargs -0`).
        #[arg(short = '0', long = "null")]
        null: bool,
        /// Print a JSON summary instead of text.
        #[arg(long)]
        json: bool,
        /// End the push if nothing happens for this long (no chunk, no answer), naming what
        /// it waited for. For a remote push the receiver's `serve --timeout` applies too.
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
        /// How long to wait for a remote receiver to answer at all.
        #[arg(long, value_name = "DUR", default_value = "10s", value_parser = humantime::parse_duration)]
        connect_timeout: std::time::Duration,
        /// Check the whole destination by a stat walk at the end, not only what the push
        /// changed, so that a write into DEST by someone else during the push is seen (the
        /// push then exits 1). Use it for the final sync before a switch-over.
        #[arg(long)]
        verify_dest: bool,
        /// Show progress on stderr (default: only when stderr is a terminal).
        #[arg(long, overrides_with = "no_progress")]
        progress: bool,
        /// Never show progress.
        #[arg(long)]
        no_progress: bool,
        #[command(flatten)]
        continuous: Continuous,
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        filters: Filters,
    },
    /// Show the state of a running `syncd push --watch` or `syncd serve` (from its control
    /// socket). Exit 0 if converged, 1 if not, 2 if it cannot be asked.
    Status {
        /// The daemon's control socket. Default: control.sock in the state directory.
        #[arg(long, value_name = "PATH", env = "SYNCD_CONTROL")]
        control: Option<PathBuf>,
        /// Print the status as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: Home,
    },
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
    /// then compared by descending only where hashes differ. The markers are those of
    /// `push --dry-run A B`, what B lacks or has extra relative to A: `+` only in A (a push
    /// creates it in B), `-` only in B (`--delete` removes it), `M` content differs, `m` only metadata differs (mode, mtime, how a file
    /// is hard-linked, xattrs, and as root owner, group and ACLs), `T` the type differs
    /// (file, dir, symlink). Exits 0 if identical, 1 if they differ.
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
        /// End each line with NUL instead of a newline and print names as they are,
        /// unescaped (for `xargs -0`).
        #[arg(short = '0', long = "null")]
        null: bool,
        #[command(flatten)]
        home: Home,
        #[command(flatten)]
        filters: Filters,
    },
    /// Print a shell completion script, e.g. `syncd completions bash > /etc/bash_completion.d/syncd`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), e.g. `syncd man > /usr/local/share/man/man1/syncd.1`.
    Man,
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

/// `push --watch` and its companions (continuous mode).
#[derive(Args, Debug, Clone)]
struct Continuous {
    /// After the first push, keep watching SRC (inotify) and push each batch of changes,
    /// until SIGTERM/SIGINT. Failed pushes are retried with a backoff.
    #[arg(long)]
    watch: bool,
    /// With --watch: quiet time after a change before its batch is pushed.
    #[arg(long, value_name = "DUR", default_value = "20ms", value_parser = humantime::parse_duration, requires = "watch")]
    debounce: std::time::Duration,
    /// With --watch: rescan the whole tree this often as a safety net (a stat walk).
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = humantime::parse_duration, requires = "watch")]
    rescan_interval: std::time::Duration,
    /// With --watch: serve a control socket (mode 0600) here, for `syncd status` and
    /// `cutover` (status, final-sync, set-bwlimit, pause, resume).
    #[arg(long, value_name = "PATH", requires = "watch")]
    control: Option<PathBuf>,
    /// With --watch: serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9701).
    #[arg(long, value_name = "ADDR", requires = "watch")]
    metrics: Option<std::net::SocketAddr>,
}

/// What a command concluded.
enum Outcome {
    Ok,
    Found,
}

fn main() -> ExitCode {
    let matches = <Cli as clap::CommandFactory>::command().get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches)
        .map_err(|e| e.exit())
        .and_then(|cli| with_rules(cli, &matches))
    {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("syncd: {}", one_line(&e));
            return ExitCode::from(2);
        }
    };
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

/// Fills in the subcommand's [`Filters::rules`]: --include, --exclude and the rules of
/// --include-from/--exclude-from in the order they were given (rsync's first match wins),
/// then those of --files-from.
fn with_rules(mut cli: Cli, matches: &clap::ArgMatches) -> Result<Cli> {
    use syncd::filter::{Action, Rule};
    let Some((_, m)) = matches.subcommand() else {
        return Ok(cli);
    };
    let filters = match &mut cli.command {
        Command::Push { filters, .. }
        | Command::Manifest { filters, .. }
        | Command::Diff { filters, .. } => filters,
        _ => return Ok(cli),
    };
    let mut ordered: Vec<(usize, Rule)> = Vec::new();
    let rule = |action, pattern: &str| Rule {
        action,
        pattern: pattern.to_string(),
    };
    for (id, action) in [("exclude", Action::Exclude), ("include", Action::Include)] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<String>(id)) {
            ordered.extend(idx.zip(vals).map(|(i, v)| (i, rule(action, v))));
        }
    }
    for (id, action) in [
        ("exclude_from", Action::Exclude),
        ("include_from", Action::Include),
    ] {
        if let (Some(idx), Some(vals)) = (m.indices_of(id), m.get_many::<PathBuf>(id)) {
            for (i, file) in idx.zip(vals) {
                let text = read_list(file)?;
                for line in syncd::filter::rule_lines(&text) {
                    let r = match (line.strip_prefix("+ "), line.strip_prefix("- ")) {
                        (Some(p), _) => rule(Action::Include, p),
                        (_, Some(p)) => rule(Action::Exclude, p),
                        _ => rule(action, line),
                    };
                    ordered.push((i, r));
                }
            }
        }
    }
    ordered.sort_by_key(|(i, _)| *i);
    filters.rules = ordered.into_iter().map(|(_, r)| r).collect();
    if let Some(file) = &filters.files_from {
        let text = read_list(file)?;
        let paths: Vec<String> = syncd::filter::rule_lines(&text)
            .map(str::to_string)
            .collect();
        filters
            .rules
            .extend(syncd::filter::files_from_rules(&paths));
    }
    // Compile once here, so that a bad pattern is a usage error naming it.
    syncd::filter::Filter::new(filters.rules.clone())?;
    Ok(cli)
}

/// The text of a list file (`-` is stdin).
fn read_list(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        return std::io::read_to_string(std::io::stdin())
            .context("cannot read the list from stdin");
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
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

/// A write to our stdout failed because its reader went away (`syncd diff | head`): not an
/// error. Only an error that *is* an IO error counts, the way `writeln!` returns it; a
/// broken pipe inside the push (a peer or an internal pipe gone) is wrapped in a
/// [`syncd::push::PushError`] and is a failure like any other.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::Init { home } => cmd_init(&home.dir()?),
        Command::Id { home } => {
            let home = home.dir()?;
            let id = syncd::identity::Identity::load(&home)?;
            writeln!(std::io::stdout().lock(), "{}", id.peer_id())?;
            Ok(Outcome::Ok)
        }
        Command::Serve {
            root,
            listen,
            allow,
            timeout,
            shutdown_timeout,
            control,
            metrics,
            verbose,
            quiet,
            home,
        } => cmd_serve(
            root,
            listen,
            allow,
            &home.dir()?,
            timeout,
            shutdown_timeout,
            (
                control,
                metrics,
                if quiet { -1 } else { verbose.min(9) as i8 },
            ),
        ),
        Command::Status {
            control,
            json,
            home,
        } => {
            let path = match control {
                Some(p) => p,
                None => home.dir()?.join("control.sock"),
            };
            cmd_status(&path, json)
        }
        Command::Push {
            src,
            dest,
            peer_id,
            delete,
            delete_excluded,
            max_delete,
            quiet,
            itemize_changes,
            verbose,
            null,
            bwlimit,
            compress_level,
            dry_run,
            json,
            timeout,
            connect_timeout,
            verify_dest,
            progress,
            no_progress,
            continuous,
            home,
            filters,
        } => {
            let opts = PushArgs {
                peer_id,
                json,
                quiet,
                null,
                progress: progress || (!no_progress && std::io::stderr().is_terminal()),
                push: syncd::push::PushOptions {
                    delete,
                    delete_excluded,
                    max_delete: max_delete.unwrap_or(0),
                    itemize: itemize_changes || verbose,
                    dry_run,
                    scan: options(&home.dir()?, &filters),
                    bwlimit: bwlimit
                        .as_ref()
                        .and_then(|b| b.rate_at(syncd::bwlimit::local_now())),
                    scavenger: bwlimit.as_ref().is_some_and(|b| b.is_auto()),
                    compress_level,
                    progress: None,
                    verify_dest,
                    connect_timeout,
                    idle_timeout: timeout,
                },
            };
            if let Some(b) = &bwlimit {
                let local = matches!(syncd::dest::parse(&dest), Ok(syncd::dest::Dest::Local(_)));
                b.check_dest(!local)?;
            }
            let table = match bwlimit {
                Some(syncd::bwlimit::BwLimit::Timetable(t)) => Some(t),
                _ => None,
            };
            if continuous.watch {
                return cmd_watch(&src, &dest, &home.dir()?, opts, continuous, table);
            }
            cmd_push(&src, &dest, &home.dir()?, opts, table)
        }
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
            null,
            home,
            filters,
        } => cmd_diff(&a, &b, (json, null), cached, &home.dir()?, &filters),
        Command::Verify { dir, json, home } => cmd_verify(&dir, json, &home.dir()?),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "syncd", &mut std::io::stdout().lock());
            Ok(Outcome::Ok)
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd).render(&mut std::io::stdout().lock())?;
            Ok(Outcome::Ok)
        }
    }
}

fn options(home: &Path, filters: &Filters) -> ScanOptions {
    ScanOptions {
        // `with_rules` compiled them already.
        filter: syncd::filter::Filter::new(filters.rules.clone()).unwrap_or_default(),
        gitignore: filters.filter_gitignore,
        params: Default::default(),
        exclude_path: std::fs::canonicalize(home).ok(),
        // This home's own part files are never part of a tree (a DEST it receives into
        // may be scanned here too).
        parts: syncd::partname::PartKey::load(home).ok(),
        changed_only: None,
        owners: filters.owners(),
    }
}

/// Opens (or creates, or rebuilds) the store of `dir` and refreshes it.
fn refresh(dir: &Path, home: &Path, filters: &Filters) -> Result<(Store, Summary)> {
    let root = scan::canonical_root(dir)?;
    let store = match Store::open(home, &root, filters.owners())? {
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
            "owners": filters.owners(),
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
    (json, null): (bool, bool),
    cached: bool,
    home: &Path,
    filters: &Filters,
) -> Result<Outcome> {
    let t = Instant::now();
    for dir in [a, b] {
        if !dir.exists() {
            anyhow::bail!("{}: no such directory", dir.display());
        }
    }
    if scan::canonical_root(a)? == scan::canonical_root(b)? {
        // One tree, named twice: identical, unless some of it cannot be read.
        let unreadable = if cached {
            0
        } else {
            refresh(a, home, filters)?.1.errors().count()
        };
        if json {
            let v = json!({"identical": unreadable == 0, "same_tree": true, "unreadable": unreadable, "changes": []});
            writeln!(std::io::stdout().lock(), "{v}")?;
        }
        if unreadable > 0 {
            eprintln!("syncd: {unreadable} entries could not be read (listed above)");
            return Ok(Outcome::Found);
        }
        return Ok(Outcome::Ok);
    }
    let mut unreadable = 0;
    let (sa, sb) = if cached {
        let open = |dir: &Path| -> Result<Store> {
            let root = scan::canonical_root(dir)?;
            Store::open_existing(home, &root, filters.owners())?.with_context(|| {
                format!(
                    "no stored manifest for {}; run `syncd manifest {}` first",
                    dir.display(),
                    dir.display()
                )
            })
        };
        (open(a)?, open(b)?)
    } else {
        // Both refreshes at once: each is parallel, but each also has sequential phases
        // (sorting, rebuilding directory nodes) that the other can overlap.
        let (ra, rb) = std::thread::scope(|s| {
            let tb = s.spawn(|| refresh(b, home, filters));
            let ra = refresh(a, home, filters);
            (ra, tb.join())
        });
        let rb = rb.map_err(|_| anyhow::anyhow!("refreshing {} panicked", b.display()))?;
        let ((sa, suma), (sb, sumb)) = (ra?, rb?);
        unreadable = suma.errors().count() + sumb.errors().count();
        (sa, sb)
    };
    let (na, nb) = (sa.snapshot()?, sb.snapshot()?);
    let changes: Vec<Change> = manifest::diff(&na, &nb)?;
    // Which attributes differ where only metadata does, as a push would report them.
    use syncd::manifest::Nodes as _;
    let attrs: std::collections::HashMap<Vec<u8>, u8> = changes
        .iter()
        .filter(|c| c.kind == manifest::ChangeKind::Metadata)
        .filter_map(|c| {
            let (a, b) = (na.node(&c.path).ok()??, nb.node(&c.path).ok()??);
            let (_, bits) = syncd::proto::classify(Some(&b), &a.into(), false)?;
            Some((c.path.clone(), bits))
        })
        .collect();
    let attrs_of = |c: &Change| attrs.get(&c.path).copied().unwrap_or(0);
    let (ra, rb) = (na.root()?, nb.root()?);
    let secs = t.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if json {
        let v = json!({
            "identical": changes.is_empty() && unreadable == 0,
            "unreadable": unreadable,
            "root_a": ra.map(|h| h.to_hex()),
            "root_b": rb.map(|h| h.to_hex()),
            "seconds": secs,
            "changes": changes.iter().map(|c| change_json(marker(c.kind), attrs_of(c), &c.path)).collect::<Vec<_>>(),
        });
        writeln!(out, "{v}")?;
    } else {
        for c in &changes {
            write_change(&mut out, null, marker(c.kind), attrs_of(c), &c.path)?;
        }
    }
    if unreadable > 0 {
        eprintln!(
            "syncd: {unreadable} entries could not be read (listed above) and were not compared: the trees are not known to be identical"
        );
        return Ok(Outcome::Found);
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
    // The manifest of the mode `syncd manifest` uses here, else the other one.
    let owners = syncd::apply::running_as_root();
    let store = match Store::open_existing(home, &root, owners)? {
        Some(s) => Some(s),
        None => Store::open_existing(home, &root, !owners)?,
    };
    let store = store.with_context(|| {
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

/// The marker of a difference between A (the source) and B (the destination), in the
/// direction `push --dry-run` uses: what DEST lacks or has extra relative to SRC. `+` DEST
/// lacks it (a push creates it), `-` only DEST has it (`--delete` removes it), `M` content
/// differs, `m` only metadata, `T` the type.
fn marker(kind: manifest::ChangeKind) -> char {
    match kind {
        manifest::ChangeKind::Added => '-',
        manifest::ChangeKind::Removed => '+',
        other => other.marker(),
    }
}

/// The changes a push reported, by path.
fn sorted_changes(changes: &[(char, u8, Vec<u8>)]) -> Vec<(char, u8, Vec<u8>)> {
    let mut c = changes.to_vec();
    c.sort_by(|a, b| a.2.cmp(&b.2));
    c
}

/// Writes one listed change: a line ([`change_line`]), or with `null` the marker, a space
/// and the name's raw bytes, ended by NUL.
fn write_change(out: &mut impl Write, null: bool, m: char, attrs: u8, path: &[u8]) -> Result<()> {
    if null {
        write!(out, "{m} ")?;
        out.write_all(path)?;
        out.write_all(b"\0")?;
    } else {
        writeln!(out, "{}", change_line(m, attrs, path))?;
    }
    Ok(())
}

/// One listed change: `m path (mode, mtime)`.
fn change_line(m: char, attrs: u8, path: &[u8]) -> String {
    let names = syncd::proto::codec::attr::names(attrs);
    if names.is_empty() {
        format!("{m} {}", display_path(path))
    } else {
        format!("{m} {} ({})", display_path(path), names.join(", "))
    }
}

/// One listed change in JSON.
fn change_json(m: char, attrs: u8, path: &[u8]) -> serde_json::Value {
    json!({
        "marker": m.to_string(),
        "change": change_word(m),
        "path": display_path(path),
        "attrs": syncd::proto::codec::attr::names(attrs),
    })
}

/// The JSON word for a marker.
fn change_word(marker: char) -> &'static str {
    match marker {
        '+' => "create",
        '-' => "delete",
        'M' => "modify",
        'm' => "metadata",
        'T' => "type",
        _ => "other",
    }
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

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn cmd_init(home: &Path) -> Result<Outcome> {
    let (id, created) = syncd::identity::Identity::load_or_create(home)?;
    let path = syncd::identity::Identity::path_in(home);
    if created {
        eprintln!("syncd: created a new identity in {}", path.display());
    } else {
        eprintln!("syncd: identity already exists in {}", path.display());
    }
    writeln!(std::io::stdout().lock(), "{}", id.peer_id())?;
    Ok(Outcome::Ok)
}

fn cmd_serve(
    root: PathBuf,
    listen: std::net::SocketAddr,
    allow: Vec<syncd::identity::PeerId>,
    home: &Path,
    idle_timeout: std::time::Duration,
    shutdown_timeout: std::time::Duration,
    // Continuous mode's additions: --control, --metrics, and the log verbosity.
    (control, metrics, verbosity): (Option<PathBuf>, Option<std::net::SocketAddr>, i8),
) -> Result<Outcome> {
    syncd::logging::init(verbosity);
    let identity = syncd::identity::Identity::load(home)?;
    let root = scan::canonical_root(&root)?;
    let h = planned(home)?;
    if h.starts_with(&root) || root.starts_with(&h) {
        anyhow::bail!(
            "--root {} and the state directory --home {} overlap: a push with --delete would remove syncd's identity and manifests; choose another --home",
            root.display(),
            home.display()
        );
    }
    let rt = runtime()?;
    let end = rt.block_on(async {
        // Watched before anything else: a signal right after start is not lost.
        // Every SIGINT/SIGTERM is a message: the first stops new pushes and lets the
        // running one finish, the second cuts it off.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot watch SIGINT")?;
        let allowed: Vec<String> = allow.iter().map(|p| p.to_string()).collect();
        let endpoint = syncd::transport::server_endpoint(&identity, listen, allow)?;
        let local = endpoint.local_addr().unwrap_or(listen);
        eprintln!(
            "syncd serve: listening on {local} as {} into {}",
            identity.peer_id(),
            root.display()
        );
        eprintln!("syncd serve: allowed peers: {}", allowed.join(", "));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                if tx.send(()).is_err() {
                    break;
                }
            }
        });
        let log = std::sync::Arc::new(|line: String| {
            if line.contains("failed") || line.contains("rejected") || line.contains("cutting off")
            {
                tracing::warn!("{line}");
            } else {
                tracing::info!("{line}");
            }
        });
        let (mut shared, _unlink) = start_control(control.as_deref(), "serve", 0)?;
        if let Some(addr) = metrics {
            let s = shared.get_or_insert_with(|| {
                syncd::control::Shared::new("serve", syncd::transport::Throttle::new(0))
            });
            syncd::metrics::install(addr, s.clone())?;
            eprintln!("syncd serve: metrics at http://{addr}/metrics");
        }
        let end = syncd::push::serve_with(
            endpoint,
            root,
            home.to_path_buf(),
            rx,
            log,
            idle_timeout,
            shutdown_timeout,
            shared,
        )
        .await?;
        Ok::<_, anyhow::Error>(end)
    })?;
    Ok(match end {
        syncd::push::ServeEnd::Clean => Outcome::Ok,
        syncd::push::ServeEnd::CutOff => Outcome::Found,
    })
}

struct PushArgs {
    peer_id: Option<syncd::identity::PeerId>,
    json: bool,
    quiet: bool,
    null: bool,
    progress: bool,
    push: syncd::push::PushOptions,
}

/// `path` made absolute and canonical as far as it exists (a DEST may not exist yet).
fn planned(path: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(path).with_context(|| format!("{}", path.display()))?;
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(p), Some(n)) => {
                rest.push(n.to_owned());
                existing = p;
            }
            _ => break,
        }
    }
    let mut out = std::fs::canonicalize(existing).unwrap_or_else(|_| existing.to_path_buf());
    out.extend(rest.iter().rev());
    Ok(out)
}

/// Refuses the pushes that would copy a tree into itself, delete the source, or delete
/// syncd's own state: DEST equal to or inside SRC, SRC inside DEST with --delete, and a
/// DEST that is, contains or lies inside `--home`.
fn check_local_push(src: &Path, dest: &Path, home: &Path, delete: bool) -> Result<()> {
    let (s, d, h) = (planned(src)?, planned(dest)?, planned(home)?);
    if d == s {
        anyhow::bail!("DEST {} is SRC itself", dest.display());
    }
    if d.starts_with(&s) {
        anyhow::bail!(
            "DEST {} is inside SRC {}: the push would copy its own output; choose a DEST outside SRC",
            dest.display(),
            src.display()
        );
    }
    if delete && s.starts_with(&d) {
        anyhow::bail!(
            "SRC {} is inside DEST {}: --delete would remove the source itself",
            src.display(),
            dest.display()
        );
    }
    if h.starts_with(&d) || d.starts_with(&h) {
        anyhow::bail!(
            "DEST {} and the state directory --home {} overlap: a push there would overwrite or delete syncd's identity and manifests; choose another DEST or --home",
            dest.display(),
            home.display()
        );
    }
    Ok(())
}

fn cmd_push(
    src: &Path,
    dest: &str,
    home: &Path,
    mut args: PushArgs,
    table: Option<syncd::timetable::Timetable>,
) -> Result<Outcome> {
    let dest = syncd::dest::parse(dest)?;
    // A single file is pushed like rsync's `rsync FILE DIR/`: its directory is the tree,
    // and the filter lets only that file through (nothing else is sent or deleted).
    let meta = std::fs::metadata(src).with_context(|| format!("SRC {}", src.display()))?;
    let single;
    let src = if meta.is_file() {
        let (Some(parent), Some(name)) = (src.parent(), src.file_name()) else {
            anyhow::bail!("SRC {}: cannot tell its directory", src.display());
        };
        if let syncd::dest::Dest::Local(d) = &dest
            && !(d.as_os_str().as_encoded_bytes().ends_with(b"/") || d.is_dir())
        {
            anyhow::bail!(
                "SRC {} is a file: DEST must be the directory to put it in (end it with /, e.g. {}/); syncd does not rename a file as it copies it",
                src.display(),
                d.display()
            );
        }
        let name = name.to_string_lossy().into_owned();
        let mut rules = args.push.scan.filter.rules().to_vec();
        rules.extend(syncd::filter::files_from_rules(&[name]));
        args.push.scan.filter = syncd::filter::Filter::new(rules)?;
        single = if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent.to_path_buf()
        };
        single.as_path()
    } else {
        src
    };
    if let syncd::dest::Dest::Local(d) = &dest {
        check_local_push(src, d, home, args.push.delete)?;
    }
    let rt = runtime()?;
    // Progress: a bar on a terminal; otherwise (--progress into a file or a pipe) one
    // plain line every 2 seconds.
    let tty = std::io::stderr().is_terminal();
    let bar = (args.progress && tty).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
        bar
    });
    if args.progress {
        let b = bar.clone();
        let start = Instant::now();
        let last_line = std::sync::Mutex::new(Instant::now());
        args.push.progress = Some(syncd::push::Progress(std::sync::Arc::new(
            move |s: &syncd::push::Sent| {
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                let rate = match (s.wire as f64 / secs) as u64 {
                    0 => "0 bit/s".to_string(),
                    r => syncd::rate::Rate::from_bytes_per_sec(r).to_string(),
                };
                // What is left is at most the scanned bytes not sent yet (less, where DEST
                // already has chunks), so the estimate is an upper bound.
                let eta = match s.raw as f64 / secs {
                    r if r > 0.0 => format!(
                        ", ETA at most {:.0}s",
                        s.scanned_bytes.saturating_sub(s.raw) as f64 / r
                    ),
                    _ => String::new(),
                };
                let line = format!(
                    "sent {} of at most {} ({} files scanned), {rate} on the wire{eta}",
                    human_bytes(s.raw),
                    human_bytes(s.scanned_bytes),
                    s.scanned_files,
                );
                match &b {
                    Some(b) => {
                        b.set_length(s.scanned_bytes.max(s.raw));
                        b.set_position(s.raw);
                        b.set_message(line);
                    }
                    None => {
                        let mut l = last_line.lock().unwrap_or_else(|p| p.into_inner());
                        if l.elapsed() >= std::time::Duration::from_secs(2) {
                            *l = Instant::now();
                            eprintln!("syncd: {:.0}s: {line}", secs);
                        }
                    }
                }
            },
        )));
    }
    let remote = matches!(dest, syncd::dest::Dest::Remote { .. });
    let t = Instant::now();
    let result = rt.block_on(async {
        match &dest {
            syncd::dest::Dest::Local(d) => syncd::push::push_local(src, d, home, &args.push)
                .await
                .map_err(anyhow::Error::from),
            syncd::dest::Dest::Remote { host, port } => {
            let dest = format!("{host}:{port}");
            let addr = tokio::net::lookup_host((host.as_str(), *port))
                .await
                .with_context(|| format!("cannot resolve the receiver's host name {host:?}"))?
                .next()
                .with_context(|| format!("{host}: no address found"))?;
            let peer_id = args.peer_id.with_context(|| {
                format!("--peer-id is required to push to {dest}: run `syncd id` on the receiver and pass it here (syncd never trusts on first use)")
            })?;
            let identity = syncd::identity::Identity::load(home)?;
            // A timetable's slots change the throttle's rate while the push runs.
            let throttle = syncd::transport::Throttle::new(args.push.bwlimit.unwrap_or(0));
            let follow = table.map(|t| {
                tokio::spawn(syncd::bwlimit::follow(t, throttle.clone(), None)).abort_handle()
            });
            let throttle = (args.push.bwlimit.is_some() || follow.is_some()).then_some(throttle);
            let pushed = syncd::push::push_remote_throttled(src, addr, &peer_id, &identity, home, &args.push, throttle, None)
                .await
                .map_err(anyhow::Error::from);
            if let Some(f) = follow {
                f.abort();
            }
            pushed
            }
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let (report, summary) = result?;
    for w in &summary.warnings {
        if !(args.quiet && w.skipped_special) {
            eprintln!("syncd: warning: {w}");
        }
    }
    for (p, why) in &report.unsettled {
        eprintln!(
            "syncd: warning: {}: {why}",
            src.join(display_path(p)).display()
        );
    }
    // Entries the source has but could not read are not in its manifest, so the receiver's
    // root may well equal it: that is not "identical". They were kept as they were at the
    // destination (never deleted), and the push says so and exits 1.
    let unreadable = summary.errors().count() + report.unsettled.len();
    let secs = t.elapsed().as_secs_f64();
    let ratio = if report.bytes_encoded > 0 {
        report.bytes_sent as f64 / report.bytes_encoded as f64
    } else {
        1.0
    };
    let mut out = std::io::stdout().lock();
    if args.push.dry_run {
        let mut changes = report.changes.clone();
        changes.sort_by(|a, b| a.2.cmp(&b.2));
        if args.json {
            let v = json!({
                "dry_run": true,
                "identical": changes.is_empty(),
                "root": report.root.to_hex(),
                "changes": changes.iter().map(|(m, a, p)| change_json(*m, *a, p)).collect::<Vec<_>>(),
            });
            writeln!(out, "{v}")?;
        } else {
            for (m, a, p) in &changes {
                write_change(&mut out, args.null, *m, *a, p)?;
            }
        }
        if unreadable > 0 {
            eprintln!(
                "syncd: {unreadable} source entries could not be read (listed above): a push would not send them"
            );
            return Ok(Outcome::Found);
        }
        return Ok(if changes.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Found
        });
    }
    if args.json {
        let v = json!({
            "files_scanned": report.files_scanned,
            "bytes_scanned": report.bytes_scanned,
            "files_transferred": report.files_transferred,
            "chunks_sent": report.chunks_sent,
            "bytes_sent": report.bytes_sent,
            "bytes_encoded": report.bytes_encoded,
            "wire_bytes": report.wire_bytes,
            "chunks_deduplicated": report.chunks_deduplicated,
            "bytes_deduplicated": report.bytes_deduplicated,
            "compression_ratio": ratio,
            "removed": report.removed,
            "changes": sorted_changes(&report.changes).iter().map(|(m, a, p)| change_json(*m, *a, p)).collect::<Vec<_>>(),
            "seconds": secs,
            "root": report.root.to_hex(),
            "receiver_root": report.receiver_root.to_hex(),
            "identical": report.identical() && unreadable == 0,
            "unreadable": summary.errors().map(|w| w.path.display().to_string()).chain(report.unsettled.iter().map(|(p, _)| display_path(p))).collect::<Vec<_>>(),
            "owners": args.push.scan.owners,
        });
        writeln!(out, "{v}")?;
    } else {
        for (m, a, p) in sorted_changes(&report.changes) {
            write_change(&mut out, args.null, m, a, &p)?;
        }
        if !args.quiet {
            // A sentence: what was written, what travelled, what was already there.
            let travelled = if remote {
                format!(
                    "sent {} ({} on the wire{})",
                    human_bytes(report.bytes_sent),
                    human_bytes(report.wire_bytes),
                    if ratio > 1.005 {
                        format!(", compressed {ratio:.2}x")
                    } else {
                        String::new()
                    }
                )
            } else {
                format!("copied {}", human_bytes(report.bytes_sent))
            };
            writeln!(
                out,
                "pushed {} files ({}) in {:.2}s: wrote {} files, {travelled}, reused {} already at DEST, removed {} entries",
                report.files_scanned,
                human_bytes(report.bytes_scanned),
                secs,
                report.files_transferred,
                human_bytes(report.bytes_deduplicated),
                report.removed,
            )?;
            writeln!(
                out,
                "root {} {}",
                report.root,
                if report.identical() && unreadable == 0 {
                    "(DEST is identical)"
                } else {
                    "(DEST differs)"
                },
            )?;
        }
    }
    if unreadable > 0 {
        eprintln!(
            "syncd: {unreadable} source entries could not be read consistently (listed above); they were not sent, and DEST keeps its copies of them"
        );
        return Ok(Outcome::Found);
    }
    if !report.identical() {
        eprintln!(
            "syncd: the receiver's root {} differs from the source's {}: it keeps entries the source lacks (use --delete) or the source changed during the push (push again)",
            report.receiver_root, report.root
        );
        return Ok(Outcome::Found);
    }
    Ok(Outcome::Ok)
}

// ------------------------------------------------------------------ continuous mode

/// Binds and serves the control socket at `path` (if given) for a daemon of `role`; the
/// socket file is removed when the returned guard drops. Needs a runtime.
fn start_control(
    path: Option<&Path>,
    role: &str,
    bwlimit: u64,
) -> Result<(
    Option<std::sync::Arc<syncd::control::Shared>>,
    Option<syncd::control::Unlink>,
)> {
    let Some(path) = path else {
        return Ok((None, None));
    };
    let shared = syncd::control::Shared::new(role, syncd::transport::Throttle::new(bwlimit));
    let listener = syncd::control::bind(path)?;
    tokio::spawn(syncd::control::serve(
        listener,
        path.to_path_buf(),
        shared.clone(),
    ));
    eprintln!("syncd {role}: control socket at {}", path.display());
    Ok((
        Some(shared),
        Some(syncd::control::Unlink(path.to_path_buf())),
    ))
}

fn cmd_watch(
    src: &Path,
    dest: &str,
    home: &Path,
    args: PushArgs,
    c: Continuous,
    table: Option<syncd::timetable::Timetable>,
) -> Result<Outcome> {
    // Levels from RUST_LOG (push's -v/-q belong to its one-shot output).
    syncd::logging::init(0);
    let rt = runtime()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("cannot watch SIGTERM")?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .context("cannot watch SIGINT")?;
        let target = if dest.contains('/') {
            syncd::watch::Dest::Local(PathBuf::from(dest))
        } else {
            let addr = tokio::net::lookup_host(dest)
                .await
                .with_context(|| {
                    format!("DEST {dest:?} is neither HOST:PORT nor a directory path containing '/' (write ./{dest} for a local directory)")
                })?
                .next()
                .with_context(|| format!("{dest}: no address found"))?;
            let peer_id = args.peer_id.with_context(|| {
                format!("--peer-id is required to push to {dest}: run `syncd id` on the receiver and pass it here (syncd never trusts on first use)")
            })?;
            let identity = Box::new(syncd::identity::Identity::load(home)?);
            syncd::watch::Dest::Remote { addr, peer_id, identity }
        };
        let bwlimit = args.push.bwlimit.unwrap_or(0);
        let (shared, _unlink) = start_control(c.control.as_deref(), "push", bwlimit)?;
        let shared = shared.unwrap_or_else(|| {
            syncd::control::Shared::new("push", syncd::transport::Throttle::new(bwlimit))
        });
        shared.update(|s| s.scavenger = args.push.scavenger);
        if let Some(t) = table {
            tokio::spawn(syncd::bwlimit::follow(t, shared.throttle().clone(), Some(shared.clone())));
        }
        if let Some(addr) = c.metrics {
            syncd::metrics::install(addr, shared.clone())?;
            eprintln!("syncd push: metrics at http://{addr}/metrics");
        }
        let wopts = syncd::watch::WatchOptions {
            debounce: c.debounce,
            rescan_interval: c.rescan_interval,
        };
        eprintln!("syncd push: watching {} -> {dest}", src.display());
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        syncd::watch::watch(src, target, home, args.push, wopts, shared, stop).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(Outcome::Ok)
}

fn cmd_status(path: &Path, json: bool) -> Result<Outcome> {
    let s = syncd::control::Client::connect(path)?.status()?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(&s)?)?;
    } else {
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        writeln!(
            out,
            "{} {}",
            s.role,
            if s.converged {
                "converged"
            } else {
                "not converged"
            }
        )?;
        writeln!(out, "local root  {}", s.local_root)?;
        writeln!(out, "peer root   {}", opt(&s.peer_root))?;
        writeln!(
            out,
            "pending     {} files, {}{}",
            s.pending_files,
            human_bytes(s.pending_bytes),
            s.lag_seconds
                .map(|l| format!(", lag {l:.3}s"))
                .unwrap_or_default()
        )?;
        writeln!(
            out,
            "rate        {}/s, bwlimit {}",
            human_bytes(s.rate_bytes_per_sec as u64),
            s.bwlimit
                .map(|b| format!("{}/s", human_bytes(b)))
                .unwrap_or_else(|| "none".into())
        )?;
        if let Some(slot) = &s.bwlimit_slot {
            writeln!(out, "timetable   slot {slot} in force")?;
        }
        if s.scavenger {
            writeln!(out, "congestion  scavenger (--bwlimit auto, LEDBAT)")?;
        }
        writeln!(
            out,
            "reconnects  {}{}",
            s.reconnects,
            if s.paused { ", paused" } else { "" }
        )?;
        if let Some(e) = &s.last_error {
            writeln!(out, "last error  {e}")?;
        }
    }
    Ok(if s.converged {
        Outcome::Ok
    } else {
        Outcome::Found
    })
}
