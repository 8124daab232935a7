//! Getting pinned inputs onto disk: a content-addressed cache, downloads, and unpacking.
//!
//! Every input of an image is a [`Pinned`] component: a name, a URL and the sha256 of its bytes. The
//! [`Fetcher`] turns one into a path inside the [`Cache`]:
//!
//! - A blob lives at `<cache>/blobs/sha256/<hex>`. It becomes visible there only after its bytes were
//!   hashed and matched the pin (written to a temporary file in the same directory, fsynced, renamed),
//!   so a blob's presence is proof of its content and a cache hit needs no re-hashing. An interrupted
//!   or mismatching download leaves nothing behind.
//! - Sources: `http://` and `https://` (ureq with rustls, connect/read timeouts, retries with backoff on
//!   network errors and 5xx answers), `file://` URLs and plain local paths (air-gapped sites, tests).
//!   TLS trusts the host's CA store (rustls platform verifier), not a compiled-in root list: sites
//!   behind TLS-inspecting proxies or with private mirrors add their CA there. Trust in the bytes never
//!   rests on TLS anyway; it rests on the pinned sha256.
//!   Local files are copied into the cache like downloads, so every later step sees one kind of input.
//! - Offline mode ([`Fetcher::offline`], the CLI's `--offline`) uses only the cache; a miss is an error
//!   that names the component and URL and says how to fill the cache.
//! - [`Fetcher::unpacked`] extracts a `.deb` or a tarball once into `<cache>/unpacked/<hex>/` (again via
//!   a temporary directory and a rename), so a build with a warm cache does not decompress anything.
//!
//! # Mirrors
//!
//! `INGOT_MIRROR` rewrites URL prefixes before anything is downloaded, so a site can serve Debian's
//! archive or release files from its own host while profiles and lock files keep the canonical URLs:
//!
//! ```text
//! INGOT_MIRROR="https://deb.debian.org/debian=http://mirror.local/debian"
//! INGOT_MIRROR="https://deb.debian.org/debian=file:///srv/debian;https://dl.k8s.io=http://10.0.0.5/k8s"
//! ```
//!
//! The value is a `;`-separated list of `FROM=TO` pairs (whitespace around each part is ignored, empty
//! entries are skipped). A URL starting with `FROM` has that prefix replaced by `TO`; `FROM` matches
//! only up to a path boundary (`…/debian` applies to `…/debian/pool/…`, not to `…/debian-security/…`).
//! When several prefixes match, the longest wins. Only the download location changes: the pinned sha256 is still
//! checked, so a mirror cannot change what goes into an image.
//!
//! # Limits
//!
//! - Blobs are never evicted; delete the cache directory to reclaim space.
//! - A process killed in the middle of a download may leave a `.partial-*` file in the blob directory;
//!   it is never mistaken for a blob and can be deleted at any time.
//! - Downloads are not resumed: a retry starts from the first byte.
//! - Unpacking trusts that the blob is complete (it was hash-verified); a plain, uncompressed tarball
//!   cut at a 512-byte block boundary would not be noticed by the tar reader alone. Compressed data
//!   and `.deb` members are checked for truncation regardless.
//! - Unpacked trees do not keep file ownership (everything belongs to the user running the build); the
//!   image builder assigns owners when it writes the root filesystem.

mod archive;
mod cache;
mod deb;
mod http;

/// A byte progress bar on stderr (the one downloads show), for other long work.
pub(crate) use http::progress_bar;

use std::fmt;
use std::io::{self, IsTerminal};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub(crate) use archive::Compression;
pub use archive::{UnpackError, extract_tar_routed, unpack_tarball};
pub use cache::Cache;
pub use deb::{control_fields, find_data_file, unpack_deb};

/// The sha256 of some bytes: 32 bytes, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256([u8; 32]);

/// Why a string is not a sha256 written in hex.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Sha256ParseError {
    /// A sha256 has exactly 64 hex digits.
    #[error("a sha256 is 64 hex digits, this has {0} characters")]
    Length(usize),
    /// Only `0-9`, `a-f` (and `A-F`) are hex digits.
    #[error("{0:?} at position {1} is not a hex digit")]
    Digit(char, usize),
}

