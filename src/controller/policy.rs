//! Reconcile and cleanup of one policy resource (`UsageLimitPolicy`, `RateLimitPolicy`): the
//! machinery both kinds share; the kind-specific parts are the [`PolicyResource`] trait.
//!
//! Order of a reconcile (see README "How the controller works"):
//! 1. A recently synced, healthy, unchanged resource is left alone (no Admin API call).
//! 2. The spec is validated (schema + CEL) and the namespace binding checked: a failure is a
//!    terminal condition and nothing is sent to Portkey.
//! 3. The workspace is resolved to its UUID.
//! 4. The remote policy is observed: by `status.policyId`, by `adoptPolicyId`, or by searching
//!    the workspace for the ownership marker (adopt before create).
//! 5. The planner decides; writes go through the shared rate limiter; a create is bracketed by
//!    the create-pending annotation so a crash cannot make a second policy.
//! 6. Status (usage, conditions, next reset) is written only when it changed.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;

use super::conditions::{self, FALSE, READY, SYNCED, TRUE, UNKNOWN};
use super::kube_ops::{self, Managed};
use super::{Context, Error};
use crate::api::validate::summarize;
use crate::api::*;
use crate::metrics::BudgetFigures;
use crate::plan::policy::{Decision, PlanOptions, PolicyAction, PolicyDiff, plan};
use crate::plan::{FieldChange, Identity};
use crate::portkey::*;

/// The spec fields every policy kind has.
#[derive(Debug, Clone)]
pub struct CommonSpec {
    pub workspace: Option<String>,
    pub deletion_policy: DeletionPolicy,
    pub management_policy: ManagementPolicy,
    pub adopt_policy_id: Option<String>,
    pub on_immutable_change: OnImmutableChange,
}

/// An Event to record: type, reason, note.
pub type EventSpec = (EventType, &'static str, String);

/// What differs between the policy kinds.
pub trait PolicyResource: Managed + Resource<Scope = NamespaceResourceScope> {
    /// The Admin API family (`/policies/usage-limits` or `/policies/rate-limits`).
    type Kind: PolicyKind;
    /// The resolved desired policy.
    type Desired: PolicyDiff<
            Remote = <Self::Kind as PolicyKind>::Policy,
            Create = <Self::Kind as PolicyKind>::Create,
            Update = <Self::Kind as PolicyKind>::Update,
        > + Send
        + Sync;
    type Status: Default + Clone + PartialEq + Serialize + Send + Sync;
    /// Short kind in ownership markers (`ulp`, `rlp`).
    const SHORT: &'static str;
    /// Read policies with `include_usage=true`.
    const INCLUDE_USAGE: bool;

    fn common(&self) -> CommonSpec;
    fn desired(&self, identity: &Identity, workspace_id: &str) -> Self::Desired;
    fn status(&self) -> Option<&Self::Status>;
    fn policy_status(status: &mut Self::Status) -> &mut RemotePolicyStatus;
    fn policy_status_ref(status: &Self::Status) -> &RemotePolicyStatus;
    /// Kind-specific status from the observed policy (`None` when there is none); returns the
    /// Events to record.
    fn report(
        &self,
        status: &mut Self::Status,
        remote: Option<&<Self::Kind as PolicyKind>::Policy>,
        desired: &Self::Desired,
    ) -> Vec<EventSpec>;
    /// The figures of the per-resource budget metrics, for kinds that have a budget.
    fn budget(&self, _status: &Self::Status) -> Option<BudgetFigures> {
        None
    }
}

struct Run<'a, R: PolicyResource> {
    ctx: &'a Context,
    api: Api<R>,
    obj: R,
    identity: Identity,
    status: R::Status,
    now: Timestamp,
}

