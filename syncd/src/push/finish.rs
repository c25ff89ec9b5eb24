//! The receiver's finisher pool: complete part files are given their metadata, made durable
//! together and renamed into place on the blocking pool, in batches, and recorded for the
//! stat cache.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::PushError;
use crate::apply;
use crate::fsmeta;
use crate::manifest::Node;
use crate::proto::FileKey;

/// Batches of files finished concurrently by the receiver, and files per batch.
pub(super) const FINISHERS: usize = 16;
pub(super) const FINISH_BATCH: usize = 32;

/// A finished file: its key and (path, stat-cache record), or why it failed.
pub(super) type Finished = (FileKey, Result<(Vec<u8>, Vec<u8>), PushError>);

/// A complete part file waiting to be finished.
pub(super) struct FinishJob {
    pub(super) key: FileKey,
    pub(super) part: apply::PartFile,
    pub(super) node: crate::manifest::FileNode,
    pub(super) meta: apply::Meta,
    /// The session's mode ([`ScanOptions::owners`]).
    pub(super) owners: bool,
}

/// Finishes files (fsync, metadata, rename) on the blocking pool, in batches: an fsync waits
/// on the disk, so one file at a time made a 44k-file push to disk take a minute, while a
/// thread hand-off per file cost more than the work on tmpfs. Up to [`FINISHERS`] batches
/// of [`FINISH_BATCH`] run at once. A batch goes out when it is full, or when no batch is
/// running (so nothing waits on a batch that does not fill): before, a batch went out on
/// every turn of the session loop, which on a fast source meant one file per batch, a
/// thread wake-up per file. A batch's outcomes come back on `tx` together, after its
/// permit is released, so that the loop that receives them can dispatch the next one.
pub(super) async fn dispatch_finishes(
    pending: &mut Vec<FinishJob>,
    tx: &mpsc::UnboundedSender<Vec<Finished>>,
    finishers: &Arc<tokio::sync::Semaphore>,
) {
    while pending.len() >= FINISH_BATCH
        || (!pending.is_empty() && finishers.available_permits() == FINISHERS)
    {
        let take = pending.len().min(FINISH_BATCH);
        let batch: Vec<FinishJob> = pending.drain(..take).collect();
        let permit = finishers.clone().acquire_owned().await;
        let tx = tx.clone();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::with_capacity(batch.len());
            // Durable by batch: every file sealed (content and attributes final), then one
            // flush for all of them, then the renames. No file reaches its final path before
            // its data is on disk, so a crash never leaves a torn file there.
            let mut files = Vec::with_capacity(batch.len());
            let mut rest = Vec::with_capacity(batch.len());
            for job in batch {
                let dest = job.part.dest().to_path_buf();
                match job.part.seal(&job.meta) {
                    Ok(s) => {
                        files.push(s);
                        rest.push((dest, job.key, job.node, job.meta, job.owners));
                    }
                    Err(e) => out.push((job.key, Err(PushError::from(e)))),
                }
            }
            let flushed = apply::flush_together(&files);
            for ((file, flush), (dest, key, node, meta, owners)) in
                files.into_iter().zip(flushed).zip(rest)
            {
                let path = file.rel().to_vec();
                let done = flush.and_then(|()| file.place()).and_then(|m| {
                    // Every chunk was verified as it was written: record the file for the
                    // final rescan's stat cache, so that the rescan need not read it again.
                    // Its attributes are what this side now has, not what the sender said.
                    let mut f = node;
                    f.attrs = apply::attrs_after(&dest, &path, &m, &meta, owners)?;
                    let node = Node::File(f);
                    let rec = crate::manifest::store::Record {
                        hash: node.hash(),
                        stat: fsmeta::stat_of(&m),
                        node,
                    };
                    Ok((path, rec.encode()))
                });
                out.push((key, done.map_err(PushError::from)));
            }
            drop(permit);
            let _ = tx.send(out);
        });
    }
}
