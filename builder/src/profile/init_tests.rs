//! The init configuration tables: parsing, merging and validation errors with file, line and field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ingot_spec::config::{Interface, InterfaceMatch, Readiness, Restart, Service, ServiceKind};

use super::*;

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A profile with no init tables (lines 1–8), for appending snippets to.
const HEAD: &str = r#"[image]
version = "1.0"
[kernel]
path = "vmlinuz.deb"
[bootloader]
path = "boot.deb"
[partitions]
root = "512M"
"#;

const FULL: &str = r#"
[node]
hostname = "worker-1"
modules = ["overlay", "br_netfilter"]
sysctls = { "net.ipv4.ip_forward" = "1", "net.bridge.bridge-nf-call-iptables" = 1 }

[[network.interfaces]]
match = { name = "eth0" }
addresses = ["192.168.10.5/24"]
gateway = "192.168.10.1"
dns = ["192.168.10.1", "1.1.1.1"]
mtu = 1500

[[network.interfaces]]
match = { mac = "52:54:00:AB:CD:EF" }

[time]
servers = ["192.168.10.1", "10.0.0.1:1123"]

[[services]]
name = "containerd"
exec = ["/usr/bin/containerd", "--log-level", "info"]
env = { GOGC = "50" }
ready = { socket = "/run/containerd/containerd.sock" }
stop_timeout = "30s"

[[services]]
name = "kubelet"
exec = ["/usr/bin/kubelet"]
after = ["containerd", "images"]
ready = { http = "http://127.0.0.1:10248/healthz" }
restart = "on-failure"

[[services]]
name = "hello"
kind = "oneshot"
exec = ["/usr/bin/ctr", "run", "--rm", "img", "hello", "/bin/busybox", "echo", "hello from a container"]
after = ["images"]
"#;

#[test]
fn init_tables_validate_into_the_init_configuration() {
    let d = tempfile::tempdir().unwrap();
    let p = load(&write(d.path(), "p.toml", &format!("{HEAD}{FULL}"))).unwrap();
    let init = &p.init;
    assert_eq!(init.hostname.as_deref(), Some("worker-1"));
    assert_eq!(init.modules, ["overlay", "br_netfilter"]);
    assert_eq!(
        init.sysctls,
        BTreeMap::from([
            ("net.bridge.bridge-nf-call-iptables".to_owned(), "1".to_owned()),
            ("net.ipv4.ip_forward".to_owned(), "1".to_owned()),
        ])
    );
    assert_eq!(
        init.network.interfaces,
        [
            Interface {
                matches: InterfaceMatch {
                    name: Some("eth0".into()),
                    mac: None
                },
                addresses: vec!["192.168.10.5/24".into()],
                gateway: Some("192.168.10.1".parse().unwrap()),
                dns: vec!["192.168.10.1".parse().unwrap(), "1.1.1.1".parse().unwrap()],
                mtu: Some(1500),
            },
            Interface {
                matches: InterfaceMatch {
                    name: None,
                    mac: Some("52:54:00:ab:cd:ef".into())
                },
                ..Interface::default()
            },
        ]
    );
    assert_eq!(init.time.servers, ["192.168.10.1", "10.0.0.1:1123"]);
    assert!(init.images.is_empty());
    assert_eq!(
        init.services[0],
        Service {
            name: "containerd".into(),
            exec: vec!["/usr/bin/containerd".into(), "--log-level".into(), "info".into()],
            env: BTreeMap::from([("GOGC".to_owned(), "50".to_owned())]),
            after: vec![],
            kind: ServiceKind::Daemon,
            ready: Some(Readiness::Socket("/run/containerd/containerd.sock".into())),
            restart: Restart::Always,
            stop_timeout_ms: 30_000,
            phase: None,
        }
    );
    assert_eq!(init.services[1].restart, Restart::OnFailure);
    assert_eq!(
        init.services[1].ready,
        Some(Readiness::Http("http://127.0.0.1:10248/healthz".into()))
    );
    let hello = &init.services[2];
    assert_eq!(
        (hello.kind, hello.restart),
        (ServiceKind::Oneshot, Restart::Never)
    );
    assert_eq!(hello.stop_timeout_ms, 10_000);
    assert_eq!(hello.exec.last().unwrap(), "hello from a container");
    // The programs are checked against the staged root later, with their place in the profile.
    let programs: Vec<(&str, &str, usize)> = p
        .executables
        .iter()
        .map(|e| {
            (
                e.service.as_str(),
                e.path.to_str().unwrap(),
                e.origin.as_ref().unwrap().line,
            )
        })
        .collect();
    assert_eq!(
        programs,
        [
            ("containerd", "/usr/bin/containerd", 30),
            ("kubelet", "/usr/bin/kubelet", 37),
            ("hello", "/usr/bin/ctr", 45)
        ]
    );
    // The JSON ingot-init reads parses back to the same configuration.
    let json = ingot_spec::config::to_json(init);
    assert_eq!(ingot_spec::config::parse(json.as_bytes()).unwrap(), *init);
}

