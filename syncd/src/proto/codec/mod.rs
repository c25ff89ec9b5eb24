//! Frames and their codec.
//!
//! A frame on the wire is `[u32 LE length][u8 tag][payload]`, where `length` counts the tag
//! and the payload. [`decode`] refuses a length above [`MAX_FRAME`] *before* it buffers or
//! allocates anything for it, and every count inside a payload is checked against the bytes
//! that remain, so a hostile peer cannot make the decoder allocate beyond the frame limit.
//! "Need more bytes" is `Ok(None)`, not an error.

mod decode;
mod encode;

pub use decode::{check_len, decode, decode_body};
pub use encode::{CHUNK_HEAD, ChunkHead};

use decode::R;
use encode::put_bytes;

use super::delta::{BlockSig, MAX_BLOCK_ACCEPTED, MIN_BLOCK, SIG_ENTRY, Signature};
use crate::chunk::ChunkId;
use crate::manifest::{
    ATTRS_FLAG, DecodeError, Entry, FileNode, Hash, Kind, Node, ShortHash, check_path,
    decode_listing, encode_attrs, encode_symlink, read_attrs,
};
use crate::wire::Reader;

/// Protocol version spoken by this build. 2: a compressed chunk is the next part of its
/// data stream's zstd stream ([`super::stream`]), not a zstd frame of its own. 3: directories
/// travel as [`Offered::Dir`] listings with [`ShortHash`]es. 4: hard links are part of the
/// file node ([`FileNode::link`]), not of [`Meta`]. 5: nodes cover owner, group and xattrs
/// ([`crate::manifest::attrs_hash`]), and `Hello` says whether owners are preserved. 7:
/// `HelloAck` carries the receiver's free space. 8: a session may begin with a bulk copy
/// into an empty receiver ([`Frame::Probe`], [`crate::proto::bulk`]).
pub const VERSION: u32 = 8;

/// Largest frame (tag + payload) either side accepts: a directory node of ~1M entries.
pub const MAX_FRAME: usize = 64 << 20;

/// Payload budget the encoder aims for when batching items (well under [`MAX_FRAME`]).
pub const BATCH_BYTES: usize = 1 << 20;

/// `items`, in order, in batches of about [`BATCH_BYTES`], `cost` being an item's share of
/// a frame (its encoded size, roughly); no batch is empty.
pub fn batched<T>(items: impl IntoIterator<Item = T>, cost: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut size = 0;
    for it in items {
        size += cost(&it);
        cur.push(it);
        if size >= BATCH_BYTES {
            out.push(std::mem::take(&mut cur));
            size = 0;
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

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
        let mut r = Reader::new(&bytes[1..]);
        let (mode, entries) = decode_listing(
            &mut r,
            |name, kind, hash| Listed {
                name,
                kind,
                hash: ShortHash(hash),
            },
            |l| &l.name,
        )
        .map_err(node_err)?;
        let attrs = read_attrs(&mut r, flagged).map_err(node_err)?;
        if !r.rest().is_empty() {
            return Err(node_err(DecodeError::Trailing(r.rest().len())));
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

/// A directory and its metadata, as a bulk copy sends it ([`Frame::Dirs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirItem {
    /// Relative path (the root is empty).
    pub path: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Metadata.
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
        /// Bytes available to unprivileged users on the filesystem of the receiver's tree
        /// (`statvfs`), when it could tell; `u64::MAX` on the wire when not.
        free: Option<u64>,
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
    /// Sender → receiver, the first frame of a session that may begin with a bulk copy
    /// ([`crate::proto::bulk`]): the receiver answers [`Frame::ProbeAck`], and `Hello`
    /// comes once the sender's scan is over.
    Probe {
        /// Protocol version.
        version: u32,
        /// The session compares owners (as `Hello`'s `owners` will say).
        owners: bool,
        /// Bulk streams the sender opens if the receiver takes the copy.
        streams: u32,
    },
    /// Receiver → sender: whether it takes a bulk copy (its tree is empty).
    ProbeAck {
        /// Protocol version.
        version: u32,
        /// The receiver takes the copy: the next `streams` unidirectional streams are bulk
        /// streams.
        bulk: bool,
    },
    /// Sender → receiver, on a bulk stream: a whole file, whose chunks follow on the same
    /// stream in order, one `Chunk` frame each.
    File {
        /// The file (never the root), its node and metadata.
        item: NodeItem,
    },
    /// Sender → receiver, after its bulk streams ended: the source's directories with
    /// their metadata, parents before children.
    Dirs {
        /// The directories.
        items: Vec<DirItem>,
    },
    /// Sender → receiver, after its bulk streams ended: the source's symlinks, with their
    /// metadata.
    Symlinks {
        /// The symlinks (each an [`Offered::Symlink`], never the root).
        items: Vec<NodeItem>,
    },
    /// Sender → receiver: the bulk copy is over; `Hello` follows.
    BulkDone {
        /// Files sent on the bulk streams.
        files: u64,
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

/// The tag byte of a [`Frame::Chunk`], which a data stream reads before the rest.
pub const CHUNK_TAG: u8 = tag::CHUNK;

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
    pub const PROBE: u8 = 15;
    pub const PROBE_ACK: u8 = 16;
    pub const FILE: u8 = 17;
    pub const DIRS: u8 = 18;
    pub const BULK_DONE: u8 = 19;
    pub const SYMLINKS: u8 = 20;
}
