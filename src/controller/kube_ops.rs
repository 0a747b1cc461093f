//! Kubernetes writes the controllers share: finalizers, annotations (with a resourceVersion
//! precondition), status (server-side apply) and the namespace workspace binding.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{CREATE_PENDING_ANNOTATION, FINALIZER, WORKSPACE_ANNOTATION};

tokio::task_local! {
    /// The resourceVersions the writes of one reconcile produced, in order (see [`journaled`]).
    static WRITTEN: std::cell::RefCell<Vec<String>>;
}

/// Runs one reconcile and returns, with its result, the resourceVersions its writes to the
/// resource produced (every write goes through this module).
pub async fn journaled<F: std::future::Future>(f: F) -> (F::Output, Vec<String>) {
    WRITTEN
        .scope(std::cell::RefCell::new(Vec::new()), async move {
            let out = f.await;
            (out, WRITTEN.with(|w| w.take()))
        })
        .await
}

/// Notes a write's resulting version in the running reconcile's journal, if any.
fn journal<K: Resource>(stored: &K) {
    if let Some(rv) = stored.resource_version() {
        let _ = WRITTEN.try_with(|w| w.borrow_mut().push(rv));
    }
}

/// Field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "portkey-budget-operator";

/// The object types the controllers manage.
pub trait Managed:
    Resource<DynamicType = ()> + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static
{
}

impl<K> Managed for K where
    K: Resource<DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync
        + 'static
{
}

/// A merge patch of `metadata` that only applies to the exact version the caller saw: a stale
/// cached copy gets 409 Conflict instead of acting twice.
async fn patch_metadata<K: Managed>(
    api: &Api<K>,
    obj: &K,
    metadata: serde_json::Value,
) -> Result<K, kube::Error> {
    let mut metadata = metadata;
    metadata["resourceVersion"] = json!(obj.resource_version());
    let stored = api
        .patch(
            &obj.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": metadata })),
        )
        .await?;
    journal(&stored);
    Ok(stored)
}

pub fn has_finalizer<K: Resource>(obj: &K) -> bool {
    obj.finalizers().iter().any(|f| f == FINALIZER)
}

pub async fn add_finalizer<K: Managed>(api: &Api<K>, obj: &K) -> Result<K, kube::Error> {
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    patch_metadata(api, obj, json!({ "finalizers": finalizers })).await
}

pub async fn remove_finalizer<K: Managed>(api: &Api<K>, obj: &K) -> Result<(), kube::Error> {
    let finalizers: Vec<&String> = obj
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    match patch_metadata(api, obj, json!({ "finalizers": finalizers })).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

/// The crash-safety record of a create, in one patch: the finalizer (so a deletion archives
/// what the create makes) and the create-pending annotation, guarded by the resourceVersion.
pub async fn mark_create_pending<K: Managed>(
    api: &Api<K>,
    obj: &K,
    stamp: &str,
) -> Result<K, kube::Error> {
    let mut finalizers = obj.finalizers().to_vec();
    if !finalizers.iter().any(|f| f == FINALIZER) {
        finalizers.push(FINALIZER.to_owned());
    }
    patch_metadata(
        api,
        obj,
        json!({ "finalizers": finalizers, "annotations": { CREATE_PENDING_ANNOTATION: stamp } }),
    )
    .await
}

/// Sets (`Some`) or removes (`None`) one annotation, guarded by the resourceVersion.
pub async fn set_annotation<K: Managed>(
    api: &Api<K>,
    obj: &K,
    key: &str,
    value: Option<&str>,
) -> Result<K, kube::Error> {
    patch_metadata(api, obj, json!({ "annotations": { key: value } })).await
}

/// Replaces the status through server-side apply (fields the operator stops setting go away),
/// guarded by the resourceVersion of `obj`: a reconcile that worked from a stale copy gets 409
/// Conflict instead of overwriting a newer status (and, say, dropping its `policyId`).
/// Returns the object as stored: its resourceVersion moved, and later guarded patches need it.
pub async fn apply_status<K: Managed, S: Serialize>(
    api: &Api<K>,
    obj: &K,
    status: &S,
) -> Result<K, kube::Error> {
    let body = json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "metadata": {"resourceVersion": obj.resource_version()},
        "status": status,
    });
    let stored = api
        .patch_status(
            &obj.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(body),
        )
        .await?;
    journal(&stored);
    Ok(stored)
}

/// True for a 409 Conflict from the Kubernetes API (a stale resourceVersion).
pub fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The workspace a namespace is bound to by annotation, if any (with a GET; the controller
/// reads its namespace watch instead, see `Context::namespace_binding`).
pub async fn namespace_binding(
    client: &Client,
    namespace: &str,
) -> Result<Option<String>, kube::Error> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = api.get_opt(namespace).await?;
    Ok(ns.and_then(|n| binding_of(n.annotations())))
}

/// The binding in a namespace's annotations.
pub fn binding_of(annotations: &std::collections::BTreeMap<String, String>) -> Option<String> {
    annotations
        .get(WORKSPACE_ANNOTATION)
        .map(|w| w.trim().to_owned())
        .filter(|w| !w.is_empty())
}

/// `Api` for a namespaced resource.
pub fn namespaced_api<K>(client: &Client, namespace: &str) -> Api<K>
where
    K: Managed + Resource<Scope = NamespaceResourceScope>,
{
    Api::namespaced(client.clone(), namespace)
}
