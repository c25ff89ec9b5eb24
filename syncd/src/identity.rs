//! This node's identity: an ECDSA P-256 key pair and a self-signed certificate, and the
//! [`PeerId`] (certificate fingerprint) that other nodes pin.
//!
//! [`Identity::load_or_create`] makes the identity on first use (`syncd init`) and
//! stores certificate and key together in one PEM file, [`IDENTITY_FILE`] under the
//! home directory, with mode 0600. The file is written to a temporary name, fsynced and
//! then hard-linked into place, which fails if the file already exists: an existing
//! identity is never overwritten, not even by two `syncd init` racing each other.
//!
//! A [`PeerId`] is the SHA-256 of the certificate's DER bytes, printed as 56 base32
//! characters in 8 dash-separated groups of 7, like a Syncthing device ID. The 52
//! characters of the digest are split into 4 blocks of 13, and each block is followed by
//! one Luhn mod 32 check character, so a mistyped character is caught when parsing. (The
//! check algorithm is textbook Luhn mod N; it is not guaranteed to match Syncthing's.)
//!
//! This module does no networking and no certificate validation beyond checking that the
//! stored key matches the stored certificate; pinning is done in
//! [`transport`](crate::transport). Because the fingerprint covers the whole certificate,
//! re-issuing the certificate (even with the same key) gives a new peer id; syncd never
//! does that on its own.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rustls::pki_types::pem::{PemObject, SectionKind};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

/// Name of the identity file (certificate + private key, PEM) inside the home directory.
pub const IDENTITY_FILE: &str = "identity.pem";

/// Subject alternative name and common name written into the self-signed certificate.
/// Nothing checks it: peers are pinned by [`PeerId`], not by name.
const CERT_NAME: &str = "syncd";

/// The base32 alphabet (RFC 4648) used for peer ids.
const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// Errors loading or creating an [`Identity`]. Each names the file or directory involved.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The home directory could not be created.
    #[error("cannot create syncd home directory {path}: {source}")]
    CreateHome {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// There is no identity file yet.
    #[error("no identity at {path} (run `syncd init` first)")]
    Missing {
        /// The identity file that was looked for.
        path: PathBuf,
    },
    /// The identity file exists but could not be read.
    #[error("cannot read identity {path}: {source}")]
    Read {
        /// The identity file.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing the new identity failed; nothing was left at the final path.
    #[error("cannot write identity {path}: {source}")]
    Write {
        /// The file being written (temporary or final).
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The identity file is not a PEM file holding one certificate and one private key.
    #[error(
        "corrupt identity {path}: {reason} (move it away and run `syncd init` to make a new one; the peer id will change)"
    )]
    Corrupt {
        /// The identity file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Generating a key pair or certificate failed.
    #[error("cannot generate identity: {0}")]
    Generate(#[from] rcgen::Error),
}

/// This node's key pair and self-signed certificate, and its [`PeerId`].
///
/// The private key is never printed by `Debug`.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    peer_id: PeerId,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Identity {
        Identity {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
            peer_id: self.peer_id,
        }
    }
}

impl Identity {
    /// Loads the identity in `home`, creating it (and `home`, mode 0700) if there is none.
    /// Returns the identity and whether it was created by this call. An existing identity
    /// file is never overwritten, even if it is corrupt (that is an error).
    pub fn load_or_create(home: &Path) -> Result<(Identity, bool), IdentityError> {
        let path = home.join(IDENTITY_FILE);
        match Identity::load(home) {
            Ok(identity) => return Ok((identity, false)),
            Err(IdentityError::Missing { .. }) => {}
            Err(e) => return Err(e),
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(home)
            .map_err(|source| IdentityError::CreateHome {
                path: home.to_path_buf(),
                source,
            })?;
        let (identity, pem) = Identity::generate_with_pem()?;
        if write_new_file(home, &path, pem.as_bytes())? {
            Ok((identity, true))
        } else {
            // Someone else created it between our load and our link: theirs wins.
            Ok((Identity::load(home)?, false))
        }
    }

    /// Loads the identity stored in `home`; [`IdentityError::Missing`] if there is none.
    pub fn load(home: &Path) -> Result<Identity, IdentityError> {
        let path = home.join(IDENTITY_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(IdentityError::Missing { path });
            }
            Err(source) => return Err(IdentityError::Read { path, source }),
        };
        Identity::from_pem(&bytes).map_err(|reason| IdentityError::Corrupt { path, reason })
    }

    /// A fresh identity that lives only in memory (for tests and one-off tools).
    pub fn generate() -> Result<Identity, IdentityError> {
        Ok(Identity::generate_with_pem()?.0)
    }

