//! The network against the real kernel and a real DHCP server, each test in network namespaces of its
//! own: the test thread enters a new namespace (only that thread: `CLONE_NEWNET` is per thread), the
//! server side lives in a named namespace at the other end of a veth pair. Needs root, `ip` and, for
//! DHCP, `dnsmasq`; without them the tests skip (fail under CI), naming what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ingot_spec::config;

use super::{Network, Options};
use crate::event::Pollable;
use crate::sys::Sys;
use crate::sys::fake::FakeSys;
use crate::sys::net::testing::{enter_new_network_namespace, wait_readable};

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

const IP: &str = "ip";
const DNSMASQ: &str = "dnsmasq";

/// Whether `test` can run here: as root (network namespaces need it) with `tools` installed; otherwise
/// [`ingot_testkit::skip`]s it, saying what is missing.
fn can_run(test: &str, tools: &[&str]) -> bool {
    ingot_testkit::require_root(test, "a network namespace") && ingot_testkit::require_tools(test, tools)
}

/// Runs a command in the test thread's namespace and returns its stdout; fails the test on error.
fn sh(args: &[&str]) -> String {
    let out = Command::new(which(args[0]).unwrap())
        .args(&args[1..])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A named network namespace, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let name = format!("ingot-test-{tag}-{}", std::process::id());
        let _ = Command::new(which("ip").unwrap())
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        sh(&["ip", "netns", "add", &name]);
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new(which("ip").unwrap())
            .args(["netns", "del", &self.0])
            .status();
    }
}

/// A process we started, killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boottime() -> Duration {
    crate::sys::Linux::new().boottime()
}

/// Runs the network's part of the event loop until `done` holds or `limit` passed; returns whether it held.
fn pump(
    net: &mut Network,
    sys: &FakeSys,
    limit: Duration,
    done: impl Fn(&Network, &FakeSys) -> bool,
) -> bool {
    let started = Instant::now();
    while !done(net, sys) {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return false;
        }
        let now = boottime();
        let timeout = net
            .deadline()
            .map_or(left, |d| d.saturating_sub(now))
            .min(left)
            .max(Duration::from_millis(1));
        let readable = wait_readable(&net.fds(), timeout).unwrap();
        net.wake(sys, boottime(), &readable);
    }
    true
}

fn interface(name: &str) -> config::InterfaceMatch {
    config::InterfaceMatch {
        name: Some(name.to_owned()),
        mac: None,
    }
}

/// `valid_lft` of the first IPv4 address `ip -4 -o addr show dev <dev>` lists, in seconds.
fn valid_lifetime(dev: &str) -> Option<u64> {
    let out = sh(&["ip", "-4", "-o", "addr", "show", "dev", dev]);
    let rest = out.split("valid_lft ").nth(1)?;
    rest.split_whitespace()
        .next()?
        .trim_end_matches("sec")
        .parse()
        .ok()
}

