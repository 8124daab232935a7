//! Hostile images: a deterministic corpus of tampered variants of one signed image, each carrying the
//! [`VerifyError::kind`] that `ingot verify` must refuse it with.
//!
//! From a small signed image ([`Base`]) and a seed, [`corpus`] makes variants of every kind an attacker or
//! a broken disk produces: truncated and extended images, manifests and signature files; bit flips in every
//! region of the image (protective MBR, both GPT headers and tables, gaps, each partition's hashed bytes and
//! zero tail), in the signature and in the manifest; another key; signatures spliced from other validly
//! signed manifests; manifest fields changed and re-signed (sizes beyond 4 GiB, overlaps, `hashed_bytes`
//! beyond the partition, `u64::MAX`, negative and float numbers, duplicate and unknown keys, deep nesting);
//! versions below the one the key last accepted. A few benign variants (the same signature bytes written
//! differently, the manifest re-serialised) must be accepted, so the corpus also catches over-rejection.
//!
//! [`Runner`] applies one variant at a time to the image in place (a few bytes, or a length) and restores
//! it, so no variant copies the image; every verification runs under `catch_unwind`.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Value, json};

use crate::manifest::Manifest;
use crate::rollback::{Policy, STATE_FILE};
use crate::signing;
use crate::verify::signature_path;

#[derive(Debug, thiserror::Error)]
pub enum HostileError {
    #[error("building the base image")]
    Build(#[source] anyhow::Error),
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the base image's manifest {path} is not one this corpus can mutate: {message}")]
    Base { path: PathBuf, message: String },
    #[error("the base image does not verify: {0}")]
    Control(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HostileError + '_ {
    move |source| HostileError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A signed image and the keys around it.
pub struct Base {
    pub image: PathBuf,
    pub manifest: PathBuf,
    pub key: SigningKey,
    /// Another key, which did not sign the image.
    pub other_key: SigningKey,
    /// Where variants' manifests and the rollback state go.
    pub work: PathBuf,
}

impl Base {
    /// Builds `profile` signed with a fixed test key into `work/out` (downloads come from the cache when
    /// there).
    pub fn build(profile: &Path, work: &Path) -> Result<Base, HostileError> {
        let key = SigningKey::from_bytes(&[0x11; 32]);
        let other_key = SigningKey::from_bytes(&[0x22; 32]);
        let key_file = work.join("test.key");
        std::fs::create_dir_all(work).map_err(io_err(work))?;
        std::fs::write(
            &key_file,
            format!(
                "{}\n{}\n",
                signing::PRIVATE_HEADER,
                base64::Engine::encode(&base64::engine::general_purpose::STANDARD, key.to_bytes())
            ),
        )
        .map_err(io_err(&key_file))?;
        let report = crate::commands::build(
            &profile.to_string_lossy(),
            &work.join("out"),
            crate::commands::BuildOptions {
                offline: false,
                quiet: true,
                rebuild: false,
                keep_work: None,
                node_config: None,
                sign_key: Some(&key_file),
                secure_boot_key: None,
            },
        )
        .map_err(HostileError::Build)?;
        Ok(Base {
            image: report.image,
            manifest: report.manifest_path,
            key,
            other_key,
            work: work.to_path_buf(),
        })
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }
}

/// What a variant changes.
#[derive(Debug, Clone)]
pub enum Change {
    /// XOR `mask` into the image's byte at `at`.
    ImageXor { at: u64, mask: u8 },
    /// Truncate or extend the image to this many bytes.
    ImageLength(u64),
    /// These manifest bytes, with the base's signature file.
    Manifest(Vec<u8>),
    /// The base's manifest, with this signature file.
    Signature(Vec<u8>),
    /// This manifest and this signature file.
    Pair(Vec<u8>, Vec<u8>),
    /// The base's image and manifest, checked with another public key.
    Key(VerifyingKey),
    /// The manifest, its signature file or the image is missing.
    Missing(Part),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Image,
    Manifest,
    Signature,
}

/// The outcome a variant must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Refused with this [`crate::verify::VerifyError::kind`].
    Reject(&'static str),
    /// Accepted: the change does not change what is signed.
    Accept,
}

#[derive(Debug, Clone)]
pub struct Variant {
    /// The row of the rejection table.
    pub class: &'static str,
    /// This variant, for failure messages.
    pub detail: String,
    pub change: Change,
    pub expect: Expect,
}

/// What verification did with a variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Rejected(&'static str),
    Panicked(String),
}

impl Outcome {
    pub fn matches(&self, expect: Expect) -> bool {
        match (self, expect) {
            (Outcome::Accepted, Expect::Accept) => true,
            (Outcome::Rejected(k), Expect::Reject(e)) => *k == e,
            _ => false,
        }
    }

    fn label(&self) -> String {
        match self {
            Outcome::Accepted => "ACCEPTED".into(),
            Outcome::Rejected(k) => (*k).into(),
            Outcome::Panicked(_) => "PANIC".into(),
        }
    }
}

/// A small deterministic generator (SplitMix64): the corpus is a function of the base and the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    pub fn bit(&mut self) -> u8 {
        1 << (self.next_u64() % 8)
    }
}

/// A named byte range of the image and the kind a flip inside it must be refused with.
#[derive(Debug, Clone)]
pub struct Region {
    pub name: String,
    pub start: u64,
    pub end: u64,
    pub expect: &'static str,
}

