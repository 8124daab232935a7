//! Roots built from an apt archive (`[base.apt]`, `tests/profiles/debian-worker.toml`): two builds that each
//! run mmdebstrap are byte-identical; the root is stripped, carries ingot-init as `/sbin/init` and the
//! kernel's modules the node needs; the manifest lists the installed packages; and a wrong suite, keyring or
//! package name is a clear error from `ingot lock`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::*;

const PROFILE: &str = "tests/profiles/debian-worker.toml";

/// Whether mmdebstrap is installed; otherwise skips `test`.
fn can_run(test: &str) -> bool {
    ingot_testkit::require_tools(test, &["mmdebstrap"])
}

fn build(out: &Path, extra: &[&str]) -> PathBuf {
    let o = run(ingot()
        .args(["build", "--quiet", "--profile", PROFILE, "--out"])
        .arg(out)
        .args(extra));
    assert!(
        o.status.success(),
        "ingot build {PROFILE} failed:\n{}",
        stderr(&o)
    );
    out.join("debian-worker.raw")
}

/// Every path below `dir`, relative to it.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
        }
    }
    out.sort();
    out
}

#[test]
fn apt_base_builds_are_byte_identical_stripped_and_list_their_packages() {
    if !can_run("apt_base_builds_are_byte_identical_stripped_and_list_their_packages") {
        return;
    }
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let work = a.path().join("work");
    // Both run mmdebstrap: --rebuild does not take the base tarball from the cache.
    let img_a = build(a.path(), &["--rebuild", "--keep-work", work.to_str().unwrap()]);
    let img_b = build(b.path(), &["--rebuild"]);
    assert!(
        fs::read(&img_a).unwrap() == fs::read(&img_b).unwrap(),
        "two builds of {PROFILE} differ"
    );
    let manifest_a = fs::read_to_string(a.path().join("debian-worker.manifest.json")).unwrap();
    assert_eq!(
        manifest_a,
        fs::read_to_string(b.path().join("debian-worker.manifest.json")).unwrap()
    );
    veritysetup_agrees(&img_a);

    // The manifest lists every package the lock pins, with its version.
    let lock = ingot::lock::Lock::load(&repo_root().join("tests/profiles/debian-worker.lock")).unwrap();
    let manifest: ingot::manifest::Manifest = serde_json::from_str(&manifest_a).unwrap();
    assert_eq!(manifest.packages.len(), lock.base().len());
    let containerd = manifest.packages.iter().find(|p| p.name == "containerd").unwrap();
    let locked = lock.base().iter().find(|p| p.name == "containerd").unwrap();
    assert_eq!(Some(&containerd.version), locked.version.as_ref());
    assert!(!containerd.dependency, "asked for by the profile");
    let libseccomp = manifest
        .packages
        .iter()
        .find(|p| p.name == "libseccomp2")
        .unwrap();
    assert!(libseccomp.dependency, "runc's dependency");
    assert!(
        manifest.uki.kernel_release.ends_with("-amd64"),
        "{}",
        manifest.uki.kernel_release
    );

    // The root as staged: no documentation but the copyright files, an empty /var, no kernel image, no set-ID programs, only the
    // modules the node loads, and ingot-init as /sbin/init.
    let root = work.join("root");
    let paths = tree(&root);
    for gone in [
        "usr/share/man",
        "usr/share/locale",
        "usr/share/doc-base",
        "etc/machine-id",
    ] {
        assert!(
            !paths.iter().any(|p| p.starts_with(gone)),
            "{gone} is in the root"
        );
    }
    assert!(
        fs::read_dir(root.join("boot")).unwrap().next().is_none(),
        "/boot is not empty"
    );
    let docs: Vec<&PathBuf> = paths
        .iter()
        .filter(|p| p.starts_with("usr/share/doc") && root.join(p).is_file())
        .collect();
    assert!(
        docs.iter().all(|p| p.ends_with("copyright")),
        "only copyright files stay of the documentation: {docs:?}"
    );
    assert!(docs.iter().any(|p| p.ends_with("runc/copyright")), "{docs:?}");
    assert!(
        fs::read_dir(root.join("var")).unwrap().next().is_none(),
        "/var is not empty"
    );
    let init = fs::symlink_metadata(root.join("usr/sbin/init")).unwrap();
    assert!(
        init.is_file(),
        "/sbin/init is ingot-init, not a link to another init"
    );
    assert!(root.join("sbin").is_symlink(), "merged /usr");
    for p in &paths {
        let m = fs::symlink_metadata(root.join(p)).unwrap();
        assert!(
            !(m.is_file() && m.permissions().mode() & 0o6000 != 0),
            "{} keeps a set-ID bit",
            p.display()
        );
    }
    let modules = paths
        .iter()
        .filter(|p| p.starts_with("usr/lib/modules") && p.to_string_lossy().contains(".ko"))
        .count();
    assert!(
        (5..200).contains(&modules),
        "{modules} module files: only the node's modules, not the kernel package's thousands"
    );
    for program in [
        "usr/bin/containerd",
        "usr/sbin/runc",
        "usr/sbin/mke2fs",
        "usr/bin/mount",
    ] {
        let p = root.join(program);
        assert!(
            p.is_file() || root.join(program.replace("sbin", "bin")).is_file(),
            "{program} missing"
        );
    }
    let os_release = fs::read_to_string(root.join("usr/lib/os-release")).unwrap();
    assert!(os_release.contains("ID=ingot"), "{os_release}");
}

