//! Boots the `minimal` image as a USB stick (`ingot run --disk-bus usb`: a removable USB storage device on an
//! xHCI controller) on a disk larger than the image, under QEMU/OVMF (TCG). Names start with `vm_`: they run
//! in the nextest `vm` profile.

mod common;

use common::*;

/// The guest's disk: the image followed by empty space for var to grow into.
const DISK_SIZE: u64 = 2 << 30;

/// The `size=<N>MiB` of a `phase=var` line.
fn var_size_mib(line: &str) -> u64 {
    line.split(' ')
        .find_map(|w| w.strip_prefix("size=")?.strip_suffix("MiB")?.parse().ok())
        .unwrap_or_else(|| panic!("no size=<N>MiB in {line:?}"))
}

#[test]
fn vm_minimal_boots_from_a_usb_stick_and_grows_var_onto_it() {
    if !ingot_testkit::require_tools(
        "vm_minimal_boots_from_a_usb_stick_and_grows_var_onto_it",
        &[QEMU, QEMU_IMG],
    ) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = build_minimal(out.path());
    let log = out.path().join("serial.log");
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args(["run", "--disk-bus", "usb", "--disk-size"])
        .arg(DISK_SIZE.to_string())
        .args([
            "--expect",
            "ingot: phase=ready",
            "--timeout",
            "240",
            "--serial-log",
        ])
        .arg(&log)
        .arg(&image));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(o.status.success(), "no ready marker:\n{}\n{console}", stderr(&o));

    // The kernel found the disk on USB, at the size QEMU was given, and stage 1 took its root from there.
    assert!(
        console.contains("USB Mass Storage device detected"),
        "the disk is not a USB storage device:\n{console}"
    );
    assert!(
        console.contains(&format!("[sda] {} 512-byte logical blocks", DISK_SIZE / 512)),
        "the guest's USB disk sda is not {DISK_SIZE} bytes:\n{console}"
    );
    let root = console
        .lines()
        .find(|l| l.starts_with("ingot: root /dev/"))
        .unwrap_or_else(|| panic!("stage 1 named no root:\n{console}"));
    assert!(
        root.starts_with("ingot: root /dev/sda2 ") && root.ends_with(" on sda)"),
        "the root is not root-a on the USB disk: {root}"
    );

    // var filled the rest of the disk: from its offset in the image to the end, less the backup GPT and
    // alignment (under 2 MiB).
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.with_extension("manifest.json")).unwrap()).unwrap();
    let var = manifest["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == "var")
        .unwrap_or_else(|| panic!("no var partition in the manifest: {manifest}"));
    let var_offset = var["offset"].as_u64().unwrap();
    let line = console
        .lines()
        .find(|l| l.starts_with("ingot: phase=var "))
        .unwrap_or_else(|| panic!("no var phase:\n{console}"));
    assert!(
        line.contains("device=/dev/sda6 ") && line.contains(" grown"),
        "var was not grown on the USB disk: {line}"
    );
    let want = (DISK_SIZE - var_offset) >> 20;
    let got = var_size_mib(line);
    assert!(
        (want - 2..=want).contains(&got),
        "var is {got} MiB, expected the rest of the disk, {want} MiB: {line}"
    );
}
