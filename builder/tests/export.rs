//! The block map `ingot build` writes and `ingot export`: a signed minimal image copied with bmaptool (from
//! the raw image and from the raw.zst export) verifies against its manifest; raw.zst and qcow2 exports
//! give back the image's bytes and are the same bytes on every run; wrong inputs get errors that say what
//! was expected.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

struct Built {
    dir: tempfile::TempDir,
    image: PathBuf,
}

impl Built {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A signed minimal build.
fn build_signed() -> Built {
    let dir = tempfile::tempdir().unwrap();
    let o = run(ingot().arg("keygen").arg("--out").arg(dir.path().join("site")));
    assert!(o.status.success(), "keygen: {}", stderr(&o));
    let key = dir.path().join("site.key");
    let image = build_minimal_with(&dir.path().join("out"), &["--sign-key", key.to_str().unwrap()]);
    Built { dir, image }
}

/// One build (each test runs in its own process under nextest, so the checks that need an image share
/// this test).
#[test]
fn a_built_image_copies_with_bmaptool_and_exports_reproducibly() {
    let b = build_signed();
    assert_eq!(
        dir_entries(&b.path("out")),
        [
            "minimal.bmap",
            "minimal.manifest.json",
            "minimal.manifest.json.sig",
            "minimal.raw"
        ]
    );
    let test = "a_built_image_copies_with_bmaptool_and_exports_reproducibly";
    bmaptool_copies_verify(test, &b);
    raw_zst_decompresses_to_the_image_and_is_reproducible(test, &b);
    qcow2_holds_the_image_and_is_reproducible(test, &b);
    without_qemu_img_the_package_is_named_and_the_old_output_kept(&b);
    let o = export(&b.image, "raw.zst", Some(&b.image));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is the image itself"), "{}", stderr(&o));
    let o = export(&b.image, "raw.zst", Some(&b.path("out")));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("is a directory; give a file name"),
        "{}",
        stderr(&o)
    );
}

fn export(image: &Path, format: &str, out: Option<&Path>) -> std::process::Output {
    let mut cmd = ingot();
    cmd.arg("export").arg(image).args(["--format", format]);
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    run(&mut cmd)
}

fn export_ok(image: &Path, format: &str, out: Option<&Path>) -> PathBuf {
    let o = export(image, format, out);
    assert!(o.status.success(), "export {format}: {}", stderr(&o));
    eprintln!("{}", stderr(&o).trim());
    PathBuf::from(stdout(&o).trim())
}

/// `ingot verify` of `target` against the build's manifest and key (its own rollback state).
fn verify(b: &Built, target: &Path) {
    let o = run(ingot()
        .arg("verify")
        .arg(target)
        .arg("--key")
        .arg(b.path("site.pub"))
        .arg("--manifest")
        .arg(b.path("out/minimal.manifest.json"))
        .arg("--state")
        .arg(b.path(&format!(
            "state-{}",
            target.file_name().unwrap().to_string_lossy()
        ))));
    assert!(
        o.status.success(),
        "verify rejects the bmaptool copy {}: {}",
        target.display(),
        stderr(&o)
    );
}

