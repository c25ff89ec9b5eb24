//! Bytes to frames: the length checked against [`MAX_FRAME`] before a body is read, every
//! count against the bytes that remain, paths validated at the edge, and only canonical
//! encodings accepted.

use super::*;
use crate::wire::{Reader, Short};

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
        tag::PROBE => "probe",
        tag::PROBE_ACK => "probe-ack",
        tag::FILE => "file",
        tag::DIRS => "dirs",
        tag::SYMLINKS => "symlinks",
        tag::BULK_DONE => "bulk-done",
        other => return Err(FrameError::UnknownTag(other)),
    };
    let mut r = R::new(payload, name);
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
            free: Some(r.u64()?).filter(|f| *f != u64::MAX),
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
                items.push(r.item()?);
            }
            Frame::Nodes { items }
        }
        tag::PROBE => Frame::Probe {
            version: r.u32()?,
            owners: r.flag()?,
            streams: r.u32()?,
        },
        tag::PROBE_ACK => Frame::ProbeAck {
            version: r.u32()?,
            bulk: r.flag()?,
        },
        tag::FILE => {
            let item = r.item()?;
            if !matches!(item.node, Offered::File(_)) || item.path.is_empty() {
                return Err(r.bad("not a file below the root".into()));
            }
            Frame::File { item }
        }
        tag::DIRS => {
            let n = r.count(4 + 4 + 8 + 4 + 4 + 4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let path = r.path()?;
                let mode = r.u32()?;
                if mode & !0o7777 != 0 {
                    return Err(r.bad(format!("mode {mode:#o}")));
                }
                items.push(DirItem {
                    path,
                    mode,
                    meta: r.meta()?,
                });
            }
            Frame::Dirs { items }
        }
        tag::SYMLINKS => {
            let n = r.count(4 + 4 + 8 + 4 + 4 + 4)?;
            let mut items = Vec::with_capacity(n);
            for _ in 0..n {
                let item = r.item()?;
                if !matches!(item.node, Offered::Symlink { .. }) || item.path.is_empty() {
                    return Err(r.bad("not a symlink below the root".into()));
                }
                items.push(item);
            }
            Frame::Symlinks { items }
        }
        tag::BULK_DONE => Frame::BulkDone { files: r.u64()? },
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
            r.w.finish();
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
    if !r.w.rest().is_empty() {
        return Err(r.bad(format!("{} trailing bytes", r.w.rest().len())));
    }
    Ok(f)
}

/// The shared [`Reader`], its stops named after the frame being read.
pub(super) struct R<'a> {
    pub(super) w: Reader<'a>,
    pub(super) frame: &'static str,
}

impl<'a> R<'a> {
    pub(super) fn new(b: &'a [u8], frame: &'static str) -> R<'a> {
        R {
            w: Reader::new(b),
            frame,
        }
    }
    pub(super) fn bad(&self, reason: String) -> FrameError {
        FrameError::Malformed {
            frame: self.frame,
            reason,
        }
    }
    fn short(&self, e: Short) -> FrameError {
        self.bad(match e {
            Short::Truncated => "truncated".into(),
            Short::Count(n) => format!("count {n} exceeds the frame"),
        })
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], FrameError> {
        self.w.array().map_err(|e| self.short(e))
    }
    pub(super) fn u8(&mut self) -> Result<u8, FrameError> {
        self.w.u8().map_err(|e| self.short(e))
    }
    pub(super) fn u32(&mut self) -> Result<u32, FrameError> {
        self.w.u32().map_err(|e| self.short(e))
    }
    pub(super) fn u64(&mut self) -> Result<u64, FrameError> {
        self.w.u64().map_err(|e| self.short(e))
    }
    pub(super) fn count(&mut self, min_item: usize) -> Result<usize, FrameError> {
        self.w.count(min_item).map_err(|e| self.short(e))
    }
    pub(super) fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        self.w.bytes().map_err(|e| self.short(e))
    }
    /// A one-byte boolean, 0 or 1 (canonical).
    fn flag(&mut self) -> Result<bool, FrameError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.bad(format!("bad flag {other}"))),
        }
    }
    /// A node item (`put_item`'s encoding).
    fn item(&mut self) -> Result<NodeItem, FrameError> {
        let path = self.path()?;
        let node = Offered::decode(self.bytes()?, &path)?;
        Ok(NodeItem {
            path,
            node,
            meta: self.meta()?,
        })
    }
    fn meta(&mut self) -> Result<Meta, FrameError> {
        let mtime_ns = self.u64()? as i64;
        let uid = self.u32()?;
        let gid = self.u32()?;
        let nx = self.count(8)?;
        let mut xattrs = Vec::with_capacity(nx);
        for _ in 0..nx {
            let k = self.bytes()?.to_vec();
            let v = self.bytes()?.to_vec();
            xattrs.push((k, v));
        }
        Ok(Meta {
            mtime_ns,
            uid,
            gid,
            xattrs,
        })
    }
    /// A relative path: empty (the root) or `/`-separated valid names. Anything that could
    /// escape the root (`..`, absolute, empty components, NUL) is refused here, at the edge.
    pub(super) fn path(&mut self) -> Result<Vec<u8>, FrameError> {
        let p = self.bytes()?;
        if !p.is_empty() {
            check_path(p).map_err(|e| self.bad(format!("unsafe path: {e}")))?;
        }
        Ok(p.to_vec())
    }
}
