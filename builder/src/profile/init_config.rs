//! `[node]`, `[network]`, `[time]` and `[[services]]` → [`InitConfig`], the JSON ingot-init reads.
//!
//! Everything that can be checked without the staged root is checked here, with the file and line of the
//! offending value. What needs the root (that a service's program exists and is executable) is returned
//! as [`Executable`] requirements for the build to check after staging.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Component as PathComponent, Path, PathBuf};

use ingot_spec::config::{
    DEFAULT_STOP_TIMEOUT_MS, InitConfig, Interface, InterfaceMatch, Kubernetes, Network, Readiness, Restart,
    Service, ServiceKind, Time,
};

use super::ProfileError;
use super::raw::*;

/// The built-in one-shot service of ingot-init that imports the profile's container images into
/// containerd; services may name it in `after`.
pub const IMAGES_SERVICE: &str = "images";
/// The service the built-in `images` service runs after.
pub const CONTAINERD_SERVICE: &str = "containerd";
/// Longest host name the kernel accepts (`HOST_NAME_MAX`).
const HOST_NAME_MAX: usize = 64;
/// Longest interface name the kernel accepts (`IFNAMSIZ` - 1).
const IFNAME_MAX: usize = 15;

/// A program the staged root must hold, executable, for the profile to be valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executable {
    /// The service that runs it.
    pub service: String,
    /// `exec[0]` or `ready.command[0]`.
    pub field: &'static str,
    /// Absolute path in the image.
    pub path: PathBuf,
    /// Where it was written.
    pub origin: Option<Origin>,
}

struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, at: &Option<Origin>, field: impl Into<String>, message: impl Into<String>) -> ProfileError {
        match at {
            Some(o) => ProfileError::InvalidAt {
                path: o.file.clone(),
                line: o.line,
                field: field.into(),
                message: message.into(),
            },
            None => ProfileError::Invalid {
                path: self.path.to_path_buf(),
                field: field.into(),
                message: message.into(),
            },
        }
    }
}

/// Validates the init configuration tables of a merged profile.
pub fn validate(
    path: &Path,
    node: Option<RawNode>,
    network: Option<RawNetwork>,
    time: Option<RawTime>,
    services: Option<Vec<Located<RawService>>>,
    kubernetes: Option<RawKubernetes>,
) -> Result<(InitConfig, Vec<Executable>), ProfileError> {
    let cx = Ctx { path };
    let node = node.unwrap_or_default();
    let hostname = match node.hostname {
        None => None,
        Some(h) => {
            check_hostname(&h.value).map_err(|m| cx.err(&h.origin, "node.hostname", m))?;
            Some(h.value)
        }
    };
    let mut modules: Vec<String> = Vec::new();
    for (i, m) in node.modules.unwrap_or_default().into_iter().enumerate() {
        let ok = !m.value.is_empty()
            && m.value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !ok {
            return Err(cx.err(
                &m.origin,
                format!("node.modules[{i}]"),
                format!("{:?} is not a module name (letters, digits, `_`, `-`)", m.value),
            ));
        }
        // A base and its child may both list a module; load it once, at its first place.
        if !modules.contains(&m.value) {
            modules.push(m.value);
        }
    }
    let mut sysctls = BTreeMap::new();
    for (key, v) in node.sysctls.unwrap_or_default() {
        let field = format!("node.sysctls.\"{key}\"");
        check_sysctl_key(&key).map_err(|m| cx.err(&v.origin, &field, m))?;
        let value = match v.value {
            RawSysctlValue::Text(t) => t,
            RawSysctlValue::Integer(n) => n.to_string(),
        };
        if value.contains(['\n', '\0']) {
            return Err(cx.err(&v.origin, &field, "must be one line"));
        }
        sysctls.insert(key, value);
    }

    let mut interfaces: Vec<Interface> = Vec::new();
    for (i, iface) in network
        .and_then(|n| n.interfaces)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let field = format!("network.interfaces[{i}]");
        let parsed = interface(&cx, &field, iface)?;
        interfaces.push(parsed);
    }

    let mut servers = Vec::new();
    for (i, s) in time
        .and_then(|t| t.servers)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let field = format!("time.servers[{i}]");
        let ok = s.value.parse::<Ipv4Addr>().is_ok()
            || s.value.parse::<SocketAddrV4>().is_ok_and(|a| a.port() != 0);
        if !ok {
            return Err(cx.err(
                &s.origin,
                field,
                format!(
                    "{:?} is not an IPv4 address or address:port (e.g. \"192.168.1.1\", \"10.0.0.1:123\")",
                    s.value
                ),
            ));
        }
        if servers.contains(&s.value) {
            return Err(cx.err(&s.origin, field, format!("{:?} is listed twice", s.value)));
        }
        servers.push(s.value);
    }

    let (services, mut executables) = services_config(&cx, services.unwrap_or_default())?;
    let kubernetes = match kubernetes {
        None => None,
        Some(k) => Some(kubernetes_config(&cx, k, &services, &mut executables)?),
    };
    let config = InitConfig {
        hostname,
        modules,
        sysctls,
        network: Network { interfaces },
        time: Time { servers },
        // The archives' paths and hashes are known only once the build has written them into the root:
        // the build fills `images` then (`pipeline::init_config`).
        images: Vec::new(),
        services,
        kubernetes,
        ..InitConfig::default()
    };
    Ok((config, executables))
}

