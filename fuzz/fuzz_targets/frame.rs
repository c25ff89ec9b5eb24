//! The wire frame decoder never panics, never accepts more than the frame limit, and what
//! it accepts re-encodes to the same bytes. Packed frames are unpacked too (with one
//! control-stream decoder for the whole input, as a connection would): never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::proto::codec::{self, Frame, MAX_FRAME};
use syncd::proto::stream::{StreamDecoder, unpack};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    let mut control = StreamDecoder::new();
    while let Ok(Some((frame, used))) = codec::decode(&data[at..]) {
        assert!(used <= MAX_FRAME + 4);
        assert_eq!(
            frame.to_bytes(),
            &data[at..at + used],
            "non-canonical frame accepted"
        );
        if let Frame::Packed { raw_len, data } = &frame
            && let Ok(inner) = unpack(&mut control, *raw_len, data)
        {
            assert!(!matches!(inner, Frame::Packed { .. }), "nested packed frame");
        }
        at += used;
    }
});
