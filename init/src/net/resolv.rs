//! `/etc/resolv.conf` from the configured and the leased name servers.

use std::net::Ipv4Addr;

/// The file's content: a header, `search` with the leased domains, one `nameserver` line per server in
/// order of preference, duplicates dropped. glibc reads only the first three servers; the others are
/// kept so a reader with no such limit sees them.
pub fn render(servers: &[Ipv4Addr], domains: &[String]) -> String {
    let mut out = String::from("# Written by ingot-init from the network configuration and DHCP leases.\n");
    let mut seen_domains: Vec<&str> = Vec::new();
    for d in domains {
        if !seen_domains.contains(&d.as_str()) {
            seen_domains.push(d);
        }
    }
    if !seen_domains.is_empty() {
        out.push_str("search ");
        out.push_str(&seen_domains.join(" "));
        out.push('\n');
    }
    let mut seen: Vec<Ipv4Addr> = Vec::new();
    for s in servers {
        if !seen.contains(s) {
            seen.push(*s);
            out.push_str(&format!("nameserver {s}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_servers_in_order_without_duplicates() {
        let a = Ipv4Addr::new(10, 0, 2, 3);
        let b = Ipv4Addr::new(1, 1, 1, 1);
        let text = render(&[b, a, b], &["example.net".into(), "example.net".into()]);
        assert_eq!(
            text,
            "# Written by ingot-init from the network configuration and DHCP leases.\n\
             search example.net\n\
             nameserver 1.1.1.1\n\
             nameserver 10.0.2.3\n"
        );
        assert!(!render(&[], &[]).contains("nameserver"));
    }
}
