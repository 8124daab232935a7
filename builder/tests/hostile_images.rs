//! `ingot verify` against a corpus of hostile variants of one small signed image (`ingot::hostile`): every
//! variant is refused with exactly the kind of error it calls for, none is accepted, nothing panics, the
//! benign variants and the untouched image verify. Prints the rejection table.
//!
//! The seed is fixed so a failure reproduces; `INGOT_HOSTILE_SEED` (decimal or 0x-hex) picks another.

mod common;

use ingot::hostile::{self, Base, Expect, Outcome};

const DEFAULT_SEED: u64 = 0x1960_0d5e_ed00_0001;

fn seed() -> u64 {
    match std::env::var("INGOT_HOSTILE_SEED") {
        Ok(s) => s
            .strip_prefix("0x")
            .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
            .unwrap_or_else(|e| panic!("INGOT_HOSTILE_SEED={s}: {e}")),
        Err(_) => DEFAULT_SEED,
    }
}

#[test]
fn every_hostile_variant_is_refused_with_the_expected_kind() {
    let dir = tempfile::tempdir().unwrap();
    let profile = common::repo_root().join("tests/profiles/small-signed.toml");
    let base = Base::build(&profile, dir.path()).unwrap();
    let seed = seed();
    println!("seed {seed:#x} (INGOT_HOSTILE_SEED)");

    let report = hostile::run(&base, seed).unwrap();
    println!("{}", report.table());

    assert!(
        report.results.len() >= 1000,
        "only {} variants",
        report.results.len()
    );
    let benign = report
        .results
        .iter()
        .filter(|r| r.variant.expect == Expect::Accept)
        .count();
    assert!((3..10).contains(&benign), "{benign} benign variants");
    assert_eq!(report.control_before, Outcome::Accepted);
    assert_eq!(
        report.control_after,
        Outcome::Accepted,
        "the image was not restored"
    );
    assert_eq!(report.panicked(), 0);
    assert_eq!(report.wrongly_accepted(), 0);
    let unexpected: Vec<String> = report
        .unexpected()
        .iter()
        .map(|r| {
            format!(
                "{}: {}: expected {:?}, got {:?}",
                r.variant.class, r.variant.detail, r.variant.expect, r.outcome
            )
        })
        .collect();
    assert!(unexpected.is_empty(), "{}", unexpected.join("\n"));
    // Every kind of refusal the corpus aims at was seen.
    for kind in [
        "signature",
        "manifest",
        "size",
        "layout",
        "partition-hash",
        "partition-tail",
        "outside",
        "rollback",
        "read",
    ] {
        assert!(
            report
                .results
                .iter()
                .any(|r| r.outcome == Outcome::Rejected(kind)),
            "no variant was refused as {kind}"
        );
    }
}
