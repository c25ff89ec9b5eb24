//! The `cutover` binary: parses the command line, runs one command of the library, prints its
//! report as text or JSON, and maps the outcome to the exit code.
//!
//! Exit codes: 0 ok; 1 a check found a difference or a failure (broken replication, differing
//! checksums, a promotion that was refused or aborted and undone); 2 a usage or runtime error,
//! printed as one line on stderr. It holds no logic of its own beyond formatting.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use cutover::db;
use cutover::runbook::Runbook;

/// Go-time migration, driven by a TOML runbook.
///
/// The `[database]` table of the runbook names a source (the current primary) and a replica
/// (the destination). `cutover db setup` builds the replica, `status` watches it, `promote`
/// switches the primary without losing acknowledged writes, and `verify` compares the data.
///
/// Exit codes: 0 ok, 1 a check found a difference or a failure, 2 usage or runtime error.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

const DB_EXAMPLE: &str = "\
Runbook example ([database] table; durations like \"30s\" or \"500ms\"):

  [database]
  source   = \"mysql://root:pw@10.0.0.1:3306\"   # the current primary
  replica  = \"mysql://root:pw@10.0.0.2:3306\"   # the destination, to be promoted
  replication_user = \"repl\"
  replication_password = \"secret\"            # or replication_password_file
  source_address_for_replica = \"10.0.0.1:3306\" # optional
  catch_up_timeout = \"30s\"                    # promote: wait for the final position
  fence_grace = \"200ms\"                       # promote: before ending sessions (MariaDB)
  max_lag_at_fence = 100                      # promote: fence once at most this far behind
  verify_tables = [\"app.*\"]                   # verify: schema.table, * matches any run

Typical order: setup, status (until lag is ~0), verify, promote --reverse, status.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Database switch-over: replica setup, status, zero-loss promotion, checksums.
    #[command(subcommand, after_long_help = DB_EXAMPLE)]
    Db(DbCommand),
}