#[test]
fn a_profile_without_init_tables_gets_the_default_configuration() {
    let d = tempfile::tempdir().unwrap();
    let p = load(&write(d.path(), "p.toml", HEAD)).unwrap();
    assert_eq!(p.init, ingot_spec::config::InitConfig::default());
    assert!(p.executables.is_empty());
}

#[test]
fn init_tables_merge_by_the_documented_rules() {
    let d = tempfile::tempdir().unwrap();
    write(d.path(), "base.toml", &format!("{HEAD}{FULL}"));
    let child = write(
        d.path(),
        "child.toml",
        r#"extends = "base"
[node]
modules = ["veth", "overlay"]
sysctls = { "net.ipv4.ip_forward" = "0", "vm.overcommit_memory" = "1" }

[[network.interfaces]]
match = { name = "eth0" }

[[network.interfaces]]
match = { name = "eth1" }
addresses = ["10.1.0.2/16"]

[time]
servers = []

[[services]]
name = "kubelet"
exec = ["/usr/local/bin/kubelet", "--v=2"]

[[services]]
name = "debug"
exec = ["/usr/bin/busybox", "sh"]
after = ["containerd"]
"#,
    );
    let init = load(&child).unwrap().init;
    assert_eq!(
        init.hostname.as_deref(),
        Some("worker-1"),
        "untouched scalars stay"
    );
    assert_eq!(
        init.modules,
        ["overlay", "br_netfilter", "veth"],
        "lists append; a module named twice loads once"
    );
    assert_eq!(
        init.sysctls["net.ipv4.ip_forward"], "0",
        "sysctls: the child's key wins"
    );
    assert_eq!(init.sysctls["vm.overcommit_memory"], "1");
    assert_eq!(init.sysctls.len(), 3, "sysctls merge key by key");
    let names: Vec<_> = init
        .network
        .interfaces
        .iter()
        .map(|i| (i.matches.name.clone(), i.matches.mac.clone(), i.dhcp()))
        .collect();
    assert_eq!(
        names,
        [
            (Some("eth0".into()), None, true),
            (None, Some("52:54:00:ab:cd:ef".into()), true),
            (Some("eth1".into()), None, false)
        ],
        "interfaces are keyed by `match`: same match replaces in place, others append"
    );
    assert!(init.time.servers.is_empty(), "an explicit empty list resets");
    let services: Vec<_> = init.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["containerd", "kubelet", "hello", "debug"]);
    assert_eq!(
        init.services[1].exec,
        ["/usr/local/bin/kubelet", "--v=2"],
        "services are keyed by name and replaced whole"
    );
    assert_eq!(
        init.services[1].ready, None,
        "a replaced service keeps nothing of the base's"
    );

    // Explicit empty tables and lists reset what the base had.
    let reset = write(
        d.path(),
        "reset.toml",
        "extends = \"base\"\nservices = []\n[node]\nmodules = []\nsysctls = {}\n[network]\ninterfaces = []\n",
    );
    let init = load(&reset).unwrap().init;
    assert!(init.services.is_empty() && init.modules.is_empty() && init.sysctls.is_empty());
    assert!(init.network.interfaces.is_empty());
    assert_eq!(init.time.servers.len(), 2);
}

