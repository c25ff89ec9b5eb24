//! The wire frame decoder never panics, never accepts more than the frame limit, and what
//! it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::proto::codec::{self, MAX_FRAME};

fuzz_target!(|data: &[u8]| {
    let mut at = 0;
    while let Ok(Some((frame, used))) = codec::decode(&data[at..]) {
        assert!(used <= MAX_FRAME + 4);
        assert_eq!(
            frame.to_bytes(),
            &data[at..at + used],
            "non-canonical frame accepted"
        );
        at += used;
    }
});
