//! Content-defined chunking (FastCDC v2020) and BLAKE3 chunk ids.
//!
//! This module is sans-IO: it takes byte slices and returns cut points and chunk ids. It
//! never opens a file, and it never reads a clock. The [`crate::scan`] module feeds it file
//! contents, either whole ([`chunk`]) or in windows ([`chunk_window`]) for large files.
//!
//! Large inputs are cut in parallel: the input is split into fixed segments, each segment is
//! cut independently from its own start, and the segments are re-aligned while stitching.
//! A FastCDC cut depends only on the bytes from the previous cut onwards, so once the
//! sequential cut sequence lands on a cut that a segment also found, every later cut of that
//! segment is the sequential one. The result is therefore *identical* to sequential chunking
//! ([`cut_points_sequential`] is the reference; a property test checks this).
//!
//! A zero-length input has no chunks. An input no longer than the minimum size is one chunk.

use std::fmt;

use fastcdc::v2020::FastCDC;
use rayon::prelude::*;

/// Inputs at least this long are cut in parallel segments of this size.
const SEGMENT: usize = 2 << 20;

/// Errors from chunking parameters.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkError {
    /// The sizes are outside FastCDC's limits or not ordered min ≤ avg ≤ max.
    #[error("invalid chunk sizes min={min} avg={avg} max={max}: {reason}")]
    InvalidParams {
        /// Requested minimum.
        min: u32,
        /// Requested average.
        avg: u32,
        /// Requested maximum.
        max: u32,
        /// Why they were refused.
        reason: &'static str,
    },
}

/// Chunk size parameters (bytes). Default: 16 KiB min, 64 KiB average, 256 KiB max.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkParams {
    min: u32,
    avg: u32,
    max: u32,
}

impl Default for ChunkParams {
    fn default() -> Self {
        ChunkParams {
            min: 16 << 10,
            avg: 64 << 10,
            max: 256 << 10,
        }
    }
}

impl ChunkParams {
    /// Validates and builds parameters. FastCDC v2020 accepts min 64 B..1 MiB,
    /// avg 256 B..4 MiB, max 1 KiB..16 MiB, and we also require min ≤ avg ≤ max.
    pub fn new(min: u32, avg: u32, max: u32) -> Result<Self, ChunkError> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let bad = |reason| ChunkError::InvalidParams {
            min,
            avg,
            max,
            reason,
        };
        if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min) {
            return Err(bad("min must be within 64 B..1 MiB"));
        }
        if !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg) {
            return Err(bad("avg must be within 256 B..4 MiB"));
        }
        if !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max) {
            return Err(bad("max must be within 1 KiB..16 MiB"));
        }
        if !(min <= avg && avg <= max) {
            return Err(bad("sizes must satisfy min <= avg <= max"));
        }
        Ok(ChunkParams { min, avg, max })
    }

    /// Minimum chunk size in bytes.
    pub fn min(&self) -> u32 {
        self.min
    }
    /// Average (target) chunk size in bytes.
    pub fn avg(&self) -> u32 {
        self.avg
    }
    /// Maximum chunk size in bytes.
    pub fn max(&self) -> u32 {
        self.max
    }

    fn cdc<'a>(&self, data: &'a [u8]) -> FastCDC<'a> {
        FastCDC::new(data, self.min, self.avg, self.max)
    }
}

/// The BLAKE3 hash of a chunk's bytes: its identity everywhere (dedup, wire, store).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// Hashes `data`.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

/// Chunk bytes whose BLAKE3 id has been computed: the only form in which a chunk reaches a
/// part file, so that the receiver hashes each chunk once (when it arrives or is copied) and
/// the writer needs only compare ids.
#[derive(Clone, PartialEq, Eq)]
pub struct Verified {
    id: ChunkId,
    bytes: Vec<u8>,
}

impl Verified {
    /// Hashes `bytes`.
    pub fn of(bytes: Vec<u8>) -> Verified {
        Verified {
            id: ChunkId::of(&bytes),
            bytes,
        }
    }