    /// The path of the identity file inside `home`.
    pub fn path_in(home: &Path) -> PathBuf {
        home.join(IDENTITY_FILE)
    }

    /// This node's peer id (the fingerprint of its certificate).
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The certificate, DER-encoded.
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The private key, DER-encoded (for building TLS configs inside the crate).
    pub(crate) fn private_key_der(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }

    fn generate_with_pem() -> Result<(Identity, String), IdentityError> {
        let key_pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::new(vec![CERT_NAME.to_string()])?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, CERT_NAME);
        let cert = params.self_signed(&key_pair)?;
        let pem = format!("{}{}", cert.pem(), key_pair.serialize_pem());
        // rcgen serializes private keys as PKCS#8.
        let key = PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        let cert = cert.der().clone();
        let peer_id = PeerId::of_certificate(&cert);
        Ok((Identity { cert, key, peer_id }, pem))
    }

    /// Parses the identity file's contents; the error is a human-readable reason.
    fn from_pem(bytes: &[u8]) -> Result<Identity, String> {
        let mut cert: Option<CertificateDer<'static>> = None;
        let mut key: Option<PrivateKeyDer<'static>> = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(bytes) {
            let (kind, der) = section.map_err(|e| format!("bad PEM: {e}"))?;
            let new_key = match kind {
                SectionKind::Certificate => {
                    if cert.replace(der.into()).is_some() {
                        return Err("more than one CERTIFICATE block".to_string());
                    }
                    continue;
                }
                SectionKind::PrivateKey => PrivateKeyDer::Pkcs8(der.into()),
                SectionKind::EcPrivateKey => PrivateKeyDer::Sec1(der.into()),
                SectionKind::RsaPrivateKey => PrivateKeyDer::Pkcs1(der.into()),
                _ => continue,
            };
            if key.replace(new_key).is_some() {
                return Err("more than one PRIVATE KEY block".to_string());
            }
        }
        let cert = cert.ok_or("no CERTIFICATE block")?;
        let key = key.ok_or("no PRIVATE KEY block")?;
        // Parse the key and check that it belongs to the certificate, so a damaged file
        // fails here, naming its path, rather than later inside a TLS handshake.
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            rustls::sign::CertifiedKey::from_der(vec![cert.clone()], key.clone_key(), &provider)
                .map_err(|e| format!("unusable key or certificate: {e}"))?;
        certified
            .keys_match()
            .map_err(|e| format!("key does not match certificate: {e}"))?;
        let peer_id = PeerId::of_certificate(&cert);
        Ok(Identity { cert, key, peer_id })
    }
}

/// Writes `contents` to `path` (mode 0600) unless it exists: temp file + fsync + hard
/// link + fsync of the directory. Returns `false` if `path` already existed.
fn write_new_file(dir: &Path, path: &Path, contents: &[u8]) -> Result<bool, IdentityError> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = dir.join(format!(
        ".{IDENTITY_FILE}.{}.{nanos}.tmp",
        std::process::id()
    ));
    let write_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IdentityError::Write { path, source }
    };
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(write_err(&tmp))?;
        file.write_all(contents).map_err(write_err(&tmp))?;
        file.sync_all().map_err(write_err(&tmp))?;
        drop(file);
        // link(2) never replaces an existing file, unlike rename(2).
        match fs::hard_link(&tmp, path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
            // Filesystems without hard links (EPERM/ENOTSUP): fall back to rename, which
            // only races with another `syncd init` running at the very same moment.
            Err(_) if path.exists() => return Ok(false),
            Err(_) => fs::rename(&tmp, path).map_err(write_err(path))?,
        }
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err(dir))?;
        Ok(true)
    })();
    // Best effort: a leftover temp file is harmless (it is never read).
    let _ = fs::remove_file(&tmp);
    result
}

/// A node's identity as other nodes see it: SHA-256 of its certificate (DER).
///
/// `Display` prints the human form (`XXXXXXX-XXXXXXX-…`, 8 groups of 7 base32
/// characters including 4 check characters); `FromStr` accepts it in any case, with or
/// without dashes or spaces, and also the 52-character form without check characters.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId([u8; 32]);

impl PeerId {
    /// The peer id of a certificate: SHA-256 over its DER encoding.
    pub fn of_certificate(cert_der: &[u8]) -> PeerId {
        PeerId(Sha256::digest(cert_der).into())
    }

    /// Wraps a raw 32-byte fingerprint.
    pub const fn from_bytes(bytes: [u8; 32]) -> PeerId {
        PeerId(bytes)
    }

