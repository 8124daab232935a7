//! Joining a Kubernetes cluster: the services stage 2 adds when the image runs kubelet (`[kubernetes]` in
//! the profile) and a node configuration was found, and the `kubelet` applet that starts kubelet.
//!
//! Three ordinary services, so the supervisor orders, restarts, logs and reports them like any other:
//!
//! - `join` (one-shot, phase `discovered`): `ingot-init join` does kubeadm's token discovery and writes
//!   the bootstrap kubeconfig; skipped when kubelet holds credentials from an earlier boot.
//! - `kubelet` (daemon, phase `joined`): `ingot-init kubelet` writes the KubeletConfiguration and execs
//!   kubelet, which posts a CSR with the bootstrap token; ready once its client certificate exists.
//! - `node-ready` (one-shot, phase `node-ready`): `ingot-init node-ready` waits until the API server
//!   reports the Node Ready, then wipes the bootstrap kubeconfig (the only file that held the token).
//!
//! Everything kubelet keeps lives under `/var/lib/kubelet` (the persistent var partition), so later
//! boots reuse the issued credentials. `/etc` is a tmpfs overlay and holds nothing of this.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ingot_join::{DiscoveryOptions, HttpOptions, NodeReadiness};
use ingot_spec::config::{self, InitConfig, Kubernetes, Readiness, Restart, Service, ServiceKind};
use ingot_spec::node_config::NodeConfig;
use serde_json::{Value, json};

/// Where stage 2 leaves the validated node configuration (tmpfs, mode 0600).
pub const NODE_CONFIG: &str = crate::channels::RUN_PATH;
/// Written by `join`: the cluster CA, which kubelet also uses to check clients of its own API.
pub const CA_FILE: &str = "/var/lib/kubelet/pki/ca.crt";
/// Written by `join`, mode 0600: the only file that holds the token.
pub const BOOTSTRAP_KUBECONFIG: &str = "/var/lib/kubelet/bootstrap-kubeconfig";
/// Written by kubelet once its certificate is issued.
pub const KUBECONFIG: &str = "/var/lib/kubelet/kubeconfig";
pub const CERT_DIR: &str = "/var/lib/kubelet/pki";
/// kubelet's client certificate and key; its existence means the node has joined.
pub const CLIENT_CERT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.json";

pub const JOIN: &str = "join";
pub const KUBELET: &str = "kubelet";
pub const NODE_READY: &str = "node-ready";
/// Applet names (`ingot-init <applet>`).
pub const JOIN_APPLET: &str = "join";
pub const KUBELET_APPLET: &str = "kubelet";
pub const NODE_READY_APPLET: &str = "node-ready";

pub const PHASE_DISCOVERED: &str = "discovered";
pub const PHASE_JOINED: &str = "joined";
pub const PHASE_NODE_READY: &str = "node-ready";

const CONTAINERD: &str = "containerd";

/// The join, kubelet and node-ready services for an image with `[kubernetes]`.
pub fn services(k: &Kubernetes) -> Vec<Service> {
    let applet = |name: &str| vec!["/sbin/init".to_owned(), name.to_owned()];
    let mut kubelet_after = vec![CONTAINERD.to_owned(), JOIN.to_owned()];
    kubelet_after.extend(k.after.iter().cloned());
    vec![
        Service {
            name: JOIN.to_owned(),
            exec: applet(JOIN_APPLET),
            env: BTreeMap::new(),
            after: Vec::new(),
            kind: ServiceKind::Oneshot,
            ready: None,
            restart: Restart::OnFailure,
            stop_timeout_ms: 2_000,
            phase: Some(PHASE_DISCOVERED.to_owned()),
        },
        Service {
            name: KUBELET.to_owned(),
            exec: applet(KUBELET_APPLET),
            env: BTreeMap::new(),
            after: kubelet_after,
            kind: ServiceKind::Daemon,
            ready: Some(Readiness::File(CLIENT_CERT.to_owned())),
            restart: Restart::Always,
            stop_timeout_ms: config::DEFAULT_STOP_TIMEOUT_MS,
            phase: Some(PHASE_JOINED.to_owned()),
        },
        Service {
            name: NODE_READY.to_owned(),
            exec: applet(NODE_READY_APPLET),
            env: BTreeMap::new(),
            after: vec![KUBELET.to_owned()],
            kind: ServiceKind::Oneshot,
            ready: None,
            restart: Restart::OnFailure,
            stop_timeout_ms: 2_000,
            phase: Some(PHASE_NODE_READY.to_owned()),
        },
    ]
}

