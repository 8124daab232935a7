//! ELF checks.

/// Placeholder until the ELF dependency check lands.
pub fn check_tree(_root: &std::path::Path) -> Result<(), std::io::Error> {
    Ok(())
}
