//! Reconcile and cleanup of one `ApiKeyBudget`.
//!
//! Steps: validate → resolve (workspace) → observe (the key: by id or name for an existing key;
//! by status or by marker for an issued one, created if there is none) → secret (issued keys:
//! the Secret holds a working raw key, else the key is rotated to get one) → one-shots (rotation
//! and usage-reset annotations) → plan and execute (the declared fields) → report.
//!
//! Status is never authority: a `status.keyId` is re-verified (workspace, and this resource's
//! marker for an issued key; `existing.rs` for existing keys) before anything is written,
//! rotated or deleted through it. Scopes and key types are the operator's allow-list's.
//!
//! The raw key exists only in the answer to a create or a rotate, in memory, and in the Secret.
//! A key created whose Secret could not be written is found again by its marker and rotated: a
//! second key is never created for the same resource.

mod existing;
mod secret;

use std::borrow::Cow;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use rust_decimal::prelude::ToPrimitive;

use super::conditions::{Outcome, reasons};
use super::engine::Pass;
use super::kube_ops;
use super::policy::{Step, is_paused, resolve_workspace};
use super::{Context, Error, annotation_token as token, one_shot_due};
use crate::api::validate::summarize;
use crate::api::*;
use crate::metrics::BudgetFigures;
use crate::plan::FieldChange;
use crate::plan::api_key::{self as plan, DesiredKey};
use crate::plan::ownership;
use crate::plan::trust::{Basis, Expected, RemoteFacts, verify_recorded};
use crate::portkey::{ApiKeyObject, ApiKeyStatus, ApiKeyType, UpdateApiKey};

impl super::engine::Kind for ApiKeyBudget {
    type Status = ApiKeyBudgetStatus;
    const USAGE: bool = true;

    fn api(client: kube::Client, obj: &Self) -> Api<Self> {
        Api::namespaced(client, &obj.namespace().unwrap_or_default())
    }
    super::engine::kind_status!(ApiKeyBudgetStatus, create);
}

impl super::engine::Reconciler for ApiKeyBudget {
    fn gate(obj: &Self, ctx: &Context, key: &str, now: Timestamp) -> Option<Action> {
        gate(obj, ctx, key, now)
    }
    fn apply(
        pass: &mut Pass<'_, Self>,
    ) -> impl std::future::Future<Output = Result<Action, Error>> + Send {
        pass.apply_key()
    }
    fn cleanup(
        pass: &mut Pass<'_, Self>,
    ) -> impl std::future::Future<Output = Result<Action, Error>> + Send {
        pass.cleanup_key()
    }
}

/// Field manager of the Secrets the operator writes.
const SECRET_MANAGER: &str = "portkey-budget-operator";
/// Short kind in markers (declared in `api`).
pub const SHORT: &str = <ApiKeyBudget as ShortName>::SHORT;

/// Reconciles one `ApiKeyBudget` (or cleans up when it is being deleted).
pub async fn reconcile(obj: &ApiKeyBudget, ctx: &Context) -> Result<Action, Error> {
    super::engine::reconcile(obj, ctx).await
}

/// The freshness gate (`super::gate`) of an `ApiKeyBudget`: a pending create or one-shot
/// (rotation, usage reset) is never turned away.
fn gate(obj: &ApiKeyBudget, ctx: &Context, key: &str, now: Timestamp) -> Option<Action> {
    let unset = ApiKeyBudgetStatus::default();
    let status = obj.status.as_ref().unwrap_or(&unset);
    let rotate = token(obj, ROTATE_ANNOTATION);
    let reset = token(obj, RESET_USAGE_ANNOTATION);
    super::gate(
        ctx,
        super::Freshness {
            generation: obj.metadata.generation,
            observed_generation: status.observed_generation,
            conditions: &status.conditions,
            last_sync: ctx.last_sync(key),
            pending: super::pending_create(obj, status.create_confirmed.as_deref()).is_some()
                || one_shot_due(rotate.as_deref(), status.rotation.as_ref())
                || one_shot_due(reset.as_deref(), status.usage_reset.as_ref()),
            paused: is_paused(obj),
        },
        now,
        ctx.interval(true),
    )
}

