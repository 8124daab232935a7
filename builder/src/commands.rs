//! What each `ingot` subcommand does, as library functions (main.rs only parses arguments and prints
//! errors).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::debian::{self, ArchiveSpec, PackageRequest};
use crate::fetch::{Fetcher, Pinned, Sha256};
use crate::kconfig;
use crate::lock::{Lock, LockRequest};
use crate::manifest::ComponentEntry;
use crate::node_config::NodeConfigFile;
use crate::pipeline::{self, Inputs};
use crate::profile::{self, FileContent, ImageFile, ImageSource, Profile, Source};
use ingot_spec::node_config::{BAKED_PATH, Channel};

/// Kernel metapackages (`linux-image-cloud-amd64`) depend on the versioned package that holds the kernel;
/// `ingot lock` pins that one.
const KERNEL_PACKAGE_PREFIX: &str = "linux-image-";

/// What a profile asks `ingot lock` to pin, and the names `ingot build` needs from the lock.
struct LockPlan {
    archives: Vec<(ArchiveSpec, Vec<PackageRequest>)>,
    pinned: Vec<Pinned>,
    /// Every component of the profile (the lock pins each under its name).
    wanted: Vec<String>,
    /// Components whose dependency closure is pinned too.
    pulling: Vec<String>,
    /// The apt base.
    base: Option<profile::AptBase>,
}

/// A profile input the lock pins: its lock name, source, and closure settings.
struct Input<'a> {
    /// `kernel`, `bootloader`, a component's name, or `image:<reference>` for an image archive.
    name: String,
    source: &'a Source,
    depends: bool,
    exclude: &'a [String],
}

/// Every input the lock pins: kernel, bootloader, components, image archives.
fn sources(profile: &Profile) -> Vec<Input<'_>> {
    let mut v = Vec::new();
    // The apt base's kernel is pinned with the base's packages.
    if profile.kernel.source != Source::Base {
        v.push(Input {
            name: "kernel".to_owned(),
            source: &profile.kernel.source,
            depends: false,
            exclude: &[],
        });
    }
    v.extend([Input {
        name: "bootloader".to_owned(),
        source: &profile.bootloader.source,
        depends: false,
        exclude: &[],
    }]);
    v.extend(profile.components.iter().map(|c| Input {
        name: c.name.clone(),
        source: &c.source,
        depends: c.depends,
        exclude: &c.exclude,
    }));
    v.extend(profile.images.iter().filter_map(|i| match &i.source {
        ImageSource::Archive(s) => Some(Input {
            name: crate::images::lock_name(&i.name),
            source: s,
            depends: false,
            exclude: &[],
        }),
        ImageSource::Component { .. } => None,
    }));
    v
}

fn plan(profile: &Profile) -> Result<LockPlan> {
    let mut packages = Vec::new();
    let mut pinned = Vec::new();
    for Input {
        name,
        source,
        depends,
        exclude,
    } in sources(profile)
    {
        let name = name.as_str();
        match source {
            Source::Base => {}
            Source::Package(p) => packages.push(PackageRequest {
                component: name.to_string(),
                package: p.clone(),
                follow_depends_prefix: (name == "kernel" && p.starts_with(KERNEL_PACKAGE_PREFIX))
                    .then(|| KERNEL_PACKAGE_PREFIX.to_string()),
                depends,
                exclude: exclude.to_vec(),
            }),
            Source::Url { url, sha256 } => pinned.push(Pinned {
                component: name.to_string(),
                url: url.clone(),
                sha256: sha256
                    .parse()
                    .with_context(|| format!("component {name}: sha256"))?,
            }),
            Source::Path(path) => {
                // A local file is pinned by its content: if it changes, the lock goes stale.
                let sha256 = Sha256::of_file(path)
                    .with_context(|| format!("component {name}: reading {}", path.display()))?;
                pinned.push(Pinned {
                    component: name.to_string(),
                    url: path.display().to_string(),
                    sha256,
                });
            }
        }
    }
    let archives = match (&profile.archive, packages.is_empty()) {
        (_, true) => Vec::new(),
        (Some(a), false) => vec![(a.clone(), packages)],
        (None, false) => bail!(
            "{}: packages are named but no [archive] is set",
            profile.path.display()
        ),
    };
    let wanted = sources(profile).into_iter().map(|i| i.name).collect();
    let pulling = sources(profile)
        .into_iter()
        .filter(|i| i.depends)
        .map(|i| i.name)
        .collect();
    Ok(LockPlan {
        archives,
        pinned,
        wanted,
        pulling,
        base: profile.base.clone(),
    })
}

