//! The node finds its configuration on each channel `ingot run` can deliver (fw_cfg, SMBIOS, ESP, kernel
//! command line) and in the image (baked), says which on the console, and rejects a broken configuration on
//! a higher channel without falling back to a lower one. Each VM stops as soon as the line is seen (the
//! selection runs before the network comes up). Names start with `vm_`: they run in the nextest `vm`
//! profile.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ingot_qemu::{Accel, FwCfgFile, Vm, VmConfig};

const SECRET: &str = "0123456789abcdef";
/// The endpoint is unreachable on purpose: nothing joins yet, the test ends at the console line.
const LINE: &str = "cluster 10.0.2.100:6443, token abcdef.<redacted>, node name worker-1";

/// Whether QEMU and mtools are installed; otherwise skips `test`.
fn can_run(test: &str) -> bool {
    ingot_testkit::require_tools(test, &[QEMU, "mcopy"])
}

fn write_config(dir: &Path, token: &str) -> std::path::PathBuf {
    let path = dir.join("node.toml");
    std::fs::write(
        &path,
        format!(
            "# A worker of the test cluster.\n[cluster]\nendpoint = \"10.0.2.100:6443\"\ntoken = \"{token}\"\n\
             ca-cert-hashes = [\"sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3\"]\n\n\
             [node]\nname = \"worker-1\"\n"
        ),
    )
    .unwrap();
    path
}

/// What changes when anything writes to a file: modification and change times, allocated blocks.
/// (Cheaper than hashing the 1 GiB image, which dominated these tests.)
fn written_state(p: &Path) -> (i64, i64, i64, i64, u64) {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec(), m.blocks())
}

/// `ingot run IMAGE --node-config CONFIG --config-channel CHANNEL` until the node names the channel;
/// returns the console.
fn run_on(channel: &str, image: &Path, config: &Path, out: &Path) -> String {
    let log = out.join(format!("{channel}.log"));
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args(["run", "--timeout", "180", "--config-channel", channel])
        .arg("--node-config")
        .arg(config)
        .arg("--expect")
        .arg(format!("ingot: node config from {channel} ("))
        .arg("--serial-log")
        .arg(&log)
        .arg(image));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        o.status.success(),
        "no node config line for {channel}:\n{}\n{console}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains(SECRET), "{}", stderr(&o));
    console
}

fn line_of<'a>(console: &'a str, prefix: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{console}"))
}

/// Builds `minimal` with the fw_cfg-style defaults and checks the node took the config from `channel`.
fn boots_with_config_on(channel: &str, source: &str) {
    let out = tempfile::tempdir().unwrap();
    let image = build_minimal(out.path());
    let before = written_state(&image);
    let config = write_config(out.path(), &format!("abcdef.{SECRET}"));
    let console = run_on(channel, &image, &config, out.path());
    assert_eq!(
        line_of(&console, "ingot: node config from "),
        format!("ingot: node config from {channel} ({source}): {LINE}")
    );
    if channel != "cmdline" {
        // The kernel echoes its own command line; every other channel keeps the token off the console.
        assert!(!console.contains(SECRET), "the token is on the console");
    }
    assert_eq!(written_state(&image), before, "ingot run wrote to the image");
}

#[test]
fn vm_node_config_on_fw_cfg() {
    if !can_run("vm_node_config_on_fw_cfg") {
        return;
    }
    boots_with_config_on("fw_cfg", "opt/io.ingot/node.toml");
}

#[test]
fn vm_node_config_on_smbios() {
    if !can_run("vm_node_config_on_smbios") {
        return;
    }
    boots_with_config_on("smbios", "type 11 entry 11-0, string 1");
}

#[test]
fn vm_node_config_on_the_esp() {
    if !can_run("vm_node_config_on_the_esp") {
        return;
    }
    boots_with_config_on("esp", "/dev/vda1 ingot/node.toml");
}

#[test]
fn vm_node_config_on_the_kernel_command_line() {
    if !can_run("vm_node_config_on_the_kernel_command_line") {
        return;
    }
    boots_with_config_on("cmdline", "/proc/cmdline ingot.node=");
}

/// Builds `minimal` with `config` baked in.
fn build_baked(out: &Path, config: &Path) -> std::path::PathBuf {
    let o = run(ingot()
        .args(["build", "--quiet", "--profile", "minimal", "--out"])
        .arg(out)
        .arg("--node-config")
        .arg(config));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    out.join("minimal.raw")
}

#[test]
fn vm_a_baked_node_config_is_used_when_no_channel_holds_one() {
    if !can_run("vm_a_baked_node_config_is_used_when_no_channel_holds_one") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let config = write_config(out.path(), &format!("abcdef.{SECRET}"));
    let image = build_baked(out.path(), &config);
    let log = out.path().join("serial.log");
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args(["run", "--timeout", "180", "--expect", "ingot: node config from "])
        .arg("--serial-log")
        .arg(&log)
        .arg(&image));
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(o.status.success(), "{}\n{console}", stderr(&o));
    assert_eq!(
        line_of(&console, "ingot: node config from "),
        format!("ingot: node config from baked (/etc/ingot/node.toml): {LINE}")
    );
    assert!(!console.contains(SECRET), "the token is on the console");
}

#[test]
fn vm_a_broken_config_on_a_higher_channel_is_rejected_without_falling_back() {
    if !can_run("vm_a_broken_config_on_a_higher_channel_is_rejected_without_falling_back") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let good = write_config(out.path(), &format!("abcdef.{SECRET}"));
    let image = build_baked(out.path(), &good);
    // `ingot run` refuses a broken file, so it goes to fw_cfg the way any hypervisor would put it there.
    let bad = out.path().join("bad.toml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&good)
            .unwrap()
            .replace(SECRET, "0123456789ABCDEF"),
    )
    .unwrap();
    let mut cfg = VmConfig::new(&image);
    cfg.accel = Accel::Tcg;
    cfg.exit_on_reboot = true;
    cfg.serial_log = Some(out.path().join("serial.log"));
    cfg.fw_cfg.push(FwCfgFile {
        name: ingot_spec::node_config::FW_CFG_NAME.to_owned(),
        path: bad,
    });
    let mut vm = Vm::start(cfg).unwrap();
    let wait = |vm: &mut Vm, pattern: &str| match vm.wait_for(pattern, Duration::from_secs(180)) {
        Ok(m) => m.line,
        Err(e) => panic!("{e}: no {pattern:?}:\n{}", vm.console_lines().join("\n")),
    };
    let rejected = wait(&mut vm, "ingot: node config from ");
    assert_eq!(
        rejected,
        "ingot: node config from fw_cfg (opt/io.ingot/node.toml) rejected: cluster.token: expected <id>.<secret>: 6 and 16 characters of a-z and 0-9, as `kubeadm token create` prints"
    );
    // The next step of the boot: by then a fallback would have shown.
    wait(&mut vm, "ingot: phase=var ");
    vm.kill();
    let console = vm.console_lines();
    assert!(
        !console.iter().any(|l| l.contains("from baked")),
        "fell back to the baked configuration:\n{}",
        console.join("\n")
    );
    assert!(!console.iter().any(|l| l.contains("0123456789")));
}
