//! Launches ingot images under QEMU.
