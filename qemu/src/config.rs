//! What to boot and how: the plain data a caller fills in before [`Vm::start`](crate::Vm::start).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

/// Default time KVM gets to show a kernel or `ingot-init` line before [`Accel::Auto`] falls back to TCG.
pub const DEFAULT_KVM_PROBE: Duration = Duration::from_secs(30);

/// Everything needed to launch one VM. Build it with [`VmConfig::new`] and adjust the public fields.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// Raw disk image attached as the guest's disk (on [`VmConfig::disk_bus`]). It is opened read-only by QEMU:
    /// the guest's writes go to a throw-away overlay and are lost when QEMU exits.
    pub image: PathBuf,
    /// How the disk is attached: a virtio disk (the default) or a USB stick.
    pub disk_bus: DiskBus,
    /// Size of the guest's disk in bytes (a multiple of 512, at least the image's size). `None` gives the guest
    /// exactly the image, with a `snapshot=on` overlay. `Some` creates a qcow2 overlay of this virtual size in
    /// the scratch directory with the image as its read-only backing file (needs `qemu-img`); the guest sees
    /// the image followed by zeros up to this size.
    pub disk_size: Option<u64>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Which accelerator to use; the environment variable `INGOT_QEMU_ACCEL` overrides it.
    pub accel: Accel,
    /// How long [`Accel::Auto`] waits under KVM for a kernel or `ingot-init` line before retrying under TCG.
    pub kvm_probe: Duration,
    /// Firmware to boot with.
    pub firmware: Firmware,
    /// Kernel, initrd and command line handed to the firmware directly instead of booting from the disk.
    /// Meant for tests and benchmarks of the launcher itself.
    pub kernel: Option<DirectKernel>,
    /// The guest's network.
    pub net: NetConfig,
    /// Run QEMU inside this existing network namespace (`ip netns exec NAME qemu-system-x86_64 …`; `ip`
    /// execs QEMU, so [`Vm::pid`](crate::Vm::pid) is QEMU's). Needs root. Combine with [`NetMode::Tap`] to
    /// give the guest a tap device in that namespace; see [`TestNetns`](crate::TestNetns).
    pub netns: Option<String>,
    /// Files exposed through QEMU's fw_cfg device, e.g. `opt/io.ingot/node.toml`.
    pub fw_cfg: Vec<FwCfgFile>,
    /// SMBIOS type 11 OEM strings, e.g. `io.ingot.node=<base64>`.
    pub smbios_oem_strings: Vec<String>,
    /// Make QEMU exit instead of resetting when the guest reboots (`-no-reboot`). Tests want this so a kernel
    /// panic with `panic=-1` ends the run instead of looping.
    ///
    /// When `false`, a guest reboot resets the machine inside the same QEMU process: the disk keeps the
    /// guest's writes (the same overlay, `snapshot=on` or [`VmConfig::disk_size`]), the firmware keeps its
    /// variables, the console keeps flowing into the same line buffer, and [`Vm::wait_for`](crate::Vm::wait_for)
    /// matches lines of the next boot as it matches any later line. [`Vm::pid`](crate::Vm::pid) stays the
    /// same; [`Vm::first_os_line_at`](crate::Vm::first_os_line_at) stays the first boot's.
    pub exit_on_reboot: bool,
    /// Arguments appended verbatim after the ones this crate builds.
    pub extra_args: Vec<String>,
    /// Append every console line (escape sequences removed) to this file.
    pub serial_log: Option<PathBuf>,
    /// Copy every console line to our stdout as it arrives.
    pub echo: bool,
}

impl VmConfig {
    /// A VM for `image` with 1 GiB of memory, 2 CPUs, automatic acceleration, OVMF from the usual places and a
    /// network that reaches nothing.
    pub fn new(image: impl Into<PathBuf>) -> Self {
        VmConfig {
            image: image.into(),
            disk_bus: DiskBus::Virtio,
            disk_size: None,
            memory_mib: 1024,
            cpus: 2,
            accel: Accel::Auto,
            kvm_probe: DEFAULT_KVM_PROBE,
            firmware: Firmware::Ovmf(None),
            kernel: None,
            net: NetConfig::default(),
            netns: None,
            fw_cfg: Vec::new(),
            smbios_oem_strings: Vec::new(),
            exit_on_reboot: false,
            extra_args: Vec::new(),
            serial_log: None,
            echo: false,
        }
    }
}

/// The bus the guest's disk is attached to. Both work with either disk ([`VmConfig::disk_size`] or not) and
/// with either OVMF; the firmware boots from whichever it finds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DiskBus {
    /// A virtio block device (`virtio-blk-pci`): the guest sees `/dev/vda`.
    #[default]
    Virtio,
    /// A removable USB mass-storage device (`usb-storage`, bulk-only transport) on a USB 3 xHCI controller
    /// (`qemu-xhci`), as a node booting from a USB stick has it: the guest needs its xHCI, USB storage and SCSI
    /// disk drivers and sees `/dev/sda`, which appears only after USB enumeration.
    Usb,
}

impl std::fmt::Display for DiskBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Usb => "usb",
        })
    }
}

