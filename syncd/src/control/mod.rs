//! The control socket of a `syncd push --watch` or `syncd serve` (`--control PATH`), and
//! its typed client.
//!
//! A unix stream socket, mode 0600, that answers JSON lines ([`proto`] is the model and
//! the codec; the protocol is written out in `ARCHITECTURE.md`). Only a peer with the
//! daemon's own uid is served (`SO_PEERCRED`): any other gets one error line and the
//! connection is closed. Each connection is its own task and every request is answered
//! from shared state ([`Shared`]) or by a message to the daemon's loop, so a slow or
//! malformed client never stalls the sync, and never crashes the daemon.
//!
//! The client ([`Client`]) is blocking (std sockets, with a timeout), so that it works
//! from any context: `syncd status`, or `cutover` inside `spawn_blocking`.
//!
//! ```no_run
//! let mut c = syncd::control::Client::connect("/run/syncd/push.sock")?;
//! let s = c.status()?;
//! println!("converged: {}", s.converged);
//! # Ok::<(), syncd::control::ControlError>(())
//! ```

pub mod proto;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot};

pub use proto::{FinalSync, Reply, Request, Status};

use crate::lock::lock;
use crate::transport::Throttle;

/// Errors of the control socket, on either side. Each carries the socket path.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The socket could not be reached (no daemon there, or not allowed).
    #[error("{}: cannot connect to the control socket: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the socket failed, or the daemon took longer than the timeout.
    #[error("{}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's answer is not a reply to what was asked.
    #[error("{}: {message}", path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// The daemon answered `{"ok":false}`.
    #[error("{}: the daemon refused: {message}", path.display())]
    Refused {
        /// The socket.
        path: PathBuf,
        /// Its error message.
        message: String,
    },
    /// The socket could not be created.
    #[error("{}: cannot create the control socket: {source}", path.display())]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on this path.
    #[error("{}: another daemon is already listening there", path.display())]
    InUse {
        /// The socket.
        path: PathBuf,
    },
}

// ------------------------------------------------------------------ client

/// How long [`Client`] waits for a reply by default (a final sync pushes first).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(600);

/// A connection to a daemon's control socket. Requests are answered in order.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    /// Connects to the socket at `path`, with replies awaited for [`CLIENT_TIMEOUT`].
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ControlError> {
        let path = path.as_ref().to_path_buf();
        let stream = std::os::unix::net::UnixStream::connect(&path).map_err(|source| {
            ControlError::Connect {
                path: path.clone(),
                source,
            }
        })?;
        let c = Client {
            reader: BufReader::new(stream),
            path,
        };
        c.set_timeout(CLIENT_TIMEOUT)?;
        Ok(c)
    }

    /// Changes how long a reply is awaited.
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), ControlError> {
        let s = self.reader.get_ref();
        s.set_read_timeout(Some(timeout))
            .and_then(|()| s.set_write_timeout(Some(timeout)))
            .map_err(|source| self.io(source))
    }

    fn io(&self, source: std::io::Error) -> ControlError {
        ControlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends `req` and reads its reply; `{"ok":false}` is [`ControlError::Refused`].
    pub fn request(&mut self, req: &Request) -> Result<Reply, ControlError> {
        // A daemon that refuses this peer answers before it reads and closes: its reason
        // may be waiting even when the write fails.
        let written = self.reader.get_mut().write_all(&proto::encode_request(req));
        let mut line = Vec::new();
        let read = std::io::Read::take(&mut self.reader, proto::MAX_LINE as u64 * 64)
            .read_until(b'\n', &mut line);
        let n = match (written, read) {
            (_, Ok(n)) if n > 0 => n,
            (Err(e), _) => return Err(self.io(e)),
            (Ok(()), r) => r.map_err(|e| self.io(e))?,
        };
        if n == 0 {
            return Err(ControlError::Protocol {
                path: self.path.clone(),
                message: "the daemon closed the connection without a reply".into(),
            });
        }
        match proto::decode_reply(req, line.strip_suffix(b"\n").unwrap_or(&line)) {
            Ok(Reply::Error(message)) => Err(ControlError::Refused {
                path: self.path.clone(),
                message,
            }),
            Ok(r) => Ok(r),
            Err(message) => Err(ControlError::Protocol {
                path: self.path.clone(),
                message,
            }),
        }
    }

    fn unexpected(&self, r: Reply) -> ControlError {
        ControlError::Protocol {
            path: self.path.clone(),
            message: format!("unexpected reply {r:?}"),
        }
    }

    /// `status`.
    pub fn status(&mut self) -> Result<Status, ControlError> {
        match self.request(&Request::Status)? {
            Reply::Status(s) => Ok(*s),
            r => Err(self.unexpected(r)),
        }
    }

    /// `final-sync`: flushes what is pending, pushes, compares roots.
    pub fn final_sync(&mut self) -> Result<FinalSync, ControlError> {
        match self.request(&Request::FinalSync)? {
            Reply::FinalSync(f) => Ok(f),
            r => Err(self.unexpected(r)),
        }
    }

    /// `set-bwlimit`: `rate` in `RATE` syntax (`"50M"`, `"6MB"`, `"0"` = unlimited).
    /// Returns the cap now in force, in bytes per second (`None` = unlimited).
    pub fn set_bwlimit(&mut self, rate: &str) -> Result<Option<u64>, ControlError> {
        match self.request(&Request::SetBwlimit { rate: rate.into() })? {
            Reply::Done { bwlimit } => Ok(bwlimit),
            r => Err(self.unexpected(r)),
        }
    }

    /// `pause`.
    pub fn pause(&mut self) -> Result<(), ControlError> {
        self.request(&Request::Pause).map(drop)
    }

    /// `resume`.
    pub fn resume(&mut self) -> Result<(), ControlError> {
        self.request(&Request::Resume).map(drop)
    }
}

