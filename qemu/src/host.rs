//! What the host provides: the QEMU binary, OVMF, and whether KVM can be used.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::config::{Accel, OvmfPaths};
use crate::error::QemuError;

/// Name of the QEMU binary looked up on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// Environment variable that overrides [`VmConfig::accel`](crate::VmConfig::accel).
pub const ACCEL_ENV: &str = "INGOT_QEMU_ACCEL";
/// Environment variables that point at an OVMF code image and its vars template.
pub const OVMF_CODE_ENV: &str = "INGOT_OVMF_CODE";
pub const OVMF_VARS_ENV: &str = "INGOT_OVMF_VARS";

/// Debian's OVMF files, best first: the 4M pair, then the 2M pair.
pub const DEBIAN_OVMF: [(&str, &str); 2] = [
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
];

/// Debian's OVMF built with Secure Boot and SMM (it needs `-machine smm=on` and secure flash), and the
/// empty variable store of the same 4 MiB layout that keys are enrolled into.
pub const OVMF_SECURE_BOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
pub const OVMF_SECURE_BOOT_VARS_TEMPLATE: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Name of the disk image tool (Debian package `qemu-utils`).
pub const QEMU_IMG_BINARY: &str = "qemu-img";

/// Finds `qemu-system-x86_64` on `PATH`. Tests call this to decide whether to skip.
pub fn find_qemu() -> Result<PathBuf, QemuError> {
    find_tool(QEMU_BINARY).ok_or(QemuError::QemuNotFound)
}

/// Finds an executable on `PATH`, then in `/usr/sbin` and `/sbin` (where `ip` lives, and which are not on
/// every user's `PATH`).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    find_in_path(&path, name).or_else(|| find_in_path(OsStr::new("/usr/sbin:/sbin"), name))
}

