//! Contracts shared by the image builder (`ingot`) and the node's PID 1 (`ingot-init`).
//!
//! Everything here is data and pure functions over bytes: partition types and labels, the kernel command
//! line keys `ingot-init` understands, the console markers tests and tools wait for, and a GPT reader that
//! both `ingot inspect` and stage 1 use. Nothing in this crate performs I/O, so both sides agree on the
//! formats by construction and the parsers can be fuzzed in isolation.

pub mod cmdline;
pub mod config;
pub mod gpt;
pub mod gpt_grow;
pub mod host_tools;
pub mod marker;
pub mod node_config;
pub mod partition;
pub mod time;
pub mod verity;

pub use uuid::Uuid;
