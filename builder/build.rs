//! Builds `ingot-init` as a static binary and embeds it in `ingot`, so the image builder is one
//! self-contained executable that does not need the source tree at run time.
//!
//! `ingot-init` must be static (it runs in an initramfs without libc), which needs
//! `-C target-feature=+crt-static` with an explicit `--target`: setting that flag for the host build would
//! also apply to proc-macros, which cannot be static. So this script runs a nested `cargo build` for just
//! that crate, in its own target directory next to the outer one.
//!
//! `INGOT_INIT_BIN=/path/to/ingot-init` skips the nested build and embeds that file instead.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    println!("cargo:rerun-if-env-changed=INGOT_INIT_BIN");
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .expect("builder/ lives in the workspace")
        .to_path_buf();
    for p in ["init", "spec", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", workspace.join(p).display());
    }
    let bin = match env::var_os("INGOT_INIT_BIN") {
        Some(p) => PathBuf::from(p),
        None => build_static_init(&workspace),
    };
    println!("cargo:rustc-env=INGOT_INIT_EMBED={}", bin.display());
}

fn build_static_init(workspace: &std::path::Path) -> PathBuf {
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // OUT_DIR is <target>/<profile>/build/<pkg>-<hash>/out; keep the nested build beside <profile>.
    let target_root = out_dir
        .ancestors()
        .nth(4)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let target_dir = target_root.join("ingot-init-static");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .args([
            "build",
            "--release",
            "--package",
            "ingot-init",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir);
    if env::var_os("CARGO_NET_OFFLINE").is_some() {
        cmd.arg("--offline");
    }
    // Nothing of the outer build's configuration may leak into the nested one (clippy's wrapper, coverage
    // flags, a target dir we would deadlock on).
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env(
        "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
        "-C target-feature=+crt-static",
    );
    // PID 1 aborts on panic (its hook logs and reboots first) and ships without symbols: it lives in every
    // initramfs, so its size is boot time.
    cmd.env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    let status = cmd.status().expect("running cargo for ingot-init");
    assert!(
        status.success(),
        "building the static ingot-init failed ({status})"
    );
    target_dir.join(TARGET).join("release").join("ingot-init")
}