fn find_in_path(path: &OsStr, name: &str) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Finds OVMF: `INGOT_OVMF_CODE` + `INGOT_OVMF_VARS` when set, else Debian's 4M pair, else the 2M pair.
pub fn find_ovmf() -> Result<OvmfPaths, QemuError> {
    let code = std::env::var_os(OVMF_CODE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let vars = std::env::var_os(OVMF_VARS_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let defaults: Vec<OvmfPaths> = DEBIAN_OVMF
        .iter()
        .map(|(c, v)| OvmfPaths {
            code: c.into(),
            vars: v.into(),
        })
        .collect();
    pick_ovmf(code, vars, &defaults)
}

fn pick_ovmf(
    code: Option<PathBuf>,
    vars: Option<PathBuf>,
    defaults: &[OvmfPaths],
) -> Result<OvmfPaths, QemuError> {
    let candidates = match (code, vars) {
        (Some(code), Some(vars)) => vec![OvmfPaths { code, vars }],
        (None, None) => defaults.to_vec(),
        _ => return Err(QemuError::OvmfEnvIncomplete),
    };
    for c in &candidates {
        if c.code.is_file() && c.vars.is_file() {
            return Ok(c.clone());
        }
    }
    let tried = candidates
        .iter()
        .map(|c| format!("{} + {}", c.code.display(), c.vars.display()))
        .collect::<Vec<_>>();
    Err(QemuError::OvmfNotFound {
        tried: tried.join(", "),
    })
}

/// Checks that `/dev/kvm` can be opened for reading and writing; the error says why not.
pub fn kvm_usable() -> Result<(), String> {
    let dev = Path::new("/dev/kvm");
    if !dev.exists() {
        return Err("/dev/kvm does not exist (no hardware virtualisation here)".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened ({e}); add yourself to the kvm group"))
}

/// The accelerator after applying `INGOT_QEMU_ACCEL`.
pub(crate) fn requested_accel(configured: Accel, env: Option<&str>) -> Result<Accel, QemuError> {
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(configured),
        Some(v) => Accel::parse(v).ok_or_else(|| QemuError::BadAccelEnv { value: v.to_string() }),
    }
}

/// How to start: which accelerator first, and whether to fall back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum AccelPlan {
    /// TCG only; `reason` says why when KVM was not even tried under `Auto`.
    Tcg { reason: Option<String> },
    /// KVM, failing if the guest hangs.
    Kvm,
    /// KVM, retried under TCG if the guest shows no progress within the probe window.
    KvmThenTcg,
}

pub(crate) fn plan_accel(requested: Accel, kvm: Result<(), String>) -> Result<AccelPlan, QemuError> {
    match (requested, kvm) {
        (Accel::Tcg, _) => Ok(AccelPlan::Tcg { reason: None }),
        (Accel::Kvm, Ok(())) => Ok(AccelPlan::Kvm),
        (Accel::Kvm, Err(reason)) => Err(QemuError::KvmUnavailable { reason }),
        (Accel::Auto, Ok(())) => Ok(AccelPlan::KvmThenTcg),
        (Accel::Auto, Err(reason)) => Ok(AccelPlan::Tcg { reason: Some(reason) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_configured_accel() {
        assert_eq!(requested_accel(Accel::Kvm, None).unwrap(), Accel::Kvm);
        assert_eq!(requested_accel(Accel::Kvm, Some("")).unwrap(), Accel::Kvm);
        assert_eq!(requested_accel(Accel::Auto, Some("TCG")).unwrap(), Accel::Tcg);
        assert_eq!(requested_accel(Accel::Tcg, Some(" kvm ")).unwrap(), Accel::Kvm);
        let err = requested_accel(Accel::Auto, Some("hvf")).unwrap_err();
        assert!(err.to_string().contains("auto, kvm, tcg"), "{err}");
    }

    #[test]
    fn accel_plans() {
        let no = || Err("/dev/kvm does not exist".to_string());
        assert_eq!(
            plan_accel(Accel::Tcg, Ok(())).unwrap(),
            AccelPlan::Tcg { reason: None }
        );
        assert_eq!(plan_accel(Accel::Auto, Ok(())).unwrap(), AccelPlan::KvmThenTcg);
        assert_eq!(plan_accel(Accel::Kvm, Ok(())).unwrap(), AccelPlan::Kvm);
        assert_eq!(
            plan_accel(Accel::Auto, no()).unwrap(),
            AccelPlan::Tcg {
                reason: Some("/dev/kvm does not exist".into())
            }
        );
        let err = plan_accel(Accel::Kvm, no()).unwrap_err();
        assert!(err.to_string().contains("INGOT_QEMU_ACCEL=tcg"), "{err}");
    }

    #[test]
    fn ovmf_prefers_first_complete_pair() {
        let dir = tempfile::tempdir().unwrap();
        let p = |n: &str| dir.path().join(n);
        for n in ["code2", "vars2", "code4"] {
            std::fs::write(p(n), b"fw").unwrap();
        }
        let defaults = [
            OvmfPaths {
                code: p("code4"),
                vars: p("vars4"),
            }, // vars missing
            OvmfPaths {
                code: p("code2"),
                vars: p("vars2"),
            },
        ];
        assert_eq!(pick_ovmf(None, None, &defaults).unwrap(), defaults[1]);

        let over = pick_ovmf(Some(p("code4")), Some(p("vars2")), &defaults).unwrap();
        assert_eq!(
            over,
            OvmfPaths {
                code: p("code4"),
                vars: p("vars2")
            }
        );

        assert!(matches!(
            pick_ovmf(Some(p("code4")), None, &defaults),
            Err(QemuError::OvmfEnvIncomplete)
        ));
        let err = pick_ovmf(None, None, &defaults[..1]).unwrap_err();
        assert!(err.to_string().contains("apt-get install ovmf"), "{err}");
        assert!(err.to_string().contains("vars4"), "{err}");
    }

    #[test]
    fn path_lookup_needs_an_executable_file() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::write(a.path().join("tool"), b"").unwrap(); // not executable
        let exe = b.path().join("tool");
        std::fs::write(&exe, b"").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::env::join_paths([a.path(), b.path()]).unwrap();
        assert_eq!(find_in_path(&path, "tool"), Some(exe));
        assert_eq!(find_in_path(&path, "other"), None);
    }
}
