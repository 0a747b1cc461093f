//! What the policy kinds (`UsageLimitPolicy`, `RateLimitPolicy`) share: a resource owns one
//! policy of its family per workspace, found by the ownership rules ([`match_remote`]) and
//! planned by the shared planner (`plan::policy`); its writes create, update, replace (create
//! first, then archive) or archive; `--prune` archives marked policies no manifest declares.
//! A policy kind says how its spec becomes a desired policy and how a policy is shown.

use std::fmt::{self, Debug};
use std::future::Future;

use futures::future::BoxFuture;

use super::{GitopsKind, PruneScope, Scope, Shown};
use crate::gitops::apply::{Write, archived};
use crate::gitops::plan::{ChangeKind, PlanItem};
use crate::gitops::remote::{Wanted, match_remote};
use crate::plan::FieldChange;
use crate::plan::marker::Identity;
use crate::plan::ownership;
use crate::plan::policy::{Decision, PlanOptions, PolicyAction, PolicyDiff};
use crate::portkey::*;

/// A kind whose resource owns one Portkey policy of family [`PolicyResource::Family`].
pub trait PolicyResource: GitopsKind {
    type Family: PolicyKind;
    type Desired: PolicyDiff<
            Remote = <Self::Family as PolicyKind>::Policy,
            Create = <Self::Family as PolicyKind>::Create,
            Update = <Self::Family as PolicyKind>::Update,
        > + Send
        + Sync;

