//! What `ingot flash` is about to write to, and why it may not: a partition instead of a disk, a mounted
//! disk, the disk the running system lives on, a swap device, a member of a device-mapper or RAID device,
//! a read-only or too small device, or a path that is not a block device (a regular file only with
//! `--to-file`). Everything here only reads `/sys`, `/proc` and the device's size; nothing is opened for
//! writing.

use std::collections::BTreeSet;
use std::fmt;
use std::fs;
use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};

use super::FlashError;

/// The sector size GPT images are laid out for; a 4Kn disk would need another layout.
pub const SECTOR: u32 = 512;

/// A checked place to write an image to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub path: PathBuf,
    pub kind: Kind,
    /// Its size in bytes (a file that does not exist yet gets the image's size).
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A whole block device: `name` as in /sys/block (sdb, loop0, nvme1n1) and a description.
    Disk { name: String, about: String },
    /// A regular file (`--to-file`); `exists` is false when flash creates it.
    File { exists: bool },
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Disk { about, .. } => write!(f, "{} ({about}, {})", self.path.display(), human(self.size)),
            Kind::File { exists: true } => {
                write!(f, "{} (a file of {})", self.path.display(), human(self.size))
            }
            Kind::File { exists: false } => {
                write!(f, "{} (a new file of {})", self.path.display(), human(self.size))
            }
        }
    }
}

/// `n` bytes in the largest binary unit that keeps a digit before the point.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Where the kernel shows block devices and mounts; tests point these elsewhere.
#[derive(Debug, Clone)]
pub struct System {
    pub sys: PathBuf,
    pub mountinfo: PathBuf,
    pub swaps: PathBuf,
}

impl Default for System {
    fn default() -> Self {
        System {
            sys: PathBuf::from("/sys"),
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            swaps: PathBuf::from("/proc/swaps"),
        }
    }
}

/// Checks `path` as a target for an image of `image_size` bytes.
pub fn inspect(path: &Path, image_size: u64, to_file: bool, system: &System) -> Result<Target, FlashError> {
    let refuse = |reason: String| FlashError::Refused {
        target: path.to_path_buf(),
        reason,
    };
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && to_file => {
            return Ok(Target {
                path: path.to_path_buf(),
                kind: Kind::File { exists: false },
                size: image_size,
            });
        }
        Err(source) => {
            return Err(FlashError::Io {
                what: format!("looking at {}", path.display()),
                source,
            });
        }
    };
    let ft = meta.file_type();
    if ft.is_file() {
        if !to_file {
            return Err(refuse(
                "is a regular file, not a block device; pass --to-file to write an image into a file".into(),
            ));
        }
        let size = meta.len();
        if size < image_size {
            return Err(refuse(format!(
                "is {} bytes, smaller than the image ({image_size} bytes); remove it to have flash create it, or \
                 enlarge it (truncate -s SIZE)",
                size
            )));
        }
        return Ok(Target {
            path: path.to_path_buf(),
            kind: Kind::File { exists: true },
            size,
        });
    }
    if !ft.is_block_device() {
        let what = if ft.is_char_device() {
            "a character device"
        } else if ft.is_dir() {
            "a directory"
        } else {
            "neither a block device nor a regular file"
        };
        return Err(refuse(format!(
            "is {what}; flash writes to a whole disk (a block device)"
        )));
    }
    if to_file {
        return Err(refuse("is a block device; --to-file is for regular files".into()));
    }
    let rdev = meta.rdev();
    let dev = DevNum::from_rdev(rdev);
    let node = system.sys.join("dev/block").join(dev.to_string());
    let dir = fs::canonicalize(&node).map_err(|source| FlashError::Io {
        what: format!("finding {} in sysfs ({})", path.display(), node.display()),
        source,
    })?;
    let name = file_name(&dir);
    if dir.join("partition").exists() {
        let disk = dir.parent().map(file_name).unwrap_or_default();
        return Err(refuse(format!(
            "is a partition ({name} of /dev/{disk}); flash writes a whole disk: give /dev/{disk}"
        )));
    }
    if read_trimmed(&dir.join("ro")).as_deref() == Some("1") {
        return Err(refuse(format!(
            "{name} is read-only (a write-protect switch, or a read-only loop device)"
        )));
    }

    // The disk, its partitions and everything stacked on them (device-mapper, RAID), by device number.
    let family = family(&dir);
    let family_devs: BTreeSet<DevNum> = family.iter().map(|m| m.dev).collect();
    let mounts =
        parse_mountinfo(
            &fs::read_to_string(&system.mountinfo).map_err(|source| FlashError::Io {
                what: format!("reading {}", system.mountinfo.display()),
                source,
            })?,
        );
    let on_family = |m: &Mount| {
        family_devs.contains(&m.dev)
            || (m.source.starts_with("/dev/")
                && fs::metadata(&m.source)
                    .ok()
                    .filter(|s| s.file_type().is_block_device())
                    .is_some_and(|s| family_devs.contains(&DevNum::from_rdev(s.rdev()))))
    };
    let used: Vec<&Mount> = mounts.iter().filter(|m| on_family(m)).collect();
    if let Some(root) = used.iter().find(|m| m.mount_point == Path::new("/")) {
        return Err(refuse(format!(
            "holds the running system: / is mounted from {}",
            member_name(&family, root)
        )));
    }
    if let Some(m) = used.first() {
        let more = used.len() - 1;
        return Err(refuse(format!(
            "is in use: {} is mounted on {}{}; unmount it first",
            member_name(&family, m),
            m.mount_point.display(),
            if more > 0 {
                format!(" (and {more} more mounts)")
            } else {
                String::new()
            }
        )));
    }
    if let Ok(swaps) = fs::read_to_string(&system.swaps) {
        for swap in swaps.lines().skip(1).filter_map(|l| l.split_whitespace().next()) {
            let swap = unescape(swap);
            if let Ok(s) = fs::metadata(&swap)
                && s.file_type().is_block_device()
                && family_devs.contains(&DevNum::from_rdev(s.rdev()))
            {
                return Err(refuse(format!(
                    "is in use: {} is active swap; swapoff it first",
                    swap.display()
                )));
            }
        }
    }
    if let Some(holder) = family.iter().find(|m| m.stacked) {
        return Err(refuse(format!(
            "is in use: /dev/{} is built on it ({}); stop that device first",
            holder.name, holder.about
        )));
    }

    let size = device_size(path)?;
    let sector = logical_sector(path)?;
    if sector != SECTOR {
        return Err(refuse(format!(
            "has {sector}-byte logical sectors; ingot images are laid out for {SECTOR}-byte sectors"
        )));
    }
    if size < image_size {
        return Err(refuse(format!(
            "is {} ({size} bytes), smaller than the image ({image_size} bytes)",
            human(size)
        )));
    }
    Ok(Target {
        path: path.to_path_buf(),
        kind: Kind::Disk {
            about: describe(&dir, &name),
            name,
        },
        size,
    })
}