/// The services ingot-init adds for `[kubernetes]` (see `init/src/kube.rs`).
pub const KUBERNETES_SERVICES: [&str; 3] = ["join", "kubelet", "node-ready"];

/// The kubelet ingot-init runs when `[kubernetes]` is present and the node has a node configuration.
pub const DEFAULT_KUBELET: &str = "/usr/bin/kubelet";

fn kubernetes_config(
    cx: &Ctx<'_>,
    k: RawKubernetes,
    services: &[Service],
    executables: &mut Vec<Executable>,
) -> Result<Kubernetes, ProfileError> {
    let (kubelet, origin) = match k.kubelet {
        Some(l) => (l.value, l.origin),
        None => (DEFAULT_KUBELET.to_owned(), None),
    };
    let path = image_path(&kubelet).map_err(|m| cx.err(&origin, "kubernetes.kubelet", m))?;
    executables.push(Executable {
        service: "kubelet".to_owned(),
        field: "kubernetes.kubelet",
        path,
        origin,
    });
    if !services.iter().any(|s| s.name == CONTAINERD_SERVICE) {
        return Err(cx.err(
            &None,
            "kubernetes",
            "kubelet needs a container runtime: add a `containerd` service",
        ));
    }
    if let Some(s) = services
        .iter()
        .find(|s| KUBERNETES_SERVICES.contains(&s.name.as_str()))
    {
        return Err(cx.err(
            &None,
            format!("services[{}]", s.name),
            format!(
                "with [kubernetes], ingot-init runs its own services {}; rename this one",
                KUBERNETES_SERVICES.join(", ")
            ),
        ));
    }
    let mut args = Vec::new();
    for (i, a) in k.args.unwrap_or_default().into_iter().enumerate() {
        if !a.value.starts_with("--") {
            return Err(cx.err(
                &a.origin,
                format!("kubernetes.args[{i}]"),
                format!("{:?} is not a flag; expected --name=value", a.value),
            ));
        }
        args.push(a.value);
    }
    let mut after = Vec::new();
    for (i, a) in k.after.unwrap_or_default().into_iter().enumerate() {
        if a.value != IMAGES_SERVICE && !services.iter().any(|s| s.name == a.value) {
            return Err(cx.err(
                &a.origin,
                format!("kubernetes.after[{i}]"),
                format!("{:?} is not a service of this profile (or `images`)", a.value),
            ));
        }
        after.push(a.value);
    }
    let mut config = serde_json::Map::new();
    for (key, value) in k.config.unwrap_or_default() {
        let json = serde_json::to_value(&value).map_err(|e| {
            cx.err(
                &None,
                format!("kubernetes.config.{key}"),
                format!("cannot be expressed as JSON: {e}"),
            )
        })?;
        config.insert(key, json);
    }
    Ok(Kubernetes {
        kubelet,
        args,
        config,
        after,
    })
}

fn check_hostname(h: &str) -> Result<(), String> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    };
    if h.is_empty() || h.len() > HOST_NAME_MAX || !h.split('.').all(label_ok) {
        return Err(format!(
            "{h:?} is not a host name (dot-separated labels of lower-case letters, digits and `-`, at most {HOST_NAME_MAX} characters)"
        ));
    }
    Ok(())
}

