//! The kinds `plan` and `sync` know, one file each: how a resource of the kind is planned
//! against Portkey (and so what applying it writes), what `--prune` may archive of it, and its
//! row of the status table. Load, plan, apply and status are written once over [`GitopsKind`].
//!
//! Adding a kind: a file here implementing [`GitopsKind`] for the kind's API type, and its line
//! in [`KINDS`].

mod api_key;
mod policy;
mod rate_limit;
mod usage_limit;
mod workspace_budget;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::future::Future;
use std::sync::Arc;

use futures::future::BoxFuture;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::load::Loaded;
use super::plan::PlanItem;
use super::remote::RemoteCache;
use crate::api::{ApiKeyBudget, RateLimitPolicy, UsageLimitPolicy, WorkspaceBudget};
use crate::plan::marker::Identity;
use crate::portkey::{PortkeyClient, PortkeyError};

/// The kinds `plan` and `sync` read, in the order `--prune` lists them.
pub const KINDS: &[Registration] = &[
    Registration::of::<UsageLimitPolicy>(),
    Registration::of::<RateLimitPolicy>(),
    Registration::of::<WorkspaceBudget>(),
    Registration::of::<ApiKeyBudget>(),
];

/// The kinds, as a sentence: `UsageLimitPolicy, RateLimitPolicy, … {last} ApiKeyBudget`.
pub fn listed_with(last: &str) -> String {
    let kinds: Vec<&str> = KINDS.iter().map(|r| r.kind).collect();
    match kinds.split_last() {
        Some((tail, [])) => (*tail).to_owned(),
        Some((tail, head)) => format!("{} {last} {tail}", head.join(", ")),
        None => String::new(),
    }
}

/// What `plan` and `sync` need of one kind, implemented once per kind on its API type.
pub trait GitopsKind: CustomResourceExt + DeserializeOwned + Debug + Send + Sync + 'static {
    /// The kind as manifests name it (`kind:`); the CRD's (checked by a test).
    const KIND: &'static str;

    /// `spec.workspace`, as the manifest names it (slug or id).
    fn workspace(&self) -> Option<&str>;

    /// The plan items of this resource in its workspace. Their writes are what `sync` applies.
    fn plan(
        &self,
        cx: &mut Scope<'_>,
    ) -> impl Future<Output = Result<Vec<PlanItem>, PortkeyError>> + Send;

    /// What is in force for this resource, for the status table after `sync`.
    fn status(&self, cx: &mut Scope<'_>) -> impl Future<Output = Shown> + Send;

    /// Whether it manages its workspace as a whole (at most one such resource per workspace
    /// writes; the others are refused by the shared conflict rule).
    fn claims_workspace(&self) -> bool {
        false
    }

    /// The name of an existing API key it refers to (the emulator is seeded with one).
    fn seed_key_name(&self) -> Option<&str> {
        None
    }

    /// Archives `--prune` plans in workspace `cx.ws`: this installation's remote objects of the
    /// kind that no manifest declares. None for kinds that never create remote objects.
    fn prune(
        cx: &mut PruneScope<'_>,
    ) -> impl Future<Output = Result<Vec<PlanItem>, PortkeyError>> + Send {
        let _ = cx;
        async { Ok(Vec::new()) }
    }
}

/// The short name of a kind in ownership markers: the CRD's first short name (`ulp`, `akb`).
pub fn short<K: CustomResourceExt>() -> &'static str {
    K::shortnames()[0]
}

/// A resource of any kind, as loaded (the object-safe face of [`GitopsKind`]).
pub trait Declared: Debug + Send + Sync {
    /// The short name of its kind in ownership markers.
    fn short(&self) -> &'static str;
    fn workspace(&self) -> Option<&str>;
    fn claims_workspace(&self) -> bool;
    fn seed_key_name(&self) -> Option<&str>;
    fn plan<'a>(
        &'a self,
        cx: &'a mut Scope<'_>,
    ) -> BoxFuture<'a, Result<Vec<PlanItem>, PortkeyError>>;
    fn status<'a>(&'a self, cx: &'a mut Scope<'_>) -> BoxFuture<'a, Shown>;
}

