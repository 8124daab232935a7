//! The `extends` merge rules (documented in the parent module and tested in `tests.rs`).

use std::collections::BTreeMap;
use std::path::Path;

use super::raw::*;

/// Child scalar wins.
fn pick<T>(base: Option<T>, child: Option<T>) -> Option<T> {
    child.or(base)
}

/// Appends the child's list to the base's; an explicit empty child list resets.
fn append<T>(base: Option<Vec<T>>, child: Option<Vec<T>>) -> Option<Vec<T>> {
    match (base, child) {
        (b, None) => b,
        (_, Some(c)) if c.is_empty() => Some(c),
        (None, Some(c)) => Some(c),
        (Some(mut b), Some(c)) => {
            b.extend(c);
            Some(b)
        }
    }
}

/// Merges keyed entries: same key replaces in place, new keys append, an explicit empty list resets.
fn merge_keyed<T, K: PartialEq>(
    base: Option<Vec<T>>,
    child: Option<Vec<T>>,
    key: impl Fn(&T) -> K,
) -> Option<Vec<T>> {
    match (base, child) {
        (b, None) => b,
        (_, Some(c)) if c.is_empty() => Some(c),
        (None, Some(c)) => Some(c),
        (Some(mut b), Some(c)) => {
            for entry in c {
                match b.iter().position(|x| key(x) == key(&entry)) {
                    Some(i) => b[i] = entry,
                    None => b.push(entry),
                }
            }
            Some(b)
        }
    }
}

/// [`merge_keyed`] by name, where a child entry with `remove = true` drops the base's entry. One that
/// matches nothing stays, flagged, for validation to report.
fn merge_components(
    base: Option<Vec<RawComponent>>,
    child: Option<Vec<RawComponent>>,
) -> Option<Vec<RawComponent>> {
    let base_names: Vec<String> = base.iter().flatten().map(|c| c.name.clone()).collect();
    let merged = merge_keyed(base, child, |c| c.name.clone())?;
    Some(
        merged
            .into_iter()
            .filter(|c| c.remove != Some(true) || !base_names.contains(&c.name))
            .collect(),
    )
}

/// Merges maps key by key (the child's value wins); an explicit empty child map resets.
fn merge_map<K: Ord, V>(
    base: Option<BTreeMap<K, V>>,
    child: Option<BTreeMap<K, V>>,
) -> Option<BTreeMap<K, V>> {
    match (base, child) {
        (b, None) => b,
        (_, Some(c)) if c.is_empty() => Some(c),
        (None, Some(c)) => Some(c),
        (Some(mut b), Some(c)) => {
            b.extend(c);
            Some(b)
        }
    }
}

fn merge_table<T: Default>(base: Option<T>, child: Option<T>, f: impl FnOnce(T, T) -> T) -> Option<T> {
    match (base, child) {
        (None, c) => c,
        (b, None) => b,
        (Some(b), Some(c)) => Some(f(b, c)),
    }
}

/// Source fields replace as a group: a child that names any source replaces the base's source entirely,
/// so `package` in the base and `path` in the child never combine into an ambiguous source.
macro_rules! merge_source {
    ($b:expr, $c:expr) => {{
        let child_has = $c.package.is_some() || $c.url.is_some() || $c.sha256.is_some() || $c.path.is_some();
        if child_has {
            ($c.package, $c.url, $c.sha256, $c.path)
        } else {
            ($b.package, $b.url, $b.sha256, $b.path)
        }
    }};
}

