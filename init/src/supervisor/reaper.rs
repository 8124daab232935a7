//! The one place that collects exited children.

use std::collections::BTreeSet;

use crate::sys::{self, Errno, Exit, Sys};

/// Collects every exited child; exits of watched pids are handed back, orphans re-parented to PID 1 are
/// reaped silently.
#[derive(Debug, Default)]
pub struct Reaper {
    watched: BTreeSet<i32>,
}

/// What one [`Reaper::reap`] collected.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reaped {
    /// Exits of watched pids, in the order collected.
    pub exits: Vec<Exit>,
    /// No children are left at all (`ECHILD`).
    pub none_left: bool,
}

impl Reaper {
    /// Registers a pid whose exit someone waits for. Call it before the signal mask is unblocked for the
    /// child's `SIGCHLD`; PID 1 keeps signals blocked and takes them synchronously, so that always holds.
    #[allow(dead_code)] // called by the service runners
    pub fn watch(&mut self, pid: i32) {
        self.watched.insert(pid);
    }

    /// Collects every child that has exited, without blocking.
    pub fn reap(&mut self, sys: &dyn Sys) -> Reaped {
        let mut out = Reaped::default();
        loop {
            match sys.reap_one() {
                Ok(Some(exit)) => {
                    if self.watched.remove(&exit.pid) {
                        out.exits.push(exit);
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
