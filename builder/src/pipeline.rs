//! Profile + unpacked inputs → `out/<name>.raw` and `out/<name>.manifest.json`.
//!
//! Steps, each a function of its inputs only (so two builds are byte-identical):
//! 1. stage 1 modules: resolve the profile's `initrd_modules` closure from the kernel package (no depmod);
//! 2. initramfs: `/init` (ingot-init), `/etc/initrd-release`, `/dev/console`, the modules and their load order;
//! 3. root: merged-/usr links, ingot-init as `/sbin/init`, mount points, root modules, pulled packages,
//!    components, container image archives, files, `/etc/ingot/init.json` (with the archives' hashes); ELF
//!    check; service programs check; EROFS;
//! 4. UKI: systemd-stub + kernel + initramfs + command line + os-release;
//! 5. ESP: systemd-boot as the removable-media loader, `loader.conf`, the UKI with boot counting;
//! 6. disk: GPT with derived GUIDs, contents copied in sparsely, hashed on the way;
//! 7. manifest, and the block map (`<name>.bmap`) of the ranges a copy must write, hashed from the finished
//!    image; then the image, manifest and block map are renamed into place (temp files until then).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use ingot_spec::config::{INIT_CONFIG_PATH, InitConfig};
use ingot_spec::node_config::Channel;
use ingot_spec::partition::Role;
use sha2::{Digest, Sha256};

use crate::disk::{self, Layout};
use crate::esp::{self, EspFile};
use crate::images::StagedImage;
use crate::init_binary::{INGOT_INIT, INITRD_PATH, ROOT_PATH};
use crate::initramfs::{Initramfs, InitramfsOptions};
use crate::kmod::{ModuleIndex, SoftDeps};
use crate::manifest::{self, ComponentEntry, ImageInfo, Manifest, PartitionEntry, UkiInfo};
use crate::profile::{FileContent, Profile};
use crate::rootfs::erofs::{self, Compression};
use crate::rootfs::stage::Stage;
use crate::uki::{self, UkiInputs};

/// Where systemd-boot-efi puts its binaries.
const SD_BOOT_EFI: &str = "usr/lib/systemd/boot/efi/systemd-bootx64.efi";
const SD_STUB_EFI: &str = "usr/lib/systemd/boot/efi/linuxx64.efi.stub";
/// The list of module files stage 1 loads, in order, relative to `/lib/modules/<kver>/`.
pub const INITRD_MODULE_LIST: &str = "/etc/ingot/modules";
/// Marks the initramfs (systemd's convention); ingot-init runs stage 1 when it exists.
pub const INITRD_RELEASE: &str = "/etc/initrd-release";
/// Directories the root must have for stage 2 to mount on.
const ROOT_MOUNT_POINTS: [&str; 9] = [
    "/dev", "/proc", "/sys", "/run", "/tmp", "/var", "/etc", "/usr", "/sysroot",
];
/// The root is merged-/usr, as Debian systems are (and trixie's packages require): these top-level names
/// are symlinks into `/usr`, made before anything is staged, so a package's `/lib/x86_64-linux-gnu/…` and
/// `/usr/lib/x86_64-linux-gnu/…` land in one directory and `/lib64/ld-linux-x86-64.so.2` resolves.
const MERGED_USR: [(&str, &str); 4] = [
    ("/bin", "usr/bin"),
    ("/sbin", "usr/sbin"),
    ("/lib", "usr/lib"),
    ("/lib64", "usr/lib64"),
];
/// Where the root's kernel modules live (`/lib/modules` through the merged-/usr symlink).
pub const ROOT_MODULES_DIR: &str = "/usr/lib/modules";

