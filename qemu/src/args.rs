//! The QEMU command line, built as a pure function of resolved inputs so it can be tested without QEMU.

use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use crate::config::{AccelUsed, DirectKernel, DiskBus, NetConfig, NetMode, Proto, VmConfig};
use crate::error::QemuError;

/// Firmware after resolution: OVMF code plus the private vars copy, or legacy BIOS.
pub(crate) enum ResolvedFirmware<'a> {
    Ovmf {
        code: &'a Path,
        vars_copy: &'a Path,
        /// Secure Boot firmware: SMM on, flash writable only from SMM.
        secure_boot: bool,
    },
    LegacyBios,
}

/// How the guest's disk is attached.
pub(crate) enum Disk<'a> {
    /// The image itself (absolute path) with `snapshot=on`: the guest sees exactly the image.
    Snapshot(&'a Path),
    /// A qcow2 overlay made by [`overlay_args`] whose backing file is the image.
    Overlay(&'a Path),
}

/// Everything the command line depends on.
pub(crate) struct Launch<'a> {
    pub cfg: &'a VmConfig,
    pub disk: Disk<'a>,
    pub firmware: ResolvedFirmware<'a>,
    pub accel: AccelUsed,
    /// Where QEMU listens for QMP.
    pub qmp_socket: &'a Path,
}

/// Builds QEMU's arguments (without the program name).
pub(crate) fn qemu_args(l: &Launch<'_>) -> Result<Vec<OsString>, QemuError> {
    let cfg = l.cfg;
    if cfg.memory_mib == 0 || cfg.cpus == 0 {
        return Err(QemuError::InvalidConfig(
            "memory_mib and cpus must be at least 1".into(),
        ));
    }
    let mut a = Args::default();
    a.flag("-nodefaults").flag("-no-user-config");
    let secure_boot = matches!(
        l.firmware,
        ResolvedFirmware::Ovmf {
            secure_boot: true,
            ..
        }
    );
    a.opt("-machine", if secure_boot { "q35,smm=on" } else { "q35" });
    if secure_boot {
        a.opt("-global", "driver=cfi.pflash01,property=secure,value=on");
    }
    match l.accel {
        AccelUsed::Kvm => a.opt("-accel", "kvm").opt("-cpu", "host"),
        AccelUsed::Tcg => a.opt("-accel", "tcg").opt("-cpu", "max"),
    };
    a.opt("-m", format!("{}M", cfg.memory_mib))
        .opt("-smp", cfg.cpus.to_string());
    // The serial port is the only console: no window, no human monitor (which could commit the disk
    // overlay). QMP is there for power-button presses and status queries; `wait=off` lets QEMU start without
    // a client.
    a.opt("-display", "none")
        .opt("-monitor", "none")
        .opt("-serial", "stdio");
    a.opt_os("-qmp", kv("unix:", l.qmp_socket, ",server=on,wait=off"));
    if let ResolvedFirmware::Ovmf { code, vars_copy, .. } = l.firmware {
        a.opt_os(
            "-drive",
            kv("if=pflash,format=raw,unit=0,readonly=on,file=", code, ""),
        );
        a.opt_os("-drive", kv("if=pflash,format=raw,unit=1,file=", vars_copy, ""));
    }
    match l.disk {
        // snapshot=on: QEMU opens the image read-only and sends writes to a temporary qcow2 overlay in $TMPDIR
        // (our scratch directory), deleted when QEMU exits.
        Disk::Snapshot(image) => a.opt_os(
            "-drive",
            kv("if=none,id=disk0,format=raw,snapshot=on,file=", image, ""),
        ),
        // QEMU opens an overlay's backing file read-only.
        Disk::Overlay(overlay) => a.opt_os("-drive", kv("if=none,id=disk0,format=qcow2,file=", overlay, "")),
    };
    match cfg.disk_bus {
        DiskBus::Virtio => a.opt("-device", "virtio-blk-pci,drive=disk0"),
        // A USB 3 controller with the disk as a removable bulk-only mass-storage device on its first port, as
        // a USB stick is. OVMF drives xHCI and USB mass storage itself, so it boots from it like from virtio.
        DiskBus::Usb => a
            .opt("-device", "qemu-xhci,id=xhci")
            .opt("-device", "usb-storage,bus=xhci.0,drive=disk0,removable=on"),
    };
    if cfg.net.enabled {
        a.opt("-netdev", netdev(&cfg.net)?);
        // romfile= drops iPXE: the guest boots from its disk, never from the network.
        a.opt("-device", "virtio-net-pci,netdev=net0,romfile=");
    }
    if let Some(DirectKernel {
        kernel,
        initrd,
        cmdline,
    }) = &cfg.kernel
    {
        a.opt_os("-kernel", kernel.as_os_str().to_owned());
        if let Some(initrd) = initrd {
            a.opt_os("-initrd", initrd.as_os_str().to_owned());
        }
        a.opt("-append", cmdline.clone());
    }
    for f in &cfg.fw_cfg {
        if !f.name.starts_with("opt/") || f.name.contains(',') {
            return Err(QemuError::InvalidConfig(format!(
                "fw_cfg name {:?} must start with opt/ and contain no comma",
                f.name
            )));
        }
        a.opt_os("-fw_cfg", kv(&format!("name={},file=", f.name), &f.path, ""));
    }
    for s in &cfg.smbios_oem_strings {
        a.opt("-smbios", format!("type=11,value={}", s.replace(',', ",,")));
    }
    if cfg.exit_on_reboot {
        a.flag("-no-reboot");
    }
    for x in &cfg.extra_args {
        a.0.push(x.into());
    }
    Ok(a.0)
}

