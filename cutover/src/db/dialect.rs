//! The SQL each server flavour needs, as pure functions of the detected dialect.
//!
//! Three dialects are covered: MariaDB 10.x/11.x with its own GTIDs (`MASTER_USE_GTID`,
//! `MASTER_GTID_WAIT`), MySQL 8.0.22+/8.4 with `CHANGE REPLICATION SOURCE` and
//! `WAIT_FOR_EXECUTED_GTID_SET`, and a binlog file/position fallback for MySQL servers whose
//! `gtid_mode` is not `ON`. This module only builds statements and interprets their results; it
//! never talks to a server, which is what lets the MySQL dialect be covered by table-driven tests
//! on a machine that only has MariaDB.

use std::fmt;
use std::time::Duration;

/// The server family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// MariaDB 10.x or 11.x.
    MariaDb,
    /// MySQL 8.0.22 or later.
    MySql,
}

/// How replication positions are expressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Positioning {
    /// GTIDs: MariaDB domain-server-seq lists or MySQL UUID sets.
    Gtid,
    /// Binary log file name and byte offset.
    FilePosition,
}

/// A server version `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Version(pub u32, pub u32, pub u32);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.0, self.1, self.2)
    }
}

/// The detected dialect of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Dialect {
    /// MariaDB or MySQL.
    pub flavor: Flavor,
    /// The server version.
    pub version: Version,
    /// GTIDs or file/position.
    pub positioning: Positioning,
}

/// A replication position on the source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// A MariaDB GTID list (`0-1-100,1-2-7`) or a MySQL GTID set (`uuid:1-100`).
    Gtid(String),
    /// A binary log coordinate.
    File {
        /// The binary log file name.
        file: String,
        /// The byte offset in it.
        pos: u64,
    },
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Position::Gtid(g) if g.is_empty() => f.write_str("(empty GTID set)"),
            Position::Gtid(g) => f.write_str(g),
            Position::File { file, pos } => write!(f, "{file}:{pos}"),
        }
    }
}

/// Where a replica should start replicating from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    /// From its own GTID state (MariaDB `slave_pos`, MySQL auto-position).
    Gtid,
    /// From an explicit binary log coordinate (file/position fallback).
    File {
        /// The binary log file name.
        file: String,
        /// The byte offset in it.
        pos: u64,
    },
}

/// The connection a replica makes to its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSpec {
    /// Host the replica connects to.
    pub host: String,
    /// Port the replica connects to.
    pub port: u16,
    /// Replication account.
    pub user: String,
    /// Its password.
    pub password: String,
    /// Start point.
    pub start: StartAt,
}

/// What a position wait returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The replica has applied everything up to the position.
    Reached,
    /// The timeout expired first.
    TimedOut,
    /// The server says it is not replicating (the function returned NULL).
    NotReplicating,
}

/// Names of `SHOW SLAVE STATUS` / `SHOW REPLICA STATUS` columns that differ between flavours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusColumns {
    /// IO thread state.
    pub io_running: &'static str,
    /// SQL thread state.
    pub sql_running: &'static str,
    /// Source host.
    pub source_host: &'static str,
    /// Source port.
    pub source_port: &'static str,
    /// `Seconds_Behind_*`.
    pub seconds_behind: &'static str,
    /// The source binlog file the IO thread has read up to.
    pub read_file: &'static str,
    /// The offset the IO thread has read up to.
    pub read_pos: &'static str,
    /// The source binlog file of the last applied event.
    pub exec_file: &'static str,
    /// The source offset of the last applied event.
    pub exec_pos: &'static str,
}

/// Quotes a string as an SQL literal (`'it''s'`), escaping backslashes as the default
/// `sql_mode` expects (without `NO_BACKSLASH_ESCAPES`).
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// Quotes an identifier (`` `a``b` ``).
pub fn ident(s: &str) -> String {
    format!("`{}`", s.replace('`', "``"))
}

