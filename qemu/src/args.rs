//! The QEMU command line, built as a pure function of resolved inputs so it can be tested without QEMU.

use std::ffi::{OsStr, OsString};
use std::net::Ipv4Addr;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use crate::config::{AccelUsed, DirectKernel, NetConfig, Proto, VmConfig};
use crate::error::QemuError;

/// Firmware after resolution: OVMF code plus the private vars copy, or legacy BIOS.
pub(crate) enum ResolvedFirmware<'a> {
    Ovmf { code: &'a Path, vars_copy: &'a Path },
    LegacyBios,
}

/// Everything the command line depends on.
pub(crate) struct Launch<'a> {
    pub cfg: &'a VmConfig,
    /// Absolute path of the image.
    pub image: &'a Path,
    pub firmware: ResolvedFirmware<'a>,
    pub accel: AccelUsed,
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
    a.opt("-machine", "q35");
    match l.accel {
        AccelUsed::Kvm => a.opt("-accel", "kvm").opt("-cpu", "host"),
        AccelUsed::Tcg => a.opt("-accel", "tcg").opt("-cpu", "max"),
    };
    a.opt("-m", format!("{}M", cfg.memory_mib))
        .opt("-smp", cfg.cpus.to_string());
    // The serial port is the only console: no window, no monitor (which could commit the disk overlay).
    a.opt("-display", "none")
        .opt("-monitor", "none")
        .opt("-serial", "stdio");
    if let ResolvedFirmware::Ovmf { code, vars_copy } = l.firmware {
        a.opt_os(
            "-drive",
            kv("if=pflash,format=raw,unit=0,readonly=on,file=", code, ""),
        );
        a.opt_os("-drive", kv("if=pflash,format=raw,unit=1,file=", vars_copy, ""));
    }
    // snapshot=on: QEMU opens the image read-only and sends writes to a temporary qcow2 overlay in $TMPDIR
    // (our scratch directory), deleted when QEMU exits.
    a.opt_os(
        "-drive",
        kv("if=none,id=disk0,format=raw,snapshot=on,file=", l.image, ""),
    );
    a.opt("-device", "virtio-blk-pci,drive=disk0");
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

fn netdev(net: &NetConfig) -> Result<String, QemuError> {
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
        s.push_str(&format!(
            ",guestfwd=tcp:{}:{}-tcp:{}",
            f.guest_addr, f.guest_port, f.target
        ));
    }
    Ok(s)
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
        let l = Launch {
            cfg,
            image: Path::new("/img/worker.raw"),
            firmware: ResolvedFirmware::Ovmf {
                code: Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"),
                vars_copy: Path::new("/tmp/s/OVMF_VARS.fd"),
            },
            accel,
        };
        strings(&qemu_args(&l).unwrap())
    }

    #[test]
    fn default_command_line() {
        let cfg = VmConfig::new("worker.raw");
        let line = launch_args(&cfg, AccelUsed::Tcg).join(" ");
        assert_eq!(
            line,
            "-nodefaults -no-user-config -machine q35 -accel tcg -cpu max -m 1024M -smp 2 \
             -display none -monitor none -serial stdio \
             -drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd \
             -drive if=pflash,format=raw,unit=1,file=/tmp/s/OVMF_VARS.fd \
             -drive if=none,id=disk0,format=raw,snapshot=on,file=/img/worker.raw \
             -device virtio-blk-pci,drive=disk0 \
             -netdev user,id=net0,restrict=on -device virtio-net-pci,netdev=net0,romfile="
        );
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
             guestfwd=tcp:10.0.2.100:6443-tcp:127.0.0.1:16443"
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
            image: Path::new("/a,b/img.raw"),
            firmware: ResolvedFirmware::LegacyBios,
            accel: AccelUsed::Tcg,
        };
        let a = strings(&qemu_args(&l).unwrap());
        assert!(a.contains(&"if=none,id=disk0,format=raw,snapshot=on,file=/a,,b/img.raw".to_string()));
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
        let l = |cfg: &VmConfig| {
            qemu_args(&Launch {
                cfg,
                image: Path::new("/x"),
                firmware: ResolvedFirmware::LegacyBios,
                accel: AccelUsed::Tcg,
            })
            .map(drop)
        };
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
    fn shell_line_quotes_only_when_needed() {
        let args: Vec<OsString> = vec!["-append".into(), "console=ttyS0 quiet".into(), "it's".into()];
        assert_eq!(
            shell_line(Path::new("/usr/bin/qemu-system-x86_64"), &args),
            r"/usr/bin/qemu-system-x86_64 -append 'console=ttyS0 quiet' 'it'\''s'"
        );
    }
}
