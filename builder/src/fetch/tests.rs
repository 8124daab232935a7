//! Tests of the fetcher against a real (local) HTTP server and real archive files built here.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;

// ---------------------------------------------------------------------------------------------
// A tiny HTTP/1.1 server: one thread, one request per connection, answers from a route table.

#[derive(Clone)]
enum Reply {
    Ok(Vec<u8>),
    Status(u16),
    /// Announces the full length, sends only the first `usize` bytes, then closes.
    Truncated(Vec<u8>, usize),
}

struct Server {
    base: String,
    routes: Arc<Mutex<HashMap<String, Reply>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, Reply>>> = Arc::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (r, h) = (routes.clone(), hits.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (r, h) = (r.clone(), h.clone());
                std::thread::spawn(move || serve(stream, &r, &h));
            }
        });
        Self { base, routes, hits }
    }

    fn route(&self, path: &str, reply: Reply) -> String {
        self.routes.lock().unwrap().insert(path.to_owned(), reply);
        format!("{}{path}", self.base)
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve(stream: TcpStream, routes: &Mutex<HashMap<String, Reply>>, hits: &Mutex<HashMap<String, usize>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    let reply = routes
        .lock()
        .unwrap()
        .get(&path)
        .cloned()
        .unwrap_or(Reply::Status(404));
    let mut out = stream;
    let (status, body, send) = match reply {
        Reply::Ok(body) => {
            let n = body.len();
            (200, body, n)
        }
        Reply::Status(code) => (code, Vec::new(), 0),
        Reply::Truncated(body, n) => (200, body, n),
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(&body[..send]);
    let _ = out.flush();
}

fn fetcher(dir: &Path) -> Fetcher {
    Fetcher::new(Cache::at(dir.join("cache"))).retry_delays(vec![Duration::from_millis(10)])
}

fn pin(component: &str, url: &str, data: &[u8]) -> Pinned {
    Pinned {
        component: component.to_owned(),
        url: url.to_owned(),
        sha256: Sha256::digest(data),
    }
}

/// Every file under the blob directory (including temporaries).
fn blob_dir_entries(cache: &Cache) -> Vec<String> {
    match std::fs::read_dir(cache.root().join("blobs/sha256")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Sha256, mirrors, cache location

#[test]
fn sha256_parses_and_prints_lower_hex() {
    let hex = "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855";
    let sha: Sha256 = hex.parse().unwrap();
    assert_eq!(sha, Sha256::digest(b""));
    assert_eq!(sha.to_string(), hex.to_lowercase());
    assert_eq!("abc".parse::<Sha256>(), Err(Sha256ParseError::Length(3)));
    let bad = format!("{}g", &hex[..63]);
    let err = bad.parse::<Sha256>().unwrap_err();
    assert_eq!(err, Sha256ParseError::Digit('g', 63));
    assert_eq!(err.to_string(), "'g' at position 63 is not a hex digit");
}

#[test]
fn mirror_syntax_and_longest_prefix() {
    let mirrors = Mirror::parse_list(
        " https://deb.debian.org/debian = http://m.local/debian ;; https://deb.debian.org=http://other ",
    )
    .unwrap();
    assert_eq!(mirrors.len(), 2);
    assert_eq!(
        rewrite_url(&mirrors, "https://deb.debian.org/debian/pool/x.deb"),
        "http://m.local/debian/pool/x.deb"
    );
    assert_eq!(
        rewrite_url(&mirrors, "https://deb.debian.org/debian-security/y"),
        "http://other/debian-security/y"
    );
    assert_eq!(
        rewrite_url(&mirrors, "https://example.org/z"),
        "https://example.org/z"
    );
    let err = Mirror::parse_list("https://a").unwrap_err().to_string();
    assert!(err.contains("`https://a`") && err.contains("FROM=TO"), "{err}");
    assert!(Mirror::parse_list("=x").is_err());
}

#[test]
fn cache_location_precedence() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| std::ffi::OsString::from(v))
        }
    };
    let all = env(&[
        ("INGOT_CACHE_DIR", "/c"),
        ("XDG_CACHE_HOME", "/x"),
        ("HOME", "/h"),
    ]);
    assert_eq!(Cache::from_lookup(all).unwrap().root(), Path::new("/c"));
    let xdg = env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]);
    assert_eq!(Cache::from_lookup(xdg).unwrap().root(), Path::new("/x/ingot"));
    let home = env(&[("HOME", "/h"), ("XDG_CACHE_HOME", "")]);
    assert_eq!(
        Cache::from_lookup(home).unwrap().root(),
        Path::new("/h/.cache/ingot")
    );
    assert!(matches!(
        Cache::from_lookup(env(&[])),
        Err(FetchError::NoCacheDir)
    ));
}

