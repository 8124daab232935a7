//! Secure Boot with the owner's own keys: the key set (`ingot keygen --secure-boot`), Authenticode
//! signatures on the EFI binaries an image boots (`ingot build --secure-boot-key`), a firmware variable
//! store with the keys enrolled (`ingot run --secure-boot`), and reading signatures back (`ingot inspect`).
//!
//! # The key set
//!
//! ```text
//! DIR/PK.key   KEK.key   db.key    RSA-2048 private key, PEM "PRIVATE KEY" (PKCS#8, unencrypted), mode 0600
//! DIR/PK.crt   KEK.crt   db.crt    self-signed X.509 v3 certificate, PEM "CERTIFICATE"
//! DIR/PK.cer   KEK.cer   db.cer    the same certificate, DER
//! DIR/owner-guid.txt               the owner's EFI GUID (random), one line: the signature owner of the
//!                                  PK, KEK and db entries when they are enrolled
//! ```
//!
//! Certificates: subject and issuer `CN=ingot <name> <PK|KEK|db>`, SHA-256 with RSA, a random 128-bit
//! serial, valid from their creation for [`VALIDITY_YEARS`] years (firmware does not check the time),
//! basicConstraints CA:TRUE and a subject key identifier. RSA-2048 with SHA-256 is what OVMF and most
//! firmware verify. PK (platform key) owns the variable store, KEK (key exchange key) may change db, and
//! db (the signature database) is what boot binaries are checked against: images are signed with db.
//! Each file is written to a temp file, synced, and renamed into place; existing files are kept unless
//! `force`.
//!
//! # Signatures
//!
//! [`Signer::sign_pe`] appends a PKCS#7 SignedData to a PE image as Authenticode does: the file is padded
//! to 8 bytes, its Authenticode SHA-256 digest (headers without the checksum and the security directory
//! entry, sections by file offset, trailing data) goes into an `SpcIndirectDataContent`
//! (1.3.6.1.4.1.311.2.1.4) signed with RSA PKCS#1 v1.5 over the signed attributes contentType and
//! messageDigest only: no signing time, so the same key and input give the same bytes. The SignedData
//! (version 1, the db certificate included) goes into a `WIN_CERTIFICATE` (revision 0x0200, type
//! PKCS_SIGNED_DATA) at the end of the file, padded to 8 bytes, and the security data directory points
//! at it. The PE checksum is left as it is: UEFI does not check it and it is outside the digest. An
//! input that already carries a certificate table is refused.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use authenticode::{
    AttributeCertificateIterator, AuthenticodeSignature, DigestInfo, PeTrait, SPC_INDIRECT_DATA_OBJID,
    SpcAttributeTypeAndOptionalValue, SpcIndirectDataContent, WIN_CERT_REVISION_2_0,
    WIN_CERT_TYPE_PKCS_SIGNED_DATA,
};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use object_pe::read::pe::PeFile64;
use rsa::pkcs1v15;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
use rsa::sha2::{Digest as _, Sha256};
use rsa::signature::{SignatureEncoding as _, Signer as _, Verifier as _};
use rsa::{RsaPrivateKey, RsaPublicKey};
use x509_cert::Certificate;
use x509_cert::builder::{Builder as _, CertificateBuilder, Profile};
use x509_cert::der::asn1::{Any, OctetString, SetOfVec};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::oid::db::{rfc5911, rfc5912};
use x509_cert::der::referenced::OwnedToRef as _;
use x509_cert::der::{Decode as _, DecodePem as _, Encode as _, EncodePem as _};
use x509_cert::ext::pkix::{BasicConstraints, SubjectKeyIdentifier};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::Validity;

/// The keys of a set, in the order the firmware trusts them: platform key, key exchange key, signature
/// database.
pub const KEY_NAMES: [&str; 3] = ["PK", "KEK", "db"];
/// The key that signs boot binaries.
pub const SIGNING_KEY: &str = "db";
/// The file holding the owner's EFI GUID.
pub const OWNER_GUID_FILE: &str = "owner-guid.txt";
/// How long the certificates are valid.
pub const VALIDITY_YEARS: u64 = 30;
const RSA_BITS: usize = 2048;

