//! Fuzz target: arbitrary bytes given to `QuantizedModel::from_bytes` must give `Ok` or `Err`, never
//! a panic, hang or huge allocation. The input is tried as it is (which mostly exercises the header
//! and the checksum) and resealed — its declared length and CRC-32 rewritten as a writer would — so
//! that the sections behind the checksum are reached. A model that loads must save to bytes that
//! load back and save to the same bytes.
#![no_main]

use fixq::QuantizedModel;
use libfuzzer_sys::fuzz_target;

fn reseal(data: &[u8]) -> Option<Vec<u8>> {
    if data.len() < 24 {
        return None;
    }
    let mut v = data.to_vec();
    let n = v.len() as u64;
    v[12..20].copy_from_slice(&n.to_le_bytes());
    let end = v.len() - 4;
    let crc = crc32fast::hash(&v[..end]);
    v[end..].copy_from_slice(&crc.to_le_bytes());
    Some(v)
}

fn check(bytes: &[u8]) {
    let Ok(model) = QuantizedModel::from_bytes(bytes) else {
        return;
    };
    let saved = model.to_bytes().expect("a loaded model saves");
    let again = QuantizedModel::from_bytes(&saved).expect("a saved model loads");
    assert_eq!(again.to_bytes().expect("saves again"), saved);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    if let Some(v) = reseal(data) {
        check(&v);
    }
});