fn request_digest(plan: &LockPlan) -> Sha256 {
    Lock::request_digest(&LockRequest {
        archives: &plan.archives,
        pinned: &plan.pinned,
        base: plan.base.as_ref(),
    })
}

pub fn lock_path(profile: &Profile) -> PathBuf {
    profile.path.with_extension("lock")
}

/// Loads a profile by `--profile` argument.
pub fn load_profile(arg: &str) -> Result<Profile> {
    let path = profile::locate(arg, Path::new("profiles"))?;
    Ok(profile::load(&path)?)
}

/// `ingot lock`: resolves every package of the profile in its archive and writes `<profile>.lock`.
pub fn lock(profile_arg: &str, offline: bool) -> Result<PathBuf> {
    let profile = load_profile(profile_arg)?;
    let plan = plan(&profile)?;
    let fetcher = Fetcher::from_env(offline)?;
    let started = Instant::now();
    let mut resolved = Vec::new();
    for (archive, requests) in &plan.archives {
        eprintln!(
            "resolving {} package(s) in {} {}",
            requests.len(),
            archive.url,
            archive.suite
        );
        resolved.extend(debian::resolve(&fetcher, archive, requests)?);
    }
    // A pulled package is pinned under its own name, so it must not shadow a component.
    for r in resolved.iter().filter(|r| r.pulled_by.is_some()) {
        if plan.wanted.contains(&r.package) {
            bail!(
                "{}: component {} pulls package {} as a dependency, and a component of that name already exists: \
                 rename the component, or give it `package = {:?}`",
                profile.path.display(),
                r.pulled_by.as_deref().unwrap_or_default(),
                r.package,
                r.package
            );
        }
    }
    let mut lock = Lock::new(request_digest(&plan), &resolved, &plan.pinned)?;
    if let Some(profile::AptBase {
        archive,
        extra_suites,
        packages,
    }) = &plan.base
    {
        if !archive.keyring.is_file() {
            bail!(
                "{}: field base.apt.keyring: {} does not exist (the OpenPGP keyring that signs the archive's \
                 InRelease; keyrings/README.md lists the ones ingot ships)",
                profile.path.display(),
                archive.keyring.display()
            );
        }
        eprintln!(
            "resolving the apt base in {} {}: {} package(s), the essential set and their dependencies",
            archive.url,
            archive.suite,
            packages.len()
        );
        let base = debian::resolve_base(&fetcher, archive, extra_suites, packages)?;
        let bytes: u64 = base.iter().map(|r| r.size).sum();
        eprintln!(
            "base: {} package(s), {:.1} MiB of .deb files",
            base.len(),
            bytes as f64 / (1024.0 * 1024.0)
        );
        lock = lock.with_base(&base)?;
    }
    let path = lock_path(&profile);
    lock.write(&path, &crate::lock::profile_arg(&path))?;
    eprint!("{}", lock_summary(&lock, &resolved));
    eprintln!(
        "wrote {} in {:.1} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(path)
}

/// What `ingot lock` prints: each component, and under it the packages its closure pulled.
fn lock_summary(lock: &Lock, resolved: &[debian::Resolved]) -> String {
    let mut out = String::new();
    let what = |c: &crate::lock::LockedComponent| match (&c.package, &c.version) {
        (Some(p), Some(v)) => format!("{p} {v}"),
        _ => c.url.clone(),
    };
    let listed = || lock.components().iter().filter(|c| c.pulled_by.is_none());
    // One column for the names, as wide as the longest (image archives are `image:<reference>`).
    let width = listed()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(12);
    for c in listed() {
        out.push_str(&format!("  {:<width$} {}\n", c.name, what(c)));
        for p in lock
            .pulled()
            .filter(|p| p.pulled_by.as_deref() == Some(c.name.as_str()))
        {
            out.push_str(&format!("  {:<width$} + {}\n", "", what(p)));
        }
    }
    let pulled: Vec<&debian::Resolved> = resolved.iter().filter(|r| r.pulled_by.is_some()).collect();
    if !pulled.is_empty() {
        let bytes: u64 = pulled.iter().map(|r| r.size).sum();
        out.push_str(&format!(
            "pulled {} package(s) as dependencies ({:.1} MiB of .deb files)\n",
            pulled.len(),
            bytes as f64 / (1024.0 * 1024.0)
        ));
    }
    out
}

/// Loads the lock file of `profile` and checks that it is current: made for the profile as it is now, and
/// pinning every input it needs. Reads no network. `profile_arg` is how the user named the profile (for
/// the hint to re-lock).
pub fn current_lock(profile: &Profile, profile_arg: &str) -> Result<Lock> {
    let plan = plan(profile)?;
    let path = lock_path(profile);
    if !path.exists() {
        bail!(
            "{} has no lock file {} (run `ingot lock --profile {profile_arg}` and commit the result)",
            profile.path.display(),
            path.display()
        );
    }
    let lock = Lock::load(&path)?;
    let wanted: Vec<&str> = plan.wanted.iter().map(String::as_str).collect();
    let pulling: Vec<&str> = plan.pulling.iter().map(String::as_str).collect();
    lock.check(&request_digest(&plan), &wanted, &pulling)?;
    if plan.base.is_some() && lock.base().is_empty() {
        bail!(
            "{} pins no package of the apt base (run `ingot lock --profile {profile_arg}`)",
            path.display()
        );
    }
    Ok(lock)
}

/// Options of `ingot build`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions<'a> {
    /// Use only the cache for downloads.
    pub offline: bool,
    pub quiet: bool,
    /// Do not reuse cached boot artifacts.
    pub rebuild: bool,
    /// Keep the work directory at this path.
    pub keep_work: Option<&'a Path>,
    /// A node configuration to bake into the root at [`BAKED_PATH`] (mode 0600).
    pub node_config: Option<&'a Path>,
    /// Sign the manifest with this key (`ingot keygen`): `<manifest>.sig`.
    pub sign_key: Option<&'a Path>,
    /// Sign systemd-boot and the UKI for Secure Boot with this db key (`ingot keygen --secure-boot`): its
    /// path prefix (`DIR/db`) or the key set's directory.
    pub secure_boot_key: Option<&'a Path>,
}

