//! Delta ops never make `apply` panic, read outside its base or return anything but exactly
//! the announced length; and what `delta` produces against a signature rebuilds the target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use syncd::proto::delta::{Signature, apply, delta};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let split = usize::from(u16::from_le_bytes([data[0], data[1]])) % (data.len() - 3);
    let announced = usize::from(data[2]) << 8 | usize::from(data[3]);
    let (base, rest) = data[4..].split_at(split);
    // Hostile ops against a base.
    if let Ok(out) = apply(base, rest, announced) {
        assert_eq!(out.len(), announced);
    }
    // Honest ops: the rest as a new version of the base.
    let ops = delta(&Signature::of(base), rest);
    assert_eq!(apply(base, &ops, rest.len()).as_deref(), Ok(rest));
});
