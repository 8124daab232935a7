//! Kernel module resolution without `depmod`: which module files an initramfs needs, in load order.
//!
//! Debian's kernel package ships no `modules.dep`, and running `depmod` would make the build depend on the host's
//! kmod. Instead [`ModuleIndex::open`] walks `lib/modules/<kver>/kernel/**` for `*.ko`, `*.ko.xz` and `*.ko.zst`
//! and keys each file by its module name (the file name without the suffix, `-` normalized to `_`, as the kernel
//! does). Only names are collected up front; a module's `.modinfo` ELF section (`depends=`, `softdep=`) is read
//! when the resolver reaches it, so resolving a handful of modules reads a handful of files (compressed modules are
//! decompressed in memory to read it; the file itself goes into the image unchanged). `modules.builtin` lists
//! modules compiled into the kernel: they need no file and are left out of the result.
//!
//! [`ModuleIndex::resolve`] returns the closure of the requested modules in load order: each module after
//! everything it depends on. The order is deterministic: a depth-first walk over the requested names in the
//! order given, visiting each module's dependencies in sorted order. With [`SoftDeps::Pre`], `softdep=pre:`
//! modules are loaded before their dependent too; a soft dependency that names no module file (often an alias,
//! which needs `modules.alias` to resolve) or closes a cycle is skipped.
//!
//! For the root file system, [`ModuleIndex::dependency_files`] writes `modules.dep` and `modules.softdep` in
//! kmod's format for the modules copied there, so the node can load modules by name (ingot-init in stage 2,
//! or `modprobe`). Each `modules.dep` line holds one module file and the files of its whole `depends=`
//! closure, relative to `lib/modules/<kver>`, in **load order** (a loader can insert them left to right and
//! then the module itself; depmod writes the reverse, but kmod's `modprobe` orders by walking each line's
//! own entries recursively, so it accepts either). Lines are sorted by path. `modules.softdep` lists the
//! `softdep=` entries that name modules present in the root, as `softdep NAME pre: … post: …`.
//!
//! Limits: when two files give the same module name, the first in path order wins (depmod prefers `updates/`
//! directories, which we do not read). Aliases (`modules.alias`) are not resolved: ask for module names.
//! Gzip-compressed modules are not supported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};
use thiserror::Error;

/// Whether `softdep=pre:` modules are part of the closure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SoftDeps {
    /// Only `depends=`.
    Ignore,
    /// `depends=` and `softdep=pre:`.
    Pre,
}

/// The dependency fields of a module's `.modinfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`: modules that must be loaded first (normalized names).
    pub depends: Vec<String>,
    /// `softdep=pre:` names (normalized).
    pub softdep_pre: Vec<String>,
    /// `softdep=post:` names (normalized).
    pub softdep_post: Vec<String>,
}

/// A module file to put into the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module name (`virtio_blk`).
    pub name: String,
    /// The path relative to `lib/modules/<kver>` (`kernel/drivers/block/virtio_blk.ko`).
    pub relative_path: PathBuf,
    /// The path on the host.
    pub path: PathBuf,
}

/// Errors from indexing or resolving kernel modules.
#[derive(Debug, Error)]
pub enum KmodError {
    /// No module tree for that kernel version.
    #[error("no kernel modules for {kver}: expected a directory {dir}")]
    NoModuleTree { kver: String, dir: PathBuf },
    /// Reading a file or directory failed.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A requested module is neither a file nor built in.
    #[error("unknown kernel module {name:?} for kernel {kver}{}", suggest(.suggestions))]
    Unknown {
        name: String,
        kver: String,
        suggestions: Vec<String>,
    },
    /// A module depends on a module that is neither a file nor built in.
    #[error("kernel module {module} depends on {name:?}, which kernel {kver} neither ships nor has built in")]
    MissingDependency {
        module: String,
        name: String,
        kver: String,
    },
    /// A module file is not an ELF object with a readable `.modinfo`.
    #[error("{path} is not a kernel module: {reason}")]
    BadModule { path: PathBuf, reason: String },
    /// A compressed module could not be decompressed.
    #[error("cannot decompress {path}")]
    Decompress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `depends=` forms a cycle.
    #[error("kernel modules depend on each other in a cycle: {}", .cycle.join(" -> "))]
    Cycle { cycle: Vec<String> },
}

