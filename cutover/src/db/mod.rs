//! `cutover db`: set up, watch, promote and verify a source → replica pair of MySQL-family
//! servers.
//!
//! This module is the IO shell: it connects with `mysql_async`, runs the statements that
//! [`dialect`] builds, and feeds what it reads to the pure [`position`] and [`checksum`]
//! modules, which decide. The four commands live in [`setup`], [`status`], [`promote`] and
//! [`verify`]; each returns a report that the binary prints as text or JSON. This module does
//! not print and does not exit: the reports' `ok` flags and [`DbError::exit_code`] (a refusal
//! is a finding, anything else a runtime error) say what happened, and `main` turns that into
//! the process's exit code.

pub mod checksum;
pub mod dialect;
pub mod position;
pub mod promote;
pub mod restore;
pub mod setup;
pub mod status;
pub mod verify;

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Row, Value};

use crate::runbook::Database;
use dialect::{Dialect, Position, SourceSpec, StartAt};
use position::ReplicaStatus;

/// Which server of the pair an error or a step is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The current primary (`database.source`).
    Source,
    /// The destination (`database.replica`).
    Replica,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Source => "source",
            Role::Replica => "replica",
        })
    }
}

/// What went wrong talking to a server. Every variant names the server.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The runbook's URL is not a usable MySQL URL.
    #[error("{role}: bad URL in the runbook: {message}")]
    Url {
        /// Which server.
        role: Role,
        /// Why.
        message: String,
    },
    /// Could not connect or log in.
    #[error("{role} {addr}: cannot connect: {message}")]
    Connect {
        /// Which server.
        role: Role,
        /// `host:port`.
        addr: String,
        /// The cause, e.g. `Access denied for user ...` or `Connection refused`.
        message: String,
    },
    /// A statement failed.
    #[error("{role} {addr}: {context}: {message}")]
    Query {
        /// Which server.
        role: Role,
        /// `host:port`.
        addr: String,
        /// What we were doing.
        context: String,
        /// The server's or driver's message.
        message: String,
    },
    /// The pair is not in a state this command can work with; nothing was changed.
    #[error("{role} {addr}: {message}")]
    Refused {
        /// Which server.
        role: Role,
        /// `host:port`.
        addr: String,
        /// Why, and what to do about it.
        message: String,
    },
    /// A promotion failed after the fence and putting things back failed too: the source
    /// may still be read-only and the replica may not replicate. Needs a human.
    #[error(
        "promotion failed ({reason}) and undoing it failed: {message}; CHECK THE PAIR: the \
         source may still be read-only and the replica may not be replicating"
    )]
    UndoFailed {
        /// Why the promotion failed.
        reason: String,
        /// Why the undo failed.
        message: String,
    },
    /// The operator stopped the command (SIGINT/SIGTERM); what had to be restored was.
    #[error("{0}")]
    Interrupted(String),
    /// A server did not answer a statement within the client-side deadline, or the connection
    /// was abandoned after an earlier one did (a stopped server keeps the TCP connection open
    /// and never answers, so every statement is bounded on our side too).
    #[error("{role} {addr}: {context}: no answer within {after} (client-side deadline)")]
    Timeout {
        /// Which server.
        role: Role,
        /// `host:port`.
        addr: String,
        /// What we were doing.
        context: String,
        /// The deadline, e.g. `10s`.
        after: String,
    },
    /// A `database.verify_tables` pattern selects no table on either server: most likely a
    /// typo, and checksumming nothing must not read as "identical".
    #[error(
        "{role} {addr}: database.verify_tables: {pattern:?} matches no table on the source \
         or the replica"
    )]
    NoSuchTables {
        /// The source (whose tables were listed first).
        role: Role,
        /// `host:port`.
        addr: String,
        /// The pattern as written in the runbook.
        pattern: String,
    },
    /// `setup` failed after it had changed something: `changed` says exactly what, so that the
    /// operator knows the state; running `setup` again once the cause is fixed converges.
    #[error("{cause}; changed before the failure: {}; fix the cause and run setup again", changed.join("; "))]
    Incomplete {
        /// What failed.
        cause: Box<DbError>,
        /// What had been changed, one entry per change, in order.
        changed: Vec<String>,
    },
    /// Running the dump or the client program failed.
    #[error("seeding the replica failed: {0}")]
    Seed(String),
}

