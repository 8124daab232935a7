//! ELF dependency check for a staged root tree: every program's interpreter and shared libraries must be in the
//! tree itself.
//!
//! [`check_tree`] walks the tree (without following symlinks), and for every regular file that starts with the ELF
//! magic and is an executable or shared object (`ET_EXEC`, `ET_DYN`) reads the `PT_INTERP` path and the
//! `DT_NEEDED`, `DT_RPATH` and `DT_RUNPATH` entries of its dynamic segment (found through the program headers, as
//! the dynamic loader does, so stripped files work). Then it checks, inside the tree:
//!
//! - the interpreter path exists and is a regular file;
//! - every needed library is found in the file's `DT_RUNPATH` (or `DT_RPATH` when there is no `DT_RUNPATH`), with
//!   `$ORIGIN` standing for the file's directory, or in the default library directories [`LIBRARY_DIRS`]
//!   (a name containing `/` is taken as a path, with `$ORIGIN` expanded).
//!
//! Paths are resolved against the tree root, never the host: symlinks are followed inside the tree, an absolute
//! symlink target starts again at the tree root, and `..` stops at it. All problems are collected and returned
//! together as [`Missing`] entries, sorted by file.
//!
//! Skipped: relocatable objects and kernel modules (`*.ko`), core files, detached debug info (its `.dynamic` is
//! `SHT_NOBITS`). Statically linked programs have no
//! interpreter and no `DT_NEEDED`, so they pass.
//!
//! Limits: a library is searched by name only: its class and machine are not compared with the program's. Each file
//! is checked on its own, with its own search path, so a library that relies on the executable's `DT_RPATH` (which
//! glibc applies to the whole dependency tree) or on a library its loader has already loaded (the JDK's
//! `libjava.so` needs `libjvm.so`, which `java` loads from its own run path) is reported. Files for other machines
//! are checked too (a 32-bit program needs `/lib/ld-linux.so.2`). `/etc/ld.so.conf` is not read; `$LIB` and `$PLATFORM` are not
//! expanded (such entries are skipped). `LD_LIBRARY_PATH` does not exist at build time.

use std::fmt;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use object::Endianness;
use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader, SectionHeader};
use thiserror::Error;

/// Directories searched for every needed library, after the file's own run path.
pub const LIBRARY_DIRS: [&str; 6] = [
    "/lib",
    "/usr/lib",
    "/lib64",
    "/usr/lib64",
    "/lib/x86_64-linux-gnu",
    "/usr/lib/x86_64-linux-gnu",
];

/// How many symlinks one path resolution may follow (the kernel's limit).
const MAX_SYMLINKS: usize = 40;

/// What a file needs but the tree lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MissingKind {
    /// The `PT_INTERP` program interpreter.
    Interpreter,
    /// A `DT_NEEDED` shared library.
    Library,
}

/// One unresolved dependency.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Missing {
    /// The file, as an absolute path inside the tree (`/usr/bin/containerd`).
    pub file: PathBuf,
    pub kind: MissingKind,
    /// The interpreter path or library name as recorded in the file.
    pub name: String,
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            MissingKind::Interpreter => write!(
                f,
                "{}: interpreter {} is not in the image",
                self.file.display(),
                self.name
            ),
            MissingKind::Library => write!(
                f,
                "{}: needed library {} is not in the image's library paths",
                self.file.display(),
                self.name
            ),
        }
    }
}

/// All unresolved dependencies of a tree, displayed one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissingList(pub Vec<Missing>);

impl fmt::Display for MissingList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} unresolved ELF dependenc{}; add the components that provide them:",
            self.0.len(),
            if self.0.len() == 1 { "y" } else { "ies" }
        )?;
        for missing in &self.0 {
            write!(f, "\n  {missing}")?;
        }
        Ok(())
    }
}

/// Errors from checking a tree.
#[derive(Debug, Error)]
pub enum ElfCheckError {
    /// Reading a file or directory failed.
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file has the ELF magic but its headers are broken.
    #[error("{file} starts with the ELF magic but is not a valid ELF file: {reason}")]
    Malformed { file: PathBuf, reason: String },
    /// Dependencies are missing.
    #[error("{0}")]
    Unresolved(MissingList),
}

/// The dependency information of one ELF file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ElfDeps {
    /// `PT_INTERP`, if any.
    pub interpreter: Option<String>,
    /// `DT_NEEDED`, in file order.
    pub needed: Vec<String>,
    /// `DT_RPATH` entries (split at `:`).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` entries (split at `:`).
    pub runpath: Vec<String>,
}

