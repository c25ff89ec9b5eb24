//! QUIC endpoints with mutual TLS and peer pinning, and the bandwidth throttle.
//!
//! Both sides present the self-signed certificate of their [`Identity`] and accept the
//! other side only if its certificate's fingerprint ([`PeerId`]) was pinned in advance:
//! the server accepts the `--allow` list ([`server_endpoint`]), the client exactly one
//! `--peer-id` ([`connect`]). There is no CA, no name check and no trust on first use.
//! The certificate chain is not validated (it is self-signed), but the TLS handshake
//! signatures are: the peer must hold the private key of the pinned certificate.
//!
//! **Admission.** In TLS 1.3 the client's certificate reaches the server only after the
//! client has seen the server's `Finished`, so the client's side of the handshake
//! completes *before* the server has judged the client. To give the client a clear answer
//! inside [`connect`], the server's [`accept`] sends a short admission message on the
//! first unidirectional stream once it has accepted the client, and [`connect`] waits for
//! it. A rejected client therefore gets [`TransportError::RejectedByServer`] from
//! [`connect`], and the application protocol starts only on an admitted connection. Both
//! sides must use these helpers (they are the only supported way to use the endpoints).
//!
//! **Tuning.** [`transport_config`] is set for throughput on fast links: 8 MiB per-stream
//! and 32 MiB per-connection receive windows (enough for ~2.5 Gbit/s at 100 ms RTT per
//! connection; memory use is bounded by the connection window), a 32 MiB send window,
//! 256 concurrent uni and bidi streams (many files in flight), an 8 s idle timeout and a
//! 1 s keep-alive: quiet phases (e.g. a long scan) don't drop the connection, and a killed
//! or cut-off peer is noticed within seconds. The MTU is
//! discovered (quinn's defaults: up to 1452-byte UDP payloads), except to a server on a
//! loopback address, where the client sends 6500-byte datagrams from the start
//! ([`LOOPBACK_MTU`]), up to ten per `sendmsg` with segmentation offload (GSO): a fifth of
//! the packets, each a trip through both UDP stacks, quinn and the AEAD, for the same
//! bytes, and a tenth of the send calls (jumbo datagrams took ~10% less time than
//! 1452-byte ones for a loopback full sync of `/usr/share`; 8952-byte ones without GSO,
//! whose batches of ten would exceed the 64 KiB one send may carry, 5% more than these).
//! That size is pinned: under load quinn's black-hole
//! detection took receive-buffer drops for MTU loss and fell back to 1200 bytes. Both
//! endpoints accept datagrams of that size, which a client on another host never sends
//! unless its own MTU discovery finds the path carries them.
//! The server's UDP receive buffer is raised to [`SERVER_RECV_BUFFER`] (the kernel caps
//! it at `net.core.rmem_max`): with the default ~208 KiB, a 1 GiB loopback push lost
//! ~7000 packets to buffer overflow, which QUIC reads as congestion; with 4 MiB it lost a
//! few hundred and ran ~30% faster (a noisy 2-core box: ~290 → ~420 MB/s).
//! Session resumption and 0-RTT are disabled: a resumed session would skip the pinning
//! check.
//!
//! **Throttle.** [`Throttle`] wraps a [`TokenBucket`] shared by every stream of a
//! connection. It counts *wire bytes*: bytes written to QUIC streams plus an estimate
//! of per-packet overhead ([`wire_bytes`]: IP + UDP + QUIC short header + AEAD tag +
//! STREAM frame header, ~62 bytes per 1390-byte payload). It does not count
//! retransmissions or ACKs; those are small on a healthy link. Pacing stream writes at
//! the application level, rather than inside quinn's congestion controller, keeps the
//! decision sans-IO and testable, and quinn's own pacing smooths the packets out.
//! Measured on loopback with 8 streams at 50 and 200 Mbit/s: the real IP + UDP bytes
//! sent in each 1-second window (from quinn's `ConnectionStats`, + 28 bytes per
//! datagram) stayed within 0.989–1.016 of the cap. The estimate overcharges many tiny
//! writes (each is charged a whole packet's overhead), so batch small frames. To a
//! loopback server, whose datagrams are [`LOOPBACK_MTU`] bytes, it overcharges by about
//! 4% (a cap there is a test setting, not a link).
//!
//! This module does not speak the sync protocol; it hands out authenticated
//! [`quinn::Connection`]s.
//!
//! ```no_run
//! # async fn demo(server_id: syncd::identity::PeerId, client_id: syncd::identity::PeerId)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use syncd::identity::{Identity, default_home};
//! use syncd::transport::{self, Throttle};
//!
//! let (me, _created) = Identity::load_or_create(&default_home())?;
//!
//! // `syncd serve --listen 0.0.0.0:7700 --allow CLIENT_ID`
//! let endpoint = transport::server_endpoint(&me, "0.0.0.0:7700".parse()?, vec![client_id])?;
//! while let Some(incoming) = endpoint.accept().await {
//!     tokio::spawn(async move {
//!         match transport::accept(incoming).await {
//!             Ok((connection, peer)) => { /* run the receiver session; log `peer` */ }
//!             Err(e) => eprintln!("syncd serve: {e}"), // e.g. "client X is not in --allow"
//!         }
//!     });
//! }
//!
//! // `syncd push SRC 10.0.0.2:7700 --peer-id SERVER_ID --bwlimit 50M`
//! let endpoint = transport::client_endpoint()?;
//! let connection = transport::connect(&endpoint, &me, "10.0.0.2:7700".parse()?, &server_id).await?;
//! let throttle = Throttle::new("50M".parse::<syncd::rate::Rate>()?.bytes_per_sec());
//! let mut stream = connection.open_uni().await?;
//! throttle.write_all(&mut stream, b"frame bytes").await?;
//! # Ok(()) }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::identity::{Identity, PeerId};
use crate::limit::TokenBucket;

