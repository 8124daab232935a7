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
//! Dependencies are followed only where asked: a kernel metapackage is followed to the versioned
//! kernel package, and a request with `depends` pulls its `Pre-Depends` + `Depends` closure
//! ([`closure`]: first satisfiable alternative, virtual packages through `Provides:`, version
//! constraints checked, stopping at packages the profile already has).
//!
//! Limits: one architecture per [`ArchiveSpec`]; no conflict resolution (`Conflicts:`/`Breaks:` are not
//! read: the closure never holds two versions of a package, and the profile author picks
//! alternatives); source packages are not indexed.
//!
//! Rejected alternative: asking `apt` on the host. Builds must not depend on the host's
//! configuration or keyrings, and the machines we build on need not run Debian.

pub mod closure;
pub mod deb822;
pub mod inrelease;
pub mod packages;
pub mod relation;
pub mod resolve;
pub mod version;

pub use inrelease::{InReleaseError, Keyring, Release};
pub use resolve::{ArchiveSpec, PackageRequest, ResolveError, Resolved, resolve, resolve_base};
pub use version::Version;

#[cfg(test)]
mod tests;