/// `ingot build`: checks the lock, fetches (or takes from the cache) every input, and builds the image.
pub fn build(profile_arg: &str, out_dir: &Path, opts: BuildOptions<'_>) -> Result<pipeline::Report> {
    let BuildOptions {
        offline,
        quiet,
        rebuild,
        keep_work,
        node_config,
        sign_key,
        secure_boot_key,
    } = opts;
    // A bad key or a broken configuration fails the build before anything is read or fetched.
    let sign_key = sign_key.map(crate::signing::load_signing_key).transpose()?;
    let secure_boot = secure_boot_key
        .map(crate::secure_boot::Signer::load)
        .transpose()?;
    let baked = node_config.map(crate::node_config::load).transpose()?;
    let mut profile = load_profile(profile_arg)?;
    if let Some(file) = &baked {
        bake_node_config(&mut profile, file)?;
        if !quiet {
            eprintln!(
                "baking {} into {BAKED_PATH}: cluster {}, token {}",
                file.path.display(),
                file.config.cluster.endpoint,
                file.config.cluster.token
            );
        }
    }
    let profile = profile;
    let lock = current_lock(&profile, profile_arg)?;
    let path = lock_path(&profile);
    let fetcher = Fetcher::from_env(offline)?.progress(!quiet);
    if !quiet {
        eprintln!(
            "building {} {} from {}",
            profile.name,
            profile.version,
            profile.path.display()
        );
    }
    // Single programs (not a .deb or tarball) are laid out here as a one-file tree; next to the output,
    // like the build's other work files, and removed when the build ends.
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    // The output directory takes the user's umask; everything the build makes from here on, in the work
    // directory and the cache, takes the build's (see host_env).
    let _umask = crate::host_env::pin_umask();
    let programs = tempfile::Builder::new()
        .prefix(".ingot-programs-")
        .tempdir_in(out_dir)
        .with_context(|| format!("creating a work directory in {}", out_dir.display()))?;
    let unpack = |name: &str| -> Result<PathBuf> {
        let pinned = lock
            .pinned(name)
            .with_context(|| format!("{} pins no component {name:?}", path.display()))?;
        if let Some(dir) = fetcher.cache().unpacked(&pinned.sha256) {
            return Ok(dir);
        }
        let blob = fetcher.fetch(&pinned)?;
        if is_program(&blob)? {
            let dir = programs.path().join(name);
            let file = dir.join(program_file_name(&pinned.url));
            fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::copy(&blob, &file).with_context(|| format!("copying {}", blob.display()))?;
            fs::set_permissions(&file, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("setting the mode of {}", file.display()))?;
            return Ok(dir);
        }
        Ok(fetcher.unpacked(&pinned)?)
    };
    let started = Instant::now();
    let kernel = match profile.kernel.source {
        Source::Base => None,
        _ => Some(unpack("kernel")?),
    };
    let bootloader = unpack("bootloader")?;
    let components = profile
        .components
        .iter()
        .map(|c| unpack(&c.name))
        .collect::<Result<Vec<_>>>()?;
    let images = profile
        .images
        .iter()
        .map(|i| match &i.source {
            ImageSource::Archive(_) => {
                let name = crate::images::lock_name(&i.name);
                let pinned = lock
                    .pinned(&name)
                    .with_context(|| format!("{} pins no image archive {name:?}", path.display()))?;
                Ok(fetcher.fetch(&pinned)?)
            }
            ImageSource::Component { component, .. } => profile
                .components
                .iter()
                .position(|c| c.name == *component)
                .map(|k| components[k].clone())
                .with_context(|| format!("image {:?}: no component {component:?}", i.name)),
        })
        .collect::<Result<Vec<_>>>()?;
    let pulled = lock
        .pulled()
        .map(|c| Ok((c.name.clone(), unpack(&c.name)?)))
        .collect::<Result<Vec<_>>>()?;
    if !quiet {
        eprintln!(
            "  {:<34} {:>6.2} s",
            "fetching and unpacking inputs",
            started.elapsed().as_secs_f64()
        );
    }
    let pinned = lock
        .components()
        .iter()
        .map(|c| ComponentEntry {
            name: c.name.clone(),
            package: c.package.clone(),
            version: c.version.clone(),
            pulled_by: c.pulled_by.clone(),
            url: c.url.clone(),
            sha256: c.sha256.to_hex(),
        })
        .collect();
    let base = match &profile.base {
        Some(base) => Some(apt_base_input(
            &profile, base, &lock, &fetcher, out_dir, rebuild, quiet,
        )?),
        None => None,
    };
    let inputs = Inputs {
        kernel,
        base,
        bootloader,
        components,
        images,
        pulled,
        pinned,
        artifact_cache: (!rebuild).then(|| fetcher.cache().root().join("artifacts")),
        secure_boot,
    };
    let report = pipeline::build(&profile, &inputs, out_dir, quiet, keep_work)?;
    if let Some(key) = &sign_key {
        let manifest = fs::read(&report.manifest_path)
            .with_context(|| format!("reading {}", report.manifest_path.display()))?;
        let sig_path = crate::verify::signature_path(&report.manifest_path);
        crate::manifest::write_atomic(&sig_path, crate::signing::sign(key, &manifest).as_bytes())
            .with_context(|| format!("writing {}", sig_path.display()))?;
        if !quiet {
            eprintln!(
                "signed {} with key {} → {}",
                report.manifest_path.display(),
                crate::signing::key_id(&key.verifying_key()),
                sig_path.display()
            );
        }
    }
    Ok(report)
}