fn check_sysctl_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.split('.').all(|seg| {
            !seg.is_empty()
                && seg != ".."
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-/".contains(&b))
        })
        && !key.starts_with('/');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{key:?} is not a sysctl name (dot-separated, e.g. \"net.ipv4.ip_forward\")"
        ))
    }
}

/// `52:54:00:12:34:56` (either case) → lower case.
pub fn parse_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.split(':').collect();
    let ok = parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    ok.then(|| s.to_ascii_lowercase())
}

/// `192.168.10.5/24` → address and prefix length; refuses the network and broadcast addresses of
/// prefixes up to /30, which cannot be a host's.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = || format!("{s:?} is not an IPv4 address with prefix length (e.g. \"192.168.10.5/24\")");
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    if !(1..=32).contains(&len) {
        return Err(format!("{s:?}: prefix length must be 1 to 32"));
    }
    if len <= 30 {
        let host_bits = u32::from(addr) & !mask(len);
        if host_bits == 0 || host_bits == !mask(len) {
            return Err(format!(
                "{s:?} is the network or broadcast address of its subnet, not a host address"
            ));
        }
    }
    Ok((addr, len))
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

fn in_subnet(ip: Ipv4Addr, (addr, len): (Ipv4Addr, u8)) -> bool {
    u32::from(ip) & mask(len) == u32::from(addr) & mask(len)
}

fn interface(cx: &Ctx<'_>, field: &str, iface: Located<RawInterface>) -> Result<Interface, ProfileError> {
    let at = iface.origin.clone();
    let i = iface.value;
    let Some(m) = i.matches else {
        return Err(cx.err(
            &at,
            format!("{field}.match"),
            "is required: match = { name = \"eth0\" } or { mac = \"52:54:00:12:34:56\" }",
        ));
    };
    let mut matches = InterfaceMatch::default();
    if let Some(name) = m.value.name {
        let ok = !name.is_empty()
            && name.len() <= IFNAME_MAX
            && name != "."
            && name != ".."
            && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
        if !ok {
            return Err(cx.err(
                &m.origin,
                format!("{field}.match.name"),
                format!(
                    "{name:?} is not an interface name (1 to {IFNAME_MAX} characters, no `/`, `:` or spaces)"
                ),
            ));
        }
        matches.name = Some(name);
    }
    if let Some(mac) = m.value.mac {
        matches.mac = Some(parse_mac(&mac).ok_or_else(|| {
            cx.err(
                &m.origin,
                format!("{field}.match.mac"),
                format!("{mac:?} is not a MAC address (six hex pairs separated by `:`)"),
            )
        })?);
    }
    if matches.name.is_none() && matches.mac.is_none() {
        return Err(cx.err(&m.origin, format!("{field}.match"), "needs `name`, `mac` or both"));
    }
    let mut addresses = Vec::new();
    let mut subnets = Vec::new();
    for (j, a) in i.addresses.unwrap_or_default().into_iter().enumerate() {
        let net =
            parse_cidr(&a.value).map_err(|m| cx.err(&a.origin, format!("{field}.addresses[{j}]"), m))?;
        if subnets.iter().any(|(ip, _)| *ip == net.0) {
            return Err(cx.err(
                &a.origin,
                format!("{field}.addresses[{j}]"),
                format!("{} is listed twice", net.0),
            ));
        }
        subnets.push(net);
        addresses.push(format!("{}/{}", net.0, net.1));
    }
    let gateway = match i.gateway {
        None => None,
        Some(g) => {
            let f = format!("{field}.gateway");
            let ip: Ipv4Addr = g
                .value
                .parse()
                .map_err(|_| cx.err(&g.origin, &f, format!("{:?} is not an IPv4 address", g.value)))?;
            if subnets.is_empty() {
                return Err(cx.err(
                    &g.origin,
                    &f,
                    "needs static `addresses` (with DHCP the gateway comes from the lease)",
                ));
            }
            if subnets.iter().any(|(a, _)| *a == ip) {
                return Err(cx.err(
                    &g.origin,
                    &f,
                    format!("{ip} is one of the interface's own addresses"),
                ));
            }
            if !subnets.iter().any(|&net| in_subnet(ip, net)) {
                return Err(cx.err(
                    &g.origin,
                    &f,
                    format!(
                        "{ip} is outside the interface's subnets ({})",
                        addresses.join(", ")
                    ),
                ));
            }
            Some(ip)
        }
    };
    let mut dns = Vec::new();
    for (j, d) in i.dns.unwrap_or_default().into_iter().enumerate() {
        let ip: Ipv4Addr = d.value.parse().map_err(|_| {
            cx.err(
                &d.origin,
                format!("{field}.dns[{j}]"),
                format!("{:?} is not an IPv4 address", d.value),
            )
        })?;
        dns.push(ip);
    }
    let mtu = match i.mtu {
        None => None,
        Some(m) => Some(
            u32::try_from(m.value)
                .ok()
                .filter(|v| (68..=65535).contains(v))
                .ok_or_else(|| {
                    cx.err(
                        &m.origin,
                        format!("{field}.mtu"),
                        format!("{} is not in 68..=65535", m.value),
                    )
                })?,
        ),
    };
    Ok(Interface {
        matches,
        addresses,
        gateway,
        dns,
        mtu,
    })
}

