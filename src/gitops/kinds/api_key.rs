//! `ApiKeyBudget` in `plan` and `sync`: the declared limits of an existing API key (found by id
//! or by name, and refused when it belongs to another workspace, resource or installation);
//! a budget that issues its key is skipped (the key's Secret needs a cluster). The status row
//! shows the key's limits.

use futures::future::BoxFuture;

use super::{GitopsKind, Scope, Shown};
use crate::api::ApiKeyBudget;
use crate::api::conditions::reasons;
use crate::gitops::apply::Write;
use crate::gitops::plan::{ChangeKind, PlanItem};
use crate::plan::api_key::{self as keyplan, DesiredKey};
use crate::plan::marker::Identity;
use crate::plan::ownership::Refusal;
use crate::portkey::*;

/// The refusal of a budget that issues its key (no `spec.existing`): skipped, not blocked.
const ISSUED_KEY: &str = "IssuedKey";

impl GitopsKind for ApiKeyBudget {
    const KIND: &'static str = "ApiKeyBudget";

    fn workspace(&self) -> Option<&str> {
        self.spec.workspace.as_deref()
    }

    fn seed_key_name(&self) -> Option<&str> {
        self.spec.existing.as_ref()?.name.as_deref()
    }

    /// An update of the declared fields of the existing key, or skipped (issuing keys needs a
    /// cluster).
    async fn plan(&self, cx: &mut Scope<'_>) -> Result<Vec<PlanItem>, PortkeyError> {
        let mut item = PlanItem::of(cx.loaded, cx.reference);
        match existing_key(cx.client, self, cx.ws).await? {
            Ok(key) => {
                item.target = Some(key.id.clone());
                item.shown = Some(format!("API key {}", key.id));
                let desired = DesiredKey::from_spec(&self.spec);
                if let Some(update) = keyplan::plan(&desired, &key) {
                    item.action = ChangeKind::Update;
                    item.changes = update.changes;
                    item.exec = Some(std::sync::Arc::new(KeyWrite(key.id, update.body)));
                }
            }
            Err(refusal) if refusal.reason == ISSUED_KEY => {
                item.action = ChangeKind::Skipped;
                item.shown = Some("(issues a key: needs a cluster)".into());
                item.warnings.push(refusal.message);
            }
            Err(refusal) => item.block(format!("{}: {}", refusal.reason, refusal.message)),
        }
        Ok(vec![item])
    }

    async fn status(&self, cx: &mut Scope<'_>) -> Shown {
        match existing_key(cx.client, self, cx.ws).await {
            Ok(Ok(k)) => {
                let (budget, reset, rate) = keyplan::summaries(&k);
                let state = k
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into());
                Shown::limits([budget, rate], reset, state)
            }
            Ok(Err(refusal)) if refusal.reason == ISSUED_KEY => {
                Shown::absent("skipped (issued in a cluster)")
            }
            Ok(Err(refusal)) => Shown::absent(refusal.reason),
            Err(e) => Shown::absent(e.reason()),
        }
    }
}

/// The key an `ApiKeyBudget` names, in workspace `ws`: by id, or by a name that matches exactly
/// one key; refused when it belongs to another workspace or was issued for another resource or
/// installation (the controller's rule, `plan::ownership::check_adoption`). Issued keys (no
/// `spec.existing`) are refused with `IssuedKey`.
async fn existing_key(
    client: &PortkeyClient,
    o: &ApiKeyBudget,
    ws: &str,
) -> Result<Result<ApiKeyObject, Refusal>, PortkeyError> {
    let Some(existing) = &o.spec.existing else {
        return Ok(Err(Refusal {
            reason: ISSUED_KEY,
            message: "spec.issue: issuing a key needs a cluster to hold its Secret; apply this resource to a cluster that runs the operator (plan and sync skip it)".into(),
        }));
    };
    let key = match (&existing.id, &existing.name) {
        (Some(id), _) => match client.get_api_key(id).await {
            Ok(k) => k,
            Err(e) if e.is_gone() => {
                return Ok(Err(Refusal {
                    reason: reasons::KEY_NOT_FOUND,
                    message: format!("spec.existing.id: Portkey has no API key {id}"),
                }));
            }
            Err(e) => return Err(e),
        },
        (None, Some(name)) => {
            let keys = client.list_api_keys(Some(ws)).await?;
            match keyplan::find_by_name(&keys, name) {
                Ok(k) => k.clone(),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        (None, None) => {
            return Ok(Err(Refusal {
                reason: reasons::INVALID_SPEC,
                message: "spec.existing: set exactly one of id and name".into(),
            }));
        }
    };
    // Sync's identity never matches an issued key's marker, so a marked key of this
    // installation is refused as well: the resource that issued it manages it.
    let identity = Identity::new(super::short::<ApiKeyBudget>(), None, "");
    Ok(match keyplan::check_existing(&key, ws, &identity) {
        Ok(None) => Ok(key),
        Ok(Some(marked)) => Err(keyplan::issued_elsewhere(&marked, &key.id)),
        Err(refusal) => Err(refusal),
    })
}

/// The PUT of an API key's limits.
#[derive(Debug)]
struct KeyWrite(String, UpdateApiKey);

impl Write for KeyWrite {
    fn send<'a>(&'a self, client: &'a PortkeyClient) -> BoxFuture<'a, Result<(), PortkeyError>> {
        Box::pin(client.update_api_key(&self.0, &self.1))
    }
}
