//! The kernel command line as ingot-init reads `/proc/cmdline` (`ingot_spec::cmdline`): never a panic, and
//! `get` agrees with `parse` (the last occurrence of a key wins). An `ingot.node=` value goes on, base64
//! decoded, to the node configuration parser, as stage 2 does.
#![no_main]

use base64::Engine as _;
use ingot_spec::cmdline;
use ingot_spec::node_config::{CMDLINE_KEY, NodeConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let params = cmdline::parse(&line);
    for p in &params {
        let last = params.iter().rev().find(|q| q.key == p.key).map(|q| q.value.unwrap_or(""));
        assert_eq!(cmdline::get(&line, p.key), last);
        let _ = cmdline::flag(&line, p.key);
    }
    for key in [cmdline::DEBUG, cmdline::POWEROFF, cmdline::REBOOT_DELAY, cmdline::MODULES, "ingot.node"] {
        let _ = cmdline::flag(&line, key);
    }
    if let Some(value) = cmdline::get(&line, CMDLINE_KEY) {
        if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(value) {
            let _ = NodeConfig::parse(&bytes);
        }
    }
});