impl Pass<'_, ApiKeyBudget> {
    fn issue(&self) -> Option<&IssueKey> {
        self.obj.spec.issue.as_ref()
    }

    async fn apply_key(&mut self) -> Result<Action, Error> {
        let refresh = Action::requeue(self.ctx.refresh_interval(true));
        // validate
        let errors = self.ctx.admission_errors(SHORT, &*self.obj);
        if !errors.is_empty() {
            self.terminal(reasons::INVALID_SPEC, &summarize(&errors));
            return Ok(Action::await_change());
        }
        // the operator's allow-list: what a tenant may have issued
        if let Some(issue) = self.issue()
            && let Err(refused) = self.ctx.config.key_scopes.check_issue(issue)
        {
            self.terminal(refused.reason, &refused.message);
            return Ok(Action::await_change());
        }
        self.status.mode = Some(
            if self.issue().is_some() {
                "Issued"
            } else {
                "Existing"
            }
            .into(),
        );
        if !kube_ops::has_finalizer(&*self.obj) {
            self.obj = Cow::Owned(
                kube_ops::add_finalizer(&self.api, &*self.obj)
                    .await
                    .map_err(|e| Error::kube("add the finalizer", e))?,
            );
        }
        // resolve
        let workspace_id = match self
            .resolve_workspace(self.obj.spec.workspace.clone().as_ref(), refresh.clone())
            .await?
        {
            Step::Go(id) => id,
            Step::Stop(action) => return Ok(action),
        };
        self.status.workspace_id = Some(workspace_id.clone());
        let paused = is_paused(&*self.obj);
        self.announce_pause(paused, "the key is").await;
        // observe
        let key = match self.observe(&workspace_id, paused, refresh.clone()).await? {
            Step::Go(key) => key,
            Step::Stop(action) => return Ok(action),
        };
        if paused {
            let desired = DesiredKey::from_spec(&self.obj.spec);
            let differences = plan::plan(&desired, &key)
                .map(|u| FieldChange::summary(&u.changes))
                .unwrap_or_default();
            self.report_figures(&key);
            self.conclude(Outcome::paused(&differences, "the key's limits"));
            self.ctx.synced(&self.key, self.now);
            return Ok(refresh);
        }
        if self.ctx.config.dry_run {
            return Ok(self.dry_run(&key, refresh).await);
        }
        // secret (issued keys): a working raw key in the Secret
        if let Some(step) = self.ensure_secret(&key).await? {
            return Ok(step);
        }
        // one-shots
        let key = if self.usage_reset(&key).await? {
            self.ctx
                .portkey
                .get_api_key(&key.id)
                .await
                .map_err(|e| Error::portkey("read the API key", e))?
        } else {
            key
        };
        // plan and execute
        let desired = DesiredKey::from_spec(&self.obj.spec);
        let key = self.execute(&desired, key).await?;
        // report
        self.report(&key, &desired).await;
        Ok(refresh)
    }

    /// Step 3: the key this resource manages.
    async fn observe(
        &mut self,
        workspace_id: &str,
        paused: bool,
        refresh: Action,
    ) -> Result<Step<ApiKeyObject>, Error> {
        if let Some(existing) = self.obj.spec.existing.clone() {
            return self
                .observe_existing(&existing, workspace_id, refresh)
                .await;
        }
        // An issued key: the recorded one, else the one carrying the marker.
        if let Some(id) = self.status.key_id.clone() {
            match self.ctx.portkey.get_api_key(&id).await {
                Ok(key) => {
                    // Status is not authority: the recorded key must be this resource's.
                    if let Err(refused) = self.verify_issued(&key, workspace_id) {
                        self.terminal(refused.reason, &refused.message);
                        return Ok(Step::Stop(refresh));
                    }
                    return Ok(Step::Go(key));
                }
                Err(e) if e.is_gone() => {
                    tracing::info!(key = %id, "the issued API key is gone; looking for it by marker");
                    self.status.key_id = None;
                }
                Err(e) => return Err(Error::portkey("read the API key", e)),
            }
        }
        let keys = self.workspace_keys(workspace_id).await?;
        let secret_key_id = self.secret_key_id().await?;
        if let Some(found) = self.mine(&keys, secret_key_id.as_deref()).await? {
            self.status.key_id = Some(found.id.clone());
            self.confirm_create();
            return Ok(Step::Go(found));
        }
        let grace = self.ctx.config.create_pending_grace;
        if let Some(since) = self.pending_since() {
            let waited =
                Duration::try_from(self.now.duration_since(since)).unwrap_or(Duration::MAX);
            if waited < grace {
                self.conclude(Outcome::Progressing {
                    reason: reasons::CREATION_RESULT_UNKNOWN,
                    message: format!(
                        "a key create was sent at {since} but no key with marker {} is visible yet; waiting up to {}s before creating again",
                        self.identity.marker(),
                        grace.as_secs()
                    ),
                });
                return Ok(Step::Stop(Action::requeue(grace - waited)));
            }
        }
        if paused {
            self.conclude(Outcome::paused(
                "no Portkey key exists (it would be created)",
                "the key's limits",
            ));
            return Ok(Step::Stop(refresh));
        }
        if self.ctx.config.dry_run {
            self.event(
                EventType::Normal,
                "WouldCreate",
                format!("dry-run: would issue a key in workspace {workspace_id} and write it into Secret {}", self.issue().map(|i| i.secret_name.as_str()).unwrap_or_default()),
            )
            .await;
            self.conclude(Outcome::dry_run("dry-run: the key would be issued".into()));
            return Ok(Step::Stop(refresh));
        }
        self.create(workspace_id).await
    }

    /// The shared verification rule (`plan::trust::verify_recorded`) for an issued key whose id
    /// was read from `status.keyId`: in this resource's workspace, carrying its marker.
    fn verify_issued(
        &self,
        key: &ApiKeyObject,
        workspace_id: &str,
    ) -> Result<(), ownership::Refusal> {
        verify_recorded(
            &Expected {
                field: "status.keyId",
                object: "Portkey API key",
                workspace_id,
                identity: &self.identity,
                basis: Basis::Created,
            },
            &RemoteFacts {
                id: &key.id,
                workspace_id: key.workspace_id.as_deref(),
                name: key.name.as_deref(),
            },
        )
    }

    /// The key of the workspace carrying this resource's marker: the one the Secret holds if it
    /// is among them, else the oldest. Other keys with the marker (a create repeated after a
    /// crash) are deleted: no Secret holds them.
    async fn mine(
        &self,
        keys: &[ApiKeyObject],
        secret_key_id: Option<&str>,
    ) -> Result<Option<ApiKeyObject>, Error> {
        let Some(owned) = ownership::owned(plan::candidates(keys), &self.identity) else {
            return Ok(None);
        };
        let mut all: Vec<String> = std::iter::once(owned.keep.clone())
            .chain(owned.duplicates.iter().cloned())
            .collect();
        let keep = secret_key_id
            .filter(|id| all.iter().any(|k| k == id))
            .map(str::to_owned)
            .unwrap_or(owned.keep);
        all.retain(|k| *k != keep);
        // Dry-run and pause never delete: the duplicates are only reported.
        if is_paused(&*self.obj) || self.ctx.config.dry_run {
            for duplicate in &all {
                self.event(
                    EventType::Normal,
                    "WouldDelete",
                    format!("would delete API key {duplicate}, a second key carrying this resource's marker (kept {keep}); not deleted: the resource is paused or the operator runs in dry-run mode"),
                )
                .await;
            }
            all.clear();
        }
        for duplicate in all {
            self.ctx.write_permit().await;
            match self.ctx.portkey.delete_api_key(&duplicate).await {
                Ok(()) => {}
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(Error::portkey("delete a duplicate key", e)),
            }
            self.ctx
                .metrics
                .duplicate_archived(&ApiKeyBudget::kind(&()));
            self.event(
                EventType::Warning,
                "DuplicateDeleted",
                format!("deleted API key {duplicate}, a second key carrying this resource's marker (kept {keep})"),
            )
            .await;
        }
        Ok(keys.iter().find(|k| k.id == keep).cloned())
    }

    /// Issues the key: the create-pending record first, then the POST, then the Secret.
    async fn create(&mut self, workspace_id: &str) -> Result<Step<ApiKeyObject>, Error> {
        let issue = self.issue().cloned().expect("issue mode");
        let remote_name = self.identity.remote_name(issue.name.as_deref());
        let (sub_type, body) =
            plan::create_request(&self.obj.spec, remote_name, workspace_id).expect("issue mode");
        let secret = self.read_secret(&issue.secret_name).await?;
        if !self.secret_is_ours(&issue, secret.as_ref()) {
            return Ok(Step::Stop(Action::requeue(self.ctx.refresh_interval(true))));
        }
        self.check_secret_writable(&issue, "pending", secret.as_ref())
            .await?;
        let stamp = self.now.to_string();
        let portkey = &self.ctx.portkey;
        let issued = super::bracketed_create(
            self.ctx,
            &self.api,
            self.obj.to_mut(),
            &stamp,
            "issue the API key",
            || portkey.create_api_key(ApiKeyType::Workspace, sub_type, &body),
        )
        .await?;
        let Some(id) = issued.id.clone() else {
            return Err(Error::portkey(
                "issue the API key",
                crate::portkey::PortkeyError::Decode {
                    message: "the create answer has no id".into(),
                },
            ));
        };
        self.status.key_id = Some(id.clone());
        // The id must reach the status: the pass's last write retries it on a conflict.
        self.created = true;
        // A rotation in flight was of a key that is gone: the new key starts with a clean slate.
        self.status.rotation_in_flight = None;
        self.event(
            EventType::Normal,
            "Issued",
            format!("issued API key {id} in workspace {workspace_id}"),
        )
        .await;
        // The raw key goes into the Secret now; if this fails the key is found again by its
        // marker (or its recorded id) and rotated for a fresh raw key.
        self.write_secret(&issue, &id, &issued, secret.as_ref())
            .await?;
        match self.ctx.portkey.get_api_key(&id).await {
            Ok(key) => {
                self.confirm_create();
                Ok(Step::Go(key))
            }
            Err(e) if e.is_gone() => {
                self.conclude(Outcome::Progressing {
                    reason: reasons::REMOTE_POLICY_NOT_VISIBLE,
                    message: format!("issued API key {id}, which Portkey does not show yet"),
                });
                Ok(Step::Stop(Action::requeue(Duration::from_secs(2))))
            }
            Err(e) => Err(Error::portkey("read the issued key", e)),
        }
    }

    /// Every key of the workspace (all pages).
    async fn workspace_keys(&self, workspace_id: &str) -> Result<Vec<ApiKeyObject>, Error> {
        self.ctx
            .portkey
            .list_api_keys(Some(workspace_id))
            .await
            .map_err(|e| Error::portkey("list the workspace's API keys", e))
    }

    /// The usage-reset annotation: `reset_usage: true` once per token. The request is recorded
    /// in status before the PUT; a pass that finds it recorded but not confirmed asks Portkey
    /// (`last_reset_at` at or after the request) instead of resetting twice.
    async fn usage_reset(&mut self, key: &ApiKeyObject) -> Result<bool, Error> {
        let Some(t) = token(&*self.obj, RESET_USAGE_ANNOTATION) else {
            return Ok(false);
        };
        if !one_shot_due(Some(&t), self.status.usage_reset.as_ref()) {
            return Ok(false);
        }
        if let Some(done) = self.status.usage_reset.as_mut()
            && done.token == t
            && key
                .last_reset_at
                .is_some_and(|at| at >= done.requested_at.0)
        {
            done.completed_at = key.last_reset_at.map(Time);
            return Ok(false);
        }
        self.status.usage_reset = Some(OneShot {
            token: t.clone(),
            requested_at: Time(self.now),
            completed_at: None,
        });
        self.record_status()
            .await
            .map_err(|e| Error::kube("record the usage-reset request", e))?;
        self.ctx.write_permit().await;
        let body = UpdateApiKey {
            reset_usage: Some(true),
            ..Default::default()
        };
        self.ctx
            .portkey
            .update_api_key(&key.id, &body)
            .await
            .map_err(|e| Error::portkey("reset the key's usage", e))?;
        if let Some(done) = self.status.usage_reset.as_mut() {
            done.completed_at = Some(Time(self.now));
        }
        self.event(
            EventType::Normal,
            "UsageReset",
            format!(
                "reset the usage of API key {} ({RESET_USAGE_ANNOTATION}: {t})",
                key.id
            ),
        )
        .await;
        Ok(true)
    }

    /// Step 5: the PUT of the declared fields that differ; the key as Portkey shows it after.
    async fn execute(
        &mut self,
        desired: &DesiredKey,
        key: ApiKeyObject,
    ) -> Result<ApiKeyObject, Error> {
        let Some(update) = plan::plan(desired, &key) else {
            return Ok(key);
        };
        self.ctx.write_permit().await;
        self.ctx
            .portkey
            .update_api_key(&key.id, &update.body)
            .await
            .map_err(|e| Error::portkey("update the API key", e))?;
        self.announce_update("the key's limits", &update.changes)
            .await;
        self.ctx
            .portkey
            .get_api_key(&key.id)
            .await
            .map_err(|e| Error::portkey("read the API key", e))
    }

    async fn dry_run(&mut self, key: &ApiKeyObject, refresh: Action) -> Action {
        let desired = DesiredKey::from_spec(&self.obj.spec);
        self.report_figures(key);
        match plan::plan(&desired, key) {
            Some(update) => {
                let note = format!(
                    "dry-run: would update API key {}: {}",
                    key.id,
                    FieldChange::summary(&update.changes)
                );
                self.event(EventType::Normal, "WouldUpdate", note.clone())
                    .await;
                self.conclude(Outcome::dry_run(note));
            }
            None => self.report(key, &desired).await,
        }
        refresh
    }

    fn report_figures(&mut self, key: &ApiKeyObject) {
        let (budget, reset, rate) = plan::summaries(key);
        self.status.key_name = key.name.clone();
        self.status.budget = budget;
        self.status.reset = reset;
        self.status.rate_limit = rate;
        self.status.next_reset_at = key
            .next_usage_reset_at
            .or(key
                .usage_limits
                .as_ref()
                .and_then(|l| l.next_usage_reset_at))
            .map(Time);
        self.status.last_reset_at = key.last_reset_at.map(Time);
        self.status.key_status = key.status.map(|s| s.to_string());
        let (kind, ns, name) = (
            ApiKeyBudget::kind(&()),
            self.obj.namespace().unwrap_or_default(),
            self.obj.name_any(),
        );
        match &key.usage_limits {
            Some(l) => self.ctx.metrics.budget(
                &kind,
                &ns,
                &name,
                BudgetFigures {
                    budget_type: l.limit_type.to_string(),
                    limit: l.credit_limit.to_f64().unwrap_or(0.0),
                    usage: None,
                    ratio: None,
                    alert_ratio: l.alert_threshold.and_then(|a| {
                        (a / l.credit_limit.max(rust_decimal::Decimal::ONE)).to_f64()
                    }),
                    exhausted_buckets: i64::from(key.status == Some(ApiKeyStatus::Exhausted)),
                    next_reset: self.status.next_reset_at.as_ref().map(|t| t.0.as_second()),
                },
            ),
            None => self.ctx.metrics.forget_budget(&kind, &ns, &name),
        }
    }

    async fn report(&mut self, key: &ApiKeyObject, desired: &DesiredKey) {
        let was_exhausted = self.status.key_status.as_deref() == Some("exhausted");
        self.report_figures(key);
        let exhausted = key.status == Some(ApiKeyStatus::Exhausted);
        if exhausted && !was_exhausted {
            let note = format!(
                "API key {} has used up its budget ({}): Portkey refuses its requests (HTTP 412) until the next reset ({}) or a usage reset",
                key.id,
                self.status.budget.clone().unwrap_or_default(),
                self.status
                    .next_reset_at
                    .as_ref()
                    .map(|t| t.0.to_string())
                    .unwrap_or_else(|| "none scheduled".into())
            );
            self.event(EventType::Warning, "BudgetExhausted", note)
                .await;
        }
        if plan::plan(desired, key).is_some() {
            self.conclude(Outcome::Progressing {
                reason: reasons::PENDING,
                message: "sent the key's limits; Portkey does not report them yet".into(),
            });
            return;
        }
        let mut message = format!(
            "the limits of API key {} are in force as specified ({})",
            key.id,
            desired.managed_fields()
        );
        if let Some(secret) = &self.status.secret_name {
            message.push_str(&format!("; Secret {secret} holds the key"));
        }
        if exhausted {
            message.push_str("; the key's budget is exhausted");
        }
        self.conclude(Outcome::InForce {
            reason: reasons::IN_FORCE,
            message,
        });
        self.ctx.synced(&self.key, self.now);
    }

    async fn cleanup_key(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&*self.obj) {
            return Ok(Action::await_change());
        }
        let policy = self.obj.spec.effective_deletion_policy();
        let key_id = self.key_for_cleanup().await?;
        match (policy, key_id) {
            (KeyDeletionPolicy::Delete, Some(id)) => {
                if self.ctx.config.dry_run {
                    self.event(
                        EventType::Normal,
                        "WouldDelete",
                        format!("dry-run: would delete API key {id}"),
                    )
                    .await;
                } else {
                    self.ctx.write_permit().await;
                    match self.ctx.portkey.delete_api_key(&id).await {
                        Ok(()) => {}
                        Err(e) if e.is_gone() => {}
                        Err(e) => return Err(Error::portkey("delete the API key", e)),
                    }
                    self.event(
                        EventType::Normal,
                        "Deleted",
                        format!("deleted API key {id} (deletionPolicy Delete): requests with it now fail"),
                    )
                    .await;
                }
            }
            (KeyDeletionPolicy::Retain, Some(id)) => {
                if let Some(issue) = self.issue().cloned()
                    && let Some(secret) = self
                        .read_secret(&issue.secret_name)
                        .await?
                        .filter(|s| self.owns_secret(s))
                {
                    // Keep the Secret (and the key in it): only the owner reference goes, so
                    // garbage collection leaves it. A merge patch at the version just checked:
                    // an apply without the data would remove the key the Secret holds.
                    self.secrets()
                        .patch(
                            &issue.secret_name,
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({
                                "metadata": {
                                    "ownerReferences": null,
                                    "resourceVersion": secret.resource_version(),
                                }
                            })),
                        )
                        .await
                        .map_err(|e| Error::kube("release the key's Secret", e))?;
                }
                self.event(
                    EventType::Normal,
                    "Retained",
                    format!("left API key {id} and its limits in force (deletionPolicy Retain)"),
                )
                .await;
            }
            _ => {}
        }
        kube_ops::remove_finalizer(&self.api, &*self.obj)
            .await
            .map_err(|e| Error::kube("remove the finalizer", e))?;
        Ok(Action::await_change())
    }

    /// The key a deletion acts on, re-verified (status is not authority): the recorded issued
    /// key if it is still this resource's, else the one carrying its marker (a create cut short
    /// before its id was recorded); for an existing key, the one `spec.existing` names if this
    /// resource may manage it. Nothing when the resource's workspace cannot be resolved.
    async fn key_for_cleanup(&self) -> Result<Option<String>, Error> {
        let namespace = self.obj.namespace().unwrap_or_default();
        let Ok(workspace_id) =
            resolve_workspace(self.ctx, &namespace, self.obj.spec.workspace.as_ref()).await?
        else {
            if let Some(id) = &self.status.key_id {
                self.unverified_on_deletion("status.keyId", "API key", id)
                    .await;
            }
            return Ok(None);
        };
        if let Some(existing) = &self.obj.spec.existing {
            return Ok(self
                .existing_for_cleanup(existing, &workspace_id)
                .await?
                .map(|k| k.id));
        }
        if let Some(id) = self.status.key_id.clone() {
            match self.ctx.portkey.get_api_key(&id).await {
                Ok(key) => match self.verify_issued(&key, &workspace_id) {
                    Ok(()) => return Ok(Some(id)),
                    Err(refused) => self.cleanup_refused(&refused).await,
                },
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(Error::portkey("read the API key", e)),
            }
        }
        let keys = self.workspace_keys(&workspace_id).await?;
        Ok(ownership::owned(plan::candidates(&keys), &self.identity).map(|o| o.keep))
    }
}
