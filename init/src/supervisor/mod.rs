//! PID 1's event loop: one reaper, the shutdown signals, and the shutdown sequence.
//!
//! Today there are no services: the loop reaps orphans and waits for a shutdown request. Services slot in
//! as `services × runners × restart policy` on top of [`Reaper`]: a runner registers the pid it is about to
//! wait for with [`Reaper::watch`] (signals are blocked, so the exit cannot be lost in between) and gets
//! its [`Exit`](crate::sys::Exit) back from [`Supervisor::step`]; nothing else ever calls `wait`.
//!
//! Signals follow busybox init, so its `reboot`/`poweroff`/`halt` applets work against us:
//!
//! | signal | action |
//! |---|---|
//! | `SIGTERM`, `SIGINT` (Ctrl-Alt-Del) | reboot |
//! | `SIGUSR2`, `SIGPWR` | power off |
//! | `SIGUSR1` | halt |
//! | `SIGHUP` | ignored (reload, once there is configuration to reload) |

mod reaper;

use std::io;
use std::time::Duration;

pub use reaper::Reaper;

use crate::sys::{Exit, KillSignal, Shutdown, Signal, Sys};

/// How long processes get between `SIGTERM` and `SIGKILL` at shutdown.
pub const TERM_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to wait for the killed processes to be reaped before going down anyway.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(1);
const REAP_POLL: Duration = Duration::from_millis(100);

/// Makes PID 1 the one that decides about signals, in both stages: blocks the signals it takes with
/// [`Sys::wait_signal`] and routes Ctrl-Alt-Del to it as `SIGINT` (instead of an immediate kernel reboot
/// without sync). Failures are warnings: the node still boots.
pub fn take_signals(sys: &dyn Sys) {
    if let Err(e) = sys.block_signals() {
        crate::warn(sys, &format!("blocking signals: {e}, ignoring"));
    }
    if let Err(e) = sys.disable_ctrl_alt_del() {
        crate::warn(sys, &format!("routing Ctrl-Alt-Del to PID 1: {e}, ignoring"));
    }
}

/// The shutdown a signal asks for, if any.
pub fn shutdown_for(signal: Signal) -> Option<Shutdown> {
    match signal {
        Signal::Term | Signal::Int => Some(Shutdown::Reboot),
        Signal::Usr2 | Signal::Pwr => Some(Shutdown::PowerOff),
        Signal::Usr1 => Some(Shutdown::Halt),
        Signal::Child | Signal::Hup => None,
    }
}

/// What one turn of the loop produced.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub shutdown: Option<Shutdown>,
    /// Exits of watched processes, for whoever registered them.
    pub exits: Vec<Exit>,
}

#[derive(Debug, Default)]
pub struct Supervisor {
    reaper: Reaper,
}

impl Supervisor {
    pub fn new() -> Self {
        Supervisor::default()
    }

    #[allow(dead_code)] // the service runners register their pids through it
    pub fn reaper(&mut self) -> &mut Reaper {
        &mut self.reaper
    }

    /// Waits for one signal (at most `timeout`, `None` = forever), then reaps whatever exited.
    pub fn step(&mut self, sys: &dyn Sys, timeout: Option<Duration>) -> Step {
        let signal = match sys.wait_signal(timeout) {
            Ok(s) => s,
            Err(e) => {
                crate::warn(sys, &format!("waiting for signals: {e}, ignoring"));
                sys.sleep(Duration::from_secs(1));
                None
            }
        };
        let exits = self.reaper.reap(sys).exits;
        Step {
            shutdown: signal.and_then(shutdown_for),
            exits,
        }
    }

    /// Runs until a shutdown is requested.
    pub fn run(&mut self, sys: &dyn Sys) -> Shutdown {
        loop {
            if let Some(how) = self.step(sys, None).shutdown {
                return how;
            }
        }
    }

