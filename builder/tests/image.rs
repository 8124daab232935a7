//! `ingot build --profile minimal` end to end: the image is valid for the standard tools, two builds are
//! byte-identical, and `ingot inspect` reports what the manifest says.

mod common;

use std::process::Command;

use common::*;
use ingot::manifest::Manifest;

/// Cuts a partition out of the image into its own file for the file system checkers.
fn extract(image: &std::path::Path, offset: u64, size: u64, to: &std::path::Path) {
    let o = Command::new("dd")
        .arg(format!("if={}", image.display()))
        .arg(format!("of={}", to.display()))
        .args(["bs=1M", "conv=sparse", "status=none"])
        .arg(format!("skip={}", offset >> 20))
        .arg(format!("count={}", size >> 20))
        .output()
        .unwrap();
    assert!(o.status.success());
}

#[test]
fn minimal_image_is_valid_reproducible_and_inspectable() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let img_a = build_minimal_with(a.path(), &["--rebuild"]);
    // A different directory and a different wall-clock second must not change a byte.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let img_b = build_minimal_with(b.path(), &["--rebuild"]);
    let (bytes_a, bytes_b) = (std::fs::read(&img_a).unwrap(), std::fs::read(&img_b).unwrap());
    assert!(bytes_a == bytes_b, "two builds of minimal differ");
    assert!(
        std::fs::read(a.path().join("minimal.bmap")).unwrap()
            == std::fs::read(b.path().join("minimal.bmap")).unwrap(),
        "the block maps of two builds differ"
    );
    // Reusing the cached initramfs/UKI/ESP gives the same bytes as rebuilding them.
    let c = tempfile::tempdir().unwrap();
    let img_c = build_minimal(c.path());
    assert!(
        std::fs::read(&img_c).unwrap() == bytes_b,
        "a build reusing cached boot artifacts differs"
    );
    drop(bytes_b);
    assert_eq!(
        dir_entries(a.path()),
        ["minimal.bmap", "minimal.manifest.json", "minimal.raw"],
        "nothing else left in out/"
    );

    let m = Manifest::load(&a.path().join("minimal.manifest.json")).unwrap();
    assert_eq!(m.image.size, bytes_a.len() as u64);
    let labels: Vec<&str> = m.partitions.iter().map(|p| p.label.as_str()).collect();
    assert_eq!(
        labels,
        ["esp", "root-a", "root-a-verity", "root-b", "root-b-verity", "var"]
    );
    assert!(m.uki.initrd_modules.iter().any(|n| n == "virtio_blk"));
    assert!(m.components.iter().any(|c| {
        c.name == "kernel"
            && c.package
                .as_deref()
                .is_some_and(|p| p.starts_with("linux-image-"))
    }));
    // Everything outside the recorded data ranges is zero (flash writes only the ranges).
    let mut covered = vec![false; bytes_a.len() / 4096];
    for [o, l] in &m.data_ranges {
        for blk in (*o / 4096)..(o + l).div_ceil(4096) {
            covered[blk as usize] = true;
        }
    }
    for (i, chunk) in bytes_a.chunks(4096).enumerate() {
        assert!(
            covered[i] || chunk.iter().all(|&x| x == 0),
            "data outside the manifest's ranges at block {i}"
        );
    }
    drop(bytes_a);

    let test = "minimal_image_is_valid_reproducible_and_inspectable";
    if let Some(sgdisk) = tool_for_check(test, "the sgdisk check", "sgdisk") {
        let o = Command::new(sgdisk).arg("-v").arg(&img_a).output().unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("No problems found"),
            "{}",
            stdout(&o)
        );
    }
    let esp = &m.partitions[0];
    let root = &m.partitions[1];
    let work = tempfile::tempdir().unwrap();
    if let Some(fsck) = tool_for_check(test, "the fsck.fat check", "fsck.fat") {
        let p = work.path().join("esp.img");
        extract(&img_a, esp.offset, esp.size, &p);
        let o = Command::new(fsck).arg("-n").arg(&p).output().unwrap();
        assert!(o.status.success(), "fsck.fat: {}{}", stdout(&o), stderr(&o));
    }
    if let Some(fsck) = tool_for_check(test, "the fsck.erofs check", "fsck.erofs") {
        let p = work.path().join("root.img");
        extract(&img_a, root.offset, root.size, &p);
        let o = Command::new(fsck).arg(&p).output().unwrap();
        assert!(o.status.success(), "fsck.erofs: {}{}", stdout(&o), stderr(&o));
    }

    let o = run(ingot().arg("inspect").arg("--json").arg(&img_a));
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for (p, mp) in r["partitions"].as_array().unwrap().iter().zip(&m.partitions) {
        assert_eq!(
            p["sha256"],
            mp.sha256.as_str(),
            "inspect recomputes the manifest's hash of {}",
            mp.label
        );
        assert_eq!(p["matches_manifest"], true);
    }
    assert_eq!(r["uki"]["cmdline"], m.uki.cmdline.as_str());
    assert!(r["uki"]["cmdline"].as_str().unwrap().contains("console=ttyS0"));
    assert_eq!(r["uki"]["kernel_release"], m.uki.kernel_release.as_str());
    assert_eq!(r["components"].as_array().unwrap().len(), m.components.len());
    let o = run(ingot().arg("inspect").arg(&img_a));
    let table = stdout(&o);
    assert!(
        table.contains("root-a") && table.contains("cmdline") && table.contains("linux-image-"),
        "{table}"
    );
    let root_hash = &m.verity.as_ref().unwrap().root_hash;
    assert!(
        table.contains(&format!(
            "verity     root hash {root_hash}  (pinned by the UKI's roothash=)"
        )),
        "{table}"
    );
}
