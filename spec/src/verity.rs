//! The dm-verity contract between the builder and stage 1: the superblock at the start of a root's verity
//! partition (veritysetup's `struct verity_sb`, format version 1) and the root hash on the kernel command
//! line ([`crate::cmdline::ROOT_HASH`]).
//!
//! The builder writes the superblock with [`Superblock::to_bytes`]; stage 1 reads it back with the strict
//! [`Superblock::parse`], which accepts exactly what ingot images hold (hash type 1, sha256, 4096-byte data
//! and hash blocks) and names the first field that differs, so a garbled or foreign hash partition is
//! refused before the kernel sees it. The tree starts at hash block [`HASH_START_BLOCK`] (the superblock has
//! a hash block of its own), and covers the first `data_blocks` blocks of the data partition.

use std::fmt;

/// Bytes of the superblock (the rest of its hash block is zero).
pub const SUPERBLOCK_LEN: usize = 512;
/// `signature` of a verity superblock.
pub const MAGIC: [u8; 8] = *b"verity\0\0";
/// The superblock format version veritysetup writes.
pub const VERSION: u32 = 1;
/// Hash type 1: the normal format (type 0 is Chrome OS's, which hashes the salt after the block).
pub const HASH_TYPE: u32 = 1;
/// The hash algorithm, as the kernel's crypto API names it.
pub const ALGORITHM: &str = "sha256";
/// Data and hash block size of ingot's trees.
pub const BLOCK_SIZE: u32 = 4096;
/// The most salt the superblock holds.
pub const MAX_SALT_LEN: usize = 256;
/// Bytes of a root hash (a sha256 digest).
pub const ROOT_HASH_LEN: usize = 32;
/// The hash block where the tree starts: block 0 holds the superblock.
pub const HASH_START_BLOCK: u64 = 1;

const ALGORITHM_LEN: usize = 32;
const OFF_VERSION: usize = 8;
const OFF_HASH_TYPE: usize = 12;
const OFF_UUID: usize = 16;
const OFF_ALGORITHM: usize = 32;
const OFF_DATA_BLOCK_SIZE: usize = 64;
const OFF_HASH_BLOCK_SIZE: usize = 68;
const OFF_DATA_BLOCKS: usize = 72;
const OFF_SALT_SIZE: usize = 80;
const OFF_PAD1: usize = 82;
const OFF_SALT: usize = 88;
const OFF_PAD2: usize = OFF_SALT + MAX_SALT_LEN;

/// The verity superblock (little-endian on disk).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Superblock {
    /// veritysetup's UUID of the hash device; any value.
    pub uuid: [u8; 16],
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// How many data blocks the tree covers, from the start of the data device.
    pub data_blocks: u64,
    /// At most [`MAX_SALT_LEN`] bytes.
    pub salt: Vec<u8>,
}

/// Why bytes are not a superblock ingot-init can use. Each names the field and what it must hold.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SuperblockError {
    #[error("the superblock is {0} bytes, expected {SUPERBLOCK_LEN}")]
    Short(usize),
    #[error("{field}: expected {expected}, found {found}")]
    Field {
        field: &'static str,
        expected: String,
        found: String,
    },
}

