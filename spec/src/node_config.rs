//! The node configuration: which Kubernetes cluster a node joins and how it names itself there. TOML,
//! written by the user (or by `ingot node-config from-join-command`) and delivered to the node through one
//! of the [`Channel`]s; `ingot-init` reads the first channel that holds one.
//!
//! ```toml
//! [cluster]
//! endpoint = "10.0.0.10:6443"
//! token = "abcdef.0123456789abcdef"
//! ca-cert-hashes = ["sha256:…64 hex digits…"]
//!
//! [node]
//! name = "worker-1"                          # default: the node's host name
//! labels = { "topology.kubernetes.io/zone" = "rack-3" }
//! taints = ["dedicated=gpu:NoSchedule"]
//!
//! [kubelet]
//! extra-args = ["--v=2"]
//! ```
//!
//! The token is a secret. Nothing here ever formats it: [`BootstrapToken`]'s `Debug` and `Display` show
//! only the public id, and parse errors name the field and the rule it broke, never the text found there.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::{Network, Time};

/// Where the build bakes a node configuration into the root (`ingot build --node-config`).
pub const BAKED_PATH: &str = "/etc/ingot/node.toml";
/// QEMU fw_cfg item name (`-fw_cfg name=opt/io.ingot/node.toml,file=node.toml`).
pub const FW_CFG_NAME: &str = "opt/io.ingot/node.toml";
/// SMBIOS type 11 OEM string prefix; the rest of the string is the TOML in standard base64.
pub const SMBIOS_PREFIX: &str = "io.ingot.node=";
/// Path on the EFI system partition, so a configuration can be dropped onto a flashed USB stick.
pub const ESP_PATH: &str = "ingot/node.toml";
/// Kernel command line key; its value is the TOML in standard base64.
pub const CMDLINE_KEY: &str = "ingot.node";
/// Largest configuration any channel may deliver.
pub const MAX_BYTES: usize = 64 * 1024;

/// The channels a configuration can arrive by, highest precedence first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Channel {
    Cmdline,
    FwCfg,
    Smbios,
    Esp,
    Baked,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Cmdline,
        Channel::FwCfg,
        Channel::Smbios,
        Channel::Esp,
        Channel::Baked,
    ];

    /// The name the console and `ingot run --config-channel` use.
    pub fn name(self) -> &'static str {
        match self {
            Channel::Cmdline => "cmdline",
            Channel::FwCfg => "fw_cfg",
            Channel::Smbios => "smbios",
            Channel::Esp => "esp",
            Channel::Baked => "baked",
        }
    }

    /// Kernel modules the node loads to read this channel (when they are not built in); the builder puts
    /// them into every root whose kernel ships them.
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            Channel::Cmdline | Channel::Baked => &[],
            Channel::FwCfg => &["qemu_fw_cfg"],
            Channel::Smbios => &["dmi_sysfs"],
            // The ESP is FAT; its short names need a code page and its long names a character set.
            Channel::Esp => &["vfat", "nls_cp437", "nls_ascii"],
        }
    }

    /// Where exactly this channel's configuration is, for messages.
    pub fn source(self) -> &'static str {
        match self {
            Channel::Cmdline => "kernel command line ingot.node=",
            Channel::FwCfg => "fw_cfg opt/io.ingot/node.toml",
            Channel::Smbios => "SMBIOS OEM string io.ingot.node=",
            Channel::Esp => "ESP file ingot/node.toml",
            Channel::Baked => "/etc/ingot/node.toml in the image",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Channel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Channel::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            format!("unknown channel `{s}`; expected one of cmdline, fw_cfg, smbios, esp, baked")
        })
    }
}

/// A validated node configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub cluster: Cluster,
    pub node: Node,
    pub kubelet: Kubelet,
    /// Replaces the image's network configuration when set.
    pub network: Option<Network>,
    /// Replaces the image's time servers when set.
    pub time: Option<Time>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// The API server as `kubeadm join` takes it: `address:port`.
    pub endpoint: Endpoint,
    pub token: BootstrapToken,
    /// Hashes of the cluster CA's public key; discovery trusts a CA only if one of them matches.
    pub ca_cert_hashes: Vec<CaPin>,
    /// Trust the token-signed cluster-info alone (kubeadm's
    /// `--discovery-token-unsafe-skip-ca-verification`); only allowed with no pins.
    pub unsafe_skip_ca_verification: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// The Kubernetes node name; `None`: the host name.
    pub name: Option<String>,
    pub labels: BTreeMap<String, String>,
    /// `key[=value]:Effect`, as `kubelet --register-with-taints` takes them.
    pub taints: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kubelet {
    /// Extra kubelet command line arguments, appended after ingot's own.
    pub extra_args: Vec<String>,
}