fn suggest(suggestions: &[String]) -> String {
    if suggestions.is_empty() {
        String::new()
    } else {
        format!("; did you mean {}?", suggestions.join(", "))
    }
}

/// Normalizes a module name as the kernel does: `-` becomes `_`.
pub fn normalize_name(name: &str) -> String {
    name.replace('-', "_")
}

const SUFFIXES: [&str; 3] = [".ko", ".ko.xz", ".ko.zst"];

fn module_name(file_name: &str) -> Option<String> {
    SUFFIXES
        .iter()
        .find_map(|suffix| file_name.strip_suffix(suffix))
        .filter(|stem| !stem.is_empty())
        .map(normalize_name)
}

/// The module files and built-in modules of one kernel.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    kver: String,
    dir: PathBuf,
    files: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

impl ModuleIndex {
    /// Indexes `<modules_dir>/<kver>` (`modules_dir` is a `lib/modules` directory): file names under `kernel/`
    /// and `modules.builtin`. Reads no module contents.
    pub fn open(modules_dir: &Path, kver: &str) -> Result<Self, KmodError> {
        let dir = modules_dir.join(kver);
        let kernel = dir.join("kernel");
        if !kernel.is_dir() {
            return Err(KmodError::NoModuleTree {
                kver: kver.to_owned(),
                dir: kernel,
            });
        }
        let mut found = Vec::new();
        walk(&dir, Path::new("kernel"), &mut found)?;
        found.sort();
        let mut files = BTreeMap::new();
        for (relative, name) in found {
            files.entry(name).or_insert(relative);
        }
        let builtin_list = dir.join("modules.builtin");
        let builtin = match std::fs::read_to_string(&builtin_list) {
            Ok(text) => text
                .lines()
                .filter_map(|line| line.rsplit('/').next().and_then(module_name))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(KmodError::Read {
                    path: builtin_list,
                    source,
                });
            }
        };
        Ok(Self {
            kver: kver.to_owned(),
            dir,
            files,
            builtin,
        })
    }

    /// The kernel version this index is for.
    pub fn kernel_version(&self) -> &str {
        &self.kver
    }

    /// The number of module files found.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no module files were found.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Whether `name` is compiled into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_name(name))
    }

    /// The module file for `name`, relative to `lib/modules/<kver>`.
    pub fn relative_path(&self, name: &str) -> Option<&Path> {
        self.files.get(&normalize_name(name)).map(PathBuf::as_path)
    }

    /// Reads the dependency fields of module `name` from its file.
    pub fn modinfo(&self, name: &str) -> Result<ModInfo, KmodError> {
        let name = normalize_name(name);
        let Some(relative) = self.files.get(&name) else {
            return Err(self.unknown(&name));
        };
        read_modinfo(&self.dir.join(relative))
    }

    fn unknown(&self, name: &str) -> KmodError {
        KmodError::Unknown {
            name: name.to_owned(),
            kver: self.kver.clone(),
            suggestions: close_names(name, self.files.keys().chain(&self.builtin)),
        }
    }

    /// The module files needed to load `requested`, dependencies first. Built-in modules are left out.
    pub fn resolve<S: AsRef<str>>(
        &self,
        requested: &[S],
        softdeps: SoftDeps,
    ) -> Result<Vec<Module>, KmodError> {
        let mut walk = Resolver {
            index: self,
            softdeps,
            state: HashMap::new(),
            stack: Vec::new(),
            order: Vec::new(),
        };
        for name in requested {
            let name = normalize_name(name.as_ref());
            if self.files.contains_key(&name) {
                walk.visit(&name)?;
            } else if !self.builtin.contains(&name) {
                return Err(self.unknown(&name));
            }
        }
        Ok(walk
            .order
            .into_iter()
            .map(|name| {
                let relative_path = self.files[&name].clone();
                Module {
                    path: self.dir.join(&relative_path),
                    relative_path,
                    name,
                }
            })
            .collect())
    }
}

