//! Image signing keys and manifest signatures: Ed25519, in small versioned text files.
//!
//! ```text
//! ingot.key  (mode 0600)          ingot.pub                       x.manifest.json.sig
//! ingot-key v1 ed25519 private    ingot-key v1 ed25519 public     ingot-signature v1 ed25519 <key id>
//! <base64 of the 32-byte seed>    <base64 of the 32-byte key>     <base64 of the 64-byte signature>
//! ```
//!
//! A signature covers the manifest file's exact bytes. The key id is the first 8 bytes of the public key's
//! sha256, in hex: it names which key signed, so `verify` can say "signed by another key" rather than only
//! "bad signature". Verification is `verify_strict` (no malleable or small-order signatures).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

pub const PRIVATE_HEADER: &str = "ingot-key v1 ed25519 private";
pub const PUBLIC_HEADER: &str = "ingot-key v1 ed25519 public";
pub const SIGNATURE_HEADER: &str = "ingot-signature v1 ed25519";

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: line 1 is not `{expected}`; is this an ingot key of that kind?")]
    Header { path: PathBuf, expected: &'static str },
    #[error("{path}: line 2 is not the base64 of a 32-byte key")]
    Body { path: PathBuf },
    #[error("{path} already exists; remove it or choose another --out")]
    Exists { path: PathBuf },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the system random number generator failed")]
    Random(#[source] std::io::Error),
}

/// Why a signature did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature file is malformed: {0}")]
    Malformed(String),
    #[error("signed by key {signed_by}, not by the given key {expected}")]
    OtherKey { signed_by: String, expected: String },
    #[error("the signature does not match the manifest's bytes (key {0})")]
    Mismatch(String),
}

/// The first 8 bytes of the public key's sha256, in hex.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

/// Makes a key pair: `<out>.key` (0600, never over an existing file) and `<out>.pub`.
pub fn keygen(out: &Path) -> Result<(PathBuf, PathBuf, String), KeyError> {
    let private = with_suffix(out, "key");
    let public = with_suffix(out, "pub");
    for p in [&private, &public] {
        if p.exists() {
            return Err(KeyError::Exists { path: p.clone() });
        }
    }
    let mut seed = [0u8; 32];
    fill_random(&mut seed)?;
    let key = SigningKey::from_bytes(&seed);
    let verifying = key.verifying_key();
    write_new(
        &private,
        &format!("{PRIVATE_HEADER}\n{}\n", B64.encode(seed)),
        0o600,
    )?;
    write_new(
        &public,
        &format!("{PUBLIC_HEADER}\n{}\n", B64.encode(verifying.as_bytes())),
        0o644,
    )?;
    Ok((private, public, key_id(&verifying)))
}

fn fill_random(buf: &mut [u8]) -> Result<(), KeyError> {
    getrandom_exact(buf).map_err(KeyError::Random)
}

/// Fills `buf` from the kernel's random source, looping over short reads.
pub(crate) fn getrandom_exact(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        filled += rustix::rand::getrandom(&mut buf[filled..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(())
}

fn with_suffix(out: &Path, ext: &str) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".");
    s.push(ext);
    PathBuf::from(s)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}

fn read_key_body(path: &Path, header: &'static str) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_key_body(path, &text, header)
}

/// Line 1 `header`, line 2 the base64 of 32 bytes, nothing after but blank lines; `path` names the file in
/// errors.
fn parse_key_body(path: &Path, text: &str, header: &'static str) -> Result<[u8; 32], KeyError> {
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(KeyError::Header {
            path: path.to_path_buf(),
            expected: header,
        });
    }
    lines
        .next()
        .and_then(|l| B64.decode(l.trim()).ok())
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .filter(|_| lines.all(|l| l.trim().is_empty()))
        .ok_or_else(|| KeyError::Body {
            path: path.to_path_buf(),
        })
}

pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_key_body(path, PRIVATE_HEADER)?))
}

pub fn load_public_key(path: &Path) -> Result<VerifyingKey, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_public_key(path, &text)
}

/// A public key file's text (what [`keygen`] writes to `<out>.pub`); `path` names it in errors.
pub fn parse_public_key(path: &Path, text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = parse_key_body(path, text, PUBLIC_HEADER)?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::Body {
        path: path.to_path_buf(),
    })
}

