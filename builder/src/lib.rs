//! The ingot image builder library: everything `ingot` does, behind a thin CLI in `main.rs`.

pub mod apt_base;
pub mod bmap;
pub mod commands;
pub mod debian;
pub mod deliver;
pub mod disk;
pub mod doctor;
pub mod esp;
pub mod export;
pub mod fetch;
pub mod flash;
#[cfg(test)]
mod golden;
pub mod host_env;
pub mod hostile;
pub mod image_ranges;
pub mod images;
pub mod init_binary;
pub mod initramfs;
pub mod inspect;
pub mod kconfig;
pub mod kmod;
pub mod lock;
pub mod manifest;
pub mod node_config;
pub mod oci;
pub mod pipeline;
pub mod profile;
pub mod rollback;
pub mod rootfs;
pub mod secure_boot;
pub mod signing;
pub mod uki;
pub mod verify;
pub mod verity;
