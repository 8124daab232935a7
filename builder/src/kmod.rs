//! Kernel modules.
