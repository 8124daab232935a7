//! `ingot export`: an image in the formats provisioning tools take, beside the raw image and its bmap.
//!
//! - `raw.zst`: the raw image compressed with zstd, one frame with the content size and a checksum.
//!   bmaptool (`bmaptool copy --bmap x.bmap x.raw.zst /dev/sdX`) and Tinkerbell's image2disk
//!   (`COMPRESSED=true`, chosen by the `.zst` suffix) stream it onto a disk.
//! - `qcow2`: through `qemu-img convert` (qemu-utils), zlib-compressed clusters, for virtual machine
//!   platforms and OpenStack-style image services.
//!
//! MAAS takes the raw image itself as a `ddraw` custom image; it needs no export.
//!
//! Both are deterministic: the same image gives the same bytes on every run (for qcow2, with the same
//! qemu-img version). zstd runs at level 3 on one thread. Level 3 because an image's payload is already
//! compressed (EROFS with lz4hc, the zstd initramfs inside the UKI): on the minimal image level 19 saves a
//! tenth of the size for twenty times the time, and the zeros of the sparse partitions cost the same at
//! every level. One thread because zstd's multi-threaded mode writes different frames from the
//! single-threaded one and needs a feature the builder does not build, and because the single-threaded
//! output depends only on the level and the input, as every other zstd stream the builder writes.
//!
//! Holes in the image are not read (`SEEK_DATA`/`SEEK_HOLE`): zstd gets zeros from memory. The output is
//! written to a temp file in the output's directory, synced and renamed over the output only when complete.

use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

use ingot_spec::gpt;

/// The zstd level of `raw.zst` exports (see the module documentation).
pub const ZSTD_LEVEL: i32 = 3;

/// The qcow2 options, pinned so a change of qemu-img's defaults does not change the output: version 3
/// ("1.1", what every qemu since 1.1 reads) and 64 KiB clusters. Compression is zlib, qcow2's default and
/// the one every reader knows.
const QCOW2_OPTIONS: &str = "compat=1.1,cluster_size=65536";

/// What an image can be exported as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The raw image, zstd-compressed.
    RawZst,
    /// A compressed qcow2 image made by `qemu-img`.
    Qcow2,
}

impl Format {
    pub const ALL: [Format; 2] = [Format::RawZst, Format::Qcow2];

