//! `<image>.manifest.json`: what an image holds, with hashes — partitions, the UKI, every pinned component,
//! the container images preloaded into the root, and which byte ranges of the sparse image hold data (for
//! information: what `flash` and the bmap write comes from the partitions, see `image_ranges`).
//!
//! The format is versioned (`schema`); fields are only ever added within a version.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub schema: u32,
    pub image: ImageInfo,
    pub partitions: Vec<PartitionEntry>,
    pub uki: UkiInfo,
    /// The dm-verity hash tree over root-a, whose root hash the UKI's command line carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<VerityInfo>,
    pub components: Vec<ComponentEntry>,
    /// Container image archives in the root, imported into containerd at boot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<ImageEntry>,
    /// The packages of an apt base (`[base.apt]`), as installed into the root, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packages: Vec<PackageEntry>,
    /// `[offset, length]` pairs of the image that hold data; everything else is zero (a hole).
    pub data_ranges: Vec<[u64; 2]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageInfo {
    pub name: String,
    pub version: String,
    /// The profile file name the image was built from.
    pub profile: String,
    pub disk_guid: String,
    /// Size of the raw image in bytes.
    pub size: u64,
    pub source_date_epoch: u64,
    /// sha256 of every byte outside the partitions (protective MBR, both GPTs, gaps), in order; with the
    /// partitions' hashes it covers the whole image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionEntry {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    /// SHA-256 of the partition up to its last non-zero 4 KiB block.
    pub sha256: String,
    /// How many bytes `sha256` covers.
    pub hashed_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UkiInfo {
    /// Path on the ESP.
    pub path: String,
    pub sha256: String,
    pub cmdline: String,
    pub kernel_release: String,
    /// Kernel modules stage 1 loads, in order.
    pub initrd_modules: Vec<String>,
}

/// Everything `veritysetup format` records, so the tree can be rebuilt and checked from the manifest alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerityInfo {
    /// The partition whose blocks the tree covers (root-a), by number.
    pub data_partition: u32,
    /// The partition holding the superblock and the tree (root-a-verity), by number.
    pub hash_partition: u32,
    /// Hash algorithm, always `sha256`.
    pub algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// Data blocks covered, from the start of the data partition: the file system, not the whole partition.
    pub data_blocks: u64,
    /// Where the tree starts on the hash partition, in hash blocks (after the superblock).
    pub hash_start_block: u64,
    /// Bytes of the hash partition in use: superblock area and tree.
    pub hash_size: u64,
    /// Salt, hex.
    pub salt: String,
    /// The superblock's UUID.
    pub uuid: String,
    /// Root hash, hex; the UKI's command line carries it as `roothash=`.
    pub root_hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentEntry {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub package: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// For a package pulled in as a dependency: the component that pulled it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pulled_by: Option<String>,
    pub url: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageEntry {
    /// The reference containerd knows it by.
    pub name: String,
    pub namespace: String,
    /// Path of the archive in the root.
    pub archive: String,
    /// sha256 of the archive.
    pub sha256: String,
    /// `sha256:<hex>` of the image's manifest, as `ctr images ls` shows it.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageEntry {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// sha256 of the `.deb`.
    pub sha256: String,
    /// Whether a dependency brought it in (rather than the profile or the archive's essential set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dependency: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading manifest {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not an ingot manifest: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has manifest schema {found}; this ingot reads schema {SCHEMA}")]
    Schema { path: PathBuf, found: u32 },
}

/// The manifest file that belongs to an image: `out/x.raw` → `out/x.manifest.json`.
pub fn path_for_image(image: &Path) -> PathBuf {
    image.with_extension("manifest.json")
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.into(),
            source,
        })?;
        let probe: serde_json::Value = serde_json::from_str(&text).map_err(|e| ManifestError::Parse {
            path: path.into(),
            message: e.to_string(),
        })?;
        let found = probe.get("schema").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
        if found != SCHEMA {
            return Err(ManifestError::Schema {
                path: path.into(),
                found,
            });
        }
        serde_json::from_value(probe).map_err(|e| ManifestError::Parse {
            path: path.into(),
            message: e.to_string(),
        })
    }

    /// Bytes of the image that hold data.
    pub fn payload_bytes(&self) -> u64 {
        self.data_ranges.iter().map(|r| r[1]).sum()
    }
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename, fsync the directory.
/// A crash or error leaves either the old file or the new one, never a mix.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".ingot-").tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            schema: SCHEMA,
            image: ImageInfo {
                name: "minimal".into(),
                version: "0.1.0".into(),
                profile: "minimal.toml".into(),
                disk_guid: "00000000-0000-0000-0000-000000000001".into(),
                size: 1 << 30,
                source_date_epoch: 1_704_067_200,
                outside_sha256: Some("ab".repeat(32)),
            },
            partitions: vec![PartitionEntry {
                number: 1,
                label: "esp".into(),
                type_guid: ingot_spec::partition::TYPE_ESP.to_string(),
                guid: "00000000-0000-0000-0000-000000000002".into(),
                offset: 1 << 20,
                size: 512 << 20,
                sha256: "ab".repeat(32),
                hashed_bytes: 4096,
            }],
            uki: UkiInfo {
                path: "EFI/Linux/ingot-minimal-0.1.0+3.efi".into(),
                sha256: "cd".repeat(32),
                cmdline: "console=ttyS0".into(),
                kernel_release: "6.1.0-56-cloud-amd64".into(),
                initrd_modules: vec!["virtio_blk".into()],
            },
            verity: Some(VerityInfo {
                data_partition: 2,
                hash_partition: 3,
                algorithm: "sha256".into(),
                data_block_size: 4096,
                hash_block_size: 4096,
                data_blocks: 8192,
                hash_start_block: 1,
                hash_size: 4096 * 66,
                salt: "5a".repeat(32),
                uuid: "00000000-0000-0000-0000-000000000003".into(),
                root_hash: "78".repeat(32),
            }),
            components: vec![ComponentEntry {
                name: "kernel".into(),
                package: Some("linux-image-6.1.0-56-cloud-amd64".into()),
                version: Some("6.1.192-2".into()),
                pulled_by: None,
                url: "https://deb.debian.org/debian/pool/x.deb".into(),
                sha256: "ef".repeat(32),
            }],
            images: vec![ImageEntry {
                name: "registry.k8s.io/pause:3.6".into(),
                namespace: "k8s.io".into(),
                archive: "/usr/share/ingot/images/registry.k8s.io_pause_3.6.tar".into(),
                sha256: "12".repeat(32),
                digest: format!("sha256:{}", "34".repeat(32)),
            }],
            packages: vec![
                PackageEntry {
                    name: "containerd".into(),
                    version: "1.6.20~ds1-1+deb12u3".into(),
                    architecture: "amd64".into(),
                    sha256: "56".repeat(32),
                    dependency: false,
                },
                PackageEntry {
                    name: "libseccomp2".into(),
                    version: "2.5.4-1+deb12u1".into(),
                    architecture: "amd64".into(),
                    sha256: "78".repeat(32),
                    dependency: true,
                },
            ],
            data_ranges: vec![[0, 4096], [1 << 20, 8192]],
        }
    }

    #[test]
    fn round_trips_and_matches_the_golden_file() {
        let m = sample();
        crate::golden::check("manifest.golden.json", &m.to_json());
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.manifest.json");
        write_atomic(&p, m.to_json().as_bytes()).unwrap();
        assert_eq!(Manifest::load(&p).unwrap(), m);
        assert_eq!(m.payload_bytes(), 12288);
        assert_eq!(
            path_for_image(Path::new("out/minimal.raw")),
            Path::new("out/minimal.manifest.json")
        );
    }

    #[test]
    fn rejects_other_schemas_and_garbage() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        std::fs::write(&p, "{\"schema\": 9}").unwrap();
        assert!(matches!(
            Manifest::load(&p),
            Err(ManifestError::Schema { found: 9, .. })
        ));
        std::fs::write(&p, "not json").unwrap();
        assert!(matches!(Manifest::load(&p), Err(ManifestError::Parse { .. })));
    }
}
