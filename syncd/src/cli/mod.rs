//! The command line as clap types (the CLI contract of `shared/design.md`), and the
//! filter rules put together in command-line order.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

mod output;
mod push;
mod tree;
mod watch;

pub(crate) use output::*;
pub(crate) use push::*;
pub(crate) use tree::*;
pub(crate) use watch::*;

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
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// `--version`: the build and the wire protocol it speaks (both sides of a push must
/// speak the same one).
pub(crate) const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (protocol ",
    // Checked against `syncd::proto::VERSION` by the test `version_names_the_protocol`.
    "8",
    ")"
);

#[derive(Args, Debug, Clone)]
pub(crate) struct Home {
    /// State directory (manifests, identity, part-file key). Never inside a synced tree:
    /// a push or serve whose tree overlaps it is refused.
    /// Default: /var/lib/syncd as root, else $XDG_DATA_HOME/syncd (~/.local/share/syncd).
    #[arg(long, env = "SYNCD_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,
}

impl Home {
    pub(crate) fn dir(&self) -> Result<PathBuf> {
        match &self.home {
            Some(h) => Ok(h.clone()),
            None if syncd::fsmeta::running_as_root() => Ok(PathBuf::from("/var/lib/syncd")),
            None => dirs::data_dir()
                .map(|d| d.join("syncd"))
                .context("cannot find the user's data directory; pass --home DIR"),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub(crate) struct Filters {
    /// Leave out entries matching PAT; repeatable. rsync's rules: `*.tmp` or `cache/` match
    /// the last component anywhere (a trailing `/` only directories), `app/x.conf` the end
    /// of the path, `/run` only at the tree root; `**` crosses `/`. With --include, the
    /// first rule that matches wins, in command-line order. An excluded path is neither
    /// sent nor deleted at DEST (unless --delete-excluded). Nothing is excluded by default:
    /// a migration copies everything.
    #[arg(long, value_name = "PAT")]
    pub(crate) exclude: Vec<String>,
    /// Keep entries matching PAT even where a later --exclude matches (rsync's --include).
    #[arg(long, value_name = "PAT")]
    pub(crate) include: Vec<String>,
    /// Read --exclude patterns from FILE, one per line (blank lines and lines starting with
    /// `#` or `;` are skipped; a line `+ PAT` is an --include).
    #[arg(long, value_name = "FILE")]
    pub(crate) exclude_from: Vec<PathBuf>,
    /// Read --include patterns from FILE, one per line (a line `- PAT` is an --exclude).
    #[arg(long, value_name = "FILE")]
    pub(crate) include_from: Vec<PathBuf>,
    /// Only the paths listed in FILE (one per line, relative to SRC; `-` is stdin), their
    /// parent directories and, for a directory, what is in it; nothing else is sent or
    /// deleted.
    #[arg(long, value_name = "FILE")]
    pub(crate) files_from: Option<PathBuf>,
    /// The rules above in command-line order (filled in after parsing).
    #[arg(skip)]
    pub(crate) rules: Vec<syncd::filter::Rule>,
    /// Honour .gitignore / .ignore / .git/info/exclude files in the tree. Off by default.
    #[arg(long)]
    pub(crate) filter_gitignore: bool,
    /// Leave owner, group, ACLs and xattrs outside user.* out of the comparison (and, for
    /// push, do not ask the receiver to make them equal). This is the default when not
    /// running as root, since only root can set them; as root they are compared, and a push
    /// makes them equal, so a receiver must then run as root too.
    #[arg(long)]
    pub(crate) no_owner: bool,
}

impl Filters {
    /// Whether owners and all xattrs are part of the manifest: as root, unless --no-owner.
    pub(crate) fn owners(&self) -> bool {
        !self.no_owner && syncd::fsmeta::running_as_root()
    }
}

// `Push` carries every flag of a push; the value is built once per run and never moved
// around, so its size costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub(crate) enum Command {
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
        /// Print only errors (no summary, no warnings about skipped special files). With
        /// --watch: log only warnings and errors.
        #[arg(short, long, conflicts_with_all = ["itemize_changes", "verbose"])]
        quiet: bool,
        /// List every path the push creates (`+`), changes (`M`), re-attributes (`m`, with
        /// which attributes: mode, mtime, owner/xattrs, link), retypes (`T`) or deletes
        /// (`-`), as `syncd diff` marks them. Names are escaped (`\n`, `\xff`); --json
        /// carries them in `changes`.
        #[arg(short = 'i', long)]
        itemize_changes: bool,
        /// Verbose: --itemize-changes. With --watch: log each batch (debug level).
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
pub(crate) struct Continuous {
    /// After the first push, keep watching SRC (inotify) and push each batch of changes,
    /// until SIGTERM/SIGINT. Failed pushes are retried with a backoff.
    #[arg(long)]
    pub(crate) watch: bool,
    /// With --watch: quiet time after a change before its batch is pushed.
    #[arg(long, value_name = "DUR", default_value = "20ms", value_parser = humantime::parse_duration, requires = "watch")]
    pub(crate) debounce: std::time::Duration,
    /// With --watch: rescan the whole tree this often as a safety net (a stat walk).
    #[arg(long, value_name = "DUR", default_value = "10m", value_parser = humantime::parse_duration, requires = "watch")]
    pub(crate) rescan_interval: std::time::Duration,
    /// With --watch: serve a control socket (mode 0600) here, for `syncd status` and
    /// `cutover` (status, final-sync, set-bwlimit, pause, resume).
    #[arg(long, value_name = "PATH", requires = "watch")]
    pub(crate) control: Option<PathBuf>,
    /// With --watch: serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9701).
    #[arg(long, value_name = "ADDR", requires = "watch")]
    pub(crate) metrics: Option<std::net::SocketAddr>,
}

/// Fills in the subcommand's [`Filters::rules`]: --include, --exclude and the rules of
/// --include-from/--exclude-from in the order they were given (rsync's first match wins),
/// then those of --files-from.
pub(crate) fn with_rules(mut cli: Cli, matches: &clap::ArgMatches) -> Result<Cli> {
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
pub(crate) fn read_list(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        return std::io::read_to_string(std::io::stdin())
            .context("cannot read the list from stdin");
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}
