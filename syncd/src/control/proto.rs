//! The control protocol's model and codec, sans-IO: requests and replies as JSON lines.
//!
//! One request per line, one reply per line, in order, on a unix stream socket. This module
//! turns bytes into [`Request`]s and [`Reply`]s into bytes; it never touches a socket, a
//! file or the clock (the socket side is [`crate::control`]). Every input it cannot use is
//! an error *reply*, never a panic: a malformed line costs the client one
//! `{"ok":false,"error":...}` line, and a line longer than [`MAX_LINE`] ends the connection
//! after that reply (there is no way to resynchronise inside it).
//!
//! ```
//! use syncd::control::proto::{decode_request, Request};
//! assert_eq!(decode_request(br#"{"cmd":"status"}"#), Ok(Request::Status));
//! assert!(decode_request(b"status").is_err());
//! ```

use serde::{Deserialize, Serialize};

/// The longest request line accepted, in bytes (the longest real one is ~40 bytes).
pub const MAX_LINE: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// `{"cmd":"status"}`: the daemon's state, answered at once.
    Status,
    /// `{"cmd":"final-sync"}`: flush everything pending, push, compare roots.
    FinalSync,
    /// `{"cmd":"set-bwlimit","rate":"50M"}`: a new cap on wire bytes (`RATE` syntax; `"0"`
    /// lifts it), applied at once to the running connection.
    SetBwlimit {
        /// A `RATE` ([`crate::rate`]).
        rate: String,
    },
    /// `{"cmd":"pause"}`: no new batch starts until `resume` (a running one finishes).
    Pause,
    /// `{"cmd":"resume"}`.
    Resume,
}

/// A daemon's state, as `status` reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `"push"` (a `push --watch`) or `"serve"`.
    pub role: String,
    /// This side's manifest root (hex).
    pub local_root: String,
    /// The other side's root as last seen (hex), `null` before the first session.
    pub peer_root: Option<String>,
    /// True only when both roots are equal and nothing is pending.
    pub converged: bool,
    /// Age in seconds of the oldest change not yet applied remotely; `null` when none is.
    pub lag_seconds: Option<f64>,
    /// Files known changed and not yet applied remotely (given-up files included).
    pub pending_files: u64,
    /// Their bytes, as far as known.
    pub pending_bytes: u64,
    /// The tree's bytes (regular files), as of the last full scan; `null` before one.
    #[serde(default)]
    pub tree_bytes: Option<u64>,
    /// Bytes available on the destination's filesystem, as the receiver said at the last
    /// session's start; `null` before one, or when it could not tell.
    #[serde(default)]
    pub destination_free_bytes: Option<u64>,
    /// Wire bytes per second of the last batch (0 when idle).
    pub rate_bytes_per_sec: f64,
    /// The cap in bytes per second, `null` when unlimited.
    pub bwlimit: Option<u64>,
    /// With a `--bwlimit` timetable, the slot in force as written (`"08:00,50M"`).
    #[serde(default)]
    pub bwlimit_slot: Option<String>,
    /// With `--bwlimit auto`: the scavenger congestion controller is in use.
    #[serde(default)]
    pub scavenger: bool,
    /// Sessions that failed and were retried after a backoff.
    pub reconnects: u64,
    /// The last error, `null` once a session succeeded after it.
    pub last_error: Option<String>,
    /// Paused by `pause`.
    pub paused: bool,
}

/// What `final-sync` concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalSync {
    /// The roots are equal and nothing is pending: `root` is that root (hex).
    Converged {
        /// The common root.
        root: String,
    },
    /// They are not: the paths that differ (or that are pending), as far as known.
    Differs {
        /// Paths relative to the tree root.
        differences: Vec<String>,
    },
}

/// A reply, typed.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To `status`.
    Status(Box<Status>),
    /// To `final-sync`.
    FinalSync(FinalSync),
    /// To `set-bwlimit` (the new cap in bytes per second, `None` = unlimited), `pause` and
    /// `resume` (`None`).
    Done {
        /// The cap now in force, for `set-bwlimit`.
        bwlimit: Option<u64>,
    },
    /// `{"ok":false,"error":...}`.
    Error(String),
}

