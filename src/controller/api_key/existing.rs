//! Existing keys (`spec.existing`): which key, whether this resource may manage it, and
//! whether an older resource already does.
//!
//! A key is accepted when it is in the resource's allowed workspace, carries no marker of
//! another resource or installation, holds no scope beyond the operator's allow-list (unless
//! the platform team allows it) and is not the key the operator authenticates with. A key named
//! by `spec.existing.name` is pinned once resolved (`status.keyId`, re-verified by name every
//! pass): a rename, or a new key that took the old name, is reported and nothing is written.
//! Conflicts count only resources that would be accepted as the key's manager.

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::super::Error;
use super::super::conditions::reasons;
use super::super::engine::Pass;
use super::super::policy::{Step, resolve_workspace};
use super::SHORT;
use crate::api::*;
use crate::plan::api_key::{self as plan, DesiredKey};
use crate::plan::ownership::{self, Refusal};
use crate::plan::trust::{self, Basis, Expected, RemoteFacts, verify_recorded};
use crate::portkey::ApiKeyObject;

/// Why an existing key was not found: the reason and message of the terminal condition.
fn not_found(message: String) -> Refusal {
    Refusal {
        reason: reasons::KEY_NOT_FOUND,
        message,
    }
}

impl Pass<'_, ApiKeyBudget> {
    /// The key `spec.existing` names, or why there is none this resource may use.
    async fn find_existing(
        &self,
        existing: &ExistingKey,
        workspace_id: &str,
    ) -> Result<Result<ApiKeyObject, Refusal>, Error> {
        if let Some(id) = &existing.id {
            return match self.ctx.portkey.get_api_key(id).await {
                Ok(k) => Ok(Ok(k)),
                Err(e) if e.is_gone() => Ok(Err(not_found(format!(
                    "spec.existing.id: Portkey has no API key {id}"
                )))),
                Err(e) => Err(Error::portkey("read the API key", e)),
            };
        }
        let name = existing.name.as_deref().unwrap_or_default();
        // Pinned: the key the name resolved to, verified by name (status is not authority).
        if let Some(pinned) = self.status.key_id.clone() {
            let key = match self.ctx.portkey.get_api_key(&pinned).await {
                Ok(k) => k,
                Err(e) if e.is_gone() => {
                    return Ok(Err(not_found(format!(
                        "status.keyId: API key {pinned}, which spec.existing.name {name:?} resolved to, is gone; a key created since under that name is not taken over (remove status.keyId to resolve the name again); nothing was written"
                    ))));
                }
                Err(e) => return Err(Error::portkey("read the API key", e)),
            };
            let expected = Expected {
                field: "status.keyId",
                object: "Portkey API key",
                workspace_id,
                identity: &self.identity,
                basis: Basis::DeclaredName {
                    field: "spec.existing.name",
                    name,
                },
            };
            let facts = RemoteFacts {
                id: &key.id,
                workspace_id: key.workspace_id.as_deref(),
                name: key.name.as_deref(),
            };
            return Ok(verify_recorded(&expected, &facts).map(|()| key));
        }
        let keys = self.workspace_keys(workspace_id).await?;
        Ok(plan::find_by_name(&keys, name).cloned())
    }

    /// Whether this resource may manage `key` (see the module header); `Some` is the refusal.
    pub(super) async fn refuse_existing(
        &self,
        key: &ApiKeyObject,
        workspace_id: &str,
    ) -> Result<Option<Refusal>, Error> {
        let refusal = match plan::check_existing(key, workspace_id, &self.identity) {
            Ok(None) => None,
            Ok(Some(marked)) if self.marked_resource_exists(&marked).await? => {
                Some(plan::issued_elsewhere(&marked, &key.id))
            }
            Ok(Some(_)) => None,
            Err(refusal) => Some(refusal),
        };
        if refusal.is_some() {
            return Ok(refusal);
        }
        if self.is_operator_key(key) {
            return Ok(Some(trust::operator_key(&key.id)));
        }
        Ok(self.ctx.config.key_scopes.check_existing(key).err())
    }

    /// True when `key` is the one the operator authenticates with (its masked form matches).
    fn is_operator_key(&self, key: &ApiKeyObject) -> bool {
        self.ctx
            .portkey
            .with_api_key(|raw| key.masked_key_matches(raw))
            == Some(true)
    }

    /// An existing key: by id, or by name (pinned once resolved), accepted for this resource,
    /// not managed by an older `ApiKeyBudget`.
    pub(super) async fn observe_existing(
        &mut self,
        existing: &ExistingKey,
        workspace_id: &str,
        refresh: Action,
    ) -> Result<Step<ApiKeyObject>, Error> {
        let key = match self.find_existing(existing, workspace_id).await? {
            Ok(k) => k,
            Err(refusal) => {
                self.terminal(refusal.reason, &refusal.message);
                return Ok(Step::Stop(refresh));
            }
        };
        if let Some(refusal) = self.refuse_existing(&key, workspace_id).await? {
            self.terminal(refusal.reason, &refusal.message);
            return Ok(Step::Stop(refresh));
        }
        if let Some(other) = self.conflicting_owner(&key).await? {
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

    /// The key this resource would delete on deletion, re-verified (never taken from status as
    /// it is): `None` when there is none, or it may not be touched (a Warning Event says why).
    pub(super) async fn existing_for_cleanup(
        &self,
        existing: &ExistingKey,
        workspace_id: &str,
    ) -> Result<Option<ApiKeyObject>, Error> {
        let key = match self.find_existing(existing, workspace_id).await? {
            Ok(k) => k,
            Err(refusal) if refusal.reason == reasons::RECORDED_ID_MISMATCH => {
                self.cleanup_refused(&refusal).await;
                return Ok(None);
            }
            Err(_) => return Ok(None),
        };
        if let Some(refusal) = self.refuse_existing(&key, workspace_id).await? {
            self.cleanup_refused(&refusal).await;
            return Ok(None);
        }
        if self.conflicting_owner(&key).await?.is_some() {
            return Ok(None);
        }
        Ok(Some(key))
    }

    pub(super) async fn cleanup_refused(&self, refusal: &Refusal) {
        self.event(
            EventType::Warning,
            "RecordedIdRejected",
            format!("not deleted: {}", refusal.message),
        )
        .await;
    }

    /// Whether the resource whose marker an existing key carries still exists.
    async fn marked_resource_exists(&self, marked: &ownership::MarkedBy) -> Result<bool, Error> {
        if marked.kind != SHORT {
            return Ok(true);
        }
        let Some((ns, name)) = marked.owner.split_once('/') else {
            return Ok(true);
        };
        // A hashed name (a very long one) cannot be looked up: taken as existing.
        if name.starts_with('#') {
            return Ok(true);
        }
        let api: Api<ApiKeyBudget> = Api::namespaced(self.ctx.client.clone(), ns);
        Ok(api
            .get_opt(name)
            .await
            .map_err(|e| Error::kube("read the resource that issued the key", e))?
            .is_some())
    }

    /// Whether `other` would be accepted as the manager of `key`: its spec names the key (by id,
    /// or by name) and its namespace may use the key's workspace. Status plays no part: a
    /// resource refused for tenancy never blocks the key's real owner.
    async fn claims(&self, other: &ApiKeyBudget, key: &ApiKeyObject) -> Result<bool, Error> {
        let Some(existing) = &other.spec.existing else {
            return Ok(false);
        };
        let names_it = existing
            .id
            .as_deref()
            .is_some_and(|id| id.eq_ignore_ascii_case(&key.id))
            || (existing.name.is_some() && existing.name == key.name);
        if !names_it {
            return Ok(false);
        }
        if other.uid() == self.obj.uid() {
            return Ok(true);
        }
        let Some(key_ws) = key.workspace_id.as_deref() else {
            return Ok(false);
        };
        let namespace = other.namespace().unwrap_or_default();
        Ok(
            match resolve_workspace(self.ctx, &namespace, other.spec.workspace.as_ref()).await? {
                Ok(ws) => ws.eq_ignore_ascii_case(key_ws),
                Err(_) => false,
            },
        )
    }

    /// The oldest `ApiKeyBudget` accepted as manager of the existing key, if it is not this one.
    pub(super) async fn conflicting_owner(
        &self,
        key: &ApiKeyObject,
    ) -> Result<Option<String>, Error> {
        let all = self
            .ctx
            .api_key_budgets()
            .await
            .map_err(|e| Error::kube("read the other ApiKeyBudgets", e))?;
        let mut same: Vec<&ApiKeyBudget> = Vec::new();
        for other in &all {
            if self.claims(other, key).await? {
                same.push(other);
            }
        }
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
}