    /// Stops everything and calls `reboot(2)`: `SIGTERM` to all processes, reap until they are gone or
    /// [`TERM_TIMEOUT`], `SIGKILL` to the rest, sync. Returns only if `reboot(2)` failed.
    pub fn shutdown(&mut self, sys: &dyn Sys, how: Shutdown) -> io::Error {
        sys.console(&format!("{}shutdown {}", ingot_spec::marker::PREFIX, how.name()));
        // Services are stopped here, in reverse start order, once there are any.
        if let Err(e) = sys.kill_all(KillSignal::Term) {
            crate::warn(sys, &format!("sending SIGTERM to all processes: {e}, ignoring"));
        }
        if !self.wait_for_all(sys, TERM_TIMEOUT) {
            crate::warn(sys, "processes left after SIGTERM, sending SIGKILL");
            if let Err(e) = sys.kill_all(KillSignal::Kill) {
                crate::warn(sys, &format!("sending SIGKILL to all processes: {e}, ignoring"));
            }
            self.wait_for_all(sys, KILL_TIMEOUT);
        }
        sys.sync();
        sys.reboot(how)
    }

    /// Reaps until no child is left (true) or `timeout` passed (false).
    fn wait_for_all(&mut self, sys: &dyn Sys, timeout: Duration) -> bool {
        let start = sys.boottime();
        loop {
            if self.reaper.reap(sys).none_left {
                return true;
            }
            if sys.boottime().saturating_sub(start) >= timeout {
                return false;
            }
            // SIGCHLD wakes us early; other signals are not acted on during shutdown.
            let _ = sys.wait_signal(Some(REAP_POLL));
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sys::ExitStatus;
    use crate::sys::fake::FakeSys;

    #[test]
    fn takes_signals_and_ctrl_alt_del_warning_on_failure() {
        let sys = FakeSys::new();
        sys.fail("cad-off", crate::sys::Errno::PERM);
        take_signals(&sys);
        assert_eq!(
            sys.calls(),
            [
                "block-signals",
                "cad-off",
                "console ingot: warning routing Ctrl-Alt-Del to PID 1: Operation not permitted (os error 1), ignoring"
            ]
        );
    }

    #[test]
    fn signals_map_like_busybox_init() {
        assert_eq!(shutdown_for(Signal::Term), Some(Shutdown::Reboot));
        assert_eq!(shutdown_for(Signal::Int), Some(Shutdown::Reboot));
        assert_eq!(shutdown_for(Signal::Usr2), Some(Shutdown::PowerOff));
        assert_eq!(shutdown_for(Signal::Pwr), Some(Shutdown::PowerOff));
        assert_eq!(shutdown_for(Signal::Usr1), Some(Shutdown::Halt));
        assert_eq!(shutdown_for(Signal::Child), None);
        assert_eq!(shutdown_for(Signal::Hup), None);
    }

    #[test]
    fn run_reaps_until_a_shutdown_signal() {
        let sys = FakeSys::new();
        let mut sup = Supervisor::new();
        sup.reaper().watch(42);
        sys.queue_signal(Signal::Child);
        sys.queue_exit(Ok(Some(Exit {
            pid: 7,
            status: ExitStatus::Code(0),
        })));
        sys.queue_exit(Ok(Some(Exit {
            pid: 42,
            status: ExitStatus::Signal(9),
        })));
        sys.queue_exit(Ok(None));
        let step = sup.step(&sys, None);
        assert_eq!(
            step,
            Step {
                shutdown: None,
                exits: vec![Exit {
                    pid: 42,
                    status: ExitStatus::Signal(9)
                }]
            }
        );
        sys.queue_signal(Signal::Hup);
        sys.queue_signal(Signal::Usr2);
        assert_eq!(sup.run(&sys), Shutdown::PowerOff);
    }

    #[test]
    fn shutdown_terms_then_syncs_and_reboots() {
        let sys = FakeSys::new();
        let mut sup = Supervisor::new();
        let err = sup.shutdown(&sys, Shutdown::PowerOff);
        assert_eq!(err.to_string(), "fake reboot returned");
        assert_eq!(
            sys.calls(),
            [
                "console ingot: shutdown poweroff",
                "kill-all term",
                "sync",
                "reboot poweroff"
            ]
        );
    }

    #[test]
    fn shutdown_kills_what_outlives_the_timeout() {
        let sys = FakeSys::new();
        for _ in 0..200 {
            sys.queue_exit(Ok(None));
        }
        let mut sup = Supervisor::new();
        sup.shutdown(&sys, Shutdown::Reboot);
        assert_eq!(
            sys.calls_matching(&["kill-all", "sync", "reboot", "console"]),
            [
                "console ingot: shutdown reboot",
                "kill-all term",
                "console ingot: warning processes left after SIGTERM, sending SIGKILL",
                "kill-all kill",
                "sync",
                "reboot reboot"
            ]
        );
    }
}
