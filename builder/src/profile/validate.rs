//! Raw (merged) profile → [`Profile`], whose fields cannot hold bad values.

use std::path::{Component as PathComponent, Path, PathBuf};

use ingot_spec::config::{INIT_CONFIG_PATH, InitConfig};

use super::ProfileError;
use super::images::ContainerImage;
use super::init_config::{self, Executable};
use super::raw::*;

const MIB: u64 = 1024 * 1024;
/// Default `SOURCE_DATE_EPOCH` for images: 2024-01-01T00:00:00Z. Any fixed value keeps builds reproducible.
pub const DEFAULT_SOURCE_DATE_EPOCH: u64 = 1_704_067_200;

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Image name: `image.name`, or the profile file's stem. Output files are `out/<name>.raw` etc.
    pub name: String,
    /// The profile file this was loaded from.
    pub path: PathBuf,
    pub version: String,
    pub source_date_epoch: u64,
    pub zstd_level: i32,
    pub archive: Option<Archive>,
    /// `[base.apt]`: the root starts from these packages, installed by `mmdebstrap`.
    pub base: Option<AptBase>,
    pub kernel: Kernel,
    pub bootloader: Bootloader,
    pub partitions: PartitionSizes,
    pub components: Vec<Component>,
    /// Container images preloaded into the root (`[[images]]`).
    pub images: Vec<ContainerImage>,
    pub files: Vec<ImageFile>,
    /// What the build writes to `/etc/ingot/init.json` for ingot-init.
    pub init: InitConfig,
    /// Programs the services run: the build checks they are in the staged root and executable.
    pub executables: Vec<Executable>,
}

/// A Debian-style archive that `ingot lock` resolves `package` sources in.
pub type Archive = crate::debian::ArchiveSpec;