impl Sha256 {
    /// Wraps raw digest bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw digest bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Hashes a byte slice.
    pub fn digest(data: &[u8]) -> Self {
        use sha2::Digest;
        Self(sha2::Sha256::digest(data).into())
    }

    /// Hashes a file, streaming.
    pub fn of_file(path: &Path) -> io::Result<Self> {
        use io::Read;
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        let mut file = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Self(hasher.finalize().into()))
    }

    /// The 64 lower-case hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl FromStr for Sha256 {
    type Err = Sha256ParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let len = s.chars().count();
        if len != 64 {
            return Err(Sha256ParseError::Length(len));
        }
        if let Some((i, c)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_hexdigit()) {
            return Err(Sha256ParseError::Digit(c, i));
        }
        let mut out = [0u8; 32];
        // All 64 characters are ASCII hex digits, so decoding cannot fail; map the impossible error
        // anyway instead of panicking.
        hex::decode_to_slice(s, &mut out).map_err(|_| Sha256ParseError::Length(len))?;
        Ok(Self(out))
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sha256({})", self.to_hex())
    }
}

impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Sha256 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One input of an image: where to get it and what its bytes must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The profile's name for it (`kernel`, `systemd-boot` …); used in messages.
    pub component: String,
    /// `https://…`, `http://…`, `file:///…` or a local path.
    pub url: String,
    /// The sha256 the bytes must have.
    pub sha256: Sha256,
}

/// `https://host[:port]` of a URL: the prefix a mirror rewrite replaces.
fn url_origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// One `FROM=TO` prefix rewrite from `INGOT_MIRROR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// The canonical prefix, as written in profiles and lock files.
    pub from: String,
    /// What to fetch from instead.
    pub to: String,
}

impl Mirror {
    /// Parses the `INGOT_MIRROR` syntax (see the module documentation).
    pub fn parse_list(spec: &str) -> Result<Vec<Mirror>, FetchError> {
        let mut out = Vec::new();
        for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |reason: &str| FetchError::Mirror {
                entry: entry.to_owned(),
                reason: reason.to_owned(),
            };
            let (from, to) = entry.split_once('=').ok_or_else(|| bad("there is no `=`"))?;
            let (from, to) = (from.trim(), to.trim());
            if from.is_empty() || to.is_empty() {
                return Err(bad("both sides of `=` must be non-empty"));
            }
            out.push(Mirror {
                from: from.to_owned(),
                to: to.to_owned(),
            });
        }
        Ok(out)
    }

    /// Reads `INGOT_MIRROR`; unset or empty means no rewrites.
    pub fn from_env() -> Result<Vec<Mirror>, FetchError> {
        match std::env::var("INGOT_MIRROR") {
            Ok(spec) => Self::parse_list(&spec),
            Err(_) => Ok(Vec::new()),
        }
    }
}

/// Applies the longest matching mirror prefix to `url`.
pub fn rewrite_url(mirrors: &[Mirror], url: &str) -> String {
    mirrors
        .iter()
        .filter(|m| prefix_matches(&m.from, url))
        .max_by_key(|m| m.from.len())
        .map(|m| format!("{}{}", m.to, &url[m.from.len()..]))
        .unwrap_or_else(|| url.to_owned())
}

