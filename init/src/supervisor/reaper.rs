//! The one place that collects exited children.
//!
//! PID 1 is the parent of every orphan on the node, so exactly one piece of code may wait: this one, with
//! `waitid(P_ALL, WNOHANG)` in a loop. Whoever starts a process registers its pid with an owner tag
//! ([`Reaper::watch`]) right after `fork` returned and before the loop runs again; signals are blocked
//! and only read in the loop, so the exit cannot be collected before it is registered. The exits of
//! registered pids are handed back with their owner; everything else (orphans re-parented to PID 1) is
//! reaped silently. Nothing ever calls `Child::wait` or `waitpid(pid)` on a supervised process.

use std::collections::BTreeMap;

use crate::sys::{self, Errno, Exit, Sys};

#[derive(Debug)]
pub struct Reaper<T> {
    watched: BTreeMap<i32, T>,
}

impl<T> Default for Reaper<T> {
    fn default() -> Self {
        Reaper {
            watched: BTreeMap::new(),
        }
    }
}

/// What one [`Reaper::reap`] collected.
#[derive(Debug, PartialEq, Eq)]
pub struct Reaped<T> {
    /// Exits of watched pids with their owners, in the order collected.
    pub exits: Vec<(T, Exit)>,
    /// No children are left at all (`ECHILD`).
    pub none_left: bool,
}

impl<T: Copy> Reaper<T> {
    /// Registers `pid`, whose exit `owner` waits for.
    pub fn watch(&mut self, pid: i32, owner: T) {
        self.watched.insert(pid, owner);
    }

    /// Collects every child that has exited, without blocking.
    pub fn reap(&mut self, sys: &dyn Sys) -> Reaped<T> {
        let mut out = Reaped {
            exits: Vec::new(),
            none_left: false,
        };
        loop {
            match sys.reap_one() {
                Ok(Some(exit)) => {
                    if let Some(owner) = self.watched.remove(&exit.pid) {
                        out.exits.push((owner, exit));
                    }
                }
                Ok(None) => return out,
                Err(e) if sys::is_errno(&e, Errno::CHILD) => {
                    out.none_left = true;
                    return out;
                }
                Err(e) if sys::is_errno(&e, Errno::INTR) => {}
                Err(e) => {
                    crate::warn(sys, &format!("reaping children: {e}, ignoring"));
                    return out;
                }
            }
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
    fn hands_back_watched_exits_with_their_owner_and_drops_orphans() {
        let sys = FakeSys::new();
        let mut r = Reaper::default();
        r.watch(42, 'a');
        r.watch(43, 'b');
        for (pid, code) in [(7, 0), (43, 1), (42, 2)] {
            sys.queue_exit(Ok(Some(Exit {
                pid,
                status: ExitStatus::Code(code),
            })));
        }
        sys.queue_exit(Ok(None));
        let got = r.reap(&sys);
        assert_eq!(
            got.exits,
            [
                (
                    'b',
                    Exit {
                        pid: 43,
                        status: ExitStatus::Code(1)
                    }
                ),
                (
                    'a',
                    Exit {
                        pid: 42,
                        status: ExitStatus::Code(2)
                    }
                ),
            ]
        );
        assert!(!got.none_left);
        assert!(r.watched.is_empty());
        assert!(r.reap(&sys).none_left);
    }

    #[test]
    fn other_errors_are_warnings() {
        let sys = FakeSys::new();
        let mut r: Reaper<()> = Reaper::default();
        sys.queue_exit(Err(Errno::INTR));
        sys.queue_exit(Err(Errno::INVAL));
        let got = r.reap(&sys);
        assert!(!got.none_left);
        assert_eq!(
            sys.console_lines(),
            ["ingot: warning reaping children: Invalid argument (os error 22), ignoring"]
        );
    }
}