/// Parses the leading `x.y.z` of a `@@version` string.
pub fn parse_version(version: &str) -> Option<Version> {
    let numeric: String = version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = numeric.split('.').map(|p| p.parse::<u32>().ok());
    Some(Version(
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

impl Dialect {
    /// Detects the dialect from `@@version` and, on MySQL, `@@gtid_mode` (`None` on MariaDB).
    pub fn detect(version: &str, gtid_mode: Option<&str>) -> Result<Dialect, String> {
        let v = parse_version(version)
            .ok_or_else(|| format!("cannot parse server version {version:?}"))?;
        if version.to_ascii_lowercase().contains("mariadb") {
            if v < Version(10, 2, 0) {
                return Err(format!("MariaDB {v} is too old; 10.2 or later is needed"));
            }
            // MariaDB always has GTIDs; there is no mode to turn them off.
            return Ok(Dialect {
                flavor: Flavor::MariaDb,
                version: v,
                positioning: Positioning::Gtid,
            });
        }
        if v < Version(8, 0, 22) {
            return Err(format!(
                "MySQL {v} is not supported; 8.0.22 or later is needed (CHANGE REPLICATION SOURCE)"
            ));
        }
        let gtid = gtid_mode.is_some_and(|m| m.eq_ignore_ascii_case("ON"));
        Ok(Dialect {
            flavor: Flavor::MySql,
            version: v,
            positioning: if gtid {
                Positioning::Gtid
            } else {
                Positioning::FilePosition
            },
        })
    }

    fn mysql_at_least(&self, v: Version) -> bool {
        self.flavor == Flavor::MySql && self.version >= v
    }

    /// The name of this dialect for messages: `MariaDB 10.11.6 (GTID)`.
    pub fn describe(&self) -> String {
        let name = match self.flavor {
            Flavor::MariaDb => "MariaDB",
            Flavor::MySql => "MySQL",
        };
        let pos = match self.positioning {
            Positioning::Gtid => "GTID",
            Positioning::FilePosition => "file/position",
        };
        format!("{name} {} ({pos})", self.version)
    }

    /// The variable that makes a replica log what it applies (needed for `promote --reverse`).
    pub fn log_replica_updates_variable(&self) -> &'static str {
        if self.mysql_at_least(Version(8, 0, 26)) {
            "log_replica_updates"
        } else {
            "log_slave_updates"
        }
    }

    /// The statement that shows the replica's status.
    pub fn show_replica_status(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "SHOW SLAVE STATUS",
            Flavor::MySql => "SHOW REPLICA STATUS",
        }
    }

    /// The status columns of [`Dialect::show_replica_status`].
    pub fn status_columns(&self) -> StatusColumns {
        match self.flavor {
            Flavor::MariaDb => StatusColumns {
                io_running: "Slave_IO_Running",
                sql_running: "Slave_SQL_Running",
                source_host: "Master_Host",
                source_port: "Master_Port",
                seconds_behind: "Seconds_Behind_Master",
                read_file: "Master_Log_File",
                read_pos: "Read_Master_Log_Pos",
                exec_file: "Relay_Master_Log_File",
                exec_pos: "Exec_Master_Log_Pos",
            },
            Flavor::MySql => StatusColumns {
                io_running: "Replica_IO_Running",
                sql_running: "Replica_SQL_Running",
                source_host: "Source_Host",
                source_port: "Source_Port",
                seconds_behind: "Seconds_Behind_Source",
                read_file: "Source_Log_File",
                read_pos: "Read_Source_Log_Pos",
                exec_file: "Relay_Source_Log_File",
                exec_pos: "Exec_Source_Log_Pos",
            },
        }
    }

    /// Starts both replication threads.
    pub fn start_replica(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "START SLAVE",
            Flavor::MySql => "START REPLICA",
        }
    }

    /// Stops both replication threads.
    pub fn stop_replica(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "STOP SLAVE",
            Flavor::MySql => "STOP REPLICA",
        }
    }

    /// Stops only the applier, leaving the IO thread fetching.
    pub fn stop_sql_thread(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "STOP SLAVE SQL_THREAD",
            Flavor::MySql => "STOP REPLICA SQL_THREAD",
        }
    }

    /// Starts only the applier.
    pub fn start_sql_thread(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "START SLAVE SQL_THREAD",
            Flavor::MySql => "START REPLICA SQL_THREAD",
        }
    }

    /// Forgets the replica configuration entirely (the promoted server replicates from nobody).
    pub fn reset_replica_all(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "RESET SLAVE ALL",
            Flavor::MySql => "RESET REPLICA ALL",
        }
    }

    /// Stops what must be stopped before [`Dialect::start_sql_thread_until`]: MariaDB accepts
    /// `UNTIL master_gtid_pos` only when starting both threads, MySQL stops just the applier.
    pub fn stop_for_until(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "STOP SLAVE",
            Flavor::MySql => "STOP REPLICA SQL_THREAD",
        }
    }

    /// Starts the applier so that it stops by itself right after `pos` (on MariaDB by GTID,
    /// both threads start and stop there).
    pub fn start_sql_thread_until(&self, pos: &Position) -> String {
        match (self.flavor, pos) {
            (Flavor::MariaDb, Position::Gtid(g)) => {
                format!("START SLAVE UNTIL master_gtid_pos = {}", quote(g))
            }
            (Flavor::MariaDb, Position::File { file, pos }) => format!(
                "START SLAVE SQL_THREAD UNTIL MASTER_LOG_FILE = {}, MASTER_LOG_POS = {pos}",
                quote(file)
            ),
            (Flavor::MySql, Position::Gtid(g)) => {
                format!(
                    "START REPLICA SQL_THREAD UNTIL SQL_AFTER_GTIDS = {}",
                    quote(g)
                )
            }
            (Flavor::MySql, Position::File { file, pos }) => format!(
                "START REPLICA SQL_THREAD UNTIL SOURCE_LOG_FILE = {}, SOURCE_LOG_POS = {pos}",
                quote(file)
            ),
        }
    }

    /// Points the replica at its source.
    pub fn change_source(&self, s: &SourceSpec) -> String {
        match self.flavor {
            Flavor::MariaDb => {
                let start = match &s.start {
                    StartAt::Gtid => "MASTER_USE_GTID = slave_pos".to_string(),
                    StartAt::File { file, pos } => {
                        format!("MASTER_LOG_FILE = {}, MASTER_LOG_POS = {pos}", quote(file))
                    }
                };
                format!(
                    "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {}, MASTER_USER = {}, \
                     MASTER_PASSWORD = {}, MASTER_CONNECT_RETRY = 1, \
                     MASTER_HEARTBEAT_PERIOD = 1, {start}",
                    quote(&s.host),
                    s.port,
                    quote(&s.user),
                    quote(&s.password)
                )
            }
            Flavor::MySql => {
                let start = match &s.start {
                    StartAt::Gtid => "SOURCE_AUTO_POSITION = 1".to_string(),
                    StartAt::File { file, pos } => format!(
                        "SOURCE_AUTO_POSITION = 0, SOURCE_LOG_FILE = {}, SOURCE_LOG_POS = {pos}",
                        quote(file)
                    ),
                };
                // GET_SOURCE_PUBLIC_KEY: caching_sha2_password without TLS needs the key.
                format!(
                    "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {}, SOURCE_PORT = {}, \
                     SOURCE_USER = {}, SOURCE_PASSWORD = {}, SOURCE_CONNECT_RETRY = 1, \
                     SOURCE_HEARTBEAT_PERIOD = 1, GET_SOURCE_PUBLIC_KEY = 1, {start}",
                    quote(&s.host),
                    s.port,
                    quote(&s.user),
                    quote(&s.password)
                )
            }
        }
    }

    /// The query that reads the server's own position: one row.
    ///
    /// For GTIDs it has one column (the set). For file/position it is the binlog status
    /// statement whose first two columns are the file and offset.
    pub fn own_position_query(&self) -> &'static str {
        match (self.flavor, self.positioning) {
            (Flavor::MariaDb, Positioning::Gtid) => "SELECT @@GLOBAL.gtid_binlog_pos",
            (Flavor::MySql, Positioning::Gtid) => "SELECT @@GLOBAL.gtid_executed",
            _ if self.mysql_at_least(Version(8, 2, 0)) => "SHOW BINARY LOG STATUS",
            _ => "SHOW MASTER STATUS",
        }
    }

    /// The query that reads what a replica has applied (GTID dialects only), one column.
    pub fn applied_position_query(&self) -> Option<&'static str> {
        match (self.flavor, self.positioning) {
            (Flavor::MariaDb, Positioning::Gtid) => Some("SELECT @@GLOBAL.gtid_slave_pos"),
            (Flavor::MySql, Positioning::Gtid) => Some("SELECT @@GLOBAL.gtid_executed"),
            _ => None,
        }
    }

    /// A query returning one integer column: the outcome of waiting for `pos` up to `timeout`.
    /// Interpret it with [`Dialect::wait_outcome`].
    ///
    /// The timeout is rounded up to whole milliseconds and is never 0, because MySQL's
    /// `WAIT_FOR_EXECUTED_GTID_SET(set, 0)` waits forever.
    pub fn wait_for_position(&self, pos: &Position, timeout: Duration) -> String {
        let ms = timeout.as_millis().max(1);
        let secs = format!("{}.{:03}", ms / 1000, ms % 1000);
        match (self.flavor, pos) {
            (Flavor::MariaDb, Position::Gtid(g)) => {
                format!("SELECT MASTER_GTID_WAIT({}, {secs})", quote(g))
            }
            (Flavor::MySql, Position::Gtid(g)) => {
                format!("SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {secs})", quote(g))
            }
            (_, Position::File { file, pos }) => {
                let f = if self.mysql_at_least(Version(8, 0, 26)) {
                    "SOURCE_POS_WAIT"
                } else {
                    "MASTER_POS_WAIT"
                };
                format!("SELECT {f}({}, {pos}, {secs})", quote(file))
            }
        }
    }

    /// Interprets the integer returned by [`Dialect::wait_for_position`].
    pub fn wait_outcome(&self, pos: &Position, value: Option<i64>) -> WaitOutcome {
        match (self.flavor, pos, value) {
            (_, _, None) => WaitOutcome::NotReplicating,
            // MASTER_GTID_WAIT: 0 reached, -1 timeout.
            (Flavor::MariaDb, Position::Gtid(_), Some(0)) => WaitOutcome::Reached,
            (Flavor::MariaDb, Position::Gtid(_), Some(_)) => WaitOutcome::TimedOut,
            // WAIT_FOR_EXECUTED_GTID_SET: 0 reached, 1 timeout.
            (Flavor::MySql, Position::Gtid(_), Some(0)) => WaitOutcome::Reached,
            (Flavor::MySql, Position::Gtid(_), Some(_)) => WaitOutcome::TimedOut,
            // *_POS_WAIT: events waited for (>= 0), -1 timeout.
            (_, Position::File { .. }, Some(n)) if n >= 0 => WaitOutcome::Reached,
            (_, Position::File { .. }, Some(_)) => WaitOutcome::TimedOut,
        }
    }

    /// Statements that stop ordinary writes. On MySQL `super_read_only` also stops accounts
    /// with SUPER/CONNECTION_ADMIN; MariaDB has no such switch (accounts with `READ_ONLY ADMIN`
    /// still write), which is why `promote` also ends the remaining sessions there.
    pub fn fence(&self) -> Vec<&'static str> {
        match self.flavor {
            Flavor::MariaDb => vec!["SET GLOBAL read_only = 1"],
            Flavor::MySql => vec!["SET GLOBAL super_read_only = 1"],
        }
    }

    /// Statements that make a server writable again.
    pub fn unfence(&self) -> Vec<&'static str> {
        match self.flavor {
            Flavor::MariaDb => vec!["SET GLOBAL read_only = 0"],
            Flavor::MySql => vec!["SET GLOBAL super_read_only = 0", "SET GLOBAL read_only = 0"],
        }
    }

    /// The lock that stops every session from writing, root included, held by `promote`'s own
    /// session from just after the sessions are ended until the switch is proven. MariaDB's
    /// `read_only` does not stop accounts with `READ_ONLY ADMIN` (root has it), and such a
    /// session that reconnects after being ended would write again: the global read lock
    /// blocks it (its statement waits, and is ended before the lock is released). MySQL needs
    /// none: `super_read_only` already stops SUPER.
    pub fn fence_lock(&self) -> Option<&'static str> {
        match self.flavor {
            Flavor::MariaDb => Some("FLUSH TABLES WITH READ LOCK"),
            Flavor::MySql => None,
        }
    }

    /// Releases [`Dialect::fence_lock`] (on the session that holds it).
    pub fn fence_unlock(&self) -> &'static str {
        "UNLOCK TABLES"
    }

    /// Bounds, on the server, how long this session waits for a lock (the fence lock waits for
    /// running statements); whole seconds, at least 1.
    pub fn lock_wait_timeout(&self, limit: Duration) -> String {
        let secs = limit.as_millis().div_ceil(1000).max(1);
        format!("SET SESSION lock_wait_timeout = {secs}")
    }

    /// Lists the client sessions (as [`Dialect::sessions_to_end_query`]) whose user has an
    /// account with a privilege that `read_only` does not stop: `SUPER`, and on MariaDB
    /// `READ_ONLY ADMIN`. Columns: id, user, client host, command. Accounts are matched by
    /// user name (a session's account host pattern is not in the process list).
    pub fn privileged_sessions_query(&self) -> String {
        format!(
            "SELECT ID, USER, HOST, COMMAND FROM information_schema.PROCESSLIST \
             WHERE {SESSIONS_TO_END} AND USER IN (\
             SELECT SUBSTRING_INDEX(SUBSTRING(GRANTEE, 2), '''@''', 1) \
             FROM information_schema.USER_PRIVILEGES \
             WHERE PRIVILEGE_TYPE IN ('SUPER', 'READ_ONLY ADMIN')) ORDER BY ID"
        )
    }

    /// The query for the transactions a server has logged itself, for telling a server that
    /// has taken writes as a primary (see [`super::position::has_own_transactions`]): one row,
    /// the GTID state and, on MySQL, the server's UUID. `None` for file/position, where the
    /// binary log does not say who wrote an event.
    pub fn own_transactions_query(&self) -> Option<&'static str> {
        match (self.flavor, self.positioning) {
            (Flavor::MariaDb, Positioning::Gtid) => Some("SELECT @@GLOBAL.gtid_binlog_state, NULL"),
            (Flavor::MySql, Positioning::Gtid) => {
                Some("SELECT @@GLOBAL.gtid_executed, @@GLOBAL.server_uuid")
            }
            _ => None,
        }
    }

    /// Changes only the replication account of a configured replica, keeping its source and
    /// position (naming the host or port again would reset the position). Needs the replica's
    /// threads stopped.
    pub fn change_source_credentials(&self, user: &str, password: &str) -> String {
        match self.flavor {
            Flavor::MariaDb => format!(
                "CHANGE MASTER TO MASTER_USER = {}, MASTER_PASSWORD = {}",
                quote(user),
                quote(password)
            ),
            Flavor::MySql => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_USER = {}, SOURCE_PASSWORD = {}, \
                 GET_SOURCE_PUBLIC_KEY = 1",
                quote(user),
                quote(password)
            ),
        }
    }

    /// Whether the fence should also end client sessions (see [`Dialect::fence`]).
    pub fn fence_ends_sessions(&self) -> bool {
        self.flavor == Flavor::MariaDb
    }

    /// Lists the ids of the sessions to end after fencing: everything but this session,
    /// replication and system threads.
    pub fn sessions_to_end_query(&self) -> String {
        format!("SELECT ID FROM information_schema.PROCESSLIST WHERE {SESSIONS_TO_END}")
    }

    /// Counts the sessions of [`Dialect::sessions_to_end_query`] that are running a statement;
    /// when none is, the fence's grace period can end early.
    pub fn busy_sessions_query(&self) -> String {
        format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
             WHERE {SESSIONS_TO_END} AND COMMAND <> 'Sleep'"
        )
    }

    /// Ends one session.
    pub fn kill_session(&self, id: u64) -> String {
        format!("KILL CONNECTION {id}")
    }

    /// Creates the replication account if it does not exist, and grants what it needs.
    pub fn create_replication_user(&self, user: &str, password: &str) -> Vec<String> {
        let account = format!("{}@'%'", quote(user));
        let grants = match self.flavor {
            // BINLOG MONITOR is the 10.5+ name of what REPLICATION CLIENT used to be; the old
            // name is still accepted as an alias.
            Flavor::MariaDb => "REPLICATION SLAVE, REPLICATION CLIENT",
            Flavor::MySql => "REPLICATION SLAVE, REPLICATION CLIENT",
        };
        vec![
            format!(
                "CREATE USER IF NOT EXISTS {account} IDENTIFIED BY {}",
                quote(password)
            ),
            format!("GRANT {grants} ON *.* TO {account}"),
        ]
    }

    /// The replication account on the replica, for `promote --reverse` (run with the binary
    /// log off for the session): created if missing, and its password set to the runbook's
    /// either way, since the old source will log in with that one.
    pub fn replication_user_on_replica(&self, user: &str, password: &str) -> Vec<String> {
        let mut sql = self.create_replication_user(user, password);
        sql.push(format!(
            "ALTER USER {}@'%' IDENTIFIED BY {}",
            quote(user),
            quote(password)
        ));
        sql
    }

    /// Statements run on a freshly seeded replica to record the seed's position, before
    /// [`Dialect::change_source`]. Empty for file/position (the position goes in
    /// `CHANGE ... TO`).
    pub fn record_seed_position(&self, pos: &Position) -> Vec<String> {
        match (self.flavor, pos) {
            (Flavor::MariaDb, Position::Gtid(g)) => {
                vec![format!("SET GLOBAL gtid_slave_pos = {}", quote(g))]
            }
            (Flavor::MySql, Position::Gtid(g)) => vec![
                // GTID_PURGED may only be set on an empty gtid_executed.
                if self.mysql_at_least(Version(8, 4, 0)) {
                    "RESET BINARY LOGS AND GTIDS".to_string()
                } else {
                    "RESET MASTER".to_string()
                },
                format!("SET GLOBAL gtid_purged = {}", quote(g)),
            ],
            (_, Position::File { .. }) => vec![],
        }
    }

    /// Statements that make a server that was a primary up to `pos` start replicating right
    /// after it (the old source in `promote --reverse`). MySQL's auto-position uses
    /// `gtid_executed` as it is; MariaDB needs `gtid_slave_pos` set to it.
    pub fn resume_as_replica_at(&self, pos: &Position) -> Vec<String> {
        match (self.flavor, pos) {
            (Flavor::MariaDb, Position::Gtid(g)) => {
                vec![format!("SET GLOBAL gtid_slave_pos = {}", quote(g))]
            }
            _ => vec![],
        }
    }

    /// Clears the replica's own binary log before seeding, so that its GTID history is only
    /// the source's.
    pub fn reset_own_binlog(&self) -> &'static str {
        if self.mysql_at_least(Version(8, 4, 0)) {
            "RESET BINARY LOGS AND GTIDS"
        } else {
            "RESET MASTER"
        }
    }

    /// The dump program and the flags (besides connection flags and schema names) for a
    /// consistent seed with the position recorded as a comment in the output.
    pub fn dump_program(&self) -> (&'static str, Vec<&'static str>) {
        let mut flags = vec![
            "--single-transaction",
            "--routines",
            "--triggers",
            "--events",
            "--hex-blob",
            "--add-drop-database",
        ];
        match self.flavor {
            Flavor::MariaDb => {
                // --master-data=2 writes the position as comments; with --gtid the comment is
                // `-- SET GLOBAL gtid_slave_pos='...'`, taken in the same snapshot.
                flags.extend(["--master-data=2", "--gtid"]);
                ("mariadb-dump", flags)
            }
            Flavor::MySql => {
                if self.mysql_at_least(Version(8, 0, 26)) {
                    flags.push("--source-data=2");
                } else {
                    flags.push("--master-data=2");
                }
                flags.push(if self.positioning == Positioning::Gtid {
                    "--set-gtid-purged=COMMENTED"
                } else {
                    "--set-gtid-purged=OFF"
                });
                ("mysqldump", flags)
            }
        }
    }

    /// The client program that loads a dump.
    pub fn client_program(&self) -> &'static str {
        match self.flavor {
            Flavor::MariaDb => "mariadb",
            Flavor::MySql => "mysql",
        }
    }

    /// Statements that open a consistent snapshot and then read its exact position: the last
    /// query returns the position (one GTID column, or binlog file and offset). Statements in
    /// `release` run after the position is read.
    pub fn snapshot(&self) -> Snapshot {
        match (self.flavor, self.positioning) {
            // MariaDB reports the binlog coordinate of a consistent snapshot without locks.
            (Flavor::MariaDb, Positioning::Gtid) => Snapshot {
                open: vec!["START TRANSACTION WITH CONSISTENT SNAPSHOT"],
                position: "SELECT BINLOG_GTID_POS(\
                     (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
                      WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_FILE'), \
                     (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
                      WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_POSITION'))",
                release: vec![],
            },
            (Flavor::MariaDb, Positioning::FilePosition) => Snapshot {
                open: vec!["START TRANSACTION WITH CONSISTENT SNAPSHOT"],
                position: "SELECT \
                     (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
                      WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_FILE'), \
                     (SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS \
                      WHERE VARIABLE_NAME = 'BINLOG_SNAPSHOT_POSITION')",
                release: vec![],
            },
            // MySQL has no lock-free snapshot coordinate: hold the global read lock for the
            // instant it takes to open the snapshot and read the position (as mysqldump does).
            (Flavor::MySql, p) => Snapshot {
                open: vec![
                    "FLUSH TABLES WITH READ LOCK",
                    "START TRANSACTION WITH CONSISTENT SNAPSHOT",
                ],
                position: match p {
                    Positioning::Gtid => "SELECT @@GLOBAL.gtid_executed",
                    Positioning::FilePosition => self.own_position_query(),
                },
                release: vec!["UNLOCK TABLES"],
            },
        }
    }
}

