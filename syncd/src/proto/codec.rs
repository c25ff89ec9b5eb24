//! Frames and their codec.
//!
//! A frame on the wire is `[u32 LE length][u8 tag][payload]`, where `length` counts the tag
//! and the payload. [`decode`] refuses a length above [`MAX_FRAME`] *before* it buffers or
//! allocates anything for it, and every count inside a payload is checked against the bytes
//! that remain, so a hostile peer cannot make the decoder allocate beyond the frame limit.
//! "Need more bytes" is `Ok(None)`, not an error.

use super::delta::{BlockSig, MAX_BLOCK_ACCEPTED, MIN_BLOCK, SIG_ENTRY, Signature};
use crate::chunk::ChunkId;
use crate::manifest::{
    ATTRS_FLAG, DecodeError, Entry, FileNode, Hash, Kind, Node, ShortHash, check_name, check_path,
    encode_attrs, encode_symlink,
};

/// Protocol version spoken by this build. 2: a compressed chunk is the next part of its
/// data stream's zstd stream ([`super::stream`]), not a zstd frame of its own. 3: directories
/// travel as [`Offered::Dir`] listings with [`ShortHash`]es. 4: hard links are part of the
/// file node ([`FileNode::link`]), not of [`Meta`]. 5: nodes cover owner, group and xattrs
/// ([`crate::manifest::attrs_hash`]), and `Hello` says whether owners are preserved.
pub const VERSION: u32 = 6;

/// Largest frame (tag + payload) either side accepts: a directory node of ~1M entries.
pub const MAX_FRAME: usize = 64 << 20;

/// Payload budget the encoder aims for when batching items (well under [`MAX_FRAME`]).
pub const BATCH_BYTES: usize = 1 << 20;

/// How chunk bytes are encoded in a [`Frame::Chunk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As is.
    Raw,
    /// The next part of the data stream's zstd stream ([`super::stream`]).
    Zstd,
    /// Ops against the base the receiver named in its [`Frame::WantDelta`]
    /// ([`super::delta`]).
    Delta,
}

/// Metadata that travels beside a node (not part of its hash).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Meta {
    /// Modification time, ns since the epoch (files, dirs, symlinks).
    pub mtime_ns: i64,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Extended attributes (name, value).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A directory child as the sender lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The name (a single valid component).
    pub name: Vec<u8>,
    /// What the child is.
    pub kind: Kind,
    /// The first 8 bytes of the child's node hash.
    pub hash: ShortHash,
}

impl Listed {
    /// True if `e` is this child: same name, kind and (short) hash.
    pub fn is(&self, e: &Entry) -> bool {
        self.name == e.name && self.kind == e.kind && self.hash == e.hash.short()
    }
}

/// A node as the sender offers it. Files and symlinks travel whole (the receiver needs
/// their chunk ids and targets). A directory travels as a listing whose child hashes are
/// shortened to 8 bytes: the receiver only compares them with its own to decide where to
/// descend, and a whole hash per child was most of the bytes of a small change in a large
/// tree. The directory's own hash is never needed: the receiver computes its root from
/// what it wrote, and `push` compares that with the sender's whole root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offered {
    /// A regular file.
    File(FileNode),
    /// A symlink and its target.
    Symlink {
        /// The target, unresolved.
        target: Vec<u8>,
        /// Attributes digest ([`crate::manifest::attrs_hash`]).
        attrs: Option<Hash>,
    },
    /// A directory: its mode and children, strictly ascending by name.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Children.
        entries: Vec<Listed>,
        /// Attributes digest ([`crate::manifest::attrs_hash`]).
        attrs: Option<Hash>,
    },
}