mod pin;
mod throttle;

pub use throttle::{OVERHEAD_PER_PACKET, PAYLOAD_PER_PACKET, Throttle, wire_bytes};

use pin::{AllowList, PinnedServer, provider};

/// The ALPN protocol id; a peer speaking anything else is refused in the handshake.
pub const ALPN: &[u8] = b"syncd/1";

/// The server name the client puts in its ClientHello. Nothing checks it.
const SERVER_NAME: &str = "syncd";

/// What the server writes on its first uni stream to admit a client.
const ADMISSION: &[u8] = b"syncd admit 1\n";

/// How long [`connect`] waits for the server's admission after the handshake.
pub const ADMISSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors setting up endpoints or establishing connections.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// `server_endpoint` was given an empty allow list: every client would be refused.
    #[error("no --allow peer ids given: the server would reject every client")]
    EmptyAllowList,
    /// Building the TLS configuration failed (a bad key should be caught when loading).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The UDP socket could not be bound.
    #[error("cannot bind UDP socket {addr}: {source}")]
    Bind {
        /// The address we tried to bind.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// quinn refused to start the connection (e.g. an invalid remote address).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The server address.
        addr: SocketAddr,
        /// quinn's reason.
        source: quinn::ConnectError,
    },
    /// The server presented a certificate whose peer id is not the one we pinned.
    #[error("server {addr} presented peer id {presented}, expected {expected}")]
    WrongServer {
        /// The server address.
        addr: SocketAddr,
        /// The peer id the server presented.
        presented: PeerId,
        /// The peer id given with `--peer-id`.
        expected: PeerId,
    },
    /// The server refused our certificate (our peer id is not in its `--allow`).
    #[error(
        "server {addr} rejected this node (peer id {local}); add it with `--allow {local}` on the server ({reason})"
    )]
    RejectedByServer {
        /// The server address.
        addr: SocketAddr,
        /// This node's peer id.
        local: PeerId,
        /// The server's close reason, as received.
        reason: String,
    },
    /// A client's certificate is not in `--allow`; the connection was refused.
    #[error("rejected connection from {addr}: client {peer} is not in --allow")]
    ClientNotAllowed {
        /// The client's address.
        addr: SocketAddr,
        /// The client's peer id.
        peer: PeerId,
    },
    /// The peer aborted the handshake, e.g. a client that expected another server.
    #[error("handshake with {addr} aborted by the peer: {reason}")]
    PeerAborted {
        /// The peer's address.
        addr: SocketAddr,
        /// The peer's reason, as received.
        reason: String,
    },
    /// Nothing answered: no `syncd serve` there, or UDP is filtered on the way.
    #[error(
        "no answer from UDP {addr} within {}s: is `syncd serve` running there, and does the firewall pass UDP {}?",
        after.as_secs_f64(),
        addr.port()
    )]
    NoAnswer {
        /// The peer's address.
        addr: SocketAddr,
        /// How long we waited.
        after: Duration,
    },
    /// The handshake failed for another reason (ALPN mismatch, bad signature…).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// The peer's address.
        addr: SocketAddr,
        /// quinn's description.
        source: quinn::ConnectionError,
    },
    /// The handshake succeeded but the server never sent its admission message.
    #[error(
        "server {addr} did not admit the connection within {timeout:?} (is it `syncd serve` of a matching version?)"
    )]
    NoAdmission {
        /// The server address.
        addr: SocketAddr,
        /// How long we waited.
        timeout: Duration,
    },
    /// The peer sent something other than the admission message.
    #[error("server {addr} sent an unexpected admission message")]
    BadAdmission {
        /// The server address.
        addr: SocketAddr,
    },
    /// An accepted connection carries no certificate (cannot happen with our configs).
    #[error("connection from {addr} has no peer certificate")]
    NoPeerCertificate {
        /// The peer's address.
        addr: SocketAddr,
    },
}

