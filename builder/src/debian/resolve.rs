//! Resolving package names to pinned pool URLs: what `ingot lock` does for Debian components.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use super::closure::{self, ClosureError, ClosureRoot, Present, Pulled};
use super::deb822::Deb822Error;
use super::inrelease::{self, InReleaseError, IndexFile, Keyring, Release};
use super::packages::{EntryError, PackageEntry, PackagesIndex, depends_names};
use crate::fetch::{Compression, FetchError, Fetcher, Pinned};

/// Which archive to resolve against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveSpec {
    /// Archive root, e.g. `https://deb.debian.org/debian` (no trailing slash needed).
    pub url: String,
    /// Suite or codename, e.g. `bookworm`.
    pub suite: String,
    /// Archive components to search, e.g. `["main"]`.
    pub components: Vec<String>,
    /// Debian architecture, e.g. `amd64`.
    pub arch: String,
    /// OpenPGP keyring that must have signed `InRelease`.
    pub keyring: PathBuf,
}

/// One package the profile wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageRequest {
    /// The profile's component name (`kernel`).
    pub component: String,
    /// The Debian package name (`linux-image-cloud-amd64`).
    pub package: String,
    /// Follow the first `Depends:` entry with this prefix and pin that package instead (a
    /// metapackage such as `linux-image-cloud-amd64` → `linux-image-6.1.0-NN-cloud-amd64`).
    pub follow_depends_prefix: Option<String>,
    /// Also pin the package's `Pre-Depends` + `Depends` closure (see [`super::closure`]).
    pub depends: bool,
    /// Packages the closure must not pull (only with `depends`).
    pub exclude: Vec<String>,
}

/// A request resolved to one `.deb`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The profile's component name.
    pub component: String,
    /// The package that is pinned.
    pub package: String,
    /// The package that was asked for, when a dependency was followed.
    pub requested: Option<String>,
    /// For a package pulled in as a dependency: the component whose closure pulled it (the
    /// `component` field is then the package name).
    pub pulled_by: Option<String>,
    /// The pinned package's version.
    pub version: String,
    /// `<archive url>/<Filename>` (the canonical URL; mirrors apply when fetching).
    pub url: String,
    /// sha256 of the `.deb`.
    pub sha256: crate::fetch::Sha256,
    /// Size of the `.deb` in bytes.
    pub size: u64,
}

impl Resolved {
    /// The pin to hand to the fetcher.
    pub fn pinned(&self) -> Pinned {
        Pinned {
            component: self.component.clone(),
            url: self.url.clone(),
            sha256: self.sha256,
        }
    }
}

/// Errors resolving packages against an archive.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The keyring or `InRelease` was rejected.
    #[error(transparent)]
    InRelease(#[from] InReleaseError),
    /// Downloading an archive file failed.
    #[error("cannot fetch the index of {suite}")]
    Fetch { suite: String, source: Box<FetchError> },
    /// `InRelease` lists no index for a component/architecture.
    #[error("{url} lists no {path}(.xz|.gz): check the archive's components and architecture")]
    MissingIndex { url: String, path: String },
    /// An index's size differs from what `InRelease` says.
    #[error("{url} is {actual} bytes, InRelease says {expected}")]
    IndexSize { url: String, expected: u64, actual: u64 },
    /// An index does not decompress or is not UTF-8.
    #[error("{url} does not decode")]
    IndexDecode { url: String, source: std::io::Error },
    /// An index does not parse.
    #[error("{url} does not parse")]
    IndexParse { url: String, source: Deb822Error },
    /// A package stanza lacks a field we need.
    #[error("in {suite}")]
    Entry { suite: String, source: EntryError },
    /// A dependency closure cannot be computed.
    #[error("in {suite}")]
    Closure { suite: String, source: ClosureError },
    /// The archive has no such suite.
    #[error("the archive has no suite {suite:?} ({url} does not exist): check the suite's name")]
    UnknownSuite { suite: String, url: String },
    /// No such package.
    #[error("component {component}: package {package} is not in {suite} ({components}) for {arch}")]
    NotFound {
        component: String,
        package: String,
        suite: String,
        components: String,
        arch: String,
    },
}