impl Offered {
    /// The node's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Offered::File(_) => Kind::File,
            Offered::Symlink { .. } => Kind::Symlink,
            Offered::Dir { .. } => Kind::Dir,
        }
    }

    /// True if `node` is this offer: equal files or symlinks, or a directory with the same
    /// mode whose children have the same names, kinds and (short) hashes.
    pub fn matches(&self, node: &Node) -> bool {
        match (self, node) {
            (Offered::File(a), Node::File(b)) => a == b,
            (
                Offered::Symlink { target: a, attrs },
                Node::Symlink {
                    target: b,
                    attrs: c,
                },
            ) => a == b && attrs == c,
            (
                Offered::Dir {
                    mode,
                    entries,
                    attrs,
                },
                Node::Dir {
                    mode: m,
                    entries: es,
                    attrs: c,
                },
            ) => {
                mode == m
                    && attrs == c
                    && entries.len() == es.len()
                    && entries.iter().zip(es).all(|(a, b)| a.is(b))
            }
            _ => false,
        }
    }

    /// Appends the offer, length-prefixed: a file or symlink as its canonical node
    /// encoding, a directory as a listing that starts with the directory tag.
    fn encode(&self, out: &mut Vec<u8>) {
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Offered::File(f) => f.encode(out),
            Offered::Symlink { target, attrs } => encode_symlink(target, attrs.as_ref(), out),
            Offered::Dir {
                mode,
                entries,
                attrs,
            } => {
                let tag_at = out.len();
                out.push(Kind::Dir.tag());
                out.extend_from_slice(&mode.to_le_bytes());
                out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
                for e in entries {
                    put_bytes(out, &e.name);
                    out.push(e.kind.tag());
                    out.extend_from_slice(&e.hash.0);
                }
                encode_attrs(attrs.as_ref(), tag_at, out);
            }
        }
        let len = (out.len() - at - 4) as u32;
        out[at..at + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Decodes what [`Offered::encode`] wrote: a whole file or symlink node, or a listing.
    fn decode(bytes: &[u8], path: &[u8]) -> Result<Offered, FrameError> {
        let node_err = |source| FrameError::Node {
            path: String::from_utf8_lossy(path).into_owned(),
            source,
        };
        let Some(&flagged) = bytes.first() else {
            return Err(node_err(DecodeError::Truncated));
        };
        if flagged & !ATTRS_FLAG != Kind::Dir.tag() {
            return match Node::decode(bytes).map_err(node_err)? {
                Node::File(f) => Ok(Offered::File(f)),
                Node::Symlink { target, attrs } => Ok(Offered::Symlink { target, attrs }),
                Node::Dir { .. } => Err(node_err(DecodeError::BadTag(Kind::Dir.tag()))),
            };
        }
        let mut r = R {
            b: &bytes[1..],
            frame: "nodes",
        };
        let mode = r.u32()?;
        let n = r.count(4 + 1 + 8)?;
        let mut entries: Vec<Listed> = Vec::with_capacity(n);
        for _ in 0..n {
            let name = r.bytes()?.to_vec();
            check_name(&name).map_err(node_err)?;
            let tag = r.u8()?;
            let kind = Kind::from_tag(tag).ok_or_else(|| node_err(DecodeError::BadTag(tag)))?;
            let hash = ShortHash(r.array()?);
            if entries.last().is_some_and(|prev| prev.name >= name) {
                return Err(node_err(DecodeError::Unsorted));
            }
            entries.push(Listed { name, kind, hash });
        }
        let attrs = if flagged & ATTRS_FLAG != 0 {
            Some(Hash(r.array()?))
        } else {
            None
        };
        if !r.b.is_empty() {
            return Err(node_err(DecodeError::Trailing(r.b.len())));
        }
        Ok(Offered::Dir {
            mode,
            entries,
            attrs,
        })
    }
}

impl From<Node> for Offered {
    fn from(node: Node) -> Offered {
        match node {
            Node::File(f) => Offered::File(f),
            Node::Symlink { target, attrs } => Offered::Symlink { target, attrs },
            Node::Dir {
                mode,
                entries,
                attrs,
            } => Offered::Dir {
                attrs,
                mode,
                entries: entries
                    .into_iter()
                    .map(|e| Listed {
                        hash: e.hash.short(),
                        name: e.name,
                        kind: e.kind,
                    })
                    .collect(),
            },
        }
    }
}

/// A node offered by the sender, with its path and metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeItem {
    /// Relative path (the root is empty).
    pub path: Vec<u8>,
    /// The node.
    pub node: Offered,
    /// Metadata not covered by the node hash.
    pub meta: Meta,
}

/// Summary the receiver sends when it is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Files written (new or changed).
    pub files: u64,
    /// Chunks received over the wire.
    pub chunks_received: u64,
    /// Chunks reused from the receiver's own tree or partial files.
    pub chunks_reused: u64,
    /// Bytes reused instead of received.
    pub bytes_reused: u64,
    /// Entries removed (`--delete` and type changes).
    pub removed: u64,
}