/// The API server endpoint. An IP address, because the node resolves no names before kubelet runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
}

impl Endpoint {
    pub fn parse(s: &str) -> Result<Endpoint, String> {
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| format!("`{s}` has no port; expected address:port, e.g. 10.0.0.10:6443"))?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("port `{port}` is not a number from 1 to 65535"))?;
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let ip: IpAddr = host.parse().map_err(|_| {
            format!("`{host}` is not an IP address; the node resolves no host names before kubelet runs, so use the API server's address")
        })?;
        Ok(Endpoint { ip, port })
    }

    /// `https://<address>:<port>` with IPv6 addresses bracketed.
    pub fn url(&self) -> String {
        format!("https://{self}")
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ip {
            IpAddr::V4(ip) => write!(f, "{ip}:{}", self.port),
            IpAddr::V6(ip) => write!(f, "[{ip}]:{}", self.port),
        }
    }
}

/// A kubeadm bootstrap token `<id>.<secret>`: 6 and 16 characters of `[a-z0-9]`.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

/// The rule a token must follow, for error messages (which never show the token itself).
pub const TOKEN_RULE: &str =
    "expected <id>.<secret>: 6 and 16 characters of a-z and 0-9, as `kubeadm token create` prints";

impl BootstrapToken {
    pub fn parse(s: &str) -> Result<BootstrapToken, String> {
        let valid = |part: &str, len: usize| {
            part.len() == len && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        };
        match s.split_once('.') {
            Some((id, secret)) if valid(id, 6) && valid(secret, 16) => Ok(BootstrapToken {
                id: id.to_string(),
                secret: secret.to_string(),
            }),
            _ => Err(TOKEN_RULE.to_string()),
        }
    }

    /// The public half; the API server names the token's user `system:bootstrap:<id>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The secret half, the key of cluster-info's JWS signatures.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The whole token, for the one place it is written: the bootstrap kubeconfig.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<redacted>", self.id)
    }
}

/// A CA public key pin as `kubeadm` prints it: `sha256:<64 hex digits>`, over the certificate's raw
/// SubjectPublicKeyInfo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaPin(pub [u8; 32]);

impl CaPin {
    /// kubeadm's rules: exactly one `:`, a case-insensitive `sha256` format, 32 bytes of hex.
    pub fn parse(s: &str) -> Result<CaPin, String> {
        let mut parts = s.split(':');
        let (Some(format), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "`{s}` is not <format>:<hex>; expected sha256:<64 hex digits>"
            ));
        };
        if !format.eq_ignore_ascii_case("sha256") {
            return Err(format!("unknown hash format `{format}`; expected sha256"));
        }
        if hex.len() != 64 {
            return Err(format!(
                "the sha256 hash has {} hex digits; expected 64",
                hex.len()
            ));
        }
        let mut out = [0u8; 32];
        for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
                _ => return Err(format!("`{hex}` is not hexadecimal")),
            }
        }
        Ok(CaPin(out))
    }
}

