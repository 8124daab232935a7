//! `ingot keygen`, `ingot build --sign-key` and `ingot verify`: a signed image verifies, and each kind of
//! change to the image, its manifest or its signature is refused with the check that failed and where.

mod common;

use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use common::*;

struct Signed {
    _dir: tempfile::TempDir,
    image: PathBuf,
    manifest: PathBuf,
    key: PathBuf,
    public: PathBuf,
    other_public: PathBuf,
    /// The rollback state `verify` uses (never the user's own).
    state: PathBuf,
}

fn keygen(out: &Path) {
    let o = run(ingot().arg("keygen").arg("--out").arg(out));
    assert!(o.status.success(), "keygen: {}", stderr(&o));
}

fn signed_minimal() -> Signed {
    let dir = tempfile::tempdir().unwrap();
    keygen(&dir.path().join("site"));
    keygen(&dir.path().join("other"));
    let key = dir.path().join("site.key");
    let image = build_minimal_with(&dir.path().join("out"), &["--sign-key", key.to_str().unwrap()]);
    Signed {
        manifest: dir.path().join("out/minimal.manifest.json"),
        public: dir.path().join("site.pub"),
        key,
        other_public: dir.path().join("other.pub"),
        state: dir.path().join("state/accepted-versions.json"),
        image,
        _dir: dir,
    }
}

/// Runs `ingot verify` with the rollback state in the test's directory; `Ok(stdout)` or `Err(stderr)`.
fn verify_with(s: &Signed, key: &Path, extra: &[&std::ffi::OsStr]) -> Result<String, String> {
    let o = run(ingot()
        .arg("verify")
        .arg(&s.image)
        .arg("--key")
        .arg(key)
        .arg("--state")
        .arg(&s.state)
        .args(extra));
    if o.status.success() {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(stderr(&o))
    }
}

fn manifest(s: &Signed) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(&s.manifest).unwrap()).unwrap()
}

/// Flips one bit at `offset` of `path`, runs `check`, and flips it back.
fn with_flipped(path: &Path, offset: u64, check: impl FnOnce()) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], offset).unwrap();
    check();
    f.write_all_at(&b, offset).unwrap();
}

#[test]
fn a_signed_image_verifies_and_every_tampering_is_named() {
    let s = signed_minimal();
    let ok = verify_with(&s, &s.public, &[]).unwrap();
    assert!(ok.contains("verified: signed by key"), "{ok}");

    let m = manifest(&s);
    let part = |label: &str| {
        m["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["label"] == label)
            .unwrap()
            .clone()
    };
    let root = part("root-a");
    let esp = part("esp");
    let (root_off, root_hashed) = (
        root["offset"].as_u64().unwrap(),
        root["hashed_bytes"].as_u64().unwrap(),
    );

    // A bit inside the root's data.
    with_flipped(&s.image, root_off + root_hashed / 2, || {
        let e = verify_with(&s, &s.public, &[]).unwrap_err();
        assert!(
            e.contains(&format!(
                "partition {} (root-a), bytes {root_off}..",
                root["number"]
            )),
            "{e}"
        );
        assert!(e.contains("the manifest says"), "{e}");
    });
    // A bit in the ESP.
    with_flipped(&s.image, esp["offset"].as_u64().unwrap() + 4096, || {
        let e = verify_with(&s, &s.public, &[]).unwrap_err();
        assert!(e.contains("(esp), bytes"), "{e}");
    });
    // A bit after the hashed part of the root (where only zeros may be).
    let tail = root_off + root_hashed + 100;
    with_flipped(&s.image, tail, || {
        let e = verify_with(&s, &s.public, &[]).unwrap_err();
        assert!(
            e.contains(&format!("byte {tail} of the image is not zero")),
            "{e}"
        );
    });
    // A bit in the primary GPT header, and one in the backup GPT at the end of the disk.
    for at in [512 + 60, m["image"]["size"].as_u64().unwrap() - 512 + 60] {
        with_flipped(&s.image, at, || {
            let e = verify_with(&s, &s.public, &[]).unwrap_err();
            assert!(e.contains("the bytes outside the partitions"), "{e}");
        });
    }
    // A longer image.
    let len = std::fs::metadata(&s.image).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&s.image).unwrap();
    f.set_len(len + 4096).unwrap();
    let e = verify_with(&s, &s.public, &[]).unwrap_err();
    assert!(
        e.contains(&format!("is {} bytes; the manifest says {len}", len + 4096)),
        "{e}"
    );
    f.set_len(len).unwrap();

    // The manifest, changed by one byte: the signature no longer matches.
    let original = std::fs::read(&s.manifest).unwrap();
    let changed = String::from_utf8(original.clone())
        .unwrap()
        .replacen("\"0.1.0\"", "\"0.1.1\"", 1);
    std::fs::write(&s.manifest, changed).unwrap();
    let e = verify_with(&s, &s.public, &[]).unwrap_err();
    assert!(
        e.contains("signature check failed: the signature does not match the manifest's bytes"),
        "{e}"
    );
    std::fs::write(&s.manifest, &original).unwrap();

    // Another key; no signature at all.
    let e = verify_with(&s, &s.other_public, &[]).unwrap_err();
    assert!(e.contains("signature check failed: signed by key"), "{e}");
    let sig = PathBuf::from(format!("{}.sig", s.manifest.display()));
    let sig_bytes = std::fs::read(&sig).unwrap();
    std::fs::remove_file(&sig).unwrap();
    let e = verify_with(&s, &s.public, &[]).unwrap_err();
    assert!(e.contains(&format!("reading {}", sig.display())), "{e}");
    std::fs::write(&sig, sig_bytes).unwrap();

    // A bit in the verity tree (root-a-verity's own hash catches it first).
    let hash_part = part("root-a-verity");
    with_flipped(&s.image, hash_part["offset"].as_u64().unwrap() + 4096 + 7, || {
        let e = verify_with(&s, &s.public, &[]).unwrap_err();
        assert!(e.contains("(root-a-verity), bytes"), "{e}");
    });

    // Everything restored: it verifies again.
    verify_with(&s, &s.public, &[]).unwrap();

    rollback_is_refused_unless_allowed_and_a_broken_state_is_named(&s);
}

