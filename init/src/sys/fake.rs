//! A recording [`Sys`] for unit tests: reads come from a temporary directory standing in for `/`, every
//! action is recorded as one line (`mount proc /proc proc nosuid,nodev,noexec`), time is virtual and only
//! moves when the code sleeps or waits, and failures are injected per call prefix.
//!
//! Processes are simulated: [`Sys::spawn`] records `spawn <argv>` and hands out pids from 100 up with a
//! real pipe whose write end the test holds ([`FakeSys::output`]); they exit when the test says
//! ([`FakeSys::exit_at`]) or when signalled (`SIGTERM` unless [`FakeSys::ignore_term`], `SIGKILL` always),
//! each exit queueing a `SIGCHLD`. [`Sys::poll`] polls the real descriptors without waiting; when nothing
//! is readable it moves the virtual clock to the next scheduled event or the timeout, whichever is first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    AppendFile, Command, DevNum, DmTarget, Errno, Exit, ExitStatus, KillSignal, Mount, Shutdown, Signal,
    Spawned, Sys, fd,
};

enum Event {
    Tree(Box<dyn FnOnce(&Path)>),
    Exit(i32, ExitStatus),
    Signal(Signal),
}

/// A simulated child process.
struct Child {
    /// The write end of its output pipe; dropped (end of file) when it exits.
    output: Option<OwnedFd>,
    ignores_term: bool,
}

/// What one [`Sys::spawn`] was asked to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpawnedCommand {
    pub pid: i32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The virtual clock never passes this: a loop that waits for something the test never provides fails
/// instead of spinning forever.
const RUNAWAY: Duration = Duration::from_secs(30 * 24 * 3600);

pub struct FakeSys {
    root: tempfile::TempDir,
    calls: RefCell<Vec<String>>,
    clock: Cell<Duration>,
    failures: RefCell<Vec<(String, Errno)>>,
    signals: RefCell<VecDeque<Signal>>,
    exits: RefCell<VecDeque<Result<Option<Exit>, Errno>>>,
    events: RefCell<Vec<(Duration, Event)>>,
    children: RefCell<BTreeMap<i32, Child>>,
    dead: RefCell<VecDeque<Exit>>,
    spawned: RefCell<Vec<SpawnedCommand>>,
    next_pid: Cell<i32>,
    signal_fd: Cell<Option<RawFd>>,
    pub ram_root: Cell<bool>,
    pub new_root_device: Cell<u64>,
    /// `st_dev` of `/`.
    pub root_device: Cell<u64>,
    /// Whether `/dev/dm-<minor>` appears when a device-mapper device is resumed (devtmpfs does that).
    pub dm_nodes_appear: Cell<bool>,
    /// Device-mapper devices by name: their minor numbers.
    dm_devices: RefCell<BTreeMap<String, u32>>,
    next_dm_minor: Cell<u32>,
    /// Kernel log records so far, and the write ends of the `/dev/kmsg` stand-ins opened.
    kmsg: RefCell<Vec<String>>,
    kmsg_readers: RefCell<Vec<OwnedFd>>,
}

/// The major number the fake gives device-mapper devices.
pub const DM_MAJOR: u32 = 254;

impl FakeSys {
    pub fn new() -> Self {
        FakeSys {
            root: tempfile::tempdir().unwrap(),
            calls: RefCell::default(),
            clock: Cell::new(Duration::from_millis(1500)),
            failures: RefCell::default(),
            signals: RefCell::default(),
            exits: RefCell::default(),
            events: RefCell::default(),
            children: RefCell::default(),
            dead: RefCell::default(),
            spawned: RefCell::default(),
            next_pid: Cell::new(100),
            signal_fd: Cell::new(None),
            ram_root: Cell::new(true),
            new_root_device: Cell::new(2),
            root_device: Cell::new(1),
            dm_nodes_appear: Cell::new(true),
            dm_devices: RefCell::default(),
            next_dm_minor: Cell::new(0),
            kmsg: RefCell::default(),
            kmsg_readers: RefCell::default(),
        }
    }

    /// The kernel logs `record` (in `/dev/kmsg`'s format); readers opened before and after see it.
    pub fn kmsg(&self, record: &str) {
        self.kmsg.borrow_mut().push(record.to_owned());
        for w in self.kmsg_readers.borrow().iter() {
            std::fs::File::from(w.try_clone().unwrap())
                .write_all(format!("{record}\n").as_bytes())
                .unwrap();
        }
    }