/// Each case: a snippet appended after `HEAD` (which has 8 lines), the line and field the error names,
/// and a part of its message.
#[test]
fn bad_values_name_file_line_and_field() {
    let d = tempfile::tempdir().unwrap();
    let containerd = "[[services]]\nname = \"containerd\"\nexec = [\"/usr/bin/containerd\"]\n";
    let cases: Vec<(String, usize, &str, &str)> = vec![
        ("[node]\nhostname = \"Worker_1\"\n".into(), 10, "node.hostname", "not a host name"),
        ("[node]\nmodules = [\"ok\", \"bad name\"]\n".into(), 10, "node.modules[1]", "not a module name"),
        ("[node]\nsysctls = { \"net..x\" = \"1\" }\n".into(), 10, "node.sysctls.\"net..x\"", "not a sysctl name"),
        ("[[network.interfaces]]\naddresses = [\"10.0.0.2/24\"]\n".into(), 9, "network.interfaces[0].match", "is required"),
        ("[[network.interfaces]]\nmatch = { mac = \"52:54:00:12:34\" }\n".into(), 10, "network.interfaces[0].match.mac", "not a MAC address"),
        ("[[network.interfaces]]\nmatch = { name = \"eth0\" }\naddresses = [\"10.0.0.2/24\", \"10.0.0.300/24\"]\n".into(), 11, "network.interfaces[0].addresses[1]", "not an IPv4 address with prefix"),
        ("[[network.interfaces]]\nmatch = { name = \"eth0\" }\naddresses = [\"10.0.0.2/24\"]\n\ngateway = \"10.0.1.1\"\n".into(), 13, "network.interfaces[0].gateway", "outside the interface's subnets (10.0.0.2/24)"),
        ("[[network.interfaces]]\nmatch = { name = \"eth0\" }\ngateway = \"10.0.1.1\"\n".into(), 11, "network.interfaces[0].gateway", "needs static `addresses`"),
        ("[[network.interfaces]]\nmatch = { name = \"eth0\" }\nmtu = 20\n".into(), 11, "network.interfaces[0].mtu", "not in 68..=65535"),
        ("[time]\nservers = [\"ntp.example.org\"]\n".into(), 10, "time.servers[0]", "not an IPv4 address or address:port"),
        ("[[services]]\nname = \"Bad_Name\"\nexec = [\"/x\"]\n".into(), 10, "services[Bad_Name].name", "lower-case letters"),
        ("[[services]]\nname = \"a\"\nexec = [\"x\"]\n".into(), 11, "services[a].exec", "absolute path"),
        ("[[services]]\nname = \"a\"\nexec = []\n".into(), 11, "services[a].exec", "must name a program"),
        ("[[services]]\nname = \"a\"\n".into(), 9, "services[a].exec", "is required"),
        ("[[services]]\nname = \"images\"\nexec = [\"/x\"]\n".into(), 10, "services[images].name", "built-in"),
        (format!("{containerd}[[services]]\nname = \"containerd\"\nexec = [\"/y\"]\n"), 13, "services[containerd].name", "declared twice"),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nafter = [\"b\"]\n".into(), 12, "services[a].after", "\"b\" is not a service"),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nafter = [\"images\"]\n".into(), 12, "services[a].after", "declare a service named \"containerd\""),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nkind = \"oneshot\"\nready = { file = \"/run/a\" }\n".into(), 13, "services[a].ready", "readiness checks are for daemons"),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nkind = \"oneshot\"\nrestart = \"always\"\n".into(), 13, "services[a].restart", "forever"),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nready = { file = \"/a\", socket = \"/b\" }\n".into(), 12, "services[a].ready", "exactly one of"),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nready = { http = \"http://localhost:1/\" }\n".into(), 12, "services[a].ready.http", "loopback"),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nstop_timeout = \"10\"\n".into(), 12, "services[a].stop_timeout", "not a duration"),
        ("[[services]]\nname = \"a\"\nexec = [\"/x\"]\nenv = { \"1X\" = \"y\" }\n".into(), 12, "services[a].env.1X", "not an environment variable name"),
    ];
    for (snippet, line, field, message) in cases {
        let path = write(d.path(), "p.toml", &format!("{HEAD}{snippet}"));
        let msg = load(&path).unwrap_err().to_string();
        let want = format!("{}:{line}: field `{field}`: ", path.display());
        assert!(msg.starts_with(&want), "expected {want:?} in: {msg}");
        assert!(msg.contains(message), "expected {message:?} in: {msg}");
    }
}

