//! `ingot verify`: proves an image is the one its signed manifest describes, every byte of it.
//!
//! Order: the signature over the manifest's bytes (nothing in an unsigned manifest is trusted), then the
//! manifest's shape, the image's size, every partition (its sha256 over `hashed_bytes`, and zeros after
//! that to the partition's end) and the bytes outside the partitions (protective MBR, both GPTs, alignment
//! gaps), whose sha256 the manifest also carries. Partitions are checked in parallel, one thread each,
//! beside one that rebuilds root-a's dm-verity tree from its data blocks with the manifest's parameters
//! and compares it with root-a-verity and the manifest's root hash. Last, once the ESP is proven, the UKI
//! is read from it: its hash, its command line, and the `roothash=` there must be the manifest's.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest as _, Sha256};

use crate::manifest::{Manifest, PartitionEntry};
use crate::signing::{self, SignatureError};
use crate::verity::{self, VerityParams};

const CHUNK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: signature check failed: {source}")]
    Signature {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("{path} is signed but is not a manifest this ingot reads: {message}")]
    Manifest { path: PathBuf, message: String },
    #[error("{image} is {found} bytes; the manifest says {expected}")]
    Size {
        image: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error(
        "partition {number} ({label}) lies outside the {size}-byte image, or overlaps another: bytes {offset}..{end}"
    )]
    Layout {
        number: u32,
        label: String,
        offset: u64,
        end: u64,
        size: u64,
    },
    #[error(
        "partition {number} ({label}), bytes {offset}..{end} of the image: sha256 {found}, the manifest says {expected}"
    )]
    PartitionHash {
        number: u32,
        label: String,
        offset: u64,
        end: u64,
        expected: String,
        found: String,
    },
    #[error(
        "partition {number} ({label}): byte {at} of the image is not zero, but the manifest hashes this partition only up to byte {hashed_end}"
    )]
    PartitionTail {
        number: u32,
        label: String,
        at: u64,
        hashed_end: u64,
    },
    #[error(
        "the bytes outside the partitions (MBR, GPT headers and tables, gaps): sha256 {found}, the manifest says {expected}"
    )]
    Outside { expected: String, found: String },
    #[error(
        "the manifest does not record the hash of the bytes outside the partitions (built by an older ingot); rebuild the image"
    )]
    NoOutsideHash,
    #[error("the manifest records no dm-verity tree (built by an older ingot); rebuild the image")]
    NoVerity,
    #[error("the manifest's verity entry is unusable: {0}")]
    VerityParams(String),
    #[error(
        "dm-verity: the root hash of the tree rebuilt from partition {partition} is {found}, the manifest says {expected}"
    )]
    VerityRootHash {
        partition: u32,
        expected: String,
        found: String,
    },
    #[error(
        "dm-verity: partition {partition} differs from the tree rebuilt from partition {data_partition} at hash block {block} (bytes {offset}..{end} of the image)"
    )]
    VerityTree {
        partition: u32,
        data_partition: u32,
        block: u64,
        offset: u64,
        end: u64,
    },
    #[error("reading the UKI {path} from the ESP: {message}")]
    Uki { path: String, message: String },
    #[error("the UKI {path} on the ESP has sha256 {found}, the manifest says {expected}")]
    UkiHash {
        path: String,
        expected: String,
        found: String,
    },
    #[error("the UKI {path} has the command line {found:?}, the manifest says {expected:?}")]
    UkiCmdline {
        path: String,
        expected: String,
        found: String,
    },
    #[error(
        "the UKI {path} pins root hash {found} on its command line (`roothash=`), but the verity tree's root hash is {expected}"
    )]
    UkiRootHash {
        path: String,
        expected: String,
        found: String,
    },
    #[error(transparent)]
    Rollback(#[from] crate::rollback::RollbackError),
    #[error(
        "partition {number} ({label}): offset {offset}, size {size}, hashed_bytes {hashed_bytes}: {problem}"
    )]
    PartitionShape {
        number: u32,
        label: String,
        offset: u64,
        size: u64,
        hashed_bytes: u64,
        problem: &'static str,
    },
    #[error("the manifest lists {found} partitions; a GPT holds at most {MAX_PARTITIONS}")]
    PartitionCount { found: usize },
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The key whose signature over the manifest was checked; `None` for [`check_unsigned`].
    pub key_id: Option<String>,
    pub partitions: usize,
    pub bytes_hashed: u64,
    /// Bytes of a block device past the image's end, which belong to the device and were not checked.
    pub device_tail: u64,
    /// The manifest the image was proven against.
    pub manifest: Manifest,
}