    /// The raw 32-byte fingerprint.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first group of the printed form, for short log lines. Not unique enough to
    /// pin: always compare whole [`PeerId`]s.
    pub fn short(&self) -> String {
        self.to_string().chars().take(7).collect()
    }
}

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerId({self})")
    }
}

impl fmt::Display for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b32 = data_encoding::BASE32_NOPAD.encode(&self.0);
        debug_assert_eq!(b32.len(), 52);
        let mut with_checks = Vec::with_capacity(56);
        for block in b32.as_bytes().chunks(13) {
            with_checks.extend_from_slice(block);
            with_checks.push(luhn32(block));
        }
        for (i, group) in with_checks.chunks(7).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // Only ALPHABET bytes were pushed, so this is always ASCII.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

/// Why a string is not a valid [`PeerId`]. Every variant names the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerIdError {
    /// Wrong number of characters once dashes and spaces are removed.
    #[error(
        "invalid peer id \"{input}\": expected 56 characters (8 groups of 7, as printed by `syncd id`), got {len}"
    )]
    Length {
        /// The text as given.
        input: String,
        /// Characters after removing dashes and spaces.
        len: usize,
    },
    /// A character outside the base32 alphabet (A–Z, 2–7).
    #[error("invalid peer id \"{input}\": '{ch}' is not a peer id character (A-Z, 2-7)")]
    Character {
        /// The text as given.
        input: String,
        /// The offending character.
        ch: char,
    },
    /// A check character does not match: most likely a typo.
    #[error(
        "invalid peer id \"{input}\": check character {block} of 4 does not match (typo? copy it from `syncd id`)"
    )]
    Check {
        /// The text as given.
        input: String,
        /// Which check character (1–4) failed.
        block: usize,
    },
}

impl FromStr for PeerId {
    type Err = PeerIdError;

    fn from_str(input: &str) -> Result<PeerId, PeerIdError> {
        let mut chars = Vec::with_capacity(56);
        for ch in input.chars() {
            if ch == '-' || ch.is_whitespace() {
                continue;
            }
            let up = ch.to_ascii_uppercase();
            if !up.is_ascii() || !ALPHABET.contains(&(up as u8)) {
                return Err(PeerIdError::Character {
                    input: input.to_string(),
                    ch,
                });
            }
            chars.push(up as u8);
        }
        let b32: Vec<u8> = match chars.len() {
            56 => {
                let mut data = Vec::with_capacity(52);
                for (i, block) in chars.chunks(14).enumerate() {
                    let (body, check) = block.split_at(13);
                    if luhn32(body) != check[0] {
                        return Err(PeerIdError::Check {
                            input: input.to_string(),
                            block: i + 1,
                        });
                    }
                    data.extend_from_slice(body);
                }
                data
            }
            52 => chars,
            len => {
                return Err(PeerIdError::Length {
                    input: input.to_string(),
                    len,
                });
            }
        };
        let bytes = data_encoding::BASE32_NOPAD
            .decode(&b32)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v).ok())
            // 52 base32 chars carry 260 bits; non-zero trailing bits are rejected here.
            .ok_or_else(|| PeerIdError::Check {
                input: input.to_string(),
                block: 4,
            })?;
        Ok(PeerId(bytes))
    }
}

/// Luhn mod 32 check character over base32 characters (all must be in [`ALPHABET`]).
fn luhn32(chars: &[u8]) -> u8 {
    let value = |c: u8| ALPHABET.iter().position(|&a| a == c).unwrap_or(0) as u32;
    let mut factor = 2;
    let mut sum = 0;
    for &c in chars.iter().rev() {
        let addend = factor * value(c);
        factor = if factor == 2 { 1 } else { 2 };
        sum += addend / 32 + addend % 32;
    }
    ALPHABET[((32 - sum % 32) % 32) as usize]
}

