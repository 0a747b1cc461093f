//! Reconcile and cleanup of one `ApiKeyBudget`.
//!
//! Steps: validate → resolve (workspace) → observe (the key: by id or name for an existing key;
//! by status or by marker for an issued one, created if there is none) → secret (issued keys:
//! the Secret holds a working raw key, else the key is rotated to get one) → one-shots (rotation
//! and usage-reset annotations) → plan and execute (the declared fields) → report.
//!
//! The raw key exists only in the answer to a create or a rotate, in memory, and in the Secret.
//! A key created whose Secret could not be written is found again by its marker and rotated: a
//! second key is never created for the same resource.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use rust_decimal::prelude::ToPrimitive;

use super::conditions::{self, Outcome, TRUE, reasons};
use super::kube_ops;
use super::policy::{Step, is_paused, resolve_workspace};
use super::{Context, Error, annotation_token as token, one_shot_due};
use crate::api::validate::summarize;
use crate::api::*;
use crate::metrics::BudgetFigures;
use crate::plan::FieldChange;
use crate::plan::api_key::{self as plan, DesiredKey};
use crate::plan::marker::Identity;
use crate::plan::ownership;
use crate::portkey::{ApiKeyObject, ApiKeyStatus, ApiKeyType, IssuedApiKey, UpdateApiKey};

/// Field manager of the Secrets the operator writes.
const SECRET_MANAGER: &str = "portkey-budget-operator";
/// Short kind in markers.
pub const SHORT: &str = "akb";

struct Run<'a> {
    ctx: &'a Context,
    api: Api<ApiKeyBudget>,
    obj: ApiKeyBudget,
    key: String,
    status: ApiKeyBudgetStatus,
    identity: Identity,
    now: Timestamp,
    outcome: Option<Outcome>,
}

/// Reconciles one `ApiKeyBudget` (or cleans up when it is being deleted).
pub async fn reconcile(obj: &ApiKeyBudget, ctx: &Context) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let mut run = Run {
        ctx,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        key: super::key_of(obj),
        status: obj.status.clone().unwrap_or_default(),
        identity: ctx
            .config
            .identity(SHORT, Some(&namespace), &obj.name_any()),
        obj: obj.clone(),
        now: Timestamp::now(),
        outcome: None,
    };
    let kind = ApiKeyBudget::kind(&());
    let name = obj.name_any();
    if obj.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget(&kind, &namespace, &name);
        ctx.forget_sync(&run.key);
        return run.cleanup().await;
    }
    let result = run.apply().await;
    if let Err(e) = &result
        && !e.is_conflict()
    {
        run.conclude(e.outcome());
    }
    let flushed = run.finish().await;
    if let Some(outcome) = &run.outcome {
        ctx.metrics
            .outcome(&kind, &namespace, &name, outcome, &run.status.conditions);
    }
    match (result, flushed) {
        (Ok(action), Ok(())) => Ok(action),
        (Ok(_), Err(e)) => Err(Error::kube("write the status", e)),
        (Err(e), flushed) => {
            if let Err(status_err) = flushed {
                tracing::warn!(error = %status_err, "could not record the failure in status");
            }
            Err(e)
        }
    }
}

fn secret_holds(secret: &Secret, key_id: &str, data_key: &str) -> bool {
    let annotated = secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SECRET_KEY_ID_ANNOTATION))
        .is_some_and(|id| id == key_id);
    let filled = secret
        .data
        .as_ref()
        .and_then(|d| d.get(data_key))
        .is_some_and(|v| !v.0.is_empty());
    annotated && filled
}

