//! The writes of `ingot flash`, in the order that keeps an interrupted copy from ever looking bootable.
//!
//! 1. Both places a GPT could be found (the disk's first sectors, its last sectors) are zeroed and
//!    flushed: from here on the disk has no partition table.
//! 2. The image's ranges ([`crate::image_ranges::must_write`]) without its two GPTs, in large aligned
//!    direct writes; flushed.
//! 3. Every byte of step 2 is read back (direct reads, so the device answers, not the page cache) and
//!    hashed: each range against what was written, each partition against the manifest's sha256, which
//!    also catches an image file changed after it was verified.
//! 4. The backup GPT (moved to the end of a larger disk), then the primary GPT last, both read back.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;

use sha2::{Digest as _, Sha256};

use super::FlashError;
use crate::manifest::Manifest;
use ingot_spec::gpt::{self, SECTOR};
use ingot_spec::gpt_grow;

/// Bytes per read and write: large enough that a USB stick sees long sequential writes.
pub const CHUNK: usize = 8 << 20;

/// What will be written where.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The image's ranges, written in step 2 (the GPT areas cut out).
    pub bulk: Vec<Range<u64>>,
    /// Parts of `bulk` written as zeros instead of the image's bytes: the image's backup GPT when the
    /// backup moves to the end of a larger disk (a stale copy in the middle of the disk helps nobody).
    pub zeroed: Vec<Range<u64>>,
    /// The protective MBR and primary GPT (header and array) as they go on the target.
    pub head: Vec<u8>,
    /// The backup GPT (array, then header in the last sector) and where it goes.
    pub tail: (u64, Vec<u8>),
    /// Zeroed first: the target's first and last sectors where a GPT could be.
    pub invalidate: Vec<Range<u64>>,
    /// The backup GPT moves to the end of a target larger than the image.
    pub relocated: bool,
    /// The partitions' hashed content, checked on read-back: (label, range, sha256 hex).
    pub partitions: Vec<(String, Range<u64>, String)>,
}

impl Plan {
    /// Bytes written in step 2 (the GPTs are a few KiB more).
    pub fn bulk_bytes(&self) -> u64 {
        crate::image_ranges::total(&self.bulk)
    }
}

/// Plans copying the image `src` (proven to match `manifest`) onto a target of `target_size` bytes.
pub fn plan(manifest: &Manifest, src: &File, target_size: u64) -> Result<Plan, FlashError> {
    let size = manifest.image.size;
    let io = |what: &str| {
        let what = what.to_owned();
        move |source| FlashError::Io { what, source }
    };
    let mut first = vec![0u8; 2 * SECTOR as usize];
    src.read_exact_at(&mut first, 0)
        .map_err(io("reading the image's GPT header"))?;
    let header = gpt::parse_header(&first).map_err(FlashError::Gpt)?;
    let head_len = header.entries_byte_range().end.div_ceil(SECTOR) * SECTOR;
    let array_sectors =
        (header.entries_byte_range().end - header.entries_byte_range().start).div_ceil(SECTOR);
    let tail_len = (array_sectors + 1) * SECTOR;
    if head_len > size / 2 || tail_len > size / 2 {
        return Err(FlashError::Gpt(gpt::GptError::TooShort {
            needed: head_len + tail_len,
            have: size,
        }));
    }
    let mut head = vec![0u8; head_len as usize];
    src.read_exact_at(&mut head, 0)
        .map_err(io("reading the image's primary GPT"))?;
    let image_tail = size - tail_len..size;

    let relocated = target_size > size;
    let tail = if relocated {
        let sectors = target_size / SECTOR;
        let writes = gpt_grow::relocate_backup(&head, sectors)
            .map_err(FlashError::Relocate)?
            .unwrap_or_default();
        let tail_start = target_size - tail_len;
        let mut tail = vec![0u8; tail_len as usize];
        for w in writes {
            if w.offset >= tail_start {
                let at = (w.offset - tail_start) as usize;
                tail[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
            } else {
                let at = w.offset as usize;
                head[at..at + w.bytes.len()].copy_from_slice(&w.bytes);
            }
        }
        // The protective MBR's partition spans the disk (or as much as 32 bits say).
        let mbr_size = u32::try_from(sectors - 1).unwrap_or(u32::MAX);
        head[446 + 12..446 + 16].copy_from_slice(&mbr_size.to_le_bytes());
        (tail_start, tail)
    } else {
        let mut tail = vec![0u8; tail_len as usize];
        src.read_exact_at(&mut tail, image_tail.start)
            .map_err(io("reading the image's backup GPT"))?;
        (image_tail.start, tail)
    };

    let mut bulk = Vec::new();
    for r in crate::image_ranges::must_write(manifest) {
        let r = r.start.max(head_len)..r.end;
        let r = if relocated {
            r
        } else {
            r.start..r.end.min(image_tail.start)
        };
        if r.start < r.end {
            bulk.push(r);
        }
    }
    let zeroed = if relocated { vec![image_tail] } else { Vec::new() };
    let partitions = manifest
        .partitions
        .iter()
        .filter(|p| p.hashed_bytes > 0)
        .map(|p| {
            (
                p.label.clone(),
                p.offset..p.offset + p.hashed_bytes,
                p.sha256.clone(),
            )
        })
        .collect();
    Ok(Plan {
        bulk,
        zeroed,
        head,
        tail,
        invalidate: vec![0..head_len, target_size - tail_len..target_size],
        relocated,
        partitions,
    })
}

/// A heap buffer whose usable part starts on a 4 KiB boundary, as direct I/O needs.
pub struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    pub fn new(len: usize) -> AlignedBuf {
        const ALIGN: usize = 4096;
        let storage = vec![0u8; len + ALIGN];
        let start = storage.as_ptr().align_offset(ALIGN);
        AlignedBuf { storage, start, len }
    }

    pub fn slice(&mut self, n: usize) -> &mut [u8] {
        &mut self.storage[self.start..self.start + n.min(self.len)]
    }
}

