//! Tests that need to be PID 1 (orphans are re-parented to it) run again as PID 1 of a new pid
//! namespace: [`as_pid1`] re-executes the test binary under `unshare --pid --fork --mount-proc` with only
//! that test selected. `unshare --mount-proc` also gives the test a private mount namespace, so what it
//! mounts stays inside.
//!
//! There, before `main` and so before the test harness starts any thread, the process is made to look
//! like PID 1 of a node: the signals PID 1 blocks are blocked for the whole process (a `SIGCHLD` then
//! waits for the test's signal descriptor instead of being discarded by another thread), and every
//! descriptor the test runner passed down beyond stdin, stdout and stderr is made close-on-exec.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::Sys as _;

/// Set in the environment of the re-executed test binary.
pub const ENV: &str = "INGOT_TEST_AS_PID1";

extern "C" fn block_signals_before_main() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    let _ = super::Linux.block_signals();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return;
    };
    for entry in dir.flatten() {
        let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if fd > 2 {
            // SAFETY: `fd` is open in this process right now (listed by /proc) and no other thread
            // exists yet that could close it; we only set its close-on-exec flag. The listing's own
            // descriptor is closed already or harmless to mark.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            if let Ok(flags) = rustix::io::fcntl_getfd(fd) {
                let _ = rustix::io::fcntl_setfd(fd, flags | rustix::io::FdFlags::CLOEXEC);
            }
        }
    }
}

// SAFETY: `.init_array` entries are called once by the C runtime before `main` with no other thread
// running; the function only reads the environment and sets the signal mask.
#[used]
#[unsafe(link_section = ".init_array")]
static BLOCK_SIGNALS_BEFORE_MAIN: extern "C" fn() = block_signals_before_main;

/// Runs test `path` (its full name, `module::tests::name`) as PID 1 of a new pid namespace and asserts it
/// passed there; returns false, and the caller returns too. Inside that namespace it returns true: the
/// caller runs the test body. Without root or without `unshare`, [`ingot_testkit::skip`]s the test (a
/// failure under CI) and returns false.
pub fn as_pid1(path: &str) -> bool {
    if std::env::var_os(ENV).is_some() {
        assert!(
            rustix::process::getpid().is_init(),
            "{ENV} is set but this process is not PID 1"
        );
        return true;
    }
    // The test function's own name, for the skip.
    let test = path.rsplit("::").next().unwrap_or(path);
    if !ingot_testkit::require_root(test, "creating a pid namespace") {
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let out = match std::process::Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc"])
        .arg(&exe)
        .args([path, "--exact", "--nocapture", "--test-threads=1"])
        .env(ENV, "1")
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            ingot_testkit::skip(test, ingot_spec::host_tools::missing_summary("unshare"));
            return false;
        }
        Err(e) => panic!("running unshare: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{path} failed as PID 1 ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "{path} did not run as PID 1:\n{stdout}\n{stderr}"
    );
    print!("{stdout}");
    false
}