/// `"10s"`, `"500ms"`, `"1m30s"`, `"2h"` → milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration (e.g. \"10s\", \"500ms\", \"1m30s\")");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("{s:?} is too long"))?;
    }
    Ok(total)
}

fn check_service_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be lower-case letters, digits and `-` (not first or last), at most 64 characters"
        ))
    }
}

/// An absolute, normalised path in the image.
fn image_path(p: &str) -> Result<PathBuf, String> {
    let path = Path::new(p);
    if !path.is_absolute() || p.ends_with('/') {
        return Err(format!("{p:?} must be an absolute path to a file in the image"));
    }
    if path
        .components()
        .any(|c| matches!(c, PathComponent::ParentDir | PathComponent::CurDir))
        || p.contains("//")
    {
        return Err(format!("{p:?} must be normalised (no `.`, `..` or `//`)"));
    }
    Ok(path.to_path_buf())
}

fn check_argv(argv: &[String]) -> Result<PathBuf, String> {
    let Some(program) = argv.first() else {
        return Err("must name a program: [\"/usr/bin/x\", \"arg\", …]".to_owned());
    };
    if argv.iter().any(|a| a.contains('\0')) {
        return Err("arguments must not contain NUL".to_owned());
    }
    image_path(program).map_err(|m| format!("{m} (no `$PATH` lookup)"))
}

fn check_http_url(url: &str) -> Result<(), String> {
    let bad = || {
        format!("{url:?} must be `http://127.0.0.1[:port]/path` (a loopback IPv4 address; no name lookup)")
    };
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((h, port)) => {
            port.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(bad)?;
            h
        }
        None => authority,
    };
    let ip: Ipv4Addr = host.parse().map_err(|_| bad())?;
    if !ip.is_loopback() || url.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(())
}

