//! The init configuration: what the builder bakes into the root at [`INIT_CONFIG_PATH`] and `ingot-init`
//! reads in stage 2. JSON, written by `ingot build` from the profile's `[node]`, `[network]`, `[time]`,
//! `[[services]]` and `[[images]]` tables.
//!
//! The builder validates a profile into these types and serializes them; the node parses them with
//! `deny_unknown_fields`, so a root built by a newer builder fails loudly instead of half-applying. The
//! network and time sections are the schema per-node configuration channels will reuse.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Where the configuration lives in the read-only root.
pub const INIT_CONFIG_PATH: &str = "/etc/ingot/init.json";
/// The schema this crate reads and writes.
pub const SCHEMA: u32 = 1;

/// Directory in the root holding container image archives to import at boot.
pub const IMAGES_DIR: &str = "/usr/share/ingot/images";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    pub schema: u32,
    /// Host name; `None`: `ingot-<first 12 hex digits of the machine-id>`, stable across boots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Kernel modules stage 2 loads (with their dependencies from `modules.dep`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modules: Vec<String>,
    /// `net.ipv4.ip_forward = "1"` → `/proc/sys/net/ipv4/ip_forward`, applied in key order.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctls: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub time: Time,
    /// Container image archives imported into containerd before the services that need them start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<Image>,
    /// Supervised services, started in dependency order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    /// Present when the image runs kubelet: the node joins the cluster its node configuration names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,
}

/// How this image's kubelet runs. `ingot-init` adds the services that join the cluster and start kubelet
/// when a node configuration is found (see `spec::node_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// The kubelet program in the root.
    pub kubelet: String,
    /// Arguments for this kubelet version, before ingot's own and the node configuration's `extra-args`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// KubeletConfiguration fields set over ingot's defaults (top-level keys replace ingot's).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub config: serde_json::Map<String, serde_json::Value>,
    /// Services (besides containerd) kubelet starts after, e.g. `images` when the profile preloads the
    /// pod sandbox image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
}

impl Default for InitConfig {
    fn default() -> Self {
        InitConfig {
            schema: SCHEMA,
            hostname: None,
            modules: Vec::new(),
            sysctls: BTreeMap::new(),
            network: Network::default(),
            time: Time::default(),
            images: Vec::new(),
            services: Vec::new(),
            kubernetes: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// Interfaces to configure. Empty: DHCP on the first Ethernet interface (by name order) with a carrier.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interface {
    /// Which link this is: by kernel name, by MAC address, or both (both must match).
    #[serde(rename = "match")]
    pub matches: InterfaceMatch,
    /// Static addresses with prefix length, `"192.168.10.5/24"`. Empty means DHCP.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Default route for static addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    /// Name servers for `/etc/resolv.conf`; with DHCP they are added before the leased ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

impl Interface {
    pub fn dhcp(&self) -> bool {
        self.addresses.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `"52:54:00:12:34:56"`, lower or upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Time {
    /// NTP servers as `"ip"` or `"ip:port"` (port 123 by default). Empty: the servers DHCP offered, if any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// The reference the archive carries, e.g. `registry.k8s.io/pause:3.6`.
    pub name: String,
    /// Absolute path of the OCI archive in the root (under [`IMAGES_DIR`]).
    pub archive: String,
    /// containerd namespace to import into; Kubernetes uses `k8s.io`.
    pub namespace: String,
    /// sha256 of the archive, checked before import.
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Program (absolute path) and arguments. No shell, no `$PATH` lookup.
    pub exec: Vec<String>,
    /// Environment on top of `PATH=/usr/sbin:/usr/bin:/sbin:/bin`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Services that must be ready (daemons) or have finished successfully (one-shots) before this starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub after: Vec<String>,
    #[serde(default)]
    pub kind: ServiceKind,
    /// How the supervisor knows a daemon is ready; `None`: as soon as it is started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<Readiness>,
    #[serde(default)]
    pub restart: Restart,
    /// How long the service gets between `SIGTERM` and `SIGKILL` when stopped.
    #[serde(default = "default_stop_timeout_ms")]
    pub stop_timeout_ms: u64,
    /// The phase printed when it is first ready; `None`: `<name>-ready`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

pub const DEFAULT_STOP_TIMEOUT_MS: u64 = 10_000;

fn default_stop_timeout_ms() -> u64 {
    DEFAULT_STOP_TIMEOUT_MS
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    /// Runs until stopped; restarted by its [`Restart`] policy.
    #[default]
    Daemon,
    /// Runs to completion once per boot; done when it exits 0.
    Oneshot,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Restart {
    /// Restart whenever it exits (daemons' default).
    #[default]
    Always,
    /// Restart only after a non-zero exit or a signal.
    OnFailure,
    Never,
}

/// A readiness check, polled until it passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum Readiness {
    /// A Unix socket at this path accepts a connection.
    Socket(String),
    /// This file exists.
    File(String),
    /// This command exits 0.
    Command(Vec<String>),
    /// `GET` on this `http://` URL (loopback) answers 2xx.
    Http(String),
}

/// Parses a configuration file's bytes, naming the field that is wrong.
pub fn parse(bytes: &[u8]) -> Result<InitConfig, String> {
    let cfg: InitConfig = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if cfg.schema != SCHEMA {
        return Err(format!(
            "schema {} is not supported (this ingot-init reads schema {SCHEMA})",
            cfg.schema
        ));
    }
    Ok(cfg)
}

/// Serializes deterministically (field order is declaration order, maps are sorted).
pub fn to_json(cfg: &InitConfig) -> String {
    // Serializing these types cannot fail: no maps with non-string keys, no non-finite floats.
    let mut s = serde_json::to_string_pretty(cfg).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_unknown_fields() {
        let cfg = InitConfig {
            hostname: Some("n1".into()),
            services: vec![Service {
                name: "containerd".into(),
                exec: vec!["/usr/bin/containerd".into()],
                env: BTreeMap::new(),
                after: vec![],
                kind: ServiceKind::Daemon,
                ready: Some(Readiness::Socket("/run/containerd/containerd.sock".into())),
                restart: Restart::Always,
                stop_timeout_ms: DEFAULT_STOP_TIMEOUT_MS,
                phase: None,
            }],
            ..InitConfig::default()
        };
        let json = to_json(&cfg);
        assert!(
            json.contains(r#""socket": "/run/containerd/containerd.sock""#),
            "{json}"
        );
        assert_eq!(parse(json.as_bytes()), Ok(cfg));
        let err = parse(br#"{"schema":1,"hostnme":"x"}"#).unwrap_err();
        assert!(err.contains("unknown field `hostnme`"), "{err}");
        let err = parse(br#"{"schema":2}"#).unwrap_err();
        assert!(err.contains("schema 2"), "{err}");
    }
}