#[test]
fn unknown_keys_and_values_in_init_tables_are_parse_errors_with_lines() {
    let d = tempfile::tempdir().unwrap();
    for (snippet, needle, line) in [
        (
            "[[services]]\nname = \"a\"\nexec = [\"/x\"]\nkind = \"deamon\"\n",
            "unknown variant `deamon`",
            12,
        ),
        (
            "[[services]]\nname = \"a\"\nexec = [\"/x\"]\nready = { sock = \"/x\" }\n",
            "unknown field `sock`",
            12,
        ),
        ("[node]\nhostnme = \"x\"\n", "unknown field `hostnme`", 10),
        (
            "[[network.interfaces]]\nmatch = { nam = \"eth0\" }\n",
            "unknown field `nam`",
            10,
        ),
    ] {
        let path = write(d.path(), "p.toml", &format!("{HEAD}{snippet}"));
        let msg = format!("{:#}", anyhow::Error::from(load(&path).unwrap_err()));
        assert!(msg.contains("p.toml") && msg.contains(needle), "{msg}");
        assert!(msg.contains(&format!("line {line}")), "{msg}");
    }
}

#[test]
fn an_error_in_a_base_profile_names_the_base_file_and_line() {
    let d = tempfile::tempdir().unwrap();
    let base = write(
        d.path(),
        "base.toml",
        &format!("{HEAD}[[services]]\nname = \"a\"\nexec = [\"/x\"]\nafter = [\"b\"]\n"),
    );
    let child = write(
        d.path(),
        "child.toml",
        "extends = \"base\"\n[image]\nversion = \"2\"\n",
    );
    let msg = load(&child).unwrap_err().to_string();
    assert!(
        msg.starts_with(&format!("{}:12: field `services[a].after`", base.display())),
        "{msg}"
    );
    // The child can fix it by declaring the missing service.
    write(
        d.path(),
        "child.toml",
        "extends = \"base\"\n[[services]]\nname = \"b\"\nexec = [\"/y\"]\n",
    );
    assert_eq!(load(&child).unwrap().init.services.len(), 2);
}

#[test]
fn service_cycles_are_shown() {
    let d = tempfile::tempdir().unwrap();
    let text = format!(
        "{HEAD}[[services]]\nname = \"a\"\nexec = [\"/x\"]\nafter = [\"c\"]\n\
         [[services]]\nname = \"b\"\nexec = [\"/x\"]\nafter = [\"a\"]\n\
         [[services]]\nname = \"c\"\nexec = [\"/x\"]\nafter = [\"b\"]\n"
    );
    let msg = load(&write(d.path(), "p.toml", &text)).unwrap_err().to_string();
    assert!(
        msg.ends_with("field `services[a].after`: services wait for each other in a cycle: a → c → b → a"),
        "{msg}"
    );
    // Through the built-in `images`, which runs after containerd.
    let text = format!(
        "{HEAD}[[services]]\nname = \"containerd\"\nexec = [\"/x\"]\nafter = [\"setup\"]\n\
         [[services]]\nname = \"setup\"\nkind = \"oneshot\"\nexec = [\"/x\"]\nafter = [\"images\"]\n"
    );
    let msg = load(&write(d.path(), "p.toml", &text)).unwrap_err().to_string();
    assert!(
        msg.contains("cycle: containerd → setup → images → containerd"),
        "{msg}"
    );
    let text = format!("{HEAD}[[services]]\nname = \"a\"\nexec = [\"/x\"]\nafter = [\"a\"]\n");
    let msg = load(&write(d.path(), "p.toml", &text)).unwrap_err().to_string();
    assert!(msg.contains("cannot wait for itself"), "{msg}");
}

