//! OCI image archives: a tar of an OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`), the
//! format `ctr images import` reads.
//!
//! [`write_archive`] makes a single-layer image from a directory tree, deterministically: the same tree,
//! reference, configuration and epoch give the same bytes.
//!
//! - Layer and archive entries are sorted by path; every entry has uid/gid 0, no user or group names, and
//!   the epoch as mtime. Modes come from the tree (including setuid bits).
//! - The layer is an **uncompressed** tar (`application/vnd.oci.image.layer.v1.tar`). Gzip would make the
//!   bytes depend on the deflate implementation and its version (a different `flate2` backend gives
//!   different output for the same input), while a tar's bytes are fixed by this module alone. Nothing is
//!   lost: the archive lives in the compressed EROFS root, and containerd stores and unpacks uncompressed
//!   layers as they are. It also makes the layer's digest its `diff_id`.
//! - The configuration says `created` = the epoch, `architecture` `amd64`, `os` `linux`, the rootfs
//!   `diff_ids`, and the optional entrypoint, command and environment.
//! - `index.json` annotates the manifest with both `io.containerd.image.name` (the name containerd's import
//!   takes first) and `org.opencontainers.image.ref.name` (which `ctr images import` falls back to), both set
//!   to the full reference, and gives its platform (`linux/amd64`).
//!
//! [`normalize_archive`] takes an archive made elsewhere (`skopeo copy … oci-archive:`, `ctr export`) and
//! makes sure containerd tags it with the profile's name when importing it.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::fetch::Sha256;

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// The annotation containerd's import takes the image name from.
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";
/// The OCI image layout's reference annotation.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("reading {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {what} cannot go into an image layer (only files, directories and symlinks)", path.display())]
    Unsupported { path: PathBuf, what: &'static str },
    #[error("{} is not an OCI image archive: {reason}", path.display())]
    NotOci { path: PathBuf, reason: String },
}

/// What an image's configuration sets for its containers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=VALUE` entries, in this order.
    pub env: Vec<String>,
}

/// What a written or normalised archive holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveInfo {
    /// sha256 of the archive file.
    pub sha256: Sha256,
    /// `sha256:<hex>` of the image's manifest (or index): the digest `ctr images ls` shows.
    pub digest: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    /// Anything else an index carries (annotations, subject) is kept as it was.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<'a> {
    schema_version: u32,
    media_type: &'a str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Serialize)]
struct Config<'a> {
    created: &'a str,
    architecture: &'a str,
    os: &'a str,
    config: ContainerConfig<'a>,
    rootfs: RootFs,
    history: Vec<History<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    cmd: &'a [String],
}

#[derive(Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: &'a str,
}

/// `2024-01-01T00:00:00Z` for 1704067200.
pub fn rfc3339(epoch: u64) -> String {
    ingot_spec::time::rfc3339(i64::try_from(epoch).unwrap_or(i64::MAX))
}

fn digest_string(sha: &Sha256) -> String {
    format!("sha256:{sha}")
}