pub fn merge(base: RawProfile, child: RawProfile) -> RawProfile {
    RawProfile {
        extends: None,
        image: merge_table(base.image, child.image, |b, c| RawImage {
            name: pick(b.name, c.name),
            version: pick(b.version, c.version),
            source_date_epoch: pick(b.source_date_epoch, c.source_date_epoch),
            zstd_level: pick(b.zstd_level, c.zstd_level),
        }),
        archive: merge_table(base.archive, child.archive, |b, c| RawArchive {
            url: pick(b.url, c.url),
            suite: pick(b.suite, c.suite),
            components: pick(b.components, c.components),
            arch: pick(b.arch, c.arch),
            keyring: pick(b.keyring, c.keyring),
        }),
        // An apt base names one archive and one package set: the child's table replaces the base's whole.
        base: child.base.or(base.base),
        kernel: merge_table(base.kernel, child.kernel, |b, c| {
            // `from = "base"` is a source like `package`: whichever the child names replaces the base's.
            let (from, (package, url, sha256, path)) = if c.from.is_some() {
                (c.from, (None, None, None, None))
            } else {
                let child_has = c.package.is_some() || c.url.is_some() || c.path.is_some();
                (if child_has { None } else { b.from.clone() }, merge_source!(b, c))
            };
            RawKernel {
                from,
                package,
                url,
                sha256,
                path,
                cmdline: append(b.cmdline, c.cmdline),
                initrd_modules: append(b.initrd_modules, c.initrd_modules),
                root_modules: append(b.root_modules, c.root_modules),
            }
        }),
        bootloader: merge_table(base.bootloader, child.bootloader, |b, c| {
            let (package, url, sha256, path) = merge_source!(b, c);
            RawBootloader {
                package,
                url,
                sha256,
                path,
                timeout: pick(b.timeout, c.timeout),
            }
        }),
        partitions: merge_table(base.partitions, child.partitions, |b, c| RawPartitions {
            esp: pick(b.esp, c.esp),
            root: pick(b.root, c.root),
            var: pick(b.var, c.var),
        }),
        components: merge_components(base.components, child.components),
        images: merge_keyed(base.images, child.images, |i| i.name.clone()),
        files: merge_keyed(base.files, child.files, |f| f.path.clone()),
        node: merge_table(base.node, child.node, |b, c| RawNode {
            hostname: pick(b.hostname, c.hostname),
            modules: append(b.modules, c.modules),
            sysctls: merge_map(b.sysctls, c.sysctls),
        }),
        network: merge_table(base.network, child.network, |b, c| RawNetwork {
            interfaces: merge_keyed(b.interfaces, c.interfaces, |i| {
                i.value.matches.as_ref().map(|m| m.value.clone())
            }),
        }),
        time: merge_table(base.time, child.time, |b, c| RawTime {
            servers: append(b.servers, c.servers),
        }),
        services: merge_keyed(base.services, child.services, |s| s.value.name.value.clone()),
        kubernetes: merge_table(base.kubernetes, child.kubernetes, |b, c| RawKubernetes {
            kubelet: pick(b.kubelet, c.kubelet),
            args: append(b.args, c.args),
            config: merge_map(b.config, c.config),
            after: append(b.after, c.after),
        }),
    }
}

/// Expands `~/` at the start and `${NAME}` anywhere in a host path, so a profile can name a file outside
/// the repository (a cache, a build output) without hard-coding a home directory.
pub fn expand_env(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    if let Some(r) = rest.strip_prefix("~/") {
        out.push_str(&lookup("HOME").ok_or("`~` is used but HOME is not set")?);
        out.push('/');
        rest = r;
    }
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("`${{` without a closing `}}` in {s:?}"))?;
        let name = &after[..end];
        let value = lookup(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("{s:?} uses the environment variable {name}, which is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Makes every host path in `p` relative to `dir` (the directory of the file that declared it), so a base
/// profile's `path = "blobs/x"` keeps meaning its own directory after merging. `~/` and `${NAME}` are
/// expanded first; the error names the field.
pub fn rebase_paths(p: &mut RawProfile, dir: &Path) -> Result<(), (String, String)> {
    let env = |name: &str| std::env::var(name).ok();
    let rebase = |s: &mut Option<String>, field: &str| -> Result<(), (String, String)> {
        if let Some(v) = s.as_mut() {
            *v = expand_env(v, env).map_err(|m| (field.to_owned(), m))?;
            if !Path::new(v.as_str()).is_absolute() {
                *v = dir.join(v.as_str()).to_string_lossy().into_owned();
            }
        }
        Ok(())
    };
    if let Some(a) = p.archive.as_mut() {
        rebase(&mut a.keyring, "archive.keyring")?;
    }
    if let Some(a) = p.base.as_mut().and_then(|b| b.apt.as_mut()) {
        rebase(&mut a.keyring, "base.apt.keyring")?;
    }
    if let Some(k) = p.kernel.as_mut() {
        rebase(&mut k.path, "kernel.path")?;
    }
    if let Some(b) = p.bootloader.as_mut() {
        rebase(&mut b.path, "bootloader.path")?;
    }
    for c in p.components.iter_mut().flatten() {
        rebase(&mut c.path, &format!("components[{}].path", c.name))?;
    }
    for i in p.images.iter_mut().flatten() {
        rebase(&mut i.path, &format!("images[{}].path", i.name))?;
    }
    for f in p.files.iter_mut().flatten() {
        rebase(&mut f.source, &format!("files[{}].source", f.path))?;
    }
    Ok(())
}