/// `SpcPeImageData` (1.3.6.1.4.1.311.2.1.15): what the indirect data describes, a PE image.
const SPC_PE_IMAGE_DATA_OBJID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
/// `SpcPeImageData { flags: '' (no bits), file: SpcLink [2] file SpcString [0] unicode "<<<Obsolete>>>" }`,
/// the constant every Authenticode signer writes.
const SPC_PE_IMAGE_DATA: [u8; 39] = [
    0x30, 0x25, 0x03, 0x01, 0x00, 0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, 0x00, b'<', 0x00, b'<', 0x00, b'<',
    0x00, b'O', 0x00, b'b', 0x00, b's', 0x00, b'o', 0x00, b'l', 0x00, b'e', 0x00, b't', 0x00, b'e', 0x00,
    b'>', 0x00, b'>', 0x00, b'>',
];
/// Index of the certificate table in the data directories.
const SECURITY_DIRECTORY: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum SecureBootError {
    #[error("{path} already exists; pass --force to replace the key set, or choose another --out")]
    Exists { path: PathBuf },
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("generating an RSA-{RSA_BITS} key")]
    Generate(#[source] rsa::Error),
    #[error("making the {name} certificate: {reason}")]
    Certificate { name: String, reason: String },
    #[error(
        "{path}: expected an RSA private key in PEM PKCS#8 (\"BEGIN PRIVATE KEY\"), as `ingot keygen --secure-boot` writes: {reason}"
    )]
    KeyFormat { path: PathBuf, reason: String },
    #[error("{path}: expected a PEM X.509 certificate (\"BEGIN CERTIFICATE\"): {reason}")]
    CertificateFormat { path: PathBuf, reason: String },
    #[error("{cert} is not the certificate of {key}: their public keys differ")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("{path}: expected one line holding the owner's GUID")]
    OwnerGuid { path: PathBuf },
    #[error("the system random number generator failed")]
    Random(#[source] std::io::Error),
    #[error("{what}: not a PE32+ image that can be signed: {reason}")]
    NotPe { what: String, reason: String },
    #[error(
        "{what} is already signed (certificate table at byte offset {offset:#x}, {size} bytes): expected an unsigned binary"
    )]
    AlreadySigned { what: String, offset: u32, size: u32 },
    #[error("{what}: the image is larger than 4 GiB, beyond what a certificate table can follow")]
    TooLarge { what: String },
    #[error("encoding the signature: {0}")]
    Encode(String),
    #[error(
        "{} (it enrolls the keys into the firmware's variable store)",
        ingot_spec::host_tools::missing_message("virt-fw-vars")
    )]
    NoVirtFwVars,
    #[error("running virt-fw-vars")]
    RunVirtFwVars(#[source] std::io::Error),
    #[error("virt-fw-vars failed ({status}) enrolling {dir}: {stderr}")]
    VirtFwVars {
        dir: PathBuf,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

type Result<T, E = SecureBootError> = std::result::Result<T, E>;

/// The files of one key of a set: `DIR/<name>.key`, `.crt`, `.cer`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    pub key: PathBuf,
    pub pem: PathBuf,
    pub der: PathBuf,
}

impl KeyFiles {
    /// The files named by a path prefix (`DIR/db` → `DIR/db.key`, `DIR/db.crt`, `DIR/db.cer`).
    pub fn at(prefix: &Path) -> KeyFiles {
        let with = |ext: &str| {
            let mut s = prefix.as_os_str().to_owned();
            s.push(".");
            s.push(ext);
            PathBuf::from(s)
        };
        KeyFiles {
            key: with("key"),
            pem: with("crt"),
            der: with("cer"),
        }
    }
}

/// What [`keygen`] made.
#[derive(Debug)]
pub struct KeySet {
    pub dir: PathBuf,
    pub owner_guid: uuid::Uuid,
    /// (name, subject, files) per key, in [`KEY_NAMES`] order.
    pub keys: Vec<(&'static str, String, KeyFiles)>,
}

/// The certificate subject of key `name` (`PK`, `KEK`, `db`) of the set called `set_name`.
pub fn subject(set_name: &str, name: &str) -> String {
    // RFC 4514 escaping of the characters that would end or split the common name.
    let mut escaped = String::new();
    for (i, c) in set_name.chars().enumerate() {
        if matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=') || (i == 0 && matches!(c, '#' | ' ')) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    format!("CN=ingot {escaped} {name}")
}

fn random_bytes(buf: &mut [u8]) -> Result<()> {
    crate::signing::getrandom_exact(buf).map_err(SecureBootError::Random)
}

/// Makes a key set in `dir` (created with mode 0700 if missing): PK, KEK and db, each an RSA-2048 key and
/// a self-signed certificate with subject `CN=ingot <set_name> <key>`, and a random owner GUID. Without
/// `force`, nothing is written when any of the files exists.
pub fn keygen(dir: &Path, set_name: &str, force: bool) -> Result<KeySet> {
    let files: Vec<KeyFiles> = KEY_NAMES.iter().map(|n| KeyFiles::at(&dir.join(n))).collect();
    let guid_path = dir.join(OWNER_GUID_FILE);
    if !force {
        let all = files.iter().flat_map(|f| [&f.key, &f.pem, &f.der]);
        if let Some(p) = all.chain([&guid_path]).find(|p| p.exists()) {
            return Err(SecureBootError::Exists { path: p.clone() });
        }
    }
    if !dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| SecureBootError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    let mut guid = [0u8; 16];
    random_bytes(&mut guid)?;
    let owner_guid = uuid::Builder::from_random_bytes(guid).into_uuid();
    // Everything is made before the first file is written, so a failure leaves no half-new set.
    let mut made = Vec::new();
    for name in KEY_NAMES {
        let key =
            RsaPrivateKey::new(&mut rsa::rand_core::OsRng, RSA_BITS).map_err(SecureBootError::Generate)?;
        let subject = subject(set_name, name);
        let cert = self_signed(&key, &subject, name)?;
        let err = |what: &str, e: &dyn std::fmt::Display| SecureBootError::Certificate {
            name: name.to_string(),
            reason: format!("encoding the {what}: {e}"),
        };
        let key_pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| err("private key", &e))?;
        let cert_pem = cert.to_pem(LineEnding::LF).map_err(|e| err("certificate", &e))?;
        let cert_der = cert.to_der().map_err(|e| err("certificate", &e))?;
        made.push((name, subject, key_pem, cert_pem, cert_der));
    }
    let mut keys = Vec::new();
    for ((name, subject, key_pem, cert_pem, cert_der), f) in made.into_iter().zip(files) {
        write_file(&f.key, key_pem.as_bytes(), 0o600, force)?;
        write_file(&f.pem, cert_pem.as_bytes(), 0o644, force)?;
        write_file(&f.der, &cert_der, 0o644, force)?;
        keys.push((name, subject, f));
    }
    write_file(&guid_path, format!("{owner_guid}\n").as_bytes(), 0o644, force)?;
    Ok(KeySet {
        dir: dir.to_path_buf(),
        owner_guid,
        keys,
    })
}

fn self_signed(key: &RsaPrivateKey, subject: &str, name: &str) -> Result<Certificate> {
    let err = |reason: String| SecureBootError::Certificate {
        name: name.to_string(),
        reason,
    };
    let signer = pkcs1v15::SigningKey::<Sha256>::new(key.clone());
    let spki = SubjectPublicKeyInfoOwned::from_key(key.to_public_key()).map_err(|e| err(e.to_string()))?;
    let mut serial = [0u8; 16];
    random_bytes(&mut serial)?;
    serial[0] &= 0x7f; // positive
    serial[0] |= 0x40; // and 16 bytes long in DER
    let serial = SerialNumber::new(&serial).map_err(|e| err(e.to_string()))?;
    let validity = Validity::from_now(Duration::from_secs(
        VALIDITY_YEARS * 365 * 86_400 + VALIDITY_YEARS / 4 * 86_400,
    ))
    .map_err(|e| err(e.to_string()))?;
    let subject: Name = subject
        .parse()
        .map_err(|e: x509_cert::der::Error| err(e.to_string()))?;
    let mut builder = CertificateBuilder::new(
        Profile::Manual { issuer: None },
        serial,
        validity,
        subject,
        spki,
        &signer,
    )
    .map_err(|e| err(e.to_string()))?;
    builder
        .add_extension(&BasicConstraints {
            ca: true,
            path_len_constraint: None,
        })
        .map_err(|e| err(e.to_string()))?;
    let ski = SubjectKeyIdentifier::try_from(
        SubjectPublicKeyInfoOwned::from_key(key.to_public_key())
            .map_err(|e| err(e.to_string()))?
            .owned_to_ref(),
    )
    .map_err(|e| err(e.to_string()))?;
    builder.add_extension(&ski).map_err(|e| err(e.to_string()))?;
    builder
        .build::<pkcs1v15::Signature>()
        .map_err(|e| err(e.to_string()))
}

/// Writes `bytes` to `path` through a synced temp file in the same directory, then renames it into
/// place: over an existing file only with `force`.
fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<()> {
    let err = |source| SecureBootError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(bytes).map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    // The mode given at creation is filtered by the umask; set it exactly.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    if force {
        tmp.persist(path).map_err(|e| err(e.error))?;
    } else {
        tmp.persist_noclobber(path).map_err(|e| {
            if e.error.kind() == std::io::ErrorKind::AlreadyExists {
                SecureBootError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                err(e.error)
            }
        })?;
    }
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)
}