// ------------------------------------------------------------------ server side

/// A final sync asked of the daemon's loop; it answers on the channel.
pub type FinalSyncRequest = oneshot::Sender<Reply>;

/// The state a daemon shares with its control socket: the status it keeps up to date, the
/// pause flag, the live throttle, and the channel its loop takes final syncs from.
#[derive(Debug)]
pub struct Shared {
    status: Mutex<Status>,
    /// When the oldest change not yet applied remotely was seen (`lag_seconds` is its age
    /// at the moment `status` is asked).
    unapplied_since: Mutex<Option<std::time::Instant>>,
    paused: AtomicBool,
    resumed: Notify,
    throttle: Throttle,
    final_sync: Mutex<Option<mpsc::Sender<FinalSyncRequest>>>,
}

impl Shared {
    /// State for a daemon of `role` (`"push"` or `"serve"`) whose bandwidth cap is
    /// `throttle` (rate 0 = unlimited).
    pub fn new(role: &str, throttle: Throttle) -> Arc<Shared> {
        Arc::new(Shared {
            status: Mutex::new(Status {
                role: role.into(),
                ..Status::default()
            }),
            unapplied_since: Mutex::new(None),
            paused: AtomicBool::new(false),
            resumed: Notify::new(),
            throttle,
            final_sync: Mutex::new(None),
        })
    }

