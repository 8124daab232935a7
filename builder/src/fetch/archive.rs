//! Extracting tar streams from untrusted sources: tarballs and the `data.tar` inside a `.deb`.
//!
//! The archive is treated as hostile. Before any entry is written its path is normalised (a leading
//! `./` is dropped) and refused if it is absolute or contains `..`; hard-link targets get the same
//! check. Writing through a symlink planted by an earlier entry is refused by the `tar` crate, which
//! checks that every entry's canonical parent lies inside the target directory. Device nodes and
//! FIFOs are refused: an image's `/dev` comes from devtmpfs, never from a package.
//!
//! Modes (including setuid/setgid) and file mtimes are kept; ownership is not (see the module
//! documentation of `fetch`). Directory modes are applied after all entries are written, so a
//! read-only directory in the archive does not stop its own contents from being extracted.
//!
//! Compression is recognised by magic bytes, not by file name: cached blobs have no names.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// Errors from unpacking `.deb` files and tarballs.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The input file could not be opened or read.
    #[error("cannot read {}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file is not in a format we unpack.
    #[error("{}: {reason}", file.display())]
    Format { file: PathBuf, reason: String },
    /// The compressed or archived data ends early or does not decode.
    #[error("{}: {member} is truncated or corrupt", file.display())]
    Corrupt {
        file: PathBuf,
        member: String,
        source: io::Error,
    },
    /// An entry would land outside the target directory.
    #[error("{}: entry {entry:?} points outside the target directory (absolute path or `..`)", file.display())]
    UnsafePath { file: PathBuf, entry: String },
    /// An entry type we refuse to create.
    #[error("{}: entry {entry:?} is a {kind}, which is not allowed in a component", file.display())]
    UnsupportedEntry {
        file: PathBuf,
        entry: String,
        kind: &'static str,
    },
    /// Writing an entry failed (including the `tar` crate's refusal to write through a symlink).
    #[error("{}: cannot extract entry {entry:?}", file.display())]
    Extract {
        file: PathBuf,
        entry: String,
        source: io::Error,
    },
}

/// The compression wrapping a tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
}

impl Compression {
    /// Recognises gzip, xz and zstd by their magic bytes; anything else is taken as plain.
    pub(crate) fn sniff(head: &[u8]) -> Self {
        if head.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
            Self::Xz
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else {
            Self::None
        }
    }

    /// Wraps `reader` in the matching decoder.
    pub(crate) fn decoder<'a>(self, reader: impl BufRead + 'a) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Self::None => Box::new(reader),
            // Multi-member gzip and multi-stream xz are valid files (pigz, pixz produce them).
            Self::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(reader)),
            Self::Xz => Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(reader)),
            Self::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
        })
    }
}

/// Unpacks a `.deb` (recognised by its `ar` magic) or a tarball (`.tar`, `.tar.gz`/`.tgz`, `.tar.xz`,
/// `.tar.zst`) into `dir`, which must exist.
pub(super) fn unpack_auto(file: &Path, dir: &Path) -> Result<(), UnpackError> {
    let mut head = [0u8; 8];
    let n = File::open(file)
        .and_then(|mut f| read_up_to(&mut f, &mut head))
        .map_err(|source| UnpackError::Read {
            path: file.to_owned(),
            source,
        })?;
    if head[..n] == *b"!<arch>\n" {
        super::deb::unpack_deb(file, dir)
    } else {
        unpack_tarball(file, dir)
    }
}

/// Unpacks a tarball, plain or compressed with gzip, xz or zstd, into `dir` (which must exist).
pub fn unpack_tarball(file: &Path, dir: &Path) -> Result<(), UnpackError> {
    let read_err = |source| UnpackError::Read {
        path: file.to_owned(),
        source,
    };
    let mut reader = BufReader::new(File::open(file).map_err(read_err)?);
    let compression = Compression::sniff(reader.fill_buf().map_err(read_err)?);
    let member = file
        .file_name()
        .map_or_else(|| "tarball".to_owned(), |n| n.to_string_lossy().into_owned());
    let decoder = compression
        .decoder(reader)
        .map_err(|source| UnpackError::Corrupt {
            file: file.to_owned(),
            member: member.clone(),
            source,
        })?;
    extract_tar(decoder, dir, file, &member)
}

/// Extracts a tar stream into `dir`. `file` and `member` name the source in errors.
pub(super) fn extract_tar(
    reader: impl Read,
    dir: &Path,
    file: &Path,
    member: &str,
) -> Result<(), UnpackError> {
    extract_tar_routed(reader, &[dir], file, member, &mut |_, _| Some(0))
}