    /// Hashes `bytes` and keeps them only if they are the chunk `expected`; otherwise gives
    /// them back.
    pub fn check(expected: &ChunkId, bytes: Vec<u8>) -> Result<Verified, Vec<u8>> {
        let v = Verified::of(bytes);
        if v.id == *expected {
            Ok(v)
        } else {
            Err(v.bytes)
        }
    }

    /// The id the bytes hash to.
    pub fn id(&self) -> &ChunkId {
        &self.id
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// A whole file's bytes with the chunks they were cut into and hashed as: made only by
/// [`Chunked::of`], which runs the chunker over them, so a writer holding one writes nothing
/// unhashed ([`Verified`]'s rule, for a file at once). The scan hands these to the first
/// local copy, which then need not read or hash the file again.
pub struct Chunked {
    bytes: Vec<u8>,
    chunks: Vec<Chunk>,
}

impl Chunked {
    /// Chunks and hashes `bytes`.
    pub fn of(bytes: Vec<u8>, params: ChunkParams) -> Chunked {
        let chunks = chunk(&bytes, params);
        Chunked { bytes, chunks }
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Their chunks, in order.
    pub fn chunks(&self) -> &[Chunk] {
        &self.chunks
    }

    /// The bytes and their chunks.
    pub fn into_parts(self) -> (Vec<u8>, Vec<Chunk>) {
        (self.bytes, self.chunks)
    }
}

impl fmt::Debug for Chunked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Chunked({} bytes, {} chunks)",
            self.bytes.len(),
            self.chunks.len()
        )
    }
}

impl fmt::Debug for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Verified({:?}, {} bytes)", self.id, self.bytes.len())
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.to_string();
        write!(f, "ChunkId({})", &s[..12])
    }
}

/// One chunk of an input: where it is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    /// Offset of the first byte within the input.
    pub offset: u64,
    /// Length in bytes (never zero; at most the maximum chunk size).
    pub len: u32,
    /// BLAKE3 of the bytes.
    pub id: ChunkId,
}

/// Reference implementation: the end offsets of every chunk, found sequentially with the
/// `fastcdc` iterator. Used by tests and fuzzing as the oracle for [`cut_points`].
pub fn cut_points_sequential(data: &[u8], params: ChunkParams) -> Vec<usize> {
    params
        .cdc(data)
        .map(|c| c.offset + c.length)
        .collect::<Vec<_>>()
}

/// The end offsets of every chunk of `data`, identical to [`cut_points_sequential`], computed
/// in parallel segments for large inputs.
pub fn cut_points(data: &[u8], params: ChunkParams) -> Vec<usize> {
    cut_points_segmented(data, params, SEGMENT)
}

/// [`cut_points`] with another segment size, so that fuzzing reaches many segments with
/// small inputs. Not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn cut_points_with_segment(data: &[u8], params: ChunkParams, segment: usize) -> Vec<usize> {
    cut_points_segmented(data, params, segment.max(1))
}

fn cut_points_segmented(data: &[u8], params: ChunkParams, segment: usize) -> Vec<usize> {
    if data.len() < 2 * segment {
        return cut_points_sequential(data, params);
    }
    let cdc = params.cdc(data);
    let len = data.len();
    let next_cut = |pos: usize| cdc.cut(pos, len - pos).1;
    let starts: Vec<usize> = (0..len).step_by(segment).collect();
    // Each segment cuts from its own start until it passes the next segment's start.
    let lists: Vec<Vec<usize>> = starts
        .par_iter()
        .map(|&start| {
            let stop = start + segment;
            let mut cuts = Vec::with_capacity(segment / params.avg as usize + 4);
            let mut pos = start;
            while pos < len {
                pos = next_cut(pos);
                cuts.push(pos);
                if pos >= stop {
                    break;
                }
            }
            cuts
        })
        .collect();
    stitch(&starts, &lists, len, next_cut)
}