/// The dependency files of a module tree, as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyFiles {
    /// `modules.dep`.
    pub modules_dep: String,
    /// `modules.softdep`.
    pub modules_softdep: String,
}

impl ModuleIndex {
    /// `modules.dep` and `modules.softdep` for `modules` (a set closed under `depends=`, as
    /// [`ModuleIndex::resolve`] returns).
    pub fn dependency_files(&self, modules: &[Module]) -> Result<DependencyFiles, KmodError> {
        let mut sorted: Vec<&Module> = modules.iter().collect();
        sorted.sort_by(|a, b| a.relative_path.cmp(&b.relative_path));
        sorted.dedup_by(|a, b| a.name == b.name);
        let present: BTreeSet<&str> = sorted.iter().map(|m| m.name.as_str()).collect();
        let mut dep = String::new();
        let mut softdep = String::from("# Soft dependencies extracted from modules themselves.\n");
        for m in &sorted {
            let closure = self.resolve(&[m.name.as_str()], SoftDeps::Ignore)?;
            dep.push_str(&m.relative_path.to_string_lossy());
            dep.push(':');
            for d in closure.iter().filter(|d| d.name != m.name) {
                dep.push(' ');
                dep.push_str(&d.relative_path.to_string_lossy());
            }
            dep.push('\n');
            let info = self.modinfo(&m.name)?;
            let keep = |names: &[String]| -> Vec<String> {
                let mut out: Vec<String> = Vec::new();
                for n in names {
                    if present.contains(n.as_str()) && !out.contains(n) {
                        out.push(n.clone());
                    }
                }
                out
            };
            let (pre, post) = (keep(&info.softdep_pre), keep(&info.softdep_post));
            if !pre.is_empty() || !post.is_empty() {
                softdep.push_str("softdep ");
                softdep.push_str(&m.name);
                if !pre.is_empty() {
                    softdep.push_str(" pre: ");
                    softdep.push_str(&pre.join(" "));
                }
                if !post.is_empty() {
                    softdep.push_str(" post: ");
                    softdep.push_str(&post.join(" "));
                }
                softdep.push('\n');
            }
        }
        Ok(DependencyFiles {
            modules_dep: dep,
            modules_softdep: softdep,
        })
    }