/// Both sides send a keep-alive this often, so that a silent peer is one that is gone.
pub const KEEP_ALIVE: Duration = Duration::from_secs(1);

/// A connection that hears nothing for this long is dead: a killed or cut-off peer is
/// noticed within seconds, not half a minute.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(8);

/// The QUIC transport parameters used by both sides; see the module docs for the
/// reasoning behind each value.
pub fn transport_config() -> quinn::TransportConfig {
    const MIB: u32 = 1024 * 1024;
    let mut config = quinn::TransportConfig::default();
    config
        .stream_receive_window(quinn::VarInt::from_u32(8 * MIB))
        .receive_window(quinn::VarInt::from_u32(32 * MIB))
        .send_window(32 * u64::from(MIB))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(256))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(256))
        .keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        config.max_idle_timeout(Some(idle));
    }
    config
}

/// True if `addr` is a loopback address (IPv4-mapped ones too): a peer on this machine,
/// with no link between us, the 64 KiB MTU of the loopback interface, and our CPUs.
pub fn same_host(addr: SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Sends [`LOOPBACK_MTU`]-byte datagrams (see the module docs): pinned, since loss on
/// loopback is receive-buffer overflow, which black-hole detection would take for a smaller
/// path MTU; small enough that quinn's batches of 10 under segmentation offload stay within
/// the 64 KiB a `sendmsg` may carry; and with a congestion window that starts at 10 of
/// them (the default 14,720 bytes holds about two).
fn jumbo(transport: &mut quinn::TransportConfig) {
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(10 * u64::from(LOOPBACK_MTU));
    transport
        .initial_mtu(LOOPBACK_MTU)
        .min_mtu(LOOPBACK_MTU)
        .mtu_discovery_config(None)
        .congestion_controller_factory(Arc::new(cubic));
}

/// A QUIC endpoint listening on `listen` that accepts only clients whose peer id is in
/// `allow`. Accept connections with `endpoint.accept()` and pass each
/// [`quinn::Incoming`] to [`accept`]. Must be called inside a tokio runtime.
pub fn server_endpoint(
    identity: &Identity,
    listen: SocketAddr,
    allow: Vec<PeerId>,
) -> Result<quinn::Endpoint, TransportError> {
    if allow.is_empty() {
        return Err(TransportError::EmptyAllowList);
    }
    let provider = provider();
    let verifier = AllowList {
        allow: allow.into_iter().collect(),
        algorithms: provider.signature_verification_algorithms,
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_single_cert(
            vec![identity.certificate_der().clone()],
            identity.private_key_der(),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session would not run the allow-list check again.
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    tls.send_tls13_tickets = 0;
    tls.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(format!("QUIC needs TLS 1.3: {e}")))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    bind_server(listen, config).map_err(|source| TransportError::Bind {
        addr: listen,
        source,
    })
}

/// The UDP payload size a client uses to a server on the same host (a loopback address):
/// ten of them, one GSO batch, fit the 65,507 bytes of one UDP send.
pub const LOOPBACK_MTU: u16 = 6500;

/// The largest UDP payload either side accepts: enough for [`LOOPBACK_MTU`].
const MAX_UDP_PAYLOAD: u16 = LOOPBACK_MTU;

/// Requested size of the server's UDP receive buffer. The kernel caps it at
/// `net.core.rmem_max` (often 208 KiB to 4 MiB); raise that sysctl for 10 Gbit/s links.
pub const SERVER_RECV_BUFFER: usize = 8 * 1024 * 1024;

/// Binds the server's UDP socket with a large receive buffer: the receiver gets bursts
/// of full-size packets, and the default (~208 KiB) overflows on fast links, which QUIC
/// then treats as congestion.
fn bind_server(
    listen: SocketAddr,
    config: quinn::ServerConfig,
) -> std::io::Result<quinn::Endpoint> {
    let socket = std::net::UdpSocket::bind(listen)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into())?;
    // Best effort: a smaller buffer is a performance problem, not an error.
    let _ = state.set_recv_buffer_size((&socket).into(), SERVER_RECV_BUFFER);
    quinn::Endpoint::new(
        endpoint_config()?,
        Some(config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
}

/// A client-only QUIC endpoint on an ephemeral port: IPv6 dual-stack (`[::]:0`) if the
/// host supports it, else `0.0.0.0:0`. Connect with [`connect`]. One endpoint can carry
/// many connections. Must be called inside a tokio runtime.
pub fn client_endpoint() -> Result<quinn::Endpoint, TransportError> {
    let v6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0));
    match client_endpoint_on(v6) {
        Ok(endpoint) => Ok(endpoint),
        Err(_) => client_endpoint_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))),
    }
}