/// Reads interpreter and dynamic dependencies from ELF bytes. `Ok(None)` for files that are not executables or
/// shared objects.
pub fn read_deps(data: &[u8]) -> Result<Option<ElfDeps>, String> {
    match data.get(4) {
        Some(1) => deps::<elf::FileHeader32<Endianness>>(data),
        Some(2) => deps::<elf::FileHeader64<Endianness>>(data),
        Some(class) => Err(format!("unknown ELF class {class} at byte offset 4")),
        None => Err("file ends inside the ELF identification".to_owned()),
    }
}

fn deps<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<Option<ElfDeps>, String> {
    let header = Elf::parse(data).map_err(|e| e.to_string())?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let file_type = header.e_type(endian);
    if file_type != elf::ET_EXEC && file_type != elf::ET_DYN {
        return Ok(None);
    }
    // Detached debug info (`/usr/lib/debug/**`, `*.debug`) keeps the program headers but not the data they point
    // at: its `.dynamic` is SHT_NOBITS.
    if let Ok(sections) = header.sections(endian, data)
        && sections
            .section_by_name(endian, b".dynamic")
            .is_some_and(|(_, section)| section.sh_type(endian) == elf::SHT_NOBITS)
    {
        return Ok(None);
    }
    let segments = header.program_headers(endian, data).map_err(|e| e.to_string())?;
    let mut result = ElfDeps::default();
    let mut dynamic = None;
    for segment in segments {
        if let Some(interp) = segment.interpreter(endian, data).map_err(|e| e.to_string())? {
            result.interpreter = Some(String::from_utf8_lossy(interp).into_owned());
        }
        if let Some(entries) = segment.dynamic(endian, data).map_err(|e| e.to_string())? {
            dynamic = Some(entries);
        }
    }
    let Some(entries) = dynamic else {
        return Ok(Some(result));
    };
    let mut strtab = None;
    let mut strsz = None;
    let mut strings = Vec::new();
    for entry in entries {
        let tag = entry.tag(endian);
        match tag {
            elf::DT_NULL => break,
            elf::DT_STRTAB => strtab = Some(entry.val(endian)),
            elf::DT_STRSZ => strsz = Some(entry.val(endian)),
            elf::DT_NEEDED | elf::DT_RPATH | elf::DT_RUNPATH => strings.push((tag, entry.val(endian))),
            _ => {}
        }
    }
    if strings.is_empty() {
        return Ok(Some(result));
    }
    let (Some(address), Some(size)) = (strtab, strsz) else {
        return Err("dynamic segment has DT_NEEDED or a run path but no DT_STRTAB/DT_STRSZ".to_owned());
    };
    let table = segments
        .iter()
        .filter(|s| s.p_type(endian) == elf::PT_LOAD)
        .find_map(|s| s.data_range(endian, data, address, size).ok().flatten())
        .ok_or_else(|| {
            format!("dynamic string table at address {address:#x} ({size} bytes) is not in a loaded segment")
        })?;
    for (tag, offset) in strings {
        let text = usize::try_from(offset)
            .ok()
            .and_then(|start| table.get(start..))
            .and_then(|rest| rest.iter().position(|&b| b == 0).map(|end| &rest[..end]))
            .ok_or_else(|| {
                format!("dynamic string at offset {offset:#x} is outside the {size}-byte string table")
            })?;
        let text = String::from_utf8_lossy(text).into_owned();
        match tag {
            elf::DT_NEEDED => result.needed.push(text),
            elf::DT_RPATH => result.rpath.extend(text.split(':').map(str::to_owned)),
            _ => result.runpath.extend(text.split(':').map(str::to_owned)),
        }
    }
    Ok(Some(result))
}