fn device_size(path: &Path) -> Result<u64, FlashError> {
    use std::io::Seek as _;
    let mut f = fs::File::open(path).map_err(|source| FlashError::Io {
        what: format!("opening {} to read its size", path.display()),
        source,
    })?;
    f.seek(std::io::SeekFrom::End(0))
        .map_err(|source| FlashError::Io {
            what: format!("reading the size of {}", path.display()),
            source,
        })
}

fn logical_sector(path: &Path) -> Result<u32, FlashError> {
    let f = fs::File::open(path).map_err(|source| FlashError::Io {
        what: format!("opening {}", path.display()),
        source,
    })?;
    rustix::fs::ioctl_blksszget(&f).map_err(|e| FlashError::Io {
        what: format!("reading the sector size of {}", path.display()),
        source: e.into(),
    })
}

/// A block device number, as sysfs and mountinfo write it (`major:minor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl DevNum {
    fn from_rdev(rdev: u64) -> DevNum {
        DevNum {
            major: rustix::fs::major(rdev),
            minor: rustix::fs::minor(rdev),
        }
    }

    fn parse(s: &str) -> Option<DevNum> {
        let (major, minor) = s.trim().split_once(':')?;
        Some(DevNum {
            major: major.parse().ok()?,
            minor: minor.parse().ok()?,
        })
    }
}

impl fmt::Display for DevNum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One block device of a disk's family.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    dev: DevNum,
    /// Built on the disk (device-mapper, RAID) rather than a part of it.
    stacked: bool,
    about: String,
}

/// The disk at sysfs directory `disk`, its partitions and, recursively, the devices stacked on them.
fn family(disk: &Path) -> Vec<Member> {
    let mut out = Vec::new();
    let mut todo: Vec<(PathBuf, bool)> = vec![(disk.to_path_buf(), false)];
    let mut seen = BTreeSet::new();
    while let Some((dir, stacked)) = todo.pop() {
        // Bounded: sysfs has no cycles, and each device is visited once.
        if !seen.insert(dir.clone()) || seen.len() > 4096 {
            continue;
        }
        let name = file_name(&dir);
        if let Some(dev) = read_trimmed(&dir.join("dev")).as_deref().and_then(DevNum::parse) {
            let about = match read_trimmed(&dir.join("dm/name")) {
                Some(dm) => format!("device-mapper {dm}"),
                None if name.starts_with("md") => "RAID".to_owned(),
                None => "a partition".to_owned(),
            };
            out.push(Member {
                name: name.clone(),
                dev,
                stacked,
                about,
            });
        }
        for entry in read_dir_names(&dir) {
            if entry.starts_with(&name) && dir.join(&entry).join("partition").exists() {
                todo.push((dir.join(&entry), stacked));
            }
        }
        for holder in read_dir_names(&dir.join("holders")) {
            if let Ok(h) = fs::canonicalize(dir.join("holders").join(&holder)) {
                todo.push((h, true));
            }
        }
    }
    out
}

