//! Debian archives: from package names to pinned pool URLs (the work behind `ingot lock`).
//!
//! The chain of trust is the archive's own: the keyring shipped in `keyrings/` verifies
//! `dists/<suite>/InRelease`; `InRelease` pins the sha256 and size of each `Packages` index; each
//! index pins the sha256 of each `.deb`. [`resolve`] walks that chain and returns, for every
//! [`PackageRequest`], the newest version's URL and sha256 — which the lock file records, so builds
//! never consult the archive's indices again, only its pool.
//!
//! Indices are cached in the content-addressed cache under the hashes `InRelease` gives them, so
//! locking twice downloads only `InRelease`.
//!
//! Limits: one architecture per [`ArchiveSpec`]; no dependency solving (the profile lists what it
//! needs; the only dependency followed is the one a kernel metapackage points at); `Provides:` is
//! parsed but virtual packages are not resolved; source packages are not indexed.
//!
//! Rejected alternative: asking `apt` on the host. Builds must not depend on the host's
//! configuration or keyrings, and the machines we build on need not run Debian.

pub mod deb822;
pub mod inrelease;
pub mod packages;
pub mod resolve;
pub mod version;

pub use inrelease::{InReleaseError, Keyring, Release};
pub use resolve::{ArchiveSpec, PackageRequest, ResolveError, Resolved, resolve};
pub use version::Version;

#[cfg(test)]
mod tests;
