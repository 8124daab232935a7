//! What PID 1 does when something fails: never panic, never exit (the kernel would panic), tell the
//! console what failed and why, then reboot after `ingot.reboot_delay` seconds, or with `ingot.debug`
//! halt with the console open (still reaping, still honouring shutdown signals).

use std::error::Error;

use ingot_spec::marker::PREFIX;

use crate::event_loop::EventLoop;
use crate::options::BootOptions;
use crate::supervisor::Supervisor;
use crate::sys::{Shutdown, Sys};

/// `<error>: <cause>: <cause>…`.
pub fn chain(err: &dyn Error) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Prints `ingot: error <what failed>: <cause chain>` on the console. (Not also on `/dev/kmsg`: the kernel
/// echoes that to the console, so every error would show twice. The panic hook, which cannot trust the
/// console, writes both.)
pub fn report(sys: &dyn Sys, err: &dyn Error) {
    sys.console(&format!("{PREFIX}error {}", chain(err)));
}

/// Reports `err` and, unless `ingot.debug` is set, waits the reboot delay and reboots. Returns when the
/// machine is to halt: in debug mode, or when `reboot(2)` failed.
pub fn after_error(sys: &dyn Sys, opts: &BootOptions, err: &dyn Error) {
    report(sys, err);
    if opts.debug {
        sys.console(&format!(
            "{PREFIX}halted ({}), console stays open",
            ingot_spec::cmdline::DEBUG
        ));
        return;
    }
    sys.console(&format!(
        "{PREFIX}rebooting in {} s (add {} to the kernel command line to halt instead)",
        opts.reboot_delay.as_secs(),
        ingot_spec::cmdline::DEBUG
    ));
    sys.sleep(opts.reboot_delay);
    sys.sync();
    let e = sys.reboot(Shutdown::Reboot);
    sys.console(&format!("{PREFIX}error reboot: {e}, halting"));
}

/// The halted state: reap forever and go down when a shutdown signal arrives.
pub fn halt_forever(sys: &dyn Sys) -> ! {
    let mut sup = Supervisor::default();
    let mut event_loop = EventLoop::new();
    loop {
        let how = event_loop.run(sys, &mut sup, &mut [], |_| {});
        let e = event_loop.shutdown(sys, &mut sup, how);
        sys.console(&format!("{PREFIX}error {}: {e}, staying halted", how.name()));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::sys::fake::FakeSys;

    #[derive(Debug, thiserror::Error)]
    #[error("mounting erofs on /sysroot")]
    struct Outer(#[source] std::io::Error);

    fn sample() -> Outer {
        Outer(std::io::Error::from_raw_os_error(19))
    }

    #[test]
    fn chain_joins_every_cause() {
        assert_eq!(
            chain(&sample()),
            "mounting erofs on /sysroot: No such device (os error 19)"
        );
    }

    #[test]
    fn reports_then_reboots_after_the_delay() {
        let sys = FakeSys::new();
        let opts = BootOptions {
            reboot_delay: Duration::from_secs(3),
            ..BootOptions::default()
        };
        after_error(&sys, &opts, &sample());
        assert_eq!(
            sys.calls(),
            [
                "console ingot: error mounting erofs on /sysroot: No such device (os error 19)",
                "console ingot: rebooting in 3 s (add ingot.debug to the kernel command line to halt instead)",
                "sleep 3s",
                "sync",
                "reboot reboot",
                "console ingot: error reboot: fake reboot returned, halting",
            ]
        );
    }

    #[test]
    fn debug_halts_without_rebooting() {
        let sys = FakeSys::new();
        let opts = BootOptions {
            debug: true,
            ..BootOptions::default()
        };
        after_error(&sys, &opts, &sample());
        assert!(sys.calls_matching(&["reboot", "sleep"]).is_empty());
        assert_eq!(
            sys.console_lines().last().unwrap(),
            "ingot: halted (ingot.debug), console stays open"
        );
    }
}