    /// The host path standing in for `path` on the node.
    pub fn host(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        self.root.path().join(p.strip_prefix("/").unwrap_or(p))
    }

    /// Creates a file (and its parents) in the fake tree.
    pub fn write(&self, path: &str, content: impl AsRef<[u8]>) {
        write_under(self.root.path(), path, content.as_ref());
    }

    /// Runs `event` on the fake tree once the virtual clock passed `at` (e.g. a disk showing up).
    pub fn at(&self, at: Duration, event: impl FnOnce(&Path) + 'static) {
        self.events.borrow_mut().push((at, Event::Tree(Box::new(event))));
    }

    /// Makes the simulated process `pid` exit with `status` at `at` (if it still runs then).
    pub fn exit_at(&self, at: Duration, pid: i32, status: ExitStatus) {
        self.events.borrow_mut().push((at, Event::Exit(pid, status)));
    }

    /// Delivers `signal` to PID 1 at `at`.
    pub fn signal_at(&self, at: Duration, signal: Signal) {
        self.events.borrow_mut().push((at, Event::Signal(signal)));
    }

    /// The simulated process `pid` writes `bytes` to its stdout.
    pub fn output(&self, pid: i32, bytes: &[u8]) {
        let children = self.children.borrow();
        let fd = children
            .get(&pid)
            .and_then(|c| c.output.as_ref())
            .unwrap_or_else(|| panic!("no running process {pid}"));
        std::fs::File::from(fd.try_clone().unwrap())
            .write_all(bytes)
            .unwrap();
    }

    /// The simulated process `pid` survives `SIGTERM` (only `SIGKILL` ends it).
    pub fn ignore_term(&self, pid: i32) {
        if let Some(c) = self.children.borrow_mut().get_mut(&pid) {
            c.ignores_term = true;
        }
    }

    /// Everything [`Sys::spawn`] started, in order.
    pub fn spawned(&self) -> Vec<SpawnedCommand> {
        self.spawned.borrow().clone()
    }

    /// The pid of the latest process started with `program` as `argv[0]`.
    pub fn last_pid(&self, program: &str) -> i32 {
        self.spawned
            .borrow()
            .iter()
            .rev()
            .find(|c| c.argv.first().is_some_and(|p| p == program))
            .map(|c| c.pid)
            .unwrap_or_else(|| panic!("{program} was never started"))
    }

    /// Whether the simulated process `pid` is running.
    pub fn running(&self, pid: i32) -> bool {
        self.children.borrow().contains_key(&pid)
    }

    /// Sets the virtual clock to `t` (never backwards), running the events due by then.
    pub fn advance_to(&self, t: Duration) {
        self.advance(t.saturating_sub(self.clock.get()));
    }

    /// Every call whose record starts with `prefix` fails with `errno`.
    pub fn fail(&self, prefix: &str, errno: Errno) {
        self.failures.borrow_mut().push((prefix.to_owned(), errno));
    }

    /// Undoes [`FakeSys::fail`] for `prefix`.
    pub fn unfail(&self, prefix: &str) {
        self.failures.borrow_mut().retain(|(p, _)| p != prefix);
    }

    pub fn queue_signal(&self, s: Signal) {
        self.signals.borrow_mut().push_back(s);
    }

