//! Fills in where each [`Located`] value of a freshly parsed profile was written.

use std::path::Path;

use super::raw::{Located, Origin, RawProfile};

/// Sets the origin (file and line) of every located value in `p`, parsed from `text` read from `file`.
pub fn locate(p: &mut RawProfile, file: &Path, text: &str) {
    let origin = |span_start: usize| Origin {
        file: file.to_path_buf(),
        line: line_of(text, span_start),
    };
    fn set<T>(v: &mut Located<T>, origin: &dyn Fn(usize) -> Origin) {
        v.origin = Some(origin(v.span.start));
    }
    if let Some(node) = p.node.as_mut() {
        node.hostname.iter_mut().for_each(|v| set(v, &origin));
        node.modules.iter_mut().flatten().for_each(|v| set(v, &origin));
        node.sysctls
            .iter_mut()
            .flat_map(|m| m.values_mut())
            .for_each(|v| set(v, &origin));
    }
    for iface in p
        .network
        .iter_mut()
        .flat_map(|n| n.interfaces.iter_mut().flatten())
    {
        set(iface, &origin);
        let i = &mut iface.value;
        i.matches.iter_mut().for_each(|v| set(v, &origin));
        i.addresses.iter_mut().flatten().for_each(|v| set(v, &origin));
        i.gateway.iter_mut().for_each(|v| set(v, &origin));
        i.dns.iter_mut().flatten().for_each(|v| set(v, &origin));
        i.mtu.iter_mut().for_each(|v| set(v, &origin));
    }
    for server in p.time.iter_mut().flat_map(|t| t.servers.iter_mut().flatten()) {
        set(server, &origin);
    }
    for service in p.services.iter_mut().flatten() {
        set(service, &origin);
        let s = &mut service.value;
        set(&mut s.name, &origin);
        s.exec.iter_mut().for_each(|v| set(v, &origin));
        s.env
            .iter_mut()
            .flat_map(|m| m.values_mut())
            .for_each(|v| set(v, &origin));
        s.after.iter_mut().flatten().for_each(|v| set(v, &origin));
        s.kind.iter_mut().for_each(|v| set(v, &origin));
        s.ready.iter_mut().for_each(|v| set(v, &origin));
        s.restart.iter_mut().for_each(|v| set(v, &origin));
        s.stop_timeout.iter_mut().for_each(|v| set(v, &origin));
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}
