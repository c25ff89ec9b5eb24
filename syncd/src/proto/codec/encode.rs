//! Frames to bytes: each frame's canonical encoding behind its length prefix, and the
//! head of a chunk frame, written before its data without copying the data.

use super::*;

pub(super) fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// A node item: its path, the node, its metadata.
fn put_item(out: &mut Vec<u8>, it: &NodeItem) {
    put_bytes(out, &it.path);
    it.node.encode(out);
    put_meta(out, &it.meta);
}

fn put_meta(out: &mut Vec<u8>, meta: &Meta) {
    out.extend_from_slice(&meta.mtime_ns.to_le_bytes());
    out.extend_from_slice(&meta.uid.to_le_bytes());
    out.extend_from_slice(&meta.gid.to_le_bytes());
    out.extend_from_slice(&(meta.xattrs.len() as u32).to_le_bytes());
    for (k, v) in &meta.xattrs {
        put_bytes(out, k);
        put_bytes(out, v);
    }
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
            Frame::HelloAck {
                version,
                root,
                free,
            } => {
                out.push(tag::HELLO_ACK);
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&root.0);
                out.extend_from_slice(&free.unwrap_or(u64::MAX).to_le_bytes());
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
                    put_item(out, it);
                }
            }
            Frame::Probe {
                version,
                owners,
                streams,
            } => {
                out.push(tag::PROBE);
                out.extend_from_slice(&version.to_le_bytes());
                out.push(u8::from(*owners));
                out.extend_from_slice(&streams.to_le_bytes());
            }
            Frame::ProbeAck { version, bulk } => {
                out.push(tag::PROBE_ACK);
                out.extend_from_slice(&version.to_le_bytes());
                out.push(u8::from(*bulk));
            }
            Frame::File { item } => {
                out.push(tag::FILE);
                put_item(out, item);
            }
            Frame::Dirs { items } => {
                out.push(tag::DIRS);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for d in items {
                    put_bytes(out, &d.path);
                    out.extend_from_slice(&d.mode.to_le_bytes());
                    put_meta(out, &d.meta);
                }
            }
            Frame::Symlinks { items } => {
                out.push(tag::SYMLINKS);
                out.extend_from_slice(&(items.len() as u32).to_le_bytes());
                for it in items {
                    put_item(out, it);
                }
            }
            Frame::BulkDone { files } => {
                out.push(tag::BULK_DONE);
                out.extend_from_slice(&files.to_le_bytes());
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
            Frame::Probe { .. } => "probe",
            Frame::ProbeAck { .. } => "probe-ack",
            Frame::File { .. } => "file",
            Frame::Dirs { .. } => "dirs",
            Frame::Symlinks { .. } => "symlinks",
            Frame::BulkDone { .. } => "bulk-done",
        }
    }
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
        let mut r = R::new(head, "chunk");
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