/// The reply as it travels: one flat JSON object, fields present only where they apply.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireReply {
    /// False for an error.
    pub ok: bool,
    /// `status`'s answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    /// `final-sync`'s verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converged: Option<bool>,
    /// `final-sync`: the common root when converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// `final-sync`: the differing paths when not converged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub differences: Option<Vec<String>>,
    /// `set-bwlimit`: the cap now in force (bytes per second; absent when unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bwlimit: Option<u64>,
    /// Why a request failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl From<&Reply> for WireReply {
    fn from(r: &Reply) -> WireReply {
        let ok = WireReply {
            ok: true,
            ..WireReply::default()
        };
        match r {
            Reply::Status(s) => WireReply {
                status: Some((**s).clone()),
                ..ok
            },
            Reply::FinalSync(FinalSync::Converged { root }) => WireReply {
                converged: Some(true),
                root: Some(root.clone()),
                ..ok
            },
            Reply::FinalSync(FinalSync::Differs { differences }) => WireReply {
                converged: Some(false),
                differences: Some(differences.clone()),
                ..ok
            },
            Reply::Done { bwlimit } => WireReply {
                bwlimit: *bwlimit,
                ..ok
            },
            Reply::Error(e) => WireReply {
                ok: false,
                error: Some(e.clone()),
                ..WireReply::default()
            },
        }
    }
}

/// Decodes one request line (without its `\n`; a trailing `\r` is tolerated). The error is
/// the message for the error reply.
pub fn decode_request(line: &[u8]) -> Result<Request, String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(format!("request longer than {MAX_LINE} bytes"));
    }
    serde_json::from_slice(line).map_err(|e| {
        format!(
            "malformed request ({e}); expected one JSON object per line, e.g. {{\"cmd\":\"status\"}}, \
             with cmd one of status, final-sync, set-bwlimit, pause, resume"
        )
    })
}

/// Encodes a request as one line, `\n` included.
pub fn encode_request(r: &Request) -> Vec<u8> {
    // A derived Serialize of strings and unit variants cannot fail.
    let mut v = serde_json::to_vec(r).unwrap_or_default();
    v.push(b'\n');
    v
}

