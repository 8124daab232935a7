//! The ACPI power button (QEMU's `system_powerdown`, a server's front panel) as a power-off request.
//!
//! The kernel's `button` driver reports the button as a key on an input device; with `evdev` loaded it is
//! `/dev/input/eventN`. PID 1 watches every input device whose key capabilities include `KEY_POWER` and,
//! on a press, sends itself `SIGPWR`, so the button takes the same orderly path as `poweroff`.

use std::os::fd::RawFd;
use std::path::Path;
use std::time::Duration;

use crate::event::Pollable;
use crate::sys::Sys;
use crate::sys::input::{self, EVENT_SIZE, EventDevice};

const KEY_POWER: u32 = 116;
const EV_KEY: u16 = 1;
const INPUT_CLASS: &str = "/sys/class/input";

pub struct PowerButton {
    devices: Vec<(String, EventDevice)>,
}

impl PowerButton {
    /// Opens every input device that has a power key; none is not an error (no ACPI, or `button`/`evdev`
    /// not loaded), just a warning, because the node then only powers off by signal.
    pub fn open(sys: &dyn Sys) -> PowerButton {
        let mut devices = Vec::new();
        let names = sys.read_dir(Path::new(INPUT_CLASS)).unwrap_or_default();
        for name in names
            .iter()
            .filter_map(|n| n.to_str())
            .filter(|n| n.starts_with("event"))
        {
            let caps = format!("{INPUT_CLASS}/{name}/device/capabilities/key");
            let Ok(bitmap) = sys.read(Path::new(&caps)) else {
                continue;
            };
            if !has_key(&String::from_utf8_lossy(&bitmap), KEY_POWER) {
                continue;
            }
            let path = format!("/dev/input/{name}");
            match EventDevice::open(&path) {
                Ok(dev) => devices.push((path, dev)),
                Err(e) => crate::warn(sys, &format!("opening power button {path}: {e}, ignoring")),
            }
        }
        if devices.is_empty() {
            crate::warn(
                sys,
                "no power button found (load the button and evdev modules), ignoring; SIGPWR still powers off",
            );
        }
        PowerButton { devices }
    }
}

impl Pollable for PowerButton {
    fn fds(&self) -> Vec<RawFd> {
        self.devices.iter().map(|(_, d)| d.fd()).collect()
    }

    fn deadline(&self) -> Option<Duration> {
        None
    }

    fn wake(&mut self, sys: &dyn Sys, _now: Duration, readable: &[RawFd]) {
        let mut pressed = false;
        for (path, dev) in &mut self.devices {
            if !readable.contains(&dev.fd()) {
                continue;
            }
            match dev.read_events() {
                Ok(events) => pressed |= events.chunks_exact(EVENT_SIZE).any(is_power_press),
                Err(e) => crate::warn(sys, &format!("reading {path}: {e}, ignoring")),
            }
        }
        if pressed {
            sys.console(&format!("{}power button pressed", ingot_spec::marker::PREFIX));
            if let Err(e) = input::request_power_off() {
                crate::warn(sys, &format!("requesting power-off: {e}, ignoring"));
            }
        }
    }
}

/// Whether a capability bitmap from sysfs (hex words of `unsigned long`, most significant first) has `key`.
fn has_key(bitmap: &str, key: u32) -> bool {
    let words: Vec<&str> = bitmap.split_whitespace().collect();
    let (word, bit) = ((key / 64) as usize, key % 64);
    let Some(index) = words.len().checked_sub(word + 1) else {
        return false;
    };
    u64::from_str_radix(words[index], 16).is_ok_and(|w| w & (1 << bit) != 0)
}

/// A key-down of `KEY_POWER` in one raw `input_event`.
fn is_power_press(event: &[u8]) -> bool {
    let kind = u16::from_ne_bytes([event[16], event[17]]);
    let code = u16::from_ne_bytes([event[18], event[19]]);
    let value = i32::from_ne_bytes([event[20], event[21], event[22], event[23]]);
    kind == EV_KEY && u32::from(code) == KEY_POWER && value == 1
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_capability_bitmaps_like_the_kernel_prints_them() {
        // QEMU's ACPI "Power Button": only KEY_POWER (bit 116 = word 1, bit 52).
        assert!(has_key("10000000000000 0", KEY_POWER));
        // An AT keyboard has many keys, but its bitmap's bit 116 is set too; a mouse has none.
        assert!(!has_key("0", KEY_POWER));
        assert!(!has_key("", KEY_POWER));
        assert!(!has_key("zz 0", KEY_POWER));
    }

    #[test]
    fn recognizes_only_a_power_key_press() {
        let event = |kind: u16, code: u16, value: i32| {
            let mut e = vec![0u8; EVENT_SIZE];
            e[16..18].copy_from_slice(&kind.to_ne_bytes());
            e[18..20].copy_from_slice(&code.to_ne_bytes());
            e[20..24].copy_from_slice(&value.to_ne_bytes());
            e
        };
        assert!(is_power_press(&event(EV_KEY, 116, 1)));
        assert!(!is_power_press(&event(EV_KEY, 116, 0)), "release");
        assert!(!is_power_press(&event(EV_KEY, 30, 1)), "another key");
        assert!(!is_power_press(&event(0, 116, 1)), "a sync event");
    }
}