/// Fetches and verifies the archive's indices and resolves every request to the newest version.
///
/// Indices are cached by the sha256 `InRelease` gives them, so a second run downloads only
/// `InRelease` (a few hundred KiB) and parses the cached, already decompressed `Packages`.
pub fn resolve(
    fetcher: &Fetcher,
    archive: &ArchiveSpec,
    requests: &[PackageRequest],
) -> Result<Vec<Resolved>, ResolveError> {
    let started = Instant::now();
    let texts = index_texts(fetcher, archive)?;
    let index = build_index(&texts)?;
    let base = archive.url.trim_end_matches('/');

    let entry_err = |source| ResolveError::Entry {
        suite: archive.suite.clone(),
        source,
    };
    let not_found = |request: &PackageRequest, package: &str| ResolveError::NotFound {
        component: request.component.clone(),
        package: package.to_owned(),
        suite: archive.suite.clone(),
        components: archive.components.join(", "),
        arch: archive.arch.clone(),
    };
    let mut out = Vec::with_capacity(requests.len());
    let mut entries = Vec::with_capacity(requests.len());
    for request in requests {
        let asked = index
            .newest(&request.package)
            .map_err(entry_err)?
            .ok_or_else(|| not_found(request, &request.package))?;
        let followed = match &request.follow_depends_prefix {
            Some(prefix) => match depends_names(&asked.depends)
                .into_iter()
                .find(|name| name.starts_with(prefix.as_str()) && *name != asked.package)
            {
                Some(name) => Some(
                    index
                        .newest(name)
                        .map_err(entry_err)?
                        .ok_or_else(|| not_found(request, name))?,
                ),
                None => None,
            },
            None => None,
        };
        let (entry, requested): (PackageEntry, Option<String>) = match followed {
            Some(dep) => (dep, Some(asked.package)),
            None => (asked, None),
        };
        out.push(Resolved {
            component: request.component.clone(),
            package: entry.package.clone(),
            requested,
            pulled_by: None,
            version: entry.version.to_string(),
            url: format!("{base}/{}", entry.filename),
            sha256: entry.sha256,
            size: entry.size,
        });
        entries.push(entry);
    }
    let present: Vec<Present<'_>> = requests
        .iter()
        .zip(&entries)
        .map(|(r, entry)| Present {
            component: &r.component,
            entry,
        })
        .collect();
    let roots: Vec<ClosureRoot<'_>> = requests
        .iter()
        .zip(&entries)
        .filter(|(r, _)| r.depends)
        .map(|(r, entry)| ClosureRoot {
            component: &r.component,
            entry,
            exclude: &r.exclude,
        })
        .collect();
    let pulled = closure::closure(&index, &present, &roots).map_err(|source| ResolveError::Closure {
        suite: archive.suite.clone(),
        source,
    })?;
    out.extend(
        pulled
            .into_iter()
            .map(|Pulled { entry, pulled_by, .. }| Resolved {
                component: entry.package.clone(),
                url: format!("{base}/{}", entry.filename),
                package: entry.package,
                requested: None,
                pulled_by: Some(pulled_by),
                version: entry.version.to_string(),
                sha256: entry.sha256,
                size: entry.size,
            }),
    );
    if fetcher.reports_progress() {
        eprintln!(
            "resolved {} package(s) in {} ({} names) in {:.1}s",
            out.len(),
            archive.suite,
            index.len(),
            started.elapsed().as_secs_f32()
        );
    }
    Ok(out)
}

