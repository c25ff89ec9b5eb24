//! Sub-chunk deltas, rsync's algorithm applied to one chunk.
//!
//! A chunk that changed by a few bytes is a whole new chunk id, and small files are a single
//! chunk: without this, a 17-byte append to a 1 KiB file or an 8-byte edit inside a 64 KiB
//! chunk resends the whole chunk. When the receiver wants such a chunk and its own old
//! version of the same file has a chunk at the same offset (the *base*), it sends a
//! [`Signature`] of the base: a weak rolling checksum and a short strong hash per block. The
//! sender finds the target's blocks that match ([`delta`]) and sends copy and literal ops;
//! the receiver rebuilds the chunk from its base ([`apply`]) and verifies it against the
//! chunk id like any other chunk, so a wrong delta can never be written.
//!
//! Sans-IO: bytes in, bytes out. [`apply`] never produces more than the announced length and
//! refuses ops that reach outside the base.

use std::collections::HashMap;

/// The smallest block a signature uses (and a decoder accepts).
pub const MIN_BLOCK: usize = 64;
/// The largest block a signature uses.
const MAX_BLOCK: usize = 4096;

/// Largest block size a decoder accepts.
pub const MAX_BLOCK_ACCEPTED: u32 = 1 << 20;

/// Bytes per block in a signature on the wire: weak checksum and strong hash.
pub const SIG_ENTRY: usize = 4 + 8;

/// One block of a base: its rolling checksum and the first 8 bytes of its BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSig {
    /// [`Rolling`] checksum of the block.
    pub weak: u32,
    /// First 8 bytes of the block's BLAKE3 hash.
    pub strong: [u8; 8],
}

/// What the receiver tells the sender about a base chunk: its full blocks, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Block length in bytes (the base's tail shorter than a block is not listed).
    pub block: u32,
    /// The blocks.
    pub blocks: Vec<BlockSig>,
}

/// The block size for a base of `len` bytes: about √len, within 64..=4096 bytes, so that a
/// changed region costs at most a block of literal bytes and the signature stays ~1/12·√len
/// entries.
pub fn block_size(len: usize) -> usize {
    let mut b = MIN_BLOCK;
    while b < MAX_BLOCK && b * b < len {
        b *= 2;
    }
    b
}

impl Signature {
    /// The signature of `base`.
    pub fn of(base: &[u8]) -> Signature {
        let block = block_size(base.len());
        let blocks = base
            .chunks_exact(block)
            .map(|b| BlockSig {
                weak: Rolling::new(b).value(),
                strong: strong(b),
            })
            .collect();
        Signature {
            block: block as u32,
            blocks,
        }
    }
}

fn strong(block: &[u8]) -> [u8; 8] {
    let mut s = [0u8; 8];
    s.copy_from_slice(&blake3::hash(block).as_bytes()[..8]);
    s
}

/// rsync's rolling checksum over a window: `a` is the byte sum, `b` the sum of the running
/// sums, both mod 2^16. Rolling by one byte is O(1).
#[derive(Debug, Clone, Copy)]
struct Rolling {
    a: u32,
    b: u32,
    len: u32,
}

impl Rolling {
    fn new(window: &[u8]) -> Rolling {
        let (mut a, mut b) = (0u32, 0u32);
        for &x in window {
            a = a.wrapping_add(u32::from(x));
            b = b.wrapping_add(a);
        }
        Rolling {
            a,
            b,
            len: window.len() as u32,
        }
    }
    fn value(&self) -> u32 {
        (self.a & 0xffff) | (self.b << 16)
    }
    /// Slides the window one byte: `out` leaves at the front, `inn` enters at the back.
    fn roll(&mut self, out: u8, inn: u8) {
        self.a = self
            .a
            .wrapping_sub(u32::from(out))
            .wrapping_add(u32::from(inn));
        self.b = self
            .b
            .wrapping_sub(self.len.wrapping_mul(u32::from(out)))
            .wrapping_add(self.a);
    }
}

const OP_COPY: u8 = 1;
const OP_LITERAL: u8 = 2;