/// Whose word the manifest is taken on.
#[derive(Debug, Clone, Copy)]
enum Authority<'a> {
    /// Its signature by this key.
    Key(&'a VerifyingKey),
    /// Nobody's: the image is checked against the manifest as it stands, which finds corruption, not
    /// tampering.
    Unsigned,
}

/// The signature file that belongs to a manifest: `x.manifest.json` → `x.manifest.json.sig`.
pub fn signature_path(manifest: &Path) -> PathBuf {
    let mut s = manifest.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

fn read(path: &Path) -> Result<Vec<u8>, VerifyError> {
    std::fs::read(path).map_err(|source| VerifyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// [`verify`], with `admit` run on the manifest once its signature and shape are checked and before the
/// image is read: a policy (e.g. [`crate::rollback`]) can refuse an authentic image cheaply there.
pub fn verify_admitting<T>(
    image: &Path,
    manifest_path: &Path,
    key: &VerifyingKey,
    admit: impl FnOnce(&Manifest) -> Result<T, VerifyError>,
) -> Result<(Verified, T), VerifyError> {
    verify_with(image, manifest_path, Authority::Key(key), admit)
}

/// Checks `image` against a manifest whose signature is not checked (an image built without
/// `--sign-key`): every check of [`verify`] but the first, so it proves the image undamaged, not authentic.
pub fn check_unsigned(image: &Path, manifest_path: &Path) -> Result<Verified, VerifyError> {
    verify_with(image, manifest_path, Authority::Unsigned, |_| Ok(())).map(|(verified, ())| verified)
}

fn verify_with<T>(
    image: &Path,
    manifest_path: &Path,
    authority: Authority<'_>,
    admit: impl FnOnce(&Manifest) -> Result<T, VerifyError>,
) -> Result<(Verified, T), VerifyError> {
    let manifest_bytes = read(manifest_path)?;
    if let Authority::Key(key) = authority {
        let sig_path = signature_path(manifest_path);
        let sig = read(&sig_path)?;
        signing::verify(key, &manifest_bytes, &sig).map_err(|source| VerifyError::Signature {
            path: sig_path.clone(),
            source,
        })?;
    }
    let manifest: Manifest = serde_json::from_slice(&manifest_bytes).map_err(|e| VerifyError::Manifest {
        path: manifest_path.to_path_buf(),
        message: e.to_string(),
    })?;
    if manifest.schema != crate::manifest::SCHEMA {
        return Err(VerifyError::Manifest {
            path: manifest_path.to_path_buf(),
            message: format!("schema {}", manifest.schema),
        });
    }
    let admitted = admit(&manifest)?;
    let file = File::open(image).map_err(|source| VerifyError::Read {
        path: image.to_path_buf(),
        source,
    })?;
    let read_err = |source| VerifyError::Read {
        path: image.to_path_buf(),
        source,
    };
    let (found, is_device) = image_size(&file).map_err(read_err)?;
    // A block device may be larger than the image written to it (bmaptool leaves the rest alone); its
    // first `size` bytes are the image.
    if found != manifest.image.size && !(is_device && found > manifest.image.size) {
        return Err(VerifyError::Size {
            image: image.to_path_buf(),
            expected: manifest.image.size,
            found,
        });
    }
    let size = manifest.image.size;
    let ranges = partition_ranges(&manifest.partitions, size)?;
    let expected_outside = manifest
        .image
        .outside_sha256
        .clone()
        .ok_or(VerifyError::NoOutsideHash)?;

    let results: Vec<Result<u64, VerifyError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = manifest
            .partitions
            .iter()
            .map(|p| scope.spawn(|| check_partition(&file, image, p)))
            .collect();
        let verity = scope.spawn(|| check_verity(&file, image, &manifest));
        let outside = outside_partitions_sha256(&file, size, &ranges).map_err(read_err);
        let mut results: Vec<Result<u64, VerifyError>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(read_err(io::Error::other("a hashing thread failed"))))
            })
            .collect();
        results.push(outside.and_then(|found| {
            if found == expected_outside {
                Ok(size - ranges.iter().map(|r| r.1 - r.0).sum::<u64>())
            } else {
                Err(VerifyError::Outside {
                    expected: expected_outside.clone(),
                    found,
                })
            }
        }));
        results.push(
            verity
                .join()
                .unwrap_or_else(|_| Err(read_err(io::Error::other("the verity thread failed"))))
                .map(|()| 0),
        );
        results
    });
    let mut bytes_hashed = 0;
    for r in results {
        bytes_hashed += r?;
    }
    // Only now is the ESP known to be the signed one, so only now is its FAT worth parsing.
    check_uki(image, &manifest)?;
    let verified = Verified {
        key_id: match authority {
            Authority::Key(key) => Some(signing::key_id(key)),
            Authority::Unsigned => None,
        },
        partitions: manifest.partitions.len(),
        bytes_hashed,
        device_tail: found - size,
        manifest,
    };
    Ok((verified, admitted))
}

