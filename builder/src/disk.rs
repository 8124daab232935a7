//! The GPT disk: where each partition goes, the partition table, and copying partition contents in
//! sparsely while hashing them.
//!
//! Layout (UAPI Discoverable Partitions, see `ingot_spec::partition`): ESP, root-a, root-a-verity, root-b,
//! root-b-verity, var — in that order, each aligned to 1 MiB. Every GUID is derived from content or from the
//! image identity, never random, so two builds of the same inputs are byte-identical.
//!
//! Partition hashes cover a partition's bytes up to its last non-zero 4 KiB block (see [`TrimmedSha256`]):
//! the zeros after the content are a property of the sparse image, not of the content, and hashing gigabytes
//! of them on every build would dominate build time.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use ingot_spec::partition::Role;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::profile::PartitionSizes;

pub const MIB: u64 = 1024 * 1024;
/// Granularity of zero detection for sparse writes and hash trimming.
pub const BLOCK: usize = 4096;
/// Space left after the last partition for the backup GPT (33 sectors), rounded to alignment.
const TAIL: u64 = MIB;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("writing the partition table of {path}: {message}")]
    Gpt { path: String, message: String },
    #[error(
        "{what} is {size} bytes, larger than its partition ({capacity} bytes); raise `partitions.{field}` in the profile"
    )]
    TooLarge {
        what: String,
        size: u64,
        capacity: u64,
        field: &'static str,
    },
    #[error("I/O on {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Where one partition sits, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub role: Role,
    pub offset: u64,
    pub size: u64,
}

/// The planned disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_size: u64,
    pub partitions: Vec<Placement>,
}

impl Layout {
    pub fn get(&self, role: Role) -> Placement {
        // Every layout holds all roles (see `plan`), so the fallback is unreachable in practice.
        self.partitions
            .iter()
            .copied()
            .find(|p| p.role == role)
            .unwrap_or(Placement {
                role,
                offset: 0,
                size: 0,
            })
    }
}

/// Size of a dm-verity hash partition for `data` bytes of 4 KiB blocks with SHA-256 (128 hashes per block),
/// plus the superblock, rounded up to whole MiB.
pub fn verity_size(data: u64) -> u64 {
    let mut blocks = data.div_ceil(BLOCK as u64);
    let mut total = 1; // superblock
    while blocks > 1 {
        blocks = blocks.div_ceil(128);
        total += blocks;
    }
    (total * BLOCK as u64).div_ceil(MIB).max(1) * MIB
}

/// Places the six partitions at 1 MiB alignment.
pub fn plan(sizes: &PartitionSizes) -> Layout {
    let mut offset = MIB;
    let mut partitions = Vec::new();
    for role in Role::ALL {
        let size = match role {
            Role::Esp => sizes.esp,
            Role::RootA | Role::RootB => sizes.root,
            Role::RootAVerity | Role::RootBVerity => verity_size(sizes.root),
            Role::Var => sizes.var,
        };
        partitions.push(Placement { role, offset, size });
        offset += size;
    }
    Layout {
        disk_size: offset + TAIL,
        partitions,
    }
}

/// A UUID from hash bytes, marked as version 4 / RFC 4122 variant the way systemd derives partition UUIDs
/// from root hashes, so tools treat it as an ordinary random-looking UUID.
pub fn uuid_from_hash(hash: &[u8]) -> Uuid {
    let mut b = [0u8; 16];
    b.copy_from_slice(&hash[..16]);
    uuid::Builder::from_random_bytes(b).into_uuid()
}

/// A UUID derived from an image identity string and a purpose (e.g. `"var"`).
pub fn derived_uuid(seed: &str, purpose: &str) -> Uuid {
    uuid_from_hash(&Sha256::digest(format!("ingot:{seed}:{purpose}").as_bytes()))
}

/// SHA-256 over a byte stream with trailing all-zero 4 KiB blocks left out. Zero blocks in the middle are
/// hashed (lazily, when a later non-zero block shows they are not trailing).
#[derive(Default)]
pub struct TrimmedSha256 {
    hasher: Sha256,
    hashed: u64,
    pending_zero: u64,
}

impl TrimmedSha256 {
    /// Feeds one block (any length ≤ BLOCK; only the last block of a stream may be short).
    pub fn block(&mut self, block: &[u8]) {
        if is_zero(block) {
            self.pending_zero += block.len() as u64;
            return;
        }
        const ZEROS: [u8; BLOCK] = [0; BLOCK];
        while self.pending_zero > 0 {
            let n = self.pending_zero.min(BLOCK as u64) as usize;
            self.hasher.update(&ZEROS[..n]);
            self.hashed += n as u64;
            self.pending_zero -= n as u64;
        }
        self.hasher.update(block);
        self.hashed += block.len() as u64;
    }

    /// Records `len` zero bytes without reading them (a hole in a sparse source).
    pub fn zeros(&mut self, len: u64) {
        self.pending_zero += len;
    }

    /// The digest and how many bytes it covers.
    pub fn finish(self) -> ([u8; 32], u64) {
        (self.hasher.finalize().into(), self.hashed)
    }
}

