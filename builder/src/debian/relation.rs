//! Package relationship fields (`Depends:`, `Pre-Depends:`, `Provides:`), Debian Policy §7.1.
//!
//! A field is a comma-separated list of groups; a group is a `|`-separated list of alternatives; an
//! alternative is a package name with an optional architecture qualifier (`libc6:any`), an optional
//! version constraint (`(>= 2.34)`), and, in source packages only, architecture lists (`[amd64]`) and
//! build profiles (`<!nocheck>`). Binary indices carry no architecture lists or build profiles; when
//! present they are skipped, not evaluated. The architecture qualifier is dropped: one index holds
//! one architecture (plus `all`).

use std::fmt;

use super::version::{Version, VersionError};

/// A version comparison in a relationship.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `<<`
    Lt,
    /// `<=` (and the obsolete `<`)
    Le,
    /// `=`
    Eq,
    /// `>=` (and the obsolete `>`)
    Ge,
    /// `>>`
    Gt,
}

impl Op {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "<<" => Self::Lt,
            "<=" | "<" => Self::Le,
            "=" => Self::Eq,
            ">=" | ">" => Self::Ge,
            ">>" => Self::Gt,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Lt => "<<",
            Self::Le => "<=",
            Self::Eq => "=",
            Self::Ge => ">=",
            Self::Gt => ">>",
        }
    }
}

/// A version constraint: `(>= 2.34)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Constraint {
    pub op: Op,
    pub version: Version,
}

impl Constraint {
    /// Whether `version` satisfies the constraint.
    pub fn allows(&self, version: &Version) -> bool {
        let ord = version.cmp(&self.version);
        match self.op {
            Op::Lt => ord.is_lt(),
            Op::Le => ord.is_le(),
            Op::Eq => ord.is_eq(),
            Op::Ge => ord.is_ge(),
            Op::Gt => ord.is_gt(),
        }
    }
}

impl fmt::Display for Constraint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.as_str(), self.version)
    }
}

/// One alternative: a package name and an optional version constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub name: String,
    pub constraint: Option<Constraint>,
}

