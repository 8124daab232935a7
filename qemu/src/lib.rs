//! Boots ingot images under QEMU with OVMF and watches their serial console. Used by `ingot run`, the VM
//! tests and the boot benchmark.
//!
//! ```no_run
//! use std::time::Duration;
//! use ingot_qemu::{Vm, VmConfig};
//!
//! let cfg = VmConfig::new("out/worker.raw");
//! let mut vm = Vm::start(cfg)?;
//! let m = vm.wait_for("ingot: phase=ready", Duration::from_secs(300))?;
//! println!("ready after {:?} under {}", m.elapsed, vm.accel());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Design
//!
//! - **Machine**: `q35`, `-nodefaults`, no display, no human monitor; the first serial port on QEMU's stdout
//!   is the only console. OVMF comes in as two pflash drives: the code read-only, the vars as a private copy in a
//!   scratch directory, so the system template is never written. OVMF is found through `INGOT_OVMF_CODE` +
//!   `INGOT_OVMF_VARS`, else Debian's 4M pair, else the 2M pair. [`Firmware::OvmfSecureBoot`] takes an OVMF
//!   built with Secure Boot and SMM ([`OVMF_SECURE_BOOT_CODE`]) and a vars store with keys enrolled, and adds
//!   `-machine q35,smm=on` and `-global driver=cfi.pflash01,property=secure,value=on`.
//! - **The image is never modified**: it is attached with `snapshot=on`, so QEMU opens it read-only and sends
//!   the guest's writes (the firmware and systemd-boot write to the ESP on every boot) to a temporary qcow2
//!   overlay created in the scratch directory (`TMPDIR` of the QEMU process). This needs no `qemu-img`.
//!   With [`VmConfig::disk_size`] the disk is instead `disk.qcow2` in the scratch directory, made by
//!   `qemu-img create -f qcow2 -F raw -b IMAGE` with that virtual size: the guest sees the image followed by
//!   zeros (room for the var partition to grow), QEMU opens the backing image read-only, and the overlay is
//!   made afresh for each QEMU process. The human monitor, which could commit an overlay, is disabled.
//! - **Disk bus**: [`VmConfig::disk_bus`] attaches either disk as a virtio disk (`virtio-blk-pci`, the default)
//!   or as a USB stick ([`DiskBus::Usb`]: a removable `usb-storage` device on a `qemu-xhci` controller), which
//!   OVMF boots from in the same way, plain or with Secure Boot.
//! - **QMP**: QEMU listens on `qmp.sock` in the scratch directory (`-qmp unix:…,server=on,wait=off`).
//!   [`Vm::qmp`] runs one command per connection (greeting, `qmp_capabilities`, command; events skipped;
//!   [`QMP_TIMEOUT`] for the whole exchange) and [`Vm::powerdown`] presses the ACPI power button
//!   (`system_powerdown`).
//! - **Reboots**: with [`VmConfig::exit_on_reboot`] QEMU exits when the guest reboots (`-no-reboot`).
//!   Without it the machine resets inside the same QEMU process: same disk and overlay, same firmware
//!   variables, same console stream, so [`Vm::wait_for`] simply continues with the next boot's lines.
//! - **Network**: user-mode networking with `restrict=on` by default: the guest reaches no address, host or
//!   outside, except through the `hostfwd`/`guestfwd` entries listed in [`NetConfig`] (TCP only). For UDP
//!   services (DHCP, NTP, DNS), [`NetMode::Tap`] attaches the NIC to a tap device and [`VmConfig::netns`]
//!   starts QEMU inside a network namespace (`ip netns exec`, root only); [`TestNetns`] makes such a
//!   namespace for tests, in which the guest reaches only what runs there. The NIC has no option ROM, so the
//!   firmware never tries a network boot.
//! - **Console**: a reader thread splits QEMU's stdout into lines (`\r\n`, partial lines, escape sequences,
//!   backspaces, invalid UTF-8 handled), timestamps each from QEMU's start, keeps the last 10 000, copies them
//!   to stdout and the serial log when asked, and wakes waiters. [`Vm::wait_for`] matches a substring in
//!   lines no earlier wait returned; errors carry the last 40 lines and QEMU's stderr.
//! - **Acceleration**: `INGOT_QEMU_ACCEL=tcg|kvm|auto` overrides [`VmConfig::accel`]. `Auto` uses TCG at once
//!   when `/dev/kvm` cannot be opened, and says why. Otherwise it starts under KVM and waits for a line that
//!   proves an OS runs ([`is_os_line`]: a printk timestamp, `Linux version`, or `ingot:`; firmware lines do
//!   not count because KVM guests that hang still show them on some hosts). Without one within
//!   [`VmConfig::kvm_probe`] (30 s by default), QEMU is killed and restarted under TCG with a one-line notice
//!   on stderr and in the serial log. [`Vm::accel`] reports what was used.
//! - **Cleanup**: dropping a [`Vm`] kills QEMU with SIGKILL, reaps it and removes the scratch directory; this
//!   also runs when a test panics. Every wait takes a timeout.
//!
//! # Limits
//!
//! - x86-64 guests only; `qemu-system-x86_64` must be on `PATH`.
//! - If our own process is killed with SIGKILL, QEMU outlives it (setting a parent-death signal needs
//!   `unsafe` code between fork and exec, which this crate does not have); its scratch directory stays in
//!   `$TMPDIR`.
//! - Matching is on completed lines; a prompt without a newline is only seen when QEMU exits.
//! - `Auto` delays [`Vm::start`] until the first kernel line under KVM; a guest with a silent kernel
//!   (`quiet`) and no `ingot-init` output is restarted under TCG after the probe window.
//! - A `guestfwd` runs `socat` (which must be installed) for each guest connection.
//! - [`Vm::kill`] is a hard stop; [`Vm::powerdown`] asks the guest, which may ignore it.
//! - The QMP socket path must fit a unix socket address (107 bytes): a long `TMPDIR` is refused.
//! - A tap device gets the virtio NIC's default MAC address (52:54:00:12:34:56); guests that share one
//!   namespace's network would need distinct ones (not supported yet).
//!
//! Rejected: a qcow2 overlay made with `qemu-img` when the disk keeps the image's size (needs `qemu-utils`,
//! same effect as `snapshot=on`); a PTY or socket chardev for the console (a pipe needs no cleanup and
//! cannot block QEMU when nobody reads, as the reader thread always drains it); QEMU's user network for UDP
//! services (its `guestfwd` is TCP only); a long-lived QMP connection (events would need a reader thread,
//! and one connection per command cannot get out of step).

mod args;
pub mod bench;
mod config;
mod console;
mod error;
mod host;
pub mod netns;
mod qmp;
mod vm;

pub use args::shell_line;
pub use config::{
    Accel, AccelUsed, DEFAULT_KVM_PROBE, DirectKernel, DiskBus, Firmware, FwCfgFile, GuestFwd, HostFwd,
    NetConfig, NetMode, OvmfPaths, Proto, VmConfig,
};
pub use console::{ConsoleLine, LineSplitter, is_os_line};
pub use error::{NetnsError, QemuError, WaitError, WaitFailure};
pub use host::{
    ACCEL_ENV, DEBIAN_OVMF, OVMF_CODE_ENV, OVMF_SECURE_BOOT_CODE, OVMF_SECURE_BOOT_VARS_TEMPLATE,
    OVMF_VARS_ENV, QEMU_BINARY, QEMU_IMG_BINARY, find_ovmf, find_qemu, find_tool, kvm_usable,
};
pub use netns::{NetnsOptions, TestNetns};
pub use qmp::QMP_TIMEOUT;
pub use vm::{Match, Vm};
