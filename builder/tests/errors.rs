//! Bad input gets a clear error that names the file, field or component, and leaves nothing behind in the
//! output directory.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// Local copies of the minimal profile's two packages, taken from the cache (filled by a build).
struct Debs {
    kernel: PathBuf,
    bootloader: PathBuf,
}

fn cached_debs() -> Debs {
    let out = tempfile::tempdir().unwrap();
    build_minimal(out.path());
    let lock = ingot::lock::Lock::load(&repo_root().join("profiles/minimal.lock")).unwrap();
    let cache = ingot::fetch::Cache::from_env().unwrap();
    let blob = |name: &str| {
        cache
            .blob(&lock.component(name).unwrap().sha256)
            .expect("blob in the cache after a build")
    };
    Debs {
        kernel: blob("kernel"),
        bootloader: blob("bootloader"),
    }
}

/// A profile using local packages only (no archive, no network), written to `dir/p.toml`.
fn local_profile(dir: &Path, kernel: &Path, bootloader_source: &str) -> PathBuf {
    let text = format!(
        r#"[image]
version = "0.1.0"
[kernel]
path = "{}"
cmdline = ["console=ttyS0"]
initrd_modules = ["virtio_blk", "erofs"]
[bootloader]
{bootloader_source}
[partitions]
esp = "64M"
root = "64M"
var = "16M"
"#,
        kernel.display()
    );
    let p = dir.join("p.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn lock_ok(profile: &Path) {
    let o = run(ingot().arg("lock").arg("--profile").arg(profile));
    assert!(o.status.success(), "ingot lock: {}", stderr(&o));
}

/// Runs `ingot build` expecting failure; returns stderr and checks `out` holds nothing.
fn build_fails(profile: &Path, out: &Path) -> String {
    let o = run(ingot()
        .args(["build", "--quiet", "--profile"])
        .arg(profile)
        .arg("--out")
        .arg(out));
    assert!(!o.status.success(), "build should fail");
    assert!(
        dir_entries(out).is_empty(),
        "left in {}: {:?}",
        out.display(),
        dir_entries(out)
    );
    stderr(&o)
}

#[test]
fn unknown_profile_key_names_file_line_and_key() {
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("profiles/minimal.toml")).unwrap();
    let p = d.path().join("bad.toml");
    std::fs::write(&p, text.replace("[bootloader]", "[bootloader]\ntimout = 3")).unwrap();
    let err = build_fails(&p, &d.path().join("out"));
    assert!(
        err.contains("bad.toml") && err.contains("unknown field `timout`") && err.contains("line"),
        "{err}"
    );
}

#[test]
fn missing_lock_says_how_to_make_one() {
    let d = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo_root().join("profiles/minimal.toml")).unwrap();
    let p = d.path().join("nolock.toml");
    std::fs::write(
        &p,
        text.replace("../keyrings", &repo_root().join("keyrings").display().to_string()),
    )
    .unwrap();
    let err = build_fails(&p, &d.path().join("out"));
    assert!(
        err.contains("nolock.lock") && err.contains("ingot lock --profile"),
        "{err}"
    );
}