/// The per-connection forwarder `guestfwd` runs (Debian package `socat`).
const SOCAT: &str = "socat";

fn netdev(net: &NetConfig) -> Result<String, QemuError> {
    if let NetMode::Tap { ifname } = &net.mode {
        if !net.hostfwd.is_empty() || !net.guestfwd.is_empty() {
            return Err(QemuError::InvalidConfig(
                "hostfwd and guestfwd need the user network, not a tap device".into(),
            ));
        }
        check_ifname(ifname)?;
        return Ok(format!("tap,id=net0,ifname={ifname},script=no,downscript=no"));
    }
    let mut s = String::from("user,id=net0,restrict=on");
    for f in &net.hostfwd {
        if f.host_port == 0 || f.guest_port == 0 {
            return Err(QemuError::InvalidConfig("hostfwd ports must not be 0".into()));
        }
        let proto = match f.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        s.push_str(&format!(
            ",hostfwd={proto}:{}:{}-:{}",
            f.host_addr, f.host_port, f.guest_port
        ));
    }
    for f in &net.guestfwd {
        if !in_user_net(f.guest_addr) {
            return Err(QemuError::InvalidConfig(format!(
                "guestfwd address {} is outside the guest network 10.0.2.0/24",
                f.guest_addr
            )));
        }
        // `cmd:` runs one forwarder per guest connection; a `tcp:` target would be a single chardev
        // connection, opened when QEMU starts and shared by every connection the guest makes.
        s.push_str(&format!(
            ",guestfwd=tcp:{}:{}-cmd:{SOCAT} STDIO TCP4:{}",
            f.guest_addr, f.guest_port, f.target
        ));
    }
    Ok(s)
}

/// A Linux interface name: 1 to 15 bytes, no `/`, `:`, `,`, whitespace or control characters.
fn check_ifname(name: &str) -> Result<(), QemuError> {
    let ok = (1..=15).contains(&name.len())
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && !b"/:,".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(QemuError::InvalidConfig(format!(
            "tap interface name {name:?} must be 1 to 15 printable characters without / : or ,"
        )))
    }
}