fn field(field: &'static str, expected: impl Into<String>, found: impl fmt::Display) -> SuperblockError {
    SuperblockError::Field {
        field,
        expected: expected.into(),
        found: found.to_string(),
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
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

/// Bytes shown escaped, for messages about binary fields.
fn escaped(bytes: &[u8]) -> String {
    format!("\"{}\"", bytes.escape_ascii())
}

/// Checks that `bytes` is all zero; `what` names the area.
fn zeros(bytes: &[u8], what: &'static str) -> Result<(), SuperblockError> {
    match bytes.iter().position(|&b| b != 0) {
        None => Ok(()),
        Some(i) => Err(field(
            what,
            "zero bytes",
            format_args!("{:#04x} at offset {i}", bytes[i]),
        )),
    }
}

impl Superblock {
    /// Parses the first [`SUPERBLOCK_LEN`] bytes of `bytes` (a whole hash block may be passed), checking
    /// every field against what ingot images hold.
    pub fn parse(bytes: &[u8]) -> Result<Superblock, SuperblockError> {
        let b = bytes
            .get(..SUPERBLOCK_LEN)
            .ok_or(SuperblockError::Short(bytes.len()))?;
        if b[..8] != MAGIC {
            return Err(field("magic", escaped(&MAGIC), escaped(&b[..8])));
        }
        let version = u32_at(b, OFF_VERSION);
        if version != VERSION {
            return Err(field("version", VERSION.to_string(), version));
        }
        let hash_type = u32_at(b, OFF_HASH_TYPE);
        if hash_type != HASH_TYPE {
            return Err(field("hash type", format!("{HASH_TYPE} (normal)"), hash_type));
        }
        let algorithm = &b[OFF_ALGORITHM..OFF_ALGORITHM + ALGORITHM_LEN];
        let name_len = algorithm.iter().position(|&c| c == 0).unwrap_or(ALGORITHM_LEN);
        if &algorithm[..name_len] != ALGORITHM.as_bytes() || algorithm[name_len..].iter().any(|&c| c != 0) {
            let end = algorithm.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
            let shown = escaped(&algorithm[..end]);
            return Err(field("algorithm", format!("{ALGORITHM:?}"), shown));
        }
        let data_block_size = u32_at(b, OFF_DATA_BLOCK_SIZE);
        if data_block_size != BLOCK_SIZE {
            return Err(field("data block size", BLOCK_SIZE.to_string(), data_block_size));
        }
        let hash_block_size = u32_at(b, OFF_HASH_BLOCK_SIZE);
        if hash_block_size != BLOCK_SIZE {
            return Err(field("hash block size", BLOCK_SIZE.to_string(), hash_block_size));
        }
        let data_blocks = u64_at(b, OFF_DATA_BLOCKS);
        // The table counts 512-byte sectors in 64 bits.
        let max_blocks = u64::MAX / u64::from(data_block_size / 512);
        if data_blocks == 0 || data_blocks > max_blocks {
            return Err(field("data blocks", format!("1 to {max_blocks}"), data_blocks));
        }
        let salt_len = usize::from(u16_at(b, OFF_SALT_SIZE));
        if salt_len > MAX_SALT_LEN {
            return Err(field("salt size", format!("at most {MAX_SALT_LEN}"), salt_len));
        }
        zeros(&b[OFF_PAD1..OFF_SALT], "padding after the salt size")?;
        zeros(&b[OFF_SALT + salt_len..OFF_PAD2], "salt bytes past the salt size")?;
        zeros(&b[OFF_PAD2..], "padding after the salt")?;
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
        Ok(Superblock {
            uuid,
            data_block_size,
            hash_block_size,
            data_blocks,
            salt: b[OFF_SALT..OFF_SALT + salt_len].to_vec(),
        })
    }

    /// The superblock's bytes as veritysetup writes them. Fails only for a salt over [`MAX_SALT_LEN`].
    pub fn to_bytes(&self) -> Result<[u8; SUPERBLOCK_LEN], SuperblockError> {
        let salt_len = u16::try_from(self.salt.len())
            .ok()
            .filter(|&n| usize::from(n) <= MAX_SALT_LEN)
            .ok_or_else(|| field("salt size", format!("at most {MAX_SALT_LEN}"), self.salt.len()))?;
        let mut b = [0u8; SUPERBLOCK_LEN];
        b[..8].copy_from_slice(&MAGIC);
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
        b[OFF_HASH_TYPE..OFF_HASH_TYPE + 4].copy_from_slice(&HASH_TYPE.to_le_bytes());
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid);
        b[OFF_ALGORITHM..OFF_ALGORITHM + ALGORITHM.len()].copy_from_slice(ALGORITHM.as_bytes());
        b[OFF_DATA_BLOCK_SIZE..OFF_DATA_BLOCK_SIZE + 4].copy_from_slice(&self.data_block_size.to_le_bytes());
        b[OFF_HASH_BLOCK_SIZE..OFF_HASH_BLOCK_SIZE + 4].copy_from_slice(&self.hash_block_size.to_le_bytes());
        b[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[OFF_SALT_SIZE..OFF_SALT_SIZE + 2].copy_from_slice(&salt_len.to_le_bytes());
        b[OFF_SALT..OFF_SALT + self.salt.len()].copy_from_slice(&self.salt);
        Ok(b)
    }

    /// 512-byte sectors of data the tree covers (the length of the mapped device).
    pub fn data_sectors(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size / 512)
    }

    /// Bytes of data the tree covers.
    pub fn data_bytes(&self) -> u64 {
        self.data_blocks * u64::from(self.data_block_size)
    }
}

/// Why a `roothash=` value is not a root hash.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("roothash={0:?} is not a root hash: expected {digits} lowercase hex digits", digits = ROOT_HASH_LEN * 2)]
pub struct RootHashError(pub String);

/// Parses a root hash: exactly 64 lowercase hex digits (as veritysetup prints it and the builder writes it).
pub fn parse_root_hash(s: &str) -> Result<[u8; ROOT_HASH_LEN], RootHashError> {
    let bad = || RootHashError(s.chars().take(80).collect());
    let digits = s.as_bytes();
    if digits.len() != ROOT_HASH_LEN * 2 {
        return Err(bad());
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; ROOT_HASH_LEN];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = (nibble(pair[0]).ok_or_else(bad)? << 4) | nibble(pair[1]).ok_or_else(bad)?;
    }
    Ok(out)
}