#[test]
fn stale_lock_and_missing_entries_are_reported() {
    let debs = cached_debs();
    let d = tempfile::tempdir().unwrap();
    let p = local_profile(
        d.path(),
        &debs.kernel,
        &format!("path = \"{}\"", debs.bootloader.display()),
    );
    lock_ok(&p);
    let lock_path = d.path().join("p.lock");
    let lock = std::fs::read_to_string(&lock_path).unwrap();
    // Drop the bootloader entry by hand: the request still matches, the entry is missing.
    let start = lock.find("[[component]]\nname = \"bootloader\"").unwrap();
    let end = lock[start + 10..]
        .find("[[component]]")
        .map(|i| i + start + 10)
        .unwrap_or(lock.len());
    std::fs::write(&lock_path, format!("{}{}", &lock[..start], &lock[end..])).unwrap();
    let err = build_fails(&p, &d.path().join("out"));
    assert!(err.contains("p.lock") && err.contains("bootloader"), "{err}");

    // A changed source makes the lock stale.
    lock_ok(&p);
    let text = std::fs::read_to_string(&p).unwrap();
    std::fs::write(
        &p,
        text.replace(
            &format!("path = \"{}\"", debs.bootloader.display()),
            "package = \"systemd-boot-efi\"",
        ) + "[archive]\nurl = \"https://deb.debian.org/debian\"\nsuite = \"bookworm\"\nkeyring = \"k.pgp\"\n",
    )
    .unwrap();
    let err = build_fails(&p, &d.path().join("out"));
    assert!(err.contains("stale") && err.contains("ingot lock"), "{err}");
}

#[test]
fn wrong_sha256_names_component_url_and_both_hashes() {
    let debs = cached_debs();
    let d = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let url = format!("file://{}", debs.bootloader.display());
    let p = local_profile(
        d.path(),
        &debs.kernel,
        &format!("url = \"{url}\"\nsha256 = \"{wrong}\""),
    );
    lock_ok(&p);
    let err = build_fails(&p, &d.path().join("out"));
    let actual = ingot::fetch::Sha256::of_file(&debs.bootloader).unwrap().to_hex();
    let shown = debs.bootloader.display().to_string();
    assert!(
        err.contains("bootloader") && err.contains(&shown) && err.contains(&wrong) && err.contains(&actual),
        "{err}"
    );
}

#[test]
fn truncated_deb_is_a_clear_error() {
    let debs = cached_debs();
    let d = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(&debs.bootloader).unwrap();
    let cut = d.path().join("systemd-boot-efi-cut.deb");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let p = local_profile(d.path(), &debs.kernel, &format!("path = \"{}\"", cut.display()));
    lock_ok(&p);
    let err = build_fails(&p, &d.path().join("out"));
    assert!(
        err.contains("bootloader")
            && (err.contains("truncated") || err.contains("unexpected end") || err.contains("corrupt")),
        "{err}"
    );
}

#[test]
fn unreachable_url_names_component_and_url() {
    let debs = cached_debs();
    let d = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    let url = "http://127.0.0.1:9/systemd-boot-efi.deb";
    let p = local_profile(
        d.path(),
        &debs.kernel,
        &format!("url = \"{url}\"\nsha256 = \"{}\"", "1".repeat(64)),
    );
    lock_ok(&p);
    let err = build_fails(&p, &d.path().join("out"));
    assert!(err.contains("bootloader") && err.contains(url), "{err}");
}

#[test]
fn run_disk_size_must_be_a_size_that_holds_the_image() {
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("small.raw");
    std::fs::write(&image, vec![1u8; 2 << 20]).unwrap();
    let o = run(ingot().args(["run", "--disk-size", "4X"]).arg(&image));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("\"4X\" is not a size"), "{}", stderr(&o));
    let o = run(ingot().args(["run", "--disk-size", "1000"]).arg(&image));
    assert!(stderr(&o).contains("512-byte sectors"), "{}", stderr(&o));

    if tool_for_check(
        "run_disk_size_must_be_a_size_that_holds_the_image",
        "the size check against QEMU",
        QEMU,
    )
    .is_none()
    {
        return;
    }
    let o = run(ingot()
        .env("INGOT_QEMU_ACCEL", "tcg")
        .args(["run", "--disk-size", "1M"])
        .arg(&image));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("1048576 bytes is smaller than the image") && err.contains("2097152 bytes"),
        "{err}"
    );
}

