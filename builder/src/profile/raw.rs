//! The profile as written in TOML: every field optional so that `extends` can merge before anything is
//! required. Unknown keys are rejected here, with the line and column, by serde.

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProfile {
    /// Name of another profile in the same directory (without `.toml`), or a path relative to this file.
    pub extends: Option<String>,
    pub image: Option<RawImage>,
    pub archive: Option<RawArchive>,
    pub kernel: Option<RawKernel>,
    pub bootloader: Option<RawBootloader>,
    pub partitions: Option<RawPartitions>,
    pub components: Option<Vec<RawComponent>>,
    /// Container images preloaded into the root (`[[images]]`).
    pub images: Option<Vec<RawContainerImage>>,
    pub files: Option<Vec<RawFile>>,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
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