/// The owner GUID of a key set.
pub fn owner_guid(dir: &Path) -> Result<uuid::Uuid> {
    let path = dir.join(OWNER_GUID_FILE);
    let text = fs::read_to_string(&path).map_err(|source| SecureBootError::Read {
        path: path.clone(),
        source,
    })?;
    text.trim()
        .parse()
        .map_err(|_| SecureBootError::OwnerGuid { path })
}

fn read_certificate(path: &Path) -> Result<Certificate> {
    let pem = fs::read(path).map_err(|source| SecureBootError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    Certificate::from_pem(&pem).map_err(|e| SecureBootError::CertificateFormat {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A db key that signs boot binaries.
pub struct Signer {
    key: pkcs1v15::SigningKey<Sha256>,
    cert: Certificate,
    cert_der: Vec<u8>,
    subject: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads a signing key: `path` is the path prefix of the key (`DIR/db` → `DIR/db.key` + `DIR/db.crt`)
    /// or a key set directory (its `db`). The certificate must hold the key's public half.
    pub fn load(path: &Path) -> Result<Signer> {
        let prefix = if path.is_dir() {
            path.join(SIGNING_KEY)
        } else {
            path.to_path_buf()
        };
        let files = KeyFiles::at(&prefix);
        let pem = fs::read_to_string(&files.key).map_err(|source| SecureBootError::Read {
            path: files.key.clone(),
            source,
        })?;
        let key = RsaPrivateKey::from_pkcs8_pem(&pem).map_err(|e| SecureBootError::KeyFormat {
            path: files.key.clone(),
            reason: e.to_string(),
        })?;
        let cert = read_certificate(&files.pem)?;
        let public = key
            .to_public_key()
            .to_public_key_der()
            .map_err(|e| SecureBootError::Encode(e.to_string()))?;
        let in_cert = cert
            .tbs_certificate
            .subject_public_key_info
            .to_der()
            .map_err(|e| SecureBootError::Encode(e.to_string()))?;
        if public.as_bytes() != in_cert.as_slice() {
            return Err(SecureBootError::KeyMismatch {
                key: files.key,
                cert: files.pem,
            });
        }
        let cert_der = cert
            .to_der()
            .map_err(|e| SecureBootError::Encode(e.to_string()))?;
        Ok(Signer {
            key: pkcs1v15::SigningKey::new(key),
            subject: cert.tbs_certificate.subject.to_string(),
            cert,
            cert_der,
        })
    }

    /// The certificate's DER bytes (what the firmware's db holds).
    pub fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The certificate's subject, e.g. `CN=ingot lab db`.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Signs systemd-boot and the UKI in place.
    pub fn sign_boot(&self, uki: &mut Vec<u8>, boot_loader: &mut Vec<u8>) -> Result<()> {
        *uki = self.sign_pe(uki, "the UKI")?;
        *boot_loader = self.sign_pe(boot_loader, "systemd-boot")?;
        Ok(())
    }

    /// Returns `image` with an Authenticode signature appended (see the module docs). `what` names the
    /// image in errors.
    pub fn sign_pe(&self, image: &[u8], what: &str) -> Result<Vec<u8>> {
        let not_pe = |reason: String| SecureBootError::NotPe {
            what: what.to_string(),
            reason,
        };
        let mut out = image.to_vec();
        out.resize(image.len().next_multiple_of(8), 0);
        let (security_entry, digest) = {
            let pe = PeFile64::parse(out.as_slice()).map_err(|e| not_pe(e.to_string()))?;
            let dirs = pe.data_directories();
            if dirs.len() <= SECURITY_DIRECTORY {
                return Err(not_pe(format!(
                    "it has {} data directories, none for a certificate table",
                    dirs.len()
                )));
            }
            let offsets = pe.offsets().map_err(|e| not_pe(e.to_string()))?;
            let entry = offsets.security_data_dir;
            let field = |at: usize| u32::from_le_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
            let (offset, size) = (field(entry), field(entry + 4));
            if offset != 0 || size != 0 {
                return Err(SecureBootError::AlreadySigned {
                    what: what.to_string(),
                    offset,
                    size,
                });
            }
            let mut hasher = Sha256::new();
            authenticode::authenticode_digest(&pe, &mut hasher).map_err(|e| not_pe(e.to_string()))?;
            (entry, hasher.finalize())
        };
        let signature = self.signed_data(&digest)?;
        let length = 8 + signature.len();
        let table = length.next_multiple_of(8);
        let (Ok(table_at), Ok(table_len), Ok(length)) = (
            u32::try_from(out.len()),
            u32::try_from(table),
            u32::try_from(length),
        ) else {
            return Err(SecureBootError::TooLarge {
                what: what.to_string(),
            });
        };
        if table_at.checked_add(table_len).is_none() {
            return Err(SecureBootError::TooLarge {
                what: what.to_string(),
            });
        }
        out.extend_from_slice(&length.to_le_bytes());
        out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
        out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
        out.extend_from_slice(&signature);
        out.resize(table_at as usize + table, 0);
        out[security_entry..security_entry + 4].copy_from_slice(&table_at.to_le_bytes());
        out[security_entry + 4..security_entry + 8].copy_from_slice(&table_len.to_le_bytes());
        Ok(out)
    }

    /// The DER ContentInfo of an Authenticode SignedData over `digest`.
    fn signed_data(&self, digest: &[u8]) -> Result<Vec<u8>> {
        let enc = |e: x509_cert::der::Error| SecureBootError::Encode(e.to_string());
        let sha256 = AlgorithmIdentifierOwned {
            oid: rfc5912::ID_SHA_256,
            parameters: Some(Any::null()),
        };
        let indirect = SpcIndirectDataContent {
            data: SpcAttributeTypeAndOptionalValue {
                value_type: SPC_PE_IMAGE_DATA_OBJID,
                value: Any::from_der(&SPC_PE_IMAGE_DATA).map_err(enc)?,
            },
            message_digest: DigestInfo {
                digest_algorithm: sha256.clone(),
                digest: OctetString::new(digest).map_err(enc)?,
            },
        };
        let indirect_any = Any::encode_from(&indirect).map_err(enc)?;
        // The message digest covers the content octets of the SpcIndirectDataContent, without its
        // SEQUENCE tag and length.
        let content_digest = Sha256::digest(indirect_any.value());
        let attribute = |oid, value: Any| -> Result<x509_cert::attr::Attribute> {
            Ok(x509_cert::attr::Attribute {
                oid,
                values: SetOfVec::try_from(vec![value]).map_err(enc)?,
            })
        };
        let signed_attrs = SetOfVec::try_from(vec![
            attribute(
                rfc5911::ID_CONTENT_TYPE,
                Any::encode_from(&SPC_INDIRECT_DATA_OBJID).map_err(enc)?,
            )?,
            attribute(
                rfc5911::ID_MESSAGE_DIGEST,
                Any::encode_from(&OctetString::new(content_digest.as_slice()).map_err(enc)?).map_err(enc)?,
            )?,
        ])
        .map_err(enc)?;
        let signature = self.key.sign(&signed_attrs.to_der().map_err(enc)?);
        let signer_info = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: self.cert.tbs_certificate.issuer.clone(),
                serial_number: self.cert.tbs_certificate.serial_number.clone(),
            }),
            digest_alg: sha256.clone(),
            signed_attrs: Some(signed_attrs),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: rfc5912::RSA_ENCRYPTION,
                parameters: Some(Any::null()),
            },
            signature: OctetString::new(signature.to_vec()).map_err(enc)?,
            unsigned_attrs: None,
        };
        let signed_data = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![sha256]).map_err(enc)?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: SPC_INDIRECT_DATA_OBJID,
                econtent: Some(indirect_any),
            },
            certificates: Some(CertificateSet(
                SetOfVec::try_from(vec![CertificateChoices::Certificate(self.cert.clone())]).map_err(enc)?,
            )),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info]).map_err(enc)?),
        };
        ContentInfo {
            content_type: rfc5911::ID_SIGNED_DATA,
            content: Any::encode_from(&signed_data).map_err(enc)?,
        }
        .to_der()
        .map_err(enc)
    }
}

