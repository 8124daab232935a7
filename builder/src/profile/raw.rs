//! The profile as written in TOML: every field optional so that `extends` can merge before anything is
//! required. Unknown keys are rejected here, with the line and column, by serde.
//!
//! Values of the init configuration tables (`[node]`, `[network]`, `[time]`, `[[services]]`) are
//! [`Located`]: they remember the file and line they were written on, so a validation error after
//! merging `extends` still points at the right file.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Name of another profile in the same directory (without `.toml`), or a path relative to this file.
    pub extends: Option<String>,
    pub image: Option<RawImage>,
    pub archive: Option<RawArchive>,
    /// `[base.apt]`: the root starts from packages installed by `mmdebstrap` from an apt archive.
    pub base: Option<RawBase>,
    pub kernel: Option<RawKernel>,
    pub bootloader: Option<RawBootloader>,
    pub partitions: Option<RawPartitions>,
    pub components: Option<Vec<RawComponent>>,
    /// Container images preloaded into the root (`[[images]]`).
    pub images: Option<Vec<RawContainerImage>>,
    pub files: Option<Vec<RawFile>>,
    pub node: Option<RawNode>,
    pub network: Option<RawNetwork>,
    pub time: Option<RawTime>,
    pub services: Option<Vec<Located<RawService>>>,
    pub kubernetes: Option<RawKubernetes>,
}

/// `[kubernetes]`: the image runs kubelet and joins the cluster its node configuration names.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKubernetes {
    /// The kubelet program in the image (default `/usr/bin/kubelet`).
    pub kubelet: Option<Located<String>>,
    /// Arguments this kubelet version needs.
    pub args: Option<Vec<Located<String>>>,
    /// KubeletConfiguration fields over ingot's defaults.
    pub config: Option<BTreeMap<String, toml::Value>>,
    /// Services kubelet starts after, besides containerd.
    pub after: Option<Vec<Located<String>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImage {
    pub name: Option<String>,
    pub version: Option<String>,
    pub source_date_epoch: Option<u64>,
    pub zstd_level: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    pub url: Option<String>,
    pub suite: Option<String>,
    pub components: Option<Vec<String>>,
    pub arch: Option<String>,
    pub keyring: Option<String>,
}

/// `[base]`: what the root starts from before components are staged on top.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBase {
    pub apt: Option<RawApt>,
}

/// `[base.apt]`: an apt archive and the packages installed from it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApt {
    pub mirror: Option<String>,
    pub suite: Option<String>,
    /// More suites of the same archive whose newer versions win (`noble-updates`, `noble-security`).
    pub extra_suites: Option<Vec<String>>,
    pub components: Option<Vec<String>>,
    pub arch: Option<String>,
    /// The archive's OpenPGP keyring, relative to the profile.
    pub keyring: Option<String>,
    pub packages: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    /// `"base"`: the kernel is the one the apt base installs (its `/boot/vmlinuz-*` and modules).
    pub from: Option<String>,
    /// Exactly one of `package` (resolved by `ingot lock` in the profile's archive), `url` + `sha256`, or
    /// `path` (a local file, relative to the profile).
    pub package: Option<String>,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub path: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub initrd_modules: Option<Vec<String>>,
    pub root_modules: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBootloader {
    /// Exactly one of `package` (resolved by `ingot lock` in the profile's archive), `url` + `sha256`, or
    /// `path` (a local file, relative to the profile).
    pub package: Option<String>,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub path: Option<String>,
    pub timeout: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPartitions {
    pub esp: Option<RawSize>,
    pub root: Option<RawSize>,
    pub var: Option<RawSize>,
}

/// A size as bytes (`268435456`) or with a binary suffix (`"256M"`, `"1G"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawComponent {
    pub name: String,
    /// Exactly one of `package` (resolved by `ingot lock` in the profile's archive), `url` + `sha256`, or
    /// `path` (a local file, relative to the profile).
    pub package: Option<String>,
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub path: Option<String>,
    /// Which files to take; all of them when absent.
    pub files: Option<Vec<RawFileMap>>,
    /// Whether the files land in the root (`true` by default); `false` for a component that only feeds an
    /// `[[images]]` entry.
    pub install: Option<bool>,
    /// Also take the package's `Pre-Depends` + `Depends` closure (package sources only).
    pub depends: Option<bool>,
    /// Packages the closure must not pull.
    pub exclude: Option<Vec<String>>,
    /// `true` in a profile that `extends` another: drop the base's component of this name.
    pub remove: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFileMap {
    /// Path inside the component (package or archive), without a leading `/`.
    pub src: String,
    /// Absolute path in the image; defaults to `/` + `src`.
    pub dst: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// Absolute path in the image.
    pub path: String,
    /// Inline content.
    pub content: Option<String>,
    /// A file on the build host, relative to the profile.
    pub source: Option<String>,
    /// Octal permission bits, e.g. `"0644"`.
    pub mode: Option<String>,
}

/// A container image archive preloaded into the root, imported into containerd at boot.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawContainerImage {
    /// The reference it is imported as, e.g. `registry.k8s.io/pause:3.6`.
    pub name: String,
    /// containerd namespace (`k8s.io` by default).
    pub namespace: Option<String>,
    /// Exactly one of `url` + `sha256` or `path` (an OCI image archive), or `from` (a component name).
    pub url: Option<String>,
    pub sha256: Option<String>,
    pub path: Option<String>,
    pub from: Option<String>,
    /// Only with `from`: the image's entrypoint, default arguments and environment.
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<std::collections::BTreeMap<String, String>>,
}

