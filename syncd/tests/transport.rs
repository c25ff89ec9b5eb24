//! Integration tests for `identity` and `transport` over real loopback UDP sockets.
//!
//! - `good_pair_*`: a pinned pair connects, both sides see the right peer id, and bytes
//!   flow both ways on bidirectional streams (also many at once, and throttled).
//! - `unknown_client_*` / `client_expecting_another_peer_*`: a wrong peer is refused in
//!   the handshake with a clear message on both sides and no stream ever reaches the
//!   server's handler.
//! - `impostor_*`: a server that has the pinned certificate but not its key fails the
//!   handshake signature check.
//! - `identity_*`: persistence, and clear errors (naming the path) for damaged files.

// Test helpers outside `#[test]` functions: a panic there is the test's failure report,
// exactly as in the tests themselves (which clippy.toml already exempts).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use syncd::identity::{IDENTITY_FILE, Identity, IdentityError, PeerId};
use syncd::transport::{self, Throttle, TransportError};

const LOCALHOST: &str = "127.0.0.1:0";

/// What the test server saw: one entry per incoming connection.
#[derive(Debug)]
enum Seen {
    Accepted(PeerId),
    Refused(String),
}

/// A server that echoes every bidirectional stream back reversed, counting the streams
/// its handler received. Reports each connection's outcome on `seen`.
struct TestServer {
    addr: SocketAddr,
    identity: Identity,
    streams: Arc<AtomicUsize>,
    seen: tokio::sync::mpsc::UnboundedReceiver<Seen>,
    _endpoint: quinn::Endpoint,
}

fn start_server(allow: Vec<PeerId>) -> TestServer {
    let identity = Identity::generate().unwrap();
    let endpoint =
        transport::server_endpoint(&identity, LOCALHOST.parse().unwrap(), allow).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let streams = Arc::new(AtomicUsize::new(0));
    let (tx, seen) = tokio::sync::mpsc::unbounded_channel();
    let ep = endpoint.clone();
    let counter = streams.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let tx = tx.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                match transport::accept(incoming).await {
                    Ok((conn, peer)) => {
                        let _ = tx.send(Seen::Accepted(peer));
                        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            counter.fetch_add(1, Ordering::SeqCst);
                            tokio::spawn(async move {
                                let mut data = recv.read_to_end(64 << 20).await.unwrap();
                                data.reverse();
                                send.write_all(&data).await.unwrap();
                                send.finish().unwrap();
                                let _ = send.stopped().await;
                            });
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Seen::Refused(e.to_string()));
                    }
                }
            });
        }
    });
    TestServer {
        addr,
        identity,
        streams,
        seen,
        _endpoint: endpoint,
    }
}

async fn next_seen(server: &mut TestServer) -> Seen {
    tokio::time::timeout(Duration::from_secs(10), server.seen.recv())
        .await
        .expect("server saw nothing within 10 s")
        .unwrap()
}

fn client_endpoint() -> quinn::Endpoint {
    transport::client_endpoint_on(LOCALHOST.parse().unwrap()).unwrap()
}

async fn echo(conn: &quinn::Connection, data: &[u8], throttle: Option<&Throttle>) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    match throttle {
        Some(t) => t.write_all(&mut send, data).await.unwrap(),
        None => send.write_all(data).await.unwrap(),
    }
    send.finish().unwrap();
    recv.read_to_end(64 << 20).await.unwrap()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[tokio::test]
async fn good_pair_connects_and_exchanges_bytes_both_ways() {
    let client = Identity::generate().unwrap();
    let mut server = start_server(vec![client.peer_id()]);
    let endpoint = client_endpoint();
    let conn = transport::connect(&endpoint, &client, server.addr, &server.identity.peer_id())
        .await
        .unwrap();
    assert_eq!(
        transport::remote_peer_id(&conn).unwrap(),
        server.identity.peer_id()
    );
    match next_seen(&mut server).await {
        Seen::Accepted(peer) => assert_eq!(peer, client.peer_id()),
        Seen::Refused(e) => panic!("server refused a pinned client: {e}"),
    }

    let data = pattern(3 << 20, 7);
    let mut back = echo(&conn, &data, None).await;
    back.reverse();
    assert!(back == data, "echoed bytes differ");
    assert_eq!(server.streams.load(Ordering::SeqCst), 1);
    // To a loopback server the client sends jumbo datagrams, and megabytes get through
    // (with segmentation offload, batches of ten 8952-byte ones exceeded what one sendmsg
    // carries, and the transfer stalled: ten of LOOPBACK_MTU fit).
    let path = conn.stats().path;
    assert_eq!(path.current_mtu, transport::LOOPBACK_MTU);
    assert!(path.sent_packets < (3 << 20) / 4000, "{path:?}");
    conn.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
}

