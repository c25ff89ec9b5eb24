//! The receiver's own tree as its manifest describes it: where each chunk it already has is
//! (what `CopyLocal` and delta bases read), and how its files are hard-linked. Built once per
//! session from the store snapshot, when first needed.

use std::collections::HashMap;

use super::PushError;
use crate::apply::Target;
use crate::chunk::{ChunkId, Verified};
use crate::manifest::Node;
use crate::manifest::store::Snapshot;
use crate::proto::ChunkLoc;

/// Reads chunk `id` from where the receiver's tree has it; `None` if it cannot be read or
/// is no longer that chunk (the file changed).
pub(super) fn read_checked(target: &Target, from: &ChunkLoc, id: &ChunkId) -> Option<Verified> {
    let bytes = target.read_span(&from.path, from.offset, from.len).ok()?;
    Verified::check(id, bytes).ok()
}

/// What the receiver's manifest says about its own tree, built once per session when
/// first needed.
pub(super) struct Index {
    /// Every chunk of the tree, by id: the basis for reusing data it already has.
    pub(super) chunks: HashMap<ChunkId, ChunkLoc>,
    /// For each first path of a hard-linked inode, how many other paths link to it.
    links: HashMap<Vec<u8>, u64>,
}

impl Index {
    /// How many paths of the tree are the inode at `path`, as far as the manifest knows.
    pub(super) fn links_of(&self, path: &[u8]) -> u64 {
        1 + self.links.get(path).copied().unwrap_or(0)
    }
}

pub(super) fn build_index(snap: &Snapshot) -> Result<Index, PushError> {
    let mut chunks = HashMap::new();
    let mut links: HashMap<Vec<u8>, u64> = HashMap::new();
    snap.for_each(|path, rec| {
        if let Node::File(f) = &rec.node {
            for (id, loc) in crate::proto::chunk_locs(path, f) {
                chunks.entry(id).or_insert(loc);
            }
            if let Some(first) = &f.link {
                *links.entry(first.clone()).or_default() += 1;
            }
        }
        Ok(())
    })?;
    Ok(Index { chunks, links })
}
