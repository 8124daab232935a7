//! A strict GPT reader over bytes. `ingot inspect` reads images with it and stage 1 reads the boot disk with
//! it, so it must reject anything malformed with a precise error instead of guessing: both read untrusted
//! bytes (a disk someone handed us).

use std::fmt;

use uuid::Uuid;

/// Sector size the builder writes and the reader assumes.
pub const SECTOR: u64 = 512;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const MIN_HEADER_SIZE: u32 = 92;
const MAX_ENTRIES: u32 = 1024;

/// What was wrong with the bytes, with the byte offsets involved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GptError {
    TooShort {
        needed: u64,
        have: u64,
    },
    NoSignature,
    BadHeaderSize(u32),
    HeaderCrc {
        stored: u32,
        computed: u32,
    },
    BadEntryLayout {
        count: u32,
        size: u32,
    },
    EntriesCrc {
        stored: u32,
        computed: u32,
    },
    BadRange {
        index: u32,
        first_lba: u64,
        last_lba: u64,
    },
}

impl fmt::Display for GptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GptError::TooShort { needed, have } => {
                write!(
                    f,
                    "GPT needs bytes up to offset {needed}, but only {have} bytes were given"
                )
            }
            GptError::NoSignature => write!(f, "no GPT header at byte 512 (expected signature \"EFI PART\")"),
            GptError::BadHeaderSize(s) => write!(f, "GPT header size {s} at byte 524 is not in 92..=512"),
            GptError::HeaderCrc { stored, computed } => {
                write!(
                    f,
                    "GPT header CRC32 at byte 528 is {stored:#010x}, computed {computed:#010x}"
                )
            }
            GptError::BadEntryLayout { count, size } => write!(
                f,
                "GPT declares {count} entries of {size} bytes (expected at most {MAX_ENTRIES} entries of 128..=4096 bytes, size a multiple of 8)"
            ),
            GptError::EntriesCrc { stored, computed } => {
                write!(
                    f,
                    "GPT partition array CRC32 is {stored:#010x}, computed {computed:#010x}"
                )
            }
            GptError::BadRange {
                index,
                first_lba,
                last_lba,
            } => {
                write!(
                    f,
                    "GPT entry {index} spans LBA {first_lba}..={last_lba}, which is empty or reversed"
                )
            }
        }
    }
}

impl std::error::Error for GptError {}

/// The fields of the primary GPT header we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub disk_guid: Uuid,
    pub first_usable_lba: u64,
    pub last_usable_lba: u64,
    pub entries_lba: u64,
    pub entry_count: u32,
    pub entry_size: u32,
    entries_crc: u32,
}

impl Header {
    /// Byte range of the partition entry array, to be read and passed to [`parse_entries`].
    pub fn entries_byte_range(&self) -> std::ops::Range<u64> {
        let start = self.entries_lba * SECTOR;
        start..start + u64::from(self.entry_count) * u64::from(self.entry_size)
    }
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based partition number (index in the array + 1).
    pub number: u32,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], off: usize) -> Uuid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[off..off + 16]);
    Uuid::from_bytes_le(a)
}

/// Parses the primary header from the first 1024 bytes of a disk (LBA 0 and 1).
pub fn parse_header(disk_start: &[u8]) -> Result<Header, GptError> {
    let need = 2 * SECTOR;
    if (disk_start.len() as u64) < need {
        return Err(GptError::TooShort {
            needed: need,
            have: disk_start.len() as u64,
        });
    }
    let h = &disk_start[SECTOR as usize..need as usize];
    if &h[0..8] != SIGNATURE {
        return Err(GptError::NoSignature);
    }
    let header_size = u32_at(h, 12);
    if !(MIN_HEADER_SIZE..=SECTOR as u32).contains(&header_size) {
        return Err(GptError::BadHeaderSize(header_size));
    }
    let stored = u32_at(h, 16);
    let mut copy = h[..header_size as usize].to_vec();
    copy[16..20].fill(0);
    let computed = crc32fast::hash(&copy);
    if stored != computed {
        return Err(GptError::HeaderCrc { stored, computed });
    }
    let entry_count = u32_at(h, 80);
    let entry_size = u32_at(h, 84);
    if entry_count > MAX_ENTRIES || !(128..=4096).contains(&entry_size) || !entry_size.is_multiple_of(8) {
        return Err(GptError::BadEntryLayout {
            count: entry_count,
            size: entry_size,
        });
    }
    Ok(Header {
        disk_guid: guid_at(h, 56),
        first_usable_lba: u64_at(h, 40),
        last_usable_lba: u64_at(h, 48),
        entries_lba: u64_at(h, 72),
        entry_count,
        entry_size,
        entries_crc: u32_at(h, 88),
    })
}