/// What a PE image says about its Authenticode signature.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SignatureState {
    /// No certificate table.
    Unsigned,
    /// A signature whose digest matches the file and that its own certificate verifies. That says who
    /// signed, not that the firmware trusts them: that is up to its db.
    Signed { signer: String },
    /// A certificate table that does not hold a signature of this file: a digest of other bytes, a
    /// signature its certificate does not verify, or something unreadable.
    Invalid { reason: String },
}

impl std::fmt::Display for SignatureState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureState::Unsigned => f.write_str("unsigned"),
            SignatureState::Signed { signer } => write!(f, "signed by {signer}"),
            SignatureState::Invalid { reason } => write!(f, "INVALID signature: {reason}"),
        }
    }
}

/// Reads a PE image's Authenticode signature and checks it against the image and the certificate it
/// carries. Never panics on malformed input.
pub fn signature_state(image: &[u8]) -> SignatureState {
    let invalid = |reason: String| SignatureState::Invalid { reason };
    let pe = match PeFile64::parse(image) {
        Ok(pe) => pe,
        Err(e) => return invalid(format!("not a PE32+ image: {e}")),
    };
    let mut certs = match AttributeCertificateIterator::new(&pe) {
        Ok(None) => return SignatureState::Unsigned,
        Ok(Some(it)) => it,
        Err(e) => return invalid(format!("certificate table: {e}")),
    };
    let Some(Ok(first)) = certs.next() else {
        return invalid("the certificate table holds no readable certificate".into());
    };
    if first.revision != WIN_CERT_REVISION_2_0 || first.certificate_type != WIN_CERT_TYPE_PKCS_SIGNED_DATA {
        return invalid(format!(
            "certificate revision {:#06x} type {:#06x}, expected 0x0200 PKCS_SIGNED_DATA",
            first.revision, first.certificate_type
        ));
    }
    match check_signature(&pe, first.data) {
        Ok(signer) => SignatureState::Signed { signer },
        Err(reason) => invalid(reason),
    }
}

