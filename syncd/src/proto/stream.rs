//! Compression of a data stream's chunks as one continuous zstd stream.
//!
//! Each data stream is ordered, so the sender keeps one zstd compression context per stream
//! and the receiver one decompression context per stream. A compressed chunk
//! ([`super::Codec::Zstd`]) is the next part of that stream, flushed at the end of the
//! chunk, so the receiver can decode it as soon as it arrives. Later chunks can refer back
//! to earlier ones (up to [`WINDOW_LOG`]), which is what makes small files compress: one
//! zstd frame per 6 KiB file compressed `/usr/share/doc` 1.45×, a stream across them much
//! better. Raw chunks ([`super::Codec::Raw`]) pass beside the stream and do not touch it.
//!
//! Incompressible input costs nothing on the wire: zstd stores a block it cannot shrink
//! raw, with a 3-byte header.
//!
//! The control stream is compressed the same way, one stream per direction: a large
//! control frame travels as a [`Frame::Packed`] ([`pack`] / [`unpack`]); small ones, and
//! `Refuse`, travel plain.
//!
//! Pure computation (no IO, no clock), so the decoder is fuzzed (`fuzz/chunk_stream`,
//! and `fuzz/frame` unpacks every packed frame it decodes).
//! Decoding is bounded: the window is capped at [`WINDOW_LOG`] (a stream that asks for more
//! is refused), and a chunk never decodes to more than its announced length, itself
//! capped by the codec at [`super::MAX_FRAME`].

use std::io;

use zstd::stream::raw::{CParameter, DParameter, Decoder, Encoder, InBuffer, Operation, OutBuffer};

use super::codec::{self, Frame, FrameError};

/// Largest zstd window either side uses or accepts: 8 MiB of history per data stream.
pub const WINDOW_LOG: u32 = 23;

/// Why a compressed chunk did not decode.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The bytes are not a valid continuation of the stream.
    #[error("corrupt compressed stream: {0}")]
    Corrupt(io::Error),
    /// The chunk decoded to a different length than announced.
    #[error("compressed chunk decodes to more or fewer than the {announced} bytes announced")]
    Length {
        /// What the frame said.
        announced: usize,
    },
}

/// The sending side of one data stream.
pub struct StreamEncoder {
    enc: Option<Encoder<'static>>,
    level: i32,
}

impl std::fmt::Debug for StreamEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StreamEncoder(level {})", self.level)
    }
}

impl Default for StreamEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamEncoder {
    /// A stream that has not compressed anything yet.
    pub fn new() -> StreamEncoder {
        StreamEncoder {
            enc: None,
            level: 0,
        }
    }

    /// Compresses `raw` at `level` (≥ 1) as the next chunk of this stream. The output must
    /// be sent, in order, on this stream: the receiver's context depends on it.
    pub fn compress(&mut self, raw: &[u8], level: i32) -> io::Result<Vec<u8>> {
        if raw.is_empty() {
            // Nothing to add to the stream (and zstd counts calls without progress).
            return Ok(Vec::new());
        }
        let enc = match &mut self.enc {
            Some(e) => {
                if level != self.level {
                    // zstd allows the level to change between blocks of one frame.
                    e.set_parameter(CParameter::CompressionLevel(level))?;
                }
                e
            }
            None => {
                let mut e = Encoder::new(level)?;
                e.set_parameter(CParameter::WindowLog(WINDOW_LOG))?;
                e.set_parameter(CParameter::ChecksumFlag(false))?;
                self.enc.insert(e)
            }
        };
        self.level = level;
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(raw.len()) + 64);
        let mut input = InBuffer::around(raw);
        while input.pos() < raw.len() {
            reserve_some(&mut out);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(&mut out, pos);
            enc.run(&mut input, &mut o)?;
        }
        loop {
            reserve_some(&mut out);
            let pos = out.len();
            let mut o = OutBuffer::around_pos(&mut out, pos);
            if enc.flush(&mut o)? == 0 {
                break;
            }
        }
        Ok(out)
    }
}

/// Makes room for at least 64 KiB more output.
fn reserve_some(out: &mut Vec<u8>) {
    if out.capacity() - out.len() < 1 << 16 {
        out.reserve(1 << 16);
    }
}

/// The receiving side of one data stream.
pub struct StreamDecoder {
    dec: Option<Decoder<'static>>,
}

impl std::fmt::Debug for StreamDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamDecoder")
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamDecoder {
    /// A stream that has not decoded anything yet.
    pub fn new() -> StreamDecoder {
        StreamDecoder { dec: None }
    }

    /// Decodes the next compressed chunk of this stream, which must be exactly `raw_len`
    /// bytes. After an error the stream is unusable (the session ends).
    pub fn decompress(&mut self, data: &[u8], raw_len: usize) -> Result<Vec<u8>, StreamError> {
        if data.is_empty() {
            // What the encoder makes of an empty chunk; zstd is not called (it fails after
            // a few calls that make no progress).
            return match raw_len {
                0 => Ok(Vec::new()),
                announced => Err(StreamError::Length { announced }),
            };
        }
        let dec = match &mut self.dec {
            Some(d) => d,
            None => {
                let mut d = Decoder::new().map_err(StreamError::Corrupt)?;
                d.set_parameter(DParameter::WindowLogMax(WINDOW_LOG))
                    .map_err(StreamError::Corrupt)?;
                self.dec.insert(d)
            }
        };
        let mut out = Vec::with_capacity(raw_len);
        let mut input = InBuffer::around(data);
        loop {
            let before = (input.pos(), out.len());
            let pos = out.len();
            dec.run(&mut input, &mut OutBuffer::around_pos(&mut out, pos))
                .map_err(StreamError::Corrupt)?;
            if input.pos() == data.len() {
                break;
            }
            // Output full with input left, or no progress: more than announced.
            if out.len() == raw_len || (input.pos(), out.len()) == before {
                return Err(StreamError::Length { announced: raw_len });
            }
        }
        // All input is consumed; output the decoder still holds means more than announced.
        let mut probe = [0u8; 1];
        let mut probe = OutBuffer::around(&mut probe[..]);
        dec.run(&mut InBuffer::around(&[]), &mut probe)
            .map_err(StreamError::Corrupt)?;
        if out.len() != raw_len || probe.pos() > 0 {
            return Err(StreamError::Length { announced: raw_len });
        }
        Ok(out)
    }
}

