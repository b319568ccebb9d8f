//! Fuzz target: arbitrary bytes must give `Ok` or `Err`, never a panic, hang or huge allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fixq::pack::from_bytes(data);
});
