//! The on-disk layout of the cache and its atomic writes.
//!
//! ```text
//! <root>/blobs/sha256/<hex>       verified bytes, named by their sha256
//! <root>/blobs/sha256/.partial-*  a download in progress (or abandoned by a killed process)
//! <root>/unpacked/<hex>/          the extracted contents of blob <hex>
//! <root>/unpacked/.partial-*/     an extraction in progress
//! ```

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::{FetchError, Pinned, Sha256, UnpackError};

/// A content-addressed store of blobs and their unpacked trees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cache {
    root: PathBuf,
}

pub(super) enum UnpackOrCache {
    Cache(FetchError),
    Unpack(UnpackError),
}

impl Cache {
    /// A cache rooted at `root` (created on first write).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `$INGOT_CACHE_DIR`, else `$XDG_CACHE_HOME/ingot`, else `$HOME/.cache/ingot`.
    pub fn from_env() -> Result<Self, FetchError> {
        Self::from_lookup(|name| std::env::var_os(name))
    }

    /// [`Cache::from_env`] with the environment given as a function (testable without touching the
    /// process environment).
    pub(super) fn from_lookup(
        lookup: impl Fn(&str) -> Option<std::ffi::OsString>,
    ) -> Result<Self, FetchError> {
        let var = |name| lookup(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        if let Some(dir) = var("INGOT_CACHE_DIR") {
            return Ok(Self::at(dir));
        }
        if let Some(dir) = var("XDG_CACHE_HOME") {
            return Ok(Self::at(dir.join("ingot")));
        }
        if let Some(home) = var("HOME") {
            return Ok(Self::at(home.join(".cache").join("ingot")));
        }
        Err(FetchError::NoCacheDir)
    }

    /// The cache's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with this hash lives (whether or not it is there).
    pub fn blob_path(&self, sha256: &Sha256) -> PathBuf {
        self.blob_dir().join(sha256.to_hex())
    }

    /// The blob with this hash, if cached.
    pub fn blob(&self, sha256: &Sha256) -> Option<PathBuf> {
        let path = self.blob_path(sha256);
        path.is_file().then_some(path)
    }

    /// The unpacked tree of the blob with this hash, if cached.
    pub fn unpacked(&self, sha256: &Sha256) -> Option<PathBuf> {
        let path = self.unpacked_dir().join(sha256.to_hex());
        path.is_dir().then_some(path)
    }

    /// Stores bytes that are known to hash to `expected`, e.g. a decompressed index whose hash an
    /// archive publishes. Returns the blob path; a mismatch stores nothing.
    pub fn insert(
        &self,
        what: &str,
        origin: &str,
        expected: &Sha256,
        mut reader: impl io::Read,
    ) -> Result<PathBuf, FetchError> {
        let mut writer = self.blob_writer()?;
        io::copy(&mut reader, &mut writer).map_err(|source| FetchError::Local {
            component: what.to_owned(),
            path: PathBuf::from(origin),
            source,
        })?;
        let p = Pinned {
            component: what.to_owned(),
            url: origin.to_owned(),
            sha256: *expected,
        };
        writer.commit(&p, origin)
    }

    fn blob_dir(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    fn unpacked_dir(&self) -> PathBuf {
        self.root.join("unpacked")
    }

    /// A temporary file in the blob directory that hashes what is written to it.
    pub(super) fn blob_writer(&self) -> Result<BlobWriter, FetchError> {
        let dir = self.blob_dir();
        let io_err = |source| FetchError::Cache {
            path: dir.clone(),
            source,
        };
        fs::create_dir_all(&dir).map_err(io_err)?;
        // Same directory as the final blob, so the rename is atomic (same file system).
        let file = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(&dir)
            .map_err(io_err)?;
        Ok(BlobWriter {
            file,
            hasher: sha2::Sha256::new(),
            dir,
        })
    }

    /// Extracts into a temporary directory with `fill`, then renames it to `unpacked/<hex>`.
    pub(super) fn unpack_into_cache(
        &self,
        sha256: &Sha256,
        fill: impl FnOnce(&Path) -> Result<(), UnpackError>,
    ) -> Result<PathBuf, UnpackOrCache> {
        let dir = self.unpacked_dir();
        let io_err = |path: &Path, source| {
            UnpackOrCache::Cache(FetchError::Cache {
                path: path.to_owned(),
                source,
            })
        };
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempdir_in(&dir)
            .map_err(|e| io_err(&dir, e))?;
        fill(tmp.path()).map_err(UnpackOrCache::Unpack)?;
        let target = dir.join(sha256.to_hex());
        let tmp_path = tmp.keep();
        match fs::rename(&tmp_path, &target) {
            Ok(()) => {
                sync_dir(&dir).map_err(|e| io_err(&dir, e))?;
                Ok(target)
            }
            // Another build unpacked the same blob meanwhile: theirs is as good as ours.
            Err(_) if target.is_dir() => {
                let _ = fs::remove_dir_all(&tmp_path);
                Ok(target)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp_path);
                Err(io_err(&target, e))
            }
        }
    }
}

/// A blob being written: hashed as it goes, invisible until [`BlobWriter::commit`].
///
/// Dropping it without committing deletes the temporary file.
pub(super) struct BlobWriter {
    file: tempfile::NamedTempFile,
    hasher: sha2::Sha256,
    dir: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl BlobWriter {
    /// Checks the hash against the pin, then makes the blob visible. `url` is what the bytes came
    /// from, for the error message.
    pub(super) fn commit(self, p: &Pinned, url: &str) -> Result<PathBuf, FetchError> {
        let actual = Sha256::from_bytes(self.hasher.finalize().into());
        if actual != p.sha256 {
            // Dropping `self.file` removes the temporary file.
            return Err(FetchError::Mismatch {
                component: p.component.clone(),
                url: url.to_owned(),
                expected: p.sha256,
                actual,
            });
        }
        let target = self.dir.join(actual.to_hex());
        let io_err = |path: &Path, source| FetchError::Cache {
            path: path.to_owned(),
            source,
        };
        self.file
            .as_file()
            .sync_all()
            .map_err(|e| io_err(self.file.path(), e))?;
        // Blobs are read-only by convention; make an accidental write through a returned path fail.
        let mut perms = self
            .file
            .as_file()
            .metadata()
            .map_err(|e| io_err(self.file.path(), e))?
            .permissions();
        perms.set_readonly(true);
        fs::set_permissions(self.file.path(), perms).map_err(|e| io_err(self.file.path(), e))?;
        self.file.persist(&target).map_err(|e| io_err(&target, e.error))?;
        sync_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        Ok(target)
    }
}

/// Makes a rename durable: fsync the directory that holds the new name.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
