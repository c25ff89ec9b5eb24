//! `cutover lb`: HAProxy's runtime API, over a unix socket or `HOST:PORT`.
//!
//! Three commands, each reading top to bottom in the order it acts:
//! - [`drain`]: `set server B/S state drain` on the source, poll `show stat` until its `scur` is
//!   0 or `drain_timeout` has passed, then `state maint`; reports the sessions still open and how
//!   long it took.
//! - [`ready`]: `state ready` on the destination, then wait until HAProxy's own health check
//!   says UP (`ready_timeout`). The source is never touched.
//! - [`status`]: both servers' admin state, operational state, `scur` and check status.
//!
//! Every change is read back (`show servers state`) before the command goes on. The commands,
//! the parsing of the answers and the waiting decisions are in [`api`], which does no IO; this
//! module only sends one command per connection (HAProxy's non-interactive mode: it answers and
//! closes) and keeps time. Errors name the socket.

pub mod api;

use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::runbook::{AdminSocket, LoadBalancer};
use api::{DrainStep, ReadyStep, Refusal, ServerStat, ServerState, SetState, TableError};

/// Why an `lb` command could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The socket could not be reached.
    #[error("cannot connect to the HAProxy admin socket {socket}: {error}")]
    Connect {
        /// The socket.
        socket: String,
        /// The cause (in the message).
        error: std::io::Error,
    },
    /// The socket accepted the command but did not answer in time.
    #[error("the HAProxy admin socket {socket} did not answer `{command}` within {timeout:?}")]
    NoAnswer {
        /// The socket.
        socket: String,
        /// The command sent.
        command: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// Reading or writing the connection failed.
    #[error("HAProxy admin socket {socket}: `{command}`: {error}")]
    Io {
        /// The socket.
        socket: String,
        /// The command sent.
        command: String,
        /// The cause.
        error: std::io::Error,
    },
    /// HAProxy said `Permission denied`.
    #[error(
        "HAProxy admin socket {socket}: permission denied for `{command}`: the socket is not at \
         admin level (`stats socket ... level admin`)"
    )]
    PermissionDenied {
        /// The socket.
        socket: String,
        /// The command refused.
        command: String,
    },
    /// The backend does not exist.
    #[error("HAProxy admin socket {socket}: no backend {backend:?}")]
    NoSuchBackend {
        /// The socket.
        socket: String,
        /// The backend named in the runbook.
        backend: String,
    },
    /// The backend has no such server.
    #[error("HAProxy admin socket {socket}: backend {backend:?} has no server {server:?}")]
    NoSuchServer {
        /// The socket.
        socket: String,
        /// The backend.
        backend: String,
        /// The server named in the runbook.
        server: String,
    },
    /// HAProxy answered something we did not expect.
    #[error("HAProxy admin socket {socket}: unexpected answer to `{command}`: {answer}")]
    Unexpected {
        /// The socket.
        socket: String,
        /// The command.
        command: String,
        /// The answer (first line, or what was wrong with it).
        answer: String,
    },
    /// A change did not show when read back.
    #[error(
        "HAProxy admin socket {socket}: `{command}` was accepted but {backend}/{server} reads back \
         as {got}"
    )]
    NotApplied {
        /// The socket.
        socket: String,
        /// The command.
        command: String,
        /// The backend.
        backend: String,
        /// The server.
        server: String,
        /// The admin state read back.
        got: String,
    },
}

/// One server as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerView {
    /// The server name.
    pub server: String,
    /// Its role in the runbook: `source` or `destination`.
    pub role: &'static str,
    /// Admin state: `ready`, `drain`, `maint` or `maint+drain`.
    pub admin_state: String,
    /// The raw `srv_admin_state` bits.
    pub admin_bits: u32,
    /// Operational state: `running`, `stopped`, `starting`, `stopping`.
    pub op_state: String,
    /// `show stat` status: `UP`, `DOWN`, `MAINT`, `DRAIN`, `no check`, ...
    pub status: String,
    /// Sessions open now.
    pub scur: u64,
    /// Last health check result (`L7OK`, `L4CON`, ...), empty without checks.
    pub check_status: String,
    /// Its description.
    pub check_desc: String,
}

/// What `status` found.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// The socket asked.
    pub socket: String,
    /// The backend.
    pub backend: String,
    /// The source server, then the destination.
    pub servers: Vec<ServerView>,
    /// Servers in rotation whose health check does not pass (exit 1 when any).
    pub problems: Vec<String>,
}

/// What `drain` did.
#[derive(Debug, Clone, Serialize)]
pub struct DrainReport {
    /// The socket.
    pub socket: String,
    /// `backend/server`.
    pub server: String,
    /// Sessions open when the drain started.
    pub sessions_at_start: u64,
    /// Sessions still open when it was set to maint (0: drained).
    pub sessions_open: u64,
    /// Whether `drain_timeout` ended the wait.
    pub timed_out: bool,
    /// From `state drain` to `state maint` being read back, in milliseconds.
    pub drain_ms: u64,
    /// Whether the server was in maint already (nothing was changed).
    pub already_maint: bool,
    /// The state read back at the end.
    pub after: ServerView,
    /// True when no session was left open.
    pub ok: bool,
}

