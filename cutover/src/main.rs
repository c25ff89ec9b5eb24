//! The `cutover` binary: parses the command line, runs one command of the library, prints its
//! report as text or JSON, and maps the outcome to the exit code.
//!
//! Exit codes: 0 ok; 1 a check found a difference or a failure (broken replication, differing
//! checksums, a promotion that was refused or aborted and undone, sessions left open by a
//! drain, a destination that stays DOWN, DNS servers that lag or disagree, a failed health
//! check, a service that does not stop or start); 2 a usage or runtime error, printed as one
//! line on stderr. It holds no logic of its own beyond formatting.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use cutover::db;
use cutover::dns;
use cutover::health;
use cutover::lb;
use cutover::runbook::Runbook;
use cutover::service;

mod go;

/// Go-time migration, driven by a TOML runbook.
///
/// Each command group uses one table of the runbook: `db` the [database] pair (setup, status,
/// zero-loss promote, verify), `lb` the HAProxy of [loadbalancer] (drain the source, make the
/// destination ready), `dns` the record of [dns] (TSIG-signed switch and propagation), `health`
/// the [[health]] checks, `service` the [[service]] hooks. `cutover <group> --help` shows an
/// example table.
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
  reverse = true                              # run: promote with --reverse (the default)

Typical order: setup, status (until lag is ~0), verify, promote --reverse, status.";

const LB_EXAMPLE: &str = "\
Runbook example ([loadbalancer] table; durations like \"30s\" or \"500ms\"):

  [loadbalancer]                           # HAProxy's runtime API
  admin_socket = \"/run/haproxy/admin.sock\" # a unix path (with a /), or HOST:PORT; level admin
  backend = \"web\"
  source_server = \"old\"                    # drained
  destination_server = \"new\"               # made ready
  drain_timeout = \"30s\"                    # drain: wait this long for sessions to end
  ready_timeout = \"30s\"                    # ready: wait this long for the health check
  poll_interval = \"200ms\"                  # show stat polling
  timeout = \"5s\"                           # one command's answer

Typical order: status, ready (destination UP), drain (source to maint), status.";