    /// The name on the command line, which is also the output's extension.
    pub fn name(self) -> &'static str {
        match self {
            Format::RawZst => "raw.zst",
            Format::Qcow2 => "qcow2",
        }
    }

    /// Where an export goes by default: next to the image, `out/x.raw` → `out/x.raw.zst` or `out/x.qcow2`.
    pub fn default_output(self, image: &Path) -> PathBuf {
        match self {
            Format::RawZst => image.with_extension("raw.zst"),
            Format::Qcow2 => image.with_extension("qcow2"),
        }
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = ExportError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| ExportError::UnknownFormat(s.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("unknown export format {0:?}: expected raw.zst or qcow2")]
    UnknownFormat(String),
    #[error("no image at {0} (build one with `ingot build`)")]
    NoImage(PathBuf),
    #[error("{path} is not a disk image: {reason}")]
    NotAnImage { path: PathBuf, reason: String },
    #[error("the output {0} is the image itself; choose another --out")]
    OutputIsImage(PathBuf),
    #[error("the output {0} is a directory; give a file name")]
    OutputIsDirectory(PathBuf),
    #[error("{}", ingot_spec::host_tools::missing_message("qemu-img"))]
    QemuImgMissing,
    #[error("starting qemu-img")]
    QemuImgStart(#[source] io::Error),
    #[error("qemu-img convert failed ({status}): {stderr}")]
    QemuImg { status: String, stderr: String },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What an export wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    /// Size of the output.
    pub bytes: u64,
    /// Size of the image (the raw disk the output stands for).
    pub image_bytes: u64,
}

/// Writes `image` as `format` to `out` (by default [`Format::default_output`]). With `progress`, a progress
/// bar goes to stderr when stderr is a terminal.
pub fn export(
    image: &Path,
    format: Format,
    out: Option<&Path>,
    progress: bool,
) -> Result<Exported, ExportError> {
    let (file, image_bytes) = open_image(image)?;
    // The export holds what the image holds: it gets the image's permissions.
    let mode = file
        .metadata()
        .map_err(|source| ExportError::Read {
            path: image.to_path_buf(),
            source,
        })?
        .permissions();
    let out = out.map_or_else(|| format.default_output(image), Path::to_path_buf);
    if same_file(image, &out) {
        return Err(ExportError::OutputIsImage(out));
    }
    if out.is_dir() || out.file_name().is_none() {
        return Err(ExportError::OutputIsDirectory(out));
    }
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let write_err = |source| ExportError::Write {
        path: out.clone(),
        source,
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let progress = progress && io::stderr().is_terminal();
    match format {
        Format::RawZst => {
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{name}-"))
                .tempfile_in(dir)
                .map_err(write_err)?;
            let bar = progress.then(|| crate::fetch::progress_bar("raw.zst", Some(image_bytes)));
            compress_zstd(image, &file, image_bytes, tmp.as_file(), &out, bar.as_ref())?;
            if let Some(bar) = bar {
                bar.finish_and_clear();
            }
            tmp.as_file().set_permissions(mode).map_err(write_err)?;
            tmp.as_file().sync_all().map_err(write_err)?;
            tmp.persist(&out).map_err(|e| write_err(e.error))?;
        }
        Format::Qcow2 => {
            let tmp = tempfile::Builder::new()
                .prefix(&format!(".{name}-"))
                .tempdir_in(dir)
                .map_err(write_err)?;
            let tmp_out = tmp.path().join(&name);
            qemu_img_convert(image, &tmp_out, progress)?;
            let f = File::open(&tmp_out).map_err(write_err)?;
            f.set_permissions(mode).map_err(write_err)?;
            f.sync_all().map_err(write_err)?;
            std::fs::rename(&tmp_out, &out).map_err(write_err)?;
        }
    }
    File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)?;
    let bytes = std::fs::metadata(&out).map_err(write_err)?.len();
    Ok(Exported {
        path: out,
        bytes,
        image_bytes,
    })
}

/// Opens `image` and checks it is a GPT disk image that holds its whole table; returns it and its size.
fn open_image(image: &Path) -> Result<(File, u64), ExportError> {
    let read_err = |source| ExportError::Read {
        path: image.to_path_buf(),
        source,
    };
    let not_image = |reason: String| ExportError::NotAnImage {
        path: image.to_path_buf(),
        reason,
    };
    let file = match File::open(image) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(ExportError::NoImage(image.to_path_buf()));
        }
        Err(e) => return Err(read_err(e)),
    };
    let meta = file.metadata().map_err(read_err)?;
    if !meta.is_file() {
        return Err(not_image("not a regular file".into()));
    }
    let len = meta.len();
    let mut head = vec![0u8; 2 * gpt::SECTOR as usize];
    if len < head.len() as u64 {
        return Err(not_image(format!(
            "{len} bytes, too small to hold a partition table"
        )));
    }
    file.read_exact_at(&mut head, 0).map_err(read_err)?;
    let header = gpt::parse_header(&head).map_err(|e| not_image(e.to_string()))?;
    // The backup table follows the last usable sector: an image cut short loses it.
    let needed = (header.last_usable_lba + 1 + 33) * gpt::SECTOR;
    if len < needed || !len.is_multiple_of(gpt::SECTOR) {
        return Err(not_image(format!(
            "{len} bytes, but its partition table describes a disk of at least {needed} bytes in whole sectors"
        )));
    }
    Ok((file, len))
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Compresses `len` bytes of `src` (at `path`) into `dst` (to become `out`) as one zstd frame, reading
/// only the data (holes come from a zero buffer).
fn compress_zstd(
    path: &Path,
    src: &File,
    len: u64,
    dst: &File,
    out: &Path,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<(), ExportError> {
    let read_err = |source| ExportError::Read {
        path: path.to_path_buf(),
        source,
    };
    // The encoder's errors are the output's: it only ever sees bytes already read.
    let write_err = |source| ExportError::Write {
        path: out.to_path_buf(),
        source,
    };
    const CHUNK: usize = 1 << 20;
    let zeros = vec![0u8; CHUNK];
    let mut buf = vec![0u8; CHUNK];
    let mut enc =
        zstd::stream::Encoder::new(BufWriter::with_capacity(CHUNK, dst), ZSTD_LEVEL).map_err(write_err)?;
    enc.include_checksum(true).map_err(write_err)?;
    enc.include_contentsize(true).map_err(write_err)?;
    enc.set_pledged_src_size(Some(len)).map_err(write_err)?;
    let mut pos = 0;
    while pos < len {
        let (data, end) = next_extent(src, pos, len);
        let mut at = pos;
        while at < end {
            let n = (end - at).min(CHUNK as u64) as usize;
            let chunk = if data {
                src.read_exact_at(&mut buf[..n], at).map_err(read_err)?;
                &buf[..n]
            } else {
                &zeros[..n]
            };
            enc.write_all(chunk).map_err(write_err)?;
            at += n as u64;
            if let Some(bar) = bar {
                bar.set_position(at);
            }
        }
        pos = end;
    }
    enc.finish().map_err(write_err)?.flush().map_err(write_err)?;
    Ok(())
}

/// Whether `f` holds data at `pos`, and where that data run (or hole) ends, at most at `len`. Without
/// `SEEK_DATA` support (or on any error), everything is data, which is slower but still correct.
fn next_extent(f: &File, pos: u64, len: u64) -> (bool, u64) {
    use rustix::fs::{SeekFrom, seek};
    match seek(f, SeekFrom::Data(pos)) {
        Ok(d) if d > pos => (false, d.min(len)),
        Ok(_) => match seek(f, SeekFrom::Hole(pos)) {
            Ok(h) if h > pos => (true, h.min(len)),
            _ => (true, len),
        },
        Err(rustix::io::Errno::NXIO) => (false, len),
        Err(_) => (true, len),
    }
}

/// `qemu-img convert` of the raw `image` into a compressed qcow2 at `out`. Clusters are written in order
/// (no `-W`) and the format options are pinned, so the same qemu-img writes the same bytes.
fn qemu_img_convert(image: &Path, out: &Path, progress: bool) -> Result<(), ExportError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(["convert", "-f", "raw", "-O", "qcow2", "-c", "-o", QCOW2_OPTIONS]);
    // qemu-img prints its progress on stdout; it goes to our stderr so stdout stays machine-readable.
    if progress {
        cmd.arg("-p").stdout(io::stderr());
    } else {
        cmd.stdout(Stdio::null());
    }
    cmd.arg(image)
        .arg(out)
        .stdin(Stdio::null())
        .stderr(Stdio::piped());
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(ExportError::QemuImgMissing),
        Err(source) => return Err(ExportError::QemuImgStart(source)),
    };
    if !output.status.success() {
        return Err(ExportError::QemuImg {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_name_their_default_outputs() {
        assert_eq!("raw.zst".parse::<Format>().unwrap(), Format::RawZst);
        assert_eq!("qcow2".parse::<Format>().unwrap(), Format::Qcow2);
        assert_eq!(
            "vmdk".parse::<Format>().unwrap_err().to_string(),
            "unknown export format \"vmdk\": expected raw.zst or qcow2"
        );
        let image = Path::new("out/minimal.raw");
        assert_eq!(
            Format::RawZst.default_output(image),
            Path::new("out/minimal.raw.zst")
        );
        assert_eq!(
            Format::Qcow2.default_output(image),
            Path::new("out/minimal.qcow2")
        );
    }

    /// A sparse file with data at unaligned places and a long hole compresses to a frame that gives the
    /// same bytes back, records the content size, and is the same every time.
    #[test]
    fn zstd_round_trips_a_sparse_file_deterministically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.raw");
        let f = File::create(&path).unwrap();
        let len = 40 * 1024 * 1024 + 512;
        f.set_len(len).unwrap();
        for (at, n) in [(0u64, 5000usize), (3 << 20, 70_000), (len - 700, 700)] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7 + at as usize) as u8 | 1).collect();
            f.write_all_at(&bytes, at).unwrap();
        }
        let compress = |name: &str| {
            let out = dir.path().join(name);
            let dst = File::create(&out).unwrap();
            compress_zstd(&path, &File::open(&path).unwrap(), len, &dst, &out, None).unwrap();
            std::fs::read(&out).unwrap()
        };
        let a = compress("a.zst");
        assert_eq!(a, compress("b.zst"));
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&a).ok(), Some(Some(len)));
        assert!(zstd::stream::decode_all(&a[..]).unwrap() == std::fs::read(&path).unwrap());
    }

    #[test]
    fn only_gpt_disk_images_are_exported() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.raw");
        assert!(matches!(open_image(&missing), Err(ExportError::NoImage(p)) if p == missing));
        let tiny = dir.path().join("tiny.raw");
        std::fs::write(&tiny, [0u8; 100]).unwrap();
        assert_eq!(
            open_image(&tiny).unwrap_err().to_string(),
            format!(
                "{} is not a disk image: 100 bytes, too small to hold a partition table",
                tiny.display()
            )
        );
        let zeros = dir.path().join("zeros.raw");
        std::fs::write(&zeros, vec![0u8; 8192]).unwrap();
        assert!(
            open_image(&zeros)
                .unwrap_err()
                .to_string()
                .contains("is not a disk image: no GPT header at byte 512")
        );
        assert!(matches!(
            open_image(dir.path()),
            Err(ExportError::NotAnImage { reason, .. }) if reason == "not a regular file"
        ));
    }
}