/// A network namespace name `ip netns` accepts: not empty, no `/`, not `.` or `..`, no whitespace.
pub(crate) fn check_netns_name(name: &str) -> Result<(), QemuError> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    if ok {
        Ok(())
    } else {
        Err(QemuError::InvalidConfig(format!(
            "network namespace name {name:?} must be printable, without / or spaces, and not . or .."
        )))
    }
}

/// `qemu-img`'s arguments for a qcow2 overlay of virtual size `size` bytes on the raw `image` (absolute).
pub(crate) fn overlay_args(image: &Path, overlay: &Path, size: u64) -> Vec<OsString> {
    let mut v: Vec<OsString> = ["create", "-q", "-f", "qcow2", "-F", "raw", "-b"]
        .map(OsString::from)
        .to_vec();
    v.push(image.into());
    v.push(overlay.into());
    v.push(size.to_string().into());
    v
}

/// The program and arguments that run `program args` inside the network namespace `netns` through
/// `ip netns exec` (which execs it: the process id stays the same). Without a namespace, `program args`.
pub(crate) fn wrap_netns(
    ip: Option<&Path>,
    netns: Option<&str>,
    program: &Path,
    args: Vec<OsString>,
) -> (std::path::PathBuf, Vec<OsString>) {
    match (ip, netns) {
        (Some(ip), Some(ns)) => {
            let mut v: Vec<OsString> = vec!["netns".into(), "exec".into(), ns.into(), program.into()];
            v.extend(args);
            (ip.to_path_buf(), v)
        }
        _ => (program.to_path_buf(), args),
    }
}

fn in_user_net(a: Ipv4Addr) -> bool {
    let [x, y, z, _] = a.octets();
    (x, y, z) == (10, 0, 2)
}

/// `prefix` + path with QEMU's option escaping (`,` doubled) + `suffix`.
fn kv(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut out = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(out)
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn flag(&mut self, f: &str) -> &mut Self {
        self.0.push(f.into());
        self
    }
    fn opt(&mut self, k: &str, v: impl Into<String>) -> &mut Self {
        self.0.push(k.into());
        self.0.push(v.into().into());
        self
    }
    fn opt_os(&mut self, k: &str, v: OsString) -> &mut Self {
        self.0.push(k.into());
        self.0.push(v);
        self
    }
}