/// Which attributes a metadata-only change touches ([`Frame::Report`]).
pub mod attr {
    /// Permission bits.
    pub const MODE: u8 = 1;
    /// Modification time.
    pub const MTIME: u8 = 2;
    /// Owner, group or extended attributes (ACLs among them).
    pub const OWNER_XATTRS: u8 = 4;
    /// How the file is hard-linked.
    pub const LINK: u8 = 8;
    /// Every bit.
    pub const ALL: u8 = 15;

    /// The names of the bits set in `bits`, for a person.
    pub fn names(bits: u8) -> Vec<&'static str> {
        [
            (MODE, "mode"),
            (MTIME, "mtime"),
            (OWNER_XATTRS, "owner/xattrs"),
            (LINK, "link"),
        ]
        .into_iter()
        .filter(|(b, _)| bits & b != 0)
        .map(|(_, n)| n)
        .collect()
    }
}

/// Everything either side can say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Sender → receiver, first frame: version, the sender's root and options.
    Hello {
        /// Protocol version.
        version: u32,
        /// The sender's root hash.
        root: Hash,
        /// Remove receiver entries that the sender does not have.
        delete: bool,
        /// Report what would change, change nothing.
        dry_run: bool,
        /// The sender's nodes cover owner, group and all xattrs
        /// ([`crate::manifest::attrs_hash`]), and the receiver must make them equal: it
        /// compares in the same mode, and refuses if it cannot set owners (not root).
        owners: bool,
        /// The receiver's final root comes from a stat walk of its whole tree, not only of
        /// what the session changed: a write into the tree by someone else during the push
        /// then shows as a difference (`--verify-dest`).
        verify_dest: bool,
        /// An [`Frame::Options`] frame follows.
        options: bool,
        /// Report each change as it is made (`--itemize-changes`), not only in a dry run.
        itemize: bool,
    },
    /// Sender → receiver, right after a `Hello` that announces it: the filter rules the
    /// sender scanned with ([`crate::filter`], wire form), which the receiver applies to its
    /// own tree so that what is excluded is neither sent nor deleted, and the limits of the
    /// session.
    Options {
        /// [`crate::filter::Filter::encode`]'s bytes.
        rules: Vec<u8>,
        /// Delete receiver entries the rules exclude too (`--delete-excluded`): the
        /// receiver then compares its whole tree.
        delete_excluded: bool,
        /// Refuse to delete more than this many entries (`--max-delete`); 0 = no limit.
        max_delete: u64,
    },
    /// Receiver → sender: accepted, with the receiver's current root.
    HelloAck {
        /// Protocol version.
        version: u32,
        /// The receiver's root before the push.
        root: Hash,
    },
    /// Either side: the session is refused or aborted, with a reason for humans.
    Refuse {
        /// Why.
        reason: String,
    },
    /// Receiver → sender: send the nodes at these paths.
    GetNodes {
        /// Relative paths.
        paths: Vec<Vec<u8>>,
    },
    /// Sender → receiver: nodes (answers, or updates for files that changed meanwhile).
    Nodes {
        /// The nodes.
        items: Vec<NodeItem>,
    },
    /// Sender → receiver, right after `Hello`: paths the sender has but could not read
    /// consistently (unreadable, or changing whenever it was read), so its manifest leaves
    /// them out. The receiver keeps its copy of each, and of everything below it: it never
    /// deletes them, whatever `--delete` says.
    Unsettled {
        /// Relative paths.
        paths: Vec<Vec<u8>>,
    },
    /// Sender → receiver: this path could not be read any more; drop it.
    Vanished {
        /// Relative path.
        path: Vec<u8>,
    },
    /// Receiver → sender: send these chunks.
    Want {
        /// Chunk ids.
        ids: Vec<ChunkId>,
    },
    /// Receiver → sender: send chunk `id` as a delta against `base`, a chunk the receiver
    /// has, whose blocks `sig` describes (or whole, if that is smaller).
    WantDelta {
        /// The chunk wanted.
        id: ChunkId,
        /// The receiver's base chunk.
        base: ChunkId,
        /// The base's signature.
        sig: Signature,
    },
    /// Sender → receiver (on a data stream): one chunk.
    Chunk {
        /// Its id (BLAKE3 of the raw bytes).
        id: ChunkId,
        /// Length of the raw bytes.
        raw_len: u32,
        /// How `data` is encoded.
        codec: Codec,
        /// The encoded bytes.
        data: Vec<u8>,
    },
    /// Receiver → sender (dry run, or `itemize`): what would change or changed.
    Report {
        /// `(marker, attributes, path)`: markers as in `syncd diff`, attributes the
        /// [`attr`] bits of a metadata-only change.
        items: Vec<(u8, u8, Vec<u8>)>,
    },
    /// Receiver → sender: finished; the receiver's manifest root after the push.
    Done {
        /// Root after applying.
        root: Hash,
        /// What was done.
        totals: Totals,
    },
    /// Either side, on the control stream: one other frame, compressed as the next part of
    /// that direction's zstd stream ([`super::stream::pack`]). Never nested.
    Packed {
        /// Length of the encoded frame inside (length prefix included).
        raw_len: u32,
        /// The compressed bytes.
        data: Vec<u8>,
    },
}

