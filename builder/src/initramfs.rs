//! The initramfs: a deterministic cpio ("newc") archive, compressed with zstd.
//!
//! The caller lists exactly what goes in ([`Initramfs`]: directories, files from bytes or host paths, symlinks,
//! device nodes, hard links); nothing is picked up from the host implicitly. The archive is a function of that list
//! and [`InitramfsOptions`] only:
//!
//! - entries are written in byte order of their path, which puts every directory before its children; missing
//!   parent directories are added as `0755` directories;
//! - names are relative (`bin/sh`, as GNU cpio writes them); owner and group are 0; every mtime is the given epoch;
//! - inode numbers count from 1 in that order; hard links share their target's inode, `nlink` is the number of
//!   names, and the data is written once, with the last name (as GNU cpio does; the kernel links the earlier
//!   names and fills the data in when it reaches the last);
//! - directories get `nlink` = 2 + their subdirectories; the archive ends with the `TRAILER!!!` entry, padded
//!   with NULs to a 512-byte block as GNU cpio does (the kernel skips NUL padding).
//!
//! With [`InitramfsOptions::newc_checksum`] the entries use the "070702" format, whose header carries the byte sum
//! of the file data; the kernel verifies it while unpacking. The zstd frame always records the content size and a
//! checksum.
//!
//! zstd runs through the single-threaded API. Its multi-threaded mode produces different bytes for the same input
//! and level, so the mode is fixed here rather than chosen per machine; the level comes from the caller
//! ([`DEFAULT_ZSTD_LEVEL`] = 3). The Debian kernel has `CONFIG_RD_ZSTD=y`.
//!
//! Limits: a file may hold at most 4 GiB - 1 (newc's size field is 32 bits); the whole archive is built in memory.
//! The `cpio` crate writes headers only; walking, ordering, inode numbering, hard links and the trailer are here.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The zstd level used unless the profile says otherwise.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;
const S_IFBLK: u32 = 0o060_000;
const S_IFMT: u32 = 0o170_000;
const PERMISSION_BITS: u32 = 0o7777;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// These bytes.
    Bytes(Vec<u8>),
    /// The contents of this host file, read when the archive is built.
    Path(PathBuf),
}

/// What kind of entry a path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A directory.
    Directory,
    /// A regular file.
    File(FileSource),
    /// A symbolic link to this target (stored as given).
    Symlink(String),
    /// A character device node, e.g. `dev/console` 5:1.
    CharDevice { major: u32, minor: u32 },
    /// A block device node.
    BlockDevice { major: u32, minor: u32 },
    /// Another name for the regular file at this archive path.
    HardLink(String),
}

/// One entry: its permission bits (`0o7777` mask, ignored for symlinks and hard links) and kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub mode: u32,
    pub kind: EntryKind,
}

/// How to write the archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitramfsOptions {
    /// The mtime of every entry, seconds since the epoch (from `SOURCE_DATE_EPOCH`).
    pub mtime: u32,
    /// zstd compression level (1–22).
    pub zstd_level: i32,
    /// Write "070702" entries carrying a checksum of each file's data.
    pub newc_checksum: bool,
}

impl InitramfsOptions {
    /// Options with the given mtime, [`DEFAULT_ZSTD_LEVEL`] and checksums on.
    pub fn new(mtime: u32) -> Self {
        Self {
            mtime,
            zstd_level: DEFAULT_ZSTD_LEVEL,
            newc_checksum: true,
        }
    }
}