/// The image's regions: outside the partitions (MBR, GPT headers and tables, gaps) and, per partition, the
/// hashed bytes and the zero tail.
pub fn regions(base: &Base, manifest: &Manifest) -> Result<Vec<Region>, HostileError> {
    let size = manifest.image.size;
    let file = File::open(&base.image).map_err(io_err(&base.image))?;
    let mut head = vec![0u8; 1024];
    file.read_exact_at(&mut head, 0).map_err(io_err(&base.image))?;
    let header = ingot_spec::gpt::parse_header(&head).map_err(|e| HostileError::Base {
        path: base.image.clone(),
        message: e.to_string(),
    })?;
    let table = header.entries_byte_range();
    let table_len = table.end - table.start;
    let mut fixed = vec![
        ("protective MBR", 0, 512),
        ("GPT header", 512, 1024),
        ("GPT table", table.start, table.end),
        ("backup GPT table", size - 512 - table_len, size - 512),
        ("backup GPT header", size - 512, size),
    ];
    let mut parts: Vec<_> = manifest.partitions.iter().collect();
    parts.sort_by_key(|p| p.offset);
    // Gaps: between the fixed structures and the partitions.
    let mut taken: Vec<(u64, u64)> = fixed.iter().map(|f| (f.1, f.2)).collect();
    taken.extend(parts.iter().map(|p| (p.offset, p.offset + p.size)));
    taken.sort();
    let mut at = 0;
    let mut gaps = Vec::new();
    for (s, e) in taken {
        if s > at {
            gaps.push(("gap", at, s));
        }
        at = at.max(e);
    }
    fixed.extend(gaps);
    let mut out: Vec<Region> = fixed
        .into_iter()
        .filter(|f| f.2 > f.1)
        .map(|(name, start, end)| Region {
            name: format!("outside: {name}"),
            start,
            end,
            expect: "outside",
        })
        .collect();
    for p in parts {
        let hashed_end = p.offset + p.hashed_bytes;
        if p.hashed_bytes > 0 {
            out.push(Region {
                name: format!("partition {} {}: data", p.number, p.label),
                start: p.offset,
                end: hashed_end,
                expect: "partition-hash",
            });
        }
        out.push(Region {
            name: format!(
                "partition {} {}: zero tail{}",
                p.number,
                p.label,
                if p.hashed_bytes == 0 { " (empty)" } else { "" }
            ),
            start: hashed_end,
            end: p.offset + p.size,
            expect: "partition-tail",
        });
    }
    Ok(out)
}

/// The base's manifest bytes, signature file bytes and parsed manifest.
fn load_base(base: &Base) -> Result<(Vec<u8>, Vec<u8>, Manifest), HostileError> {
    let bytes = std::fs::read(&base.manifest).map_err(io_err(&base.manifest))?;
    let sig_path = signature_path(&base.manifest);
    let sig = std::fs::read(&sig_path).map_err(io_err(&sig_path))?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| HostileError::Base {
        path: base.manifest.clone(),
        message: e.to_string(),
    })?;
    Ok((bytes, sig, manifest))
}

/// Builds the corpus. Deterministic for a given base and seed.
pub fn corpus(base: &Base, seed: u64) -> Result<Vec<Variant>, HostileError> {
    let (bytes, sig, manifest) = load_base(base)?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| HostileError::Base {
        path: base.manifest.clone(),
        message: e.to_string(),
    })?;
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    image_lengths(&mut out, &mut rng, &manifest);
    image_flips(&mut out, &mut rng, &regions(base, &manifest)?);
    manifest_bytes(&mut out, &mut rng, &bytes);
    signature_bytes(&mut out, &mut rng, &sig);
    keys_and_splices(&mut out, &mut rng, base, &bytes, &value);
    fields(&mut out, base, &manifest, &value, &bytes)?;
    rollback(&mut out, base, &value);
    benign(&mut out, base, &value, &sig);
    Ok(out)
}

fn push(out: &mut Vec<Variant>, class: &'static str, detail: String, change: Change, expect: Expect) {
    out.push(Variant {
        class,
        detail,
        change,
        expect,
    });
}

fn image_lengths(out: &mut Vec<Variant>, rng: &mut Rng, m: &Manifest) {
    let size = m.image.size;
    let mut lengths = vec![
        0,
        1,
        511,
        512,
        513,
        1023,
        1024,
        4096,
        17408,
        1 << 20,
        size - 512,
        size - 1,
    ];
    for p in &m.partitions {
        lengths.extend([p.offset - 1, p.offset, p.offset + 1, p.offset + p.hashed_bytes]);
        lengths.push(p.offset + p.size / 2);
    }
    for _ in 0..20 {
        lengths.push(rng.range(0, size));
    }
    lengths.sort_unstable();
    lengths.dedup();
    for len in lengths.into_iter().filter(|l| *l < size) {
        push(
            out,
            "image truncated",
            format!("image cut to {len} bytes"),
            Change::ImageLength(len),
            Expect::Reject("size"),
        );
    }
    for extra in [1, 511, 512, 4096, 1 << 20, 4 << 30] {
        push(
            out,
            "image extended",
            format!("image grown by {extra} bytes"),
            Change::ImageLength(size + extra),
            Expect::Reject("size"),
        );
    }
    push(
        out,
        "file missing",
        "no image".into(),
        Change::Missing(Part::Image),
        Expect::Reject("read"),
    );
}

