//! Loading the kernel modules the builder put in the initramfs.
//!
//! The builder resolves dependencies (`modules.dep`) and writes `/etc/ingot/modules`: one module file per
//! line, relative to `/lib/modules/<kver>/`, in load order. Empty lines and `#` comments are allowed.
//! Stage 1 does no resolution of its own: it loads the files in order with `finit_module(2)`.
//!
//! Stage 2 loads the profile's `node.modules` by name ([`load_named`]), resolving them through the
//! `modules.dep` and `modules.builtin` the builder writes into the root. Dependencies are loaded depth
//! first through their own `modules.dep` lines, so the order within a line does not matter.
//! Compressed modules (`.ko.xz`, `.ko.zst`) are handed to the kernel to decompress.

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
    #[error("reading {0}")]
    ReadIndex(PathBuf, #[source] io::Error),
    #[error("module {0} is neither in modules.dep nor built in; add it to the profile's kernel modules")]
    Unknown(String),
}

/// The module name of a file path: `kernel/net/bridge/br_netfilter.ko.xz` → `br_netfilter`; `-` and `_` are
/// the same in module names, `_` is canonical.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// `modules.dep` parsed: module name → (file, dependency files).
#[derive(Debug, Default)]
pub struct DepIndex {
    entries: std::collections::BTreeMap<String, (String, Vec<String>)>,
    builtin: std::collections::BTreeSet<String>,
}

impl DepIndex {
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> DepIndex {
        let mut index = DepIndex::default();
        for line in modules_dep.lines() {
            let Some((file, deps)) = line.split_once(':') else {
                continue;
            };
            let file = file.trim();
            if file.is_empty() || check_entry(file).is_err() {
                continue;
            }
            let deps = deps
                .split_whitespace()
                .filter(|d| check_entry(d).is_ok())
                .map(str::to_owned)
                .collect();
            index.entries.insert(module_name(file), (file.to_owned(), deps));
        }
        index.builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(module_name)
            .collect();
        index
    }

    /// Files to load for `names`, dependencies first, each once. Built-in modules need nothing.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<String>, Error> {
        let mut out = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for name in names {
            let name = module_name(name);
            if self.builtin.contains(&name) {
                continue;
            }
            if !self.entries.contains_key(&name) {
                return Err(Error::Unknown(name));
            }
            self.visit(&name, &mut seen, &mut out, 0);
        }
        Ok(out)
    }

    fn visit(
        &self,
        name: &str,
        seen: &mut std::collections::BTreeSet<String>,
        out: &mut Vec<String>,
        depth: usize,
    ) {
        // modules.dep holds the full closure, so depth stays tiny; the bound only stops a hostile cycle.
        if depth > 64 || !seen.insert(name.to_owned()) {
            return;
        }
        let Some((file, deps)) = self.entries.get(name) else {
            return;
        };
        for dep in deps {
            self.visit(&module_name(dep), seen, out, depth + 1);
        }
        out.push(file.clone());
    }
}

/// Loads `names` (and their dependencies) from `/lib/modules/<release>/` using its `modules.dep`.
pub fn load_named(sys: &dyn Sys, names: &[String]) -> Result<Report, Error> {
    if names.is_empty() {
        return Ok(Report::default());
    }
    let base = PathBuf::from("/lib/modules").join(sys.kernel_release());
    let read = |file: &str, required: bool| -> Result<String, Error> {
        let path = base.join(file);
        match sys.read(&path) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if !required && e.kind() == io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(Error::ReadIndex(path, e)),
        }
    };
    let index = DepIndex::parse(&read("modules.dep", true)?, &read("modules.builtin", false)?);
    load_files(sys, &base, index.resolve(names)?)
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
    load_files(sys, &base, entries)
}

fn load_files(sys: &dyn Sys, base: &Path, entries: Vec<String>) -> Result<Report, Error> {
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
    fn named_modules_load_after_their_dependencies_once() {
        let sys = FakeSys::new();
        sys.write(
            "/lib/modules/6.1.0-test/modules.dep",
            "kernel/net/bridge/br_netfilter.ko: kernel/net/bridge/bridge.ko kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko\n\
             kernel/net/802/stp.ko: kernel/net/llc/llc.ko\n\
             kernel/net/llc/llc.ko:\n\
             kernel/fs/overlayfs/overlay.ko.xz:\n",
        );
        sys.write(
            "/lib/modules/6.1.0-test/modules.builtin",
            "kernel/fs/ext4/ext4.ko\n",
        );
        let names = ["br-netfilter", "bridge", "ext4", "overlay"].map(str::to_owned);
        let report = load_named(&sys, &names).unwrap();
        assert_eq!(report.loaded, 5);
        assert_eq!(
            sys.calls_matching(&["load"]),
            [
                "load /lib/modules/6.1.0-test/kernel/net/llc/llc.ko",
                "load /lib/modules/6.1.0-test/kernel/net/802/stp.ko",
                "load /lib/modules/6.1.0-test/kernel/net/bridge/bridge.ko",
                "load /lib/modules/6.1.0-test/kernel/net/bridge/br_netfilter.ko",
                "load /lib/modules/6.1.0-test/kernel/fs/overlayfs/overlay.ko.xz",
            ]
        );
        let err = load_named(&sys, &["nope".to_owned()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "module nope is neither in modules.dep nor built in; add it to the profile's kernel modules"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_modules_dep_text_resolves_without_panicking(text in "[a-z/._: \n-]{0,400}", name in "[a-z_]{1,6}") {
            let index = DepIndex::parse(&text, &text);
            let _ = index.resolve(&[name]);
        }
    }

    #[test]
    fn no_list_means_nothing_to_load() {
        let sys = FakeSys::new();
        assert_eq!(load_all(&sys, &[]).unwrap(), Report::default());
    }
}
