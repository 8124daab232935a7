//! The profile's `[[images]]` in the root: each becomes an OCI image archive at
//! `IMAGES_DIR/<file name>.tar` (see [`crate::profile::archive_file_name`]), listed in the init
//! configuration so the node imports it into containerd, and in the manifest.
//!
//! - `from = "<component>"`: the component's files (as its `files` mapping selects them, exactly as for
//!   the root) are staged into their own tree and written as a single-layer image by [`crate::oci`].
//! - `url` / `path`: the pinned archive is copied, byte for byte when its `index.json` already names the
//!   image `name` for containerd; otherwise the copy's `index.json` gets the name annotations (see
//!   [`crate::oci::normalize_archive`]), so the node never imports an untagged image.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ingot_spec::config::{IMAGES_DIR, Image};

use crate::fetch::Sha256;
use crate::manifest::ImageEntry;
use crate::oci::{self, ImageConfig};
use crate::profile::{ImageSource, Profile, archive_file_name};
use crate::rootfs::stage::Stage;

/// The lock file's name for an image archive: `image:<reference>` (component names cannot hold `:`, so the
/// two never collide).
pub fn lock_name(reference: &str) -> String {
    format!("image:{reference}")
}

/// An image archive placed in the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedImage {
    pub name: String,
    pub namespace: String,
    /// Absolute path in the root.
    pub archive: String,
    /// sha256 of the archive as it is in the root.
    pub sha256: Sha256,
    /// `sha256:<hex>` of the image's manifest: what `ctr images ls` shows.
    pub digest: String,
}

/// Writes every image of `profile` into the staged root. `inputs[i]` belongs to `profile.images[i]`: the
/// verified archive blob for `url`/`path` images, the unpacked component for `from` images. `work` is an
/// empty scratch directory.
pub fn stage(stage: &Stage, profile: &Profile, inputs: &[PathBuf], work: &Path) -> Result<Vec<StagedImage>> {
    let mut out = Vec::new();
    if profile.images.is_empty() {
        return Ok(out);
    }
    let dir = stage.dir(Path::new(IMAGES_DIR))?;
    for (i, (image, input)) in profile.images.iter().zip(inputs).enumerate() {
        let file = archive_file_name(&image.name);
        let host = dir.join(&file);
        let info = match &image.source {
            ImageSource::Archive(_) => oci::normalize_archive(input, &image.name, &host),
            ImageSource::Component {
                component,
                entrypoint,
                cmd,
                env,
            } => {
                let c = profile
                    .components
                    .iter()
                    .find(|c| &c.name == component)
                    .with_context(|| format!("image {:?}: no component {component:?}", image.name))?;
                let tree = work.join(format!("image-{i}"));
                std::fs::create_dir(&tree).with_context(|| format!("creating {}", tree.display()))?;
                crate::pipeline::stage_component(&Stage::new(tree.clone()), c, input)?;
                let config = ImageConfig {
                    entrypoint: entrypoint.clone(),
                    cmd: cmd.clone(),
                    env: env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                };
                oci::write_archive(
                    &tree,
                    &image.name,
                    &config,
                    profile.source_date_epoch,
                    work,
                    &host,
                )
            }
        }
        .with_context(|| format!("writing image {:?}", image.name))?;
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the mode of {}", host.display()))?;
        out.push(StagedImage {
            name: image.name.clone(),
            namespace: image.namespace.clone(),
            archive: format!("{IMAGES_DIR}/{file}"),
            sha256: info.sha256,
            digest: info.digest,
        });
    }
    Ok(out)
}

/// The init configuration's `images`: what the node imports, in profile order.
pub fn images_for_init(staged: &[StagedImage]) -> Vec<Image> {
    staged
        .iter()
        .map(|s| Image {
            name: s.name.clone(),
            archive: s.archive.clone(),
            namespace: s.namespace.clone(),
            sha256: s.sha256.to_hex(),
        })
        .collect()
}

/// The manifest's `images`.
pub fn manifest_entries(staged: &[StagedImage]) -> Vec<ImageEntry> {
    staged
        .iter()
        .map(|s| ImageEntry {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            archive: s.archive.clone(),
            sha256: s.sha256.to_hex(),
            digest: s.digest.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_entries_say_what_the_node_imports() {
        let staged = [StagedImage {
            name: "registry.k8s.io/pause:3.6".into(),
            namespace: "k8s.io".into(),
            archive: format!("{IMAGES_DIR}/registry.k8s.io_pause_3.6.tar"),
            sha256: Sha256::from_bytes([0xab; 32]),
            digest: format!("sha256:{}", "cd".repeat(32)),
        }];
        let init = images_for_init(&staged);
        assert_eq!(
            init,
            [Image {
                name: "registry.k8s.io/pause:3.6".into(),
                archive: "/usr/share/ingot/images/registry.k8s.io_pause_3.6.tar".into(),
                namespace: "k8s.io".into(),
                sha256: "ab".repeat(32),
            }]
        );
        assert_eq!(manifest_entries(&staged)[0].digest, staged[0].digest);
        assert_eq!(
            lock_name("registry.k8s.io/pause:3.6"),
            "image:registry.k8s.io/pause:3.6"
        );
    }
}