impl<K: GitopsKind> Declared for K {
    fn short(&self) -> &'static str {
        short::<K>()
    }

    fn workspace(&self) -> Option<&str> {
        GitopsKind::workspace(self)
    }

    fn claims_workspace(&self) -> bool {
        GitopsKind::claims_workspace(self)
    }

    fn seed_key_name(&self) -> Option<&str> {
        GitopsKind::seed_key_name(self)
    }

    fn plan<'a>(
        &'a self,
        cx: &'a mut Scope<'_>,
    ) -> BoxFuture<'a, Result<Vec<PlanItem>, PortkeyError>> {
        Box::pin(GitopsKind::plan(self, cx))
    }

    fn status<'a>(&'a self, cx: &'a mut Scope<'_>) -> BoxFuture<'a, Shown> {
        Box::pin(GitopsKind::status(self, cx))
    }
}

/// Reads a manifest of one kind.
type Parse = fn(Value) -> serde_json::Result<Arc<dyn Declared>>;
/// Plans one kind's archives for `--prune`.
type Prune =
    for<'a, 'b> fn(&'a mut PruneScope<'b>) -> BoxFuture<'a, Result<Vec<PlanItem>, PortkeyError>>;

/// One kind's line in [`KINDS`].
pub struct Registration {
    pub kind: &'static str,
    /// Its CRD (manifests are validated with its schema and rules).
    pub crd: fn() -> CustomResourceDefinition,
    pub parse: Parse,
    pub prune: Prune,
}

impl Registration {
    pub const fn of<K: GitopsKind>() -> Self {
        Registration {
            kind: K::KIND,
            crd: K::crd,
            parse: parse::<K>,
            prune: prune::<K>,
        }
    }
}

fn parse<K: GitopsKind>(value: Value) -> serde_json::Result<Arc<dyn Declared>> {
    Ok(Arc::new(serde_json::from_value::<K>(value)?))
}

fn prune<'a, 'b, K: GitopsKind>(
    cx: &'a mut PruneScope<'b>,
) -> BoxFuture<'a, Result<Vec<PlanItem>, PortkeyError>> {
    Box::pin(K::prune(cx))
}

/// What the manifests declare as a whole, for the rules that look across resources.
#[derive(Debug, Default)]
pub struct Declarations {
    /// `(short kind, namespace/name)` of every resource.
    pub identities: BTreeSet<(String, String)>,
    /// Resources that claim a workspace (by workspace id), for the conflict rule.
    pub claims: BTreeMap<String, Vec<String>>,
}

/// One resource in its workspace, with what planning it reads and remembers.
pub struct Scope<'a> {
    pub client: &'a PortkeyClient,
    pub cache: &'a mut RemoteCache,
    pub declared: &'a Declarations,
    pub loaded: &'a Loaded,
    /// The workspace as the manifest names it (slug or id).
    pub reference: &'a str,
    /// The workspace's id.
    pub ws: &'a str,
    /// Its ownership marker's identity.
    pub identity: Identity,
}

/// One workspace, for `--prune`.
pub struct PruneScope<'a> {
    pub client: &'a PortkeyClient,
    pub cache: &'a mut RemoteCache,
    pub declared: &'a Declarations,
    /// The workspace's id.
    pub ws: &'a str,
    pub installation_id: &'a str,
}

/// The cells a kind fills in its status row (after kind, name and workspace).
#[derive(Debug, Clone)]
pub struct Shown {
    pub limit: String,
    pub peak_usage: String,
    pub reset: String,
    pub state: String,
}

impl Shown {
    /// Nothing in force to show, and why.
    pub fn absent(state: impl Into<String>) -> Self {
        Shown {
            limit: "-".into(),
            peak_usage: "-".into(),
            reset: "-".into(),
            state: state.into(),
        }
    }

    /// Limits given as optional parts (budget, rate) joined with `; `.
    pub fn limits(parts: [Option<String>; 2], reset: Option<String>, state: String) -> Self {
        let limit = parts.into_iter().flatten().collect::<Vec<_>>().join("; ");
        Shown {
            limit: if limit.is_empty() { "-".into() } else { limit },
            peak_usage: "-".into(),
            reset: reset.unwrap_or_else(|| "-".into()),
            state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_crd_is_registered_under_its_own_kind_name() {
        for r in KINDS {
            assert_eq!((r.crd)().spec.names.kind, r.kind);
        }
        let crds: Vec<String> = crate::api::crds()
            .into_iter()
            .map(|c| c.spec.names.kind)
            .collect();
        let kinds: Vec<&str> = KINDS.iter().map(|r| r.kind).collect();
        assert_eq!(
            crds, kinds,
            "a CRD plan and sync do not know, or the reverse"
        );
    }
}