fn bmaptool_copy(bmap: &Path, source: &Path, target: &Path) {
    let o = Command::new("bmaptool")
        .arg("copy")
        .arg("--bmap")
        .arg(bmap)
        .arg(source)
        .arg(target)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "bmaptool copy {}: {}",
        source.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

fn bmaptool_copies_verify(test: &str, b: &Built) {
    if tool_for_check(test, "copying with bmaptool", "bmaptool").is_none() {
        return;
    }
    let bmap = b.path("out/minimal.bmap");
    let xml = std::fs::read_to_string(&bmap).unwrap();
    assert!(xml.contains("<bmap version=\"2.0\">") && xml.contains("<ChecksumType> sha256 </ChecksumType>"));

    let work = tempfile::tempdir().unwrap();
    let target = work.path().join("disk.raw");
    bmaptool_copy(&bmap, &b.image, &target);
    verify(b, &target);

    // The same map drives a copy from the compressed export, which bmaptool decompresses on the way.
    let zst = export_ok(&b.image, "raw.zst", Some(&work.path().join("minimal.raw.zst")));
    let target = work.path().join("disk-from-zst.raw");
    bmaptool_copy(&bmap, &zst, &target);
    verify(b, &target);
}

fn raw_zst_decompresses_to_the_image_and_is_reproducible(test: &str, b: &Built) {
    let work = tempfile::tempdir().unwrap();
    let first = export_ok(&b.image, "raw.zst", None);
    assert_eq!(
        first,
        b.path("out/minimal.raw.zst"),
        "default output next to the image"
    );
    // A second run replaces the first output; a third writes elsewhere: all the same bytes.
    let first_bytes = std::fs::read(&first).unwrap();
    export_ok(&b.image, "raw.zst", None);
    let other = export_ok(&b.image, "raw.zst", Some(&work.path().join("again.raw.zst")));
    assert!(
        std::fs::read(&first).unwrap() == first_bytes,
        "re-exporting changed the bytes"
    );
    assert!(
        std::fs::read(&other).unwrap() == first_bytes,
        "two exports differ"
    );
    std::fs::remove_file(&first).unwrap();

    if tool_for_check(test, "decompressing the export with zstd", "zstd").is_none() {
        return;
    }
    let raw = work.path().join("back.raw");
    let o = Command::new("zstd")
        .arg("-d")
        .arg("-q")
        .arg(&other)
        .arg("-o")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "zstd -d: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        std::fs::read(&raw).unwrap() == std::fs::read(&b.image).unwrap(),
        "zstd -d does not give back the image"
    );
}

fn qcow2_holds_the_image_and_is_reproducible(test: &str, b: &Built) {
    if tool_for_check(test, "the qcow2 export", QEMU_IMG).is_none() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let first = export_ok(&b.image, "qcow2", Some(&work.path().join("a.qcow2")));
    let second = export_ok(&b.image, "qcow2", Some(&work.path().join("b.qcow2")));
    assert!(
        std::fs::read(&first).unwrap() == std::fs::read(&second).unwrap(),
        "two qcow2 exports differ"
    );
    let o = Command::new("qemu-img")
        .args(["compare", "-f", "raw", "-F", "qcow2"])
        .arg(&b.image)
        .arg(&first)
        .output()
        .unwrap();
    assert!(
        o.status.success() && String::from_utf8_lossy(&o.stdout).contains("Images are identical"),
        "qemu-img compare: {}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        dir_entries(work.path()),
        ["a.qcow2", "b.qcow2"],
        "no temp files left"
    );
}

#[test]
fn wrong_inputs_are_named() {
    let work = tempfile::tempdir().unwrap();
    let missing = work.path().join("nope.raw");
    let o = export(&missing, "raw.zst", None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("no image at {}", missing.display())),
        "{}",
        stderr(&o)
    );

    let text = work.path().join("notes.raw");
    std::fs::write(&text, "not a disk\n".repeat(200)).unwrap();
    let o = export(&text, "raw.zst", None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&format!("{} is not a disk image: no GPT header", text.display())),
        "{}",
        stderr(&o)
    );

    let o = export(&text, "vmdk", None);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("invalid value 'vmdk'") && stderr(&o).contains("raw.zst, qcow2"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        dir_entries(work.path()),
        ["notes.raw"],
        "no output for a failed export"
    );
}

fn without_qemu_img_the_package_is_named_and_the_old_output_kept(b: &Built) {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("old.qcow2");
    std::fs::write(&out, "an earlier export").unwrap();
    let empty = work.path().join("bin");
    std::fs::create_dir(&empty).unwrap();
    let o = run(ingot()
        .env("PATH", &empty)
        .arg("export")
        .arg(&b.image)
        .args(["--format", "qcow2", "--out"])
        .arg(&out));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("qemu-utils"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "an earlier export");
    assert_eq!(
        dir_entries(work.path()),
        ["bin", "old.qcow2"],
        "no temp files left"
    );
}

#[test]
fn help_says_what_each_tool_takes() {
    let o = run(ingot().args(["export", "--help"]));
    assert!(o.status.success());
    let help = stdout(&o);
    for tool in [
        "bmaptool copy --bmap",
        "filetype=ddraw",
        "image2disk",
        "COMPRESSED=true",
        "qcow2",
    ] {
        assert!(help.contains(tool), "export --help lacks {tool:?}:\n{help}");
    }
}
