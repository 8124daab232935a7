//! Two builders that differ in everything a second machine would: umask, time zone, locale, a stray
//! `SOURCE_DATE_EPOCH`, home, temporary and output directories (with a space in the path), and a cache
//! unpacked anew under the other umask. The image, manifest and block map must not change by a byte.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::*;

/// `ingot build --rebuild` of `minimal` into `out` under `umask`, with `env` added.
fn build_in(out: &Path, umask: &str, env: &[(&str, &OsStr)]) {
    let mut cmd = Command::new("sh");
    // The umask can only be set by the parent of the process it applies to.
    cmd.arg("-c")
        .arg(format!("umask {umask} && exec \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_ingot"))
        .args(["build", "--quiet", "--rebuild", "--profile", "minimal", "--out"])
        .arg(out)
        .current_dir(repo_root());
    cmd.envs(env.iter().copied());
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "build under umask {umask}: {}", stderr(&o));
}

/// A cache that shares the downloads of `from` (hard links, or copies across file systems) and nothing
/// else, so every input is unpacked again.
fn cache_with_downloads_of(from: &Path, to: &Path) {
    let blobs = from.join("blobs/sha256");
    let dest = to.join("blobs/sha256");
    std::fs::create_dir_all(&dest).unwrap();
    for e in std::fs::read_dir(&blobs).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let target = dest.join(e.file_name());
        if std::fs::hard_link(e.path(), &target).is_err() {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

#[test]
fn builds_do_not_depend_on_the_builders_umask_time_zone_locale_or_paths() {
    let work = tempfile::tempdir().unwrap();
    let out_a = work.path().join("a");
    build_in(&out_a, "022", &[("TZ", "UTC".as_ref()), ("LC_ALL", "C".as_ref())]);

    let cache = ingot::fetch::Cache::from_env().unwrap();
    let cache_b = work.path().join("cache b");
    cache_with_downloads_of(cache.root(), &cache_b);
    let (home_b, tmp_b) = (work.path().join("home b"), work.path().join("tmp b"));
    std::fs::create_dir(&home_b).unwrap();
    std::fs::create_dir(&tmp_b).unwrap();
    let out_b = work.path().join("out b/nested");
    build_in(
        &out_b,
        "077",
        &[
            ("INGOT_CACHE_DIR", cache_b.as_os_str()),
            ("HOME", home_b.as_os_str()),
            ("TMPDIR", tmp_b.as_os_str()),
            // A POSIX zone string: no tzdata needed, five hours west of UTC.
            ("TZ", "EST+5".as_ref()),
            ("LC_ALL", "C.UTF-8".as_ref()),
            ("LANG", "de_DE.UTF-8".as_ref()),
            ("SOURCE_DATE_EPOCH", "1".as_ref()),
        ],
    );

    for name in ["minimal.raw", "minimal.manifest.json", "minimal.bmap"] {
        let (a, b) = (
            std::fs::read(out_a.join(name)).unwrap(),
            std::fs::read(out_b.join(name)).unwrap(),
        );
        assert!(a == b, "{name} differs between the two builders");
    }

    // The outputs follow the user's umask: 077 leaves the output directory to its owner.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out_b), 0o700, "the output directory takes the user's umask");
    assert_eq!(mode(&out_a), 0o755);
}