/// The unpacked inputs of a build, one directory per component, plus what the manifest records of them.
pub struct Inputs {
    /// The unpacked kernel package; `None` when the kernel is the apt base's (`[kernel] from = "base"`).
    pub kernel: Option<PathBuf>,
    /// The apt base, when the profile has one: the root starts from it.
    pub base: Option<BaseInput>,
    pub bootloader: PathBuf,
    /// Unpacked directories in the order of `profile.components`.
    pub components: Vec<PathBuf>,
    /// One per `profile.images`, in order: the verified archive (`url`/`path` images) or the unpacked
    /// component (`from` images).
    pub images: Vec<PathBuf>,
    /// Packages pulled in as dependencies (name, unpacked directory), sorted by name. They are staged
    /// whole, before the components, so a component's files win where both have a path.
    pub pulled: Vec<(String, PathBuf)>,
    pub pinned: Vec<ComponentEntry>,
    /// Where finished boot artifacts (ESP image + UKI hash) are kept by the hash of their inputs (the
    /// command line among them, which pins the root by its hash), so rebuilding an unchanged profile
    /// reuses them. `None` disables reuse.
    pub artifact_cache: Option<PathBuf>,
    /// Sign systemd-boot and the UKI with this Secure Boot db key.
    pub secure_boot: Option<crate::secure_boot::Signer>,
}

/// An apt base made by [`crate::apt_base::run_mmdebstrap`].
pub struct BaseInput {
    /// The root's tarball.
    pub tar: PathBuf,
    /// Its cache key (hex), which names the kernel in the boot artifacts' key when the kernel is the base's.
    pub key: String,
    /// What the manifest records of its packages.
    pub packages: Vec<manifest::PackageEntry>,
}

/// What a build produced.
pub struct Report {
    pub image: PathBuf,
    pub manifest_path: PathBuf,
    /// The image's block map for bmaptool.
    pub bmap_path: PathBuf,
    pub manifest: Manifest,
}

/// Prints a step and how long it took, on stderr (stdout stays free for machine-readable output).
struct Steps {
    quiet: bool,
    start: Instant,
}

impl Steps {
    fn run<T>(&self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f().with_context(|| what.to_string())?;
        if !self.quiet {
            eprintln!("  {what:<34} {:>6.2} s", t.elapsed().as_secs_f64());
        }
        Ok(r)
    }
}

fn find_kernel(kernel_dir: &Path) -> Result<(String, PathBuf, PathBuf)> {
    let boot = kernel_dir.join("boot");
    let mut found: Vec<String> = fs::read_dir(&boot)
        .with_context(|| format!("the kernel package has no /boot ({})", boot.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_prefix("vmlinuz-").map(str::to_string))
        .collect();
    found.sort();
    let Some(kver) = found.pop() else {
        bail!("the kernel package has no /boot/vmlinuz-*")
    };
    if !found.is_empty() {
        bail!(
            "the kernel package holds several kernels ({kver} and {}); pick one package",
            found.join(", ")
        );
    }
    let modules = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|m| kernel_dir.join(m))
        .find(|m| m.join(&kver).is_dir())
        .with_context(|| format!("the kernel package has no lib/modules/{kver}"))?;
    Ok((kver.clone(), boot.join(format!("vmlinuz-{kver}")), modules))
}

/// The modules the node configuration channels need ([`Channel::modules`]) that this kernel ships or has
/// built in, and those it lacks (the node skips those channels).
pub fn channel_modules(index: &ModuleIndex) -> (Vec<&'static str>, Vec<&'static str>) {
    Channel::ALL
        .iter()
        .flat_map(|c| c.modules().iter().copied())
        .partition(|m| index.is_builtin(m) || index.relative_path(m).is_some())
}

/// Stage 1's modules: the profile's `kernel.initrd_modules`, then dm-verity's (stage 1 mounts the root only
/// through a verity device) unless the profile lists them or the kernel has them built in.
fn stage1_modules(profile: &Profile, index: &ModuleIndex) -> Result<Vec<String>> {
    let mut wanted = profile.kernel.initrd_modules.clone();
    let verity = "dm_verity";
    if index.is_builtin(verity) || wanted.iter().any(|m| crate::kmod::normalize_name(m) == verity) {
        return Ok(wanted);
    }
    if index.relative_path(verity).is_none() {
        bail!(
            "kernel {} has no dm_verity module and does not build it in (CONFIG_DM_VERITY): stage 1 mounts the root only through dm-verity",
            index.kernel_version()
        );
    }
    wanted.push(verity.into());
    Ok(wanted)
}