/// Application schemas that hold something (a table or view, a routine, an event), one column.
/// An empty schema, like the stock `test` of `mariadb-install-db`, is not data.
pub const SCHEMAS_WITH_OBJECTS: &str = "SELECT s.SCHEMA_NAME FROM information_schema.SCHEMATA s \
     WHERE EXISTS (SELECT 1 FROM information_schema.TABLES t WHERE t.TABLE_SCHEMA = s.SCHEMA_NAME) \
     OR EXISTS (SELECT 1 FROM information_schema.ROUTINES r WHERE r.ROUTINE_SCHEMA = s.SCHEMA_NAME) \
     OR EXISTS (SELECT 1 FROM information_schema.EVENTS e WHERE e.EVENT_SCHEMA = s.SCHEMA_NAME) \
     ORDER BY s.SCHEMA_NAME";

/// Client sessions, as opposed to this session, replication and system threads.
const SESSIONS_TO_END: &str = "ID <> CONNECTION_ID() \
     AND USER NOT IN ('system user', 'event_scheduler', 'unauthenticated user') \
     AND COMMAND NOT IN ('Binlog Dump', 'Binlog Dump GTID', 'Daemon', 'Killed', \
     'Slave_IO', 'Slave_SQL', 'Slave_worker', 'Connect')";

