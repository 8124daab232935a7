//! Signature files and public key files: never a panic. The first byte picks the parser; a signature is
//! checked against a fixed key and message, so a corpus entry that is a real signature of that message
//! (made by `ingot::signing::sign` with the seed-7 key) reaches the Ed25519 check.
#![no_main]

use std::path::Path;

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    if which % 2 == 0 {
        let key = SigningKey::from_bytes(&[7; 32]).verifying_key();
        let _ = ingot::signing::verify(&key, b"{\"schema\": 1}\n", rest);
    } else if let Ok(text) = std::str::from_utf8(rest) {
        if let Ok(key) = ingot::signing::parse_public_key(Path::new("fuzz.pub"), text) {
            let _ = ingot::signing::key_id(&key);
        }
    }
});