#[tokio::test]
async fn good_pair_carries_many_streams_at_once() {
    let client = Identity::generate().unwrap();
    let server = start_server(vec![client.peer_id()]);
    let endpoint = client_endpoint();
    let conn = transport::connect(&endpoint, &client, server.addr, &server.identity.peer_id())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..64u8 {
        let conn = conn.clone();
        tasks.push(tokio::spawn(async move {
            let data = pattern(64 * 1024 + usize::from(i), i);
            let mut back = echo(&conn, &data, None).await;
            back.reverse();
            assert!(back == data, "stream {i}: echoed bytes differ");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(server.streams.load(Ordering::SeqCst), 64);
}

#[tokio::test]
async fn good_pair_throttled_write_delivers_everything() {
    let client = Identity::generate().unwrap();
    let server = start_server(vec![client.peer_id()]);
    let endpoint = client_endpoint();
    let conn = transport::connect(&endpoint, &client, server.addr, &server.identity.peer_id())
        .await
        .unwrap();
    let throttle = Throttle::new(8_000_000);
    let data = pattern(1 << 20, 3);
    let mut back = echo(&conn, &data, Some(&throttle)).await;
    back.reverse();
    assert!(back == data, "echoed bytes differ");
}

#[tokio::test]
async fn unknown_client_is_rejected_on_both_sides() {
    let client = Identity::generate().unwrap();
    let someone_else = Identity::generate().unwrap().peer_id();
    let mut server = start_server(vec![someone_else]);
    let endpoint = client_endpoint();

    let err = transport::connect(&endpoint, &client, server.addr, &server.identity.peer_id())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, TransportError::RejectedByServer { local, .. } if local == client.peer_id()),
        "client got {err:?}"
    );
    assert!(msg.contains(&client.peer_id().to_string()), "{msg}");
    assert!(msg.contains("--allow"), "{msg}");
    eprintln!("client sees: {msg}");

    match next_seen(&mut server).await {
        Seen::Refused(e) => {
            eprintln!("server sees: {e}");
            assert!(
                e.contains(&format!("client {} is not in --allow", client.peer_id())),
                "server message: {e}"
            );
        }
        Seen::Accepted(peer) => panic!("server accepted {peer} although it is not allowed"),
    }
    // Nothing reached the handler.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.streams.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn client_expecting_another_peer_is_rejected() {
    let client = Identity::generate().unwrap();
    let mut server = start_server(vec![client.peer_id()]);
    let expected = Identity::generate().unwrap().peer_id();
    let endpoint = client_endpoint();

    let err = transport::connect(&endpoint, &client, server.addr, &expected)
        .await
        .unwrap_err();
    let msg = err.to_string();
    eprintln!("client sees: {msg}");
    match err {
        TransportError::WrongServer {
            presented,
            expected: e,
            ..
        } => {
            assert_eq!(presented, server.identity.peer_id());
            assert_eq!(e, expected);
        }
        other => panic!("expected WrongServer, got {other:?}"),
    }
    assert!(
        msg.contains(&format!(
            "presented peer id {}, expected {expected}",
            server.identity.peer_id()
        )),
        "{msg}"
    );

    match next_seen(&mut server).await {
        Seen::Refused(e) => {
            eprintln!("server sees: {e}");
            assert!(
                e.contains(&format!(
                    "aborted by the peer: server presented peer id {}",
                    server.identity.peer_id()
                )),
                "server message: {e}"
            );
        }
        Seen::Accepted(peer) => panic!("server accepted {peer} although the client bailed out"),
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.streams.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn server_refuses_to_start_with_empty_allow_list() {
    let identity = Identity::generate().unwrap();
    let err =
        transport::server_endpoint(&identity, LOCALHOST.parse().unwrap(), vec![]).unwrap_err();
    assert!(matches!(err, TransportError::EmptyAllowList), "{err:?}");
}

#[test]
fn identity_is_persisted_across_loads() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("nested").join("home");
    let (first, created) = Identity::load_or_create(&home).unwrap();
    assert!(created);
    let (second, created) = Identity::load_or_create(&home).unwrap();
    assert!(!created);
    assert_eq!(first.peer_id(), second.peer_id());
    assert_eq!(Identity::load(&home).unwrap().peer_id(), first.peer_id());
    // The printed form parses back to the same id.
    let printed = first.peer_id().to_string();
    assert_eq!(printed.parse::<PeerId>().unwrap(), first.peer_id());
}

#[test]
fn identity_corrupted_file_is_a_clear_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _) = Identity::load_or_create(dir.path()).unwrap();
    let path = dir.path().join(IDENTITY_FILE);
    let good = std::fs::read_to_string(&path).unwrap();

    // Damage the private key's base64 body, then drop the key entirely, then write junk.
    let key_at = good.find("-----BEGIN PRIVATE KEY-----").unwrap();
    let mut damaged_key = good.clone();
    damaged_key.replace_range(key_at + 40..key_at + 60, "!!!!!!!!!!!!!!!!!!!!");
    let flipped_key = {
        // Valid base64 and PEM, but not a valid key.
        let body_at = key_at + "-----BEGIN PRIVATE KEY-----\n".len();
        let mut s = good.clone();
        s.replace_range(body_at..body_at + 8, "AAAAAAAA");
        s
    };
    let no_key = good[..key_at].to_string();
    for (what, contents) in [
        ("damaged key", damaged_key),
        ("flipped key", flipped_key),
        ("no key", no_key),
        ("junk", "this is not PEM\n".to_string()),
        ("empty", String::new()),
    ] {
        std::fs::write(&path, &contents).unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        let msg = err.to_string();
        eprintln!("{what}: {msg}");
        assert!(
            matches!(err, IdentityError::Corrupt { .. }),
            "{what}: {err:?}"
        );
        assert!(msg.contains(&path.display().to_string()), "{what}: {msg}");
        // load_or_create must not paper over it by making a new identity.
        let err = Identity::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, IdentityError::Corrupt { .. }),
            "{what}: {err:?}"
        );
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            contents,
            "{what}: file changed"
        );
    }
}