fn check_signature(pe: &PeFile64<'_>, der: &[u8]) -> Result<String, String> {
    let auth = AuthenticodeSignature::from_bytes(der).map_err(|e| e.to_string())?;
    if auth.digest_algorithm().oid != rfc5912::ID_SHA_256 {
        return Err(format!(
            "digest algorithm {}, expected SHA-256",
            auth.digest_algorithm().oid
        ));
    }
    let mut hasher = Sha256::new();
    authenticode::authenticode_digest(pe, &mut hasher).map_err(|e| e.to_string())?;
    if hasher.finalize().as_slice() != auth.digest() {
        return Err("the signed digest is not the file's: the file changed after signing".into());
    }
    // The certificates, read here rather than through the parsed signature, which panics on a
    // SignedData without them.
    let info = ContentInfo::from_der(der_prefix(der)?).map_err(|e| e.to_string())?;
    let signed: SignedData = info.content.decode_as().map_err(|e| e.to_string())?;
    let signer_info = auth.signer_info();
    let SignerIdentifier::IssuerAndSerialNumber(sid) = &signer_info.sid else {
        return Err("the signer is named by key identifier, expected issuer and serial".into());
    };
    let cert = signed
        .certificates
        .iter()
        .flat_map(|set| set.0.iter())
        .find_map(|c| match c {
            CertificateChoices::Certificate(c)
                if c.tbs_certificate.issuer == sid.issuer
                    && c.tbs_certificate.serial_number == sid.serial_number =>
            {
                Some(c)
            }
            _ => None,
        })
        .ok_or("the signature does not carry its signer's certificate")?;
    let attrs = signer_info
        .signed_attrs
        .as_ref()
        .ok_or("the signature has no signed attributes")?;
    let content = auth
        .encapsulated_content()
        .ok_or("the signature has no encapsulated content")?;
    let digest_attr = attrs
        .iter()
        .find(|a| a.oid == rfc5911::ID_MESSAGE_DIGEST)
        .and_then(|a| a.values.iter().next())
        .and_then(|v| v.decode_as::<OctetString>().ok())
        .ok_or("the signature has no message digest attribute")?;
    if digest_attr.as_bytes() != Sha256::digest(content).as_slice() {
        return Err("the message digest attribute does not match the signed content".into());
    }
    let public = RsaPublicKey::try_from(cert.tbs_certificate.subject_public_key_info.owned_to_ref())
        .map_err(|e| format!("the signer's key is not RSA: {e}"))?;
    let signature =
        pkcs1v15::Signature::try_from(auth.signature()).map_err(|e| format!("the signature value: {e}"))?;
    let attrs_der = attrs.to_der().map_err(|e| e.to_string())?;
    pkcs1v15::VerifyingKey::<Sha256>::new(public)
        .verify(&attrs_der, &signature)
        .map_err(|_| "the RSA signature does not verify with the signer's certificate".to_string())?;
    Ok(cert.tbs_certificate.subject.to_string())
}