/// The size of an image file or of the block device holding one (whose metadata says 0), and which it is.
fn image_size(file: &File) -> io::Result<(u64, bool)> {
    use std::io::Seek as _;
    use std::os::unix::fs::FileTypeExt as _;
    let meta = file.metadata()?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        return Ok((f.seek(io::SeekFrom::End(0))?, true));
    }
    Ok((meta.len(), false))
}

/// The partitions' byte ranges, sorted, checked to lie inside the image without overlapping.
fn partition_ranges(parts: &[PartitionEntry], size: u64) -> Result<Vec<(u64, u64)>, VerifyError> {
    // Each partition is hashed on its own thread: a bound on their number is a bound on the threads.
    if parts.len() > MAX_PARTITIONS {
        return Err(VerifyError::PartitionCount { found: parts.len() });
    }
    let mut ranges: Vec<(u64, u64, &PartitionEntry)> = Vec::new();
    for p in parts {
        check_shape(p)?;
        let end = p.offset.checked_add(p.size);
        let bad = || VerifyError::Layout {
            number: p.number,
            label: p.label.clone(),
            offset: p.offset,
            end: end.unwrap_or(u64::MAX),
            size,
        };
        let end = end.filter(|e| *e <= size).ok_or_else(bad)?;
        ranges.push((p.offset, end, p));
    }
    ranges.sort_by_key(|r| r.0);
    for w in ranges.windows(2) {
        if w[1].0 < w[0].1 {
            let p = w[1].2;
            return Err(VerifyError::Layout {
                number: p.number,
                label: p.label.clone(),
                offset: p.offset,
                end: p.offset + p.size,
                size,
            });
        }
    }
    Ok(ranges.into_iter().map(|(a, b, _)| (a, b)).collect())
}

fn check_partition(file: &File, image: &Path, p: &PartitionEntry) -> Result<u64, VerifyError> {
    let read_err = |source| VerifyError::Read {
        path: image.to_path_buf(),
        source,
    };
    let hashed_end = p.offset + p.hashed_bytes;
    let found = sha256_range(file, p.offset, hashed_end).map_err(read_err)?;
    if found != p.sha256 {
        return Err(VerifyError::PartitionHash {
            number: p.number,
            label: p.label.clone(),
            offset: p.offset,
            end: hashed_end,
            expected: p.sha256.clone(),
            found,
        });
    }
    if let Some(at) = first_nonzero(file, hashed_end, p.offset + p.size).map_err(read_err)? {
        return Err(VerifyError::PartitionTail {
            number: p.number,
            label: p.label.clone(),
            at,
            hashed_end,
        });
    }
    Ok(p.size)
}

