//! QMP and the disk-size overlay against a real QEMU that boots no OS (legacy BIOS, a blank disk): quick
//! enough for the default tier. Each test skips with a message when QEMU (or qemu-img) is missing.

mod common;

use std::time::{Duration, Instant};

use common::{QEMU, QEMU_IMG, sha256_file, write_image};
use ingot_qemu::{Accel, Firmware, QemuError, Vm, VmConfig};

/// A TCG VM with legacy BIOS and no NIC on `image`: QEMU runs, the BIOS finds nothing to boot.
fn idle_config(image: &std::path::Path) -> VmConfig {
    let mut cfg = VmConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.firmware = Firmware::LegacyBios;
    cfg.memory_mib = 64;
    cfg.cpus = 1;
    cfg.net.enabled = false;
    cfg
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("{s:?} is not JSON: {e}"))
}

#[test]
fn qmp_answers_queries_and_accepts_the_power_button() {
    if !ingot_testkit::require_tools("qmp_answers_queries_and_accepts_the_power_button", &[QEMU]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path(), "blank.raw", 1);
    let mut vm = Vm::start(idle_config(&image)).unwrap();
    let cmd = vm.command_line();
    assert!(
        cmd.contains("-qmp unix:")
            && cmd.contains("qmp.sock,server=on,wait=off")
            && cmd.contains("-monitor none"),
        "{cmd}"
    );
    assert!(vm.qmp_socket().starts_with(vm.scratch_dir()));

    // Right after start: the call waits for QEMU to create its socket.
    let status = json(&vm.qmp(r#"{"execute": "query-status"}"#).unwrap());
    assert_eq!(status["status"], "running", "{status}");
    assert_eq!(status["running"], true, "{status}");

    vm.powerdown().unwrap();
    // A second connection works as well as the first.
    vm.powerdown().unwrap();

    let err = vm.qmp(r#"{"execute": "no-such-command"}"#).unwrap_err();
    match &err {
        QemuError::QmpRefused { command, class, desc } => {
            assert_eq!(command, "no-such-command");
            assert_eq!(class, "CommandNotFound");
            assert!(desc.contains("no-such-command"), "{desc}");
        }
        other => panic!("expected QEMU's refusal, got {other:?}"),
    }
    assert!(err.to_string().contains("has not been found"), "{err}");

    let err = vm.qmp("query-status").unwrap_err();
    assert!(matches!(err, QemuError::QmpBadCommand { .. }), "{err:?}");

    vm.kill();
    let begun = Instant::now();
    let err = vm.powerdown().unwrap_err();
    assert!(
        matches!(err, QemuError::QmpQemuGone { .. }),
        "expected 'QEMU is not running', got {err:?}"
    );
    assert!(
        begun.elapsed() < Duration::from_secs(1),
        "a dead QEMU must fail fast"
    );
}

#[test]
fn disk_size_attaches_a_grown_overlay_backed_by_the_unchanged_image() {
    let test = "disk_size_attaches_a_grown_overlay_backed_by_the_unchanged_image";
    if !ingot_testkit::require_tools(test, &[QEMU, QEMU_IMG]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path(), "img.raw", 2);
    let before = sha256_file(&image);
    let mut cfg = idle_config(&image);
    cfg.disk_size = Some(64 << 20);
    let vm = Vm::start(cfg).unwrap();
    let overlay = vm.scratch_dir().join("disk.qcow2");
    assert!(overlay.is_file(), "no overlay in {}", vm.scratch_dir().display());
    let cmd = vm.command_line();
    assert!(
        cmd.contains("format=qcow2,file=") && !cmd.contains("snapshot=on"),
        "{cmd}"
    );

    let blocks = json(&vm.qmp(r#"{"execute": "query-block"}"#).unwrap());
    let disk = blocks
        .as_array()
        .unwrap()
        .iter()
        .find_map(|b| b.get("inserted"))
        .unwrap_or_else(|| panic!("no disk in {blocks}"));
    assert_eq!(disk["image"]["virtual-size"], 64 << 20, "{disk}");
    assert_eq!(disk["image"]["format"], "qcow2", "{disk}");
    let backing = &disk["image"]["backing-image"];
    assert_eq!(backing["format"], "raw", "{disk}");
    assert_eq!(
        backing["filename"],
        std::fs::canonicalize(&image).unwrap().to_str().unwrap(),
        "{disk}"
    );
    assert_eq!(disk["backing_file_depth"], 1, "{disk}");

    // Write over the start of the disk and past the image's end through QEMU's own I/O tester; both land in
    // the overlay and read back. qemu-io reports on QEMU's stdout, which is the console.
    let mut vm = vm;
    for (at, offset) in [("0", 0), ("32M", 32 << 20)] {
        for op in ["write", "read"] {
            let line = format!("qemu-io disk0 \"{op} -P 0x5a {at} 64k\"");
            let cmd =
                serde_json::json!({"execute": "human-monitor-command", "arguments": {"command-line": line}});
            vm.qmp(&cmd.to_string()).unwrap();
            let done = format!(
                "{} 65536/65536 bytes at offset {offset}",
                if op == "write" { "wrote" } else { "read" }
            );
            vm.wait_for(&done, Duration::from_secs(5)).unwrap();
        }
    }
    let scratch = vm.scratch_dir().to_path_buf();
    drop(vm);
    assert_eq!(sha256_file(&image), before, "the image was modified");
    assert!(
        !scratch.exists(),
        "scratch directory {} left behind",
        scratch.display()
    );
}

#[test]
fn disk_size_must_hold_the_image() {
    if !ingot_testkit::require_tools("disk_size_must_hold_the_image", &[QEMU]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path(), "img.raw", 2);
    let mut cfg = idle_config(&image);
    cfg.disk_size = Some(1 << 20);
    let err = Vm::start(cfg.clone()).unwrap_err();
    assert!(
        matches!(err, QemuError::DiskSmallerThanImage { size, image_size, .. } if size == 1 << 20 && image_size == 2 << 20),
        "{err:?}"
    );
    assert!(err.to_string().contains("smaller than the image"), "{err}");

    cfg.disk_size = Some((4 << 20) + 1);
    let err = Vm::start(cfg).unwrap_err();
    assert!(err.to_string().contains("multiple of 512"), "{err}");
}
