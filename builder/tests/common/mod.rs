//! Shared helpers for the end-to-end tests: run the `ingot` binary from the repository root and build the
//! `minimal` profile once per test process. `kube_cluster` runs a Kubernetes control plane for the join tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `ingot` with the repository root as working directory (so `--profile minimal` finds `profiles/`).
pub fn ingot() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ingot"));
    c.current_dir(repo_root());
    c
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("running ingot")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Builds `minimal` into `out` and returns the image path; panics with ingot's stderr on failure.
pub fn build_minimal(out: &Path) -> PathBuf {
    build_minimal_with(out, &[])
}

/// Same, with extra `ingot build` arguments (e.g. `--rebuild`).
pub fn build_minimal_with(out: &Path, extra: &[&str]) -> PathBuf {
    let o = run(ingot()
        .args(["build", "--quiet", "--profile", "minimal", "--out"])
        .arg(out)
        .args(extra));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    let image = out.join("minimal.raw");
    veritysetup_agrees(&image);
    image
}

/// Cross-checks an image's dm-verity tree with `veritysetup verify` (cryptsetup-bin): root-a's covered
/// blocks and root-a-verity are copied out (veritysetup takes no data offset) and verified against the
/// root hash on the UKI's command line as the manifest records it. Without veritysetup, skips the cross-check
/// for the running test (a failure under CI).
pub fn veritysetup_agrees(image: &Path) {
    use std::os::unix::fs::FileExt as _;
    let Some(veritysetup) = tool_for_check(&running_test(), "the dm-verity cross-check", "veritysetup")
    else {
        return;
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(image.with_extension("manifest.json")).unwrap()).unwrap();
    let v = &manifest["verity"];
    let root_hash = v["root_hash"].as_str().unwrap();
    let cmdline = manifest["uki"]["cmdline"].as_str().unwrap();
    assert!(
        cmdline.split(' ').any(|w| w == format!("roothash={root_hash}")),
        "the UKI command line {cmdline:?} does not pin {root_hash}"
    );
    let part = |n: &serde_json::Value| {
        manifest["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["number"] == *n)
            .unwrap()["offset"]
            .as_u64()
            .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let f = std::fs::File::open(image).unwrap();
    let copy = |name: &str, offset: u64, len: u64| {
        let mut buf = vec![0u8; usize::try_from(len).unwrap()];
        f.read_exact_at(&mut buf, offset).unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, buf).unwrap();
        path
    };
    let data_len = v["data_blocks"].as_u64().unwrap() * v["data_block_size"].as_u64().unwrap();
    let data = copy("data", part(&v["data_partition"]), data_len);
    let hash = copy(
        "hash",
        part(&v["hash_partition"]),
        v["hash_size"].as_u64().unwrap(),
    );
    let o = Command::new(veritysetup)
        .arg("verify")
        .arg(&data)
        .arg(&hash)
        .arg(root_hash)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "veritysetup verify rejects {}: {}",
        image.display(),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Names of the entries in a directory (to check nothing was left behind).
pub fn dir_entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// `qemu-system-x86_64` and its Debian package, for [`ingot_testkit::require_tools`].
pub const QEMU: &str = "qemu-system-x86_64";
/// `qemu-img` and its Debian package.
pub const QEMU_IMG: &str = "qemu-img";

pub use ingot_testkit::tool_for_check;

/// The name of the running test, for helpers that many tests share: libtest runs each test on a thread
/// named after it.
pub fn running_test() -> String {
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("an unnamed test thread");
    name.rsplit("::").next().unwrap_or(name).to_owned()
}

pub mod kube_cluster;

/// Waits for a console line containing `pattern` and returns it, failing with the whole console so far.
pub fn expect_line(vm: &mut ingot_qemu::Vm, pattern: &str, timeout: std::time::Duration) -> String {
    match vm.wait_for(pattern, timeout) {
        Ok(m) => m.line,
        Err(e) => panic!(
            "{e}: no line with {pattern:?}; console:\n{}",
            vm.console_lines().join("\n")
        ),
    }
}

/// Ctrl-Alt-Del, then the second boot up to `ready`: var is mounted again without being formatted, and the
/// `persist` service of the node-check profiles finds what the first boot wrote. Returns the second
/// boot's `phase=var` line.
pub fn reboot_keeps_var(vm: &mut ingot_qemu::Vm, timeout: std::time::Duration) -> String {
    vm.ctrl_alt_del().unwrap();
    let var2 = expect_line(vm, "ingot: phase=var ", timeout);
    assert!(var2.contains(" boot=2"), "{var2}");
    assert!(!var2.contains("formatted"), "var was formatted again: {var2}");
    expect_line(
        vm,
        "persist| kept from the first boot: written-on-boot-1",
        timeout,
    );
    expect_line(vm, "ingot: phase=ready ", timeout);
    var2
}
