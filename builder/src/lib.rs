//! The ingot image builder library.

pub mod initramfs;
pub mod kmod;
pub mod rootfs;
pub mod uki;
