//! Reconcile and cleanup of one `UsageLimitPolicy`.
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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::conditions::{self, FALSE, READY, SYNCED, TRUE, UNKNOWN};
use super::kube_ops;
use super::{Context, Error};
use crate::api::validate::{summarize, validate_object};
use crate::api::*;
use crate::plan::report::{AlertEvent, usage_report};
use crate::plan::usage::{Decision, DesiredUsagePolicy, PlanOptions, UsageAction, plan};
use crate::plan::{FieldChange, Identity, schedule_text};
use crate::portkey::*;

/// Short kind used in ownership markers.
pub const KIND: &str = "ulp";

struct Run<'a> {
    ctx: &'a Context,
    api: Api<UsageLimitPolicy>,
    obj: UsageLimitPolicy,
    identity: Identity,
    status: UsageLimitPolicyStatus,
    now: Timestamp,
}

/// Reconciles one resource (or cleans it up when it is being deleted).
pub async fn reconcile(obj: &UsageLimitPolicy, ctx: &Context) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let mut run = Run {
        ctx,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        identity: Identity::new(KIND, Some(&namespace), &obj.name_any()),
        status: obj.status.clone().unwrap_or_default(),
        obj: obj.clone(),
        now: Timestamp::now(),
    };
    if obj.metadata.deletion_timestamp.is_some() {
        return run.cleanup().await;
    }
    match run.apply().await {
        Ok(action) => {
            run.flush_status().await?;
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

/// True when a create that failed this way certainly made nothing in Portkey.
fn definitely_not_created(e: &PortkeyError) -> bool {
    match e {
        PortkeyError::Transport { connect, .. } => *connect,
        PortkeyError::Server { .. } | PortkeyError::Decode { .. } => false,
        _ => true,
    }
}

impl Run<'_> {
    fn generation(&self) -> Option<i64> {
        self.obj.metadata.generation
    }

    fn set(&mut self, type_: &str, status: &str, reason: &str, message: &str) {
        let generation = self.generation();
        conditions::set(
            &mut self.status.conditions,
            type_,
            status,
            reason,
            message,
            generation,
            self.now,
        );
    }

    /// Ready=False and Synced=False for a state only a human can fix; no Admin API call made.
    fn terminal(&mut self, reason: &str, message: &str) {
        self.set(READY, FALSE, reason, message);
        self.set(SYNCED, FALSE, reason, message);
        self.status.observed_generation = self.generation();
    }

    fn failed(&mut self, e: &Error) {
        let message = e.to_string();
        let terminal = matches!(e, Error::Portkey(p) if p.is_terminal());
        let status = if terminal { FALSE } else { UNKNOWN };
        self.set(SYNCED, status, e.reason(), &message);
        // Ready keeps its last known value unless the failure is terminal: the policy may well
        // still be in force in Portkey.
        if terminal || conditions::get(&self.status.conditions, READY).is_none() {
            self.set(READY, status, e.reason(), &message);
        }
    }

    async fn flush_status(&mut self) -> Result<(), kube::Error> {
        if self.obj.status.as_ref() == Some(&self.status) {
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

    /// A healthy resource synced within the refresh interval needs no Admin API call: this is
    /// what keeps the operator's own status writes from turning into Portkey reads.
    fn fresh(&self) -> Option<Action> {
        let spec_seen = self.status.observed_generation == self.generation();
        let healthy = conditions::is_true(&self.status.conditions, READY)
            && conditions::is_true(&self.status.conditions, SYNCED);
        let last = self.status.last_sync_time.as_ref()?.0;
        let age = Duration::try_from(self.now.duration_since(last)).ok()?;
        let interval = self.ctx.config.usage_refresh_interval;
        (spec_seen && healthy && self.pending_since().is_none() && age < interval).then(|| {
            Action::requeue(interval - age + Duration::from_millis(rand::random_range(0..1000)))
        })
    }

    async fn apply(&mut self) -> Result<Action, Error> {
        if let Some(action) = self.fresh() {
            return Ok(action);
        }
        let refresh = Action::requeue(self.ctx.refresh_interval());

        // 1. Admission rules again: nothing invalid ever reaches Portkey.
        let value = serde_json::to_value(&self.obj).expect("resources serialize");
        let errors = validate_object(&self.ctx.usage_crd, &value, None);
        if !errors.is_empty() {
            self.terminal("InvalidSpec", &summarize(&errors));
            return Ok(Action::await_change());
        }
        let spec = self.obj.spec.clone();
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
        let had_policy = self.status.policy_id.is_some();
        let mut remote = None;
        if let Some(id) = self.status.policy_id.clone() {
            remote = self.get_policy(&id).await?;
            if remote.is_none() {
                tracing::info!(policy = %id, "the Portkey policy is gone (archived elsewhere?)");
                self.status.policy_id = None;
                self.status.remote_status = Some(PolicyStatus::Archived.to_string());
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
            && self.status.policy_id.as_deref() != Some(p.id.as_str())
            && !observe
        {
            self.status.policy_id = Some(p.id.clone());
        }
        if remote.is_some() && self.pending_since().is_some() {
            self.obj =
                kube_ops::set_annotation(&self.api, &self.obj, CREATE_PENDING_ANNOTATION, None)
                    .await?;
        }

        // 5. Plan and apply.
        let desired = DesiredUsagePolicy::from_spec(&spec, &self.identity, &workspace_id);
        let decision = plan(&desired, remote.as_ref(), options);
        let mut blocked = None;
        match decision {
            Decision::InSync => {}
            Decision::Blocked {
                reason, message, ..
            } => blocked = Some((reason, message)),
            Decision::Apply(UsageAction::Create { body }) => {
                let reason = if had_policy { "Recreated" } else { "Created" };
                let note = if had_policy {
                    "the Portkey policy was archived or deleted outside the operator; created a new one (usage restarts from zero)"
                } else {
                    "created the Portkey policy"
                };
                remote = Some(self.create(&body, reason, note).await?);
            }
            Decision::Apply(UsageAction::Update { id, body, changes }) => {
                self.ctx.write_permit().await;
                self.ctx.portkey.usage_limits().update(&id, &body).await?;
                let spec_changed = self.status.observed_generation != self.generation();
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
            Decision::Apply(UsageAction::Replace {
                old_id,
                body,
                changes,
            }) => {
                self.ctx.write_permit().await;
                match self.ctx.portkey.usage_limits().delete(&old_id).await {
                    Ok(()) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
                self.status.policy_id = None;
                self.flush_status().await?;
                let note = format!(
                    "{} cannot change in place: archived Portkey policy {old_id} and created a new one (usage restarts from zero)",
                    FieldChange::summary(&changes)
                );
                remote = Some(self.create(&body, "Recreated", &note).await?);
            }
        }

        // 6. Status.
        self.status.workspace_id = Some(workspace_id);
        self.status.observed_generation = self.generation();
        self.status.reset_schedule = Some(schedule_text(
            spec.periodic_reset,
            spec.periodic_reset_days.map(i64::from),
        ));
        if let Some(p) = &remote {
            self.report(p, &desired).await;
        } else {
            self.status.usage = None;
            self.status.next_reset_at = None;
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
                    self.status.last_sync_time = Some(Time(self.now));
                } else {
                    self.terminal(reason, &message);
                }
            }
            None => {
                let policy = remote.as_ref().map(|p| p.id.as_str()).unwrap_or("?");
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
                self.status.last_sync_time = Some(Time(self.now));
            }
        }
        Ok(refresh)
    }

    /// GET with usage; `None` when the policy is gone (404).
    async fn get_policy(&self, id: &str) -> Result<Option<UsageLimitsPolicy>, Error> {
        let options = GetOptions {
            include_usage: true,
            ..Default::default()
        };
        match self.ctx.portkey.usage_limits().get(id, options).await {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Adopt before create: the oldest active policy in the workspace carrying this resource's
    /// ownership marker. Extra ones (duplicates from an earlier failure) are archived.
    async fn find_owned(&mut self, workspace_id: &str) -> Result<Option<UsageLimitsPolicy>, Error> {
        let filter = ListFilter {
            workspace_id: Some(workspace_id.to_owned()),
            status: Some(PolicyStatus::Active),
            ..Default::default()
        };
        let mut owned: Vec<UsageLimitsPolicy> = self
            .ctx
            .portkey
            .usage_limits()
            .list(&filter)
            .await?
            .into_iter()
            .filter(|p| self.identity.owns(p.name.as_deref()))
            .collect();
        if owned.is_empty() {
            return Ok(None);
        }
        owned.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
        let keep = owned.remove(0);
        for extra in owned {
            self.ctx.write_permit().await;
            match self.ctx.portkey.usage_limits().delete(&extra.id).await {
                Ok(()) => {}
                Err(e) if e.is_not_found() => {}
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
                "found Portkey policy {} (marker {}) and took it over instead of creating another",
                keep.id,
                self.identity.marker()
            ),
        )
        .await;
        Ok(self.get_policy(&keep.id).await?.or(Some(keep)))
    }

    /// Creates the policy, bracketed by the create-pending annotation; records the id in status
    /// before anything else.
    async fn create(
        &mut self,
        body: &CreateUsageLimitsPolicy,
        reason: &str,
        note: &str,
    ) -> Result<UsageLimitsPolicy, Error> {
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
        let created = match self.ctx.portkey.usage_limits().create(body).await {
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
        self.status.policy_id = Some(created.id.clone());
        self.status.workspace_id = body.workspace_id.clone();
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

    /// Usage summary, reset times and alert Events from the observed policy.
    async fn report(&mut self, p: &UsageLimitsPolicy, desired: &DesiredUsagePolicy) {
        self.status.remote_status = Some(p.status.to_string());
        self.status.next_reset_at = p.next_usage_reset_at.map(Time);
        self.status.last_reset_at = p.last_reset_at.map(Time);
        let period = p
            .last_reset_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "since-creation".to_owned());
        let empty = Default::default();
        let usage = p.value_key_usage_map.as_ref().unwrap_or(&empty);
        let report = usage_report(
            usage,
            p.credit_limit,
            p.alert_threshold.or(desired.alert_threshold),
            &period,
            self.status.alerts.as_ref(),
        );
        self.status.usage = Some(report.summary);
        self.status.alerts = (!report.alerts.threshold_reached.is_empty()
            || !report.alerts.exhausted.is_empty())
        .then_some(report.alerts);
        for event in report.events {
            match event {
                AlertEvent::ThresholdReached { value_key, usage, threshold } => {
                    self.event(
                        EventType::Warning,
                        "AlertThresholdReached",
                        format!("bucket {value_key} used {} of its {} budget (alert threshold {})", usage.normalize(), p.credit_limit.normalize(), threshold.normalize()),
                    )
                    .await
                }
                AlertEvent::Exhausted { value_key, usage, limit } => {
                    self.event(
                        EventType::Warning,
                        "BudgetExhausted",
                        format!("bucket {value_key} reached its limit ({} of {}); Portkey refuses its requests (HTTP 412) until the next reset", usage.normalize(), limit.normalize()),
                    )
                    .await
                }
            }
        }
    }

    /// Deletion: archive (or retain) the remote policy, then release the finalizer.
    async fn cleanup(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&self.obj) {
            return Ok(Action::await_change());
        }
        let spec = self.obj.spec.clone();
        let archive = spec.deletion_policy == DeletionPolicy::Archive
            && spec.management_policy == ManagementPolicy::Manage;
        if archive {
            let mut ids: Vec<String> = self.status.policy_id.iter().cloned().collect();
            // A create may have been in flight: find it by its marker so it is not left behind.
            if (ids.is_empty() || self.pending_since().is_some())
                && let Some(ws) = self.status.workspace_id.clone()
            {
                let filter = ListFilter {
                    workspace_id: Some(ws),
                    status: Some(PolicyStatus::Active),
                    ..Default::default()
                };
                for p in self.ctx.portkey.usage_limits().list(&filter).await? {
                    if self.identity.owns(p.name.as_deref()) && !ids.contains(&p.id) {
                        ids.push(p.id);
                    }
                }
            }
            for id in ids {
                self.ctx.write_permit().await;
                match self.ctx.portkey.usage_limits().delete(&id).await {
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
        } else if let Some(id) = &self.status.policy_id {
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
