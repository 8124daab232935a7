//! The last step before `reboot(2)`: unmount every file system, newest first, as
//! `/proc/self/mountinfo` lists them. What cannot be unmounted (the root, anything still busy) is
//! remounted read-only, so no file system is left with unwritten changes. The kernel's API file systems
//! (`/proc`, `/sys`, `/dev` and what is mounted below them) hold no data and stay.

use ingot_spec::marker::PREFIX;

use crate::sys::Sys;

pub const MOUNTINFO: &str = "/proc/self/mountinfo";

/// Mount points the shutdown leaves alone.
const KEEP: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Undoes the octal escapes of `mountinfo` (`\040` is a space, `\134` a backslash).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        if b == b'\\'
            && let Some(digits) = field.get(i + 1..i + 4)
            && digits.iter().all(|d| (b'0'..=b'7').contains(d))
        {
            let v = digits.iter().fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

/// The mount points in `mountinfo` order (oldest first); lines without one are skipped.
pub fn mount_points(mountinfo: &[u8]) -> Vec<String> {
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let field = line.split(|&b| b == b' ').nth(4)?;
            (!field.is_empty()).then(|| String::from_utf8_lossy(&unescape(field)).into_owned())
        })
        .collect()
}

fn kept(path: &str) -> bool {
    KEEP.iter().any(|k| {
        path.strip_prefix(k)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    })
}

/// Unmounts everything but the API file systems, newest first, printing each step; remounts read-only
/// what cannot be unmounted, `/` last.
pub fn unmount_all(sys: &dyn Sys) {
    let mountinfo = match sys.read(std::path::Path::new(MOUNTINFO)) {
        Ok(b) => b,
        Err(e) => {
            crate::warn(
                sys,
                &format!("reading {MOUNTINFO}: {e}, remounting only / read-only"),
            );
            Vec::new()
        }
    };
    for target in mount_points(&mountinfo).iter().rev() {
        if target == "/" || kept(target) {
            continue;
        }
        match sys.unmount(target) {
            Ok(()) => sys.console(&format!("{PREFIX}unmounted {target}")),
            Err(e) => match sys.remount_read_only(target) {
                Ok(()) => sys.console(&format!("{PREFIX}remounted {target} read-only (unmounting: {e})")),
                Err(e2) => crate::warn(
                    sys,
                    &format!("unmounting {target}: {e}; remounting it read-only: {e2}, ignoring"),
                ),
            },
        }
    }
    match sys.remount_read_only("/") {
        Ok(()) => sys.console(&format!("{PREFIX}remounted / read-only")),
        Err(e) => crate::warn(sys, &format!("remounting / read-only: {e}, ignoring")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::sys::Errno;
    use crate::sys::fake::FakeSys;

    const SAMPLE: &str = "\
22 1 254:2 / / ro,relatime shared:1 - erofs /dev/vda2 ro,user_xattr
23 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,mode=755
24 23 0:21 / /dev/pts rw,nosuid,noexec shared:3 - devpts devpts rw
25 22 0:22 / /proc rw,nosuid,nodev,noexec shared:4 - proc proc rw
26 22 0:23 / /sys rw,nosuid,nodev,noexec shared:5 - sysfs sysfs rw
27 26 0:24 / /sys/fs/cgroup rw shared:6 - cgroup2 cgroup2 rw
28 22 0:25 / /run rw,nosuid,nodev shared:7 - tmpfs tmpfs rw,mode=755
29 22 0:26 / /tmp rw,nosuid,nodev shared:8 - tmpfs tmpfs rw
30 22 254:6 / /var rw,relatime shared:9 - ext4 /dev/vda6 rw
31 30 0:27 / /var/lib/my\\040volume rw shared:10 - tmpfs tmpfs rw
32 28 0:4 net:[4026532] /run/netns/cni-1 rw shared:11 - nsfs nsfs rw
";

    #[test]
    fn reads_mount_points_in_order_with_escapes() {
        let m = mount_points(SAMPLE.as_bytes());
        assert_eq!(m.len(), 11);
        assert_eq!(m[0], "/");
        assert_eq!(m[9], "/var/lib/my volume");
        assert_eq!(unescape(br"a\134b\040c\9x\0"), b"a\\b c\\9x\\0");
    }

    #[test]
    fn unmounts_newest_first_and_keeps_the_api_file_systems() {
        let sys = FakeSys::new();
        sys.write(MOUNTINFO, SAMPLE);
        sys.fail("umount /var/lib", Errno::BUSY);
        sys.fail("remount-ro /tmp", Errno::PERM);
        sys.fail("umount /tmp", Errno::BUSY);
        unmount_all(&sys);
        assert_eq!(
            sys.calls_matching(&["umount", "remount-ro", "console"]),
            [
                "umount /run/netns/cni-1",
                "console ingot: unmounted /run/netns/cni-1",
                "umount /var/lib/my volume",
                "remount-ro /var/lib/my volume",
                "console ingot: remounted /var/lib/my volume read-only (unmounting: Device or resource busy (os error 16))",
                "umount /var",
                "console ingot: unmounted /var",
                "umount /tmp",
                "remount-ro /tmp",
                "console ingot: warning unmounting /tmp: Device or resource busy (os error 16); remounting it read-only: Operation not permitted (os error 1), ignoring",
                "umount /run",
                "console ingot: unmounted /run",
                "remount-ro /",
                "console ingot: remounted / read-only",
            ]
        );
    }

    #[test]
    fn without_mountinfo_still_remounts_the_root() {
        let sys = FakeSys::new();
        unmount_all(&sys);
        assert_eq!(sys.calls_matching(&["umount", "remount-ro"]), ["remount-ro /"]);
    }

    proptest! {
        #[test]
        fn mountinfo_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = mount_points(&bytes);
        }

        #[test]
        fn escaped_mount_points_round_trip(path in "/[a-z \\\\\t]{0,20}") {
            let escaped: String = path.chars().map(|c| match c {
                ' ' => "\\040".to_owned(),
                '\t' => "\\011".to_owned(),
                '\\' => "\\134".to_owned(),
                c => c.to_string(),
            }).collect();
            let line = format!("1 0 0:1 / {escaped} rw - tmpfs tmpfs rw\n");
            prop_assert_eq!(mount_points(line.as_bytes()), vec![path]);
        }
    }
}
