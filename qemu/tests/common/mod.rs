//! Test kit for the VM tests: finds QEMU, OVMF, a kernel and busybox, and builds tiny initramfs images.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ingot_qemu::{DirectKernel, Firmware, VmConfig};

/// Upper bound for any single wait in a VM test (TCG on two busy cores).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(180);

/// Root of an unpacked Debian kernel package: `boot/vmlinuz-*` and `lib/modules/<ver>/`.
pub const KERNEL_ROOT_ENV: &str = "INGOT_TEST_KERNEL_ROOT";
pub const DEFAULT_KERNEL_ROOT: &str = "/work/scratch/root";

/// Modules that give the initramfs a virtio disk, in load order.
const VIRTIO_BLK_MODULES: [&str; 6] = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_pci_legacy_dev.ko",
    "drivers/virtio/virtio_pci_modern_dev.ko",
    "drivers/virtio/virtio_pci.ko",
    "drivers/block/virtio_blk.ko",
];

/// Modules for a virtio NIC, in load order (after [`VIRTIO_BLK_MODULES`]).
pub const VIRTIO_NET_MODULES: [&str; 3] = [
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// What the VM tests need from the host.
pub struct Kit {
    pub kernel: PathBuf,
    pub modules: PathBuf,
    pub busybox: PathBuf,
    pub dir: tempfile::TempDir,
}

/// `qemu-system-x86_64` and its Debian package, for [`ingot_testkit::require_tools`].
pub const QEMU: &str = "qemu-system-x86_64";
/// `qemu-img` and its Debian package.
pub const QEMU_IMG: &str = "qemu-img";

/// Returns `None` when something a VM test needs is missing, after [`ingot_testkit::skip`]ping `test` with
/// what it is (a failure under CI).
pub fn kit(test: &str) -> Option<Kit> {
    if !ingot_testkit::require_tools(test, &[QEMU]) {
        return None;
    }
    ingot_testkit::require(test, ingot_qemu::find_ovmf())?;
    ingot_testkit::require(test, try_kit())
}

/// Like [`kit`] for tests that boot only the firmware: needs QEMU and OVMF, returns a scratch directory.
pub fn firmware_kit(test: &str) -> Option<tempfile::TempDir> {
    if !ingot_testkit::require_tools(test, &[QEMU]) {
        return None;
    }
    ingot_testkit::require(test, ingot_qemu::find_ovmf())?;
    Some(tempfile::tempdir().unwrap())
}

/// The kernel, its modules and busybox, or what is missing of them.
fn try_kit() -> Result<Kit, String> {
    let root =
        std::env::var_os(KERNEL_ROOT_ENV).map_or_else(|| PathBuf::from(DEFAULT_KERNEL_ROOT), PathBuf::from);
    let kernel = first_entry(&root.join("boot"), "vmlinuz-").ok_or_else(|| {
        format!(
            "no boot/vmlinuz-* under {} (set {KERNEL_ROOT_ENV} to an unpacked linux-image package)",
            root.display()
        )
    })?;
    let version = kernel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    let modules = root.join("lib/modules").join(&version).join("kernel");
    if !modules.join(VIRTIO_BLK_MODULES[5]).is_file() {
        return Err(format!(
            "virtio_blk.ko not found under {} (set {KERNEL_ROOT_ENV} to an unpacked linux-image package)",
            modules.display()
        ));
    }
    let busybox = PathBuf::from("/bin/busybox");
    if !busybox.is_file() {
        return Err("/bin/busybox not found (apt-get install busybox-static)".into());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    Ok(Kit {
        kernel,
        modules,
        busybox,
        dir,
    })
}

fn first_entry(dir: &Path, prefix: &str) -> Option<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    v.sort();
    v.pop()
}

impl Kit {
    /// Writes an initramfs whose `/init` is `script` (busybox sh, with the applets on PATH, /proc /sys
    /// /dev mounted and the virtio disk driver loaded) and returns its path.
    pub fn initramfs(&self, name: &str, script: &str) -> PathBuf {
        self.initramfs_with(name, &[], script)
    }

    /// [`Kit::initramfs`] that also loads `modules` (paths under the kernel's module tree) before `script`.
    pub fn initramfs_with(&self, name: &str, modules: &[&str], script: &str) -> PathBuf {
        let mut w = Newc::default();
        for d in ["bin", "dev", "proc", "sys", "m"] {
            w.dir(d);
        }
        w.node("dev/console", 0o020600, (5, 1));
        w.file("bin/busybox", 0o100755, &std::fs::read(&self.busybox).unwrap());
        let mut init = String::from(
            "#!/bin/busybox sh\n\
             /bin/busybox --install -s /bin\n\
             export PATH=/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev\n",
        );
        for m in VIRTIO_BLK_MODULES.iter().chain(modules) {
            let base = Path::new(m).file_name().unwrap().to_string_lossy().to_string();
            w.file(
                &format!("m/{base}"),
                0o100644,
                &std::fs::read(self.modules.join(m)).unwrap(),
            );
            init.push_str(&format!("insmod /m/{base}\n"));
        }
        init.push_str(script);
        init.push_str("\npoweroff -f\n");
        w.file("init", 0o100755, init.as_bytes());
        let path = self.dir.path().join(name);
        std::fs::write(&path, w.finish()).unwrap();
        path
    }

    /// A disk image of `mib` MiB with non-zero content, so a stray write would change its hash.
    pub fn image(&self, name: &str, mib: usize) -> PathBuf {
        write_image(self.dir.path(), name, mib)
    }

    /// A TCG VM that boots `initrd` directly through OVMF, with `image` as its disk.
    pub fn direct_config(&self, image: &Path, initrd: &Path) -> VmConfig {
        let mut cfg = VmConfig::new(image);
        cfg.accel = ingot_qemu::Accel::Tcg;
        cfg.memory_mib = 512;
        cfg.exit_on_reboot = true;
        cfg.firmware = Firmware::Ovmf(None);
        cfg.kernel = Some(DirectKernel {
            kernel: self.kernel.clone(),
            initrd: Some(initrd.to_path_buf()),
            cmdline: "console=ttyS0 panic=-1".into(),
        });
        cfg
    }
}

/// Writes a disk image of `mib` MiB with non-zero content (each 4 KiB block starts with its index), so a
/// stray write would change its hash.
pub fn write_image(dir: &Path, name: &str, mib: usize) -> PathBuf {
    let mut data = vec![0u8; mib << 20];
    for (i, chunk) in data.chunks_mut(4096).enumerate() {
        chunk[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// A minimal cpio "newc" writer (what the kernel unpacks as an initramfs).
#[derive(Default)]
struct Newc {
    out: Vec<u8>,
    ino: u32,
}

impl Newc {
    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040755, 2, (0, 0), &[]);
    }
    fn file(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.entry(name, mode, 1, (0, 0), data);
    }
    fn node(&mut self, name: &str, mode: u32, rdev: (u32, u32)) {
        self.entry(name, mode, 1, rdev, &[]);
    }
    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[]);
        self.out
    }
    fn entry(&mut self, name: &str, mode: u32, nlink: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }
    fn pad(&mut self) {
        while self.out.len() & 3 != 0 {
            self.out.push(0);
        }
    }
}
