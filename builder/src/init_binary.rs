//! The static `ingot-init` binary, embedded at compile time by `build.rs`.

/// The bytes of the static `ingot-init` (PID 1 in both the initramfs and the root).
pub static INGOT_INIT: &[u8] = include_bytes!(env!("INGOT_INIT_EMBED"));

/// Paths the binary takes in the image: `/init` in the initramfs, `/sbin/init` in the root.
pub const INITRD_PATH: &str = "/init";
pub const ROOT_PATH: &str = "/sbin/init";
