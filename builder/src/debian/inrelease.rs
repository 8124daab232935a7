//! An archive's `InRelease`: checking its OpenPGP clear signature and reading its index list.
//!
//! `InRelease` is the root of trust of a Debian archive: it lists the sha256 and size of every index
//! (`main/binary-amd64/Packages.xz` …), and each index lists the sha256 of every package. We accept it
//! when at least one of its signatures verifies against a key of the keyring the profile names
//! (the keyrings we ship are in `keyrings/`). Subkeys count only with a valid binding signature from
//! their primary key (including the back-signature signing subkeys must carry); revoked keys and
//! subkeys are ignored. Only the signed text is parsed afterwards, never bytes around the signature.
//!
//! We also insist that the file describes the suite that was asked for (`Suite` or `Codename`), so an
//! archive cannot answer `bookworm` with another suite's correctly signed `InRelease`.
//!
//! Limits: key and signature expiry times and `Valid-Until` are not enforced (the lock file pins
//! every result by sha256, and `ingot lock` is run by a person who reviews the diff); a keyring file
//! is either binary OpenPGP (any number of keys) or a single ASCII-armored block.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use pgp::composed::{CleartextSignedMessage, PublicOrSecret, SignedPublicKey};
use pgp::packet::SignatureType;

use super::deb822::{self, Deb822Error};
use crate::fetch::Sha256;

/// Public keys trusted to sign archives.
#[derive(Debug, Clone)]
pub struct Keyring {
    path: PathBuf,
    keys: Vec<SignedPublicKey>,
}

/// One line of `InRelease`'s `SHA256` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    /// Relative to `dists/<suite>/`, e.g. `main/binary-amd64/Packages.xz`.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// The file's sha256.
    pub sha256: Sha256,
}

/// What we use from a verified `InRelease`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// `Suite:` (e.g. `stable`, `oldstable`).
    pub suite: Option<String>,
    /// `Codename:` (e.g. `bookworm`).
    pub codename: Option<String>,
    /// `Date:`, as written.
    pub date: Option<String>,
    /// `Acquire-By-Hash: yes`: indices are also served at `…/by-hash/SHA256/<hex>`, which cannot
    /// change under us while the archive updates.
    pub acquire_by_hash: bool,
    /// The `SHA256:` list.
    pub files: Vec<IndexFile>,
}

/// Errors reading keyrings and checking `InRelease`.
#[derive(Debug, thiserror::Error)]
pub enum InReleaseError {
    /// The keyring file could not be read.
    #[error("cannot read keyring {}", path.display())]
    KeyringRead { path: PathBuf, source: std::io::Error },
    /// The keyring file is not OpenPGP key material.
    #[error("keyring {} does not parse as OpenPGP public keys", path.display())]
    KeyringParse {
        path: PathBuf,
        source: pgp::errors::Error,
    },
    /// The keyring parsed but holds no public key.
    #[error("keyring {} holds no public key", path.display())]
    EmptyKeyring { path: PathBuf },
    /// The file is not a clear-signed message.
    #[error("{url} is not an OpenPGP clear-signed message")]
    NotSigned { url: String, source: pgp::errors::Error },
    /// No signature verifies with a key of the keyring.
    #[error(
        "{url}: no valid signature by a key in {} (signed by {issuers}); the file was altered, or the \
         archive uses a key this keyring lacks (see keyrings/README.md)",
        keyring.display()
    )]
    BadSignature {
        url: String,
        keyring: PathBuf,
        issuers: String,
    },
    /// The signed text is not deb822.
    #[error("{url}: the signed text does not parse")]
    Parse { url: String, source: Deb822Error },
    /// A field is malformed.
    #[error("{url}: field {field}: {reason}")]
    Field {
        url: String,
        field: &'static str,
        reason: String,
    },
    /// The file is for another suite.
    #[error("{url} describes suite {found}, not {wanted}")]
    WrongSuite {
        url: String,
        wanted: String,
        found: String,
    },
}

