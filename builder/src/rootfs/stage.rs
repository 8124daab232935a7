//! A staging directory that becomes the root file system (or another tree such as the ESP contents).
//!
//! Paths given here are absolute image paths (`/usr/bin/x`); they are joined under the staging directory,
//! never followed outside it: a component cannot place a file through a symlink that points out of the tree.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("image path {0:?} must be absolute and must not contain `..`")]
    BadPath(PathBuf),
    #[error("{path}: {what}")]
    Conflict { path: PathBuf, what: String },
    #[error("staging {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{src} has no {path} (the component's files are: {listing})")]
    MissingInComponent {
        src: PathBuf,
        path: PathBuf,
        listing: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StageError + '_ {
    move |source| StageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The tree being staged.
pub struct Stage {
    root: PathBuf,
}

impl Stage {
    /// Stages into `root` (an empty, existing directory).
    pub fn new(root: PathBuf) -> Stage {
        Stage { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Host path for an absolute image path, refusing `..` and symlinked parents that leave the tree.
    pub fn host_path(&self, image_path: &Path) -> Result<PathBuf, StageError> {
        if !image_path.is_absolute() || image_path.components().any(|c| matches!(c, Component::ParentDir)) {
            return Err(StageError::BadPath(image_path.to_path_buf()));
        }
        let rel = image_path.strip_prefix("/").unwrap_or(image_path);
        Ok(self.root.join(rel))
    }

    /// Creates a directory and its parents (mode 0755).
    pub fn dir(&self, image_path: &Path) -> Result<PathBuf, StageError> {
        let host = self.host_path(image_path)?;
        let mut cur = self.root.clone();
        for c in host.strip_prefix(&self.root).unwrap_or(&host).components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(m) if m.is_dir() => continue,
                Ok(m) if m.file_type().is_symlink() => {
                    // Follow a symlink only if it resolves inside the tree (merged-/usr layouts: /lib -> usr/lib).
                    let target = fs::read_link(&cur).map_err(io(&cur))?;
                    if target.is_absolute() || target.components().any(|c| matches!(c, Component::ParentDir))
                    {
                        return Err(StageError::Conflict {
                            path: cur.clone(),
                            what: format!("is a symlink to {} that leaves its directory", target.display()),
                        });
                    }
                    let resolved = cur.parent().unwrap_or(&self.root).join(&target);
                    if !resolved.is_dir() {
                        fs::create_dir_all(&resolved).map_err(io(&resolved))?;
                    }
                    continue;
                }
                Ok(_) => {
                    return Err(StageError::Conflict {
                        path: cur.clone(),
                        what: "exists and is not a directory".into(),
                    });
                }
                Err(_) => {
                    fs::create_dir(&cur).map_err(io(&cur))?;
                    fs::set_permissions(&cur, fs::Permissions::from_mode(0o755)).map_err(io(&cur))?;
                }
            }
        }
        Ok(host)
    }

    fn parent(&self, image_path: &Path) -> Result<PathBuf, StageError> {
        let host = self.host_path(image_path)?;
        if let Some(parent) = image_path.parent() {
            self.dir(parent)?;
        }
        Ok(host)
    }

    /// Writes a file with `content` and `mode`, replacing an earlier one at the same path.
    pub fn file(&self, image_path: &Path, content: &[u8], mode: u32) -> Result<(), StageError> {
        let host = self.parent(image_path)?;
        let _ = fs::remove_file(&host);
        fs::write(&host, content).map_err(io(&host))?;
        fs::set_permissions(&host, fs::Permissions::from_mode(mode)).map_err(io(&host))
    }

    /// Copies a host file (following symlinks) to `image_path`, keeping its permission bits unless `mode`.
    pub fn copy_file(&self, src: &Path, image_path: &Path, mode: Option<u32>) -> Result<(), StageError> {
        let host = self.parent(image_path)?;
        let _ = fs::remove_file(&host);
        fs::copy(src, &host).map_err(io(src))?;
        if let Some(m) = mode {
            fs::set_permissions(&host, fs::Permissions::from_mode(m)).map_err(io(&host))?;
        }
        Ok(())
    }

    pub fn symlink(&self, target: &Path, image_path: &Path) -> Result<(), StageError> {
        let host = self.parent(image_path)?;
        let _ = fs::remove_file(&host);
        symlink(target, &host).map_err(io(&host))
    }

    /// Copies everything under `src` (an unpacked component) to `/`-relative `dst_prefix`, keeping symlinks
    /// as symlinks and file modes.
    pub fn copy_tree(&self, src: &Path, dst_prefix: &Path) -> Result<(), StageError> {
        let mut entries: Vec<PathBuf> = Vec::new();
        walk(src, &mut entries).map_err(io(src))?;
        entries.sort();
        for e in entries {
            let rel = e.strip_prefix(src).unwrap_or(&e);
            let dst = dst_prefix.join(rel);
            self.copy_entry(&e, &dst)?;
        }
        Ok(())
    }

    /// Copies one entry (file, symlink or directory) of a component to `image_path`.
    pub fn copy_entry(&self, src: &Path, image_path: &Path) -> Result<(), StageError> {
        let m = fs::symlink_metadata(src).map_err(io(src))?;
        if m.file_type().is_symlink() {
            let target = fs::read_link(src).map_err(io(src))?;
            self.symlink(&target, image_path)
        } else if m.is_dir() {
            let host = self.dir(image_path)?;
            fs::set_permissions(&host, fs::Permissions::from_mode(m.permissions().mode() & 0o7777))
                .map_err(io(&host))
        } else {
            self.copy_file(src, image_path, Some(m.permissions().mode() & 0o7777))
        }
    }
}

/// All entries below `dir` (not `dir` itself), depth first.
pub fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in fs::read_dir(dir)? {
        let e = e?;
        let p = e.path();
        let ft = e.file_type()?;
        out.push(p.clone());
        if ft.is_dir() {
            walk(&p, out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_files_dirs_and_symlinks_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let s = Stage::new(d.path().to_path_buf());
        s.file(Path::new("/etc/os-release"), b"ID=ingot\n", 0o644)
            .unwrap();
        s.symlink(Path::new("usr/lib"), Path::new("/lib")).unwrap();
        s.file(Path::new("/lib/x.so"), b"x", 0o755).unwrap();
        assert_eq!(
            fs::read(d.path().join("usr/lib/x.so")).unwrap(),
            b"x",
            "relative symlinked parents are followed"
        );
        assert!(matches!(
            s.file(Path::new("/../x"), b"", 0o644),
            Err(StageError::BadPath(_))
        ));
        s.symlink(Path::new("/etc"), Path::new("/escape")).unwrap();
        assert!(matches!(
            s.file(Path::new("/escape/passwd"), b"", 0o644),
            Err(StageError::Conflict { .. })
        ));
        let mode = fs::metadata(d.path().join("usr/lib/x.so"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o755);
    }
}
