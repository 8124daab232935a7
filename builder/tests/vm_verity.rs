//! The root through dm-verity under QEMU (TCG): `minimal` boots to ready with its root mapped through the
//! tree in root-a-verity and the UKI's `roothash=`; one flipped byte in root-a stops the node instead, with
//! an `ingot: verity` line and no `phase=ready`. Names start with `vm_`: they run in the nextest `vm` profile.
//!
//! Two places are corrupted in copies of the image: `/etc/ingot/init.json`, which `mkfs.erofs` stores
//! inline next to the file system's superblock (so the mount in stage 1 fails), and the first block of the
//! `evdev` module, which only stage 2 reads (so its kernel-log watch stops the node). Where a file's blocks
//! are comes from `dump.erofs` (erofs-utils, which the builder needs anyway).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use ingot_qemu::{Accel, Vm, VmConfig};
use serde_json::Value;

const BOOT: Duration = Duration::from_secs(300);

/// Whether QEMU and dump.erofs are installed; otherwise skips `test`.
fn can_run(test: &str) -> bool {
    ingot_testkit::require_tools(test, &[QEMU, "dump.erofs"])
}

fn manifest(image: &Path) -> Value {
    let text = std::fs::read_to_string(image.with_extension("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `(offset, size)` of the partition labelled `label`.
fn partition(m: &Value, label: &str) -> (u64, u64) {
    let p = m["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["label"] == label)
        .unwrap_or_else(|| panic!("no partition {label} in the manifest"));
    (p["offset"].as_u64().unwrap(), p["size"].as_u64().unwrap())
}

fn read_range(image: &Path, (offset, size): (u64, u64)) -> Vec<u8> {
    use std::os::unix::fs::FileExt as _;
    let mut buf = vec![0u8; usize::try_from(size).unwrap()];
    std::fs::File::open(image)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    buf
}

/// A copy of `image` (and its manifest) with the byte at `offset` flipped.
fn flipped(image: &Path, dir: &Path, name: &str, offset: u64) -> PathBuf {
    use std::os::unix::fs::FileExt as _;
    let copy = dir.join(format!("{name}.raw"));
    let status = Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&copy)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], offset).unwrap();
    copy
}

/// Where `/etc/ingot/init.json` is in root-a: its opening, which must be there exactly once.
fn init_json_offset(root_a: &[u8]) -> u64 {
    let needle = b"{\n  \"schema\": 1,";
    let hits: Vec<usize> = root_a
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect();
    assert_eq!(
        hits.len(),
        1,
        "init.json's opening is not unique in root-a: {hits:?}"
    );
    hits[0] as u64
}

/// The first physical byte of `path`'s data in the EROFS image `fs`, from `dump.erofs -e`.
fn erofs_data_offset(fs: &Path, path: &str) -> u64 {
    let out = Command::new("dump.erofs")
        .args(["-e", &format!("--path={path}")])
        .arg(fs)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dump.erofs {path}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `   0:        0..    6193 |    6193 :      49152..     53248 |    4096`
    text.lines()
        .find_map(|l| {
            let (_, physical) = l.trim_start().strip_prefix("0:")?.split_once(" : ")?;
            physical.split("..").next()?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("no first extent for {path} in:\n{text}"))
}

fn vm(image: &Path, log: &Path) -> Vm {
    let mut cfg = VmConfig::new(image);
    cfg.accel = Accel::Tcg;
    cfg.serial_log = Some(log.to_path_buf());
    Vm::start(cfg).unwrap()
}

/// Boots `image`, waits for a line containing `expected` and then for the failure policy's reboot notice;
/// checks the node never became ready. Returns the matched line.
fn boots_to_a_stop(image: &Path, log: &Path, expected: &str) -> String {
    let mut vm = vm(image, log);
    let line = expect_line(&mut vm, expected, BOOT);
    expect_line(&mut vm, "ingot: rebooting in ", Duration::from_secs(60));
    let console = vm.console_lines();
    assert!(
        !console.iter().any(|l| l.contains("ingot: phase=ready")),
        "a corrupted root became ready:\n{}",
        console.join("\n")
    );
    line
}

#[test]
fn vm_verity_root_boots_and_a_flipped_byte_stops_the_node() {
    if !can_run("vm_verity_root_boots_and_a_flipped_byte_stops_the_node") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = build_minimal(out.path());
    let m = manifest(&image);
    let cmdline = m["uki"]["cmdline"].as_str().unwrap().to_owned();
    assert!(
        cmdline.split_whitespace().any(|w| w.starts_with("roothash=")),
        "the UKI's command line has no roothash=: {cmdline}"
    );

    // Untampered: the root is mapped through verity and the node becomes ready.
    let mut node = vm(&image, &out.path().join("good.log"));
    let verity = expect_line(&mut node, "ingot: verity root ", BOOT);
    assert!(verity.contains(" over /dev/vda2 ("), "{verity}");
    expect_line(&mut node, "ingot: phase=ready ", BOOT);
    node.kill();

    let root_a = partition(&m, "root-a");
    let fs_bytes = read_range(&image, root_a);

    // init.json shares its block with the file system's superblock: stage 1's mount fails.
    let at = root_a.0 + init_json_offset(&fs_bytes) + 5;
    let bad = flipped(&image, out.path(), "bad-init-json", at);
    let line = boots_to_a_stop(&bad, &out.path().join("init-json.log"), "ingot: verity: ");
    assert!(line.starts_with("ingot: verity: "), "{line}");
    assert!(line.contains("is corrupted"), "stage 1 quotes the kernel: {line}");
    std::fs::remove_file(&bad).unwrap();

    // The evdev module is read only when stage 2 loads the profile's modules: stage 2 stops.
    let fs = out.path().join("root-a.erofs");
    std::fs::write(&fs, &fs_bytes).unwrap();
    drop(fs_bytes);
    let kver = m["uki"]["kernel_release"].as_str().unwrap();
    let evdev = format!("/usr/lib/modules/{kver}/kernel/drivers/input/evdev.ko");
    let at = root_a.0 + erofs_data_offset(&fs, &evdev) + 100;
    let bad = flipped(&image, out.path(), "bad-evdev", at);
    let line = boots_to_a_stop(
        &bad,
        &out.path().join("evdev.log"),
        "ingot: verity: the root is corrupted",
    );
    assert!(
        line.starts_with("ingot: verity: the root is corrupted (kernel: \"device-mapper: verity: ")
            && line.ends_with(" is corrupted\"); stopping"),
        "{line}"
    );
}
