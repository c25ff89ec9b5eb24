//! A tiny HTTP/1.1 server on a free loopback port, for tests that need a backend or a target.
//!
//! It answers every request with `Connection: close`:
//! - `GET /health`: `200 ok` (or the status set with [`HttpServer::set_health`]);
//! - `GET /slow?ms=N`: waits N milliseconds, then answers like `/`;
//! - anything else: `200` with the server's name as the body and an `X-Server: NAME` header.
//!
//! [`HttpsServer`] answers the same over TLS with a fresh self-signed certificate. Each
//! connection gets its own thread. Dropping the server stops accepting; connections in
//! progress finish on their own.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

/// A running test HTTP server.
#[derive(Debug)]
pub struct HttpServer {
    /// Its loopback port.
    pub port: u16,
    name: String,
    stop: Arc<AtomicBool>,
    health: Arc<AtomicU16>,
    served: Arc<AtomicU64>,
}

impl HttpServer {
    /// Starts a server that names itself `name` in its answers.
    pub fn start(name: &str) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let health = Arc::new(AtomicU16::new(200));
        let served = Arc::new(AtomicU64::new(0));
        let (s, h, n, label) = (
            stop.clone(),
            health.clone(),
            served.clone(),
            name.to_string(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (h, n, label) = (h.clone(), n.clone(), label.clone());
                std::thread::spawn(move || {
                    let _ = answer(conn, &label, &h, &n);
                });
            }
        });
        HttpServer {
            port,
            name: name.to_string(),
            stop,
            health,
            served,
        }
    }

    /// The server's name (its `/` body).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The status `/health` answers from now on.
    pub fn set_health(&self, status: u16) {
        self.health.store(status, Ordering::SeqCst);
    }

    /// How many requests other than `/health` it has answered.
    pub fn served(&self) -> u64 {
        self.served.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn answer(
    conn: TcpStream,
    name: &str,
    health: &AtomicU16,
    served: &AtomicU64,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut conn = conn;
    respond(&mut conn, name, health, served)
}

/// Reads one request from `stream` and writes the answer.
fn respond<S: Read + Write>(
    stream: &mut S,
    name: &str,
    health: &AtomicU16,
    served: &AtomicU64,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 64 * 1024 {
        if stream.read(&mut byte)? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let request = String::from_utf8_lossy(&head);
    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, body) = if path == "/health" {
        (health.load(Ordering::SeqCst), "ok".to_string())
    } else {
        if let Some(ms) = path.strip_prefix("/slow?ms=") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(1000)));
        }
        served.fetch_add(1, Ordering::SeqCst);
        (200, name.to_string())
    };
    write!(
        stream,
        "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nX-Server: {name}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}

/// The same server over TLS, with a self-signed certificate for `127.0.0.1` and `localhost`.
#[derive(Debug)]
pub struct HttpsServer {
    /// Its loopback port.
    pub port: u16,
    /// The certificate, PEM: what a client must trust.
    pub ca_pem: String,
    stop: Arc<AtomicBool>,
}

impl HttpsServer {
    /// Starts a TLS server that names itself `name` in its answers.
    pub fn start(name: &str) -> HttpsServer {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("params")
            .self_signed(&key)
            .expect("self-signed certificate");
        let ca_pem = cert.pem();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(
                    vec![cert.der().clone()],
                    PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .expect("server config"),
        );
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let label = name.to_string();
        std::thread::spawn(move || {
            let health = Arc::new(AtomicU16::new(200));
            let served = Arc::new(AtomicU64::new(0));
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (config, label, health, served) = (
                    config.clone(),
                    label.clone(),
                    health.clone(),
                    served.clone(),
                );
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    let Ok(tls) = rustls::ServerConnection::new(config) else {
                        return;
                    };
                    let mut stream = rustls::StreamOwned::new(tls, conn);
                    if respond(&mut stream, &label, &health, &served).is_ok() {
                        stream.conn.send_close_notify();
                        let _ = stream.flush();
                    }
                });
            }
        });
        HttpsServer { port, ca_pem, stop }
    }
}

impl Drop for HttpsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// `GET http://127.0.0.1:PORT{path}`: the status and body (`Connection: close`).
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut conn, &mut text)?;
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}
