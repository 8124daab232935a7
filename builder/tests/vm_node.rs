//! A node bringing itself up under QEMU (TCG): var, network, clock, containerd running a container from a
//! preloaded image, the supervisor restarting a killed containerd, persistence across a reboot, the power
//! button, and a static address with NTP on a tap device in a network namespace. Names start with `vm_`:
//! they run in the nextest `vm` profile.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use ingot_qemu::{Accel, TestNetns, Vm, VmConfig};
use ingot_spec::marker::parse_phase_line;

const BOOT: Duration = Duration::from_secs(300);

fn build(profile: &str, out: &Path) -> PathBuf {
    let o = run(ingot()
        .args([
            "build",
            "--quiet",
            "--profile",
            &format!("tests/profiles/{profile}.toml"),
            "--out",
        ])
        .arg(out));
    assert!(
        o.status.success(),
        "ingot build {profile} failed:\n{}",
        stderr(&o)
    );
    let image = out.join(format!("{profile}.raw"));
    veritysetup_agrees(&image);
    image
}

fn vm_config(image: &Path, out: &Path) -> VmConfig {
    let mut cfg = VmConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.memory_mib = 1536;
    cfg.disk_size = Some(4 << 30);
    cfg.serial_log = Some(out.join("serial.log"));
    cfg
}

/// `key=value` from a phase line's details.
fn detail<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
}

/// The phases of the boot whose lines are `lines`, in order.
fn phases(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| parse_phase_line(l).map(|(p, _)| p.to_owned()))
        .collect()
}

/// Whether QEMU and qemu-img are installed; otherwise skips `test`.
fn can_run(test: &str) -> bool {
    ingot_testkit::require_tools(test, &[QEMU, QEMU_IMG])
}

#[test]
fn vm_node_runs_containers_restarts_containerd_keeps_var_across_reboot_and_powers_off() {
    if !can_run("vm_node_runs_containers_restarts_containerd_keeps_var_across_reboot_and_powers_off") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = build("node-checks", out.path());
    let mut vm = Vm::start(vm_config(&image, out.path())).unwrap();

    // First boot: every phase in order, var grown into the 4 GiB disk and formatted, DHCP from QEMU.
    let ready = expect_line(&mut vm, "ingot: phase=ready ", BOOT);
    let boot1 = vm.console_lines();
    assert_eq!(
        phases(&boot1),
        [
            "stage1",
            "root",
            "stage2",
            "var",
            "network",
            "clock",
            "persist-ready",
            "containerd-ready",
            "images-ready",
            "hello-ready",
            "chaos-ready",
            "ready"
        ],
        "{}",
        boot1.join("\n")
    );
    let var1 = boot1
        .iter()
        .find(|l| l.starts_with("ingot: phase=var "))
        .unwrap()
        .clone();
    assert!(
        var1.contains(" grown formatted ") && detail(&var1, "boot") == "1",
        "{var1}"
    );
    let size_mib: u64 = detail(&var1, "size").trim_end_matches("MiB").parse().unwrap();
    assert!(size_mib > 3000, "var did not grow to the disk: {var1}");
    let net = boot1
        .iter()
        .find(|l| l.starts_with("ingot: phase=network "))
        .unwrap();
    assert!(
        net.contains("address=10.0.2.15/24") && net.contains("via=dhcp"),
        "{net}"
    );
    let rss_kib: u64 = detail(&ready, "init-rss")
        .trim_end_matches("KiB")
        .parse()
        .unwrap();
    assert!(rss_kib <= 4096, "PID 1 uses {rss_kib} KiB after boot: {ready}");

    // The container ran from the preloaded image, without a registry.
    assert!(
        boot1.iter().any(|l| l == "hello| hello from a container"),
        "{}",
        boot1.join("\n")
    );
    assert!(
        boot1
            .iter()
            .any(|l| l == "persist| wrote /var/lib/node-checks/first-boot")
    );
    // containerd, killed by the chaos service, came back and the status file counts it.
    // (Printed before `ready`: the chaos service is one of the services `ready` waits for.)
    let status = boot1
        .iter()
        .find_map(|l| l.strip_prefix("chaos| status: "))
        .expect("the status file");
    let json: serde_json::Value = serde_json::from_str(status).unwrap();
    let containerd = json["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "containerd")
        .unwrap();
    assert_eq!(containerd["restarts"], 1, "{containerd}");
    assert_eq!(containerd["last_exit"]["signal"], 9, "{containerd}");
    assert!(
        boot1
            .iter()
            .any(|l| l.contains("service containerd exited (signal 9), restart 1 in")),
        "the restart is logged"
    );

    // Ctrl-Alt-Del: an orderly reboot into the same disk.
    let var2 = reboot_keeps_var(&mut vm, BOOT);
    assert_eq!(detail(&var2, "boot"), "2", "{var2}");
    assert_eq!(detail(&var2, "machine-id"), detail(&var1, "machine-id"));
    assert_eq!(detail(&var2, "hostname"), detail(&var1, "hostname"));

    // The power button: services stop in reverse order, file systems go, the VM powers off.
    vm.powerdown().unwrap();
    expect_line(&mut vm, "ingot: power button pressed", Duration::from_secs(30));
    expect_line(&mut vm, "ingot: stopped containerd", Duration::from_secs(60));
    expect_line(&mut vm, "ingot: powering off", Duration::from_secs(60));
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exit: {status:?}");
    let all = vm.console_lines();
    let unmounted_var = all.iter().any(|l| l.contains("unmounted /var"));
    assert!(
        unmounted_var,
        "var is unmounted before power-off:\n{}",
        all.join("\n")
    );
}

#[test]
fn vm_static_address_and_ntp_on_a_tap_device() {
    let test = "vm_static_address_and_ntp_on_a_tap_device";
    if !can_run(test) {
        return;
    }
    if ingot_testkit::find_program("chronyd").is_none() {
        ingot_testkit::skip(test, ingot_testkit::CHRONYD_MISSING);
        return;
    }
    let Some(netns) = ingot_testkit::require(test, TestNetns::create("ingot-ntp")) else {
        return;
    };
    let out = tempfile::tempdir().unwrap();
    let conf = out.path().join("chrony.conf");
    std::fs::write(
        &conf,
        format!(
            "bindaddress 10.0.3.1\nallow 10.0.3.0/24\nlocal stratum 8\ncmdport 0\npidfile {}\ndriftfile {}\n",
            out.path().join("chronyd.pid").display(),
            out.path().join("drift").display()
        ),
    )
    .unwrap();
    // -x: serve time without touching this machine's clock.
    let mut chronyd = netns
        .exec("chronyd")
        .args(["-d", "-x", "-u", "root", "-f"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let image = build("static-net", out.path());
    let mut cfg = vm_config(&image, out.path());
    netns.attach(&mut cfg);
    let mut vm = Vm::start(cfg).unwrap();
    let net = expect_line(&mut vm, "ingot: phase=network ", BOOT);
    assert!(
        net.contains("address=10.0.3.2/24") && net.contains("via=static"),
        "{net}"
    );
    let clock = expect_line(&mut vm, "ingot: phase=clock ", Duration::from_secs(60));
    assert!(clock.contains("synced server=10.0.3.1:123"), "{clock}");
    expect_line(&mut vm, "ingot: phase=ready ", BOOT);
    vm.kill();
    let _ = chronyd.kill();
    let _ = chronyd.wait();
}
