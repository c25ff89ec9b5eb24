//! The sync protocol: frames ([`codec`]) and the two session state machines.
//!
//! Sans-IO, in the style of quinn-proto: no sockets, no files, no clock. A driver feeds
//! what arrives into `handle_*` methods and executes what `poll_*` returns. Storage is passed
//! in as the [`Nodes`] trait (the sender's manifest, the receiver's own manifest) and, for
//! the receiver, as a chunk index lookup. The drivers live in [`crate::push`].
//!
//! The flow (receiver-driven merkle descent):
//! 1. sender → `Hello{version, root, owners}`; receiver → `HelloAck{root}`. Equal roots:
//!    done. The driver refreshes the receiver's manifest in the sender's mode (with or
//!    without owners) before it hands `Hello` on, or refuses when it cannot set owners.
//! 2. The receiver asks for nodes (`GetNodes`) where its own hashes differ, starting at the
//!    root; the sender answers with `Nodes` (node + metadata).
//! 3. For each differing file the receiver reuses every chunk it already has (the partial
//!    file of an interrupted push, or any file of its tree through its chunk index) and asks
//!    for the rest with `Want`, or with `WantDelta` and a [`delta::Signature`] when its old
//!    version of the file has a chunk at the same offset; each id is asked for once,
//!    whatever number of files need it.
//! 4. The sender answers with `Chunk` frames (on data streams, in any order), a wanted
//!    delta as copy/literal ops when those are smaller than the chunk.
//! 5. When no node and no file is outstanding, the receiver removes extraneous entries
//!    (`--delete`), applies directory metadata, rescans, and sends `Done{root}`. The sender
//!    compares that root with its own: equal means the push succeeded.
//!
//! Invariants: every path that reaches an [`Action`] was validated by the codec (no `..`,
//! no absolute path, no NUL); a chunk is written only after its BLAKE3 matched its id (the
//! driver checks, and [`crate::apply`] checks again).

pub mod adapt;
pub mod bulk;
pub mod codec;
pub mod delta;
pub mod encode;
mod receiver;
mod sender;
pub mod stream;

use std::collections::{HashMap, VecDeque};

pub use codec::{
    Codec, DirItem, Frame, FrameError, Listed, MAX_FRAME, Meta, NodeItem, Offered, Totals, VERSION,
};

pub use receiver::{Action, MAX_OPEN_FILES, Receiver, classify, rescan_for};
pub use sender::{Sender, SenderEvent};

use crate::chunk::{ChunkId, Verified};
use crate::manifest::{ChangeKind, FileNode, Hash, Node, Nodes, join};

/// Where a chunk's bytes can be read: a file (relative path), an offset and a length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLoc {
    /// Relative path of the file holding the chunk.
    pub path: Vec<u8>,
    /// Byte offset of the chunk in that file.
    pub offset: u64,
    /// Chunk length.
    pub len: u32,
}

/// Protocol-level failures (the peer misbehaved or is incompatible).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The sender compares owners, which this receiver cannot set.
    #[error(
        "the sender pushes with owners, ACLs and xattrs (it runs as root), but this receiver \
         does not run as root and cannot set them: run the receiver as root, or push with \
         --no-owner"
    )]
    CannotOwn,
    /// The peer speaks another protocol version.
    #[error("peer speaks protocol version {theirs}, this build speaks {VERSION}")]
    Version {
        /// The peer's version.
        theirs: u32,
    },
    /// A frame arrived that is not valid in the current state.
    #[error("unexpected {frame} frame {state}")]
    Unexpected {
        /// Which frame.
        frame: &'static str,
        /// In which state.
        state: &'static str,
    },
    /// The receiver asked for a chunk the sender never offered.
    #[error("peer asked for unknown chunk {0}")]
    UnknownChunk(String),
    /// The peer refused or aborted, with its reason.
    #[error("peer refused: {0}")]
    Refused(String),
    /// The peer asked for a path the sender's manifest does not have.
    #[error("storage error: {0}")]
    Storage(String),
}

/// Builds chunk locations for every chunk of `node` stored at `path`.
pub fn chunk_locs(path: &[u8], node: &FileNode) -> impl Iterator<Item = (ChunkId, ChunkLoc)> {
    let mut offset = 0u64;
    node.chunks.iter().map(move |c| {
        let loc = ChunkLoc {
            path: path.to_vec(),
            offset,
            len: c.len,
        };
        offset += u64::from(c.len);
        (c.id, loc)
    })
}

fn batch_paths(paths: Vec<Vec<u8>>) -> Vec<Frame> {
    codec::batched(paths, |p| p.len() + 4)
        .into_iter()
        .map(|paths| Frame::GetNodes { paths })
        .collect()
}

/// Identifies one file being assembled in this session.
pub type FileKey = u64;

#[cfg(test)]
mod tests;
