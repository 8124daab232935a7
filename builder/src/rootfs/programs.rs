//! The programs a profile's services run must be in the staged root and executable.
//!
//! Checked after staging (a program may come from any component, a pulled package or `[[files]]`), by
//! resolving the path inside the tree as the node will: symlinks followed within the tree, never on the
//! host (see [`super::elf::resolve_in_tree`]).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::profile::Executable;

/// A service program that the root lacks or cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ProgramError {
    #[error(
        "{at}service {service:?}: {field} {path} is not in the image (add the component that provides it)"
    )]
    Missing {
        at: String,
        service: String,
        field: &'static str,
        path: PathBuf,
    },
    #[error("{at}service {service:?}: {field} {path} is not executable (mode {mode:04o})")]
    NotExecutable {
        at: String,
        service: String,
        field: &'static str,
        path: PathBuf,
        mode: u32,
    },
}

/// Checks every program in `programs` against the staged tree at `root`.
pub fn require_executables(root: &Path, programs: &[Executable]) -> Result<(), ProgramError> {
    for p in programs {
        let at = p
            .origin
            .as_ref()
            .map(|o| format!("{}:{}: ", o.file.display(), o.line))
            .unwrap_or_default();
        let Some(host) = super::elf::resolve_in_tree(root, &p.path) else {
            return Err(ProgramError::Missing {
                at,
                service: p.service.clone(),
                field: p.field,
                path: p.path.clone(),
            });
        };
        let mode = std::fs::metadata(&host).map_or(0, |m| m.permissions().mode() & 0o7777);
        if mode & 0o111 == 0 {
            return Err(ProgramError::NotExecutable {
                at,
                service: p.service.clone(),
                field: p.field,
                path: p.path.clone(),
                mode,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Origin;

    fn program(path: &str) -> Executable {
        Executable {
            service: "hello".into(),
            field: "exec[0]",
            path: path.into(),
            origin: Some(Origin {
                file: "p.toml".into(),
                line: 7,
            }),
        }
    }

    #[test]
    fn programs_resolve_inside_the_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::fs::write(root.join("usr/bin/busybox"), b"x").unwrap();
        std::fs::set_permissions(
            root.join("usr/bin/busybox"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(root.join("usr/bin/data"), b"x").unwrap();
        std::fs::set_permissions(root.join("usr/bin/data"), std::fs::Permissions::from_mode(0o644)).unwrap();
        // An absolute symlink resolves against the tree, not the host.
        std::os::unix::fs::symlink("/usr/bin/busybox", root.join("usr/bin/sh")).unwrap();
        assert!(require_executables(root, &[program("/bin/busybox"), program("/usr/bin/sh")]).is_ok());
        let err = require_executables(root, &[program("/usr/bin/ctr")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:7: service \"hello\": exec[0] /usr/bin/ctr is not in the image (add the component that provides it)"
        );
        let err = require_executables(root, &[program("/usr/bin/data")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "p.toml:7: service \"hello\": exec[0] /usr/bin/data is not executable (mode 0644)"
        );
        // A directory is not a program.
        assert!(require_executables(root, &[program("/usr/bin")]).is_err());
    }
}