/// Errors of [`Fetcher`] and [`Cache`].
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No cache directory could be derived from the environment.
    #[error("cannot choose a cache directory: none of INGOT_CACHE_DIR, XDG_CACHE_HOME and HOME is set")]
    NoCacheDir,
    /// Reading or writing the cache failed.
    #[error("cache I/O on {}", path.display())]
    Cache { path: PathBuf, source: io::Error },
    /// The bytes did not hash to the pin.
    #[error("component {component}: {url} has sha256 {actual}, expected {expected}")]
    Mismatch {
        component: String,
        url: String,
        expected: Sha256,
        actual: Sha256,
    },
    /// A 404 for a file in a Debian-style `pool/`: the archive dropped that version.
    #[error(
        "component {component}: {url} is gone (404): the package was probably superseded in the archive; \
         run `ingot lock` again to pin the current version"
    )]
    Superseded { component: String, url: String },
    /// The server answered with an error status.
    #[error("component {component}: {url} answered HTTP {status}")]
    HttpStatus {
        component: String,
        url: String,
        status: u16,
    },
    /// Connecting or talking to the server failed (after retries).
    #[error("component {component}: cannot download {url}")]
    Network {
        component: String,
        url: String,
        source: ureq::Error,
    },
    /// A pinned file's host cannot be reached (after retries): say how else to supply the file.
    #[error(
        "component {component}: cannot reach {url}; supply the file another way:\n  \
         - a mirror: INGOT_MIRROR=\"{origin}=https://your.mirror/path\" (or =file:///a/directory)\n  \
         - the cache: copy the file (sha256 {sha256}) to {}\n  \
         - a local file: in a profile that `extends` this one, give component `{component}` a `path = \"...\"`",
        blob.display(),
        origin = url_origin(url)
    )]
    Unreachable {
        component: String,
        url: String,
        sha256: Sha256,
        blob: PathBuf,
        source: Box<ureq::Error>,
    },
    /// The connection broke while the body was read (after retries).
    #[error("component {component}: download of {url} was interrupted")]
    Interrupted {
        component: String,
        url: String,
        source: io::Error,
    },
    /// A local source (`file://` or path) could not be read.
    #[error("component {component}: cannot read {}", path.display())]
    Local {
        component: String,
        path: PathBuf,
        source: io::Error,
    },
    /// Offline mode and the blob is not cached.
    #[error(
        "component {component} is not in the cache and downloads are off (--offline): {url} (sha256 {sha256}); \
         fill the cache by running the same command once without --offline, or copy that file to {}",
        blob.display()
    )]
    Offline {
        component: String,
        url: String,
        sha256: Sha256,
        blob: PathBuf,
    },
    /// A URL that is not pinned was asked for in offline mode.
    #[error("{url} is needed but downloads are off (--offline)")]
    OfflineUnpinned { url: String },
    /// `INGOT_MIRROR` does not parse.
    #[error("INGOT_MIRROR entry `{entry}` is invalid ({reason}); expected `FROM=TO` pairs separated by `;`")]
    Mirror { entry: String, reason: String },
    /// The URL scheme is not one we fetch.
    #[error("component {component}: unsupported URL {url} (use https://, http://, file:// or a path)")]
    Scheme { component: String, url: String },
    /// Unpacking the blob failed.
    #[error("component {component}: cannot unpack {}", blob.display())]
    Unpack {
        component: String,
        blob: PathBuf,
        source: UnpackError,
    },
}

/// Downloads pinned components into a [`Cache`].
#[derive(Debug, Clone)]
pub struct Fetcher {
    cache: Cache,
    offline: bool,
    mirrors: Vec<Mirror>,
    progress: bool,
    retry_delays: Vec<Duration>,
}