/// A writer that hashes and counts what passes through.
struct Hashing<W> {
    inner: W,
    hasher: sha2::Sha256,
    count: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: sha2::Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, Sha256, u64) {
        (
            self.inner,
            Sha256::from_bytes(self.hasher.finalize().into()),
            self.count,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn header(kind: tar::EntryType, mode: u32, size: u64, epoch: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(epoch);
    h
}

/// All entries below `dir`, relative to it, sorted.
fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, OciError> {
    let mut out = Vec::new();
    crate::rootfs::stage::walk(dir, &mut out).map_err(|source| OciError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut rel: Vec<PathBuf> = out
        .into_iter()
        .filter_map(|p| p.strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect();
    rel.sort();
    Ok(rel)
}

/// Writes the tar of `tree` (an uncompressed layer) to `out`; returns its sha256 and size.
pub fn write_layer(tree: &Path, epoch: u64, out: &Path) -> Result<(Sha256, u64), OciError> {
    let werr = |source| OciError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(werr)?;
    let mut b = tar::Builder::new(Hashing::new(BufWriter::new(file)));
    for rel in sorted_entries(tree)? {
        let host = tree.join(&rel);
        let rerr = |source| OciError::Read {
            path: host.clone(),
            source,
        };
        let m = fs::symlink_metadata(&host).map_err(rerr)?;
        let mode = m.permissions().mode() & 0o7777;
        let ft = m.file_type();
        if ft.is_symlink() {
            let target = fs::read_link(&host).map_err(rerr)?;
            let mut h = header(tar::EntryType::Symlink, 0o777, 0, epoch);
            b.append_link(&mut h, &rel, &target).map_err(werr)?;
        } else if ft.is_dir() {
            let mut h = header(tar::EntryType::Directory, mode, 0, epoch);
            b.append_data(&mut h, &rel, io::empty()).map_err(werr)?;
        } else if ft.is_file() {
            let mut h = header(tar::EntryType::Regular, mode, m.len(), epoch);
            let f = File::open(&host).map_err(rerr)?;
            b.append_data(&mut h, &rel, f.take(m.len())).map_err(werr)?;
        } else {
            return Err(OciError::Unsupported {
                path: host,
                what: "a device, FIFO or socket",
            });
        }
    }
    let hashing = b.into_inner().map_err(werr)?;
    let (mut buf, sha, size) = hashing.finish();
    buf.flush().map_err(werr)?;
    Ok((sha, size))
}

fn json_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // These types serialize infallibly (string keys, no floats).
    serde_json::to_vec(v).unwrap_or_default()
}

/// Writes a single-layer OCI image archive of `tree` to `out`, named `reference` (see the module
/// documentation). `work` holds the layer while the archive is assembled.
pub fn write_archive(
    tree: &Path,
    reference: &str,
    config: &ImageConfig,
    epoch: u64,
    work: &Path,
    out: &Path,
) -> Result<ArchiveInfo, OciError> {
    let layer_path = work.join(".layer.tar");
    let (layer_sha, layer_size) = write_layer(tree, epoch, &layer_path)?;
    let created = rfc3339(epoch);
    let config_bytes = json_bytes(&Config {
        created: &created,
        architecture: "amd64",
        os: "linux",
        config: ContainerConfig {
            env: &config.env,
            entrypoint: &config.entrypoint,
            cmd: &config.cmd,
        },
        rootfs: RootFs {
            kind: "layers",
            diff_ids: vec![digest_string(&layer_sha)],
        },
        history: vec![History {
            created: &created,
            created_by: "ingot build",
        }],
    });
    let config_sha = Sha256::digest(&config_bytes);
    let manifest_bytes = json_bytes(&Manifest {
        schema_version: 2,
        media_type: MEDIA_TYPE_MANIFEST,
        config: Descriptor {
            media_type: MEDIA_TYPE_CONFIG.into(),
            digest: digest_string(&config_sha),
            size: config_bytes.len() as u64,
            annotations: BTreeMap::new(),
            platform: None,
        },
        layers: vec![Descriptor {
            media_type: MEDIA_TYPE_LAYER.into(),
            digest: digest_string(&layer_sha),
            size: layer_size,
            annotations: BTreeMap::new(),
            platform: None,
        }],
    });
    let manifest_sha = Sha256::digest(&manifest_bytes);
    let index_bytes = json_bytes(&Index {
        schema_version: 2,
        media_type: Some(MEDIA_TYPE_INDEX.into()),
        manifests: vec![Descriptor {
            media_type: MEDIA_TYPE_MANIFEST.into(),
            digest: digest_string(&manifest_sha),
            size: manifest_bytes.len() as u64,
            annotations: name_annotations(reference),
            platform: Some(Platform {
                architecture: "amd64".into(),
                os: "linux".into(),
            }),
        }],
        other: BTreeMap::new(),
    });

    // Blobs sorted by digest; the archive's entries in path order.
    let mut blobs: Vec<(Sha256, Blob<'_>)> = vec![
        (config_sha, Blob::Bytes(&config_bytes)),
        (manifest_sha, Blob::Bytes(&manifest_bytes)),
        (layer_sha, Blob::File(&layer_path, layer_size)),
    ];
    blobs.sort_by_key(|(sha, _)| *sha);
    blobs.dedup_by_key(|(sha, _)| *sha);
    let werr = |source| OciError::Write {
        path: out.to_path_buf(),
        source,
    };
    let file = File::create(out).map_err(werr)?;
    let mut b = tar::Builder::new(Hashing::new(BufWriter::new(file)));
    for dir in ["blobs", "blobs/sha256"] {
        let mut h = header(tar::EntryType::Directory, 0o755, 0, epoch);
        b.append_data(&mut h, dir, io::empty()).map_err(werr)?;
    }
    for (sha, blob) in &blobs {
        let path = format!("blobs/sha256/{sha}");
        match blob {
            Blob::Bytes(bytes) => {
                let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64, epoch);
                b.append_data(&mut h, &path, *bytes).map_err(werr)?;
            }
            Blob::File(p, size) => {
                let f = File::open(p).map_err(|source| OciError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                let mut h = header(tar::EntryType::Regular, 0o644, *size, epoch);
                b.append_data(&mut h, &path, f.take(*size)).map_err(werr)?;
            }
        }
    }
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    for (path, bytes) in [("index.json", &index_bytes[..]), ("oci-layout", &layout[..])] {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64, epoch);
        b.append_data(&mut h, path, bytes).map_err(werr)?;
    }
    let (mut buf, sha, _) = b.into_inner().map_err(werr)?.finish();
    buf.flush().map_err(werr)?;
    drop(buf);
    let _ = fs::remove_file(&layer_path);
    Ok(ArchiveInfo {
        sha256: sha,
        digest: digest_string(&manifest_sha),
    })
}

enum Blob<'a> {
    Bytes(&'a [u8]),
    File(&'a Path, u64),
}

fn name_annotations(reference: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (ANNOTATION_CONTAINERD_NAME.to_string(), reference.to_string()),
        (ANNOTATION_REF_NAME.to_string(), reference.to_string()),
    ])
}

/// Reads `index.json` of an OCI image archive.
pub fn read_index(archive: &Path) -> Result<Index, OciError> {
    let not_oci = |reason: String| OciError::NotOci {
        path: archive.to_path_buf(),
        reason,
    };
    let rerr = |source| OciError::Read {
        path: archive.to_path_buf(),
        source,
    };
    let file = File::open(archive).map_err(rerr)?;
    let mut a = tar::Archive::new(io::BufReader::new(file));
    let entries = a
        .entries()
        .map_err(|e| not_oci(format!("not a tar file ({e})")))?;
    let mut seen_manifest_json = false;
    for entry in entries {
        let mut entry = entry.map_err(|e| not_oci(format!("not a tar file ({e})")))?;
        let path = entry.path().map_err(|e| not_oci(e.to_string()))?.into_owned();
        let name = path.strip_prefix("./").unwrap_or(&path);
        if name == Path::new("manifest.json") {
            seen_manifest_json = true;
        }
        if name == Path::new("index.json") {
            if entry.size() > 16 << 20 {
                return Err(not_oci("index.json is larger than 16 MiB".into()));
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(rerr)?;
            return serde_json::from_slice(&bytes)
                .map_err(|e| not_oci(format!("index.json does not parse: {e}")));
        }
    }
    Err(not_oci(if seen_manifest_json {
        "it has a manifest.json but no index.json (a `docker save` archive of an older Docker); convert it with \
         `skopeo copy docker-archive:IN oci-archive:OUT:NAME`"
            .into()
    } else {
        "it has no index.json".into()
    }))
}

/// Which manifest of `index` is imported as `reference`, and whether the index already says so
/// (`io.containerd.image.name`).
fn pick_manifest(index: &Index, reference: &str, archive: &Path) -> Result<(usize, bool), OciError> {
    if let Some(i) = index
        .manifests
        .iter()
        .position(|d| d.annotations.get(ANNOTATION_CONTAINERD_NAME).map(String::as_str) == Some(reference))
    {
        return Ok((i, true));
    }
    match index.manifests.len() {
        1 => Ok((0, false)),
        0 => Err(OciError::NotOci {
            path: archive.to_path_buf(),
            reason: "its index.json lists no manifest".into(),
        }),
        _ => {
            let names: Vec<String> = index
                .manifests
                .iter()
                .map(|d| {
                    d.annotations
                        .get(ANNOTATION_CONTAINERD_NAME)
                        .or_else(|| d.annotations.get(ANNOTATION_REF_NAME))
                        .cloned()
                        .unwrap_or_else(|| d.digest.clone())
                })
                .collect();
            Err(OciError::NotOci {
                path: archive.to_path_buf(),
                reason: format!(
                    "its index.json lists {} images ({}) and none is annotated {ANNOTATION_CONTAINERD_NAME}={reference}",
                    names.len(),
                    names.join(", ")
                ),
            })
        }
    }
}

/// Writes to `out` an archive that `ctr images import` tags as `reference`: a byte-for-byte copy of
/// `archive` when its `index.json` already names a manifest so, otherwise a copy whose `index.json` gives
/// its only manifest both name annotations (entries, their order and all other bytes unchanged in
/// meaning; the tar headers are rewritten deterministically).
pub fn normalize_archive(archive: &Path, reference: &str, out: &Path) -> Result<ArchiveInfo, OciError> {
    let mut index = read_index(archive)?;
    let (i, named) = pick_manifest(&index, reference, archive)?;
    let digest = index.manifests[i].digest.clone();
    let werr = |source| OciError::Write {
        path: out.to_path_buf(),
        source,
    };
    let rerr = |source| OciError::Read {
        path: archive.to_path_buf(),
        source,
    };
    if named {
        fs::copy(archive, out).map_err(werr)?;
        let sha = Sha256::of_file(out).map_err(werr)?;
        return Ok(ArchiveInfo { sha256: sha, digest });
    }
    index.manifests[i].annotations.extend(name_annotations(reference));
    let index_bytes = json_bytes(&index);
    let file = File::create(out).map_err(werr)?;
    let mut b = tar::Builder::new(Hashing::new(BufWriter::new(file)));
    let mut a = tar::Archive::new(io::BufReader::new(File::open(archive).map_err(rerr)?));
    for entry in a.entries().map_err(rerr)? {
        let entry = entry.map_err(rerr)?;
        let path = entry.path().map_err(rerr)?.into_owned();
        let mut h = entry.header().clone();
        let is_index = path.strip_prefix("./").unwrap_or(&path) == Path::new("index.json");
        match h.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name().map_err(rerr)?.unwrap_or_default().into_owned();
                b.append_link(&mut h, &path, &target).map_err(werr)?;
            }
            _ if is_index => {
                h.set_size(index_bytes.len() as u64);
                b.append_data(&mut h, &path, &index_bytes[..]).map_err(werr)?;
            }
            _ => b.append_data(&mut h, &path, entry).map_err(werr)?,
        }
    }
    let (mut buf, sha, _) = b.into_inner().map_err(werr)?.finish();
    buf.flush().map_err(werr)?;
    Ok(ArchiveInfo { sha256: sha, digest })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn tree(dir: &Path) {
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("bin/busybox"), b"\x7fELF pretend").unwrap();
        fs::set_permissions(dir.join("bin/busybox"), fs::Permissions::from_mode(0o4755)).unwrap();
        symlink("busybox", dir.join("bin/sh")).unwrap();
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::write(dir.join("etc/motd"), b"hi\n").unwrap();
        fs::set_permissions(dir.join("etc/motd"), fs::Permissions::from_mode(0o644)).unwrap();
        let long = "d".repeat(120);
        fs::create_dir_all(dir.join(&long)).unwrap();
        fs::write(dir.join(&long).join("f"), b"long path").unwrap();
    }

    fn config() -> ImageConfig {
        ImageConfig {
            entrypoint: vec!["/bin/busybox".into()],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
        }
    }

    /// (path, entry type, mode, uid, mtime, bytes) of one tar entry.
    type Entry = (String, tar::EntryType, u32, u64, u64, Vec<u8>);

    fn entries(bytes: &[u8]) -> Vec<Entry> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (
                    path,
                    h.entry_type(),
                    h.mode().unwrap(),
                    h.uid().unwrap(),
                    h.mtime().unwrap(),
                    data,
                )
            })
            .collect()
    }

    fn blob<'a>(entries: &'a [Entry], digest: &str) -> &'a [u8] {
        let path = format!("blobs/sha256/{}", digest.strip_prefix("sha256:").unwrap());
        &entries.iter().find(|e| e.0 == path).unwrap().5
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn archive_is_a_valid_layout_and_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("tree");
        tree(&t);
        let out_a = d.path().join("a.tar");
        let info = write_archive(&t, "ingot.local/x:1", &config(), 1_704_067_200, d.path(), &out_a).unwrap();
        let bytes = fs::read(&out_a).unwrap();
        assert_eq!(info.sha256, Sha256::digest(&bytes));
        assert!(!d.path().join(".layer.tar").exists(), "the work file is removed");

        let e = entries(&bytes);
        let paths: Vec<&str> = e.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(paths[..2], ["blobs", "blobs/sha256"]);
        assert_eq!(paths[paths.len() - 2..], ["index.json", "oci-layout"]);
        assert!(
            e.iter().all(|x| x.3 == 0 && x.4 == 1_704_067_200),
            "uid 0 and the epoch"
        );
        for x in e.iter().filter(|x| x.0.starts_with("blobs/sha256/")) {
            assert_eq!(
                format!("blobs/sha256/{}", Sha256::digest(&x.5)),
                x.0,
                "blobs are named by digest"
            );
        }

        let index: Index =
            serde_json::from_slice(&e.iter().find(|x| x.0 == "index.json").unwrap().5).unwrap();
        assert_eq!(index.manifests.len(), 1);
        let m = &index.manifests[0];
        assert_eq!(m.annotations[ANNOTATION_CONTAINERD_NAME], "ingot.local/x:1");
        assert_eq!(m.annotations[ANNOTATION_REF_NAME], "ingot.local/x:1");
        assert_eq!(m.digest, info.digest);
        let manifest: serde_json::Value = serde_json::from_slice(blob(&e, &m.digest)).unwrap();
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER);
        let cfg: serde_json::Value =
            serde_json::from_slice(blob(&e, manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(cfg["created"], "2024-01-01T00:00:00Z");
        assert_eq!(cfg["architecture"], "amd64");
        assert_eq!(cfg["os"], "linux");
        assert_eq!(cfg["config"]["Entrypoint"][0], "/bin/busybox");
        assert_eq!(cfg["config"]["Env"][0], "PATH=/bin");
        assert_eq!(
            cfg["rootfs"]["diff_ids"][0], manifest["layers"][0]["digest"],
            "uncompressed: diff_id = digest"
        );

        let layer = entries(blob(&e, manifest["layers"][0]["digest"].as_str().unwrap()));
        let names: Vec<&str> = layer.iter().map(|x| x.0.as_str()).collect();
        let long = "d".repeat(120);
        assert_eq!(
            names,
            [
                "bin",
                "bin/busybox",
                "bin/sh",
                long.as_str(),
                &format!("{long}/f"),
                "etc",
                "etc/motd"
            ]
        );
        let busybox = &layer[1];
        assert_eq!(
            (busybox.2, busybox.5.as_slice()),
            (0o4755, &b"\x7fELF pretend"[..])
        );
        assert_eq!(layer[2].1, tar::EntryType::Symlink);

        // Same tree made in a different order, at a different time, in another directory: same bytes.
        std::thread::sleep(std::time::Duration::from_millis(20));
        let t2 = d.path().join("other");
        fs::create_dir_all(t2.join("etc")).unwrap();
        fs::write(t2.join("etc/motd"), b"hi\n").unwrap();
        fs::set_permissions(t2.join("etc/motd"), fs::Permissions::from_mode(0o644)).unwrap();
        tree(&t2);
        let out_b = d.path().join("b.tar");
        let info_b =
            write_archive(&t2, "ingot.local/x:1", &config(), 1_704_067_200, d.path(), &out_b).unwrap();
        assert!(fs::read(&out_b).unwrap() == bytes, "same inputs, same bytes");
        assert_eq!(info_b, info);
        // Any input changes the archive.
        let other_epoch = write_archive(&t, "ingot.local/x:1", &config(), 1, d.path(), &out_b).unwrap();
        let other_name =
            write_archive(&t, "ingot.local/x:2", &config(), 1_704_067_200, d.path(), &out_b).unwrap();
        let other_cfg = write_archive(
            &t,
            "ingot.local/x:1",
            &ImageConfig::default(),
            1_704_067_200,
            d.path(),
            &out_b,
        )
        .unwrap();
        for other in [other_epoch, other_name, other_cfg] {
            assert_ne!(other.sha256, info.sha256);
        }
    }

    #[test]
    fn devices_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("tree");
        fs::create_dir(&t).unwrap();
        let _socket = std::os::unix::net::UnixListener::bind(t.join("socket")).unwrap();
        let err = write_archive(
            &t,
            "ingot.local/x:1",
            &config(),
            0,
            d.path(),
            &d.path().join("o.tar"),
        )
        .unwrap_err();
        assert!(matches!(err, OciError::Unsupported { .. }), "{err}");
    }

    #[test]
    fn normalize_names_an_unnamed_archive_and_keeps_a_named_one() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path().join("tree");
        tree(&t);
        let named = d.path().join("named.tar");
        let info = write_archive(&t, "ingot.local/x:1", &config(), 0, d.path(), &named).unwrap();

        let kept = d.path().join("kept.tar");
        assert_eq!(normalize_archive(&named, "ingot.local/x:1", &kept).unwrap(), info);
        assert!(fs::read(&kept).unwrap() == fs::read(&named).unwrap());

        // Named differently (as a plain `oci-archive` with only a tag): the copy gets both annotations.
        let renamed = d.path().join("renamed.tar");
        let r = normalize_archive(&named, "registry.k8s.io/pause:3.6", &renamed).unwrap();
        assert_eq!(r.digest, info.digest, "the image itself is unchanged");
        assert_ne!(r.sha256, info.sha256);
        let index = read_index(&renamed).unwrap();
        assert_eq!(
            index.manifests[0].annotations[ANNOTATION_CONTAINERD_NAME],
            "registry.k8s.io/pause:3.6"
        );
        assert_eq!(index.manifests[0].platform.as_ref().unwrap().os, "linux");
        let before = entries(&fs::read(&named).unwrap());
        let after = entries(&fs::read(&renamed).unwrap());
        assert_eq!(before.len(), after.len());
        for (b, a) in before.iter().zip(&after) {
            assert_eq!((&b.0, b.1, b.2), (&a.0, a.1, a.2));
            if b.0 != "index.json" {
                assert_eq!(b.5, a.5, "{}", b.0);
            }
        }
        // Deterministic too.
        let again = d.path().join("again.tar");
        normalize_archive(&named, "registry.k8s.io/pause:3.6", &again).unwrap();
        assert!(fs::read(&again).unwrap() == fs::read(&renamed).unwrap());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// A pinned archive is bytes from elsewhere: reading and renaming a damaged one fails cleanly.
        #[test]
        fn mutated_archives_never_panic(
            flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..24),
            cut in proptest::prelude::any::<usize>(),
        ) {
            let d = tempfile::tempdir().unwrap();
            let t = d.path().join("tree");
            fs::create_dir(&t).unwrap();
            fs::write(t.join("f"), b"x").unwrap();
            let good = d.path().join("good.tar");
            write_archive(&t, "ingot.local/x:1", &ImageConfig::default(), 0, d.path(), &good).unwrap();
            let mut bytes = fs::read(&good).unwrap();
            // Damage the index and tar headers most of the time: that is where parsing happens.
            let index_at = bytes.windows(10).position(|w| w == b"index.json").unwrap_or(0);
            for (i, b) in flips {
                let n = bytes.len();
                let at = if i % 2 == 0 { (index_at + i % 1024) % n } else { i % n };
                bytes[at] = b;
            }
            bytes.truncate(cut % (bytes.len() + 1));
            let bad = d.path().join("bad.tar");
            fs::write(&bad, &bytes).unwrap();
            let _ = read_index(&bad);
            let _ = normalize_archive(&bad, "registry.k8s.io/pause:3.6", &d.path().join("out.tar"));
        }
    }

    #[test]
    fn not_an_archive_is_explained() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.tar");
        fs::write(&p, b"hello").unwrap();
        let err = read_index(&p).unwrap_err().to_string();
        assert!(err.contains("is not an OCI image archive"), "{err}");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0o644, 2, 0);
        b.append_data(&mut h, "manifest.json", &b"[]"[..]).unwrap();
        fs::write(&p, b.into_inner().unwrap()).unwrap();
        let err = read_index(&p).unwrap_err().to_string();
        assert!(err.contains("docker save"), "{err}");
    }
}