#[derive(Debug, Subcommand)]
enum Command {
    /// Database switch-over: replica setup, status, zero-loss promotion, checksums.
    #[command(subcommand, after_long_help = DB_EXAMPLE)]
    Db(DbCommand),
    /// Load balancer (HAProxy runtime API): drain the source, make the destination ready.
    #[command(subcommand, after_long_help = LB_EXAMPLE)]
    Lb(LbCommand),
    /// DNS switch: TSIG-signed RFC 2136 updates and propagation checks.
    #[command(subcommand, after_long_help = DNS_EXAMPLE)]
    Dns(DnsCommand),
    /// Run the [[health]] checks and print a pass/fail table; exit 1 if any fails.
    ///
    /// Each check has a timeout and may be retried (retries, interval). Kinds: http (status,
    /// body_contains, body_regex, header), tcp, sql (first cell of query = expect), disk
    /// (min_free, bytes or %), memory (least MemAvailable, bytes or %).
    #[command(after_long_help = HEALTH_EXAMPLE)]
    Health {
        /// The runbook (TOML) with [[health]] entries.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Service hooks: stop, start or check the [[service]] entries (all, or NAME).
    #[command(subcommand, after_long_help = SERVICE_EXAMPLE)]
    Service(ServiceCommand),
    /// Go-time: every step of the runbook, journaled, with automatic rollback.
    ///
    /// Steps, each only when its table is present: converge sync ([sync]), drain the source
    /// ([loadbalancer]), stop the source's services ([[service]] side = "source"), zero-loss
    /// promote ([database]; with --reverse unless reverse = false), final sync with equal
    /// roots, start the destination's services (side = "destination"), the destination
    /// ready, the DNS switch and its propagation ([dns]), the health gate ([[health]]).
    /// A failed step or check
    /// rolls back every step that began, in reverse. Every state change is fsynced to a
    /// journal in --state DIR first, so that `cutover rollback` can undo a run killed at any
    /// point. Exit 0 done, 1 rolled back, 2 error (a failed rollback included).
    #[command(after_long_help = RUN_EXAMPLE)]
    Run {
        /// The runbook (TOML).
        runbook: PathBuf,
        /// Print every command, statement and DNS update that would be run; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation (needed without a TTY).
        #[arg(long)]
        yes: bool,
        /// One JSON object per step, then a summary object.
        #[arg(long)]
        json: bool,
        /// Continue the unfinished run in the journal (an interrupted promotion is rolled
        /// back, other steps are done again: they do only what is missing).
        #[arg(long)]
        resume: bool,
        /// The journal's directory (default /var/lib/cutover as root, else the user's data
        /// directory, e.g. ~/.local/share/cutover).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
    },
    /// Print a Markdown migration plan from the runbook and measured state.
    ///
    /// Source and destination with what each server says now, the steps in order with their
    /// commands, data sizes (syncd's status, the database's), an estimate from the measured
    /// sync rate and the record's TTL, a risk score from facts, the rollback derived from the
    /// undo steps, and a success checklist. Changes nothing (beyond `db status`'s heartbeat).
    Plan {
        /// The runbook (TOML).
        runbook: PathBuf,
    },
    /// Check every dependency of the runbook: a pass/fail table; exit 0 all pass, 1 any fails.
    ///
    /// sync: the control socket answers, converged or lag <= max_lag. database: reachable,
    /// binary log on, replica running, lag by position, privileged sessions listed.
    /// loadbalancer: level admin, backend and both servers, the source UP, the destination UP
    /// (or in maint, where HAProxy does not check it). dns: the TSIG key accepted (a
    /// prerequisite-only UPDATE, which changes nothing), the record holds source_address,
    /// TTL <= low_ttl. service: the source's services run. health: reported, never failing
    /// (they are written for the destination). `cutover run` runs it first.
    Preflight {
        /// The runbook (TOML).
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Undo what the journal says an unfinished (or killed) `cutover run` did, in reverse.
    ///
    /// Each undo reads the servers' state first (a killed step may or may not have taken
    /// effect) and uses what the journal recorded (the DNS answer and server states before
    /// the run). A failed undo stops the rollback there; run it again once fixed.
    Rollback {
        /// The runbook (TOML) of the run.
        runbook: PathBuf,
        /// The journal's directory (as for `cutover run`).
        #[arg(long, value_name = "DIR")]
        state: Option<PathBuf>,
        /// One JSON object per step, then a summary object.
        #[arg(long)]
        json: bool,
    },
}

const RUN_EXAMPLE: &str = "\
Typical go-time: cutover plan RUNBOOK, cutover preflight RUNBOOK, cutover run RUNBOOK --dry-run,
cutover run RUNBOOK; if anything went wrong after it, cutover rollback RUNBOOK.

[[service]] entries need side = \"source\" (stopped, started again on rollback) or
side = \"destination\" (started, stopped again on rollback). [sync] takes max_lag = \"5s\",
converge_timeout = \"300s\" and timeout = \"5s\" besides control.";

const SERVICE_EXAMPLE: &str = "\
Runbook example ([[service]] entries; commands run with sh -c, or over ssh -o BatchMode=yes
when host is set):

