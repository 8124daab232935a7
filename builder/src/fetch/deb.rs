//! Reading Debian binary packages (`.deb`) without `dpkg`.
//!
//! A `.deb` is an `ar` archive of `debian-binary` (the format version, `2.0`), `control.tar[.xz|.zst|.gz]`
//! (metadata and maintainer scripts) and `data.tar[.xz|.zst|.gz]` (the files). We take only the files
//! and, on request, the `control` stanza. Maintainer scripts are never run: an immutable image gets its
//! configuration from the profile, not from `postinst`.
//!
//! Every `ar` member is read to its declared end and its length is checked, so a truncated download
//! is reported as such even when the decompressor happens to stop at a clean boundary.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::archive::{Compression, UnpackError, extract_tar, read_up_to};

/// Unpacks the files of a `.deb` (its `data.tar`) into `dir`, which must exist.
pub fn unpack_deb(deb: &Path, dir: &Path) -> Result<(), UnpackError> {
    with_member(deb, "data.tar", Extent::All, |member, reader| {
        extract_tar(reader, dir, deb, member)
    })
}

/// The first regular file of a `.deb`'s `data.tar` whose path (without a leading `./`) `wanted` accepts,
/// with its contents; at most `limit` bytes are read (a larger file is an error). Stops reading the package
/// there: a kernel's `/boot/config-*` comes out of a 70 MB package without decompressing its modules.
pub fn find_data_file(
    deb: &Path,
    mut wanted: impl FnMut(&Path) -> bool,
    limit: u64,
) -> Result<Option<(std::path::PathBuf, Vec<u8>)>, UnpackError> {
    with_member(deb, "data.tar", Extent::UntilDone, |member, reader| {
        let corrupt = |source| UnpackError::Corrupt {
            file: deb.to_owned(),
            member: member.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            if entry.header().entry_type() != tar::EntryType::Regular {
                continue;
            }
            let path = entry.path().map_err(corrupt)?.into_owned();
            let path = path.strip_prefix("./").map(Path::to_path_buf).unwrap_or(path);
            if !wanted(&path) {
                continue;
            }
            if entry.size() > limit {
                return Err(UnpackError::Format {
                    file: deb.to_owned(),
                    reason: format!("{} is larger than {limit} bytes", path.display()),
                });
            }
            let mut bytes = Vec::new();
            entry.read_to_end(&mut bytes).map_err(corrupt)?;
            return Ok(Some((path, bytes)));
        }
        Ok(None)
    })
}

/// How much of a member [`with_member`] reads.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// All of it, checking that it is complete.
    All,
    /// Only what the caller consumed.
    UntilDone,
}

/// The fields of a `.deb`'s `control` file (`Package`, `Version`, `Depends` …), in file order.
///
/// Continuation lines of multi-line fields are joined with `\n`, as in the file.
pub fn control_fields(deb: &Path) -> Result<Vec<(String, String)>, UnpackError> {
    with_member(deb, "control.tar", Extent::All, |member, reader| {
        let corrupt = |source| UnpackError::Corrupt {
            file: deb.to_owned(),
            member: member.to_owned(),
            source,
        };
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(corrupt)? {
            let mut entry = entry.map_err(corrupt)?;
            let path = entry.path().map_err(corrupt)?;
            if path
                .components()
                .filter(|c| *c != std::path::Component::CurDir)
                .count()
                == 1
                && path.file_name().is_some_and(|n| n == "control")
            {
                let mut text = String::new();
                entry.read_to_string(&mut text).map_err(corrupt)?;
                let stanza = crate::debian::deb822::parse_one(&text).map_err(|e| UnpackError::Format {
                    file: deb.to_owned(),
                    reason: format!("its control file does not parse: {e}"),
                })?;
                return Ok(stanza
                    .fields()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect());
            }
        }
        Err(UnpackError::Format {
            file: deb.to_owned(),
            reason: format!("{member} has no control file"),
        })
    })
}

/// Finds the member whose name starts with `prefix` (`data.tar`, `control.tar`), decompresses it and
/// hands it to `use_member`; afterwards checks that the member was complete.
fn with_member<T>(
    deb: &Path,
    prefix: &str,
    extent: Extent,
    use_member: impl FnOnce(&str, &mut dyn Read) -> Result<T, UnpackError>,
) -> Result<T, UnpackError> {
    let format = |reason: String| UnpackError::Format {
        file: deb.to_owned(),
        reason,
    };
    let file = File::open(deb).map_err(|source| UnpackError::Read {
        path: deb.to_owned(),
        source,
    })?;
    let mut archive = ar::Archive::new(BufReader::new(file));
    let mut index = 0usize;
    while let Some(entry) = archive.next_entry() {
        let entry = entry.map_err(|source| UnpackError::Corrupt {
            file: deb.to_owned(),
            member: "ar archive".to_owned(),
            source,
        })?;
        // GNU ar terminates names with `/`; dpkg-deb does not. Accept both.
        let name = String::from_utf8_lossy(entry.header().identifier())
            .trim_end_matches('/')
            .to_owned();
        let size = entry.header().size();
        let mut counted = CountingReader {
            inner: entry,
            count: 0,
        };
        if index == 0 {
            if name != "debian-binary" {
                return Err(format(format!(
                    "not a Debian package: its first member is {name:?}, not \"debian-binary\""
                )));
            }
            let mut version = [0u8; 16];
            let n = read_up_to(&mut counted, &mut version).map_err(|source| UnpackError::Read {
                path: deb.to_owned(),
                source,
            })?;
            if !version[..n].starts_with(b"2.") {
                return Err(format(format!(
                    "unsupported package format {:?} (only 2.x)",
                    String::from_utf8_lossy(&version[..n]).trim()
                )));
            }
        } else if let Some(suffix) = name.strip_prefix(prefix) {
            let expected = match suffix {
                "" => Compression::None,
                ".gz" => Compression::Gzip,
                ".xz" => Compression::Xz,
                ".zst" => Compression::Zstd,
                other => return Err(format(format!("{name}: unsupported compression {other:?}"))),
            };
            let result = {
                let mut buffered = BufReader::new(&mut counted);
                let corrupt = |source| UnpackError::Corrupt {
                    file: deb.to_owned(),
                    member: name.clone(),
                    source,
                };
                let mut decoder = expected.decoder(&mut buffered).map_err(corrupt)?;
                let value = use_member(&name, &mut decoder)?;
                if extent == Extent::UntilDone {
                    return Ok(value);
                }
                // Drain what the tar reader left (end-of-archive blocks, padding) so that the
                // length check below sees the whole member, and the decoder validates its trailer.
                io::copy(&mut decoder, &mut io::sink()).map_err(corrupt)?;
                value
            };
            io::copy(&mut counted, &mut io::sink()).map_err(|source| UnpackError::Corrupt {
                file: deb.to_owned(),
                member: name.clone(),
                source,
            })?;
            if counted.count != size {
                return Err(UnpackError::Corrupt {
                    file: deb.to_owned(),
                    member: name.clone(),
                    source: io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the file ends after {} of its {size} bytes", counted.count),
                    ),
                });
            }
            return Ok(result);
        }
        index += 1;
    }
    if index == 0 {
        return Err(format("not a Debian package: the ar archive is empty".to_owned()));
    }
    Err(format(format!(
        "no {prefix} member (truncated, or not a binary package)"
    )))
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}