    /// The policy the spec asks for in workspace `ws`, marked with `identity`.
    fn desired(&self, identity: &Identity, ws: &str) -> Self::Desired;
    /// The spec's management and immutable-change policies.
    fn options(&self) -> PlanOptions;
    /// `spec.adoptPolicyId`.
    fn adopt_policy_id(&self) -> Option<&str>;
    /// What a create shows in the plan, field by field.
    fn create_fields(body: &<Self::Family as PolicyKind>::Create) -> Vec<(&'static str, String)>;
    /// The status cells of the policy in force.
    fn shown(
        client: &PortkeyClient,
        policy: <Self::Family as PolicyKind>::Policy,
    ) -> impl Future<Output = Shown> + Send;
}

/// The `GitopsKind` of a policy kind: the shared policy plan, status and prune of this module,
/// and its `spec.workspace` (both policy kinds' specs have one).
macro_rules! policy_gitops_kind {
    ($kind:ident) => {
        impl $crate::gitops::kinds::GitopsKind for $kind {
            const KIND: &'static str = stringify!($kind);

            fn workspace(&self) -> Option<&str> {
                self.spec.workspace.as_deref()
            }

            async fn plan(
                &self,
                cx: &mut $crate::gitops::kinds::Scope<'_>,
            ) -> Result<Vec<$crate::gitops::plan::PlanItem>, $crate::portkey::PortkeyError> {
                $crate::gitops::kinds::policy::plan(self, cx).await
            }

            async fn status(
                &self,
                cx: &mut $crate::gitops::kinds::Scope<'_>,
            ) -> $crate::gitops::kinds::Shown {
                $crate::gitops::kinds::policy::status(self, cx).await
            }

            async fn prune(
                cx: &mut $crate::gitops::kinds::PruneScope<'_>,
            ) -> Result<Vec<$crate::gitops::plan::PlanItem>, $crate::portkey::PortkeyError> {
                $crate::gitops::kinds::policy::prune::<Self>(cx).await
            }
        }
    };
}
pub(crate) use policy_gitops_kind;

/// Plan items for one policy resource: the planner's decision against what it has in Portkey
/// (by the shared ownership rules), plus archives of its duplicates.
pub async fn plan<R: PolicyResource>(
    resource: &R,
    cx: &mut Scope<'_>,
) -> Result<Vec<PlanItem>, PortkeyError> {
    let desired = resource.desired(&cx.identity, cx.ws);
    let listed = cx
        .cache
        .listed::<R::Family>(cx.client, cx.ws)
        .await?
        .clone();
    let fits = |p: &<R::Family as PolicyKind>::Policy| desired.immutable_changes(p).is_empty();
    let wanted = Wanted {
        identity: &cx.identity,
        adopt: resource.adopt_policy_id(),
        ws: cx.ws,
        declared: cx.declared,
    };
    let found = match match_remote::<R::Family>(cx.client, &listed, &wanted, fits).await? {
        Ok(found) => found,
        Err(refusal) => {
            let mut item = PlanItem::of(cx.loaded, cx.reference);
            item.block(format!("{}: {}", refusal.reason, refusal.message));
            return Ok(vec![item]);
        }
    };
    let decision = crate::plan::policy::plan(&desired, found.remote.as_ref(), resource.options());
    let mut item = decided::<R::Family>(
        PlanItem::of(cx.loaded, cx.reference),
        decision,
        found.remote.as_ref().map(|p| p.id().to_owned()),
    );
    if item.action == ChangeKind::Create {
        item.changes = create_changes(&R::create_fields(&desired.create_body()));
    }
    let keep = item.target.clone().unwrap_or_default();
    let mut items = vec![item];
    for id in found.duplicates {
        let mut duplicate = archive::<R::Family>(PlanItem::of(cx.loaded, cx.reference), id);
        duplicate.warnings.push(format!(
            "a duplicate: it carries the same marker as {keep}, which is older and kept"
        ));
        items.push(duplicate);
    }
    Ok(items)
}

/// The planner's decision as a plan item about policy `current` (when there is one).
fn decided<K: PolicyKind>(
    mut item: PlanItem,
    decision: Decision<K::Create, K::Update>,
    current: Option<String>,
) -> PlanItem {
    item.shown = current.as_ref().map(|id| format!("policy {id}"));
    item.target = current;
    match decision {
        Decision::InSync => {}
        Decision::Blocked {
            message, changes, ..
        } => {
            item.changes = changes;
            item.block(message);
        }
        Decision::Apply(action) => {
            match &action {
                PolicyAction::Create { .. } => item.action = ChangeKind::Create,
                PolicyAction::Update { changes, .. } => {
                    item.action = ChangeKind::Update;
                    item.changes = changes.clone();
                }
                PolicyAction::Replace { changes, .. } => {
                    item.action = ChangeKind::Replace;
                    item.changes = changes.clone();
                    item.warnings.push(
                        "the policy is archived and created again: its usage restarts from zero"
                            .into(),
                    );
                }
            }
            item.exec = Some(std::sync::Arc::new(PolicyWrite::<K>::from(action)));
        }
    }
    item
}

/// `item` as the archive of policy `id`.
fn archive<K: PolicyKind>(mut item: PlanItem, id: String) -> PlanItem {
    item.action = ChangeKind::Archive;
    item.shown = Some(format!("policy {id}"));
    item.target = Some(id.clone());
    item.changes = vec![FieldChange::new("status", "active", "archived")];
    item.exec = Some(std::sync::Arc::new(PolicyWrite::<K>::Archive(id)));
    item
}

fn create_changes(fields: &[(&'static str, String)]) -> Vec<FieldChange> {
    fields
        .iter()
        .map(|(f, v)| FieldChange::new(f, "(none)", v))
        .collect()
}

/// The status cells of a policy resource: its policy in force, or `missing`.
pub async fn status<R: PolicyResource>(resource: &R, cx: &mut Scope<'_>) -> Shown {
    let listed = cx
        .cache
        .listed::<R::Family>(cx.client, cx.ws)
        .await
        .cloned()
        .unwrap_or_default();
    let wanted = Wanted {
        identity: &cx.identity,
        adopt: resource.adopt_policy_id(),
        ws: cx.ws,
        declared: cx.declared,
    };
    let found = match_remote::<R::Family>(cx.client, &listed, &wanted, |_| true)
        .await
        .ok()
        .and_then(Result::ok)
        .and_then(|m| m.remote);
    match found {
        Some(policy) => R::shown(cx.client, policy).await,
        None => Shown::absent("missing"),
    }
}

/// `--prune` for a policy kind: active policies in `cx.ws` carrying this installation's marker
/// for a resource of the kind that no manifest declares.
pub async fn prune<R: PolicyResource>(
    cx: &mut PruneScope<'_>,
) -> Result<Vec<PlanItem>, PortkeyError> {
    let short = super::short::<R>();
    let listed = cx.cache.listed::<R::Family>(cx.client, cx.ws).await?;
    let mut archives = Vec::new();
    for policy in listed {
        let Some(remote_name) = &policy.name else {
            continue;
        };
        // Only this installation's markers: never another cluster's, a legacy one, or
        // anything made by hand.
        let Some((kind, owner)) = ownership::prunable(remote_name, short, cx.installation_id)
        else {
            continue;
        };
        if cx
            .declared
            .identities
            .contains(&(kind.to_owned(), owner.to_owned()))
        {
            continue;
        }
        let mut item = archive::<R::Family>(undeclared(R::KIND, owner, cx.ws), policy.id.clone());
        item.warnings.push(format!(
            "{remote_name:?} carries this tool's marker but no manifest declares it"
        ));
        archives.push(item);
    }
    Ok(archives)
}

/// An item about a resource no manifest declares (`owner` is its `namespace/name`).
fn undeclared(kind: &str, owner: &str, ws: &str) -> PlanItem {
    PlanItem {
        kind: kind.into(),
        name: owner.to_owned(),
        source: None,
        workspace: Some(ws.to_owned()),
        action: ChangeKind::Unchanged,
        target: None,
        changes: vec![],
        warnings: vec![],
        shown: None,
        exec: None,
    }
}

/// A write to a policy of family `K`.
pub enum PolicyWrite<K: PolicyKind> {
    Create(K::Create),
    Update(String, K::Update),
    /// Create first (a refused create leaves the old policy in force), then archive the old.
    Replace(String, K::Create),
    Archive(String),
}

impl<K: PolicyKind> From<PolicyAction<K::Create, K::Update>> for PolicyWrite<K> {
    fn from(action: PolicyAction<K::Create, K::Update>) -> Self {
        match action {
            PolicyAction::Create { body } => PolicyWrite::Create(body),
            PolicyAction::Update { id, body, .. } => PolicyWrite::Update(id, body),
            PolicyAction::Replace { old_id, body, .. } => PolicyWrite::Replace(old_id, body),
        }
    }
}

impl<K: PolicyKind> Debug for PolicyWrite<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn body(b: &impl serde::Serialize) -> String {
            serde_json::to_string(b).unwrap_or_default()
        }
        match self {
            PolicyWrite::Create(b) => write!(f, "{} create {}", K::PATH, body(b)),
            PolicyWrite::Update(id, b) => write!(f, "{} update {id} {}", K::PATH, body(b)),
            PolicyWrite::Replace(id, b) => write!(f, "{} replace {id} {}", K::PATH, body(b)),
            PolicyWrite::Archive(id) => write!(f, "{} archive {id}", K::PATH),
        }
    }
}

impl<K: PolicyKind> Write for PolicyWrite<K> {
    fn send<'a>(&'a self, client: &'a PortkeyClient) -> BoxFuture<'a, Result<(), PortkeyError>> {
        let api = client.policies::<K>();
        Box::pin(async move {
            match self {
                // The answer holds the id; a read-back could lag behind the create.
                PolicyWrite::Create(body) => api.create(body).await.map(drop),
                PolicyWrite::Update(id, body) => api.update(id, body).await,
                PolicyWrite::Replace(old, body) => {
                    api.create(body).await?;
                    archived(api.delete(old).await)
                }
                PolicyWrite::Archive(id) => archived(api.delete(id).await),
            }
        })
    }
}
