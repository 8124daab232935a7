//! Profiles: what goes into an image, declared in TOML.
//!
//! Loading happens in two stages (raw → validated): [`raw`] mirrors the file with every field optional and
//! rejects unknown keys; after `extends` chains are merged, [`validate`] turns the result into a [`Profile`]
//! whose fields cannot hold bad values (sizes are MiB-aligned bytes, paths are absolute and normalised,
//! sources are exactly one kind).
//!
//! Merge rules for `extends = "base"` (the child is applied on top of the base, recursively):
//! - scalars (`image.version`, `partitions.root`, a component's `package`, `node.hostname` …): the child's
//!   value wins;
//! - string lists (`kernel.cmdline`, `kernel.initrd_modules`, `kernel.root_modules`, `node.modules`,
//!   `time.servers`): the child's entries are appended to the base's; an explicit empty list (`cmdline = []`)
//!   resets the list to empty first;
//! - `node.sysctls` merges key by key, the child's value winning; `sysctls = {}` resets it;
//! - `[[components]]` and `[[images]]` are keyed by `name`, `[[files]]` by `path`, `[[services]]` by `name` and
//!   `[[network.interfaces]]` by `match`: an entry with a key the base has replaces it in place (whole),
//!   others are appended; an explicit empty list (`components = []` …) drops the base's entries;
//! - the `[archive]` table merges field by field (its `components` list replaces rather than appends,
//!   since it names one archive's sections);
//! - `[base]` is replaced whole by the child's; `kernel.from` counts as the kernel's source.
//!
//! The init configuration tables (`[node]`, `[network]`, `[time]`, `[[services]]`) validate into
//! [`ingot_spec::config::InitConfig`], which the build writes to `/etc/ingot/init.json`; their values carry
//! the file and line they were written on, so errors point there even after merging.

mod images;
mod init_config;
mod locate;
mod merge;
pub mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

pub use images::{ContainerImage, ImageSource, archive_file_name};
pub use init_config::{Executable, parse_cidr, parse_duration_ms, parse_mac};
pub use raw::Origin;
pub use validate::{
    AptBase, Archive, Bootloader, Component, FileContent, FileMap, ImageFile, Kernel, PartitionSizes,
    Profile, Source, parse_size,
};

/// Longest `extends` chain accepted; deeper chains are almost certainly a mistake.
const MAX_EXTENDS_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("cannot read profile {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("profile {name:?} not found (looked for {tried})", tried = .tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound { name: String, tried: Vec<PathBuf> },
    #[error("{path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error("{path}: `extends` forms a cycle: {chain}")]
    ExtendsCycle { path: PathBuf, chain: String },
    #[error("{path}: `extends` chain is deeper than {MAX_EXTENDS_DEPTH} profiles")]
    ExtendsTooDeep { path: PathBuf },
    #[error("{path}: field `{field}`: {message}")]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
    },
    /// A value that knows where it was written: the file may be a base profile of the one loaded.
    #[error("{path}:{line}: field `{field}`: {message}")]
    InvalidAt {
        path: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
}

/// Where a `--profile` argument points: `NAME` means `profiles/NAME.toml` under `profiles_dir`; anything with
/// a `/` or ending in `.toml` is a path.
pub fn locate(arg: &str, profiles_dir: &Path) -> Result<PathBuf, ProfileError> {
    let as_path = Path::new(arg);
    let tried = if arg.contains('/') || arg.ends_with(".toml") {
        vec![as_path.to_path_buf()]
    } else {
        vec![profiles_dir.join(format!("{arg}.toml"))]
    };
    tried
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .ok_or_else(|| ProfileError::NotFound {
            name: arg.to_string(),
            tried,
        })
}

/// Loads, merges and validates the profile at `path`.
pub fn load(path: &Path) -> Result<Profile, ProfileError> {
    let mut chain: Vec<PathBuf> = Vec::new();
    let merged = load_merged(path, &mut chain)?;
    validate::validate(path, merged)
}

fn load_merged(path: &Path, chain: &mut Vec<PathBuf>) -> Result<raw::RawProfile, ProfileError> {
    let canonical = path.canonicalize().map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if chain.contains(&canonical) {
        let names: Vec<String> = chain
            .iter()
            .chain([&canonical])
            .map(|p| p.display().to_string())
            .collect();
        return Err(ProfileError::ExtendsCycle {
            path: path.to_path_buf(),
            chain: names.join(" → "),
        });
    }
    if chain.len() >= MAX_EXTENDS_DEPTH {
        return Err(ProfileError::ExtendsTooDeep {
            path: path.to_path_buf(),
        });
    }
    chain.push(canonical);
    let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut child = parse_raw(path, &text)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let Some(base_name) = child.extends.take() else {
        return Ok(child);
    };
    let base_path = if base_name.contains('/') || base_name.ends_with(".toml") {
        dir.join(&base_name)
    } else {
        dir.join(format!("{base_name}.toml"))
    };
    if !base_path.is_file() {
        return Err(ProfileError::Invalid {
            path: path.to_path_buf(),
            field: "extends".into(),
            message: format!("base profile {} does not exist", base_path.display()),
        });
    }
    let base = load_merged(&base_path, chain)?;
    Ok(merge::merge(base, child))
}

/// One profile file's text, parsed, with its relative paths rebased onto `path`'s directory and its values
/// located in `path`.
fn parse_raw(path: &Path, text: &str) -> Result<raw::RawProfile, ProfileError> {
    let mut raw: raw::RawProfile = toml::from_str(text).map_err(|e| ProfileError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    // Relative paths in a profile are relative to the file that wrote them, so rebase them before merging;
    // likewise, values remember their file and line before merging mixes files.
    let dir = path.parent().unwrap_or(Path::new("."));
    merge::rebase_paths(&mut raw, dir).map_err(|(field, message)| ProfileError::Invalid {
        path: path.to_path_buf(),
        field,
        message,
    })?;
    locate::locate(&mut raw, path, text);
    Ok(raw)
}

/// Parses and validates a profile from `text`, as if read from `path` (relative paths resolve against its
/// directory; nothing is read). A profile that `extends` another is refused: the base is another file,
/// which [`load`] reads.
pub fn parse_str(path: &Path, text: &str) -> Result<Profile, ProfileError> {
    let raw = parse_raw(path, text)?;
    if raw.extends.is_some() {
        return Err(ProfileError::Invalid {
            path: path.to_path_buf(),
            field: "extends".into(),
            message: "a profile parsed from text cannot extend another; load it from its file".into(),
        });
    }
    validate::validate(path, raw)
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Base => write!(f, "the apt base"),
            Source::Package(p) => write!(f, "package {p}"),
            Source::Url { url, .. } => write!(f, "{url}"),
            Source::Path(p) => write!(f, "{}", p.display()),
        }
    }
}

#[cfg(test)]
mod init_tests;
#[cfg(test)]
mod tests;
