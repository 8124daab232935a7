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

pub mod clock;
pub mod dm;
#[cfg(test)]
pub mod fake;
pub mod fd;
pub mod input;
mod linux;
pub mod net;
#[cfg(test)]
pub mod pid1_test;

use std::ffi::OsString;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::time::Duration;

pub use fd::AppendFile;
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

/// The signals PID 1 blocks and takes from its signal descriptor ([`Sys::signal_fd`]).
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

/// What `kill(2)` sends: to every other process ([`Sys::kill_all`]) or to a process group
/// ([`Sys::kill_group`]).
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

/// A program to start with [`Sys::spawn`].
#[derive(Clone, Copy, Debug)]
pub struct Command<'a> {
    /// The program's absolute path, then its arguments. No `$PATH` lookup, no shell.
    pub argv: &'a [String],
    /// The complete environment, `(name, value)`.
    pub env: &'a [(String, String)],
}

/// A started child.
#[derive(Debug)]
pub struct Spawned {
    /// Also its process group and session id: the child is a session leader.
    pub pid: i32,
    /// The read end of the pipe holding the child's stdout and stderr: close-on-exec, nonblocking.
    pub output: OwnedFd,
}

/// A block device number, written `major:minor` (as device-mapper tables and sysfs `dev` files spell it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevNum {
    pub major: u32,
    pub minor: u32,
}

impl std::fmt::Display for DevNum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.major, self.minor)
    }
}

/// One line of a device-mapper table: `sectors` 512-byte sectors from sector `start` mapped by the target
/// `kind` (`verity`) with its parameter string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmTarget<'a> {
    pub start: u64,
    pub sectors: u64,
    pub kind: &'a str,
    pub params: &'a str,
}

/// How many kernel log records one [`Sys::read_kmsg`] returns at most, so a full ring does not hold up the
/// event loop; the descriptor stays readable for the rest.
pub const KMSG_BATCH: usize = 512;

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
    /// Device mapper (`DM_VERSION`, then `DM_DEV_CREATE`): a new device `name` without a table; returns
    /// its device number (the node appears as `/dev/dm-<minor>` once a table is live).
    fn dm_create(&self, name: &str) -> io::Result<DevNum>;
    /// `DM_TABLE_LOAD`: `targets` become the inactive table of `name`; `read_only` opens the underlying
    /// devices read-only and makes the mapped device read-only.
    fn dm_load_table(&self, name: &str, targets: &[DmTarget<'_>], read_only: bool) -> io::Result<()>;
    /// `DM_DEV_SUSPEND` without the suspend flag: resumes `name`, making its loaded table live.
    fn dm_resume(&self, name: &str) -> io::Result<()>;
    /// `DM_DEV_REMOVE`.
    fn dm_remove(&self, name: &str) -> io::Result<()>;
    /// Opens `/dev/kmsg` for reading (nonblocking, close-on-exec), positioned at the oldest record the
    /// kernel's ring still holds.
    fn open_kmsg(&self) -> io::Result<OwnedFd>;
    /// The next kernel log records from a [`Sys::open_kmsg`] descriptor, each in `/dev/kmsg`'s format
    /// (`<prefix>,<seq>,<usec>,<flags>;<text>`, continuation lines dropped), at most [`KMSG_BATCH`]; empty
    /// when there is nothing new. Records the ring overwrote before they were read are skipped.
    fn read_kmsg(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<String>>;

    // --- processes and signals ---------------------------------------------------------------------
    /// Replaces this process image (keeps PID 1). Returns only on failure.
    fn exec(&self, path: &str) -> io::Error;
    /// Blocks the signals in [`Signal`] so they queue until PID 1 reads them from [`Sys::signal_fd`].
    fn block_signals(&self) -> io::Result<()>;
    /// Makes Ctrl-Alt-Del send `SIGINT` to PID 1 instead of rebooting at once.
    fn disable_ctrl_alt_del(&self) -> io::Result<()>;
    /// A `signalfd(2)` (close-on-exec, nonblocking) that becomes readable when one of the blocked
    /// [`Signal`]s is pending, including those pending before it was created.
    fn signal_fd(&self) -> io::Result<OwnedFd>;
    /// Takes every pending signal from a [`Sys::signal_fd`] without blocking (empty: none pending).
    fn read_signals(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<Signal>>;
    /// Waits until one of `fds` has input (or end of file, or an error) or `timeout` passed (`None`:
    /// no timeout); returns those descriptors, empty after the timeout or when interrupted.
    fn poll(&self, fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<RawFd>>;
    /// Starts a program as a new session leader with stdin `/dev/null`, stdout and stderr on a new pipe,
    /// cwd `/`, exactly `cmd.env`, an empty signal mask and default signal dispositions. Nothing waits
    /// for it but the reaper; a failed `exec` (`ENOENT`, `EACCES`) is returned as the error.
    fn spawn(&self, cmd: &Command<'_>) -> io::Result<Spawned>;
    /// Collects one exited child without blocking: `Ok(None)` when children exist but none has exited,
    /// `Err(ECHILD)` when there are none.
    fn reap_one(&self) -> io::Result<Option<Exit>>;
    /// Sends a signal to every process except PID 1.
    fn kill_all(&self, sig: KillSignal) -> io::Result<()>;
    /// Sends a signal to every process in group `pgid` (`ESRCH` when there is none left).
    fn kill_group(&self, pgid: i32, sig: KillSignal) -> io::Result<()>;
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

    // --- files, sockets, mounts the supervisor uses -------------------------------------------------
    /// Connects to the Unix stream socket at `path` and hangs up; `Ok` means something accepts there.
    fn connect_unix(&self, path: &Path) -> io::Result<()>;
    /// Opens (creating, mode 0640) a file for appending.
    fn open_append(&self, path: &Path) -> io::Result<AppendFile>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `umount(2)` without flags.
    fn unmount(&self, target: &str) -> io::Result<()>;
    /// Remounts the file system at `target` read-only.
    fn remount_read_only(&self, target: &str) -> io::Result<()>;
}

/// Whether an error is `EEXIST`, `EBUSY` … (errno comparison without matching on raw numbers elsewhere).
pub fn is_errno(e: &io::Error, errno: rustix::io::Errno) -> bool {
    e.raw_os_error() == Some(errno.raw_os_error())
}

pub use rustix::io::Errno;
