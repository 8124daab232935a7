//! Lines `ingot-init` prints on the console. Tests, `ingot run --expect` and the boot benchmark match them,
//! so their shape is a contract.

/// Prefix of every line `ingot-init` writes to the console.
pub const PREFIX: &str = "ingot: ";

/// Boot phases in the order a node passes them.
pub const PHASE_STAGE1: &str = "stage1";
pub const PHASE_ROOT: &str = "root";
pub const PHASE_STAGE2: &str = "stage2";
/// `var` is mounted (grown and formatted first on the first boot).
pub const PHASE_VAR: &str = "var";
/// The network is configured; details carry the address.
pub const PHASE_NETWORK: &str = "network";
/// The clock is set from NTP, or the node gave up waiting and keeps the RTC time (details say which).
pub const PHASE_CLOCK: &str = "clock";
/// Every service is ready (daemons) or done (one-shots).
pub const PHASE_READY: &str = "ready";

/// The phase a service reaches when its readiness check first passes: `containerd-ready`.
pub fn service_ready_phase(service: &str) -> String {
    format!("{service}-ready")
}

/// Formats the phase line `ingot: phase=<name> t=<ms since kernel start>`.
pub fn phase_line(phase: &str, millis_since_boot: u64) -> String {
    format!("{PREFIX}phase={phase} t={millis_since_boot}")
}

/// Formats a phase line followed by details: `ingot: phase=network t=2345 address=10.0.2.15/24`.
pub fn phase_line_with(phase: &str, millis_since_boot: u64, details: &str) -> String {
    let mut line = phase_line(phase, millis_since_boot);
    if !details.is_empty() {
        line.push(' ');
        line.push_str(details);
    }
    line
}

/// Parses a phase line back into `(phase, millis)`, ignoring details; `None` for any other line.
pub fn parse_phase_line(line: &str) -> Option<(&str, u64)> {
    let rest = line.trim_end().strip_prefix(PREFIX)?.strip_prefix("phase=")?;
    let (phase, t) = rest.split_once(" t=")?;
    let t = t.split_once(' ').map_or(t, |(t, _)| t);
    let millis = t.parse().ok()?;
    (!phase.is_empty() && !phase.contains(' ')).then_some((phase, millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_line_round_trips() {
        let line = phase_line(PHASE_READY, 1234);
        assert_eq!(line, "ingot: phase=ready t=1234");
        assert_eq!(parse_phase_line(&line), Some((PHASE_READY, 1234)));
        assert_eq!(parse_phase_line("ingot: phase=ready t=x"), None);
        assert_eq!(parse_phase_line("[ 1.0] ingot: phase=ready t=1"), None);
        let line = phase_line_with(PHASE_NETWORK, 7, "address=10.0.2.15/24");
        assert_eq!(line, "ingot: phase=network t=7 address=10.0.2.15/24");
        assert_eq!(parse_phase_line(&line), Some((PHASE_NETWORK, 7)));
    }
}
