//! Growing the last partition of a GPT disk to the end of the disk, as pure byte transformations.
//!
//! An image is smaller than the disk it is written to; on first boot the node moves the backup GPT to the
//! disk's real end and extends its last partition (`var`) up to it. This module computes the sectors to
//! write; the caller writes them in the returned order, which keeps a valid table on disk after a crash at
//! any point: the new backup goes to the new end first (where nothing valid lives), then the primary array
//! and last the primary header, whose CRC makes the switch atomic for readers. `ingot flash` uses the same
//! code to move only the backup when it copies an image onto a larger disk.

use crate::gpt::{self, GptError, SECTOR};

/// A write of `bytes` at byte `offset` of the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub offset: u64,
    pub bytes: Vec<u8>,
}

/// What growing does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grown {
    /// The partition's new last LBA (inclusive).
    pub last_lba: u64,
    /// The sectors to write, in this order.
    pub writes: Vec<Write>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrowError {
    #[error(transparent)]
    Gpt(#[from] GptError),
    #[error("partition {0} is not in the table")]
    NoPartition(u32),
    #[error(
        "partition {number} ends at LBA {last_lba}, but partition {other} lies after it; only the last partition can grow"
    )]
    NotLast { number: u32, last_lba: u64, other: u32 },
    #[error("the disk has {disk_sectors} sectors, fewer than the table needs ({needed})")]
    DiskTooSmall { disk_sectors: u64, needed: u64 },
}

/// Computes how to grow partition `number` to the end of a disk of `disk_sectors` sectors, keeping its end
/// aligned to `align_sectors` (2048 = 1 MiB). `head` is the disk's first bytes up to the end of the
/// primary partition array. Returns `Ok(None)` when there is nothing to gain (the partition already
/// reaches as far as alignment allows).
pub fn grow_partition(
    head: &[u8],
    disk_sectors: u64,
    number: u32,
    align_sectors: u64,
) -> Result<Option<Grown>, GrowError> {
    let table = Table::parse(head)?;
    let part = table
        .parts
        .iter()
        .find(|p| p.number == number)
        .ok_or(GrowError::NoPartition(number))?;
    if let Some(other) = table
        .parts
        .iter()
        .find(|p| p.number != number && p.first_lba > part.last_lba)
    {
        return Err(GrowError::NotLast {
            number,
            last_lba: part.last_lba,
            other: other.number,
        });
    }
    let last_usable = table.last_usable(disk_sectors, part.last_lba)?;
    let align = align_sectors.max(1);
    let last_lba = (last_usable + 1) / align * align - 1;
    if last_lba <= part.last_lba && last_usable == table.header.last_usable_lba {
        return Ok(None);
    }
    let last_lba = last_lba.max(part.last_lba);

    let mut array = table.array.to_vec();
    let entry = (number as usize - 1) * table.header.entry_size as usize;
    array[entry + 40..entry + 48].copy_from_slice(&last_lba.to_le_bytes());
    Ok(Some(Grown {
        last_lba,
        writes: table.rewritten(disk_sectors, array),
    }))
}

/// Computes how to move the backup GPT to the end of a disk of `disk_sectors` sectors, making the space
/// before it usable, without changing any partition: what a copy of an image onto a larger disk needs so
/// that its table describes the disk it is on. The writes come in the same crash-safe order as
/// [`grow_partition`]'s. Returns `Ok(None)` when the backup already is in the disk's last sector.
pub fn relocate_backup(head: &[u8], disk_sectors: u64) -> Result<Option<Vec<Write>>, GrowError> {
    let table = Table::parse(head)?;
    let last_lba = table.parts.iter().map(|p| p.last_lba).max().unwrap_or(0);
    let last_usable = table.last_usable(disk_sectors, last_lba)?;
    if last_usable == table.header.last_usable_lba && table.alternate_lba() == disk_sectors - 1 {
        return Ok(None);
    }
    Ok(Some(table.rewritten(disk_sectors, table.array.to_vec())))
}

