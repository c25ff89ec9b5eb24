//! A stored record (hash + stat + node) decodes or fails cleanly, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::manifest::store::Record;

fuzz_target!(|data: &[u8]| {
    let _ = Record::decode_header(data);
    if let Ok(rec) = Record::decode(data) {
        assert_eq!(rec.encode(), data);
    }
});