#[test]
fn depends_and_exclude_need_a_package_source() {
    let d = tempfile::tempdir().unwrap();
    let archive =
        "[archive]\nurl = \"https://deb.debian.org/debian\"\nsuite = \"bookworm\"\nkeyring = \"k.pgp\"\n";
    let ok = format!(
        "{HEAD}{archive}[[components]]\nname = \"e2fsprogs\"\npackage = \"e2fsprogs\"\ndepends = true\nexclude = [\"logsave\", \"logsave\"]\n"
    );
    let p = load(&write(d.path(), "p.toml", &ok)).unwrap();
    assert!(p.components[0].depends);
    assert_eq!(p.components[0].exclude, ["logsave"]);
    for (text, field) in [
        (
            format!("{HEAD}[[components]]\nname = \"x\"\npath = \"x.deb\"\ndepends = true\n"),
            "components[0].depends",
        ),
        (
            format!("{HEAD}{archive}[[components]]\nname = \"x\"\npackage = \"x\"\nexclude = [\"y\"]\n"),
            "components[0].exclude",
        ),
        (
            format!(
                "{HEAD}{archive}[[components]]\nname = \"x\"\npackage = \"x\"\ndepends = true\nexclude = [\"Y\"]\n"
            ),
            "components[0].exclude[0]",
        ),
        (
            format!("{HEAD}[[files]]\npath = \"/etc/ingot/init.json\"\ncontent = \"{{}}\"\n"),
            "files[0].path",
        ),
    ] {
        let msg = load(&write(d.path(), "p.toml", &text)).unwrap_err().to_string();
        assert!(
            msg.contains(&format!("field `{field}`")),
            "expected {field} in: {msg}"
        );
    }
}

#[test]
fn locate_takes_names_and_paths_and_names_what_it_tried() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("profiles")).unwrap();
    let named = write(&d.path().join("profiles"), "w.toml", HEAD);
    let elsewhere = write(d.path(), "x.toml", HEAD);
    assert_eq!(locate("w", &d.path().join("profiles")).unwrap(), named);
    assert_eq!(
        locate(elsewhere.to_str().unwrap(), Path::new("/nonexistent")).unwrap(),
        elsewhere
    );
    let msg = locate("tests/profiles/none.toml", d.path())
        .unwrap_err()
        .to_string();
    assert_eq!(
        msg,
        "profile \"tests/profiles/none.toml\" not found (looked for tests/profiles/none.toml)"
    );
    let msg = locate("none", &d.path().join("profiles"))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&d.path().join("profiles/none.toml").display().to_string()),
        "{msg}"
    );
}

const CONTAINERD: &str = r#"
[[services]]
name = "containerd"
exec = ["/usr/bin/containerd"]
"#;

#[test]
fn kubernetes_table_validates_and_merges() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "base.toml",
        &format!(
            "{HEAD}{CONTAINERD}\n[kubernetes]\nargs = [\"--v=1\"]\nconfig = {{ cgroupDriver = \"cgroupfs\", maxPods = 50 }}\n"
        ),
    );
    let child = write(
        d.path(),
        "child.toml",
        "extends = \"base\"\n[kubernetes]\nkubelet = \"/opt/bin/kubelet\"\nargs = [\"--container-runtime=remote\"]\n\
         after = [\"images\"]\nconfig = { nodeStatusUpdateFrequency = \"2s\", maxPods = 20 }\n",
    );
    let p = load(&child).unwrap();
    let k = p.init.kubernetes.unwrap();
    assert_eq!(k.kubelet, "/opt/bin/kubelet");
    assert_eq!(k.args, ["--v=1", "--container-runtime=remote"]);
    assert_eq!(k.after, ["images"]);
    assert_eq!(k.config["maxPods"], 20);
    assert_eq!(k.config["cgroupDriver"], "cgroupfs");
    assert_eq!(k.config["nodeStatusUpdateFrequency"], "2s");
    assert!(
        p.executables
            .iter()
            .any(|e| e.field == "kubernetes.kubelet" && e.path == Path::new("/opt/bin/kubelet"))
    );
}

