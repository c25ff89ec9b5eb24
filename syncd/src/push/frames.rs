//! Frame IO on tokio byte streams: reading a control frame (length checked against the
//! frame limit before the body is read), a chunk frame straight into its own buffer, the
//! control reader task (cancellation-safe, unpacks `Packed` frames), and the control
//! writer that packs name-carrying frames. It decides nothing about the conversation.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::PushError;
use crate::proto::codec::{self, ChunkHead, Frame, FrameError};
use crate::proto::stream::{self, StreamDecoder, StreamEncoder};

/// Reads a frame's length prefix and checks it against the frame limit; `None` at the end
/// of the stream.
pub(super) async fn read_frame_len<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Option<usize>, PushError> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(source) => {
            return Err(PushError::Io {
                peer: peer.to_string(),
                source,
            });
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    codec::check_len(len).map_err(|source| PushError::Frame {
        peer: peer.to_string(),
        source,
    })?;
    Ok(Some(len))
}

pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Option<Frame>, PushError> {
    let io = |source| PushError::Io {
        peer: peer.to_string(),
        source,
    };
    let Some(len) = read_frame_len(r, peer).await? else {
        return Ok(None);
    };
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await.map_err(io)?;
    codec::decode_body(&body)
        .map(Some)
        .map_err(|source| PushError::Frame {
            peer: peer.to_string(),
            source,
        })
}

/// A frame on a data stream: a chunk (its data in a buffer of its own), or another frame
/// (on a bulk stream: a file, perhaps packed).
pub(super) enum DataFrame {
    Chunk(ChunkHead, Vec<u8>),
    Other(Frame),
}

/// Reads one frame from a data stream, a chunk's data straight into a buffer of its own;
/// `None` at the end of the stream.
pub(super) async fn read_data_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Option<DataFrame>, PushError> {
    let io = |source| PushError::Io {
        peer: peer.to_string(),
        source,
    };
    let frame = |source| PushError::Frame {
        peer: peer.to_string(),
        source,
    };
    let Some(len) = read_frame_len(r, peer).await? else {
        return Ok(None);
    };
    let mut head = [0u8; codec::CHUNK_HEAD];
    r.read_exact(&mut head[..1]).await.map_err(io)?;
    if head[0] != codec::CHUNK_TAG {
        let mut body = vec![0u8; len];
        body[0] = head[0];
        r.read_exact(&mut body[1..]).await.map_err(io)?;
        return codec::decode_body(&body)
            .map(|f| Some(DataFrame::Other(f)))
            .map_err(frame);
    }
    if len < head.len() {
        return Err(frame(FrameError::Malformed {
            frame: "chunk",
            reason: format!("frame of {len} bytes on a data stream"),
        }));
    }
    r.read_exact(&mut head[1..]).await.map_err(io)?;
    let head = ChunkHead::decode(len, &head).map_err(frame)?;
    let mut data = vec![0u8; head.data_len];
    r.read_exact(&mut data).await.map_err(io)?;
    Ok(Some(DataFrame::Chunk(head, data)))
}

/// Reads one chunk frame from a session's data stream (nothing else belongs there);
/// `None` at the end of the stream.
pub(super) async fn read_chunk_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    peer: &str,
) -> Result<Option<(ChunkHead, Vec<u8>)>, PushError> {
    match read_data_frame(r, peer).await? {
        None => Ok(None),
        Some(DataFrame::Chunk(h, data)) => Ok(Some((h, data))),
        Some(DataFrame::Other(f)) => Err(PushError::Frame {
            peer: peer.to_string(),
            source: FrameError::Malformed {
                frame: "chunk",
                reason: format!("{} frame on a data stream", f.name()),
            },
        }),
    }
}

