//! Resolution against a signed archive built in the test, and against Debian's real archive.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgp::composed::{
    ArmorOptions, CleartextSignedMessage, KeyType, SecretKeyParamsBuilder, SignedPublicKey, SignedSecretKey,
    SubkeyParamsBuilder,
};
use pgp::ser::Serialize;
use pgp::types::Password;

use super::*;
use crate::fetch::{Cache, FetchError, Fetcher, Sha256};

const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";
const H3: &str = "3333333333333333333333333333333333333333333333333333333333333333";
const H4: &str = "4444444444444444444444444444444444444444444444444444444444444444";

fn packages() -> String {
    format!(
        "Package: linux-image-cloud-amd64\nVersion: 6.1.153-1\nDepends: linux-image-6.1.0-40-cloud-amd64 (= 6.1.153-1)\n\
         Filename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.153-1_amd64.deb\nSize: 1\nSHA256: {H1}\n\n\
         Package: linux-image-cloud-amd64\nVersion: 6.1.158-1\nDepends: linux-image-6.1.0-41-cloud-amd64 (= 6.1.158-1)\n\
         Filename: pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.158-1_amd64.deb\nSize: 2\nSHA256: {H2}\n\n\
         Package: linux-image-6.1.0-41-cloud-amd64\nVersion: 6.1.158-1\nDepends: kmod, linux-base (>= 4.3~)\n\
         Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-41-cloud-amd64_6.1.158-1_amd64.deb\nSize: 3\nSHA256: {H3}\n\n\
         Package: systemd-boot-efi\nVersion: 252.39-1~deb12u1\nFilename: pool/main/s/systemd/systemd-boot-efi_252.39-1~deb12u1_amd64.deb\n\
         Size: 4\nSHA256: {H4}\n\n\
         Package: runc\nVersion: 1.1.5-1\nDepends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0)\n\
         Filename: pool/main/r/runc/runc_1.1.5-1_amd64.deb\nSize: 5\nSHA256: {H1}\n\n\
         Package: libseccomp2\nVersion: 2.5.4-1\nDepends: libc6 (>= 2.4)\n\
         Filename: pool/main/libs/libseccomp/libseccomp2_2.5.4-1_amd64.deb\nSize: 6\nSHA256: {H2}\n\n\
         Package: libc6\nVersion: 2.36-9\nFilename: pool/main/g/glibc/libc6_2.36-9_amd64.deb\nSize: 7\nSHA256: {H3}\n\n\
         Package: dash\nVersion: 0.5.12-2\nEssential: yes\nPre-Depends: libc6 (>= 2.34)\n\
         Filename: pool/main/d/dash/dash_0.5.12-2_amd64.deb\nSize: 8\nSHA256: {H4}\n"
    )
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

/// A key whose primary signs (`subkey == false`) or which signs with a subkey, like Debian's.
fn key(subkey: bool) -> SignedSecretKey {
    let mut params = SecretKeyParamsBuilder::default();
    params
        .key_type(KeyType::Ed25519Legacy)
        .can_certify(true)
        .can_sign(!subkey)
        .primary_user_id("Test Archive <archive@example.invalid>".into());
    if subkey {
        let mut sub = SubkeyParamsBuilder::default();
        sub.key_type(KeyType::Ed25519Legacy).can_sign(true);
        params.subkeys(vec![sub.build().unwrap()]);
    }
    params.build().unwrap().generate(rand::thread_rng()).unwrap()
}

fn write_keyring(dir: &Path, name: &str, key: &SignedSecretKey) -> PathBuf {
    let path = dir.join(name);
    let public = SignedPublicKey::from(key.clone());
    std::fs::write(&path, public.to_bytes().unwrap()).unwrap();
    path
}

fn sign(text: &str, key: &SignedSecretKey) -> String {
    let msg = match key.secret_subkeys.first() {
        Some(sub) => CleartextSignedMessage::sign(rand::thread_rng(), text, &sub.key, &Password::empty()),
        None => CleartextSignedMessage::sign(rand::thread_rng(), text, &key.primary_key, &Password::empty()),
    }
    .unwrap();
    msg.to_armored_string(ArmorOptions::default()).unwrap()
}

struct TestArchive {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    spec: ArchiveSpec,
    fetcher: Fetcher,
    key: SignedSecretKey,
}

impl TestArchive {
    fn new(subkey: bool, by_hash: bool, codename: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("archive");
        let bin = root.join("dists/test/main/binary-amd64");
        std::fs::create_dir_all(bin.join("by-hash/SHA256")).unwrap();
        let plain = packages();
        let compressed = xz(plain.as_bytes());
        std::fs::write(bin.join("Packages.xz"), &compressed).unwrap();
        let xz_sha = Sha256::digest(&compressed);
        if by_hash {
            std::fs::write(bin.join(format!("by-hash/SHA256/{xz_sha}")), &compressed).unwrap();
        }
        let release = format!(
            "Origin: Test\nSuite: stable\nCodename: {codename}\nDate: Sat, 01 Nov 2025 00:00:00 UTC\n\
             Acquire-By-Hash: {}\nArchitectures: amd64\nComponents: main\nSHA256:\n \
             {} {:>8} main/binary-amd64/Packages\n {xz_sha} {:>8} main/binary-amd64/Packages.xz\n",
            if by_hash { "yes" } else { "no" },
            Sha256::digest(plain.as_bytes()),
            plain.len(),
            compressed.len(),
        );
        let key = key(subkey);
        std::fs::write(root.join("dists/test/InRelease"), sign(&release, &key)).unwrap();
        let keyring = write_keyring(tmp.path(), "archive.pgp", &key);
        let spec = ArchiveSpec {
            url: format!("file://{}/", root.display()),
            suite: "test".to_owned(),
            components: vec!["main".to_owned()],
            arch: "amd64".to_owned(),
            keyring,
        };
        let fetcher = Fetcher::new(Cache::at(tmp.path().join("cache"))).retry_delays(vec![]);
        Self {
            _tmp: tmp,
            root,
            spec,
            fetcher,
            key,
        }
    }

    fn inrelease(&self) -> PathBuf {
        self.root.join("dists/test/InRelease")
    }
}

fn requests() -> Vec<PackageRequest> {
    vec![
        PackageRequest {
            component: "kernel".to_owned(),
            package: "linux-image-cloud-amd64".to_owned(),
            follow_depends_prefix: Some("linux-image-".to_owned()),
            depends: false,
            exclude: vec![],
        },
        PackageRequest {
            component: "systemd-boot".to_owned(),
            package: "systemd-boot-efi".to_owned(),
            follow_depends_prefix: None,
            depends: false,
            exclude: vec![],
        },
    ]
}

#[test]
fn resolves_newest_follows_metapackage_and_caches_indices() {
    for (subkey, by_hash) in [(false, true), (true, false)] {
        let archive = TestArchive::new(subkey, by_hash, "test");
        let resolved = resolve(&archive.fetcher, &archive.spec, &requests()).unwrap();
        let base = format!("file://{}", archive.root.display());
        assert_eq!(
            resolved[0],
            Resolved {
                component: "kernel".to_owned(),
                package: "linux-image-6.1.0-41-cloud-amd64".to_owned(),
                requested: Some("linux-image-cloud-amd64".to_owned()),
                pulled_by: None,
                version: "6.1.158-1".to_owned(),
                url: format!(
                    "{base}/pool/main/l/linux-signed-amd64/linux-image-6.1.0-41-cloud-amd64_6.1.158-1_amd64.deb"
                ),
                sha256: H3.parse().unwrap(),
                size: 3,
            }
        );
        assert_eq!(resolved[1].package, "systemd-boot-efi");
        assert_eq!(resolved[1].requested, None);
        assert_eq!(resolved[1].version, "252.39-1~deb12u1");
        assert_eq!(resolved[1].pinned().component, "systemd-boot");

        // The decompressed index is cached under its InRelease hash: the compressed one is not needed.
        std::fs::remove_dir_all(archive.root.join("dists/test/main")).unwrap();
        assert_eq!(
            resolve(&archive.fetcher, &archive.spec, &requests()).unwrap(),
            resolved
        );
    }
}

#[test]
fn depends_pins_the_closure_as_pulled_packages() {
    let archive = TestArchive::new(false, true, "test");
    let mut reqs = requests();
    reqs.push(PackageRequest {
        component: "runtime".to_owned(),
        package: "runc".to_owned(),
        follow_depends_prefix: None,
        depends: true,
        exclude: vec![],
    });
    let resolved = resolve(&archive.fetcher, &archive.spec, &reqs).unwrap();
    let base = format!("file://{}", archive.root.display());
    let pulled: Vec<(&str, &str, Option<&str>, &str)> = resolved
        .iter()
        .map(|r| {
            (
                r.component.as_str(),
                r.package.as_str(),
                r.pulled_by.as_deref(),
                r.url.as_str(),
            )
        })
        .skip(3)
        .collect();
    assert_eq!(
        pulled,
        [
            (
                "libc6",
                "libc6",
                Some("runtime"),
                format!("{base}/pool/main/g/glibc/libc6_2.36-9_amd64.deb").as_str()
            ),
            (
                "libseccomp2",
                "libseccomp2",
                Some("runtime"),
                format!("{base}/pool/main/libs/libseccomp/libseccomp2_2.5.4-1_amd64.deb").as_str()
            ),
        ]
    );
    assert_eq!(resolved[3].sha256, H3.parse().unwrap());
    assert_eq!(resolved[2].pulled_by, None);

    reqs[2].exclude = vec!["libseccomp3".to_owned()];
    let err = resolve(&archive.fetcher, &archive.spec, &reqs).unwrap_err();
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert_eq!(
        chain,
        "in test: component runtime: exclude \"libseccomp3\" is not a dependency in its closure (remove it from `exclude`)"
    );
}

#[test]
fn one_changed_byte_in_inrelease_is_rejected() {
    let archive = TestArchive::new(true, true, "test");
    let original = std::fs::read_to_string(archive.inrelease()).unwrap();
    let tampered = original.replacen("Origin: Test", "Origin: Tesu", 1);
    assert_ne!(tampered, original);
    std::fs::write(archive.inrelease(), tampered).unwrap();
    let err = resolve(&archive.fetcher, &archive.spec, &requests()).unwrap_err();
    assert!(
        matches!(err, ResolveError::InRelease(InReleaseError::BadSignature { .. })),
        "{err:?}"
    );
}

#[test]
fn signature_by_a_key_outside_the_keyring_is_rejected() {
    let archive = TestArchive::new(false, true, "test");
    let stranger = key(false);
    let dir = archive.spec.keyring.parent().unwrap();
    let spec = ArchiveSpec {
        keyring: write_keyring(dir, "stranger.pgp", &stranger),
        ..archive.spec.clone()
    };
    let err = resolve(&archive.fetcher, &spec, &requests()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("stranger.pgp") && msg.contains("no valid signature"),
        "{msg}"
    );
    use pgp::types::KeyDetails;
    let fp = format!("{:X}", archive.key.fingerprint());
    assert!(msg.contains(&fp), "names the signer {fp}: {msg}");
}

#[test]
fn unsigned_or_wrong_suite_inrelease_is_rejected() {
    let archive = TestArchive::new(false, true, "test");
    std::fs::write(archive.inrelease(), "Origin: Test\nCodename: test\n").unwrap();
    let err = resolve(&archive.fetcher, &archive.spec, &requests()).unwrap_err();
    assert!(
        matches!(err, ResolveError::InRelease(InReleaseError::NotSigned { .. })),
        "{err:?}"
    );

    let archive = TestArchive::new(false, true, "other");
    let err = resolve(&archive.fetcher, &archive.spec, &requests()).unwrap_err();
    assert!(
        matches!(err, ResolveError::InRelease(InReleaseError::WrongSuite { .. })),
        "{err:?}"
    );
}

#[test]
fn packages_hash_mismatch_is_rejected() {
    let archive = TestArchive::new(false, false, "test");
    let path = archive.root.join("dists/test/main/binary-amd64/Packages.xz");
    let evil = packages().replace(H3, H1);
    std::fs::write(&path, xz(evil.as_bytes())).unwrap();
    let err = resolve(&archive.fetcher, &archive.spec, &requests()).unwrap_err();
    match &err {
        ResolveError::Fetch { source, .. } => match &**source {
            FetchError::Mismatch { url, .. } => {
                assert!(url.ends_with("main/binary-amd64/Packages.xz"), "{url}")
            }
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
    // Nothing from the bad index was cached.
    let blobs = std::fs::read_dir(archive.fetcher.cache().root().join("blobs/sha256")).unwrap();
    assert_eq!(blobs.count(), 0);
}

#[test]
fn unknown_package_is_named() {
    let archive = TestArchive::new(false, true, "test");
    let req = [PackageRequest {
        component: "shell".to_owned(),
        package: "no-such-package".to_owned(),
        follow_depends_prefix: None,
        depends: false,
        exclude: vec![],
    }];
    let err = resolve(&archive.fetcher, &archive.spec, &req).unwrap_err();
    assert_eq!(
        err.to_string(),
        "component shell: package no-such-package is not in test (main) for amd64"
    );
}

#[test]
fn missing_keyring_is_named() {
    let archive = TestArchive::new(false, true, "test");
    let spec = ArchiveSpec {
        keyring: PathBuf::from("/nonexistent/keyring.pgp"),
        ..archive.spec.clone()
    };
    let err = resolve(&archive.fetcher, &spec, &requests()).unwrap_err();
    assert_eq!(err.to_string(), "cannot read keyring /nonexistent/keyring.pgp");
}

fn repo_keyring(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../keyrings")
        .join(name)
}

#[test]
fn shipped_keyrings_parse() {
    for name in [
        "debian-archive-bookworm.pgp",
        "debian-archive-trixie.pgp",
        "debian-security-bookworm.pgp",
        "debian-security-trixie.pgp",
    ] {
        let keyring = Keyring::load(&repo_keyring(name)).unwrap();
        assert!(keyring.path().ends_with(name));
    }
}

/// Needs deb.debian.org; set `INGOT_OFFLINE_TESTS=1` to skip.
#[test]
fn real_archive_bookworm() {
    if std::env::var_os("INGOT_OFFLINE_TESTS").is_some_and(|v| v == "1") {
        ingot_testkit::skip(
            "real_archive_bookworm",
            "INGOT_OFFLINE_TESTS=1 opts out of the tests that need deb.debian.org (unset it to run them)",
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::new(Cache::at(tmp.path())).retry_delays(vec![Duration::from_secs(2)]);
    let spec = ArchiveSpec {
        url: "https://deb.debian.org/debian".to_owned(),
        suite: "bookworm".to_owned(),
        components: vec!["main".to_owned()],
        arch: "amd64".to_owned(),
        keyring: repo_keyring("debian-archive-bookworm.pgp"),
    };
    let started = Instant::now();
    let resolved = resolve(&fetcher, &spec, &requests()).unwrap();
    let cold = started.elapsed();
    let started = Instant::now();
    let again = resolve(&fetcher, &spec, &requests()).unwrap();
    let warm = started.elapsed();
    eprintln!("bookworm: cold {cold:?}, warm {warm:?}: {resolved:#?}");
    assert_eq!(again, resolved);

    let kernel = &resolved[0];
    assert!(
        kernel.package.starts_with("linux-image-6.1.0-") && kernel.package.ends_with("-cloud-amd64"),
        "{kernel:?}"
    );
    assert_eq!(kernel.requested.as_deref(), Some("linux-image-cloud-amd64"));
    assert!(
        kernel
            .url
            .starts_with("https://deb.debian.org/debian/pool/main/l/linux-signed-amd64/")
    );
    let boot = &resolved[1];
    assert!(
        boot.url
            .starts_with("https://deb.debian.org/debian/pool/main/s/systemd/systemd-boot-efi_")
    );

    // The pin is good: download it and find systemd-boot inside.
    let dir = fetcher.unpacked(&boot.pinned()).unwrap();
    assert!(dir.join("usr/lib/systemd/boot/efi/systemd-bootx64.efi").is_file());
    assert!(dir.join("usr/lib/systemd/boot/efi/linuxx64.efi.stub").is_file());

    // The real InRelease with one byte changed fails verification.
    let url = "https://deb.debian.org/debian/dists/bookworm/InRelease";
    let mut bytes = fetcher.fetch_unpinned("InRelease", url).unwrap();
    let keyring = Keyring::load(&spec.keyring).unwrap();
    assert!(inrelease::verify(url, &bytes, &keyring).is_ok());
    let at = bytes.windows(9).position(|w| w == b"Codename:").unwrap() + 11;
    bytes[at] ^= 0x01;
    let err = inrelease::verify(url, &bytes, &keyring).unwrap_err();
    assert!(matches!(err, InReleaseError::BadSignature { .. }), "{err:?}");
}

#[test]
fn an_apt_base_is_the_essential_set_the_packages_asked_for_and_their_dependencies() {
    let archive = TestArchive::new(false, true, "test");
    let base = resolve_base(&archive.fetcher, &archive.spec, &[], &["runc".to_owned()]).unwrap();
    let got: Vec<(&str, Option<&str>)> = base
        .iter()
        .map(|r| (r.package.as_str(), r.pulled_by.as_deref()))
        .collect();
    assert_eq!(
        got,
        [
            ("dash", None),
            ("libc6", Some("base")),
            ("libseccomp2", Some("base")),
            ("runc", None)
        ],
        "sorted by name; dependencies marked"
    );
    let runc = base.iter().find(|r| r.package == "runc").unwrap();
    assert_eq!(runc.version, "1.1.5-1");
    assert!(
        runc.url.ends_with("/pool/main/r/runc/runc_1.1.5-1_amd64.deb"),
        "{}",
        runc.url
    );

    let err = resolve_base(
        &archive.fetcher,
        &archive.spec,
        &[],
        &["runc".to_owned(), "runc-nightly".to_owned()],
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("base.apt.packages") && msg.contains("runc-nightly") && msg.contains("test"),
        "{msg}"
    );
}

#[test]
fn the_shipped_ubuntu_keyring_holds_the_key_that_signs_noble() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../keyrings/ubuntu-archive.pgp");
    let keyring = Keyring::load(&path).unwrap();
    let fingerprints = keyring.fingerprints();
    assert!(
        fingerprints.contains(&"F6ECB3762474EDA9D21B7022871920D1991BC93C".to_owned()),
        "Ubuntu Archive Automatic Signing Key (2018): {fingerprints:?}"
    );
}