    /// The `modules.builtin` file of the kernel, if it has one.
    pub fn builtin_list(&self) -> Option<PathBuf> {
        let path = self.dir.join("modules.builtin");
        path.is_file().then_some(path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Visit {
    InProgress,
    Done,
}

struct Resolver<'a> {
    index: &'a ModuleIndex,
    softdeps: SoftDeps,
    state: HashMap<String, Visit>,
    stack: Vec<String>,
    order: Vec<String>,
}

impl Resolver<'_> {
    fn visit(&mut self, name: &str) -> Result<(), KmodError> {
        match self.state.get(name) {
            Some(Visit::Done) => return Ok(()),
            Some(Visit::InProgress) => {
                let start = self.stack.iter().position(|n| n == name).unwrap_or(0);
                let mut cycle = self.stack[start..].to_vec();
                cycle.push(name.to_owned());
                return Err(KmodError::Cycle { cycle });
            }
            None => {}
        }
        self.state.insert(name.to_owned(), Visit::InProgress);
        self.stack.push(name.to_owned());
        let info = self.index.modinfo(name)?;
        if self.softdeps == SoftDeps::Pre {
            let mut pre = info.softdep_pre.clone();
            pre.sort();
            pre.dedup();
            for dep in pre {
                if self.index.files.contains_key(&dep) && !self.state.contains_key(&dep) {
                    self.visit(&dep)?;
                }
            }
        }
        let mut depends = info.depends;
        depends.sort();
        depends.dedup();
        for dep in depends {
            if self.index.files.contains_key(&dep) {
                self.visit(&dep)?;
            } else if !self.index.builtin.contains(&dep) {
                return Err(KmodError::MissingDependency {
                    module: name.to_owned(),
                    name: dep,
                    kver: self.index.kver.clone(),
                });
            }
        }
        self.stack.pop();
        self.state.insert(name.to_owned(), Visit::Done);
        self.order.push(name.to_owned());
        Ok(())
    }
}

fn walk(base: &Path, relative: &Path, out: &mut Vec<(PathBuf, String)>) -> Result<(), KmodError> {
    let dir = base.join(relative);
    let read_error = |source| KmodError::Read {
        path: dir.clone(),
        source,
    };
    for entry in std::fs::read_dir(&dir).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let file_type = entry.file_type().map_err(read_error)?;
        let file_name = entry.file_name();
        let child = relative.join(&file_name);
        if file_type.is_dir() {
            walk(base, &child, out)?;
        } else if file_type.is_file()
            && let Some(name) = file_name.to_str().and_then(module_name)
        {
            out.push((child, name));
        }
    }
    Ok(())
}

/// Reads a module file, decompressing `.xz` and `.zst`, and parses its `.modinfo`.
pub fn read_modinfo(path: &Path) -> Result<ModInfo, KmodError> {
    let raw = std::fs::read(path).map_err(|source| KmodError::Read {
        path: path.to_owned(),
        source,
    })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let decompress_error = |source| KmodError::Decompress {
        path: path.to_owned(),
        source,
    };
    let data = if name.ends_with(".xz") {
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(decompress_error)?;
        out
    } else if name.ends_with(".zst") {
        zstd::stream::decode_all(raw.as_slice()).map_err(decompress_error)?
    } else {
        raw
    };
    let bad = |reason: String| KmodError::BadModule {
        path: path.to_owned(),
        reason,
    };
    let section = match data.get(4) {
        Some(1) => modinfo_section::<object::elf::FileHeader32<object::Endianness>>(&data),
        Some(2) => modinfo_section::<object::elf::FileHeader64<object::Endianness>>(&data),
        _ => Err("expected an ELF file (magic and class at byte offset 0)".to_owned()),
    }
    .map_err(bad)?;
    Ok(parse_modinfo(section))
}

fn modinfo_section<Elf: object::read::elf::FileHeader<Endian = object::Endianness>>(
    data: &[u8],
) -> Result<&[u8], String> {
    let file = object::read::elf::ElfFile::<Elf>::parse(data).map_err(|e| format!("invalid ELF: {e}"))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| "expected a .modinfo section".to_owned())?;
    section.data().map_err(|e| {
        let offset = section.file_range().map_or(0, |(at, _)| at);
        format!(".modinfo data at byte offset {offset:#x} is unreadable: {e}")
    })
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for field in section.split(|&b| b == 0) {
        let Ok(field) = std::str::from_utf8(field) else {
            continue;
        };
        if let Some(list) = field.strip_prefix("depends=") {
            info.depends
                .extend(list.split(',').filter(|s| !s.is_empty()).map(normalize_name));
        } else if let Some(spec) = field.strip_prefix("softdep=") {
            let mut target = None;
            for word in spec.split_whitespace() {
                match word {
                    "pre:" => target = Some(&mut info.softdep_pre),
                    "post:" => target = Some(&mut info.softdep_post),
                    name => {
                        if let Some(list) = target.as_deref_mut() {
                            list.push(normalize_name(name));
                        }
                    }
                }
            }
        }
    }
    info
}