/// What `ready` did.
#[derive(Debug, Clone, Serialize)]
pub struct ReadyReport {
    /// The socket.
    pub socket: String,
    /// `backend/server`.
    pub server: String,
    /// Its admin state before.
    pub before: String,
    /// From `state ready` to the check saying UP (or to the timeout), in milliseconds.
    pub waited_ms: u64,
    /// Whether HAProxy has no health check for it (it is in rotation unchecked).
    pub unchecked: bool,
    /// The state read back at the end.
    pub after: ServerView,
    /// True when the health check says UP (or there is none).
    pub ok: bool,
}

/// A connection factory for one admin socket.
#[derive(Debug, Clone)]
struct Admin {
    socket: AdminSocket,
    name: String,
    timeout: Duration,
}

impl Admin {
    fn new(lb: &LoadBalancer) -> Admin {
        Admin {
            socket: lb.admin_socket.clone(),
            name: lb.admin_socket.to_string(),
            timeout: lb.timeout,
        }
    }

    /// Sends one command on a new connection and reads the answer until HAProxy closes.
    async fn send(&self, command: &str) -> Result<String, LbError> {
        let no_answer = || LbError::NoAnswer {
            socket: self.name.clone(),
            command: command.to_string(),
            timeout: self.timeout,
        };
        let exchange = async {
            match &self.socket {
                AdminSocket::Unix(path) => {
                    let stream = tokio::net::UnixStream::connect(path)
                        .await
                        .map_err(|error| LbError::Connect {
                            socket: self.name.clone(),
                            error,
                        })?;
                    self.talk(stream, command).await
                }
                AdminSocket::Tcp { host, port } => {
                    let stream = tokio::net::TcpStream::connect((host.as_str(), *port))
                        .await
                        .map_err(|error| LbError::Connect {
                            socket: self.name.clone(),
                            error,
                        })?;
                    self.talk(stream, command).await
                }
            }
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| no_answer())?
    }

    async fn talk<S>(&self, mut stream: S, command: &str) -> Result<String, LbError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let io = |error| LbError::Io {
            socket: self.name.clone(),
            command: command.to_string(),
            error,
        };
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(io)?;
        let mut answer = Vec::new();
        // An answer is at most a few KiB per server; cap it so that a wrong peer cannot fill
        // memory.
        let mut limited = (&mut stream).take(16 << 20);
        limited.read_to_end(&mut answer).await.map_err(io)?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    fn refused(&self, r: Refusal, command: &str, backend: &str, server: &str) -> LbError {
        match r {
            Refusal::PermissionDenied => LbError::PermissionDenied {
                socket: self.name.clone(),
                command: command.to_string(),
            },
            Refusal::NoSuchBackend => LbError::NoSuchBackend {
                socket: self.name.clone(),
                backend: backend.to_string(),
            },
            Refusal::NoSuchServer => LbError::NoSuchServer {
                socket: self.name.clone(),
                backend: backend.to_string(),
                server: server.to_string(),
            },
            Refusal::Other(answer) => LbError::Unexpected {
                socket: self.name.clone(),
                command: command.to_string(),
                answer,
            },
        }
    }

    fn table_error(&self, e: TableError, command: &str, backend: &str, server: &str) -> LbError {
        match e {
            TableError::Refused(r) => self.refused(r, command, backend, server),
            TableError::Malformed(answer) => LbError::Unexpected {
                socket: self.name.clone(),
                command: command.to_string(),
                answer,
            },
        }
    }

    /// `show stat` of one server.
    async fn stat(&self, backend: &str, server: &str) -> Result<ServerStat, LbError> {
        let command = api::show_stat(backend);
        let answer = self.send(&command).await?;
        api::parse_stat(&answer, backend, server)
            .map_err(|e| self.table_error(e, &command, backend, server))?
            .ok_or_else(|| self.refused(Refusal::NoSuchServer, &command, backend, server))
    }

    /// `show servers state` of one server.
    async fn state(&self, backend: &str, server: &str) -> Result<ServerState, LbError> {
        let command = api::show_servers_state(backend);
        let answer = self.send(&command).await?;
        api::parse_servers_state(&answer, server)
            .map_err(|e| self.table_error(e, &command, backend, server))?
            .ok_or_else(|| self.refused(Refusal::NoSuchServer, &command, backend, server))
    }

    async fn view(
        &self,
        backend: &str,
        server: &str,
        role: &'static str,
    ) -> Result<ServerView, LbError> {
        let state = self.state(backend, server).await?;
        let stat = self.stat(backend, server).await?;
        Ok(ServerView {
            server: server.to_string(),
            role,
            admin_state: state.admin.to_string(),
            admin_bits: state.admin.0,
            op_state: state.op.to_string(),
            status: stat.status,
            scur: stat.scur,
            check_status: stat.check_status,
            check_desc: stat.check_desc,
        })
    }