/// The default home directory: `$XDG_DATA_HOME/syncd`, i.e. usually
/// `~/.local/share/syncd` on Linux (`dirs::data_dir()`). If no data directory can be
/// determined (no `$HOME`), falls back to `.syncd` in the current directory.
pub fn default_home() -> PathBuf {
    match dirs::data_dir() {
        Some(dir) => dir.join("syncd"),
        None => PathBuf::from(".syncd"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_round_trips_and_is_grouped() {
        let id = PeerId::from_bytes([0xA5; 32]);
        let s = id.to_string();
        assert_eq!(s.len(), 56 + 7);
        assert!(s.split('-').all(|g| g.len() == 7), "{s}");
        assert_eq!(s.parse::<PeerId>().unwrap(), id);
        assert_eq!(s.to_lowercase().parse::<PeerId>().unwrap(), id);
        assert_eq!(s.replace('-', "").parse::<PeerId>().unwrap(), id);
        assert_eq!(s.replace('-', " ").parse::<PeerId>().unwrap(), id);
        // Without check characters.
        let bare = data_encoding::BASE32_NOPAD.encode(id.as_bytes());
        assert_eq!(bare.parse::<PeerId>().unwrap(), id);
    }

    #[test]
    fn every_single_character_typo_is_caught() {
        let id = PeerId::of_certificate(b"some certificate");
        let s: Vec<char> = id.to_string().replace('-', "").chars().collect();
        for i in 0..s.len() {
            for &c in ALPHABET {
                let c = c as char;
                if c == s[i] {
                    continue;
                }
                let mut t = s.clone();
                t[i] = c;
                let t: String = t.into_iter().collect();
                assert!(
                    t.parse::<PeerId>().is_err(),
                    "typo at {i} ({c}) accepted: {t}"
                );
            }
        }
    }

    #[test]
    fn adjacent_transpositions_are_caught() {
        let id = PeerId::of_certificate(b"another certificate");
        let s: Vec<char> = id.to_string().replace('-', "").chars().collect();
        for i in 0..s.len() - 1 {
            if s[i] == s[i + 1] || i % 14 == 13 {
                continue; // no change, or swapping a check char with the next block
            }
            let mut t = s.clone();
            t.swap(i, i + 1);
            let t: String = t.into_iter().collect();
            assert!(t.parse::<PeerId>().is_err(), "swap at {i} accepted: {t}");
        }
    }

    #[test]
    fn parse_errors_name_the_input() {
        for (input, needle) in [
            ("", "got 0"),
            ("ABC", "got 3"),
            (
                "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAA1",
                "'1'",
            ),
            (
                "AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAA-AAAAAAB",
                "check character",
            ),
            ("ÄAAAAAA", "'Ä'"),
        ] {
            let msg = input.parse::<PeerId>().unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("invalid peer id \"{input}\"")),
                "{msg}"
            );
            assert!(msg.contains(needle), "{input:?}: {msg:?} lacks {needle:?}");
        }
    }

    #[test]
    fn generated_identity_matches_its_pem() {
        let (identity, pem) = Identity::generate_with_pem().unwrap();
        let again = Identity::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(identity.peer_id(), again.peer_id());
        assert_eq!(
            identity.peer_id(),
            PeerId::of_certificate(identity.certificate_der())
        );
    }

    #[test]
    fn key_from_another_identity_is_rejected() {
        let (_, pem_a) = Identity::generate_with_pem().unwrap();
        let (_, pem_b) = Identity::generate_with_pem().unwrap();
        let cert_a = &pem_a[..pem_a.find("-----BEGIN PRIVATE KEY").unwrap()];
        let key_b = &pem_b[pem_b.find("-----BEGIN PRIVATE KEY").unwrap()..];
        let err = Identity::from_pem(format!("{cert_a}{key_b}").as_bytes())
            .err()
            .unwrap();
        assert!(
            err.contains("key does not match") || err.contains("unusable"),
            "{err}"
        );
    }

    #[test]
    fn created_file_is_private_and_never_overwritten() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let (a, created) = Identity::load_or_create(&home).unwrap();
        assert!(created);
        let meta = fs::metadata(home.join(IDENTITY_FILE)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let (b, created) = Identity::load_or_create(&home).unwrap();
        assert!(!created);
        assert_eq!(a.peer_id(), b.peer_id());
        // No temp files left behind.
        let names: Vec<_> = fs::read_dir(&home)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(IDENTITY_FILE)]);
        // An existing file is never replaced.
        assert!(!write_new_file(&home, &home.join(IDENTITY_FILE), b"x").unwrap());
        assert_eq!(Identity::load(&home).unwrap().peer_id(), a.peer_id());
    }

    #[test]
    fn racing_inits_agree_on_one_identity() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let results: Vec<(PeerId, bool)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        let (id, created) = Identity::load_or_create(&home).unwrap();
                        (id.peer_id(), created)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let on_disk = Identity::load(&home).unwrap().peer_id();
        assert!(results.iter().all(|(id, _)| *id == on_disk), "{results:?}");
        assert_eq!(results.iter().filter(|(_, created)| *created).count(), 1);
    }

    #[test]
    fn missing_identity_says_run_init() {
        let dir = tempfile::tempdir().unwrap();
        let err = Identity::load(dir.path()).unwrap_err();
        assert!(matches!(err, IdentityError::Missing { .. }));
        assert!(err.to_string().contains("syncd init"), "{err}");
    }

    #[test]
    fn default_home_ends_in_syncd() {
        assert!(default_home().ends_with("syncd") || default_home().ends_with(".syncd"));
    }
}
