//! [`Sys`] on the real kernel: rustix for nearly everything, libc only for the signal mask, `signalfd` and
//! `sigaction` calls rustix does not offer safely. Every file descriptor is opened with `O_CLOEXEC` (std does so itself), except
//! the console duplicated onto 0/1/2 on purpose so children inherit it.

use std::ffi::{CString, OsString};
use std::io::{self, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::mount::MountFlags;

use super::{
    AppendFile, Command, DevNum, DmTarget, Exit, ExitStatus, KillSignal, Mount, Shutdown, Signal, Spawned,
    Sys, fd,
};

/// The running kernel.
#[derive(Debug, Default)]
pub struct Linux;

impl Linux {
    pub fn new() -> Self {
        Linux
    }

    /// Whether this process is PID 1 (ingot-init refuses to run as anything else).
    pub fn is_pid1() -> bool {
        rustix::process::getpid().is_init()
    }
}

const RAMFS_MAGIC: u64 = 0x8584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// The signals PID 1 blocks, with the [`Signal`] each maps to.
const SIGNALS: [(libc::c_int, Signal); 7] = [
    (libc::SIGCHLD, Signal::Child),
    (libc::SIGTERM, Signal::Term),
    (libc::SIGINT, Signal::Int),
    (libc::SIGHUP, Signal::Hup),
    (libc::SIGUSR1, Signal::Usr1),
    (libc::SIGUSR2, Signal::Usr2),
    (libc::SIGPWR, Signal::Pwr),
];

fn signal_set() -> io::Result<libc::sigset_t> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` points to writable memory of the size of a `sigset_t`; `sigemptyset` initializes all of it
    // and only fails for a null pointer.
    if unsafe { libc::sigemptyset(set.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sigemptyset` returned 0, so the whole `sigset_t` is initialized.
    let mut set = unsafe { set.assume_init() };
    for (signo, _) in SIGNALS {
        // SAFETY: `set` is an initialized `sigset_t` we own, and `signo` is a valid signal number constant
        // from libc, so `sigaddset` writes only inside `set`.
        if unsafe { libc::sigaddset(&mut set, signo) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(set)
}

fn cstring(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

/// Deletes the entries below `dir` that live on device `dev`; counts what could not be removed.
fn remove_below(dir: &OwnedFd, dev: u64, failures: &mut usize) -> io::Result<()> {
    let mut names: Vec<CString> = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    for name in names {
        let Ok(st) = rustix::fs::statat(dir, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW) else {
            *failures += 1;
            continue;
        };
        if st.st_dev != dev {
            // A mount point (/dev, /proc, /sys, the new root): not ours to delete.
            continue;
        }
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            match rustix::fs::openat(dir, name.as_c_str(), flags, Mode::empty()) {
                Ok(sub) => remove_below(&sub, dev, failures)?,
                Err(_) => *failures += 1,
            }
            if rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::REMOVEDIR).is_err() {
                *failures += 1;
            }
        } else if rustix::fs::unlinkat(dir, name.as_c_str(), AtFlags::empty()).is_err() {
            *failures += 1;
        }
    }
    Ok(())
}

fn write_all_fd(fd: impl AsFd, mut buf: &[u8]) {
    while !buf.is_empty() {
        match rustix::io::write(fd.as_fd(), buf) {
            Ok(0) => return,
            Ok(n) => buf = buf.get(n..).unwrap_or_default(),
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

fn reboot_command(how: Shutdown) -> rustix::system::RebootCommand {
    match how {
        Shutdown::Reboot => rustix::system::RebootCommand::Restart,
        Shutdown::PowerOff => rustix::system::RebootCommand::PowerOff,
        Shutdown::Halt => rustix::system::RebootCommand::Halt,
    }
}

fn write_kmsg(line: &str) {
    let flags = OFlags::WRONLY | OFlags::NOCTTY | OFlags::CLOEXEC;
    if let Ok(fd) = rustix::fs::open("/dev/kmsg", flags, Mode::empty()) {
        // One write is one log record; `<2>` is KERN_CRIT.
        write_all_fd(&fd, format!("<2>{line}\n").as_bytes());
    }
}

impl Sys for Linux {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let file = std::fs::File::open(path)?;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            let n = match file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                break;
            }
            done += n;
        }
        buf.truncate(done);
        Ok(buf)
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut names = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn kernel_release(&self) -> String {
        rustix::system::uname().release().to_string_lossy().into_owned()
    }

    fn boottime(&self) -> Duration {
        let ts = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Duration::new(
            u64::try_from(ts.tv_sec).unwrap_or(0),
            u32::try_from(ts.tv_nsec).unwrap_or(0),
        )
    }

    fn console(&self, line: &str) {
        let mut buf = String::with_capacity(line.len() + 1);
        buf.push_str(line);
        buf.push('\n');
        write_all_fd(io::stdout(), buf.as_bytes());
    }

    fn setup_console(&self) -> io::Result<()> {
        let flags = OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC;
        let fd = rustix::fs::open("/dev/console", flags, Mode::empty())?;
        // dup2 clears FD_CLOEXEC on the new descriptors: children inherit the console as stdio.
        rustix::stdio::dup2_stdin(&fd)?;
        rustix::stdio::dup2_stdout(&fd)?;
        rustix::stdio::dup2_stderr(&fd)?;
        Ok(())
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        match rustix::fs::mkdir(path, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn mount(&self, m: &Mount<'_>) -> io::Result<()> {
        let data = m.data.map(cstring).transpose()?;
        rustix::mount::mount(m.source, m.target, m.fstype, m.flags, data.as_deref())?;
        Ok(())
    }

    fn move_mount(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::mount::mount_move(from, to)?;
        Ok(())
    }

    fn device_of(&self, path: &str) -> io::Result<u64> {
        Ok(rustix::fs::stat(path)?.st_dev)
    }

    fn is_ram_fs(&self, path: &str) -> io::Result<bool> {
        #[allow(clippy::cast_sign_loss)]
        let magic = (rustix::fs::statfs(path)?.f_type as u64) & 0xffff_ffff;
        Ok(magic == RAMFS_MAGIC || magic == TMPFS_MAGIC)
    }

    fn remove_same_device(&self, dir: &str) -> io::Result<usize> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rustix::fs::open(dir, flags, Mode::empty())?;
        let dev = rustix::fs::fstat(&fd)?.st_dev;
        let mut failures = 0;
        remove_below(&fd, dev, &mut failures)?;
        Ok(failures)
    }

    fn chdir(&self, path: &str) -> io::Result<()> {
        rustix::process::chdir(path)?;
        Ok(())
    }

    fn chroot(&self, path: &str) -> io::Result<()> {
        rustix::process::chroot(path)?;
        Ok(())
    }

    fn sync(&self) {
        rustix::fs::sync();
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        let fd = rustix::fs::open(path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())?;
        // MODULE_INIT_COMPRESSED_FILE: the kernel decompresses `.ko.xz`/`.ko.zst` itself.
        let compressed = path.extension().is_some_and(|e| e != "ko");
        rustix::system::finit_module(&fd, c"", if compressed { 4 } else { 0 })?;
        Ok(())
    }

    fn dm_create(&self, name: &str) -> io::Result<DevNum> {
        super::dm::create(name)
    }

    fn dm_load_table(&self, name: &str, targets: &[DmTarget<'_>], read_only: bool) -> io::Result<()> {
        super::dm::load_table(name, targets, read_only)
    }

    fn dm_resume(&self, name: &str) -> io::Result<()> {
        super::dm::resume(name)
    }

    fn dm_remove(&self, name: &str) -> io::Result<()> {
        super::dm::remove(name)
    }

    fn open_kmsg(&self) -> io::Result<OwnedFd> {
        let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
        Ok(rustix::fs::open("/dev/kmsg", flags, Mode::empty())?)
    }

    fn read_kmsg(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<String>> {
        // One read returns one record; records are at most about 8 KiB with their dictionary.
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        while out.len() < super::KMSG_BATCH {
            match rustix::io::read(fd, &mut buf[..]) {
                Ok(0) | Err(rustix::io::Errno::AGAIN) => break,
                Ok(n) => {
                    let record = String::from_utf8_lossy(buf.get(..n).unwrap_or_default());
                    if let Some(first) = record.lines().next() {
                        out.push(first.to_owned());
                    }
                }
                // EPIPE: the ring overwrote records we had not read; the next read continues after them.
                Err(rustix::io::Errno::INTR | rustix::io::Errno::PIPE) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(out)
    }

    fn exec(&self, path: &str) -> io::Error {
        std::process::Command::new(path).exec()
    }

    fn block_signals(&self) -> io::Result<()> {
        let set = signal_set()?;
        // SAFETY: `set` is an initialized `sigset_t`; the old mask is not requested (null is allowed). PID 1
        // runs no other threads, so changing the process' only thread mask is what we want.
        if unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn disable_ctrl_alt_del(&self) -> io::Result<()> {
        rustix::system::reboot(rustix::system::RebootCommand::CadOff)?;
        Ok(())
    }

    fn signal_fd(&self) -> io::Result<OwnedFd> {
        let set = signal_set()?;
        // SAFETY: `set` is an initialized `sigset_t` that lives across the call; -1 asks for a new
        // descriptor. The flags are plain constants.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `signalfd` returned a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    fn read_signals(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<Signal>> {
        let mut out = Vec::new();
        let mut buf = [0u8; SIGINFO_SIZE * 16];
        loop {
            match fd::read_nonblocking(fd, &mut buf)? {
                fd::Read::Data(n) => {
                    for signo in signal_numbers(buf.get(..n).unwrap_or_default()) {
                        if let Some((_, s)) = SIGNALS.iter().find(|(n, _)| *n == signo) {
                            out.push(*s);
                        }
                    }
                }
                fd::Read::WouldBlock | fd::Read::Eof => return Ok(out),
            }
        }
    }

    fn poll(&self, fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<RawFd>> {
        fd::poll_readable(fds, timeout)
    }

    fn spawn(&self, cmd: &Command<'_>) -> io::Result<Spawned> {
        let Some((program, args)) = cmd.argv.split_first() else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "an empty command line",
            ));
        };
        let (output, write) = fd::output_pipe()?;
        // `try_clone` duplicates with F_DUPFD_CLOEXEC; std moves both onto 1 and 2 in the child.
        let stderr = write.try_clone()?;
        let setup = ChildSetup::new()?;
        let mut c = std::process::Command::new(program);
        c.args(args)
            .env_clear()
            .envs(cmd.env.iter().map(|(k, v)| (k, v)))
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(stderr));
        // SAFETY: the closure runs in the forked child of this single-threaded process before `exec` and
        // only makes async-signal-safe system calls (setsid, sigprocmask, sigaction) on values prepared
        // before the fork; it allocates nothing and touches no locks.
        unsafe {
            c.pre_exec(move || setup.apply());
        }
        let child = c.spawn()?;
        let pid = i32::try_from(child.id())
            .map_err(|_| io::Error::other("the kernel returned a pid above i32::MAX"))?;
        // Dropping `Child` neither waits nor kills: the reaper collects the exit.
        drop(child);
        Ok(Spawned { pid, output })
    }

    fn reap_one(&self) -> io::Result<Option<Exit>> {
        let Some((pid, status)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG)? else {
            return Ok(None);
        };
        let status = match (status.exit_status(), status.terminating_signal()) {
            (Some(code), _) => ExitStatus::Code(code),
            (None, Some(sig)) => ExitStatus::Signal(sig),
            (None, None) => ExitStatus::Code(-1),
        };
        Ok(Some(Exit {
            pid: pid.as_raw_nonzero().get(),
            status,
        }))
    }

    fn kill_all(&self, sig: KillSignal) -> io::Result<()> {
        let signo = match sig {
            KillSignal::Term => libc::SIGTERM,
            KillSignal::Kill => libc::SIGKILL,
        };
        // SAFETY: `kill` takes no pointers; pid -1 means every process we may signal except ourselves.
        if unsafe { libc::kill(-1, signo) } != 0 {
            let e = io::Error::last_os_error();
            // ESRCH: there was nobody to signal.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
        Ok(())
    }

    fn kill_group(&self, pgid: i32, sig: KillSignal) -> io::Result<()> {
        let pid = rustix::process::Pid::from_raw(pgid)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "process group 0 is not a group"))?;
        let sig = match sig {
            KillSignal::Term => rustix::process::Signal::TERM,
            KillSignal::Kill => rustix::process::Signal::KILL,
        };
        rustix::process::kill_process_group(pid, sig)?;
        Ok(())
    }

    fn sleep(&self, d: Duration) {
        std::thread::sleep(d);
    }

    fn reboot(&self, how: Shutdown) -> io::Error {
        match rustix::system::reboot(reboot_command(how)) {
            Err(e) => e.into(),
            Ok(()) => io::Error::other("reboot(2) returned"),
        }
    }

    fn write_file(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        std::fs::write(path, bytes)
    }

    fn write_file_atomic(&self, path: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = Path::new(path);
        let dir = path.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(dir)?;
        let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
        let tmp = dir.join(format!(".{name}.tmp"));
        let result = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(mode)
                .open(&tmp)?;
            // `mode` applies only when the file is created; a leftover temp file keeps its own.
            f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))?;
            f.write_all(bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    fn write_at_sync(&self, path: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        let f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all_at(bytes, offset)?;
        f.sync_data()
    }

    fn resize_partition(&self, disk: &str, number: u32, start: u64, len: u64) -> io::Result<()> {
        let f = std::fs::OpenOptions::new().read(true).open(disk)?;
        let mut part = BlkpgPartition {
            start: i64::try_from(start).map_err(io::Error::other)?,
            length: i64::try_from(len).map_err(io::Error::other)?,
            pno: libc::c_int::try_from(number).map_err(io::Error::other)?,
            devname: [0; 64],
            volname: [0; 64],
        };
        let mut arg = BlkpgIoctlArg {
            op: BLKPG_RESIZE_PARTITION,
            flags: 0,
            datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
            data: (&raw mut part).cast(),
        };
        // SAFETY: `f` is an open block device; `arg` is a `struct blkpg_ioctl_arg` laid out as in
        // <linux/blkpg.h> whose `data` points to `part`, a `struct blkpg_partition` that outlives the call.
        // The kernel only reads both.
        if unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), BLKPG, &raw mut arg) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn run(&self, argv: &[&str]) -> io::Result<ExitStatus> {
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| io::Error::other("empty command"))?;
        let setup = ChildSetup::new()?;
        let mut cmd = std::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        // SAFETY: as in `spawn`: the closure runs in the forked child of this single-threaded process before
        // `exec` and only makes async-signal-safe system calls on values prepared before the fork.
        unsafe {
            cmd.pre_exec(move || setup.apply());
        }
        let status = cmd.status()?;
        Ok(
            match (
                status.code(),
                std::os::unix::process::ExitStatusExt::signal(&status),
            ) {
                (Some(c), _) => ExitStatus::Code(c),
                (None, Some(s)) => ExitStatus::Signal(s),
                (None, None) => ExitStatus::Code(-1),
            },
        )
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        rustix::system::sethostname(name.as_bytes())?;
        Ok(())
    }

    fn random(&self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty()) {
                Ok(n) => filled += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn connect_unix(&self, path: &Path) -> io::Result<()> {
        fd::connect_unix(path)
    }

    fn open_append(&self, path: &Path) -> io::Result<AppendFile> {
        AppendFile::open(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        rustix::fs::rename(from, to)?;
        Ok(())
    }

    fn unmount(&self, target: &str) -> io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty())?;
        Ok(())
    }

    fn remount_read_only(&self, target: &str) -> io::Result<()> {
        rustix::mount::mount_remount(target, MountFlags::RDONLY, c"")?;
        Ok(())
    }
}

/// `BLKPG` from <linux/fs.h>: `_IO(0x12, 105)`.
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

/// `struct blkpg_ioctl_arg` from <linux/blkpg.h>.
#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `struct blkpg_partition` from <linux/blkpg.h>: start and length in bytes.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

/// Size of one `struct signalfd_siginfo` record.
const SIGINFO_SIZE: usize = 128;

/// The signal numbers (`ssi_signo`, the first field) of the `signalfd_siginfo` records in `buf`.
fn signal_numbers(buf: &[u8]) -> impl Iterator<Item = libc::c_int> + '_ {
    buf.chunks_exact(SIGINFO_SIZE).filter_map(|rec| {
        let signo = u32::from_ne_bytes(rec.get(..4)?.try_into().ok()?);
        libc::c_int::try_from(signo).ok()
    })
}

/// What a spawned child does between `fork` and `exec`, prepared before the fork so the child only
/// makes system calls: become a session (and process group) leader, so the supervisor can signal the
/// whole service; clear the signal mask PID 1 blocks with; reset every signal's disposition (PID 1's
/// runtime ignores `SIGPIPE`, and ignored signals survive `exec`).
#[derive(Clone, Copy)]
struct ChildSetup {
    empty: libc::sigset_t,
    default_action: libc::sigaction,
}

impl ChildSetup {
    fn new() -> io::Result<ChildSetup> {
        let mut empty = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: `empty` points to writable memory of the size of a `sigset_t`; `sigemptyset` initializes
        // all of it and only fails for a null pointer.
        if unsafe { libc::sigemptyset(empty.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `sigemptyset` returned 0, so the whole `sigset_t` is initialized.
        let empty = unsafe { empty.assume_init() };
        // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are valid: handler 0 is
        // `SIG_DFL`, no flags, no restorer; we then set the mask to the initialized empty set.
        let mut default_action: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
        default_action.sa_sigaction = libc::SIG_DFL;
        default_action.sa_mask = empty;
        Ok(ChildSetup {
            empty,
            default_action,
        })
    }

    fn apply(&self) -> io::Result<()> {
        rustix::process::setsid()?;
        // SAFETY: `self.empty` is an initialized `sigset_t`; a null old-mask pointer is allowed. This runs
        // in the single-threaded forked child.
        if unsafe { libc::sigprocmask(libc::SIG_SETMASK, &self.empty, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for signo in 1..=libc::SIGRTMAX() {
            if signo == libc::SIGKILL || signo == libc::SIGSTOP {
                continue;
            }
            // SAFETY: `self.default_action` is a fully initialized `sigaction` (SIG_DFL); the old-action
            // pointer may be null. Numbers the kernel reserves fail with EINVAL, which we ignore.
            unsafe { libc::sigaction(signo, &self.default_action, std::ptr::null_mut()) };
        }
        Ok(())
    }
}

static PANIC_DEBUG: AtomicBool = AtomicBool::new(false);
static PANIC_REBOOT_DELAY_MS: AtomicU64 = AtomicU64::new(10_000);

/// Tells the panic hook what the failure policy is once the command line was read.
pub fn set_panic_policy(debug: bool, reboot_delay: Duration) {
    PANIC_DEBUG.store(debug, Ordering::Relaxed);
    PANIC_REBOOT_DELAY_MS.store(
        u64::try_from(reboot_delay.as_millis()).unwrap_or(u64::MAX),
        Ordering::Relaxed,
    );
}

/// A panic in PID 1 must not unwind into an exit (the kernel would panic): the hook reports the panic on
/// the kernel log and the console, then reboots after the configured delay, or halts with `ingot.debug`.
/// It never returns.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let line = format!("ingot: error panic: {info}").replace('\n', ": ");
        write_kmsg(&line);
        let _ = writeln!(io::stderr(), "{line}");
        rustix::fs::sync();
        if !PANIC_DEBUG.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(
                PANIC_REBOOT_DELAY_MS.load(Ordering::Relaxed),
            ));
            let _ = rustix::system::reboot(rustix::system::RebootCommand::Restart);
        }
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }));
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use std::os::fd::AsRawFd as _;

    use super::*;

    #[test]
    fn removes_same_device_tree_and_keeps_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/ingot")).unwrap();
        std::fs::create_dir_all(root.join("lib/modules/6.1/kernel")).unwrap();
        std::fs::write(root.join("init"), b"x").unwrap();
        std::fs::write(root.join("etc/ingot/modules"), b"a.ko\n").unwrap();
        std::fs::write(root.join("lib/modules/6.1/kernel/a.ko"), b"x").unwrap();
        std::os::unix::fs::symlink("init", root.join("link")).unwrap();
        let failures = Linux.remove_same_device(root.to_str().unwrap()).unwrap();
        assert_eq!(failures, 0);
        assert!(root.exists());
        assert_eq!(std::fs::read_dir(root).unwrap().count(), 0);
    }

    /// Reads a child's output until it closes the pipe, then reaps until `pid` exits.
    fn output_and_exit(spawned: Spawned) -> (String, ExitStatus) {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            fd::poll_readable(&[spawned.output.as_raw_fd()], None).unwrap();
            match fd::read_nonblocking(spawned.output.as_fd(), &mut buf).unwrap() {
                fd::Read::Data(n) => out.extend_from_slice(&buf[..n]),
                fd::Read::WouldBlock => {}
                fd::Read::Eof => break,
            }
        }
        loop {
            match Linux.reap_one() {
                Ok(Some(e)) if e.pid == spawned.pid => {
                    return (String::from_utf8(out).unwrap(), e.status);
                }
                Ok(_) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("reaping: {e}"),
            }
        }
    }

    #[test]
    fn spawned_children_get_a_clean_process_state_as_pid1() {
        if !super::super::pid1_test::as_pid1(
            "sys::linux::tests::spawned_children_get_a_clean_process_state_as_pid1",
        ) {
            return;
        }
        // PID 1's own state must not leak into services: its blocked signals (blocked before main in
        // this test process too), the SIGPIPE the Rust runtime ignores, its working directory.
        std::env::set_current_dir("/tmp").unwrap();
        let run = |argv: &[&str]| {
            let argv: Vec<String> = argv.iter().map(|a| (*a).to_owned()).collect();
            let env = [
                ("PATH".to_owned(), "/usr/bin:/bin".to_owned()),
                ("FOO".to_owned(), "bar baz".to_owned()),
            ];
            let child = Linux
                .spawn(&Command {
                    argv: &argv,
                    env: &env,
                })
                .unwrap();
            let fd_flags = rustix::io::fcntl_getfd(&child.output).unwrap();
            assert!(fd_flags.contains(rustix::io::FdFlags::CLOEXEC));
            let pid = child.pid;
            let (out, status) = output_and_exit(child);
            (pid, out, status)
        };

        let (_, out, _) = run(&["/bin/grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"]);
        let masks: Vec<u64> = out
            .lines()
            .map(|l| u64::from_str_radix(l.split('\t').nth(1).unwrap(), 16).unwrap())
            .collect();
        // glibc reserves signals 32 and 33 for itself and refuses to change them; PID 1 never ignores
        // them, but a test runner may.
        let glibc_reserved = 0b11 << 31;
        assert_eq!(masks.len(), 2, "{out}");
        assert_eq!(masks[0], 0, "no blocked signals: {out}");
        assert_eq!(masks[1] & !glibc_reserved, 0, "no ignored signals: {out}");

        // Only stdin, stdout, stderr and the directory ls reads: no descriptor of PID 1 leaks.
        let (_, out, _) = run(&["/bin/ls", "/proc/self/fd"]);
        assert_eq!(out, "0\n1\n2\n3\n");

        let script = r#"
            echo "pid=$$ sid=$(cut -d' ' -f6 /proc/$$/stat)"
            echo "cwd=$(pwd) stdin=$(readlink /proc/$$/fd/0)"
            echo to-stderr >&2
            env | sort
            exit 3
        "#;
        let (pid, out, status) = run(&["/bin/sh", "-c", script]);
        assert_eq!(status, ExitStatus::Code(3));
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [
                format!("pid={pid} sid={pid}").as_str(),
                "cwd=/ stdin=/dev/null",
                "to-stderr",
                "FOO=bar baz",
                "PATH=/usr/bin:/bin",
                "PWD=/",
            ],
            "{out}"
        );
    }

    #[test]
    fn a_missing_program_fails_the_spawn_as_pid1() {
        if !super::super::pid1_test::as_pid1("sys::linux::tests::a_missing_program_fails_the_spawn_as_pid1") {
            return;
        }
        let argv = ["/nonexistent/program".to_owned()];
        let err = Linux
            .spawn(&Command {
                argv: &argv,
                env: &[],
            })
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let err = Linux.spawn(&Command { argv: &[], env: &[] }).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // Nothing is left to reap: the failed child was collected by the spawn itself.
        assert!(
            Linux
                .reap_one()
                .is_err_and(|e| e.raw_os_error() == Some(libc::ECHILD))
        );
    }

    #[test]
    fn signal_fd_reports_a_blocked_signal_sent_before_it_existed_as_pid1() {
        if !super::super::pid1_test::as_pid1(
            "sys::linux::tests::signal_fd_reports_a_blocked_signal_sent_before_it_existed_as_pid1",
        ) {
            return;
        }
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::USR2).unwrap();
        rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::HUP).unwrap();
        let fd = Linux.signal_fd().unwrap();
        assert_eq!(
            Linux
                .poll(&[fd.as_raw_fd()], Some(Duration::from_secs(5)))
                .unwrap(),
            [fd.as_raw_fd()]
        );
        let mut got = Linux.read_signals(fd.as_fd()).unwrap();
        got.sort_by_key(|s| format!("{s:?}"));
        assert_eq!(got, [Signal::Hup, Signal::Usr2]);
        assert_eq!(Linux.read_signals(fd.as_fd()).unwrap(), []);
        assert!(
            Linux
                .poll(&[fd.as_raw_fd()], Some(Duration::ZERO))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn signalfd_records_carry_the_signal_number_first() {
        let mut buf = vec![0u8; SIGINFO_SIZE * 2 + 5];
        buf[..4].copy_from_slice(&17u32.to_ne_bytes());
        buf[SIGINFO_SIZE..SIGINFO_SIZE + 4].copy_from_slice(&15u32.to_ne_bytes());
        assert_eq!(signal_numbers(&buf).collect::<Vec<_>>(), [17, 15]);
    }

    #[test]
    fn reads_at_an_offset_and_short_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("disk");
        std::fs::write(&f, b"0123456789").unwrap();
        assert_eq!(Linux.read_at(&f, 3, 4).unwrap(), b"3456");
        assert_eq!(Linux.read_at(&f, 8, 4).unwrap(), b"89");
    }
}
