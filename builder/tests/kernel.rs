//! `ingot kernel check` from the command line: exit status, text and JSON output, kernel packages, profiles,
//! and that every option of `kernel-configs/features.toml` is one Debian's 6.1 kernel knows.

mod common;

use std::path::Path;

use common::*;

/// Every option of every feature, `y`, except the given ones.
fn config_without(missing: &[&str]) -> String {
    let mut s = String::from("# Linux/x86 6.1.0 Kernel Configuration\n");
    for f in ingot::kconfig::features().unwrap() {
        for r in f.options {
            for name in r.choices() {
                if missing.contains(&name) {
                    s.push_str(&format!("# {name} is not set\n"));
                } else {
                    s.push_str(&format!("{name}=y\n"));
                }
            }
        }
    }
    s
}

#[test]
fn exit_status_follows_the_requested_features() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config");
    std::fs::write(&cfg, config_without(&["CONFIG_ISCSI_TCP"])).unwrap();

    let o = run(ingot().args(["kernel", "check"]).arg(&cfg));
    assert_eq!(
        o.status.code(),
        Some(1),
        "longhorn is incomplete:\n{}",
        stdout(&o)
    );
    let text = stdout(&o);
    assert!(text.contains("longhorn: INCOMPLETE: 1 of 7 missing"), "{text}");
    assert!(
        text.contains("MISSING  CONFIG_ISCSI_TCP (not set): iscsi_tcp: the iSCSI initiator"),
        "{text}"
    );
    assert!(
        text.contains("12 of 13 features complete; incomplete: longhorn"),
        "{text}"
    );

    let o = run(ingot()
        .args(["kernel", "check", "--feature", "containers", "-f", "rook"])
        .arg(&cfg));
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("2 of 2 features complete"));

    let o = run(ingot()
        .args(["kernel", "check", "--json", "-f", "longhorn"])
        .arg(&cfg));
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["complete"], false);
    assert_eq!(v["features"][0]["missing"][0]["option"], "CONFIG_ISCSI_TCP");
    assert_eq!(v["features"][0]["missing"][0]["value"], "n");
}

#[test]
fn unknown_features_and_non_configs_are_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("config");
    std::fs::write(&cfg, config_without(&[])).unwrap();
    let o = run(ingot().args(["kernel", "check", "-f", "flannel"]).arg(&cfg));
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains(
            "unknown feature \"flannel\"; the features are: containers, kubelet, kube-proxy, bridge-cni, vxlan, \
             cilium, calico, longhorn, rook, topolvm, ipvs"
        ),
        "{}",
        stderr(&o)
    );
    std::fs::write(&cfg, "hello\n").unwrap();
    let o = run(ingot().args(["kernel", "check"]).arg(&cfg));
    assert!(
        stderr(&o).contains("is not a kernel configuration"),
        "{}",
        stderr(&o)
    );
    let o = run(ingot().args(["kernel", "check"]));
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--profile"), "{}", stderr(&o));
}

#[test]
fn help_teaches_and_names_every_feature() {
    let o = run(ingot().args(["kernel", "check", "--help"]));
    assert!(o.status.success());
    let help = stdout(&o);
    assert!(
        help.contains("ingot kernel check /boot/config-$(uname -r)"),
        "{help}"
    );
    for f in ingot::kconfig::features().unwrap() {
        assert!(help.contains(&f.name), "--help does not name feature {}", f.name);
    }
}

#[test]
fn reads_the_configuration_out_of_a_kernel_package() {
    let d = tempfile::tempdir().unwrap();
    let config = config_without(&["CONFIG_BLK_DEV_RBD"]);
    let mut data = tar::Builder::new(Vec::new());
    for (path, bytes) in [
        ("./boot/config-6.1.0-9-amd64", config.as_bytes()),
        ("./boot/vmlinuz-6.1.0-9-amd64", &b"kernel"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        data.append_data(&mut h, path, bytes).unwrap();
    }
    let data = data.into_inner().unwrap();
    let mut deb = ar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("debian-binary", &b"2.0\n"[..]),
        ("control.tar", &[0u8; 1024][..]),
        ("data.tar", &data[..]),
    ] {
        deb.append(
            &ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64),
            bytes,
        )
        .unwrap();
    }
    let path = d.path().join("linux-image-6.1.0-9-amd64_6.1.1-1_amd64.deb");
    std::fs::write(&path, deb.into_inner().unwrap()).unwrap();
    let o = run(ingot().args(["kernel", "check", "-f", "rook"]).arg(&path));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.contains("(/boot/config-6.1.0-9-amd64)"), "{text}");
    assert!(text.contains("MISSING  CONFIG_BLK_DEV_RBD (not set)"), "{text}");
}

/// Every option name is known to Linux 6.1: Debian's configuration lists every option whose dependencies
/// x86-64 can meet, set or not. Uses the minimal profile's kernel, fetched and unpacked as a build does.
#[test]
fn every_feature_option_exists_in_debians_6_1_kernel() {
    let lock = ingot::lock::Lock::load(&repo_root().join("profiles/minimal.lock")).unwrap();
    let dir = ingot::fetch::Fetcher::from_env(false)
        .unwrap()
        .unpacked(&lock.pinned("kernel").unwrap())
        .unwrap();
    let o = run(ingot().args(["kernel", "check", "--profile", "minimal", "--offline", "--json"]));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert!(v["kernel"].as_str().unwrap().contains(" 6.1."), "{}", v["kernel"]);
    let config = std::fs::read_dir(Path::new(&dir).join("boot"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("config-"))
        .unwrap();
    let parsed = ingot::kconfig::parse(&std::fs::read_to_string(config).unwrap());
    for f in ingot::kconfig::features().unwrap() {
        for r in &f.options {
            for name in r.choices() {
                assert!(
                    parsed.get(name).is_some(),
                    "feature {}: {name} does not appear in Debian's 6.1 configuration (misspelt, or renamed?)",
                    f.name
                );
            }
        }
    }
    // Today's result, recorded in kernel-configs/README.md: Debian's generic kernel has every feature.
    assert_eq!(v["complete"], true, "{}", stdout(&o));
}
