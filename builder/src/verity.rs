//! dm-verity hash trees, byte for byte as `veritysetup format` writes them (format version 1, sha256).
//!
//! The hash device starts with a 512-byte superblock in its own hash block; the tree follows, its top level
//! first and the level over the data blocks last. Each hash is `sha256(salt || block)`; each level is the
//! concatenation of the digests of the blocks below it, its last block padded with zeros. A single data
//! block has no tree at all: the root hash is that block's hash. The salt and UUID come from the caller,
//! so the same data and parameters always give the same bytes.

use std::io::{Read, Write};

use ingot_spec::verity::{MAX_SALT_LEN, SUPERBLOCK_LEN, Superblock};
use sha2::{Digest, Sha256};

const DIGEST_LEN: usize = 32;
/// Bytes of data read and hashed per step (two such buffers are alive: one read while the other is hashed).
const CHUNK_LEN: usize = 32 << 20;

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error(
        "the data area is {len} bytes, which is not a non-zero multiple of the {block_size}-byte data block size"
    )]
    DataLength { len: u64, block_size: u32 },
    #[error("{what} block size {size} must be a power of two from 512 to 1 MiB")]
    BlockSize { what: &'static str, size: u32 },
    #[error("the salt is {0} bytes, at most 256 fit in the superblock")]
    SaltTooLong(usize),
    #[error("reading the data area at byte {offset}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the hash device")]
    Write(#[source] std::io::Error),
}

/// What the tree is built with. Everything that ends up in the superblock is here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    pub data_block_size: u32,
    pub hash_block_size: u32,
    pub salt: Vec<u8>,
    pub uuid: [u8; 16],
}

impl VerityParams {
    /// 4096-byte data and hash blocks (veritysetup's defaults) with the given salt and superblock UUID.
    pub fn new(salt: Vec<u8>, uuid: [u8; 16]) -> Self {
        Self {
            data_block_size: 4096,
            hash_block_size: 4096,
            salt,
            uuid,
        }
    }

    fn check(&self) -> Result<(), VerityError> {
        for (what, size) in [("data", self.data_block_size), ("hash", self.hash_block_size)] {
            if !size.is_power_of_two() || !(512..=1 << 20).contains(&size) {
                return Err(VerityError::BlockSize { what, size });
            }
        }
        if self.salt.len() > MAX_SALT_LEN {
            return Err(VerityError::SaltTooLong(self.salt.len()));
        }
        Ok(())
    }

    fn data_blocks(&self, data_len: u64) -> Result<u64, VerityError> {
        self.check()?;
        let block_size = self.data_block_size;
        if data_len == 0 || !data_len.is_multiple_of(u64::from(block_size)) {
            return Err(VerityError::DataLength {
                len: data_len,
                block_size,
            });
        }
        Ok(data_len / u64::from(block_size))
    }

    /// Hash blocks taken by the superblock: the tree starts at this block of the hash device (the kernel
    /// table's `hash_start_block`).
    pub fn hash_start_block(&self) -> u64 {
        (SUPERBLOCK_LEN as u64).div_ceil(u64::from(self.hash_block_size))
    }

    /// Blocks of each tree level over `data_blocks` data blocks, the level over the data first.
    fn level_blocks(&self, data_blocks: u64) -> Vec<u64> {
        let per_block = u64::from(self.hash_block_size) / DIGEST_LEN as u64;
        let mut levels = Vec::new();
        let mut below = data_blocks;
        while below > 1 {
            below = below.div_ceil(per_block);
            levels.push(below);
        }
        levels
    }
}

/// The result of [`build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityOutput {
    pub root_hash: [u8; 32],
    /// Bytes written to the hash device: superblock area and tree; equals [`hash_tree_size`].
    pub hash_size: u64,
    pub data_blocks: u64,
    /// Where the tree starts on the hash device, in hash blocks.
    pub hash_start_block: u64,
}

/// Bytes of the hash device for `data_len` bytes of data: the superblock area and every tree level.
pub fn hash_tree_size(data_len: u64, params: &VerityParams) -> Result<u64, VerityError> {
    let data_blocks = params.data_blocks(data_len)?;
    let tree_blocks: u64 = params.level_blocks(data_blocks).iter().sum();
    Ok((params.hash_start_block() + tree_blocks) * u64::from(params.hash_block_size))
}

