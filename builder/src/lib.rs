//! The ingot image builder library.