/// Rebuilds root-a's dm-verity tree from its data blocks with the manifest's parameters and compares it,
/// superblock included, with the hash partition, and its root hash with the manifest's.
fn check_verity(file: &File, image: &Path, manifest: &Manifest) -> Result<(), VerifyError> {
    let v = manifest.verity.as_ref().ok_or(VerifyError::NoVerity)?;
    let bad = |m: String| VerifyError::VerityParams(m);
    let partition = |number: u32| {
        manifest
            .partitions
            .iter()
            .find(|p| p.number == number)
            .ok_or_else(|| {
                bad(format!(
                    "it names partition {number}, which the manifest does not list"
                ))
            })
    };
    let data = partition(v.data_partition)?;
    let hash = partition(v.hash_partition)?;
    if v.algorithm != ingot_spec::verity::ALGORITHM {
        return Err(bad(format!(
            "algorithm {:?}, expected {:?}",
            v.algorithm,
            ingot_spec::verity::ALGORITHM
        )));
    }
    // Stage 1 maps only what the node's kernel table is built for; a tree the node would refuse is refused here.
    for (what, size) in [("data", v.data_block_size), ("hash", v.hash_block_size)] {
        if size != ingot_spec::verity::BLOCK_SIZE {
            return Err(bad(format!(
                "{what} block size {size}, expected {}",
                ingot_spec::verity::BLOCK_SIZE
            )));
        }
    }
    let salt = hex::decode(&v.salt).map_err(|e| bad(format!("salt: {e}")))?;
    let uuid = uuid::Uuid::parse_str(&v.uuid).map_err(|e| bad(format!("uuid: {e}")))?;
    let params = VerityParams {
        data_block_size: v.data_block_size,
        hash_block_size: v.hash_block_size,
        salt,
        uuid: *uuid.as_bytes(),
    };
    let data_len = v
        .data_blocks
        .checked_mul(u64::from(v.data_block_size))
        .filter(|len| *len <= data.size)
        .ok_or_else(|| {
            bad(format!(
                "{} blocks of {} bytes do not fit partition {} ({} bytes)",
                v.data_blocks, v.data_block_size, data.number, data.size
            ))
        })?;
    let tree_size = verity::hash_tree_size(data_len, &params).map_err(|e| bad(e.to_string()))?;
    if tree_size != v.hash_size || v.hash_size > hash.size || v.hash_start_block != params.hash_start_block()
    {
        return Err(bad(format!(
            "a tree over {} blocks takes {tree_size} bytes from hash block {}; the manifest says {} bytes from block {} in a {}-byte partition",
            v.data_blocks,
            params.hash_start_block(),
            v.hash_size,
            v.hash_start_block,
            hash.size
        )));
    }
    let mut rebuilt = Vec::with_capacity(usize::try_from(tree_size).unwrap_or(0));
    let mut reader = RangeReader {
        file,
        at: data.offset,
        end: data.offset + data_len,
    };
    let out = verity::build(&mut reader, data_len, &params, &mut rebuilt).map_err(|e| match e {
        verity::VerityError::Read { source, .. } => VerifyError::Read {
            path: image.to_path_buf(),
            source,
        },
        e => bad(e.to_string()),
    })?;
    let found = hex::encode(out.root_hash);
    if found != v.root_hash {
        return Err(VerifyError::VerityRootHash {
            partition: data.number,
            expected: v.root_hash.clone(),
            found,
        });
    }
    let block = params.hash_block_size as usize;
    let mut on_disk = vec![0u8; block];
    for (i, ours) in rebuilt.chunks(block).enumerate() {
        let offset = hash.offset + (i * block) as u64;
        file.read_exact_at(&mut on_disk[..ours.len()], offset)
            .map_err(|source| VerifyError::Read {
                path: image.to_path_buf(),
                source,
            })?;
        if on_disk[..ours.len()] != *ours {
            return Err(VerifyError::VerityTree {
                partition: hash.number,
                data_partition: data.number,
                block: i as u64,
                offset,
                end: offset + ours.len() as u64,
            });
        }
    }
    Ok(())
}