fn wait_for_log(path: &Path, needle: &str, limit: Duration) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn dhcp_lease_from_dnsmasq_is_applied_and_renewed() {
    if !can_run("dhcp_lease_from_dnsmasq_is_applied_and_renewed", &[IP, DNSMASQ]) {
        return;
    }
    enter_new_network_namespace().unwrap();
    let server = Netns::new("dhcp");
    sh(&[
        "ip", "link", "add", "vc0", "type", "veth", "peer", "name", "vs0", "netns", &server.0,
    ]);
    sh(&["ip", "-n", &server.0, "addr", "add", "10.77.0.1/24", "dev", "vs0"]);
    sh(&["ip", "-n", &server.0, "link", "set", "vs0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("dnsmasq.log");
    let lease_file = dir.path().join("leases");
    let dnsmasq = Killed(
        Command::new(which("ip").unwrap())
            .args(["netns", "exec", &server.0])
            .arg(which("dnsmasq").unwrap())
            .args(["--keep-in-foreground", "--conf-file=/dev/null"])
            .args([
                "--no-resolv",
                "--no-hosts",
                "--port=0",
                "--user=root",
                "--pid-file",
            ])
            .args(["--interface=vs0", "--bind-interfaces", "--log-dhcp"])
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--dhcp-leasefile={}", lease_file.display()))
            // The shortest lease dnsmasq grants is 120 s; T1 makes the renewal come after 8 s.
            .args(["--dhcp-range=10.77.0.50,10.77.0.60,255.255.255.0,120s"])
            .args([
                "--dhcp-option=option:router,10.77.0.1",
                "--dhcp-option=option:dns-server,10.77.0.53",
            ])
            .args([
                "--dhcp-option=option:ntp-server,10.77.0.123",
                "--dhcp-option=option:domain-name,test.internal",
            ])
            .args(["--dhcp-option=option:T1,8", "--dhcp-option=option:T2,100"])
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_for_log(&log, "DHCP, IP range", Duration::from_secs(5)),
        "dnsmasq did not start"
    );

    let sys = FakeSys::new();
    let resolv = dir.path().join("resolv.conf");
    let cfg = config::Network {
        interfaces: vec![config::Interface {
            matches: interface("vc0"),
            ..Default::default()
        }],
    };
    let mut net = Network::start_with(
        &sys,
        &cfg,
        boottime(),
        Options {
            resolv_conf: resolv.clone(),
        },
    )
    .unwrap();
    assert!(!net.configured());
    assert!(
        net.summary()
            .starts_with("interface=vc0 address=none via=dhcp state="),
        "{}",
        net.summary()
    );

    let bound = pump(&mut net, &sys, Duration::from_secs(15), |n, _| n.configured());
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        bound,
        "no lease within 15 s; console: {:?}\ndnsmasq: {server_log}",
        sys.console_lines()
    );

    // What the kernel now has.
    let addr = sh(&["ip", "-4", "-o", "addr", "show", "dev", "vc0"]);
    let ip = addr
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap()
        .to_owned();
    assert!(ip.starts_with("10.77.0.") && ip.ends_with("/24"), "{addr}");
    let lifetime = valid_lifetime("vc0").unwrap();
    assert!(
        (100..=120).contains(&lifetime),
        "the address lives as long as the lease: {addr}"
    );
    let route = sh(&["ip", "-4", "route", "show", "default"]);
    assert_eq!(route.trim(), "default via 10.77.0.1 dev vc0 proto dhcp");
    assert!(sh(&["ip", "-4", "addr", "show", "dev", "lo"]).contains("inet 127.0.0.1/8"));
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "# Written by ingot-init from the network configuration and DHCP leases.\n\
         search test.internal\n\
         nameserver 10.77.0.53\n"
    );
    assert_eq!(net.ntp_servers(), [Ipv4Addr::new(10, 77, 0, 123)]);
    assert_eq!(
        net.summary(),
        format!("interface=vc0 address={ip} gateway=10.77.0.1 dns=10.77.0.53 via=dhcp lease=120s")
    );
    let lease_line = format!("ingot: dhcp vc0: lease {ip} from 10.77.0.1 for 120s");
    assert_eq!(sys.console_lines(), std::slice::from_ref(&lease_line));

    // T1 is 8 s: the renewal goes to the server, is acknowledged and logged once.
    let renewed = pump(&mut net, &sys, Duration::from_secs(15), |_, s| {
        s.console_lines().iter().any(|l| l.contains("renewed"))
    });
    let server_log = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        renewed,
        "no renewal within 15 s; console: {:?}\ndnsmasq: {server_log}",
        sys.console_lines()
    );
    assert_eq!(
        sys.console_lines(),
        [lease_line, format!("ingot: dhcp vc0: renewed {ip} for 120s")]
    );
    assert_eq!(server_log.matches("DHCPACK").count(), 2, "{server_log}");
    assert!(net.configured());
    let lifetime = valid_lifetime("vc0").unwrap();
    assert!(
        lifetime >= 115,
        "the renewal extends the address's lifetime: {lifetime} s"
    );
    assert!(
        std::fs::read_to_string(&lease_file)
            .unwrap()
            .contains(ip.trim_end_matches("/24"))
    );

    // The server goes away. The client's clock is ours to move: renewal, rebinding and expiry pass in
    // simulated time while the kernel state is real.
    drop(dnsmasq);
    let mut now = boottime();
    for _ in 0..50 {
        if !net.configured() {
            break;
        }
        now = net.deadline().unwrap().max(now);
        net.wake(&sys, now, &[]);
    }
    assert!(!net.configured());
    let lines = sys.console_lines();
    let warnings: Vec<&String> = lines.iter().filter(|l| l.contains("warning")).collect();
    assert_eq!(
        warnings,
        [
            &format!(
                "ingot: warning dhcp vc0: no answer from DHCP server 10.77.0.1 to the renewal of {ip}, asking any server"
            ),
            &format!("ingot: warning dhcp vc0: lease of {ip} expired, address removed"),
        ]
    );
    assert!(!sh(&["ip", "-4", "addr", "show", "dev", "vc0"]).contains("inet "));
    assert_eq!(sh(&["ip", "-4", "route", "show", "default"]), "");
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "# Written by ingot-init from the network configuration and DHCP leases.\n"
    );
    assert_eq!(
        net.summary(),
        "interface=vc0 address=none via=dhcp state=discovering"
    );
    assert!(net.ntp_servers().is_empty());
}