impl DbError {
    /// 1 when a check refused the operation (a finding), 2 for runtime errors.
    pub fn exit_code(&self) -> i32 {
        match self {
            DbError::Refused { .. } => 1,
            // A changed pair (Incomplete), a stuck server, a typo in verify_tables, ...
            _ => 2,
        }
    }
}

/// A one-line message for a driver error: the server's `ERROR 1045 (28000): ...` text, or
/// the IO error, without the driver's decorations.
fn driver_message(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("ERROR {} ({}): {}", s.code, s.state, s.message),
        mysql_async::Error::Io(io) => io.to_string(),
        mysql_async::Error::Driver(d) => d.to_string(),
        other => other.to_string(),
    }
    .replace('\n', " ")
}

/// The server error code inside a driver error, if any.
fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// How late, at most, a wait function may answer after its own timeout before the server is
/// taken for stuck (see [`Server::wait_query`]).
pub const WAIT_ANSWER_MARGIN: Duration = Duration::from_secs(2);

/// One connection to one server of the pair, with its dialect.
#[derive(Debug)]
pub struct Server {
    /// Which server.
    pub role: Role,
    /// `host:port` from the runbook URL.
    pub addr: String,
    /// Host from the runbook URL.
    pub host: String,
    /// Port from the runbook URL.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Login password (empty when none).
    pub password: String,
    /// The detected dialect.
    pub dialect: Dialect,
    /// `@@server_id`.
    pub server_id: u64,
    conn: Conn,
    opts: Opts,
    timeout: Duration,
    /// The client-side deadline of one statement (see [`Server::set_statement_timeout`]).
    statement_timeout: Duration,
    /// Set when a statement hit its deadline: the connection is in an unknown state (the
    /// statement may still be running, or the server is stopped) and is not used again.
    abandoned: Option<String>,
}

impl Server {
    /// Connects to the runbook's server for `role` and detects the dialect.
    pub async fn connect_to(db: &Database, role: Role) -> Result<Server, DbError> {
        let (url, password) = match role {
            Role::Source => (&db.source, db.source_password.as_deref()),
            Role::Replica => (&db.replica, db.replica_password.as_deref()),
        };
        Server::connect(role, url, password, db.connect_timeout).await
    }

