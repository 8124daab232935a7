//! Every system call `ingot-init` makes goes through this module, and it is the only module allowed to use
//! `unsafe`.
//!
//! PID-1 logic (mount order, module load order, finding the root, shutdown, the failure policy) talks to
//! the [`Sys`] trait, never to the kernel directly. [`Linux`] is the real implementation; the tests use
//! a recording fake (`fake::FakeSys`) whose reads come from a temporary directory (fake `/sys`, `/proc`,
//! `/dev` trees) and whose actions are recorded in order, so the logic is tested on the host without root.
//!
//! Reads take absolute paths as the node sees them (`/sys/class/block`); actions are described with plain
//! values so the fake can record them verbatim.

#![allow(unsafe_code)]

#[allow(dead_code)] // used by the NTP client in crate::clock
pub mod clock;
#[cfg(test)]
pub mod fake;
pub mod input;
mod linux;
#[allow(dead_code)] // used by `crate::net`, which stage 2 does not start yet
pub mod net;

use std::ffi::OsString;
use std::io;
use std::path::Path;
use std::time::Duration;

pub use linux::{Linux, install_panic_hook, set_panic_policy};
pub use rustix::mount::MountFlags;

/// One `mount(2)` of a new file system.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mount<'a> {
    pub source: &'a str,
    pub target: &'a str,
    pub fstype: &'a str,
    pub flags: MountFlags,
    pub data: Option<&'a str>,
}

/// How the machine goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    Reboot,
    PowerOff,
    Halt,
}

impl Shutdown {
    pub fn name(self) -> &'static str {
        match self {
            Shutdown::Reboot => "reboot",
            Shutdown::PowerOff => "poweroff",
            Shutdown::Halt => "halt",
        }
    }
}

/// The signals PID 1 blocks and consumes synchronously with [`Sys::wait_signal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    Child,
    Term,
    /// Sent by the kernel on Ctrl-Alt-Del once [`Sys::disable_ctrl_alt_del`] ran.
    Int,
    Hup,
    Usr1,
    Usr2,
    Pwr,
}

/// What `kill(-1, sig)` sends to every other process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KillSignal {
    Term,
    Kill,
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// One child collected by [`Sys::reap_one`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub pid: i32,
    pub status: ExitStatus,
}

/// The system calls PID-1 logic needs. Object safe: the logic takes `&dyn Sys`.
pub trait Sys {
    // --- reads -------------------------------------------------------------------------------------
    /// The whole content of a (small) file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;
    /// `len` bytes at `offset` (short only at the end of the file); used to read a disk's GPT.
    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>>;
    /// Entry names of a directory, sorted, without `.` and `..`.
    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>>;
    /// Whether the path exists (following symlinks).
    fn exists(&self, path: &Path) -> bool;
    /// `uname -r`.
    fn kernel_release(&self) -> String;
    /// `CLOCK_BOOTTIME`: time since the kernel started, including suspend.
    fn boottime(&self) -> Duration;

    // --- console -----------------------------------------------------------------------------------
    /// Writes one line to the console (stdout); errors are ignored, there is nowhere to report them.
    fn console(&self, line: &str);
    /// Opens `/dev/console` and makes it stdin, stdout and stderr.
    fn setup_console(&self) -> io::Result<()>;

    // --- file systems ------------------------------------------------------------------------------
    /// `mkdir` with mode 0755; an existing directory is not an error.
    fn mkdir(&self, path: &str) -> io::Result<()>;
    fn mount(&self, m: &Mount<'_>) -> io::Result<()>;
    /// `mount --move from to`.
    fn move_mount(&self, from: &str, to: &str) -> io::Result<()>;
    /// The device number (`st_dev`) of the file system holding `path`.
    fn device_of(&self, path: &str) -> io::Result<u64>;
    /// Whether `path` is on a ramfs or tmpfs (an initramfs).
    fn is_ram_fs(&self, path: &str) -> io::Result<bool>;
    /// Deletes everything below `dir` that lives on the same device as `dir` itself, best effort, without
    /// crossing into other mounts (what util-linux `switch_root` does to the initramfs). Returns how many
    /// entries could not be removed.
    fn remove_same_device(&self, dir: &str) -> io::Result<usize>;
    fn chdir(&self, path: &str) -> io::Result<()>;
    fn chroot(&self, path: &str) -> io::Result<()>;
    fn sync(&self);

    // --- kernel ------------------------------------------------------------------------------------
    /// `finit_module(2)` of the file at `path`, without parameters.
    fn load_module(&self, path: &Path) -> io::Result<()>;

    // --- processes and signals ---------------------------------------------------------------------
    /// Replaces this process image (keeps PID 1). Returns only on failure.
    fn exec(&self, path: &str) -> io::Error;
    /// Blocks the signals in [`Signal`] so they queue until [`Sys::wait_signal`] takes them.
    fn block_signals(&self) -> io::Result<()>;
    /// Makes Ctrl-Alt-Del send `SIGINT` to PID 1 instead of rebooting at once.
    fn disable_ctrl_alt_del(&self) -> io::Result<()>;
    /// Waits for one blocked signal; `None` after `timeout` (`None` = forever) or when interrupted.
    fn wait_signal(&self, timeout: Option<Duration>) -> io::Result<Option<Signal>>;
    /// Collects one exited child without blocking: `Ok(None)` when children exist but none has exited,
    /// `Err(ECHILD)` when there are none.
    fn reap_one(&self) -> io::Result<Option<Exit>>;
    /// Sends a signal to every process except PID 1.
    fn kill_all(&self, sig: KillSignal) -> io::Result<()>;
    fn sleep(&self, d: Duration);
    /// `reboot(2)`. Returns only on failure.
    fn reboot(&self, how: Shutdown) -> io::Error;

    // --- node state ----------------------------------------------------------------------------------
    /// Writes a small file in place (create or truncate): `/proc/sys/...`, `/sys/...`.
    fn write_file(&self, path: &str, bytes: &[u8]) -> io::Result<()>;
    /// Replaces a file so that a crash leaves the old or the new content, never a mix: temp file in the
    /// same directory, fsync, rename, fsync the directory. Creates missing parent directories.
    fn write_file_atomic(&self, path: &str, bytes: &[u8], mode: u32) -> io::Result<()>;
    /// Writes `bytes` at `offset` of a block device or file and flushes them to stable storage.
    fn write_at_sync(&self, path: &str, offset: u64, bytes: &[u8]) -> io::Result<()>;
    /// Tells the kernel partition `number` of `disk` (`/dev/vda`) now spans `start..start+len` bytes
    /// (`BLKPG_RESIZE_PARTITION`), which works while other partitions of the disk are mounted.
    fn resize_partition(&self, disk: &str, number: u32, start: u64, len: u64) -> io::Result<()>;
    /// Runs a program to completion before any service exists (the file system tools), with the console
    /// as its output, and returns how it ended. Not for supervised processes.
    fn run(&self, argv: &[&str]) -> io::Result<ExitStatus>;
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Fills `buf` from the kernel's random pool (`getrandom`, blocking until it is initialized).
    fn random(&self, buf: &mut [u8]) -> io::Result<()>;
}

/// Whether an error is `EEXIST`, `EBUSY` … (errno comparison without matching on raw numbers elsewhere).
pub fn is_errno(e: &io::Error, errno: rustix::io::Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

pub use rustix::io::Errno;
