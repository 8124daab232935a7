//! `[[images]]`: container images preloaded into the root and imported into containerd at boot.
//!
//! An image is either a pinned OCI image archive (`url` + `sha256`, or `path`) or built from a component's
//! files (`from`). Its `name` is the full reference it is imported as; kubelet looks images up by their
//! normalised reference (`docker.io/library/busybox:latest`), so a short name like `busybox` would never be
//! found and is refused.

use std::collections::BTreeMap;

use super::ProfileError;
use super::raw::RawContainerImage;
use super::validate::{Component, Ctx, Source};

/// containerd's namespace for Kubernetes' images.
pub const DEFAULT_NAMESPACE: &str = "k8s.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerImage {
    /// The reference it is imported as, e.g. `registry.k8s.io/pause:3.6`.
    pub name: String,
    /// containerd namespace to import into.
    pub namespace: String,
    pub source: ImageSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A ready OCI (or `docker save`) image archive: [`Source::Url`] or [`Source::Path`].
    Archive(Source),
    /// A single-layer image made of the files of a component (as its `files` mapping selects them).
    Component {
        component: String,
        entrypoint: Vec<String>,
        cmd: Vec<String>,
        env: BTreeMap<String, String>,
    },
}

/// The archive's file name under `IMAGES_DIR`: the reference with every character other than letters,
/// digits, `.`, `_` and `-` replaced by `_`, plus `.tar` (`registry.k8s.io/pause:3.6` →
/// `registry.k8s.io_pause_3.6.tar`).
pub fn archive_file_name(reference: &str) -> String {
    let mut s: String = reference
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.push_str(".tar");
    s
}