/// The modules of the root: `kernel.root_modules`, `node.modules` and the node configuration channels'
/// modules the kernel has, with their dependencies (and `softdep=pre:` modules), under
/// `/usr/lib/modules/<kver>/` with `modules.dep`, `modules.softdep` and the kernel's `modules.builtin`.
fn stage_root_modules(stage: &Stage, index: &ModuleIndex, profile: &Profile, kver: &str) -> Result<()> {
    let mut wanted: Vec<&str> = profile.kernel.root_modules.iter().map(String::as_str).collect();
    wanted.extend(profile.init.modules.iter().map(String::as_str));
    wanted.extend(channel_modules(index).0);
    if wanted.is_empty() {
        return Ok(());
    }
    let modules = index
        .resolve(&wanted, SoftDeps::Pre)
        .context("resolving the root's kernel modules (kernel.root_modules and node.modules)")?;
    let dir = Path::new(ROOT_MODULES_DIR).join(kver);
    for m in &modules {
        stage.copy_file(&m.path, &dir.join(&m.relative_path), Some(0o644))?;
    }
    let files = index.dependency_files(&modules)?;
    stage.file(&dir.join("modules.dep"), files.modules_dep.as_bytes(), 0o644)?;
    stage.file(
        &dir.join("modules.softdep"),
        files.modules_softdep.as_bytes(),
        0o644,
    )?;
    if let Some(builtin) = index.builtin_list() {
        stage.copy_file(&builtin, &dir.join("modules.builtin"), Some(0o644))?;
    }
    Ok(())
}

/// The profile's init configuration as the node gets it: modules compiled into this kernel are dropped
/// from the list to load (there is nothing to load; the root's `modules.builtin` lists them), and the
/// container images are the archives staged into the root (name, path in the root, namespace, sha256).
pub fn init_config(profile: &Profile, index: &ModuleIndex, images: &[StagedImage]) -> InitConfig {
    let mut init = profile.init.clone();
    init.modules.retain(|m| !index.is_builtin(m));
    init.images = crate::images::images_for_init(images);
    init
}

pub fn os_release(profile: &Profile) -> String {
    format!(
        "NAME=\"ingot\"\nID=ingot\nPRETTY_NAME=\"ingot {name} {version}\"\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nVERSION_ID={version}\nHOME_URL=\"https://example.invalid/ingot\"\n",
        name = profile.name,
        version = profile.version
    )
}

/// The kernel command line: the profile's words, in order.
pub fn kernel_cmdline(profile: &Profile) -> String {
    profile.kernel.cmdline.join(" ")
}

fn hex(b: &[u8]) -> String {
    hex::encode(b)
}