    /// `set server B/S state X`, then reads the admin state back until it shows.
    async fn set(&self, backend: &str, server: &str, state: SetState) -> Result<(), LbError> {
        let command = api::set_state(backend, server, state);
        let answer = self.send(&command).await?;
        api::interpret_set(&answer).map_err(|r| self.refused(r, &command, backend, server))?;
        // HAProxy applies an admin change from its server task, so the read-back may see the
        // old state for a moment: read again until it shows or `timeout` has passed.
        let started = Instant::now();
        let mut read = self.state(backend, server).await?;
        while !read.admin.is(state) && started.elapsed() < self.timeout {
            tokio::time::sleep(Duration::from_millis(20)).await;
            read = self.state(backend, server).await?;
        }
        if !read.admin.is(state) {
            return Err(LbError::NotApplied {
                socket: self.name.clone(),
                command,
                backend: backend.to_string(),
                server: server.to_string(),
                got: read.admin.to_string(),
            });
        }
        Ok(())
    }
}

/// The runtime API level of the admin socket (`show cli level`): `admin`, `operator` or
/// `user`; `drain` and `ready` need `admin`.
pub async fn cli_level(lb: &LoadBalancer) -> Result<String, LbError> {
    let answer = Admin::new(lb).send("show cli level").await?;
    Ok(answer.trim().to_string())
}

/// Both servers' admin state, operational state, sessions and check status.
pub async fn status(lb: &LoadBalancer) -> Result<StatusReport, LbError> {
    let admin = Admin::new(lb);
    let servers = vec![
        admin.view(&lb.backend, &lb.source_server, "source").await?,
        admin
            .view(&lb.backend, &lb.destination_server, "destination")
            .await?,
    ];
    let problems = servers
        .iter()
        .filter_map(|v| {
            let stat = ServerStat {
                scur: v.scur,
                status: v.status.clone(),
                check_status: v.check_status.clone(),
                check_desc: v.check_desc.clone(),
            };
            api::rotation_problem(&v.server, api::AdminState(v.admin_bits), &stat)
        })
        .collect();
    Ok(StatusReport {
        socket: admin.name,
        backend: lb.backend.clone(),
        servers,
        problems,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Drains the source server and puts it in maint.
pub async fn drain(lb: &LoadBalancer) -> Result<DrainReport, LbError> {
    let admin = Admin::new(lb);
    let (backend, server) = (lb.backend.as_str(), lb.source_server.as_str());
    // Both servers must exist before anything changes.
    admin
        .view(backend, &lb.destination_server, "destination")
        .await?;
    let before = admin.view(backend, server, "source").await?;
    let report =
        |sessions_at_start, sessions_open, timed_out, drain_ms, already_maint, after| DrainReport {
            socket: admin.name.clone(),
            server: format!("{backend}/{server}"),
            sessions_at_start,
            sessions_open,
            timed_out,
            drain_ms,
            already_maint,
            after,
            ok: sessions_open == 0,
        };
    if api::AdminState(before.admin_bits).is(SetState::Maint) {
        // `state drain` would take it out of maint; it has no new sessions already.
        let scur = before.scur;
        return Ok(report(scur, scur, false, 0, true, before));
    }
    let started = Instant::now();
    admin.set(backend, server, SetState::Drain).await?;
    let mut scur = admin.stat(backend, server).await?.scur;
    let at_start = scur;
    let (open, timed_out) = loop {
        match api::drain_step(scur, started.elapsed(), lb.drain_timeout, lb.poll_interval) {
            DrainStep::Done { open, timed_out } => break (open, timed_out),
            DrainStep::Wait(pause) => {
                tokio::time::sleep(pause).await;
                scur = admin.stat(backend, server).await?.scur;
            }
        }
    };
    admin.set(backend, server, SetState::Maint).await?;
    let drain_ms = millis(started.elapsed());
    let after = admin.view(backend, server, "source").await?;
    Ok(report(at_start, open, timed_out, drain_ms, false, after))
}

/// Puts the destination server in rotation and waits for its health check to say UP.
pub async fn ready(lb: &LoadBalancer) -> Result<ReadyReport, LbError> {
    let admin = Admin::new(lb);
    let (backend, server) = (lb.backend.as_str(), lb.destination_server.as_str());
    admin.view(backend, &lb.source_server, "source").await?;
    let before = admin.view(backend, server, "destination").await?;
    let started = Instant::now();
    admin.set(backend, server, SetState::Ready).await?;
    let step = loop {
        let stat = admin.stat(backend, server).await?;
        match api::ready_step(&stat, started.elapsed(), lb.ready_timeout, lb.poll_interval) {
            ReadyStep::Wait(pause) => tokio::time::sleep(pause).await,
            done => break done,
        }
    };
    let waited_ms = millis(started.elapsed());
    let after = admin.view(backend, server, "destination").await?;
    Ok(ReadyReport {
        socket: admin.name,
        server: format!("{backend}/{server}"),
        before: before.admin_state,
        waited_ms,
        unchecked: step == ReadyStep::Unchecked,
        after,
        ok: step != ReadyStep::TimedOut,
    })
}
