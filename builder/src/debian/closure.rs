//! Dependency closure: the packages a component needs besides itself (`depends = true` in a profile).
//!
//! Starting at a component's package, every group of its `Pre-Depends:` and then `Depends:` is satisfied
//! in order, and each package pulled in is walked the same way (breadth first). For a group:
//!
//! 1. if any alternative is satisfied by a package the profile already has (its own `package` components,
//!    the kernel, the bootloader) or one pulled earlier, by name or through `Provides:`, with the version
//!    constraint checked against that package's version, nothing is pulled: the walk stops there;
//! 2. alternatives naming a package in the component's `exclude` list are dropped; a group left with no
//!    alternative is cut (that is what `exclude` is for: `iptables`, `logsave`);
//! 3. otherwise the first alternative that can be satisfied is pulled: the real package of that name
//!    (newest version, which must meet the constraint), else the one package that `Provides:` it (with a
//!    version, when the relation has a constraint). A virtual package with several providers is not
//!    guessed: the profile must name one.
//!
//! A group nothing satisfies is an error naming the component, the chain of packages that led to it, the
//! relation, and why each alternative failed. An `exclude` entry that cut nothing is an error too (a typo
//! would otherwise pass silently). `Recommends:` and `Suggests:` are not followed; packages marked
//! `Essential: yes` are not added implicitly (the ELF check of the root reports what a program lacks).
//!
//! Components are walked in profile order; a package pulled by an earlier component is not walked again,
//! so the result (and the `pulled_by` attribution) is deterministic.

use std::collections::{BTreeSet, HashMap, VecDeque};

use super::packages::{EntryError, PackageEntry, PackagesIndex};
use super::relation::{self, Relation, RelationError, group_to_string};

/// A component whose dependencies are to be pulled.
#[derive(Debug, Clone, Copy)]
pub struct ClosureRoot<'r> {
    /// The profile's component name.
    pub component: &'r str,
    /// The package the component resolved to.
    pub entry: &'r PackageEntry,
    /// Package names never pulled for this component.
    pub exclude: &'r [String],
}

/// A package the profile already has: it satisfies dependencies and is never pulled.
#[derive(Debug, Clone, Copy)]
pub struct Present<'r> {
    /// The profile's component name.
    pub component: &'r str,
    pub entry: &'r PackageEntry,
}

/// A package pulled into the image as a dependency.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    pub entry: PackageEntry,
    /// The component whose closure pulled it.
    pub pulled_by: String,
    /// The package whose relation pulled it.
    pub needed_by: String,
}

/// Why a closure cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum ClosureError {
    /// A stanza lacks a field or has a malformed one.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// A relationship field does not parse.
    #[error("package {package}: field {field} does not parse")]
    Relation {
        package: String,
        field: &'static str,
        source: RelationError,
    },
    /// No alternative of a relation can be satisfied.
    #[error(
        "component {component}: {chain} needs `{relation}`, which cannot be satisfied: {}",
        reasons.join("; ")
    )]
    Unsatisfiable {
        component: String,
        /// `containerd → runc`
        chain: String,
        relation: String,
        reasons: Vec<String>,
    },
    /// An `exclude` entry that matched no dependency.
    #[error(
        "component {component}: exclude {name:?} is not a dependency in its closure (remove it from `exclude`)"
    )]
    UnusedExclude { component: String, name: String },
}

/// Who holds a package the walk has seen.
#[derive(Debug, Clone)]
enum Holder {
    Profile(String),
    Pulled(String),
}

struct Known {
    entry: PackageEntry,
    holder: Holder,
}

/// Whether `entry` satisfies `rel`: by name and version, or by a `Provides:` entry (a versioned relation
/// needs a versioned `Provides:` that meets it, as dpkg requires).
fn satisfies(entry: &PackageEntry, rel: &Relation) -> bool {
    if rel.allows(&entry.package, &entry.version) {
        return true;
    }
    let Ok(provides) = relation::parse(&entry.provides) else {
        return false;
    };
    provides.iter().flatten().any(|p| {
        p.name == rel.name
            && match (&rel.constraint, &p.constraint) {
                (None, _) => true,
                (Some(want), Some(have)) => have.op == relation::Op::Eq && want.allows(&have.version),
                (Some(_), None) => false,
            }
    })
}

fn groups(entry: &PackageEntry) -> Result<Vec<Vec<Relation>>, ClosureError> {
    let parse = |field: &'static str, text: &str| {
        relation::parse(text).map_err(|source| ClosureError::Relation {
            package: entry.package.clone(),
            field,
            source,
        })
    };
    let mut out = parse("Pre-Depends", &entry.pre_depends)?;
    out.extend(parse("Depends", &entry.depends)?);
    Ok(out)
}

