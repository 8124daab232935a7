//! The services' dependency graph: a start order, and the services that can never start because their
//! configuration is wrong (the builder validates profiles, but PID 1 does not trust that).

use std::collections::BTreeMap;

use ingot_spec::config::{Readiness, Service};

use super::readiness;

/// What [`plan`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every service index once, each after the services it depends on (configuration order where the
    /// graph leaves a choice). Services in a dependency cycle come last.
    pub order: Vec<usize>,
    /// Services that must not start, with the reason.
    pub problems: BTreeMap<usize, String>,
    /// For each service, the indices of the services it names in `after` (unknown names left out).
    pub deps: Vec<Vec<usize>>,
}

/// Whether `name` is usable as a log file name and on the console: `[A-Za-z0-9._-]`, not starting with
/// a dot.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_service(s: &Service) -> Option<String> {
    if !valid_name(&s.name) {
        return Some(format!(
            "the name {:?} is not made of letters, digits, '.', '_' and '-'",
            s.name
        ));
    }
    match s.exec.first() {
        None => return Some("exec is empty".to_owned()),
        Some(p) if !p.starts_with('/') => {
            return Some(format!("exec {p:?} is not an absolute path"));
        }
        Some(_) => {}
    }
    match &s.ready {
        Some(Readiness::Socket(p) | Readiness::File(p)) if !p.starts_with('/') => {
            Some(format!("the readiness path {p:?} is not absolute"))
        }
        Some(Readiness::Command(argv)) if !argv.first().is_some_and(|p| p.starts_with('/')) => {
            Some("the readiness command does not start with an absolute path".to_owned())
        }
        Some(Readiness::Http(url)) => readiness::HttpTarget::parse(url)
            .err()
            .map(|e| format!("the readiness URL {url:?}: {e}")),
        _ => None,
    }
}

/// Orders the services and finds the ones that cannot start: bad names (and duplicates), bad `exec` or
/// readiness settings, unknown or own dependencies, dependency cycles. The dependents of such a service
/// are not listed here: they wait for it like for any dependency and fail when it does.
pub fn plan(services: &[Service]) -> Plan {
    let mut problems = BTreeMap::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in services.iter().enumerate() {
        if let Some(p) = check_service(s) {
            problems.insert(i, p);
        }
        if index.contains_key(s.name.as_str()) {
            problems.insert(i, format!("a second service is named {:?}", s.name));
        } else {
            index.insert(&s.name, i);
        }
    }
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); services.len()];
    for (i, s) in services.iter().enumerate() {
        for d in &s.after {
            match index.get(d.as_str()) {
                Some(&j) if j == i => {
                    problems
                        .entry(i)
                        .or_insert_with(|| "depends on itself".to_owned());
                }
                Some(&j) => {
                    if !deps[i].contains(&j) {
                        deps[i].push(j);
                    }
                }
                None => {
                    problems
                        .entry(i)
                        .or_insert_with(|| format!("depends on {d:?}, which is not a service"));
                }
            }
        }
    }

    // Kahn's algorithm, always taking the first ready service in configuration order.
    let mut placed = vec![false; services.len()];
    let mut order = Vec::with_capacity(services.len());
    while let Some(i) = (0..services.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d])) {
        placed[i] = true;
        order.push(i);
    }
    let left: Vec<usize> = (0..services.len()).filter(|&i| !placed[i]).collect();
    let in_cycle: Vec<usize> = left.iter().copied().filter(|&i| reaches(&deps, i, i)).collect();
    if !in_cycle.is_empty() {
        let names: Vec<&str> = in_cycle.iter().map(|&i| services[i].name.as_str()).collect();
        for &i in &in_cycle {
            problems
                .entry(i)
                .or_insert_with(|| format!("dependency cycle between {}", names.join(", ")));
        }
    }
    order.extend(left);
    Plan {
        order,
        problems,
        deps,
    }
}

/// Whether `to` is reachable from `from` over at least one dependency edge.
fn reaches(deps: &[Vec<usize>], from: usize, to: usize) -> bool {
    let mut seen = vec![false; deps.len()];
    let mut stack: Vec<usize> = deps[from].clone();
    while let Some(n) = stack.pop() {
        if n == to {
            return true;
        }
        if !std::mem::replace(&mut seen[n], true) {
            stack.extend(&deps[n]);
        }
    }
    false
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use ingot_spec::config::{Restart, ServiceKind};

    pub fn service(name: &str, after: &[&str]) -> Service {
        Service {
            name: name.to_owned(),
            exec: vec![format!("/usr/bin/{name}")],
            env: BTreeMap::new(),
            after: after.iter().map(|s| (*s).to_owned()).collect(),
            kind: ServiceKind::Daemon,
            ready: None,
            restart: Restart::Always,
            stop_timeout_ms: 10_000,
            phase: None,
        }
    }

    fn names(services: &[Service], order: &[usize]) -> Vec<String> {
        order.iter().map(|&i| services[i].name.clone()).collect()
    }

    #[test]
    fn orders_dependencies_first_keeping_configuration_order_otherwise() {
        let s = vec![
            service("kubelet", &["containerd", "images"]),
            service("images", &["containerd"]),
            service("containerd", &[]),
            service("chrony", &[]),
        ];
        let p = plan(&s);
        assert!(p.problems.is_empty(), "{:?}", p.problems);
        assert_eq!(names(&s, &p.order), ["containerd", "images", "kubelet", "chrony"]);
        assert_eq!(p.deps[0], [2, 1]);
    }

    #[test]
    fn reports_cycles_unknown_and_bad_services_but_orders_everything() {
        let mut s = vec![
            service("a", &["b"]),
            service("b", &["a"]),
            service("c", &["a"]),
            service("d", &["nope"]),
            service("e", &["e"]),
            service("a", &[]),
            service("../x", &[]),
        ];
        s.push(Service {
            exec: vec!["containerd".into()],
            ..service("f", &[])
        });
        s.push(Service {
            ready: Some(Readiness::Http("http://example.com/healthz".into())),
            ..service("g", &[])
        });
        let p = plan(&s);
        assert_eq!(p.order.len(), s.len());
        let got: Vec<(String, String)> = p
            .problems
            .iter()
            .map(|(i, m)| (s[*i].name.clone(), m.clone()))
            .collect();
        assert_eq!(
            got,
            [
                ("a".into(), "dependency cycle between a, b".into()),
                ("b".into(), "dependency cycle between a, b".into()),
                ("d".into(), "depends on \"nope\", which is not a service".into()),
                ("e".into(), "depends on itself".into()),
                ("a".into(), "a second service is named \"a\"".into()),
                (
                    "../x".into(),
                    "the name \"../x\" is not made of letters, digits, '.', '_' and '-'".into()
                ),
                ("f".into(), "exec \"containerd\" is not an absolute path".into()),
                (
                    "g".into(),
                    "the readiness URL \"http://example.com/healthz\": the host must be a loopback IP address or localhost (PID 1 does no name lookups)".into()
                ),
            ]
        );
        // c only depends on the cycle: it is not itself a problem, it will wait and fail with a.
        assert!(!p.problems.contains_key(&2));
        assert_eq!(names(&s, &p.order[p.order.len() - 3..]), ["a", "b", "c"]);
    }
}
