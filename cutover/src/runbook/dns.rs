//! `[dns]`: the zone, the record that `cutover dns` moves, and the TSIG key it signs with.
//!
//! Addresses are IP literals: resolving a name would be IO, and the switch must not depend on
//! the resolver it is changing. The TSIG key file is BIND's format (`tsig-keygen` writes it):
//!
//! ```text
//! key "cutover" {
//!     algorithm hmac-sha256;
//!     secret "c2VjcmV0IGtleSBieXRlcw==";
//! };
//! ```

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Keys, ReadFile, RunbookError};

/// A TSIG algorithm that `cutover dns` signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsigAlgorithm {
    /// `hmac-sha256` (the default of `tsig-keygen`).
    HmacSha256,
    /// `hmac-sha512`.
    HmacSha512,
}

impl fmt::Display for TsigAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TsigAlgorithm::HmacSha256 => "hmac-sha256",
            TsigAlgorithm::HmacSha512 => "hmac-sha512",
        })
    }
}

/// A TSIG key: its name (which the server must know), algorithm and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct TsigKey {
    /// The key name, as in `key "NAME" { ... }`, fully qualified (`cutover.`).
    pub name: String,
    /// The HMAC algorithm.
    pub algorithm: TsigAlgorithm,
    /// The decoded secret.
    pub secret: Vec<u8>,
}

impl fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .field("algorithm", &self.algorithm)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl TsigKey {
    /// Parses a BIND key file that holds exactly one `key` statement.
    pub fn parse_bind(text: &str) -> Result<TsigKey, String> {
        let tokens = tokenize(text)?;
        let mut t = tokens.iter().map(String::as_str).peekable();
        let mut keys = Vec::new();
        while let Some(word) = t.next() {
            if word != "key" {
                return Err(format!(
                    "expected `key \"NAME\" {{ ... }};`, found {word:?}"
                ));
            }
            let name = t.next().ok_or("`key` without a name")?.to_string();
            if t.next() != Some("{") {
                return Err(format!("key {name:?}: expected `{{`"));
            }
            let (mut algorithm, mut secret) = (None, None);
            loop {
                match t.next() {
                    Some("}") => break,
                    Some("algorithm") => algorithm = t.next(),
                    Some("secret") => secret = t.next(),
                    Some(other) => return Err(format!("key {name:?}: unknown clause {other:?}")),
                    None => return Err(format!("key {name:?}: missing `}}`")),
                }
                if t.next() != Some(";") {
                    return Err(format!("key {name:?}: expected `;` after a clause"));
                }
            }
            if t.next_if_eq(&";").is_none() {
                return Err(format!("key {name:?}: expected `;` after `}}`"));
            }
            let algorithm = match algorithm.map(str::to_ascii_lowercase).as_deref() {
                Some("hmac-sha256") => TsigAlgorithm::HmacSha256,
                Some("hmac-sha512") => TsigAlgorithm::HmacSha512,
                Some(other) => {
                    return Err(format!(
                        "key {name:?}: algorithm {other} is not supported (hmac-sha256 or hmac-sha512)"
                    ));
                }
                None => return Err(format!("key {name:?}: no `algorithm`")),
            };
            let secret = secret.ok_or_else(|| format!("key {name:?}: no `secret`"))?;
            let secret = data_encoding::BASE64
                .decode(secret.as_bytes())
                .map_err(|e| format!("key {name:?}: the secret is not base64 ({e})"))?;
            if secret.is_empty() {
                return Err(format!("key {name:?}: the secret is empty"));
            }
            let name = if name.ends_with('.') {
                name
            } else {
                format!("{name}.")
            };
            keys.push(TsigKey {
                name,
                algorithm,
                secret,
            });
        }
        match keys.len() {
            1 => Ok(keys.remove(0)),
            0 => Err("no `key` statement".into()),
            n => Err(format!("{n} key statements; keep one key per file")),
        }
    }
}