/// Encodes a reply as one line, `\n` included.
pub fn encode_reply(r: &Reply) -> Vec<u8> {
    let mut v = serde_json::to_vec(&WireReply::from(r))
        .unwrap_or_else(|_| br#"{"ok":false,"error":"reply not encodable"}"#.to_vec());
    v.push(b'\n');
    v
}

/// Decodes a reply line into what `req` expects; the error says what was wrong with it.
pub fn decode_reply(req: &Request, line: &[u8]) -> Result<Reply, String> {
    let w: WireReply =
        serde_json::from_slice(line).map_err(|e| format!("malformed reply ({e})"))?;
    if !w.ok {
        return Ok(Reply::Error(
            w.error.unwrap_or_else(|| "error without a message".into()),
        ));
    }
    match req {
        Request::Status => w
            .status
            .map(|s| Reply::Status(Box::new(s)))
            .ok_or_else(|| "status reply without \"status\"".into()),
        Request::FinalSync => match (w.converged, w.root, w.differences) {
            (Some(true), Some(root), _) => Ok(Reply::FinalSync(FinalSync::Converged { root })),
            (Some(false), _, differences) => Ok(Reply::FinalSync(FinalSync::Differs {
                differences: differences.unwrap_or_default(),
            })),
            _ => Err("final-sync reply without \"converged\" and \"root\"".into()),
        },
        Request::SetBwlimit { .. } | Request::Pause | Request::Resume => {
            Ok(Reply::Done { bwlimit: w.bwlimit })
        }
    }
}

/// Splits a byte stream into lines, with a length limit: feed it what a read returned
/// ([`Lines::extend`]), then take complete lines ([`Lines::next_line`]).
#[derive(Debug, Default)]
pub struct Lines {
    buf: Vec<u8>,
    /// Bytes of `buf` already searched for `\n`.
    searched: usize,
}

/// A line exceeded [`MAX_LINE`] before its end came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLong;

impl Lines {
    /// Appends bytes as they arrived.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete line without its `\n`; `Ok(None)` if more bytes are needed;
    /// `Err(TooLong)` once [`MAX_LINE`] bytes came without a `\n`.
    pub fn next_line(&mut self) -> Result<Option<Vec<u8>>, TooLong> {
        match self.buf[self.searched..].iter().position(|&b| b == b'\n') {
            Some(i) => {
                let end = self.searched + i;
                let line = self.buf[..end].to_vec();
                self.buf.drain(..=end);
                self.searched = 0;
                if line.len() > MAX_LINE {
                    return Err(TooLong);
                }
                Ok(Some(line))
            }
            None => {
                self.searched = self.buf.len();
                if self.buf.len() > MAX_LINE {
                    Err(TooLong)
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Bytes received that are not yet a line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_decode_as_documented() {
        let cases: &[(&str, Result<Request, ()>)] = &[
            (r#"{"cmd":"status"}"#, Ok(Request::Status)),
            (r#"{"cmd":"final-sync"}"#, Ok(Request::FinalSync)),
            (
                r#"{"cmd":"set-bwlimit","rate":"50M"}"#,
                Ok(Request::SetBwlimit { rate: "50M".into() }),
            ),
            (r#"{"cmd":"pause"}"#, Ok(Request::Pause)),
            ("{\"cmd\":\"resume\"}\r", Ok(Request::Resume)),
            (r#"{"cmd":"status","extra":1}"#, Ok(Request::Status)),
            (r#"{"cmd":"set-bwlimit"}"#, Err(())),
            (r#"{"cmd":"reboot"}"#, Err(())),
            (r#"{"cmd":7}"#, Err(())),
            ("[]", Err(())),
            ("status", Err(())),
            ("", Err(())),
            ("\u{1}\u{2}", Err(())),
        ];
        for (line, want) in cases {
            let got = decode_request(line.as_bytes()).map_err(|_| ());
            assert_eq!(&got, want, "{line:?}");
        }
    }

    #[test]
    fn request_round_trip() {
        for r in [
            Request::Status,
            Request::FinalSync,
            Request::SetBwlimit { rate: "6MB".into() },
            Request::Pause,
            Request::Resume,
        ] {
            let line = encode_request(&r);
            assert_eq!(line.last(), Some(&b'\n'));
            assert_eq!(decode_request(&line[..line.len() - 1]), Ok(r));
        }
        assert_eq!(
            encode_request(&Request::FinalSync),
            b"{\"cmd\":\"final-sync\"}\n"
        );
    }

    #[test]
    fn replies_have_the_documented_shape() {
        let status = Status {
            role: "push".into(),
            local_root: "ab".into(),
            ..Status::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&encode_reply(&Reply::Status(Box::new(status.clone()))))
                .unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["status"]["local_root"], "ab");
        assert!(v["status"]["peer_root"].is_null());
        assert_eq!(v["status"]["converged"], false);
        assert_eq!(v["status"]["pending_files"], 0);
        assert_eq!(
            encode_reply(&Reply::FinalSync(FinalSync::Converged {
                root: "ff".into()
            })),
            b"{\"ok\":true,\"converged\":true,\"root\":\"ff\"}\n"
        );
        assert_eq!(
            encode_reply(&Reply::FinalSync(FinalSync::Differs {
                differences: vec!["a/b".into()]
            })),
            b"{\"ok\":true,\"converged\":false,\"differences\":[\"a/b\"]}\n"
        );
        assert_eq!(
            encode_reply(&Reply::Error("nope".into())),
            b"{\"ok\":false,\"error\":\"nope\"}\n"
        );
        assert_eq!(
            encode_reply(&Reply::Done { bwlimit: None }),
            b"{\"ok\":true}\n"
        );
    }

    #[test]
    fn replies_decode_into_what_was_asked() {
        let s = Reply::Status(Box::default());
        let line = encode_reply(&s);
        assert_eq!(decode_reply(&Request::Status, &line), Ok(s));
        let f = Reply::FinalSync(FinalSync::Differs {
            differences: vec!["x".into()],
        });
        assert_eq!(decode_reply(&Request::FinalSync, &encode_reply(&f)), Ok(f));
        assert_eq!(
            decode_reply(&Request::Pause, br#"{"ok":false,"error":"e"}"#),
            Ok(Reply::Error("e".into()))
        );
        assert!(decode_reply(&Request::Status, br#"{"ok":true}"#).is_err());
        assert!(decode_reply(&Request::FinalSync, br#"{"ok":true}"#).is_err());
        assert!(decode_reply(&Request::Status, b"garbage").is_err());
    }

    #[test]
    fn lines_split_and_limit() {
        let mut l = Lines::default();
        l.extend(b"{\"cmd\":");
        assert_eq!(l.next_line(), Ok(None));
        l.extend(b"\"status\"}\n{\"cmd\":\"pause\"}\npartial");
        assert_eq!(l.next_line(), Ok(Some(br#"{"cmd":"status"}"#.to_vec())));
        assert_eq!(l.next_line(), Ok(Some(br#"{"cmd":"pause"}"#.to_vec())));
        assert_eq!(l.next_line(), Ok(None));
        assert_eq!(l.pending(), 7);
        let mut l = Lines::default();
        l.extend(&vec![b'x'; MAX_LINE]);
        assert_eq!(l.next_line(), Ok(None));
        l.extend(b"x");
        assert_eq!(l.next_line(), Err(TooLong));
        let mut l = Lines::default();
        l.extend(&vec![b'x'; MAX_LINE + 1]);
        l.extend(b"\n");
        assert_eq!(l.next_line(), Err(TooLong));
    }
}