/// Reads the UKI from the (already verified) ESP and checks it is the manifest's, with the manifest's
/// command line, pinning the verity root hash.
fn check_uki(image: &Path, manifest: &Manifest) -> Result<(), VerifyError> {
    let v = manifest.verity.as_ref().ok_or(VerifyError::NoVerity)?;
    let path = manifest.uki.path.clone();
    let esp = manifest
        .partitions
        .iter()
        .find(|p| p.type_guid == ingot_spec::partition::TYPE_ESP.to_string())
        .ok_or_else(|| VerifyError::Uki {
            path: path.clone(),
            message: "the manifest lists no ESP".into(),
        })?;
    let bytes = crate::esp::read_file(image, esp.offset, &path).map_err(|e| VerifyError::Uki {
        path: path.clone(),
        message: format!("{e:#}"),
    })?;
    let found = hex::encode(Sha256::digest(&bytes));
    if found != manifest.uki.sha256 {
        return Err(VerifyError::UkiHash {
            path,
            expected: manifest.uki.sha256.clone(),
            found,
        });
    }
    let cmdline = crate::uki::cmdline(&bytes)
        .map_err(|e| VerifyError::Uki {
            path: path.clone(),
            message: e.to_string(),
        })?
        .unwrap_or_default();
    if cmdline != manifest.uki.cmdline {
        return Err(VerifyError::UkiCmdline {
            path,
            expected: manifest.uki.cmdline.clone(),
            found: cmdline,
        });
    }
    let pinned: Vec<&str> = ingot_spec::cmdline::parse(&cmdline)
        .into_iter()
        .filter(|p| p.key == ingot_spec::cmdline::ROOT_HASH)
        .map(|p| p.value.unwrap_or(""))
        .collect();
    match pinned.as_slice() {
        [one] if *one == v.root_hash => Ok(()),
        _ => Err(VerifyError::UkiRootHash {
            path,
            expected: v.root_hash.clone(),
            found: if pinned.is_empty() {
                "none".into()
            } else {
                pinned.join(", ")
            },
        }),
    }
}

/// `Read` over `at..end` of a file, by positioned reads.
struct RangeReader<'a> {
    file: &'a File,
    at: u64,
    end: u64,
}

impl io::Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.end - self.at).map_or(buf.len(), |left| left.min(buf.len()));
        let n = self.file.read_at(&mut buf[..n], self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

fn sha256_range(file: &File, start: u64, end: u64) -> io::Result<String> {
    let mut hasher = Sha256::new();
    for_each_chunk(file, start, end, |_, chunk| {
        hasher.update(chunk);
        None::<()>
    })?;
    Ok(hex::encode(hasher.finalize()))
}

/// The first non-zero byte in `start..end`. Only the file's data extents are read: a hole (`SEEK_HOLE`)
/// reads as zeros by definition, so it needs no reading to be proven zero.
fn first_nonzero(file: &File, start: u64, end: u64) -> io::Result<Option<u64>> {
    let mut at = start;
    while at < end {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(data) => data,
            // No data at or after `at`: the rest of the file is one hole.
            Err(rustix::io::Errno::NXIO) => return Ok(None),
            // A block device knows no holes: every byte is read.
            Err(rustix::io::Errno::INVAL) => {
                return for_each_chunk(file, at, end, |at, chunk| {
                    first_nonzero_byte(chunk).map(|i| at + i as u64)
                });
            }
            Err(e) => return Err(e.into()),
        };
        if data >= end {
            return Ok(None);
        }
        let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data))
            .map_err(io::Error::from)?
            .min(end);
        let found = for_each_chunk(file, data, hole, |at, chunk| {
            first_nonzero_byte(chunk).map(|i| at + i as u64)
        })?;
        if found.is_some() {
            return Ok(found);
        }
        at = hole.max(data + 1);
    }
    Ok(None)
}

/// The index of the first non-zero byte: an OR over each 4 KiB block (which vectorises), then a byte
/// search in the one block that has one.
fn first_nonzero_byte(bytes: &[u8]) -> Option<usize> {
    const BLOCK: usize = 4096;
    bytes
        .chunks(BLOCK)
        .enumerate()
        .find(|(_, block)| block.iter().fold(0u8, |acc, b| acc | b) != 0)
        .and_then(|(k, block)| block.iter().position(|b| *b != 0).map(|i| k * BLOCK + i))
}

/// Calls `f(offset, bytes)` over `start..end` in chunks until it returns `Some`.
fn for_each_chunk<T>(
    file: &File,
    start: u64,
    end: u64,
    mut f: impl FnMut(u64, &[u8]) -> Option<T>,
) -> io::Result<Option<T>> {
    let mut buf = vec![0u8; CHUNK];
    let mut at = start;
    while at < end {
        let n = usize::try_from((end - at).min(CHUNK as u64)).unwrap_or(CHUNK);
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(t) = f(at, &buf[..n]) {
            return Ok(Some(t));
        }
        at += n as u64;
    }
    Ok(None)
}