fn member_name(family: &[Member], m: &Mount) -> String {
    family
        .iter()
        .find(|f| f.dev == m.dev)
        .map_or_else(|| m.source.clone(), |f| format!("/dev/{}", f.name))
}

/// What a person recognises the disk by: model, transport, removable, a loop device's backing file.
fn describe(dir: &Path, name: &str) -> String {
    if let Some(backing) = read_trimmed(&dir.join("loop/backing_file")) {
        return format!("loop device backed by {backing}");
    }
    let vendor = read_trimmed(&dir.join("device/vendor")).unwrap_or_default();
    let model = read_trimmed(&dir.join("device/model")).unwrap_or_default();
    let mut about = format!("{vendor} {model}").trim().to_owned();
    if about.is_empty() {
        about = name.to_owned();
    }
    if read_trimmed(&dir.join("removable")).as_deref() == Some("1") {
        about.push_str(", removable");
    }
    about
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn read_trimmed(p: &Path) -> Option<String> {
    fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn read_dir_names(p: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub dev: DevNum,
    pub mount_point: PathBuf,
    pub source: String,
}

/// Parses /proc/self/mountinfo (proc(5)); lines that do not parse are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fields: Vec<&str> = before.split(' ').collect();
            let dev = DevNum::parse(fields.get(2)?)?;
            let mount_point = unescape(fields.get(4)?);
            let source = after
                .split(' ')
                .nth(1)
                .map(unescape)?
                .to_string_lossy()
                .into_owned();
            Some(Mount {
                dev,
                mount_point,
                source,
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo and /proc/swaps paths.
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt as _;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MOUNTINFO: &str = "\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
23 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 7:1 / /mnt/my\\040disk rw,relatime shared:30 - vfat /dev/loop1p1 rw
41 22 0:45 / /srv rw,relatime shared:31 - btrfs /dev/sdb2 rw,space_cache
garbage line
";

    #[test]
    fn mountinfo_gives_devices_mount_points_and_sources() {
        let m = parse_mountinfo(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].dev, DevNum { major: 254, minor: 1 });
        assert_eq!(m[0].mount_point, Path::new("/"));
        assert_eq!(m[2].mount_point, Path::new("/mnt/my disk"));
        assert_eq!(m[2].source, "/dev/loop1p1");
        // btrfs reports an anonymous device number; the source is what names the disk.
        assert_eq!((m[3].dev.major, m[3].source.as_str()), (0, "/dev/sdb2"));
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(1 << 20), "1.0 MiB");
        assert_eq!(human(1_149_239_296), "1.1 GiB");
        assert_eq!(human(16 << 30), "16.0 GiB");
    }

    fn system(dir: &Path, mountinfo: &str) -> System {
        fs::write(dir.join("mountinfo"), mountinfo).unwrap();
        fs::write(dir.join("swaps"), "Filename\tType\tSize\tUsed\tPriority\n").unwrap();
        System {
            sys: dir.join("sys"),
            mountinfo: dir.join("mountinfo"),
            swaps: dir.join("swaps"),
        }
    }

    #[test]
    fn a_regular_file_needs_to_file_and_room() {
        let dir = tempfile::tempdir().unwrap();
        let sys = system(dir.path(), "");
        let f = dir.path().join("disk.img");
        fs::write(&f, vec![0u8; 4096]).unwrap();
        let err = inspect(&f, 4096, false, &sys).unwrap_err().to_string();
        assert!(
            err.contains("is a regular file, not a block device; pass --to-file"),
            "{err}"
        );
        let err = inspect(&f, 8192, true, &sys).unwrap_err().to_string();
        assert!(
            err.contains("is 4096 bytes, smaller than the image (8192 bytes)"),
            "{err}"
        );
        let t = inspect(&f, 4096, true, &sys).unwrap();
        assert_eq!((t.kind, t.size), (Kind::File { exists: true }, 4096));
        let new = dir.path().join("new.img");
        let t = inspect(&new, 8192, true, &sys).unwrap();
        assert_eq!((t.kind, t.size), (Kind::File { exists: false }, 8192));
        assert!(
            inspect(&new, 8192, false, &sys).is_err(),
            "a missing device is an error"
        );
    }

    #[test]
    fn character_devices_and_directories_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sys = system(dir.path(), "");
        let err = inspect(Path::new("/dev/null"), 4096, false, &sys)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/dev/null: refusing to write: is a character device"),
            "{err}"
        );
        let err = inspect(dir.path(), 4096, true, &sys).unwrap_err().to_string();
        assert!(err.contains("is a directory"), "{err}");
    }

    /// A block device node that exists here, with its device number (no root needed to stat it).
    fn some_block_device() -> Option<(PathBuf, DevNum)> {
        let rd = fs::read_dir("/dev").ok()?;
        let mut found: Vec<(PathBuf, DevNum)> = rd
            .flatten()
            .filter_map(|e| {
                let m = fs::metadata(e.path()).ok()?;
                m.file_type()
                    .is_block_device()
                    .then(|| (e.path(), DevNum::from_rdev(m.rdev())))
            })
            .collect();
        found.sort();
        found.into_iter().next()
    }

    /// A sysfs tree in which `dev` is the disk `disk` with partition `disk`1 (259:7) and, when `holder` is
    /// given, a device-mapper device stacked on that partition.
    fn fake_sysfs(root: &Path, dev: DevNum, disk: &str, as_partition: bool, holder: Option<&str>) {
        let disk_dir = root.join("devices/virtual/block").join(disk);
        let part_dir = disk_dir.join(format!("{disk}1"));
        fs::create_dir_all(part_dir.join("holders")).unwrap();
        fs::create_dir_all(disk_dir.join("holders")).unwrap();
        fs::write(part_dir.join("partition"), "1\n").unwrap();
        fs::write(part_dir.join("dev"), "259:7\n").unwrap();
        fs::write(disk_dir.join("ro"), "0\n").unwrap();
        fs::create_dir_all(root.join("dev/block")).unwrap();
        if as_partition {
            fs::write(part_dir.join("dev"), format!("{dev}\n")).unwrap();
            std::os::unix::fs::symlink(&part_dir, root.join("dev/block").join(dev.to_string())).unwrap();
        } else {
            fs::write(disk_dir.join("dev"), format!("{dev}\n")).unwrap();
            std::os::unix::fs::symlink(&disk_dir, root.join("dev/block").join(dev.to_string())).unwrap();
        }
        if let Some(name) = holder {
            let dm = root.join("devices/virtual/block/dm-3");
            fs::create_dir_all(dm.join("dm")).unwrap();
            fs::write(dm.join("dev"), "254:3\n").unwrap();
            fs::write(dm.join("dm/name"), format!("{name}\n")).unwrap();
            std::os::unix::fs::symlink(&dm, part_dir.join("holders/dm-3")).unwrap();
        }
    }

    /// The kernel's view of partitions, stacked devices and mounts cannot be set up on every machine (no
    /// partition scanning or device mapper in a container); these cases run against a sysfs and mountinfo
    /// written here, for a real block device node.
    #[test]
    fn partitions_mounted_partitions_stacked_devices_and_the_root_are_refused() {
        let Some((node, dev)) = some_block_device() else {
            eprintln!("skipping: no block device node in /dev");
            return;
        };
        let case = |as_partition: bool, holder: Option<&str>, mountinfo: &str| {
            let dir = tempfile::tempdir().unwrap();
            let sys = system(dir.path(), mountinfo);
            fake_sysfs(&sys.sys, dev, "sdz", as_partition, holder);
            inspect(&node, 4096, false, &sys).unwrap_err().to_string()
        };
        let err = case(true, None, "");
        assert!(err.contains("refusing to write: is a partition (sdz1 of /dev/sdz); flash writes a whole disk: give /dev/sdz"), "{err}");
        let err = case(false, None, "40 22 259:7 / /boot/efi rw - vfat /dev/sdz1 rw\n");
        assert!(
            err.contains("is in use: /dev/sdz1 is mounted on /boot/efi; unmount it first"),
            "{err}"
        );
        let err = case(
            false,
            None,
            "22 1 259:7 / / rw - ext4 /dev/sdz1 rw\n40 22 259:7 / /srv rw - ext4 /dev/sdz1 rw\n",
        );
        assert!(
            err.contains("holds the running system: / is mounted from /dev/sdz1"),
            "{err}"
        );
        let err = case(false, Some("vg-data"), "");
        assert!(
            err.contains(
                "is in use: /dev/dm-3 is built on it (device-mapper vg-data); stop that device first"
            ),
            "{err}"
        );
        let err = case(
            false,
            Some("vg-root"),
            "22 1 254:3 / / rw - ext4 /dev/mapper/vg-root rw\n",
        );
        assert!(
            err.contains("holds the running system: / is mounted from /dev/dm-3"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn mountinfo_parsing_never_panics(text in "\\PC{0,400}") {
            let _ = parse_mountinfo(&text);
        }

        #[test]
        fn unescape_round_trips_spaces(s in "[a-z ]{0,20}") {
            let escaped = s.replace(' ', "\\040");
            prop_assert_eq!(unescape(&escaped), PathBuf::from(&s));
        }
    }
}