/// ingot's KubeletConfiguration, before the profile's `[kubernetes.config]` replaces top-level keys.
pub fn kubelet_config(k: &Kubernetes) -> Value {
    let mut cfg = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": { "enabled": false },
            "webhook": { "enabled": true },
            "x509": { "clientCAFile": CA_FILE },
        },
        "authorization": { "mode": "Webhook" },
        // ingot-init is not systemd: cgroups are managed through the filesystem.
        "cgroupDriver": "cgroupfs",
        "clusterDomain": "cluster.local",
        "clusterDNS": ["10.96.0.10"],
        "rotateCertificates": true,
    });
    if let Value::Object(map) = &mut cfg {
        for (key, value) in &k.config {
            map.insert(key.clone(), value.clone());
        }
    }
    cfg
}

/// kubelet's command line: ingot's flags, the profile's, then the node configuration's `extra-args`.
///
/// `resolv_conf` is false when the node has no `/etc/resolv.conf` (no DNS server configured): kubelet would
/// fail every pod's DNS setup, and an empty `resolvConf` in the configuration means the default path, so
/// the flag turns it off.
pub fn kubelet_args(k: &Kubernetes, node: &NodeConfig, node_name: &str, resolv_conf: bool) -> Vec<String> {
    let mut args = vec![
        format!("--config={KUBELET_CONFIG}"),
        format!("--kubeconfig={KUBECONFIG}"),
        format!("--bootstrap-kubeconfig={BOOTSTRAP_KUBECONFIG}"),
        format!("--cert-dir={CERT_DIR}"),
        format!("--hostname-override={node_name}"),
    ];
    if !resolv_conf {
        args.push("--resolv-conf=".to_owned());
    }
    if !node.node.labels.is_empty() {
        let labels: Vec<String> = node.node.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        args.push(format!("--node-labels={}", labels.join(",")));
    }
    if !node.node.taints.is_empty() {
        args.push(format!("--register-with-taints={}", node.node.taints.join(",")));
    }
    args.extend(k.args.iter().cloned());
    args.extend(node.kubelet.extra_args.iter().cloned());
    args
}

/// The node's name in the cluster: the configured one, else the host name.
pub fn node_name(node: &NodeConfig) -> Result<String, String> {
    match &node.node.name {
        Some(n) => Ok(n.clone()),
        None => std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .map_err(|e| format!("reading the host name: {e}")),
    }
}

/// Reads what every applet needs: the image's `[kubernetes]` and the node configuration.
pub fn load() -> Result<(Kubernetes, NodeConfig), String> {
    let cfg: InitConfig = std::fs::read(config::INIT_CONFIG_PATH)
        .map_err(|e| e.to_string())
        .and_then(|b| config::parse(&b))
        .map_err(|e| format!("reading {}: {e}", config::INIT_CONFIG_PATH))?;
    let k = cfg
        .kubernetes
        .ok_or_else(|| format!("{} has no kubernetes section", config::INIT_CONFIG_PATH))?;
    let bytes = std::fs::read(NODE_CONFIG).map_err(|e| format!("reading {NODE_CONFIG}: {e}"))?;
    let node = NodeConfig::parse(&bytes).map_err(|e| format!("{NODE_CONFIG}: {e}"))?;
    Ok((k, node))
}

/// `ingot-init kubelet`: writes the KubeletConfiguration and becomes kubelet. Returns only on failure.
pub fn kubelet_applet() -> i32 {
    match exec_kubelet() {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("starting kubelet: {e}");
            1
        }
    }
}