pub fn is_zero(b: &[u8]) -> bool {
    let words = b.chunks_exact(8);
    let rest = words.remainder();
    words.into_iter().all(|w| w.iter().fold(0u8, |a, &x| a | x) == 0) && rest.iter().all(|&x| x == 0)
}

/// What copying a partition's content produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub sha256: [u8; 32],
    /// Bytes covered by `sha256` (content up to its last non-zero block).
    pub hashed_bytes: u64,
    /// Absolute byte ranges `(offset, len)` of the disk that hold data.
    pub data_ranges: Vec<(u64, u64)>,
}

/// Reads `len` bytes of `f` from `start`, skipping holes without reading them (SEEK_DATA/SEEK_HOLE), hashing
/// with [`TrimmedSha256`] and handing each chunk of data (relative offset, bytes) to `on_data`.
pub fn scan(
    f: &File,
    start: u64,
    len: u64,
    mut on_data: impl FnMut(u64, &[u8]) -> io::Result<()>,
) -> io::Result<TrimmedSha256> {
    let mut hash = TrimmedSha256::default();
    let mut buf = vec![0u8; 64 * BLOCK];
    let end = start + len;
    let mut pos = start;
    while pos < end {
        // SEEK_DATA gives the next data offset (ENXIO: only a hole remains); file systems without it (or a
        // block device) make us read everything, which is still correct.
        let data = match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(pos)) {
            Ok(d) => d.min(end),
            Err(rustix::io::Errno::NXIO) => end,
            Err(_) => pos,
        };
        let data = (data - (data - start) % BLOCK as u64).max(pos);
        if data > pos {
            hash.zeros(data - pos);
            pos = data;
            continue;
        }
        let hole = match rustix::fs::seek(f, rustix::fs::SeekFrom::Hole(pos)) {
            Ok(h) => h.min(end),
            Err(_) => end,
        };
        let stop = hole.max(pos + BLOCK as u64).min(end);
        while pos < stop {
            let want = ((stop - pos) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..want], pos)?;
            for block in buf[..want].chunks(BLOCK) {
                hash.block(block);
            }
            on_data(pos - start, &buf[..want])?;
            pos += want as u64;
        }
    }
    Ok(hash)
}

/// Copies `src` into `disk` at `place`, writing only non-zero blocks (the disk file stays sparse), and
/// hashes it.
pub fn copy_into(
    src: &Path,
    disk: &File,
    place: Placement,
    field: &'static str,
) -> Result<Written, DiskError> {
    let io_err = |source| DiskError::Io {
        path: src.display().to_string(),
        source,
    };
    let f = File::open(src).map_err(io_err)?;
    let len = f.metadata().map_err(io_err)?.len();
    if len > place.size {
        return Err(DiskError::TooLarge {
            what: format!("the {} content", place.role.label()),
            size: len,
            capacity: place.size,
            field,
        });
    }
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut write_failed = None;
    let hash = scan(&f, 0, len, |rel, chunk| {
        for (i, block) in chunk.chunks(BLOCK).enumerate() {
            if !is_zero(block) {
                let at = place.offset + rel + (i * BLOCK) as u64;
                match ranges.last_mut() {
                    Some((o, l)) if *o + *l == at => *l += block.len() as u64,
                    _ => ranges.push((at, block.len() as u64)),
                }
            }
        }
        write_nonzero(disk, chunk, place.offset + rel).inspect_err(|e| write_failed = Some(e.kind()))
    })
    .map_err(|source| match write_failed {
        Some(_) => DiskError::Io {
            path: "the output image".into(),
            source,
        },
        None => io_err(source),
    })?;
    let (sha256, hashed_bytes) = hash.finish();
    Ok(Written {
        sha256,
        hashed_bytes,
        data_ranges: ranges,
    })
}