// ---------------------------------------------------------------------------------------------
// Downloads

#[test]
fn downloads_verifies_and_then_serves_from_cache() {
    let server = Server::start();
    let data = b"kernel bytes".repeat(10_000);
    let url = server.route("/k.bin", Reply::Ok(data.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path());
    let p = pin("kernel", &url, &data);
    let path = f.fetch(&p).unwrap();
    assert_eq!(path, f.cache().blob_path(&p.sha256));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(f.fetch(&p).unwrap(), path);
    assert_eq!(server.hits("/k.bin"), 1, "second fetch must come from the cache");
    // Offline now works too, because the blob is cached.
    assert_eq!(fetcher(tmp.path()).offline(true).fetch(&p).unwrap(), path);
    assert_eq!(blob_dir_entries(f.cache()), [p.sha256.to_hex()]);
}

#[test]
fn hash_mismatch_names_everything_and_stores_nothing() {
    let server = Server::start();
    let url = server.route("/x", Reply::Ok(b"evil".to_vec()));
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path());
    let p = pin("containerd", &url, b"good");
    let err = f.fetch(&p).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Mismatch { .. }));
    assert!(msg.contains("containerd"), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains(&p.sha256.to_hex()), "{msg}");
    assert!(msg.contains(&Sha256::digest(b"evil").to_hex()), "{msg}");
    assert_eq!(
        blob_dir_entries(f.cache()),
        Vec::<String>::new(),
        "no blob, no temp file"
    );
    assert_eq!(server.hits("/x"), 1, "a mismatch is not retried");
}

#[test]
fn pool_404_says_superseded_other_statuses_say_status() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path());
    let pool = format!("{}/debian/pool/main/l/linux/old.deb", server.base);
    let err = f.fetch(&pin("kernel", &pool, b"x")).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Superseded { .. }), "{msg}");
    assert!(
        msg.contains("superseded") && msg.contains("ingot lock") && msg.contains(&pool),
        "{msg}"
    );
    assert_eq!(
        server.hits("/debian/pool/main/l/linux/old.deb"),
        1,
        "a 404 is not retried"
    );

    let url = server.route("/forbidden", Reply::Status(403));
    let err = f.fetch(&pin("runc", &url, b"x")).unwrap_err();
    assert!(matches!(err, FetchError::HttpStatus { status: 403, .. }), "{err}");
    assert!(err.to_string().contains("runc"));

    // 5xx is retried (one retry configured), then reported.
    let url = server.route("/busy", Reply::Status(503));
    let err = f.fetch(&pin("runc", &url, b"x")).unwrap_err();
    assert!(matches!(err, FetchError::HttpStatus { status: 503, .. }), "{err}");
    assert_eq!(server.hits("/busy"), 2);
    assert_eq!(blob_dir_entries(f.cache()), Vec::<String>::new());
}

#[test]
fn truncated_download_is_retried_then_fails_leaving_nothing() {
    let server = Server::start();
    let data = vec![7u8; 100_000];
    let url = server.route("/cut", Reply::Truncated(data.clone(), 40_000));
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path());
    let err = f.fetch(&pin("cni", &url, &data)).unwrap_err();
    assert!(matches!(err, FetchError::Interrupted { .. }), "{err:?}");
    assert!(err.to_string().contains("cni") && err.to_string().contains(&url));
    assert_eq!(server.hits("/cut"), 2, "interrupted downloads are retried");
    assert_eq!(
        blob_dir_entries(f.cache()),
        Vec::<String>::new(),
        "no blob, no temp file"
    );
}