/// Re-aligns per-segment cut lists into the sequential sequence. `next_cut(pos)` computes
/// the sequential cut after a true cut `pos`; it is called only until a segment agrees.
fn stitch(
    starts: &[usize],
    lists: &[Vec<usize>],
    len: usize,
    next_cut: impl Fn(usize) -> usize,
) -> Vec<usize> {
    let mut out = Vec::with_capacity(lists.iter().map(Vec::len).sum());
    let mut pos = 0;
    for (&start, list) in starts.iter().zip(lists) {
        let Some(&last) = list.last() else { continue };
        loop {
            if pos >= last {
                break; // this segment never agreed with the sequential cuts; go on
            }
            let agreed = if pos == start {
                Some(0)
            } else {
                list.binary_search(&pos).ok().map(|i| i + 1)
            };
            if let Some(from) = agreed {
                out.extend_from_slice(&list[from..]);
                pos = last;
                break;
            }
            pos = next_cut(pos);
            out.push(pos);
        }
    }
    while pos < len {
        pos = next_cut(pos);
        out.push(pos);
    }
    out
}

/// Chunks and hashes a whole input. Chunks are hashed in parallel.
pub fn chunk(data: &[u8], params: ChunkParams) -> Vec<Chunk> {
    hash_cuts(data, 0, 0, &cut_points(data, params))
}

fn hash_cuts(data: &[u8], base: u64, first: usize, cuts: &[usize]) -> Vec<Chunk> {
    let mut spans = Vec::with_capacity(cuts.len());
    let mut prev = first;
    for &c in cuts {
        spans.push((prev, c));
        prev = c;
    }
    let hash = |&(s, e): &(usize, usize)| Chunk {
        offset: base + s as u64,
        // A chunk is at most `max` ≤ 16 MiB long, so this never truncates.
        len: (e - s) as u32,
        id: ChunkId::of(&data[s..e]),
    };
    if spans.len() > 1 {
        spans.par_iter().map(hash).collect()
    } else {
        spans.iter().map(hash).collect()
    }
}