/// Where bytes go and come back from.
pub struct Copier<'a> {
    pub src: &'a File,
    pub dst: &'a File,
    pub buf: AlignedBuf,
    /// Called with the bytes done after each chunk.
    pub progress: &'a dyn Fn(u64),
}

impl Copier<'_> {
    /// Writes `range` from the image (or zeros) to the same offset of the target; returns the sha256 of
    /// what was written.
    pub fn write(&mut self, range: &Range<u64>, zeros: bool) -> Result<[u8; 32], FlashError> {
        let mut hasher = Sha256::new();
        let mut off = range.start;
        while off < range.end {
            let n = (range.end - off).min(CHUNK as u64) as usize;
            let buf = self.buf.slice(n);
            if zeros {
                buf.fill(0);
            } else {
                self.src
                    .read_exact_at(buf, off)
                    .map_err(|source| FlashError::Io {
                        what: format!("reading the image at byte {off}"),
                        source,
                    })?;
            }
            hasher.update(&*buf);
            self.dst.write_all_at(buf, off).map_err(|source| FlashError::Io {
                what: format!("writing bytes {off}..{} of the target", off + n as u64),
                source,
            })?;
            (self.progress)(n as u64);
            off += n as u64;
        }
        Ok(hasher.finalize().into())
    }

    /// Reads `range` back from the target; returns its sha256 and feeds each partition's hasher the bytes
    /// of its hashed content that fall in the range.
    pub fn read_back(
        &mut self,
        range: &Range<u64>,
        partitions: &mut [(Range<u64>, Sha256, u64)],
    ) -> Result<[u8; 32], FlashError> {
        let mut hasher = Sha256::new();
        let mut off = range.start;
        while off < range.end {
            let n = (range.end - off).min(CHUNK as u64) as usize;
            let buf = self.buf.slice(n);
            self.dst
                .read_exact_at(buf, off)
                .map_err(|source| FlashError::Io {
                    what: format!("reading back bytes {off}..{} of the target", off + n as u64),
                    source,
                })?;
            hasher.update(&*buf);
            for (p, h, fed) in partitions.iter_mut() {
                let start = p.start.max(off);
                let end = p.end.min(off + n as u64);
                if start < end {
                    h.update(&buf[(start - off) as usize..(end - off) as usize]);
                    *fed += end - start;
                }
            }
            (self.progress)(n as u64);
            off += n as u64;
        }
        Ok(hasher.finalize().into())
    }

    /// Writes `bytes` at `offset` through the aligned buffer.
    pub fn write_bytes(&mut self, offset: u64, bytes: &[u8]) -> Result<(), FlashError> {
        let buf = self.buf.slice(bytes.len());
        buf.copy_from_slice(bytes);
        self.dst
            .write_all_at(buf, offset)
            .map_err(|source| FlashError::Io {
                what: format!(
                    "writing bytes {offset}..{} of the target",
                    offset + bytes.len() as u64
                ),
                source,
            })
    }

    /// Reads `len` bytes at `offset` back and says whether they are `expected`.
    pub fn reads_back_as(&mut self, offset: u64, expected: &[u8]) -> Result<bool, FlashError> {
        let buf = self.buf.slice(expected.len());
        self.dst
            .read_exact_at(buf, offset)
            .map_err(|source| FlashError::Io {
                what: format!(
                    "reading back bytes {offset}..{} of the target",
                    offset + expected.len() as u64
                ),
                source,
            })?;
        Ok(buf == expected)
    }
}
