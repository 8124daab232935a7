//! The read-only root: staging the tree from components, checking it, and writing the file system.

pub mod elf;
pub mod erofs;
pub mod programs;
pub mod stage;
