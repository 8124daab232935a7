//! Stage 2, `/sbin/init` in the read-only root: runtime tmpfs mounts, then PID 1's loop until shutdown.
//!
//! Not yet: the writable `/etc` overlay, sysctls, cgroup2, hostname, network, clock, services.

use std::convert::Infallible;
use std::io;

use ingot_spec::marker::{PHASE_READY, PHASE_STAGE2};

use crate::event_loop::EventLoop;
use crate::mounts;
use crate::options::BootOptions;
use crate::supervisor::Supervisor;
use crate::sys::{self, Shutdown, Sys};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Mount(#[from] mounts::Error),
    #[error("{}", .0.name())]
    Shutdown(Shutdown, #[source] io::Error),
}

/// Runs stage 2 until the machine goes down; returns only on failure.
pub fn run(sys: &dyn Sys, opts: &mut BootOptions) -> Result<Infallible, Error> {
    crate::phase(sys, PHASE_STAGE2);
    // Already there after stage 1 (EBUSY); needed when the kernel boots this root without an initramfs.
    mounts::mount_all(sys, &mounts::API)?;
    *opts = BootOptions::load(sys);
    sys::set_panic_policy(opts.debug, opts.reboot_delay);
    mounts::mount_all(sys, &mounts::RUNTIME)?;
    let mut supervisor = Supervisor::default();
    let mut event_loop = EventLoop::new();
    crate::phase(sys, PHASE_READY);

    let how = if opts.poweroff {
        Shutdown::PowerOff
    } else {
        event_loop.run(sys, &mut supervisor, &mut [], |_| {})
    };
    Err(Error::Shutdown(
        how,
        event_loop.shutdown(sys, &mut supervisor, how),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::fake::FakeSys;
    use crate::sys::{Errno, Signal};

    fn root(sys: &FakeSys, cmdline: &str) {
        for d in ["/dev", "/proc", "/sys", "/run", "/tmp"] {
            sys.write(&format!("{d}/.keep"), "");
        }
        sys.write("/proc/cmdline", cmdline);
        for api in ["mount devtmpfs", "mount proc", "mount sysfs"] {
            sys.fail(api, Errno::BUSY);
        }
    }

    #[test]
    fn mounts_prints_ready_and_powers_off_with_ingot_poweroff() {
        let sys = FakeSys::new();
        root(&sys, "console=ttyS0 ingot.poweroff\n");
        let mut opts = BootOptions::default();
        let err = run(&sys, &mut opts).unwrap_err();
        assert!(opts.poweroff);
        assert_eq!(
            sys.calls_matching(&["mount tmpfs", "console", "kill-all", "sync", "reboot"]),
            [
                "console ingot: phase=stage2 t=1500",
                "mount tmpfs /run tmpfs nodev,nosuid mode=0755",
                "mount tmpfs /tmp tmpfs nodev,nosuid mode=1777",
                "console ingot: phase=ready t=1500",
                "console ingot: shutdown poweroff",
                "kill-all term",
                "sync",
                "console ingot: warning reading /proc/self/mountinfo: No such file or directory (os error 2), remounting only / read-only",
                "console ingot: remounted / read-only",
                "console ingot: powering off",
                "reboot poweroff",
            ]
        );
        assert_eq!(crate::failure::chain(&err), "poweroff: fake reboot returned");
    }

    #[test]
    fn without_poweroff_waits_for_a_shutdown_signal() {
        let sys = FakeSys::new();
        root(&sys, "console=ttyS0\n");
        sys.queue_signal(Signal::Child);
        sys.queue_signal(Signal::Int);
        let _ = run(&sys, &mut BootOptions::default());
        assert_eq!(sys.calls_matching(&["reboot"]), ["reboot reboot"]);
    }

    #[test]
    fn a_missing_mount_point_on_the_read_only_root_is_fatal() {
        let sys = FakeSys::new();
        root(&sys, "");
        std::fs::remove_dir_all(sys.host("/run")).unwrap();
        sys.fail("mkdir /run", Errno::ROFS);
        let err = run(&sys, &mut BootOptions::default()).unwrap_err();
        assert_eq!(
            crate::failure::chain(&err),
            "mounting tmpfs on /run: Read-only file system (os error 30)"
        );
    }
}