/// A client-only QUIC endpoint bound to `bind` (use port 0 for an ephemeral port).
pub fn client_endpoint_on(addr: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    let bind = |addr| -> std::io::Result<quinn::Endpoint> {
        let socket = std::net::UdpSocket::bind(addr)?;
        quinn::Endpoint::new(
            endpoint_config()?,
            None,
            socket,
            Arc::new(quinn::TokioRuntime),
        )
    };
    bind(addr).map_err(|source| TransportError::Bind { addr, source })
}

/// Both sides accept datagrams up to [`MAX_UDP_PAYLOAD`].
fn endpoint_config() -> std::io::Result<quinn::EndpointConfig> {
    let mut endpoint = quinn::EndpointConfig::default();
    endpoint
        .max_udp_payload_size(MAX_UDP_PAYLOAD)
        .map_err(std::io::Error::other)?;
    Ok(endpoint)
}

/// Connects to the `syncd serve` at `addr`, authenticating as `identity`, and succeeds
/// only if the server's peer id is `expected` **and** the server admitted us.
///
/// Errors: [`TransportError::WrongServer`] if the server is someone else,
/// [`TransportError::RejectedByServer`] if it does not allow our peer id, and
/// [`TransportError::Handshake`] / [`TransportError::NoAdmission`] for the rest.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    expected: &PeerId,
) -> Result<quinn::Connection, TransportError> {
    connect_with(endpoint, identity, addr, expected, false).await
}