/// Splits a BIND configuration into words, quoted strings (without quotes) and `{`, `}`, `;`;
/// comments (`#`, `//`, `/* */`) are dropped.
fn tokenize(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '#' => while chars.next_if(|&c| c != '\n').is_some() {},
            '/' if chars.peek() == Some(&'/') => while chars.next_if(|&c| c != '\n').is_some() {},
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                loop {
                    match chars.next() {
                        Some('/') if prev == '*' => break,
                        Some(c) => prev = c,
                        None => return Err("unterminated /* comment".into()),
                    }
                }
            }
            '{' | '}' | ';' => out.push(c.to_string()),
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some(c) => s.push(c),
                        None => return Err("unterminated string".into()),
                    }
                }
                out.push(s);
            }
            c => {
                let mut s = c.to_string();
                while let Some(c) =
                    chars.next_if(|&c| !c.is_whitespace() && !matches!(c, '{' | '}' | ';' | '"'))
                {
                    s.push(c);
                }
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// The `[dns]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// The primary authoritative server, which receives the UPDATE.
    pub server: SocketAddr,
    /// The zone, fully qualified (`example.test.`).
    pub zone: String,
    /// The record that moves, fully qualified, inside `zone`.
    pub record: String,
    /// The address the record holds before the switch.
    pub source_address: IpAddr,
    /// The address it holds after.
    pub destination_address: IpAddr,
    /// The TTL the record has (and gets back after the switch).
    pub ttl: u32,
    /// The TTL `lower-ttl` sets ahead of the switch.
    pub low_ttl: u32,
    /// The TSIG key that signs the updates.
    pub tsig: TsigKey,
    /// Servers watched for propagation, besides the zone's NS set.
    pub check_servers: Vec<SocketAddr>,
    /// Whether the zone's NS set (looked up at `server`) is watched too.
    pub check_ns: bool,
    /// The port the NS set's servers answer on (their addresses come from the zone).
    pub ns_port: u16,
    /// How long propagation may take before the command gives up.
    pub propagation_timeout: Duration,
    /// How often the servers are asked again while waiting.
    pub poll_interval: Duration,
    /// How long one query or update may take to answer.
    pub timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDns {
    server: String,
    zone: String,
    record: String,
    source_address: String,
    destination_address: String,
    ttl: Option<u32>,
    low_ttl: Option<u32>,
    tsig_key_file: PathBuf,
    #[serde(default)]
    check_servers: Vec<String>,
    check_ns: Option<bool>,
    ns_port: Option<u16>,
    propagation_timeout: Option<String>,
    poll_interval: Option<String>,
    timeout: Option<String>,
}

/// `IP:PORT`, `[V6]:PORT`, or a bare IP for port 53.
fn server_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not IP:PORT or IP (names are not resolved)"))
}

/// A fully qualified, lower-case domain name.
fn fqdn(s: &str) -> Result<String, String> {
    let name = s.trim().to_ascii_lowercase();
    let bare = name.strip_suffix('.').unwrap_or(&name);
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '*')
        });
    if !ok {
        return Err(format!("{s:?} is not a domain name"));
    }
    Ok(format!("{bare}."))
}

