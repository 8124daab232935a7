//! A running QEMU and the waits on its console.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::args::{
    Disk, Launch, ResolvedFirmware, check_netns_name, overlay_args, qemu_args, shell_line, wrap_netns,
};
use crate::config::{AccelUsed, Firmware, VmConfig};
use crate::console::{Console, Sinks, collect_tail, pump};
use crate::error::{QemuError, WaitError, WaitFailure};
use crate::host::{self, AccelPlan};
use crate::qmp::{self, QMP_TIMEOUT};

/// How much of QEMU's stderr is kept for error messages.
const STDERR_KEEP: usize = 8 * 1024;
/// How long to wait for QEMU to be reaped after its console closed.
const REAP_GRACE: Duration = Duration::from_secs(5);
/// Name of the QMP socket in the scratch directory.
const QMP_SOCKET: &str = "qmp.sock";
/// Name of the qcow2 overlay in the scratch directory when a disk size is set.
const OVERLAY: &str = "disk.qcow2";
/// Longest path a unix socket address holds (`sun_path` without its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// A console line that matched a [`Vm::wait_for`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Match {
    /// The whole line, escape sequences removed.
    pub line: String,
    /// When the line arrived, measured from QEMU's start (of the final attempt, after a KVM fallback).
    pub elapsed: Duration,
}

/// A running QEMU. Dropping it kills QEMU, reaps it and removes its scratch directory (vars copy, disk
/// overlay, QMP socket), also while a test unwinds from a panic.
pub struct Vm {
    run: Run,
    scratch: tempfile::TempDir,
    qmp_socket: PathBuf,
    accel: AccelUsed,
    accel_notice: Option<String>,
    /// Sequence number of the first line the next `wait_for` looks at.
    cursor: u64,
}

/// One QEMU process with its reader threads.
struct Run {
    child: Child,
    /// What was executed: QEMU, or `ip` when QEMU runs in a network namespace.
    program: PathBuf,
    args: Vec<OsString>,
    console: Arc<Console>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    exit: Option<ExitStatus>,
}

/// Inputs resolved once and reused by a fallback restart.
struct Prepared {
    program: PathBuf,
    image: PathBuf,
    /// `qemu-img`, when the disk is an overlay of `VmConfig::disk_size`.
    qemu_img: Option<PathBuf>,
    /// `ip`, when QEMU runs in `VmConfig::netns`.
    ip: Option<PathBuf>,
    ovmf_code: Option<PathBuf>,
    ovmf_vars: Option<PathBuf>,
    /// OVMF with Secure Boot: SMM and secure flash.
    secure_boot: bool,
    log: Option<std::fs::File>,
}