    /// Connects to `url` (with `password` instead of the URL's, if given) within `timeout`
    /// and detects the dialect.
    pub async fn connect(
        role: Role,
        url: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Server, DbError> {
        let normalized = match url.strip_prefix("mariadb://") {
            Some(rest) => format!("mysql://{rest}"),
            None => url.to_string(),
        };
        let opts = Opts::from_url(&normalized).map_err(|e| DbError::Url {
            role,
            message: e.to_string(),
        })?;
        let host = opts.ip_or_hostname().to_string();
        let port = opts.tcp_port();
        let addr = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let user = opts.user().unwrap_or("root").to_string();
        let password = password.or(opts.pass()).unwrap_or("").to_string();
        // Always TCP to the address in the runbook, never a local socket the driver finds.
        let opts: Opts = OptsBuilder::from_opts(opts)
            .prefer_socket(false)
            .user(Some(user.clone()))
            .pass((!password.is_empty()).then(|| password.clone()))
            .into();
        let mut conn = Server::open(role, &addr, &opts, timeout).await?;
        let probe = |e: mysql_async::Error| DbError::Query {
            role,
            addr: addr.clone(),
            context: "reading the server version".into(),
            message: driver_message(&e),
        };
        let late = || DbError::Timeout {
            role,
            addr: addr.clone(),
            context: "reading the server version".into(),
            after: human(timeout),
        };
        let row: Option<(Option<String>, Option<u64>)> =
            tokio::time::timeout(timeout, conn.query_first("SELECT @@version, @@server_id"))
                .await
                .map_err(|_| late())?
                .map_err(probe)?;
        let (version, server_id) = row.unwrap_or_default();
        let version = version.unwrap_or_default();
        let gtid_mode: Option<String> = if version.to_ascii_lowercase().contains("mariadb") {
            None
        } else {
            tokio::time::timeout(timeout, conn.query_first("SELECT @@GLOBAL.gtid_mode"))
                .await
                .map_err(|_| late())?
                .map_err(probe)?
        };
        let dialect =
            Dialect::detect(&version, gtid_mode.as_deref()).map_err(|m| DbError::Refused {
                role,
                addr: addr.clone(),
                message: m,
            })?;
        Ok(Server {
            role,
            addr,
            host,
            port,
            user,
            password,
            dialect,
            server_id: server_id.unwrap_or(0),
            conn,
            opts,
            timeout,
            statement_timeout: timeout,
            abandoned: None,
        })
    }

    async fn open(role: Role, addr: &str, opts: &Opts, timeout: Duration) -> Result<Conn, DbError> {
        match tokio::time::timeout(timeout, Conn::new(opts.clone())).await {
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(DbError::Connect {
                role,
                addr: addr.to_string(),
                message: driver_message(&e),
            }),
            Err(_) => Err(DbError::Connect {
                role,
                addr: addr.to_string(),
                message: format!("no answer within {}", human(timeout)),
            }),
        }
    }

    /// A second, independent connection to the same server, with the same deadlines.
    pub async fn fork(&self) -> Result<Server, DbError> {
        let conn = Server::open(self.role, &self.addr, &self.opts, self.timeout).await?;
        Ok(Server {
            role: self.role,
            addr: self.addr.clone(),
            host: self.host.clone(),
            port: self.port,
            user: self.user.clone(),
            password: self.password.clone(),
            dialect: self.dialect,
            server_id: self.server_id,
            conn,
            opts: self.opts.clone(),
            timeout: self.timeout,
            statement_timeout: self.statement_timeout,
            abandoned: None,
        })
    }

    /// The sessions on this server whose account `read_only` does not stop (see
    /// [`Dialect::privileged_sessions_query`]), as `id user@host (command)`, ours excluded.
    pub async fn privileged_sessions(&mut self) -> Result<Vec<String>, DbError> {
        let rows = self
            .query_strings(&self.dialect.privileged_sessions_query())
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let col = |i: usize| r.get(i).cloned().flatten().unwrap_or_default();
                format!("{} {}@{} ({})", col(0), col(1), col(2), col(3))
            })
            .collect())
    }

    /// Whether this server's binary log holds transactions it wrote itself (it has taken
    /// writes as a primary); `None` when the dialect cannot tell (file/position).
    pub async fn has_own_transactions(&mut self) -> Result<Option<bool>, DbError> {
        let Some(sql) = self.dialect.own_transactions_query() else {
            return Ok(None);
        };
        let rows = self.query_strings(sql).await?;
        let row = rows.into_iter().next().unwrap_or_default();
        let state = row.first().cloned().flatten().unwrap_or_default();
        let uuid = row.get(1).cloned().flatten();
        Ok(Some(position::has_own_transactions(
            self.dialect.flavor,
            &state,
            self.server_id,
            uuid.as_deref(),
        )))
    }

    /// This connection's id (for not killing ourselves).
    pub fn connection_id(&self) -> u32 {
        self.conn.id()
    }

    /// The connect timeout, which is also the default client-side deadline of a statement.
    pub fn connect_timeout(&self) -> Duration {
        self.timeout
    }

    /// Sets the client-side deadline of every later statement on this connection. A statement
    /// that does not answer in time fails with [`DbError::Timeout`] and the connection is
    /// abandoned. Waits ([`Server::wait_query`]) get their own, longer deadline.
    pub fn set_statement_timeout(&mut self, limit: Duration) {
        self.statement_timeout = limit;
    }

    /// Whether a statement on this connection hit its deadline (the connection is not used
    /// again).
    pub fn is_abandoned(&self) -> bool {
        self.abandoned.is_some()
    }

    /// Fails at once when the connection was abandoned.
    fn usable(&self, context: &str) -> Result<(), DbError> {
        match &self.abandoned {
            None => Ok(()),
            Some(after) => Err(DbError::Timeout {
                role: self.role,
                addr: self.addr.clone(),
                context: format!("{context} (connection abandoned after an earlier statement)"),
                after: after.clone(),
            }),
        }
    }

    /// Maps the result of a statement run under `tokio::time::timeout(limit, ..)`.
    fn settle<T>(
        &mut self,
        context: &str,
        limit: Duration,
        r: Result<Result<T, mysql_async::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, DbError> {
        match r {
            Ok(r) => r.map_err(|e| self.query_error(context, &e)),
            Err(_) => {
                let after = human(limit);
                self.abandoned = Some(after.clone());
                Err(DbError::Timeout {
                    role: self.role,
                    addr: self.addr.clone(),
                    context: context.to_string(),
                    after,
                })
            }
        }
    }

    fn query_error(&self, context: &str, e: &mysql_async::Error) -> DbError {
        DbError::Query {
            role: self.role,
            addr: self.addr.clone(),
            context: context.to_string(),
            message: driver_message(e),
        }
    }

    /// A [`DbError::Refused`] about this server.
    pub fn refused(&self, message: impl Into<String>) -> DbError {
        DbError::Refused {
            role: self.role,
            addr: self.addr.clone(),
            message: message.into(),
        }
    }

    /// Points this server's replication at `host:port` as the runbook's replication account,
    /// starting at `start`, and starts it; `label` names the step in errors (the statement
    /// holds the password). The one place a replica is pointed at a source: `setup`,
    /// `promote`'s undo and `--reverse`, and `cutover rollback`'s restore.
    pub async fn replicate_from(
        &mut self,
        db: &Database,
        (host, port): (&str, u16),
        start: StartAt,
        label: &str,
    ) -> Result<(), DbError> {
        let d = self.dialect;
        let spec = SourceSpec {
            host: host.to_string(),
            port,
            user: db.replication_user.clone(),
            password: db.replication_password.clone(),
            start,
        };
        self.exec_secret(label, &d.change_source(&spec)).await?;
        self.exec(d.start_replica()).await
    }

    /// Runs a statement; `sql` appears in the error.
    pub async fn exec(&mut self, sql: &str) -> Result<(), DbError> {
        self.usable(sql)?;
        let limit = self.statement_timeout;
        let r = tokio::time::timeout(limit, self.conn.query_drop(sql)).await;
        self.settle(sql, limit, r)
    }

    /// Runs a statement whose text holds a secret; only `label` appears in errors.
    pub async fn exec_secret(&mut self, label: &str, sql: &str) -> Result<(), DbError> {
        self.usable(label)?;
        let limit = self.statement_timeout;
        let r = tokio::time::timeout(limit, self.conn.query_drop(sql)).await;
        self.settle(label, limit, r)
    }

    /// Runs a statement and returns the server error code instead of failing on server
    /// errors (connection errors still fail).
    pub async fn try_exec(&mut self, sql: &str) -> Result<Option<(u16, String)>, DbError> {
        self.usable(sql)?;
        let limit = self.statement_timeout;
        let r = tokio::time::timeout(limit, self.conn.query_drop(sql)).await;
        match r {
            Ok(Err(e)) => match server_code(&e) {
                Some(code) => Ok(Some((code, driver_message(&e)))),
                None => Err(self.query_error(sql, &e)),
            },
            r => self.settle(sql, limit, r).map(|()| None),
        }
    }

    /// The first column of the first row as a string (`None` for no row or NULL).
    pub async fn query_string(&mut self, sql: &str) -> Result<Option<String>, DbError> {
        let limit = self.statement_timeout;
        self.query_string_within(sql, limit).await
    }

    /// [`Server::query_string`] with its own client-side deadline.
    async fn query_string_within(
        &mut self,
        sql: &str,
        limit: Duration,
    ) -> Result<Option<String>, DbError> {
        self.usable(sql)?;
        let r = tokio::time::timeout(limit, self.conn.query_first::<Row, _>(sql)).await;
        let row = self.settle(sql, limit, r)?;
        Ok(row.and_then(|r| r.as_ref(0).and_then(value_to_string)))
    }

    /// Runs a wait function (`MASTER_GTID_WAIT` and the like) whose own timeout is `server`
    /// and returns its integer result. The client-side deadline is `server` plus a margin for
    /// the answer to arrive (the connect timeout, at most [`WAIT_ANSWER_MARGIN`]): the
    /// server's timeout does not help when the server is stopped, and the statement is then
    /// abandoned with its connection.
    pub async fn wait_query(
        &mut self,
        sql: &str,
        server: Duration,
    ) -> Result<Option<i64>, DbError> {
        let limit = server + self.timeout.min(WAIT_ANSWER_MARGIN);
        Ok(self
            .query_string_within(sql, limit)
            .await?
            .and_then(|v| v.trim().parse::<i64>().ok()))
    }

    /// All rows, each as its values converted to strings (NULL → `None`).
    pub async fn query_strings(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, DbError> {
        self.usable(sql)?;
        let limit = self.statement_timeout;
        let r = tokio::time::timeout(limit, self.conn.query::<Row, _>(sql)).await;
        let rows = self.settle(sql, limit, r)?;
        Ok(rows
            .into_iter()
            .map(|r| Row::unwrap(r).iter().map(value_to_string).collect())
            .collect())
    }

    /// The first row as column name → value (NULL columns absent).
    pub async fn query_map(
        &mut self,
        sql: &str,
    ) -> Result<Option<BTreeMap<String, String>>, DbError> {
        self.usable(sql)?;
        let limit = self.statement_timeout;
        let r = tokio::time::timeout(limit, self.conn.query_first::<Row, _>(sql)).await;
        let row = self.settle(sql, limit, r)?;
        Ok(row.map(|row| {
            let mut map = BTreeMap::new();
            for (i, col) in row.columns_ref().iter().enumerate() {
                if let Some(v) = row.as_ref(i).and_then(value_to_string) {
                    map.insert(col.name_str().into_owned(), v);
                }
            }
            map
        }))
    }

    /// A prepared statement with parameters; the first row's values.
    pub async fn exec_first(
        &mut self,
        sql: &str,
        params: Vec<Value>,
    ) -> Result<Option<Vec<Value>>, DbError> {
        let params = if params.is_empty() {
            Params::Empty
        } else {
            Params::Positional(params)
        };
        self.usable(sql)?;
        let limit = self.statement_timeout;
        let r = tokio::time::timeout(limit, self.conn.exec_first::<Row, _, _>(sql, params)).await;
        let row = self.settle(sql, limit, r)?;
        Ok(row.map(Row::unwrap))
    }

    /// The server's own position (see [`Dialect::own_position_query`]).
    pub async fn own_position(&mut self) -> Result<Position, DbError> {
        let sql = self.dialect.own_position_query();
        if self.dialect.positioning == dialect::Positioning::Gtid {
            return Ok(Position::Gtid(
                self.query_string(sql).await?.unwrap_or_default(),
            ));
        }
        let rows = self.query_strings(sql).await?;
        match rows
            .first()
            .map(|r| (r.first().cloned().flatten(), r.get(1).cloned().flatten()))
        {
            Some((Some(file), Some(pos))) => Ok(Position::File {
                file,
                pos: pos.parse().unwrap_or(0),
            }),
            _ => Err(self.refused("the binary log is off (no binlog status)")),
        }
    }

    /// The binlog file and offset (`SHOW MASTER STATUS`), if the binary log is on.
    pub async fn binlog_coordinate(&mut self) -> Result<Option<(String, u64)>, DbError> {
        let sql = if self.dialect.flavor == dialect::Flavor::MySql
            && self.dialect.version >= dialect::Version(8, 2, 0)
        {
            "SHOW BINARY LOG STATUS"
        } else {
            "SHOW MASTER STATUS"
        };
        let rows = self.query_strings(sql).await?;
        Ok(rows.first().and_then(|r| {
            let file = r.first().cloned().flatten()?;
            let pos = r.get(1).cloned().flatten()?.parse().ok()?;
            Some((file, pos))
        }))
    }

    /// The replica status row, or `None` when this server replicates from nobody.
    pub async fn replica_status(&mut self) -> Result<Option<ReplicaRow>, DbError> {
        let sql = self.dialect.show_replica_status();
        let row = self.query_map(sql).await?;
        Ok(row.map(|raw| ReplicaRow {
            status: ReplicaStatus::from_row(&self.dialect, &raw),
            source_server_id: raw
                .get("Master_Server_Id")
                .or_else(|| raw.get("Source_Server_Id"))
                .and_then(|v| v.parse().ok()),
        }))
    }

    /// What a GTID replica has applied.
    pub async fn applied_position(&mut self) -> Result<Option<String>, DbError> {
        match self.dialect.applied_position_query() {
            Some(q) => Ok(Some(self.query_string(q).await?.unwrap_or_default())),
            None => Ok(None),
        }
    }

    /// `@@GLOBAL.<name>` as a string.
    pub async fn global(&mut self, name: &str) -> Result<Option<String>, DbError> {
        self.query_string(&format!("SELECT @@GLOBAL.{name}")).await
    }

    /// `@@GLOBAL.<name>` as a boolean (`1`/`ON`).
    pub async fn global_bool(&mut self, name: &str) -> Result<bool, DbError> {
        Ok(self
            .global(name)
            .await?
            .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("ON")))
    }

    /// Polls the replica status until both threads run, or reports why not after `timeout`.
    pub async fn wait_replicating(&mut self, timeout: Duration) -> Result<ReplicaStatus, DbError> {
        let start = Instant::now();
        loop {
            let row = self.replica_status().await?;
            let Some(row) = row else {
                return Err(self.refused("replication is not configured"));
            };
            let problem = row.status.problem();
            // A thread that stopped on an error will not recover by waiting.
            let fatal = row.status.sql.last_errno != 0
                || (row.status.io.last_errno != 0
                    && row.status.io.state == position::ThreadState::Stopped);
            match problem {
                None => return Ok(row.status),
                Some(p) if fatal || start.elapsed() >= timeout => {
                    return Err(self.refused(format!("replication is not running: {p}")));
                }
                Some(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Closes the connection politely, within the connect timeout; an abandoned connection
    /// is just dropped.
    pub async fn close(self) {
        if self.abandoned.is_none() {
            let _ = tokio::time::timeout(self.timeout, self.conn.disconnect()).await;
        }
    }
}

/// A replica status row plus the source's server id as the replica sees it.
#[derive(Debug, Clone)]
pub struct ReplicaRow {
    /// The parsed status.
    pub status: ReplicaStatus,
    /// `Master_Server_Id` / `Source_Server_Id` (0 or `None` when not connected yet).
    pub source_server_id: Option<u64>,
}

/// A duration for messages, to the millisecond (`2s 999ms`, not `2s 999ms 999us 924ns`).
pub fn human(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    humantime::format_duration(Duration::from_millis(ms)).to_string()
}

/// A value as text, `None` for NULL.
fn value_to_string(v: &Value) -> Option<String> {
    match v {
        Value::NULL => None,
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(i) => Some(i.to_string()),
        Value::UInt(u) => Some(u.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Double(d) => Some(d.to_string()),
        other => Some(other.as_sql(true).trim_matches('\'').to_string()),
    }
}

/// Connects to both servers of the runbook and checks that they speak the same dialect.
pub async fn connect_pair(db: &Database) -> Result<(Server, Server), DbError> {
    let (source, replica) = tokio::join!(
        Server::connect_to(db, Role::Source),
        Server::connect_to(db, Role::Replica),
    );
    let (source, replica) = (source?, replica?);
    if source.dialect.flavor != replica.dialect.flavor {
        return Err(replica.refused(format!(
            "is {} but the source is {}; cross-flavour replication is not supported",
            replica.dialect.describe(),
            source.dialect.describe()
        )));
    }
    Ok((source, replica))
}

/// Where the replica should connect to reach the source.
pub fn source_address(db: &Database, source: &Server) -> (String, u16) {
    db.source_address_for_replica
        .clone()
        .unwrap_or_else(|| (source.host.clone(), source.port))
}

/// Schemas that belong to the server itself, never to the application.
pub const SYSTEM_SCHEMAS: &[&str] = &["mysql", "information_schema", "performance_schema", "sys"];

/// The schema `cutover` keeps its heartbeat table in.
pub const HEARTBEAT_SCHEMA: &str = "cutover";

/// Application schemas on a server (everything but [`SYSTEM_SCHEMAS`]).
pub async fn application_schemas(server: &mut Server) -> Result<Vec<String>, DbError> {
    let rows = server
        .query_strings("SELECT SCHEMA_NAME FROM information_schema.SCHEMATA ORDER BY SCHEMA_NAME")
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter(|s| !SYSTEM_SCHEMAS.contains(&s.as_str()))
        .collect())
}

/// Application schemas that hold something: a table, a view, a routine or an event. An empty
/// schema, such as the stock `test` schema that `mariadb-install-db` creates, is not data.
pub async fn schemas_with_data(server: &mut Server) -> Result<Vec<String>, DbError> {
    let rows = server.query_strings(dialect::SCHEMAS_WITH_OBJECTS).await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| r.into_iter().next().flatten())
        .filter(|s| !SYSTEM_SCHEMAS.contains(&s.as_str()))
        .collect())
}

/// SIGINT and SIGTERM, caught from the moment this value exists (not from the first poll, as
/// `tokio::signal::ctrl_c` would): create it before changing anything that an interruption
/// must put back, then select on [`Interrupts::recv`]. The handlers stay installed for the
/// rest of the process, so a second signal during the undo does not cut the undo short.
pub(crate) struct Interrupts {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    /// Installs the handlers (a signal that cannot be caught is just never reported).
    pub(crate) fn new() -> Interrupts {
        use tokio::signal::unix::{SignalKind, signal};
        Interrupts {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Resolves when the process is asked to stop, with the signal's name.
    pub(crate) async fn recv(&mut self) -> &'static str {
        async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            _ = next(&mut self.int) => "SIGINT",
            _ = next(&mut self.term) => "SIGTERM",
        }
    }
}