/// Builds the image. Writes only inside `out_dir`: the image, manifest and block map appear there complete
/// or not at all.
pub fn build(
    profile: &Profile,
    inputs: &Inputs,
    out_dir: &Path,
    quiet: bool,
    keep_work: Option<&Path>,
) -> Result<Report> {
    let steps = Steps {
        quiet,
        start: Instant::now(),
    };
    fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(".ingot-build-")
        .tempdir_in(out_dir)
        .with_context(|| format!("creating a work directory in {}", out_dir.display()))?;
    let epoch = profile.source_date_epoch;
    let stage_dir = work.path().join("root");
    fs::create_dir(&stage_dir).with_context(|| format!("creating {}", stage_dir.display()))?;
    let base_kernel = work.path().join("kernel");
    if let Some(base) = &inputs.base {
        let report = steps.run("unpacking the apt base (strip)", || {
            if inputs.kernel.is_none() {
                fs::create_dir(&base_kernel)?;
            }
            crate::apt_base::unpack(
                &base.tar,
                &stage_dir,
                inputs.kernel.is_none().then_some(base_kernel.as_path()),
            )
        })?;
        if !quiet {
            eprintln!("    {}", report.summary());
        }
    }
    let kernel_dir = match (&inputs.kernel, &inputs.base) {
        (Some(dir), _) => dir.clone(),
        (None, Some(_)) => base_kernel,
        (None, None) => bail!("the profile takes its kernel from the apt base, and it has none"),
    };
    let (kver, vmlinuz, modules_dir) = find_kernel(&kernel_dir)?;

    let index = ModuleIndex::open(&modules_dir, &kver)?;
    let (_, missing) = channel_modules(&index);
    if !quiet && !missing.is_empty() {
        eprintln!(
            "warning: kernel {kver} lacks module(s) {}: the node cannot read its configuration from the channels that need them",
            missing.join(", ")
        );
    }
    let modules = steps.run("resolving stage 1 modules", || {
        Ok(index.resolve(&stage1_modules(profile, &index)?, SoftDeps::Pre)?)
    })?;

    let root_img = work.path().join("root.erofs");
    let mut staged_images = Vec::new();
    steps.run("staging and writing the root", || {
        let stage = Stage::new(stage_dir.clone());
        for (link, target) in MERGED_USR {
            stage.dir(&Path::new("/").join(target))?;
            stage.symlink(Path::new(target), Path::new(link))?;
        }
        for d in ROOT_MOUNT_POINTS {
            stage.dir(Path::new(d))?;
        }
        stage.file(Path::new(ROOT_PATH), INGOT_INIT, 0o755)?;
        stage.file(
            Path::new("/etc/os-release"),
            os_release(profile).as_bytes(),
            0o644,
        )?;
        if inputs.base.is_some() {
            // The distribution's own file, which `/etc/os-release` linked to, would name it rather than
            // the image.
            stage.file(
                Path::new("/usr/lib/os-release"),
                os_release(profile).as_bytes(),
                0o644,
            )?;
        }
        stage_root_modules(&stage, &index, profile, &kver)?;
        for (name, dir) in &inputs.pulled {
            stage
                .copy_tree(dir, Path::new("/"))
                .with_context(|| format!("staging package {name:?}"))?;
        }
        for (c, dir) in profile.components.iter().zip(&inputs.components) {
            if c.install {
                stage_component(&stage, c, dir)?;
            }
        }
        let image_work = work.path().join("images");
        fs::create_dir(&image_work)?;
        staged_images = crate::images::stage(&stage, profile, &inputs.images, &image_work)?;
        for f in &profile.files {
            match &f.content {
                FileContent::Inline(text) => stage.file(&f.path, text.as_bytes(), f.mode)?,
                FileContent::Host(p) => stage.copy_file(p, &f.path, Some(f.mode))?,
            }
        }
        let init = init_config(profile, &index, &staged_images);
        stage.file(
            Path::new(INIT_CONFIG_PATH),
            ingot_spec::config::to_json(&init).as_bytes(),
            0o644,
        )?;
        crate::rootfs::elf::require_resolved(&stage_dir)?;
        crate::rootfs::programs::require_executables(&stage_dir, &profile.executables)?;
        erofs::mkfs(
            &stage_dir,
            &root_img,
            disk::derived_uuid(&profile.name, "root-fs"),
            epoch,
            Compression::Lz4hc,
        )?;
        Ok(())
    })?;

    let verity_img = work.path().join("root.verity");
    let verity = steps.run("hashing the root (dm-verity)", || {
        root_verity(&root_img, &verity_img)
    })?;
    let cmdline = format!(
        "{} {}={}",
        kernel_cmdline(profile),
        ingot_spec::cmdline::ROOT_HASH,
        verity.root_hash
    );
    let uki_name = esp::uki_file_name(&profile.name, &profile.version);
    let boot_key = boot_artifact_key(profile, inputs, &cmdline, &uki_name);
    let cached = inputs.artifact_cache.as_ref().map(|d| d.join(&boot_key));
    let (esp_img, uki_sha) = match cached.as_ref().and_then(|d| read_boot_artifact(d)) {
        Some(hit) => {
            if !quiet {
                eprintln!("  {:<34} {:>6.2} s", "reusing initramfs, UKI and ESP", 0.0);
            }
            hit
        }
        None => {
            let (esp_img, uki_sha) = build_boot(
                &steps,
                profile,
                inputs,
                work.path(),
                &modules,
                &kver,
                &vmlinuz,
                &cmdline,
                &uki_name,
            )?;
            if let Some(dir) = &cached {
                // Best effort: a full cache disk must not fail the build.
                if let Err(e) = store_boot_artifact(dir, &esp_img, &uki_sha) {
                    eprintln!("warning: not caching boot artifacts in {}: {e:#}", dir.display());
                }
            }
            (esp_img, uki_sha)
        }
    };

    let layout = disk::plan(&profile.partitions);
    let image = out_dir.join(format!("{}.raw", profile.name));
    let (tmp_image, disk) = steps.run("assembling the disk", || {
        assemble_disk(profile, &layout, &esp_img, &root_img, &verity_img, out_dir)
    })?;
    let mut ranges: Vec<(u64, u64)> = disk
        .partitions
        .iter()
        .map(|p| (p.offset, p.offset + p.size))
        .collect();
    ranges.sort_unstable();
    let outside_sha256 =
        crate::verify::outside_partitions_sha256(tmp_image.as_file(), layout.disk_size, &ranges)
            .context("hashing the bytes outside the partitions")?;
    let manifest = Manifest {
        schema: manifest::SCHEMA,
        image: ImageInfo {
            name: profile.name.clone(),
            version: profile.version.clone(),
            profile: profile
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            disk_guid: disk.disk_guid,
            size: layout.disk_size,
            source_date_epoch: profile.source_date_epoch,
            outside_sha256: Some(outside_sha256),
        },
        partitions: disk.partitions,
        uki: UkiInfo {
            path: format!("{}/{uki_name}", esp::UKI_DIR),
            sha256: hex(&uki_sha),
            cmdline: cmdline.clone(),
            kernel_release: kver.clone(),
            initrd_modules: modules.iter().map(|m| m.name.clone()).collect(),
        },
        verity: Some(verity),
        components: inputs.pinned.clone(),
        images: crate::images::manifest_entries(&staged_images),
        packages: inputs
            .base
            .as_ref()
            .map(|b| b.packages.clone())
            .unwrap_or_default(),
        data_ranges: disk.data_ranges,
    };
    let block_map = steps.run("hashing the block map (bmap)", || {
        Ok(crate::bmap::BlockMap::of_image(tmp_image.as_file(), &manifest)?)
    })?;
    let manifest_path = manifest::path_for_image(&image);
    let bmap_path = crate::bmap::path_for_image(&image);
    tmp_image
        .persist(&image)
        .with_context(|| format!("moving the image to {}", image.display()))?;
    manifest::write_atomic(&manifest_path, manifest.to_json().as_bytes())
        .with_context(|| format!("writing {}", manifest_path.display()))?;
    // Last: a block map left from an earlier build until here fails bmaptool's range checksums rather
    // than write a mix.
    manifest::write_atomic(&bmap_path, block_map.to_xml().as_bytes())
        .with_context(|| format!("writing {}", bmap_path.display()))?;
    if !quiet {
        eprintln!("  {:<34} {:>6.2} s", "total", steps.start.elapsed().as_secs_f64());
    }
    if let Some(keep) = keep_work {
        // The staged root (`root/`), ESP files (`esp-files/`) and file system images, for debugging and
        // for benchmarks that feed the same tree to other tools.
        let kept = work.keep();
        fs::rename(&kept, keep)
            .with_context(|| format!("moving the work directory to {}", keep.display()))?;
    }
    Ok(Report {
        image,
        manifest_path,
        bmap_path,
        manifest,
    })
}

