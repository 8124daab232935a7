//! What a test does when the host lacks something it needs.
//!
//! On a developer's machine the test skips: it says why on stderr and returns early, and the skip is
//! appended to the file `INGOT_TEST_SKIP_LOG` names (scripts/test counts those lines per tier, because a
//! skipped test is reported as passed by the test runner). Under CI (`CI=true`) or with
//! `INGOT_TEST_STRICT=1`, a missing prerequisite is a failure that names it instead: a green run must
//! mean the test ran.
//!
//! Use it at the top of a test:
//!
//! ```no_run
//! # fn t() {
//! if !ingot_testkit::require_tools("vm_boots", &["qemu-img"]) {
//!     return;
//! }
//! # }
//! ```

use std::fmt::Display;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Set to `1` to fail instead of skip outside CI.
pub const STRICT_ENV: &str = "INGOT_TEST_STRICT";
/// File that each skip appends one line to: the test's name, a tab, the reason.
pub const SKIP_LOG_ENV: &str = "INGOT_TEST_SKIP_LOG";

/// Whether a missing prerequisite fails the test: under CI (`CI` set to `true` or `1`, as CI services
/// do) or with `INGOT_TEST_STRICT=1`.
pub fn strict() -> bool {
    strict_from(
        std::env::var("CI").ok().as_deref(),
        std::env::var(STRICT_ENV).ok().as_deref(),
    )
}

fn strict_from(ci: Option<&str>, explicit: Option<&str>) -> bool {
    let on = |v: Option<&str>| v.is_some_and(|v| matches!(v.trim(), "1" | "true" | "TRUE" | "True"));
    match explicit.map(str::trim) {
        Some("0") | Some("false") => false,
        _ => on(ci) || on(explicit),
    }
}

/// `test` cannot run because of `why` (what is missing, and how to get it). Under [`strict`] this panics
/// with `why`; otherwise it prints `skipping TEST: WHY`, records the skip and returns, and the caller
/// returns from the test.
#[track_caller]
pub fn skip(test: &str, why: impl Display) {
    if strict() {
        panic!(
            "{test} cannot run: {why}\n(a missing prerequisite fails under CI=true or {STRICT_ENV}=1; \
             `scripts/setup-host test` installs the host tools, `ingot doctor` lists what is missing)"
        );
    }
    announce(test, &why.to_string());
}

/// `test` cannot run because the running kernel lacks what it exercises (`why` completes "the host
/// kernel …"). Unlike [`skip`] this does not fail under CI, since no installation can fix it; it is still
/// printed and recorded, so scripts/test counts and names it, and a VM-tier test that calls it still fails
/// the run. Use it only where a VM test covers the same code in a guest kernel.
pub fn skip_host_kernel(test: &str, why: impl Display) {
    announce(test, &format!("the host kernel {why}"));
}

/// Says on stderr that `test` skips, and records it in the skip log.
fn announce(test: &str, why: &str) {
    eprintln!("skipping {test}: {why}");
    if let Some(log) = std::env::var_os(SKIP_LOG_ENV).filter(|v| !v.is_empty()) {
        record(Path::new(&log), test, why);
    }
}

fn record(log: &Path, test: &str, why: &str) {
    let line = format!("{test}\t{}\n", why.replace(['\n', '\t'], " "));
    // One short append per skip: O_APPEND keeps lines of concurrent test processes whole.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("could not record the skip in {}: {e}", log.display());
    }
}

/// Finds `program` on `PATH`, then in `/usr/sbin` and `/sbin`, as `ingot run` looks for its tools.
pub use ingot_qemu::find_tool as find_program;

/// What is missing of `tools` (programs of `scripts/host-tools`), in the words `ingot doctor` uses: each
/// with its package and install command. `None` when all are installed.
pub fn missing_tools(tools: &[&str]) -> Option<String> {
    describe_missing(tools, |p| find_program(p).is_some())
}

