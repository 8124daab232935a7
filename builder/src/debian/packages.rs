//! `Packages` indices: one deb822 stanza per binary package.
//!
//! The index is parsed once into borrowed stanzas grouped by package name; only the stanzas a
//! request touches are turned into typed [`PackageEntry`] values, so a 60 000-package index costs one
//! pass over the text and no per-package allocation beyond the stanza's field list.

use std::cell::OnceCell;
use std::collections::HashMap;

use super::deb822::{self, Deb822Error, Stanza};
use super::version::Version;
use crate::fetch::Sha256;

/// The fields of one package that locking needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageEntry {
    /// `Package:`.
    pub package: String,
    /// `Version:`.
    pub version: Version,
    /// `Filename:`, relative to the archive root (`pool/main/…`).
    pub filename: String,
    /// `SHA256:` of the `.deb`.
    pub sha256: Sha256,
    /// `Size:` of the `.deb`.
    pub size: u64,
    /// `Depends:` as written (may be empty).
    pub depends: String,
    /// `Pre-Depends:` as written (may be empty).
    pub pre_depends: String,
    /// `Provides:` as written (may be empty).
    pub provides: String,
}

/// A field of a package stanza is missing or malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("package {package}: field {field} {reason}")]
pub struct EntryError {
    /// `Package:` of the stanza.
    pub package: String,
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

/// Stanzas of one or more `Packages` files, grouped by package name.
#[derive(Debug, Default)]
pub struct PackagesIndex<'a> {
    by_name: HashMap<&'a str, Vec<Stanza<'a>>>,
    /// Virtual package name → names of the packages whose `Provides:` mention it; built on first use.
    provided_by: OnceCell<HashMap<&'a str, Vec<&'a str>>>,
}

impl<'a> PackagesIndex<'a> {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the stanzas of a `Packages` text (stanzas without `Package:` are skipped).
    pub fn add(&mut self, text: &'a str) -> Result<(), Deb822Error> {
        self.provided_by = OnceCell::new();
        for stanza in deb822::parse(text)? {
            if let Some(name) = stanza.get("Package") {
                self.by_name.entry(name).or_default().push(stanza);
            }
        }
        Ok(())
    }

    /// Number of distinct package names.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether the index holds no package.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// All versions of `name` in the index.
    pub fn entries(&self, name: &str) -> Result<Vec<PackageEntry>, EntryError> {
        self.by_name
            .get(name)
            .map(|stanzas| stanzas.iter().map(entry).collect())
            .unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Names of the packages whose `Provides:` mention `name` (each name once, sorted).
    pub fn provider_names(&self, name: &str) -> &[&'a str] {
        let map = self.provided_by.get_or_init(|| {
            let mut map: HashMap<&'a str, Vec<&'a str>> = HashMap::new();
            for (package, stanzas) in &self.by_name {
                for stanza in stanzas {
                    let Some(provides) = stanza.get("Provides") else {
                        continue;
                    };
                    for virtual_name in depends_names(provides) {
                        map.entry(virtual_name).or_default().push(package);
                    }
                }
            }
            for names in map.values_mut() {
                names.sort_unstable();
                names.dedup();
            }
            map
        });
        map.get(name).map_or(&[], Vec::as_slice)
    }

    /// Names of the packages whose newest version is `Essential: yes` (what dpkg itself needs to work), sorted.
    pub fn essential_names(&self) -> Result<Vec<&'a str>, EntryError> {
        let mut names = Vec::new();
        for (name, stanzas) in &self.by_name {
            let mut newest: Option<(Version, &Stanza<'a>)> = None;
            for stanza in stanzas {
                let version = entry(stanza)?.version;
                if newest.as_ref().is_none_or(|(v, _)| version > *v) {
                    newest = Some((version, stanza));
                }
            }
            if newest.is_some_and(|(_, s)| s.get("Essential").is_some_and(|e| e.trim() == "yes")) {
                names.push(*name);
            }
        }
        names.sort_unstable();
        Ok(names)
    }

    /// The highest version of `name`, if any.
    pub fn newest(&self, name: &str) -> Result<Option<PackageEntry>, EntryError> {
        Ok(self
            .entries(name)?
            .into_iter()
            .max_by(|a, b| a.version.cmp(&b.version)))
    }
}

/// The package names a `Depends:` value mentions, in order: alternatives (`a | b`) included,
/// version constraints (`(>= 1)`), architecture qualifiers (`:any`), architecture lists (`[amd64]`)
/// and build profiles (`<!nocheck>`) dropped.
pub fn depends_names(depends: &str) -> Vec<&str> {
    depends
        .split([',', '|'])
        .filter_map(|alt| {
            let name = alt.trim().split([' ', '(', '[', '<']).next()?;
            let name = name.split(':').next()?;
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

fn entry(stanza: &Stanza<'_>) -> Result<PackageEntry, EntryError> {
    let package = stanza.get("Package").unwrap_or_default().to_owned();
    let err = |field, reason: String| EntryError {
        package: package.clone(),
        field,
        reason,
    };
    let required = |field: &'static str| {
        stanza
            .get(field)
            .ok_or_else(|| err(field, "is missing".to_owned()))
    };
    Ok(PackageEntry {
        version: Version::parse(required("Version")?)
            .map_err(|e| err("Version", format!("is invalid: {e}")))?,
        filename: required("Filename")?.to_owned(),
        sha256: required("SHA256")?
            .parse()
            .map_err(|e| err("SHA256", format!("is invalid: {e}")))?,
        size: required("Size")?
            .parse()
            .map_err(|_| err("Size", "is not a number".to_owned()))?,
        depends: stanza.get("Depends").unwrap_or_default().to_owned(),
        pre_depends: stanza.get("Pre-Depends").unwrap_or_default().to_owned(),
        provides: stanza.get("Provides").unwrap_or_default().to_owned(),
        package,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn index_text() -> String {
        format!(
            "Package: linux-image-cloud-amd64\nSource: linux-signed-amd64 (6.1.158+1)\nVersion: 6.1.158-1\n\
             Depends: linux-image-6.1.0-41-cloud-amd64 (= 6.1.158-1)\nFilename: pool/main/l/x.deb\n\
             Size: 1000\nSHA256: {H1}\n\n\
             Package: linux-image-cloud-amd64\nVersion: 6.1.153-1\nFilename: pool/main/l/old.deb\n\
             Size: 999\nSHA256: {H2}\n\n\
             Package: broken\nVersion: 1.0\nFilename: pool/b.deb\nSize: x\nSHA256: {H1}\n"
        )
    }

    #[test]
    fn newest_picks_highest_version() {
        let text = index_text();
        let mut index = PackagesIndex::new();
        index.add(&text).unwrap();
        assert_eq!(index.len(), 2);
        let newest = index.newest("linux-image-cloud-amd64").unwrap().unwrap();
        assert_eq!(newest.version.as_str(), "6.1.158-1");
        assert_eq!(newest.filename, "pool/main/l/x.deb");
        assert_eq!(newest.size, 1000);
        assert_eq!(newest.sha256.to_hex(), H1);
        assert_eq!(index.newest("absent").unwrap(), None);
        let err = index.newest("broken").unwrap_err();
        assert_eq!(err.to_string(), "package broken: field Size is not a number");
    }

    #[test]
    fn depends_names_strip_constraints() {
        assert_eq!(
            depends_names("libc6 (>= 2.34), libfoo:any | libbar [amd64], baz <!nocheck>,  "),
            ["libc6", "libfoo", "libbar", "baz"]
        );
        assert_eq!(depends_names(""), Vec::<&str>::new());
    }
}
