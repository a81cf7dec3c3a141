//! The only place that writes child objects: server-side apply under Mooring's field manager, and
//! deletion of children the spec no longer wants.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PropagationPolicy};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::resources::FIELD_MANAGER;
use crate::Error;

/// A namespaced object type Mooring manages.
pub trait Child:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()>
    + Clone
    + Debug
    + Serialize
    + DeserializeOwned
    + Send
    + Sync
    + 'static
{
}

impl<K> Child for K where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// Server-side applies `obj` (forcing ownership of the fields Mooring sets), returning the object as
/// stored.
pub async fn apply<K: Child>(client: &Client, namespace: &str, obj: &K) -> Result<K, Error> {
    let name = obj.name_any();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).to_string(),
        name,
        source,
    })
}

/// Reads an object, `None` when it does not exist.
pub async fn get_opt<K: Child>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, Error> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name).await.map_err(|source| Error::Read {
        kind: K::kind(&()).to_string(),
        name: name.to_string(),
        source,
    })
}

/// Deletes every object of kind `K` matching `selector` whose name is not in `keep`. Returns the
/// names deleted. A NotFound on delete counts as done.
pub async fn delete_unwanted<K: Child>(
    client: &Client,
    namespace: &str,
    selector: &str,
    keep: &[String],
) -> Result<Vec<String>, Error> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api
        .list_metadata(&ListParams::default().labels(selector))
        .await
        .map_err(|source| Error::Read {
            kind: K::kind(&()).to_string(),
            name: selector.to_string(),
            source,
        })?;
    let mut deleted = Vec::new();
    for obj in list.items {
        let name = obj.name_any();
        if keep.contains(&name) {
            continue;
        }
        delete(&api, &name, DeleteParams::background()).await?;
        deleted.push(name);
    }
    Ok(deleted)
}

/// Deletes a StatefulSet but leaves its Pods running, so that it can be created again with fields
/// that cannot be changed in place (volume claim templates).
pub async fn delete_orphaning<K: Child>(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let dp = DeleteParams {
        propagation_policy: Some(PropagationPolicy::Orphan),
        ..DeleteParams::default()
    };
    delete(&api, name, dp).await
}

async fn delete<K: Child>(api: &Api<K>, name: &str, dp: DeleteParams) -> Result<(), Error> {
    match api.delete(name, &dp).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(source) => Err(Error::Delete {
            kind: K::kind(&()).to_string(),
            name: name.to_string(),
            source,
        }),
    }
}
