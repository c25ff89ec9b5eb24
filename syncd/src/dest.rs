//! What a push's DEST argument means: a `syncd serve` at `HOST:PORT` / `[V6]:PORT`, or a
//! local directory. Sans-IO (no name lookup, no filesystem).
//!
//! rsync's `host:/path` form has no meaning here (a `syncd serve` decides its directory
//! with `--root`), so it is refused with a hint rather than taken for a local directory
//! named `host:`. A local path that really contains a colon before its first `/` is
//! written `./a:b`.

use std::path::PathBuf;

/// A parsed DEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// A `syncd serve`: host (name or address, without brackets) and UDP port.
    Remote {
        /// Host name or address.
        host: String,
        /// UDP port.
        port: u16,
    },
    /// A local directory.
    Local(PathBuf),
}

/// A DEST that is neither form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("DEST {given:?}: {why}")]
pub struct DestError {
    /// The argument.
    pub given: String,
    /// What is wrong, and the right form.
    pub why: String,
}

/// Parses a DEST argument.
pub fn parse(s: &str) -> Result<Dest, DestError> {
    let bad = |why: String| DestError {
        given: s.to_string(),
        why,
    };
    if s.is_empty() {
        return Err(bad("empty".into()));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, port)) = rest.split_once("]:") else {
            return Err(bad(
                "an IPv6 receiver is written [ADDRESS]:PORT, e.g. [::1]:7700".into(),
            ));
        };
        if host.is_empty() {
            return Err(bad(
                "an IPv6 receiver is written [ADDRESS]:PORT, e.g. [::1]:7700".into(),
            ));
        }
        return Ok(Dest::Remote {
            host: host.to_string(),
            port: port_of(port).map_err(bad)?,
        });
    }
    let colon = s.find(':');
    let slash = s.find('/');
    match (colon, slash) {
        (Some(c), slash) if slash.is_none_or(|sl| c < sl) => {
            let (host, rest) = (&s[..c], &s[c + 1..]);
            if rest.starts_with('/') || rest.is_empty() && slash.is_some() {
                return Err(bad(format!(
                    "this is rsync's HOST:/PATH form; syncd pushes to a `syncd serve` at HOST:PORT, which receives into its own --root (e.g. {host}:7700), or write ./{s} for a local directory with a colon in its name"
                )));
            }
            if host.is_empty() || rest.contains(':') {
                return Err(bad(format!(
                    "a receiver is HOST:PORT (e.g. newhost:7700) or [IPV6]:PORT; write ./{s} for a local directory"
                )));
            }
            let port = port_of(rest).map_err(|why| {
                bad(format!(
                    "{why}; a receiver is HOST:PORT (e.g. {host}:7700); write ./{s} for a local directory"
                ))
            })?;
            Ok(Dest::Remote {
                host: host.to_string(),
                port,
            })
        }
        _ => Ok(Dest::Local(PathBuf::from(s))),
    }
}

fn port_of(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 && s.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err(format!("{s:?} is not a port number (1-65535)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(host: &str, port: u16) -> Dest {
        Dest::Remote {
            host: host.into(),
            port,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(parse("newhost:7700").unwrap(), remote("newhost", 7700));
        assert_eq!(parse("10.0.0.2:7700").unwrap(), remote("10.0.0.2", 7700));
        assert_eq!(parse("[::1]:7700").unwrap(), remote("::1", 7700));
        assert_eq!(parse("./a:b").unwrap(), Dest::Local("./a:b".into()));
        assert_eq!(parse("/mnt/a:b").unwrap(), Dest::Local("/mnt/a:b".into()));
        assert_eq!(parse("copy").unwrap(), Dest::Local("copy".into()));
        assert_eq!(parse("copy/").unwrap(), Dest::Local("copy/".into()));
        for (bad, says) in [
            ("newhost:/srv/data", "rsync's HOST:/PATH"),
            ("newhost:", "not a port"),
            ("newhost:data", "not a port"),
            ("newhost:99999", "not a port"),
            ("newhost:0", "not a port"),
            (":7700", "HOST:PORT"),
            ("::1:7700", "HOST:PORT"),
            ("[::1]", "[ADDRESS]:PORT"),
            ("[]:7700", "[ADDRESS]:PORT"),
            ("[::1]:x", "not a port"),
            ("", "empty"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
