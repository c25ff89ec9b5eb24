//! The filter rules' wire form (a receiver decodes the sender's) never panics, and what
//! decodes re-encodes to the same bytes and matches any path without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::filter::Filter;

fuzz_target!(|data: &[u8]| {
    let (rules, path) = data.split_at(data.len() / 2);
    if let Ok(f) = Filter::decode(rules) {
        assert_eq!(Filter::decode(&f.encode()).map(|g| g.encode()), Ok(f.encode()));
        let _ = f.excludes(path, path.first().is_some_and(|b| b & 1 == 1));
    }
});