/// How to open a consistent snapshot at a known position (see [`Dialect::snapshot`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Statements that open the snapshot.
    pub open: Vec<&'static str>,
    /// The query returning the position of the snapshot.
    pub position: &'static str,
    /// Statements to run once the position is read.
    pub release: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mariadb() -> Dialect {
        Dialect::detect("10.11.6-MariaDB-0+deb12u1-log", None).unwrap()
    }
    fn mysql(v: &str, gtid: &str) -> Dialect {
        Dialect::detect(v, Some(gtid)).unwrap()
    }

    type Detected = Result<(Flavor, Version, Positioning), &'static str>;

    #[test]
    fn detect() {
        let cases: &[(&str, Option<&str>, Detected)] = &[
            (
                "10.11.6-MariaDB-log",
                None,
                Ok((Flavor::MariaDb, Version(10, 11, 6), Positioning::Gtid)),
            ),
            (
                "11.4.2-MariaDB",
                None,
                Ok((Flavor::MariaDb, Version(11, 4, 2), Positioning::Gtid)),
            ),
            (
                "8.0.36",
                Some("ON"),
                Ok((Flavor::MySql, Version(8, 0, 36), Positioning::Gtid)),
            ),
            (
                "8.4.0",
                Some("OFF"),
                Ok((Flavor::MySql, Version(8, 4, 0), Positioning::FilePosition)),
            ),
            (
                "8.0.30",
                Some("ON_PERMISSIVE"),
                Ok((Flavor::MySql, Version(8, 0, 30), Positioning::FilePosition)),
            ),
            ("8.0.21", Some("ON"), Err("8.0.22")),
            ("5.7.44-log", Some("ON"), Err("8.0.22")),
            ("10.1.48-MariaDB", None, Err("too old")),
            ("garbage", None, Err("cannot parse")),
        ];
        for (version, mode, want) in cases {
            let got = Dialect::detect(version, *mode).map(|d| (d.flavor, d.version, d.positioning));
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, *w, "{version}"),
                (Err(e), Err(w)) => assert!(e.contains(w), "{version}: {e}"),
                (g, w) => panic!("{version}: got {g:?}, want {w:?}"),
            }
        }
    }

    #[test]
    fn change_source_per_dialect() {
        let spec = SourceSpec {
            host: "10.0.0.1".into(),
            port: 3306,
            user: "repl".into(),
            password: "p'w".into(),
            start: StartAt::Gtid,
        };
        let file = SourceSpec {
            start: StartAt::File {
                file: "bin.000003".into(),
                pos: 1234,
            },
            ..spec.clone()
        };
        let cases = [
            (
                mariadb(),
                &spec,
                "CHANGE MASTER TO MASTER_HOST = '10.0.0.1', MASTER_PORT = 3306, MASTER_USER = 'repl', \
                 MASTER_PASSWORD = 'p''w', MASTER_CONNECT_RETRY = 1, MASTER_HEARTBEAT_PERIOD = 1, \
                 MASTER_USE_GTID = slave_pos",
            ),
            (
                mysql("8.0.36", "ON"),
                &spec,
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '10.0.0.1', SOURCE_PORT = 3306, \
                 SOURCE_USER = 'repl', SOURCE_PASSWORD = 'p''w', SOURCE_CONNECT_RETRY = 1, \
                 SOURCE_HEARTBEAT_PERIOD = 1, GET_SOURCE_PUBLIC_KEY = 1, SOURCE_AUTO_POSITION = 1",
            ),
            (
                mysql("8.4.0", "OFF"),
                &file,
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = '10.0.0.1', SOURCE_PORT = 3306, \
                 SOURCE_USER = 'repl', SOURCE_PASSWORD = 'p''w', SOURCE_CONNECT_RETRY = 1, \
                 SOURCE_HEARTBEAT_PERIOD = 1, GET_SOURCE_PUBLIC_KEY = 1, SOURCE_AUTO_POSITION = 0, \
                 SOURCE_LOG_FILE = 'bin.000003', SOURCE_LOG_POS = 1234",
            ),
        ];
        for (d, spec, want) in cases {
            assert_eq!(d.change_source(spec), want, "{}", d.describe());
        }
    }

    #[test]
    fn wait_for_position_per_dialect() {
        let gtid_m = Position::Gtid("0-1-100".into());
        let gtid_my = Position::Gtid("3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5".into());
        let file = Position::File {
            file: "binlog.000002".into(),
            pos: 157,
        };
        let t = Duration::from_millis(2500);
        let cases = [
            (
                mariadb(),
                &gtid_m,
                "SELECT MASTER_GTID_WAIT('0-1-100', 2.500)",
            ),
            (
                mysql("8.0.36", "ON"),
                &gtid_my,
                "SELECT WAIT_FOR_EXECUTED_GTID_SET('3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5', 2.500)",
            ),
            (
                mysql("8.0.25", "OFF"),
                &file,
                "SELECT MASTER_POS_WAIT('binlog.000002', 157, 2.500)",
            ),
            (
                mysql("8.4.0", "OFF"),
                &file,
                "SELECT SOURCE_POS_WAIT('binlog.000002', 157, 2.500)",
            ),
        ];
        for (d, pos, want) in cases {
            assert_eq!(d.wait_for_position(pos, t), want, "{}", d.describe());
        }
        // A zero timeout would wait forever on MySQL: it is never emitted.
        assert!(
            mysql("8.0.36", "ON")
                .wait_for_position(&gtid_my, Duration::ZERO)
                .ends_with(", 0.001)")
        );
    }

    #[test]
    fn wait_outcomes() {
        let g = Position::Gtid("x".into());
        let f = Position::File {
            file: "f".into(),
            pos: 1,
        };
        let m = mariadb();
        let my = mysql("8.0.36", "ON");
        let cases = [
            (m, &g, Some(0), WaitOutcome::Reached),
            (m, &g, Some(-1), WaitOutcome::TimedOut),
            (m, &g, None, WaitOutcome::NotReplicating),
            (my, &g, Some(0), WaitOutcome::Reached),
            (my, &g, Some(1), WaitOutcome::TimedOut),
            (my, &f, Some(3), WaitOutcome::Reached),
            (my, &f, Some(-1), WaitOutcome::TimedOut),
            (my, &f, None, WaitOutcome::NotReplicating),
        ];
        for (d, pos, value, want) in cases {
            assert_eq!(
                d.wait_outcome(pos, value),
                want,
                "{} {value:?}",
                d.describe()
            );
        }
    }

    #[test]
    fn statement_names_per_dialect() {
        let m = mariadb();
        let my = mysql("8.0.36", "ON");
        let my84 = mysql("8.4.2", "OFF");
        let table: &[(&str, &str, &str, &str)] = &[
            (
                "show",
                m.show_replica_status(),
                my.show_replica_status(),
                "SHOW REPLICA STATUS",
            ),
            (
                "start",
                m.start_replica(),
                my.start_replica(),
                "START REPLICA",
            ),
            ("stop", m.stop_replica(), my.stop_replica(), "STOP REPLICA"),
            (
                "reset",
                m.reset_replica_all(),
                my.reset_replica_all(),
                "RESET REPLICA ALL",
            ),
            (
                "pos",
                m.own_position_query(),
                my.own_position_query(),
                "SELECT @@GLOBAL.gtid_executed",
            ),
            (
                "pos84",
                m.own_position_query(),
                my84.own_position_query(),
                "SHOW BINARY LOG STATUS",
            ),
            (
                "reset-binlog",
                m.reset_own_binlog(),
                my84.reset_own_binlog(),
                "RESET BINARY LOGS AND GTIDS",
            ),
        ];
        let maria_expected = [
            "SHOW SLAVE STATUS",
            "START SLAVE",
            "STOP SLAVE",
            "RESET SLAVE ALL",
            "SELECT @@GLOBAL.gtid_binlog_pos",
            "SELECT @@GLOBAL.gtid_binlog_pos",
            "RESET MASTER",
        ];
        for ((name, maria, my, want_my), want_maria) in table.iter().zip(maria_expected) {
            assert_eq!(*maria, want_maria, "{name} (MariaDB)");
            assert_eq!(my, want_my, "{name} (MySQL)");
        }
        assert_eq!(m.log_replica_updates_variable(), "log_slave_updates");
        assert_eq!(my.log_replica_updates_variable(), "log_replica_updates");
        assert_eq!(
            mysql("8.0.25", "ON").log_replica_updates_variable(),
            "log_slave_updates"
        );
        assert_eq!(m.fence(), vec!["SET GLOBAL read_only = 1"]);
        assert_eq!(my.fence(), vec!["SET GLOBAL super_read_only = 1"]);
        assert_eq!(
            my.unfence(),
            vec!["SET GLOBAL super_read_only = 0", "SET GLOBAL read_only = 0"]
        );
        assert!(m.fence_ends_sessions() && !my.fence_ends_sessions());
        // read_only does not stop root on MariaDB: the fence also takes the global read lock.
        assert_eq!(m.fence_lock(), Some("FLUSH TABLES WITH READ LOCK"));
        assert_eq!(my.fence_lock(), None, "super_read_only stops SUPER");
        assert_eq!(m.fence_unlock(), "UNLOCK TABLES");
        assert_eq!(
            m.lock_wait_timeout(Duration::from_millis(1200)),
            "SET SESSION lock_wait_timeout = 2"
        );
        assert_eq!(
            m.lock_wait_timeout(Duration::ZERO),
            "SET SESSION lock_wait_timeout = 1"
        );
        assert_eq!(
            m.change_source_credentials("repl", "p'w"),
            "CHANGE MASTER TO MASTER_USER = 'repl', MASTER_PASSWORD = 'p''w'"
        );
        assert!(
            my.change_source_credentials("repl", "pw")
                .starts_with("CHANGE REPLICATION SOURCE TO SOURCE_USER = 'repl'")
        );
        assert!(
            m.own_transactions_query()
                .is_some_and(|q| q.contains("gtid_binlog_state"))
        );
        assert!(my84.own_transactions_query().is_none(), "file/position");
    }

    #[test]
    fn sessions_ended_by_the_fence_spare_replication_and_ourselves() {
        let d = mariadb();
        for q in [d.sessions_to_end_query(), d.busy_sessions_query()] {
            for spared in [
                "ID <> CONNECTION_ID()",
                "'Binlog Dump'",
                "'Slave_SQL'",
                "'system user'",
            ] {
                assert!(q.contains(spared), "{q} should spare {spared}");
            }
        }
        assert!(d.busy_sessions_query().ends_with("AND COMMAND <> 'Sleep'"));
        let q = d.privileged_sessions_query();
        assert!(
            q.contains("ID <> CONNECTION_ID()") && q.contains("'READ_ONLY ADMIN'"),
            "{q}"
        );
        assert_eq!(d.kill_session(42), "KILL CONNECTION 42");
    }

    #[test]
    fn seed_position_and_until() {
        let m = mariadb();
        let my = mysql("8.0.36", "ON");
        let my84 = mysql("8.4.0", "ON");
        let g = Position::Gtid("0-1-7".into());
        assert_eq!(
            m.record_seed_position(&g),
            vec!["SET GLOBAL gtid_slave_pos = '0-1-7'"]
        );
        assert_eq!(
            my.record_seed_position(&Position::Gtid("u:1-3".into())),
            vec!["RESET MASTER", "SET GLOBAL gtid_purged = 'u:1-3'"]
        );
        assert_eq!(
            my84.record_seed_position(&Position::Gtid("u:1-3".into()))[0],
            "RESET BINARY LOGS AND GTIDS"
        );
        assert_eq!(
            m.start_sql_thread_until(&g),
            "START SLAVE UNTIL master_gtid_pos = '0-1-7'"
        );
        assert_eq!(
            my.start_sql_thread_until(&Position::Gtid("u:1-3".into())),
            "START REPLICA SQL_THREAD UNTIL SQL_AFTER_GTIDS = 'u:1-3'"
        );
        assert_eq!(
            my84.start_sql_thread_until(&Position::File {
                file: "b.1".into(),
                pos: 4
            }),
            "START REPLICA SQL_THREAD UNTIL SOURCE_LOG_FILE = 'b.1', SOURCE_LOG_POS = 4"
        );
    }

    #[test]
    fn dump_flags() {
        let (prog, flags) = mariadb().dump_program();
        assert_eq!(prog, "mariadb-dump");
        assert!(flags.contains(&"--gtid") && flags.contains(&"--single-transaction"));
        let (prog, flags) = mysql("8.0.36", "ON").dump_program();
        assert_eq!(prog, "mysqldump");
        assert!(flags.contains(&"--source-data=2"));
        assert!(flags.contains(&"--set-gtid-purged=COMMENTED"));
        let (_, flags) = mysql("8.0.22", "OFF").dump_program();
        assert!(flags.contains(&"--master-data=2") && flags.contains(&"--set-gtid-purged=OFF"));
    }

    #[test]
    fn snapshot_per_dialect() {
        let s = mariadb().snapshot();
        assert_eq!(s.open, vec!["START TRANSACTION WITH CONSISTENT SNAPSHOT"]);
        assert!(s.position.starts_with("SELECT BINLOG_GTID_POS("));
        assert!(s.release.is_empty());
        let s = mysql("8.0.36", "ON").snapshot();
        assert_eq!(s.open[0], "FLUSH TABLES WITH READ LOCK");
        assert_eq!(s.release, vec!["UNLOCK TABLES"]);
    }

    #[test]
    fn quoting() {
        assert_eq!(quote("a'b\\c"), "'a''b\\\\c'");
        assert_eq!(ident("we`ird"), "`we``ird`");
        assert_eq!(
            mariadb().create_replication_user("r'x", "pw"),
            vec![
                "CREATE USER IF NOT EXISTS 'r''x'@'%' IDENTIFIED BY 'pw'",
                "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO 'r''x'@'%'"
            ]
        );
    }
}
