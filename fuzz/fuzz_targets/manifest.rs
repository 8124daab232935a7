//! The image manifest as `ingot verify` parses it (after its signature checked out): never a panic, and
//! what parses serialises back to a manifest that parses to the same value.
#![no_main]

use ingot::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<Manifest>(data) else {
        return;
    };
    let _ = m.payload_bytes();
    let again: Manifest = serde_json::from_str(&m.to_json()).expect("a serialised manifest parses");
    assert_eq!(again, m);
});
