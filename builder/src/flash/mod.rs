//! `ingot flash`: puts a verified image on a disk or USB stick, writing only what the image needs,
//! reading it all back, and never leaving a half-written disk that looks bootable.
//!
//! Order: the target is checked ([`target`]: not mounted, not the running system, large enough …), the
//! image is verified against its (signed) manifest, then [`copy`] writes: GPTs invalidated, the image's
//! ranges, a flush, a read-back of every written byte, and last the GPTs. On a disk larger than the
//! image the backup GPT goes to the disk's end, and the node grows `var` into the rest on first boot.

pub mod copy;
pub mod target;

use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::VerifyingKey;
use sha2::{Digest as _, Sha256};

use crate::manifest::Manifest;
use crate::rollback::Policy;
use crate::verify::{self, VerifyError};
use target::{Kind, Target, human};

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("{target}: refusing to write: {reason} (nothing was written)")]
    Refused { target: PathBuf, reason: String },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{image} is signed ({signature} exists): pass --key with the public key to check it (nothing was written)"
    )]
    KeyNeeded { image: PathBuf, signature: PathBuf },
    #[error("the image failed verification; nothing was written")]
    Verify(#[source] VerifyError),
    #[error("the image's GPT")]
    Gpt(#[source] ingot_spec::gpt::GptError),
    #[error("moving the backup GPT to the end of the target")]
    Relocate(#[source] ingot_spec::gpt_grow::GrowError),
    #[error(
        "read-back mismatch in {what} (bytes {start}..{end} of the target): the device did not keep what was \
         written, or the image changed while it was written; the target has no valid partition table"
    )]
    ReadBack { what: String, start: u64, end: u64 },
}

impl FlashError {
    /// Whether the target is untouched: every refusal and verification failure comes before the first write.
    pub fn nothing_written(&self) -> bool {
        matches!(
            self,
            FlashError::Refused { .. } | FlashError::KeyNeeded { .. } | FlashError::Verify(_)
        )
    }
}

/// What to flash where, and how the image is trusted.
pub struct Options {
    pub image: PathBuf,
    pub target: PathBuf,
    /// Default: next to the image.
    pub manifest: Option<PathBuf>,
    /// Check the manifest's signature with this key (and the rollback policy).
    pub key: Option<(VerifyingKey, Policy)>,
    pub to_file: bool,
    pub dry_run: bool,
    /// Draw a progress bar (stderr is a terminal).
    pub progress: bool,
}

/// What a flash did, with timings.
#[derive(Debug, Clone)]
pub struct Report {
    pub target: Target,
    pub image_size: u64,
    pub ranges: usize,
    pub bytes: u64,
    pub relocated: bool,
    pub verify_time: Duration,
    pub write_time: Duration,
    pub read_back_time: Duration,
    pub total_time: Duration,
    pub dry_run: bool,
    /// Whether the kernel re-read the partition table (block devices); the message when it did not.
    pub reread: Option<Result<(), String>>,
}