/// Resolves an absolute in-tree path to a host path below `root`, following symlinks inside the tree. `None` if
/// the path does not exist in the tree or is not a regular file.
pub fn resolve_in_tree(root: &Path, path: &Path) -> Option<PathBuf> {
    let mut pending: Vec<PathBuf> = components_reversed(path);
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(component) = pending.pop() {
        if component.as_os_str() == ".." {
            // `..` of the tree root is the tree root, as `/..` is `/`.
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&component);
        let host = root.join(&candidate);
        let metadata = std::fs::symlink_metadata(&host).ok()?;
        if metadata.file_type().is_symlink() {
            links += 1;
            if links > MAX_SYMLINKS {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            if target.is_absolute() {
                resolved = PathBuf::new();
            }
            pending.extend(components_reversed(&target));
        } else if metadata.is_dir() {
            resolved = candidate;
        } else if pending.is_empty() && metadata.is_file() {
            return Some(host);
        } else {
            return None;
        }
    }
    None
}

/// The normal components of a path, last first, with `..` kept and `.` and `/` dropped.
fn components_reversed(path: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(name) => Some(PathBuf::from(name)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    out.reverse();
    out
}

/// Checks every ELF file below `root`; returns the missing dependencies, sorted (empty when all resolve).
pub fn check_tree(root: &Path) -> Result<Vec<Missing>, ElfCheckError> {
    let mut files = Vec::new();
    walk(root, Path::new("/"), &mut files)?;
    files.sort();
    let mut missing = Vec::new();
    for file in files {
        let host = root.join(file.strip_prefix("/").unwrap_or(&file));
        let Some(data) = read_if_elf(&host)? else {
            continue;
        };
        let deps = read_deps(&data).map_err(|reason| ElfCheckError::Malformed {
            file: file.clone(),
            reason,
        })?;
        let Some(deps) = deps else {
            continue;
        };
        check_file(root, &file, &deps, &mut missing);
    }
    missing.sort();
    missing.dedup();
    Ok(missing)
}

/// Like [`check_tree`], but missing dependencies are an [`ElfCheckError::Unresolved`] error.
pub fn require_resolved(root: &Path) -> Result<(), ElfCheckError> {
    let missing = check_tree(root)?;
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ElfCheckError::Unresolved(MissingList(missing)))
    }
}

fn check_file(root: &Path, file: &Path, deps: &ElfDeps, missing: &mut Vec<Missing>) {
    if let Some(interpreter) = &deps.interpreter
        && resolve_in_tree(root, Path::new(interpreter)).is_none()
    {
        missing.push(Missing {
            file: file.to_owned(),
            kind: MissingKind::Interpreter,
            name: interpreter.clone(),
        });
    }
    let origin = file.parent().unwrap_or(Path::new("/")).to_string_lossy();
    let expand = |entry: &str| entry.replace("${ORIGIN}", &origin).replace("$ORIGIN", &origin);
    let run_path = if deps.runpath.is_empty() {
        &deps.rpath
    } else {
        &deps.runpath
    };
    let mut dirs: Vec<PathBuf> = run_path
        .iter()
        .map(|entry| expand(entry))
        // Other dynamic string tokens, and relative entries (relative to the working directory), cannot be
        // resolved at build time.
        .filter(|entry| !entry.contains('$') && entry.starts_with('/'))
        .map(PathBuf::from)
        .collect();
    dirs.extend(LIBRARY_DIRS.iter().map(PathBuf::from));
    for library in &deps.needed {
        let found = if library.contains('/') {
            // A name with a slash is a path; `$ORIGIN` is expanded in it too.
            resolve_in_tree(root, &Path::new("/").join(expand(library))).is_some()
        } else {
            dirs.iter()
                .any(|dir| resolve_in_tree(root, &dir.join(library)).is_some())
        };
        if !found {
            missing.push(Missing {
                file: file.to_owned(),
                kind: MissingKind::Library,
                name: library.clone(),
            });
        }
    }
}

/// Collects the in-tree paths of regular files, skipping kernel modules.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ElfCheckError> {
    let host = root.join(dir.strip_prefix("/").unwrap_or(dir));
    let read_error = |source| ElfCheckError::Read {
        path: host.clone(),
        source,
    };
    for entry in std::fs::read_dir(&host).map_err(read_error)? {
        let entry = entry.map_err(read_error)?;
        let file_type = entry.file_type().map_err(read_error)?;
        let name = entry.file_name();
        let path = dir.join(&name);
        if file_type.is_dir() {
            walk(root, &path, out)?;
        } else if file_type.is_file() && !name.to_string_lossy().ends_with(".ko") {
            out.push(path);
        }
    }
    Ok(())
}