fn services_config(
    cx: &Ctx<'_>,
    raw: Vec<Located<RawService>>,
) -> Result<(Vec<Service>, Vec<Executable>), ProfileError> {
    let mut services: Vec<Service> = Vec::new();
    let mut after_origins: Vec<Vec<Option<Origin>>> = Vec::new();
    let mut executables = Vec::new();
    for entry in raw {
        let at = entry.origin.clone();
        let s = entry.value;
        let name = s.name.value.clone();
        let field = format!("services[{name}]");
        check_service_name(&name).map_err(|m| cx.err(&s.name.origin, format!("{field}.name"), m))?;
        if name == IMAGES_SERVICE {
            return Err(cx.err(
                &s.name.origin,
                format!("{field}.name"),
                "\"images\" is the built-in service that imports container images; pick another name",
            ));
        }
        if services.iter().any(|x| x.name == name) {
            return Err(cx.err(
                &s.name.origin,
                format!("{field}.name"),
                format!("{name:?} is declared twice"),
            ));
        }
        let Some(exec) = s.exec else {
            return Err(cx.err(
                &at,
                format!("{field}.exec"),
                "is required: the program and its arguments",
            ));
        };
        let program =
            check_argv(&exec.value).map_err(|m| cx.err(&exec.origin, format!("{field}.exec"), m))?;
        executables.push(Executable {
            service: name.clone(),
            field: "exec[0]",
            path: program,
            origin: exec.origin.clone(),
        });
        let mut env = BTreeMap::new();
        for (key, value) in s.env.unwrap_or_default() {
            let ok = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return Err(cx.err(
                    &value.origin,
                    format!("{field}.env.{key}"),
                    format!("{key:?} is not an environment variable name (letters, digits, `_`)"),
                ));
            }
            if value.value.contains('\0') {
                return Err(cx.err(
                    &value.origin,
                    format!("{field}.env.{key}"),
                    "must not contain NUL",
                ));
            }
            env.insert(key, value.value);
        }
        let kind = match s.kind.as_ref().map(|k| k.value) {
            None | Some(RawServiceKind::Daemon) => ServiceKind::Daemon,
            Some(RawServiceKind::Oneshot) => ServiceKind::Oneshot,
        };
        let ready = match s.ready {
            None => None,
            Some(r) => {
                let f = format!("{field}.ready");
                if kind == ServiceKind::Oneshot {
                    return Err(cx.err(
                        &r.origin,
                        &f,
                        "a oneshot is done when it exits 0; readiness checks are for daemons",
                    ));
                }
                let v = r.value;
                let readiness = match (v.socket, v.file, v.command, v.http) {
                    (Some(p), None, None, None) => Readiness::Socket(
                        image_path(&p)
                            .map_err(|m| cx.err(&r.origin, format!("{f}.socket"), m))?
                            .display()
                            .to_string(),
                    ),
                    (None, Some(p), None, None) => Readiness::File(
                        image_path(&p)
                            .map_err(|m| cx.err(&r.origin, format!("{f}.file"), m))?
                            .display()
                            .to_string(),
                    ),
                    (None, None, Some(argv), None) => {
                        let program =
                            check_argv(&argv).map_err(|m| cx.err(&r.origin, format!("{f}.command"), m))?;
                        executables.push(Executable {
                            service: name.clone(),
                            field: "ready.command[0]",
                            path: program,
                            origin: r.origin.clone(),
                        });
                        Readiness::Command(argv)
                    }
                    (None, None, None, Some(url)) => {
                        check_http_url(&url).map_err(|m| cx.err(&r.origin, format!("{f}.http"), m))?;
                        Readiness::Http(url)
                    }
                    _ => {
                        return Err(cx.err(
                            &r.origin,
                            &f,
                            "needs exactly one of `socket`, `file`, `command`, `http`",
                        ));
                    }
                };
                Some(readiness)
            }
        };
        let restart = match (s.restart.as_ref().map(|r| r.value), kind) {
            (None, ServiceKind::Daemon) | (Some(RawRestart::Always), ServiceKind::Daemon) => Restart::Always,
            (None, ServiceKind::Oneshot) | (Some(RawRestart::Never), _) => Restart::Never,
            (Some(RawRestart::OnFailure), _) => Restart::OnFailure,
            (Some(RawRestart::Always), ServiceKind::Oneshot) => {
                return Err(cx.err(
                    &s.restart.and_then(|r| r.origin),
                    format!("{field}.restart"),
                    "\"always\" would run a oneshot forever; use \"on-failure\" or \"never\"",
                ));
            }
        };
        let stop_timeout_ms = match &s.stop_timeout {
            None => DEFAULT_STOP_TIMEOUT_MS,
            Some(t) => parse_duration_ms(&t.value)
                .map_err(|m| cx.err(&t.origin, format!("{field}.stop_timeout"), m))?,
        };
        let mut after = Vec::new();
        let mut after_at = Vec::new();
        for a in s.after.unwrap_or_default() {
            if after.contains(&a.value) {
                return Err(cx.err(
                    &a.origin,
                    format!("{field}.after"),
                    format!("{:?} is listed twice", a.value),
                ));
            }
            after.push(a.value);
            after_at.push(a.origin);
        }
        services.push(Service {
            name,
            exec: exec.value,
            env,
            after,
            kind,
            ready,
            restart,
            stop_timeout_ms,
            phase: None,
        });
        after_origins.push(after_at);
    }
    check_graph(cx, &services, &after_origins)?;
    Ok((services, executables))
}