/// Chunks one window of a larger stream.
///
/// `window` holds stream bytes starting at stream offset `base` (which must be a cut, e.g. 0).
/// With `eof == false`, only chunks whose cut cannot depend on bytes beyond the window are
/// returned, and the caller must present the stream again from `base + consumed`. With
/// `eof == true` the window is the end of the stream and everything is consumed.
/// Concatenating the chunks of successive windows equals [`chunk`] of the whole stream.
pub fn chunk_window(
    window: &[u8],
    base: u64,
    eof: bool,
    params: ChunkParams,
) -> (Vec<Chunk>, usize) {
    if eof {
        let cuts = cut_points(window, params);
        return (hash_cuts(window, base, 0, &cuts), window.len());
    }
    // A cut from `pos` looks at most `max` bytes ahead, so it is final if pos + max <= len.
    let safe = window.len().saturating_sub(params.max as usize);
    if safe == 0 {
        return (Vec::new(), 0);
    }
    // Cut the window as if it ended at `safe + max`, i.e. its own end, and keep the cuts
    // that start before `safe`.
    let cuts = cut_points(window, params);
    let mut keep = Vec::with_capacity(cuts.len());
    let mut start = 0;
    for c in cuts {
        if start >= safe {
            break;
        }
        keep.push(c);
        start = c;
    }
    let consumed = keep.last().copied().unwrap_or(0);
    (hash_cuts(window, base, 0, &keep), consumed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    fn small() -> ChunkParams {
        ChunkParams::new(64, 256, 1024).unwrap()
    }

    /// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
    pub(crate) fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn check_reassembly(data: &[u8], chunks: &[Chunk], p: ChunkParams) {
        let mut pos = 0u64;
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!(c.offset, pos, "chunk {i} starts at {} not {pos}", c.offset);
            assert!(
                c.len > 0 && c.len <= p.max(),
                "chunk {i} has length {}",
                c.len
            );
            let bytes = &data[c.offset as usize..(c.offset + c.len as u64) as usize];
            assert_eq!(c.id, ChunkId::of(bytes), "chunk {i} id");
            pos += c.len as u64;
        }
        assert_eq!(pos, data.len() as u64, "chunks do not cover the input");
    }

    #[test]
    fn boundary_sizes_match_sequential_and_reassemble() {
        let p = ChunkParams::default();
        let (min, avg, max) = (p.min() as usize, p.avg() as usize, p.max() as usize);
        let sizes = [
            0,
            1,
            min - 1,
            min,
            min + 1,
            avg,
            max,
            max + 1,
            SEGMENT - 1,
            SEGMENT,
            2 * SEGMENT - 1,
            2 * SEGMENT,
            2 * SEGMENT + 1,
            5 * SEGMENT + 12345,
        ];
        let data = noise(5 * SEGMENT + 12345, 7);
        for size in sizes {
            let d = &data[..size];
            let cuts = cut_points(d, p);
            assert_eq!(cuts, cut_points_sequential(d, p), "size {size}");
            let chunks = chunk(d, p);
            check_reassembly(d, &chunks, p);
            if size == 0 {
                assert!(chunks.is_empty());
            } else if size <= min {
                assert_eq!(
                    chunks.len(),
                    1,
                    "size {size} below the minimum is one chunk"
                );
            }
        }
    }

    #[test]
    fn zeros_cut_at_max_in_parallel_too() {
        // Pathological input: every cut is forced at `max`, so segments never agree early.
        let p = ChunkParams::default();
        let data = vec![0u8; 3 * SEGMENT + 777];
        assert_eq!(cut_points(&data, p), cut_points_sequential(&data, p));
    }

    #[test]
    fn windows_concatenate_to_whole() {
        let p = small();
        let data = noise(200_000, 3);
        let whole = chunk(&data, p);
        for window in [1500usize, 4096, 65_536] {
            let mut got = Vec::new();
            let mut base = 0usize;
            while base < data.len() {
                let end = (base + window).min(data.len());
                let eof = end == data.len();
                let (mut chunks, consumed) = chunk_window(&data[base..end], base as u64, eof, p);
                got.append(&mut chunks);
                base += consumed;
                if !eof {
                    assert!(consumed > 0, "window {window} made no progress");
                }
            }
            assert_eq!(got, whole, "window {window}");
        }
    }

    #[test]
    fn params_are_validated() {
        assert!(ChunkParams::new(16, 256, 1024).is_err());
        assert!(ChunkParams::new(4096, 1024, 8192).is_err());
        assert!(ChunkParams::new(64, 256, 1 << 25).is_err());
        assert!(ChunkParams::new(64, 256, 1024).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Parallel = sequential and chunks reassemble, for sizes spanning several segments
        /// and data with repeated regions (where segments agree late).
        #[test]
        fn parallel_equals_sequential(
            len in 0usize..(5 * SEGMENT),
            seed in any::<u64>(),
            zero_run in 0usize..(SEGMENT / 2),
            zero_at in 0usize..(5 * SEGMENT),
        ) {
            let p = ChunkParams::default();
            let mut data = noise(len, seed);
            let at = zero_at.min(len);
            let end = (at + zero_run).min(len);
            data[at..end].fill(0);
            prop_assert_eq!(cut_points(&data, p), cut_points_sequential(&data, p));
            check_reassembly(&data, &chunk(&data, p), p);
        }

        /// Many small segments: most boundaries resynchronise late or never.
        #[test]
        fn tiny_segments_equal_sequential(len in 0usize..20_000, seg in 1usize..3000, seed in any::<u64>()) {
            let p = small();
            let data = noise(len, seed);
            prop_assert_eq!(cut_points_segmented(&data, p, seg), cut_points_sequential(&data, p));
        }

        #[test]
        fn small_params_parallel_equals_sequential(len in 0usize..(3 * SEGMENT), seed in any::<u64>()) {
            let p = small();
            let data = noise(len, seed);
            prop_assert_eq!(cut_points(&data, p), cut_points_sequential(&data, p));
        }
    }
}
