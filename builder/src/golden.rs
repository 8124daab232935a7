//! Golden-file comparison for format tests. `INGOT_UPDATE_GOLDEN=1 cargo test` rewrites the files; review the
//! diff before committing, since a changed golden file is a changed on-disk format.

use std::path::PathBuf;

/// Compares `actual` with `builder/tests/data/<name>`, or rewrites it when `INGOT_UPDATE_GOLDEN=1`.
pub fn check(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    if std::env::var_os("INGOT_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with INGOT_UPDATE_GOLDEN=1 to create it)",
            path.display()
        )
    });
    assert!(
        expected == actual,
        "{} differs from the output; if the format change is deliberate, rerun with INGOT_UPDATE_GOLDEN=1\n--- expected\n{expected}\n--- actual\n{actual}",
        path.display()
    );
}