/// Reconciles one resource (or cleans it up when it is being deleted).
pub async fn reconcile<R: PolicyResource>(obj: &R, ctx: &Context) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let mut run = Run {
        ctx,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        identity: Identity::new(R::SHORT, Some(&namespace), &obj.name_any()),
        status: obj.status().cloned().unwrap_or_default(),
        obj: obj.clone(),
        now: Timestamp::now(),
    };
    if obj.meta().deletion_timestamp.is_some() {
        ctx.metrics
            .forget(&R::kind(&()), &namespace, &obj.name_any());
        return run.cleanup().await;
    }
    match run.apply().await {
        Ok(action) => {
            run.flush_status().await?;
            match R::budget(obj, &run.status) {
                Some(figures) => {
                    ctx.metrics
                        .budget(&R::kind(&()), &namespace, &obj.name_any(), figures)
                }
                None => ctx
                    .metrics
                    .forget(&R::kind(&()), &namespace, &obj.name_any()),
            }
            Ok(action)
        }
        Err(e) => {
            run.failed(&e);
            if let Err(status_err) = run.flush_status().await {
                tracing::warn!(error = %status_err, "could not record the failure in status");
            }
            Err(e)
        }
    }
}

/// True when a create that failed this way certainly made nothing in Portkey: the request never
/// left (connect failure) or was refused before it was carried out (invalid, unauthorised,
/// forbidden, not found, rate-limited). Everything else (timeouts, 5xx, 408, 409, 499, any other
/// status, an unreadable answer) may have created the policy, so the create-pending record stays.
pub(crate) fn definitely_not_created(e: &PortkeyError) -> bool {
    match e {
        PortkeyError::Transport { connect, .. } => *connect,
        PortkeyError::Validation { .. }
        | PortkeyError::Unauthorized { .. }
        | PortkeyError::Forbidden { .. }
        | PortkeyError::NotFound { .. }
        | PortkeyError::RateLimited { .. } => true,
        PortkeyError::Conflict { .. }
        | PortkeyError::Server { .. }
        | PortkeyError::Http { .. }
        | PortkeyError::Decode { .. }
        | PortkeyError::Config(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_connect_failures_are_certainly_not_created() {
        let http = |status| PortkeyError::Http {
            status,
            code: None,
            message: String::new(),
        };
        for ambiguous in [
            http(408),
            http(499),
            http(402),
            PortkeyError::Conflict {
                code: Some("AB07".into()),
                message: String::new(),
            },
            PortkeyError::Server {
                status: 502,
                code: None,
                message: String::new(),
            },
            PortkeyError::Transport {
                message: String::new(),
                timeout: true,
                connect: false,
            },
            PortkeyError::Decode {
                message: String::new(),
            },
        ] {
            assert!(!definitely_not_created(&ambiguous), "{ambiguous:?}");
        }
        for refused in [
            PortkeyError::Validation {
                status: 400,
                code: Some("AB01".into()),
                message: String::new(),
            },
            PortkeyError::Forbidden {
                code: Some("AB03".into()),
                message: String::new(),
            },
            PortkeyError::RateLimited {
                retry_after: None,
                message: String::new(),
            },
            PortkeyError::Transport {
                message: String::new(),
                timeout: false,
                connect: true,
            },
        ] {
            assert!(definitely_not_created(&refused), "{refused:?}");
        }
    }
}

impl<R: PolicyResource> Run<'_, R> {
    fn generation(&self) -> Option<i64> {
        self.obj.meta().generation
    }

    /// The status fields every policy kind shares.
    fn ps(&mut self) -> &mut RemotePolicyStatus {
        R::policy_status(&mut self.status)
    }

    fn psr(&self) -> &RemotePolicyStatus {
        R::policy_status_ref(&self.status)
    }

    fn policies(&self) -> PolicyApi<'_, R::Kind> {
        self.ctx.portkey.policies::<R::Kind>()
    }

    fn set(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
        let generation = self.generation();
        let now = self.now;
        conditions::set(
            &mut self.ps().conditions,
            type_,
            status,
            reason,
            message,
            generation,
            now,
        );
    }

    /// Ready=False and Synced=False for a state only a human can fix; no Admin API call made.
    fn terminal(&mut self, reason: &str, message: &str) {
        self.set(READY, FALSE, reason, message);
        self.set(SYNCED, FALSE, reason, message);
        let generation = self.generation();
        self.ps().observed_generation = generation;
    }

    fn failed(&mut self, e: &Error) {
        let message = e.to_string();
        let terminal = matches!(e, Error::Portkey(p) if p.is_terminal());
        let status = if terminal { FALSE } else { UNKNOWN };
        self.set(SYNCED, status, e.reason(), &message);
        // Ready keeps its last known value unless the failure is terminal: the policy may well
        // still be in force in Portkey.
        if terminal || conditions::get(&self.psr().conditions, READY).is_none() {
            self.set(READY, status, e.reason(), &message);
        }
    }

    async fn flush_status(&mut self) -> Result<(), kube::Error> {
        if self.obj.status() == Some(&self.status) {
            return Ok(());
        }
        self.obj = kube_ops::apply_status(&self.api, &self.obj.name_any(), &self.status).await?;
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx.event(&self.obj, type_, reason, note).await;
    }

    fn pending_since(&self) -> Option<Timestamp> {
        self.obj
            .annotations()
            .get(CREATE_PENDING_ANNOTATION)
            .map(|v| v.parse().unwrap_or(Timestamp::UNIX_EPOCH))
    }

    fn fresh(&self) -> Option<Action> {
        let ps = self.psr();
        super::fresh(
            self.generation(),
            ps.observed_generation,
            &ps.conditions,
            ps.last_sync_time.as_ref(),
            self.pending_since().is_some(),
            self.now,
            self.ctx.interval(R::INCLUDE_USAGE),
        )
    }

    async fn apply(&mut self) -> Result<Action, Error> {
        if let Some(action) = self.fresh() {
            return Ok(action);
        }
        let refresh = Action::requeue(self.ctx.refresh_interval(R::INCLUDE_USAGE));

        // 1. Admission rules again: nothing invalid ever reaches Portkey.
        let value = serde_json::to_value(&self.obj).expect("resources serialize");
        let errors = self.ctx.crd(R::SHORT).validate(&value, None);
        if !errors.is_empty() {
            self.terminal("InvalidSpec", &summarize(&errors));
            return Ok(Action::await_change());
        }
        let spec = self.obj.common();
        let observe = spec.management_policy == ManagementPolicy::Observe;
        if !observe && !kube_ops::has_finalizer(&self.obj) {
            self.obj = kube_ops::add_finalizer(&self.api, &self.obj).await?;
        }

        // 2. Tenancy.
        let namespace = self.obj.namespace().unwrap_or_default();
        let binding = kube_ops::namespace_binding(&self.ctx.client, &namespace).await?;
        let workspace = match (&spec.workspace, &binding) {
            (Some(w), Some(b)) if !w.eq_ignore_ascii_case(b) => {
                let msg = format!(
                    "spec.workspace {w:?} is not allowed: namespace {namespace} is bound to workspace {b:?} (annotation {WORKSPACE_ANNOTATION})"
                );
                self.terminal("WorkspaceNotAllowed", &msg);
                return Ok(refresh);
            }
            (_, None) if self.ctx.config.require_namespace_binding => {
                let msg = format!(
                    "namespace {namespace} has no {WORKSPACE_ANNOTATION} annotation, and the operator requires one (--require-namespace-binding)"
                );
                self.terminal("NamespaceNotBound", &msg);
                return Ok(refresh);
            }
            (Some(w), _) => w.clone(),
            (None, Some(b)) => b.clone(),
            (None, None) => match &self.ctx.config.default_workspace {
                Some(d) => d.clone(),
                None => {
                    self.terminal(
                        "InvalidSpec",
                        "spec.workspace: required (the namespace is not bound to a workspace and the operator has no --default-workspace)",
                    );
                    return Ok(Action::await_change());
                }
            },
        };

        // 3. Workspace UUID.
        let workspace_id = match self
            .ctx
            .workspaces
            .resolve(&self.ctx.portkey, &workspace)
            .await
        {
            Ok(id) => id,
            Err(e) if e.is_not_found() => {
                self.terminal(
                    "WorkspaceNotFound",
                    &format!("Portkey has no workspace {workspace:?}"),
                );
                return Ok(refresh);
            }
            Err(e) => return Err(e.into()),
        };

        // 4. Observe.
        let options = PlanOptions {
            management: spec.management_policy,
            on_immutable_change: spec.on_immutable_change,
        };
        let had_policy = self.psr().policy_id.is_some();
        let mut remote = None;
        if let Some(id) = self.psr().policy_id.clone() {
            remote = self.get_policy(&id).await?;
            if remote.is_none() {
                tracing::info!(policy = %id, "the Portkey policy is gone (archived elsewhere?)");
                self.ps().policy_id = None;
                self.ps().remote_status = Some(PolicyStatus::Archived.to_string());
            }
        } else if let Some(id) = spec.adopt_policy_id.clone() {
            remote = self.get_policy(&id).await?;
            match &remote {
                Some(_) if !observe => {
                    self.event(
                        EventType::Normal,
                        "Adopted",
                        format!("took over Portkey policy {id} (adoptPolicyId)"),
                    )
                    .await;
                }
                Some(_) => {}
                None => {
                    let msg = format!("spec.adoptPolicyId: Portkey has no active policy {id}");
                    let reason = if observe {
                        "RemotePolicyNotFound"
                    } else {
                        "AdoptTargetNotFound"
                    };
                    self.terminal(reason, &msg);
                    return Ok(refresh);
                }
            }
        }
        if remote.is_none() && !observe {
            remote = self.find_owned(&workspace_id).await?;
            if remote.is_none()
                && let Some(since) = self.pending_since()
            {
                let grace = self.ctx.config.create_pending_grace;
                let waited =
                    Duration::try_from(self.now.duration_since(since)).unwrap_or(Duration::MAX);
                if waited < grace {
                    let msg = format!(
                        "a create was sent at {since} but no Portkey policy with marker {} is visible yet; waiting up to {}s before creating again (remove annotation {CREATE_PENDING_ANNOTATION} to retry now)",
                        self.identity.marker(),
                        grace.as_secs()
                    );
                    self.set(SYNCED, FALSE, "CreationResultUnknown", &msg);
                    self.set(READY, FALSE, "CreationResultUnknown", &msg);
                    return Ok(Action::requeue(grace - waited));
                }
            }
        }
        if let Some(p) = &remote
            && self.psr().policy_id.as_deref() != Some(p.id())
            && !observe
        {
            self.ps().policy_id = Some(p.id().to_owned());
        }
        if remote.is_some() && self.pending_since().is_some() {
            self.obj =
                kube_ops::set_annotation(&self.api, &self.obj, CREATE_PENDING_ANNOTATION, None)
                    .await?;
        }

        // 5. Plan and apply.
        let desired = self.obj.desired(&self.identity, &workspace_id);
        let decision = plan(&desired, remote.as_ref(), options);
        let mut dry_run = None;
        if self.ctx.config.dry_run
            && let Decision::Apply(action) = &decision
        {
            dry_run = Some(self.announce_dry_run(action, &workspace_id).await);
        }
        let mut blocked = None;
        match decision {
            // Dry-run: nothing is written; the status below reports the policy as it is.
            _ if dry_run.is_some() => {}
            Decision::InSync => {}
            Decision::Blocked {
                reason, message, ..
            } => blocked = Some((reason, message)),
            Decision::Apply(PolicyAction::Create { body }) => {
                let reason = if had_policy { "Recreated" } else { "Created" };
                let note = if had_policy {
                    "the Portkey policy was archived or deleted outside the operator; created a new one (usage restarts from zero)"
                } else {
                    "created the Portkey policy"
                };
                remote = Some(self.create(&body, &workspace_id, reason, note).await?);
            }
            Decision::Apply(PolicyAction::Update { id, body, changes }) => {
                self.ctx.write_permit().await;
                self.policies().update(&id, &body).await?;
                let spec_changed = self.psr().observed_generation != self.generation();
                let (reason, what) = if spec_changed {
                    ("Updated", "updated the Portkey policy")
                } else {
                    (
                        "DriftCorrected",
                        "the Portkey policy was changed outside the operator; reverted",
                    )
                };
                self.event(
                    EventType::Normal,
                    reason,
                    format!("{what}: {}", FieldChange::summary(&changes)),
                )
                .await;
                remote = self.get_policy(&id).await?;
            }
            Decision::Apply(PolicyAction::Replace {
                old_id,
                body,
                changes,
            }) => {
                self.ctx.write_permit().await;
                match self.policies().delete(&old_id).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                self.ps().policy_id = None;
                self.flush_status().await?;
                let note = format!(
                    "{} cannot change in place: archived Portkey policy {old_id} and created a new one (usage restarts from zero)",
                    FieldChange::summary(&changes)
                );
                remote = Some(
                    self.create(&body, &workspace_id, "Recreated", &note)
                        .await?,
                );
            }
        }

        // 6. Status.
        let generation = self.generation();
        self.ps().workspace_id = Some(workspace_id);
        self.ps().observed_generation = generation;
        self.ps().remote_status = remote.as_ref().map(|p| p.status().to_string());
        let events = self.obj.report(&mut self.status, remote.as_ref(), &desired);
        for (type_, reason, note) in events {
            self.event(type_, reason, note).await;
        }
        if let Some(message) = dry_run {
            // The spec is not in force, but reading Portkey worked.
            self.set(READY, FALSE, "DryRun", &message);
            self.set(
                SYNCED,
                TRUE,
                "DryRun",
                "dry-run mode: read Portkey, wrote nothing (see the Would* Events)",
            );
            return Ok(refresh);
        }
        match blocked {
            Some((reason, message)) => {
                if reason == "OutOfSync" {
                    // Observe mode: reading worked; the policy just differs from the spec.
                    self.set(READY, FALSE, reason, &message);
                    self.set(
                        SYNCED,
                        TRUE,
                        "Observed",
                        "read the Portkey policy (managementPolicy Observe: no writes)",
                    );
                    let now = self.now;
                    self.ps().last_sync_time = Some(Time(now));
                } else {
                    self.terminal(reason, &message);
                }
            }
            None => {
                let policy = remote
                    .as_ref()
                    .map(|p| p.id().to_owned())
                    .unwrap_or_default();
                let ready_msg = if observe {
                    format!("Portkey policy {policy} matches the spec (observed, not managed)")
                } else {
                    format!("Portkey policy {policy} is in force as specified")
                };
                self.set(
                    READY,
                    TRUE,
                    if observe { "Observed" } else { "InForce" },
                    &ready_msg,
                );
                self.set(
                    SYNCED,
                    TRUE,
                    "ReconcileSuccess",
                    "the last reconcile succeeded",
                );
                let now = self.now;
                self.ps().last_sync_time = Some(Time(now));
            }
        }
        Ok(refresh)
    }

    /// Dry-run: records what would be written as Events (nothing is sent to Portkey) and
    /// returns the summary for the conditions.
    async fn announce_dry_run(
        &mut self,
        action: &PolicyAction<<R::Kind as PolicyKind>::Create, <R::Kind as PolicyKind>::Update>,
        workspace_id: &str,
    ) -> String {
        let notes: Vec<(&str, String)> = match action {
            PolicyAction::Create { .. } => vec![(
                "WouldCreate",
                format!("dry-run: would create a Portkey policy in workspace {workspace_id}"),
            )],
            PolicyAction::Update { id, changes, .. } => vec![(
                "WouldUpdate",
                format!(
                    "dry-run: would update Portkey policy {id}: {}",
                    FieldChange::summary(changes)
                ),
            )],
            PolicyAction::Replace {
                old_id, changes, ..
            } => vec![
                (
                    "WouldArchive",
                    format!(
                        "dry-run: would archive Portkey policy {old_id} ({} cannot change in place)",
                        FieldChange::summary(changes)
                    ),
                ),
                (
                    "WouldCreate",
                    format!(
                        "dry-run: would create its replacement in workspace {workspace_id} (usage restarts from zero)"
                    ),
                ),
            ],
        };
        let message = notes
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        for (reason, note) in notes {
            self.event(EventType::Normal, reason, note).await;
        }
        message
    }

    /// GET (with usage where the kind has it); `None` when the policy is gone (404).
    async fn get_policy(&self, id: &str) -> Result<Option<<R::Kind as PolicyKind>::Policy>, Error> {
        let options = GetOptions {
            include_usage: R::INCLUDE_USAGE,
            ..Default::default()
        };
        match self.policies().get(id, options).await {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Adopt before create: the oldest active policy in the workspace carrying this resource's
    /// ownership marker. Extra ones (duplicates from an earlier failure) are archived. A resource
    /// with a create pending lists the workspace afresh; others use the shared [`OwnedIndex`]
    /// listing (see there why that is safe).
    ///
    /// [`OwnedIndex`]: super::OwnedIndex
    async fn find_owned(
        &mut self,
        workspace_id: &str,
    ) -> Result<Option<<R::Kind as PolicyKind>::Policy>, Error> {
        let list = || async {
            let filter = ListFilter {
                workspace_id: Some(workspace_id.to_owned()),
                status: Some(PolicyStatus::Active),
                ..Default::default()
            };
            Ok(self
                .policies()
                .list_summaries(&filter)
                .await?
                .into_iter()
                .map(|p| {
                    let entry = super::OwnedEntry {
                        id: p.id,
                        created_at: p.created_at,
                    };
                    (p.name, entry)
                })
                .collect::<Vec<_>>())
        };
        let marker = self.identity.marker();
        let mut owned: Vec<super::OwnedEntry> = if self.pending_since().is_some() {
            list()
                .await?
                .into_iter()
                .filter(|(name, _)| self.identity.owns(name.as_deref()))
                .map(|(_, e)| e)
                .collect()
        } else {
            self.ctx
                .owned
                .lookup(R::SHORT, workspace_id, &marker, list)
                .await?
        };
        if owned.is_empty() {
            return Ok(None);
        }
        owned.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let keep = owned.remove(0);
        let Some(kept) = self.get_policy(&keep.id).await? else {
            // Archived since the listing: nothing to adopt.
            return Ok(None);
        };
        for extra in owned {
            if self.ctx.config.dry_run {
                self.event(
                    EventType::Normal,
                    "WouldArchive",
                    format!(
                        "dry-run: would archive Portkey policy {} carrying this resource's marker (a duplicate of {})",
                        extra.id, keep.id
                    ),
                )
                .await;
                continue;
            }
            self.ctx.write_permit().await;
            match self.policies().delete(&extra.id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            }
            self.event(
                EventType::Warning,
                "DuplicateArchived",
                format!(
                    "archived Portkey policy {} carrying this resource's marker; kept {}",
                    extra.id, keep.id
                ),
            )
            .await;
        }
        self.event(
            EventType::Normal,
            "Adopted",
            format!(
                "found Portkey policy {} (marker {marker}) and took it over instead of creating another",
                keep.id
            ),
        )
        .await;
        Ok(Some(kept))
    }

    /// Creates the policy, bracketed by the create-pending annotation; records the id in status
    /// before anything else.
    async fn create(
        &mut self,
        body: &<R::Kind as PolicyKind>::Create,
        workspace_id: &str,
        reason: &str,
        note: &str,
    ) -> Result<<R::Kind as PolicyKind>::Policy, Error> {
        // Guarded by resourceVersion: a stale cached copy of the resource cannot create twice.
        let stamp = self.now.to_string();
        self.obj = kube_ops::set_annotation(
            &self.api,
            &self.obj,
            CREATE_PENDING_ANNOTATION,
            Some(&stamp),
        )
        .await?;
        self.ctx.write_permit().await;
        let created = match self.policies().create(body).await {
            Ok(c) => c,
            Err(e) => {
                if definitely_not_created(&e) {
                    self.obj = kube_ops::set_annotation(
                        &self.api,
                        &self.obj,
                        CREATE_PENDING_ANNOTATION,
                        None,
                    )
                    .await?;
                }
                return Err(e.into());
            }
        };
        self.ps().policy_id = Some(created.id.clone());
        self.ps().workspace_id = Some(workspace_id.to_owned());
        self.flush_status().await?;
        self.obj =
            kube_ops::set_annotation(&self.api, &self.obj, CREATE_PENDING_ANNOTATION, None).await?;
        let type_ = if reason == "Recreated" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.event(type_, reason, format!("{note} ({})", created.id))
            .await;
        // Read back the server's fields (next reset, status); tolerate a lagging read.
        for attempt in 0..3 {
            if let Some(p) = self.get_policy(&created.id).await? {
                return Ok(p);
            }
            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
        }
        Err(Error::Portkey(PortkeyError::NotFound {
            code: None,
            message: format!(
                "policy {} was created but cannot be read back yet",
                created.id
            ),
        }))
    }

    /// Deletion: archive (or retain) the remote policy, then release the finalizer.
    async fn cleanup(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&self.obj) {
            return Ok(Action::await_change());
        }
        let spec = self.obj.common();
        let archive = spec.deletion_policy == DeletionPolicy::Archive
            && spec.management_policy == ManagementPolicy::Manage;
        if archive {
            let mut ids: Vec<String> = self.psr().policy_id.iter().cloned().collect();
            // A create may have been in flight: find it by its marker so it is not left behind.
            if (ids.is_empty() || self.pending_since().is_some())
                && let Some(ws) = self.psr().workspace_id.clone()
            {
                let filter = ListFilter {
                    workspace_id: Some(ws),
                    status: Some(PolicyStatus::Active),
                    ..Default::default()
                };
                for p in self.policies().list(&filter).await? {
                    if self.identity.owns(p.name()) && !ids.iter().any(|i| i == p.id()) {
                        ids.push(p.id().to_owned());
                    }
                }
            }
            for id in ids {
                if self.ctx.config.dry_run {
                    self.event(
                        EventType::Normal,
                        "WouldArchive",
                        format!("dry-run: would archive Portkey policy {id}"),
                    )
                    .await;
                    continue;
                }
                self.ctx.write_permit().await;
                match self.policies().delete(&id).await {
                    Ok(()) => {
                        self.event(
                            EventType::Normal,
                            "Archived",
                            format!("archived Portkey policy {id}"),
                        )
                        .await
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
        } else if let Some(id) = self.psr().policy_id.clone() {
            let why = if spec.management_policy == ManagementPolicy::Observe {
                "managementPolicy Observe"
            } else {
                "deletionPolicy Retain"
            };
            self.event(
                EventType::Normal,
                "Retained",
                format!("left Portkey policy {id} in force ({why})"),
            )
            .await;
        }
        kube_ops::remove_finalizer(&self.api, &self.obj).await?;
        Ok(Action::await_change())
    }
}
