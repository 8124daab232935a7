//! Boots the `minimal` image under QEMU/OVMF (TCG) through `ingot run` and waits for ingot-init's ready
//! marker. Names start with `vm_`: they run in the nextest `vm` profile.

mod common;

use common::*;
use sha2::Digest;

fn sha256_file(p: &std::path::Path) -> String {
    hex::encode(sha2::Sha256::digest(std::fs::read(p).unwrap()))
}

#[test]
fn vm_minimal_boots_to_ready_and_run_leaves_the_image_alone() {
    if !ingot_testkit::require_tools(
        "vm_minimal_boots_to_ready_and_run_leaves_the_image_alone",
        &[QEMU],
    ) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = build_minimal(out.path());
    let before = sha256_file(&image);
    let log = out.path().join("serial.log");
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args([
            "run",
            "--expect",
            "ingot: phase=ready",
            "--timeout",
            "180",
            "--serial-log",
        ])
        .arg(&log)
        .arg(&image));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(o.status.success(), "no ready marker:\n{}\n{console}", stderr(&o));
    let phases: Vec<&str> = console
        .lines()
        .filter_map(|l| ingot_spec::marker::parse_phase_line(l).map(|(p, _)| p))
        .collect();
    assert_eq!(
        phases,
        ["stage1", "root", "stage2", "var", "network", "clock", "ready"],
        "{console}"
    );
    assert!(
        console.contains("root-a"),
        "stage 1 names the root it mounted:\n{console}"
    );
    assert_eq!(sha256_file(&image), before, "ingot run modified the image");
}

#[test]
fn vm_run_fails_with_the_console_tail_when_the_marker_never_comes() {
    if !ingot_testkit::require_tools(
        "vm_run_fails_with_the_console_tail_when_the_marker_never_comes",
        &[QEMU],
    ) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = build_minimal(out.path());
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args(["run", "--expect", "no such line", "--timeout", "45"])
        .arg(&image));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("no such line") && err.contains("ingot: phase="),
        "error shows what the console said last:\n{err}"
    );
}

#[test]
fn vm_run_with_a_disk_size_gives_the_guest_a_bigger_disk() {
    if !ingot_testkit::require_tools(
        "vm_run_with_a_disk_size_gives_the_guest_a_bigger_disk",
        &[QEMU, QEMU_IMG],
    ) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = build_minimal(out.path());
    let before = sha256_file(&image);
    let log = out.path().join("serial.log");
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args([
            "run",
            "--disk-size",
            "2G",
            "--allow-reboot",
            "--expect",
            "ingot: phase=ready",
            "--timeout",
            "180",
            "--serial-log",
        ])
        .arg(&log)
        .arg(&image));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(o.status.success(), "no ready marker:\n{}\n{console}", stderr(&o));
    // The kernel reports the disk's size in 512-byte sectors.
    assert!(
        console.contains("[vda] 4194304 512-byte logical blocks"),
        "the guest's disk is not 2 GiB:\n{console}"
    );
    assert_eq!(sha256_file(&image), before, "ingot run modified the image");
}