fn image_flips(out: &mut Vec<Variant>, rng: &mut Rng, regions: &[Region]) {
    for r in regions {
        let len = r.end - r.start;
        // Both ends, and random bytes weighted towards the larger regions.
        let n = match len {
            0..=1024 => 8,
            1025..=65536 => 12,
            _ => 20,
        };
        let mut at: Vec<u64> = vec![r.start, r.end - 1];
        at.extend((0..n).map(|_| rng.range(r.start, r.end)));
        for a in at {
            let mask = rng.bit();
            let class: &'static str = if r.name.starts_with("outside") {
                "flip: outside the partitions"
            } else if r.expect == "partition-hash" {
                "flip: partition data"
            } else {
                "flip: partition zero tail"
            };
            push(
                out,
                class,
                format!("{}: byte {a} ^= {mask:#04x}", r.name),
                Change::ImageXor { at: a, mask },
                Expect::Reject(r.expect),
            );
        }
    }
}

fn manifest_bytes(out: &mut Vec<Variant>, rng: &mut Rng, bytes: &[u8]) {
    let len = bytes.len() as u64;
    let mut cuts = vec![0, 1, 2, len / 2, len - 2, len - 1];
    cuts.extend((0..60).map(|_| rng.range(0, len)));
    cuts.sort_unstable();
    cuts.dedup();
    for cut in cuts {
        push(
            out,
            "manifest truncated",
            format!("manifest cut to {cut} bytes"),
            Change::Manifest(bytes[..cut as usize].to_vec()),
            Expect::Reject("signature"),
        );
    }
    let mut at = vec![0, len - 1];
    at.extend((0..200).map(|_| rng.range(0, len)));
    for a in at {
        let mask = rng.bit();
        let mut b = bytes.to_vec();
        b[a as usize] ^= mask;
        push(
            out,
            "manifest flipped",
            format!("manifest byte {a} ^= {mask:#04x}"),
            Change::Manifest(b),
            Expect::Reject("signature"),
        );
    }
    let mut longer = bytes.to_vec();
    longer.push(b' ');
    push(
        out,
        "manifest truncated",
        "manifest with one more byte".into(),
        Change::Manifest(longer),
        Expect::Reject("signature"),
    );
    push(
        out,
        "file missing",
        "no manifest".into(),
        Change::Missing(Part::Manifest),
        Expect::Reject("read"),
    );
}

fn signature_bytes(out: &mut Vec<Variant>, rng: &mut Rng, sig: &[u8]) {
    // The signature file ends in a newline; without it, or with another whitespace there, it holds the
    // same signature (the benign cases are in `benign`).
    for cut in 0..sig.len().saturating_sub(1) {
        push(
            out,
            "signature truncated",
            format!("signature file cut to {cut} bytes"),
            Change::Signature(sig[..cut].to_vec()),
            Expect::Reject("signature"),
        );
    }
    for a in 0..sig.len() {
        for _ in 0..2 {
            let mask = rng.bit();
            let mut b = sig.to_vec();
            b[a] ^= mask;
            let benign = a == sig.len() - 1 && char::from(b[a]).is_whitespace();
            if benign {
                continue;
            }
            push(
                out,
                "signature flipped",
                format!("signature byte {a} ^= {mask:#04x}"),
                Change::Signature(b),
                Expect::Reject("signature"),
            );
        }
    }
    push(
        out,
        "file missing",
        "no signature file".into(),
        Change::Missing(Part::Signature),
        Expect::Reject("read"),
    );
}

/// `value` serialised as the builder does, signed with `key`.
fn signed(value: &Value, key: &SigningKey) -> (Vec<u8>, Vec<u8>) {
    let mut text = serde_json::to_string_pretty(value).unwrap_or_default();
    text.push('\n');
    let sig = signing::sign(key, text.as_bytes());
    (text.into_bytes(), sig.into_bytes())
}

fn signed_text(text: &str, key: &SigningKey) -> (Vec<u8>, Vec<u8>) {
    (
        text.as_bytes().to_vec(),
        signing::sign(key, text.as_bytes()).into_bytes(),
    )
}

