//! Boot timing for benchmarks: how long from QEMU's start until the guest prints a marker.

use std::time::Duration;

use crate::config::{AccelUsed, VmConfig};
use crate::error::{QemuError, WaitError};
use crate::vm::Vm;

/// Times of one boot, each measured from QEMU's start (the final attempt's, after a KVM fallback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootTimes {
    pub accel: AccelUsed,
    /// First console line of any kind (usually firmware).
    pub first_line: Option<Duration>,
    /// First kernel or `ingot-init` line; the time before it is spent in QEMU, firmware and boot loader.
    pub first_os_line: Option<Duration>,
    /// The marker line.
    pub marker: Duration,
}

/// Why a timing run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the VM")]
    Start(#[from] QemuError),
    #[error("the marker did not appear")]
    Marker(#[from] WaitError),
}

/// Boots `cfg`, waits up to `timeout` for a console line containing `marker`, kills QEMU and reports the
/// times. Under `Accel::Auto` a KVM probe that falls back to TCG is not counted.
pub fn time_to_marker(cfg: VmConfig, marker: &str, timeout: Duration) -> Result<BootTimes, BenchError> {
    let mut vm = Vm::start(cfg)?;
    let m = vm.wait_for(marker, timeout)?;
    let times = BootTimes {
        accel: vm.accel(),
        first_line: vm.first_line_at(),
        first_os_line: vm.first_os_line_at(),
        marker: m.elapsed,
    };
    vm.kill();
    Ok(times)
}