/// Computes the packages `roots` pull in, in discovery order (see the module documentation).
pub fn closure(
    index: &PackagesIndex<'_>,
    present: &[Present<'_>],
    roots: &[ClosureRoot<'_>],
) -> Result<Vec<Pulled>, ClosureError> {
    let mut known: Vec<Known> = present
        .iter()
        .map(|p| Known {
            entry: p.entry.clone(),
            holder: Holder::Profile(p.component.to_owned()),
        })
        .collect();
    let mut by_name: HashMap<String, usize> = known
        .iter()
        .enumerate()
        .map(|(i, k)| (k.entry.package.clone(), i))
        .collect();
    let mut pulled = Vec::new();
    for root in roots {
        let mut used = BTreeSet::new();
        let mut queue = VecDeque::from([(root.entry.clone(), vec![root.entry.package.clone()])]);
        while let Some((entry, chain)) = queue.pop_front() {
            for group in groups(&entry)? {
                if group
                    .iter()
                    .any(|rel| known.iter().any(|k| satisfies(&k.entry, rel)))
                {
                    continue;
                }
                let mut reasons = Vec::new();
                let mut chosen = None;
                let mut any_allowed = false;
                for rel in &group {
                    if root.exclude.contains(&rel.name) {
                        used.insert(rel.name.clone());
                        continue;
                    }
                    any_allowed = true;
                    match candidate(index, &known, &by_name, rel, root.exclude, &mut used)? {
                        Ok(found) => {
                            chosen = Some(found);
                            break;
                        }
                        Err(reason) => reasons.push(reason),
                    }
                }
                if !any_allowed {
                    continue;
                }
                let Some(found) = chosen else {
                    return Err(ClosureError::Unsatisfiable {
                        component: root.component.to_owned(),
                        chain: chain.join(" → "),
                        relation: group_to_string(&group),
                        reasons,
                    });
                };
                by_name.insert(found.package.clone(), known.len());
                known.push(Known {
                    entry: found.clone(),
                    holder: Holder::Pulled(root.component.to_owned()),
                });
                pulled.push(Pulled {
                    entry: found.clone(),
                    pulled_by: root.component.to_owned(),
                    needed_by: entry.package.clone(),
                });
                let mut next = chain.clone();
                next.push(found.package.clone());
                queue.push_back((found, next));
            }
        }
        if let Some(name) = root.exclude.iter().find(|name| !used.contains(*name)) {
            return Err(ClosureError::UnusedExclude {
                component: root.component.to_owned(),
                name: name.clone(),
            });
        }
    }
    Ok(pulled)
}

/// The package to pull for `rel`, or why there is none.
fn candidate(
    index: &PackagesIndex<'_>,
    known: &[Known],
    by_name: &HashMap<String, usize>,
    rel: &Relation,
    exclude: &[String],
    used: &mut BTreeSet<String>,
) -> Result<Result<PackageEntry, String>, ClosureError> {
    // A package the image already has in another version cannot be added a second time.
    if let Some(&i) = by_name.get(&rel.name) {
        let k = &known[i];
        let who = match &k.holder {
            Holder::Profile(c) => format!("component {c} pins"),
            Holder::Pulled(c) => format!("component {c} pulled"),
        };
        return Ok(Err(format!("{who} {} {}", k.entry.package, k.entry.version)));
    }
    let mut reasons = Vec::new();
    if let Some(real) = index.newest(&rel.name)? {
        if satisfies(&real, rel) {
            return Ok(Ok(real));
        }
        reasons.push(format!("the archive has {} {}", real.package, real.version));
    }
    let mut providers = Vec::new();
    for &name in index.provider_names(&rel.name) {
        if exclude.iter().any(|e| e == name) {
            used.insert(name.to_owned());
            continue;
        }
        if let Some(entry) = index.newest(name)?
            && satisfies(&entry, rel)
        {
            providers.push(entry);
        }
    }
    match providers.len() {
        1 => return Ok(Ok(providers.remove(0))),
        0 if reasons.is_empty() => reasons.push(format!("no package {} or provider of it", rel.name)),
        0 => {}
        _ => reasons.push(format!(
            "{} is provided by {}: add the one you want to the profile",
            rel.name,
            providers
                .iter()
                .map(|p| p.package.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
    Ok(Err(reasons.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn stanza(name: &str, version: &str, fields: &str) -> String {
        format!(
            "Package: {name}\nVersion: {version}\n{fields}Filename: pool/{name}_{version}.deb\nSize: 1\nSHA256: {H}\n\n"
        )
    }

    /// A small archive shaped like bookworm's containerd corner.
    fn archive() -> String {
        [
            stanza(
                "containerd",
                "1.6.20-1",
                "Depends: runc (>= 0.1.0~), libc6 (>= 2.34)\n",
            ),
            stanza(
                "runc",
                "1.1.5-1",
                "Depends: libc6 (>= 2.34), libseccomp2 (>= 2.5.0)\n",
            ),
            stanza("libseccomp2", "2.5.4-1", "Depends: libc6 (>= 2.4)\n"),
            stanza("libc6", "2.36-9", "Depends: libgcc-s1\n"),
            stanza("libc6", "2.31-13", "Depends: libgcc-s1\n"),
            stanza(
                "libgcc-s1",
                "12.2.0-14",
                "Provides: libgcc1 (= 1:12.2.0-14)\nDepends: gcc-12-base (= 12.2.0-14), libc6 (>= 2.35)\n",
            ),
            stanza("gcc-12-base", "12.2.0-14", ""),
            stanza(
                "e2fsprogs",
                "1.47.0-2",
                "Pre-Depends: libext2fs2 (= 1.47.0-2), libc6 (>= 2.34)\nDepends: logsave\n",
            ),
            stanza("libext2fs2", "1.47.0-2", "Depends: libc6 (>= 2.34)\n"),
            stanza("logsave", "1.47.0-2", "Depends: libc6 (>= 2.34)\n"),
            stanza(
                "tool",
                "1",
                "Depends: mail-transport-agent | exim4, awk, old (>= 3), libgcc1 (>= 1:12)\n",
            ),
            stanza("exim4", "4.96-1", ""),
            stanza("mawk", "1.3.4-1", "Provides: awk\n"),
            stanza("old", "2", ""),
            stanza("needs-awk", "1", "Depends: awk\n"),
            stanza("gawk", "5.2-1", "Provides: awk\n"),
            stanza("busybox-static", "1:1.35.0-4", "Provides: busybox\n"),
            stanza("initramfs", "1", "Depends: busybox | busybox-static\n"),
        ]
        .concat()
    }

    fn with_index<T>(f: impl FnOnce(&PackagesIndex<'_>) -> T) -> T {
        let text = archive();
        let mut index = PackagesIndex::new();
        index.add(&text).unwrap();
        f(&index)
    }

    fn names(pulled: &[Pulled]) -> Vec<String> {
        pulled
            .iter()
            .map(|p| format!("{} {} <- {}", p.entry.package, p.entry.version, p.needed_by))
            .collect()
    }

    #[test]
    fn pulls_the_closure_and_stops_at_profile_packages() {
        with_index(|index| {
            let containerd = index.newest("containerd").unwrap().unwrap();
            let runc = index.newest("runc").unwrap().unwrap();
            let e2fs = index.newest("e2fsprogs").unwrap().unwrap();
            let present = [
                Present {
                    component: "containerd",
                    entry: &containerd,
                },
                Present {
                    component: "runc",
                    entry: &runc,
                },
                Present {
                    component: "e2fsprogs",
                    entry: &e2fs,
                },
            ];
            let logsave = ["logsave".to_owned()];
            let roots = [
                ClosureRoot {
                    component: "containerd",
                    entry: &containerd,
                    exclude: &[],
                },
                ClosureRoot {
                    component: "e2fsprogs",
                    entry: &e2fs,
                    exclude: &logsave,
                },
            ];
            let pulled = closure(index, &present, &roots).unwrap();
            // runc is in the profile: neither pulled nor walked (libseccomp2 is runc's dependency).
            // The newest libc6 is taken; libgcc-s1's `=` constraint picks its gcc-12-base.
            assert_eq!(
                names(&pulled),
                [
                    "libc6 2.36-9 <- containerd",
                    "libgcc-s1 12.2.0-14 <- libc6",
                    "gcc-12-base 12.2.0-14 <- libgcc-s1",
                    "libext2fs2 1.47.0-2 <- e2fsprogs",
                ]
            );
            assert!(pulled[..3].iter().all(|p| p.pulled_by == "containerd"));
            assert_eq!(pulled[3].pulled_by, "e2fsprogs");
            // The same request gives the same answer.
            assert_eq!(closure(index, &present, &roots).unwrap(), pulled);
        });
    }

    #[test]
    fn alternatives_virtual_packages_and_constraints() {
        with_index(|index| {
            let tool = index.newest("tool").unwrap().unwrap();
            let err = closure(
                index,
                &[],
                &[ClosureRoot {
                    component: "tool",
                    entry: &tool,
                    exclude: &[],
                }],
            )
            .unwrap_err();
            // `mail-transport-agent` exists nowhere, `exim4` does; `awk` has two providers; `old` is too old.
            assert_eq!(
                err.to_string(),
                "component tool: tool needs `awk`, which cannot be satisfied: \
                 awk is provided by gawk, mawk: add the one you want to the profile"
            );
            let mawk = index.newest("mawk").unwrap().unwrap();
            let present = [Present {
                component: "awk",
                entry: &mawk,
            }];
            let err = closure(
                index,
                &present,
                &[ClosureRoot {
                    component: "tool",
                    entry: &tool,
                    exclude: &[],
                }],
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                "component tool: tool needs `old (>= 3)`, which cannot be satisfied: the archive has old 2"
            );
            let exclude = ["old".to_owned()];
            let pulled = closure(
                index,
                &present,
                &[ClosureRoot {
                    component: "tool",
                    entry: &tool,
                    exclude: &exclude,
                }],
            )
            .unwrap();
            // exim4 is the first alternative that exists; libgcc1 (>= 1:12) is met by libgcc-s1's versioned Provides.
            assert_eq!(
                names(&pulled),
                [
                    "exim4 4.96-1 <- tool",
                    "libgcc-s1 12.2.0-14 <- tool",
                    "gcc-12-base 12.2.0-14 <- libgcc-s1",
                    "libc6 2.36-9 <- libgcc-s1",
                ]
            );
        });
    }

    #[test]
    fn a_present_provider_satisfies_and_a_wrong_present_version_is_named() {
        with_index(|index| {
            let initramfs = index.newest("initramfs").unwrap().unwrap();
            let busybox = index.newest("busybox-static").unwrap().unwrap();
            let present = [Present {
                component: "busybox",
                entry: &busybox,
            }];
            let roots = [ClosureRoot {
                component: "initramfs",
                entry: &initramfs,
                exclude: &[],
            }];
            assert_eq!(closure(index, &present, &roots).unwrap(), []);

            // The profile pins a libc6 older than runc needs.
            let runc = index.newest("runc").unwrap().unwrap();
            let old_libc = index
                .entries("libc6")
                .unwrap()
                .into_iter()
                .find(|e| e.version.as_str() == "2.31-13")
                .unwrap();
            let present = [Present {
                component: "libc",
                entry: &old_libc,
            }];
            let err = closure(
                index,
                &present,
                &[ClosureRoot {
                    component: "runc",
                    entry: &runc,
                    exclude: &[],
                }],
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                "component runc: runc needs `libc6 (>= 2.34)`, which cannot be satisfied: \
                 component libc pins libc6 2.31-13"
            );
        });
    }

    #[test]
    fn excludes_cut_groups_and_unused_excludes_are_errors() {
        with_index(|index| {
            let e2fs = index.newest("e2fsprogs").unwrap().unwrap();
            let exclude = ["logsave".to_owned(), "libext2fs2".to_owned()];
            let pulled = closure(
                index,
                &[],
                &[ClosureRoot {
                    component: "e2fsprogs",
                    entry: &e2fs,
                    exclude: &exclude,
                }],
            )
            .unwrap();
            assert_eq!(
                names(&pulled),
                [
                    "libc6 2.36-9 <- e2fsprogs",
                    "libgcc-s1 12.2.0-14 <- libc6",
                    "gcc-12-base 12.2.0-14 <- libgcc-s1"
                ]
            );
            let typo = ["logsav".to_owned()];
            let err = closure(
                index,
                &[],
                &[ClosureRoot {
                    component: "e2fsprogs",
                    entry: &e2fs,
                    exclude: &typo,
                }],
            )
            .unwrap_err();
            assert_eq!(
                err.to_string(),
                "component e2fsprogs: exclude \"logsav\" is not a dependency in its closure (remove it from `exclude`)"
            );
        });
    }

    #[test]
    fn a_chain_is_shown_for_deep_failures() {
        let text = [
            stanza("a", "1", "Depends: b\n"),
            stanza("b", "1", "Depends: c (>= 2)\n"),
            stanza("c", "1", ""),
            stanza("bad", "1", "Depends: Not-A-Name\n"),
        ]
        .concat();
        let mut index = PackagesIndex::new();
        index.add(&text).unwrap();
        let a = index.newest("a").unwrap().unwrap();
        let err = closure(
            &index,
            &[],
            &[ClosureRoot {
                component: "x",
                entry: &a,
                exclude: &[],
            }],
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "component x: a → b needs `c (>= 2)`, which cannot be satisfied: the archive has c 1"
        );
        let bad = index.newest("bad").unwrap().unwrap();
        let err = closure(
            &index,
            &[],
            &[ClosureRoot {
                component: "x",
                entry: &bad,
                exclude: &[],
            }],
        )
        .unwrap_err();
        assert!(
            matches!(err, ClosureError::Relation { field: "Depends", .. }),
            "{err}"
        );
    }
}
