//! The bulk copy into an empty receiver (protocol 8): what each side decides, without IO.
//!
//! A remote first sync has nothing to compare, reuse or delete, so the merkle descent, the
//! wants and a round of frames per file are pure cost; and the sender would read and hash
//! every file twice (its scan, then each chunk again as it is asked for). Instead:
//!
//! 1. sender → `Probe{version, owners, streams}` before its scan's result is known;
//!    receiver → `ProbeAck{bulk}`: [`takes_bulk`] (its tree is literally empty, and it can
//!    set what the session compares);
//! 2. while the sender's scan runs, every file it reads whole goes out on one of `streams`
//!    bulk streams as `File{item}` and then its chunks, in order, as ordinary `Chunk`
//!    frames (compressed by the stream's policy). The receiver checks each stream with an
//!    [`Incoming`]: a file, then exactly its chunks, each hashed against its id before it
//!    is written (the receiver's rule, as ever);
//! 3. the bulk streams end; sender → `Dirs` (every directory's mode and metadata),
//!    `Symlinks`, `BulkDone{files}`; the receiver checks the count ([`check_done`]), makes
//!    the symlinks, sets the directories' metadata, makes its renames durable and
//!    refreshes its manifest;
//! 4. then the ordinary session (`Hello` …) compares roots and sends what the bulk copy
//!    did not carry: hard links, files over the scan's whole-read size, files made only of
//!    chunks already sent (copied on the receiver), files that changed during the scan.
//!
//! Nothing here is trusted beyond what the session checks after it: the final root
//! comparison covers every file the bulk copy wrote.

use super::codec::{Frame, NodeItem, Offered};
use super::{Meta, ProtoError, VERSION};
use crate::chunk::Verified;
use crate::manifest::FileNode;

/// Most bulk streams a receiver accepts.
pub const MAX_STREAMS: u32 = 16;

/// Whether a sender with these options probes for a bulk copy: not for a dry run or an
/// itemized push (both report per file, which the bulk copy does not), and not under
/// filter rules or `--delete-excluded` (the receiver compares its tree under them, and a
/// bulk copy would leave it to refresh that twice).
pub fn probes(dry_run: bool, itemize: bool, filtered: bool) -> bool {
    !dry_run && !itemize && !filtered
}

/// The receiver's answer to `Probe`: a bulk copy only into a tree with no entry at all (a
/// part file of an interrupted push is an entry: the ordinary session resumes it), in a
/// mode it can set (owners need root), on a sane number of streams. Another protocol
/// version is refused, as `Hello` would be.
pub fn takes_bulk(
    version: u32,
    owners: bool,
    streams: u32,
    empty: bool,
    can_own: bool,
) -> Result<bool, ProtoError> {
    if version != VERSION {
        return Err(ProtoError::Version { theirs: version });
    }
    Ok(empty && (can_own || !owners) && (1..=MAX_STREAMS).contains(&streams))
}

/// What the receiver's answer to `Probe` means for the sender: take the bulk copy or not;
/// another version, a refusal or another frame is an error.
pub fn answered(f: Frame) -> Result<bool, ProtoError> {
    match f {
        Frame::ProbeAck { version, bulk } if version == VERSION => Ok(bulk),
        Frame::ProbeAck { version, .. } => Err(ProtoError::Version { theirs: version }),
        // A receiver of protocol 7 or older does not know `Probe` (tag 15).
        Frame::Refuse { reason } if reason.contains("unknown frame tag 15") => {
            Err(ProtoError::Refused(format!(
                "{reason} (it speaks an older protocol than this build's {VERSION}: run the \
                 same syncd version on both sides)"
            )))
        }
        Frame::Refuse { reason } => Err(ProtoError::Refused(reason)),
        f => Err(ProtoError::Unexpected {
            frame: f.name(),
            state: "in answer to probe",
        }),
    }
}

/// `BulkDone{files}` against the files the receiver's bulk streams carried.
pub fn check_done(said: u64, received: u64) -> Result<(), ProtoError> {
    if said == received {
        Ok(())
    } else {
        Err(ProtoError::Storage(format!(
            "bulk copy: the sender sent {said} files, {received} arrived"
        )))
    }
}