/// The signature file's text for `message`.
pub fn sign(key: &SigningKey, message: &[u8]) -> String {
    let sig = key.sign(message);
    format!(
        "{SIGNATURE_HEADER} {}\n{}\n",
        key_id(&key.verifying_key()),
        B64.encode(sig.to_bytes())
    )
}

/// Checks `signature_file` (the text [`sign`] wrote) over `message` against `key`.
pub fn verify(key: &VerifyingKey, message: &[u8], signature_file: &[u8]) -> Result<(), SignatureError> {
    let malformed = |m: &str| SignatureError::Malformed(m.to_owned());
    let text = std::str::from_utf8(signature_file).map_err(|_| malformed("not text"))?;
    let mut lines = text.lines();
    let header = lines.next().ok_or_else(|| malformed("empty"))?;
    let signed_by = header
        .strip_prefix(SIGNATURE_HEADER)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or_else(|| malformed(&format!("line 1 does not start with `{SIGNATURE_HEADER} `")))?;
    if signed_by.len() != 16
        || !signed_by
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(malformed("the key id is not 16 lower-case hex digits"));
    }
    let bytes = lines
        .next()
        .and_then(|l| B64.decode(l.trim()).ok())
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .ok_or_else(|| malformed("line 2 is not the base64 of a 64-byte signature"))?;
    if !lines.all(|l| l.trim().is_empty()) {
        return Err(malformed("text after the signature"));
    }
    let expected = key_id(key);
    if signed_by != expected {
        return Err(SignatureError::OtherKey {
            signed_by: signed_by.to_owned(),
            expected,
        });
    }
    key.verify_strict(message, &Signature::from_bytes(&bytes))
        .map_err(|_| SignatureError::Mismatch(expected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_a_private_key_only_the_owner_reads_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt as _;
        let d = tempfile::tempdir().unwrap();
        let (private, public, id) = keygen(&d.path().join("ingot")).unwrap();
        assert_eq!(private.file_name().unwrap(), "ingot.key");
        assert_eq!(
            std::fs::metadata(&private).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let key = load_signing_key(&private).unwrap();
        let public = load_public_key(&public).unwrap();
        assert_eq!(key.verifying_key(), public);
        assert_eq!(key_id(&public), id);
        assert!(matches!(
            keygen(&d.path().join("ingot")),
            Err(KeyError::Exists { .. })
        ));
    }

    #[test]
    fn signatures_verify_and_every_change_is_named() {
        let d = tempfile::tempdir().unwrap();
        let (private, public, _) = keygen(&d.path().join("a")).unwrap();
        let (_, other, _) = keygen(&d.path().join("b")).unwrap();
        let key = load_signing_key(&private).unwrap();
        let public = load_public_key(&public).unwrap();
        let other = load_public_key(&other).unwrap();
        let sig = sign(&key, b"manifest");
        verify(&public, b"manifest", sig.as_bytes()).unwrap();
        assert!(matches!(
            verify(&public, b"manifesT", sig.as_bytes()),
            Err(SignatureError::Mismatch(_))
        ));
        assert!(matches!(
            verify(&other, b"manifest", sig.as_bytes()),
            Err(SignatureError::OtherKey { .. })
        ));
        let mut flipped = sig.clone().into_bytes();
        let at = flipped.len() - 10;
        flipped[at] = if flipped[at] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            verify(&public, b"manifest", &flipped),
            Err(SignatureError::Mismatch(_))
        ));
        for bad in [
            "",
            "ingot-signature v1 ed25519\n",
            "x\ny\n",
            &format!("{sig}extra\n"),
        ] {
            assert!(
                matches!(
                    verify(&public, b"manifest", bad.as_bytes()),
                    Err(SignatureError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_files_of_the_wrong_kind_or_shape_are_named() {
        let d = tempfile::tempdir().unwrap();
        let (private, public, _) = keygen(&d.path().join("k")).unwrap();
        assert!(
            load_public_key(&private)
                .unwrap_err()
                .to_string()
                .contains("line 1 is not `ingot-key v1 ed25519 public`")
        );
        assert!(matches!(load_signing_key(&public), Err(KeyError::Header { .. })));
        let bad = d.path().join("bad.pub");
        std::fs::write(&bad, format!("{PUBLIC_HEADER}\nAAAA\n")).unwrap();
        assert!(
            load_public_key(&bad)
                .unwrap_err()
                .to_string()
                .contains("line 2 is not the base64 of a 32-byte key")
        );
    }
}
