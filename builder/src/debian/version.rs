//! Debian version numbers and their ordering (Debian Policy §5.6.12, dpkg's `verrevcmp`).
//!
//! `[epoch:]upstream[-revision]`: the epoch is compared as a number; upstream and revision are compared
//! by alternating non-digit and digit runs. In non-digit runs letters sort before all other
//! characters, and `~` sorts before everything, even the end of the string (so `1.0~rc1 < 1.0`).
//! Digit runs compare numerically. A missing revision compares like `0`.
//!
//! Equality follows the ordering, not the spelling: `1.0` and `1.00` are the same version, as for dpkg.

use std::cmp::Ordering;
use std::fmt;

/// A parsed Debian version.
#[derive(Debug, Clone)]
pub struct Version {
    text: String,
    epoch: u64,
    /// Byte ranges of upstream and revision inside `text`.
    upstream: (usize, usize),
    revision: (usize, usize),
}

/// Why a string is not a Debian version.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    /// The whole string is empty or has blanks.
    #[error("version {0:?} is empty or contains whitespace")]
    Blank(String),
    /// The part before `:` is not a number.
    #[error("version {0:?} has an epoch that is not a number")]
    Epoch(String),
    /// Nothing between the epoch and the revision.
    #[error("version {0:?} has an empty upstream part")]
    EmptyUpstream(String),
}

impl Version {
    /// Parses `[epoch:]upstream[-revision]`.
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        if text.is_empty() || text.chars().any(char::is_whitespace) {
            return Err(VersionError::Blank(text.to_owned()));
        }
        let (epoch, rest_start) = match text.split_once(':') {
            Some((e, _)) => (
                e.parse::<u64>()
                    .map_err(|_| VersionError::Epoch(text.to_owned()))?,
                e.len() + 1,
            ),
            None => (0, 0),
        };
        let rest = &text[rest_start..];
        let (upstream, revision) = match rest.rfind('-') {
            Some(dash) => (
                (rest_start, rest_start + dash),
                (rest_start + dash + 1, text.len()),
            ),
            None => ((rest_start, text.len()), (text.len(), text.len())),
        };
        if upstream.0 == upstream.1 {
            return Err(VersionError::EmptyUpstream(text.to_owned()));
        }
        Ok(Self {
            text: text.to_owned(),
            epoch,
            upstream,
            revision,
        })
    }

    /// The version as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The epoch (0 when absent).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The upstream part.
    pub fn upstream(&self) -> &str {
        &self.text[self.upstream.0..self.upstream.1]
    }

    /// The Debian revision (empty when absent).
    pub fn revision(&self) -> &str {
        &self.text[self.revision.0..self.revision.1]
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.epoch
            .cmp(&other.epoch)
            .then_with(|| compare_part(self.upstream().as_bytes(), other.upstream().as_bytes()))
            .then_with(|| compare_part(self.revision().as_bytes(), other.revision().as_bytes()))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Version {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Version {}

/// Sort weight of a character in a non-digit run; `None` is the end of the string.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp`.
fn compare_part(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0usize, 0usize);
    let digit_at = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        // Non-digit run, character by character.
        while (i < a.len() && !digit_at(a, i)) || (j < b.len() && !digit_at(b, j)) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        // Digit run, numerically: skip leading zeros, then the longer run wins, else the first
        // differing digit decides.
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while digit_at(a, i) && digit_at(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit_at(a, i) {
            return Ordering::Greater;
        }
        if digit_at(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[track_caller]
    fn lt(a: &str, b: &str) {
        assert!(v(a) < v(b), "{a} < {b}");
        assert!(v(b) > v(a), "{b} > {a}");
    }

    #[test]
    fn policy_examples() {
        // Debian Policy 5.6.12: `~` sorts before anything, even the end of a part.
        lt("1.0~rc1", "1.0");
        let order = ["~~", "~~a", "~", "", "a"];
        for pair in order.windows(2) {
            assert_eq!(
                compare_part(pair[0].as_bytes(), pair[1].as_bytes()),
                Ordering::Less,
                "{pair:?}"
            );
            assert_eq!(
                compare_part(pair[1].as_bytes(), pair[0].as_bytes()),
                Ordering::Greater
            );
        }
        lt("1.0~~", "1.0~~a");
        lt("1.0~~a", "1.0~");
        lt("1.0~", "1.0");
        lt("1.0", "1.0a");
        // Letters sort before non-letters.
        lt("1.0a", "1.0+");
        lt("1.0+", "1.0.");
        // Numbers compare numerically.
        lt("1.9", "1.10");
        lt("1.2.3", "1.2.10");
    }

    #[test]
    fn epoch_and_revision() {
        lt("9.9-9", "1:0.1-1");
        lt("1:1.0-1", "2:0.1");
        lt("1.0-1", "1.0-2");
        lt("1.0-1", "1.0-1.1");
        lt("1.0-1~bpo1", "1.0-1");
        lt("2.30-1", "2.30-1+deb12u1");
        lt("6.1.0-9", "6.1.0-10");
        // The last `-` splits: upstream may contain dashes.
        assert_eq!(v("1.0-beta-2").upstream(), "1.0-beta");
        assert_eq!(v("1.0-beta-2").revision(), "2");
        // Kernel ABI-style versions as seen in the archive.
        lt("6.1.153-1", "6.1.158-1");
        lt("6.12.41+deb13-amd64", "6.12.43+deb13-amd64");
        lt("252.38-1~deb12u1", "252.39-1~deb12u1");
    }

    #[test]
    fn equality_follows_ordering() {
        assert_eq!(v("1.0"), v("1.00"));
        assert_eq!(v("0:1.0"), v("1.0"));
        assert_eq!(v("1.0-0"), v("1.0"));
        assert_eq!(v("1:2.3-4").epoch(), 1);
    }

    #[test]
    fn invalid_versions() {
        assert_eq!(Version::parse(""), Err(VersionError::Blank(String::new())));
        assert_eq!(Version::parse("1 0"), Err(VersionError::Blank("1 0".into())));
        assert_eq!(Version::parse("x:1"), Err(VersionError::Epoch("x:1".into())));
        assert_eq!(
            Version::parse("1:-1"),
            Err(VersionError::EmptyUpstream("1:-1".into()))
        );
    }

    #[test]
    fn sorting_a_list() {
        let mut list: Vec<Version> = ["1.0", "1.0~rc1", "1:0.9", "1.0-1", "0.9+git1", "1.0~~"]
            .iter()
            .map(|s| v(s))
            .collect();
        list.sort();
        let got: Vec<_> = list.iter().map(Version::as_str).collect();
        assert_eq!(got, ["0.9+git1", "1.0~~", "1.0~rc1", "1.0", "1.0-1", "1:0.9"]);
    }
}
