//! `ingot run` with its default accelerator choice (`--accel auto`): KVM when it is usable and the guest
//! makes progress under it, TCG otherwise, saying why. The rest of the VM tests pin TCG through
//! `INGOT_QEMU_ACCEL`; this one clears it, so the default path runs in CI too.

mod common;

use common::*;

#[test]
fn vm_run_auto_accel_uses_kvm_or_falls_back_to_tcg_and_says_why() {
    let test = "vm_run_auto_accel_uses_kvm_or_falls_back_to_tcg_and_says_why";
    if !ingot_testkit::require_tools(test, &["qemu-system-x86_64"]) {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let image = build_minimal(out.path());
    let o = run(ingot()
        .env_remove(ingot_qemu::ACCEL_ENV)
        .args(["run", "--expect", "ingot: phase=ready", "--timeout", "240"])
        .arg(&image));
    let err = stderr(&o);
    assert!(o.status.success(), "no ready marker under --accel auto:\n{err}");
    let saw = err
        .lines()
        .find(|l| l.starts_with("ingot run: saw"))
        .unwrap_or_else(|| panic!("ingot run says what it saw:\n{err}"));
    match ingot_qemu::kvm_usable() {
        // No KVM at all: TCG from the start, with the reason.
        Err(reason) => {
            assert!(
                err.contains(&format!("ingot-qemu: using TCG (software emulation): {reason}")),
                "{err}"
            );
            assert!(saw.ends_with("(tcg)"), "{saw}");
        }
        // KVM opens: either it works, or the guest showed nothing in the probe window and the run
        // restarted under TCG (as on hosts whose KVM guests hang).
        Ok(()) if saw.ends_with("(kvm)") => {
            assert!(!err.contains("TCG"), "no fallback notice when KVM worked:\n{err}");
        }
        Ok(()) => {
            assert!(saw.ends_with("(tcg)"), "{saw}");
            assert!(
                err.contains("ingot-qemu: restarting under TCG (software emulation): ")
                    && err.contains("under KVM"),
                "the fallback says why:\n{err}"
            );
        }
    }
    for l in err.lines().filter(|l| l.starts_with("ingot-qemu:")) {
        eprintln!("{l}");
    }
    eprintln!("{saw}");
}