/// Fetches `InRelease`, verifies it with the archive's keyring, and returns each component's decompressed
/// `Packages` text with the URL it stands for.
fn index_texts(fetcher: &Fetcher, archive: &ArchiveSpec) -> Result<Vec<(String, String)>, ResolveError> {
    let keyring = Keyring::load(&archive.keyring)?;
    let base = archive.url.trim_end_matches('/');
    let dists = format!("{base}/dists/{}", archive.suite);
    let inrelease_url = format!("{dists}/InRelease");
    let bytes = fetcher
        .fetch_unpinned(&format!("{} InRelease", archive.suite), &inrelease_url)
        .map_err(|source| match source {
            FetchError::HttpStatus { status: 404, .. } => ResolveError::UnknownSuite {
                suite: archive.suite.clone(),
                url: inrelease_url.clone(),
            },
            source => ResolveError::Fetch {
                suite: archive.suite.clone(),
                source: Box::new(source),
            },
        })?;
    let text = inrelease::verify(&inrelease_url, &bytes, &keyring)?;
    let release = inrelease::parse_release(&inrelease_url, &text, &archive.suite)?;
    archive
        .components
        .iter()
        .map(|component| packages_text(fetcher, archive, &dists, &inrelease_url, &release, component))
        .collect()
}

fn build_index(texts: &[(String, String)]) -> Result<PackagesIndex<'_>, ResolveError> {
    let mut index = PackagesIndex::new();
    for (text, url) in texts {
        index.add(text).map_err(|source| ResolveError::IndexParse {
            url: url.clone(),
            source,
        })?;
    }
    Ok(index)
}

/// Resolves an apt base over `archive`'s suite and `extra_suites` (the newest version of a name in any of
/// them wins): the archive's `Essential: yes` packages (dpkg needs them to install anything) and
/// the profile's `packages`, each at its newest version, with their `Pre-Depends` + `Depends` closure (see
/// [`super::closure`]). The result is every package the root gets, sorted by name; `pulled_by` is `base`
/// for packages that came in as dependencies.
pub fn resolve_base(
    fetcher: &Fetcher,
    archive: &ArchiveSpec,
    extra_suites: &[String],
    packages: &[String],
) -> Result<Vec<Resolved>, ResolveError> {
    let started = Instant::now();
    let mut texts = index_texts(fetcher, archive)?;
    for suite in extra_suites {
        let spec = ArchiveSpec {
            suite: suite.clone(),
            ..archive.clone()
        };
        texts.extend(index_texts(fetcher, &spec)?);
    }
    let index = build_index(&texts)?;
    let base = archive.url.trim_end_matches('/');
    let entry_err = |source| ResolveError::Entry {
        suite: archive.suite.clone(),
        source,
    };
    let mut names: Vec<&str> = index.essential_names().map_err(entry_err)?;
    let essential = names.len();
    names.extend(packages.iter().map(String::as_str));
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(*n));
    let mut entries = Vec::with_capacity(names.len());
    for name in &names {
        let entry = index
            .newest(name)
            .map_err(entry_err)?
            .ok_or_else(|| ResolveError::NotFound {
                component: "base.apt.packages".to_owned(),
                package: (*name).to_owned(),
                suite: archive.suite.clone(),
                components: archive.components.join(", "),
                arch: archive.arch.clone(),
            })?;
        entries.push(entry);
    }
    let present: Vec<Present<'_>> = entries
        .iter()
        .map(|entry| Present {
            component: BASE,
            entry,
        })
        .collect();
    let roots: Vec<ClosureRoot<'_>> = entries
        .iter()
        .map(|entry| ClosureRoot {
            component: BASE,
            entry,
            exclude: &[],
        })
        .collect();
    let pulled = closure::closure(&index, &present, &roots).map_err(|source| ResolveError::Closure {
        suite: archive.suite.clone(),
        source,
    })?;
    let resolved = |entry: PackageEntry, pulled_by: Option<String>| Resolved {
        component: entry.package.clone(),
        url: format!("{base}/{}", entry.filename),
        package: entry.package,
        requested: None,
        pulled_by,
        version: entry.version.to_string(),
        sha256: entry.sha256,
        size: entry.size,
    };
    let mut out: Vec<Resolved> = entries.into_iter().map(|e| resolved(e, None)).collect();
    out.extend(
        pulled
            .into_iter()
            .map(|p| resolved(p.entry, Some(BASE.to_owned()))),
    );
    out.sort_by(|a, b| a.package.cmp(&b.package));
    if fetcher.reports_progress() {
        eprintln!(
            "resolved the apt base in {}: {} package(s) ({} essential, {} asked for, {} dependencies) in {:.1}s",
            archive.suite,
            out.len(),
            essential,
            packages.len(),
            out.iter().filter(|r| r.pulled_by.is_some()).count(),
            started.elapsed().as_secs_f32()
        );
    }
    Ok(out)
}

