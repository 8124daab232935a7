//! ELF checks.
