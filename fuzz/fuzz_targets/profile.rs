//! A profile from text, raw → validated (`ingot::profile::parse_str`): never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = ingot::profile::parse_str(Path::new("/fuzz/profiles/fuzz.toml"), text);
    }
});