/// Lowercase hex, the spelling of root hashes and salts in tables and on command lines.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Superblock {
        Superblock {
            uuid: [7; 16],
            data_block_size: 4096,
            hash_block_size: 4096,
            data_blocks: 12345,
            salt: (0..32).collect(),
        }
    }

    /// veritysetup's `struct verity_sb` for [`sample`], written out field by field.
    fn veritysetup_bytes() -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"verity\0\0");
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&[7; 16]);
        b.extend_from_slice(b"sha256");
        b.extend_from_slice(&[0; 26]);
        b.extend_from_slice(&4096u32.to_le_bytes());
        b.extend_from_slice(&4096u32.to_le_bytes());
        b.extend_from_slice(&12345u64.to_le_bytes());
        b.extend_from_slice(&32u16.to_le_bytes());
        b.extend_from_slice(&[0; 6]);
        b.extend((0..32u8).chain(std::iter::repeat_n(0, 224)));
        b.resize(512, 0);
        b
    }

    #[test]
    fn writes_and_reads_veritysetups_layout() {
        assert_eq!(sample().to_bytes().unwrap().to_vec(), veritysetup_bytes());
        let mut block = veritysetup_bytes();
        block.resize(4096, 0);
        assert_eq!(Superblock::parse(&block).unwrap(), sample());
        assert_eq!(sample().data_sectors(), 12345 * 8);
    }

    fn err(bytes: &[u8]) -> String {
        Superblock::parse(bytes).unwrap_err().to_string()
    }

    #[test]
    fn every_field_is_checked_and_named() {
        let good = veritysetup_bytes();
        let with = |off: usize, new: &[u8]| {
            let mut b = good.clone();
            b[off..off + new.len()].copy_from_slice(new);
            b
        };
        assert_eq!(err(&good[..100]), "the superblock is 100 bytes, expected 512");
        assert_eq!(
            err(&[0u8; 512]),
            r#"magic: expected "verity\x00\x00", found "\x00\x00\x00\x00\x00\x00\x00\x00""#
        );
        assert_eq!(err(&with(8, &2u32.to_le_bytes())), "version: expected 1, found 2");
        assert_eq!(
            err(&with(12, &0u32.to_le_bytes())),
            "hash type: expected 1 (normal), found 0"
        );
        assert_eq!(
            err(&with(32, b"sha1\0\0")),
            r#"algorithm: expected "sha256", found "sha1""#
        );
        assert_eq!(
            err(&with(38, b"\0x")),
            r#"algorithm: expected "sha256", found "sha256\x00x""#,
            "bytes after the name's end are refused too"
        );
        assert_eq!(
            err(&with(64, &512u32.to_le_bytes())),
            "data block size: expected 4096, found 512"
        );
        assert_eq!(
            err(&with(68, &1024u32.to_le_bytes())),
            "hash block size: expected 4096, found 1024"
        );
        assert_eq!(
            err(&with(72, &0u64.to_le_bytes())),
            "data blocks: expected 1 to 2305843009213693951, found 0"
        );
        assert_eq!(
            err(&with(80, &257u16.to_le_bytes())),
            "salt size: expected at most 256, found 257"
        );
        assert_eq!(
            err(&with(84, &[1])),
            "padding after the salt size: expected zero bytes, found 0x01 at offset 2"
        );
        assert_eq!(
            err(&with(88 + 40, &[9])),
            "salt bytes past the salt size: expected zero bytes, found 0x09 at offset 8"
        );
        assert_eq!(
            err(&with(511, &[0xff])),
            "padding after the salt: expected zero bytes, found 0xff at offset 167"
        );
    }

    #[test]
    fn an_oversized_salt_is_refused_by_the_writer() {
        let mut sb = sample();
        sb.salt = vec![1; 257];
        assert!(sb.to_bytes().is_err());
        sb.salt = vec![1; 256];
        assert_eq!(Superblock::parse(&sb.to_bytes().unwrap()).unwrap(), sb);
    }

    #[test]
    fn root_hashes_are_64_lowercase_hex_digits() {
        let h = "4f3c2b1a00ffee99887766554433221100112233445566778899aabbccddeeff";
        let parsed = parse_root_hash(h).unwrap();
        assert_eq!(parsed[0], 0x4f);
        assert_eq!(parsed[31], 0xff);
        assert_eq!(hex(&parsed), h);
        for bad in [
            "",
            &h[..63],
            &format!("{h}0"),
            &h.to_uppercase(),
            &h.replace('f', "g"),
            &format!("{}é", &h[..62]),
        ] {
            let e = parse_root_hash(bad).unwrap_err();
            assert!(e.to_string().ends_with("expected 64 lowercase hex digits"), "{e}");
        }
    }

    fn superblocks() -> impl Strategy<Value = Superblock> {
        (
            any::<[u8; 16]>(),
            1..=u64::MAX / 8,
            proptest::collection::vec(any::<u8>(), 0..=MAX_SALT_LEN),
        )
            .prop_map(|(uuid, data_blocks, salt)| Superblock {
                uuid,
                data_block_size: BLOCK_SIZE,
                hash_block_size: BLOCK_SIZE,
                data_blocks,
                salt,
            })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = Superblock::parse(&bytes);
        }

        #[test]
        fn mutated_superblocks_never_panic(sb in superblocks(), at in 0usize..512, byte in any::<u8>()) {
            let mut b = sb.to_bytes().unwrap();
            b[at] = byte;
            if let Ok(parsed) = Superblock::parse(&b) {
                // Whatever is accepted writes back to the same bytes.
                prop_assert_eq!(parsed.to_bytes().unwrap(), b);
            }
        }

        #[test]
        fn superblocks_round_trip(sb in superblocks()) {
            prop_assert_eq!(Superblock::parse(&sb.to_bytes().unwrap()).unwrap(), sb);
        }

        #[test]
        fn root_hash_parser_never_panics(s in "\\PC{0,80}") {
            let _ = parse_root_hash(&s);
        }

        #[test]
        fn root_hashes_round_trip(h in any::<[u8; 32]>()) {
            prop_assert_eq!(parse_root_hash(&hex(&h)).unwrap(), h);
        }
    }
}
