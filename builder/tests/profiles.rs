//! The profiles shipped in the repository load, validate, and have current lock files, without network:
//! `worker` pins upstream release files this machine may not reach, so this is what can be checked of it
//! everywhere.

mod common;

use std::path::Path;

use common::*;
use ingot::profile::{self, Profile, Source};

fn load(rel: &str) -> Profile {
    profile::load(&repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn shipped_profiles_load_and_their_locks_are_current() {
    for (rel, arg) in [
        ("profiles/minimal.toml", "minimal"),
        ("profiles/worker.toml", "worker"),
        (
            "tests/profiles/containerd-smoke.toml",
            "tests/profiles/containerd-smoke.toml",
        ),
        (
            "tests/profiles/debian-worker.toml",
            "tests/profiles/debian-worker.toml",
        ),
    ] {
        let p = load(rel);
        if let Err(e) = ingot::commands::current_lock(&p, arg) {
            panic!("{rel}: {e:#}");
        }
    }
}

#[test]
fn worker_runs_containerd_and_ships_the_node_binaries() {
    let p = load("profiles/worker.toml");
    assert_eq!(p.name, "worker");
    let services: Vec<&str> = p.init.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["containerd"]);
    for m in ["overlay", "br_netfilter", "bridge", "veth"] {
        assert!(p.init.modules.iter().any(|x| x == m), "{m} missing");
    }
    assert_eq!(p.init.sysctls["net.ipv4.ip_forward"], "1");
    let dsts: Vec<String> = p
        .components
        .iter()
        .flat_map(|c| c.files.iter().flatten())
        .map(|f| f.dst.display().to_string())
        .collect();
    for wanted in [
        "/usr/bin/containerd",
        "/usr/bin/containerd-shim-runc-v2",
        "/usr/bin/runc",
        "/usr/bin/kubelet",
        "/usr/bin/crictl",
        "/opt/cni/bin/bridge",
        "/opt/cni/bin/host-local",
        "/opt/cni/bin/loopback",
        "/opt/cni/bin/portmap",
    ] {
        assert!(dsts.iter().any(|d| d == wanted), "{wanted} missing from {dsts:?}");
    }
    let lock = ingot::lock::Lock::load(&repo_root().join("profiles/worker.lock")).unwrap();
    let pulled: Vec<&str> = lock.pulled().map(|c| c.name.as_str()).collect();
    assert!(
        pulled.contains(&"libc6") && pulled.contains(&"libext2fs2"),
        "{pulled:?}"
    );
    assert!(!pulled.contains(&"logsave"), "excluded: {pulled:?}");
}

/// Every upstream component of `worker` uses the url and sha256 of `pins/upstream.toml`.
#[test]
fn worker_upstream_components_match_the_pins_file() {
    let pins: toml::Table =
        toml::from_str(&std::fs::read_to_string(repo_root().join("pins/upstream.toml")).unwrap()).unwrap();
    let by_url: Vec<(&str, &str)> = pins
        .values()
        .filter_map(|v| Some((v.get("url")?.as_str()?, v.get("sha256")?.as_str()?)))
        .collect();
    let p = load("profiles/worker.toml");
    let mut upstream = 0;
    for c in &p.components {
        if let Source::Url { url, sha256 } = &c.source {
            upstream += 1;
            let pinned = by_url.iter().find(|(u, _)| u == url);
            assert_eq!(
                pinned.map(|(_, s)| *s),
                Some(sha256.as_str()),
                "component {}: {url} is not pinned with this sha256 in pins/upstream.toml",
                c.name
            );
        }
    }
    assert_eq!(upstream, 5, "containerd, runc, CNI plugins, crictl, kubelet");
}

#[test]
fn containerd_smoke_describes_a_containerd_node() {
    let p = load("tests/profiles/containerd-smoke.toml");
    assert_eq!(p.name, "containerd-smoke");
    let containerd = &p.init.services[0];
    assert_eq!(containerd.name, "containerd");
    assert_eq!(
        containerd.ready,
        Some(ingot_spec::config::Readiness::Socket(
            "/run/containerd/containerd.sock".into()
        ))
    );
    let hello = &p.init.services[1];
    assert_eq!(hello.after, ["images"]);
    assert_eq!(hello.kind, ingot_spec::config::ServiceKind::Oneshot);
    // The image `hello` runs is built from a component that stays out of the root; the build fills the
    // init configuration's `images` once the archive is written.
    assert_eq!(p.images.len(), 1);
    assert_eq!(p.images[0].name, "ingot.local/busybox:latest");
    assert!(matches!(
        &p.images[0].source,
        ingot::profile::ImageSource::Component { component, .. } if component == "busybox-image"
    ));
    let feeds = p.components.iter().find(|c| c.name == "busybox-image").unwrap();
    assert!(!feeds.install);
    assert!(p.init.images.is_empty());
    // The base's kernel and bootloader come from `minimal`, resolved relative to it.
    assert!(
        p.archive
            .unwrap()
            .keyring
            .starts_with(repo_root().join("tests/profiles/../../profiles"))
    );
    assert!(Path::new(&p.path).ends_with("tests/profiles/containerd-smoke.toml"));
}

#[test]
fn ubuntu_worker_builds_its_root_from_noble_with_the_hwe_kernel_and_upstream_kubelet() {
    let p = load("profiles/ubuntu-worker.toml");
    let base = p.base.as_ref().expect("an apt base");
    assert_eq!(base.archive.url, "http://archive.ubuntu.com/ubuntu");
    assert_eq!(base.archive.suite, "noble");
    assert_eq!(base.extra_suites, ["noble-updates", "noble-security"]);
    assert!(base.archive.keyring.ends_with("keyrings/ubuntu-archive.pgp"));
    assert!(
        base.archive.keyring.is_file(),
        "the Ubuntu keyring ships in keyrings/"
    );
    for wanted in ["linux-image-generic-hwe-24.04", "containerd", "runc", "e2fsprogs"] {
        assert!(base.packages.iter().any(|p| p == wanted), "{wanted} missing");
    }
    assert_eq!(p.kernel.source, Source::Base);
    let kubelet = p.components.iter().find(|c| c.name == "kubelet").unwrap();
    assert!(matches!(&kubelet.source, Source::Url { url, .. } if url.starts_with("https://dl.k8s.io/")));
    assert!(p.init.kubernetes.is_some());

    // Ubuntu's archive is not always reachable, so the profile ships without a lock; building says what
    // to run, before anything is fetched.
    let out = tempfile::tempdir().unwrap();
    let o = run(ingot()
        .args(["build", "--profile", "ubuntu-worker", "--offline", "--out"])
        .arg(out.path()));
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("ingot lock --profile ubuntu-worker"),
        "{}",
        stderr(&o)
    );
}