    pub fn queue_exit(&self, e: Result<Option<Exit>, Errno>) {
        self.exits.borrow_mut().push_back(e);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    /// Recorded calls starting with one of `prefixes`, in order.
    pub fn calls_matching(&self, prefixes: &[&str]) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| prefixes.iter().any(|p| c.starts_with(p)))
            .cloned()
            .collect()
    }

    /// The lines written to the console.
    pub fn console_lines(&self) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| c.strip_prefix("console ").map(str::to_owned))
            .collect()
    }

    pub fn now(&self) -> Duration {
        self.clock.get()
    }

    /// Moves the virtual clock forward by `d`, running the events due by then in time order.
    pub fn advance(&self, d: Duration) {
        self.clock.set(self.clock.get() + d);
        let now = self.clock.get();
        assert!(
            now < RUNAWAY,
            "the virtual clock ran away: the code waits for something the test never provides"
        );
        let mut due: Vec<(Duration, Event)> = {
            let mut events = self.events.borrow_mut();
            let (due, later): (Vec<_>, Vec<_>) = events.drain(..).partition(|(t, _)| *t <= now);
            *events = later;
            due
        };
        due.sort_by_key(|(t, _)| *t);
        for (_, e) in due {
            match e {
                Event::Tree(f) => f(self.root.path()),
                Event::Exit(pid, status) => self.exit_now(pid, status),
                Event::Signal(s) => self.queue_signal(s),
            }
        }
    }

    fn next_event(&self) -> Option<Duration> {
        self.events.borrow().iter().map(|(t, _)| *t).min()
    }

    /// Ends a running simulated process: closes its output, makes it reapable, queues `SIGCHLD`.
    fn exit_now(&self, pid: i32, status: ExitStatus) {
        if self.children.borrow_mut().remove(&pid).is_some() {
            self.dead.borrow_mut().push_back(Exit { pid, status });
            self.queue_signal(Signal::Child);
        }
    }

    fn signal_child(&self, pid: i32, sig: KillSignal) -> bool {
        let ignores_term = match self.children.borrow().get(&pid) {
            None => return false,
            Some(c) => c.ignores_term,
        };
        match sig {
            KillSignal::Kill => self.exit_now(pid, ExitStatus::Signal(9)),
            KillSignal::Term if !ignores_term => self.exit_now(pid, ExitStatus::Signal(15)),
            KillSignal::Term => {}
        }
        true
    }

    /// The descriptors among `fds` that are readable now: real ones by a zero-timeout `poll`, the fake
    /// signal descriptor when a signal is queued.
    fn ready_now(&self, fds: &[RawFd]) -> Vec<RawFd> {
        let sigfd = self.signal_fd.get();
        let real: Vec<RawFd> = fds.iter().copied().filter(|f| Some(*f) != sigfd).collect();
        let mut ready = fd::poll_readable(&real, Some(Duration::ZERO)).unwrap();
        if let Some(s) = sigfd
            && fds.contains(&s)
            && !self.signals.borrow().is_empty()
        {
            ready.push(s);
        }
        ready
    }

    /// Like [`FakeSys::record`] for calls too frequent to record (writes): only injects failures.
    fn fail_only(&self, call: String) -> io::Result<()> {
        match self
            .failures
            .borrow()
            .iter()
            .find(|(p, _)| call.starts_with(p.as_str()))
        {
            Some((_, e)) => Err((*e).into()),
            None => Ok(()),
        }
    }

    fn record(&self, call: String) -> io::Result<()> {
        let failure = self
            .failures
            .borrow()
            .iter()
            .find(|(p, _)| call.starts_with(p.as_str()))
            .map(|(_, e)| *e);
        self.calls.borrow_mut().push(call);
        match failure {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

pub fn write_under(root: &Path, path: &str, content: &[u8]) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn flag_names(flags: super::MountFlags) -> String {
    let names: Vec<String> = flags.iter_names().map(|(n, _)| n.to_ascii_lowercase()).collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(",")
    }
}

impl Sys for FakeSys {
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        std::fs::read(self.host(path))
    }

    fn read_at(&self, path: &Path, offset: u64, len: usize) -> io::Result<Vec<u8>> {
        let all = std::fs::read(self.host(path))?;
        let start = usize::try_from(offset).unwrap().min(all.len());
        let end = (start + len).min(all.len());
        Ok(all[start..end].to_vec())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let mut names = std::fs::read_dir(self.host(path))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<io::Result<Vec<_>>>()?;
        names.sort();
        Ok(names)
    }

    fn exists(&self, path: &Path) -> bool {
        self.host(path).exists()
    }

    fn kernel_release(&self) -> String {
        "6.1.0-test".to_owned()
    }

    fn boottime(&self) -> Duration {
        self.clock.get()
    }

    fn console(&self, line: &str) {
        let _ = self.record(format!("console {line}"));
    }

    fn setup_console(&self) -> io::Result<()> {
        self.record("setup-console".to_owned())
    }

    fn mkdir(&self, path: &str) -> io::Result<()> {
        self.record(format!("mkdir {path}"))?;
        std::fs::create_dir_all(self.host(path))
    }

    fn mount(&self, m: &Mount<'_>) -> io::Result<()> {
        self.record(format!(
            "mount {} {} {} {} {}",
            m.source,
            m.target,
            m.fstype,
            flag_names(m.flags),
            m.data.unwrap_or("-")
        ))
    }

    fn move_mount(&self, from: &str, to: &str) -> io::Result<()> {
        self.record(format!("move {from} {to}"))
    }

    fn device_of(&self, path: &str) -> io::Result<u64> {
        self.record(format!("stat {path}"))?;
        Ok(if path == "/" {
            self.root_device.get()
        } else {
            self.new_root_device.get()
        })
    }

    fn is_ram_fs(&self, path: &str) -> io::Result<bool> {
        self.record(format!("statfs {path}"))?;
        Ok(self.ram_root.get())
    }

    fn remove_same_device(&self, dir: &str) -> io::Result<usize> {
        self.record(format!("remove-same-device {dir}"))?;
        Ok(0)
    }

    fn chdir(&self, path: &str) -> io::Result<()> {
        self.record(format!("chdir {path}"))
    }

    fn chroot(&self, path: &str) -> io::Result<()> {
        self.record(format!("chroot {path}"))
    }

    fn sync(&self) {
        let _ = self.record("sync".to_owned());
    }

    fn load_module(&self, path: &Path) -> io::Result<()> {
        self.record(format!("load {}", path.display()))
    }

    fn dm_create(&self, name: &str) -> io::Result<DevNum> {
        self.record(format!("dm-create {name}"))?;
        let minor = self.next_dm_minor.get();
        self.next_dm_minor.set(minor + 1);
        self.dm_devices.borrow_mut().insert(name.to_owned(), minor);
        Ok(DevNum {
            major: DM_MAJOR,
            minor,
        })
    }

    fn dm_load_table(&self, name: &str, targets: &[DmTarget<'_>], read_only: bool) -> io::Result<()> {
        let table: Vec<String> = targets
            .iter()
            .map(|t| format!("{} {} {} {}", t.start, t.sectors, t.kind, t.params))
            .collect();
        let mode = if read_only { "ro" } else { "rw" };
        self.record(format!("dm-load {name} {mode} {}", table.join("; ")))
    }

    fn dm_resume(&self, name: &str) -> io::Result<()> {
        self.record(format!("dm-resume {name}"))?;
        let minor = self.dm_devices.borrow().get(name).copied();
        if let Some(minor) = minor
            && self.dm_nodes_appear.get()
        {
            self.write(&format!("/dev/dm-{minor}"), "");
        }
        Ok(())
    }

    fn dm_remove(&self, name: &str) -> io::Result<()> {
        self.record(format!("dm-remove {name}"))?;
        if let Some(minor) = self.dm_devices.borrow_mut().remove(name) {
            let _ = std::fs::remove_file(self.host(format!("/dev/dm-{minor}")));
        }
        Ok(())
    }

    fn open_kmsg(&self) -> io::Result<OwnedFd> {
        self.fail_only("open-kmsg".to_owned())?;
        let (read, write) = fd::output_pipe()?;
        let mut w = std::fs::File::from(write.try_clone()?);
        for record in self.kmsg.borrow().iter() {
            w.write_all(format!("{record}\n").as_bytes())?;
        }
        self.kmsg_readers.borrow_mut().push(write);
        Ok(read)
    }

    fn read_kmsg(&self, fd: BorrowedFd<'_>) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut bytes = Vec::new();
        while let fd::Read::Data(n) = fd::read_nonblocking(fd, &mut buf)? {
            bytes.extend_from_slice(&buf[..n]);
        }
        for line in String::from_utf8_lossy(&bytes).lines() {
            out.push(line.to_owned());
        }
        Ok(out)
    }

    fn exec(&self, path: &str) -> io::Error {
        match self.record(format!("exec {path}")) {
            Err(e) => e,
            Ok(()) => Errno::NOENT.into(),
        }
    }

    fn block_signals(&self) -> io::Result<()> {
        self.record("block-signals".to_owned())
    }

    fn disable_ctrl_alt_del(&self) -> io::Result<()> {
        self.record("cad-off".to_owned())
    }

    fn signal_fd(&self) -> io::Result<OwnedFd> {
        self.record("signal-fd".to_owned())?;
        // A real descriptor number that stays unique while it is open; readiness is simulated.
        let fd = OwnedFd::from(std::fs::File::open("/dev/null")?);
        self.signal_fd.set(Some(fd.as_raw_fd()));
        Ok(fd)
    }

    fn read_signals(&self, _fd: BorrowedFd<'_>) -> io::Result<Vec<Signal>> {
        Ok(self.signals.borrow_mut().drain(..).collect())
    }

    fn poll(&self, fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<RawFd>> {
        let ready = self.ready_now(fds);
        if !ready.is_empty() || timeout == Some(Duration::ZERO) {
            return Ok(ready);
        }
        let now = self.clock.get();
        let limit = now + timeout.unwrap_or(Duration::from_secs(3600));
        match self.next_event() {
            Some(t) if t <= limit => self.advance_to(t.max(now)),
            _ => self.advance_to(limit),
        }
        Ok(self.ready_now(fds))
    }

    fn spawn(&self, cmd: &Command<'_>) -> io::Result<Spawned> {
        self.record(format!("spawn {}", cmd.argv.join(" ")))?;
        let pid = self.next_pid.get();
        self.next_pid.set(pid + 1);
        let (output, write) = fd::output_pipe()?;
        self.children.borrow_mut().insert(
            pid,
            Child {
                output: Some(write),
                ignores_term: false,
            },
        );
        self.spawned.borrow_mut().push(SpawnedCommand {
            pid,
            argv: cmd.argv.to_vec(),
            env: cmd.env.to_vec(),
        });
        Ok(Spawned { pid, output })
    }

    fn reap_one(&self) -> io::Result<Option<Exit>> {
        match self.exits.borrow_mut().pop_front() {
            Some(Ok(e)) => return Ok(e),
            Some(Err(e)) => return Err(e.into()),
            None => {}
        }
        if let Some(e) = self.dead.borrow_mut().pop_front() {
            return Ok(Some(e));
        }
        if self.children.borrow().is_empty() {
            Err(Errno::CHILD.into())
        } else {
            Ok(None)
        }
    }

    fn kill_all(&self, sig: KillSignal) -> io::Result<()> {
        self.record(format!("kill-all {sig:?}").to_ascii_lowercase())?;
        let pids: Vec<i32> = self.children.borrow().keys().copied().collect();
        for pid in pids {
            self.signal_child(pid, sig);
        }
        Ok(())
    }

    fn kill_group(&self, pgid: i32, sig: KillSignal) -> io::Result<()> {
        self.record(format!("kill-group {pgid} {sig:?}").to_ascii_lowercase())?;
        if self.signal_child(pgid, sig) {
            Ok(())
        } else {
            Err(Errno::SRCH.into())
        }
    }

    fn sleep(&self, d: Duration) {
        let _ = self.record(format!("sleep {d:?}"));
        self.advance(d);
    }

    fn reboot(&self, how: Shutdown) -> io::Error {
        match self.record(format!("reboot {}", how.name())) {
            Err(e) => e,
            Ok(()) => io::Error::other("fake reboot returned"),
        }
    }

    fn write_file(&self, path: &str, bytes: &[u8]) -> io::Result<()> {
        self.record(format!(
            "write {path} {}",
            String::from_utf8_lossy(bytes).trim_end()
        ))?;
        write_under(self.root.path(), path, bytes);
        Ok(())
    }

    fn write_file_atomic(&self, path: &str, bytes: &[u8], mode: u32) -> io::Result<()> {
        self.record(format!("write-atomic {path} {mode:o}"))?;
        write_under(self.root.path(), path, bytes);
        Ok(())
    }

    fn write_at_sync(&self, path: &str, offset: u64, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        self.record(format!("write-at {path} {offset} {}", bytes.len()))?;
        let f = std::fs::OpenOptions::new().write(true).open(self.host(path))?;
        f.write_all_at(bytes, offset)
    }

    fn resize_partition(&self, disk: &str, number: u32, start: u64, len: u64) -> io::Result<()> {
        self.record(format!("resize-partition {disk} {number} {start} {len}"))
    }

    fn run(&self, argv: &[&str]) -> io::Result<ExitStatus> {
        self.record(format!("run {}", argv.join(" ")))?;
        Ok(ExitStatus::Code(0))
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        self.record(format!("hostname {name}"))
    }

    fn random(&self, buf: &mut [u8]) -> io::Result<()> {
        self.record(format!("random {}", buf.len()))?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = i as u8 * 17;
        }
        Ok(())
    }

    fn connect_unix(&self, path: &Path) -> io::Result<()> {
        fd::connect_unix(&self.host(path))
    }

    fn open_append(&self, path: &Path) -> io::Result<AppendFile> {
        self.fail_only(format!("open-append {}", path.display()))?;
        AppendFile::open(&self.host(path))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.fail_only(format!("rename {}", from.display()))?;
        std::fs::rename(self.host(from), self.host(to))
    }

    fn unmount(&self, target: &str) -> io::Result<()> {
        self.record(format!("umount {target}"))
    }

    fn remount_read_only(&self, target: &str) -> io::Result<()> {
        self.record(format!("remount-ro {target}"))
    }
}