/// Errors from describing or writing an initramfs.
#[derive(Debug, Error)]
pub enum InitramfsError {
    /// A path is empty, has `.`/`..`/empty components or a NUL byte.
    #[error(
        "invalid initramfs path {path:?}: expected a normalized path like \"bin/sh\" (no \".\", \"..\", empty components or NUL)"
    )]
    InvalidPath { path: String },
    /// Two entries with the same path.
    #[error("initramfs path {path:?} is listed twice")]
    Duplicate { path: String },
    /// A path's parent is listed as something other than a directory.
    #[error(
        "initramfs path {path:?} needs {parent:?} to be a directory, but it is listed as another kind of entry"
    )]
    ParentNotDirectory { path: String, parent: String },
    /// A hard link whose target is not a regular file in the archive.
    #[error("hard link {path:?} points to {target:?}, which is not a regular file in the initramfs")]
    BadHardLink { path: String, target: String },
    /// A file larger than newc can describe.
    #[error("initramfs file {path:?} has {size} bytes; the newc format holds at most 4 GiB - 1 per file")]
    TooLarge { path: String, size: u64 },
    /// More entries than 32-bit inode numbers.
    #[error("too many initramfs entries: newc inode numbers are 32 bits")]
    TooManyEntries,
    /// Reading a host file failed.
    #[error("cannot read {host} for initramfs path {path:?}")]
    ReadSource {
        path: String,
        host: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing the archive or compressing it failed.
    #[error("cannot write the initramfs archive")]
    Write(#[source] std::io::Error),
}

/// The list of entries of an initramfs, keyed by their archive path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

fn normalize(path: &str) -> Result<String, InitramfsError> {
    let trimmed = path.strip_prefix('/').unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    let valid = !trimmed.is_empty()
        && !trimmed.contains('\0')
        && trimmed.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    if valid {
        Ok(trimmed.to_owned())
    } else {
        Err(InitramfsError::InvalidPath {
            path: path.to_owned(),
        })
    }
}

impl Initramfs {
    /// An empty initramfs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an entry. Leading and trailing `/` are ignored; `bin/sh` and `/bin/sh` are the same path.
    pub fn add(&mut self, path: &str, mode: u32, kind: EntryKind) -> Result<(), InitramfsError> {
        let path = normalize(path)?;
        let kind = match kind {
            EntryKind::HardLink(target) => EntryKind::HardLink(normalize(&target)?),
            other => other,
        };
        if self.entries.contains_key(&path) {
            return Err(InitramfsError::Duplicate { path });
        }
        self.entries.insert(
            path,
            Entry {
                mode: mode & PERMISSION_BITS,
                kind,
            },
        );
        Ok(())
    }

    /// Adds a directory.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> Result<(), InitramfsError> {
        self.add(path, mode, EntryKind::Directory)
    }

    /// Adds a regular file with these contents.
    pub fn add_file(
        &mut self,
        path: &str,
        mode: u32,
        data: impl Into<Vec<u8>>,
    ) -> Result<(), InitramfsError> {
        self.add(path, mode, EntryKind::File(FileSource::Bytes(data.into())))
    }

    /// Adds a regular file whose contents are read from `host` when the archive is built.
    pub fn add_file_from(
        &mut self,
        path: &str,
        mode: u32,
        host: impl Into<PathBuf>,
    ) -> Result<(), InitramfsError> {
        self.add(path, mode, EntryKind::File(FileSource::Path(host.into())))
    }

    /// Adds a symbolic link.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        self.add(path, 0o777, EntryKind::Symlink(target.to_owned()))
    }

    /// Adds a character device node.
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> Result<(), InitramfsError> {
        self.add(path, mode, EntryKind::CharDevice { major, minor })
    }

    /// Adds a second name for the regular file at `target`.
    pub fn add_hard_link(&mut self, path: &str, target: &str) -> Result<(), InitramfsError> {
        self.add(path, 0, EntryKind::HardLink(target.to_owned()))
    }

    /// The entries, in archive order (missing parents not included).
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(p, e)| (p.as_str(), e))
    }

    /// The full entry list with implicit parent directories added, checked for consistency.
    fn complete(&self) -> Result<BTreeMap<String, Entry>, InitramfsError> {
        let mut all = self.entries.clone();
        for path in self.entries.keys() {
            let mut parent = path.as_str();
            while let Some((p, _)) = parent.rsplit_once('/') {
                parent = p;
                match all.get(parent) {
                    None => {
                        all.insert(
                            parent.to_owned(),
                            Entry {
                                mode: 0o755,
                                kind: EntryKind::Directory,
                            },
                        );
                    }
                    Some(Entry {
                        kind: EntryKind::Directory,
                        ..
                    }) => {}
                    Some(_) => {
                        return Err(InitramfsError::ParentNotDirectory {
                            path: path.clone(),
                            parent: parent.to_owned(),
                        });
                    }
                }
            }
        }
        for (path, entry) in &all {
            if let EntryKind::HardLink(target) = &entry.kind
                && !matches!(all.get(target).map(|e| &e.kind), Some(EntryKind::File(_)))
            {
                return Err(InitramfsError::BadHardLink {
                    path: path.clone(),
                    target: target.clone(),
                });
            }
        }
        Ok(all)
    }

    /// Writes the uncompressed newc archive.
    pub fn to_cpio(&self, options: &InitramfsOptions) -> Result<Vec<u8>, InitramfsError> {
        let all = self.complete()?;

        // Inode numbers in path order; hard links take their target's number.
        let mut ino: BTreeMap<&str, u32> = BTreeMap::new();
        let mut next = 1u32;
        for (path, entry) in &all {
            if !matches!(entry.kind, EntryKind::HardLink(_)) {
                ino.insert(path, next);
                next = next.checked_add(1).ok_or(InitramfsError::TooManyEntries)?;
            }
        }
        // All names of each linked file, in path order; the data goes with the last.
        let mut names: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (path, entry) in &all {
            match &entry.kind {
                EntryKind::File(_) => names.entry(path).or_default().insert(0, path),
                EntryKind::HardLink(target) => names.entry(target).or_default().push(path),
                _ => {}
            }
        }
        for list in names.values_mut() {
            list.sort_unstable();
        }
        let mut subdirs: BTreeMap<&str, u32> = BTreeMap::new();
        for (path, entry) in &all {
            if matches!(entry.kind, EntryKind::Directory)
                && let Some((parent, _)) = path.rsplit_once('/')
            {
                *subdirs.entry(parent).or_default() += 1;
            }
        }

        let mut out = Vec::new();
        for (path, entry) in &all {
            let own_ino = || ino[path.as_str()];
            let (mode, nlink, rdev, inode, data) = match &entry.kind {
                EntryKind::Directory => {
                    let nlink = 2 + subdirs.get(path.as_str()).copied().unwrap_or(0);
                    (S_IFDIR | entry.mode, nlink, (0, 0), own_ino(), Vec::new())
                }
                EntryKind::Symlink(target) => {
                    (S_IFLNK | 0o777, 1, (0, 0), own_ino(), target.as_bytes().to_vec())
                }
                EntryKind::CharDevice { major, minor } => {
                    (S_IFCHR | entry.mode, 1, (*major, *minor), own_ino(), Vec::new())
                }
                EntryKind::BlockDevice { major, minor } => {
                    (S_IFBLK | entry.mode, 1, (*major, *minor), own_ino(), Vec::new())
                }
                EntryKind::File(_) | EntryKind::HardLink(_) => {
                    let target = match &entry.kind {
                        EntryKind::HardLink(t) => t.as_str(),
                        _ => path.as_str(),
                    };
                    let links = &names[target];
                    let file = &all[target];
                    let EntryKind::File(source) = &file.kind else {
                        unreachable!("hard link targets are checked to be regular files");
                    };
                    let data = if links.last() == Some(&path.as_str()) {
                        read_source(target, source)?
                    } else {
                        Vec::new()
                    };
                    let nlink = u32::try_from(links.len()).map_err(|_| InitramfsError::TooManyEntries)?;
                    // Every name of a file carries the file's permissions.
                    (S_IFREG | file.mode, nlink, (0, 0), ino[target], data)
                }
            };
            let size = u32::try_from(data.len()).map_err(|_| InitramfsError::TooLarge {
                path: path.clone(),
                size: data.len() as u64,
            })?;
            let header = cpio::newc::Builder::new(path)
                .ino(inode)
                .mode(mode)
                .uid(0)
                .gid(0)
                .nlink(nlink)
                .mtime(options.mtime)
                .rdev_major(rdev.0)
                .rdev_minor(rdev.1);
            let mut writer = if options.newc_checksum {
                let sum = if mode & S_IFMT == S_IFREG {
                    data.iter().fold(0u32, |acc, &b| acc.wrapping_add(u32::from(b)))
                } else {
                    0
                };
                header.write_crc(&mut out, size, sum)
            } else {
                header.write(&mut out, size)
            };
            writer.write_all(&data).map_err(InitramfsError::Write)?;
            writer.finish().map_err(InitramfsError::Write)?;
        }
        // The trailer in the same format as the entries (`cpio::newc::trailer` always writes "070701", which GNU
        // cpio rejects after "070702" entries).
        let trailer = cpio::newc::Builder::new("TRAILER!!!").nlink(1);
        let trailer = if options.newc_checksum {
            trailer.write_crc(&mut out, 0, 0)
        } else {
            trailer.write(&mut out, 0)
        };
        trailer.finish().map_err(InitramfsError::Write)?;
        // GNU cpio writes (and expects) whole 512-byte blocks; the kernel skips NUL padding between archives.
        out.resize(out.len().div_ceil(512) * 512, 0);
        Ok(out)
    }

    /// Writes the archive and compresses it with zstd (single-threaded, with content size and checksum).
    pub fn build(&self, options: &InitramfsOptions) -> Result<Vec<u8>, InitramfsError> {
        let archive = self.to_cpio(options)?;
        compress(&archive, options.zstd_level)
    }
}