impl Run<'_> {
    fn generation(&self) -> Option<i64> {
        self.obj.metadata.generation
    }

    fn issue(&self) -> Option<&IssueKey> {
        self.obj.spec.issue.as_ref()
    }

    fn conclude(&mut self, outcome: Outcome) {
        let generation = self.generation();
        conditions::apply(&mut self.status.conditions, &outcome, generation, self.now);
        self.status.observed_generation = generation;
        self.outcome = Some(outcome);
    }

    fn terminal(&mut self, reason: &'static str, message: &str) {
        self.conclude(Outcome::Stalled {
            reason,
            message: message.to_owned(),
        });
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx.event(&self.obj, type_, reason, note).await;
    }

    fn pending_since(&self) -> Option<Timestamp> {
        super::pending_create(&self.obj, self.status.create_confirmed.as_deref())
    }

    /// Portkey shows the key the pending create made: the status write ending this pass says so.
    fn confirm_create(&mut self) {
        if self.pending_since().is_some() {
            self.status.create_confirmed = super::create_stamp(&self.obj);
        }
    }

    /// Writes the status if it changed; on a 409 re-reads and writes again (a key id just
    /// recorded is never lost).
    async fn flush_status(&mut self) -> Result<(), kube::Error> {
        if self.obj.status.as_ref() == Some(&self.status) {
            return Ok(());
        }
        match kube_ops::apply_status(&self.api, &self.obj, &self.status).await {
            Ok(obj) => self.obj = obj,
            Err(e) if kube_ops::is_conflict(&e) => {
                self.obj = self.api.get(&self.obj.name_any()).await?;
                self.obj = kube_ops::apply_status(&self.api, &self.obj, &self.status).await?;
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// The write that ends a pass: the status (with the create it confirms).
    async fn finish(&mut self) -> Result<(), kube::Error> {
        self.flush_status().await
    }

    fn fresh(&self) -> Option<Action> {
        let rotate = token(&self.obj, ROTATE_ANNOTATION);
        let reset = token(&self.obj, RESET_USAGE_ANNOTATION);
        super::gate(
            self.ctx,
            super::Freshness {
                generation: self.generation(),
                observed_generation: self.status.observed_generation,
                conditions: &self.status.conditions,
                last_sync: self.ctx.last_sync(&self.key),
                pending: self.pending_since().is_some()
                    || one_shot_due(rotate.as_deref(), self.status.rotation.as_ref())
                    || one_shot_due(reset.as_deref(), self.status.usage_reset.as_ref()),
                paused: is_paused(&self.obj),
            },
            self.now,
            self.ctx.interval(true),
        )
    }

    async fn apply(&mut self) -> Result<Action, Error> {
        if let Some(action) = self.fresh() {
            return Ok(action);
        }
        let refresh = Action::requeue(self.ctx.refresh_interval(true));
        // validate
        let errors = self.ctx.admission_errors(SHORT, &self.obj);
        if !errors.is_empty() {
            self.terminal(reasons::INVALID_SPEC, &summarize(&errors));
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
        if !kube_ops::has_finalizer(&self.obj) {
            self.obj = kube_ops::add_finalizer(&self.api, &self.obj)
                .await
                .map_err(|e| Error::kube("add the finalizer", e))?;
        }
        // resolve
        let workspace_id = match self.resolve(refresh.clone()).await? {
            Step::Go(id) => id,
            Step::Stop(action) => return Ok(action),
        };
        self.status.workspace_id = Some(workspace_id.clone());
        let paused = is_paused(&self.obj);
        self.announce_pause(paused).await;
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

    async fn announce_pause(&self, paused: bool) {
        if let Some((reason, note)) =
            conditions::pause_transition(&self.status.conditions, paused, "the key is")
        {
            self.event(EventType::Normal, reason, note).await;
        }
    }

    /// Step 2: the workspace UUID the key must belong to.
    async fn resolve(&mut self, refresh: Action) -> Result<Step<String>, Error> {
        let namespace = self.obj.namespace().unwrap_or_default();
        let spec_workspace = self.obj.spec.workspace.clone();
        match resolve_workspace(self.ctx, &namespace, spec_workspace.as_ref()).await? {
            Ok(id) => Ok(Step::Go(id)),
            Err((reason, message, action)) => {
                self.terminal(reason, &message);
                Ok(Step::Stop(action.unwrap_or(refresh)))
            }
        }
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
                Ok(key) => return Ok(Step::Go(key)),
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
            self.conclude(Outcome::Held {
                ready: false,
                ready_reason: reasons::DRY_RUN,
                ready_message: "dry-run: the key would be issued".into(),
                synced: TRUE,
                synced_reason: reasons::DRY_RUN,
                synced_message: "dry-run mode: read Portkey, wrote nothing (see the Would* Events)"
                    .into(),
            });
            return Ok(Step::Stop(refresh));
        }
        self.create(workspace_id).await
    }

    /// An existing key: by id or by name, in this workspace, not issued for another resource,
    /// not managed by an older `ApiKeyBudget`.
    async fn observe_existing(
        &mut self,
        existing: &ExistingKey,
        workspace_id: &str,
        refresh: Action,
    ) -> Result<Step<ApiKeyObject>, Error> {
        let key = match (&existing.id, &existing.name) {
            (Some(id), _) => match self.ctx.portkey.get_api_key(id).await {
                Ok(k) => k,
                Err(e) if e.is_gone() => {
                    self.terminal(
                        reasons::KEY_NOT_FOUND,
                        &format!("spec.existing.id: Portkey has no API key {id}"),
                    );
                    return Ok(Step::Stop(refresh));
                }
                Err(e) => return Err(Error::portkey("read the API key", e)),
            },
            (None, Some(name)) => {
                let keys = self.workspace_keys(workspace_id).await?;
                match plan::find_by_name(&keys, name) {
                    Ok(k) => k.clone(),
                    Err(refusal) => {
                        let reason = if refusal.reason == reasons::AMBIGUOUS_KEY_NAME {
                            reasons::AMBIGUOUS_KEY_NAME
                        } else {
                            reasons::KEY_NOT_FOUND
                        };
                        self.terminal(reason, &refusal.message);
                        return Ok(Step::Stop(refresh));
                    }
                }
            }
            (None, None) => unreachable!("admission requires id or name"),
        };
        let refusal = match plan::check_existing(&key, workspace_id, &self.identity) {
            Ok(None) => None,
            Ok(Some(marked)) if self.marked_resource_exists(&marked).await? => {
                Some(plan::issued_elsewhere(&marked, &key.id))
            }
            Ok(Some(_)) => None,
            Err(refusal) => Some(refusal),
        };
        if let Some(refusal) = refusal {
            let reason = match refusal.reason {
                "WorkspaceNotAllowed" => reasons::WORKSPACE_NOT_ALLOWED,
                "OwnedByAnotherInstallation" => reasons::OWNED_BY_ANOTHER_INSTALLATION,
                _ => reasons::ADOPT_TARGET_OWNED,
            };
            self.terminal(reason, &refusal.message);
            return Ok(Step::Stop(refresh));
        }
        if let Some(other) = self.conflicting_owner(&key.id).await? {
            self.terminal(
                reasons::CONFLICT,
                &format!("API key {} is already managed by the older ApiKeyBudget {other}; this one makes no changes", key.id),
            );
            return Ok(Step::Stop(refresh));
        }
        if self.status.key_id.as_deref() != Some(key.id.as_str()) {
            self.status.key_id = Some(key.id.clone());
            self.event(
                EventType::Normal,
                "Adopted",
                format!(
                    "manages {} of API key {} ({})",
                    DesiredKey::from_spec(&self.obj.spec).managed_fields(),
                    key.id,
                    key.name.as_deref().unwrap_or_default()
                ),
            )
            .await;
        }
        Ok(Step::Go(key))
    }

    /// Whether the resource whose marker an existing key carries still exists.
    async fn marked_resource_exists(&self, marked: &ownership::MarkedBy) -> Result<bool, Error> {
        if marked.kind != SHORT {
            return Ok(true);
        }
        let Some((ns, name)) = marked.owner.split_once('/') else {
            return Ok(true);
        };
        let api: Api<ApiKeyBudget> = Api::namespaced(self.ctx.client.clone(), ns);
        Ok(api
            .get_opt(name)
            .await
            .map_err(|e| Error::kube("read the resource that issued the key", e))?
            .is_some())
    }

    /// The oldest other `ApiKeyBudget` managing the same existing key, if it is not this one.
    async fn conflicting_owner(&self, key_id: &str) -> Result<Option<String>, Error> {
        let all = self
            .ctx
            .api_key_budgets()
            .await
            .map_err(|e| Error::kube("read the other ApiKeyBudgets", e))?;
        let mut same: Vec<&ApiKeyBudget> = all
            .iter()
            .filter(|o| {
                o.spec.existing.as_ref().and_then(|e| e.id.as_deref()) == Some(key_id)
                    || o.status.as_ref().and_then(|s| s.key_id.as_deref()) == Some(key_id)
            })
            .filter(|o| o.spec.existing.is_some())
            .collect();
        same.sort_by_key(|o| {
            (
                o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                o.namespace(),
                o.name_any(),
            )
        });
        Ok(same
            .first()
            .filter(|o| o.uid() != self.obj.uid())
            .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any())))
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
        self.check_secret_writable(&issue, "pending").await?;
        let stamp = self.now.to_string();
        let portkey = &self.ctx.portkey;
        let issued = super::bracketed_create(
            self.ctx,
            &self.api,
            &mut self.obj,
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
        self.event(
            EventType::Normal,
            "Issued",
            format!("issued API key {id} in workspace {workspace_id}"),
        )
        .await;
        // The raw key goes into the Secret now; if this fails the key is found again by its
        // marker (or its recorded id) and rotated for a fresh raw key.
        self.write_secret(&issue, &id, &issued).await?;
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

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(
            self.ctx.client.clone(),
            &self.obj.namespace().unwrap_or_default(),
        )
    }

    async fn read_secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        self.secrets()
            .get_opt(name)
            .await
            .map_err(|e| Error::kube("read the key's Secret", e))
    }

    /// The key id the Secret says it holds (issued keys).
    async fn secret_key_id(&self) -> Result<Option<String>, Error> {
        let Some(issue) = self.issue() else {
            return Ok(None);
        };
        Ok(self
            .read_secret(&issue.secret_name)
            .await?
            .and_then(|s| s.metadata.annotations)
            .and_then(|a| a.get(SECRET_KEY_ID_ANNOTATION).cloned()))
    }

    /// False (and Stalled SecretConflict) when the Secret (as just read) exists and belongs to
    /// someone else.
    fn secret_is_ours(&mut self, issue: &IssueKey, secret: Option<&Secret>) -> bool {
        let Some(secret) = secret else {
            return true;
        };
        let uid = self.obj.uid();
        let owners = secret.metadata.owner_references.clone().unwrap_or_default();
        let ours_by_owner = owners.iter().any(|o| Some(&o.uid) == uid.as_ref());
        let controlled_by_other = owners
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) != uid.as_ref());
        let ours_by_label = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SECRET_OWNER_LABEL))
            .is_some_and(|n| *n == self.obj.name_any());
        if ours_by_owner || (ours_by_label && !controlled_by_other) {
            return true;
        }
        self.terminal(
            reasons::SECRET_CONFLICT,
            &format!(
                "spec.issue.secretName: Secret {} exists and is not managed by this ApiKeyBudget; choose another name or delete that Secret (nothing was written)",
                issue.secret_name
            ),
        );
        false
    }

    /// Asks the API server (a dry-run apply: RBAC and admission, nothing stored) whether the
    /// Secret can be written, before a create or a rotate makes a raw key that would have
    /// nowhere to go.
    async fn check_secret_writable(&self, issue: &IssueKey, key_id: &str) -> Result<(), Error> {
        let body = self.secret_body(issue, key_id, None);
        self.secrets()
            .patch(
                &issue.secret_name,
                &PatchParams::apply(SECRET_MANAGER).force().dry_run(),
                &Patch::Apply(&body),
            )
            .await
            .map_err(|e| Error::kube("write the key's Secret (checked by a dry run before any key is made; issuing keys needs get, create and patch on Secrets: chart value rbac.issueApiKeys)", e))?;
        Ok(())
    }

    /// Writes (server-side apply) the Secret with the raw key, owned by this resource.
    async fn write_secret(
        &self,
        issue: &IssueKey,
        key_id: &str,
        issued: &IssuedApiKey,
    ) -> Result<(), Error> {
        let secret = self.secret_body(issue, key_id, Some(issued));
        self.secrets()
            .patch(
                &issue.secret_name,
                &PatchParams::apply(SECRET_MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await
            .map_err(|e| Error::kube("write the key's Secret", e))?;
        Ok(())
    }

    fn secret_body(
        &self,
        issue: &IssueKey,
        key_id: &str,
        issued: Option<&IssuedApiKey>,
    ) -> serde_json::Value {
        let owner = OwnerReference {
            api_version: ApiKeyBudget::api_version(&()).into_owned(),
            kind: ApiKeyBudget::kind(&()).into_owned(),
            name: self.obj.name_any(),
            uid: self.obj.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(issue.secret_name.clone()),
                namespace: self.obj.namespace(),
                labels: Some(BTreeMap::from([
                    (SECRET_OWNER_LABEL.to_owned(), self.obj.name_any()),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "portkey-budget-operator".to_owned(),
                    ),
                ])),
                annotations: Some(BTreeMap::from([(
                    SECRET_KEY_ID_ANNOTATION.to_owned(),
                    key_id.to_owned(),
                )])),
                owner_references: Some(vec![owner]),
                ..Default::default()
            },
            type_: Some("Opaque".into()),
            data: issued.map(|i| {
                BTreeMap::from([(
                    issue.secret_data_key().to_owned(),
                    ByteString(i.key.expose().as_bytes().to_vec()),
                )])
            }),
            ..Default::default()
        };
        let mut value = serde_json::to_value(&secret).expect("Secrets serialize");
        value["apiVersion"] = "v1".into();
        value["kind"] = "Secret".into();
        value
    }

    /// Issued keys: the Secret must hold the raw key of this key, else the key is rotated (the
    /// raw key is never readable again) and the Secret written; the rotate annotation rotates
    /// once per token. `Some(action)` stops the pass.
    async fn ensure_secret(&mut self, key: &ApiKeyObject) -> Result<Option<Action>, Error> {
        let rotate = token(&self.obj, ROTATE_ANNOTATION);
        let Some(issue) = self.issue().cloned() else {
            if let Some(t) = rotate
                && self.status.rotation.as_ref().map(|r| &r.token) != Some(&t)
            {
                self.event(
                    EventType::Warning,
                    "RotationIgnored",
                    format!("{ROTATE_ANNOTATION}: only keys this resource issued are rotated (the holder of an existing key would lose it); rotate it in Portkey"),
                )
                .await;
                self.status.rotation = Some(OneShot {
                    token: t,
                    requested_at: Time(self.now),
                    completed_at: None,
                });
            }
            return Ok(None);
        };
        self.status.secret_name = Some(issue.secret_name.clone());
        let secret = self.read_secret(&issue.secret_name).await?;
        if !self.secret_is_ours(&issue, secret.as_ref()) {
            return Ok(Some(Action::requeue(self.ctx.refresh_interval(true))));
        }
        let holds = secret
            .as_ref()
            .is_some_and(|s| secret_holds(s, &key.id, issue.secret_data_key()));
        let due = one_shot_due(rotate.as_deref(), self.status.rotation.as_ref());
        if holds && !due {
            return Ok(None);
        }
        let why = if !holds {
            "the Secret did not hold this key (it was missing, or the key was created by a pass that stopped before writing it)"
        } else {
            "rotation requested by annotation"
        };
        self.check_secret_writable(&issue, &key.id).await?;
        self.ctx.write_permit().await;
        let issued = self
            .ctx
            .portkey
            .rotate_api_key(&key.id, issue.transition_ms())
            .await
            .map_err(|e| Error::portkey("rotate the API key", e))?;
        self.write_secret(&issue, &key.id, &issued).await?;
        if due && let Some(t) = rotate {
            self.status.rotation = Some(OneShot {
                token: t,
                requested_at: Time(self.now),
                completed_at: Some(Time(self.now)),
            });
        }
        self.event(
            EventType::Normal,
            "Rotated",
            format!(
                "rotated API key {} and wrote the new key into Secret {} ({why}); the previous key works for {} more seconds",
                key.id,
                issue.secret_name,
                issue.transition_ms() / 1000
            ),
        )
        .await;
        Ok(None)
    }

    /// The usage-reset annotation: `reset_usage: true` once per token. The request is recorded
    /// in status before the PUT; a pass that finds it recorded but not confirmed asks Portkey
    /// (`last_reset_at` at or after the request) instead of resetting twice.
    async fn usage_reset(&mut self, key: &ApiKeyObject) -> Result<bool, Error> {
        let Some(t) = token(&self.obj, RESET_USAGE_ANNOTATION) else {
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
        self.flush_status()
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
        let spec_changed = self.status.observed_generation != self.generation();
        let (reason, what) = if spec_changed {
            ("Updated", "updated the key's limits")
        } else {
            (
                "DriftCorrected",
                "the key's limits were changed outside the operator; reverted",
            )
        };
        self.event(
            EventType::Normal,
            reason,
            format!("{what}: {}", FieldChange::summary(&update.changes)),
        )
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
                self.conclude(Outcome::Held {
                    ready: false,
                    ready_reason: reasons::DRY_RUN,
                    ready_message: note,
                    synced: TRUE,
                    synced_reason: reasons::DRY_RUN,
                    synced_message:
                        "dry-run mode: read Portkey, wrote nothing (see the Would* Events)".into(),
                });
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

    async fn cleanup(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&self.obj) {
            return Ok(Action::await_change());
        }
        if is_paused(&self.obj) {
            self.announce_pause(true).await;
            let ready = conditions::is_true(&self.status.conditions, conditions::READY);
            self.conclude(Outcome::deletion_paused(ready));
            self.flush_status()
                .await
                .map_err(|e| Error::kube("write the status", e))?;
            return Ok(Action::requeue(self.ctx.refresh_interval(true)));
        }
        let policy = self.obj.spec.effective_deletion_policy();
        let key_id = match (&self.status.key_id, self.issue()) {
            (Some(id), _) => Some(id.clone()),
            // A create cut short before its id was recorded: find the key by marker.
            (None, Some(_)) => self.find_issued_for_cleanup().await?,
            (None, None) => None,
        };
        let owner_conflict = match (&key_id, &self.obj.spec.existing) {
            (Some(id), Some(_)) => self.conflicting_owner(id).await?.is_some(),
            _ => false,
        };
        match (policy, key_id) {
            (KeyDeletionPolicy::Delete, Some(id)) if !owner_conflict => {
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
                    && self.read_secret(&issue.secret_name).await?.is_some()
                {
                    // Keep the Secret (and the key in it): only the owner reference goes, so
                    // garbage collection leaves it. A merge patch: an apply without the data
                    // would remove the key the Secret holds.
                    self.secrets()
                        .patch(
                            &issue.secret_name,
                            &PatchParams::default(),
                            &Patch::Merge(serde_json::json!({
                                "metadata": {"ownerReferences": null}
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
        kube_ops::remove_finalizer(&self.api, &self.obj)
            .await
            .map_err(|e| Error::kube("remove the finalizer", e))?;
        Ok(Action::await_change())
    }

    async fn find_issued_for_cleanup(&self) -> Result<Option<String>, Error> {
        let namespace = self.obj.namespace().unwrap_or_default();
        let workspace_id = match resolve_workspace(
            self.ctx,
            &namespace,
            self.obj.spec.workspace.as_ref(),
        )
        .await?
        {
            Ok(id) => id,
            Err(_) => return Ok(None),
        };
        let keys = self.workspace_keys(&workspace_id).await?;
        Ok(ownership::owned(plan::candidates(&keys), &self.identity).map(|o| o.keep))
    }
}