#[derive(Debug, Subcommand)]
enum DbCommand {
    /// Make the replica a running, read-only copy of the source.
    ///
    /// Checks the source (binary log on, binlog_format=ROW, distinct server_ids), creates the
    /// replication user, seeds an empty replica from a consistent mariadb-dump/mysqldump of the
    /// source with the position recorded, starts GTID replication, waits until both threads run,
    /// and sets the replica read_only. Safe to run again on a pair that already replicates.
    Setup {
        /// The runbook (TOML) with a [database] table.
        runbook: PathBuf,
        /// Seed a replica that already holds data or replicates from elsewhere: its replication
        /// configuration and binary log are reset, the source's schemas are dropped and
        /// re-created on it; its other schemas are left alone.
        #[arg(long)]
        force: bool,
    },
    /// Show replication threads, errors, positions and lag; exit 1 when replication is broken.
    ///
    /// Lag is measured by position (GTID transactions and binlog bytes behind) and by a
    /// heartbeat row written on the source and read back on the replica, never by
    /// Seconds_Behind_Master.
    Status {
        /// The runbook (TOML) with a [database] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Promote the replica to primary without losing acknowledged writes.
    ///
    /// Waits until the replica is at most database.max_lag_at_fence transactions behind, fences
    /// the source so that no session can write, root included (read_only; on MariaDB the
    /// remaining client sessions are ended after at most database.fence_grace and a global read
    /// lock is held), waits for the replica to apply the source's final position
    /// (database.catch_up_timeout), then stops replication and makes the replica writable, and
    /// proves that the old source is still at the promoted position (exit 1 if not). Any
    /// failure before the switch is undone: the source is writable again and the replica
    /// keeps replicating. Reports the write-unavailable window in milliseconds.
    Promote {
        /// The runbook (TOML) with a [database] table.
        runbook: PathBuf,
        /// Afterwards, make the old source a read-only replica of the new primary, so that a
        /// rollback keeps the writes made after the switch.
        #[arg(long)]
        reverse: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Checksum database.verify_tables on both sides at the same replication point.
    ///
    /// Tables are cut into primary-key ranges of database.chunk_rows rows; each range is
    /// summarised by COUNT(*) and BIT_XOR(CRC32(...)) on both servers. Works while the source
    /// takes writes: the replica's applier is stopped at the position of a consistent snapshot
    /// of the source. Exits 1 and names the table and key range of every chunk that differs.
    Verify {
        /// The runbook (TOML) with a [database] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line: the chain of causes, skipping a cause its parent already quoted.
            let mut line = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !line.ends_with(&cause) {
                    if !line.is_empty() {
                        line.push_str(": ");
                    }
                    line.push_str(&cause);
                }
            }
            eprintln!("cutover: error: {}", line.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

fn load(path: &Path) -> anyhow::Result<cutover::runbook::Database> {
    let runbook = Runbook::load(path)?;
    Ok(runbook.database(path)?.clone())
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let Command::Db(cmd) = cli.command;
    rt.block_on(async {
        match cmd {
            DbCommand::Setup { runbook, force } => {
                let db = load(&runbook)?;
                let report = finish(db::setup::setup(&db, force).await, "db setup")?;
                let Some(report) = report else { return Ok(1) };
                println!("setup: {}", report.dialect);
                for s in &report.steps {
                    println!("  {s}");
                }
                println!("replica is replicating and read-only");
                Ok(0)
            }
            DbCommand::Status { runbook, json } => {
                let db = load(&runbook)?;
                let Some(report) = finish(db::status::status(&db).await, "db status")? else {
                    return Ok(1);
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_status(&report);
                }
                Ok(if report.ok { 0 } else { 1 })
            }
            DbCommand::Promote {
                runbook,
                reverse,
                json,
            } => {
                let db = load(&runbook)?;
                let Some(report) = finish(db::promote::promote(&db, reverse).await, "db promote")?
                else {
                    return Ok(1);
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_promote(&report);
                }
                Ok(if report.ok { 0 } else { 1 })
            }
            DbCommand::Verify { runbook, json } => {
                let db = load(&runbook)?;
                let Some(report) = finish(db::verify::verify(&db).await, "db verify")? else {
                    return Ok(1);
                };
                if json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print_verify(&report);
                }
                Ok(if report.ok { 0 } else { 1 })
            }
        }
    })
}

/// A refused operation is a finding (exit 1, printed on stdout); other errors are runtime
/// errors (exit 2, one line on stderr).
fn finish<T>(r: Result<T, db::DbError>, what: &str) -> anyhow::Result<Option<T>> {
    match r {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.exit_code() == 1 => {
            println!("cutover {what}: refused: {e}");
            Ok(None)
        }
        Err(e) => Err(anyhow::Error::new(e).context(format!("cutover {what}"))),
    }
}

fn print_status(r: &db::status::StatusReport) {
    match (&r.problem, &r.promoted) {
        (None, _) => println!("replication: OK ({})", r.dialect),
        (Some(_), Some(p)) => println!("replication: PROMOTED: {p}"),
        (Some(p), None) => println!("replication: BROKEN: {p}"),
    }
    let binlog = r
        .source_binlog
        .as_ref()
        .map(|(f, p)| format!(" binlog {f}:{p}"))
        .unwrap_or_default();
    println!(
        "  source  position {}{binlog} read_only={}",
        r.source_position,
        u8::from(r.source_read_only)
    );
    println!(
        "  replica applied {} read_only={}",
        r.replica_applied.as_deref().unwrap_or("-"),
        u8::from(r.replica_read_only)
    );
    if let Some(s) = &r.replication {
        let thread = |t: &db::position::ThreadStatus| {
            let state = format!("{:?}", t.state).to_lowercase();
            if t.last_errno == 0 {
                state
            } else {
                format!("{state} (error {}: {})", t.last_errno, t.last_error)
            }
        };
        println!(
            "  from {}:{}  IO thread {}  SQL thread {}",
            s.source_host,
            s.source_port,
            thread(&s.io),
            thread(&s.sql)
        );
    }
    let tx = r
        .transactions_behind
        .map_or("-".to_string(), |n| n.to_string());
    let bytes = r.bytes_behind.map_or("-".to_string(), |n| n.to_string());
    let hb = r
        .heartbeat_lag_seconds
        .map_or("-".to_string(), |s| format!("{s:.3} s"));
    let reported = r
        .replication
        .as_ref()
        .and_then(|s| s.seconds_behind_reported)
        .map_or("NULL".to_string(), |s| s.to_string());
    println!(
        "  lag: {tx} transactions, {bytes} bytes behind; heartbeat {hb} \
         (Seconds_Behind_Master says {reported}, not used)"
    );
    if let Some(n) = &r.heartbeat_note {
        println!("  note: {n}");
    }
    if !r.source_privileged_sessions.is_empty() {
        println!(
            "  note: source sessions that read_only does not stop (SUPER/READ_ONLY ADMIN): {}",
            r.source_privileged_sessions.join(", ")
        );
    }
}

fn print_promote(r: &db::promote::PromoteReport) {
    use db::promote::PromoteOutcome;
    for s in &r.steps {
        println!("  {s}");
    }
    match &r.outcome {
        PromoteOutcome::Promoted {
            write_unavailable_ms,
            final_position,
            sessions_ended,
            proof,
            reverse,
            reverse_failed,
            ..
        } => {
            println!("proof: {proof}");
            println!(
                "promoted: the replica is the primary at {final_position}; write-unavailable \
                 window {write_unavailable_ms} ms; {sessions_ended} session(s) ended on the source"
            );
            if let Some(r) = reverse {
                println!("reverse: {r}");
            }
            if let Some(f) = reverse_failed {
                println!("reverse FAILED: {f}");
            }
        }
        PromoteOutcome::Refused { reason } => println!("promotion refused: {reason}"),
        PromoteOutcome::Aborted {
            reason,
            undone,
            fenced_ms,
        } => println!(
            "promotion ABORTED after {fenced_ms} ms fenced: {reason}. Undone: {}",
            undone.join("; ")
        ),
    }
}

fn print_verify(r: &db::verify::VerifyReport) {
    println!("verify: {}", r.method);
    for t in &r.tables {
        let state = match (&t.problem, t.matches) {
            (Some(p), _) => format!("DIFFERS: {p}"),
            (None, true) => "ok".to_string(),
            (None, false) => "DIFFERS".to_string(),
        };
        println!(
            "  {}: {} rows, {} chunks: {state}",
            t.table, t.rows, t.chunks
        );
    }
    for d in &r.differences {
        println!("  {d}");
    }
    let rate = if r.seconds > 0.0 {
        r.rows as f64 / r.seconds
    } else {
        0.0
    };
    println!(
        "{}: {} rows in {:.2} s ({rate:.0} rows/s)",
        if r.ok { "identical" } else { "DIFFERENT" },
        r.rows,
        r.seconds
    );
}