    /// The throttle that `set-bwlimit` changes.
    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Updates the status under its lock.
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        let mut s = lock(&self.status);
        f(&mut s);
    }

    /// Sets when the oldest change not yet applied remotely was seen (`None`: none is).
    pub fn set_unapplied_since(&self, since: Option<std::time::Instant>) {
        *lock(&self.unapplied_since) = since;
    }

    /// A copy of the status, with the live fields (pause, bwlimit, lag) filled in.
    pub fn status(&self) -> Status {
        let mut s = lock(&self.status).clone();
        s.paused = self.is_paused();
        s.lag_seconds = lock(&self.unapplied_since).map(|t| t.elapsed().as_secs_f64());
        s.bwlimit = Some(self.throttle.rate()).filter(|&r| r > 0);
        s
    }

    /// Whether `pause` is in force.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Returns once not paused.
    pub async fn wait_unpaused(&self) {
        loop {
            let notified = self.resumed.notified();
            if !self.is_paused() {
                return;
            }
            notified.await;
        }
    }

    /// Takes final-sync requests from now on (without it, `final-sync` is refused).
    pub fn final_syncs(&self) -> mpsc::Receiver<FinalSyncRequest> {
        let (tx, rx) = mpsc::channel(8);
        *lock(&self.final_sync) = Some(tx);
        rx
    }

    /// Answers one request.
    pub async fn handle(&self, req: Request) -> Reply {
        let sends = self.status().role != "serve";
        match req {
            Request::Status => Reply::Status(Box::new(self.status())),
            // A receiver sends nothing and starts no batch: there is nothing to cap, pause
            // or flush there (the sender's socket does it), and "ok" would be a lie.
            Request::Pause | Request::Resume | Request::SetBwlimit { .. } | Request::FinalSync
                if !sends =>
            {
                Reply::Error(
                    "a serve only receives: send pause, resume, set-bwlimit and final-sync to the sending push --watch's socket".into(),
                )
            }
            Request::Pause => {
                self.paused.store(true, Ordering::SeqCst);
                Reply::Done { bwlimit: None }
            }
            Request::Resume => {
                self.paused.store(false, Ordering::SeqCst);
                self.resumed.notify_waiters();
                Reply::Done { bwlimit: None }
            }
            Request::SetBwlimit { rate } => match crate::rate::parse_rate(&rate) {
                Ok(r) => {
                    self.throttle.set_rate(r);
                    Reply::Done {
                        bwlimit: Some(r).filter(|&r| r > 0),
                    }
                }
                Err(e) => Reply::Error(e.to_string()),
            },
            Request::FinalSync => {
                let tx = lock(&self.final_sync)
                    .clone();
                let Some(tx) = tx else {
                    return Reply::Error("this daemon does not run final syncs".into());
                };
                let (rtx, rrx) = oneshot::channel();
                if tx.send(rtx).await.is_err() {
                    return Reply::Error("the daemon is shutting down".into());
                }
                rrx.await
                    .unwrap_or_else(|_| Reply::Error("the daemon is shutting down".into()))
            }
        }
    }
}

/// The most connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Creates the socket at `path` with mode 0600. A stale socket (nobody answers) is
/// replaced; a live one is [`ControlError::InUse`]. The socket is bound under a temporary
/// name, given its mode, then renamed into place, so it is never reachable with a wider
/// mode.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, ControlError> {
    let bind_err = |source| ControlError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if std::fs::symlink_metadata(path).is_ok() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_path_buf(),
            });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    let name = path.file_name().map(|n| n.to_os_string()).ok_or_else(|| {
        bind_err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = tokio::net::UnixListener::bind(&tmp).map_err(bind_err)?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(bind_err(e));
    }
    Ok(listener)
}

/// Serves `listener` (from [`bind`] at `path`) for as long as the future runs: each
/// connection in its own task, at most [`MAX_CONNECTIONS`] at once. Peers whose uid is
/// not the socket's owner get an error line and are disconnected.
pub async fn serve(listener: tokio::net::UnixListener, path: PathBuf, shared: Arc<Shared>) {
    let owner = std::fs::metadata(&path).map(|m| m.uid()).ok();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(_) => {
                // EMFILE and the like: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            connection(stream, owner, shared).await;
        });
    }
}

