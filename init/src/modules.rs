//! Loading the kernel modules the builder put in the initramfs.
//!
//! The builder resolves dependencies (`modules.dep`) and writes `/etc/ingot/modules`: one module file per
//! line, relative to `/lib/modules/<kver>/`, in load order. Empty lines and `#` comments are allowed.
//! Stage 1 does no resolution of its own: it loads the files in order with `finit_module(2)`.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::sys::{self, Errno, Sys};

/// The list the builder writes into the initramfs.
pub const LIST_PATH: &str = "/etc/ingot/modules";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the module list {LIST_PATH}")]
    ReadList(#[source] io::Error),
    #[error(
        "{LIST_PATH} line {line}: {path:?} must be a relative path without `..` (relative to /lib/modules/<kver>/)"
    )]
    BadEntry { line: usize, path: String },
    #[error("loading module {0}")]
    Load(PathBuf, #[source] io::Error),
}

/// Parses the module list; `line` numbers in errors are 1-based.
pub fn parse_list(text: &str) -> Result<Vec<String>, Error> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let entry = raw.trim();
        if entry.is_empty() || entry.starts_with('#') {
            continue;
        }
        check_entry(entry).map_err(|()| Error::BadEntry {
            line: i + 1,
            path: entry.to_owned(),
        })?;
        out.push(entry.to_owned());
    }
    Ok(out)
}

fn check_entry(entry: &str) -> Result<(), ()> {
    let p = Path::new(entry);
    if p.components().all(|c| matches!(c, Component::Normal(_))) {
        Ok(())
    } else {
        Err(())
    }
}

/// What happened to each module, for the console.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub loaded: usize,
    pub already_loaded: usize,
    /// Modules whose hardware is absent (`ENODEV`): expected with a list built for many machines.
    pub no_device: Vec<String>,
}

/// Loads the list at [`LIST_PATH`] (absent: nothing to load), then `extra` (from `ingot.modules`).
/// `EEXIST` (already loaded or built in) is fine and `ENODEV` is a warning; anything else is fatal, because
/// a module the builder listed that cannot load is a broken image.
pub fn load_all(sys: &dyn Sys, extra: &[String]) -> Result<Report, Error> {
    let mut entries = match sys.read(Path::new(LIST_PATH)) {
        Ok(bytes) => parse_list(&String::from_utf8_lossy(&bytes))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::ReadList(e)),
    };
    for (i, e) in extra.iter().enumerate() {
        check_entry(e).map_err(|()| Error::BadEntry {
            line: i + 1,
            path: e.clone(),
        })?;
        entries.push(e.clone());
    }
    let base = PathBuf::from("/lib/modules").join(sys.kernel_release());
    let mut report = Report::default();
    for entry in entries {
        let path = base.join(&entry);
        match sys.load_module(&path) {
            Ok(()) => report.loaded += 1,
            Err(e) if sys::is_errno(&e, Errno::EXIST) => report.already_loaded += 1,
            Err(e) if sys::is_errno(&e, Errno::NODEV) => {
                crate::warn(sys, &format!("module {entry}: no such device, ignoring"));
                report.no_device.push(entry);
            }
            Err(e) => return Err(Error::Load(path, e)),
        }
    }
    Ok(report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;

    #[test]
    fn parses_in_order_skipping_blanks_and_comments() {
        let list = "# storage\nkernel/drivers/virtio/virtio_ring.ko\n\n  kernel/drivers/virtio/virtio.ko  \nkernel/fs/erofs/erofs.ko\n";
        assert_eq!(
            parse_list(list).unwrap(),
            [
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/fs/erofs/erofs.ko"
            ]
        );
    }

    #[test]
    fn rejects_paths_escaping_the_module_dir() {
        for bad in ["/lib/modules/x.ko", "../x.ko", "kernel/../../x.ko", "./x.ko"] {
            let err = parse_list(&format!("a.ko\n{bad}\n")).unwrap_err();
            assert!(matches!(err, Error::BadEntry { line: 2, .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn loads_in_list_order_then_extra_tolerating_eexist_and_enodev() {
        let sys = FakeSys::new();
        sys.write(LIST_PATH, "kernel/a.ko\nkernel/b.ko\nkernel/c.ko\n");
        sys.fail("load /lib/modules/6.1.0-test/kernel/b.ko", Errno::EXIST);
        sys.fail("load /lib/modules/6.1.0-test/kernel/c.ko", Errno::NODEV);
        let report = load_all(&sys, &["extra/d.ko".to_owned()]).unwrap();
        assert_eq!(
            sys.calls_matching(&["load"]),
            [
                "load /lib/modules/6.1.0-test/kernel/a.ko",
                "load /lib/modules/6.1.0-test/kernel/b.ko",
                "load /lib/modules/6.1.0-test/kernel/c.ko",
                "load /lib/modules/6.1.0-test/extra/d.ko",
            ]
        );
        assert_eq!(
            report,
            Report {
                loaded: 2,
                already_loaded: 1,
                no_device: vec!["kernel/c.ko".into()]
            }
        );
        assert_eq!(
            sys.console_lines(),
            ["ingot: warning module kernel/c.ko: no such device, ignoring"]
        );
    }

    #[test]
    fn other_load_errors_stop_with_the_path() {
        let sys = FakeSys::new();
        sys.write(LIST_PATH, "kernel/a.ko\nkernel/b.ko\n");
        sys.fail("load /lib/modules/6.1.0-test/kernel/a.ko", Errno::NOEXEC);
        let err = load_all(&sys, &[]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "loading module /lib/modules/6.1.0-test/kernel/a.ko"
        );
        assert_eq!(sys.calls_matching(&["load"]).len(), 1);
    }

    #[test]
    fn no_list_means_nothing_to_load() {
        let sys = FakeSys::new();
        assert_eq!(load_all(&sys, &[]).unwrap(), Report::default());
    }
}
