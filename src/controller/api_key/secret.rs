//! The Secret of an issued key, and rotation.
//!
//! - The Secret is written without force and with a precondition: created when it did not
//!   exist (a Secret that appeared meanwhile is not overwritten: `SecretConflict`), else updated
//!   at the resourceVersion the ownership check read.
//! - A rotation is recorded in status before it is sent (`status.rotationInFlight`). A pass that
//!   finds the record rotates at most once more; after two attempts without a seen-through
//!   answer it stops (`RotationResultUnknown`) until a new rotate token. Portkey keeps one
//!   previous key per transition, so every extra rotation may end the key pods still use.
//!   The Secret written after a rotation carries when it was sent (`rotated-at`), so a record
//!   lost after the Secret was written is recognised and nothing is rotated again.
//! - A Secret whose key no longer matches Portkey's masked key (rotated outside the operator), or
//!   that no longer holds the key it was given, is repaired by one rotation, at most once per
//!   transition period (`status.secretRepairedAt`); a Secret missing altogether gets a key at once.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::super::conditions::reasons;
use super::super::policy::definitely_not_created;
use super::super::{Error, annotation_token as token, one_shot_due};
use super::Run;
use crate::api::*;
use crate::portkey::{ApiKeyObject, IssuedApiKey};

/// Attempts of one rotation whose answers were lost before the operator stops.
const MAX_ROTATION_ATTEMPTS: i32 = 2;

/// A time as the `rotated-at` annotation holds it: whole seconds, as a status `Time` keeps it.
fn stamp(at: &Time) -> String {
    jiff::Timestamp::from_second(at.0.as_second())
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn annotation(secret: &Secret, name: &str) -> Option<String> {
    secret.metadata.annotations.as_ref()?.get(name).cloned()
}

fn secret_holds(secret: &Secret, key_id: &str, data_key: &str) -> bool {
    annotation(secret, SECRET_KEY_ID_ANNOTATION).is_some_and(|id| id == key_id)
        && raw_key(secret, data_key).is_some()
}

/// The raw key the Secret holds (never logged).
fn raw_key(secret: &Secret, data_key: &str) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(data_key))
        .filter(|v| !v.0.is_empty())
        .and_then(|v| String::from_utf8(v.0.clone()).ok())
}

/// Why a pass rotates the key.
enum Why {
    /// The Secret does not hold this key's raw key.
    Missing,
    /// The rotate annotation asks for it (its token).
    Requested(String),
    /// A rotation's answer was lost (the attempt this one is, the annotation token).
    Lost(i32, Option<String>),
    /// The Secret's key no longer matches Portkey's (rotated outside the operator).
    OutOfBand,
}

impl Why {
    fn note(&self) -> &'static str {
        match self {
            Why::Missing => {
                "the Secret did not hold this key (it was missing, or the key was created by a pass that stopped before writing it)"
            }
            Why::Requested(_) => "rotation requested by annotation",
            Why::Lost(..) => "the answer to the previous rotation was lost",
            Why::OutOfBand => {
                "the key was rotated outside the operator: the Secret's key no longer matched Portkey's"
            }
        }
    }
}

