//! Prints the rejection table of the hostile-image corpus (`ingot::hostile`) against a freshly built small
//! signed image (tests/profiles/small-signed.toml).
//!
//!     cargo run --release -p ingot --example hostile_images [SEED]
//!
//! SEED is decimal or 0x-hex; the default is the one the test uses.

use std::process::ExitCode;

fn main() -> ExitCode {
    let seed = match std::env::args().nth(1) {
        None => 0x1960_0d5e_ed00_0001,
        Some(s) => match s
            .strip_prefix("0x")
            .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
        {
            Ok(seed) => seed,
            Err(e) => {
                eprintln!("hostile_images: seed {s:?}: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let profile =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/profiles/small-signed.toml");
    let run = || -> anyhow::Result<ingot::hostile::Report> {
        let dir = tempfile::tempdir()?;
        let started = std::time::Instant::now();
        let base = ingot::hostile::Base::build(&profile, dir.path())?;
        eprintln!(
            "built {} in {:.1} s",
            base.image.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(ingot::hostile::run(&base, seed)?)
    };
    match run() {
        Ok(report) => {
            print!("{}", report.table());
            if report.unexpected().is_empty() && report.control_after == ingot::hostile::Outcome::Accepted {
                ExitCode::SUCCESS
            } else {
                for r in report.unexpected() {
                    eprintln!(
                        "{}: {}: expected {:?}, got {:?}",
                        r.variant.class, r.variant.detail, r.variant.expect, r.outcome
                    );
                }
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("hostile_images: {e:#}");
            ExitCode::FAILURE
        }
    }
}