/// The same image under a lower version, validly signed: refused once 0.1.0 was accepted with this key.
fn rollback_is_refused_unless_allowed_and_a_broken_state_is_named(s: &Signed) {
    let state = std::fs::read_to_string(&s.state).unwrap();
    assert!(state.contains("\"minimal\": \"0.1.0\""), "{state}");
    let key = ingot::signing::load_signing_key(&s._dir.path().join("site.key")).unwrap();
    let key_id = ingot::signing::key_id(&key.verifying_key());
    let mut m = manifest(s);
    m["image"]["version"] = "0.0.9".into();
    let lower = s._dir.path().join("lower.manifest.json");
    let text = serde_json::to_string_pretty(&m).unwrap();
    std::fs::write(&lower, &text).unwrap();
    std::fs::write(
        format!("{}.sig", lower.display()),
        ingot::signing::sign(&key, text.as_bytes()),
    )
    .unwrap();
    let args = |more: &[&'static str]| {
        let mut v: Vec<std::ffi::OsString> = vec!["--manifest".into(), lower.clone().into()];
        v.extend(more.iter().map(Into::into));
        v
    };
    let refused = |more: &[&'static str]| {
        let a = args(more);
        let a: Vec<&std::ffi::OsStr> = a.iter().map(|x| x.as_os_str()).collect();
        verify_with(s, &s.public, &a)
    };
    let e = refused(&[]).unwrap_err();
    for part in [
        "minimal 0.0.9 is older than minimal 0.1.0",
        &key_id,
        &s.state.display().to_string(),
        "--allow-downgrade",
    ] {
        assert!(e.contains(part), "{e} lacks {part}");
    }
    // Allowed: it verifies, and the state keeps the newer version.
    refused(&["--allow-downgrade"]).unwrap();
    assert_eq!(std::fs::read_to_string(&s.state).unwrap(), state);
    refused(&[]).unwrap_err();
    // Another key has its own history: the state is not shared across keys.
    let other = ingot::signing::load_signing_key(&s._dir.path().join("other.key")).unwrap();
    std::fs::write(
        format!("{}.sig", lower.display()),
        ingot::signing::sign(&other, text.as_bytes()),
    )
    .unwrap();
    refused(&[]).unwrap_err(); // with the site key: another key signed it
    let a = args(&[]);
    let a: Vec<&std::ffi::OsStr> = a.iter().map(|x| x.as_os_str()).collect();
    verify_with(s, &s.other_public, &a).unwrap();
    // Without --state: under $XDG_STATE_HOME.
    let xdg = s._dir.path().join("xdg");
    let o = run(ingot()
        .arg("verify")
        .arg(&s.image)
        .arg("--key")
        .arg(&s.public)
        .env("XDG_STATE_HOME", &xdg));
    assert!(o.status.success(), "{}", stderr(&o));
    let default_state = xdg.join("ingot/accepted-versions.json");
    assert!(
        stderr(&o).contains(&default_state.display().to_string()),
        "{}",
        stderr(&o)
    );
    assert!(default_state.is_file());
    // A broken state file is named and left as it is.
    std::fs::write(&s.state, "{\"schema\": 1, \"keys\": ").unwrap();
    let e = verify_with(s, &s.public, &[]).unwrap_err();
    assert!(
        e.contains(&format!(
            "{} is not an ingot rollback state file",
            s.state.display()
        )),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(&s.state).unwrap(),
        "{\"schema\": 1, \"keys\": "
    );
}