fn keys_and_splices(out: &mut Vec<Variant>, rng: &mut Rng, base: &Base, bytes: &[u8], value: &Value) {
    push(
        out,
        "another key",
        "verified with a key that did not sign".into(),
        Change::Key(base.other_key.verifying_key()),
        Expect::Reject("signature"),
    );
    for _ in 0..4 {
        let mut seed = [0u8; 32];
        for chunk in seed.chunks_mut(8) {
            chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
        }
        push(
            out,
            "another key",
            "verified with a random key".into(),
            Change::Key(SigningKey::from_bytes(&seed).verifying_key()),
            Expect::Reject("signature"),
        );
    }
    // The same manifest, signed by the other key: the signature names that key.
    push(
        out,
        "another key",
        "manifest re-signed by another key".into(),
        Change::Signature(signing::sign(&base.other_key, bytes).into_bytes()),
        Expect::Reject("signature"),
    );
    // Signatures of other validly signed manifests (the same image at other versions, another image's
    // sizes), spliced onto this manifest, and onto each other.
    let mut others = Vec::new();
    for (i, version) in ["0.1.1", "0.2.0", "1:0.0.1"].iter().enumerate() {
        let mut v = value.clone();
        v["image"]["version"] = json!(version);
        if i == 2 {
            v["image"]["size"] = json!(1u64 << 33);
        }
        others.push((version, signed(&v, &base.key)));
    }
    for (version, (_, sig)) in &others {
        push(
            out,
            "signature spliced",
            format!("signature of the manifest at version {version}"),
            Change::Signature(sig.clone()),
            Expect::Reject("signature"),
        );
    }
    for i in 0..others.len() {
        let (m, _) = &others[i].1;
        let (_, s) = &others[(i + 1) % others.len()].1;
        push(
            out,
            "signature spliced",
            format!(
                "manifest at {} with the signature of {}",
                others[i].0,
                others[(i + 1) % others.len()].0
            ),
            Change::Pair(m.clone(), s.clone()),
            Expect::Reject("signature"),
        );
    }
    // The header of another key's signature file with this key's signature bytes, and the reverse.
    let own = String::from_utf8_lossy(&signing::sign(&base.key, bytes).into_bytes()).into_owned();
    let theirs = String::from_utf8_lossy(&signing::sign(&base.other_key, bytes).into_bytes()).into_owned();
    if let (Some((oh, ob)), Some((th, tb))) = (own.split_once('\n'), theirs.split_once('\n')) {
        for (h, b) in [(oh, tb), (th, ob)] {
            push(
                out,
                "signature spliced",
                "key id of one signature, bytes of another".into(),
                Change::Signature(format!("{h}\n{b}").into_bytes()),
                Expect::Reject("signature"),
            );
        }
    }
}

