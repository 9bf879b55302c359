//! Images on this board: listed, imported from an uploaded archive, removed when no function
//! uses them.

use std::path::Path;

use bramble_gateway::provider::{ProviderError, ProviderResult};
use bramble_gateway::types::ImageSummary;
use bramble_runtime::Error as RuntimeError;
use bramble_runtime::image::reference::ImageRef;

use super::{LocalProvider, runtime_error};
use crate::runtime::NodeRuntime;

impl<R: NodeRuntime> LocalProvider<R> {
    pub(super) async fn images(&self) -> ProviderResult<Vec<ImageSummary>> {
        self.ctx
            .runtime
            .list_images()
            .await
            .map_err(|e| runtime_error("name", &e))
    }

    pub(super) async fn import(
        &self,
        archive: &Path,
        name: Option<&str>,
    ) -> ProviderResult<Vec<String>> {
        let rename = name
            .map(ImageRef::parse)
            .transpose()
            .map_err(|e| ProviderError::invalid("name", e.to_string()))?;
        let names = self
            .ctx
            .runtime
            .import_images(archive, rename.as_ref())
            .await
            .map_err(|e| match e {
                RuntimeError::Archive { .. } | RuntimeError::Io { .. } => {
                    ProviderError::invalid("archive", e.chain())
                }
                other => runtime_error("archive", &other),
            })?;
        tracing::info!(?names, "images imported");
        Ok(names)
    }

    pub(super) async fn remove_unused_image(&self, name: &str) -> ProviderResult<()> {
        let image = ImageRef::parse(name)
            .map_err(|e| ProviderError::invalid("name", e.to_string()))?
            .to_string();
        let users: Vec<String> = self
            .ctx
            .store
            .snapshot()
            .all_functions()
            .filter(|(_, _, r)| r.deployment.image == image)
            .map(|(ns, n, _)| format!("{n}.{ns}"))
            .collect();
        if !users.is_empty() {
            return Err(ProviderError::Conflict(format!(
                "image {image} is used by: {}",
                users.join(", ")
            )));
        }
        self.ctx
            .runtime
            .remove_image(&image)
            .await
            .map_err(|e| runtime_error("name", &e))
    }
}

/// The serving side of images between boards: another board asks this one for what it has.
impl bramble_cluster::node::images::LocalImages for LocalProvider<bramble_runtime::Runtime> {
    fn image_service(&self) -> &bramble_runtime::image::ImageService {
        self.ctx.runtime.images()
    }
}