/// Checks a fully qualified image reference: `DOMAIN/PATH:TAG`, `DOMAIN/PATH@sha256:HEX` or both.
pub fn check_reference(r: &str) -> Result<(), String> {
    let hint =
        "expected a full reference like \"registry.k8s.io/pause:3.6\" or \"docker.io/library/busybox:1.36\"";
    if r.len() > 255 {
        return Err(format!("{r:?} is longer than 255 characters"));
    }
    let (rest, digest) = match r.split_once('@') {
        Some((rest, d)) => (rest, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        });
        if !ok {
            return Err(format!(
                "{r:?}: the digest must be sha256: and 64 lower-case hex digits"
            ));
        }
    }
    let last_slash = rest.rfind('/').unwrap_or(0);
    let (path, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if tag.is_none() && digest.is_none() {
        return Err(format!("{r:?} has no tag or digest; {hint}"));
    }
    if let Some(t) = tag {
        let mut chars = t.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        if !first_ok || t.len() > 128 || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return Err(format!(
                "{r:?}: tag {t:?} must be letters, digits, `_`, `.`, `-` (at most 128)"
            ));
        }
    }
    let Some((domain, repo)) = path.split_once('/') else {
        return Err(format!("{r:?} names no registry; {hint}"));
    };
    if !(domain.contains('.') || domain.contains(':') || domain == "localhost") {
        return Err(format!(
            "{r:?} names no registry ({domain:?} is not a host name); {hint}"
        ));
    }
    let (host, port) = match domain.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (domain, None),
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if !host.split('.').all(label_ok)
        || port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("{r:?}: {domain:?} is not a registry host[:port]"));
    }
    for component in repo.split('/') {
        if !path_component_ok(component) {
            return Err(format!(
                "{r:?}: path component {component:?} must be lower-case letters and digits, separated by `.`, `_`, `__` or `-`"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn path_component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

/// containerd namespaces: letters and digits, separated by single `.`, `_` or `-`.
fn namespace_ok(ns: &str) -> bool {
    ns.len() <= 76
        && !ns.is_empty()
        && ns
            .split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

pub(super) fn validate(
    cx: &Ctx<'_>,
    raw: Vec<RawContainerImage>,
    components: &[Component],
) -> Result<Vec<ContainerImage>, ProfileError> {
    let mut out: Vec<ContainerImage> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let field = format!("images[{i}]");
        check_reference(&r.name).map_err(|m| cx.err(format!("{field}.name"), m))?;
        if let Some(other) = out.iter().find(|x| x.name == r.name) {
            return Err(cx.err(
                format!("{field}.name"),
                format!("{:?} is declared twice", other.name),
            ));
        }
        let file = archive_file_name(&r.name);
        if let Some(other) = out.iter().find(|x| archive_file_name(&x.name) == file) {
            return Err(cx.err(
                format!("{field}.name"),
                format!("{:?} and {:?} would both be stored as {file}", other.name, r.name),
            ));
        }
        let namespace = r.namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        if !namespace_ok(&namespace) {
            return Err(cx.err(
                format!("{field}.namespace"),
                format!("{namespace:?} must be letters and digits separated by `.`, `_` or `-`"),
            ));
        }
        let source = match r.from {
            Some(from) => {
                if r.url.is_some() || r.sha256.is_some() || r.path.is_some() {
                    return Err(cx.err(
                        &field,
                        "has more than one source: use exactly one of `from`, `url` + `sha256`, `path`",
                    ));
                }
                if !components.iter().any(|c| c.name == from) {
                    let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
                    return Err(cx.err(
                        format!("{field}.from"),
                        format!(
                            "{from:?} is not a component of this profile (components: {})",
                            if names.is_empty() {
                                "none".to_string()
                            } else {
                                names.join(", ")
                            }
                        ),
                    ));
                }
                let env = r.env.unwrap_or_default();
                if let Some(k) = env
                    .keys()
                    .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
                {
                    return Err(cx.err(format!("{field}.env"), format!("{k:?} is not a variable name")));
                }
                ImageSource::Component {
                    component: from,
                    entrypoint: r.entrypoint.unwrap_or_default(),
                    cmd: r.cmd.unwrap_or_default(),
                    env,
                }
            }
            None => {
                if r.entrypoint.is_some() || r.cmd.is_some() || r.env.is_some() {
                    return Err(cx.err(
                        &field,
                        "`entrypoint`, `cmd` and `env` only apply to images built `from` a component (an archive carries its own)",
                    ));
                }
                if r.url.is_none() && r.sha256.is_none() && r.path.is_none() {
                    return Err(cx.err(
                        &field,
                        "needs a source: `url` + `sha256` or `path` (an OCI image archive), or `from` (a component)",
                    ));
                }
                ImageSource::Archive(cx.source(&field, None, r.url, r.sha256, r.path)?)
            }
        };
        out.push(ContainerImage {
            name: r.name,
            namespace,
            source,
        });
    }
    for (i, c) in components.iter().enumerate() {
        let used = out
            .iter()
            .any(|im| matches!(&im.source, ImageSource::Component { component, .. } if *component == c.name));
        if !c.install && !used {
            return Err(cx.err(
                format!("components[{i}].install"),
                format!(
                    "{:?} is not installed and no image is built `from` it: drop the component or use it",
                    c.name
                ),
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        for ok in [
            "registry.k8s.io/pause:3.6",
            "ingot.local/busybox:latest",
            "docker.io/library/busybox:1.36",
            "localhost:5000/a/b-c__d.e:v1",
            "localhost/x@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "quay.io/cilium/cilium:v1.14.0@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        ] {
            assert_eq!(check_reference(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("busybox", "no tag"),
            ("busybox:latest", "names no registry"),
            ("library/busybox:latest", "not a host name"),
            ("docker.io/library/BusyBox:1", "path component"),
            ("docker.io/library/busybox:", "tag"),
            ("docker.io/library/busybox:-x", "tag"),
            ("docker.io/library/busybox@sha256:abc", "digest"),
            ("reg-.io/x:1", "registry host"),
            ("reg.io:/x:1", "registry host"),
            ("reg.io/a..b:1", "path component"),
            ("reg.io//b:1", "path component"),
        ] {
            let e = check_reference(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn file_names_and_namespaces() {
        assert_eq!(
            archive_file_name("registry.k8s.io/pause:3.6"),
            "registry.k8s.io_pause_3.6.tar"
        );
        assert_eq!(
            archive_file_name("ingot.local/busybox:latest"),
            "ingot.local_busybox_latest.tar"
        );
        assert!(namespace_ok("k8s.io") && namespace_ok("default") && namespace_ok("a-b_c"));
        assert!(!namespace_ok("") && !namespace_ok("a..b") && !namespace_ok("a/b") && !namespace_ok(".a"));
    }
}
