//! `ingot inspect`: what an image holds, read from the image itself — the partition table, each
//! partition's hash, the UKI's command line and os-release — plus the pinned components from the manifest
//! beside it, with every partition hash checked against that manifest — and whether the boot loader and
//! the UKI carry Authenticode signatures for Secure Boot ([`boot_signatures`]).

use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ingot_spec::gpt;
use ingot_spec::partition::Role;
use serde::Serialize;

use crate::manifest::{ComponentEntry, Manifest};
use crate::secure_boot::{SignatureState, signature_state};
use crate::{disk, esp, uki};

#[derive(Debug, Serialize)]
pub struct Report {
    pub image: PathBuf,
    pub size: u64,
    /// Bytes the (sparse) image file occupies on disk.
    pub allocated: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionReport>,
    pub uki: Option<UkiReport>,
    /// systemd-boot on the ESP (`EFI/BOOT/BOOTX64.EFI`), when there.
    pub boot_loader: Option<SignedBinary>,
    /// `None` when there is no manifest next to the image.
    pub manifest: Option<PathBuf>,
    /// root-a's dm-verity parameters, from the manifest.
    pub verity: Option<crate::manifest::VerityInfo>,
    pub components: Vec<ComponentEntry>,
    /// The apt base's installed packages, from the manifest.
    pub packages: Vec<crate::manifest::PackageEntry>,
}

#[derive(Debug, Serialize)]
pub struct PartitionReport {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    /// What the type GUID means in an ingot image (`esp`, `root`, `root-verity`, `var`), or `unknown`.
    pub kind: &'static str,
    pub guid: String,
    pub offset: u64,
    pub size: u64,
    pub sha256: String,
    pub hashed_bytes: u64,
    /// Whether the hash matches the manifest's; `None` without a manifest.
    pub matches_manifest: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct UkiReport {
    pub path: String,
    pub sha256: String,
    pub cmdline: String,
    pub kernel_release: Option<String>,
    pub os_release: Option<String>,
    /// Its Authenticode signature.
    pub signature: SignatureState,
}

/// An EFI binary on the ESP and its Authenticode signature.
#[derive(Debug, Serialize)]
pub struct SignedBinary {
    pub path: String,
    pub signature: SignatureState,
}

fn kind(type_guid: &uuid::Uuid) -> &'static str {
    match *type_guid {
        ingot_spec::partition::TYPE_ESP => "esp",
        ingot_spec::partition::TYPE_ROOT_X86_64 => "root",
        ingot_spec::partition::TYPE_ROOT_X86_64_VERITY => "root-verity",
        ingot_spec::partition::TYPE_VAR => "var",
        _ => "unknown",
    }
}

/// The image's partition table.
fn read_table(image: &Path, f: &File) -> Result<(gpt::Header, Vec<gpt::Partition>)> {
    let mut head = vec![0u8; 1024];
    f.read_exact_at(&mut head, 0)
        .with_context(|| format!("{} is too small to hold a GPT", image.display()))?;
    let header =
        gpt::parse_header(&head).with_context(|| format!("reading the GPT of {}", image.display()))?;
    let range = header.entries_byte_range();
    let mut array = vec![0u8; (range.end - range.start) as usize];
    f.read_exact_at(&mut array, range.start).with_context(|| {
        format!(
            "{}: partition array at bytes {}..{} is cut off",
            image.display(),
            range.start,
            range.end
        )
    })?;
    let parts = gpt::parse_entries(&header, &array)
        .with_context(|| format!("reading the GPT of {}", image.display()))?;
    Ok((header, parts))
}