/// Manifest fields changed, each manifest re-signed with the image's key: the signature holds, and the
/// manifest's own checks must refuse it.
fn fields(
    out: &mut Vec<Variant>,
    base: &Base,
    m: &Manifest,
    value: &Value,
    bytes: &[u8],
) -> Result<(), HostileError> {
    let size = m.image.size;
    let key = &base.key;
    let add =
        |out: &mut Vec<Variant>, class: &'static str, detail: String, v: Value, expect: &'static str| {
            let (mb, sb) = signed(&v, key);
            push(out, class, detail, Change::Pair(mb, sb), Expect::Reject(expect));
        };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = value.clone();
        f(&mut v);
        v
    };
    for (s, expect) in [
        (size + (4 << 30), "size"),
        (size + 512, "size"),
        (size - 512, "size"),
        (0, "size"),
        (u64::MAX, "size"),
        (u64::from(u32::MAX) + 1, "size"),
    ] {
        add(
            out,
            "field: image size",
            format!("image.size = {s}"),
            with(&|v| v["image"]["size"] = json!(s)),
            expect,
        );
    }
    let n = m.partitions.len();
    for i in 0..n {
        let p = &m.partitions[i];
        let label = format!("partition {} {}", p.number, p.label);
        let part =
            |field: &'static str, x: Value| with(&move |v: &mut Value| v["partitions"][i][field] = x.clone());
        for (field, x, expect) in [
            ("size", json!(5u64 << 30), "layout"),
            ("size", json!(u64::MAX), "layout"),
            ("offset", json!(u64::MAX), "layout"),
            ("offset", json!(u64::MAX - 511), "layout"),
            ("offset", json!(size), "layout"),
            ("offset", json!(4u64 << 30), "layout"),
            ("offset", json!(p.offset + 1), "layout"),
            ("offset", json!(0), "layout"),
            ("size", json!(0), "layout"),
            ("size", json!(p.size - 1), "layout"),
            ("hashed_bytes", json!(p.size + 1), "layout"),
            ("hashed_bytes", json!(u64::MAX), "layout"),
            ("sha256", json!("0".repeat(64)), "partition-hash"),
            ("sha256", json!(p.sha256.to_uppercase()), "partition-hash"),
            ("sha256", json!(""), "partition-hash"),
        ] {
            // A sha256 of only digits has no upper case: the same manifest.
            if field == "sha256" && x == json!(p.sha256) {
                continue;
            }
            add(
                out,
                "field: partition layout",
                format!("{label}: {field} = {x}"),
                part(field, x.clone()),
                expect,
            );
        }
        // Overlapping its neighbour.
        if i > 0 {
            let prev = &m.partitions[i - 1];
            for off in [prev.offset, prev.offset + prev.size - 512] {
                add(
                    out,
                    "field: partition layout",
                    format!("{label}: offset = {off}, overlapping the partition before"),
                    part("offset", json!(off)),
                    "layout",
                );
            }
        }
        // What the hash covers, moved.
        let mut hashed = vec![p.hashed_bytes + 4096];
        if p.hashed_bytes >= 4096 {
            hashed.push(p.hashed_bytes - 4096);
            hashed.push(p.hashed_bytes - 1);
        }
        for h in hashed.into_iter().filter(|h| *h <= p.size) {
            add(
                out,
                "field: partition hash range",
                format!("{label}: hashed_bytes = {h}"),
                part("hashed_bytes", json!(h)),
                "partition-hash",
            );
        }
        add(
            out,
            "field: partition hash range",
            format!("{label}: shifted by one sector"),
            with(&|v| {
                v["partitions"][i]["offset"] = json!(p.offset + 512);
                v["partitions"][i]["size"] = json!(p.size - 512);
                v["partitions"][i]["hashed_bytes"] = json!(p.hashed_bytes.min(p.size - 512));
            }),
            if p.hashed_bytes == 0 {
                "outside"
            } else {
                "partition-hash"
            },
        );
        // Smaller, or left out: its bytes become "outside", whose hash no longer matches.
        let smaller = p.size - (1 << 20).min(p.size / 2);
        add(
            out,
            "field: partition dropped",
            format!("{label}: size = {smaller}"),
            with(&|v| {
                v["partitions"][i]["size"] = json!(smaller);
            }),
            if p.hashed_bytes > smaller {
                "layout"
            } else {
                "outside"
            },
        );
        add(
            out,
            "field: partition dropped",
            format!("{label} left out"),
            with(&|v| {
                if let Some(a) = v["partitions"].as_array_mut() {
                    a.remove(i);
                }
            }),
            "outside",
        );
        add(
            out,
            "field: partition layout",
            format!("{label} listed twice"),
            with(&|v| {
                let copy = v["partitions"][i].clone();
                if let Some(a) = v["partitions"].as_array_mut() {
                    a.push(copy);
                }
            }),
            "layout",
        );
    }
    add(
        out,
        "field: partition dropped",
        "no partitions".into(),
        with(&|v| v["partitions"] = json!([])),
        "outside",
    );
    add(
        out,
        "field: partition layout",
        "200 partitions".into(),
        with(&|v| {
            let first = v["partitions"][0].clone();
            v["partitions"] = Value::Array(vec![first; 200]);
        }),
        "layout",
    );
    for (detail, v, expect) in [
        (
            "outside_sha256 changed",
            with(&|v| v["image"]["outside_sha256"] = json!("0".repeat(64))),
            "outside",
        ),
        (
            "outside_sha256 empty",
            with(&|v| v["image"]["outside_sha256"] = json!("")),
            "outside",
        ),
        (
            "outside_sha256 null",
            with(&|v| v["image"]["outside_sha256"] = Value::Null),
            "manifest",
        ),
        (
            "outside_sha256 removed",
            with(&|v| {
                if let Some(o) = v["image"].as_object_mut() {
                    o.remove("outside_sha256");
                }
            }),
            "manifest",
        ),
    ] {
        add(out, "field: outside hash", detail.into(), v, expect);
    }
    // Values JSON allows and the manifest's types do not.
    type At = fn(&mut Value) -> &mut Value;
    let number_path: [(&str, At); 4] = [
        ("schema", |v| &mut v["schema"]),
        ("image.size", |v| &mut v["image"]["size"]),
        ("partitions[0].offset", |v| &mut v["partitions"][0]["offset"]),
        (
            "partitions[1].hashed_bytes",
            |v| &mut v["partitions"][1]["hashed_bytes"],
        ),
    ];
    for (name, at) in number_path {
        for (x, what) in [
            (json!(-1), "negative"),
            (json!(-0.0), "negative zero"),
            (json!(1.5), "a fraction"),
            (json!(1024.0), "a float"),
            (json!("1"), "a string"),
            (Value::Null, "null"),
            (json!([1]), "an array"),
        ] {
            let mut v = value.clone();
            *at(&mut v) = x.clone();
            add(
                out,
                "field: JSON types",
                format!("{name} = {x} ({what})"),
                v,
                "manifest",
            );
        }
    }
    // Numbers serde_json cannot hold in a u64: written as text.
    for big in ["18446744073709551616", "1e400", "1e3"] {
        let text = replace_once(bytes, &format!("\"size\": {size}"), &format!("\"size\": {big}"))?;
        let (mb, sb) = signed_text(&text, key);
        push(
            out,
            "field: JSON types",
            format!("image.size = {big}"),
            Change::Pair(mb, sb),
            Expect::Reject("manifest"),
        );
    }
    // Another schema, missing and unknown fields.
    for (detail, v) in [
        ("schema = 2", with(&|v| v["schema"] = json!(2))),
        ("schema = 0", with(&|v| v["schema"] = json!(0))),
        ("schema = 2^32", with(&|v| v["schema"] = json!(1u64 << 32))),
        (
            "schema removed",
            with(&|v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("schema");
                }
            }),
        ),
        (
            "partitions[0].sha256 removed",
            with(&|v| {
                if let Some(o) = v["partitions"][0].as_object_mut() {
                    o.remove("sha256");
                }
            }),
        ),
        (
            "image removed",
            with(&|v| {
                if let Some(o) = v.as_object_mut() {
                    o.remove("image");
                }
            }),
        ),
        ("unknown top-level field", with(&|v| v["x_unknown"] = json!(1))),
        (
            "unknown field in image",
            with(&|v| v["image"]["x_unknown"] = json!(true)),
        ),
        (
            "unknown field in a partition",
            with(&|v| v["partitions"][0]["x_unknown"] = json!("")),
        ),
        (
            "unknown field in uki",
            with(&|v| v["uki"]["x_unknown"] = json!([])),
        ),
        ("partitions is an object", with(&|v| v["partitions"] = json!({}))),
        ("image is an array", with(&|v| v["image"] = json!([]))),
        ("the manifest is an array", json!([value.clone()])),
        ("the manifest is null", Value::Null),
    ] {
        add(out, "field: shape", detail.into(), v, "manifest");
    }
    // The verity entry and the UKI's claims, validly signed: caught by rebuilding the tree from root-a and
    // by reading the UKI from the (proven) ESP.
    let verity = |field: &'static str, x: Value| with(&move |v: &mut Value| v["verity"][field] = x.clone());
    let v = m.verity.as_ref();
    let data_blocks = v.map_or(0, |v| v.data_blocks);
    let mut flipped_root = v.map(|v| v.root_hash.clone()).unwrap_or_default();
    if let Some(c) = flipped_root.pop() {
        flipped_root.push(if c == '0' { '1' } else { '0' });
    }
    for (field, x, expect) in [
        ("root_hash", json!("00".repeat(32)), "verity-root-hash"),
        ("root_hash", json!(flipped_root), "verity-root-hash"),
        ("salt", json!("11".repeat(32)), "verity-root-hash"),
        ("salt", json!(""), "verity-root-hash"),
        ("salt", json!("zz"), "verity-params"),
        ("salt", json!("ab".repeat(300)), "verity-params"),
        (
            "uuid",
            json!("00000000-0000-4000-8000-000000000000"),
            "verity-tree",
        ),
        ("uuid", json!("not a uuid"), "verity-params"),
        ("data_blocks", json!(data_blocks - 1), "verity-root-hash"),
        ("data_blocks", json!(data_blocks * 2), "verity-params"),
        ("data_blocks", json!(0), "verity-params"),
        ("data_blocks", json!(u64::MAX), "verity-params"),
        ("data_blocks", json!(u64::MAX / 4096 + 1), "verity-params"),
        ("data_block_size", json!(512), "verity-params"),
        ("data_block_size", json!(3000), "verity-params"),
        ("hash_block_size", json!(0), "verity-params"),
        ("hash_size", json!(4096), "verity-params"),
        ("hash_size", json!(u64::MAX), "verity-params"),
        ("hash_start_block", json!(0), "verity-params"),
        ("algorithm", json!("sha1"), "verity-params"),
        ("data_partition", json!(4), "verity-root-hash"),
        ("data_partition", json!(9), "verity-params"),
        ("hash_partition", json!(5), "verity-tree"),
        ("hash_partition", json!(9), "verity-params"),
    ] {
        add(
            out,
            "field: verity",
            format!("verity.{field} = {x}"),
            verity(field, x),
            expect,
        );
    }
    add(
        out,
        "field: verity",
        "no verity entry".into(),
        with(&|v| {
            if let Some(o) = v.as_object_mut() {
                o.remove("verity");
            }
        }),
        "verity-params",
    );
    let cmdline = m.uki.cmdline.clone();
    for (field, x, expect) in [
        ("sha256", json!("00".repeat(32)), "uki"),
        ("path", json!("EFI/Linux/other.efi"), "uki"),
        ("path", json!("../../etc/passwd"), "uki"),
        (
            "cmdline",
            json!(cmdline.replace("roothash=", "roothash=0")),
            "uki-cmdline",
        ),
        ("cmdline", json!(format!("{cmdline} init=/bin/sh")), "uki-cmdline"),
        ("cmdline", json!(""), "uki-cmdline"),
    ] {
        add(
            out,
            "field: uki",
            format!("uki.{field} = {x}"),
            with(&move |v: &mut Value| v["uki"][field] = x.clone()),
            expect,
        );
    }
    // Duplicate keys, which a Value cannot hold: inserted as text.
    for (anchor, dup) in [
        ("{\n  \"schema\": 1,", "{\n  \"schema\": 1,\n  \"schema\": 1,"),
        ("\"image\": {", "\"image\": {\n    \"size\": 0,"),
        (
            "\"partitions\": [\n    {",
            "\"partitions\": [\n    {\n      \"sha256\": \"\",",
        ),
        ("\"uki\": {", "\"uki\": {\n    \"path\": \"x\","),
    ] {
        let text = replace_once(bytes, anchor, dup)?;
        let (mb, sb) = signed_text(&text, key);
        push(
            out,
            "field: duplicate keys",
            format!("duplicate key after {anchor:?}"),
            Change::Pair(mb, sb),
            Expect::Reject("manifest"),
        );
    }
    // Not a JSON manifest at all, validly signed.
    let text = String::from_utf8_lossy(bytes).into_owned();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    for (detail, t) in [
        ("empty", String::new()),
        ("whitespace", " \n".into()),
        ("trailing text after the object", format!("{text}x")),
        ("two objects", format!("{text}{text}")),
        ("a byte-order mark first", format!("\u{feff}{text}")),
        ("nested 100000 deep", deep),
        ("NUL bytes", "\0\0\0\0".into()),
    ] {
        let (mb, sb) = signed_text(&t, key);
        push(
            out,
            "field: shape",
            detail.into(),
            Change::Pair(mb, sb),
            Expect::Reject("manifest"),
        );
    }
    let (mut mb, _) = signed_text(&text, key);
    mb[0] = 0xff;
    let sb = signing::sign(key, &mb).into_bytes();
    push(
        out,
        "field: shape",
        "not UTF-8".into(),
        Change::Pair(mb, sb),
        Expect::Reject("manifest"),
    );
    Ok(())
}