/// Why a packed control frame did not unpack.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// The compressed bytes did not decode.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// What they decoded to is not exactly one frame (or is another packed frame).
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// Compresses `frame` as the next part of the control stream that `enc` compresses.
pub fn pack(enc: &mut StreamEncoder, frame: &Frame, level: i32) -> io::Result<Frame> {
    let raw = frame.to_bytes();
    Ok(Frame::Packed {
        raw_len: raw.len() as u32,
        data: enc.compress(&raw, level)?,
    })
}

/// Decompresses the frame inside a [`Frame::Packed`] with the control stream's `dec`. The
/// bytes must hold exactly one frame, and not another packed one.
pub fn unpack(dec: &mut StreamDecoder, raw_len: u32, data: &[u8]) -> Result<Frame, PackError> {
    let raw = dec.decompress(data, raw_len as usize)?;
    let malformed = |reason: &str| FrameError::Malformed {
        frame: "packed",
        reason: reason.to_string(),
    };
    match codec::decode(&raw)? {
        Some((Frame::Packed { .. }, _)) => Err(malformed("nested packed frame").into()),
        Some((frame, used)) if used == raw.len() => Ok(frame),
        Some(_) => Err(malformed("trailing bytes after the frame").into()),
        None => Err(malformed("truncated frame").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::noise;
    use proptest::prelude::*;

    fn text(n: usize, seed: u64) -> Vec<u8> {
        let words = [
            &b"copyright "[..],
            b"license ",
            b"GNU ",
            b"debian ",
            b"the ",
            b"\n",
        ];
        let mut out = Vec::new();
        let mut x = seed;
        while out.len() < n {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            out.extend_from_slice(words[(x >> 33) as usize % words.len()]);
        }
        out.truncate(n);
        out
    }

    #[test]
    fn history_across_chunks_makes_repeated_small_chunks_cheap() {
        let chunk = text(6000, 1);
        let mut enc = StreamEncoder::new();
        let first = enc.compress(&chunk, 3).unwrap();
        let again = enc.compress(&chunk, 3).unwrap();
        assert!(
            again.len() * 5 < first.len(),
            "{} vs {}",
            again.len(),
            first.len()
        );
        let mut dec = StreamDecoder::new();
        assert_eq!(dec.decompress(&first, chunk.len()).unwrap(), chunk);
        assert_eq!(dec.decompress(&again, chunk.len()).unwrap(), chunk);
    }

    #[test]
    fn empty_chunks_do_not_wear_out_the_stream() {
        let (mut enc, mut dec) = (StreamEncoder::new(), StreamDecoder::new());
        let raw = text(3000, 5);
        for _ in 0..3 {
            for _ in 0..40 {
                let z = enc.compress(&[], 2).unwrap();
                assert!(dec.decompress(&z, 0).unwrap().is_empty());
            }
            let z = enc.compress(&raw, 2).unwrap();
            assert_eq!(dec.decompress(&z, raw.len()).unwrap(), raw);
        }
    }

    #[test]
    fn incompressible_chunk_costs_a_few_bytes() {
        let raw = noise(200_000, 9);
        let z = StreamEncoder::new().compress(&raw, 1).unwrap();
        assert!(z.len() < raw.len() + 64, "{} vs {}", z.len(), raw.len());
    }

    #[test]
    fn wrong_length_and_garbage_are_errors() {
        let raw = text(10_000, 2);
        let z = StreamEncoder::new().compress(&raw, 1).unwrap();
        assert!(matches!(
            StreamDecoder::new().decompress(&z, raw.len() - 1),
            Err(StreamError::Length { .. })
        ));
        assert!(matches!(
            StreamDecoder::new().decompress(&z, raw.len() + 1),
            Err(StreamError::Length { .. })
        ));
        assert!(
            StreamDecoder::new()
                .decompress(b"not zstd at all", 15)
                .is_err()
        );
        // A chunk out of order (the second without the first) does not decode to it.
        let mut enc = StreamEncoder::new();
        let _ = enc.compress(&raw, 3).unwrap();
        let second = enc.compress(&raw, 3).unwrap();
        let got = StreamDecoder::new().decompress(&second, raw.len());
        assert!(got.map_or(true, |g| g != raw));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any sequence of chunks at any levels decodes back in order.
        #[test]
        fn round_trip(chunks in prop::collection::vec((0usize..70_000, 0u64..4, 1i32..7), 1..12)) {
            let mut enc = StreamEncoder::new();
            let mut dec = StreamDecoder::new();
            for (i, (len, kind, level)) in chunks.into_iter().enumerate() {
                let raw = match kind {
                    0 => noise(len, i as u64),
                    1 => vec![0; len],
                    _ => text(len, kind * 7 + i as u64),
                };
                let z = enc.compress(&raw, level).unwrap();
                prop_assert_eq!(dec.decompress(&z, raw.len()).unwrap(), raw);
            }
        }
    }
}