/// Parses the partition entry array (exactly [`Header::entries_byte_range`] bytes) and returns the used
/// entries in array order.
pub fn parse_entries(header: &Header, array: &[u8]) -> Result<Vec<Partition>, GptError> {
    let range = header.entries_byte_range();
    let len = range.end - range.start;
    if (array.len() as u64) < len {
        return Err(GptError::TooShort {
            needed: range.end,
            have: range.start + array.len() as u64,
        });
    }
    let array = &array[..len as usize];
    let computed = crc32fast::hash(array);
    if computed != header.entries_crc {
        return Err(GptError::EntriesCrc {
            stored: header.entries_crc,
            computed,
        });
    }
    let mut out = Vec::new();
    for (i, e) in array.chunks_exact(header.entry_size as usize).enumerate() {
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        let index = i as u32;
        let first_lba = u64_at(e, 32);
        let last_lba = u64_at(e, 40);
        if last_lba < first_lba {
            return Err(GptError::BadRange {
                index,
                first_lba,
                last_lba,
            });
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(Partition {
            number: index + 1,
            type_guid,
            part_guid: guid_at(e, 16),
            first_lba,
            last_lba,
            attributes: u64_at(e, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds a minimal valid GPT (header + 4 entries of 128 bytes at LBA 2) with one partition.
    fn sample() -> Vec<u8> {
        let mut d = vec![0u8; 1024 + 512];
        let mut entry = vec![0u8; 128];
        entry[0..16].copy_from_slice(&crate::partition::TYPE_ESP.to_bytes_le());
        entry[16..32].copy_from_slice(&Uuid::from_u128(7).to_bytes_le());
        entry[32..40].copy_from_slice(&2048u64.to_le_bytes());
        entry[40..48].copy_from_slice(&4095u64.to_le_bytes());
        for (i, u) in "esp".encode_utf16().enumerate() {
            entry[56 + 2 * i..58 + 2 * i].copy_from_slice(&u.to_le_bytes());
        }
        d[1024..1152].copy_from_slice(&entry);
        let array_crc = crc32fast::hash(&d[1024..1536]);
        let h = &mut d[512..1024];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&9000u64.to_le_bytes());
        h[56..72].copy_from_slice(&Uuid::from_u128(1).to_bytes_le());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&4u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&array_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d
    }

    #[test]
    fn reads_a_valid_table() {
        let d = sample();
        let h = parse_header(&d).unwrap();
        assert_eq!(h.disk_guid, Uuid::from_u128(1));
        let r = h.entries_byte_range();
        let parts = parse_entries(&h, &d[r.start as usize..r.end as usize]).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].name, "esp");
        assert_eq!(parts[0].number, 1);
        assert_eq!(parts[0].type_guid, crate::partition::TYPE_ESP);
        assert_eq!(parts[0].offset_bytes(), 2048 * 512);
        assert_eq!(parts[0].size_bytes(), 2048 * 512);
    }

    #[test]
    fn rejects_corruption_with_the_reason() {
        let mut d = sample();
        d[600] ^= 1;
        assert!(matches!(parse_header(&d), Err(GptError::HeaderCrc { .. })));
        let mut d = sample();
        d[1030] ^= 1;
        let h = parse_header(&d).unwrap();
        assert!(matches!(
            parse_entries(&h, &d[1024..]),
            Err(GptError::EntriesCrc { .. })
        ));
        assert_eq!(
            parse_header(&[0u8; 100]),
            Err(GptError::TooShort {
                needed: 1024,
                have: 100
            })
        );
        assert_eq!(parse_header(&[0u8; 1024]), Err(GptError::NoSignature));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), flip in 0usize..1536) {
            let _ = parse_header(&bytes).map(|h| parse_entries(&h, bytes.get(1024..).unwrap_or(&[])));
            let mut d = sample();
            d[flip] ^= 0xff;
            if let Ok(h) = parse_header(&d) {
                let _ = parse_entries(&h, &d[1024..]);
            }
        }
    }
}
