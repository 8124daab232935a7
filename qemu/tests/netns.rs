//! `TestNetns` and QEMU on a tap device inside it, without booting an OS: quick enough for the default tier.
//! They need root, `ip` and QEMU, and skip with a message otherwise.

mod common;

use std::time::{Duration, Instant};

use common::{QEMU, write_image};
use ingot_qemu::{Accel, Firmware, NetMode, NetnsError, NetnsOptions, TestNetns, Vm, VmConfig};

/// The namespace, or `None` after [`ingot_testkit::skip`]ping `test` because it cannot be made here (no
/// root, no `ip`).
fn netns(test: &str, opts: NetnsOptions) -> Option<TestNetns> {
    if !ingot_testkit::require_root(test, "a network namespace with a tap device")
        || !ingot_testkit::require_tools(test, &["ip"])
    {
        return None;
    }
    Some(TestNetns::create_with("ingot-qemu-test", opts).unwrap_or_else(|e| panic!("{e}")))
}

fn listed(name: &str) -> bool {
    let out = std::process::Command::new(ingot_qemu::find_tool("ip").unwrap())
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// What `cat FILE` prints inside the namespace (its `/sys` shows the namespace's devices).
fn read_in(ns: &TestNetns, file: &str) -> String {
    let out = ns.exec("cat").arg(file).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn netns_has_a_tap_with_an_address_and_is_removed_with_its_processes() {
    let opts = NetnsOptions {
        tap: "tap7".into(),
        host_addr: "192.168.77.1".parse().unwrap(),
        prefix_len: 28,
    };
    let Some(ns) = netns(
        "netns_has_a_tap_with_an_address_and_is_removed_with_its_processes",
        opts,
    ) else {
        return;
    };
    let name = ns.name().to_string();
    assert!(name.starts_with("ingot-qemu-test-"), "{name}");
    assert!(listed(&name), "{name} not in `ip netns list`");
    let addrs = ns.ip_in(&["-o", "-4", "addr", "show"]).unwrap();
    assert!(
        addrs.contains("tap7") && addrs.contains("192.168.77.1/28"),
        "{addrs}"
    );
    assert!(
        addrs.contains("lo") && addrs.contains("127.0.0.1/8"),
        "loopback is up: {addrs}"
    );
    let links = ns.ip_in(&["-o", "link", "show"]).unwrap();
    assert_eq!(links.lines().count(), 2, "only lo and the tap device: {links}");
    // No QEMU holds the tap device yet: administratively up, no carrier.
    assert_eq!(read_in(&ns, "/sys/class/net/tap7/carrier"), "0");
    assert_eq!(read_in(&ns, "/sys/class/net/tap7/operstate"), "down");

    // A second namespace gets another name.
    let other = TestNetns::create("ingot-qemu-test").unwrap();
    assert_ne!(other.name(), name);
    drop(other);

    let mut sleeper = ns.exec("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id();
    let begun = Instant::now();
    while !ns.pids().unwrap().contains(&pid) {
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "sleep never entered the namespace"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(ns);
    let status = sleeper.wait().unwrap();
    assert!(!status.success(), "sleep was not killed: {status}");
    assert!(!listed(&name), "{name} still exists");
}

#[test]
fn netns_rejects_bad_names() {
    for (prefix, tap) in [
        ("", "tap0"),
        ("a/b", "tap0"),
        ("ok", "sixteen-chars-xx"),
        ("ok", "t,0"),
    ] {
        let opts = NetnsOptions {
            tap: tap.into(),
            ..NetnsOptions::default()
        };
        let err = TestNetns::create_with(prefix, opts).unwrap_err();
        assert!(
            matches!(err, NetnsError::BadName { .. }),
            "{prefix:?} {tap:?}: {err:?}"
        );
    }
}

#[test]
fn qemu_in_a_netns_opens_the_tap_device() {
    let test = "qemu_in_a_netns_opens_the_tap_device";
    if !ingot_testkit::require_tools(test, &[QEMU]) {
        return;
    }
    let Some(ns) = netns(test, NetnsOptions::default()) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path(), "blank.raw", 1);
    let mut cfg = VmConfig::new(&image);
    cfg.accel = Accel::Tcg;
    cfg.firmware = Firmware::LegacyBios;
    cfg.memory_mib = 64;
    cfg.cpus = 1;
    ns.attach(&mut cfg);
    assert_eq!(cfg.netns.as_deref(), Some(ns.name()));
    assert_eq!(
        cfg.net.mode,
        NetMode::Tap {
            ifname: "tap0".into()
        }
    );

    let mut vm = Vm::start(cfg).unwrap();
    let cmd = vm.command_line();
    assert!(
        cmd.contains(&format!("netns exec {} ", ns.name()))
            && cmd.contains("tap,id=net0,ifname=tap0,script=no,downscript=no"),
        "{cmd}"
    );
    // `ip netns exec` execs QEMU: the pid is QEMU's, and it lives in the namespace.
    let begun = Instant::now();
    loop {
        let exe = std::fs::read_link(format!("/proc/{}/exe", vm.pid())).unwrap();
        if exe.ends_with("qemu-system-x86_64") {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "pid {} runs {}",
            vm.pid(),
            exe.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        ns.pids().unwrap().contains(&vm.pid()),
        "QEMU is not in {}",
        ns.name()
    );
    // QMP works from outside the namespace: the socket lives in the file system.
    assert!(
        vm.qmp(r#"{"execute": "query-status"}"#)
            .unwrap()
            .contains("running")
    );

    let begun = Instant::now();
    while read_in(&ns, "/sys/class/net/tap0/carrier") != "1" {
        assert!(
            begun.elapsed() < Duration::from_secs(5),
            "tap0 has no carrier with QEMU attached (operstate {}); QEMU stderr: {}",
            read_in(&ns, "/sys/class/net/tap0/operstate"),
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_in(&ns, "/sys/class/net/tap0/operstate"), "up");

    vm.kill();
    assert_eq!(
        read_in(&ns, "/sys/class/net/tap0/carrier"),
        "0",
        "QEMU let go of tap0"
    );
}

#[test]
fn missing_netns_is_named() {
    if !ingot_testkit::require_tools("missing_netns_is_named", &[QEMU]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = write_image(dir.path(), "blank.raw", 1);
    let mut cfg = VmConfig::new(&image);
    cfg.accel = Accel::Tcg;
    cfg.firmware = Firmware::LegacyBios;
    cfg.netns = Some("ingot-no-such-namespace".into());
    let err = Vm::start(cfg).unwrap_err();
    assert!(err.to_string().contains("ingot-no-such-namespace"), "{err}");
}
