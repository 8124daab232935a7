//! `ingot-init`: PID 1 of an ingot node.
//!
//! One static binary plays both stages. In the initramfs (`/etc/initrd-release` exists) it is stage 1:
//! mount the API file systems, load the listed modules, find the disk systemd-boot started from, mount its
//! root read-only and `switch_root` into it, exec'ing `/sbin/init` (this binary again, still PID 1). There
//! it is stage 2: mount `/run` and `/tmp`, print `ingot: phase=ready`, then run PID 1's event loop
//! ([`event_loop`]: signals, the one reaper, the [`supervisor`] of services) until a shutdown request.
//! Each phase prints `ingot: phase=<name> t=<ms since kernel start>`.
//!
//! PID-1 manners: nothing may panic or exit (the kernel panics when PID 1 dies); every failure goes through
//! [`failure`]: `ingot: error <what>: <cause chain>` on the console, then reboot after
//! `ingot.reboot_delay` seconds, or halt with `ingot.debug`. A panic hook does the same. No NSS, no
//! threads, every descriptor close-on-exec, every syscall in [`sys`] behind the [`sys::Sys`] trait so the
//! logic is unit-tested against a recording fake.

mod block;
mod channels;
mod clock;
mod efi;
mod event;
mod event_loop;
mod failure;
mod images;
mod kmsg;
mod kube;
mod modules;
mod mounts;
mod net;
mod node;
mod options;
mod power_button;
mod stage1;
mod stage2;
mod storage;
mod supervisor;
mod sys;
mod verity;

use std::error::Error;
use std::path::Path;

use ingot_spec::marker;

use crate::options::BootOptions;
use crate::sys::Sys;

/// Prints a non-fatal problem; the message says what happens instead (", ignoring").
pub(crate) fn warn(sys: &dyn Sys, msg: &str) {
    sys.console(&format!("{}warning {msg}", marker::PREFIX));
}

/// Prints the phase marker with the time since the kernel started.
pub(crate) fn phase(sys: &dyn Sys, name: &str) {
    let ms = u64::try_from(sys.boottime().as_millis()).unwrap_or(u64::MAX);
    sys.console(&marker::phase_line(name, ms));
}

fn main() {
    sys::install_panic_hook();
    let sys = sys::Linux::new();
    if !sys::Linux::is_pid1() {
        match std::env::args().nth(1).as_deref() {
            Some(images::APPLET) => std::process::exit(images::applet()),
            Some(kube::KUBELET_APPLET) => std::process::exit(kube::kubelet_applet()),
            Some(kube::JOIN_APPLET) => std::process::exit(kube::join_applet()),
            Some(kube::NODE_READY_APPLET) => std::process::exit(kube::node_ready_applet()),
            _ => {}
        }
        eprintln!("ingot-init is the init process of an ingot node and only runs as PID 1");
        std::process::exit(2);
    }
    supervisor::take_signals(&sys);
    let mut opts = BootOptions::default();
    let err: Box<dyn Error> = if sys.exists(Path::new(stage1::INITRD_RELEASE)) {
        match stage1::run(&sys, &mut opts) {
            Ok(never) => match never {},
            Err(e) => Box::new(e),
        }
    } else {
        match stage2::run(&sys, &mut opts) {
            Ok(never) => match never {},
            Err(e) => Box::new(e),
        }
    };
    failure::after_error(&sys, &opts, err.as_ref());
    failure::halt_forever(&sys)
}