/// Why bytes are not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The declared length exceeds [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    /// A zero-length frame (no tag).
    #[error("empty frame")]
    Empty,
    /// Unknown frame tag.
    #[error("unknown frame tag {0}")]
    UnknownTag(u8),
    /// The payload is malformed.
    #[error("malformed {frame} frame: {reason}")]
    Malformed {
        /// Frame name.
        frame: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A node inside the frame does not decode.
    #[error("bad node for {path:?}: {source}")]
    Node {
        /// Its path, lossily.
        path: String,
        /// Why.
        source: DecodeError,
    },
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const HELLO_ACK: u8 = 2;
    pub const REFUSE: u8 = 3;
    pub const GET_NODES: u8 = 4;
    pub const NODES: u8 = 5;
    pub const VANISHED: u8 = 6;
    pub const WANT: u8 = 7;
    pub const CHUNK: u8 = 8;
    pub const REPORT: u8 = 9;
    pub const DONE: u8 = 10;
    pub const PACKED: u8 = 11;
    pub const WANT_DELTA: u8 = 12;
    pub const UNSETTLED: u8 = 13;
    pub const OPTIONS: u8 = 14;
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl Frame {
    /// Appends the frame, with its length prefix, to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello {
                version,
                root,
                delete,
                dry_run,
                owners,
                verify_dest,
                options,
                itemize,
            } => {
                out.push(tag::HELLO);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&root.0);
                out.push(
                    u8::from(*delete)
                        | (u8::from(*dry_run) << 1)
                        | (u8::from(*owners) << 2)
                        | (u8::from(*verify_dest) << 3)
                        | (u8::from(*options) << 4)
                        | (u8::from(*itemize) << 5),
                );
            }
            Frame::Options {
                rules,
                delete_excluded,
                max_delete,
            } => {
                out.push(tag::OPTIONS);
                put_bytes(out, rules);
                out.push(u8::from(*delete_excluded));
                out.extend_from_slice(&max_delete.to_le_bytes());
            }
            Frame::HelloAck { version, root } => {
                out.push(tag::HELLO_ACK);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&root.0);
            }
            Frame::Refuse { reason } => {
                out.push(tag::REFUSE);
                put_bytes(out, reason.as_bytes());
            }
            Frame::GetNodes { paths } => {
                out.push(tag::GET_NODES);
                out.extend_from_slice(&(paths.len() as u32).to_le_bytes());
                for p in paths {
                    put_bytes(out, p);
                }
            }
            Frame::Nodes { items } => {
                out.push(tag::NODES);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for it in items {
                    put_bytes(out, &it.path);
                    it.node.encode(out);
                    out.extend_from_slice(&it.meta.mtime_ns.to_le_bytes());
                    out.extend_from_slice(&it.meta.uid.to_le_bytes());
                    out.extend_from_slice(&it.meta.gid.to_le_bytes());
                    out.extend_from_slice(&(it.meta.xattrs.len() as u32).to_le_bytes());
                    for (k, v) in &it.meta.xattrs {
                        put_bytes(out, k);
                        put_bytes(out, v);
                    }
                }
            }
            Frame::Unsettled { paths } => {
                out.push(tag::UNSETTLED);
                out.extend_from_slice(&(paths.len() as u32).to_le_bytes());
                for p in paths {
                    put_bytes(out, p);
                }
            }
            Frame::Vanished { path } => {
                out.push(tag::VANISHED);
                put_bytes(out, path);
            }
            Frame::Want { ids } => {
                out.push(tag::WANT);
                out.extend_from_slice(&(ids.len() as u32).to_le_bytes());
                for id in ids {
                    out.extend_from_slice(&id.0);
                }
            }
            Frame::WantDelta { id, base, sig } => {
                out.push(tag::WANT_DELTA);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&base.0);
                out.extend_from_slice(&sig.block.to_le_bytes());
                out.extend_from_slice(&(sig.blocks.len() as u32).to_le_bytes());
                for b in &sig.blocks {
                    out.extend_from_slice(&b.weak.to_le_bytes());
                    out.extend_from_slice(&b.strong);
                }
            }
            Frame::Chunk {
                id,
                raw_len,
                codec,
                data,
            } => {
                let head = ChunkHead {
                    id: *id,
                    raw_len: *raw_len,
                    codec: *codec,
                    data_len: data.len(),
                };
                out.extend_from_slice(&head.encode()[4..]);
                out.extend_from_slice(data);
            }
            Frame::Report { items } => {
                out.push(tag::REPORT);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for (m, a, p) in items {
                    out.push(*m);
                    out.push(*a);
                    put_bytes(out, p);
                }
            }
            Frame::Packed { raw_len, data } => {
                out.push(tag::PACKED);
                out.extend_from_slice(&raw_len.to_le_bytes());
                put_bytes(out, data);
            }
            Frame::Done { root, totals } => {
                out.push(tag::DONE);
                out.extend_from_slice(&root.0);
                for v in [
                    totals.files,
                    totals.chunks_received,
                    totals.chunks_reused,
                    totals.bytes_reused,
                    totals.removed,
                ] {
                    out.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// The encoded frame as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "hello",
            Frame::HelloAck { .. } => "hello-ack",
            Frame::Refuse { .. } => "refuse",
            Frame::GetNodes { .. } => "get-nodes",
            Frame::Nodes { .. } => "nodes",
            Frame::Vanished { .. } => "vanished",
            Frame::Unsettled { .. } => "unsettled",
            Frame::Options { .. } => "options",
            Frame::Want { .. } => "want",
            Frame::WantDelta { .. } => "want-delta",
            Frame::Chunk { .. } => "chunk",
            Frame::Report { .. } => "report",
            Frame::Done { .. } => "done",
            Frame::Packed { .. } => "packed",
        }
    }
}