fn exec_kubelet() -> Result<std::convert::Infallible, String> {
    let (k, node) = load()?;
    let name = node_name(&node)?;
    let cfg = kubelet_config(&k);
    let text =
        serde_json::to_string_pretty(&cfg).map_err(|e| format!("encoding the kubelet configuration: {e}"))?;
    write_file(Path::new(KUBELET_CONFIG), text.as_bytes(), 0o644)?;
    let args = kubelet_args(&k, &node, &name, Path::new("/etc/resolv.conf").exists());
    println!("starting {} as node {name}", k.kubelet);
    let err = Command::new(&k.kubelet).args(&args).exec();
    Err(format!("executing {}: {err}", k.kubelet))
}

/// How often `node-ready` asks the API server, and for how long before it fails (and is restarted).
const NODE_POLL: Duration = Duration::from_millis(500);
const NODE_WAIT: Duration = Duration::from_secs(600);

/// `ingot-init join`: kubeadm's token discovery, then the bootstrap kubeconfig for kubelet. Exits 0 when
/// kubelet can start; non-zero makes the supervisor retry with backoff.
pub fn join_applet() -> i32 {
    if Path::new(KUBECONFIG).exists() {
        println!("kubelet holds credentials issued on an earlier boot ({KUBECONFIG}); skipping discovery");
        return 0;
    }
    match join() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn join() -> Result<(), String> {
    let (_, node) = load()?;
    let c = &node.cluster;
    println!(
        "discovering the cluster at {} with bootstrap token {} ({})",
        c.endpoint,
        c.token,
        if c.unsafe_skip_ca_verification {
            "CA not pinned: unsafe-skip-ca-verification".to_owned()
        } else {
            format!("{} CA pin(s)", c.ca_cert_hashes.len())
        }
    );
    let opts = DiscoveryOptions::default();
    let found = ingot_join::discovery::discover_with_progress(
        &c.endpoint,
        &c.token,
        &c.ca_cert_hashes,
        c.unsafe_skip_ca_verification,
        &opts,
        &mut |e, wait| {
            println!(
                "cluster-info not usable yet: {e}; trying again in {}s",
                wait.as_secs()
            )
        },
    )
    .map_err(|e| format!("discovery failed: {}", crate::failure::chain(&e)))?;
    write_file(Path::new(CA_FILE), &found.ca_pem, 0o644)?;
    let kubeconfig = ingot_join::kubeconfig::bootstrap_kubeconfig(&found.server, &found.ca_pem, &c.token);
    ingot_join::files::write_private(Path::new(BOOTSTRAP_KUBECONFIG), kubeconfig.as_bytes())
        .map_err(|e| e.to_string())?;
    println!(
        "cluster-info verified (signed for token id {}, CA pinned: {}); API server {}; wrote {BOOTSTRAP_KUBECONFIG}",
        c.token.id(),
        !c.unsafe_skip_ca_verification,
        found.server
    );
    Ok(())
}

/// `ingot-init node-ready`: waits until the API server reports this node Ready, asking with kubelet's
/// client certificate, then wipes the bootstrap kubeconfig: the certificate works, the token is not
/// needed any more.
pub fn node_ready_applet() -> i32 {
    match wait_node_ready() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn wait_node_ready() -> Result<(), String> {
    let (_, node) = load()?;
    let name = node_name(&node)?;
    let server = node.cluster.endpoint.url();
    let started = Instant::now();
    let mut last = String::new();
    let mut wiped = false;
    loop {
        let state = match (std::fs::read(CA_FILE), std::fs::read(CLIENT_CERT)) {
            (Ok(ca), Ok(client)) => {
                match ingot_join::node_ready(&server, &ca, &client, &name, &HttpOptions::default()) {
                    Ok(r) => {
                        if !wiped {
                            ingot_join::files::wipe(Path::new(BOOTSTRAP_KUBECONFIG))
                                .map_err(|e| e.to_string())?;
                            println!("kubelet's client certificate works; wiped {BOOTSTRAP_KUBECONFIG}");
                            wiped = true;
                        }
                        match r {
                            NodeReadiness::Ready => {
                                println!(
                                    "node {name} is Ready ({:.1}s after kubelet had its certificate)",
                                    started.elapsed().as_secs_f64()
                                );
                                return Ok(());
                            }
                            NodeReadiness::NotReady {
                                status,
                                reason,
                                message,
                            } => format!("node {name} is not Ready yet: {status} {reason} {message}"),
                            NodeReadiness::NotRegistered => format!("node {name} is not registered yet"),
                        }
                    }
                    Err(e) => format!(
                        "asking the API server about node {name}: {}",
                        crate::failure::chain(&e)
                    ),
                }
            }
            (Err(e), _) => format!("waiting for {CA_FILE}: {e}"),
            (_, Err(_)) => format!("waiting for kubelet's client certificate {CLIENT_CERT}"),
        };
        if state != last {
            println!("{state}");
            last = state;
        }
        if started.elapsed() > NODE_WAIT {
            return Err(format!(
                "node {name} not Ready after {}s: {last}",
                NODE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(NODE_POLL);
    }
}

/// Writes `path` atomically with `mode`, creating its directory first.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    ingot_join::files::write_atomic(path, bytes, mode).map_err(|e| e.to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn kubernetes() -> Kubernetes {
        Kubernetes {
            kubelet: "/usr/bin/kubelet".into(),
            args: vec!["--container-runtime=remote".into()],
            config: serde_json::from_str(r#"{"nodeStatusUpdateFrequency": "2s", "cgroupDriver": "systemd"}"#)
                .unwrap(),
            after: vec!["images".into()],
        }
    }

    fn node(extra: &str) -> NodeConfig {
        NodeConfig::parse(
            format!(
                "[cluster]\nendpoint = \"10.0.2.100:6443\"\ntoken = \"abcdef.0123456789abcdef\"\n\
                 unsafe-skip-ca-verification = true\n{extra}"
            )
            .as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn kubelet_starts_after_containerd_join_and_the_profiles_services() {
        let s = services(&kubernetes());
        let names: Vec<&str> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, [JOIN, KUBELET, NODE_READY]);
        assert_eq!(s[1].after, ["containerd", "join", "images"]);
        assert_eq!(s[1].ready, Some(Readiness::File(CLIENT_CERT.into())));
        assert_eq!(s[1].phase.as_deref(), Some("joined"));
        assert_eq!(s[2].after, ["kubelet"]);
        assert_eq!(s[2].phase.as_deref(), Some("node-ready"));
        assert!(s.iter().all(|s| s.exec[0] == "/sbin/init"));
    }

    #[test]
    fn the_profile_replaces_top_level_kubelet_settings() {
        let cfg = kubelet_config(&kubernetes());
        assert_eq!(cfg["nodeStatusUpdateFrequency"], "2s");
        assert_eq!(cfg["cgroupDriver"], "systemd");
        assert_eq!(cfg["authentication"]["x509"]["clientCAFile"], CA_FILE);
    }

    #[test]
    fn kubelet_flags_carry_the_node_name_labels_taints_and_extra_args_last() {
        let n = node(
            "[node]\nlabels = { a = \"1\", b = \"2\" }\ntaints = [\"x=y:NoSchedule\"]\n[kubelet]\nextra-args = [\"--v=3\"]\n",
        );
        let args = kubelet_args(&kubernetes(), &n, "worker-1", true);
        assert!(!args.contains(&"--resolv-conf=".to_owned()));
        assert!(kubelet_args(&kubernetes(), &n, "worker-1", false).contains(&"--resolv-conf=".to_owned()));
        assert!(args.contains(&"--hostname-override=worker-1".to_owned()));
        assert!(args.contains(&"--node-labels=a=1,b=2".to_owned()));
        assert!(args.contains(&"--register-with-taints=x=y:NoSchedule".to_owned()));
        assert!(args.contains(&format!("--bootstrap-kubeconfig={BOOTSTRAP_KUBECONFIG}")));
        assert_eq!(&args[args.len() - 2..], ["--container-runtime=remote", "--v=3"]);
        assert!(!args.iter().any(|a| a.contains("0123456789abcdef")));
    }
}
