//! The parallel chunker equals the sequential reference and its chunks reassemble the input,
//! for arbitrary data and chunk sizes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use syncd::chunk::{self, ChunkId, ChunkParams};

#[derive(Arbitrary, Debug)]
struct Input {
    segment: u16,
    min: u16,
    avg: u16,
    max: u32,
    /// Repeated to reach sizes that span several parallel segments.
    repeat: u16,
    data: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let Ok(params) = ChunkParams::new(u32::from(input.min), u32::from(input.avg), input.max) else {
        return;
    };
    let mut data = Vec::new();
    if !input.data.is_empty() {
        let reps = usize::from(input.repeat % 64) + 1;
        for i in 0..reps {
            data.extend_from_slice(&input.data);
            data.push(i as u8);
        }
    }
    let seq = chunk::cut_points_sequential(&data, params);
    assert_eq!(chunk::cut_points(&data, params), seq);
    let segment = usize::from(input.segment);
    assert_eq!(chunk::cut_points_with_segment(&data, params, segment), seq);
    let mut pos = 0u64;
    for c in chunk::chunk(&data, params) {
        assert_eq!(c.offset, pos);
        let end = (c.offset + u64::from(c.len)) as usize;
        assert_eq!(c.id, ChunkId::of(&data[c.offset as usize..end]));
        pos = end as u64;
    }
    assert_eq!(pos, data.len() as u64);
});