impl Fetcher {
    /// A fetcher with no mirrors, downloads allowed, no output and the default retry policy.
    pub fn new(cache: Cache) -> Self {
        Self {
            cache,
            offline: false,
            mirrors: Vec::new(),
            progress: false,
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(4)],
        }
    }

    /// What the CLI uses: the cache from the environment, `INGOT_MIRROR`, progress output on.
    pub fn from_env(offline: bool) -> Result<Self, FetchError> {
        Ok(Self::new(Cache::from_env()?)
            .offline(offline)
            .mirrors(Mirror::from_env()?)
            .progress(true))
    }

    /// Only use the cache; a miss is an error.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// URL prefix rewrites applied before downloading.
    pub fn mirrors(mut self, mirrors: Vec<Mirror>) -> Self {
        self.mirrors = mirrors;
        self
    }

    /// Report downloads on stderr: a progress bar on a terminal, one line per download otherwise.
    pub fn progress(mut self, progress: bool) -> Self {
        self.progress = progress;
        self
    }

    /// Pauses between attempts after a network error; one more attempt than there are delays.
    pub fn retry_delays(mut self, delays: Vec<Duration>) -> Self {
        self.retry_delays = delays;
        self
    }

    /// The cache this fetcher fills.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Whether progress and notices go to stderr.
    pub fn reports_progress(&self) -> bool {
        self.progress
    }

    /// Whether downloads are off.
    pub fn is_offline(&self) -> bool {
        self.offline
    }

    /// The path of the verified blob for `p`, downloading it if it is not cached yet.
    pub fn fetch(&self, p: &Pinned) -> Result<PathBuf, FetchError> {
        if let Some(path) = self.cache.blob(&p.sha256) {
            return Ok(path);
        }
        if self.offline {
            return Err(FetchError::Offline {
                component: p.component.clone(),
                url: p.url.clone(),
                sha256: p.sha256,
                blob: self.cache.blob_path(&p.sha256),
            });
        }
        let source = rewrite_url(&self.mirrors, &p.url);
        if let Some(path) = local_path(&source) {
            return self.copy_local(p, &path);
        }
        if !(source.starts_with("https://") || source.starts_with("http://")) {
            return Err(FetchError::Scheme {
                component: p.component.clone(),
                url: source,
            });
        }
        self.report_start(&p.component, &source);
        http::download(self, p, &source).map_err(|e| match e {
            FetchError::Network {
                component,
                url,
                source,
            } => FetchError::Unreachable {
                component,
                url,
                sha256: p.sha256,
                blob: self.cache.blob_path(&p.sha256),
                source: Box::new(source),
            },
            other => other,
        })
    }

    /// Downloads something that is not pinned (an archive's `InRelease`) into memory, following mirrors.
    ///
    /// The caller is responsible for authenticating the bytes (a signature check).
    pub fn fetch_unpinned(&self, what: &str, url: &str) -> Result<Vec<u8>, FetchError> {
        if self.offline {
            return Err(FetchError::OfflineUnpinned { url: url.to_owned() });
        }
        let source = rewrite_url(&self.mirrors, url);
        if let Some(path) = local_path(&source) {
            return std::fs::read(&path).map_err(|source| FetchError::Local {
                component: what.to_owned(),
                path,
                source,
            });
        }
        if !(source.starts_with("https://") || source.starts_with("http://")) {
            return Err(FetchError::Scheme {
                component: what.to_owned(),
                url: source,
            });
        }
        http::get_bytes(self, what, &source)
    }

    /// The directory holding the unpacked contents of `p` (a `.deb` or a tarball), fetching and
    /// extracting it on first use.
    pub fn unpacked(&self, p: &Pinned) -> Result<PathBuf, FetchError> {
        if let Some(dir) = self.cache.unpacked(&p.sha256) {
            return Ok(dir);
        }
        let blob = self.fetch(p)?;
        self.cache
            .unpack_into_cache(&p.sha256, |dir| archive::unpack_auto(&blob, dir))
            .map_err(|e| match e {
                cache::UnpackOrCache::Cache(e) => e,
                cache::UnpackOrCache::Unpack(source) => FetchError::Unpack {
                    component: p.component.clone(),
                    blob: blob.clone(),
                    source,
                },
            })
    }

    fn copy_local(&self, p: &Pinned, path: &Path) -> Result<PathBuf, FetchError> {
        let local_err = |source| FetchError::Local {
            component: p.component.clone(),
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(local_err)?;
        let mut writer = self.cache.blob_writer()?;
        io::copy(&mut file, &mut writer).map_err(local_err)?;
        writer.commit(p, &path.display().to_string())
    }

    fn report_start(&self, component: &str, url: &str) {
        // With a terminal the progress bar says the same; without one, a line per download keeps CI
        // logs readable.
        if self.progress && !io::stderr().is_terminal() {
            eprintln!("fetching {component}: {url}");
        }
    }

    fn show_bar(&self) -> bool {
        self.progress && io::stderr().is_terminal()
    }
}

/// `from` is a prefix of `url` ending at a path boundary: `…/debian` matches `…/debian/pool/x`
/// but not `…/debian-security/x`.
fn prefix_matches(from: &str, url: &str) -> bool {
    match url.strip_prefix(from) {
        Some(rest) => from.ends_with('/') || rest.is_empty() || rest.starts_with(['/', '?', '#']),
        None => false,
    }
}

/// `file:///x` → `/x`; a URL without a scheme is a local path.
fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(rest) = url.strip_prefix("file://") {
        return Some(PathBuf::from(rest));
    }
    if url.contains("://") {
        None
    } else {
        Some(PathBuf::from(url))
    }
}

#[cfg(test)]
mod tests;