#[test]
fn kubernetes_table_errors_name_the_field() {
    let d = tempfile::tempdir().unwrap();
    let cases = [
        ("[kubernetes]\n", "kubelet needs a container runtime"),
        (
            &*format!("{CONTAINERD}[kubernetes]\nargs = [\"v=2\"]\n"),
            "kubernetes.args[0]",
        ),
        (
            &*format!("{CONTAINERD}[kubernetes]\nafter = [\"nope\"]\n"),
            "kubernetes.after[0]",
        ),
        (
            &*format!("{CONTAINERD}[kubernetes]\nkubelet = \"kubelet\"\n"),
            "kubernetes.kubelet",
        ),
        (
            &*format!(
                "{CONTAINERD}[[services]]\nname = \"kubelet\"\nexec = [\"/usr/bin/kubelet\"]\n[kubernetes]\n"
            ),
            "ingot-init runs its own services join, kubelet, node-ready",
        ),
    ];
    for (snippet, expected) in cases {
        let msg = load(&write(d.path(), "p.toml", &format!("{HEAD}{snippet}")))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(expected), "{snippet}: {msg}");
    }
}

#[test]
fn an_extending_profile_removes_a_base_component() {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "base.toml",
        &format!(
            "{HEAD}[[components]]\nname = \"crictl\"\npath = \"crictl\"\n[[components]]\nname = \"keep\"\npath = \"keep\"\n"
        ),
    );
    let child = write(
        d.path(),
        "child.toml",
        "extends = \"base\"\n[[components]]\nname = \"crictl\"\nremove = true\n",
    );
    let p = load(&child).unwrap();
    let names: Vec<&str> = p.components.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["keep"]);
    let stray = write(
        d.path(),
        "stray.toml",
        "extends = \"base\"\n[[components]]\nname = \"nothing\"\nremove = true\n",
    );
    let msg = load(&stray).unwrap_err().to_string();
    assert!(
        msg.contains("components[nothing].remove") || msg.contains(".remove"),
        "{msg}"
    );
    assert!(msg.contains("has none of this name"), "{msg}");
}

#[test]
fn host_paths_expand_home_and_environment_variables() {
    use super::merge::expand_env;
    let env = |name: &str| match name {
        "HOME" => Some("/home/u".to_owned()),
        "K8S_BIN" => Some("/cache/bin".to_owned()),
        _ => None,
    };
    assert_eq!(expand_env("~/x/y", env).unwrap(), "/home/u/x/y");
    assert_eq!(
        expand_env("${K8S_BIN}/kubelet", env).unwrap(),
        "/cache/bin/kubelet"
    );
    assert_eq!(expand_env("plain/path", env).unwrap(), "plain/path");
    assert!(
        expand_env("${NOPE}/k", env)
            .unwrap_err()
            .contains("NOPE, which is not set")
    );
    assert!(
        expand_env("${K8S_BIN/k", env)
            .unwrap_err()
            .contains("without a closing")
    );
    let d = tempfile::tempdir().unwrap();
    let p = write(
        d.path(),
        "p.toml",
        &format!("{HEAD}[[components]]\nname = \"k\"\npath = \"${{INGOT_TEST_UNSET_VARIABLE}}/kubelet\"\n"),
    );
    let msg = load(&p).unwrap_err().to_string();
    assert!(
        msg.contains("components[k].path") && msg.contains("INGOT_TEST_UNSET_VARIABLE"),
        "{msg}"
    );
}