/// Writes the non-zero 4 KiB blocks of `buf` at `offset`, merging neighbours into one write.
pub fn write_nonzero(disk: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    for (i, block) in buf.chunks(BLOCK).enumerate() {
        let start = i * BLOCK;
        match (is_zero(block), run_start) {
            (false, None) => run_start = Some(start),
            (true, Some(s)) => {
                disk.write_all_at(&buf[s..start], offset + s as u64)?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = run_start {
        disk.write_all_at(&buf[s..], offset + s as u64)?;
    }
    Ok(())
}

/// Writes the protective MBR and the primary and backup GPT of `layout` into `disk` (already sized).
pub fn write_table(
    disk: &mut File,
    path: &Path,
    layout: &Layout,
    disk_guid: Uuid,
    part_guids: &BTreeMap<Role, Uuid>,
) -> Result<(), DiskError> {
    let gpt_err = |e: &dyn std::fmt::Display| DiskError::Gpt {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let sectors = layout.disk_size / 512;
    let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    mbr.overwrite_lba0(disk).map_err(|e| gpt_err(&e))?;
    let mut table = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .create_from_device(&mut *disk, Some(disk_guid))
        .map_err(|e| gpt_err(&e))?;
    let mut parts = BTreeMap::new();
    for p in &layout.partitions {
        let part = gpt::partition::Partition {
            part_type_guid: gpt::partition_types::Type {
                guid: p.role.type_guid(),
                os: gpt::partition_types::OperatingSystem::None,
            },
            part_guid: part_guids
                .get(&p.role)
                .copied()
                .unwrap_or_else(|| derived_uuid(&disk_guid.to_string(), p.role.label())),
            first_lba: p.offset / 512,
            last_lba: (p.offset + p.size) / 512 - 1,
            flags: p.role.attributes(),
            name: p.role.label().to_string(),
        };
        parts.insert(p.role.number(), part);
    }
    table.update_partitions(parts).map_err(|e| gpt_err(&e))?;
    table.write().map_err(|e| gpt_err(&e))?;
    disk.flush().map_err(|source| DiskError::Io {
        path: path.display().to_string(),
        source,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_aligned_ordered_and_sized() {
        let l = plan(&PartitionSizes {
            esp: 512 * MIB,
            root: 1024 * MIB,
            var: 64 * MIB,
        });
        let roles: Vec<Role> = l.partitions.iter().map(|p| p.role).collect();
        assert_eq!(roles, Role::ALL);
        assert_eq!(l.partitions[0].offset, MIB);
        for w in l.partitions.windows(2) {
            assert_eq!(w[0].offset + w[0].size, w[1].offset);
        }
        assert!(
            l.partitions
                .iter()
                .all(|p| p.offset % MIB == 0 && p.size % MIB == 0)
        );
        assert_eq!(
            l.get(Role::RootAVerity).size,
            9 * MIB,
            "1 GiB root: 2065 hash blocks + superblock"
        );
        assert_eq!(
            l.disk_size,
            MIB + 512 * MIB + 2 * (1024 + 9) * MIB + 64 * MIB + MIB
        );
    }

    #[test]
    fn trimmed_hash_ignores_only_trailing_zero_blocks() {
        let mut a = TrimmedSha256::default();
        a.block(&[1; BLOCK]);
        a.block(&[0; BLOCK]);
        a.block(&[2; BLOCK]);
        a.block(&[0; BLOCK]);
        a.zeros(10 * MIB);
        let (ha, na) = a.finish();
        let mut want = Sha256::new();
        want.update([1u8; BLOCK]);
        want.update([0u8; BLOCK]);
        want.update([2u8; BLOCK]);
        assert_eq!(na, 3 * BLOCK as u64);
        assert_eq!(ha, <[u8; 32]>::from(want.finalize()));
    }

    #[test]
    fn copy_is_sparse_and_table_passes_sgdisk() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("content");
        let mut data = vec![0u8; 3 * MIB as usize];
        data[0] = 7;
        data[2 * MIB as usize + 5] = 9;
        std::fs::write(&src, &data).unwrap();
        let layout = plan(&PartitionSizes {
            esp: 64 * MIB,
            root: 32 * MIB,
            var: 16 * MIB,
        });
        let img = d.path().join("disk.raw");
        let mut disk = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&img)
            .unwrap();
        disk.set_len(layout.disk_size).unwrap();
        let place = layout.get(Role::RootA);
        let w = copy_into(&src, &disk, place, "root").unwrap();
        assert_eq!(
            w.data_ranges,
            vec![
                (place.offset, BLOCK as u64),
                (place.offset + 2 * MIB, BLOCK as u64)
            ]
        );
        assert_eq!(w.hashed_bytes, 2 * MIB + BLOCK as u64);
        write_table(&mut disk, &img, &layout, Uuid::from_u128(42), &BTreeMap::new()).unwrap();
        drop(disk);
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes[place.offset as usize + 2 * MIB as usize + 5], 9);
        let h = ingot_spec::gpt::parse_header(&bytes).unwrap();
        assert_eq!(h.disk_guid, Uuid::from_u128(42));
        let r = h.entries_byte_range();
        let parts = ingot_spec::gpt::parse_entries(&h, &bytes[r.start as usize..r.end as usize]).unwrap();
        assert_eq!(parts.len(), 6);
        assert_eq!(parts[1].name, "root-a");
        assert_eq!(parts[1].offset_bytes(), place.offset);
        assert_eq!(parts[5].attributes, ingot_spec::partition::ATTR_GROW_FS);
        if let Some(sgdisk) = ingot_testkit::tool_for_check(
            "copy_is_sparse_and_table_passes_sgdisk",
            "the sgdisk check",
            "sgdisk",
        ) {
            let out = std::process::Command::new(sgdisk)
                .arg("-v")
                .arg(&img)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("No problems found"), "sgdisk -v: {text}");
        }
        let allocated = std::fs::metadata(&img)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .unwrap();
        assert!(
            allocated < 2 * MIB,
            "image should be sparse, {allocated} bytes allocated"
        );
        let src_big = d.path().join("big");
        std::fs::write(&src_big, vec![1u8; 33 * MIB as usize]).unwrap();
        let disk = File::options().write(true).open(&img).unwrap();
        assert!(matches!(
            copy_into(&src_big, &disk, place, "root"),
            Err(DiskError::TooLarge { .. })
        ));
    }
}