/// Decodes one frame from the front of `buf`. Returns `Ok(None)` if `buf` does not yet hold
/// a whole frame, or the frame and the number of bytes it used.
pub fn decode(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    check_len(len)?;
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let frame = decode_body(&buf[4..4 + len])?;
    Ok(Some((frame, 4 + len)))
}

/// Validates a declared frame length (tag + payload) before anything is read for it.
pub fn check_len(len: usize) -> Result<(), FrameError> {
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > MAX_FRAME {
        return Err(FrameError::TooLarge(len));
    }
    Ok(())
}

/// Bytes of a chunk frame's body before its data: tag, id, raw length, codec, data length.
pub const CHUNK_HEAD: usize = 1 + 32 + 4 + 1 + 4;

/// A chunk frame without its data, so that a data stream can read the data straight into
/// a buffer of its own ([`ChunkHead::decode`]) and write it without copying it into a frame
/// ([`ChunkHead::encode`]). [`decode_body`] decodes chunk frames through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHead {
    /// The chunk's id.
    pub id: ChunkId,
    /// Length of the raw bytes.
    pub raw_len: u32,
    /// How the data is encoded.
    pub codec: Codec,
    /// Length of the data that follows.
    pub data_len: usize,
}

impl ChunkHead {
    /// The length prefix and the head of the frame; the data follows.
    pub fn encode(&self) -> [u8; 4 + CHUNK_HEAD] {
        let mut out = [0u8; 4 + CHUNK_HEAD];
        out[..4].copy_from_slice(&((CHUNK_HEAD + self.data_len) as u32).to_le_bytes());
        out[4] = tag::CHUNK;
        out[5..37].copy_from_slice(&self.id.0);
        out[37..41].copy_from_slice(&self.raw_len.to_le_bytes());
        out[41] = match self.codec {
            Codec::Raw => 0,
            Codec::Zstd => 1,
            Codec::Delta => 2,
        };
        out[42..46].copy_from_slice(&(self.data_len as u32).to_le_bytes());
        out
    }