/// The DER element at the start of `bytes` (a certificate table entry may carry padding behind it).
fn der_prefix(bytes: &[u8]) -> Result<&[u8], String> {
    let mut reader = x509_cert::der::SliceReader::new(bytes).map_err(|e| e.to_string())?;
    let header = x509_cert::der::Header::decode(&mut reader).map_err(|e| e.to_string())?;
    let len = header
        .encoded_len()
        .and_then(|h| h + header.length)
        .map_err(|e| e.to_string())?;
    bytes
        .get(..usize::try_from(len).map_err(|e| e.to_string())?)
        .ok_or_else(|| "the signature is cut off".into())
}

/// The OVMF variable store template the enrolled store is made from (Debian's `ovmf`, 4 MiB layout, as the
/// Secure Boot code image [`ingot_qemu::OVMF_SECURE_BOOT_CODE`] needs).
pub const OVMF_VARS_TEMPLATE: &str = ingot_qemu::OVMF_SECURE_BOOT_VARS_TEMPLATE;

/// An OVMF variable store with the key set in `dir` enrolled (PK, KEK, db with the owner GUID) and Secure
/// Boot enabled, made with `virt-fw-vars` from [`OVMF_VARS_TEMPLATE`] once per key set and template and
/// kept in `cache_dir` under the hash of both (written to a temp file, then renamed).
pub fn enrolled_vars(dir: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let guid = owner_guid(dir)?;
    let template = Path::new(OVMF_VARS_TEMPLATE);
    let read = |path: &Path| {
        fs::read(path).map_err(|source| SecureBootError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mut h = Sha256::new();
    h.update(b"ingot-secure-boot-vars-v1\0");
    h.update(Sha256::digest(read(template)?));
    h.update(guid.as_bytes());
    let mut certs = Vec::new();
    for name in KEY_NAMES {
        let pem = KeyFiles::at(&dir.join(name)).pem;
        let der = read_certificate(&pem)?
            .to_der()
            .map_err(|e| SecureBootError::Encode(e.to_string()))?;
        h.update(Sha256::digest(&der));
        certs.push(pem);
    }
    let out = cache_dir.join(format!("{}.fd", hex::encode(h.finalize())));
    if out.is_file() {
        return Ok(out);
    }
    let tool = ingot_qemu::find_tool("virt-fw-vars").ok_or(SecureBootError::NoVirtFwVars)?;
    let werr = |source| SecureBootError::Write {
        path: cache_dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(cache_dir).map_err(werr)?;
    let tmp = tempfile::Builder::new()
        .prefix(".vars-")
        .suffix(".fd")
        .tempfile_in(cache_dir)
        .map_err(werr)?;
    let guid = guid.to_string();
    let o = Command::new(tool)
        .arg("--input")
        .arg(template)
        .arg("--output")
        .arg(tmp.path())
        .arg("--set-pk")
        .arg(&guid)
        .arg(&certs[0])
        .arg("--add-kek")
        .arg(&guid)
        .arg(&certs[1])
        .arg("--add-db")
        .arg(&guid)
        .arg(&certs[2])
        .arg("--secure-boot")
        .output()
        .map_err(SecureBootError::RunVirtFwVars)?;
    if !o.status.success() {
        return Err(SecureBootError::VirtFwVars {
            dir: dir.to_path_buf(),
            status: o.status,
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_string(),
        });
    }
    tmp.as_file().sync_all().map_err(werr)?;
    tmp.persist(&out).map_err(|e| werr(e.error))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uki::tests::{inputs, tiny_stub};
    use proptest::prelude::*;
    use std::sync::OnceLock;

    /// One key set per test process (RSA key generation is the slow part).
    fn keys() -> &'static Path {
        static KEYS: OnceLock<tempfile::TempDir> = OnceLock::new();
        KEYS.get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            keygen(&dir.path().join("keys"), "test", false).unwrap();
            dir
        })
        .path()
        .join("keys")
        .leak()
    }

    fn signer() -> &'static Signer {
        static SIGNER: OnceLock<Signer> = OnceLock::new();
        SIGNER.get_or_init(|| Signer::load(&keys().join("db")).unwrap())
    }

    fn uki() -> Vec<u8> {
        crate::uki::assemble(&inputs(&tiny_stub())).unwrap()
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// The security directory entry (offset, size) of a PE32+ image.
    fn security_entry(b: &[u8]) -> (u32, u32) {
        let pe = PeFile64::parse(b).unwrap();
        let at = pe.offsets().unwrap().security_data_dir;
        (u32_at(b, at), u32_at(b, at + 4))
    }

    #[test]
    fn a_signed_image_carries_a_win_certificate_at_its_aligned_end() {
        let unsigned = uki();
        let signed = signer().sign_pe(&unsigned, "the UKI").unwrap();
        let padded = unsigned.len().next_multiple_of(8);
        let (offset, size) = security_entry(&signed);
        let entry = PeFile64::parse(signed.as_slice())
            .unwrap()
            .offsets()
            .unwrap()
            .security_data_dir;
        let mut head = signed[..unsigned.len()].to_vec();
        head[entry..entry + 8].fill(0);
        assert!(
            head == unsigned,
            "only the security directory entry changes, the rest is appended"
        );
        assert_eq!(offset as usize, padded);
        assert_eq!(offset as usize + size as usize, signed.len());
        assert_eq!(signed.len() % 8, 0);
        let length = u32_at(&signed, padded) as usize;
        assert!(length <= size as usize && size as usize - length < 8);
        assert_eq!(&signed[padded + 4..padded + 8], &[0x00, 0x02, 0x02, 0x00]);
        assert_eq!(
            signature_state(&signed),
            SignatureState::Signed {
                signer: "CN=ingot test db".into()
            }
        );
        assert_eq!(signature_state(&unsigned), SignatureState::Unsigned);
    }

    #[test]
    fn signing_is_deterministic() {
        let a = signer().sign_pe(&uki(), "the UKI").unwrap();
        let b = Signer::load(keys()).unwrap().sign_pe(&uki(), "the UKI").unwrap();
        assert!(a == b, "two signatures of the same bytes differ");
    }

    #[test]
    fn the_signature_holds_the_authenticode_digest_of_the_image() {
        let signed = signer().sign_pe(&uki(), "the UKI").unwrap();
        let pe = PeFile64::parse(signed.as_slice()).unwrap();
        let cert = AttributeCertificateIterator::new(&pe)
            .unwrap()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let sig = cert.get_authenticode_signature().unwrap();
        let mut h = Sha256::new();
        authenticode::authenticode_digest(&pe, &mut h).unwrap();
        assert_eq!(sig.digest(), h.finalize().as_slice());
        // Only contentType and messageDigest are signed: no signing time.
        let oids: Vec<String> = sig
            .signer_info()
            .signed_attrs
            .as_ref()
            .unwrap()
            .iter()
            .map(|a| a.oid.to_string())
            .collect();
        assert_eq!(oids, ["1.2.840.113549.1.9.3", "1.2.840.113549.1.9.4"]);
    }

    #[test]
    fn a_signed_image_is_refused() {
        let signed = signer().sign_pe(&uki(), "the UKI").unwrap();
        let err = signer().sign_pe(&signed, "the UKI").unwrap_err();
        assert!(matches!(err, SecureBootError::AlreadySigned { .. }), "{err}");
        assert!(err.to_string().contains("the UKI is already signed"), "{err}");
        let err = signer().sign_pe(b"MZ not a PE", "systemd-boot").unwrap_err();
        assert!(
            err.to_string().starts_with("systemd-boot: not a PE32+ image"),
            "{err}"
        );
    }

    #[test]
    fn a_changed_byte_breaks_the_signature() {
        let mut signed = signer().sign_pe(&uki(), "the UKI").unwrap();
        let cmdline = crate::uki::read_sections(&signed)
            .unwrap()
            .into_iter()
            .find(|s| s.name == ".cmdline")
            .unwrap();
        signed[cmdline.data.start] ^= 1;
        let SignatureState::Invalid { reason } = signature_state(&signed) else {
            panic!("still valid")
        };
        assert!(reason.contains("changed after signing"), "{reason}");
    }

    #[test]
    fn sbverify_accepts_the_signature_with_the_db_certificate() {
        if !ingot_testkit::require_tools(
            "sbverify_accepts_the_signature_with_the_db_certificate",
            &["sbverify"],
        ) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uki.efi");
        fs::write(&file, signer().sign_pe(&uki(), "the UKI").unwrap()).unwrap();
        let check = |cert: &str| {
            Command::new("sbverify")
                .arg("--cert")
                .arg(keys().join(cert))
                .arg(&file)
                .output()
                .unwrap()
        };
        let o = check("db.crt");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(
            !check("KEK.crt").status.success(),
            "another certificate verifies it"
        );
    }

    #[test]
    fn keygen_writes_a_key_set_and_keeps_it_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sb");
        let set = keygen(&out, "lab, west", false).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(owner_guid(&out).unwrap(), set.owner_guid);
        for (name, subject, files) in &set.keys {
            assert_eq!(*subject, format!("CN=ingot lab\\, west {name}"));
            assert_eq!(
                fs::metadata(&files.key).unwrap().permissions().mode() & 0o777,
                0o600
            );
            let pem = read_certificate(&files.pem).unwrap();
            let der = Certificate::from_der(&fs::read(&files.der).unwrap()).unwrap();
            assert!(
                pem == der,
                "{} and {} differ",
                files.pem.display(),
                files.der.display()
            );
            assert_eq!(pem.tbs_certificate.subject, pem.tbs_certificate.issuer);
            assert_eq!(pem.tbs_certificate.subject.to_string(), *subject);
            // Self-signed: its own key verifies it.
            let public =
                RsaPublicKey::try_from(pem.tbs_certificate.subject_public_key_info.owned_to_ref()).unwrap();
            let sig = pkcs1v15::Signature::try_from(pem.signature.raw_bytes()).unwrap();
            pkcs1v15::VerifyingKey::<Sha256>::new(public)
                .verify(&pem.tbs_certificate.to_der().unwrap(), &sig)
                .unwrap();
            let years = (pem.tbs_certificate.validity.not_after.to_unix_duration()
                - pem.tbs_certificate.validity.not_before.to_unix_duration())
            .as_secs()
                / (365 * 86_400);
            assert_eq!(years, VALIDITY_YEARS);
            let pem_text = fs::read_to_string(&files.key).unwrap();
            assert!(pem_text.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        }
        let before = fs::read(out.join("db.key")).unwrap();
        let err = keygen(&out, "lab", false).unwrap_err();
        assert!(matches!(err, SecureBootError::Exists { .. }), "{err}");
        assert!(
            fs::read(out.join("db.key")).unwrap() == before,
            "the key was replaced without force"
        );
        let leftovers: Vec<_> = fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        let again = keygen(&out, "lab", true).unwrap();
        assert!(
            fs::read(out.join("db.key")).unwrap() != before,
            "--force kept the old key"
        );
        assert_ne!(again.owner_guid, set.owner_guid);
    }

    #[test]
    fn loading_a_signer_checks_the_certificate_belongs_to_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["db.key", "KEK.crt"] {
            fs::copy(keys().join(f), dir.path().join(f)).unwrap();
        }
        fs::copy(keys().join("KEK.crt"), dir.path().join("db.crt")).unwrap();
        let err = Signer::load(dir.path()).unwrap_err();
        assert!(matches!(err, SecureBootError::KeyMismatch { .. }), "{err}");
        fs::write(dir.path().join("db.key"), "ingot-key v1 ed25519 private\nAAAA\n").unwrap();
        let err = Signer::load(&dir.path().join("db")).unwrap_err();
        assert!(
            err.to_string()
                .contains("expected an RSA private key in PEM PKCS#8"),
            "{err}"
        );
        assert_eq!(signer().subject(), "CN=ingot test db");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn reading_signatures_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = signature_state(&bytes);
        }

        #[test]
        fn a_mutated_signed_image_never_panics_and_changed_content_is_never_valid(
            at in any::<prop::sample::Index>(),
            xor in 1u8..,
        ) {
            let signed = signer().sign_pe(&uki(), "the UKI").unwrap();
            let mut m = signed.clone();
            let i = at.index(m.len());
            m[i] ^= xor;
            let state = signature_state(&m);
            let (offset, _) = security_entry(&signed);
            let pe = PeFile64::parse(signed.as_slice()).unwrap();
            let o = pe.offsets().unwrap();
            let hashed = i >= o.after_security_data_dir && i < offset as usize;
            if hashed {
                prop_assert!(!matches!(state, SignatureState::Signed { .. }), "byte {i}: {state:?}");
            }
        }
    }
}