impl Relation {
    /// Whether a package `name` at `version` satisfies this relation.
    pub fn allows(&self, name: &str, version: &Version) -> bool {
        self.name == name && self.constraint.as_ref().is_none_or(|c| c.allows(version))
    }
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.constraint {
            Some(c) => write!(f, "{} ({c})", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// Alternatives, first preferred: `a | b (>= 1)`.
pub type Group = Vec<Relation>;

/// Writes a group as it appears in a control file.
pub fn group_to_string(group: &[Relation]) -> String {
    group
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Why a relationship field does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RelationError {
    /// An alternative has no package name.
    #[error("{0:?}: expected a package name")]
    NoName(String),
    /// A package name with characters Debian does not allow.
    #[error("{0:?} is not a package name")]
    BadName(String),
    /// A version constraint that is not `(OP VERSION)`.
    #[error("{0:?}: expected a version constraint like `(>= 1.0)`")]
    BadConstraint(String),
    /// The version inside a constraint is not a Debian version.
    #[error("bad version in constraint")]
    Version(#[from] VersionError),
}

/// Parses a relationship field into groups of alternatives. An empty field gives no groups.
pub fn parse(field: &str) -> Result<Vec<Group>, RelationError> {
    let mut groups = Vec::new();
    for group_text in field.split(',') {
        if group_text.trim().is_empty() {
            continue;
        }
        let mut group = Vec::new();
        for alt in group_text.split('|') {
            group.push(parse_alternative(alt)?);
        }
        groups.push(group);
    }
    Ok(groups)
}

fn parse_alternative(text: &str) -> Result<Relation, RelationError> {
    let t = text.trim();
    let name_end = t
        .find(|c: char| c.is_whitespace() || "([<".contains(c))
        .unwrap_or(t.len());
    let qualified = &t[..name_end];
    let name = qualified.split(':').next().unwrap_or_default();
    if name.is_empty() {
        return Err(RelationError::NoName(t.to_owned()));
    }
    let valid = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
    if !valid {
        return Err(RelationError::BadName(name.to_owned()));
    }
    let mut rest = t[name_end..].trim_start();
    let mut constraint = None;
    if let Some(inner) = rest.strip_prefix('(') {
        let close = inner
            .find(')')
            .ok_or_else(|| RelationError::BadConstraint(t.to_owned()))?;
        let body = inner[..close].trim();
        let op_len = body
            .find(|c: char| !"<>=".contains(c))
            .ok_or_else(|| RelationError::BadConstraint(t.to_owned()))?;
        let op = Op::parse(&body[..op_len]).ok_or_else(|| RelationError::BadConstraint(t.to_owned()))?;
        let version = Version::parse(body[op_len..].trim())?;
        constraint = Some(Constraint { op, version });
        rest = inner[close + 1..].trim_start();
    }
    // Architecture lists and build profiles (source packages only) are skipped, not evaluated.
    for (open, close) in [('[', ']'), ('<', '>')] {
        while let Some(inner) = rest.strip_prefix(open) {
            let end = inner
                .find(close)
                .ok_or_else(|| RelationError::BadConstraint(t.to_owned()))?;
            rest = inner[end + 1..].trim_start();
        }
    }
    if !rest.is_empty() {
        return Err(RelationError::BadConstraint(t.to_owned()));
    }
    Ok(Relation {
        name: name.to_owned(),
        constraint,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn parses_groups_alternatives_and_constraints() {
        let groups =
            parse("libc6 (>= 2.34), libfoo:any | libbar (<< 2~) [amd64], baz <!nocheck>,  ").unwrap();
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0][0].to_string(), "libc6 (>= 2.34)");
        assert_eq!(group_to_string(&groups[1]), "libfoo | libbar (<< 2~)");
        assert_eq!(groups[2][0].name, "baz");
        assert_eq!(parse("").unwrap(), Vec::<Group>::new());
        assert_eq!(
            parse("a (> 1)").unwrap()[0][0].constraint.as_ref().unwrap().op,
            Op::Ge
        );
    }

    #[test]
    fn constraints_compare_debian_versions() {
        let r = &parse("runc (>= 1.0.0~rc2~)").unwrap()[0][0];
        assert!(r.allows("runc", &v("1.1.5+ds1-1")));
        assert!(r.allows("runc", &v("1.0.0~rc2~")));
        assert!(!r.allows("runc", &v("1.0.0~rc1")));
        assert!(!r.allows("crun", &v("9")));
        let eq = &parse("libext2fs2 (= 1.47.0-2+b2)").unwrap()[0][0];
        assert!(eq.allows("libext2fs2", &v("1.47.0-2+b2")));
        assert!(!eq.allows("libext2fs2", &v("1.47.0-2+b3")));
        let lt = &parse("x (<< 2)").unwrap()[0][0];
        assert!(lt.allows("x", &v("2~beta")) && !lt.allows("x", &v("2")));
        let gt = &parse("x (>> 2)").unwrap()[0][0];
        assert!(gt.allows("x", &v("2.0.1")) && !gt.allows("x", &v("2")));
        let le = &parse("x (<= 2)").unwrap()[0][0];
        assert!(le.allows("x", &v("2")) && !le.allows("x", &v("2.1")));
    }

    #[test]
    fn malformed_fields_are_errors() {
        assert_eq!(parse("a, | b"), Err(RelationError::NoName("".into())));
        assert_eq!(parse("Libc6"), Err(RelationError::BadName("Libc6".into())));
        assert!(matches!(parse("a (>= 1"), Err(RelationError::BadConstraint(_))));
        assert!(matches!(parse("a (~ 1)"), Err(RelationError::BadConstraint(_))));
        assert!(matches!(parse("a (>= )"), Err(RelationError::BadConstraint(_))));
        assert!(matches!(parse("a (>= x:1)"), Err(RelationError::Version(_))));
        assert!(matches!(parse("a b"), Err(RelationError::BadConstraint(_))));
    }

    mod fuzz {
        use proptest::prelude::*;

        proptest! {
            /// Relationship fields come from an index: any text parses or fails cleanly.
            #[test]
            fn arbitrary_fields_never_panic(s in "\\PC{0,200}") {
                let _ = super::super::parse(&s);
            }

            /// Well-formed fields survive printing and parsing again.
            #[test]
            fn printed_groups_parse_back(
                names in proptest::collection::vec("[a-z][a-z0-9+.-]{0,8}", 1..6),
                ops in proptest::collection::vec(0usize..6, 1..6),
            ) {
                let text: Vec<String> = names.iter().zip(ops.iter().cycle()).map(|(n, op)| match op {
                    0 => format!("{n} (>= 1.{op})"),
                    1 => format!("{n}:any"),
                    2 => format!("{n} (<< 2~rc1)"),
                    3 => format!("{n} | {n}-alt (= 1:3-2)"),
                    _ => n.clone(),
                }).collect();
                let groups = super::super::parse(&text.join(", ")).unwrap();
                let printed: Vec<String> = groups.iter().map(|g| super::super::group_to_string(g)).collect();
                prop_assert_eq!(super::super::parse(&printed.join(", ")).unwrap(), groups);
            }
        }
    }
}
