//! Lines `ingot-init` prints on the console. Tests, `ingot run --expect` and the boot benchmark match them,
//! so their shape is a contract.

/// Prefix of every line `ingot-init` writes to the console.
pub const PREFIX: &str = "ingot: ";

/// Boot phases in the order a node passes them.
pub const PHASE_STAGE1: &str = "stage1";
pub const PHASE_ROOT_MOUNTED: &str = "root-mounted";
pub const PHASE_STAGE2: &str = "stage2";
pub const PHASE_READY: &str = "ready";

/// Formats the phase line `ingot: phase=<name> t=<ms since kernel start>`.
pub fn phase_line(phase: &str, millis_since_boot: u64) -> String {
    format!("{PREFIX}phase={phase} t={millis_since_boot}")
}

/// Parses a phase line back into `(phase, millis)`; `None` for any other line.
pub fn parse_phase_line(line: &str) -> Option<(&str, u64)> {
    let rest = line.trim_end().strip_prefix(PREFIX)?.strip_prefix("phase=")?;
    let (phase, t) = rest.split_once(" t=")?;
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
    }
}
