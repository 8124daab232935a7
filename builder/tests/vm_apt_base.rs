//! The apt-based node (`tests/profiles/debian-worker.toml`: Debian's kernel, containerd and runc installed
//! by mmdebstrap) under QEMU (TCG): the same phases as the minimal-based nodes, containerd running the
//! preloaded container, a read-only root, and /var kept across a reboot.

mod common;

use std::time::Duration;

use common::*;
use ingot_qemu::{Accel, Vm, VmConfig};
use ingot_spec::marker::parse_phase_line;

const BOOT: Duration = Duration::from_secs(300);

#[test]
fn vm_apt_based_node_runs_a_container_on_a_read_only_root_and_keeps_var() {
    if !ingot_testkit::require_tools(
        "vm_apt_based_node_runs_a_container_on_a_read_only_root_and_keeps_var",
        &[QEMU, QEMU_IMG, "mmdebstrap"],
    ) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let o = run(ingot()
        .args([
            "build",
            "--quiet",
            "--profile",
            "tests/profiles/debian-worker.toml",
            "--out",
        ])
        .arg(out.path()));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    let image = out.path().join("debian-worker.raw");

    let mut cfg = VmConfig::new(&image);
    cfg.accel = Accel::Tcg;
    cfg.memory_mib = 1536;
    cfg.disk_size = Some(2 << 30);
    cfg.serial_log = Some(out.path().join("serial.log"));
    let mut vm = Vm::start(cfg).unwrap();

    expect_line(&mut vm, "ingot: phase=ready ", BOOT);
    let boot1 = vm.console_lines();
    let phases: Vec<String> = boot1
        .iter()
        .filter_map(|l| parse_phase_line(l).map(|(p, _)| p.to_owned()))
        .collect();
    let all = boot1.join("\n");
    // Services start in parallel once the clock is set; their order among themselves is not fixed.
    assert_eq!(
        phases[..6],
        ["stage1", "root", "stage2", "var", "network", "clock"],
        "{all}"
    );
    for service in [
        "containerd-ready",
        "images-ready",
        "hello-ready",
        "persist-ready",
        "root-check-ready",
    ] {
        assert!(phases.iter().any(|p| p == service), "no phase {service}:\n{all}");
    }
    assert_eq!(phases.last().map(String::as_str), Some("ready"), "{all}");

    assert!(
        boot1.iter().any(|l| l == "hello| hello from a container"),
        "{all}"
    );
    assert!(
        boot1.iter().any(|l| l == "root-check| root is read-only"),
        "{all}"
    );
    let mount = boot1
        .iter()
        .find_map(|l| l.strip_prefix("root-check| root mount: "))
        .unwrap_or_else(|| panic!("no root mount line:\n{all}"));
    assert!(
        mount.starts_with("/dev/dm-0 erofs ro,")
            || mount.starts_with("/dev/mapper/") && mount.contains(" erofs ro,"),
        "the root is the verity device, EROFS, read-only: {mount}"
    );
    assert!(
        boot1
            .iter()
            .any(|l| l == "persist| wrote /var/lib/node-checks/first-boot"),
        "{all}"
    );

    // Ctrl-Alt-Del: an orderly reboot into the same disk; /var keeps what the first boot wrote.
    reboot_keeps_var(&mut vm, BOOT);
    vm.powerdown().unwrap();
    expect_line(&mut vm, "ingot: powering off", Duration::from_secs(120));
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exit: {status:?}");
}