impl Run<'_> {
    pub(super) fn secrets(&self) -> Api<Secret> {
        Api::namespaced(
            self.ctx.client.clone(),
            &self.obj.namespace().unwrap_or_default(),
        )
    }

    pub(super) async fn read_secret(&self, name: &str) -> Result<Option<Secret>, Error> {
        self.secrets()
            .get_opt(name)
            .await
            .map_err(|e| Error::kube("read the key's Secret", e))
    }

    /// The key id the Secret says it holds (issued keys).
    pub(super) async fn secret_key_id(&self) -> Result<Option<String>, Error> {
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
    pub(super) fn secret_is_ours(&mut self, issue: &IssueKey, secret: Option<&Secret>) -> bool {
        let Some(secret) = secret else {
            return true;
        };
        if self.owns_secret(secret) {
            return true;
        }
        self.secret_conflict(issue);
        false
    }

    /// True when the Secret is this resource's: owned by it, or labelled for it and controlled
    /// by nobody else.
    pub(super) fn owns_secret(&self, secret: &Secret) -> bool {
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
            .is_some_and(|n| *n == owner_label_value(&self.obj.name_any()));
        ours_by_owner || (ours_by_label && !controlled_by_other)
    }

    fn secret_conflict(&mut self, issue: &IssueKey) {
        self.terminal(
            reasons::SECRET_CONFLICT,
            &format!(
                "spec.issue.secretName: Secret {} exists and is not managed by this ApiKeyBudget; choose another name or delete that Secret (nothing was written)",
                issue.secret_name
            ),
        );
    }

    /// Asks the API server (a dry run: RBAC and admission, nothing stored) whether the Secret can
    /// be written, before a create or a rotate makes a raw key that would have nowhere to go.
    pub(super) async fn check_secret_writable(
        &self,
        issue: &IssueKey,
        key_id: &str,
        existing: Option<&Secret>,
    ) -> Result<(), Error> {
        self.put_secret(issue, key_id, None, existing, true)
            .await
            .map_err(|e| Error::kube("write the key's Secret (checked by a dry run before any key is made; issuing keys needs get, create, patch and update on Secrets: chart value rbac.issueApiKeys)", e))
    }

    /// Writes the Secret with the raw key, owned by this resource: a create when `existing` is
    /// `None` (never overwriting one that appeared since), else a merge patch at the
    /// resourceVersion that was read. A Secret that appeared in between stalls the resource
    /// (`SecretConflict`).
    pub(super) async fn write_secret(
        &mut self,
        issue: &IssueKey,
        key_id: &str,
        issued: &IssuedApiKey,
        existing: Option<&Secret>,
    ) -> Result<(), Error> {
        match self
            .put_secret(issue, key_id, Some(issued), existing, false)
            .await
        {
            Ok(()) => Ok(()),
            Err(kube::Error::Api(s)) if s.reason == "AlreadyExists" => {
                self.secret_conflict(issue);
                Err(Error::kube(
                    "write the key's Secret (a Secret of that name appeared after it was checked; it was not overwritten)",
                    kube::Error::Api(s),
                ))
            }
            Err(e) => Err(Error::kube("write the key's Secret", e)),
        }
    }

    async fn put_secret(
        &self,
        issue: &IssueKey,
        key_id: &str,
        issued: Option<&IssuedApiKey>,
        existing: Option<&Secret>,
        dry_run: bool,
    ) -> Result<(), kube::Error> {
        let rotated_at = self
            .status
            .rotation_in_flight
            .as_ref()
            .map(|f| &f.requested_at)
            .filter(|_| issued.is_some());
        let body = self.secret_body(issue, key_id, issued, rotated_at);
        match existing {
            None => {
                let params = PostParams {
                    dry_run,
                    field_manager: Some(super::SECRET_MANAGER.into()),
                };
                self.secrets().create(&params, &body).await.map(|_| ())
            }
            Some(found) => {
                let mut patch = serde_json::to_value(&body).expect("Secrets serialize");
                patch["metadata"]["resourceVersion"] = found.resource_version().into();
                let mut params = PatchParams {
                    field_manager: Some(super::SECRET_MANAGER.into()),
                    ..Default::default()
                };
                params.dry_run = dry_run;
                self.secrets()
                    .patch(&issue.secret_name, &params, &Patch::Merge(&patch))
                    .await
                    .map(|_| ())
            }
        }
    }

    fn secret_body(
        &self,
        issue: &IssueKey,
        key_id: &str,
        issued: Option<&IssuedApiKey>,
        rotated_at: Option<&Time>,
    ) -> Secret {
        let owner = OwnerReference {
            api_version: ApiKeyBudget::api_version(&()).into_owned(),
            kind: ApiKeyBudget::kind(&()).into_owned(),
            name: self.obj.name_any(),
            uid: self.obj.uid().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        Secret {
            metadata: ObjectMeta {
                name: Some(issue.secret_name.clone()),
                namespace: self.obj.namespace(),
                labels: Some(BTreeMap::from([
                    (
                        SECRET_OWNER_LABEL.to_owned(),
                        owner_label_value(&self.obj.name_any()),
                    ),
                    (
                        "app.kubernetes.io/managed-by".to_owned(),
                        "portkey-budget-operator".to_owned(),
                    ),
                ])),
                annotations: Some(
                    std::iter::once((SECRET_KEY_ID_ANNOTATION.to_owned(), key_id.to_owned()))
                        .chain(
                            rotated_at
                                .map(|at| (SECRET_ROTATED_AT_ANNOTATION.to_owned(), stamp(at))),
                        )
                        .collect(),
                ),
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
        }
    }

    /// Existing keys: the rotate annotation is recorded and refused (the key's holder would
    /// lose it).
    async fn refuse_rotation(&mut self, rotate: Option<String>) {
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
    }

    /// Whether this pass rotates the key, and why; `Err(action)` stops the pass (a rotation
    /// whose result is unknown twice over).
    fn rotation_needed(
        &mut self,
        key: &ApiKeyObject,
        issue: &IssueKey,
        secret: Option<&Secret>,
    ) -> Result<Option<Why>, Action> {
        let rotate = token(&self.obj, ROTATE_ANNOTATION);
        let due = one_shot_due(rotate.as_deref(), self.status.rotation.as_ref());
        if let Some(f) = self.status.rotation_in_flight.clone() {
            if secret.is_some_and(|s| {
                secret_holds(s, &key.id, issue.secret_data_key())
                    && annotation(s, SECRET_ROTATED_AT_ANNOTATION) == Some(stamp(&f.requested_at))
            }) {
                // The rotation went through and its key reached the Secret; only the record that
                // says so was lost (a crash before the status write).
                self.status.rotation_in_flight = None;
                if let Some(t) = f.token {
                    self.status.rotation = Some(OneShot {
                        token: t,
                        requested_at: f.requested_at,
                        completed_at: Some(Time(self.now)),
                    });
                }
                return Ok(None);
            }
            let asked_again = due && rotate.is_some() && rotate != f.token;
            if !asked_again {
                if f.attempts >= MAX_ROTATION_ATTEMPTS {
                    self.terminal(
                        reasons::ROTATION_RESULT_UNKNOWN,
                        &format!(
                            "{} rotations of API key {} got no answer (the last sent at {}); the Secret may hold a key that stops working when its transition period ends; no further rotation is made until annotation {ROTATE_ANNOTATION} gets a new value",
                            f.attempts,
                            key.id,
                            f.requested_at.0
                        ),
                    );
                    return Err(Action::requeue(self.ctx.refresh_interval(true)));
                }
                return Ok(Some(Why::Lost(f.attempts + 1, f.token)));
            }
        }
        let holds = secret.is_some_and(|s| secret_holds(s, &key.id, issue.secret_data_key()));
        let transition = std::time::Duration::from_millis(issue.transition_ms());
        let repaired_lately = self.status.secret_repaired_at.as_ref().is_some_and(|at| {
            std::time::Duration::try_from(self.now.duration_since(at.0))
                .is_ok_and(|since| since < transition)
        });
        if !holds {
            if secret.is_some() && repaired_lately {
                // Written by this operator within the transition period and changed since (its
                // data or key-id annotation): no rotation loop against whoever changes it.
                self.terminal(
                    reasons::SECRET_CONFLICT,
                    &format!(
                        "spec.issue.secretName: Secret {} no longer holds the key the operator wrote into it (its data or its {SECRET_KEY_ID_ANNOTATION} annotation was changed) and a key was already re-issued into it at {}; delete the Secret to have a new key issued",
                        issue.secret_name,
                        self.status.secret_repaired_at.as_ref().map(|t| t.0.to_string()).unwrap_or_default()
                    ),
                );
                return Err(Action::requeue(self.ctx.refresh_interval(true)));
            }
            return Ok(Some(Why::Missing));
        }
        if due && let Some(t) = rotate {
            return Ok(Some(Why::Requested(t)));
        }
        let raw = secret.and_then(|s| raw_key(s, issue.secret_data_key()));
        let stale = raw.is_some_and(|r| key.masked_key_matches(&r) == Some(false));
        if stale && repaired_lately {
            tracing::warn!(key = %key.id, "the Secret's key does not match Portkey's masked key, and it was repaired within the transition period; not rotating again");
        }
        Ok((stale && !repaired_lately).then_some(Why::OutOfBand))
    }

    /// Issued keys: the Secret must hold this key's working raw key, else the key is rotated
    /// (the raw key is never readable again) and the Secret written; the rotate annotation
    /// rotates once per token. `Some(action)` stops the pass.
    pub(super) async fn ensure_secret(
        &mut self,
        key: &ApiKeyObject,
    ) -> Result<Option<Action>, Error> {
        let Some(issue) = self.issue().cloned() else {
            self.refuse_rotation(token(&self.obj, ROTATE_ANNOTATION))
                .await;
            return Ok(None);
        };
        self.status.secret_name = Some(issue.secret_name.clone());
        let secret = self.read_secret(&issue.secret_name).await?;
        if !self.secret_is_ours(&issue, secret.as_ref()) {
            return Ok(Some(Action::requeue(self.ctx.refresh_interval(true))));
        }
        let why = match self.rotation_needed(key, &issue, secret.as_ref()) {
            Ok(Some(why)) => why,
            Ok(None) => return Ok(None),
            Err(stop) => return Ok(Some(stop)),
        };
        self.rotate(key, &issue, secret.as_ref(), why).await?;
        Ok(None)
    }

    /// One rotation: recorded in status first, then sent, then the Secret written; the record
    /// goes once the Secret holds the new key.
    async fn rotate(
        &mut self,
        key: &ApiKeyObject,
        issue: &IssueKey,
        secret: Option<&Secret>,
        why: Why,
    ) -> Result<(), Error> {
        self.check_secret_writable(issue, &key.id, secret).await?;
        let (attempts, asked_by) = match &why {
            Why::Lost(n, t) => (*n, t.clone()),
            Why::Requested(t) => (1, Some(t.clone())),
            Why::Missing | Why::OutOfBand => (1, None),
        };
        self.status.rotation_in_flight = Some(RotationInFlight {
            requested_at: Time(self.now),
            attempts,
            token: asked_by.clone(),
        });
        self.flush_status()
            .await
            .map_err(|e| Error::kube("record the rotation before it is sent", e))?;
        self.ctx.write_permit().await;
        let issued = match self
            .ctx
            .portkey
            .rotate_api_key(&key.id, issue.transition_ms())
            .await
        {
            Ok(issued) => issued,
            Err(e) => {
                if definitely_not_created(&e) {
                    // Refused before it was carried out: nothing was rotated.
                    self.status.rotation_in_flight = None;
                }
                return Err(Error::portkey("rotate the API key", e));
            }
        };
        self.write_secret(issue, &key.id, &issued, secret).await?;
        self.status.rotation_in_flight = None;
        if matches!(why, Why::OutOfBand) || (matches!(why, Why::Missing) && secret.is_some()) {
            self.status.secret_repaired_at = Some(Time(self.now));
        }
        if let Some(t) = asked_by {
            self.status.rotation = Some(OneShot {
                token: t,
                requested_at: Time(self.now),
                completed_at: Some(Time(self.now)),
            });
        }
        let type_ = if matches!(why, Why::OutOfBand | Why::Lost(..)) {
            EventType::Warning
        } else {
            EventType::Normal
        };
        self.event(
            type_,
            "Rotated",
            format!(
                "rotated API key {} and wrote the new key into Secret {} ({}); the previous key works for {} more seconds",
                key.id,
                issue.secret_name,
                why.note(),
                issue.transition_ms() / 1000
            ),
        )
        .await;
        Ok(())
    }
}