/// The whole file if it starts with the ELF magic.
fn read_if_elf(path: &Path) -> Result<Option<Vec<u8>>, ElfCheckError> {
    let read_error = |source| ElfCheckError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match file.read(&mut magic[got..]).map_err(read_error)? {
            0 => return Ok(None),
            n => got += n,
        }
    }
    if &magic != b"\x7fELF" {
        return Ok(None);
    }
    let mut data = magic.to_vec();
    file.read_to_end(&mut data).map_err(read_error)?;
    Ok(Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn copy_into(root: &Path, host: &str, in_tree: &str) {
        let dest = root.join(in_tree.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(host, dest).unwrap();
    }

    /// [`true_tree`], or `None` after skipping `test` on a host where it cannot be made.
    fn true_tree_or_skip(test: &str) -> Option<tempfile::TempDir> {
        let tree = true_tree();
        if tree.is_none() {
            ingot_testkit::skip(
                test,
                "this host's /bin/true is not a dynamically linked glibc ELF with Debian's library layout \
                 (run the tests on Debian or Ubuntu, x86-64)",
            );
        }
        tree
    }

    /// A tree with `/bin/true` from the host and its libraries, laid out like Debian bookworm (merged /usr, with
    /// `/lib64` and `/lib` as absolute and relative symlinks).
    fn true_tree() -> Option<tempfile::TempDir> {
        let host_true = std::fs::canonicalize("/bin/true").ok()?;
        let deps = read_deps(&std::fs::read(&host_true).ok()?).ok()??;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("usr/lib/x86_64-linux-gnu")).unwrap();
        std::fs::create_dir_all(root.join("usr/lib64")).unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/usr/lib64", root.join("lib64")).unwrap();
        symlink("usr/bin", root.join("bin")).unwrap();
        copy_into(root, host_true.to_str()?, "/usr/bin/true");
        let interpreter = deps.interpreter?;
        let real_interp = std::fs::canonicalize(&interpreter).ok()?;
        let interp_name = real_interp.file_name()?.to_str()?.to_owned();
        copy_into(
            root,
            real_interp.to_str()?,
            &format!("/usr/lib/x86_64-linux-gnu/{interp_name}"),
        );
        // Debian's layout: /lib64/ld-linux-x86-64.so.2 -> /lib/x86_64-linux-gnu/ld-linux-x86-64.so.2, created
        // through the real directory so nothing is written through a link that points at the host.
        let link_name = Path::new(&interpreter).file_name()?;
        if interpreter != format!("/lib64/{}", link_name.to_str()?) {
            return None;
        }
        symlink(
            format!("/lib/x86_64-linux-gnu/{interp_name}"),
            root.join("usr/lib64").join(link_name),
        )
        .unwrap();
        for library in deps.needed {
            let host = LIBRARY_DIRS
                .iter()
                .map(|dir| Path::new(dir).join(&library))
                .find(|p| p.exists())?;
            copy_into(
                root,
                std::fs::canonicalize(host).ok()?.to_str()?,
                &format!("/usr/lib/x86_64-linux-gnu/{library}"),
            );
        }
        Some(tmp)
    }

    #[test]
    fn host_true_with_its_libraries_resolves() {
        let Some(tree) = true_tree_or_skip("host_true_with_its_libraries_resolves") else {
            return;
        };
        let root = tree.path();
        assert_eq!(check_tree(root).unwrap(), vec![]);
        require_resolved(root).unwrap();

        std::fs::remove_file(root.join("usr/lib/x86_64-linux-gnu/libc.so.6")).unwrap();
        let missing = check_tree(root).unwrap();
        assert_eq!(
            missing,
            vec![Missing {
                file: PathBuf::from("/usr/bin/true"),
                kind: MissingKind::Library,
                name: "libc.so.6".to_owned(),
            }]
        );
        let err = require_resolved(root).unwrap_err();
        assert_eq!(
            err.to_string(),
            "1 unresolved ELF dependency; add the components that provide them:\n  \
             /usr/bin/true: needed library libc.so.6 is not in the image's library paths"
        );
    }

    #[test]
    fn missing_interpreter_is_reported() {
        let Some(tree) = true_tree_or_skip("missing_interpreter_is_reported") else {
            return;
        };
        let root = tree.path();
        std::fs::remove_dir_all(root.join("usr/lib64")).unwrap();
        let missing = check_tree(root).unwrap();
        // glibc's libc.so.6 is executable too and names the interpreter as well.
        let files: Vec<_> = missing.iter().map(|m| m.file.to_str().unwrap()).collect();
        assert_eq!(files, ["/usr/bin/true", "/usr/lib/x86_64-linux-gnu/libc.so.6"]);
        for m in &missing {
            assert_eq!(m.kind, MissingKind::Interpreter);
            assert_eq!(m.name, "/lib64/ld-linux-x86-64.so.2");
        }
    }

    #[test]
    fn absolute_symlinks_stay_inside_the_tree() {
        let Some(tree) = true_tree_or_skip("absolute_symlinks_stay_inside_the_tree") else {
            return;
        };
        let root = tree.path();
        // An absolute link to the host's libc path must resolve in the tree, where it does not exist.
        let lib = root.join("usr/lib/x86_64-linux-gnu");
        std::fs::rename(lib.join("libc.so.6"), root.join("libc-real.so")).unwrap();
        symlink("/nowhere/libc.so.6", lib.join("libc.so.6")).unwrap();
        std::fs::create_dir_all(root.join("nowhere")).unwrap();
        assert_eq!(check_tree(root).unwrap().len(), 1);
        symlink("../libc-real.so", root.join("nowhere/libc.so.6")).unwrap();
        assert_eq!(check_tree(root).unwrap(), vec![]);
    }

    #[test]
    fn static_binary_and_kernel_module_are_fine() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let static_busybox = ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|busybox| {
            std::fs::read(busybox).is_ok_and(|data| {
                read_deps(&data)
                    .unwrap()
                    .is_some_and(|d| d.interpreter.is_none() && d.needed.is_empty())
            })
        });
        match static_busybox {
            Some(busybox) => copy_into(root, busybox, "/bin/busybox"),
            None => ingot_testkit::skip(
                "static_binary_and_kernel_module_are_fine",
                "the static-binary case (the rest ran): no statically linked busybox at /bin/busybox \
                 (apt-get install busybox-static)",
            ),
        }
        // A file named like a kernel module with broken ELF contents is not looked at.
        std::fs::create_dir_all(root.join("lib/modules")).unwrap();
        std::fs::write(root.join("lib/modules/x.ko"), b"\x7fELF broken").unwrap();
        std::fs::write(root.join("notes.txt"), b"not an ELF").unwrap();
        assert_eq!(check_tree(root).unwrap(), vec![]);

        std::fs::write(root.join("broken"), b"\x7fELF\x02\x01").unwrap();
        let err = check_tree(root).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/broken starts with the ELF magic but is not a valid ELF file"),
            "{err}"
        );
    }

    #[test]
    fn origin_run_path_is_relative_to_the_file() {
        let Some(tree) = true_tree_or_skip("origin_run_path_is_relative_to_the_file") else {
            return;
        };
        let root = tree.path();
        let deps = ElfDeps {
            interpreter: None,
            needed: vec!["libfoo.so.1".to_owned()],
            rpath: vec![],
            runpath: vec!["$ORIGIN/../lib/foo".to_owned()],
        };
        let mut missing = Vec::new();
        check_file(root, Path::new("/opt/app/bin/app"), &deps, &mut missing);
        assert_eq!(missing.len(), 1);
        std::fs::create_dir_all(root.join("opt/app/bin")).unwrap();
        std::fs::create_dir_all(root.join("opt/app/lib/foo")).unwrap();
        std::fs::write(root.join("opt/app/lib/foo/libfoo.so.1"), b"").unwrap();
        missing.clear();
        check_file(root, Path::new("/opt/app/bin/app"), &deps, &mut missing);
        assert_eq!(missing, vec![]);
        // glibc expands $ORIGIN in a DT_NEEDED path as well (Python's bundled builds use it).
        let by_path = ElfDeps {
            needed: vec!["$ORIGIN/../lib/foo/libfoo.so.1".to_owned()],
            runpath: vec![],
            ..deps
        };
        check_file(root, Path::new("/opt/app/bin/app"), &by_path, &mut missing);
        assert_eq!(missing, vec![]);
    }

    #[test]
    fn symlink_loops_do_not_hang() {
        let tmp = tempfile::tempdir().unwrap();
        symlink("b", tmp.path().join("a")).unwrap();
        symlink("/a", tmp.path().join("b")).unwrap();
        assert_eq!(resolve_in_tree(tmp.path(), Path::new("/a")), None);
        assert_eq!(resolve_in_tree(tmp.path(), Path::new("/../../etc/passwd")), None);
    }
}

#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    proptest! {
        /// Files in a component are untrusted: any bytes, and any mutation of a real ELF, give an answer or an
        /// error, never a panic.
        #[test]
        fn arbitrary_and_mutated_elf_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..16),
        ) {
            let _ = super::read_deps(&bytes);
            let mut real = std::fs::read("/bin/true").unwrap_or_else(|_| b"\x7fELF".to_vec());
            real.truncate(64 * 1024);
            for (at, v) in flips {
                let i = at % real.len();
                real[i] ^= v;
            }
            let _ = super::read_deps(&real);
        }
    }
}