impl Vm {
    /// Starts QEMU for `cfg`.
    ///
    /// With [`Accel::Auto`](crate::Accel::Auto) and a usable `/dev/kvm` this blocks until the guest prints a
    /// kernel or `ingot-init` line under KVM, up to [`VmConfig::kvm_probe`]; if none arrives, QEMU is killed
    /// and started again under TCG, and a one-line notice saying so goes to stderr and the serial log.
    pub fn start(cfg: VmConfig) -> Result<Vm, QemuError> {
        let program = host::find_qemu()?;
        let env_accel = std::env::var(host::ACCEL_ENV).ok();
        let requested = host::requested_accel(cfg.accel, env_accel.as_deref())?;
        let plan = host::plan_accel(requested, host::kvm_usable())?;

        let image = std::fs::canonicalize(&cfg.image).map_err(|e| QemuError::ImageNotFound {
            path: cfg.image.clone(),
            source: Some(e),
        })?;
        if !image.is_file() {
            return Err(QemuError::ImageNotFound {
                path: image,
                source: None,
            });
        }
        let qemu_img = match cfg.disk_size {
            Some(size) => {
                check_disk_size(&image, size)?;
                Some(host::find_tool(host::QEMU_IMG_BINARY).ok_or(QemuError::QemuImgNotFound)?)
            }
            None => None,
        };
        let ip = match &cfg.netns {
            Some(ns) => {
                check_netns_name(ns)?;
                if !Path::new("/run/netns").join(ns).exists() {
                    return Err(QemuError::NetnsNotFound { name: ns.clone() });
                }
                Some(host::find_tool("ip").ok_or(QemuError::IpNotFound)?)
            }
            None => None,
        };
        if let Some(k) = &cfg.kernel {
            require_file("kernel", &k.kernel)?;
            if let Some(i) = &k.initrd {
                require_file("initrd", i)?;
            }
        }
        for f in &cfg.fw_cfg {
            require_file("fw_cfg file", &f.path)?;
        }
        let (ovmf_code, ovmf_vars) = match &cfg.firmware {
            Firmware::Ovmf(Some(p)) | Firmware::OvmfSecureBoot(p) => {
                require_file("OVMF code", &p.code)?;
                require_file("OVMF vars", &p.vars)?;
                (Some(p.code.clone()), Some(p.vars.clone()))
            }
            Firmware::Ovmf(None) => {
                let p = host::find_ovmf()?;
                (Some(p.code), Some(p.vars))
            }
            Firmware::LegacyBios => (None, None),
        };
        let log = match &cfg.serial_log {
            Some(p) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| QemuError::Io {
                        what: format!("open serial log {}", p.display()),
                        source,
                    })?,
            ),
            None => None,
        };
        let scratch = tempfile::Builder::new()
            .prefix("ingot-qemu-")
            .tempdir()
            .map_err(|source| QemuError::Io {
                what: "create a scratch directory".into(),
                source,
            })?;
        let qmp_socket = scratch.path().join(QMP_SOCKET);
        if qmp_socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(QemuError::InvalidConfig(format!(
                "the QMP socket path {} is longer than {MAX_SOCKET_PATH} bytes; set TMPDIR to a shorter directory",
                qmp_socket.display()
            )));
        }
        let mut prep = Prepared {
            program,
            image,
            qemu_img,
            ip,
            ovmf_code,
            ovmf_vars,
            secure_boot: matches!(cfg.firmware, Firmware::OvmfSecureBoot(_)),
            log,
        };

        let (accel, notice) = match plan {
            AccelPlan::Tcg { reason } => {
                let notice = reason.map(|r| format!("ingot-qemu: using TCG (software emulation): {r}"));
                if let Some(n) = &notice {
                    announce(n, &mut prep.log);
                }
                (AccelUsed::Tcg, notice)
            }
            AccelPlan::Kvm => (AccelUsed::Kvm, None),
            AccelPlan::KvmThenTcg => {
                let mut run = spawn(&cfg, &prep, scratch.path(), AccelUsed::Kvm)?;
                match run.probe(cfg.kvm_probe) {
                    Probe::Progress => {
                        return Ok(Vm {
                            run,
                            scratch,
                            qmp_socket,
                            accel: AccelUsed::Kvm,
                            accel_notice: None,
                            cursor: 0,
                        });
                    }
                    Probe::Silent | Probe::Exited => {
                        let why = run.fallback_reason(cfg.kvm_probe);
                        run.stop_and_join();
                        let n = format!("ingot-qemu: restarting under TCG (software emulation): {why}");
                        announce(&n, &mut prep.log);
                        (AccelUsed::Tcg, Some(n))
                    }
                }
            }
        };
        let run = spawn(&cfg, &prep, scratch.path(), accel)?;
        Ok(Vm {
            run,
            scratch,
            qmp_socket,
            accel,
            accel_notice: notice,
            cursor: 0,
        })
    }

    /// Waits for a console line containing `pattern` after the line the last successful `wait_for` returned.
    /// Lines that arrived before the call count too, so nothing printed between two waits is missed; a
    /// failed wait consumes nothing. Guest reboots do not interrupt the console (unless
    /// [`VmConfig::exit_on_reboot`] ends QEMU): lines of the next boot follow those of the last one.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<Match, WaitError> {
        let begin = Instant::now();
        let deadline = begin + timeout;
        let console = Arc::clone(&self.run.console);
        let mut st = console.lock();
        // Lines before `scan` were already looked at by this call; a failed wait leaves `self.cursor` alone.
        let mut scan = self.cursor;
        loop {
            let skip = scan.saturating_sub(st.first_seq) as usize;
            if let Some((i, l)) = st
                .lines
                .iter()
                .enumerate()
                .skip(skip)
                .find(|(_, l)| l.text.contains(pattern))
            {
                self.cursor = st.first_seq + i as u64 + 1;
                return Ok(Match {
                    line: l.text.clone(),
                    elapsed: l.at,
                });
            }
            scan = st.next_seq();
            if st.eof {
                drop(st);
                self.run.reap(REAP_GRACE);
                return Err(self.wait_error(WaitFailure::Exited, Some(pattern), begin.elapsed()));
            }
            if Instant::now() >= deadline {
                drop(st);
                return Err(self.wait_error(WaitFailure::Timeout, Some(pattern), begin.elapsed()));
            }
            st = console.wait_until(st, deadline);
        }
    }

    /// Waits for QEMU to exit (the guest powered off, or rebooted with
    /// [`VmConfig::exit_on_reboot`]) and returns its status. QEMU keeps running after a timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus, WaitError> {
        let begin = Instant::now();
        let deadline = begin + timeout;
        {
            let console = Arc::clone(&self.run.console);
            let mut st = console.lock();
            while !st.eof && Instant::now() < deadline {
                st = console.wait_until(st, deadline);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match self.run.reap(left.max(Duration::from_millis(1))) {
            Some(st) => Ok(st),
            None => Err(self.wait_error(WaitFailure::Timeout, None, begin.elapsed())),
        }
    }

    /// Runs one QMP command and returns the JSON text of its `return` value (`{}` for most commands that
    /// only act). `command` is a JSON object, e.g. `{"execute": "query-status"}` or
    /// `{"execute": "human-monitor-command", "arguments": {"command-line": "info block"}}`.
    ///
    /// Each call opens its own connection to the QMP socket, reads QEMU's greeting and negotiates
    /// capabilities; events are skipped. Right after [`Vm::start`] it waits for QEMU to create the socket.
    /// The whole exchange takes at most [`QMP_TIMEOUT`]; errors carry QEMU's own message.
    pub fn qmp(&self, command: &str) -> Result<String, QemuError> {
        let console = &self.run.console;
        let exited = self.run.exit.is_some();
        let alive = || !exited && !console.lock().eof;
        qmp::execute(&self.qmp_socket, command, QMP_TIMEOUT, &alive)
    }

    /// Presses the ACPI power button (`system_powerdown`). Returns once QEMU accepted the request; whether
    /// and when the guest powers off is up to the guest: follow with [`Vm::wait_exit`].
    pub fn powerdown(&self) -> Result<(), QemuError> {
        self.qmp(r#"{"execute":"system_powerdown"}"#).map(drop)
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard: ingot-init reboots in order (QEMU then boots the same
    /// disk again when reboots are allowed).
    pub fn ctrl_alt_del(&self) -> Result<(), QemuError> {
        self.qmp(
            r#"{"execute":"send-key","arguments":{"keys":[{"type":"qcode","data":"ctrl"},{"type":"qcode","data":"alt"},{"type":"qcode","data":"delete"}]}}"#,
        )
        .map(drop)
    }

    /// QEMU's QMP socket (in the scratch directory), for clients of its own.
    pub fn qmp_socket(&self) -> &Path {
        &self.qmp_socket
    }

    /// Kills QEMU (SIGKILL: the disk overlay is thrown away anyway) and reaps it. Idempotent.
    pub fn kill(&mut self) {
        self.run.kill();
    }

    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.run.child.id()
    }

    /// QEMU's exit status if it has exited, without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.run.reap(Duration::ZERO)
    }

    /// The console lines kept so far (the last 10 000), escape sequences removed.
    pub fn console_lines(&self) -> Vec<String> {
        self.run
            .console
            .lock()
            .lines
            .iter()
            .map(|l| l.text.clone())
            .collect()
    }

    /// When the first console line of any kind arrived (firmware included), from QEMU's start.
    pub fn first_line_at(&self) -> Option<Duration> {
        self.run.console.lock().first_line
    }

    /// When the first kernel or `ingot-init` line arrived, from QEMU's start.
    pub fn first_os_line_at(&self) -> Option<Duration> {
        self.run.console.lock().first_os_line
    }

    /// What QEMU has written to stderr (the last 8 KiB).
    pub fn stderr(&self) -> String {
        self.run.stderr_text()
    }

    /// The accelerator this QEMU runs with.
    pub fn accel(&self) -> AccelUsed {
        self.accel
    }

    /// Why TCG is used although KVM was allowed, if that happened.
    pub fn accel_notice(&self) -> Option<&str> {
        self.accel_notice.as_deref()
    }

    /// The command line QEMU was started with (behind `ip netns exec NAME` with a network namespace),
    /// shell-quoted.
    pub fn command_line(&self) -> String {
        shell_line(&self.run.program, &self.run.args)
    }

    /// The private directory holding the vars copy, the disk overlay and the QMP socket; removed on drop.
    pub fn scratch_dir(&self) -> &Path {
        self.scratch.path()
    }

    fn wait_error(&mut self, failure: WaitFailure, pattern: Option<&str>, waited: Duration) -> WaitError {
        let exit = self.run.reap(Duration::ZERO);
        let failure = if exit.is_some() && failure == WaitFailure::Timeout && pattern.is_some() {
            WaitFailure::Exited
        } else {
            failure
        };
        WaitError {
            failure,
            pattern: pattern.map(str::to_string),
            waited,
            exit,
            tail: self.run.console.lock().tail(WaitError::TAIL_LINES),
            stderr: self.run.stderr_text(),
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.run.kill();
        // `scratch` is dropped after this, once QEMU no longer holds files in it.
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vm")
            .field("pid", &self.run.child.id())
            .field("accel", &self.accel)
            .field("scratch", &self.scratch.path())
            .finish_non_exhaustive()
    }
}

enum Probe {
    Progress,
    Silent,
    Exited,
}

impl Run {
    /// Waits until an OS line arrives, QEMU exits, or `window` passes.
    fn probe(&mut self, window: Duration) -> Probe {
        let deadline = Instant::now() + window;
        let console = Arc::clone(&self.console);
        let mut st = console.lock();
        loop {
            if st.first_os_line.is_some() {
                return Probe::Progress;
            }
            if st.eof {
                return Probe::Exited;
            }
            if Instant::now() >= deadline {
                return Probe::Silent;
            }
            st = console.wait_until(st, deadline);
        }
    }

    fn fallback_reason(&mut self, window: Duration) -> String {
        let lines = self.console.lock().lines.len();
        match self.reap(Duration::from_millis(200)) {
            Some(st) => {
                let err = self.stderr_text();
                let first = err.lines().next().unwrap_or("no message");
                format!("QEMU exited under KVM ({st}) before the kernel printed anything: {first}")
            }
            None => format!(
                "no kernel or ingot-init line within {}s under KVM ({lines} firmware lines); \
                 KVM guests hang on some hosts",
                window.as_secs()
            ),
        }
    }

    /// Returns the exit status, waiting up to `grace` for QEMU to exit.
    fn reap(&mut self, grace: Duration) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return self.exit;
        }
        let deadline = Instant::now() + grace;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) => {
                    self.exit = Some(st);
                    return self.exit;
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    fn kill(&mut self) {
        if self.exit.is_some() {
            return;
        }
        // Fails only when the process is already gone; the wait below reaps it either way.
        let _ = self.child.kill();
        if let Ok(st) = self.child.wait() {
            self.exit = Some(st);
        }
    }

    /// Kills QEMU and waits for the reader threads, so no line of this run lands after what follows.
    fn stop_and_join(mut self) {
        self.kill();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
    }

    fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

fn spawn(cfg: &VmConfig, prep: &Prepared, scratch: &Path, accel: AccelUsed) -> Result<Run, QemuError> {
    let vars_copy = scratch.join("OVMF_VARS.fd");
    let firmware = match (&prep.ovmf_code, &prep.ovmf_vars) {
        (Some(code), Some(vars)) => {
            std::fs::copy(vars, &vars_copy).map_err(|source| QemuError::Io {
                what: format!("copy OVMF vars {} to {}", vars.display(), vars_copy.display()),
                source,
            })?;
            ResolvedFirmware::Ovmf {
                code,
                vars_copy: &vars_copy,
                secure_boot: prep.secure_boot,
            }
        }
        _ => ResolvedFirmware::LegacyBios,
    };
    let overlay = scratch.join(OVERLAY);
    let disk = match (cfg.disk_size, &prep.qemu_img) {
        (Some(size), Some(qemu_img)) => {
            // A fresh overlay per QEMU process: a KVM attempt's writes do not reach the TCG restart.
            create_overlay(qemu_img, &prep.image, &overlay, size)?;
            Disk::Overlay(&overlay)
        }
        _ => Disk::Snapshot(&prep.image),
    };
    let qmp_socket = scratch.join(QMP_SOCKET);
    // QEMU replaces a stale socket itself; removing it first keeps `Vm::qmp` from seeing the old one.
    let _ = std::fs::remove_file(&qmp_socket);
    let args = qemu_args(&Launch {
        cfg,
        disk,
        firmware,
        accel,
        qmp_socket: &qmp_socket,
    })?;
    let (program, args) = wrap_netns(prep.ip.as_deref(), cfg.netns.as_deref(), &prep.program, args);
    let log = match &prep.log {
        Some(f) => Some(f.try_clone().map_err(|source| QemuError::Io {
            what: "duplicate the serial log handle".into(),
            source,
        })?),
        None => None,
    };
    let started = Instant::now();
    let mut child = Command::new(&program)
        .args(&args)
        .env("TMPDIR", scratch)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| QemuError::Spawn {
            program: program.clone(),
            source,
        })?;
    let console = Arc::new(Console::default());
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        let c = Arc::clone(&console);
        let sinks = Sinks { echo: cfg.echo, log };
        readers.push(std::thread::spawn(move || pump(out, c, sinks, started)));
    }
    if let Some(err) = child.stderr.take() {
        let e = Arc::clone(&stderr);
        readers.push(std::thread::spawn(move || collect_tail(err, e, STDERR_KEEP)));
    }
    Ok(Run {
        child,
        program,
        args,
        console,
        stderr,
        readers,
        exit: None,
    })
}