#[test]
fn an_unreachable_host_names_the_url_and_every_other_way_to_supply_the_file() {
    // Bind then drop to find a port that is (very likely) closed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let tmp = tempfile::tempdir().unwrap();
    let url = format!("http://127.0.0.1:{port}/x");
    let p = pin("crictl", &url, b"x");
    let err = fetcher(tmp.path()).fetch(&p).unwrap_err();
    assert!(matches!(err, FetchError::Unreachable { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.starts_with(&format!("component crictl: cannot reach {url}; ")),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("INGOT_MIRROR=\"http://127.0.0.1:{port}=")),
        "{shown}"
    );
    assert!(shown.contains(&format!("(sha256 {})", p.sha256)), "{shown}");
    assert!(shown.contains(&format!("/blobs/sha256/{}", p.sha256)), "{shown}");
    assert!(
        shown.contains("`extends`") && shown.contains("`path = "),
        "{shown}"
    );
}

#[test]
fn offline_miss_says_what_and_how() {
    let tmp = tempfile::tempdir().unwrap();
    let f = fetcher(tmp.path()).offline(true);
    let p = pin("kernel", "https://deb.debian.org/debian/pool/k.deb", b"k");
    let msg = f.fetch(&p).unwrap_err().to_string();
    assert!(
        msg.contains("kernel") && msg.contains("https://deb.debian.org/debian/pool/k.deb"),
        "{msg}"
    );
    assert!(msg.contains("without --offline"), "{msg}");
    assert!(
        msg.contains(&f.cache().blob_path(&p.sha256).display().to_string()),
        "{msg}"
    );
}

#[test]
fn local_paths_file_urls_and_mirrors() {
    let server = Server::start();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("local.bin");
    std::fs::write(&src, b"local").unwrap();
    let f = fetcher(tmp.path());
    let by_path = f.fetch(&pin("a", src.to_str().unwrap(), b"local")).unwrap();
    assert_eq!(std::fs::read(by_path).unwrap(), b"local");

    std::fs::write(tmp.path().join("other.bin"), b"other").unwrap();
    let url = format!("file://{}", tmp.path().join("other.bin").display());
    assert!(f.fetch(&pin("b", &url, b"other")).is_ok());
    let missing = format!("file://{}", tmp.path().join("nope").display());
    assert!(matches!(
        f.fetch(&pin("c", &missing, b"z")),
        Err(FetchError::Local { .. })
    ));

    // The canonical URL is unreachable; the mirror serves it.
    server.route("/mirror/pool/m.deb", Reply::Ok(b"mirrored".to_vec()));
    let f = fetcher(tmp.path()).mirrors(vec![Mirror {
        from: "https://deb.example.invalid/debian".to_owned(),
        to: format!("{}/mirror", server.base),
    }]);
    let p = pin("m", "https://deb.example.invalid/debian/pool/m.deb", b"mirrored");
    assert_eq!(std::fs::read(f.fetch(&p).unwrap()).unwrap(), b"mirrored");

    let err = f.fetch(&pin("d", "ftp://x/y", b"q")).unwrap_err();
    assert!(matches!(err, FetchError::Scheme { .. }), "{err}");
}

// ---------------------------------------------------------------------------------------------
// .deb and tarball fixtures

/// A raw tar entry; paths are written verbatim so hostile archives can be built.
struct Entry {
    path: &'static str,
    kind: tar::EntryType,
    mode: u32,
    data: &'static [u8],
    link: &'static str,
}

fn file(path: &'static str, mode: u32, data: &'static [u8]) -> Entry {
    Entry {
        path,
        kind: tar::EntryType::Regular,
        mode,
        data,
        link: "",
    }
}

fn dir(path: &'static str, mode: u32) -> Entry {
    Entry {
        path,
        kind: tar::EntryType::Directory,
        mode,
        data: b"",
        link: "",
    }
}

fn link(path: &'static str, kind: tar::EntryType, target: &'static str) -> Entry {
    Entry {
        path,
        kind,
        mode: 0o777,
        data: b"",
        link: target,
    }
}

fn tar_bytes(entries: &[Entry]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for e in entries {
        let mut header = tar::Header::new_gnu();
        let name = &mut header.as_old_mut().name;
        name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        header.set_entry_type(e.kind);
        header.set_mode(e.mode);
        header.set_size(e.data.len() as u64);
        header.set_mtime(1_700_000_000);
        if !e.link.is_empty() {
            header.set_link_name_literal(e.link).unwrap();
        }
        header.set_cksum();
        builder.append(&header, e.data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut enc = liblzma::write::XzEncoder::new(Vec::new(), 1);
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn zst(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

fn deb_bytes(data_member: &str, data: &[u8]) -> Vec<u8> {
    let control = tar_bytes(&[
        dir("./", 0o755),
        file(
            "./control",
            0o644,
            b"Package: hello\nVersion: 1:2.0-3\nArchitecture: amd64\nDepends: libc6 (>= 2.34)\n\
              Description: greets\n a longer text\n",
        ),
    ]);
    let mut builder = ar::Builder::new(Vec::new());
    for (name, bytes) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar.xz", xz(&control)),
        (data_member, data.to_vec()),
    ] {
        let header = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
        builder.append(&header, &bytes[..]).unwrap();
    }
    builder.into_inner().unwrap()
}

fn good_tree() -> Vec<Entry> {
    vec![
        dir("./", 0o755),
        dir("./usr/", 0o755),
        dir("./usr/bin/", 0o755),
        file("./usr/bin/hello", 0o4755, b"#!/bin/sh\necho hi\n"),
        link("./usr/bin/hi", tar::EntryType::Symlink, "hello"),
        link("./usr/bin/hello2", tar::EntryType::Link, "./usr/bin/hello"),
        link("./usr/lib-abs", tar::EntryType::Symlink, "/usr/lib"),
        dir("./etc/", 0o755),
        dir("./etc/ro/", 0o555),
        file("./etc/ro/conf", 0o600, b"secret"),
    ]
}

fn assert_good_tree(root: &Path) {
    let hello = root.join("usr/bin/hello");
    assert_eq!(std::fs::read(&hello).unwrap(), b"#!/bin/sh\necho hi\n");
    let mode = std::fs::metadata(&hello).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o4755, "setuid and mode kept");
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/hi")).unwrap(),
        Path::new("hello")
    );
    assert_eq!(
        std::fs::read_link(root.join("usr/lib-abs")).unwrap(),
        Path::new("/usr/lib")
    );
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("usr/bin/hello"), ino("usr/bin/hello2"), "hard link");
    assert_eq!(std::fs::read(root.join("etc/ro/conf")).unwrap(), b"secret");
    let ro = std::fs::metadata(root.join("etc/ro"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(ro & 0o7777, 0o555, "directory mode applied after its contents");
    let mtime = std::fs::metadata(&hello).unwrap().modified().unwrap();
    assert_eq!(
        mtime.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs(),
        1_700_000_000
    );
}

#[test]
fn unpacks_debs_with_every_data_compression() {
    let tree = tar_bytes(&good_tree());
    for (member, bytes) in [
        ("data.tar.xz", xz(&tree)),
        ("data.tar.zst", zst(&tree)),
        ("data.tar.gz", gz(&tree)),
        ("data.tar", tree.clone()),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let deb = tmp.path().join("hello.deb");
        std::fs::write(&deb, deb_bytes(member, &bytes)).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_deb(&deb, &out).unwrap_or_else(|e| panic!("{member}: {e:?}"));
        assert_good_tree(&out);
        let fields = control_fields(&deb).unwrap();
        assert_eq!(fields[0], ("Package".to_owned(), "hello".to_owned()));
        assert!(fields.contains(&("Version".to_owned(), "1:2.0-3".to_owned())));
        assert!(fields.contains(&("Description".to_owned(), "greets\n a longer text".to_owned())));
    }
}

#[test]
fn unpacks_tarballs_by_magic() {
    let tree = tar_bytes(&good_tree());
    for (name, bytes) in [
        ("t.tar.gz", gz(&tree)),
        ("t.tgz", gz(&tree)),
        ("t.tar.xz", xz(&tree)),
        ("t.tar.zst", zst(&tree)),
        ("t.tar", tree.clone()),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = tmp.path().join("out");
        std::fs::create_dir(&out).unwrap();
        unpack_tarball(&path, &out).unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert_good_tree(&out);
    }
}

/// Unpacks a deb made of `entries` into a fresh directory inside `tmp`; returns the error.
fn unpack_hostile(tmp: &Path, entries: &[Entry]) -> UnpackError {
    let deb = tmp.join("evil.deb");
    std::fs::write(&deb, deb_bytes("data.tar.xz", &xz(&tar_bytes(entries)))).unwrap();
    let out = tmp.join("out");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir(&out).unwrap();
    unpack_deb(&deb, &out).unwrap_err()
}

#[test]
fn path_traversal_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let err = unpack_hostile(tmp.path(), &[file("./../escaped", 0o644, b"x")]);
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err:?}");
    assert!(err.to_string().contains("evil.deb") && err.to_string().contains("../escaped"));
    assert!(!tmp.path().join("escaped").exists());

    let err = unpack_hostile(tmp.path(), &[file("/tmp/abs-escape", 0o644, b"x")]);
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err:?}");

    let err = unpack_hostile(
        tmp.path(),
        &[link("./passwd", tar::EntryType::Link, "../../../../etc/passwd")],
    );
    assert!(matches!(err, UnpackError::UnsafePath { .. }), "{err:?}");

    // A symlink to outside, then a file written through it.
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let target: &'static str = Box::leak(outside.display().to_string().into_boxed_str());
    let err = unpack_hostile(
        tmp.path(),
        &[
            link("./lib", tar::EntryType::Symlink, target),
            file("./lib/planted", 0o644, b"x"),
        ],
    );
    assert!(matches!(err, UnpackError::Extract { .. }), "{err:?}");
    assert!(!outside.join("planted").exists());

    let err = unpack_hostile(
        tmp.path(),
        &[
            link("./lib", tar::EntryType::Symlink, target),
            dir("./lib/sub/", 0o755),
        ],
    );
    assert!(matches!(err, UnpackError::Extract { .. }), "{err:?}");
    assert!(!outside.join("sub").exists());

    let mut dev = file("./dev/sda", 0o600, b"");
    dev.kind = tar::EntryType::Block;
    let err = unpack_hostile(tmp.path(), &[dev]);
    assert!(
        matches!(
            err,
            UnpackError::UnsupportedEntry {
                kind: "block device",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn truncated_and_corrupt_debs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    // Incompressible content, so truncation lands in the data member.
    let mut noise = Vec::new();
    let mut x: u32 = 1;
    for _ in 0..200_000 {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        noise.push((x >> 24) as u8);
    }
    let noise: &'static [u8] = Box::leak(noise.into_boxed_slice());
    let bytes = deb_bytes("data.tar.xz", &xz(&tar_bytes(&[file("./big", 0o644, noise)])));
    let deb = tmp.path().join("pkg.deb");
    let out = tmp.path().join("out");

    for cut in [bytes.len() / 2, bytes.len() - 1, 70] {
        std::fs::write(&deb, &bytes[..cut]).unwrap();
        let _ = std::fs::remove_dir_all(&out);
        std::fs::create_dir(&out).unwrap();
        let err = unpack_deb(&deb, &out).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("pkg.deb"), "{msg}");
        assert!(
            matches!(err, UnpackError::Corrupt { .. } | UnpackError::Format { .. }),
            "cut at {cut}: {err:?}"
        );
    }

    let mut flipped = bytes.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xff;
    std::fs::write(&deb, &flipped).unwrap();
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir(&out).unwrap();
    let err = unpack_deb(&deb, &out).unwrap_err();
    assert!(
        matches!(&err, UnpackError::Corrupt { member, .. } if member == "data.tar.xz"),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("{}: data.tar.xz is truncated or corrupt", deb.display())
    );

    std::fs::write(&deb, b"!<arch>\nnot really").unwrap();
    assert!(unpack_deb(&deb, &out).is_err());
    std::fs::write(&deb, b"hello").unwrap();
    assert!(unpack_deb(&deb, &out).is_err());
}

#[test]
fn unpacked_is_cached_and_atomic() {
    let tmp = tempfile::tempdir().unwrap();
    let deb_data = deb_bytes("data.tar.xz", &xz(&tar_bytes(&good_tree())));
    let src = tmp.path().join("hello.deb");
    std::fs::write(&src, &deb_data).unwrap();
    let f = fetcher(tmp.path());
    let p = pin("hello", src.to_str().unwrap(), &deb_data);
    let dir = f.unpacked(&p).unwrap();
    assert_eq!(dir, f.cache().root().join("unpacked").join(p.sha256.to_hex()));
    assert_good_tree(&dir);
    // Second call: no extraction (the source is gone, and the blob too).
    std::fs::remove_file(&src).unwrap();
    assert_eq!(f.unpacked(&p).unwrap(), dir);

    // A failing extraction leaves neither the final directory nor a temporary one.
    let evil = deb_bytes("data.tar.xz", &xz(&tar_bytes(&[file("./../x", 0o644, b"x")])));
    let evil_src = tmp.path().join("evil.deb");
    std::fs::write(&evil_src, &evil).unwrap();
    let p = pin("evil", evil_src.to_str().unwrap(), &evil);
    let err = f.unpacked(&p).unwrap_err();
    assert!(matches!(err, FetchError::Unpack { .. }), "{err:?}");
    assert!(err.to_string().starts_with("component evil: cannot unpack"));
    let names: Vec<_> = std::fs::read_dir(f.cache().root().join("unpacked"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [dir.file_name().unwrap().to_string_lossy().into_owned()]);
}

#[test]
fn cache_insert_rejects_wrong_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::at(tmp.path());
    let sha = Sha256::digest(b"abc");
    assert!(cache.insert("idx", "x", &sha, &b"abd"[..]).is_err());
    assert_eq!(blob_dir_entries(&cache), Vec::<String>::new());
    let path = cache.insert("idx", "x", &sha, &b"abc"[..]).unwrap();
    assert_eq!(cache.blob(&sha), Some(path));
}

#[test]
fn finds_one_file_in_a_deb_without_unpacking_it() {
    let tree = tar_bytes(&[
        dir("./", 0o755),
        dir("./boot/", 0o755),
        file("./boot/config-6.1.0-1-amd64", 0o644, b"CONFIG_A=y\n"),
        file("./boot/vmlinuz-6.1.0-1-amd64", 0o644, b"kernel"),
    ]);
    let d = tempfile::tempdir().unwrap();
    let deb = d.path().join("k.deb");
    std::fs::write(&deb, deb_bytes("data.tar.xz", &xz(&tree))).unwrap();
    let is_config = |p: &Path| p.starts_with("boot") && p.to_string_lossy().contains("config-");
    let (path, bytes) = find_data_file(&deb, is_config, 1024).unwrap().unwrap();
    assert_eq!(path, Path::new("boot/config-6.1.0-1-amd64"));
    assert_eq!(bytes, b"CONFIG_A=y\n");
    assert_eq!(find_data_file(&deb, |p| p.ends_with("nope"), 1024).unwrap(), None);
    let err = find_data_file(&deb, is_config, 4).unwrap_err().to_string();
    assert!(err.contains("larger than 4 bytes"), "{err}");
}
