//! `WorkspaceBudget` in `plan` and `sync`: the limits of its workspace itself (no policy of
//! its own); of two budgets for one workspace only the one the shared conflict rule picks
//! writes. The status row shows the workspace's limits.

use futures::future::BoxFuture;

use super::{GitopsKind, Scope, Shown};
use crate::api::WorkspaceBudget;
use crate::api::conditions::reasons;
use crate::gitops::apply::Write;
use crate::gitops::plan::{ChangeKind, PlanItem};
use crate::plan::ownership::{self, Claimant};
use crate::plan::workspace::{self as wsplan, DesiredWorkspaceLimits};
use crate::portkey::*;

impl GitopsKind for WorkspaceBudget {
    const KIND: &'static str = "WorkspaceBudget";

    fn workspace(&self) -> Option<&str> {
        Some(&self.spec.workspace)
    }

    fn claims_workspace(&self) -> bool {
        true
    }

    async fn plan(&self, cx: &mut Scope<'_>) -> Result<Vec<PlanItem>, PortkeyError> {
        let mut item = PlanItem::of(cx.loaded, cx.reference);
        item.target = Some(cx.ws.to_owned());
        item.shown = Some(format!("workspace {}", cx.reference));
        let qualified = cx.loaded.qualified();
        match owner(cx) {
            Some(owner) if owner != qualified => {
                item.block(format!(
                    "{}: workspace {} is managed by WorkspaceBudget {owner}; this one makes no changes",
                    reasons::CONFLICT,
                    cx.reference
                ));
            }
            _ => {
                let current = cx.client.get_workspace(cx.ws).await?;
                let desired = DesiredWorkspaceLimits::from_spec(&self.spec);
                if let Some(update) = wsplan::plan(&desired, &current) {
                    item.action = ChangeKind::Update;
                    item.changes = update.changes;
                    item.exec = Some(std::sync::Arc::new(WorkspaceWrite(
                        cx.ws.to_owned(),
                        update.body,
                    )));
                }
            }
        }
        Ok(vec![item])
    }

    async fn status(&self, cx: &mut Scope<'_>) -> Shown {
        match cx.client.get_workspace(cx.ws).await {
            Ok(w) => {
                let (budget, reset, rate) = wsplan::summaries(&w);
                Shown::limits([budget, rate], reset, "active".into())
            }
            Err(e) => Shown::absent(e.reason()),
        }
    }
}

/// The budget that writes to the workspace of `cx`: the controller's rule (the oldest, then by
/// name; manifests have no age).
fn owner(cx: &Scope<'_>) -> Option<String> {
    let claimants: Vec<Claimant<'_>> = cx
        .declared
        .claims
        .get(cx.ws)
        .into_iter()
        .flatten()
        .map(|name| Claimant {
            name,
            created_at: None,
        })
        .collect();
    ownership::workspace_owner(&claimants).map(str::to_owned)
}

/// The PUT of a workspace's limits.
#[derive(Debug)]
struct WorkspaceWrite(String, UpdateWorkspace);

impl Write for WorkspaceWrite {
    fn send<'a>(&'a self, client: &'a PortkeyClient) -> BoxFuture<'a, Result<(), PortkeyError>> {
        Box::pin(client.update_workspace(&self.0, &self.1))
    }
}