pub(super) fn validate(
    d: RawDns,
    keys: &Keys<'_>,
    read_file: ReadFile<'_>,
) -> Result<Dns, RunbookError> {
    let server = server_address(&d.server).map_err(|m| keys.err("server", m))?;
    let zone = fqdn(&d.zone).map_err(|m| keys.err("zone", m))?;
    let record = fqdn(&d.record).map_err(|m| keys.err("record", m))?;
    if record != zone && !record.ends_with(&format!(".{zone}")) {
        return Err(keys.err("record", format!("{record} is not inside dns.zone {zone}")));
    }
    let ip = |key: &str, s: &str| {
        s.parse::<IpAddr>()
            .map_err(|_| keys.err(key, format!("{s:?} is not an IPv4 or IPv6 address")))
    };
    let source_address = ip("source_address", &d.source_address)?;
    let destination_address = ip("destination_address", &d.destination_address)?;
    if source_address.is_ipv4() != destination_address.is_ipv4() {
        return Err(keys.err(
            "destination_address",
            "must be of the same family as dns.source_address (the A or AAAA RRset is replaced)",
        ));
    }
    if source_address == destination_address {
        return Err(keys.err("destination_address", "is dns.source_address"));
    }
    let ttl = d.ttl.unwrap_or(300);
    let low_ttl = d.low_ttl.unwrap_or(30.min(ttl));
    if ttl == 0 || ttl > 0x7fff_ffff {
        return Err(keys.err("ttl", "must be 1 to 2147483647 seconds"));
    }
    if low_ttl == 0 || low_ttl > ttl {
        return Err(keys.err("low_ttl", format!("must be 1 to dns.ttl ({ttl}) seconds")));
    }
    let key_text = keys.secret_file("tsig_key_file", &d.tsig_key_file, read_file)?;
    let tsig = TsigKey::parse_bind(&key_text).map_err(|m| {
        keys.err(
            "tsig_key_file",
            format!("{}: {m}", d.tsig_key_file.display()),
        )
    })?;
    let check_servers = d
        .check_servers
        .iter()
        .enumerate()
        .map(|(i, s)| server_address(s).map_err(|m| keys.err(&format!("check_servers[{i}]"), m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Dns {
        server,
        zone,
        record,
        source_address,
        destination_address,
        ttl,
        low_ttl,
        tsig,
        check_servers,
        check_ns: d.check_ns.unwrap_or(true),
        ns_port: d.ns_port.unwrap_or(53),
        propagation_timeout: keys.positive_duration(
            "propagation_timeout",
            d.propagation_timeout.as_deref(),
            Duration::from_secs(120),
        )?,
        poll_interval: keys.positive_duration(
            "poll_interval",
            d.poll_interval.as_deref(),
            Duration::from_millis(500),
        )?,
        timeout: keys.positive_duration("timeout", d.timeout.as_deref(), Duration::from_secs(3))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_key_files() {
        let k = TsigKey::parse_bind(
            "# made by tsig-keygen\nkey \"cutover\" {\n\talgorithm hmac-sha256;\n\tsecret \"c2VjcmV0\";\n};\n",
        )
        .unwrap();
        assert_eq!(k.name, "cutover.");
        assert_eq!(k.algorithm, TsigAlgorithm::HmacSha256);
        assert_eq!(k.secret, b"secret");
        assert!(!format!("{k:?}").contains("c2VjcmV0"));
        let k = TsigKey::parse_bind(
            "/* x */ key k2. { algorithm HMAC-SHA512; // c\n secret \"c2VjcmV0\"; };",
        )
        .unwrap();
        assert_eq!(
            (k.name.as_str(), k.algorithm),
            ("k2.", TsigAlgorithm::HmacSha512)
        );
        let bad = [
            ("", "no `key`"),
            (
                "key \"k\" { algorithm hmac-md5; secret \"c2VjcmV0\"; };",
                "not supported",
            ),
            ("key \"k\" { algorithm hmac-sha256; };", "no `secret`"),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"!!\"; };",
                "base64",
            ),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\" };",
                "expected `;`",
            ),
            (
                "key \"k\" { algorithm hmac-sha256; secret \"c2VjcmV0\"; }",
                "after `}`",
            ),
            (
                "key a { algorithm hmac-sha256; secret \"c2VjcmV0\"; }; key b { algorithm hmac-sha256; secret \"c2VjcmV0\"; };",
                "one key per file",
            ),
        ];
        for (text, want) in bad {
            let err = TsigKey::parse_bind(text).unwrap_err();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn names_and_addresses() {
        assert_eq!(fqdn("Svc.Example.test").unwrap(), "svc.example.test.");
        assert!(fqdn("a..b").is_err());
        assert!(fqdn("").is_err());
        assert_eq!(
            server_address("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(server_address("[::1]:5353").unwrap().port(), 5353);
        assert!(server_address("ns1.example.test:53").is_err());
    }
}