/// Flashes `opts.image` onto `opts.target`; progress and the steps go to stderr.
pub fn flash(opts: &Options) -> Result<Report, FlashError> {
    let started = Instant::now();
    let manifest_path = opts
        .manifest
        .clone()
        .unwrap_or_else(|| crate::manifest::path_for_image(&opts.image));
    let image_size = std::fs::metadata(&opts.image)
        .map_err(|source| FlashError::Io {
            what: format!("reading {}", opts.image.display()),
            source,
        })?
        .len();
    let target = target::inspect(&opts.target, image_size, opts.to_file, &target::System::default())?;
    eprintln!("target: {target}");

    let signature = verify::signature_path(&manifest_path);
    let verified = match &opts.key {
        Some((key, policy)) => {
            crate::rollback::verify(&opts.image, &manifest_path, key, policy)
                .map_err(FlashError::Verify)?
                .verified
        }
        None if signature.exists() => {
            return Err(FlashError::KeyNeeded {
                image: opts.image.clone(),
                signature,
            });
        }
        None => verify::check_unsigned(&opts.image, &manifest_path).map_err(FlashError::Verify)?,
    };
    let verify_time = started.elapsed();
    let manifest = &verified.manifest;
    match &verified.key_id {
        Some(id) => eprintln!(
            "image: {} {} verified, signed by key {id} ({:.2} s)",
            manifest.image.name,
            manifest.image.version,
            verify_time.as_secs_f64()
        ),
        None => eprintln!(
            "image: {} {} matches its manifest ({:.2} s); the manifest is not signed, so this proves the image \
             undamaged, not who built it",
            manifest.image.name,
            manifest.image.version,
            verify_time.as_secs_f64()
        ),
    }

    let src = File::open(&opts.image).map_err(|source| FlashError::Io {
        what: format!("opening {}", opts.image.display()),
        source,
    })?;
    let plan = copy::plan(manifest, &src, target.size)?;
    let mut report = Report {
        target: target.clone(),
        image_size: manifest.image.size,
        ranges: plan.bulk.len(),
        bytes: plan.bulk_bytes() + (plan.head.len() + plan.tail.1.len()) as u64,
        relocated: plan.relocated,
        verify_time,
        write_time: Duration::ZERO,
        read_back_time: Duration::ZERO,
        total_time: Duration::ZERO,
        dry_run: opts.dry_run,
        reread: None,
    };
    if opts.dry_run {
        eprintln!(
            "would write {} in {} ranges:",
            human(report.bytes),
            plan.bulk.len()
        );
        for r in &plan.bulk {
            eprintln!(
                "  bytes {:>12}..{:<12} {}",
                r.start,
                r.end,
                human(r.end - r.start)
            );
        }
        eprintln!(
            "  then read all of it back, then the backup GPT at byte {} and the primary GPT last{}",
            plan.tail.0,
            if plan.relocated {
                format!(
                    " (the backup moved from the image's end to the target's: {} more for var to grow into)",
                    human(target.size - manifest.image.size)
                )
            } else {
                String::new()
            }
        );
        report.total_time = started.elapsed();
        return Ok(report);
    }

    let (dst, temp) = open_target(&target)?;
    write_all(opts, &plan, &src, &dst, &target, &mut report, manifest)?;
    drop(dst);
    if let Some(temp) = temp {
        temp.persist(&target.path).map_err(|e| FlashError::Io {
            what: format!("renaming the finished copy to {}", target.path.display()),
            source: e.error,
        })?;
        if let Some(dir) = target.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| FlashError::Io {
                    what: format!("flushing {}", dir.display()),
                    source,
                })?;
        }
    }
    if let Kind::Disk { name, .. } = &target.kind {
        // A loop device set up without partition scanning (losetup without -P) refuses by design.
        let partscan = std::fs::read_to_string(format!("/sys/block/{name}/loop/partscan"));
        if !matches!(partscan.as_deref().map(str::trim), Ok("0")) {
            report.reread = Some(reread_partitions(&target.path));
        }
    }
    report.total_time = started.elapsed();
    Ok(report)
}

/// The target opened for writing: a block device exclusively and for direct I/O; a new file as a temp
/// file beside it, renamed when complete.
fn open_target(target: &Target) -> Result<(File, Option<tempfile::NamedTempFile>), FlashError> {
    let io = |what: String| move |source| FlashError::Io { what, source };
    match target.kind {
        Kind::Disk { .. } => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags((rustix::fs::OFlags::DIRECT | rustix::fs::OFlags::EXCL).bits() as i32)
                .open(&target.path);
            match f {
                Ok(f) => Ok((f, None)),
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => Err(FlashError::Refused {
                    target: target.path.clone(),
                    reason: "is in use: the kernel refused exclusive access (mounted in another namespace, or part \
                             of a device-mapper or RAID device)"
                        .into(),
                }),
                Err(e) => Err(io(format!("opening {} for writing", target.path.display()))(e)),
            }
        }
        Kind::File { exists: true } => {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&target.path)
                .map_err(io(format!("opening {} for writing", target.path.display())))?;
            Ok((f, None))
        }
        Kind::File { exists: false } => {
            let dir = match target.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            let temp = tempfile::Builder::new()
                .prefix(".ingot-flash-")
                .tempfile_in(&dir)
                .map_err(io(format!("creating a temporary file in {}", dir.display())))?;
            temp.as_file()
                .set_len(target.size)
                .map_err(io(format!("sizing {}", temp.path().display())))?;
            let f = temp
                .as_file()
                .try_clone()
                .map_err(io(format!("opening {}", temp.path().display())))?;
            Ok((f, Some(temp)))
        }
    }
}

fn sync(dst: &File, target: &Target) -> Result<(), FlashError> {
    dst.sync_all().map_err(|source| FlashError::Io {
        what: format!("flushing {}", target.path.display()),
        source,
    })?;
    // A file's read-back must come from the disk, not from the pages just written.
    if let Kind::File { .. } = target.kind {
        let _ = rustix::fs::fadvise(dst, 0, None, rustix::fs::Advice::DontNeed);
    }
    Ok(())
}