/// sha256 over every byte of the image outside `ranges` (sorted, non-overlapping), in order.
pub fn outside_partitions_sha256(file: &File, size: u64, ranges: &[(u64, u64)]) -> io::Result<String> {
    let mut hasher = Sha256::new();
    let mut at = 0;
    for &(start, end) in ranges.iter().chain(std::iter::once(&(size, size))) {
        for_each_chunk(file, at, start, |_, chunk| {
            hasher.update(chunk);
            None::<()>
        })?;
        at = end;
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The number of entries of a standard GPT.
pub const MAX_PARTITIONS: usize = 128;

/// A partition as GPT can hold one: whole 512-byte sectors, at least one, after the protective MBR and the
/// primary GPT header; `hashed_bytes` inside it.
fn check_shape(p: &PartitionEntry) -> Result<(), VerifyError> {
    let problem = if p.size == 0 {
        "a partition holds at least one sector"
    } else if !p.offset.is_multiple_of(512) || !p.size.is_multiple_of(512) {
        "offset and size must be whole 512-byte sectors"
    } else if p.offset < 1024 {
        "a partition starts after the protective MBR and the GPT header"
    } else if p.hashed_bytes > p.size {
        "hashed_bytes is larger than the partition"
    } else {
        return Ok(());
    };
    Err(VerifyError::PartitionShape {
        number: p.number,
        label: p.label.clone(),
        offset: p.offset,
        size: p.size,
        hashed_bytes: p.hashed_bytes,
        problem,
    })
}

/// [`verify_admitting`] with no policy: the image, its manifest and signature only.
pub fn verify(image: &Path, manifest_path: &Path, key: &VerifyingKey) -> Result<Verified, VerifyError> {
    verify_admitting(image, manifest_path, key, |_| Ok(())).map(|(verified, ())| verified)
}

impl VerifyError {
    /// A stable short name of the check that failed, for scripts and tests: `read`, `signature`,
    /// `manifest`, `size`, `layout`, `partition-hash`, `partition-tail`, `outside`, `rollback`, `state`.
    pub fn kind(&self) -> &'static str {
        match self {
            VerifyError::Read { .. } => "read",
            VerifyError::Signature { .. } => "signature",
            VerifyError::Manifest { .. } | VerifyError::NoOutsideHash => "manifest",
            VerifyError::Size { .. } => "size",
            VerifyError::Layout { .. }
            | VerifyError::PartitionShape { .. }
            | VerifyError::PartitionCount { .. } => "layout",
            VerifyError::PartitionHash { .. } => "partition-hash",
            VerifyError::PartitionTail { .. } => "partition-tail",
            VerifyError::Outside { .. } => "outside",
            VerifyError::NoVerity | VerifyError::VerityParams(_) => "verity-params",
            VerifyError::VerityRootHash { .. } => "verity-root-hash",
            VerifyError::VerityTree { .. } => "verity-tree",
            VerifyError::Uki { .. } | VerifyError::UkiHash { .. } => "uki",
            VerifyError::UkiCmdline { .. } => "uki-cmdline",
            VerifyError::UkiRootHash { .. } => "uki-root-hash",
            VerifyError::Rollback(e) => e.kind(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_zero_bytes_are_found_in_data_and_holes_read_as_zeros() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("sparse");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let size = 64 << 20;
        f.set_len(size).unwrap();
        // Allocated zeros, then a hole, then one byte deep inside another allocated block.
        f.write_all_at(&[0u8; 8192], 4 << 20).unwrap();
        f.write_all_at(&[0u8; 4096], 40 << 20).unwrap();
        assert_eq!(first_nonzero(&f, 0, size).unwrap(), None);
        let at = (40 << 20) + 1234;
        f.write_all_at(&[7], at).unwrap();
        assert_eq!(first_nonzero(&f, 0, size).unwrap(), Some(at));
        assert_eq!(first_nonzero(&f, at, at + 1).unwrap(), Some(at));
        assert_eq!(first_nonzero(&f, 0, at).unwrap(), None);
        assert_eq!(first_nonzero(&f, at + 1, size).unwrap(), None);
        // The last byte of the file, after a hole.
        f.write_all_at(&[1], size - 1).unwrap();
        assert_eq!(first_nonzero(&f, at + 1, size).unwrap(), Some(size - 1));
        assert_eq!(first_nonzero_byte(&[0, 0, 0]), None);
        let mut v = vec![0u8; 10_000];
        v[9_999] = 1;
        assert_eq!(first_nonzero_byte(&v), Some(9_999));
    }
}