    /// Decodes the head of a frame body of `body_len` bytes (checked with [`check_len`])
    /// that starts with `head`: only a chunk frame, exactly as [`decode_body`] accepts it.
    pub fn decode(body_len: usize, head: &[u8; CHUNK_HEAD]) -> Result<ChunkHead, FrameError> {
        let mut r = R {
            b: head,
            frame: "chunk",
        };
        let t = r.u8()?;
        if t != tag::CHUNK {
            return Err(r.bad(format!("frame tag {t} where a chunk was expected")));
        }
        let id = ChunkId(r.array()?);
        let raw_len = r.u32()?;
        let codec = match r.u8()? {
            0 => Codec::Raw,
            1 => Codec::Zstd,
            2 => Codec::Delta,
            c => return Err(r.bad(format!("unknown codec {c}"))),
        };
        let data_len = r.u32()? as usize;
        if body_len.checked_sub(CHUNK_HEAD) != Some(data_len) {
            return Err(r.bad(format!(
                "{data_len} bytes of data in a frame of {body_len} bytes"
            )));
        }
        if codec == Codec::Raw && data_len != raw_len as usize {
            return Err(r.bad("raw chunk length mismatch".into()));
        }
        // What a compressed chunk may decode to is bounded like a frame.
        if raw_len as usize > MAX_FRAME {
            return Err(r.bad(format!("chunk of {raw_len} bytes exceeds the frame limit")));
        }
        Ok(ChunkHead {
            id,
            raw_len,
            codec,
            data_len,
        })
    }
}

