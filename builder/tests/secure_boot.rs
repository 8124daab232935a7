//! `ingot keygen --secure-boot` and `ingot build --secure-boot-key`: a key set on disk, boot binaries that
//! sbverify accepts with the db certificate, signed builds that are byte-identical, a boot-artifact cache
//! that keeps signed and unsigned builds apart, and `inspect`/`verify` saying who signed.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use sha2::Digest as _;

fn keygen(out: &Path, extra: &[&str]) -> std::process::Output {
    run(ingot()
        .args(["keygen", "--secure-boot", "--name", "test", "--out"])
        .arg(out)
        .args(extra))
}

fn inspect(image: &Path) -> serde_json::Value {
    let o = run(ingot().arg("inspect").arg("--json").arg(image));
    assert!(o.status.success(), "inspect: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn build(out: &Path, extra: &[&str]) -> (PathBuf, String) {
    let o = run(ingot()
        .args(["build", "--profile", "minimal", "--out"])
        .arg(out)
        .args(extra));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    (out.join("minimal.raw"), stderr(&o))
}

/// Copies `path` from the image's ESP to `to` with mtools.
fn esp_file(image: &Path, esp_offset: u64, path: &str, to: &Path) {
    let o = std::process::Command::new("mcopy")
        .arg("-n")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", image.display()))
        .arg(format!("::/{path}"))
        .arg(to)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mcopy {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn secure_boot_keygen_writes_the_key_set_and_keeps_it_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let o = keygen(&keys, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let listed: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    for name in ["PK", "KEK", "db"] {
        for ext in ["key", "crt", "cer"] {
            let p = keys.join(format!("{name}.{ext}"));
            assert!(
                listed.contains(&p.display().to_string()),
                "{p:?} not listed: {listed:?}"
            );
        }
        assert!(
            stderr(&o).contains(&format!("CN=ingot test {name}")),
            "{}",
            stderr(&o)
        );
    }
    let guid = std::fs::read_to_string(keys.join("owner-guid.txt")).unwrap();
    assert!(uuid::Uuid::parse_str(guid.trim()).is_ok(), "{guid:?}");
    let db = std::fs::read(keys.join("db.key")).unwrap();

    let o = keygen(&keys, &[]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already exists; pass --force"),
        "{}",
        stderr(&o)
    );
    assert!(
        std::fs::read(keys.join("db.key")).unwrap() == db,
        "replaced without --force"
    );

    let o = keygen(&keys, &["--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        std::fs::read(keys.join("db.key")).unwrap() != db,
        "--force kept the old key"
    );
    assert_eq!(
        dir_entries(&keys).len(),
        10,
        "temp files left behind: {:?}",
        dir_entries(&keys)
    );
}

#[test]
fn signed_builds_are_reproducible_sbverify_clean_and_cached_apart_from_unsigned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let o = keygen(&keys, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run(ingot().arg("keygen").arg("--out").arg(dir.path().join("site")));
    assert!(o.status.success(), "{}", stderr(&o));
    let db = keys.join("db");
    let db = db.to_str().unwrap();
    let site = dir.path().join("site.key");
    let signed_args = ["--secure-boot-key", db, "--sign-key", site.to_str().unwrap()];

    // Unsigned first: its boot artifacts are then in the cache, and a signed build must not take them.
    let (unsigned, _) = build(&dir.path().join("unsigned"), &[]);
    let (a, log_a) = build(&dir.path().join("a"), &signed_args);
    assert!(log_a.contains("signing for Secure Boot"), "{log_a}");
    // The same key again: the signed artifacts come from the cache.
    let (b, log_b) = build(&dir.path().join("b"), &signed_args);
    assert!(log_b.contains("reusing initramfs, UKI and ESP"), "{log_b}");
    // And made anew they are the same bytes.
    let (c, log_c) = build(
        &dir.path().join("c"),
        &[&signed_args[..], &["--rebuild"]].concat(),
    );
    assert!(log_c.contains("signing for Secure Boot"), "{log_c}");
    let bytes = std::fs::read(&a).unwrap();
    assert!(
        std::fs::read(&b).unwrap() == bytes,
        "a cached signed build differs"
    );
    assert!(std::fs::read(&c).unwrap() == bytes, "two signed builds differ");

    let report = inspect(&a);
    for (what, state) in [
        ("boot loader", &report["boot_loader"]["signature"]),
        ("UKI", &report["uki"]["signature"]),
    ] {
        assert_eq!(state["state"], "signed", "{what}: {state}");
        assert_eq!(state["signer"], "CN=ingot test db", "{what}: {state}");
    }
    let plain = inspect(&unsigned);
    assert_eq!(plain["boot_loader"]["signature"]["state"], "unsigned");
    assert_eq!(plain["uki"]["signature"]["state"], "unsigned");

    // The manifest's UKI hash is the signed UKI's, as it is on the ESP.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("a/minimal.manifest.json")).unwrap()).unwrap();
    let esp_offset = report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["kind"] == "esp")
        .unwrap()["offset"]
        .as_u64()
        .unwrap();
    let uki_path = manifest["uki"]["path"].as_str().unwrap();
    let uki = dir.path().join("uki.efi");
    esp_file(&a, esp_offset, uki_path, &uki);
    assert_eq!(
        manifest["uki"]["sha256"].as_str().unwrap(),
        hex::encode(sha2::Sha256::digest(std::fs::read(&uki).unwrap()))
    );
    assert_eq!(report["uki"]["sha256"], manifest["uki"]["sha256"]);

    // `ingot verify` says who signed the boot binaries.
    let o = run(ingot()
        .arg("verify")
        .arg(&a)
        .arg("--key")
        .arg(dir.path().join("site.pub")));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("EFI/BOOT/BOOTX64.EFI: signed by CN=ingot test db"),
        "{out}"
    );
    assert!(
        out.contains(&format!("{uki_path}: signed by CN=ingot test db")),
        "{out}"
    );

    let Some(sbverify) = tool_for_check(
        "signed_builds_are_reproducible_sbverify_clean_and_cached_apart_from_unsigned_ones",
        "the sbverify cross-check",
        "sbverify",
    ) else {
        return;
    };
    let loader = dir.path().join("bootx64.efi");
    esp_file(&a, esp_offset, "EFI/BOOT/BOOTX64.EFI", &loader);
    for file in [&loader, &uki] {
        let check = |cert: &str| {
            std::process::Command::new(&sbverify)
                .arg("--cert")
                .arg(keys.join(cert))
                .arg(file)
                .output()
                .unwrap()
        };
        let o = check("db.crt");
        assert!(
            o.status.success(),
            "sbverify {}: {}{}",
            file.display(),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            !check("PK.crt").status.success(),
            "{} verifies with PK",
            file.display()
        );
    }
}

#[test]
fn a_build_with_a_mismatched_secure_boot_key_fails_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    assert!(keygen(&keys, &[]).status.success());
    std::fs::copy(keys.join("KEK.crt"), keys.join("db.crt")).unwrap();
    let o = run(ingot()
        .args(["build", "--quiet", "--profile", "minimal", "--out"])
        .arg(dir.path().join("out"))
        .arg("--secure-boot-key")
        .arg(&keys));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("db.crt is not the certificate of") && stderr(&o).contains("db.key"),
        "{}",
        stderr(&o)
    );
    assert!(!dir.path().join("out").exists(), "the build started");
}