/// Which accelerator QEMU should use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Accel {
    /// KVM when `/dev/kvm` is usable and the guest makes progress under it within the probe window; TCG
    /// otherwise.
    #[default]
    Auto,
    /// KVM only; starting fails when `/dev/kvm` cannot be opened.
    Kvm,
    /// Software emulation only (slow but works everywhere).
    Tcg,
}

impl Accel {
    /// Parses `auto`, `kvm` or `tcg` (the values of `INGOT_QEMU_ACCEL`).
    pub fn parse(s: &str) -> Option<Accel> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Accel::Auto),
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        }
    }
}

/// The accelerator a running VM actually uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelUsed {
    Kvm,
    Tcg,
}

impl std::fmt::Display for AccelUsed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AccelUsed::Kvm => "kvm",
            AccelUsed::Tcg => "tcg",
        })
    }
}

/// Firmware the VM boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// UEFI from OVMF. `None` finds it: `INGOT_OVMF_CODE`/`INGOT_OVMF_VARS`, then Debian's 4M pair, then the
    /// 2M pair.
    Ovmf(Option<OvmfPaths>),
    /// UEFI from an OVMF built with Secure Boot and SMM (Debian's [`OVMF_SECURE_BOOT_CODE`]) and a
    /// variable store whose keys are enrolled; the machine gets SMM (`-machine q35,smm=on`) and flash that
    /// only SMM may write (`-global driver=cfi.pflash01,property=secure,value=on`), so the guest cannot
    /// change the keys behind the firmware's back.
    ///
    /// [`OVMF_SECURE_BOOT_CODE`]: crate::OVMF_SECURE_BOOT_CODE
    OvmfSecureBoot(OvmfPaths),
    /// QEMU's default legacy BIOS. Only useful with [`DirectKernel`], to measure the launcher without UEFI:
    /// ingot images boot under UEFI only.
    LegacyBios,
}

/// An OVMF code image and the variable store template that belongs to it (both must be the same size).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OvmfPaths {
    /// Firmware code, attached read-only.
    pub code: PathBuf,
    /// Variable store template; each run gets a private copy, the template is never written.
    pub vars: PathBuf,
}

/// A kernel booted directly by the firmware (QEMU's `-kernel`/`-initrd`/`-append`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectKernel {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
}

/// The guest's virtio NIC and what it is connected to. By default QEMU's user-mode network with
/// `restrict=on`: the guest reaches no address at all except through the forwards listed here, on
/// 10.0.2.0/24 with DHCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Attach a NIC at all.
    pub enabled: bool,
    /// What the NIC is connected to.
    pub mode: NetMode,
    /// Host ports forwarded into the guest ([`NetMode::User`] only).
    pub hostfwd: Vec<HostFwd>,
    /// Guest addresses forwarded to host TCP endpoints ([`NetMode::User`] only).
    pub guestfwd: Vec<GuestFwd>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            enabled: true,
            mode: NetMode::User,
            hostfwd: Vec::new(),
            guestfwd: Vec::new(),
        }
    }
}

impl NetConfig {
    /// A NIC on the existing tap device `ifname`, without forwards.
    pub fn tap(ifname: impl Into<String>) -> Self {
        NetConfig {
            mode: NetMode::Tap {
                ifname: ifname.into(),
            },
            ..NetConfig::default()
        }
    }
}

/// The back end of the guest's NIC.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetMode {
    /// QEMU's user-mode network with `restrict=on` (`-netdev user`). It forwards TCP only: a `guestfwd` carries
    /// no UDP, so a guest that needs a host's UDP service (DHCP, NTP, DNS) needs [`NetMode::Tap`].
    #[default]
    User,
    /// An existing tap device (`-netdev tap,ifname=IFNAME,script=no,downscript=no`), usually created in a
    /// network namespace together with [`VmConfig::netns`]: the guest then reaches exactly the addresses
    /// inside that namespace, and nothing configures its address for it (no DHCP unless one runs there).
    Tap { ifname: String },
}

/// Transport of a host forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

/// Forward `host_addr:host_port` on the host to `guest_port` in the guest (`hostfwd=`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFwd {
    pub proto: Proto,
    /// Host address to listen on; keep it on loopback unless the port must be reachable from elsewhere.
    pub host_addr: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
}

impl HostFwd {
    /// A TCP forward from `127.0.0.1:host_port` to the guest's `guest_port`.
    pub fn tcp(host_port: u16, guest_port: u16) -> Self {
        HostFwd {
            proto: Proto::Tcp,
            host_addr: Ipv4Addr::LOCALHOST,
            host_port,
            guest_port,
        }
    }
}

/// Make `guest_addr:guest_port` (an address inside 10.0.2.0/24 that the guest connects to) lead to the host
/// TCP endpoint `target`. Each connection the guest opens gets its own connection to `target`, made when the
/// guest connects (`guestfwd=tcp:ADDR:PORT-cmd:socat STDIO TCP4:TARGET`), so `socat` must be installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestFwd {
    pub guest_addr: Ipv4Addr,
    pub guest_port: u16,
    pub target: SocketAddrV4,
}

/// A file exposed to the guest through fw_cfg (`-fw_cfg name=NAME,file=PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FwCfgFile {
    /// Item name; user items must start with `opt/`, e.g. `opt/io.ingot/node.toml`.
    pub name: String,
    pub path: PathBuf,
}
