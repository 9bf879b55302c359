//! Namespaces and their secrets. A secret's value lives in a root-only file on this board,
//! never in the state or an answer.

use bramble_gateway::provider::{ProviderError, ProviderResult};
use bramble_gateway::types::{FunctionNamespace, Secret};

use super::LocalProvider;
use crate::runtime::NodeRuntime;
use crate::store::NamespaceRecord;

impl<R: NodeRuntime> LocalProvider<R> {
    pub(super) fn namespace_names(&self) -> Vec<String> {
        let state = self.ctx.store.snapshot();
        let default = &self.settings.default_namespace;
        let mut names: Vec<String> = vec![default.clone()];
        names.extend(state.namespaces.keys().filter(|n| *n != default).cloned());
        names
    }

    pub(super) fn namespace(&self, name: &str) -> Option<FunctionNamespace> {
        self.ctx
            .store
            .snapshot()
            .namespaces
            .get(name)
            .map(|r| FunctionNamespace {
                name: name.to_owned(),
                labels: r.labels.clone(),
                annotations: r.annotations.clone(),
            })
    }

    pub(super) async fn add_namespace(&self, namespace: FunctionNamespace) -> ProviderResult<()> {
        self.ctx
            .store
            .update(|state| {
                if state.namespaces.contains_key(&namespace.name) {
                    return Err(ProviderError::Conflict(format!(
                        "namespace {} already exists",
                        namespace.name
                    )));
                }
                state.namespaces.insert(
                    namespace.name.clone(),
                    NamespaceRecord {
                        labels: namespace.labels.clone(),
                        annotations: namespace.annotations.clone(),
                    },
                );
                Ok(())
            })
            .await
    }

    pub(super) async fn change_namespace(
        &self,
        namespace: FunctionNamespace,
    ) -> ProviderResult<()> {
        self.ctx
            .store
            .update(|state| match state.namespaces.get_mut(&namespace.name) {
                Some(record) => {
                    record.labels = namespace.labels.clone();
                    record.annotations = namespace.annotations.clone();
                    Ok(())
                }
                None => Err(ProviderError::NotFound(format!(
                    "namespace {} not found",
                    namespace.name
                ))),
            })
            .await
    }

    pub(super) async fn remove_namespace(&self, name: &str) -> ProviderResult<()> {
        if name == self.settings.default_namespace {
            return Err(ProviderError::invalid(
                "name",
                format!("the default namespace {name} cannot be deleted"),
            ));
        }
        self.ctx
            .store
            .update(|state| {
                if !state.namespaces.contains_key(name) {
                    return Err(ProviderError::NotFound(format!(
                        "namespace {name} not found"
                    )));
                }
                if let Some(functions) = state.functions.get(name).filter(|f| !f.is_empty()) {
                    let names: Vec<&str> = functions.keys().map(String::as_str).collect();
                    return Err(ProviderError::Conflict(format!(
                        "namespace {name} still has functions: {}",
                        names.join(", ")
                    )));
                }
                state.namespaces.remove(name);
                state.functions.remove(name);
                Ok(())
            })
            .await?;
        for secret in self.ctx.store.list_secrets(name).await? {
            self.ctx.store.delete_secret(name, &secret).await?;
        }
        Ok(())
    }

    pub(super) async fn secrets_of(&self, namespace: &str) -> ProviderResult<Vec<Secret>> {
        self.require_namespace(namespace)?;
        Ok(self
            .ctx
            .store
            .list_secrets(namespace)
            .await?
            .into_iter()
            .map(|name| Secret::name_only(name, namespace))
            .collect())
    }

    pub(super) async fn store_secret(&self, secret: Secret) -> ProviderResult<()> {
        let namespace = self.namespace_of(secret.namespace.as_deref());
        self.require_namespace(&namespace)?;
        let name = secret.name.clone();
        let value = secret
            .into_value()
            .map_err(|message| ProviderError::invalid("value", message))?;
        self.ctx.store.put_secret(&namespace, &name, value).await?;
        Ok(())
    }

    pub(super) async fn remove_secret(&self, name: &str, namespace: &str) -> ProviderResult<()> {
        self.require_namespace(namespace)?;
        let users: Vec<String> = self
            .ctx
            .store
            .snapshot()
            .functions
            .get(namespace)
            .map(|f| {
                f.iter()
                    .filter(|(_, r)| r.deployment.secrets.iter().any(|s| s == name))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
            .unwrap_or_default();
        if !users.is_empty() {
            return Err(ProviderError::Conflict(format!(
                "secret {name} is used by: {}",
                users.join(", ")
            )));
        }
        if self.ctx.store.delete_secret(namespace, name).await? {
            Ok(())
        } else {
            Err(ProviderError::NotFound(format!(
                "secret {name} not found in namespace {namespace}"
            )))
        }
    }
}