pub fn inspect(image: &Path) -> Result<Report> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let meta = f.metadata()?;
    let (header, parts) = read_table(image, &f)?;

    let manifest_path = crate::manifest::path_for_image(image);
    let manifest = if manifest_path.exists() {
        Some(Manifest::load(&manifest_path)?)
    } else {
        None
    };

    let mut partitions = Vec::new();
    for p in &parts {
        let end = p.offset_bytes() + p.size_bytes();
        if end > meta.len() {
            bail!(
                "{}: partition {} ({}) ends at byte {end}, past the end of the file ({} bytes)",
                image.display(),
                p.number,
                p.name,
                meta.len()
            );
        }
        let (sha, hashed) = disk::scan(&f, p.offset_bytes(), p.size_bytes(), |_, _| Ok(()))
            .with_context(|| format!("reading partition {} of {}", p.number, image.display()))?
            .finish();
        let sha = hex::encode(sha);
        let matches_manifest = manifest.as_ref().map(|m| {
            m.partitions
                .iter()
                .any(|e| e.number == p.number && e.sha256 == sha && e.hashed_bytes == hashed)
        });
        partitions.push(PartitionReport {
            number: p.number,
            label: p.name.clone(),
            type_guid: p.type_guid.to_string(),
            kind: kind(&p.type_guid),
            guid: p.part_guid.to_string(),
            offset: p.offset_bytes(),
            size: p.size_bytes(),
            sha256: sha,
            hashed_bytes: hashed,
            matches_manifest,
        });
    }

    let (uki, boot_loader) = match parts.iter().find(|p| p.type_guid == Role::Esp.type_guid()) {
        None => (None, None),
        Some(esp_part) => (
            read_uki(image, esp_part.offset_bytes())?,
            read_boot_loader(image, esp_part.offset_bytes())?,
        ),
    };
    Ok(Report {
        image: image.to_path_buf(),
        size: meta.len(),
        allocated: meta.blocks() * 512,
        disk_guid: header.disk_guid.to_string(),
        partitions,
        uki,
        boot_loader,
        manifest: manifest.as_ref().map(|_| manifest_path),
        verity: manifest.as_ref().and_then(|m| m.verity.clone()),
        packages: manifest.as_ref().map(|m| m.packages.clone()).unwrap_or_default(),
        components: manifest.map(|m| m.components).unwrap_or_default(),
    })
}

fn read_uki(image: &Path, offset: u64) -> Result<Option<UkiReport>> {
    // An ESP without EFI/Linux simply has no UKI; any other failure (mtools missing, a damaged FAT) is an
    // error, not an empty answer.
    let mut names = match esp::list_dir(image, offset, esp::UKI_DIR) {
        Ok(names) => names,
        Err(esp::EspError::Tool { stderr, .. }) if stderr.contains("not found") => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {} on the ESP", esp::UKI_DIR)),
    };
    names.sort();
    let Some(name) = names.into_iter().rfind(|n| n.ends_with(".efi")) else {
        return Ok(None);
    };
    let path = format!("{}/{name}", esp::UKI_DIR);
    let bytes = esp::read_file(image, offset, &path)?;
    let cmdline = uki::cmdline(&bytes)
        .with_context(|| format!("reading {path} on the ESP"))?
        .unwrap_or_default();
    Ok(Some(UkiReport {
        sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)),
        cmdline,
        kernel_release: uki::uname(&bytes).ok().flatten(),
        os_release: uki::os_release(&bytes).ok().flatten(),
        signature: signature_state(&bytes),
        path,
    }))
}

fn read_boot_loader(image: &Path, offset: u64) -> Result<Option<SignedBinary>> {
    let bytes = match esp::read_file(image, offset, esp::BOOT_LOADER_PATH) {
        Ok(b) => b,
        Err(esp::EspError::Tool { stderr, .. }) if stderr.contains("not found") => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {} on the ESP", esp::BOOT_LOADER_PATH)),
    };
    Ok(Some(SignedBinary {
        path: esp::BOOT_LOADER_PATH.into(),
        signature: signature_state(&bytes),
    }))
}