/// Removes the socket file on drop (a daemon's clean exit).
#[derive(Debug)]
pub struct Unlink(pub PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Idle connections are closed after this long.
const IDLE: Duration = Duration::from_secs(3600);

async fn connection(mut stream: tokio::net::UnixStream, owner: Option<u32>, shared: Arc<Shared>) {
    let uid = stream.peer_cred().map(|c| c.uid()).ok();
    if uid.is_none() || uid != owner {
        let who = uid.map_or_else(|| "unknown".to_string(), |u| u.to_string());
        let reply = Reply::Error(format!(
            "permission denied: uid {who} is not the daemon's uid; only its own user may use this socket"
        ));
        let _ = stream.write_all(&proto::encode_reply(&reply)).await;
        let _ = stream.shutdown().await;
        return;
    }
    let mut lines = proto::Lines::default();
    let mut buf = vec![0u8; 4096];
    loop {
        loop {
            match lines.next_line() {
                Ok(Some(line)) => {
                    let reply = match proto::decode_request(&line) {
                        Ok(req) => shared.handle(req).await,
                        Err(e) => Reply::Error(e),
                    };
                    if stream
                        .write_all(&proto::encode_reply(&reply))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(proto::TooLong) => {
                    let reply = Reply::Error(format!(
                        "request longer than {} bytes; closing",
                        proto::MAX_LINE
                    ));
                    let _ = stream.write_all(&proto::encode_reply(&reply)).await;
                    return;
                }
            }
        }
        match tokio::time::timeout(IDLE, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => lines.extend(&buf[..n]),
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn daemon(dir: &Path) -> (PathBuf, Arc<Shared>) {
        let path = dir.join("c.sock");
        let shared = Shared::new("push", Throttle::new(0));
        let listener = bind(&path).unwrap();
        tokio::spawn(serve(listener, path.clone(), shared.clone()));
        (path, shared)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn socket_is_0600_and_answers_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let (path, shared) = daemon(dir.path());
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        shared.update(|s| s.local_root = "aa".into());
        let mut rx = shared.final_syncs();
        tokio::spawn(async move {
            while let Some(tx) = rx.recv().await {
                let _ = tx.send(Reply::FinalSync(FinalSync::Converged { root: "aa".into() }));
            }
        });
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut c = Client::connect(&p).unwrap();
            assert_eq!(c.status().unwrap().local_root, "aa");
            assert_eq!(c.set_bwlimit("8M").unwrap(), Some(1_000_000));
            assert_eq!(c.status().unwrap().bwlimit, Some(1_000_000));
            assert_eq!(c.set_bwlimit("0").unwrap(), None);
            c.pause().unwrap();
            assert!(c.status().unwrap().paused);
            c.resume().unwrap();
            assert!(!c.status().unwrap().paused);
            assert_eq!(
                c.final_sync().unwrap(),
                FinalSync::Converged { root: "aa".into() }
            );
            let e = c.set_bwlimit("1000").unwrap_err();
            assert!(
                matches!(&e, ControlError::Refused { message, .. } if message.contains("unit")),
                "{e}"
            );
            assert!(e.to_string().contains("c.sock"), "{e}");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn malformed_lines_get_error_replies_and_the_daemon_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _shared) = daemon(dir.path());
        let p = path.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = std::os::unix::net::UnixStream::connect(&p).unwrap();
            s.write_all(b"garbage\n{\"cmd\":\"nope\"}\n{\"cmd\":\"status\"}\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            for want_ok in [false, false, true] {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["ok"], want_ok, "{line}");
            }
            // An endless line: one error reply, then the connection closes.
            s.write_all(&vec![b'x'; proto::MAX_LINE + 10]).unwrap();
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            assert!(line.contains("longer than"), "{line}");
            // The daemon still serves new clients.
            let mut c = Client::connect(&p).unwrap();
            c.status().unwrap();
            // final-sync without a loop to run it is refused, not hung.
            assert!(matches!(c.final_sync(), Err(ControlError::Refused { .. })));
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_receiver_refuses_what_only_a_sender_can_do() {
        let shared = Shared::new("serve", Throttle::new(0));
        assert!(matches!(
            shared.handle(Request::Status).await,
            Reply::Status(_)
        ));
        for r in [
            Request::Pause,
            Request::Resume,
            Request::FinalSync,
            Request::SetBwlimit { rate: "1M".into() },
        ] {
            assert!(matches!(shared.handle(r).await, Reply::Error(_)));
        }
        assert!(!shared.is_paused());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_live_socket_is_not_replaced_a_stale_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let (path, _shared) = daemon(dir.path());
        assert!(matches!(bind(&path), Err(ControlError::InUse { .. })));
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        bind(&stale).unwrap();
        let e = Client::connect(dir.path().join("none.sock")).unwrap_err();
        assert!(e.to_string().contains("none.sock"), "{e}");
    }
}