/// Decodes a frame body (tag + payload, without the length prefix).
pub fn decode_body(body: &[u8]) -> Result<Frame, FrameError> {
    let (&t, payload) = body.split_first().ok_or(FrameError::Empty)?;
    let name = match t {
        tag::HELLO => "hello",
        tag::HELLO_ACK => "hello-ack",
        tag::REFUSE => "refuse",
        tag::GET_NODES => "get-nodes",
        tag::NODES => "nodes",
        tag::VANISHED => "vanished",
        tag::UNSETTLED => "unsettled",
        tag::OPTIONS => "options",
        tag::WANT => "want",
        tag::WANT_DELTA => "want-delta",
        tag::CHUNK => "chunk",
        tag::REPORT => "report",
        tag::DONE => "done",
        tag::PACKED => "packed",
        other => return Err(FrameError::UnknownTag(other)),
    };
    let mut r = R {
        b: payload,
        frame: name,
    };
    let f = match t {
        tag::HELLO => {
            let version = r.u32()?;
            let root = Hash(r.array()?);
            let flags = r.u8()?;
            if flags & !63 != 0 {
                return Err(r.bad(format!("unknown flags {flags:#x}")));
            }
            Frame::Hello {
                version,
                root,
                delete: flags & 1 != 0,
                dry_run: flags & 2 != 0,
                owners: flags & 4 != 0,
                verify_dest: flags & 8 != 0,
                options: flags & 16 != 0,
                itemize: flags & 32 != 0,
            }
        }
        tag::HELLO_ACK => Frame::HelloAck {
            version: r.u32()?,
            root: Hash(r.array()?),
        },
        tag::REFUSE => {
            let reason = r.bytes()?;
            Frame::Refuse {
                reason: std::str::from_utf8(reason)
                    .map_err(|_| r.bad("reason is not UTF-8".into()))?
                    .to_owned(),
            }
        }
        tag::GET_NODES => {
            let n = r.count(4)?;
            let mut paths = Vec::with_capacity(n);
            for _ in 0..n {
                paths.push(r.path()?);
            }
            Frame::GetNodes { paths }
        }
        tag::NODES => {
            let n = r.count(4 + 4 + 8 + 4 + 4 + 4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let path = r.path()?;
                let node = Offered::decode(r.bytes()?, &path)?;
                let mtime_ns = r.u64()? as i64;
                let uid = r.u32()?;
                let gid = r.u32()?;
                let nx = r.count(8)?;
                let mut xattrs = Vec::with_capacity(nx);
                for _ in 0..nx {
                    let k = r.bytes()?.to_vec();
                    let v = r.bytes()?.to_vec();
                    xattrs.push((k, v));
                }
                items.push(NodeItem {
                    path,
                    node,
                    meta: Meta {
                        mtime_ns,
                        uid,
                        gid,
                        xattrs,
                    },
                });
            }
            Frame::Nodes { items }
        }
        tag::VANISHED => Frame::Vanished { path: r.path()? },
        tag::OPTIONS => {
            let rules = r.bytes()?.to_vec();
            crate::filter::Filter::decode(&rules).map_err(|e| r.bad(e.to_string()))?;
            let delete_excluded = match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(r.bad(format!("bad flag {other}"))),
            };
            Frame::Options {
                rules,
                delete_excluded,
                max_delete: r.u64()?,
            }
        }
        tag::UNSETTLED => {
            let n = r.count(4)?;
            let mut paths = Vec::with_capacity(n);
            for _ in 0..n {
                paths.push(r.path()?);
            }
            Frame::Unsettled { paths }
        }
        tag::WANT => {
            let n = r.count(32)?;
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                ids.push(ChunkId(r.array()?));
            }
            Frame::Want { ids }
        }
        tag::WANT_DELTA => {
            let id = ChunkId(r.array()?);
            let base = ChunkId(r.array()?);
            let block = r.u32()?;
            if !(MIN_BLOCK as u32..=MAX_BLOCK_ACCEPTED).contains(&block) {
                return Err(r.bad(format!("signature block size {block}")));
            }
            let n = r.count(SIG_ENTRY)?;
            // A base is a chunk, and no chunk exceeds the frame limit.
            if n.saturating_mul(block as usize) > MAX_FRAME {
                return Err(r.bad(format!("signature of {n} blocks of {block} bytes")));
            }
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                let weak = r.u32()?;
                let strong = r.array()?;
                blocks.push(BlockSig { weak, strong });
            }
            Frame::WantDelta {
                id,
                base,
                sig: Signature { block, blocks },
            }
        }
        tag::CHUNK => {
            let head: &[u8; CHUNK_HEAD] = body
                .get(..CHUNK_HEAD)
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| r.bad("truncated".into()))?;
            let h = ChunkHead::decode(body.len(), head)?;
            r.b = &[];
            Frame::Chunk {
                id: h.id,
                raw_len: h.raw_len,
                codec: h.codec,
                data: body[CHUNK_HEAD..].to_vec(),
            }
        }
        tag::REPORT => {
            let n = r.count(6)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let m = r.u8()?;
                if !b"+-MmT".contains(&m) {
                    return Err(r.bad(format!("unknown marker {m:#x}")));
                }
                let a = r.u8()?;
                if a & !attr::ALL != 0 {
                    return Err(r.bad(format!("unknown attribute bits {a:#x}")));
                }
                items.push((m, a, r.path()?));
            }
            Frame::Report { items }
        }
        tag::DONE => {
            let root = Hash(r.array()?);
            let mut v = [0u64; 5];
            for x in &mut v {
                *x = r.u64()?;
            }
            Frame::Done {
                root,
                totals: Totals {
                    files: v[0],
                    chunks_received: v[1],
                    chunks_reused: v[2],
                    bytes_reused: v[3],
                    removed: v[4],
                },
            }
        }
        tag::PACKED => {
            let raw_len = r.u32()?;
            if raw_len as usize > MAX_FRAME + 4 {
                return Err(r.bad(format!(
                    "packed frame of {raw_len} bytes exceeds the frame limit"
                )));
            }
            Frame::Packed {
                raw_len,
                data: r.bytes()?.to_vec(),
            }
        }
        _ => return Err(FrameError::UnknownTag(t)),
    };
    if !r.b.is_empty() {
        return Err(r.bad(format!("{} trailing bytes", r.b.len())));
    }
    Ok(f)
}

struct R<'a> {
    b: &'a [u8],
    frame: &'static str,
}

impl<'a> R<'a> {
    fn bad(&self, reason: String) -> FrameError {
        FrameError::Malformed {
            frame: self.frame,
            reason,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        if self.b.len() < n {
            return Err(self.bad("truncated".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn count(&mut self, min_item: usize) -> Result<usize, FrameError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min_item) > self.b.len() {
            return Err(self.bad(format!("count {n} exceeds the frame")));
        }
        Ok(n)
    }
    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    /// A relative path: empty (the root) or `/`-separated valid names. Anything that could
    /// escape the root (`..`, absolute, empty components, NUL) is refused here, at the edge.
    fn path(&mut self) -> Result<Vec<u8>, FrameError> {
        let p = self.bytes()?;
        if !p.is_empty() {
            check_path(p).map_err(|e| self.bad(format!("unsafe path: {e}")))?;
        }
        Ok(p.to_vec())
    }
}