/// Fetches the apt base's pinned packages and makes the root's tarball with mmdebstrap, or takes it from
/// the cache when the same packages, options and mmdebstrap made it before (unless `rebuild`).
fn apt_base_input(
    profile: &Profile,
    base: &profile::AptBase,
    lock: &Lock,
    fetcher: &Fetcher,
    out_dir: &Path,
    rebuild: bool,
    quiet: bool,
) -> Result<pipeline::BaseInput> {
    let started = Instant::now();
    let debs = lock
        .base()
        .iter()
        .map(|c| {
            let file = fetcher.fetch(&Pinned {
                component: c.name.clone(),
                url: c.url.clone(),
                sha256: c.sha256,
            })?;
            crate::apt_base::BaseDeb::new(c, file)
        })
        .collect::<Result<Vec<_>>>()?;
    let epoch = profile.source_date_epoch;
    let key = crate::apt_base::cache_key(base, &debs, epoch, &crate::apt_base::mmdebstrap_version()?);
    let tar = fetcher
        .cache()
        .root()
        .join("artifacts")
        .join(format!("base-{key}.tar"));
    if rebuild || !tar.is_file() {
        let repo = tempfile::Builder::new()
            .prefix(".ingot-apt-repo-")
            .tempdir_in(out_dir)
            .with_context(|| format!("creating a work directory in {}", out_dir.display()))?;
        crate::apt_base::write_repo(repo.path(), &debs)?;
        if !quiet {
            eprintln!(
                "  installing {} package(s) from {} with mmdebstrap",
                debs.len(),
                base.archive.suite
            );
        }
        crate::apt_base::run_mmdebstrap(base, &debs, repo.path(), epoch, &tar, quiet)?;
        if !quiet {
            eprintln!(
                "  {:<34} {:>6.2} s",
                "making the apt base (mmdebstrap)",
                started.elapsed().as_secs_f64()
            );
        }
    } else if !quiet {
        eprintln!(
            "  {:<34} {:>6.2} s",
            "reusing the apt base",
            started.elapsed().as_secs_f64()
        );
    }
    let requested: Vec<&str> = base.packages.iter().map(String::as_str).collect();
    let packages = debs
        .iter()
        .map(|d| crate::manifest::PackageEntry {
            name: d.locked.name.clone(),
            version: d.locked.version.clone().unwrap_or_default(),
            architecture: d.field("Architecture").unwrap_or(&base.archive.arch).to_owned(),
            sha256: d.locked.sha256.to_hex(),
            dependency: d.locked.pulled_by.is_some() && !requested.contains(&d.locked.name.as_str()),
        })
        .collect();
    Ok(pipeline::BaseInput {
        tar,
        key: key.to_hex(),
        packages,
    })
}