/// A file whose chunks all arrived, in order.
#[derive(Debug)]
pub struct Arrived {
    /// Relative path (validated by the codec: never the root, nothing that escapes it).
    pub path: Vec<u8>,
    /// The file's node, whose chunk ids its chunks matched.
    pub node: FileNode,
    /// Its metadata.
    pub meta: Meta,
    /// Its chunks, in order, each verified against its id.
    pub chunks: Vec<Verified>,
}

/// One bulk stream as the receiver reads it: `File`, then exactly that file's chunks in
/// order, and again. Anything else is a protocol error.
#[derive(Debug, Default)]
pub struct Incoming {
    current: Option<Arrived>,
    files: u64,
}

const STATE: &str = "on a bulk stream";

impl Incoming {
    /// A new stream.
    pub fn new() -> Incoming {
        Incoming::default()
    }

    /// A control-like frame on the stream: only `File`, and only between files. Returns
    /// the file at once if it has no chunks (an empty file).
    pub fn frame(&mut self, f: Frame) -> Result<Option<Arrived>, ProtoError> {
        match (f, &self.current) {
            (
                Frame::File {
                    item:
                        NodeItem {
                            path,
                            node: Offered::File(node),
                            meta,
                        },
                },
                None,
            ) => {
                let total: u64 = node.chunks.iter().map(|c| u64::from(c.len)).sum();
                if total != node.size || node.link.is_some() {
                    return Err(ProtoError::Storage(format!(
                        "bulk file {} does not add up: {} bytes in its chunks, size {}{}",
                        String::from_utf8_lossy(&path),
                        total,
                        node.size,
                        if node.link.is_some() { ", linked" } else { "" }
                    )));
                }
                self.current = Some(Arrived {
                    path,
                    chunks: Vec::with_capacity(node.chunks.len()),
                    node,
                    meta,
                });
                Ok(self.complete())
            }
            (f, _) => Err(ProtoError::Unexpected {
                frame: f.name(),
                state: STATE,
            }),
        }
    }

    /// A verified chunk on the stream: it must be the current file's next one. Returns the
    /// file once its last chunk arrived.
    pub fn chunk(&mut self, v: Verified) -> Result<Option<Arrived>, ProtoError> {
        let Some(cur) = &mut self.current else {
            return Err(ProtoError::Unexpected {
                frame: "chunk",
                state: "before a file on a bulk stream",
            });
        };
        match cur.node.chunks.get(cur.chunks.len()) {
            Some(c) if c.id == *v.id() && c.len as usize == v.bytes().len() => {
                cur.chunks.push(v);
                Ok(self.complete())
            }
            _ => Err(ProtoError::UnknownChunk(format!(
                "{} is not chunk {} of bulk file {}",
                v.id(),
                cur.chunks.len(),
                String::from_utf8_lossy(&cur.path)
            ))),
        }
    }

    /// The end of the stream: fine between files, an error inside one. Returns the files
    /// the stream carried.
    pub fn end(&self) -> Result<u64, ProtoError> {
        match &self.current {
            None => Ok(self.files),
            Some(cur) => Err(ProtoError::Storage(format!(
                "bulk stream ended inside {} ({} of {} chunks)",
                String::from_utf8_lossy(&cur.path),
                cur.chunks.len(),
                cur.node.chunks.len()
            ))),
        }
    }

