//! `ingot build --profile tests/profiles/containerd-smoke.toml`: Debian's containerd, runc, CNI plugins,
//! e2fsprogs and busybox with the libraries their dependency closures pull, the init configuration, and the
//! root's kernel modules with `modules.dep`. The build itself proves the ELF check passes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::*;
use ingot::manifest::Manifest;

const PROFILE: &str = "tests/profiles/containerd-smoke.toml";

#[test]
fn containerd_smoke_builds_with_its_closure_init_config_and_modules() {
    let out = tempfile::tempdir().unwrap();
    let work = out.path().join("work");
    let o = run(ingot()
        .args(["build", "--quiet", "--profile", PROFILE, "--out"])
        .arg(out.path().join("out"))
        .arg("--keep-work")
        .arg(&work));
    assert!(o.status.success(), "ingot build failed:\n{}", stderr(&o));
    assert_eq!(
        stdout(&o).trim(),
        out.path().join("out/containerd-smoke.raw").display().to_string()
    );
    let root = work.join("root");

    // Merged /usr: the loader every Debian program names resolves through /lib64.
    assert_eq!(
        std::fs::read_link(root.join("lib64")).unwrap(),
        Path::new("usr/lib64")
    );
    assert!(root.join("lib64/ld-linux-x86-64.so.2").exists());
    for program in [
        "usr/bin/containerd",
        "usr/bin/containerd-shim-runc-v2",
        "usr/bin/ctr",
        "usr/sbin/runc",
        "usr/sbin/mke2fs",
        "usr/bin/busybox",
        "usr/lib/cni/bridge",
        "usr/lib/cni/host-local",
        "usr/lib/cni/loopback",
        "usr/lib/cni/portmap",
    ] {
        let mode = std::fs::metadata(root.join(program))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "{program} is not executable");
    }
    // Only the CNI plugins asked for; the excluded packages are absent.
    assert_eq!(
        dir_entries(&root.join("usr/lib/cni")),
        ["bridge", "host-local", "loopback", "portmap"]
    );
    assert!(!root.join("usr/sbin/logsave").exists() && !root.join("usr/sbin/iptables").exists());
    assert!(root.join("usr/lib/x86_64-linux-gnu/libseccomp.so.2").exists());

    let json = std::fs::read(root.join("etc/ingot/init.json")).unwrap();
    let mode = std::fs::metadata(root.join("etc/ingot/init.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    let init = ingot_spec::config::parse(&json).unwrap();
    let names: Vec<&str> = init.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["containerd", "hello"]);
    assert_eq!(init.sysctls["net.bridge.bridge-nf-call-iptables"], "1");
    assert!(init.modules.iter().any(|m| m == "br_netfilter"));

    // modules.dep: each module with its dependencies in load order, paths relative to the module directory.
    let manifest = Manifest::load(&out.path().join("out/containerd-smoke.manifest.json")).unwrap();
    let kver = &manifest.uki.kernel_release;
    let modules = root.join("usr/lib/modules").join(kver);
    let dep = std::fs::read_to_string(modules.join("modules.dep")).unwrap();
    let line = dep
        .lines()
        .find(|l| l.starts_with("kernel/net/bridge/br_netfilter.ko"))
        .unwrap_or_else(|| panic!("no br_netfilter line in:\n{dep}"));
    let deps: Vec<&str> = line.split_once(": ").unwrap().1.split(' ').collect();
    let at = |name: &str| {
        deps.iter()
            .position(|d| d.contains(name))
            .unwrap_or_else(|| panic!("{name}: {line}"))
    };
    assert!(
        at("/llc.ko") < at("/stp.ko") && at("/stp.ko") < at("/bridge.ko"),
        "{line}"
    );
    for l in dep.lines() {
        let (module, deps) = l.split_once(':').unwrap();
        for file in std::iter::once(module).chain(deps.split_whitespace()) {
            assert!(
                modules.join(file).is_file(),
                "{file} of modules.dep is not in the root"
            );
        }
    }
    assert!(modules.join("modules.softdep").is_file() && modules.join("modules.builtin").is_file());

    // Every pulled package is recorded with the component that pulled it.
    let pulled: Vec<(&str, &str)> = manifest
        .components
        .iter()
        .filter_map(|c| Some((c.name.as_str(), c.pulled_by.as_deref()?)))
        .collect();
    for expected in [
        ("libc6", "containerd"),
        ("libseccomp2", "runc"),
        ("libext2fs2", "e2fsprogs"),
    ] {
        assert!(pulled.contains(&expected), "{expected:?} not in {pulled:?}");
    }
    let root_part = &manifest.partitions[1];
    eprintln!(
        "containerd-smoke: {} components ({} pulled), root {} MiB of {} MiB",
        manifest.components.len(),
        pulled.len(),
        root_part.hashed_bytes >> 20,
        root_part.size >> 20
    );
}