/// [`connect`], with the scavenger congestion controller ([`crate::ledbat`], for
/// `--bwlimit auto`) instead of CUBIC when `scavenger` is set.
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    addr: SocketAddr,
    expected: &PeerId,
    scavenger: bool,
) -> Result<quinn::Connection, TransportError> {
    let provider = provider();
    let verifier = Arc::new(PinnedServer {
        expected: *expected,
        algorithms: provider.signature_verification_algorithms,
        mismatch: Mutex::new(None),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_client_auth_cert(
            vec![identity.certificate_der().clone()],
            identity.private_key_der(),
        )?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // No resumption: a resumed session would skip the pinning check.
    tls.resumption = rustls::client::Resumption::disabled();
    tls.enable_early_data = false;
    let crypto = QuicClientConfig::try_from(tls)
        .map_err(|e| rustls::Error::General(format!("QUIC needs TLS 1.3: {e}")))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = transport_config();
    if same_host(addr) {
        jumbo(&mut transport);
    }
    if scavenger {
        transport.congestion_controller_factory(Arc::new(crate::ledbat::LedbatConfig::default()));
    }
    config.transport_config(Arc::new(transport));

    let connecting = endpoint
        .connect_with(config, addr, SERVER_NAME)
        .map_err(|source| TransportError::Connect { addr, source })?;
    let connection = match connecting.await {
        Ok(c) => c,
        Err(source) => {
            let mismatch = verifier.mismatch.lock().ok().and_then(|slot| *slot);
            return Err(match mismatch {
                Some(presented) => TransportError::WrongServer {
                    addr,
                    presented,
                    expected: *expected,
                },
                None if source == quinn::ConnectionError::TimedOut => TransportError::NoAnswer {
                    addr,
                    after: IDLE_TIMEOUT,
                },
                None => TransportError::Handshake { addr, source },
            });
        }
    };

    let rejected = |error: quinn::ConnectionError| match error {
        quinn::ConnectionError::ConnectionClosed(close) => TransportError::RejectedByServer {
            addr,
            local: identity.peer_id(),
            reason: tidy_reason(&close),
        },
        source => TransportError::Handshake { addr, source },
    };
    let admission = async {
        let mut stream = connection.accept_uni().await.map_err(rejected)?;
        match stream.read_to_end(ADMISSION.len()).await {
            Ok(bytes) if bytes == ADMISSION => Ok(()),
            Ok(_) | Err(quinn::ReadToEndError::TooLong) => {
                Err(TransportError::BadAdmission { addr })
            }
            Err(quinn::ReadToEndError::Read(quinn::ReadError::ConnectionLost(e))) => {
                Err(rejected(e))
            }
            Err(quinn::ReadToEndError::Read(_)) => Err(TransportError::BadAdmission { addr }),
        }
    };
    match tokio::time::timeout(ADMISSION_TIMEOUT, admission).await {
        Ok(Ok(())) => Ok(connection),
        Ok(Err(e)) => {
            connection.close(quinn::VarInt::from_u32(0), b"admission failed");
            Err(e)
        }
        Err(_) => {
            connection.close(quinn::VarInt::from_u32(0), b"no admission");
            Err(TransportError::NoAdmission {
                addr,
                timeout: ADMISSION_TIMEOUT,
            })
        }
    }
}

/// Completes an incoming connection on a [`server_endpoint`]: waits for the handshake
/// (which already enforced the allow list), admits the client and returns the
/// connection with the client's peer id.
///
/// A client that is not allowed yields [`TransportError::ClientNotAllowed`] naming its
/// peer id; the connection was closed in the handshake and no stream was ever opened.
/// The caller should log the error and keep accepting.
pub async fn accept(
    incoming: quinn::Incoming,
) -> Result<(quinn::Connection, PeerId), TransportError> {
    let addr = incoming.remote_address();
    let connection = match incoming.await {
        Ok(c) => c,
        Err(source) => {
            if let Some(peer) = not_allowed_peer(&source) {
                return Err(TransportError::ClientNotAllowed { addr, peer });
            }
            return Err(match source {
                quinn::ConnectionError::ConnectionClosed(close) => TransportError::PeerAborted {
                    addr,
                    reason: tidy_reason(&close),
                },
                source => TransportError::Handshake { addr, source },
            });
        }
    };
    let peer = remote_peer_id(&connection)?;
    let admitted = async {
        let mut stream = connection.open_uni().await?;
        stream.write_all(ADMISSION).await?;
        stream.finish()?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
    };
    if admitted.await.is_err() {
        let source = connection
            .close_reason()
            .unwrap_or(quinn::ConnectionError::LocallyClosed);
        return Err(TransportError::Handshake { addr, source });
    }
    Ok((connection, peer))
}

/// The human part of a received close: our verifiers' message without the rustls
/// wrapping (`invalid peer certificate: Other(OtherError(…))`), else the whole reason,
/// else the error code.
fn tidy_reason(close: &quinn::ConnectionClose) -> String {
    let reason = String::from_utf8_lossy(&close.reason);
    if reason.is_empty() {
        return close.error_code.to_string();
    }
    const WRAP: &str = "Other(OtherError(";
    match reason.find(WRAP) {
        Some(at) => reason[at + WRAP.len()..].trim_end_matches(')').to_string(),
        None => reason.into_owned(),
    }
}

/// Recovers the client's peer id from the close reason our verifier produced.
fn not_allowed_peer(error: &quinn::ConnectionError) -> Option<PeerId> {
    match error {
        quinn::ConnectionError::TransportError(e) => not_allowed_peer_in(&e.reason),
        _ => None,
    }
}

/// Parses the peer id out of a [`PinError::ClientNotAllowed`] message.
fn not_allowed_peer_in(reason: &str) -> Option<PeerId> {
    let (before, _) = reason.split_once(" is not in --allow")?;
    let (_, id) = before.rsplit_once("client ")?;
    id.parse().ok()
}

/// The peer id of the other side of an established connection (the fingerprint of the
/// certificate it presented). For connections from [`accept`] or [`connect`] this is
/// an allowed / the expected peer.
pub fn remote_peer_id(connection: &quinn::Connection) -> Result<PeerId, TransportError> {
    let addr = connection.remote_address();
    let certs = connection
        .peer_identity()
        .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or(TransportError::NoPeerCertificate { addr })?;
    let cert = certs
        .first()
        .ok_or(TransportError::NoPeerCertificate { addr })?;
    Ok(PeerId::of_certificate(cert))
}

#[cfg(test)]
mod tests {
    use super::pin::{PinError, pin_error};
    use super::*;

    #[test]
    fn wire_bytes_adds_per_packet_overhead() {
        assert_eq!(wire_bytes(0), 0);
        assert_eq!(wire_bytes(1), 1 + OVERHEAD_PER_PACKET);
        assert_eq!(
            wire_bytes(PAYLOAD_PER_PACKET),
            PAYLOAD_PER_PACKET + OVERHEAD_PER_PACKET
        );
        assert_eq!(
            wire_bytes(PAYLOAD_PER_PACKET + 1),
            PAYLOAD_PER_PACKET + 1 + 2 * OVERHEAD_PER_PACKET
        );
        // About 4.5% on bulk data.
        let bulk = 100 * 1024 * 1024;
        let ratio = wire_bytes(bulk) as f64 / bulk as f64;
        assert!((1.04..1.05).contains(&ratio), "{ratio}");
    }

    #[test]
    fn close_reason_round_trips_the_rejected_peer_id() {
        let peer = PeerId::of_certificate(b"x");
        let reason = pin_error(PinError::ClientNotAllowed { presented: peer }).to_string();
        assert_eq!(not_allowed_peer_in(&reason), Some(peer));
    }

    /// `--bwlimit auto` really puts LEDBAT on the connection, and quinn feeds it delay
    /// samples; without it the connection keeps quinn's default (CUBIC).
    #[tokio::test]
    async fn the_scavenger_controller_is_the_one_on_the_connection() {
        const SIZE: usize = 8 << 20;
        for scavenger in [true, false] {
            let server_id = Identity::generate().unwrap();
            let client_id = Identity::generate().unwrap();
            let server = server_endpoint(
                &server_id,
                "127.0.0.1:0".parse().unwrap(),
                vec![client_id.peer_id()],
            )
            .unwrap();
            let addr = server.local_addr().unwrap();
            let receiving = tokio::spawn(async move {
                let (conn, _) = accept(server.accept().await.unwrap()).await.unwrap();
                let mut rx = conn.accept_uni().await.unwrap();
                let got = rx.read_to_end(SIZE).await.unwrap();
                (got.len(), conn, server)
            });
            let client = client_endpoint().unwrap();
            let conn = connect_with(&client, &client_id, addr, &server_id.peer_id(), scavenger)
                .await
                .unwrap();
            let mut tx = conn.open_uni().await.unwrap();
            tx.write_all(&vec![7u8; SIZE]).await.unwrap();
            tx.finish().unwrap();
            let (got, _conn, _server) = receiving.await.unwrap();
            assert_eq!(got, SIZE);
            match conn
                .congestion_state()
                .into_any()
                .downcast::<crate::ledbat::LedbatController>()
            {
                Ok(ledbat) => {
                    assert!(scavenger, "LEDBAT without --bwlimit auto");
                    assert!(
                        ledbat.core().base_delay().is_some(),
                        "LEDBAT saw no delay sample in {SIZE} bytes"
                    );
                }
                Err(_) => assert!(!scavenger, "--bwlimit auto left another controller"),
            }
        }
    }

    /// A lower bound only, so a slow machine cannot make it fail.
    #[tokio::test]
    async fn throttle_makes_senders_wait() {
        let rate = 1_000_000;
        let throttle = Throttle::new(rate);
        let start = std::time::Instant::now();
        let piece = throttle.piece();
        let mut payload = 0u64;
        while payload < rate / 4 {
            throttle.acquire(piece).await;
            payload += piece as u64;
        }
        let owed =
            wire_bytes(payload) - TokenBucket::default_burst(rate) - wire_bytes(piece as u64);
        let min = Duration::from_secs_f64(owed as f64 / rate as f64);
        assert!(start.elapsed() >= min, "{:?} < {min:?}", start.elapsed());
        throttle.set_rate(0);
        let before = std::time::Instant::now();
        throttle.acquire(100 * 1024 * 1024).await;
        assert!(before.elapsed() < Duration::from_millis(100));
    }
}