/// Encodes `target` as ops against the base that `sig` describes: `[u32 block]` then
/// `COPY(u32 first block, u32 count)` and `LITERAL(u32 len, bytes)` ops, little-endian.
pub fn delta(sig: &Signature, target: &[u8]) -> Vec<u8> {
    let block = sig.block as usize;
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(&sig.block.to_le_bytes());
    let mut by_weak: HashMap<u32, Vec<u32>> = HashMap::new();
    // One bit per 16-bit fold of a weak checksum: most positions of an unrelated target
    // cost a bit test, not a map lookup.
    let mut seen = vec![0u64; 1 << 10];
    let fold = |w: u32| ((w ^ (w >> 16)) & 0xffff) as usize;
    for (i, b) in sig.blocks.iter().enumerate() {
        by_weak.entry(b.weak).or_default().push(i as u32);
        seen[fold(b.weak) >> 6] |= 1 << (fold(b.weak) & 63);
    }
    let mut run: Option<(u32, u32)> = None; // (first block, count) not yet written
    let mut lit = 0; // start of bytes not yet covered by an op
    let mut i = 0;
    let mut roll = (block > 0 && target.len() >= block).then(|| Rolling::new(&target[..block]));
    while let Some(r) = roll.as_mut() {
        let w = r.value();
        let maybe = seen[fold(w) >> 6] & (1 << (fold(w) & 63)) != 0;
        let found = maybe.then(|| by_weak.get(&w)).flatten().and_then(|cands| {
            let s = strong(&target[i..i + block]);
            // Prefer the block that continues the current run.
            let next = run.map(|(f, n)| f + n);
            let ok = |&&c: &&u32| sig.blocks[c as usize].strong == s;
            cands
                .iter()
                .find(|c| Some(**c) == next && ok(c))
                .or_else(|| cands.iter().find(ok))
                .copied()
        });
        if let Some(idx) = found {
            if lit < i {
                flush_run(&mut out, &mut run);
                literal(&mut out, &target[lit..i]);
            }
            match &mut run {
                Some((f, n)) if *f + *n == idx => *n += 1,
                _ => {
                    flush_run(&mut out, &mut run);
                    run = Some((idx, 1));
                }
            }
            i += block;
            lit = i;
            roll = (i + block <= target.len()).then(|| Rolling::new(&target[i..i + block]));
            continue;
        }
        if i + block < target.len() {
            r.roll(target[i], target[i + block]);
            i += 1;
        } else {
            roll = None;
        }
    }
    if lit < target.len() {
        flush_run(&mut out, &mut run);
        literal(&mut out, &target[lit..]);
    }
    flush_run(&mut out, &mut run);
    out
}

