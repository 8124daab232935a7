//! Rollback protection for `ingot verify`: per signing key, the highest version accepted for each image
//! name, so an old (authentic, validly signed, but perhaps vulnerable) image is refused once a newer one was
//! accepted.
//!
//! The state is one small JSON file, by default `$XDG_STATE_HOME/ingot/accepted-versions.json` (else
//! `~/.local/state/ingot/…`):
//!
//! ```text
//! {"schema": 1, "keys": {"<hex of the 32-byte public key>": {"images": {"minimal": "0.1.0"}}}}
//! ```
//!
//! Versions compare as Debian versions ([`crate::debian::Version`]: `1.2.3 < 1.10`, `1.0~rc1 < 1.0`; a
//! version equal to the recorded one is accepted). The check runs once the manifest's signature is
//! verified and before the image is read; the state is updated only after a whole verification succeeded,
//! only upwards, under an advisory lock (`<state>.lock`), and written temp → fsync → rename. A state file
//! that cannot be read is an error naming it, never reset: resetting would re-allow every older image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::debian::Version;
use crate::debian::version::VersionError;
use crate::signing;
use crate::verify::{Verified, VerifyError};

/// The state file's name in its directory.
pub const STATE_FILE: &str = "accepted-versions.json";
const SCHEMA: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(
        "{name} {version} is older than {name} {highest}, which key {key_id} already had accepted (recorded in {state}); \
         refusing the rollback: pass --allow-downgrade to accept it anyway"
    )]
    Downgrade {
        name: String,
        version: String,
        highest: String,
        key_id: String,
        state: PathBuf,
    },
    #[error(
        "the manifest's version {version:?} of {name} cannot be ordered, which rollback protection needs (e.g. 1.2.3)"
    )]
    Version {
        name: String,
        version: String,
        #[source]
        source: VersionError,
    },
    #[error(
        "{state} is not an ingot rollback state file ({message}); it is never reset automatically (that would \
         re-allow older images): repair it, or remove it to forget every accepted version"
    )]
    Corrupt { state: PathBuf, message: String },
    #[error("reading the rollback state {state}")]
    Read {
        state: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the rollback state {state}")]
    Write {
        state: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot choose where to keep the rollback state: neither XDG_STATE_HOME nor HOME is set; pass --state FILE"
    )]
    NoStateDir,
}

impl RollbackError {
    /// The [`VerifyError::kind`] of this error: `rollback` for a refused downgrade, `manifest` for a version
    /// that cannot be ordered, `state` for a state file that cannot be read or written.
    pub fn kind(&self) -> &'static str {
        match self {
            RollbackError::Downgrade { .. } => "rollback",
            RollbackError::Version { .. } => "manifest",
            RollbackError::Corrupt { .. }
            | RollbackError::Read { .. }
            | RollbackError::Write { .. }
            | RollbackError::NoStateDir => "state",
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    schema: u32,
    /// Keyed by the hex of the whole public key (not the short key id, which a second key could share).
    keys: BTreeMap<String, KeyState>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyState {
    /// Image name → highest version accepted.
    images: BTreeMap<String, String>,
}

/// Where the state lives and whether a downgrade is let through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub state: PathBuf,
    pub allow_downgrade: bool,
}

/// What verification with rollback protection accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub verified: Verified,
    pub name: String,
    pub version: String,
    /// The highest version recorded before (for this key and name), if any.
    pub previous: Option<String>,
    /// Whether the state now records `version` (false when it already held this version or a higher one).
    pub raised: bool,
}

/// `$XDG_STATE_HOME/ingot/accepted-versions.json`, else `$HOME/.local/state/ingot/…`.
pub fn default_state_path() -> Result<PathBuf, RollbackError> {
    state_path_from(|name| std::env::var_os(name))
}