/// Up to five known names close to `name`: by edit distance (at most a third of its length, at least 1 and at
/// most 3) or containing it.
fn close_names<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> Vec<String> {
    let limit = (name.len() / 3).clamp(1, 3);
    let mut scored: Vec<(usize, &String)> = known
        .filter_map(|candidate| {
            let distance = edit_distance(name, candidate);
            if distance <= limit {
                Some((distance, candidate))
            } else if name.len() >= 3 && candidate.contains(name) {
                Some((limit + 1 + candidate.len() - name.len(), candidate))
            } else {
                None
            }
        })
        .collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(5).map(|(_, n)| n.clone()).collect()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal ELF64 relocatable object with a `.modinfo` section.
    fn fake_module(modinfo: &str) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.shstrtab\0";
        let mut b = vec![0u8; 64];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little endian
        b[6] = 1;
        b[16..18].copy_from_slice(&1u16.to_le_bytes()); // ET_REL
        b[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
        b[20..24].copy_from_slice(&1u32.to_le_bytes());
        b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        b[58..60].copy_from_slice(&64u16.to_le_bytes()); // e_shentsize
        b[60..62].copy_from_slice(&3u16.to_le_bytes()); // e_shnum
        b[62..64].copy_from_slice(&2u16.to_le_bytes()); // e_shstrndx
        let modinfo_at = b.len() as u64;
        b.extend_from_slice(modinfo.as_bytes());
        let strtab_at = b.len() as u64;
        b.extend_from_slice(shstrtab);
        while !b.len().is_multiple_of(8) {
            b.push(0);
        }
        let shoff = b.len() as u64;
        b[40..48].copy_from_slice(&shoff.to_le_bytes());
        let header = |name: u32, kind: u32, offset: u64, size: u64| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[4..8].copy_from_slice(&kind.to_le_bytes());
            h[24..32].copy_from_slice(&offset.to_le_bytes());
            h[32..40].copy_from_slice(&size.to_le_bytes());
            h[48..56].copy_from_slice(&1u64.to_le_bytes());
            h
        };
        b.extend(header(0, 0, 0, 0));
        b.extend(header(1, 1, modinfo_at, modinfo.len() as u64));
        b.extend(header(10, 3, strtab_at, shstrtab.len() as u64));
        b
    }

    fn fake_tree(modules: &[(&str, &str)], builtin: &str) -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("6.9.0-test");
        std::fs::create_dir_all(dir.join("kernel")).unwrap();
        std::fs::write(dir.join("modules.builtin"), builtin).unwrap();
        for (path, modinfo) in modules {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let elf = fake_module(modinfo);
            let bytes = if path.to_str().unwrap().ends_with(".xz") {
                let mut encoder = liblzma::write::XzEncoder::new(Vec::new(), 6);
                encoder.write_all(&elf).unwrap();
                encoder.finish().unwrap()
            } else if path.to_str().unwrap().ends_with(".zst") {
                zstd::bulk::compress(&elf, 3).unwrap()
            } else {
                elf
            };
            std::fs::write(path, bytes).unwrap();
        }
        tmp
    }

    fn names(modules: &[Module]) -> Vec<&str> {
        modules.iter().map(|m| m.name.as_str()).collect()
    }

    #[test]
    fn parses_depends_and_softdeps() {
        let info =
            parse_modinfo(b"license=GPL\0depends=virtio,virtio-ring\0softdep=pre: crc32c post: foo-bar\0\0");
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.softdep_pre, ["crc32c"]);
        assert_eq!(info.softdep_post, ["foo_bar"]);
        assert_eq!(parse_modinfo(b"depends=\0").depends, Vec::<String>::new());
    }

    #[test]
    fn resolves_dependencies_first_across_compression_formats() {
        let tree = fake_tree(
            &[
                ("kernel/a/blk-dev.ko.xz", "depends=bus,core\0"),
                ("kernel/a/bus.ko.zst", "depends=core,builtin_thing\0"),
                ("kernel/b/core.ko", "depends=\0"),
                ("kernel/b/fs.ko", "depends=\0softdep=pre: crypto alias_only\0"),
                ("kernel/c/crypto.ko", "depends=\0"),
            ],
            "kernel/lib/builtin-thing.ko\n",
        );
        let index = ModuleIndex::open(tree.path(), "6.9.0-test").unwrap();
        assert_eq!(index.len(), 5);
        let resolved = index
            .resolve(&["blk-dev", "builtin_thing", "fs"], SoftDeps::Ignore)
            .unwrap();
        assert_eq!(names(&resolved), ["core", "bus", "blk_dev", "fs"]);
        assert_eq!(resolved[2].relative_path, Path::new("kernel/a/blk-dev.ko.xz"));
        let with_soft = index.resolve(&["fs", "core"], SoftDeps::Pre).unwrap();
        assert_eq!(names(&with_soft), ["crypto", "fs", "core"]);
    }

    #[test]
    fn unknown_module_names_kernel_and_suggests() {
        let tree = fake_tree(&[("kernel/virtio_blk.ko", "depends=\0")], "");
        let index = ModuleIndex::open(tree.path(), "6.9.0-test").unwrap();
        let err = index.resolve(&["virtio-blck"], SoftDeps::Ignore).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown kernel module \"virtio_blck\" for kernel 6.9.0-test; did you mean virtio_blk?"
        );
    }

    #[test]
    fn missing_dependency_and_cycles_are_errors() {
        let tree = fake_tree(
            &[
                ("kernel/a.ko", "depends=b\0"),
                ("kernel/b.ko", "depends=a\0"),
                ("kernel/c.ko", "depends=gone\0"),
            ],
            "",
        );
        let index = ModuleIndex::open(tree.path(), "6.9.0-test").unwrap();
        let err = index.resolve(&["a"], SoftDeps::Ignore).unwrap_err();
        assert_eq!(
            err.to_string(),
            "kernel modules depend on each other in a cycle: a -> b -> a"
        );
        let err = index.resolve(&["c"], SoftDeps::Ignore).unwrap_err();
        assert!(
            matches!(err, KmodError::MissingDependency { ref name, .. } if name == "gone"),
            "{err}"
        );
    }

    #[test]
    fn modules_dep_lists_each_closure_in_load_order() {
        // Shaped like the bridge netfilter stack: br_netfilter needs bridge, which needs stp and llc.
        let tree = fake_tree(
            &[
                ("kernel/net/bridge/br_netfilter.ko.xz", "depends=bridge\0"),
                ("kernel/net/bridge/bridge.ko.xz", "depends=stp,llc\0"),
                ("kernel/net/802/stp.ko.zst", "depends=llc\0"),
                ("kernel/net/llc/llc.ko", "depends=\0"),
                ("kernel/fs/overlayfs/overlay.ko.xz", "depends=\0"),
                (
                    "kernel/net/netfilter/nf_conntrack.ko",
                    "depends=nf_defrag_ipv4,libcrc32c\0softdep=pre: nf-defrag-ipv6 post: absent\0",
                ),
                ("kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko", "depends=\0"),
                ("kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko", "depends=\0"),
                ("kernel/lib/libcrc32c.ko", "depends=\0"),
                ("kernel/unused/unused.ko", "depends=\0"),
            ],
            "kernel/drivers/net/veth.ko\n",
        );
        let index = ModuleIndex::open(tree.path(), "6.9.0-test").unwrap();
        let modules = index
            .resolve(
                &["br_netfilter", "overlay", "nf_conntrack", "veth"],
                SoftDeps::Pre,
            )
            .unwrap();
        let files = index.dependency_files(&modules).unwrap();
        crate::golden::check(
            "modules-dep.txt",
            &format!(
                "# modules.dep\n{}# modules.softdep\n{}",
                files.modules_dep, files.modules_softdep
            ),
        );
        // Same input, same bytes.
        assert_eq!(index.dependency_files(&modules).unwrap(), files);
        assert!(index.builtin_list().is_some());
    }

    #[test]
    fn missing_tree_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let err = ModuleIndex::open(tmp.path(), "1.2.3").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("no kernel modules for 1.2.3: expected a directory")
        );
    }

    /// The `lib/modules` directory and release of the minimal profile's kernel, fetched and unpacked as a
    /// build does.
    fn minimal_profile_kernel() -> (PathBuf, String) {
        let lock =
            crate::lock::Lock::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles/minimal.lock"))
                .unwrap();
        let dir = crate::fetch::Fetcher::from_env(false)
            .unwrap()
            .unpacked(&lock.pinned("kernel").unwrap())
            .unwrap();
        let modules = ["lib/modules", "usr/lib/modules"]
            .iter()
            .map(|d| dir.join(d))
            .find(|d| d.is_dir())
            .unwrap();
        let kver = std::fs::read_dir(&modules)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .file_name()
            .to_string_lossy()
            .into_owned();
        (modules, kver)
    }

    #[test]
    fn resolves_virtio_storage_on_the_debian_kernel() {
        let (modules, kver) = minimal_profile_kernel();
        let index = ModuleIndex::open(&modules, &kver).unwrap();
        let resolved = index
            .resolve(
                &["virtio_blk", "erofs", "efivarfs", "virtio_pci"],
                SoftDeps::Ignore,
            )
            .unwrap();
        let order = names(&resolved);
        // Every module comes after the modules its .modinfo depends on (virtio_blk on virtio and
        // virtio_ring, erofs on libcrc32c, …), whatever order the kernel's own packaging suggests.
        for (i, name) in order.iter().enumerate() {
            for dep in index.modinfo(name).unwrap().depends {
                let at = order.iter().position(|m| *m == dep);
                assert!(
                    at.is_some_and(|d| d < i),
                    "{dep} (needed by {name}) not before it: {order:?}"
                );
            }
        }
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            [
                "efivarfs",
                "erofs",
                "libcrc32c",
                "virtio",
                "virtio_blk",
                "virtio_pci",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_ring"
            ],
            "{order:?}"
        );
        let err = index.resolve(&["virtio_bkl"], SoftDeps::Ignore).unwrap_err();
        assert!(err.to_string().contains("did you mean virtio_blk"), "{err}");
    }

    /// Prints how long indexing names and reading every module's `.modinfo` take (run with `--ignored`).
    #[test]
    #[ignore = "timing measurement"]
    fn measure_indexing_time() {
        let (dir, kver) = match std::env::var("INGOT_KMOD_TREE") {
            Ok(tree) => {
                let tree = PathBuf::from(tree);
                let kver = tree.file_name().unwrap().to_str().unwrap().to_owned();
                (tree.parent().unwrap().to_owned(), kver)
            }
            Err(_) => minimal_profile_kernel(),
        };
        let start = std::time::Instant::now();
        let index = ModuleIndex::open(&dir, &kver).unwrap();
        let names_only = start.elapsed();
        let start = std::time::Instant::now();
        let all: Vec<_> = index.files.keys().cloned().collect();
        for name in &all {
            index.modinfo(name).unwrap();
        }
        let every_modinfo = start.elapsed();
        let start = std::time::Instant::now();
        index
            .resolve(&["virtio_blk", "erofs", "efivarfs", "virtio_pci"], SoftDeps::Pre)
            .unwrap();
        let closure = start.elapsed();
        eprintln!(
            "{} modules: names {names_only:?}, every .modinfo {every_modinfo:?}, closure of 4 {closure:?}",
            all.len()
        );
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    proptest! {
        /// `.modinfo` comes from a package: arbitrary bytes must parse to something, never panic.
        #[test]
        fn arbitrary_modinfo_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = super::parse_modinfo(&bytes);
        }
    }
}
