//! How a chunk travels: as delta ops against the receiver's base when those are smaller,
//! else as the next part of its data stream's zstd stream at the level the compression
//! policy ([`super::adapt::Adapt`]) picks, else raw. No IO and no clock: the CPU time a
//! compression took comes from the `cpu_secs` the driver passes in.

use super::codec::{ChunkHead, Codec};
use super::delta::{self, Signature};
use super::stream::StreamEncoder;
use crate::chunk::ChunkId;

/// What the encoder asks of its caller: the compression level for the next chunk (0 for
/// none), the CPU seconds this thread has used so far, and a compression's cost
/// (`level`, raw bytes, CPU seconds) afterwards.
pub struct Policy<'a> {
    /// [`super::adapt::Adapt::next_level`].
    pub next_level: &'a mut dyn FnMut() -> i32,
    /// The thread's CPU clock, in seconds (CPU time, not wall time: on a busy machine a
    /// wall clock also counts the time the thread was preempted, which made level 1 look
    /// ten times slower than it is).
    pub cpu_secs: &'a dyn Fn() -> f64,
    /// [`super::adapt::Adapt::observe_compress`].
    pub observe: &'a mut dyn FnMut(i32, usize, f64),
}

impl std::fmt::Debug for Policy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy(..)")
    }
}

/// Encodes chunk `id` (bytes `raw`) for the data stream that `stream` compresses: as delta
/// ops `against` the receiver's base if those are smaller than the chunk, else at the level
/// `policy` picks as the next part of that stream, else raw. Returns the frame's head and
/// its data, written one after the other (the data is not copied into a frame).
pub fn encode_chunk(
    stream: &mut StreamEncoder,
    id: ChunkId,
    raw: Vec<u8>,
    against: Option<&Signature>,
    policy: Policy<'_>,
) -> (ChunkHead, Vec<u8>) {
    let raw_len = raw.len() as u32;
    let head = |codec, data: &Vec<u8>| ChunkHead {
        id,
        raw_len,
        codec,
        data_len: data.len(),
    };
    if let Some(ops) = against.map(|sig| delta::delta(sig, &raw))
        && ops.len() < raw.len()
    {
        return (head(Codec::Delta, &ops), ops);
    }
    let level = (policy.next_level)();
    if level > 0 {
        let t = (policy.cpu_secs)();
        if let Ok(z) = stream.compress(&raw, level) {
            (policy.observe)(level, raw.len(), (policy.cpu_secs)() - t);
            // Sent even if it did not shrink: the receiver's context must see it (zstd
            // stores incompressible blocks raw, so it costs a few bytes at most).
            return (head(Codec::Zstd, &z), z);
        }
    }
    (head(Codec::Raw, &raw), raw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Encodes `raw` with `level` and a CPU clock that advances 0.25 s per reading; returns
    /// the codec, the data and what was observed.
    fn encode(
        raw: &[u8],
        against: Option<&Signature>,
        level: i32,
    ) -> (Codec, Vec<u8>, Vec<(i32, usize, f64)>) {
        let clock = Cell::new(0.0);
        let cpu = || {
            clock.set(clock.get() + 0.25);
            clock.get()
        };
        let mut seen = Vec::new();
        let (head, data) = encode_chunk(
            &mut StreamEncoder::new(),
            ChunkId::of(raw),
            raw.to_vec(),
            against,
            Policy {
                next_level: &mut || level,
                cpu_secs: &cpu,
                observe: &mut |l, n, s| seen.push((l, n, s)),
            },
        );
        assert_eq!(head.data_len, data.len());
        assert_eq!(head.raw_len as usize, raw.len());
        (head.codec, data, seen)
    }

    #[test]
    fn delta_when_smaller_then_zstd_at_the_level_given_then_raw() {
        let base: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut edited = base.clone();
        edited[30_000] ^= 1;
        let sig = Signature::of(&base);
        // A one-byte edit of the base: a delta, and the policy is not even asked.
        let (codec, ops, seen) = encode(&edited, Some(&sig), 3);
        assert_eq!(codec, Codec::Delta);
        assert!(ops.len() < edited.len() / 10, "{}", ops.len());
        assert_eq!(delta::apply(&base, &ops, edited.len()).unwrap(), edited);
        assert!(seen.is_empty());
        // Unrelated to the base: compressed at the level given, its CPU time observed.
        let (codec, z, seen) = encode(&vec![7u8; 65_536], Some(&sig), 3);
        assert_eq!(codec, Codec::Zstd);
        assert!(z.len() < 1_000, "{}", z.len());
        assert_eq!(seen, vec![(3, 65_536, 0.25)]);
        // Level 0: raw, nothing observed.
        let (codec, data, seen) = encode(&edited, None, 0);
        assert_eq!((codec, data), (Codec::Raw, edited));
        assert!(seen.is_empty());
    }
}
