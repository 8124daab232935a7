//! A flashed disk boots: `ingot flash` writes the signed minimal image onto a used disk 1 GiB larger than
//! the image (a loop device when running as root, else a file with `--to-file`), and QEMU (TCG) boots that
//! disk, as a virtio disk and as a USB stick, to `phase=ready` with `var` grown into the extra space. The disk's old bytes are a pattern, so a
//! range flash forgot to write would show. Names start with `vm_`: they run in the nextest `vm` profile.

mod common;

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use ingot_qemu::{Accel, DiskBus, Vm, VmConfig};

const BOOT: Duration = Duration::from_secs(300);
const EXTRA: u64 = 1 << 30;

/// A used disk: a sparse file with a non-zero pattern over the places an image lands (its head, every
/// partition's start, the middle of var, the end).
fn used_disk(path: &Path, size: u64, image_size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let junk: Vec<u8> = (0..8u32 << 20).map(|i| (i % 253) as u8 | 0x80).collect();
    let mut at = 0;
    while at < image_size {
        f.write_all_at(&junk, at).unwrap();
        at += 64 << 20;
    }
    f.write_all_at(&junk, size - junk.len() as u64).unwrap();
    f.sync_all().unwrap();
}

/// Flashes `image` onto the disk file `disk`, through a loop device when possible.
fn flash(image: &Path, public: &Path, state: &Path, disk: &Path) {
    let losetup = ingot_testkit::find_program("losetup").filter(|_| rustix::process::geteuid().is_root());
    let dev = losetup.as_ref().map(|losetup| {
        let o = Command::new(losetup)
            .args(["--find", "--show"])
            .arg(disk)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        PathBuf::from(String::from_utf8_lossy(&o.stdout).trim())
    });
    let mut c = ingot();
    c.arg("flash").arg(image).arg(dev.as_deref().unwrap_or(disk));
    c.arg("--key").arg(public).arg("--state").arg(state);
    if dev.is_none() {
        eprintln!("not root: flashing into the file with --to-file instead of a loop device");
        c.arg("--to-file");
    }
    let o = run(&mut c);
    if let (Some(losetup), Some(dev)) = (&losetup, &dev) {
        let _ = Command::new(losetup).arg("-d").arg(dev).status();
    }
    assert!(o.status.success(), "flash failed:\n{}", stderr(&o));
}

#[test]
fn vm_flashed_disk_boots_and_grows_var() {
    if !ingot_testkit::require_tools("vm_flashed_disk_boots_and_grows_var", &[QEMU]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = run(ingot().arg("keygen").arg("--out").arg(dir.path().join("site")));
    assert!(o.status.success(), "{}", stderr(&o));
    let key = dir.path().join("site.key");
    let image = build_minimal_with(&dir.path().join("out"), &["--sign-key", key.to_str().unwrap()]);
    let image_size = std::fs::metadata(&image).unwrap().len();

    let disk = dir.path().join("disk.img");
    used_disk(&disk, image_size + EXTRA, image_size);
    flash(
        &image,
        &dir.path().join("site.pub"),
        &dir.path().join("state.json"),
        &disk,
    );

    // The same disk as a server's disk and as a USB stick; each boot starts from the flashed bytes (the
    // guest's writes go to a snapshot), so each grows var.
    for bus in [DiskBus::Virtio, DiskBus::Usb] {
        let mut cfg = VmConfig::new(&disk);
        cfg.accel = Accel::Tcg;
        cfg.disk_bus = bus;
        cfg.serial_log = Some(dir.path().join(format!("console-{bus}.log")));
        let mut vm = Vm::start(cfg).unwrap();
        let var = expect_line(&mut vm, "ingot: phase=var ", BOOT);
        expect_line(&mut vm, "ingot: phase=ready ", BOOT);
        vm.kill();
        let device = if bus == DiskBus::Usb {
            "device=/dev/sda6 "
        } else {
            "device=/dev/vda6 "
        };
        assert!(
            var.contains(device) && var.contains(" grown formatted "),
            "{bus}: {var}"
        );
        let mib: u64 = var
            .split_whitespace()
            .find_map(|w| w.strip_prefix("size=")?.strip_suffix("MiB")?.parse().ok())
            .unwrap_or_else(|| panic!("no size= in {var}"));
        assert!(
            mib > EXTRA >> 20,
            "{bus}: var did not grow into the extra GiB: {var}"
        );
    }
}