/// Stages a component's files (all of them, or those its `files` mapping selects) into `stage`.
pub fn stage_component(stage: &Stage, c: &crate::profile::Component, dir: &Path) -> Result<()> {
    match &c.files {
        None => stage.copy_tree(dir, Path::new("/")).map_err(anyhow::Error::from),
        Some(maps) => maps.iter().try_for_each(|m| {
            let src = dir.join(&m.src);
            if fs::symlink_metadata(&src).is_err() {
                bail!("component {:?} has no file {:?}", c.name, m.src);
            }
            Ok(stage.copy_entry(&src, &m.dst)?)
        }),
    }
    .with_context(|| format!("staging component {:?}", c.name))
}

/// What assembling the disk determined, for the manifest.
struct AssembledDisk {
    disk_guid: String,
    partitions: Vec<PartitionEntry>,
    data_ranges: Vec<[u64; 2]>,
}

/// Writes the partitions and table into a temp file in `out_dir`.
fn assemble_disk(
    profile: &Profile,
    layout: &Layout,
    esp_img: &Path,
    root_img: &Path,
    verity_img: &Path,
    out_dir: &Path,
) -> Result<(tempfile::NamedTempFile, AssembledDisk)> {
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.raw-", profile.name))
        .tempfile_in(out_dir)?;
    tmp.as_file().set_len(layout.disk_size)?;
    let esp = disk::copy_into(esp_img, tmp.as_file(), layout.get(Role::Esp), "esp")?;
    let root = disk::copy_into(root_img, tmp.as_file(), layout.get(Role::RootA), "root")?;
    let verity = disk::copy_into(
        verity_img,
        tmp.as_file(),
        layout.get(Role::RootAVerity),
        "root-a-verity",
    )?;

    let mut seed = Sha256::new();
    seed.update(esp.sha256);
    seed.update(root.sha256);
    seed.update(format!("{layout:?}"));
    let disk_guid = disk::uuid_from_hash(&seed.finalize());
    let mut guids = BTreeMap::new();
    guids.insert(Role::Esp, disk::uuid_from_hash(&esp.sha256));
    guids.insert(Role::RootA, disk::uuid_from_hash(&root.sha256));
    guids.insert(Role::RootAVerity, disk::uuid_from_hash(&verity.sha256));
    for role in [Role::RootB, Role::RootBVerity, Role::Var] {
        guids.insert(role, disk::derived_uuid(&disk_guid.to_string(), role.label()));
    }
    let path = tmp.path().to_path_buf();
    disk::write_table(tmp.as_file_mut(), &path, layout, disk_guid, &guids)?;
    tmp.as_file().sync_all()?;

    let mut data_ranges: Vec<[u64; 2]> = Vec::new();
    let gpt_tail = 33 * 512;
    data_ranges.push([0, 34 * 512]);
    for (o, l) in esp
        .data_ranges
        .iter()
        .chain(&root.data_ranges)
        .chain(&verity.data_ranges)
    {
        data_ranges.push([*o, *l]);
    }
    data_ranges.push([layout.disk_size - gpt_tail, gpt_tail]);
    let mut partitions = Vec::new();
    for p in &layout.partitions {
        let (sha, hashed) = match p.role {
            Role::Esp => (esp.sha256, esp.hashed_bytes),
            Role::RootA => (root.sha256, root.hashed_bytes),
            Role::RootAVerity => (verity.sha256, verity.hashed_bytes),
            _ => (Sha256::digest([]).into(), 0),
        };
        partitions.push(PartitionEntry {
            number: p.role.number(),
            label: p.role.label().into(),
            type_guid: p.role.type_guid().to_string(),
            guid: guids[&p.role].to_string(),
            offset: p.offset,
            size: p.size,
            sha256: hex(&sha),
            hashed_bytes: hashed,
        });
    }
    let disk = AssembledDisk {
        disk_guid: disk_guid.to_string(),
        partitions,
        data_ranges,
    };
    Ok((tmp, disk))
}

