//! The ingot image builder library.

pub mod debian;
pub mod fetch;
pub mod lock;
