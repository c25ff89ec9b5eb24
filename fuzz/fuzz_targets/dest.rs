//! DEST parsing never panics, and a remote DEST has a host and a port that are not zero.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::dest::{Dest, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(Dest::Remote { host, port }) = parse(s)
    {
        assert!(!host.is_empty());
        assert_ne!(port, 0);
    }
});