/// Rewrites the manifest with `change` applied and signs it again with the image's own key, so only the
/// checks after the signature can catch what changed.
fn resigned(s: &Signed, change: impl FnOnce(&mut serde_json::Value)) -> Result<String, String> {
    let original = std::fs::read(&s.manifest).unwrap();
    let sig = verify_sig_path(s);
    let original_sig = std::fs::read(&sig).unwrap();
    let mut m: serde_json::Value = serde_json::from_slice(&original).unwrap();
    change(&mut m);
    let bytes = serde_json::to_vec_pretty(&m).unwrap();
    let key = ingot::signing::load_signing_key(&s.key).unwrap();
    std::fs::write(&s.manifest, &bytes).unwrap();
    std::fs::write(&sig, ingot::signing::sign(&key, &bytes)).unwrap();
    let result = verify_with(s, &s.public, &[]);
    std::fs::write(&s.manifest, original).unwrap();
    std::fs::write(&sig, original_sig).unwrap();
    result
}

fn verify_sig_path(s: &Signed) -> PathBuf {
    PathBuf::from(format!("{}.sig", s.manifest.display()))
}

#[test]
fn the_verity_tree_and_the_ukis_root_hash_are_checked_even_in_a_validly_signed_manifest() {
    let s = signed_minimal();
    verify_with(&s, &s.public, &[]).unwrap();
    // A manifest claiming another root hash: the tree rebuilt from root-a disagrees.
    let e = resigned(&s, |m| m["verity"]["root_hash"] = "00".repeat(32).into()).unwrap_err();
    assert!(
        e.contains("dm-verity: the root hash of the tree rebuilt from partition 2 is"),
        "{e}"
    );
    // Another salt: the tree partition no longer matches what the manifest describes.
    let e = resigned(&s, |m| m["verity"]["salt"] = "11".repeat(32).into()).unwrap_err();
    assert!(e.contains("dm-verity: the root hash"), "{e}");
    // Fewer blocks than the file system: the tree has another shape.
    let e = resigned(&s, |m| {
        let n = m["verity"]["data_blocks"].as_u64().unwrap();
        m["verity"]["data_blocks"] = (n * 2).into();
    })
    .unwrap_err();
    assert!(e.contains("the manifest's verity entry is unusable"), "{e}");
    // The UKI's command line as the manifest claims it, with a different root hash.
    let e = resigned(&s, |m| {
        let c = m["uki"]["cmdline"]
            .as_str()
            .unwrap()
            .replace("roothash=", "roothash=0");
        m["uki"]["cmdline"] = c.into();
    })
    .unwrap_err();
    assert!(e.contains("has the command line"), "{e}");
    // No verity entry at all.
    let e = resigned(&s, |m| {
        m.as_object_mut().unwrap().remove("verity");
    })
    .unwrap_err();
    assert!(e.contains("records no dm-verity tree"), "{e}");
    verify_with(&s, &s.public, &[]).unwrap();
}

#[test]
fn keygen_refuses_to_overwrite_and_a_bad_key_fails_the_build_before_it_starts() {
    let d = tempfile::tempdir().unwrap();
    keygen(&d.path().join("k"));
    let o = run(ingot().arg("keygen").arg("--out").arg(d.path().join("k")));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("already exists"), "{}", stderr(&o));
    let o = run(ingot()
        .args(["build", "--quiet", "--profile", "minimal", "--sign-key"])
        .arg(d.path().join("k.pub"))
        .arg("--out")
        .arg(d.path().join("out")));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("line 1 is not `ingot-key v1 ed25519 private`"),
        "{}",
        stderr(&o)
    );
    assert!(!d.path().join("out").exists(), "the build started");
}
