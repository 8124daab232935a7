//! `ingot kernel check`: does a kernel configuration have what containerd, kubelet, CNI plugins and storage
//! drivers need?
//!
//! The requirements live in `kernel-configs/features.toml` (compiled in), grouped per feature, each option
//! with a description of what it is for. A configuration (`/boot/config-<release>`, a build tree's
//! `.config`) is parsed leniently: `CONFIG_X=value` and `# CONFIG_X is not set` lines count, comments and
//! blank lines are skipped, anything else is counted as ignored. An option is present when it is `y` or
//! `m` (a module is fine: ingot-init loads what a profile lists, and the rest autoload).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

/// The feature list shipped with ingot.
pub const FEATURES_TOML: &str = include_str!("../../kernel-configs/features.toml");

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KconfigError {
    #[error("kernel-configs/features.toml: {0}")]
    Features(String),
    #[error("unknown feature {name:?}; the features are: {}", known.join(", "))]
    UnknownFeature { name: String, known: Vec<String> },
}

/// A parsed kernel configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelConfig {
    /// `CONFIG_X` → its value as written (`y`, `m`, `"text"`, `64`); `n` for `# CONFIG_X is not set`.
    pub options: BTreeMap<String, String>,
    /// The `# Linux/x86 6.1.176 Kernel Configuration` line, without `# `, if there is one.
    pub header: Option<String>,
    /// Lines that are neither options, comments nor blank.
    pub ignored_lines: usize,
}

fn is_option_name(name: &str) -> bool {
    name.strip_prefix("CONFIG_")
        .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
}

/// Parses a kernel configuration. Never fails: what is not an option line is skipped (and counted).
pub fn parse(text: &str) -> KernelConfig {
    let mut cfg = KernelConfig::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            let comment = comment.trim();
            if let Some(name) = comment.strip_suffix(" is not set")
                && is_option_name(name)
            {
                cfg.options.insert(name.to_string(), "n".to_string());
            } else if cfg.header.is_none()
                && comment.starts_with("Linux")
                && comment.ends_with("Kernel Configuration")
            {
                cfg.header = Some(comment.to_string());
            }
            continue;
        }
        match line.split_once('=') {
            Some((name, value)) if is_option_name(name) => {
                cfg.options.insert(name.to_string(), value.to_string());
            }
            _ => cfg.ignored_lines += 1,
        }
    }
    cfg
}

impl KernelConfig {
    /// The value of an option; `None` when the configuration does not mention it (its dependencies are off).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.options.get(name).map(String::as_str)
    }

    fn has(&self, name: &str) -> bool {
        matches!(self.get(name), Some("y" | "m"))
    }
}

/// A group of options one piece of node software needs.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    pub name: String,
    pub description: String,
    pub options: Vec<Requirement>,
}

/// One option (`name`), or a choice between options (`any`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub any: Vec<String>,
    pub description: String,
}