fn replace_once(bytes: &[u8], anchor: &str, with: &str) -> Result<String, HostileError> {
    let text = String::from_utf8_lossy(bytes);
    if !text.contains(anchor) {
        return Err(HostileError::Base {
            path: PathBuf::from("manifest"),
            message: format!("no {anchor:?} in it"),
        });
    }
    Ok(text.replacen(anchor, with, 1))
}

/// Lower versions than the base's, which the runner's state records as accepted, validly signed; and
/// versions rollback protection cannot order.
fn rollback(out: &mut Vec<Variant>, base: &Base, value: &Value) {
    let current = value["image"]["version"].as_str().unwrap_or_default().to_owned();
    for lower in ["0.0.9", "0.1.0~rc1", "0.1", "0.0.1-9", "0:0.0.1"] {
        let mut v = value.clone();
        v["image"]["version"] = json!(lower);
        let (mb, sb) = signed(&v, &base.key);
        push(
            out,
            "rollback: lower version",
            format!("version {lower} after {current}"),
            Change::Pair(mb, sb),
            Expect::Reject("rollback"),
        );
    }
    for bad in ["", "-1", "a b", "x:1"] {
        let mut v = value.clone();
        v["image"]["version"] = json!(bad);
        let (mb, sb) = signed(&v, &base.key);
        push(
            out,
            "rollback: unordered version",
            format!("version {bad:?}"),
            Change::Pair(mb, sb),
            Expect::Reject("manifest"),
        );
    }
}