/// Hashes `data_len` bytes read from `data` and writes the hash device (superblock, then the tree) to `out`
/// from its current position. The data is read in 32 MiB chunks, each hashed on every core while the next
/// one is read; only the tree (under 1% of the data) is held in memory.
pub fn build(
    data: &mut impl Read,
    data_len: u64,
    params: &VerityParams,
    out: &mut impl Write,
) -> Result<VerityOutput, VerityError> {
    let data_blocks = params.data_blocks(data_len)?;
    let mut level = hash_data(data, data_len, params)?;
    let hash_block = params.hash_block_size as usize;
    // Tree levels, the one over the data first; each padded to whole hash blocks.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    while level.len() > DIGEST_LEN {
        level.resize(level.len().next_multiple_of(hash_block), 0);
        let above = hash_blocks(&level, hash_block, &params.salt);
        levels.push(level);
        level = above;
    }
    // The loop ends at one digest: the top level's single block, or the single data block's.
    let mut root_hash = [0u8; 32];
    root_hash.copy_from_slice(&level);

    let mut head = superblock(params, data_blocks)?;
    head.resize(params.hash_start_block() as usize * hash_block, 0);
    out.write_all(&head).map_err(VerityError::Write)?;
    for level in levels.iter().rev() {
        out.write_all(level).map_err(VerityError::Write)?;
    }
    let hash_size = head.len() as u64 + levels.iter().map(|l| l.len() as u64).sum::<u64>();
    Ok(VerityOutput {
        root_hash,
        hash_size,
        data_blocks,
        hash_start_block: params.hash_start_block(),
    })
}

/// The digests of every data block, concatenated.
fn hash_data(data: &mut impl Read, data_len: u64, params: &VerityParams) -> Result<Vec<u8>, VerityError> {
    let block = params.data_block_size as usize;
    let blocks = (data_len / block as u64) as usize;
    let mut digests = vec![0u8; blocks * DIGEST_LEN];
    let chunk_len = CHUNK_LEN.max(block).min(data_len as usize);
    let mut current = vec![0u8; chunk_len];
    let mut next = vec![0u8; chunk_len];
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());

    let mut offset = 0u64;
    let mut len = read_chunk(data, &mut current, offset, data_len)?;
    let mut out = digests.as_mut_slice();
    while len > 0 {
        let next_offset = offset + len as u64;
        let (done, rest) = out.split_at_mut(len / block * DIGEST_LEN);
        out = rest;
        let chunk = &current[..len];
        let next_len = std::thread::scope(|s| {
            // Hash this chunk on every core while this thread reads the next one.
            let per_thread = (len / block).div_ceil(threads) * block;
            let shares = chunk
                .chunks(per_thread)
                .zip(done.chunks_mut(per_thread / block * DIGEST_LEN));
            for (blocks, digests) in shares {
                s.spawn(move || hash_into(blocks, block, &params.salt, digests));
            }
            read_chunk(data, &mut next, next_offset, data_len)
        })?;
        std::mem::swap(&mut current, &mut next);
        offset = next_offset;
        len = next_len;
    }
    Ok(digests)
}

/// Reads up to one buffer of data, stopping at `data_len`; 0 at the end.
fn read_chunk(
    data: &mut impl Read,
    buf: &mut [u8],
    offset: u64,
    data_len: u64,
) -> Result<usize, VerityError> {
    let len = (buf.len() as u64).min(data_len - offset) as usize;
    data.read_exact(&mut buf[..len])
        .map_err(|source| VerityError::Read { offset, source })?;
    Ok(len)
}

fn hash_into(blocks: &[u8], block: usize, salt: &[u8], digests: &mut [u8]) {
    let mut salted = Sha256::new();
    salted.update(salt);
    for (b, d) in blocks.chunks(block).zip(digests.chunks_mut(DIGEST_LEN)) {
        let mut h = salted.clone();
        h.update(b);
        d.copy_from_slice(&h.finalize());
    }
}