fn state_path_from(lookup: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf, RollbackError> {
    // The XDG base directory rules: an empty or relative value is ignored.
    let var = |name| lookup(name).map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(dir) = var("XDG_STATE_HOME") {
        return Ok(dir.join("ingot").join(STATE_FILE));
    }
    var("HOME")
        .map(|home| home.join(".local/state/ingot").join(STATE_FILE))
        .ok_or(RollbackError::NoStateDir)
}

/// Verifies `image` against its signed manifest ([`crate::verify::verify_admitting`]), refusing it when
/// the state records a higher version of the same image name for `key` (unless `allow_downgrade`), and
/// records the version after the whole image verified.
pub fn verify(
    image: &Path,
    manifest: &Path,
    key: &VerifyingKey,
    policy: &Policy,
) -> Result<Accepted, VerifyError> {
    let (verified, (name, version)) = crate::verify::verify_admitting(image, manifest, key, |m| {
        policy.check(key, &m.image.name, &m.image.version)?;
        Ok((m.image.name.clone(), m.image.version.clone()))
    })?;
    let (previous, raised) = policy.record(key, &name, &version)?;
    Ok(Accepted {
        verified,
        name,
        version,
        previous,
        raised,
    })
}

fn parse_version(name: &str, version: &str) -> Result<Version, RollbackError> {
    Version::parse(version).map_err(|source| RollbackError::Version {
        name: name.to_owned(),
        version: version.to_owned(),
        source,
    })
}

impl Policy {
    /// Refuses `version` of `name` when a higher one was accepted with `key`, unless downgrades are allowed.
    /// A version that cannot be ordered is refused either way.
    pub fn check(&self, key: &VerifyingKey, name: &str, version: &str) -> Result<(), RollbackError> {
        let new = parse_version(name, version)?;
        if self.allow_downgrade {
            return Ok(());
        }
        let state = self.load()?;
        let Some(highest) = state
            .keys
            .get(&hex::encode(key.as_bytes()))
            .and_then(|k| k.images.get(name))
        else {
            return Ok(());
        };
        if new < self.recorded_version(highest)? {
            return Err(RollbackError::Downgrade {
                name: name.to_owned(),
                version: version.to_owned(),
                highest: highest.clone(),
                key_id: signing::key_id(key),
                state: self.state.clone(),
            });
        }
        Ok(())
    }

    /// Records that `key` accepted `version` of `name`, if it is higher than what the state holds. Returns
    /// the version recorded before, and whether the state was raised.
    pub fn record(
        &self,
        key: &VerifyingKey,
        name: &str,
        version: &str,
    ) -> Result<(Option<String>, bool), RollbackError> {
        let new = parse_version(name, version)?;
        let write_err = |source| RollbackError::Write {
            state: self.state.clone(),
            source,
        };
        if let Some(dir) = self.state.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(write_err)?;
        }
        // Read, compare and write under one lock, so two verifications at once cannot lower the state.
        let _lock = self.lock().map_err(write_err)?;
        let mut state = self.load()?;
        let images = &mut state.keys.entry(hex::encode(key.as_bytes())).or_default().images;
        let previous = images.get(name).cloned();
        if let Some(p) = &previous
            && new <= self.recorded_version(p)?
        {
            return Ok((previous, false));
        }
        images.insert(name.to_owned(), version.to_owned());
        let mut text = serde_json::to_string_pretty(&state).unwrap_or_default();
        text.push('\n');
        crate::manifest::write_atomic(&self.state, text.as_bytes()).map_err(write_err)?;
        Ok((previous, true))
    }

    fn lock(&self) -> std::io::Result<std::fs::File> {
        let mut path = self.state.as_os_str().to_owned();
        path.push(".lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(PathBuf::from(path))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
        Ok(file)
    }

    fn recorded_version(&self, text: &str) -> Result<Version, RollbackError> {
        Version::parse(text).map_err(|e| self.corrupt(e.to_string()))
    }

    fn corrupt(&self, message: String) -> RollbackError {
        RollbackError::Corrupt {
            state: self.state.clone(),
            message,
        }
    }

    /// The state; empty when the file does not exist yet.
    fn load(&self) -> Result<State, RollbackError> {
        let bytes = match std::fs::read(&self.state) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(State {
                    schema: SCHEMA,
                    ..State::default()
                });
            }
            Err(source) => {
                return Err(RollbackError::Read {
                    state: self.state.clone(),
                    source,
                });
            }
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|e| self.corrupt(e.to_string()))?;
        if state.schema != SCHEMA {
            return Err(self.corrupt(format!("schema {}, this ingot reads {SCHEMA}", state.schema)));
        }
        for (key, k) in &state.keys {
            if key.len() != 64 || hex::decode(key).is_err() {
                return Err(self.corrupt(format!("key {key:?} is not 64 hex digits")));
            }
            for version in k.images.values() {
                self.recorded_version(version)?;
            }
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(seed: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[seed; 32]).verifying_key()
    }

    fn policy(dir: &Path) -> Policy {
        Policy {
            state: dir.join("sub/dir").join(STATE_FILE),
            allow_downgrade: false,
        }
    }

    #[test]
    fn remembers_the_highest_version_per_key_and_name_and_refuses_lower_ones() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        let (a, b) = (key(1), key(2));
        // Nothing recorded: anything goes, and the first record creates the directories.
        p.check(&a, "node", "1.2.3").unwrap();
        assert_eq!(p.record(&a, "node", "1.2.3").unwrap(), (None, true));
        assert_eq!(
            p.record(&a, "node", "1.10").unwrap(),
            (Some("1.2.3".into()), true)
        );
        // Equal is accepted and changes nothing; the state never goes down.
        p.check(&a, "node", "1.10").unwrap();
        p.check(&a, "node", "1.10~rc1").unwrap_err();
        assert_eq!(p.record(&a, "node", "1.9").unwrap(), (Some("1.10".into()), false));
        let e = p.check(&a, "node", "1.9").unwrap_err();
        assert_eq!(e.kind(), "rollback");
        let msg = e.to_string();
        for part in [
            "node 1.9 is older than node 1.10",
            &signing::key_id(&a),
            &p.state.display().to_string(),
            "--allow-downgrade",
        ] {
            assert!(msg.contains(part), "{msg} lacks {part}");
        }
        // Another key, another image name: separate histories.
        p.check(&b, "node", "0.1").unwrap();
        p.check(&a, "other", "0.1").unwrap();
        // --allow-downgrade lets it through but does not lower the state.
        let allow = Policy {
            allow_downgrade: true,
            ..p.clone()
        };
        allow.check(&a, "node", "1.9").unwrap();
        assert_eq!(
            allow.record(&a, "node", "1.9").unwrap(),
            (Some("1.10".into()), false)
        );
        p.check(&a, "node", "1.9").unwrap_err();
        let text = std::fs::read_to_string(&p.state).unwrap();
        assert!(text.contains(&hex::encode(a.as_bytes())), "{text}");
        assert!(!text.contains(&hex::encode(b.as_bytes())), "{text}");
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it_and_is_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let p = policy(d.path());
        std::fs::create_dir_all(p.state.parent().unwrap()).unwrap();
        let k = hex::encode(key(1).as_bytes());
        for bad in [
            "".to_string(),
            "{".to_string(),
            "[]".to_string(),
            r#"{"schema": 2, "keys": {}}"#.to_string(),
            r#"{"schema": 1, "keys": {}, "extra": 1}"#.to_string(),
            r#"{"schema": 1, "keys": {"abc": {"images": {}}}}"#.to_string(),
            format!(r#"{{"schema": 1, "keys": {{"{k}": {{"images": {{"node": "not a version"}}}}}}}}"#),
            format!(r#"{{"schema": 1, "keys": {{"{k}": {{"images": {{"node": 3}}}}}}}}"#),
        ] {
            std::fs::write(&p.state, &bad).unwrap();
            for e in [
                p.check(&key(1), "node", "1.0").unwrap_err(),
                p.record(&key(1), "node", "1.0").unwrap_err(),
            ] {
                assert_eq!(e.kind(), "state", "{bad}: {e}");
                assert!(e.to_string().contains(&p.state.display().to_string()), "{e}");
                assert!(e.to_string().contains("never reset"), "{e}");
            }
            assert_eq!(std::fs::read_to_string(&p.state).unwrap(), bad);
        }
    }

    #[test]
    fn a_version_that_cannot_be_ordered_is_refused_even_with_allow_downgrade() {
        let d = tempfile::tempdir().unwrap();
        let mut p = policy(d.path());
        for allow in [false, true] {
            p.allow_downgrade = allow;
            let e = p.check(&key(1), "node", "-1").unwrap_err();
            assert_eq!(e.kind(), "manifest");
            assert!(e.to_string().contains("\"-1\" of node cannot be ordered"), "{e}");
        }
        assert!(!p.state.exists());
    }

    #[test]
    fn the_state_lives_under_xdg_state_home_or_home() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        assert_eq!(
            state_path_from(env(&[("XDG_STATE_HOME", "/s"), ("HOME", "/h")])).unwrap(),
            Path::new("/s/ingot/accepted-versions.json")
        );
        assert_eq!(
            state_path_from(env(&[("XDG_STATE_HOME", "rel"), ("HOME", "/h")])).unwrap(),
            Path::new("/h/.local/state/ingot/accepted-versions.json")
        );
        assert!(matches!(
            state_path_from(env(&[("XDG_STATE_HOME", "")])),
            Err(RollbackError::NoStateDir)
        ));
    }
}