/// Adds a node configuration to the files the profile puts into the root, at [`BAKED_PATH`] with mode 0600.
fn bake_node_config(profile: &mut Profile, file: &NodeConfigFile) -> Result<()> {
    if profile.files.iter().any(|f| f.path == Path::new(BAKED_PATH)) {
        bail!(
            "{}: the profile already puts a file at {BAKED_PATH}; remove it there or drop --node-config {}",
            profile.path.display(),
            file.path.display()
        );
    }
    // `load` checked the bytes are UTF-8 text.
    let text = String::from_utf8_lossy(&file.bytes).into_owned();
    profile.files.push(ImageFile {
        path: PathBuf::from(BAKED_PATH),
        content: FileContent::Inline(text),
        mode: 0o600,
    });
    Ok(())
}

/// Whether a blob is a single program (an ELF file) rather than a `.deb` or a tarball.
fn is_program(blob: &Path) -> Result<bool> {
    let mut head = [0u8; 4];
    let mut file = fs::File::open(blob).with_context(|| format!("reading {}", blob.display()))?;
    let n =
        std::io::Read::read(&mut file, &mut head).with_context(|| format!("reading {}", blob.display()))?;
    Ok(n == 4 && head == *b"\x7fELF")
}

/// The file name a single program gets inside its component: the last segment of its URL or path
/// (`…/v1.4.3/runc.amd64` → `runc.amd64`), which is what `files = [{ src = … }]` names.
pub fn program_file_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() && name != "." && name != ".." => name.to_owned(),
        _ => "program".to_owned(),
    }
}

/// What `ingot kernel check` reads the configuration from.
#[derive(Debug, Clone)]
pub enum KernelConfigInput {
    /// A configuration file (`/boot/config-*`, `.config`) or a kernel `.deb` holding `/boot/config-*`.
    Path(PathBuf),
    /// The kernel a profile's lock file pins (fetched into the cache if it is not there yet).
    Profile(String),
}

/// Longest configuration file read (Debian's generic one is 280 KB).
const MAX_KERNEL_CONFIG: u64 = 16 << 20;

fn is_kernel_config(p: &Path) -> bool {
    p.parent() == Some(Path::new("boot"))
        && p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("config-"))
}