impl Keyring {
    /// Loads a binary or ASCII-armored keyring file.
    pub fn load(path: &Path) -> Result<Self, InReleaseError> {
        let bytes = std::fs::read(path).map_err(|source| InReleaseError::KeyringRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_bytes(path, &bytes)
    }

    /// Parses keyring bytes; `path` is only used in messages.
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, InReleaseError> {
        let parse_err = |source| InReleaseError::KeyringParse {
            path: path.to_owned(),
            source,
        };
        let (items, _) = PublicOrSecret::from_reader_many(bytes).map_err(parse_err)?;
        let mut keys = Vec::new();
        for item in items {
            match item.map_err(parse_err)? {
                PublicOrSecret::Public(key) => keys.push(key),
                PublicOrSecret::Secret(key) => keys.push(key.to_public_key()),
            }
        }
        if keys.is_empty() {
            return Err(InReleaseError::EmptyKeyring {
                path: path.to_owned(),
            });
        }
        Ok(Self {
            path: path.to_owned(),
            keys,
        })
    }

    /// The primary keys' fingerprints, upper-case hex.
    pub fn fingerprints(&self) -> Vec<String> {
        use pgp::types::KeyDetails;
        self.keys
            .iter()
            .map(|k| format!("{:X}", k.fingerprint()))
            .collect()
    }

    /// The file the keys came from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keys that may have made a signature: unrevoked primaries and their properly bound, unrevoked
    /// signing subkeys.
    fn verifying_keys(&self) -> Vec<VerifyingKey<'_>> {
        let mut out = Vec::new();
        for key in &self.keys {
            if !key.details.revocation_signatures.is_empty() {
                continue;
            }
            out.push(VerifyingKey::Primary(&key.primary_key));
            for sub in &key.public_subkeys {
                let revoked = sub
                    .signatures
                    .iter()
                    .any(|s| s.typ() == Some(SignatureType::SubkeyRevocation));
                let signs = sub.signatures.iter().any(|s| s.key_flags().sign());
                if !revoked && signs && sub.verify_bindings(&key.primary_key).is_ok() {
                    out.push(VerifyingKey::Sub(&sub.key));
                }
            }
        }
        out
    }
}

enum VerifyingKey<'a> {
    Primary(&'a pgp::packet::PublicKey),
    Sub(&'a pgp::packet::PublicSubkey),
}

/// Checks the clear signature of an `InRelease` and returns its signed text with `\n` line ends.
pub fn verify(url: &str, bytes: &[u8], keyring: &Keyring) -> Result<String, InReleaseError> {
    let (message, _) =
        CleartextSignedMessage::from_armor(bytes).map_err(|source| InReleaseError::NotSigned {
            url: url.to_owned(),
            source,
        })?;
    let verified = keyring.verifying_keys().into_iter().any(|key| match key {
        VerifyingKey::Primary(k) => message.verify(k).is_ok(),
        VerifyingKey::Sub(k) => message.verify(k).is_ok(),
    });
    if !verified {
        let mut issuers = String::new();
        for sig in message.signatures() {
            let fingerprints = sig.issuer_fingerprint();
            let ids = sig.issuer_key_id();
            let who = match (fingerprints.first(), ids.first()) {
                (Some(fp), _) => format!("{fp:X}"),
                (None, Some(id)) => id.to_string().to_uppercase(),
                (None, None) => "an unnamed key".to_owned(),
            };
            if !issuers.is_empty() {
                issuers.push_str(", ");
            }
            let _ = write!(issuers, "{who}");
        }
        if issuers.is_empty() {
            issuers.push_str("nobody");
        }
        return Err(InReleaseError::BadSignature {
            url: url.to_owned(),
            keyring: keyring.path.clone(),
            issuers,
        });
    }
    Ok(message.signed_text().replace("\r\n", "\n"))
}

/// Reads the fields we use from a verified `InRelease` text and checks it is for `suite`.
pub fn parse_release(url: &str, text: &str, suite: &str) -> Result<Release, InReleaseError> {
    let stanza = deb822::parse_one(text).map_err(|source| InReleaseError::Parse {
        url: url.to_owned(),
        source,
    })?;
    let field = |name| stanza.get(name).map(str::to_owned);
    let release = Release {
        suite: field("Suite"),
        codename: field("Codename"),
        date: field("Date"),
        acquire_by_hash: stanza
            .get("Acquire-By-Hash")
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        files: parse_sha256_list(url, stanza.get("SHA256").unwrap_or(""))?,
    };
    if release.suite.as_deref() != Some(suite) && release.codename.as_deref() != Some(suite) {
        return Err(InReleaseError::WrongSuite {
            url: url.to_owned(),
            wanted: suite.to_owned(),
            found: format!(
                "{} ({})",
                release.codename.as_deref().unwrap_or("?"),
                release.suite.as_deref().unwrap_or("?")
            ),
        });
    }
    if release.files.is_empty() {
        return Err(InReleaseError::Field {
            url: url.to_owned(),
            field: "SHA256",
            reason: "missing or empty".to_owned(),
        });
    }
    Ok(release)
}

fn parse_sha256_list(url: &str, value: &str) -> Result<Vec<IndexFile>, InReleaseError> {
    let bad = |reason: String| InReleaseError::Field {
        url: url.to_owned(),
        field: "SHA256",
        reason,
    };
    let mut files = Vec::new();
    for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [hash, size, path] = parts[..] else {
            return Err(bad(format!("line {line:?} is not `<sha256> <size> <path>`")));
        };
        files.push(IndexFile {
            path: path.to_owned(),
            size: size
                .parse()
                .map_err(|_| bad(format!("size {size:?} of {path} is not a number")))?,
            sha256: hash.parse().map_err(|e| bad(format!("{path}: {e}")))?,
        });
    }
    Ok(files)
}

impl Release {
    /// The entry for `path` (relative to `dists/<suite>/`), if listed.
    pub fn file(&self, path: &str) -> Option<&IndexFile> {
        self.files.iter().find(|f| f.path == path)
    }
}