fn describe_missing(tools: &[&str], installed: impl Fn(&str) -> bool) -> Option<String> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|p| !installed(p))
        .map(|p| ingot_spec::host_tools::missing_summary(p))
        .collect();
    (!missing.is_empty()).then(|| missing.join("; "))
}

/// The path of `tool`, or `None` after [`skip`]ping the part of `test` that `check` names: the rest of
/// the test runs, but under CI the missing tool fails it.
#[track_caller]
pub fn tool_for_check(test: &str, check: &str, tool: &str) -> Option<PathBuf> {
    let found = find_program(tool);
    if found.is_none() {
        skip(
            test,
            format!(
                "{check} (the rest of the test ran): {}",
                ingot_spec::host_tools::missing_summary(tool)
            ),
        );
    }
    found
}

/// True when every program of `tools` is installed; otherwise [`skip`]s `test` naming the missing ones.
#[track_caller]
pub fn require_tools(test: &str, tools: &[&str]) -> bool {
    match missing_tools(tools) {
        None => true,
        Some(why) => {
            skip(test, why);
            false
        }
    }
}

/// True when running as root; otherwise [`skip`]s `test` saying what root is needed for.
#[track_caller]
pub fn require_root(test: &str, for_what: &str) -> bool {
    let root = rustix::process::geteuid().is_root();
    if !root {
        skip(test, format!("{for_what} needs root"));
    }
    root
}

/// Why a test that serves time with chronyd cannot run without it. The chrony package is not installed for
/// the tests: its daemon would set this machine's clock.
pub const CHRONYD_MISSING: &str =
    "chronyd not found (scripts/test unpacks Debian's chrony binary into its cache and puts it on PATH)";

/// True when loop devices can be used here: root, `losetup` and a free loop device; otherwise [`skip`]s
/// `test` naming what is missing.
#[track_caller]
pub fn require_loop_devices(test: &str) -> bool {
    if !require_root(test, "a loop device") || !require_tools(test, &["losetup"]) {
        return false;
    }
    let found = std::process::Command::new("losetup").arg("--find").output();
    let why = match found {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    skip(test, format!("no free loop device (losetup --find: {why})"));
    false
}

/// True when `result` is `Ok`; otherwise [`skip`]s `test` with the error. For prerequisites found by
/// other means (a kernel to boot, a control plane's binaries).
#[track_caller]
pub fn require<T, E: Display>(test: &str, result: Result<T, E>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(why) => {
            skip(test, why);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_true_or_the_explicit_variable_makes_skips_fail() {
        assert!(strict_from(Some("true"), None));
        assert!(strict_from(Some("1"), None));
        assert!(strict_from(None, Some("1")));
        assert!(!strict_from(None, None));
        assert!(!strict_from(Some("false"), None));
        assert!(!strict_from(Some(""), None));
        // The explicit variable can turn strictness off on a CI machine.
        assert!(!strict_from(Some("true"), Some("0")));
    }

    #[test]
    fn a_missing_program_is_named_with_its_package() {
        assert_eq!(missing_tools(&["sh"]), None);
        let why = describe_missing(&["qemu-img", "sh", "mcopy"], |p| p == "sh").unwrap();
        assert_eq!(
            why,
            format!(
                "{}; {}",
                ingot_spec::host_tools::missing_summary("qemu-img"),
                ingot_spec::host_tools::missing_summary("mcopy")
            )
        );
        assert!(
            why.contains("qemu-img is not installed") && why.contains("apt-get install qemu-utils"),
            "{why}"
        );
    }

    #[test]
    fn skips_are_recorded_one_line_each() {
        let dir = std::env::temp_dir().join(format!("ingot-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        record(&log, "t1", "qemu-img not installed");
        record(&log, "t2", "two\nlines");
        let text = std::fs::read_to_string(&log).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text, "t1\tqemu-img not installed\nt2\ttwo lines\n");
    }
}