/// Reads a kernel configuration; returns a description of where it came from and its text.
pub fn read_kernel_config(input: &KernelConfigInput, offline: bool) -> Result<(String, String)> {
    match input {
        KernelConfigInput::Path(path) => {
            let mut head = [0u8; 8];
            let n = std::fs::File::open(path)
                .and_then(|mut f| std::io::Read::read(&mut f, &mut head))
                .with_context(|| format!("reading {}", path.display()))?;
            if head[..n] == *b"!<arch>\n" {
                let (inner, bytes) = crate::fetch::find_data_file(path, is_kernel_config, MAX_KERNEL_CONFIG)?
                    .with_context(|| {
                        format!(
                            "{} holds no /boot/config-* (is it a linux-image package?)",
                            path.display()
                        )
                    })?;
                return Ok((
                    format!("{} (/{})", path.display(), inner.display()),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ));
            }
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok((
                path.display().to_string(),
                String::from_utf8_lossy(&bytes).into_owned(),
            ))
        }
        KernelConfigInput::Profile(arg) => {
            let profile = load_profile(arg)?;
            let path = lock_path(&profile);
            let lock = Lock::load(&path).with_context(|| {
                format!("the profile's kernel is pinned by its lock file (run `ingot lock --profile {arg}`)")
            })?;
            let pinned = lock
                .pinned("kernel")
                .with_context(|| format!("{} pins no kernel", path.display()))?;
            let dir = Fetcher::from_env(offline)?.unpacked(&pinned)?;
            let boot = dir.join("boot");
            let mut configs: Vec<PathBuf> = std::fs::read_dir(&boot)
                .with_context(|| format!("the kernel package has no /boot ({})", boot.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.strip_prefix(&dir).is_ok_and(is_kernel_config))
                .collect();
            configs.sort();
            let config = configs
                .pop()
                .context("the profile's kernel package has no /boot/config-*")?;
            let text =
                std::fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            let name = config
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let package = lock
                .component("kernel")
                .and_then(|c| c.package.clone())
                .unwrap_or_else(|| pinned.url.clone());
            Ok((
                format!("profile {} kernel {package} (/boot/{name})", profile.name),
                text,
            ))
        }
    }
}

/// `ingot kernel check`: which of `features` (all when empty) the configuration has.
pub fn kernel_check(
    input: &KernelConfigInput,
    features: &[String],
    offline: bool,
) -> Result<kconfig::Report> {
    let all = kconfig::features()?;
    // An unknown feature is reported before anything is read or downloaded.
    kconfig::check("", &kconfig::KernelConfig::default(), &all, features)?;
    let (source, text) = read_kernel_config(input, offline)?;
    let config = kconfig::parse(&text);
    if config.options.is_empty() {
        bail!("{source} is not a kernel configuration: it has no CONFIG_ lines");
    }
    Ok(kconfig::check(&source, &config, &all, features)?)
}

/// Options of `ingot run`.
pub struct RunOptions {
    pub image: PathBuf,
    pub accel: ingot_qemu::Accel,
    pub memory_mib: u32,
    pub cpus: u32,
    pub expect: Option<String>,
    pub timeout: Option<Duration>,
    pub serial_log: Option<PathBuf>,
    /// Size of the guest's disk in bytes; `None` gives exactly the image.
    pub disk_size: Option<u64>,
    /// How the disk is attached: virtio, or as a USB stick.
    pub disk_bus: ingot_qemu::DiskBus,
    /// Let the guest reboot within the run instead of ending it.
    pub allow_reboot: bool,
    /// A node configuration to hand to the guest, and the channel to hand it on.
    pub node_config: Option<(PathBuf, Channel)>,
    /// Boot with Secure Boot on, trusting this key set (`ingot keygen --secure-boot`).
    pub secure_boot: Option<PathBuf>,
}

/// What the kernel prints when the guest reboots.
const KERNEL_REBOOT_LINE: &str = "reboot: Restarting system";

/// `ingot run`: boots the image under QEMU with the console on stdout. With `expect`, returns once the line
/// appears (error if it does not within the timeout); otherwise runs until the guest powers off (or reboots,
/// without `allow_reboot`).
pub fn run(opts: RunOptions) -> Result<()> {
    if !opts.image.is_file() {
        bail!(
            "{} does not exist (build it with `ingot build --profile NAME`)",
            opts.image.display()
        );
    }
    let node_config = opts
        .node_config
        .as_ref()
        .map(|(path, channel)| Ok::<_, anyhow::Error>((crate::node_config::load(path)?, *channel)))
        .transpose()?;
    let mut cfg = ingot_qemu::VmConfig::new(&opts.image);
    cfg.accel = opts.accel;
    cfg.memory_mib = opts.memory_mib;
    cfg.cpus = opts.cpus;
    cfg.echo = true;
    cfg.serial_log = opts.serial_log.clone();
    cfg.disk_size = opts.disk_size;
    cfg.disk_bus = opts.disk_bus;
    cfg.exit_on_reboot = !opts.allow_reboot;
    if let Some(dir) = &opts.secure_boot {
        if let Some((_, Channel::Cmdline)) = &node_config {
            bail!(
                "--config-channel cmdline boots the UKI's kernel directly with a changed command line, which \
                 Secure Boot refuses (the UKI's signature covers its command line); use fw_cfg, smbios or esp"
            );
        }
        cfg.firmware = secure_boot_firmware(dir)?;
    }
    // Scratch files (the configuration, an image copy, the kernel) live until the VM is gone.
    let _delivery = match &node_config {
        Some((file, channel)) => {
            let d = crate::deliver::deliver(&mut cfg, file, *channel)
                .with_context(|| format!("handing {} to the VM on {channel}", file.path.display()))?;
            eprintln!(
                "ingot run: node config {} on {channel}: cluster {}, token {}",
                file.path.display(),
                file.config.cluster.endpoint,
                file.config.cluster.token
            );
            Some(d)
        }
        None => None,
    };
    let mut vm = ingot_qemu::Vm::start(cfg).context("starting QEMU")?;
    let forever = Duration::from_secs(u64::MAX / 4);
    match opts.expect {
        Some(pattern) => {
            let timeout = opts.timeout.unwrap_or(Duration::from_secs(300));
            let m = vm.wait_for(&pattern, timeout)?;
            eprintln!(
                "ingot run: saw {pattern:?} after {:.1} s ({})",
                m.elapsed.as_secs_f64(),
                vm.accel()
            );
            vm.kill();
            Ok(())
        }
        None => {
            let status = vm.wait_exit(opts.timeout.unwrap_or(forever))?;
            if !status.success() {
                bail!("QEMU exited with {status}");
            }
            let rebooted = vm
                .console_lines()
                .iter()
                .rev()
                .take(20)
                .any(|l| l.contains(KERNEL_REBOOT_LINE));
            if rebooted && !opts.allow_reboot {
                eprintln!(
                    "ingot run: the guest rebooted, which ends the run (--allow-reboot lets it boot again)"
                );
            }
            Ok(())
        }
    }
}

/// OVMF with Secure Boot and a variable store trusting the key set in `dir`, made once per key set in the
/// cache (`<cache>/secure-boot-vars/`).
pub fn secure_boot_firmware(dir: &Path) -> Result<ingot_qemu::Firmware> {
    let code = PathBuf::from(ingot_qemu::OVMF_SECURE_BOOT_CODE);
    for f in [&code, &PathBuf::from(crate::secure_boot::OVMF_VARS_TEMPLATE)] {
        if !f.is_file() {
            bail!(
                "Secure Boot under QEMU needs Debian's OVMF built with it: {}",
                ingot_spec::host_tools::missing_message(&f.to_string_lossy())
            );
        }
    }
    let cache = crate::fetch::Cache::from_env()?;
    let vars = crate::secure_boot::enrolled_vars(dir, &cache.root().join("secure-boot-vars"))
        .with_context(|| format!("enrolling the Secure Boot keys of {}", dir.display()))?;
    Ok(ingot_qemu::Firmware::OvmfSecureBoot(ingot_qemu::OvmfPaths {
        code,
        vars,
    }))
}

/// `ingot node-config from-join-command`: writes the configuration the join command describes to `out`
/// (mode 0600) and returns what to tell the user.
pub fn node_config_from_join_command(
    command: &str,
    out: &Path,
    node_name: Option<&str>,
    force: bool,
) -> Result<String> {
    let command = if command == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the join command from standard input")?;
        text
    } else {
        command.to_owned()
    };
    let config = crate::node_config::from_join_command(&command, node_name)?;
    crate::node_config::write(out, &config, force)?;
    Ok(crate::node_config::written_report(out, &config))
}

/// `ingot node-config check`: validates a file and returns its summary.
pub fn node_config_check(path: &Path) -> Result<String> {
    let file = crate::node_config::load(path)?;
    Ok(format!(
        "{} is a valid node configuration\n{}",
        path.display(),
        crate::node_config::summary(&file.config)
    ))
}
