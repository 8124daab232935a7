//! `<image>.bmap`: the block map bmaptool (bmap-tools) reads to copy an image onto a disk, writing only the
//! blocks it lists and checking each range's sha256 on the way.
//!
//! The file is bmap format 2.0 with sha256 checksums, the elements `bmaptool create` writes in the same
//! order, so bmaptool reads it as its own. What differs is which blocks are mapped: `bmaptool create` maps the image file's allocated extents, which
//! is wrong for a disk that held something before (a zero block inside a file system would keep the disk's
//! old bytes). The ranges here are [`image_ranges::must_write`]: the head, each partition up to the end of
//! its manifest hash (zero blocks included) or at least its first MiB, and the tail. See that module for
//! why. Each range's checksum is the sha256 of exactly those image bytes, zeros included.
//!
//! The file has no dates or host names: the same image and manifest always give the same bytes.
//!
//! The whole-file checksum (`BmapFileChecksum`) is the sha256 of the file with the checksum's own 64 hex
//! digits replaced by ASCII zeros, which is how bmaptool checks it.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::image_ranges::{self, BLOCK};
use crate::manifest::Manifest;

/// The bmap format version written (bmap-tools 3.1 and later read it).
pub const FORMAT_VERSION: &str = "2.0";

/// The block map of one image: its size and the ranges a copy must write, with their checksums.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockMap {
    /// Image size in bytes.
    pub image_size: u64,
    /// Sorted, non-overlapping, non-adjacent ranges of whole blocks (the last may end at the image's end
    /// when its size is not a multiple of [`BLOCK`]).
    pub ranges: Vec<MappedRange>,
}

/// One `<Range>` of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedRange {
    /// Byte range of the image.
    pub bytes: Range<u64>,
    /// sha256 of the image's bytes in `bytes`.
    pub sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    #[error("the image is {actual} bytes but its manifest says {expected}")]
    Size { actual: u64, expected: u64 },
    #[error("reading bytes {start}..{end} of the image")]
    Read {
        start: u64,
        end: u64,
        #[source]
        source: std::io::Error,
    },
}

/// The block map that belongs to an image: `out/x.raw` → `out/x.bmap`.
pub fn path_for_image(image: &Path) -> PathBuf {
    image.with_extension("bmap")
}

impl BlockMap {
    /// The map of `image`, which `manifest` describes: [`image_ranges::must_write`], each range hashed from
    /// the image's bytes.
    pub fn of_image(image: &File, manifest: &Manifest) -> Result<BlockMap, BmapError> {
        let actual = image
            .metadata()
            .map_err(|source| BmapError::Read {
                start: 0,
                end: 0,
                source,
            })?
            .len();
        if actual != manifest.image.size {
            return Err(BmapError::Size {
                actual,
                expected: manifest.image.size,
            });
        }
        Self::hash_ranges(image, actual, &image_ranges::must_write(manifest))
    }

    /// The map of `ranges` (block-aligned, sorted, not overlapping) of an image of `image_size` bytes.
    pub fn hash_ranges(image: &File, image_size: u64, ranges: &[Range<u64>]) -> Result<BlockMap, BmapError> {
        let mut buf = vec![0u8; 1 << 20];
        let mut mapped = Vec::with_capacity(ranges.len());
        for r in ranges {
            let mut hasher = Sha256::new();
            let mut pos = r.start;
            while pos < r.end {
                let n = (r.end - pos).min(buf.len() as u64) as usize;
                image
                    .read_exact_at(&mut buf[..n], pos)
                    .map_err(|source| BmapError::Read {
                        start: pos,
                        end: pos + n as u64,
                        source,
                    })?;
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
            mapped.push(MappedRange {
                bytes: r.clone(),
                sha256: hasher.finalize().into(),
            });
        }
        Ok(BlockMap {
            image_size,
            ranges: mapped,
        })
    }

    /// Blocks in the image (the last one may be partial).
    pub fn blocks(&self) -> u64 {
        self.image_size.div_ceil(BLOCK)
    }

    /// Blocks the map lists.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| r.bytes.end.div_ceil(BLOCK) - r.bytes.start / BLOCK)
            .sum()
    }