fn read_source(path: &str, source: &FileSource) -> Result<Vec<u8>, InitramfsError> {
    let data = match source {
        FileSource::Bytes(bytes) => bytes.clone(),
        FileSource::Path(host) => std::fs::read(host).map_err(|source| InitramfsError::ReadSource {
            path: path.to_owned(),
            host: host.clone(),
            source,
        })?,
    };
    if u32::try_from(data.len()).is_err() {
        return Err(InitramfsError::TooLarge {
            path: path.to_owned(),
            size: data.len() as u64,
        });
    }
    Ok(data)
}

/// Compresses with the single-threaded zstd API, recording the content size and a checksum in the frame.
pub fn compress(data: &[u8], level: i32) -> Result<Vec<u8>, InitramfsError> {
    let mut compressor = zstd::bulk::Compressor::new(level).map_err(InitramfsError::Write)?;
    compressor
        .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .map_err(InitramfsError::Write)?;
    compressor.compress(data).map_err(InitramfsError::Write)
}

/// Reads a host path's permission bits, for callers that copy host files with their modes.
pub fn host_mode(path: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::PermissionsExt;
    Ok(std::fs::metadata(path)?.permissions().mode() & PERMISSION_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    const EPOCH: u32 = 1_704_067_200; // 2024-01-01T00:00:00Z

    fn sample(host_file: &Path) -> Initramfs {
        let mut fs = Initramfs::new();
        fs.add_file("/init", 0o755, b"#!/bin/sh\necho hi\n".to_vec())
            .unwrap();
        fs.add_dir("dev", 0o755).unwrap();
        fs.add_char_device("/dev/console", 0o600, 5, 1).unwrap();
        fs.add_file_from("/bin/tool", 0o755, host_file).unwrap();
        fs.add_hard_link("/bin/tool-alias", "/bin/tool").unwrap();
        fs.add_symlink("/bin/sh", "tool").unwrap();
        fs.add_dir("/proc", 0o555).unwrap();
        fs.add_file("/etc/ingot/release", 0o644, b"1\n".to_vec()).unwrap();
        fs.add("/dev/vda", 0o660, EntryKind::BlockDevice { major: 254, minor: 0 })
            .unwrap();
        fs
    }

    fn host_file() -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&[0xab; 1000]).unwrap();
        file
    }

    fn run_cpio(archive: &[u8], args: &[&str]) -> Option<(bool, String)> {
        let mut child = Command::new("cpio")
            .args(args)
            .env("TZ", "UTC")
            .env("LC_ALL", "C")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        child.stdin.take().unwrap().write_all(archive).unwrap();
        let out = child.wait_with_output().unwrap();
        let mut text = String::from_utf8(out.stdout).unwrap();
        text.push_str(&String::from_utf8(out.stderr).unwrap());
        Some((out.status.success(), text))
    }

    #[test]
    fn listing_matches_golden_file() {
        let host = host_file();
        let compressed = sample(host.path()).build(&InitramfsOptions::new(EPOCH)).unwrap();
        let archive = zstd::decode_all(compressed.as_slice()).unwrap();
        let Some((ok, listing)) = run_cpio(&archive, &["-itv", "--quiet"]) else {
            ingot_testkit::skip(
                "listing_matches_golden_file",
                ingot_spec::host_tools::missing_summary("cpio"),
            );
            return;
        };
        assert!(ok, "{listing}");
        let golden = include_str!("../tests/data/initramfs-listing.txt");
        assert_eq!(
            listing, golden,
            "cpio -itv output differs from tests/data/initramfs-listing.txt"
        );
        let (ok, out) = run_cpio(&archive, &["-i", "--only-verify-crc", "--quiet"]).unwrap();
        assert!(ok && out.is_empty(), "checksums: {out}");
    }

    #[test]
    fn output_is_byte_identical_across_runs() {
        let host = host_file();
        let options = InitramfsOptions::new(EPOCH);
        let first = sample(host.path()).build(&options).unwrap();
        let second = sample(host.path()).build(&options).unwrap();
        assert_eq!(first, second);
        // The zstd frame carries a checksum: corrupting the payload is detected.
        let mut corrupt = first.clone();
        let middle = corrupt.len() / 2;
        corrupt[middle] ^= 0x55;
        assert!(zstd::decode_all(corrupt.as_slice()).is_err());
        // The uncompressed archive is pinned too, so a format change shows up as a diff of this file.
        let archive = sample(host.path()).to_cpio(&options).unwrap();
        let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&archive));
        assert_eq!(
            format!("{digest}\n"),
            include_str!("../tests/data/initramfs-cpio.sha256"),
            "update tests/data/initramfs-cpio.sha256 if the change is intended"
        );
    }

    #[test]
    fn entries_are_ordered_with_numbered_inodes_and_shared_link_data() {
        let host = host_file();
        let archive = sample(host.path())
            .to_cpio(&InitramfsOptions::new(EPOCH))
            .unwrap();
        let mut reader_input = archive.as_slice();
        let mut seen = Vec::new();
        loop {
            let reader = cpio::NewcReader::new(reader_input).unwrap();
            let entry = reader.entry().clone();
            if entry.is_trailer() {
                break;
            }
            let size = entry.file_size();
            seen.push((
                entry.name().to_owned(),
                entry.ino(),
                entry.nlink(),
                size,
                entry.mtime(),
            ));
            reader_input = reader.finish().unwrap();
        }
        let names: Vec<_> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/sh",
                "bin/tool",
                "bin/tool-alias",
                "dev",
                "dev/console",
                "dev/vda",
                "etc",
                "etc/ingot",
                "etc/ingot/release",
                "init",
                "proc"
            ]
        );
        let tool = &seen[2];
        let alias = &seen[3];
        assert_eq!((tool.1, tool.2, tool.3), (3, 2, 0), "first name carries no data");
        assert_eq!(
            (alias.1, alias.2, alias.3),
            (3, 2, 1000),
            "last name carries the data"
        );
        assert!(seen.iter().all(|s| s.4 == EPOCH));
        assert_eq!(seen[7].2, 3, "etc has one subdirectory");
    }

    #[test]
    fn rejects_inconsistent_lists() {
        let mut fs = Initramfs::new();
        fs.add_file("a", 0o644, b"x".to_vec()).unwrap();
        assert!(matches!(
            fs.add_dir("/a/", 0o755),
            Err(InitramfsError::Duplicate { .. })
        ));
        for bad in ["", "/", "a/../b", "a//b", "./a"] {
            assert!(
                matches!(fs.add_dir(bad, 0o755), Err(InitramfsError::InvalidPath { .. })),
                "{bad}"
            );
        }
        fs.add_file("a/b", 0o644, b"y".to_vec()).unwrap();
        let err = fs.to_cpio(&InitramfsOptions::new(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "initramfs path \"a/b\" needs \"a\" to be a directory, but it is listed as another kind of entry"
        );
        let mut fs = Initramfs::new();
        fs.add_symlink("s", "x").unwrap();
        fs.add_hard_link("h", "s").unwrap();
        let err = fs.to_cpio(&InitramfsOptions::new(0)).unwrap_err();
        assert!(matches!(err, InitramfsError::BadHardLink { .. }), "{err}");
        let mut fs = Initramfs::new();
        fs.add_file_from("f", 0o644, "/nonexistent/ingot-test").unwrap();
        let err = fs.build(&InitramfsOptions::new(0)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/ingot-test for initramfs path \"f\""
        );
    }
}