  [[service]]
  name = \"app\"
  host = \"deploy@10.0.0.1\"        # optional; ssh_port = 22, ssh_options = [\"-i\", \"key\"]
  stop  = \"systemctl stop app\"    # graceful
  start = \"systemctl start app\"
  check = \"systemctl is-active --quiet app\"   # exit 0 while it runs
  kill  = \"systemctl kill -s KILL app\"        # when the stop did not work within wait
  # pid_file = \"/run/app.pid\"     # local only: SIGKILL to its process group instead of kill
  timeout = \"30s\"                 # one command; killed with its process group past it
  wait = \"30s\"                    # how long the check may take to change";

#[derive(Debug, Subcommand)]
enum ServiceCommand {
    /// Graceful stop, then the kill if the check still passes after `wait`; exit 1 unless the
    /// check fails at the end.
    Stop {
        /// The runbook (TOML) with [[service]] entries.
        runbook: PathBuf,
        /// Only this service.
        name: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Start, then wait up to `wait` for the check to pass; exit 1 if it does not.
    Start {
        /// The runbook (TOML) with [[service]] entries.
        runbook: PathBuf,
        /// Only this service.
        name: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the check; exit 1 if a service is not running.
    Status {
        /// The runbook (TOML) with [[service]] entries.
        runbook: PathBuf,
        /// Only this service.
        name: Option<String>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

const HEALTH_EXAMPLE: &str = "\
Runbook example ([[health]] entries; one kind each; durations like \"5s\"):

  [[health]]
  name = \"web\"
  http = \"http://10.0.0.2:8080/health\"
  expect_status = 200                 # default 200
  body_contains = \"ok\"              # optional; or body_regex = \"^ok$\"
  header = \"X-Served-By: new\"       # optional, exact value
  source = \"http://10.0.0.1:8080/health\"  # optional: preflight runs it against the source
  timeout = \"5s\"                    # per attempt, default 5s
  retries = 3                         # default 0
  interval = \"1s\"                   # between attempts, default 1s

  [[health]]
  name = \"db\"
  sql = \"mysql://monitor@10.0.0.2:3306\"  # sql_password_file = \"monitor.pw\" (optional)
  query = \"SELECT 1\"
  expect = \"1\"

  [[health]]
  name = \"port\"
  tcp = \"10.0.0.2:443\"

  [[health]]
  name = \"data disk\"
  disk = \"/var/lib/app\"
  min_free = \"10%\"                  # or \"20GiB\"

  [[health]]
  name = \"memory\"
  memory = \"512MiB\"                 # least MemAvailable, or \"10%\"";

const DNS_EXAMPLE: &str = "\
Runbook example ([dns] table; addresses are IP literals, names are not resolved):

  [dns]
  server = \"10.0.0.53:53\"                   # the primary: receives the signed UPDATE
  zone = \"example.com.\"
  record = \"www.example.com.\"
  source_address = \"10.0.0.1\"               # what the record holds now (A or AAAA)
  destination_address = \"10.0.0.2\"
  ttl = 300                                 # default 300
  low_ttl = 30                              # lower-ttl sets this; default 30
  tsig_key_file = \"cutover.key\"             # BIND format (tsig-keygen); hmac-sha256/512
  check_servers = [\"10.0.0.54:53\"]          # resolvers/servers watched besides the NS set
  check_ns = true                           # watch the zone's NS set too (default true)
  ns_port = 53                              # the port the NS set answers on
  propagation_timeout = \"120s\"
  poll_interval = \"500ms\"
  timeout = \"3s\"                            # one query or update

Typical order: status, lower-ttl (then wait out the old TTL), switch, status.";

#[derive(Debug, Subcommand)]
enum DnsCommand {
    /// Rewrite the record with dns.low_ttl and wait until every server answers it.
    ///
    /// The update keeps the addresses and is conditional on the RRset being what was read.
    /// Reports when the old TTL will have expired in every cache; exits 1 if propagation did
    /// not complete within dns.propagation_timeout.
    LowerTtl {
        /// The runbook (TOML) with a [dns] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replace the record's A/AAAA RRset: source_address becomes destination_address.
    ///
    /// A TSIG-signed RFC 2136 UPDATE with the prerequisite that the record holds exactly
    /// dns.source_address (a record changed behind our back fails with NXRRSET, changing
    /// nothing). Then waits until the primary, dns.check_servers and the zone's NS set all
    /// answer the new address with the same SOA serial; exits 1 with a table of the servers
    /// still lagging if that takes longer than dns.propagation_timeout.
    Switch {
        /// The runbook (TOML) with a [dns] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show every server's answer, TTL and SOA serial; exit 1 if they disagree.
    Status {
        /// The runbook (TOML) with a [dns] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum LbCommand {
    /// Drain the source server, then put it in maint.
    ///
    /// Sets loadbalancer.source_server to drain (no new sessions), polls `show stat` until its
    /// sessions (scur) are 0 or loadbalancer.drain_timeout has passed, then sets it to maint.
    /// Reports the sessions still open and how long the drain took; exits 1 if sessions were
    /// still open.
    Drain {
        /// The runbook (TOML) with a [loadbalancer] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Put the destination server in rotation and wait for HAProxy's health check to say UP.
    ///
    /// Sets loadbalancer.destination_server to ready and waits up to loadbalancer.ready_timeout
    /// for its check to report UP; exits 1 if it stays DOWN. The source is not touched.
    Ready {
        /// The runbook (TOML) with a [loadbalancer] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show both servers' admin state, operational state, sessions and check status; exit 1
    /// when a server in rotation fails its health check.
    Status {
        /// The runbook (TOML) with a [loadbalancer] table.
        runbook: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
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
    match cli.command {
        Command::Db(cmd) => rt.block_on(run_db(cmd)),
        Command::Lb(cmd) => rt.block_on(run_lb(cmd)),
        Command::Dns(cmd) => rt.block_on(run_dns(cmd)),
        Command::Health { runbook, json } => rt.block_on(run_health(&runbook, json)),
        Command::Service(cmd) => rt.block_on(run_service(cmd)),
        Command::Run {
            runbook,
            dry_run,
            yes,
            json,
            resume,
            state,
        } => rt.block_on(go::run(&go::Options {
            runbook,
            dry_run,
            yes,
            json,
            resume,
            state,
        })),
        Command::Plan { runbook } => rt.block_on(go::plan(&runbook)),
        Command::Preflight { runbook, json } => rt.block_on(go::preflight(&runbook, json)),
        Command::Rollback {
            runbook,
            state,
            json,
        } => rt.block_on(go::rollback(&runbook, state, json)),
    }
}

async fn run_service(cmd: ServiceCommand) -> anyhow::Result<u8> {
    let (action, runbook, name, json) = match cmd {
        ServiceCommand::Stop {
            runbook,
            name,
            json,
        } => ("stop", runbook, name, json),
        ServiceCommand::Start {
            runbook,
            name,
            json,
        } => ("start", runbook, name, json),
        ServiceCommand::Status {
            runbook,
            name,
            json,
        } => ("status", runbook, name, json),
    };
    let rb = Runbook::load(&runbook)?;
    let context = format!("cutover service {action}");
    let selected = service::select(&rb.service, name.as_deref()).context(context.clone())?;
    let r = match action {
        "stop" => service::stop(&selected).await,
        "start" => service::start(&selected).await,
        _ => service::status(&selected).await,
    }
    .context(context)?;
    if json {
        print_json(&r)?;
    } else {
        for s in &r.services {
            println!("{}: {}", s.name, s.summary);
            for c in &s.commands {
                let status = if c.timed_out {
                    format!("killed at timeout after {} ms", c.elapsed_ms)
                } else {
                    match (c.exit_code, c.signal) {
                        (Some(code), _) => format!("exit {code}, {} ms", c.elapsed_ms),
                        (None, Some(sig)) => format!("signal {sig}, {} ms", c.elapsed_ms),
                        _ => format!("{} ms", c.elapsed_ms),
                    }
                };
                let on = c
                    .host
                    .as_ref()
                    .map_or(String::new(), |h| format!(" on {h}"));
                println!("  {:<5} `{}`{on}: {status}", c.role, c.command);
                for (label, text) in [("out", &c.stdout), ("err", &c.stderr)] {
                    for line in text.lines().take(5) {
                        println!("        {label}| {line}");
                    }
                }
            }
        }
    }
    Ok(if r.ok { 0 } else { 1 })
}

async fn run_health(path: &Path, json: bool) -> anyhow::Result<u8> {
    let runbook = Runbook::load(path)?;
    if runbook.health.is_empty() {
        anyhow::bail!(
            "runbook {}: health: no [[health]] entries; `cutover health` needs at least one",
            path.display()
        );
    }
    let r = health::run(&runbook.health).await;
    if json {
        print_json(&r)?;
    } else {
        for c in &r.checks {
            let retried = if c.attempts > 1 {
                format!(" after {} attempts", c.attempts)
            } else {
                String::new()
            };
            println!(
                "  {:<4} {:<16} {:<6} {:<32} {}{retried} ({} ms)",
                if c.ok { "PASS" } else { "FAIL" },
                c.name,
                c.kind,
                c.target,
                c.detail,
                c.elapsed_ms
            );
        }
        let passed = r.checks.iter().filter(|c| c.ok).count();
        println!(
            "health: {passed} of {} checks passed{}",
            r.checks.len(),
            if r.ok { "" } else { ": FAILED" }
        );
    }
    Ok(if r.ok { 0 } else { 1 })
}

async fn run_dns(cmd: DnsCommand) -> anyhow::Result<u8> {
    let load = |path: &Path| -> anyhow::Result<cutover::runbook::Dns> {
        Ok(Runbook::load(path)?.dns(path)?.clone())
    };
    let (json, r) = match cmd {
        DnsCommand::Status { runbook, json } => {
            let r = dns::status(&load(&runbook)?)
                .await
                .context("cutover dns status")?;
            if json {
                print_json(&r)?;
            } else {
                println!("{}:", r.record);
                print_dns_servers(&r.servers);
                if !r.consistent {
                    println!("servers DISAGREE (or did not answer)");
                }
            }
            return Ok(if r.consistent { 0 } else { 1 });
        }
        DnsCommand::Switch { runbook, json } => {
            let dns = load(&runbook)?;
            let r = dns::switch(&dns).await.context("cutover dns switch")?;
            (json, r)
        }
        DnsCommand::LowerTtl { runbook, json } => {
            let dns = load(&runbook)?;
            let r = dns::lower_ttl(&dns)
                .await
                .context("cutover dns lower-ttl")?;
            (json, r)
        }
    };
    if json {
        print_json(&r)?;
    } else {
        let addrs = |a: &[std::net::IpAddr]| {
            a.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        if r.already {
            println!(
                "{}: {} already holds {} TTL {} at {}: no update sent",
                r.command,
                r.record,
                addrs(&r.after),
                r.ttl,
                r.server
            );
        } else {
            println!(
                "{}: {} {} TTL {} -> {} TTL {} at {} (serial {})",
                r.command,
                r.record,
                addrs(&r.before),
                r.before_ttl.map_or("-".into(), |t| t.to_string()),
                addrs(&r.after),
                r.ttl,
                r.server,
                r.serial.map_or("-".into(), |s| s.to_string())
            );
        }
        if let Some(s) = r.old_ttl_expires_in_s.filter(|s| *s > 0) {
            let at = std::time::SystemTime::now() + std::time::Duration::from_secs(u64::from(s));
            println!(
                "  the old TTL ({s} s) has expired in every cache by {} (UTC)",
                humantime::format_rfc3339_seconds(at)
            );
        }
        let p = &r.propagation;
        if p.done {
            println!(
                "  propagated to {} server(s) in {} ms",
                p.servers.len(),
                p.waited_ms
            );
        } else {
            println!("  NOT propagated after {} ms; still lagging:", p.waited_ms);
            for l in &p.laggards {
                println!("    {:<22} {}", l.server, l.reason);
            }
        }
        print_dns_servers(&p.servers);
    }
    Ok(if r.ok { 0 } else { 1 })
}

fn print_dns_servers(servers: &[dns::ServerView]) {
    println!(
        "  {:<22} {:<14} {:<9} {:<24} {:>6} {:>10}",
        "server", "role", "rcode", "answer", "ttl", "serial"
    );
    for s in servers {
        let answer = if let Some(e) = &s.error {
            format!("({e})")
        } else if s.addresses.is_empty() {
            "-".to_string()
        } else {
            s.addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        println!(
            "  {:<22} {:<14} {:<9} {:<24} {:>6} {:>10}",
            s.server,
            s.role,
            s.rcode.as_deref().unwrap_or("-"),
            answer,
            s.ttl.map_or("-".into(), |t| t.to_string()),
            s.serial.map_or("-".into(), |t| t.to_string())
        );
    }
}

fn print_json<T: serde::Serialize>(report: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(report)?);
    Ok(())
}

async fn run_lb(cmd: LbCommand) -> anyhow::Result<u8> {
    let load = |path: &Path| -> anyhow::Result<cutover::runbook::LoadBalancer> {
        Ok(Runbook::load(path)?.loadbalancer(path)?.clone())
    };
    match cmd {
        LbCommand::Status { runbook, json } => {
            let r = lb::status(&load(&runbook)?)
                .await
                .context("cutover lb status")?;
            if json {
                print_json(&r)?;
            } else {
                println!("backend {} on {}", r.backend, r.socket);
                for v in &r.servers {
                    print_server(v);
                }
                for p in &r.problems {
                    println!("PROBLEM: {p}");
                }
            }
            Ok(if r.problems.is_empty() { 0 } else { 1 })
        }
        LbCommand::Drain { runbook, json } => {
            let r = lb::drain(&load(&runbook)?)
                .await
                .context("cutover lb drain")?;
            if json {
                print_json(&r)?;
            } else if r.already_maint {
                println!(
                    "{}: already in maint, nothing changed ({} sessions open)",
                    r.server, r.sessions_open
                );
            } else {
                println!(
                    "{}: drained in {} ms: {} session(s) at the start, {} still open at maint{}",
                    r.server,
                    r.drain_ms,
                    r.sessions_at_start,
                    r.sessions_open,
                    if r.timed_out {
                        " (drain_timeout reached)"
                    } else {
                        ""
                    }
                );
                print_server(&r.after);
            }
            Ok(if r.ok { 0 } else { 1 })
        }
        LbCommand::Ready { runbook, json } => {
            let r = lb::ready(&load(&runbook)?)
                .await
                .context("cutover lb ready")?;
            if json {
                print_json(&r)?;
            } else {
                let verdict = if !r.ok {
                    format!(
                        "NOT UP after {} ms: the health check says {} {}",
                        r.waited_ms, r.after.status, r.after.check_desc
                    )
                } else if r.unchecked {
                    "in rotation WITHOUT a health check (no `check` on the server)".to_string()
                } else {
                    format!("UP after {} ms", r.waited_ms)
                };
                println!("{}: {} -> ready: {verdict}", r.server, r.before);
                print_server(&r.after);
            }
            Ok(if r.ok { 0 } else { 1 })
        }
    }
}

fn print_server(v: &lb::ServerView) {
    let check = if v.check_status.is_empty() {
        String::new()
    } else {
        format!(" check {} ({})", v.check_status, v.check_desc)
    };
    println!(
        "  {:<11} {:<12} admin {:<6} op {:<8} status {:<8} scur {}{check}",
        v.role, v.server, v.admin_state, v.op_state, v.status, v.scur
    );
}

async fn run_db(cmd: DbCommand) -> anyhow::Result<u8> {
    {
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
    }
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
