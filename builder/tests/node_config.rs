//! `ingot node-config` and the `--node-config` options as a user meets them: files written private and
//! never over an existing one, errors naming the file, field and rule, and a broken configuration stopping
//! a build before it starts.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use common::*;

const SECRET: &str = "0123456789abcdef";
const JOIN: &str = "kubeadm join 10.0.2.100:6443 --token abcdef.0123456789abcdef \
    --discovery-token-ca-cert-hash sha256:345959acb2c3b2feb87d281961c893f62a314207ef02599f1cc4a5fb255480b3";

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn from_join_command_writes_a_private_file_and_never_over_an_existing_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("worker.toml");
    let o = run(ingot()
        .args([
            "node-config",
            "from-join-command",
            JOIN,
            "--node-name",
            "worker-1",
            "-o",
        ])
        .arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(mode(&file), 0o600);
    let out = stdout(&o);
    assert!(!out.contains(SECRET) && !stderr(&o).contains(SECRET), "{out}");
    assert!(out.contains("token      abcdef.<redacted>"), "{out}");
    assert!(out.contains("node name  worker-1"), "{out}");
    assert!(out.contains("1. cmdline") && out.contains("5. baked"), "{out}");
    let written = std::fs::read_to_string(&file).unwrap();
    assert!(
        written.contains(&format!("token = \"abcdef.{SECRET}\"")),
        "{written}"
    );

    let o = run(ingot()
        .args([
            "node-config",
            "from-join-command",
            JOIN,
            "--node-name",
            "worker-2",
            "-o",
        ])
        .arg(&file));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("already exists; pass --force to replace it"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), written);

    let o = run(ingot()
        .args([
            "node-config",
            "from-join-command",
            JOIN,
            "--force",
            "--node-name",
            "worker-2",
            "-o",
        ])
        .arg(&file));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(std::fs::read_to_string(&file).unwrap().contains("worker-2"));
    assert_eq!(mode(&file), 0o600);
}

#[test]
fn from_join_command_names_what_is_wrong_with_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("n.toml");
    let o = run(ingot()
        .args([
            "node-config",
            "from-join-command",
            "kubeadm join 10.0.2.100:6443 --token abcdef.0123456789ABCDEF --discovery-token-unsafe-skip-ca-verification",
            "-o",
        ])
        .arg(&file));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("the join command: --token: expected <id>.<secret>"),
        "{err}"
    );
    assert!(!err.contains("0123456789"), "{err}");
    assert!(!file.exists());
}

#[test]
fn check_prints_the_summary_or_the_file_field_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        format!(
            "[cluster]\nendpoint = \"10.0.2.100:6443\"\ntoken = \"abcdef.{SECRET}\"\nunsafe-skip-ca-verification = true\n"
        ),
    )
    .unwrap();
    let o = run(ingot().args(["node-config", "check"]).arg(&good));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("is a valid node configuration"), "{out}");
    assert!(out.contains("cluster    10.0.2.100:6443"), "{out}");
    assert!(!out.contains(SECRET), "{out}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[cluster]\nendpoint = \"10.0.2.100:6443\"\ntoken = \"abcdef.{SECRET}\"\nca-cert-hashes = [\"sha256:12\"]\n"
        ),
    )
    .unwrap();
    let o = run(ingot().args(["node-config", "check"]).arg(&bad));
    assert!(!o.status.success());
    assert_eq!(
        stderr(&o).trim(),
        format!(
            "error: {}: cluster.ca-cert-hashes[0]: the sha256 hash has 2 hex digits; expected 64",
            bad.display()
        )
    );
}

#[test]
fn build_with_a_broken_node_config_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("node.toml");
    std::fs::write(
        &bad,
        format!("[cluster]\nendpoint = \"api.example:6443\"\ntoken = \"abcdef.{SECRET}\"\n"),
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = run(ingot()
        .args(["build", "--profile", "minimal", "--offline", "--node-config"])
        .arg(&bad)
        .arg("--out")
        .arg(&out));
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.starts_with(&format!(
            "error: {}: cluster.endpoint: `api.example` is not an IP address",
            bad.display()
        )),
        "{err}"
    );
    assert!(!err.contains("building"), "the build started: {err}");
    assert!(!out.exists(), "the build made its output directory");
}

#[test]
fn run_refuses_the_baked_channel_and_a_channel_without_a_config() {
    let o = run(ingot().args([
        "run",
        "x.raw",
        "--node-config",
        "n.toml",
        "--config-channel",
        "baked",
    ]));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("baked is part of the image: use `ingot build --node-config FILE`"),
        "{}",
        stderr(&o)
    );
    let o = run(ingot().args(["run", "x.raw", "--config-channel", "smbios"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--node-config"), "{}", stderr(&o));
}