    fn complete(&mut self) -> Option<Arrived> {
        let done = self
            .current
            .as_ref()
            .is_some_and(|c| c.chunks.len() == c.node.chunks.len());
        if done {
            self.files += 1;
            self.current.take()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkId;
    use crate::manifest::ChunkRef;

    fn file(path: &[u8], parts: &[&[u8]]) -> (Frame, Vec<Verified>) {
        let chunks: Vec<_> = parts
            .iter()
            .map(|p| ChunkRef {
                id: ChunkId::of(p),
                len: p.len() as u32,
            })
            .collect();
        let node = FileNode {
            size: parts.iter().map(|p| p.len() as u64).sum(),
            mode: 0o644,
            mtime_ns: 1,
            chunks,
            link: None,
            attrs: None,
        };
        let verified = parts
            .iter()
            .map(|p| Verified::check(&ChunkId::of(p), p.to_vec()).unwrap())
            .collect();
        let item = NodeItem {
            path: path.to_vec(),
            node: Offered::File(node),
            meta: Meta::default(),
        };
        (Frame::File { item }, verified)
    }

    #[test]
    fn a_stream_carries_files_then_exactly_their_chunks() {
        let mut s = Incoming::new();
        let (f, mut v) = file(b"a/x", &[b"one", b"two"]);
        assert!(s.frame(f).unwrap().is_none());
        assert!(s.end().is_err(), "ends inside a file");
        let second = v.pop().unwrap();
        assert!(s.chunk(v.pop().unwrap()).unwrap().is_none());
        let done = s.chunk(second).unwrap().unwrap();
        assert_eq!(done.path, b"a/x");
        assert_eq!(done.chunks.len(), 2);
        // An empty file is complete at once.
        let (f, _) = file(b"empty", &[]);
        assert!(s.frame(f).unwrap().is_some());
        assert_eq!(s.end(), Ok(2));
    }

    #[test]
    fn a_stream_refuses_chunks_out_of_place() {
        let (f, v) = file(b"f", &[b"one", b"two"]);
        // A chunk before any file.
        let mut s = Incoming::new();
        assert!(s.chunk(v[0].clone()).is_err());
        // The chunks out of order.
        let mut s = Incoming::new();
        s.frame(f.clone()).unwrap();
        assert!(matches!(
            s.chunk(v[1].clone()),
            Err(ProtoError::UnknownChunk(_))
        ));
        // A second file inside the first, or any other frame.
        let mut s = Incoming::new();
        s.frame(f.clone()).unwrap();
        assert!(s.frame(f).is_err());
        assert!(Incoming::new().frame(Frame::BulkDone { files: 0 }).is_err());
    }

    #[test]
    fn a_file_whose_chunks_do_not_add_up_is_refused() {
        let (mut f, _) = file(b"f", &[b"one"]);
        if let Frame::File { item } = &mut f
            && let Offered::File(n) = &mut item.node
        {
            n.size = 4;
        }
        assert!(Incoming::new().frame(f).is_err());
    }

    #[test]
    fn only_an_empty_receiver_that_can_set_the_mode_takes_a_bulk_copy() {
        assert_eq!(takes_bulk(VERSION, false, 4, true, false), Ok(true));
        assert_eq!(takes_bulk(VERSION, true, 4, true, true), Ok(true));
        assert_eq!(takes_bulk(VERSION, false, 4, false, true), Ok(false));
        assert_eq!(takes_bulk(VERSION, true, 4, true, false), Ok(false));
        assert_eq!(takes_bulk(VERSION, false, 0, true, true), Ok(false));
        assert_eq!(takes_bulk(VERSION, false, 17, true, true), Ok(false));
        assert!(matches!(
            takes_bulk(VERSION - 1, false, 4, true, true),
            Err(ProtoError::Version { .. })
        ));
        let ack = |version, bulk| Frame::ProbeAck { version, bulk };
        assert_eq!(answered(ack(VERSION, true)), Ok(true));
        assert_eq!(answered(ack(VERSION, false)), Ok(false));
        assert!(answered(ack(VERSION + 1, true)).is_err());
        let refused = answered(Frame::Refuse {
            reason: "no".into(),
        });
        assert_eq!(refused, Err(ProtoError::Refused("no".into())));
        assert!(answered(Frame::BulkDone { files: 0 }).is_err());
        let old = answered(Frame::Refuse {
            reason: "127.0.0.1:1: unknown frame tag 15".into(),
        });
        assert!(
            matches!(&old, Err(ProtoError::Refused(r)) if r.contains("older protocol")),
            "{old:?}"
        );
        assert!(check_done(3, 3).is_ok());
        assert!(check_done(3, 2).is_err());
        assert!(probes(false, false, false));
        assert!(!probes(true, false, false) && !probes(false, true, false));
        assert!(!probes(false, false, true));
    }
}
