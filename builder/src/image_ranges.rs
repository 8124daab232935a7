//! The byte ranges of an image that a copy onto a used disk must write, for `ingot flash` and the bmap.
//!
//! Copying only the blocks that hold data (what a sparse file's extents or the manifest's `data_ranges`
//! say) is wrong on a disk that held something before: a zero block inside a file system (the free
//! entries of a FAT, a zero block of a file in EROFS, which dm-verity hashes) would keep the disk's old
//! bytes. So the ranges here are the image's layout, not its sparseness:
//!
//! - everything before the first partition (protective MBR, primary GPT, the gap up to 1 MiB);
//! - each partition up to the end of what its manifest hash covers, zero blocks included;
//! - at least the first [`WIPE_BYTES`] of every partition, so an old file system signature there cannot
//!   make an empty partition look formatted (the node formats `var` only when it finds no ext4 on it);
//! - everything after the last partition (the backup GPT).
//!
//! What is left out is only the zero tails of partitions, which nothing reads before writing.

use std::ops::Range;

use crate::manifest::Manifest;

/// How much of every partition is always written, at least: it covers the superblocks of FAT, ext4,
/// EROFS, XFS and btrfs (the last at 64 KiB) and a dm-verity superblock.
pub const WIPE_BYTES: u64 = 1 << 20;

/// The block size ranges are aligned to: bmap blocks and direct I/O both want 4 KiB.
pub const BLOCK: u64 = 4096;

/// The ranges of `manifest`'s image a copy must write, sorted, merged and aligned to [`BLOCK`] (the image
/// size is a multiple of it; a range is clipped to the image). The manifest must have been verified
/// against the image (partitions in bounds and not overlapping), which is what gives these ranges meaning.
pub fn must_write(manifest: &Manifest) -> Vec<Range<u64>> {
    let size = manifest.image.size;
    let mut ranges: Vec<Range<u64>> = Vec::new();
    let mut parts: Vec<_> = manifest.partitions.iter().collect();
    parts.sort_by_key(|p| p.offset);
    let first = parts.first().map_or(size, |p| p.offset);
    ranges.push(0..first);
    let mut last_end = first;
    for p in &parts {
        let end = p.offset.saturating_add(p.size).min(size);
        let keep = p.hashed_bytes.max(WIPE_BYTES.min(p.size));
        ranges.push(p.offset..p.offset.saturating_add(keep).min(end));
        last_end = last_end.max(end);
    }
    ranges.push(last_end..size);
    aligned_and_merged(ranges, size)
}

fn aligned_and_merged(mut ranges: Vec<Range<u64>>, size: u64) -> Vec<Range<u64>> {
    for r in &mut ranges {
        r.start = r.start / BLOCK * BLOCK;
        r.end = r.end.div_ceil(BLOCK).saturating_mul(BLOCK).min(size);
    }
    ranges.retain(|r| r.start < r.end);
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match merged.last_mut() {
            Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
            _ => merged.push(r),
        }
    }
    merged
}

/// The number of bytes `ranges` cover.
pub fn total(ranges: &[Range<u64>]) -> u64 {
    ranges.iter().map(|r| r.end - r.start).sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::manifest::{ImageInfo, PartitionEntry, UkiInfo};

    const MIB: u64 = 1 << 20;

    /// A manifest of an image of `size` bytes with partitions `(offset, size, hashed_bytes)`; only what the
    /// ranges depend on is filled in.
    pub(crate) fn manifest(size: u64, parts: &[(u64, u64, u64)]) -> Manifest {
        Manifest {
            schema: crate::manifest::SCHEMA,
            image: ImageInfo {
                name: "t".into(),
                version: "1".into(),
                profile: "t.toml".into(),
                disk_guid: String::new(),
                size,
                source_date_epoch: 0,
                outside_sha256: None,
            },
            partitions: parts
                .iter()
                .enumerate()
                .map(|(i, &(offset, size, hashed_bytes))| PartitionEntry {
                    number: i as u32 + 1,
                    label: format!("p{i}"),
                    type_guid: String::new(),
                    guid: String::new(),
                    offset,
                    size,
                    sha256: String::new(),
                    hashed_bytes,
                })
                .collect(),
            uki: UkiInfo {
                path: String::new(),
                sha256: String::new(),
                cmdline: String::new(),
                kernel_release: String::new(),
                initrd_modules: vec![],
            },
            verity: None,
            components: vec![],
            images: vec![],
            packages: Vec::new(),
            data_ranges: vec![],
        }
    }

    #[test]
    fn covers_the_head_hashed_content_partition_starts_and_the_tail() {
        // esp 1..513 MiB with 16 MiB of content, root with 3 MiB, an empty 64 MiB var, backup GPT after.
        let size = 600 * MIB + 20480;
        let m = manifest(
            size,
            &[
                (MIB, 512 * MIB, 16 * MIB),
                (513 * MIB, 8 * MIB, 3 * MIB),
                (521 * MIB, 64 * MIB, 0),
            ],
        );
        assert_eq!(
            must_write(&m),
            vec![
                0..17 * MIB,
                513 * MIB..516 * MIB,
                521 * MIB..522 * MIB,
                585 * MIB..size
            ]
        );
        assert_eq!(
            total(&must_write(&m)),
            17 * MIB + 3 * MIB + MIB + 15 * MIB + 20480
        );
    }

    #[test]
    fn hashed_lengths_round_up_to_blocks_and_small_partitions_are_whole() {
        let m = manifest(8 * MIB, &[(MIB, 2 * MIB, 5000), (3 * MIB, 4096 * 3, 0)]);
        // The first partition: 1 MiB wiped (more than 5000 hashed bytes); the second, smaller than the
        // wipe, whole; the gap after it up to the end (the tail) too.
        assert_eq!(must_write(&m), vec![0..2 * MIB, 3 * MIB..8 * MIB]);
    }

    #[test]
    fn adjacent_ranges_merge_and_nothing_passes_the_image_end() {
        let m = manifest(4 * MIB, &[(MIB, MIB, MIB), (2 * MIB, 4 * MIB, 4 * MIB)]);
        assert_eq!(must_write(&m), vec![0..4 * MIB]);
    }

    #[test]
    fn without_partitions_the_whole_image_is_written() {
        assert_eq!(must_write(&manifest(3 * MIB, &[])), vec![0..3 * MIB]);
    }
}