/// Where a value was written: the profile file and the 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: PathBuf,
    pub line: usize,
}

/// A value with its place in the file. The byte span comes from the TOML parser; [`Located::origin`] is
/// filled in right after parsing, while the file's text is at hand (see `locate` in the parent module).
#[derive(Debug, Clone)]
pub struct Located<T> {
    pub value: T,
    pub span: Range<usize>,
    pub origin: Option<Origin>,
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = toml::Spanned::<T>::deserialize(d)?;
        Ok(Located {
            span: spanned.span(),
            value: spanned.into_inner(),
            origin: None,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNode {
    pub hostname: Option<Located<String>>,
    /// Kernel modules stage 2 loads; also copied into the root.
    pub modules: Option<Vec<Located<String>>>,
    /// `"net.ipv4.ip_forward" = "1"` (an integer is taken as its decimal text).
    pub sysctls: Option<BTreeMap<String, Located<RawSysctlValue>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RawSysctlValue {
    Text(String),
    Integer(i64),
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNetwork {
    pub interfaces: Option<Vec<Located<RawInterface>>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInterface {
    /// `{ name = "eth0" }`, `{ mac = "52:54:00:12:34:56" }` or both.
    #[serde(rename = "match")]
    pub matches: Option<Located<RawMatch>>,
    pub addresses: Option<Vec<Located<String>>>,
    pub gateway: Option<Located<String>>,
    pub dns: Option<Vec<Located<String>>>,
    pub mtu: Option<Located<i64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub name: Option<String>,
    pub mac: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTime {
    /// `"ip"` or `"ip:port"`.
    pub servers: Option<Vec<Located<String>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawService {
    pub name: Located<String>,
    pub exec: Option<Located<Vec<String>>>,
    pub env: Option<BTreeMap<String, Located<String>>>,
    pub after: Option<Vec<Located<String>>>,
    pub kind: Option<Located<RawServiceKind>>,
    pub ready: Option<Located<RawReady>>,
    pub restart: Option<Located<RawRestart>>,
    /// `"10s"`, `"500ms"`, `"1m30s"`.
    pub stop_timeout: Option<Located<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawServiceKind {
    Daemon,
    Oneshot,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawRestart {
    Always,
    OnFailure,
    Never,
}

/// Exactly one of the fields.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReady {
    pub socket: Option<String>,
    pub file: Option<String>,
    pub command: Option<Vec<String>>,
    pub http: Option<String>,
}