/// A disk size must be whole sectors and hold the whole image.
fn check_disk_size(image: &Path, size: u64) -> Result<(), QemuError> {
    if size == 0 || !size.is_multiple_of(512) {
        return Err(QemuError::InvalidConfig(format!(
            "disk size {size} is not a positive multiple of 512 bytes"
        )));
    }
    let image_size = std::fs::metadata(image)
        .map_err(|source| QemuError::Io {
            what: format!("read the size of {}", image.display()),
            source,
        })?
        .len();
    if size < image_size {
        return Err(QemuError::DiskSmallerThanImage {
            size,
            image: image.to_path_buf(),
            image_size,
        });
    }
    Ok(())
}

/// Creates a qcow2 overlay of `size` bytes backed by the raw `image`, replacing an older one.
fn create_overlay(qemu_img: &Path, image: &Path, overlay: &Path, size: u64) -> Result<(), QemuError> {
    let _ = std::fs::remove_file(overlay);
    let out = Command::new(qemu_img)
        .args(overlay_args(image, overlay, size))
        .stdin(Stdio::null())
        .output()
        .map_err(|source| QemuError::Spawn {
            program: qemu_img.to_path_buf(),
            source,
        })?;
    if !out.status.success() {
        return Err(QemuError::Overlay {
            overlay: overlay.to_path_buf(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

fn require_file(what: &'static str, path: &Path) -> Result<(), QemuError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(QemuError::MissingFile {
            what,
            path: path.to_path_buf(),
        })
    }
}

fn announce(notice: &str, log: &mut Option<std::fs::File>) {
    eprintln!("{notice}");
    if let Some(f) = log.as_mut() {
        // The log is a convenience; failing to write it must not stop the VM.
        let _ = writeln!(f, "{notice}");
    }
}