/// The Authenticode signatures of the boot loader and the UKI on an image's ESP, read without hashing the
/// partitions (for `ingot verify`).
pub fn boot_signatures(image: &Path) -> Result<Vec<SignedBinary>> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let (_, parts) = read_table(image, &f)?;
    let Some(esp_part) = parts.iter().find(|p| p.type_guid == Role::Esp.type_guid()) else {
        return Ok(Vec::new());
    };
    let offset = esp_part.offset_bytes();
    let mut found: Vec<SignedBinary> = read_boot_loader(image, offset)?.into_iter().collect();
    if let Some(u) = read_uki(image, offset)? {
        found.push(SignedBinary {
            path: u.path,
            signature: u.signature,
        });
    }
    Ok(found)
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The report as a table for people.
pub fn render(r: &Report) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "image      {}  ({}, {} allocated)",
        r.image.display(),
        human(r.size),
        human(r.allocated)
    );
    let _ = writeln!(s, "disk GUID  {}", r.disk_guid);
    let _ = writeln!(
        s,
        "\n #  label          kind         offset      size        sha256 (to last data block)"
    );
    for p in &r.partitions {
        let check = match p.matches_manifest {
            Some(true) => "  ok",
            Some(false) => "  MISMATCH with manifest",
            None => "",
        };
        let _ = writeln!(
            s,
            " {:<2} {:<14} {:<12} {:<11} {:<11} {} ({}){check}",
            p.number,
            p.label,
            p.kind,
            human(p.offset),
            human(p.size),
            p.sha256,
            human(p.hashed_bytes)
        );
    }
    match &r.boot_loader {
        None => {
            let _ = writeln!(s, "\nloader     none found on the ESP");
        }
        Some(b) => {
            let _ = writeln!(s, "\nloader     {}  {}", b.path, b.signature);
        }
    }
    match &r.uki {
        None => {
            let _ = writeln!(s, "UKI        none found on the ESP");
        }
        Some(u) => {
            let _ = writeln!(s, "UKI        {}  sha256 {}", u.path, u.sha256);
            let _ = writeln!(s, "  signature {}", u.signature);
            let _ = writeln!(s, "  cmdline  {}", u.cmdline);
            if let Some(k) = &u.kernel_release {
                let _ = writeln!(s, "  kernel   {k}");
            }
            if let Some(os) = &u.os_release {
                let pretty = os
                    .lines()
                    .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                    .unwrap_or("");
                let _ = writeln!(s, "  os       {}", pretty.trim_matches('"'));
            }
        }
    }
    if let Some(v) = &r.verity {
        let pinned = r.uki.as_ref().is_some_and(|u| {
            ingot_spec::cmdline::parse(&u.cmdline)
                .iter()
                .any(|p| p.key == ingot_spec::cmdline::ROOT_HASH && p.value == Some(v.root_hash.as_str()))
        });
        let _ = writeln!(
            s,
            "\nverity     root hash {}{}",
            v.root_hash,
            if pinned {
                "  (pinned by the UKI's roothash=)"
            } else {
                "  NOT on the UKI's command line"
            }
        );
        let _ = writeln!(
            s,
            "  covers   partition {}: {} blocks of {} bytes ({}); tree in partition {} ({}), {}, salt {}",
            v.data_partition,
            v.data_blocks,
            v.data_block_size,
            human(v.data_blocks * u64::from(v.data_block_size)),
            v.hash_partition,
            human(v.hash_size),
            v.algorithm,
            v.salt
        );
    }
    match &r.manifest {
        None => {
            let _ = writeln!(s, "\ncomponents unknown (no manifest next to the image)");
        }
        Some(m) => {
            let _ = writeln!(s, "\ncomponents (from {})", m.display());
            for c in &r.components {
                let what = match (&c.package, &c.version) {
                    (Some(p), Some(v)) => format!("{p} {v}"),
                    (Some(p), None) => p.clone(),
                    _ => c.url.clone(),
                };
                let _ = writeln!(s, "  {:<12} {:<52} sha256 {}", c.name, what, c.sha256);
            }
            if !r.packages.is_empty() {
                let deps = r.packages.iter().filter(|p| p.dependency).count();
                let _ = writeln!(
                    s,
                    "\napt base: {} packages ({} as dependencies; the manifest lists each)",
                    r.packages.len(),
                    deps
                );
                for p in r.packages.iter().filter(|p| !p.dependency) {
                    let _ = writeln!(s, "  {:<40} {} {}", p.name, p.version, p.architecture);
                }
            }
        }
    }
    s
}