/// The digests of each `block`-byte block of `level` (whose length is a multiple of `block`).
fn hash_blocks(level: &[u8], block: usize, salt: &[u8]) -> Vec<u8> {
    let mut digests = vec![0u8; level.len() / block * DIGEST_LEN];
    hash_into(level, block, salt, &mut digests);
    digests
}

/// veritysetup's `struct verity_sb` (little-endian, 512 bytes), as stage 1 reads it back.
fn superblock(params: &VerityParams, data_blocks: u64) -> Result<Vec<u8>, VerityError> {
    let sb = Superblock {
        uuid: params.uuid,
        data_block_size: params.data_block_size,
        hash_block_size: params.hash_block_size,
        data_blocks,
        salt: params.salt.clone(),
    };
    let bytes = sb
        .to_bytes()
        .map_err(|_| VerityError::SaltTooLong(params.salt.len()))?;
    Ok(bytes.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngCore, SeedableRng};
    use std::path::Path;
    use std::process::Command;

    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x80, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
    ];

    fn params() -> VerityParams {
        VerityParams::new(
            (0..32u8).map(|i| i.wrapping_mul(37).wrapping_add(5)).collect(),
            UUID,
        )
    }

    fn random(len: usize, seed: u64) -> Vec<u8> {
        let mut data = vec![0u8; len];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        data
    }

    fn ours(data: &[u8], p: &VerityParams) -> (VerityOutput, Vec<u8>) {
        let mut hash = Vec::new();
        let out = build(&mut &data[..], data.len() as u64, p, &mut hash).unwrap();
        (out, hash)
    }

    /// Whether veritysetup runs here; otherwise skips `test`.
    fn veritysetup_present(test: &str) -> bool {
        ingot_testkit::require_tools(test, &["veritysetup"])
    }

    fn veritysetup(args: &[&dyn AsRef<std::ffi::OsStr>]) -> String {
        let out = Command::new("veritysetup")
            .args(args.iter().map(|a| a.as_ref()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "veritysetup {:?}: {}",
            args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// veritysetup's hash device and root hash for `data`.
    fn theirs(dir: &Path, data: &[u8], p: &VerityParams) -> (String, Vec<u8>) {
        let data_path = dir.join("data.img");
        let hash_path = dir.join("theirs.img");
        std::fs::write(&data_path, data).unwrap();
        let _ = std::fs::remove_file(&hash_path);
        let stdout = veritysetup(&[
            &"format",
            // veritysetup spells an empty salt `-`.
            &format!(
                "--salt={}",
                if p.salt.is_empty() {
                    "-".to_owned()
                } else {
                    hex::encode(&p.salt)
                }
            ),
            &format!("--uuid={}", uuid::Uuid::from_bytes(p.uuid)),
            &format!("--data-block-size={}", p.data_block_size),
            &format!("--hash-block-size={}", p.hash_block_size),
            &data_path,
            &hash_path,
        ]);
        let root = stdout
            .lines()
            .find_map(|l| l.strip_prefix("Root hash:"))
            .unwrap_or_else(|| panic!("no root hash in {stdout}"))
            .trim()
            .to_owned();
        (root, std::fs::read(&hash_path).unwrap())
    }

    #[test]
    fn matches_veritysetup_byte_for_byte() {
        if !veritysetup_present("matches_veritysetup_byte_for_byte") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = params();
        // 1 block (no tree), one full level block, one over, a few MiB, and 128*128+1 blocks (3 levels).
        for (blocks, seed) in [
            (1usize, 1u64),
            (2, 2),
            (127, 3),
            (128, 4),
            (129, 5),
            (1000, 6),
            (128 * 128 + 1, 7),
        ] {
            let data = random(blocks * 4096, seed);
            let (out, hash) = ours(&data, &p);
            let (root, expected) = theirs(dir.path(), &data, &p);
            assert_eq!(hex::encode(out.root_hash), root, "root hash for {blocks} blocks");
            assert_eq!(
                hash.len(),
                expected.len(),
                "hash device length for {blocks} blocks"
            );
            assert!(
                hash == expected,
                "hash device bytes differ from veritysetup's for {blocks} blocks"
            );
            assert_eq!(out.hash_size, hash.len() as u64);
            assert_eq!(hash_tree_size(data.len() as u64, &p).unwrap(), out.hash_size);
            assert_eq!(out.data_blocks, blocks as u64);

            // And veritysetup accepts ours.
            let ours_path = dir.path().join("ours.img");
            std::fs::write(&ours_path, &hash).unwrap();
            veritysetup(&[&"verify", &dir.path().join("data.img"), &ours_path, &root]);
        }
    }

    #[test]
    fn three_levels_have_the_expected_size() {
        let p = params();
        let blocks = 128 * 128 + 1u64;
        // Superblock block, then levels of 1 + 2 + 129 blocks.
        assert_eq!(
            hash_tree_size(blocks * 4096, &p).unwrap(),
            (1 + 1 + 2 + 129) * 4096
        );
        assert_eq!(hash_tree_size(4096, &p).unwrap(), 4096);
    }

    #[test]
    fn empty_salt_and_other_block_sizes_match_veritysetup() {
        if !veritysetup_present("empty_salt_and_other_block_sizes_match_veritysetup") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut p = params();
        p.data_block_size = 1024;
        p.hash_block_size = 512;
        let data = random(300 * 1024, 9);
        let (out, hash) = ours(&data, &p);
        let (root, expected) = theirs(dir.path(), &data, &p);
        assert_eq!(hex::encode(out.root_hash), root);
        assert!(hash == expected, "hash device bytes differ from veritysetup's");
        p.salt.clear();
        let (out, hash) = ours(&data, &p);
        let (root, expected) = theirs(dir.path(), &data, &p);
        assert_eq!(hex::encode(out.root_hash), root);
        assert!(
            hash == expected,
            "hash device bytes differ from veritysetup's without a salt"
        );
    }

    #[test]
    fn a_flipped_data_byte_changes_the_root_hash() {
        let p = params();
        let mut data = random(300 * 4096, 11);
        let (before, _) = ours(&data, &p);
        data[200 * 4096 + 17] ^= 1;
        let (after, _) = ours(&data, &p);
        assert_ne!(before.root_hash, after.root_hash);
    }

    #[test]
    fn the_salt_changes_the_root_hash() {
        let data = random(4 * 4096, 12);
        let mut p = params();
        let (a, _) = ours(&data, &p);
        p.salt[0] ^= 1;
        let (b, _) = ours(&data, &p);
        assert_ne!(a.root_hash, b.root_hash);
    }

    #[test]
    fn a_length_that_is_not_a_block_multiple_is_an_error_naming_it() {
        let data = vec![0u8; 4096 + 100];
        let err = build(&mut &data[..], data.len() as u64, &params(), &mut Vec::new()).unwrap_err();
        assert!(
            matches!(
                err,
                VerityError::DataLength {
                    len: 4196,
                    block_size: 4096
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("4196"), "{err}");
        assert!(hash_tree_size(4196, &params()).is_err());
        assert!(hash_tree_size(0, &params()).is_err());
    }

    #[test]
    fn short_data_is_a_read_error_at_its_end() {
        let data = vec![0u8; 4096];
        let err = build(&mut &data[..], 8192, &params(), &mut Vec::new()).unwrap_err();
        assert!(matches!(err, VerityError::Read { offset: 0, .. }), "{err:?}");
    }

    #[test]
    fn chunk_boundaries_do_not_change_the_tree() {
        // More than one read chunk, hashed on several threads, equals hashing block by block.
        let p = params();
        let data = random(CHUNK_LEN + 5 * 4096, 13);
        let (out, hash) = ours(&data, &p);
        let mut level = Vec::new();
        for b in data.chunks(4096) {
            let mut h = Sha256::new();
            h.update(&p.salt);
            h.update(b);
            level.extend_from_slice(&h.finalize());
        }
        // The bottom level is the last part of the hash device.
        let padded = level.len().next_multiple_of(4096);
        assert_eq!(&hash[hash.len() - padded..][..level.len()], &level[..]);
        assert!(hash[hash.len() - padded + level.len()..].iter().all(|&b| b == 0));
        assert_eq!(out.hash_size, hash_tree_size(data.len() as u64, &p).unwrap());
    }
}
