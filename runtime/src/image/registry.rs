//! Pulling an image from an OCI/Docker registry without containerd's Transfer service.
//!
//! The registry HTTP API (auth challenges, tokens, redirects) is `oci-client`'s job; choosing
//! the manifest, checking the platform, streaming the layers and committing are [`fetch`]'s,
//! the same for an image from another board.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;

use super::auth::CredentialStore;
use super::fetch;
use super::oci::{self, Descriptor};
use super::reference::ImageRef;
use super::{ImageService, ProgressFn, SourceError};
use crate::error::{Error, Result};

const USER_AGENT: &str = concat!("bramble/", env!("CARGO_PKG_VERSION"));

/// Pulls `reference` and unpacks it. Called with the image's lock held.
pub(super) async fn pull(
    service: &ImageService,
    reference: &ImageRef,
    progress: &ProgressFn<'_>,
) -> Result<()> {
    let name = reference.to_string();
    let registry = reference.registry().to_owned();
    let auth = credentials(service, &registry)?;
    bramble_base::tls::install_crypto_provider();
    let client = oci_client::Client::new(ClientConfig {
        protocol: protocol_for(service, &registry),
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(10)),
        read_timeout: Some(Duration::from_secs(60)),
        user_agent: USER_AGENT,
        ..Default::default()
    });
    let registry = Registry {
        service,
        client,
        auth,
        reference: to_oci_reference(reference),
        name: &name,
        registry: &registry,
    };
    // The top manifest document; the rest is the same wherever an image comes from.
    let (top_bytes, top_digest) = registry
        .client
        .pull_manifest_raw(
            &registry.reference,
            &registry.auth,
            oci::MANIFEST_MEDIA_TYPES,
        )
        .await
        .map_err(|e| registry.error(e))?;
    fetch::fetch(service, &name, top_bytes, &top_digest, &registry, progress).await
}

/// A registry as a [`fetch::Fetcher`]: `oci-client` speaks its API (auth challenges, tokens,
/// redirects) and verifies what it sends.
struct Registry<'a> {
    service: &'a ImageService,
    client: oci_client::Client,
    auth: RegistryAuth,
    reference: oci_client::Reference,
    name: &'a str,
    registry: &'a str,
}

impl Registry<'_> {
    fn error(&self, source: oci_client::errors::OciDistributionError) -> Error {
        registry_error(self.name, self.registry, self.service, source)
    }
}

impl fetch::Fetcher for Registry<'_> {
    async fn manifest(&self, descriptor: &Descriptor) -> Result<Bytes> {
        let by_digest = self.reference.clone_with_digest(descriptor.digest.clone());
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(&by_digest, &self.auth, oci::MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.error(e))?;
        if digest != descriptor.digest {
            return Err(Error::InvalidImage {
                image: self.name.to_owned(),
                reason: format!(
                    "registry sent manifest {digest} when {} was asked",
                    descriptor.digest
                ),
            });
        }
        Ok(bytes)
    }

    async fn config(&self, descriptor: &Descriptor) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.client
            .pull_blob(&self.reference, &to_oci_descriptor(descriptor), &mut bytes)
            .await
            .map_err(|e| self.error(e))?;
        Ok(bytes)
    }

    async fn layer(&self, descriptor: &Descriptor) -> Result<super::Chunks> {
        let stream = self
            .client
            .pull_blob_stream(&self.reference, &to_oci_descriptor(descriptor))
            .await
            .map_err(|e| self.error(e))?;
        Ok(stream.stream.map_err(SourceError::from).boxed())
    }
}

/// Registries spoken to over plain HTTP: configured ones and anything on loopback.
fn protocol_for(service: &ImageService, registry: &str) -> ClientProtocol {
    if is_insecure(&service.registries().insecure, registry) {
        ClientProtocol::HttpsExcept(vec![registry.to_owned()])
    } else {
        ClientProtocol::Https
    }
}

pub(crate) fn is_insecure(insecure: &[String], registry: &str) -> bool {
    if insecure.iter().any(|r| r == registry) {
        return true;
    }
    let host = host_of(registry);
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// `127.0.0.1:5000` → `127.0.0.1`; `[::1]:5000` → `::1`; `ghcr.io` → `ghcr.io`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map_or(registry, |(host, _)| host)
}

fn credentials(service: &ImageService, registry: &str) -> Result<RegistryAuth> {
    let Some(path) = &service.registries().credentials_file else {
        return Ok(RegistryAuth::Anonymous);
    };
    let store = CredentialStore::load(path)?;
    Ok(match store.lookup(registry) {
        Some(c) => RegistryAuth::Basic(c.username.clone(), c.password.clone()),
        None => RegistryAuth::Anonymous,
    })
}

fn registry_error(
    name: &str,
    registry: &str,
    service: &ImageService,
    source: oci_client::errors::OciDistributionError,
) -> Error {
    use oci_client::errors::OciDistributionError as E;
    let hint = match &source {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => {
            Some(match &service.registries().credentials_file {
                Some(path) => format!(
                    "the registry refused the credentials for {registry} in {}",
                    path.display()
                ),
                None => {
                    format!("the registry wants credentials for {registry}; none are configured")
                }
            })
        }
        _ => None,
    };
    let source: Box<dyn std::error::Error + Send + Sync> = match hint {
        Some(hint) => format!("{hint}: {source}").into(),
        None => Box::new(source),
    };
    Error::Registry {
        image: name.to_owned(),
        registry: registry.to_owned(),
        source,
    }
}

fn to_oci_reference(reference: &ImageRef) -> oci_client::Reference {
    let registry = reference.registry().to_owned();
    let repository = reference.repository().to_owned();
    match (reference.tag(), reference.digest()) {
        (Some(tag), Some(digest)) => oci_client::Reference::with_tag_and_digest(
            registry,
            repository,
            tag.to_owned(),
            digest.to_owned(),
        ),
        (None, Some(digest)) => {
            oci_client::Reference::with_digest(registry, repository, digest.to_owned())
        }
        (Some(tag), None) => oci_client::Reference::with_tag(registry, repository, tag.to_owned()),
        (None, None) => oci_client::Reference::with_tag(registry, repository, "latest".to_owned()),
    }
}

fn to_oci_descriptor(descriptor: &Descriptor) -> OciDescriptor {
    OciDescriptor {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: descriptor.size,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_and_listed_registries_use_http() {
        let listed = vec!["registry.lan:5000".to_owned()];
        assert!(is_insecure(&listed, "registry.lan:5000"));
        assert!(is_insecure(&[], "127.0.0.1:5000"));
        assert!(is_insecure(&[], "localhost:5000"));
        assert!(is_insecure(&[], "[::1]:5000"));
        assert!(!is_insecure(&[], "ghcr.io"));
        assert!(!is_insecure(&listed, "registry.lan"));
    }
}