/// Changes that keep what is signed: must be accepted.
fn benign(out: &mut Vec<Variant>, base: &Base, value: &Value, sig: &[u8]) {
    let mut no_newline = sig.to_vec();
    no_newline.pop();
    let crlf = String::from_utf8_lossy(sig).replace('\n', "\r\n").into_bytes();
    let mut blank = sig.to_vec();
    blank.extend_from_slice(b"\n\n");
    for (detail, s) in [
        ("signature without its final newline", no_newline),
        ("signature with CRLF line ends", crlf),
        ("signature followed by blank lines", blank),
    ] {
        push(
            out,
            "benign (must verify)",
            detail.into(),
            Change::Signature(s),
            Expect::Accept,
        );
    }
    let compact = serde_json::to_string(value).unwrap_or_default();
    let (mb, sb) = signed_text(&compact, &base.key);
    push(
        out,
        "benign (must verify)",
        "manifest re-serialised compactly, re-signed".into(),
        Change::Pair(mb, sb),
        Expect::Accept,
    );
    let (mb, sb) = signed(value, &base.key);
    push(
        out,
        "benign (must verify)",
        "manifest re-serialised with sorted keys, re-signed".into(),
        Change::Pair(mb, sb),
        Expect::Accept,
    );
}

/// Applies variants to the base image in place, verifies, and restores.
pub struct Runner<'a> {
    base: &'a Base,
    file: File,
    size: u64,
    /// The image's data extents as built, to restore a truncation.
    extents: Vec<(u64, Vec<u8>)>,
    policy: Policy,
    variant_manifest: PathBuf,
}

impl<'a> Runner<'a> {
    pub fn new(base: &'a Base) -> Result<Runner<'a>, HostileError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&base.image)
            .map_err(io_err(&base.image))?;
        let size = file.metadata().map_err(io_err(&base.image))?.len();
        let extents = data_extents(&file, size).map_err(io_err(&base.image))?;
        let state = base.work.join(STATE_FILE);
        let _ = std::fs::remove_file(&state);
        Ok(Runner {
            base,
            file,
            size,
            extents,
            policy: Policy {
                state,
                allow_downgrade: false,
            },
            variant_manifest: base.work.join("variant.manifest.json"),
        })
    }

    /// The rollback state the runner verifies with.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Verifies the untouched base (which records its version in the runner's state).
    pub fn control(&self) -> Outcome {
        self.verify(&self.base.manifest, &self.base.public())
    }

    fn verify(&self, manifest: &Path, key: &VerifyingKey) -> Outcome {
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            crate::rollback::verify(&self.base.image, manifest, key, &self.policy)
        }));
        match r {
            Ok(Ok(_)) => Outcome::Accepted,
            Ok(Err(e)) => Outcome::Rejected(e.kind()),
            Err(p) => Outcome::Panicked(
                p.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default(),
            ),
        }
    }

    fn write_variant(&self, manifest: &[u8], sig: &[u8]) -> Result<(), HostileError> {
        std::fs::write(&self.variant_manifest, manifest).map_err(io_err(&self.variant_manifest))?;
        let s = signature_path(&self.variant_manifest);
        std::fs::write(&s, sig).map_err(io_err(&s))
    }

    /// Applies `v`, verifies, restores the image.
    pub fn run(&self, v: &Variant) -> Result<Outcome, HostileError> {
        let image = &self.base.image;
        let public = self.base.public();
        let base_sig = || {
            let p = signature_path(&self.base.manifest);
            std::fs::read(&p).map_err(io_err(&p))
        };
        let base_manifest = || std::fs::read(&self.base.manifest).map_err(io_err(&self.base.manifest));
        Ok(match &v.change {
            Change::ImageXor { at, mask } => {
                let mut b = [0u8; 1];
                self.file.read_exact_at(&mut b, *at).map_err(io_err(image))?;
                self.file
                    .write_all_at(&[b[0] ^ mask], *at)
                    .map_err(io_err(image))?;
                let o = self.verify(&self.base.manifest, &public);
                self.file.write_all_at(&b, *at).map_err(io_err(image))?;
                o
            }
            Change::ImageLength(len) => {
                self.file.set_len(*len).map_err(io_err(image))?;
                let o = self.verify(&self.base.manifest, &public);
                self.file.set_len(self.size).map_err(io_err(image))?;
                for (start, data) in &self.extents {
                    let end = start + data.len() as u64;
                    if end > *len {
                        let from = (*len).max(*start);
                        let skip = (from - start) as usize;
                        self.file
                            .write_all_at(&data[skip..], from)
                            .map_err(io_err(image))?;
                    }
                }
                o
            }
            Change::Manifest(m) => {
                self.write_variant(m, &base_sig()?)?;
                self.verify(&self.variant_manifest, &public)
            }
            Change::Signature(s) => {
                self.write_variant(&base_manifest()?, s)?;
                self.verify(&self.variant_manifest, &public)
            }
            Change::Pair(m, s) => {
                self.write_variant(m, s)?;
                self.verify(&self.variant_manifest, &public)
            }
            Change::Key(k) => self.verify(&self.base.manifest, k),
            Change::Missing(part) => {
                self.write_variant(&base_manifest()?, &base_sig()?)?;
                let (gone, manifest) = match part {
                    Part::Manifest => (self.variant_manifest.clone(), &self.variant_manifest),
                    Part::Signature => (signature_path(&self.variant_manifest), &self.variant_manifest),
                    Part::Image => {
                        let moved = self.base.work.join("moved.raw");
                        std::fs::rename(image, &moved).map_err(io_err(image))?;
                        let o = self.verify(&self.base.manifest, &public);
                        std::fs::rename(&moved, image).map_err(io_err(image))?;
                        return Ok(o);
                    }
                };
                std::fs::remove_file(&gone).map_err(io_err(&gone))?;
                self.verify(manifest, &public)
            }
        })
    }
}