    /// The bmap file.
    pub fn to_xml(&self) -> String {
        let blocks = self.blocks();
        let mapped = self.mapped_blocks();
        let percent = (mapped as f64 * 100.0) / blocks.max(1) as f64;
        let mut x = String::new();
        x.push_str("<?xml version=\"1.0\" ?>\n");
        x.push_str(
            "<!-- Written by ingot: the blocks of this image a copy onto a disk must write (partition\n",
        );
        x.push_str(
            "     contents with their zero blocks, the start of every partition, both GPT areas), each\n",
        );
        x.push_str("     range with the sha256 of its bytes. Use: bmaptool copy IMAGE DEVICE -->\n");
        x.push_str(&format!("<bmap version=\"{FORMAT_VERSION}\">\n"));
        x.push_str(&format!(
            "    <!-- Image size: {}; mapped: {} ({percent:.1}%) -->\n",
            crate::flash::target::human(self.image_size),
            crate::flash::target::human(mapped * BLOCK)
        ));
        x.push_str(&format!("    <ImageSize> {} </ImageSize>\n", self.image_size));
        x.push_str(&format!("    <BlockSize> {BLOCK} </BlockSize>\n"));
        x.push_str(&format!("    <BlocksCount> {blocks} </BlocksCount>\n"));
        x.push_str(&format!(
            "    <MappedBlocksCount> {mapped} </MappedBlocksCount>\n"
        ));
        x.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
        x.push_str("    <!-- sha256 of this file with the checksum's digits all \"0\" -->\n");
        x.push_str("    <BmapFileChecksum> ");
        let checksum_at = x.len();
        x.push_str(&"0".repeat(64));
        x.push_str(" </BmapFileChecksum>\n");
        x.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let first = r.bytes.start / BLOCK;
            let last = r.bytes.end.div_ceil(BLOCK) - 1;
            let sum = hex::encode(r.sha256);
            if first == last {
                x.push_str(&format!("        <Range chksum=\"{sum}\"> {first} </Range>\n"));
            } else {
                x.push_str(&format!(
                    "        <Range chksum=\"{sum}\"> {first}-{last} </Range>\n"
                ));
            }
        }
        x.push_str("    </BlockMap>\n</bmap>\n");
        let sum = hex::encode(Sha256::digest(x.as_bytes()));
        x.replace_range(checksum_at..checksum_at + 64, &sum);
        x
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use proptest::prelude::*;

    use super::*;

    const MIB: u64 = 1 << 20;

    use crate::image_ranges::tests::manifest;

    /// A 6 MiB image: a 2 MiB partition with 1.5 MiB + 100 bytes of content, an empty one up to the last
    /// block, which is the backup GPT's place. Every byte of the ranges a copy must write is written (zeros
    /// included, so those blocks are allocated as `bmaptool create` needs to see them), nothing else.
    fn synthetic(dir: &Path) -> (PathBuf, Manifest) {
        let size = 6 * MIB;
        let m = manifest(
            size,
            &[(MIB, 2 * MIB, 3 * MIB / 2 + 100), (3 * MIB, 3 * MIB - 4096, 0)],
        );
        let path = dir.join("t.raw");
        let f = File::create(&path).unwrap();
        f.set_len(size).unwrap();
        for r in image_ranges::must_write(&m) {
            let bytes: Vec<u8> = (r.start..r.end)
                .map(|i| match (i / 4096) % 3 {
                    0 => 0,
                    _ => (i.wrapping_mul(2_654_435_761) >> 13) as u8,
                })
                .collect();
            f.write_all_at(&bytes, r.start).unwrap();
        }
        f.sync_all().unwrap();
        (path, m)
    }

    const BMAPTOOL: &str = "bmaptool";

