//! UEFI Secure Boot with the owner's keys under QEMU (TCG): OVMF with PK, KEK and db enrolled boots an image
//! signed with db to `phase=ready` and ingot-init sees Secure Boot on; the firmware refuses a UKI whose
//! command line changed after signing, and an unsigned image. Names start with `vm_`: they run in the
//! nextest `vm` profile.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ingot_qemu::{Accel, Vm, VmConfig, is_os_line};

/// Whether everything the tests need is here: QEMU, Debian's Secure Boot OVMF, virt-fw-vars to enroll the
/// keys, mtools. Otherwise skips `test`, naming what is missing.
fn can_run(test: &str) -> bool {
    if !ingot_testkit::require_tools(test, &[QEMU, "mcopy", "virt-fw-vars"]) {
        return false;
    }
    if !Path::new(ingot_qemu::OVMF_SECURE_BOOT_CODE).is_file() {
        ingot_testkit::skip(
            test,
            ingot_spec::host_tools::missing_summary(ingot_qemu::OVMF_SECURE_BOOT_CODE),
        );
        return false;
    }
    true
}

fn keygen(out: &Path) {
    let o = run(ingot()
        .args(["keygen", "--secure-boot", "--name", "vm-test", "--out"])
        .arg(out));
    assert!(o.status.success(), "keygen: {}", stderr(&o));
}

/// A VM on `image` with Secure Boot trusting the keys in `keys`, its console logged to `log`.
fn secure_vm(image: &Path, keys: &Path, log: &Path) -> Vm {
    let mut cfg = VmConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.exit_on_reboot = true;
    cfg.serial_log = Some(log.to_path_buf());
    cfg.firmware = ingot::commands::secure_boot_firmware(keys).unwrap();
    Vm::start(cfg).unwrap()
}

/// Waits for a firmware line containing `pattern`, then asserts no kernel or ingot-init line came before.
fn refused(vm: &mut Vm, pattern: &str) -> Vec<String> {
    expect_line(vm, pattern, Duration::from_secs(180));
    let lines = vm.console_lines();
    let os: Vec<&String> = lines.iter().filter(|l| is_os_line(l)).collect();
    assert!(os.is_empty(), "the OS started: {os:?}\n{}", lines.join("\n"));
    vm.kill();
    lines
}

/// A copy of `image` whose UKI has one byte of its `.cmdline` changed (mtools out, patch, mtools in).
fn with_changed_cmdline(image: &Path, dir: &Path) -> PathBuf {
    let copy = dir.join("changed.raw");
    let o = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&copy)
        .output()
        .unwrap();
    assert!(o.status.success());
    let report = run(ingot().arg("inspect").arg("--json").arg(&copy));
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let offset = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "esp")
        .unwrap()["offset"]
        .as_u64()
        .unwrap();
    let on_esp = format!("::/{}", report["uki"]["path"].as_str().unwrap());
    let esp = format!("{}@@{offset}", copy.display());
    let uki = dir.join("uki.efi");
    let mtools = |args: &[&std::ffi::OsStr]| {
        let o = std::process::Command::new("mcopy").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "mcopy: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    mtools(&[
        "-n".as_ref(),
        "-i".as_ref(),
        esp.as_ref(),
        on_esp.as_ref(),
        uki.as_ref(),
    ]);
    let mut bytes = std::fs::read(&uki).unwrap();
    let cmdline = ingot::uki::read_sections(&bytes)
        .unwrap()
        .into_iter()
        .find(|s| s.name == ".cmdline")
        .unwrap();
    // `console=ttyS0` → `console=ttyS1`: still a valid command line, only the signature knows.
    let at = cmdline.data.start + "console=ttyS".len();
    assert_eq!(bytes[at], b'0');
    bytes[at] = b'1';
    std::fs::write(&uki, &bytes).unwrap();
    mtools(&[
        "-o".as_ref(),
        "-i".as_ref(),
        esp.as_ref(),
        uki.as_ref(),
        on_esp.as_ref(),
    ]);
    copy
}

#[test]
fn vm_secure_boot_signed_image_boots_to_ready_with_secure_boot_on() {
    if !can_run("vm_secure_boot_signed_image_boots_to_ready_with_secure_boot_on") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    keygen(&keys);
    let db = keys.join("db");
    let image = build_minimal_with(
        &dir.path().join("out"),
        &["--secure-boot-key", db.to_str().unwrap()],
    );
    let log = dir.path().join("serial.log");
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args([
            "run",
            "--expect",
            "ingot: phase=ready",
            "--timeout",
            "240",
            "--secure-boot",
        ])
        .arg(&keys)
        .arg("--serial-log")
        .arg(&log)
        .arg(&image));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(o.status.success(), "no ready marker:\n{}\n{console}", stderr(&o));
    assert!(console.contains("ingot: secure boot enabled"), "{console}");
    // The Debian kernel locks itself down under Secure Boot; its signed modules still load.
    assert!(
        console.contains("Kernel is locked down from EFI Secure Boot"),
        "{console}"
    );
    assert!(console.contains("ingot: modules: "), "{console}");
    assert!(!console.contains("Loading of unsigned module"), "{console}");
}

#[test]
fn vm_secure_boot_firmware_refuses_a_changed_uki_and_an_unsigned_image() {
    if !can_run("vm_secure_boot_firmware_refuses_a_changed_uki_and_an_unsigned_image") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    keygen(&keys);
    let db = keys.join("db");
    let signed = build_minimal_with(
        &dir.path().join("signed"),
        &["--secure-boot-key", db.to_str().unwrap()],
    );
    let changed = with_changed_cmdline(&signed, dir.path());

    // systemd-boot (signed) starts, and the firmware refuses to load the UKI for it.
    let mut vm = secure_vm(&changed, &keys, &dir.path().join("changed.log"));
    let lines = refused(&mut vm, "failed to start Boot0001");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("Error loading \\EFI\\Linux\\ingot-minimal-") && l.contains("Access Denied")),
        "systemd-boot does not report the refused UKI:\n{}",
        lines.join("\n")
    );

    // An unsigned image: the firmware does not even start systemd-boot.
    let unsigned = build_minimal(&dir.path().join("unsigned"));
    let mut vm = secure_vm(&unsigned, &keys, &dir.path().join("unsigned.log"));
    let lines = refused(&mut vm, "failed to load Boot0001");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("failed to load Boot0001") && l.contains("Access Denied")),
        "{}",
        lines.join("\n")
    );
    assert!(
        !lines.iter().any(|l| l.contains("Error loading")),
        "systemd-boot ran:\n{}",
        lines.join("\n")
    );
}
