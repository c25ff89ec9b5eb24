//! The data-stream decompressor never panics and never returns more than a chunk's
//! announced length; what the encoder produces decodes back, in order, at any level.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::proto::stream::{StreamDecoder, StreamEncoder};

/// Splits `data` into (announced length, bytes) pieces: 3 bytes of length (capped at
/// 256 KiB, the largest default chunk), 2 bytes of size, then the bytes.
fn pieces(mut data: &[u8]) -> Vec<(usize, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 5 {
        let announced = (usize::from(data[0]) << 16 | usize::from(data[1]) << 8 | usize::from(data[2]))
            % (256 << 10);
        let n = (usize::from(data[3]) << 8 | usize::from(data[4])).min(data.len() - 5);
        out.push((announced, &data[5..5 + n]));
        data = &data[5 + n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut dec = StreamDecoder::new();
    if mode % 2 == 0 {
        // Hostile input: whatever comes out is at most what was announced.
        for (announced, bytes) in pieces(rest) {
            match dec.decompress(bytes, announced) {
                Ok(out) => assert_eq!(out.len(), announced),
                Err(_) => break,
            }
        }
    } else {
        // Round trip through the encoder.
        let mut enc = StreamEncoder::new();
        for (i, (_, bytes)) in pieces(rest).into_iter().enumerate() {
            let level = 1 + (i as i32 + i32::from(mode / 2)) % 6;
            let z = enc.compress(bytes, level).expect("compress");
            assert_eq!(dec.decompress(&z, bytes.len()).expect("decode"), bytes);
        }
    }
});