    #[test]
    fn matches_the_golden_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = synthetic(dir.path());
        let map = BlockMap::of_image(&File::open(&path).unwrap(), &m).unwrap();
        assert_eq!(
            map.ranges.iter().map(|r| r.bytes.clone()).collect::<Vec<_>>(),
            vec![0..5 * MIB / 2 + 4096, 3 * MIB..4 * MIB, 6 * MIB - 4096..6 * MIB]
        );
        crate::golden::check("bmap.golden.xml", &map.to_xml());
        assert_eq!(
            path_for_image(Path::new("out/minimal.raw")),
            Path::new("out/minimal.bmap")
        );
    }

    /// bmap-tools' own writer, given an image whose allocated blocks are exactly our ranges, maps the same
    /// blocks with the same checksums.
    #[test]
    fn is_what_bmaptool_create_writes_for_the_same_ranges() {
        if !ingot_testkit::require_tools("is_what_bmaptool_create_writes_for_the_same_ranges", &[BMAPTOOL]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = synthetic(dir.path());
        let theirs = dir.path().join("theirs.bmap");
        let o = Command::new("bmaptool")
            .arg("create")
            .arg("-o")
            .arg(&theirs)
            .arg(&path)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let ours = BlockMap::of_image(&File::open(&path).unwrap(), &m)
            .unwrap()
            .to_xml();
        let theirs = std::fs::read_to_string(&theirs).unwrap();
        if theirs.contains("<BlockSize> 4096 </BlockSize>") {
            let (a, b) = (parse(&ours), parse(&theirs));
            assert_eq!(
                (a.image_size, a.block_size, &a.ranges),
                (b.image_size, b.block_size, &b.ranges),
                "--- ours\n{ours}\n--- bmaptool create\n{theirs}"
            );
        } else {
            ingot_testkit::skip(
                "is_what_bmaptool_create_writes_for_the_same_ranges",
                "the comparison with bmaptool create needs a temporary directory on a file system with \
                 4096-byte blocks (set TMPDIR to one)",
            );
        }
    }

    fn bmaptool_copy(bmap: &Path, image: &Path, target: &Path) -> std::process::Output {
        Command::new("bmaptool")
            .arg("copy")
            .arg("--bmap")
            .arg(bmap)
            .arg(image)
            .arg(target)
            .output()
            .unwrap()
    }

    /// `bmaptool copy` accepts the map (file and range checksums) and rebuilds the image in a fresh file;
    /// a changed byte inside a range fails its checksum.
    #[test]
    fn bmaptool_copy_accepts_the_map_and_checks_the_ranges() {
        if !ingot_testkit::require_tools("bmaptool_copy_accepts_the_map_and_checks_the_ranges", &[BMAPTOOL]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = synthetic(dir.path());
        let bmap = dir.path().join("t.bmap");
        let map = BlockMap::of_image(&File::open(&path).unwrap(), &m).unwrap();
        std::fs::write(&bmap, map.to_xml()).unwrap();
        let target = dir.path().join("copy.raw");
        let o = bmaptool_copy(&bmap, &path, &target);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(std::fs::read(&target).unwrap() == std::fs::read(&path).unwrap());

        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[1], 3 * MIB + 10).unwrap();
        let o = bmaptool_copy(&bmap, &path, &target);
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("checksum mismatch"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// A loop device detached when dropped.
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    /// Onto a disk that held something before (a loop device full of old bytes), bmaptool writes every
    /// block of the map, zero blocks included, and nothing else.
    #[test]
    fn bmaptool_copy_onto_a_used_disk_writes_the_ranges_zeros_included() {
        let test = "bmaptool_copy_onto_a_used_disk_writes_the_ranges_zeros_included";
        if !ingot_testkit::require_tools(test, &[BMAPTOOL]) || !ingot_testkit::require_loop_devices(test) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (path, m) = synthetic(dir.path());
        let bmap = dir.path().join("t.bmap");
        let map = BlockMap::of_image(&File::open(&path).unwrap(), &m).unwrap();
        std::fs::write(&bmap, map.to_xml()).unwrap();
        let backing = dir.path().join("disk");
        std::fs::write(&backing, vec![0xa5u8; m.image.size as usize]).unwrap();
        let o = Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&backing)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let dev = Loop(String::from_utf8_lossy(&o.stdout).trim().to_string());
        let o = bmaptool_copy(&bmap, &path, Path::new(&dev.0));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        drop(dev);
        let image = std::fs::read(&path).unwrap();
        let disk = std::fs::read(&backing).unwrap();
        let ranges = image_ranges::must_write(&m);
        for (i, (a, b)) in image.chunks(4096).zip(disk.chunks(4096)).enumerate() {
            let at = i as u64 * 4096;
            if ranges.iter().any(|r| r.contains(&at)) {
                assert_eq!(a, b, "block {i} inside the map was not written");
            } else {
                assert!(
                    b.iter().all(|&x| x == 0xa5),
                    "block {i} outside the map was written"
                );
            }
        }
        assert!(
            image.chunks(4096).enumerate().any(|(i, b)| {
                b.iter().all(|&x| x == 0) && ranges.iter().any(|r| r.contains(&(i as u64 * 4096)))
            }),
            "the map has zero blocks to overwrite"
        );
    }

    /// What bmaptool's reader takes from a bmap file, with its checks: the file checksum, the block count
    /// against the image size, and the mapped count against the ranges.
    struct Parsed {
        image_size: u64,
        block_size: u64,
        ranges: Vec<(u64, u64, String)>,
    }

    /// The text of the first `<tag>` element outside comments.
    fn element<'a>(xml: &'a str, tag: &str) -> &'a str {
        let open = format!("<{tag}>");
        let start = xml.find(&open).unwrap_or_else(|| panic!("no <{tag}>")) + open.len();
        let end = start + xml[start..].find(&format!("</{tag}>")).unwrap();
        xml[start..end].trim()
    }

    fn parse(raw: &str) -> Parsed {
        assert!(raw.starts_with("<?xml version=\"1.0\" ?>\n"));
        // Elements are read with the comments taken out, as an XML parser does.
        let mut bare = String::new();
        let mut rest = raw;
        while let Some(at) = rest.find("<!--") {
            bare.push_str(&rest[..at]);
            rest = &rest[at + rest[at..].find("-->").unwrap() + 3..];
        }
        bare.push_str(rest);
        let xml = bare.as_str();
        assert!(xml.contains("<bmap version=\"2.0\">"));
        assert_eq!(element(xml, "ChecksumType"), "sha256");
        // bmaptool zeroes the first occurrence of the stored checksum in the file and hashes the rest.
        let sum = element(xml, "BmapFileChecksum");
        let at = raw.find(sum).unwrap();
        let mut zeroed = raw.to_string();
        zeroed.replace_range(at..at + 64, &"0".repeat(64));
        assert_eq!(
            hex::encode(Sha256::digest(zeroed.as_bytes())),
            sum,
            "file checksum"
        );
        let image_size: u64 = element(xml, "ImageSize").parse().unwrap();
        let block_size: u64 = element(xml, "BlockSize").parse().unwrap();
        let blocks: u64 = element(xml, "BlocksCount").parse().unwrap();
        assert_eq!(blocks, image_size.div_ceil(block_size), "BlocksCount");
        let mapped: u64 = element(xml, "MappedBlocksCount").parse().unwrap();
        let map = element(xml, "BlockMap");
        let mut ranges = Vec::new();
        for line in map.lines().map(str::trim) {
            let rest = line.strip_prefix("<Range chksum=\"").unwrap();
            let (chksum, rest) = rest.split_once("\">").unwrap();
            let text = rest.strip_suffix("</Range>").unwrap().trim();
            let (first, last) = match text.split_once('-') {
                Some((a, b)) => (a.trim().parse().unwrap(), b.trim().parse().unwrap()),
                None => (text.parse().unwrap(), text.parse().unwrap()),
            };
            assert!(first <= last);
            ranges.push((first, last, chksum.to_string()));
        }
        let listed: u64 = ranges.iter().map(|(f, l, _)| l - f + 1).sum();
        assert_eq!(listed, mapped, "MappedBlocksCount");
        Parsed {
            image_size,
            block_size,
            ranges,
        }
    }

    prop_compose! {
        /// Up to four partitions (gap before, size, content length, in 512-byte sectors), a tail, and a few
        /// non-zero bytes anywhere.
        fn layout()(
            parts in prop::collection::vec((0u64..600, 1u64..3000, 0u64..3500), 0..4),
            head in 1u64..300,
            tail in 1u64..200,
            pokes in prop::collection::vec((0.0f64..1.0, 1u8..=255), 0..16),
        ) -> (Manifest, Vec<(f64, u8)>) {
            let mut at = head * 512;
            let mut entries = Vec::new();
            for (gap, size, hashed) in parts {
                at += gap * 512;
                entries.push((at, size * 512, hashed.min(size) * 512));
                at += size * 512;
            }
            (manifest(at + tail * 512, &entries), pokes)
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Reading our output back as bmaptool does gives the ranges a copy must write, each with the
        /// sha256 of the image's bytes there.
        #[test]
        fn ranges_round_trip((m, pokes) in layout()) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("i.raw");
            let f = File::create(&path).unwrap();
            f.set_len(m.image.size).unwrap();
            for (where_, byte) in pokes {
                f.write_all_at(&[byte], (where_ * m.image.size as f64) as u64 % m.image.size).unwrap();
            }
            let image = std::fs::read(&path).unwrap();
            let xml = BlockMap::of_image(&File::open(&path).unwrap(), &m).unwrap().to_xml();
            let parsed = parse(&xml);
            prop_assert_eq!(parsed.image_size, m.image.size);
            prop_assert_eq!(parsed.block_size, BLOCK);
            let bytes: Vec<Range<u64>> = parsed
                .ranges
                .iter()
                .map(|(f, l, _)| f * BLOCK..((l + 1) * BLOCK).min(m.image.size))
                .collect();
            prop_assert_eq!(&bytes, &image_ranges::must_write(&m));
            for (r, (_, _, sum)) in bytes.iter().zip(&parsed.ranges) {
                let want = hex::encode(Sha256::digest(&image[r.start as usize..r.end as usize]));
                prop_assert_eq!(sum, &want);
            }
            // The same image and manifest give the same bytes.
            let again = BlockMap::of_image(&File::open(&path).unwrap(), &m).unwrap().to_xml();
            prop_assert_eq!(xml, again);
        }
    }

    #[test]
    fn refuses_an_image_of_another_size() {
        let dir = tempfile::tempdir().unwrap();
        let (path, mut m) = synthetic(dir.path());
        m.image.size += 4096;
        let e = BlockMap::of_image(&File::open(&path).unwrap(), &m).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "the image is {} bytes but its manifest says {}",
                6 * MIB,
                6 * MIB + 4096
            )
        );
    }
}
