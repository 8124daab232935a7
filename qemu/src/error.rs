//! Errors of this crate. Messages say what went wrong and what to do about it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Starting a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// `qemu-system-x86_64` is not on `PATH`.
    #[error("{}", ingot_spec::host_tools::missing_message(crate::host::QEMU_BINARY))]
    QemuNotFound,

    /// No usable OVMF firmware.
    #[error(
        "OVMF firmware not found (looked for {tried}): {}, or set INGOT_OVMF_CODE and INGOT_OVMF_VARS",
        ingot_spec::host_tools::tool(crate::host::DEBIAN_OVMF[0].0)
            .map_or_else(|| "`apt-get install ovmf`".into(), ingot_spec::host_tools::provided_by)
    )]
    OvmfNotFound { tried: String },

    /// Only one of the two OVMF override variables is set.
    #[error("INGOT_OVMF_CODE and INGOT_OVMF_VARS must be set together (a code image and its matching vars)")]
    OvmfEnvIncomplete,

    /// The disk image does not exist or is not a regular file.
    #[error("disk image {path} is not a readable file")]
    ImageNotFound {
        path: PathBuf,
        source: Option<std::io::Error>,
    },

    /// A file named in the configuration (kernel, initrd, fw_cfg item) does not exist.
    #[error("{what} {path} does not exist")]
    MissingFile { what: &'static str, path: PathBuf },

    /// `INGOT_QEMU_ACCEL` holds something other than `auto`, `kvm` or `tcg`.
    #[error("INGOT_QEMU_ACCEL={value:?} is not one of auto, kvm, tcg")]
    BadAccelEnv { value: String },

    /// KVM was asked for explicitly but cannot be used.
    #[error("KVM was requested but {reason}; use accel auto or tcg (INGOT_QEMU_ACCEL=tcg)")]
    KvmUnavailable { reason: String },

    /// A configuration value QEMU would reject or misread.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),

    /// Preparing the scratch directory, the vars copy or the serial log failed.
    #[error("cannot {what}")]
    Io { what: String, source: std::io::Error },

    /// QEMU could not be executed.
    #[error("cannot run {program}")]
    Spawn {
        program: PathBuf,
        source: std::io::Error,
    },

    /// [`VmConfig::disk_size`](crate::VmConfig::disk_size) is set but `qemu-img` is not on `PATH`.
    #[error("{}", ingot_spec::host_tools::missing_message(crate::host::QEMU_IMG_BINARY))]
    QemuImgNotFound,

    /// [`VmConfig::disk_size`](crate::VmConfig::disk_size) is smaller than the image.
    #[error(
        "disk size of {size} bytes is smaller than the image {image} ({image_size} bytes); the disk must hold the whole image"
    )]
    DiskSmallerThanImage {
        size: u64,
        image: PathBuf,
        image_size: u64,
    },

    /// `qemu-img create` failed.
    #[error("qemu-img could not create the disk overlay {overlay} ({status}): {stderr}")]
    Overlay {
        overlay: PathBuf,
        status: ExitStatus,
        stderr: String,
    },

    /// [`VmConfig::netns`](crate::VmConfig::netns) is set but `ip` is not on `PATH`.
    #[error(
        "ip not found on PATH (needed to run QEMU in a network namespace); install it with `apt-get install iproute2`"
    )]
    IpNotFound,

    /// [`VmConfig::netns`](crate::VmConfig::netns) names a namespace that does not exist.
    #[error(
        "network namespace {name:?} does not exist (expected /run/netns/{name}; create it with `ip netns add`)"
    )]
    NetnsNotFound { name: String },

    /// A QMP command is not a JSON object with an `execute` member.
    #[error("QMP command {command:?} is not a JSON object with an \"execute\" member")]
    QmpBadCommand { command: String },

    /// QEMU is no longer running, so its QMP socket cannot answer.
    #[error("QMP {command}: QEMU is not running")]
    QmpQemuGone { command: String },

    /// Talking to QEMU's QMP socket failed (connect, read, write, or a timeout).
    #[error("QMP {command}: cannot {what}")]
    QmpIo {
        command: String,
        what: String,
        source: std::io::Error,
    },

    /// QEMU sent something other than the QMP reply expected.
    #[error("QMP {command}: expected {expected}, QEMU sent {got:?}")]
    QmpProtocol {
        command: String,
        expected: &'static str,
        got: String,
    },

    /// QEMU answered a QMP command with an error.
    #[error("QMP {command}: QEMU refused it: {desc} ({class})")]
    QmpRefused {
        command: String,
        class: String,
        desc: String,
    },
}

/// Setting up or tearing down a [`TestNetns`](crate::TestNetns) failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// Network namespaces and tap devices need root.
    #[error("network namespaces need root (running as uid {uid}); run as root or skip this test")]
    NotRoot { uid: u32 },

    /// `ip` (iproute2) is missing.
    #[error("ip not found on PATH; install it with `apt-get install iproute2`")]
    IpNotFound,

    /// A name given to [`TestNetns`](crate::TestNetns) is not usable.
    #[error("{what} {value:?} is invalid: expected {expected}")]
    BadName {
        what: &'static str,
        value: String,
        expected: &'static str,
    },

    /// An `ip` command could not be run.
    #[error("cannot run `{command}`")]
    Spawn { command: String, source: std::io::Error },

    /// An `ip` command failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
}

/// Why a wait ended without success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WaitFailure {
    /// The deadline passed while QEMU was still running.
    Timeout,
    /// QEMU exited before the awaited line appeared.
    Exited,
}

/// A wait on the console or on QEMU's exit failed. Carries the end of the console and QEMU's stderr so the
/// message alone explains what the guest was doing.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(self))]
pub struct WaitError {
    pub failure: WaitFailure,
    /// The substring waited for; `None` for [`Vm::wait_exit`](crate::Vm::wait_exit).
    pub pattern: Option<String>,
    /// How long the wait lasted.
    pub waited: Duration,
    /// QEMU's exit status, when it has exited.
    pub exit: Option<ExitStatus>,
    /// The last console lines (up to [`WaitError::TAIL_LINES`]).
    pub tail: Vec<String>,
    /// What QEMU wrote to stderr (its last 8 KiB).
    pub stderr: String,
}

impl WaitError {
    /// How many console lines an error keeps.
    pub const TAIL_LINES: usize = 40;
}

fn render(e: &WaitError) -> String {
    let target = match &e.pattern {
        Some(p) => format!("a console line containing {p:?}"),
        None => "QEMU to exit".to_string(),
    };
    let mut s = match (&e.failure, e.exit) {
        (WaitFailure::Timeout, _) => {
            format!(
                "timed out after {:.1?} waiting for {target}; QEMU is still running",
                e.waited
            )
        }
        (WaitFailure::Exited, Some(st)) => format!("QEMU exited ({st}) while waiting for {target}"),
        (WaitFailure::Exited, None) => format!("QEMU closed its console while waiting for {target}"),
    };
    if e.tail.is_empty() {
        s.push_str("\nthe console stayed empty");
        if e.failure == WaitFailure::Timeout {
            s.push_str(" (guests that hang under KVM print nothing; try INGOT_QEMU_ACCEL=tcg)");
        }
    } else {
        s.push_str(&format!("\n--- last {} console lines ---", e.tail.len()));
        for line in &e.tail {
            s.push('\n');
            s.push_str(line);
        }
    }
    let stderr = e.stderr.trim_end();
    if !stderr.is_empty() {
        s.push_str("\n--- QEMU stderr ---\n");
        s.push_str(stderr);
    }
    s
}