/// Writes root-a's dm-verity hash device (superblock and tree) for the root image to `out` and returns
/// what the manifest records. The tree covers the file system (padded to whole 4 KiB blocks), not the
/// zeros after it in the partition. The salt is derived from the root's bytes, so it differs between
/// images yet the same root always gets the same tree.
fn root_verity(root_img: &Path, out: &Path) -> Result<crate::manifest::VerityInfo> {
    let mut file = fs::OpenOptions::new().read(true).write(true).open(root_img)?;
    let len = file.metadata()?.len();
    let data_len = len.next_multiple_of(4096);
    if data_len != len {
        file.set_len(data_len)?;
    }
    let mut content = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    loop {
        let n = std::io::Read::read(&mut file, &mut buf)?;
        if n == 0 {
            break;
        }
        content.update(&buf[..n]);
    }
    let salt = Sha256::new()
        .chain_update(b"ingot:verity-salt:")
        .chain_update(content.finalize())
        .finalize()
        .to_vec();
    let uuid = disk::uuid_from_hash(&Sha256::digest(&salt));
    let params = crate::verity::VerityParams::new(salt, *uuid.as_bytes());
    let mut hash_dev = std::io::BufWriter::new(fs::File::create(out)?);
    std::io::Seek::rewind(&mut file)?;
    let built = crate::verity::build(&mut file, data_len, &params, &mut hash_dev)
        .context("building the dm-verity tree")?;
    std::io::Write::flush(&mut hash_dev)?;
    Ok(crate::manifest::VerityInfo {
        data_partition: Role::RootA.number(),
        hash_partition: Role::RootAVerity.number(),
        algorithm: "sha256".into(),
        data_block_size: params.data_block_size,
        hash_block_size: params.hash_block_size,
        data_blocks: built.data_blocks,
        hash_start_block: built.hash_start_block,
        hash_size: built.hash_size,
        salt: hex(&params.salt),
        uuid: uuid.to_string(),
        root_hash: hex(&built.root_hash),
    })
}

