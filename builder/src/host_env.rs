//! The parts of the building user's environment that would otherwise reach an image's bytes, pinned.
//!
//! Two machines building the same profile differ in more than their inputs: the umask decides the modes of
//! the directories the build creates (the staged root's `/` among them), and the time zone decides the
//! local times mtools writes into FAT directory entries. Both are fixed here for the build; the locale is
//! fixed for every tool whose output lands in the image. `builder/tests/image.rs` builds under two
//! environments that differ in all of these and compares the bytes.

use std::process::Command;

/// The umask every build runs under: directories 0755 and files 0644 unless a mode is set explicitly.
pub const BUILD_UMASK: u32 = 0o022;

/// Holds the build's umask; the user's is restored on drop, so files written afterwards (and the output
/// directory, created before) follow the user's choice.
pub struct PinnedUmask {
    previous: rustix::fs::Mode,
}

/// Sets the process umask to [`BUILD_UMASK`] until the returned guard drops.
pub fn pin_umask() -> PinnedUmask {
    PinnedUmask {
        previous: rustix::process::umask(rustix::fs::Mode::from_raw_mode(BUILD_UMASK)),
    }
}

impl Drop for PinnedUmask {
    fn drop(&mut self) {
        rustix::process::umask(self.previous);
    }
}

/// Pins the environment of a tool whose output lands in the image: `SOURCE_DATE_EPOCH` (file and volume
/// times), `TZ=UTC` (FAT stores local time, so mtools converts the epoch with the builder's zone) and
/// `LC_ALL=C` (collation and messages).
pub fn pin_tool_env(cmd: &mut Command, epoch: u64) -> &mut Command {
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .env_remove("LANGUAGE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_umask_is_pinned_for_the_guard_and_restored_after() {
        let before = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
        {
            let _pinned = pin_umask();
            let now = rustix::process::umask(rustix::fs::Mode::from_raw_mode(BUILD_UMASK));
            assert_eq!(now.bits(), BUILD_UMASK);
        }
        let restored = rustix::process::umask(before);
        assert_eq!(restored.bits(), 0o077);
    }

    #[test]
    fn tools_get_utc_the_c_locale_and_the_epoch() {
        let mut c = Command::new("true");
        pin_tool_env(&mut c, 42);
        let envs: Vec<(String, Option<String>)> = c
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        for (k, v) in [("SOURCE_DATE_EPOCH", "42"), ("TZ", "UTC"), ("LC_ALL", "C")] {
            assert!(envs.contains(&(k.into(), Some(v.into()))), "{k}: {envs:?}");
        }
    }
}
