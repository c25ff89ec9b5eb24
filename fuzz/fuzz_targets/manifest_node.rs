//! Node::decode never panics, and whatever it accepts re-encodes to the same bytes
//! (the encoding is canonical, so hashes cannot be forged by alternative encodings).
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::manifest::Node;

fuzz_target!(|data: &[u8]| {
    if let Ok(node) = Node::decode(data) {
        assert_eq!(node.to_bytes(), data, "accepted a non-canonical encoding");
    }
});