/// Serves `cert` (someone else's certificate) signed with a key that does not belong to
/// it, as an impostor would. Returns the impostor's address.
fn start_impostor(
    cert: rustls::pki_types::CertificateDer<'static>,
) -> (SocketAddr, quinn::Endpoint) {
    #[derive(Debug)]
    struct Fixed(Arc<rustls::sign::CertifiedKey>);
    impl rustls::server::ResolvesServerCert for Fixed {
        fn resolve(
            &self,
            _: rustls::server::ClientHello<'_>,
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
    }
    let wrong_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let wrong_key = rustls::pki_types::PrivateKeyDer::from(
        rustls::pki_types::PrivatePkcs8KeyDer::from(wrong_key.serialize_der()),
    );
    let signer = rustls::crypto::ring::sign::any_supported_type(&wrong_key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert], signer);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(Arc::new(certified))));
    tls.alpn_protocols = vec![transport::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, LOCALHOST.parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            tokio::spawn(async move {
                let _ = incoming.await;
            });
        }
    });
    (addr, endpoint)
}

#[tokio::test]
async fn impostor_with_the_pinned_certificate_but_not_its_key_is_rejected() {
    let victim = Identity::generate().unwrap();
    let (addr, _endpoint) = start_impostor(victim.certificate_der().clone());
    let client = Identity::generate().unwrap();
    let endpoint = client_endpoint();
    let err = transport::connect(&endpoint, &client, addr, &victim.peer_id())
        .await
        .unwrap_err();
    eprintln!("client sees: {err}");
    assert!(
        matches!(err, TransportError::Handshake { .. }),
        "expected a handshake failure, got {err:?}"
    );
    assert!(
        err.to_string().to_lowercase().contains("signature"),
        "{err}"
    );
}