fn flush_run(out: &mut Vec<u8>, run: &mut Option<(u32, u32)>) {
    if let Some((first, count)) = run.take() {
        out.push(OP_COPY);
        out.extend_from_slice(&first.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
    }
}

fn literal(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(OP_LITERAL);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Why ops do not rebuild a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    /// The ops are truncated or carry an unknown op.
    #[error("malformed delta: {0}")]
    Malformed(&'static str),
    /// A copy reaches outside the base.
    #[error("delta copies outside its base")]
    OutOfBase,
    /// The result would not have the announced length.
    #[error("delta does not rebuild {expected} bytes")]
    Length {
        /// The announced length.
        expected: usize,
    },
}

/// Rebuilds a chunk of `raw_len` bytes from `base` and `ops` (as [`delta`] wrote them).
/// Never allocates more than `raw_len` and never reads outside `base` or `ops`.
pub fn apply(base: &[u8], ops: &[u8], raw_len: usize) -> Result<Vec<u8>, DeltaError> {
    let mut r = ops;
    let block = take_u32(&mut r)? as usize;
    if block == 0 || block > MAX_BLOCK_ACCEPTED as usize {
        return Err(DeltaError::Malformed("block size"));
    }
    let mut out = Vec::with_capacity(raw_len);
    let too_long = DeltaError::Length { expected: raw_len };
    while let Some((&op, rest)) = r.split_first() {
        r = rest;
        let piece = match op {
            OP_COPY => {
                let first = take_u32(&mut r)? as usize;
                let count = take_u32(&mut r)? as usize;
                let start = first.checked_mul(block).ok_or(DeltaError::OutOfBase)?;
                let len = count.checked_mul(block).ok_or(DeltaError::OutOfBase)?;
                let end = start.checked_add(len).ok_or(DeltaError::OutOfBase)?;
                base.get(start..end).ok_or(DeltaError::OutOfBase)?
            }
            OP_LITERAL => {
                let len = take_u32(&mut r)? as usize;
                if r.len() < len {
                    return Err(DeltaError::Malformed("truncated literal"));
                }
                let (bytes, rest) = r.split_at(len);
                r = rest;
                bytes
            }
            _ => return Err(DeltaError::Malformed("unknown op")),
        };
        if piece.len() > raw_len - out.len() {
            return Err(too_long);
        }
        out.extend_from_slice(piece);
    }
    if out.len() != raw_len {
        return Err(too_long);
    }
    Ok(out)
}

fn take_u32(r: &mut &[u8]) -> Result<u32, DeltaError> {
    if r.len() < 4 {
        return Err(DeltaError::Malformed("truncated"));
    }
    let (h, t) = r.split_at(4);
    *r = t;
    Ok(u32::from_le_bytes([h[0], h[1], h[2], h[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::noise;
    use proptest::prelude::*;

    fn roundtrip(base: &[u8], target: &[u8]) -> usize {
        let ops = delta(&Signature::of(base), target);
        assert_eq!(apply(base, &ops, target.len()).unwrap(), target);
        ops.len()
    }

    #[test]
    fn rolling_equals_a_fresh_checksum() {
        let data = noise(500, 1);
        let mut r = Rolling::new(&data[..64]);
        for i in 0..data.len() - 64 {
            r.roll(data[i], data[i + 64]);
            assert_eq!(r.value(), Rolling::new(&data[i + 1..i + 65]).value());
        }
    }

    #[test]
    fn small_edits_cost_about_a_block() {
        let base = noise(65536, 2);
        let mut appended = base.clone();
        appended.extend_from_slice(b"#pushbench000001\n");
        assert!(roundtrip(&base, &appended) < 64);
        let mut edited = base.clone();
        edited[30000..30008].copy_from_slice(b"PB000001");
        assert!(roundtrip(&base, &edited) < block_size(base.len()) + 64);
        let mut inserted = base.clone();
        inserted.splice(100..100, *b"xyz");
        assert!(roundtrip(&base, &inserted) < block_size(base.len()) + 64);
        // A small file: its tail shorter than a block is sent literally.
        let small = noise(1341, 3);
        let mut grown = small.clone();
        grown.extend_from_slice(b"#pushbench000002\n");
        assert!(roundtrip(&small, &grown) < 17 + block_size(1341) + 32);
    }

    #[test]
    fn unrelated_and_degenerate_inputs_round_trip() {
        roundtrip(&noise(5000, 4), &noise(5000, 5));
        roundtrip(b"", b"abc");
        roundtrip(b"abc", b"");
        roundtrip(&[0; 4096], &[0; 10000]);
        roundtrip(&noise(63, 6), &noise(63, 6));
    }

    #[test]
    fn hostile_ops_are_refused() {
        let base = noise(256, 7);
        let mut ops = 64u32.to_le_bytes().to_vec();
        ops.push(OP_COPY);
        ops.extend_from_slice(&3u32.to_le_bytes());
        ops.extend_from_slice(&2u32.to_le_bytes()); // blocks 3..5 of a 4-block base
        assert_eq!(apply(&base, &ops, 128), Err(DeltaError::OutOfBase));
        let mut ops = 64u32.to_le_bytes().to_vec();
        ops.push(OP_COPY);
        ops.extend_from_slice(&u32::MAX.to_le_bytes());
        ops.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(apply(&base, &ops, 128), Err(DeltaError::OutOfBase));
        let mut ops = 64u32.to_le_bytes().to_vec();
        ops.push(OP_LITERAL);
        ops.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(apply(&base, &ops, 10).is_err());
        let mut ops = 64u32.to_le_bytes().to_vec();
        ops.push(OP_LITERAL);
        ops.extend_from_slice(&4u32.to_le_bytes());
        ops.extend_from_slice(b"abcd");
        assert_eq!(
            apply(&base, &ops, 3),
            Err(DeltaError::Length { expected: 3 })
        );
        assert_eq!(
            apply(&base, &ops, 5),
            Err(DeltaError::Length { expected: 5 })
        );
        assert!(apply(&base, &[0, 0, 0, 0], 0).is_err());
        assert!(apply(&base, &[64, 0, 0, 0, 9], 0).is_err());
    }

    proptest! {
        #[test]
        fn apply_of_delta_rebuilds_the_target(
            seed in any::<u64>(),
            len in 0usize..20000,
            edits in prop::collection::vec((any::<u16>(), 0usize..40, any::<u8>()), 0..6),
        ) {
            let base = noise(len, seed);
            let mut target = base.clone();
            for (at, n, kind) in edits {
                let at = usize::from(at) % (target.len() + 1);
                match kind % 3 {
                    0 => { target.splice(at..at, noise(n, seed ^ 9)); }
                    1 => { let end = (at + n).min(target.len()); target.drain(at..end); }
                    _ => {
                        let end = (at + n).min(target.len());
                        target[at..end].copy_from_slice(&noise(end - at, seed ^ 5));
                    }
                }
            }
            roundtrip(&base, &target);
        }
    }
}