/// Reads control frames on a task of their own and hands them over a channel.
///
/// `read_frame` is not cancellation-safe (a `read_exact` interrupted mid-frame loses the
/// bytes it had read), so it must never be a `tokio::select!` branch that another branch can
/// win; receiving from this channel is. The task ends at end of stream or on an error,
/// which it delivers as the last item.
///
/// Packed frames are unpacked here, with this direction's zstd stream; `packed` is set once
/// the peer has sent one (the receiver then packs its own large frames too).
pub(super) fn spawn_control_reader<R>(
    mut r: R,
    peer: &str,
    packed: Arc<AtomicBool>,
) -> mpsc::Receiver<Result<Option<Frame>, PushError>>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let peer = peer.to_string();
    tokio::spawn(async move {
        let mut zstd = StreamDecoder::new();
        loop {
            let item = match read_frame(&mut r, &peer).await {
                Ok(Some(Frame::Packed { raw_len, data })) => {
                    packed.store(true, Ordering::Relaxed);
                    unpacked(&mut zstd, raw_len, &data, &peer).map(Some)
                }
                other => other,
            };
            let last = !matches!(item, Ok(Some(_)));
            if tx.send(item).await.is_err() || last {
                break;
            }
        }
    });
    rx
}

/// The frame inside a `Packed` one from `peer`, decompressed with its stream's `zstd`.
pub(super) fn unpacked(
    zstd: &mut StreamDecoder,
    raw_len: u32,
    data: &[u8],
    peer: &str,
) -> Result<Frame, PushError> {
    stream::unpack(zstd, raw_len, data).map_err(|e| PushError::Frame {
        peer: peer.to_string(),
        source: FrameError::Malformed {
            frame: "packed",
            reason: e.to_string(),
        },
    })
}

/// zstd level of packed control frames: cheap, and control frames are mostly names.
pub(super) const CONTROL_LEVEL: i32 = 1;

/// The writing half of a control stream. Once `pack` is set, frames that carry names
/// (nodes, paths, reports) are packed, one zstd stream per direction; the rest go plain,
/// `Refuse` always (its reason must reach a peer that cannot decode).
pub(super) struct ControlTx<W> {
    pub(super) w: W,
    /// Set from the start (the sender, unless compression is off) or once the peer packs
    /// (the receiver).
    pub(super) pack: Arc<AtomicBool>,
    pub(super) zstd: Option<StreamEncoder>,
}

impl<W: AsyncWrite + Unpin> ControlTx<W> {
    pub(super) fn new(w: W, pack: Arc<AtomicBool>) -> ControlTx<W> {
        ControlTx {
            w,
            pack,
            zstd: None,
        }
    }

    /// Writes `f`; returns the bytes written.
    pub(super) async fn send(&mut self, f: &Frame, peer: &str) -> Result<u64, PushError> {
        if self.zstd.is_none() && self.pack.load(Ordering::Relaxed) {
            self.zstd = Some(StreamEncoder::new());
        }
        let packable = matches!(
            f,
            Frame::Nodes { .. } | Frame::GetNodes { .. } | Frame::Report { .. }
        );
        match &mut self.zstd {
            Some(z) if packable => {
                let packed = stream::pack(z, f, CONTROL_LEVEL).map_err(|source| PushError::Io {
                    peer: peer.to_string(),
                    source,
                })?;
                write_frame(&mut self.w, &packed, peer).await
            }
            _ => write_frame(&mut self.w, f, peer).await,
        }
    }
}

pub(super) async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    f: &Frame,
    peer: &str,
) -> Result<u64, PushError> {
    let bytes = f.to_bytes();
    w.write_all(&bytes).await.map_err(|source| PushError::Io {
        peer: peer.to_string(),
        source,
    })?;
    Ok(bytes.len() as u64)
}

/// Tells the sender why the receiver gives up, if the connection still carries it.
pub(super) async fn refuse<CW: AsyncWrite + Unpin>(control_w: &mut CW, e: &PushError, peer: &str) {
    let _ = write_frame(
        control_w,
        &Frame::Refuse {
            reason: e.to_string(),
        },
        peer,
    )
    .await;
}