/// The name under which an apt base's packages appear in closure errors and the lock.
pub const BASE: &str = "base";

/// The decompressed `Packages` text of one component, and the URL it stands for (for messages).
fn packages_text(
    fetcher: &Fetcher,
    archive: &ArchiveSpec,
    dists: &str,
    inrelease_url: &str,
    release: &Release,
    component: &str,
) -> Result<(String, String), ResolveError> {
    let fetch_err = |source| ResolveError::Fetch {
        suite: archive.suite.clone(),
        source: Box::new(source),
    };
    let dir = format!("{component}/binary-{}", archive.arch);
    let plain_path = format!("{dir}/Packages");
    let plain = release.file(&plain_path);
    let plain_url = format!("{dists}/{plain_path}");
    let read_err = |url: &str, source| ResolveError::IndexDecode {
        url: url.to_owned(),
        source,
    };
    // Fast path: the decompressed index is already cached under the hash InRelease gives it.
    if let Some(blob) = plain.and_then(|f| fetcher.cache().blob(&f.sha256)) {
        let text = std::fs::read_to_string(&blob).map_err(|e| read_err(&plain_url, e))?;
        return Ok((text, plain_url));
    }
    let compressed = [".xz", ".gz", ""]
        .iter()
        .find_map(|ext| release.file(&format!("{plain_path}{ext}")))
        .ok_or_else(|| ResolveError::MissingIndex {
            url: inrelease_url.to_owned(),
            path: plain_path.clone(),
        })?;
    let blob = fetch_index(fetcher, release, dists, &dir, compressed, &archive.suite).map_err(fetch_err)?;
    let url = format!("{dists}/{}", compressed.path);
    let actual = std::fs::metadata(&blob).map_err(|e| read_err(&url, e))?.len();
    if actual != compressed.size {
        return Err(ResolveError::IndexSize {
            url,
            expected: compressed.size,
            actual,
        });
    }
    let file = std::fs::File::open(&blob).map_err(|e| read_err(&url, e))?;
    let mut reader = std::io::BufReader::new(file);
    let head = std::io::BufRead::fill_buf(&mut reader).map_err(|e| read_err(&url, e))?;
    let mut decoder = Compression::sniff(head)
        .decoder(reader)
        .map_err(|e| read_err(&url, e))?;
    match plain {
        // Keep the decompressed index too, verified against InRelease, for the fast path next time.
        Some(plain) if compressed.path != plain.path => {
            let stored = fetcher
                .cache()
                .insert(
                    &format!("{} {plain_path}", archive.suite),
                    &plain_url,
                    &plain.sha256,
                    decoder,
                )
                .map_err(fetch_err)?;
            let text = std::fs::read_to_string(&stored).map_err(|e| read_err(&plain_url, e))?;
            Ok((text, plain_url))
        }
        _ => {
            let mut text = String::new();
            decoder.read_to_string(&mut text).map_err(|e| read_err(&url, e))?;
            Ok((text, url))
        }
    }
}

/// Downloads an index by hash when the archive supports it (immune to the archive updating between
/// our `InRelease` and index downloads), else by name.
fn fetch_index(
    fetcher: &Fetcher,
    release: &Release,
    dists: &str,
    dir: &str,
    file: &IndexFile,
    suite: &str,
) -> Result<PathBuf, FetchError> {
    let by_name = Pinned {
        component: format!("{suite} {}", file.path),
        url: format!("{dists}/{}", file.path),
        sha256: file.sha256,
    };
    if !release.acquire_by_hash {
        return fetcher.fetch(&by_name);
    }
    let by_hash = Pinned {
        url: format!("{dists}/{dir}/by-hash/SHA256/{}", file.sha256),
        ..by_name.clone()
    };
    match fetcher.fetch(&by_hash) {
        // Some mirrors do not carry by-hash directories.
        Err(FetchError::HttpStatus { status: 404, .. }) => fetcher.fetch(&by_name),
        other => other,
    }
}