#[test]
fn static_addresses_route_mtu_and_resolv_conf_are_applied_at_start() {
    if !can_run(
        "static_addresses_route_mtu_and_resolv_conf_are_applied_at_start",
        &[IP],
    ) {
        return;
    }
    enter_new_network_namespace().unwrap();
    sh(&["ip", "link", "add", "st0", "type", "veth", "peer", "name", "st1"]);
    sh(&["ip", "link", "set", "st1", "up"]);
    // A second link, matched by its MAC address (upper case, as a user may write it).
    sh(&["ip", "link", "add", "st2", "type", "veth", "peer", "name", "st3"]);
    sh(&["ip", "link", "set", "st3", "up"]);
    let st2 = sh(&["ip", "-o", "link", "show", "dev", "st2"]);
    let mac = st2
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_uppercase();
    let dir = tempfile::tempdir().unwrap();
    let resolv = dir.path().join("resolv.conf");
    let sys = FakeSys::new();
    let cfg = config::Network {
        interfaces: vec![
            config::Interface {
                matches: interface("st0"),
                addresses: vec!["192.168.77.5/24".into(), "192.168.78.5/24".into()],
                gateway: Some(Ipv4Addr::new(192, 168, 77, 1)),
                dns: vec![Ipv4Addr::new(9, 9, 9, 9), Ipv4Addr::new(1, 1, 1, 1)],
                mtu: Some(1400),
            },
            config::Interface {
                matches: config::InterfaceMatch {
                    name: None,
                    mac: Some(mac),
                },
                addresses: vec!["192.168.80.5/24".into()],
                gateway: Some(Ipv4Addr::new(192, 168, 80, 1)),
                dns: vec![Ipv4Addr::new(9, 9, 9, 9)],
                mtu: None,
            },
        ],
    };
    let net = Network::start_with(
        &sys,
        &cfg,
        boottime(),
        Options {
            resolv_conf: resolv.clone(),
        },
    )
    .unwrap();
    assert!(net.configured());
    assert_eq!(
        net.summary(),
        "interface=st0 address=192.168.77.5/24,192.168.78.5/24 gateway=192.168.77.1 dns=9.9.9.9,1.1.1.1 via=static; \
         interface=st2 address=192.168.80.5/24 gateway=192.168.80.1 dns=9.9.9.9 via=static"
    );
    let link = sh(&["ip", "-o", "link", "show", "dev", "st0"]);
    assert!(link.contains("mtu 1400") && link.contains(",UP"), "{link}");
    let addrs = sh(&["ip", "-4", "-o", "addr", "show", "dev", "st0"]);
    for a in [
        "inet 192.168.77.5/24 brd 192.168.77.255",
        "inet 192.168.78.5/24 brd 192.168.78.255",
    ] {
        assert!(addrs.contains(a), "{addrs}");
    }
    assert!(addrs.contains("valid_lft forever"), "{addrs}");
    assert_eq!(
        sh(&["ip", "-4", "route", "show", "default"]).trim(),
        "default via 192.168.77.1 dev st0 proto static \n\
         default via 192.168.80.1 dev st2 proto static metric 1"
    );
    assert!(sh(&["ip", "-4", "-o", "addr", "show", "dev", "st2"]).contains("inet 192.168.80.5/24"));
    assert!(sh(&["ip", "-4", "addr", "show", "dev", "lo"]).contains("inet 127.0.0.1/8"));
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "# Written by ingot-init from the network configuration and DHCP leases.\n\
         nameserver 9.9.9.9\n\
         nameserver 1.1.1.1\n"
    );
    assert!(net.fds().is_empty());
    assert_eq!(sys.console_lines(), Vec::<String>::new());
}