/// A copy of the profile with `edit` applied, its relative paths made absolute.
fn edited_profile(dir: &Path, edit: impl Fn(&str) -> String) -> PathBuf {
    let text = fs::read_to_string(repo_root().join(PROFILE)).unwrap();
    let keyrings = repo_root().join("keyrings");
    let text = text.replace("../../keyrings", keyrings.to_str().unwrap());
    let path = dir.join("bad.toml");
    fs::write(&path, edit(&text)).unwrap();
    path
}

fn lock_fails(profile: &Path) -> String {
    let o = run(ingot().args(["lock", "--profile"]).arg(profile));
    assert!(!o.status.success(), "ingot lock accepted {}", profile.display());
    assert!(!profile.with_extension("lock").exists(), "no lock is written");
    stderr(&o)
}

/// Only the `[base.apt]` table's first occurrence of `from` becomes `to`.
fn in_base(text: &str, from: &str, to: &str) -> String {
    let at = text.find("[base.apt]").unwrap();
    format!("{}{}", &text[..at], text[at..].replacen(from, to, 1))
}

#[test]
fn apt_base_lock_errors_name_the_suite_the_keyring_and_the_package() {
    let dir = tempfile::tempdir().unwrap();

    let p = edited_profile(dir.path(), |t| {
        in_base(t, "debian-archive-bookworm.pgp", "debian-archive-bookwrom.pgp")
    });
    let err = lock_fails(&p);
    assert!(
        err.contains("field base.apt.keyring") && err.contains("debian-archive-bookwrom.pgp does not exist"),
        "{err}"
    );

    let p = edited_profile(dir.path(), |t| {
        in_base(t, "suite = \"bookworm\"", "suite = \"bookwrom\"")
    });
    let err = lock_fails(&p);
    assert!(
        err.contains("no suite \"bookwrom\"") && err.contains("/dists/bookwrom/InRelease"),
        "{err}"
    );

    let p = edited_profile(dir.path(), |t| {
        in_base(t, "\"runc\",", "\"runc\",\n  \"runc-nightly\",")
    });
    let err = lock_fails(&p);
    assert!(
        err.contains("base.apt.packages: package runc-nightly is not in bookworm (main) for amd64"),
        "{err}"
    );

    let p = edited_profile(dir.path(), |t| in_base(t, "[base.apt]", "[base.yum]"));
    let o = run(ingot().args(["lock", "--profile"]).arg(&p));
    assert!(
        stderr(&o).contains("unknown field `yum`") || stderr(&o).contains("yum"),
        "{}",
        stderr(&o)
    );
}