/// Extracts a tar stream, entry by entry, into the directory of `dirs` that `route` picks from the entry's
/// relative path (`usr/bin/x`) and header, or skips it (`None`). Skipped entries are not checked for their
/// kind, so a caller can drop the device nodes of a root tarball. The same safety rules apply as in
/// [`extract_tar`]: no absolute paths, no `..`, nothing written through a symlink leading outside.
pub fn extract_tar_routed(
    reader: impl Read,
    dirs: &[&Path],
    file: &Path,
    member: &str,
    route: &mut dyn FnMut(&Path, &tar::Header) -> Option<usize>,
) -> Result<(), UnpackError> {
    let corrupt = |source| UnpackError::Corrupt {
        file: file.to_owned(),
        member: member.to_owned(),
        source,
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_unpack_xattrs(false);
    // Modes of directories, applied at the end (deepest first) so read-only directories can be filled.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let mut entries_seen = 0usize;
    for entry in archive.entries().map_err(corrupt)? {
        let mut entry = entry.map_err(corrupt)?;
        entries_seen += 1;
        let raw_path = entry.path().map_err(corrupt)?.into_owned();
        let shown = raw_path.display().to_string();
        let unsafe_path = || UnpackError::UnsafePath {
            file: file.to_owned(),
            entry: shown.clone(),
        };
        let rel = safe_relative(&raw_path).ok_or_else(unsafe_path)?;
        let Some(&dir) = route(&rel, entry.header()).and_then(|i| dirs.get(i)) else {
            continue;
        };
        let kind = entry.header().entry_type();
        let refuse = |kind| UnpackError::UnsupportedEntry {
            file: file.to_owned(),
            entry: shown.clone(),
            kind,
        };
        match kind {
            tar::EntryType::Char => return Err(refuse("character device")),
            tar::EntryType::Block => return Err(refuse("block device")),
            tar::EntryType::Fifo => return Err(refuse("FIFO")),
            _ => {}
        }
        if kind.is_hard_link() {
            let target = entry.link_name().map_err(corrupt)?.map(|t| t.into_owned());
            let safe = target.as_deref().and_then(safe_relative);
            if safe.is_none_or(|t| t.as_os_str().is_empty()) {
                return Err(UnpackError::UnsafePath {
                    file: file.to_owned(),
                    entry: format!(
                        "{shown} (hard link to {})",
                        target.as_deref().unwrap_or(Path::new("")).display()
                    ),
                });
            }
        }
        if rel.as_os_str().is_empty() {
            // The archive's root (`./`): `dir` already exists; keep its mode.
            if kind.is_dir() {
                dir_modes.push((dir.to_owned(), entry.header().mode().map_err(corrupt)?));
            }
            continue;
        }
        let extract_err = |source| UnpackError::Extract {
            file: file.to_owned(),
            entry: shown.clone(),
            source,
        };
        if kind.is_dir() {
            let path = dir.join(&rel);
            // Refuse a directory entry that would go through a symlink out of `dir`.
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(extract_err)?;
                ensure_inside(dir, parent).map_err(extract_err)?;
            }
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    fs::remove_file(&path).map_err(extract_err)?;
                    fs::create_dir(&path).map_err(extract_err)?;
                }
                Err(_) => fs::create_dir(&path).map_err(extract_err)?,
            }
            dir_modes.push((path, entry.header().mode().map_err(corrupt)?));
            continue;
        }
        // The `tar` crate re-checks the path and refuses to write through symlinks leading outside.
        // It reads the entry's data as part of unpacking, so a decoding error surfaces here too.
        match entry.unpack_in(dir) {
            Ok(true) => {}
            Ok(false) => return Err(unsafe_path()),
            Err(source) => return Err(classify_unpack_error(file, member, &shown, source)),
        }
    }
    if entries_seen == 0 {
        return Err(UnpackError::Format {
            file: file.to_owned(),
            reason: format!("{member} holds no entries"),
        });
    }
    dir_modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (path, mode) in dir_modes {
        fs::set_permissions(&path, fs::Permissions::from_mode(mode & 0o7777)).map_err(|source| {
            UnpackError::Extract {
                file: file.to_owned(),
                entry: path.display().to_string(),
                source,
            }
        })?;
    }
    Ok(())
}

/// A read error inside `unpack_in` means the stream is broken; anything else is about writing.
fn classify_unpack_error(file: &Path, member: &str, entry: &str, source: io::Error) -> UnpackError {
    match source.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
            UnpackError::Corrupt {
                file: file.to_owned(),
                member: member.to_owned(),
                source,
            }
        }
        _ => UnpackError::Extract {
            file: file.to_owned(),
            entry: entry.to_owned(),
            source,
        },
    }
}

/// `./usr/bin/x` → `usr/bin/x`; `None` for absolute paths and any `..`.
fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::Prefix(_) | Component::ParentDir => return None,
        }
    }
    Some(out)
}

fn ensure_inside(root: &Path, path: &Path) -> io::Result<()> {
    let root = root.canonicalize()?;
    if path.canonicalize()?.starts_with(&root) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "parent directory is a symlink leading outside the target directory",
        ))
    }
}

/// Like `read_exact`, but a short file is not an error: returns how many bytes were read.
pub(super) fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