/// `after` names must exist (or be the built-in `images`), and the graph must be acyclic. `images` runs
/// after `containerd`, so that edge is part of the graph.
fn check_graph(
    cx: &Ctx<'_>,
    services: &[Service],
    after_at: &[Vec<Option<Origin>>],
) -> Result<(), ProfileError> {
    let has_containerd = services.iter().any(|s| s.name == CONTAINERD_SERVICE);
    for (s, ats) in services.iter().zip(after_at) {
        for (dep, at) in s.after.iter().zip(ats) {
            let field = format!("services[{}].after", s.name);
            if *dep == s.name {
                return Err(cx.err(at, field, format!("{dep:?} cannot wait for itself")));
            }
            if dep == IMAGES_SERVICE {
                if !has_containerd {
                    return Err(cx.err(
                        at,
                        field,
                        "the built-in \"images\" service imports into containerd: declare a service named \"containerd\"",
                    ));
                }
                continue;
            }
            if !services.iter().any(|x| x.name == *dep) {
                let known: Vec<&str> = services.iter().map(|x| x.name.as_str()).collect();
                return Err(cx.err(
                    at,
                    field,
                    format!(
                        "{dep:?} is not a service (known: {}, and the built-in \"images\")",
                        known.join(", ")
                    ),
                ));
            }
        }
    }
    // Depth-first search over `after` edges in declaration order; the first back edge is the cycle shown.
    let mut edges: HashMap<&str, Vec<&str>> = services
        .iter()
        .map(|s| (s.name.as_str(), s.after.iter().map(String::as_str).collect()))
        .collect();
    if has_containerd {
        edges.insert(IMAGES_SERVICE, vec![CONTAINERD_SERVICE]);
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Active,
        Done,
    }
    fn visit<'a>(
        node: &'a str,
        edges: &HashMap<&'a str, Vec<&'a str>>,
        marks: &mut HashMap<&'a str, Mark>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<&'a str>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Active) => {
                let start = stack.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node);
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node, Mark::Active);
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node, Mark::Done);
        None
    }
    let mut marks = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(&s.name, &edges, &mut marks, &mut stack) {
            let first = cycle[0];
            let at = services
                .iter()
                .position(|x| x.name == first)
                .and_then(|j| after_at[j].first().cloned().flatten())
                .or_else(|| after_at[i].first().cloned().flatten());
            return Err(cx.err(
                &at,
                format!("services[{first}].after"),
                format!("services wait for each other in a cycle: {}", cycle.join(" → ")),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("10s"), Ok(10_000));
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_duration_ms("0s"), Ok(0));
        for bad in ["", "10", "s", "10x", "1.5s", "-1s", "10 s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
        assert!(parse_duration_ms("99999999999999999h").is_err());
    }

    #[test]
    fn cidrs_and_macs() {
        assert_eq!(
            parse_cidr("192.168.10.5/24"),
            Ok(("192.168.10.5".parse().unwrap(), 24))
        );
        assert_eq!(parse_cidr("10.0.0.1/32").unwrap().1, 32);
        assert_eq!(parse_cidr("10.0.0.0/31").unwrap().1, 31);
        for bad in [
            "192.168.10.5",
            "192.168.10.5/33",
            "192.168.10.5/0",
            "300.1.1.1/24",
            "fe80::1/64",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
        assert!(
            parse_cidr("192.168.10.0/24")
                .unwrap_err()
                .contains("network or broadcast")
        );
        assert!(
            parse_cidr("192.168.10.255/24")
                .unwrap_err()
                .contains("network or broadcast")
        );
        assert_eq!(
            parse_mac("52:54:00:AB:cd:ef").as_deref(),
            Some("52:54:00:ab:cd:ef")
        );
        for bad in [
            "52:54:00:ab:cd",
            "52-54-00-ab-cd-ef",
            "52:54:00:ab:cd:eg",
            "525:4:00:ab:cd:ef",
        ] {
            assert_eq!(parse_mac(bad), None, "{bad}");
        }
    }

    #[test]
    fn http_readiness_is_loopback_only() {
        assert!(check_http_url("http://127.0.0.1:10248/healthz").is_ok());
        assert!(check_http_url("http://127.0.0.1/").is_ok());
        for bad in [
            "https://127.0.0.1/healthz",
            "http://localhost:10248/healthz",
            "http://10.0.0.1/healthz",
            "http://127.0.0.1:0/",
            "http://127.0.0.1:x/",
        ] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
    }

    mod fuzz {
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn parsers_never_panic(s in "\\PC{0,40}") {
                let _ = super::super::parse_duration_ms(&s);
                let _ = super::super::parse_cidr(&s);
                let _ = super::super::parse_mac(&s);
                let _ = super::super::check_http_url(&s);
            }
        }
    }
}