fn write_all(
    opts: &Options,
    plan: &copy::Plan,
    src: &File,
    dst: &File,
    target: &Target,
    report: &mut Report,
    manifest: &Manifest,
) -> Result<(), FlashError> {
    let bar = progress_bar(opts.progress, plan.bulk_bytes(), "writing");
    let inc = |n| bar.inc(n);
    let mut c = copy::Copier {
        src,
        dst,
        buf: copy::AlignedBuf::new(copy::CHUNK),
        progress: &inc,
    };
    for r in &plan.invalidate {
        c.write_bytes(r.start, &vec![0u8; (r.end - r.start) as usize])?;
    }
    sync(dst, target)?;

    let t = Instant::now();
    let mut written: Vec<(Range<u64>, [u8; 32])> = Vec::with_capacity(plan.bulk.len());
    for r in &plan.bulk {
        for piece in split(r, &plan.zeroed) {
            let hash = c.write(&piece.0, piece.1)?;
            written.push((piece.0, hash));
        }
    }
    sync(dst, target)?;
    report.write_time = t.elapsed();
    bar.finish_and_clear();
    eprintln!(
        "wrote {} in {} ranges ({:.2} s, {}/s)",
        human(plan.bulk_bytes()),
        plan.bulk.len(),
        report.write_time.as_secs_f64(),
        human((plan.bulk_bytes() as f64 / report.write_time.as_secs_f64().max(1e-6)) as u64)
    );

    let t = Instant::now();
    let bar = progress_bar(opts.progress, plan.bulk_bytes(), "reading back");
    let inc = |n| bar.inc(n);
    c.progress = &inc;
    let mut parts: Vec<(Range<u64>, Sha256, u64)> = plan
        .partitions
        .iter()
        .map(|(_, r, _)| (r.clone(), Sha256::new(), 0))
        .collect();
    for (r, hash) in &written {
        if c.read_back(r, &mut parts)? != *hash {
            return Err(FlashError::ReadBack {
                what: "the image's data".into(),
                start: r.start,
                end: r.end,
            });
        }
    }
    for ((label, r, expected), (_, h, fed)) in plan.partitions.iter().zip(parts) {
        let found = hex::encode(h.finalize());
        if fed != r.end - r.start || found != *expected {
            return Err(FlashError::ReadBack {
                what: format!(
                    "partition {label} (its manifest sha256 is {expected}, the target has {found})"
                ),
                start: r.start,
                end: r.end,
            });
        }
    }
    bar.finish_and_clear();

    c.write_bytes(plan.tail.0, &plan.tail.1)?;
    sync(dst, target)?;
    c.write_bytes(0, &plan.head)?;
    sync(dst, target)?;
    for (what, offset, bytes) in [
        ("the backup GPT", plan.tail.0, &plan.tail.1),
        ("the primary GPT", 0, &plan.head),
    ] {
        if !c.reads_back_as(offset, bytes)? {
            return Err(FlashError::ReadBack {
                what: what.into(),
                start: offset,
                end: offset + bytes.len() as u64,
            });
        }
    }
    report.read_back_time = t.elapsed();
    eprintln!(
        "read back and compared {} ({:.2} s); {} partitions match the manifest{}",
        human(plan.bulk_bytes()),
        report.read_back_time.as_secs_f64(),
        plan.partitions.len(),
        if plan.relocated {
            format!(
                "; backup GPT moved to the end ({} for var to grow into on first boot)",
                human(target.size - manifest.image.size)
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

/// `range` cut into pieces that are (false) or are not (true) to be written from the image.
fn split(range: &Range<u64>, zeroed: &[Range<u64>]) -> Vec<(Range<u64>, bool)> {
    let mut out = Vec::new();
    let mut at = range.start;
    for z in zeroed {
        let start = z.start.max(at);
        let end = z.end.min(range.end);
        if start < end {
            if at < start {
                out.push((at..start, false));
            }
            out.push((start..end, true));
            at = end;
        }
    }
    if at < range.end {
        out.push((at..range.end, false));
    }
    out
}

/// The bar downloads and exports draw too, or a hidden one when stderr is not a terminal.
fn progress_bar(show: bool, total: u64, what: &str) -> indicatif::ProgressBar {
    if show {
        crate::fetch::progress_bar(what, Some(total))
    } else {
        indicatif::ProgressBar::hidden()
    }
}

/// Asks the kernel to re-read the target's partition table (`blockdev --rereadpt`), so its partitions
/// appear without a replug. A loop device without partition scanning says no; that is not an error.
fn reread_partitions(path: &Path) -> Result<(), String> {
    match std::process::Command::new("blockdev")
        .arg("--rereadpt")
        .arg(path)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()),
        Err(e) => Err(format!("running blockdev: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(
        clippy::single_range_in_vec_init,
        reason = "a list of one range is what is being tested"
    )]
    fn split_cuts_out_zeroed_pieces() {
        assert_eq!(split(&(0..100), &[]), vec![(0..100, false)]);
        assert_eq!(
            split(&(0..100), &[90..120]),
            vec![(0..90, false), (90..100, true)]
        );
        assert_eq!(
            split(&(10..100), &[20..30]),
            vec![(10..20, false), (20..30, true), (30..100, false)]
        );
        assert_eq!(split(&(10..20), &[30..40]), vec![(10..20, false)]);
    }
}