impl Requirement {
    /// The options that satisfy it, in order of preference.
    pub fn choices(&self) -> Vec<&str> {
        self.name
            .iter()
            .map(String::as_str)
            .chain(self.any.iter().map(String::as_str))
            .collect()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureFile {
    feature: Vec<Feature>,
}

/// Parses and checks a feature list (the format of `kernel-configs/features.toml`).
pub fn load_features(text: &str) -> Result<Vec<Feature>, KconfigError> {
    let file: FeatureFile = toml::from_str(text).map_err(|e| KconfigError::Features(e.to_string()))?;
    let mut seen = Vec::new();
    for f in &file.feature {
        if seen.contains(&f.name.as_str()) {
            return Err(KconfigError::Features(format!(
                "feature {:?} is listed twice",
                f.name
            )));
        }
        seen.push(&f.name);
        for r in &f.options {
            let choices = r.choices();
            let shape_ok = match (&r.name, r.any.len()) {
                (Some(_), 0) => true,
                (None, n) => n >= 2,
                _ => false,
            };
            if !shape_ok {
                return Err(KconfigError::Features(format!(
                    "feature {:?}: an option has either `name` or `any` with two or more names ({choices:?})",
                    f.name
                )));
            }
            if let Some(bad) = choices.iter().find(|n| !is_option_name(n)) {
                return Err(KconfigError::Features(format!(
                    "feature {:?}: {bad:?} is not an option name (CONFIG_ and capitals, digits, `_`)",
                    f.name
                )));
            }
        }
    }
    Ok(file.feature)
}

/// The shipped feature list.
pub fn features() -> Result<Vec<Feature>, KconfigError> {
    load_features(FEATURES_TOML)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// What was checked: a file, a package, or a profile's kernel.
    pub source: String,
    /// The configuration's `Linux/x86 … Kernel Configuration` line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Every checked feature is complete.
    pub complete: bool,
    pub features: Vec<FeatureReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureReport {
    pub name: String,
    pub description: String,
    pub complete: bool,
    pub present: Vec<OptionReport>,
    pub missing: Vec<OptionReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OptionReport {
    /// The option found (`y`/`m`), or for a missing one the first choice.
    pub option: String,
    /// For a choice between options: all of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub any_of: Vec<String>,
    /// Its value in the configuration (`y`, `m`, `n`); `null` when the configuration does not mention it.
    pub value: Option<String>,
    pub description: String,
}

/// Checks `config` against the features named in `wanted` (all when empty), in the order of `features`.
pub fn check(
    source: &str,
    config: &KernelConfig,
    features: &[Feature],
    wanted: &[String],
) -> Result<Report, KconfigError> {
    if let Some(unknown) = wanted.iter().find(|w| !features.iter().any(|f| &f.name == *w)) {
        return Err(KconfigError::UnknownFeature {
            name: unknown.clone(),
            known: features.iter().map(|f| f.name.clone()).collect(),
        });
    }
    let reports: Vec<FeatureReport> = features
        .iter()
        .filter(|f| wanted.is_empty() || wanted.contains(&f.name))
        .map(|f| {
            let (mut present, mut missing) = (Vec::new(), Vec::new());
            for r in &f.options {
                let choices = r.choices();
                let any_of = if choices.len() > 1 {
                    choices.iter().map(|c| c.to_string()).collect()
                } else {
                    Vec::new()
                };
                match choices.iter().find(|c| config.has(c)) {
                    Some(found) => present.push(OptionReport {
                        option: found.to_string(),
                        any_of,
                        value: config.get(found).map(str::to_string),
                        description: r.description.clone(),
                    }),
                    None => {
                        let first = choices.first().copied().unwrap_or_default();
                        missing.push(OptionReport {
                            option: first.to_string(),
                            any_of,
                            value: config.get(first).map(str::to_string),
                            description: r.description.clone(),
                        });
                    }
                }
            }
            FeatureReport {
                name: f.name.clone(),
                description: f.description.clone(),
                complete: missing.is_empty(),
                present,
                missing,
            }
        })
        .collect();
    Ok(Report {
        source: source.to_string(),
        kernel: config.header.clone(),
        complete: reports.iter().all(|f| f.complete),
        features: reports,
    })
}

fn describe_value(v: &Option<String>) -> String {
    match v.as_deref() {
        None => "absent: an option it depends on is off".to_string(),
        Some("n") => "not set".to_string(),
        Some(other) => format!("={other}"),
    }
}

/// The report as text: per feature a status line, then every option (`ok` with its value, or `MISSING` with
/// what it is for); a summary line at the end.
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", r.source);
    if let Some(k) = &r.kernel {
        let _ = writeln!(s, "{k}");
    }
    for f in &r.features {
        let status = if f.complete {
            "complete".to_string()
        } else {
            format!(
                "INCOMPLETE: {} of {} missing",
                f.missing.len(),
                f.missing.len() + f.present.len()
            )
        };
        let _ = writeln!(s, "\n{}: {status}\n  {}", f.name, f.description);
        for o in &f.present {
            let value = o.value.as_deref().unwrap_or_default();
            let _ = writeln!(s, "  ok       {}={value}", o.option);
        }
        for o in &f.missing {
            let what = if o.any_of.is_empty() {
                format!("{} ({})", o.option, describe_value(&o.value))
            } else {
                format!("{} (none is y or m)", o.any_of.join(" or "))
            };
            let _ = writeln!(s, "  MISSING  {what}: {}", o.description);
        }
    }
    let done = r.features.iter().filter(|f| f.complete).count();
    let incomplete: Vec<&str> = r
        .features
        .iter()
        .filter(|f| !f.complete)
        .map(|f| f.name.as_str())
        .collect();
    let _ = write!(s, "\n{done} of {} features complete", r.features.len());
    if !incomplete.is_empty() {
        let _ = write!(s, "; incomplete: {}", incomplete.join(", "));
    }
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn parses_values_unset_options_and_the_header() {
        let cfg = parse(
            "#\n# Automatically generated file; DO NOT EDIT.\n# Linux/x86 6.1.176 Kernel Configuration\n#\n\
             CONFIG_A=y\nCONFIG_B=m\r\n# CONFIG_C is not set\nCONFIG_D=\"text = x\"\nCONFIG_E=0x10\n\
             CONFIG_A=m\nnot an option\nCONFIG_=y\n  # CONFIG_F is not set  \n\n",
        );
        assert_eq!(
            cfg.header.as_deref(),
            Some("Linux/x86 6.1.176 Kernel Configuration")
        );
        assert_eq!(
            cfg.get("CONFIG_A"),
            Some("m"),
            "the last assignment wins, as in Kconfig"
        );
        assert_eq!(cfg.get("CONFIG_B"), Some("m"));
        assert_eq!(cfg.get("CONFIG_C"), Some("n"));
        assert_eq!(cfg.get("CONFIG_D"), Some("\"text = x\""));
        assert_eq!(cfg.get("CONFIG_E"), Some("0x10"));
        assert_eq!(cfg.get("CONFIG_F"), Some("n"));
        assert_eq!(cfg.get("CONFIG_G"), None);
        assert_eq!(cfg.ignored_lines, 2);
    }

    #[test]
    fn shipped_features_load_and_cover_the_documented_groups() {
        let f = features().unwrap();
        let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
        for want in [
            "containers",
            "kubelet",
            "kube-proxy",
            "bridge-cni",
            "vxlan",
            "cilium",
            "calico",
            "longhorn",
            "rook",
            "topolvm",
            "ipvs",
            "verity-root",
        ] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        assert!(
            f.iter()
                .all(|f| !f.options.is_empty() && !f.description.is_empty())
        );
    }

    #[test]
    fn bad_feature_files_are_explained() {
        let cases = [
            (
                "[[feature]]\nname = \"a\"\ndescription = \"d\"\noptions = [{ name = \"X\", description = \"d\" }]\n",
                "not an option name",
            ),
            (
                "[[feature]]\nname = \"a\"\ndescription = \"d\"\noptions = [{ any = [\"CONFIG_X\"], description = \"d\" }]\n",
                "two or more",
            ),
            (
                "[[feature]]\nname = \"a\"\ndescription = \"d\"\noptions = []\n[[feature]]\nname = \"a\"\ndescription = \"d\"\noptions = []\n",
                "twice",
            ),
            ("[[feature]]\nname = \"a\"\n", "missing field"),
        ];
        for (text, want) in cases {
            let e = load_features(text).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    const FIXTURE: &str =
        "# Linux/x86 6.1.0 Kernel Configuration\nCONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\nCONFIG_E=m\n";
    const FEATURES: &str = r#"
[[feature]]
name = "one"
description = "the first"
options = [
  { name = "CONFIG_A", description = "a is needed" },
  { any = ["CONFIG_D", "CONFIG_E"], description = "d or e" },
]

[[feature]]
name = "two"
description = "the second"
options = [
  { name = "CONFIG_B", description = "b is needed" },
  { name = "CONFIG_C", description = "c is needed" },
  { name = "CONFIG_Z", description = "z is needed" },
  { any = ["CONFIG_X", "CONFIG_Y"], description = "x or y" },
]
"#;

    #[test]
    fn check_output_matches_the_golden_files() {
        let f = load_features(FEATURES).unwrap();
        let r = check("fixture.config", &parse(FIXTURE), &f, &[]).unwrap();
        assert!(!r.complete);
        assert!(r.features[0].complete && !r.features[1].complete);
        crate::golden::check("kernel-check.txt", &render(&r));
        let mut json = serde_json::to_string_pretty(&r).unwrap();
        json.push('\n');
        crate::golden::check("kernel-check.json", &json);
        let only_one = check("fixture.config", &parse(FIXTURE), &f, &["one".to_string()]).unwrap();
        assert!(only_one.complete);
        assert_eq!(only_one.features.len(), 1);
    }

    #[test]
    fn unknown_features_list_the_known_ones() {
        let f = load_features(FEATURES).unwrap();
        let e = check("x", &parse(FIXTURE), &f, &["one".into(), "three".into()]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown feature \"three\"; the features are: one, two"
        );
    }

    /// Lines that look like configuration lines, and arbitrary ones.
    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            "CONFIG_[A-Z0-9_]{0,12}=[ymn\"a-z0-9 =#]{0,8}",
            "# CONFIG_[A-Z0-9_]{0,12} is not set",
            "#[ -~]{0,30}",
            any::<String>(),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_keeps_what_it_reads(lines in proptest::collection::vec(line(), 0..40)) {
            let text = lines.join("\n");
            let cfg = parse(&text);
            for (k, v) in &cfg.options {
                prop_assert!(is_option_name(k));
                prop_assert!(!v.contains('\n'));
            }
            // Checking never panics either, whatever was parsed.
            let f = load_features(FEATURES).unwrap();
            let r = check("p", &cfg, &f, &[]).unwrap();
            let _ = render(&r);
        }

        #[test]
        fn mutated_configurations_never_panic(
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..16),
        ) {
            let mut bytes = FIXTURE.as_bytes().to_vec();
            for (i, b) in flips {
                let n = bytes.len();
                bytes[i % n] = b;
            }
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let cfg = parse(&text);
            prop_assert!(cfg.options.len() + cfg.ignored_lines <= text.lines().count());
        }
    }
}