/// A parsed primary GPT, with the raw bytes it came from.
struct Table<'a> {
    head: &'a [u8],
    header: gpt::Header,
    array_start: u64,
    array: &'a [u8],
    parts: Vec<gpt::Partition>,
}

impl<'a> Table<'a> {
    fn parse(head: &'a [u8]) -> Result<Self, GrowError> {
        let header = gpt::parse_header(head)?;
        let range = header.entries_byte_range();
        let array = head
            .get(range.start as usize..range.end as usize)
            .ok_or(GptError::TooShort {
                needed: range.end,
                have: head.len() as u64,
            })?;
        let parts = gpt::parse_entries(&header, array)?;
        Ok(Table {
            head,
            header,
            array_start: range.start,
            array,
            parts,
        })
    }

    fn array_sectors(&self) -> u64 {
        (self.array.len() as u64).div_ceil(SECTOR)
    }

    fn alternate_lba(&self) -> u64 {
        let raw = &self.head[SECTOR as usize + 32..SECTOR as usize + 40];
        u64::from_le_bytes([raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6], raw[7]])
    }

    /// The last usable LBA on a disk of `disk_sectors` with the backup array and header at its end, if the
    /// disk holds both tables and everything up to `last_used`.
    fn last_usable(&self, disk_sectors: u64, last_used: u64) -> Result<u64, GrowError> {
        let array_sectors = self.array_sectors();
        // Backup header in the last sector, its array right before it.
        let needed = self.header.entries_lba + 2 * array_sectors + 2;
        if disk_sectors < needed.max(last_used + array_sectors + 2) {
            return Err(GrowError::DiskTooSmall { disk_sectors, needed });
        }
        Ok(disk_sectors - 1 - array_sectors - 1)
    }

    /// The writes that put `array` in both places and both headers describing a disk of `disk_sectors`:
    /// the new backup first (where nothing valid lives), then the primary array, last the primary header.
    fn rewritten(&self, disk_sectors: u64, array: Vec<u8>) -> Vec<Write> {
        let array_sectors = self.array_sectors();
        let backup_header_lba = disk_sectors - 1;
        let backup_array_lba = backup_header_lba - array_sectors;
        let last_usable = backup_array_lba - 1;
        let array_crc = crc32fast::hash(&array);

        let primary_raw = &self.head[SECTOR as usize..2 * SECTOR as usize];
        let header_size =
            u32::from_le_bytes([primary_raw[12], primary_raw[13], primary_raw[14], primary_raw[15]]) as usize;
        let mut primary = primary_raw.to_vec();
        primary[32..40].copy_from_slice(&backup_header_lba.to_le_bytes());
        primary[48..56].copy_from_slice(&last_usable.to_le_bytes());
        primary[88..92].copy_from_slice(&array_crc.to_le_bytes());
        seal(&mut primary, header_size);

        let mut backup = primary.clone();
        backup[24..32].copy_from_slice(&backup_header_lba.to_le_bytes());
        backup[32..40].copy_from_slice(&1u64.to_le_bytes());
        backup[72..80].copy_from_slice(&backup_array_lba.to_le_bytes());
        seal(&mut backup, header_size);

        let mut padded = array.clone();
        padded.resize((array_sectors * SECTOR) as usize, 0);
        vec![
            Write {
                offset: backup_array_lba * SECTOR,
                bytes: padded,
            },
            Write {
                offset: backup_header_lba * SECTOR,
                bytes: backup,
            },
            Write {
                offset: self.array_start,
                bytes: array,
            },
            Write {
                offset: SECTOR,
                bytes: primary,
            },
        ]
    }
}