/// A root built from an apt archive: `ingot lock` pins these packages, the archive's `Essential: yes` set and
/// their dependencies; the build installs exactly those with `mmdebstrap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptBase {
    /// The archive and its main suite (the one mmdebstrap is told).
    pub archive: Archive,
    /// More suites of the same archive, signed by the same keyring, whose newer versions win: Ubuntu's
    /// `-updates` and `-security` pockets, Debian's `-updates`.
    pub extra_suites: Vec<String>,
    /// The packages asked for, in profile order.
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Installed by the apt base (`[kernel] from = "base"`).
    Base,
    /// A package name, resolved to a pool URL + sha256 by `ingot lock`.
    Package(String),
    /// A URL pinned in the profile itself.
    Url { url: String, sha256: String },
    /// A local file (absolute after loading).
    Path(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    pub source: Source,
    pub cmdline: Vec<String>,
    pub initrd_modules: Vec<String>,
    pub root_modules: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootloader {
    pub source: Source,
    /// systemd-boot menu timeout in seconds (0: boot the default entry at once).
    pub timeout: u32,
}

/// Partition sizes in bytes, each a whole number of MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSizes {
    pub esp: u64,
    /// Size of each root slot (root-a and root-b).
    pub root: u64,
    /// Initial size of `var` in the image; the node grows it to fill the disk.
    pub var: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub name: String,
    pub source: Source,
    /// Files to take; `None` takes the whole package/archive.
    pub files: Option<Vec<FileMap>>,
    /// Whether the files land in the root; `false` for a component that only feeds an image.
    pub install: bool,
    /// Also take the package's dependency closure (package sources only).
    pub depends: bool,
    /// Packages the closure must not pull (sorted, unique; empty without `depends`).
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileMap {
    /// Relative path inside the component.
    pub src: PathBuf,
    /// Absolute path in the image.
    pub dst: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileContent {
    Inline(String),
    Host(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub path: PathBuf,
    pub content: FileContent,
    pub mode: u32,
}

/// Component names `kernel` and `bootloader` are taken by the `[kernel]` and `[bootloader]` tables.
pub const RESERVED_COMPONENT_NAMES: [&str; 2] = ["kernel", "bootloader"];

/// `[base.apt]`, checked.
fn apt_base(cx: &Ctx<'_>, a: RawApt) -> Result<AptBase, ProfileError> {
    let mirror = cx.required(
        a.mirror,
        "base.apt.mirror",
        "e.g. \"https://deb.debian.org/debian\"",
    )?;
    if !(mirror.starts_with("https://") || mirror.starts_with("http://")) {
        return Err(cx.err("base.apt.mirror", format!("{mirror:?} is not an http(s) URL")));
    }
    let suite = cx.required(a.suite, "base.apt.suite", "e.g. \"bookworm\" or \"noble\"")?;
    let word = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    if !word(&suite) {
        return Err(cx.err("base.apt.suite", format!("{suite:?} is not a suite name")));
    }
    let extra_suites = a.extra_suites.unwrap_or_default();
    if let Some((i, s)) = extra_suites
        .iter()
        .enumerate()
        .find(|(i, s)| !word(s) || **s == suite || extra_suites[..*i].contains(s))
    {
        return Err(cx.err(
            format!("base.apt.extra_suites[{i}]"),
            format!("{s:?} is not a suite name, or is named twice"),
        ));
    }
    let components = a.components.unwrap_or_else(|| vec!["main".into()]);
    if let Some((i, c)) = components.iter().enumerate().find(|(_, c)| !word(c)) {
        return Err(cx.err(
            format!("base.apt.components[{i}]"),
            format!("{c:?} is not a component name"),
        ));
    }
    let arch = a.arch.unwrap_or_else(|| "amd64".into());
    let keyring = cx.required(
        a.keyring,
        "base.apt.keyring",
        "the archive's OpenPGP keyring file",
    )?;
    let packages = a.packages.unwrap_or_default();
    if packages.is_empty() {
        return Err(cx.err(
            "base.apt.packages",
            "lists no package (name what the root needs, e.g. [\"containerd\"])",
        ));
    }
    for (i, p) in packages.iter().enumerate() {
        let ok = !p.is_empty()
            && p.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
        if !ok {
            return Err(cx.err(
                format!("base.apt.packages[{i}]"),
                format!("{p:?} is not a package name"),
            ));
        }
        if packages[..i].contains(p) {
            return Err(cx.err(
                format!("base.apt.packages[{i}]"),
                format!("{p:?} is listed twice"),
            ));
        }
    }
    Ok(AptBase {
        archive: Archive {
            url: mirror.trim_end_matches('/').to_string(),
            suite,
            components,
            arch,
            keyring: PathBuf::from(keyring),
        },
        extra_suites,
        packages,
    })
}

/// Parses `"512M"`, `"1G"`, `"4096K"` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1024),
        Some((i, 'M' | 'm')) => (&t[..i], MIB),
        Some((i, 'G' | 'g')) => (&t[..i], 1024 * MIB),
        Some((i, 'T' | 't')) => (&t[..i], 1024 * 1024 * MIB),
        _ => (t, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a size (expected bytes, or a number with K, M, G or T)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

pub(super) struct Ctx<'a> {
    path: &'a Path,
}

impl Ctx<'_> {
    pub(super) fn err(&self, field: impl Into<String>, message: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            path: self.path.to_path_buf(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn required<T>(&self, v: Option<T>, field: &str, hint: &str) -> Result<T, ProfileError> {
        v.ok_or_else(|| self.err(field, format!("is required ({hint})")))
    }

    pub(super) fn source(
        &self,
        field: &str,
        package: Option<String>,
        url: Option<String>,
        sha256: Option<String>,
        path: Option<String>,
    ) -> Result<Source, ProfileError> {
        match (package, url, sha256, path) {
            (Some(p), None, None, None) => {
                if p.is_empty() || !p.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) {
                    return Err(self.err(format!("{field}.package"), format!("{p:?} is not a package name")));
                }
                Ok(Source::Package(p))
            }
            (None, Some(url), Some(sha), None) => {
                if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(self.err(
                        format!("{field}.sha256"),
                        format!("{sha:?} is not a sha256 (expected 64 hex digits)"),
                    ));
                }
                Ok(Source::Url {
                    url,
                    sha256: sha.to_ascii_lowercase(),
                })
            }
            (None, Some(_), None, None) => Err(self.err(
                format!("{field}.sha256"),
                "is required with `url` (pin the download: `sha256sum` of the file)",
            )),
            (None, None, None, Some(p)) => Ok(Source::Path(PathBuf::from(p))),
            (None, None, None, None) => {
                Err(self.err(field, "needs a source: `package`, `url` + `sha256`, or `path`"))
            }
            _ => Err(self.err(
                field,
                "has more than one source: use exactly one of `package`, `url` + `sha256`, `path`",
            )),
        }
    }

    fn size(&self, field: &str, v: Option<RawSize>, default: u64, min: u64) -> Result<u64, ProfileError> {
        let bytes = match v {
            None => default,
            Some(RawSize::Bytes(b)) => b,
            Some(RawSize::Text(t)) => parse_size(&t).map_err(|m| self.err(field, m))?,
        };
        if bytes % MIB != 0 {
            return Err(self.err(field, format!("{bytes} bytes is not a whole number of MiB")));
        }
        if bytes < min {
            return Err(self.err(
                field,
                format!("{} MiB is below the minimum of {} MiB", bytes / MIB, min / MIB),
            ));
        }
        Ok(bytes)
    }

    fn image_path(&self, field: &str, p: &str) -> Result<PathBuf, ProfileError> {
        let path = Path::new(p);
        if !path.is_absolute() {
            return Err(self.err(field, format!("{p:?} must be an absolute path in the image")));
        }
        if path
            .components()
            .any(|c| matches!(c, PathComponent::ParentDir | PathComponent::CurDir))
            || p.ends_with('/') && p != "/"
        {
            return Err(self.err(
                field,
                format!("{p:?} must be normalised (no `.`, `..` or trailing `/`)"),
            ));
        }
        if p == "/" {
            return Err(self.err(field, "\"/\" is not a file"));
        }
        Ok(path.to_path_buf())
    }

    fn names(&self, field: &str, list: Vec<String>) -> Result<Vec<String>, ProfileError> {
        for (i, m) in list.iter().enumerate() {
            if m.is_empty() || m.contains(char::is_whitespace) || m.contains('/') {
                return Err(self.err(format!("{field}[{i}]"), format!("{m:?} is not a name")));
            }
        }
        Ok(list)
    }
}

pub fn validate(path: &Path, raw: RawProfile) -> Result<Profile, ProfileError> {
    let cx = Ctx { path };
    let image = raw.image.unwrap_or_default();
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = image.name.unwrap_or(stem);
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(cx.err(
            "image.name",
            format!("{name:?} must be letters, digits, `-` or `_`"),
        ));
    }
    let version = cx.required(image.version, "image.version", "e.g. version = \"0.1.0\"")?;
    if version.is_empty()
        || !version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-~".contains(c))
    {
        return Err(cx.err(
            "image.version",
            format!("{version:?} may only hold letters, digits, `.`, `_`, `-`, `~` (`+` is reserved for boot counting)"),
        ));
    }
    // `ingot verify` orders versions as Debian does (rollback protection), so every version must be one.
    if let Err(e) = crate::debian::Version::parse(&version) {
        return Err(cx.err("image.version", format!("{e}; e.g. version = \"1.2.3\"")));
    }
    let zstd_level = image.zstd_level.unwrap_or(3);
    if !(1..=19).contains(&zstd_level) {
        return Err(cx.err("image.zstd_level", format!("{zstd_level} is not in 1..=19")));
    }

    let archive = match raw.archive {
        None => None,
        Some(a) => Some(Archive {
            url: cx
                .required(a.url, "archive.url", "e.g. \"https://deb.debian.org/debian\"")?
                .trim_end_matches('/')
                .to_string(),
            suite: cx.required(a.suite, "archive.suite", "e.g. \"bookworm\"")?,
            components: a.components.unwrap_or_else(|| vec!["main".into()]),
            arch: a.arch.unwrap_or_else(|| "amd64".into()),
            keyring: PathBuf::from(cx.required(
                a.keyring,
                "archive.keyring",
                "the archive's OpenPGP keyring file",
            )?),
        }),
    };

    let base = match raw.base.map(|b| b.apt) {
        None => None,
        Some(None) => return Err(cx.err("base", "needs an `apt` table (the only kind of base)")),
        Some(Some(a)) => Some(apt_base(&cx, a)?),
    };

    let k = cx.required(raw.kernel, "kernel", "a [kernel] table naming the kernel package")?;
    let source = match k.from.as_deref() {
        None => cx.source("kernel", k.package, k.url, k.sha256, k.path)?,
        Some("base") if base.is_none() => {
            return Err(cx.err(
                "kernel.from",
                "\"base\" needs a [base.apt] table that installs a kernel package",
            ));
        }
        Some("base") if k.package.is_some() || k.url.is_some() || k.sha256.is_some() || k.path.is_some() => {
            return Err(cx.err(
                "kernel.from",
                "\"base\" takes the kernel the apt base installs: drop `package`, `url`, `sha256` and `path`",
            ));
        }
        Some("base") => Source::Base,
        Some(other) => {
            return Err(cx.err(
                "kernel.from",
                format!("{other:?} is not a kernel source (the only one is \"base\")"),
            ));
        }
    };
    let kernel = Kernel {
        source,
        cmdline: k.cmdline.unwrap_or_default(),
        initrd_modules: cx.names("kernel.initrd_modules", k.initrd_modules.unwrap_or_default())?,
        root_modules: cx.names("kernel.root_modules", k.root_modules.unwrap_or_default())?,
    };
    for (i, word) in kernel.cmdline.iter().enumerate() {
        if word.is_empty() || word.contains(char::is_whitespace) && !word.contains('"') {
            return Err(cx.err(
                format!("kernel.cmdline[{i}]"),
                format!("{word:?}: one parameter per entry, no spaces"),
            ));
        }
    }
    let b = cx.required(
        raw.bootloader,
        "bootloader",
        "a [bootloader] table, e.g. package = \"systemd-boot-efi\"",
    )?;
    let bootloader = Bootloader {
        source: cx.source("bootloader", b.package, b.url, b.sha256, b.path)?,
        timeout: b.timeout.unwrap_or(0),
    };

    let p = raw.partitions.unwrap_or_default();
    let partitions = PartitionSizes {
        esp: cx.size("partitions.esp", p.esp, 512 * MIB, 64 * MIB)?,
        root: cx.size("partitions.root", p.root, 1024 * MIB, 16 * MIB)?,
        var: cx.size("partitions.var", p.var, 64 * MIB, 16 * MIB)?,
    };

    let mut components = Vec::new();
    for (i, c) in raw.components.unwrap_or_default().into_iter().enumerate() {
        let field = format!("components[{i}]");
        if c.name.is_empty()
            || !c
                .name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
        {
            return Err(cx.err(
                format!("{field}.name"),
                format!("{:?} must be letters, digits, `-`, `_`, `.`", c.name),
            ));
        }
        if RESERVED_COMPONENT_NAMES.contains(&c.name.as_str()) {
            return Err(cx.err(
                format!("{field}.name"),
                format!("{:?} is reserved for the [{}] table", c.name, c.name),
            ));
        }
        if components.iter().any(|x: &Component| x.name == c.name) {
            return Err(cx.err(format!("{field}.name"), format!("{:?} is declared twice", c.name)));
        }
        if c.remove == Some(true) {
            return Err(cx.err(
                format!("{field}.remove"),
                "drops a component of the profile this one `extends`, and that profile has none of this name",
            ));
        }
        let source = cx.source(&field, c.package, c.url, c.sha256, c.path)?;
        let depends = c.depends.unwrap_or(false);
        if depends && !matches!(source, Source::Package(_)) {
            return Err(cx.err(
                format!("{field}.depends"),
                "needs a `package` source (dependencies are read from the archive's index)",
            ));
        }
        let install = c.install.unwrap_or(true);
        if depends && !install {
            return Err(cx.err(
                format!("{field}.depends"),
                "a dependency closure is staged into the root, and `install = false` keeps this component out of \
                 it: list what the image needs as components instead",
            ));
        }
        let mut exclude = c.exclude.unwrap_or_default();
        if !exclude.is_empty() && !depends {
            return Err(cx.err(format!("{field}.exclude"), "only applies with `depends = true`"));
        }
        for (j, e) in exclude.iter().enumerate() {
            let ok = !e.is_empty()
                && e.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
            if !ok {
                return Err(cx.err(
                    format!("{field}.exclude[{j}]"),
                    format!("{e:?} is not a package name"),
                ));
            }
        }
        exclude.sort();
        exclude.dedup();
        let files = match c.files {
            None => None,
            Some(list) => {
                let mut out = Vec::new();
                for (j, f) in list.into_iter().enumerate() {
                    let src = f.src.trim_start_matches('/').to_string();
                    if src.is_empty()
                        || Path::new(&src)
                            .components()
                            .any(|x| matches!(x, PathComponent::ParentDir))
                    {
                        return Err(cx.err(
                            format!("{field}.files[{j}].src"),
                            format!("{:?} must be a path inside the component", f.src),
                        ));
                    }
                    let dst = f.dst.unwrap_or_else(|| format!("/{src}"));
                    out.push(FileMap {
                        dst: cx.image_path(&format!("{field}.files[{j}].dst"), &dst)?,
                        src: src.into(),
                    });
                }
                Some(out)
            }
        };
        components.push(Component {
            name: c.name,
            source,
            files,
            install,
            depends,
            exclude,
        });
    }

    let images = super::images::validate(&cx, raw.images.unwrap_or_default(), &components)?;

    let mut files = Vec::new();
    for (i, f) in raw.files.unwrap_or_default().into_iter().enumerate() {
        let field = format!("files[{i}]");
        let path = cx.image_path(&format!("{field}.path"), &f.path)?;
        if path == Path::new(INIT_CONFIG_PATH) {
            return Err(cx.err(
                format!("{field}.path"),
                format!("{INIT_CONFIG_PATH} is written by the build from [node], [network], [time] and [[services]]"),
            ));
        }
        let content = match (f.content, f.source) {
            (Some(c), None) => FileContent::Inline(c),
            (None, Some(s)) => FileContent::Host(PathBuf::from(s)),
            _ => return Err(cx.err(&field, "needs exactly one of `content` or `source`")),
        };
        let mode = match f.mode {
            None => 0o644,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|v| *v <= 0o7777)
                .ok_or_else(|| {
                    cx.err(
                        format!("{field}.mode"),
                        format!("{m:?} is not an octal mode like \"0644\""),
                    )
                })?,
        };
        files.push(ImageFile { path, content, mode });
    }

    let needs_archive = std::iter::once(&kernel.source)
        .chain([&bootloader.source])
        .chain(components.iter().map(|c| &c.source))
        .any(|s| matches!(s, Source::Package(_)));
    if needs_archive && archive.is_none() {
        return Err(cx.err(
            "archive",
            "is required when any source is a `package` (say which archive to resolve it in)",
        ));
    }

    let (init, executables) = init_config::validate(
        path,
        raw.node,
        raw.network,
        raw.time,
        raw.services,
        raw.kubernetes,
    )?;

    Ok(Profile {
        name,
        path: path.to_path_buf(),
        version,
        source_date_epoch: image.source_date_epoch.unwrap_or(DEFAULT_SOURCE_DATE_EPOCH),
        zstd_level,
        archive,
        base,
        kernel,
        bootloader,
        partitions,
        components,
        images,
        files,
        init,
        executables,
    })
}