/// Builds the initramfs, the UKI and the ESP image; returns the ESP image and the UKI's sha256.
#[allow(clippy::too_many_arguments)]
fn build_boot(
    steps: &Steps,
    profile: &Profile,
    inputs: &Inputs,
    work: &Path,
    modules: &[crate::kmod::Module],
    kver: &str,
    vmlinuz: &Path,
    cmdline: &str,
    uki_name: &str,
) -> Result<(PathBuf, [u8; 32])> {
    let epoch = profile.source_date_epoch;
    let initrd = steps.run("writing the initramfs", || {
        let mut ir = Initramfs::new();
        for d in ["/dev", "/proc", "/sys", "/sysroot", "/run", "/tmp", "/etc/ingot"] {
            ir.add_dir(d.trim_start_matches('/'), 0o755)?;
        }
        ir.add_char_device("dev/console", 0o600, 5, 1)?;
        ir.add_file(INITRD_PATH.trim_start_matches('/'), 0o755, INGOT_INIT.to_vec())?;
        ir.add_file(
            INITRD_RELEASE.trim_start_matches('/'),
            0o644,
            os_release(profile).into_bytes(),
        )?;
        let mut list = String::new();
        for m in modules {
            let rel = m.relative_path.to_string_lossy();
            ir.add_file_from(&format!("lib/modules/{kver}/{rel}"), 0o644, &m.path)?;
            list.push_str(&rel);
            list.push('\n');
        }
        ir.add_file(
            INITRD_MODULE_LIST.trim_start_matches('/'),
            0o644,
            list.into_bytes(),
        )?;
        let mut opts = InitramfsOptions::new(u32::try_from(epoch).unwrap_or(u32::MAX));
        opts.zstd_level = profile.zstd_level;
        Ok(ir.build(&opts)?)
    })?;

    let uki_bytes = steps.run("assembling the UKI", || {
        let stub = fs::read(inputs.bootloader.join(SD_STUB_EFI))
            .with_context(|| format!("the bootloader package has no {SD_STUB_EFI}"))?;
        let kernel = fs::read(vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?;
        let osrel = os_release(profile);
        Ok(uki::assemble(&UkiInputs {
            stub: &stub,
            kernel: &kernel,
            initrd: &initrd,
            cmdline,
            os_release: &osrel,
            uname: Some(kver),
        })?)
    })?;
    let mut sd_boot_bytes = fs::read(inputs.bootloader.join(SD_BOOT_EFI))
        .with_context(|| format!("the bootloader package has no {SD_BOOT_EFI}"))?;
    let mut uki_bytes = uki_bytes;
    if let Some(signer) = &inputs.secure_boot {
        steps.run("signing for Secure Boot", || {
            Ok(signer.sign_boot(&mut uki_bytes, &mut sd_boot_bytes)?)
        })?;
    }
    let uki_sha = Sha256::digest(&uki_bytes);

    let esp_img = work.join("esp.img");
    steps.run("writing the ESP", || {
        let files_dir = work.join("esp-files");
        fs::create_dir(&files_dir)?;
        let uki_path = files_dir.join("uki.efi");
        fs::write(&uki_path, &uki_bytes)?;
        let sd_boot = files_dir.join("systemd-boot.efi");
        fs::write(&sd_boot, &sd_boot_bytes)?;
        let conf = files_dir.join("loader.conf");
        fs::write(&conf, esp::loader_conf(profile.bootloader.timeout))?;
        let files = [
            EspFile {
                path: esp::BOOT_LOADER_PATH.into(),
                source: sd_boot,
            },
            EspFile {
                path: esp::LOADER_CONF_PATH.into(),
                source: conf,
            },
            EspFile {
                path: format!("{}/{uki_name}", esp::UKI_DIR),
                source: uki_path,
            },
        ];
        let volume_id = u32::from_le_bytes([uki_sha[0], uki_sha[1], uki_sha[2], uki_sha[3]]);
        Ok(esp::build(
            &esp_img,
            profile.partitions.esp,
            volume_id,
            &files,
            epoch,
        )?)
    })?;

    Ok((esp_img, uki_sha.into()))
}

/// The hash of everything the ESP image depends on.
fn boot_artifact_key(profile: &Profile, inputs: &Inputs, cmdline: &str, uki_name: &str) -> String {
    let mut h = Sha256::new();
    let pin = |name: &str| {
        inputs
            .pinned
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.sha256.clone())
            .unwrap_or_default()
    };
    for part in [
        "ingot-boot-artifact-v1".to_string(),
        hex(&Sha256::digest(INGOT_INIT)),
        pin("kernel"),
        inputs
            .base
            .as_ref()
            .filter(|_| inputs.kernel.is_none())
            .map(|b| b.key.clone())
            .unwrap_or_default(),
        pin("bootloader"),
        profile.kernel.initrd_modules.join(","),
        cmdline.to_string(),
        os_release(profile),
        uki_name.to_string(),
        format!(
            "{} {} {} {}",
            profile.zstd_level, profile.source_date_epoch, profile.partitions.esp, profile.bootloader.timeout
        ),
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    // Signed binaries differ from unsigned ones, and so do those of another key.
    if let Some(signer) = &inputs.secure_boot {
        h.update(b"secure-boot db certificate");
        h.update(Sha256::digest(signer.certificate_der()));
    }
    hex(&h.finalize())
}

fn read_boot_artifact(dir: &Path) -> Option<(PathBuf, [u8; 32])> {
    let sha = fs::read_to_string(dir.join("uki.sha256")).ok()?;
    let bytes: [u8; 32] = hex::decode(sha.trim()).ok()?.try_into().ok()?;
    let esp = dir.join("esp.img");
    esp.is_file().then_some((esp, bytes))
}

fn store_boot_artifact(dir: &Path, esp_img: &Path, uki_sha: &[u8; 32]) -> Result<()> {
    let parent = dir.parent().context("artifact directory has no parent")?;
    fs::create_dir_all(parent)?;
    let tmp = tempfile::Builder::new().prefix(".tmp-").tempdir_in(parent)?;
    let src = fs::File::open(esp_img)?;
    let len = src.metadata()?.len();
    let dst = fs::File::create(tmp.path().join("esp.img"))?;
    dst.set_len(len)?;
    disk::scan(&src, 0, len, |rel, chunk| {
        std::os::unix::fs::FileExt::write_all_at(&dst, chunk, rel)
    })?;
    dst.sync_all()?;
    fs::write(tmp.path().join("uki.sha256"), hex(uki_sha))?;
    match fs::rename(tmp.keep(), dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.is_dir() => Ok(()), // another build stored the same artifact first
        Err(e) => Err(e.into()),
    }
}