/// The file's data extents (`SEEK_DATA`/`SEEK_HOLE`) and their bytes.
fn data_extents(file: &File, size: u64) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(at)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data))?.min(size);
        let mut buf = vec![0u8; (hole - data) as usize];
        file.read_exact_at(&mut buf, data)?;
        out.push((data, buf));
        at = hole;
    }
    Ok(out)
}

/// One variant's result.
#[derive(Debug, Clone)]
pub struct Checked {
    pub variant: Variant,
    pub outcome: Outcome,
    /// Applying, verifying and restoring.
    pub elapsed: Duration,
}

/// The whole run: every variant's outcome, the controls, the time.
#[derive(Debug)]
pub struct Report {
    pub seed: u64,
    pub results: Vec<Checked>,
    /// The untouched image before and after the corpus.
    pub control_before: Outcome,
    pub control_after: Outcome,
    pub elapsed: Duration,
}

/// Makes the corpus for `seed` and runs every variant against the base.
pub fn run(base: &Base, seed: u64) -> Result<Report, HostileError> {
    let started = Instant::now();
    let variants = corpus(base, seed)?;
    let runner = Runner::new(base)?;
    let control_before = runner.control();
    if control_before != Outcome::Accepted {
        return Err(HostileError::Control(format!("{control_before:?}")));
    }
    let mut results = Vec::with_capacity(variants.len());
    for variant in variants {
        let t = Instant::now();
        let outcome = runner.run(&variant)?;
        results.push(Checked {
            variant,
            outcome,
            elapsed: t.elapsed(),
        });
    }
    let control_after = runner.control();
    Ok(Report {
        seed,
        results,
        control_before,
        control_after,
        elapsed: started.elapsed(),
    })
}

impl Report {
    /// Variants whose outcome is not the expected one.
    pub fn unexpected(&self) -> Vec<&Checked> {
        self.results
            .iter()
            .filter(|r| !r.outcome.matches(r.variant.expect))
            .collect()
    }

    /// Variants that must be refused and were accepted.
    pub fn wrongly_accepted(&self) -> usize {
        self.results
            .iter()
            .filter(|r| r.outcome == Outcome::Accepted && r.variant.expect != Expect::Accept)
            .count()
    }

    pub fn panicked(&self) -> usize {
        self.results
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::Panicked(_)))
            .count()
    }

    /// Mutation class × count × outcome (the error kind, or ACCEPTED), in corpus order.
    pub fn table(&self) -> String {
        type Row = (&'static str, BTreeMap<String, usize>, Duration);
        let mut rows: Vec<Row> = Vec::new();
        for r in &self.results {
            let i = match rows.iter().position(|(c, _, _)| *c == r.variant.class) {
                Some(i) => i,
                None => {
                    rows.push((r.variant.class, BTreeMap::new(), Duration::ZERO));
                    rows.len() - 1
                }
            };
            *rows[i].1.entry(r.outcome.label()).or_default() += 1;
            rows[i].2 += r.elapsed;
        }
        let mut s = format!(
            "hostile images: seed {:#x}, {} variants, {:.1} s\n{:<32} {:>6} {:>8}  outcome (error kind × count)\n",
            self.seed,
            self.results.len(),
            self.elapsed.as_secs_f64(),
            "mutation class",
            "count",
            "ms each"
        );
        for (class, kinds, time) in &rows {
            let count: usize = kinds.values().sum();
            let each = time.as_secs_f64() * 1e3 / count.max(1) as f64;
            let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            s += &format!("{class:<32} {count:>6} {each:>8.1}  {}\n", kinds.join(", "));
        }
        s += &format!(
            "{:<32} {:>6} {:>8}  wrongly accepted {}, panicked {}, other than expected {}\n",
            "total",
            self.results.len(),
            "",
            self.wrongly_accepted(),
            self.panicked(),
            self.unexpected().len()
        );
        s
    }
}
