//! kube-runtime wiring: the shared context, errors, per-object backoff and the controller loop.

pub mod api_key;
pub mod engine;
pub mod kube_ops;
pub mod manager;
pub mod policy;
pub mod rate;
pub mod usage;
pub mod workspace;

mod caches;
mod context;
mod error;
mod freshness;
mod run;

pub use caches::*;
pub use context::*;
pub use error::*;
pub use freshness::*;
pub use run::*;

/// The condition vocabulary lives below the controller (`api::conditions`), for the metrics,
/// the planner and the CLI alike.
pub use crate::api::conditions;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as RuntimeConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, CustomResourceExt, Resource, ResourceExt};
use rand::Rng;

use crate::api::validate::CompiledCrd;
use crate::api::{ApiKeyBudget, RateLimitPolicy, UsageLimitPolicy, WorkspaceBudget};
use crate::config::ControllerConfig;
use crate::metrics::{Health, Metrics};
use crate::portkey::{PortkeyClient, PortkeyError};
use policy::PolicyResource;

/// The versions a pass's writes replaced: its starting version and every write but the last,
/// never the last one itself (a write that changed nothing answers with the version it was
/// given: taking that for replaced left the resource waiting for a watch event that never came).
fn superseded_versions(start: Option<String>, mut written: Vec<String>) -> Vec<String> {
    let Some(last) = written.pop() else {
        return Vec::new();
    };
    written.extend(start);
    written.retain(|v| *v != last);
    written
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// A `Reporter` naming this process (pod name when set).
pub fn reporter() -> Reporter {
    Reporter {
        controller: "portkey-budget-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// A create bracketed by the crash-safety record: the finalizer and the create-pending
/// annotation in one patch guarded by the resourceVersion (a stale cached copy cannot create
/// twice), then the Admin API create after the write permit; when the create certainly made
/// nothing (`policy::definitely_not_created`) the record is cleared again. Otherwise the record
/// stays until the caller sees the new object in Portkey. `obj` is updated to what is stored.
pub(crate) async fn bracketed_create<K, T, F, Fut>(
    ctx: &Context,
    api: &Api<K>,
    obj: &mut K,
    stamp: &str,
    step: &'static str,
    create: F,
) -> Result<T, Error>
where
    K: kube_ops::Managed,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, PortkeyError>>,
{
    *obj = kube_ops::mark_create_pending(api, obj, stamp)
        .await
        .map_err(|e| Error::kube("write the create-pending record", e))?;
    ctx.write_permit().await;
    match create().await {
        Ok(created) => Ok(created),
        Err(e) => {
            if policy::definitely_not_created(&e) {
                *obj =
                    kube_ops::set_annotation(api, obj, crate::api::CREATE_PENDING_ANNOTATION, None)
                        .await
                        .map_err(|e| Error::kube("clear the create-pending record", e))?;
            }
            Err(Error::portkey(step, e))
        }
    }
}

/// When a create was sent whose result this resource has not seen through: the create-pending
/// annotation, unless the status confirms that very value (`createConfirmed`). Confirming in the
/// status write a pass makes anyway saves clearing the annotation with a write of its own.
pub fn pending_create<K: Resource>(obj: &K, confirmed: Option<&str>) -> Option<jiff::Timestamp> {
    let stamp = obj
        .annotations()
        .get(crate::api::CREATE_PENDING_ANNOTATION)?;
    if confirmed == Some(stamp.as_str()) {
        return None;
    }
    Some(stamp.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// The create-pending value to record as confirmed once Portkey shows what the create made.
pub fn create_stamp<K: Resource>(obj: &K) -> Option<String> {
    obj.annotations()
        .get(crate::api::CREATE_PENDING_ANNOTATION)
        .cloned()
}

/// The value of a one-shot annotation (rotate, reset-usage), if set and not blank.
pub fn annotation_token<K: Resource>(obj: &K, annotation: &str) -> Option<String> {
    obj.annotations()
        .get(annotation)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// True when a one-shot annotation holds a token not yet seen through (`done` records the last
/// one: its token, and whether Portkey confirmed it).
pub fn one_shot_due(token: Option<&str>, done: Option<&crate::api::OneShot>) -> bool {
    match (token, done) {
        (None, _) => false,
        (Some(t), Some(d)) => d.token != t || d.completed_at.is_none(),
        (Some(_), None) => true,
    }
}

/// `ResourceExt::name_any` for log fields.
pub fn object_name<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    key_of(obj)
}

pub use kube::runtime::events::EventType as EventKind;

#[cfg(test)]
mod tests {
    use super::superseded_versions;

    fn v(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn the_last_write_is_never_taken_for_replaced() {
        assert_eq!(superseded_versions(Some("1".into()), v(&[])), v(&[]));
        assert_eq!(
            superseded_versions(Some("1".into()), v(&["2", "3"])),
            v(&["2", "1"])
        );
        // A write that changed nothing answers with the version it started from.
        assert_eq!(superseded_versions(Some("7".into()), v(&["7"])), v(&[]));
        assert_eq!(
            superseded_versions(Some("7".into()), v(&["8", "8"])),
            v(&["7"])
        );
    }
}
