//! `ingot doctor` on a machine missing a tool: hidden from it by a `PATH` of links to every other tool.

mod common;

use std::path::Path;

use common::*;

/// A directory of links to every program of the host-tools table that this machine has, except `hidden`.
fn path_without(dir: &Path, hidden: &str) -> std::path::PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir(&bin).unwrap();
    for t in ingot_spec::host_tools::table() {
        if t.is_file() || t.name == hidden {
            continue;
        }
        if let Some(p) = ingot_testkit::find_program(t.name) {
            std::os::unix::fs::symlink(p, bin.join(t.name)).unwrap();
        }
    }
    bin
}

#[test]
fn doctor_names_a_missing_qemu_img_and_its_package() {
    let dir = tempfile::tempdir().unwrap();
    let bin = path_without(dir.path(), "qemu-img");
    let o = run(ingot()
        .env("PATH", &bin)
        .args(["doctor", "run", "disk-size", "export"]));
    let text = stdout(&o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "missing qemu-img fails:\n{text}{}",
        stderr(&o)
    );
    assert!(
        text.contains(&ingot_spec::host_tools::missing_summary("qemu-img")),
        "names qemu-img and qemu-utils:\n{text}"
    );
    assert!(
        text.contains("ingot run --disk-size") && text.contains("MISSING"),
        "{text}"
    );
    assert!(
        text.contains("\n  apt-get install qemu-utils\n"),
        "one install line:\n{text}"
    );

    let o = run(ingot()
        .env("PATH", &bin)
        .args(["doctor", "--json", "disk-size", "export"]));
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_str(&stdout(&o)).expect("--json parses");
    assert_eq!(j["ready"], false);
    for c in j["commands"].as_array().unwrap() {
        assert_eq!(c["ready"], false, "{c}");
        let img = c["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["name"] == "qemu-img")
            .expect("qemu-img checked");
        assert_eq!(img["found"], serde_json::Value::Null);
        assert_eq!(img["install"], "apt-get install qemu-utils");
    }
    assert_eq!(j["install"], serde_json::json!(["apt-get install qemu-utils"]));
}

#[test]
fn doctor_passes_where_every_tool_of_a_command_is_present() {
    let dir = tempfile::tempdir().unwrap();
    let bin = path_without(dir.path(), "qemu-img");
    // `build` needs mtools and mkfs.erofs only, so a missing qemu-img does not concern it.
    if !ingot_testkit::require_tools(
        "doctor_passes_where_every_tool_of_a_command_is_present",
        &["mformat", "mkfs.erofs"],
    ) {
        return;
    }
    let o = run(ingot().env("PATH", &bin).args(["doctor", "build"]));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(
        stdout(&o).contains("Everything checked is present"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn doctor_refuses_an_unknown_need_and_lists_the_known_ones() {
    let o = run(ingot().args(["doctor", "bulid"]));
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("bulid") && err.contains("build, apt-build, run"),
        "{err}"
    );
}

#[test]
fn a_command_missing_a_tool_says_what_doctor_says() {
    let dir = tempfile::tempdir().unwrap();
    let bin = path_without(dir.path(), "qemu-system-x86_64");
    let image = dir.path().join("any.raw");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let o = run(ingot().env("PATH", &bin).arg("run").arg(&image));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains(&ingot_spec::host_tools::missing_message("qemu-system-x86_64")),
        "{}",
        stderr(&o)
    );
    let o = run(ingot().env("PATH", &bin).args(["doctor", "run"]));
    assert!(
        stdout(&o).contains(&ingot_spec::host_tools::missing_summary("qemu-system-x86_64")),
        "{}",
        stdout(&o)
    );
}