#[test]
fn a_missing_profile_names_the_path_tried() {
    for (cmd, arg, tried) in [
        ("build", "tests/profiles/nope.toml", "tests/profiles/nope.toml"),
        ("lock", "nope", "profiles/nope.toml"),
        ("lock", "nope.toml", "nope.toml"),
    ] {
        let o = run(ingot().args([cmd, "--profile", arg]));
        assert!(!o.status.success());
        let err = stderr(&o);
        assert!(
            err.contains(&format!("profile {arg:?} not found (looked for {tried})")),
            "{err}"
        );
    }
}

/// The smallest ELF executable header: no program headers, so no interpreter and no libraries.
fn tiny_static_elf() -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[0..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // 64-bit
    b[5] = 1; // little endian
    b[6] = 1;
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    b[20..24].copy_from_slice(&1u32.to_le_bytes());
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b
}

#[test]
fn a_single_program_component_and_service_programs_are_checked_in_the_root() {
    let debs = cached_debs();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("tool-v1"), tiny_static_elf()).unwrap();
    let p = local_profile(
        d.path(),
        &debs.kernel,
        &format!("path = \"{}\"", debs.bootloader.display()),
    );
    let base = std::fs::read_to_string(&p).unwrap();
    let with_service = |exec: &str| {
        format!(
            "{base}[[components]]\nname = \"tool\"\npath = \"tool-v1\"\nfiles = [{{ src = \"tool-v1\", dst = \"/usr/bin/tool\" }}]\n\
             [[services]]\nname = \"tool\"\nexec = [\"{exec}\", \"--serve\"]\n"
        )
    };
    std::fs::write(&p, with_service("/usr/bin/tool")).unwrap();
    lock_ok(&p);
    let out = d.path().join("out");
    let work = d.path().join("work");
    let o = run(ingot()
        .args(["build", "--quiet", "--profile"])
        .arg(&p)
        .arg("--out")
        .arg(&out)
        .arg("--keep-work")
        .arg(&work));
    assert!(o.status.success(), "{}", stderr(&o));
    let tool = work.join("root/usr/bin/tool");
    assert_eq!(std::fs::read(&tool).unwrap(), tiny_static_elf());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
        0o755
    );
    let init =
        ingot_spec::config::parse(&std::fs::read(work.join("root/etc/ingot/init.json")).unwrap()).unwrap();
    assert_eq!(init.services[0].exec, ["/usr/bin/tool", "--serve"]);

    std::fs::write(&p, with_service("/usr/bin/toool")).unwrap();
    let err = build_fails(&p, &d.path().join("out2"));
    let line = with_service("")
        .lines()
        .position(|l| l.starts_with("exec = "))
        .unwrap()
        + 1;
    assert!(
        err.contains(&format!(
            "{}:{line}: service \"tool\": exec[0] /usr/bin/toool is not in the image",
            p.display()
        )),
        "{err}"
    );
}

#[test]
fn the_worker_profile_fails_fast_when_upstream_hosts_are_unreachable_and_says_how_to_supply_files() {
    // The worker profile pins upstream release files (GitHub, dl.k8s.io). Point those hosts at a closed
    // loopback port so the test behaves the same on machines that can reach them.
    let d = tempfile::tempdir().unwrap();
    let closed = "http://127.0.0.1:9";
    let started = std::time::Instant::now();
    let o = run(ingot()
        .env(
            "INGOT_MIRROR",
            format!("https://github.com={closed};https://dl.k8s.io={closed}"),
        )
        .args(["build", "--quiet", "--profile", "worker", "--out"])
        .arg(d.path().join("out")));
    let took = started.elapsed();
    assert!(!o.status.success(), "build should fail");
    let err = stderr(&o);
    assert!(err.contains("cannot reach http://127.0.0.1:9/"), "{err}");
    assert!(
        err.contains("INGOT_MIRROR=") && err.contains("`extends`") && err.contains("/blobs/sha256/"),
        "{err}"
    );
    assert!(took.as_secs() < 30, "took {took:?} to fail");
    assert!(dir_entries(&d.path().join("out")).is_empty());
}