#[test]
fn a_gateway_outside_the_subnet_is_reached_on_link() {
    if !can_run("a_gateway_outside_the_subnet_is_reached_on_link", &[IP]) {
        return;
    }
    enter_new_network_namespace().unwrap();
    sh(&["ip", "link", "add", "st0", "type", "veth", "peer", "name", "st1"]);
    sh(&["ip", "link", "set", "st1", "up"]);
    let sys = FakeSys::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::Network {
        interfaces: vec![config::Interface {
            matches: interface("st0"),
            addresses: vec!["203.0.113.7/32".into()],
            gateway: Some(Ipv4Addr::new(203, 0, 113, 1)),
            ..Default::default()
        }],
    };
    let net = Network::start_with(
        &sys,
        &cfg,
        boottime(),
        Options {
            resolv_conf: dir.path().join("r"),
        },
    )
    .unwrap();
    assert!(net.configured());
    assert_eq!(
        sh(&["ip", "-4", "route", "show", "default"]).trim(),
        "default via 203.0.113.1 dev st0 proto static onlink"
    );
    // No name servers anywhere: the image's resolv.conf is left alone.
    assert!(!dir.path().join("r").exists());
}

#[test]
fn a_missing_link_is_waited_for_and_configured_when_it_appears() {
    if !can_run(
        "a_missing_link_is_waited_for_and_configured_when_it_appears",
        &[IP],
    ) {
        return;
    }
    enter_new_network_namespace().unwrap();
    let sys = FakeSys::new();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config::Network {
        interfaces: vec![config::Interface {
            matches: interface("late0"),
            addresses: vec!["192.168.79.5/24".into()],
            ..Default::default()
        }],
    };
    let t0 = boottime();
    let mut net = Network::start_with(
        &sys,
        &cfg,
        t0,
        Options {
            resolv_conf: dir.path().join("r"),
        },
    )
    .unwrap();
    assert!(!net.configured());
    assert_eq!(
        net.summary(),
        "interface=none match=name:late0 address=none via=static state=no-link"
    );
    assert_eq!(net.deadline(), Some(t0 + super::LINK_POLL));
    sh(&[
        "ip", "link", "add", "late0", "type", "veth", "peer", "name", "late1",
    ]);
    assert!(pump(&mut net, &sys, Duration::from_secs(3), |n, _| n.configured()));
    assert!(sh(&["ip", "-4", "-o", "addr", "show", "dev", "late0"]).contains("inet 192.168.79.5/24"));
    assert_eq!(
        sys.console_lines(),
        [
            "ingot: warning network: no link matches name:late0 yet, waiting for it",
            "ingot: network: late0 appeared"
        ]
    );
}

#[test]
fn kernel_refusals_name_the_operation() {
    if !can_run("kernel_refusals_name_the_operation", &[IP]) {
        return;
    }
    enter_new_network_namespace().unwrap();
    let mut rtnl = super::Rtnl::open().unwrap();
    let links = rtnl.links().unwrap();
    let lo = links.iter().find(|l| l.loopback).unwrap();
    assert_eq!(lo.name, "lo");
    let err = rtnl
        .remove_address(lo, "10.1.2.3/24".parse().unwrap())
        .unwrap_err();
    assert_eq!(
        crate::failure::chain(&err),
        "removing 10.1.2.3/24 from lo: Cannot assign requested address (os error 99)"
    );
    sh(&["ip", "link", "add", "er0", "type", "veth", "peer", "name", "er1"]);
    let er0 = rtnl
        .links()
        .unwrap()
        .into_iter()
        .find(|l| l.name == "er0")
        .unwrap();
    assert_eq!(er0.kind.as_deref(), Some("veth"));
    assert!(er0.ethernet && !er0.up && !er0.carrier);
    let err = rtnl.set_mtu(&er0, 10).unwrap_err();
    assert_eq!(
        crate::failure::chain(&err),
        "setting the MTU of er0 to 10: Invalid argument (os error 22)"
    );
    let mut gone = lo.clone();
    gone.index = 999;
    gone.name = "ghost0".into();
    let err = rtnl
        .add_address(&gone, "10.1.2.3/24".parse().unwrap(), None)
        .unwrap_err();
    assert_eq!(
        crate::failure::chain(&err),
        "adding 10.1.2.3/24 to ghost0: No such device (os error 19)"
    );
}
