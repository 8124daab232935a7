//! Errors of this crate. Messages say what went wrong and what to do about it.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Starting a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// `qemu-system-x86_64` is not on `PATH`.
    #[error("qemu-system-x86_64 not found on PATH; install it with `apt-get install qemu-system-x86`")]
    QemuNotFound,

    /// No usable OVMF firmware.
    #[error(
        "OVMF firmware not found (looked for {tried}); install it with `apt-get install ovmf` or set \
         INGOT_OVMF_CODE and INGOT_OVMF_VARS"
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