impl fmt::Display for CaPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why a configuration was rejected: the field (dotted TOML path) or position, and the rule it broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeConfigError {
    #[error("line {line}, column {column}: {message}")]
    Syntax {
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{field}: {reason}")]
    Field { field: String, reason: String },
    #[error("is {0} bytes; at most 65536 are accepted")]
    TooLarge(usize),
    #[error("is not UTF-8 text")]
    NotUtf8,
}

fn field(field: &str, reason: impl Into<String>) -> NodeConfigError {
    NodeConfigError::Field {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// The TOML as written, before validation. Strings stay strings so a bad value is reported by field name
/// without quoting it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Raw {
    cluster: RawCluster,
    #[serde(default, skip_serializing_if = "RawNode::is_empty")]
    node: RawNode,
    #[serde(default, skip_serializing_if = "RawKubelet::is_empty")]
    kubelet: RawKubelet,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    network: Option<Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time: Option<Time>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCluster {
    endpoint: String,
    token: String,
    #[serde(default)]
    ca_cert_hashes: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    unsafe_skip_ca_verification: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNode {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    taints: Vec<String>,
}

impl RawNode {
    fn is_empty(&self) -> bool {
        self.name.is_none() && self.labels.is_empty() && self.taints.is_empty()
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKubelet {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    extra_args: Vec<String>,
}

impl RawKubelet {
    fn is_empty(&self) -> bool {
        self.extra_args.is_empty()
    }
}

impl NodeConfig {
    /// Parses and validates a configuration as a channel delivered it.
    pub fn parse(bytes: &[u8]) -> Result<NodeConfig, NodeConfigError> {
        if bytes.len() > MAX_BYTES {
            return Err(NodeConfigError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| NodeConfigError::NotUtf8)?;
        let raw: Raw = toml::from_str(text).map_err(|e| {
            // toml's Display quotes the offending source line, which may be the token: keep only the
            // position and the message.
            let (line, column) = e.span().map_or((0, 0), |s| line_column(text, s.start));
            NodeConfigError::Syntax {
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        Self::validate(raw)
    }

    fn validate(raw: Raw) -> Result<NodeConfig, NodeConfigError> {
        let endpoint =
            Endpoint::parse(raw.cluster.endpoint.trim()).map_err(|r| field("cluster.endpoint", r))?;
        let token = BootstrapToken::parse(&raw.cluster.token).map_err(|r| field("cluster.token", r))?;
        let ca_cert_hashes = raw
            .cluster
            .ca_cert_hashes
            .iter()
            .enumerate()
            .map(|(i, p)| CaPin::parse(p).map_err(|r| field(&format!("cluster.ca-cert-hashes[{i}]"), r)))
            .collect::<Result<Vec<_>, _>>()?;
        match (ca_cert_hashes.is_empty(), raw.cluster.unsafe_skip_ca_verification) {
            (true, false) => {
                return Err(field(
                    "cluster.ca-cert-hashes",
                    "is empty; give the CA hash `kubeadm token create --print-join-command` prints (or set unsafe-skip-ca-verification = true to trust the token alone)",
                ));
            }
            (false, true) => {
                return Err(field(
                    "cluster.unsafe-skip-ca-verification",
                    "is true while ca-cert-hashes are given; remove one of them",
                ));
            }
            _ => {}
        }
        if let Some(name) = &raw.node.name
            && !is_dns_subdomain(name)
        {
            return Err(field(
                "node.name",
                format!(
                    "`{name}` is not a valid node name; expected lower-case a-z, 0-9, '-' and '.', at most 253 characters, starting and ending alphanumeric"
                ),
            ));
        }
        for (key, value) in &raw.node.labels {
            if !is_label_key(key) {
                return Err(field(
                    "node.labels",
                    format!(
                        "key `{key}` is not a label key; expected [prefix/]name, name at most 63 characters of a-z, A-Z, 0-9, '-', '_', '.'"
                    ),
                ));
            }
            if !(value.is_empty() || is_label_name(value)) {
                return Err(field(
                    &format!("node.labels.\"{key}\""),
                    format!(
                        "`{value}` is not a label value; expected at most 63 characters of a-z, A-Z, 0-9, '-', '_', '.', starting and ending alphanumeric"
                    ),
                ));
            }
        }
        for (i, taint) in raw.node.taints.iter().enumerate() {
            check_taint(taint).map_err(|r| field(&format!("node.taints[{i}]"), r))?;
        }
        for (i, arg) in raw.kubelet.extra_args.iter().enumerate() {
            if !arg.starts_with("--") {
                return Err(field(
                    &format!("kubelet.extra-args[{i}]"),
                    format!("`{arg}` is not a flag; expected --name=value"),
                ));
            }
        }
        Ok(NodeConfig {
            cluster: Cluster {
                endpoint,
                token,
                ca_cert_hashes,
                unsafe_skip_ca_verification: raw.cluster.unsafe_skip_ca_verification,
            },
            node: Node {
                name: raw.node.name,
                labels: raw.node.labels,
                taints: raw.node.taints,
            },
            kubelet: Kubelet {
                extra_args: raw.kubelet.extra_args,
            },
            network: raw.network,
            time: raw.time,
        })
    }

    /// The TOML form, as `ingot node-config` writes it. It holds the token: write it with mode 0600.
    pub fn to_toml(&self) -> String {
        let raw = Raw {
            cluster: RawCluster {
                endpoint: self.cluster.endpoint.to_string(),
                token: self.cluster.token.expose(),
                ca_cert_hashes: self
                    .cluster
                    .ca_cert_hashes
                    .iter()
                    .map(|p| p.to_string())
                    .collect(),
                unsafe_skip_ca_verification: self.cluster.unsafe_skip_ca_verification,
            },
            node: RawNode {
                name: self.node.name.clone(),
                labels: self.node.labels.clone(),
                taints: self.node.taints.clone(),
            },
            kubelet: RawKubelet {
                extra_args: self.kubelet.extra_args.clone(),
            },
            network: self.network.clone(),
            time: self.time.clone(),
        };
        // Serializing plain strings, maps and vectors cannot fail.
        toml::to_string(&raw).unwrap_or_default()
    }

    /// Builds a configuration from the command `kubeadm token create --print-join-command` prints.
    pub fn from_join_command(command: &str) -> Result<NodeConfig, String> {
        let words = split_words(command)?;
        // Accept the command with or without a leading `sudo` and `kubeadm join`.
        let skip_prefix = words
            .iter()
            .take_while(|w| matches!(w.as_str(), "sudo" | "kubeadm" | "join") || w.ends_with("/kubeadm"))
            .count();
        let mut args = words[skip_prefix..].iter();
        let mut endpoint = None;
        let mut token = None;
        let mut discovery_token = None;
        let mut tls_token = None;
        let mut pins = Vec::new();
        let mut skip = false;
        let mut name = None;
        while let Some(arg) = args.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                if endpoint.replace(arg.clone()).is_some() {
                    return Err(format!("`{arg}`: a second API server endpoint; expected one"));
                }
                continue;
            };
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) => (f, Some(v.to_string())),
                None => (flag, None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next().cloned())
                    .ok_or_else(|| format!("--{flag} needs a value"))
            };
            match flag {
                "token" => token = Some(value()?),
                "discovery-token" => discovery_token = Some(value()?),
                "tls-bootstrap-token" => tls_token = Some(value()?),
                "discovery-token-ca-cert-hash" => pins.push(value()?),
                "node-name" => name = Some(value()?),
                "discovery-token-unsafe-skip-ca-verification" => skip = true,
                "control-plane"
                | "certificate-key"
                | "apiserver-advertise-address"
                | "apiserver-bind-port" => {
                    return Err(format!(
                        "--{flag}: ingot nodes join as workers; joining the control plane is not supported"
                    ));
                }
                "cri-socket" | "v" | "ignore-preflight-errors" | "skip-phases" => {
                    value()?;
                }
                other => return Err(format!("--{other} is not a kubeadm join flag ingot understands")),
            }
        }
        let endpoint = endpoint.ok_or("no API server endpoint (address:port) in the command")?;
        let discovery = discovery_token
            .or_else(|| token.clone())
            .ok_or("no --token in the command")?;
        if let Some(tls) = tls_token.or(token.clone())
            && tls != discovery
        {
            return Err(
                "--discovery-token and --tls-bootstrap-token differ; ingot uses one token for both".into(),
            );
        }
        let mut toml = String::new();
        let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
        toml.push_str(&format!(
            "[cluster]\nendpoint = {}\ntoken = {}\n",
            quote(&endpoint),
            quote(&discovery)
        ));
        let pins: Vec<String> = pins.iter().map(|p| quote(p)).collect();
        toml.push_str(&format!("ca-cert-hashes = [{}]\n", pins.join(", ")));
        if skip {
            toml.push_str("unsafe-skip-ca-verification = true\n");
        }
        if let Some(name) = name {
            toml.push_str(&format!("[node]\nname = {}\n", quote(&name)));
        }
        NodeConfig::parse(toml.as_bytes()).map_err(|e| match e {
            NodeConfigError::Field { field, reason } => format!("{}: {reason}", flag_for(&field)),
            other => other.to_string(),
        })
    }
}

/// The `kubeadm join` flag a node configuration field comes from.
fn flag_for(field: &str) -> &str {
    match field.split('[').next().unwrap_or(field) {
        "cluster.endpoint" => "the API server endpoint",
        "cluster.token" => "--token",
        "cluster.ca-cert-hashes" => "--discovery-token-ca-cert-hash",
        "cluster.unsafe-skip-ca-verification" => "--discovery-token-unsafe-skip-ca-verification",
        "node.name" => "--node-name",
        other => other,
    }
}

/// Splits a shell command line into words: whitespace, single and double quotes, backslash escapes and
/// backslash-newline continuations (kubeadm prints its join command over several lines).
fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('\n') => {}
                Some(e) => {
                    word.push(e);
                    in_word = true;
                }
                None => return Err("the command ends with a lone backslash".into()),
            },
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(q) => word.push(q),
                        None => return Err("a single quote is not closed".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e) => word.push(e),
                            None => return Err("a double quote is not closed".into()),
                        },
                        Some(q) => word.push(q),
                        None => return Err("a double quote is not closed".into()),
                    }
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_alphanumeric()
}

/// RFC 1123 subdomain, as Kubernetes requires of node names.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            let b = l.as_bytes();
            !b.is_empty()
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
}

fn is_label_key(s: &str) -> bool {
    match s.rsplit_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_label_name(name),
        None => is_label_name(s),
    }
}

fn check_taint(s: &str) -> Result<(), String> {
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| {
        format!("`{s}` has no effect; expected key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
    })?;
    if !matches!(effect, "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Err(format!(
            "effect `{effect}` is not NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if !is_label_key(key) {
        return Err(format!("key `{key}` is not a valid taint key"));
    }
    if !(value.is_empty() || is_label_name(value)) {
        return Err(format!("value `{value}` is not a valid taint value"));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