/// Renders arguments as one shell-quoted line, for logs and error messages.
pub fn shell_line(program: &Path, args: &[OsString]) -> String {
    std::iter::once(program.as_os_str())
        .chain(args.iter().map(OsString::as_os_str))
        .map(quote)
        .collect::<Vec<_>>()
        .join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b",._+-:=/@%".contains(&b));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FwCfgFile, GuestFwd, HostFwd};
    use std::net::SocketAddrV4;
    use std::path::PathBuf;

    fn strings(v: &[OsString]) -> Vec<String> {
        v.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn launch_args(cfg: &VmConfig, accel: AccelUsed) -> Vec<String> {
        ovmf_args(cfg, accel, false)
    }

    fn ovmf_args(cfg: &VmConfig, accel: AccelUsed, secure_boot: bool) -> Vec<String> {
        ovmf_disk_args(
            cfg,
            accel,
            secure_boot,
            Disk::Snapshot(Path::new("/img/worker.raw")),
        )
    }

    fn ovmf_disk_args(cfg: &VmConfig, accel: AccelUsed, secure_boot: bool, disk: Disk<'_>) -> Vec<String> {
        let l = Launch {
            cfg,
            disk,
            firmware: ResolvedFirmware::Ovmf {
                code: Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"),
                vars_copy: Path::new("/tmp/s/OVMF_VARS.fd"),
                secure_boot,
            },
            accel,
            qmp_socket: Path::new("/tmp/s/qmp.sock"),
        };
        strings(&qemu_args(&l).unwrap())
    }

    /// Arguments for `cfg` under TCG with legacy BIOS, or the error.
    fn bios_args(cfg: &VmConfig, disk: Disk<'_>) -> Result<Vec<String>, QemuError> {
        qemu_args(&Launch {
            cfg,
            disk,
            firmware: ResolvedFirmware::LegacyBios,
            accel: AccelUsed::Tcg,
            qmp_socket: Path::new("/s/qmp.sock"),
        })
        .map(|a| strings(&a))
    }

    #[test]
    fn secure_boot_firmware_gets_smm_and_secure_flash() {
        let cfg = VmConfig::new("worker.raw");
        let line = ovmf_args(&cfg, AccelUsed::Tcg, true).join(" ");
        assert!(
            line.starts_with(
                "-nodefaults -no-user-config -machine q35,smm=on \
                 -global driver=cfi.pflash01,property=secure,value=on -accel tcg"
            ),
            "{line}"
        );
        assert!(!launch_args(&cfg, AccelUsed::Tcg).join(" ").contains("smm"));
    }

    #[test]
    fn default_command_line() {
        let cfg = VmConfig::new("worker.raw");
        let line = launch_args(&cfg, AccelUsed::Tcg).join(" ");
        assert_eq!(
            line,
            "-nodefaults -no-user-config -machine q35 -accel tcg -cpu max -m 1024M -smp 2 \
             -display none -monitor none -serial stdio \
             -qmp unix:/tmp/s/qmp.sock,server=on,wait=off \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/tmp/s/OVMF_VARS.fd \
             -drive if=none,id=disk0,format=raw,snapshot=on,file=/img/worker.raw \
             -device virtio-blk-pci,drive=disk0 \
             -netdev user,id=net0,restrict=on -device virtio-net-pci,netdev=net0,romfile="
        );
    }

    #[test]
    fn usb_bus_attaches_the_disk_as_a_usb_stick_on_xhci() {
        let mut cfg = VmConfig::new("worker.raw");
        cfg.disk_bus = DiskBus::Usb;
        let line = launch_args(&cfg, AccelUsed::Tcg).join(" ");
        assert_eq!(
            line,
            "-nodefaults -no-user-config -machine q35 -accel tcg -cpu max -m 1024M -smp 2 \
             -display none -monitor none -serial stdio \
             -qmp unix:/tmp/s/qmp.sock,server=on,wait=off \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/tmp/s/OVMF_VARS.fd \
             -drive if=none,id=disk0,format=raw,snapshot=on,file=/img/worker.raw \
             -device qemu-xhci,id=xhci -device usb-storage,bus=xhci.0,drive=disk0,removable=on \
             -netdev user,id=net0,restrict=on -device virtio-net-pci,netdev=net0,romfile="
        );
    }

    #[test]
    fn usb_bus_takes_the_overlay_and_secure_boot_firmware() {
        let mut cfg = VmConfig::new("worker.raw");
        cfg.disk_bus = DiskBus::Usb;
        for secure_boot in [false, true] {
            for (disk, drive) in [
                (
                    Disk::Overlay(Path::new("/s/disk.qcow2")),
                    "if=none,id=disk0,format=qcow2,file=/s/disk.qcow2",
                ),
                (
                    Disk::Snapshot(Path::new("/img/worker.raw")),
                    "if=none,id=disk0,format=raw,snapshot=on,file=/img/worker.raw",
                ),
            ] {
                let a = ovmf_disk_args(&cfg, AccelUsed::Kvm, secure_boot, disk);
                let devices: Vec<&str> = a
                    .windows(2)
                    .filter(|w| w[0] == "-device")
                    .map(|w| w[1].as_str())
                    .collect();
                assert_eq!(
                    devices,
                    [
                        "qemu-xhci,id=xhci",
                        "usb-storage,bus=xhci.0,drive=disk0,removable=on",
                        "virtio-net-pci,netdev=net0,romfile="
                    ],
                    "{a:?}"
                );
                let drives: Vec<&String> = a.iter().filter(|x| x.contains("id=disk0")).collect();
                assert_eq!(drives, [drive], "{a:?}");
                assert_eq!(
                    a.iter().any(|x| x == "q35,smm=on"),
                    secure_boot,
                    "Secure Boot firmware keeps its SMM machine: {a:?}"
                );
            }
        }
    }

    #[test]
    fn kvm_uses_host_cpu() {
        let cfg = VmConfig::new("x");
        let a = launch_args(&cfg, AccelUsed::Kvm).join(" ");
        assert!(a.contains("-accel kvm -cpu host"), "{a}");
    }

    #[test]
    fn forwards_kernel_and_extras() {
        let mut cfg = VmConfig::new("x");
        cfg.net.hostfwd.push(HostFwd::tcp(2222, 22));
        cfg.net.hostfwd.push(HostFwd {
            proto: Proto::Udp,
            host_addr: Ipv4Addr::new(127, 0, 0, 2),
            host_port: 5353,
            guest_port: 53,
        });
        cfg.net.guestfwd.push(GuestFwd {
            guest_addr: Ipv4Addr::new(10, 0, 2, 100),
            guest_port: 6443,
            target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 16443),
        });
        cfg.kernel = Some(DirectKernel {
            kernel: "/k/vmlinuz".into(),
            initrd: Some("/k/initrd".into()),
            cmdline: "console=ttyS0 panic=-1".into(),
        });
        cfg.fw_cfg.push(FwCfgFile {
            name: "opt/io.ingot/node.toml".into(),
            path: "/n,ode.toml".into(),
        });
        cfg.smbios_oem_strings.push("io.ingot.node=a,b".into());
        cfg.exit_on_reboot = true;
        cfg.extra_args = vec!["-d".into(), "guest_errors".into()];
        let a = launch_args(&cfg, AccelUsed::Tcg);
        let pos = |s: &str| {
            a.iter()
                .position(|x| x == s)
                .unwrap_or_else(|| panic!("{s} missing in {a:?}"))
        };
        assert_eq!(
            a[pos("-netdev") + 1],
            "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:2222-:22,hostfwd=udp:127.0.0.2:5353-:53,\
             guestfwd=tcp:10.0.2.100:6443-cmd:socat STDIO TCP4:127.0.0.1:16443"
        );
        assert_eq!(a[pos("-kernel") + 1], "/k/vmlinuz");
        assert_eq!(a[pos("-initrd") + 1], "/k/initrd");
        assert_eq!(a[pos("-append") + 1], "console=ttyS0 panic=-1");
        assert_eq!(
            a[pos("-fw_cfg") + 1],
            "name=opt/io.ingot/node.toml,file=/n,,ode.toml"
        );
        assert_eq!(a[pos("-smbios") + 1], "type=11,value=io.ingot.node=a,,b");
        assert!(a.contains(&"-no-reboot".to_string()));
        assert_eq!(&a[a.len() - 2..], ["-d", "guest_errors"]);
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let cfg = VmConfig::new("x");
        let l = Launch {
            cfg: &cfg,
            disk: Disk::Snapshot(Path::new("/a,b/img.raw")),
            firmware: ResolvedFirmware::LegacyBios,
            accel: AccelUsed::Tcg,
            qmp_socket: Path::new("/t,mp/qmp.sock"),
        };
        let a = strings(&qemu_args(&l).unwrap());
        assert!(a.contains(&"if=none,id=disk0,format=raw,snapshot=on,file=/a,,b/img.raw".to_string()));
        assert!(a.contains(&"unix:/t,,mp/qmp.sock,server=on,wait=off".to_string()));
        assert!(
            !a.iter().any(|x| x.contains("pflash")),
            "legacy BIOS has no pflash: {a:?}"
        );
    }

    #[test]
    fn no_network_means_no_nic() {
        let mut cfg = VmConfig::new("x");
        cfg.net.enabled = false;
        let a = launch_args(&cfg, AccelUsed::Tcg);
        assert!(!a.iter().any(|x| x.contains("net")), "{a:?}");
    }

    #[test]
    fn invalid_values_are_rejected() {
        let mut cfg = VmConfig::new("x");
        cfg.net.guestfwd.push(GuestFwd {
            guest_addr: Ipv4Addr::new(192, 168, 1, 1),
            guest_port: 1,
            target: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1),
        });
        let l = |cfg: &VmConfig| bios_args(cfg, Disk::Snapshot(Path::new("/x"))).map(drop);
        assert!(l(&cfg).unwrap_err().to_string().contains("10.0.2.0/24"));
        let mut cfg = VmConfig::new("x");
        cfg.fw_cfg.push(FwCfgFile {
            name: "etc/x".into(),
            path: PathBuf::from("/x"),
        });
        assert!(l(&cfg).unwrap_err().to_string().contains("opt/"));
        let mut cfg = VmConfig::new("x");
        cfg.memory_mib = 0;
        assert!(l(&cfg).is_err());
    }

    #[test]
    fn disk_size_attaches_the_overlay_instead_of_the_image() {
        let cfg = VmConfig::new("x");
        let a = bios_args(&cfg, Disk::Overlay(Path::new("/s/disk.qcow2"))).unwrap();
        let drives: Vec<&String> = a.iter().filter(|x| x.contains("id=disk0")).collect();
        assert_eq!(drives, ["if=none,id=disk0,format=qcow2,file=/s/disk.qcow2"]);
        assert!(!a.iter().any(|x| x.contains("snapshot")), "{a:?}");

        let o = strings(&overlay_args(
            Path::new("/img/worker.raw"),
            Path::new("/s/disk.qcow2"),
            4 << 30,
        ));
        assert_eq!(
            o.join(" "),
            "create -q -f qcow2 -F raw -b /img/worker.raw /s/disk.qcow2 4294967296"
        );
    }

    #[test]
    fn tap_network() {
        let mut cfg = VmConfig::new("x");
        cfg.net = NetConfig::tap("tap0");
        let a = bios_args(&cfg, Disk::Snapshot(Path::new("/x"))).unwrap();
        let i = a.iter().position(|x| x == "-netdev").unwrap();
        assert_eq!(a[i + 1], "tap,id=net0,ifname=tap0,script=no,downscript=no");
        assert_eq!(a[i + 3], "virtio-net-pci,netdev=net0,romfile=");

        cfg.net.hostfwd.push(HostFwd::tcp(2222, 22));
        let err = bios_args(&cfg, Disk::Snapshot(Path::new("/x"))).unwrap_err();
        assert!(err.to_string().contains("user network"), "{err}");

        for bad in ["", "a,b", "a/b", "tap 0", "sixteen-chars-xx", ".."] {
            let mut cfg = VmConfig::new("x");
            cfg.net = NetConfig::tap(bad);
            let err = bios_args(&cfg, Disk::Snapshot(Path::new("/x"))).unwrap_err();
            assert!(err.to_string().contains("tap interface name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn netns_wraps_qemu_in_ip_netns_exec() {
        let qemu = Path::new("/usr/bin/qemu-system-x86_64");
        let args: Vec<OsString> = vec!["-m".into(), "512M".into()];
        let (p, a) = wrap_netns(Some(Path::new("/usr/sbin/ip")), Some("t-1"), qemu, args.clone());
        assert_eq!(
            shell_line(&p, &a),
            "/usr/sbin/ip netns exec t-1 /usr/bin/qemu-system-x86_64 -m 512M"
        );
        let (p, a) = wrap_netns(None, None, qemu, args.clone());
        assert_eq!((p.as_path(), a), (qemu, args));

        assert!(check_netns_name("ingot-test-12-0").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(check_netns_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shell_line_quotes_only_when_needed() {
        let args: Vec<OsString> = vec!["-append".into(), "console=ttyS0 quiet".into(), "it's".into()];
        assert_eq!(
            shell_line(Path::new("/usr/bin/qemu-system-x86_64"), &args),
            r"/usr/bin/qemu-system-x86_64 -append 'console=ttyS0 quiet' 'it'\''s'"
        );
    }
}
