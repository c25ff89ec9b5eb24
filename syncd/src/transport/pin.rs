//! Peer pinning: rustls verifiers that accept exactly the pinned certificates (the client's
//! one `--peer-id`, the server's `--allow` list) and check the handshake signatures, with
//! no CA and no name check.

use super::*;

/// The error a pinning verifier hands to rustls; its `Display` ends up as the
/// QUIC close reason. (`Debug` = `Display`, because rustls formats it with `{:?}`.)
pub(super) enum PinError {
    ServerMismatch { presented: PeerId, expected: PeerId },
    ClientNotAllowed { presented: PeerId },
}

impl fmt::Display for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PinError::ServerMismatch {
                presented,
                expected,
            } => write!(
                f,
                "server presented peer id {presented}, expected {expected}"
            ),
            PinError::ClientNotAllowed { presented } => {
                write!(f, "client {presented} is not in --allow")
            }
        }
    }
}

impl fmt::Debug for PinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinError {}

pub(super) fn pin_error(e: PinError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(e))))
}

pub(super) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Client side: accepts only the server certificate whose fingerprint is `expected`.
#[derive(Debug)]
pub(super) struct PinnedServer {
    pub(super) expected: PeerId,
    pub(super) algorithms: WebPkiSupportedAlgorithms,
    /// Set when the server presented a different peer id, for a structured error.
    pub(super) mismatch: Mutex<Option<PeerId>>,
}

impl ServerCertVerifier for PinnedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = PeerId::of_certificate(end_entity);
        if presented != self.expected {
            if let Ok(mut slot) = self.mismatch.lock() {
                *slot = Some(presented);
            }
            return Err(pin_error(PinError::ServerMismatch {
                presented,
                expected: self.expected,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Server side: requires a client certificate whose fingerprint is in the allow list.
#[derive(Debug)]
pub(super) struct AllowList {
    pub(super) allow: HashSet<PeerId>,
    pub(super) algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for AllowList {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let presented = PeerId::of_certificate(end_entity);
        if !self.allow.contains(&presented) {
            return Err(pin_error(PinError::ClientNotAllowed { presented }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