fn seal(header: &mut [u8], size: usize) {
    header[16..20].fill(0);
    let crc = crc32fast::hash(&header[..size]);
    header[16..20].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpt::{parse_entries, parse_header};
    use proptest::prelude::*;
    use uuid::Uuid;

    const ENTRIES: u64 = 128;

    /// A disk of `sectors` sectors with GPT arrays of 128 entries and partitions (first, last) LBAs,
    /// primary and backup as a partitioning tool writes them.
    fn disk(sectors: u64, parts: &[(u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * SECTOR) as usize];
        let array_sectors = ENTRIES * 128 / SECTOR;
        let mut array = vec![0u8; (ENTRIES * 128) as usize];
        for (i, (first, last)) in parts.iter().enumerate() {
            let e = &mut array[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&crate::partition::TYPE_ESP.to_bytes_le());
            e[16..32].copy_from_slice(&Uuid::from_u128(i as u128 + 10).to_bytes_le());
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
        }
        let crc = crc32fast::hash(&array);
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
        h[40..48].copy_from_slice(&(2 + array_sectors).to_le_bytes());
        h[48..56].copy_from_slice(&(sectors - 2 - array_sectors).to_le_bytes());
        h[56..72].copy_from_slice(&Uuid::from_u128(1).to_bytes_le());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc.to_le_bytes());
        seal(&mut h, 92);
        d[512..1024].copy_from_slice(&h);
        d[1024..1024 + array.len()].copy_from_slice(&array);
        let mut b = h.clone();
        b[24..32].copy_from_slice(&(sectors - 1).to_le_bytes());
        b[32..40].copy_from_slice(&1u64.to_le_bytes());
        b[72..80].copy_from_slice(&(sectors - 1 - array_sectors).to_le_bytes());
        seal(&mut b, 92);
        let ba = ((sectors - 1 - array_sectors) * SECTOR) as usize;
        d[ba..ba + array.len()].copy_from_slice(&array);
        let bh = ((sectors - 1) * SECTOR) as usize;
        d[bh..bh + 512].copy_from_slice(&b);
        d
    }

    fn head(d: &[u8]) -> &[u8] {
        &d[..(2 + ENTRIES * 128 / SECTOR) as usize * SECTOR as usize]
    }

    /// Applies the writes to a disk image of the new size (the old content copied in front).
    fn apply(old: &[u8], sectors: u64, grown: &Grown) -> Vec<u8> {
        let mut d = old.to_vec();
        d.resize((sectors * SECTOR) as usize, 0);
        for w in &grown.writes {
            d[w.offset as usize..w.offset as usize + w.bytes.len()].copy_from_slice(&w.bytes);
        }
        d
    }

    /// Reads the backup header the primary points to and checks it mirrors the primary.
    fn backup_is_consistent(d: &[u8]) {
        let h = &d[512..1024];
        let alt = u64::from_le_bytes(h[32..40].try_into().unwrap());
        let b = &d[(alt * SECTOR) as usize..(alt * SECTOR + SECTOR) as usize];
        assert_eq!(&b[0..8], b"EFI PART");
        assert_eq!(u64::from_le_bytes(b[24..32].try_into().unwrap()), alt);
        assert_eq!(u64::from_le_bytes(b[32..40].try_into().unwrap()), 1);
        let mut copy = b[..92].to_vec();
        copy[16..20].fill(0);
        assert_eq!(
            crc32fast::hash(&copy),
            u32::from_le_bytes(b[16..20].try_into().unwrap())
        );
        let array_lba = u64::from_le_bytes(b[72..80].try_into().unwrap());
        let array = &d[(array_lba * SECTOR) as usize..(array_lba * SECTOR + ENTRIES * 128) as usize];
        assert_eq!(array, &d[1024..1024 + (ENTRIES * 128) as usize]);
        assert_eq!(b[88..92], h[88..92]);
    }

    #[test]
    fn grows_the_last_partition_to_the_aligned_end_and_moves_the_backup() {
        let old = disk(20480, &[(2048, 4095), (4096, 8191)]);
        let new_sectors = 409_600 + 77; // not a multiple of the alignment
        let grown = grow_partition(head(&old), new_sectors, 2, 2048).unwrap().unwrap();
        let d = apply(&old, new_sectors, &grown);
        let h = parse_header(&d).unwrap();
        assert_eq!(h.last_usable_lba, new_sectors - 1 - 32 - 1);
        let parts = parse_entries(&h, &d[1024..]).unwrap();
        assert_eq!(parts[1].last_lba, grown.last_lba);
        assert_eq!((grown.last_lba + 1) % 2048, 0);
        assert!(grown.last_lba <= h.last_usable_lba && h.last_usable_lba - grown.last_lba < 2048);
        assert_eq!(parts[0].last_lba, 4095, "other partitions are untouched");
        backup_is_consistent(&d);
        // Growing again to the same size changes nothing.
        assert_eq!(grow_partition(head(&d), new_sectors, 2, 2048).unwrap(), None);
    }

    #[test]
    fn refuses_to_grow_a_partition_that_is_not_last() {
        let old = disk(20480, &[(2048, 4095), (4096, 8191)]);
        let err = grow_partition(head(&old), 40960, 1, 2048).unwrap_err();
        assert_eq!(
            err.to_string(),
            "partition 1 ends at LBA 4095, but partition 2 lies after it; only the last partition can grow"
        );
        assert_eq!(
            grow_partition(head(&old), 40960, 3, 2048).unwrap_err(),
            GrowError::NoPartition(3)
        );
    }

    #[test]
    fn relocating_moves_the_backup_and_keeps_every_partition() {
        let old = disk(20480, &[(2048, 4095), (4096, 8191)]);
        let sectors = 409_600 + 77;
        let writes = relocate_backup(head(&old), sectors).unwrap().unwrap();
        let d = apply(&old, sectors, &Grown { last_lba: 0, writes });
        let h = parse_header(&d).unwrap();
        assert_eq!(h.last_usable_lba, sectors - 1 - 32 - 1);
        let parts = parse_entries(&h, &d[1024..]).unwrap();
        assert_eq!([parts[0].last_lba, parts[1].last_lba], [4095, 8191]);
        backup_is_consistent(&d);
        assert_eq!(
            relocate_backup(head(&d), sectors).unwrap(),
            None,
            "already at the end"
        );
        assert_eq!(relocate_backup(head(&old), 20480).unwrap(), None, "same size");
        assert!(matches!(
            relocate_backup(head(&old), 8000),
            Err(GrowError::DiskTooSmall { .. })
        ));
    }

    #[test]
    fn same_size_disk_moves_nothing() {
        let old = disk(20480, &[(2048, 18431)]);
        assert_eq!(grow_partition(head(&old), 20480, 1, 2048).unwrap(), None);
    }

    proptest! {
        // Disks are materialized in memory, so sizes stay small; the arithmetic does not depend on them.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_bigger_disk_gives_a_valid_table(extra in 0u64..20_000, align in prop::sample::select(vec![1u64, 8, 2048])) {
            let old = disk(20480, &[(2048, 4095), (4096, 10239)]);
            let sectors = 20480 + extra;
            if let Some(grown) = grow_partition(head(&old), sectors, 2, align).unwrap() {
                let d = apply(&old, sectors, &grown);
                let h = parse_header(&d).unwrap();
                let parts = parse_entries(&h, &d[1024..]).unwrap();
                prop_assert!(parts[1].last_lba >= 10239 && parts[1].last_lba <= h.last_usable_lba);
                backup_is_consistent(&d);
            }
        }

        #[test]
        fn corrupt_heads_are_errors_not_panics(flip in 0usize..(2 + 32) * 512, sectors in 0u64..100_000) {
            let mut old = disk(20480, &[(2048, 4095), (4096, 10239)]);
            old[flip] ^= 0x5a;
            let _ = grow_partition(head(&old), sectors, 2, 2048);
            let _ = relocate_backup(head(&old), sectors);
        }
    }
}
