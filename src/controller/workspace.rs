//! Reconcile and cleanup of one `WorkspaceBudget` (cluster-scoped).
//!
//! A kind of the reconcile engine (`super::engine`): the engine runs the pass (conditions,
//! Events, pause, status); this module is the workspace's gate, apply and cleanup, over the
//! pure planner (`plan::workspace`).

use std::borrow::Cow;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::conditions::{Outcome, reasons};
use super::engine::Pass;
use super::kube_ops;
use super::policy::is_paused;
use super::{Context, Error};
use crate::api::validate::summarize;
use crate::api::*;
use crate::plan::FieldChange;
use crate::plan::ownership::{self, Claimant};
use crate::plan::workspace::{self as plan, DesiredWorkspaceLimits};
use crate::portkey::Workspace;

impl super::engine::Kind for WorkspaceBudget {
    type Status = WorkspaceBudgetStatus;
    const USAGE: bool = true;

    fn api(client: kube::Client, _: &Self) -> Api<Self> {
        Api::all(client)
    }
    super::engine::kind_status!(WorkspaceBudgetStatus);
}

impl super::engine::Reconciler for WorkspaceBudget {
    fn gate(obj: &Self, ctx: &Context, key: &str, now: Timestamp) -> Option<Action> {
        let unset = WorkspaceBudgetStatus::default();
        let status = obj.status.as_ref().unwrap_or(&unset);
        super::gate(
            ctx,
            super::Freshness {
                generation: obj.metadata.generation,
                observed_generation: status.observed_generation,
                conditions: &status.conditions,
                last_sync: ctx.last_sync(key),
                pending: false,
                paused: is_paused(obj),
            },
            now,
            ctx.interval(true),
        )
    }
    fn apply(
        pass: &mut Pass<'_, Self>,
    ) -> impl std::future::Future<Output = Result<Action, Error>> + Send {
        pass.apply_workspace()
    }
    fn cleanup(
        pass: &mut Pass<'_, Self>,
    ) -> impl std::future::Future<Output = Result<Action, Error>> + Send {
        pass.cleanup_workspace()
    }
}

/// Reconciles one `WorkspaceBudget` (or cleans up when it is being deleted).
pub async fn reconcile(obj: &WorkspaceBudget, ctx: &Context) -> Result<Action, Error> {
    super::engine::reconcile(obj, ctx).await
}

/// Which resource owns a workspace among those naming it, by the rule the CLI shares
/// (`plan::ownership::workspace_owner`: the oldest, then by name). Resources being deleted
/// still count, so a successor never writes before its predecessor cleared.
fn owner(candidates: &[WorkspaceBudget]) -> Option<&WorkspaceBudget> {
    let names: Vec<String> = candidates.iter().map(|c| c.name_any()).collect();
    let claimants: Vec<Claimant<'_>> = candidates
        .iter()
        .zip(&names)
        .map(|(c, name)| Claimant {
            name,
            created_at: c.metadata.creation_timestamp.as_ref().map(|t| t.0),
        })
        .collect();
    let winner = ownership::workspace_owner(&claimants)?;
    candidates.iter().find(|c| c.name_any() == winner)
}

impl Pass<'_, WorkspaceBudget> {
    /// Another, older `WorkspaceBudget` already manages this workspace: one whose spec names
    /// it, or names the same workspace another way (slug vs UUID, compared after resolving each
    /// spec through the workspace cache; status plays no part).
    async fn conflicting_owner(&self, workspace_id: Option<&str>) -> Result<Option<String>, Error> {
        let ours = self.obj.spec.workspace.to_ascii_lowercase();
        let all = self
            .ctx
            .workspace_budgets()
            .await
            .map_err(|e| Error::kube("read the other WorkspaceBudgets", e))?;
        let mut same: Vec<WorkspaceBudget> = Vec::new();
        for w in all {
            let theirs = w.spec.workspace.to_ascii_lowercase();
            let same_workspace = theirs == ours
                || match workspace_id {
                    Some(id) => self
                        .ctx
                        .workspaces
                        .resolve(&self.ctx.portkey, &theirs)
                        .await
                        .is_ok_and(|their_id| their_id.eq_ignore_ascii_case(id)),
                    None => false,
                };
            if same_workspace {
                same.push(w);
            }
        }
        Ok(owner(&same)
            .filter(|o| o.uid() != self.obj.uid())
            .map(|o| o.name_any()))
    }

    async fn apply_workspace(&mut self) -> Result<Action, Error> {
        let paused = self.paused();
        let refresh = Action::requeue(self.ctx.refresh_interval(true));
        // validate
        let errors = self
            .ctx
            .admission_errors(WorkspaceBudget::SHORT, &*self.obj);
        if !errors.is_empty() {
            self.terminal(reasons::INVALID_SPEC, &summarize(&errors));
            return Ok(Action::await_change());
        }
        if !kube_ops::has_finalizer(&*self.obj) {
            self.obj = Cow::Owned(
                kube_ops::add_finalizer(&self.api, &*self.obj)
                    .await
                    .map_err(|e| Error::kube("add the finalizer", e))?,
            );
        }
        // resolve and observe
        let Some(ws) = self.observe_workspace().await? else {
            return Ok(refresh);
        };
        self.status.workspace_id = Some(ws.id.clone());
        // plan
        let desired = DesiredWorkspaceLimits::from_spec(&self.obj.spec);
        let planned = plan::plan(&desired, &ws);
        self.announce_pause(paused, "the workspace is").await;
        if paused {
            let differences = planned
                .as_ref()
                .map(|u| FieldChange::summary(&u.changes))
                .unwrap_or_default();
            self.report_figures(&ws, &desired);
            self.conclude(Outcome::paused(&differences, "the workspace limits"));
            self.ctx.synced(&self.key, self.now);
            return Ok(refresh);
        }
        // execute
        let ws = match planned {
            Some(update) if self.ctx.config.dry_run => {
                self.hold_dry_run(&ws, &desired, &update).await;
                return Ok(refresh);
            }
            Some(update) => self.execute_update(&ws, update).await?,
            None => ws,
        };
        // report
        self.report(&ws, &desired);
        Ok(refresh)
    }

    /// The workspace this resource names, unless an older `WorkspaceBudget` manages it (by the
    /// name its spec gives, or the same workspace under another name) or Portkey has none:
    /// `None` with a terminal condition, and no Admin API write.
    async fn observe_workspace(&mut self) -> Result<Option<Workspace>, Error> {
        let workspace = self.obj.spec.workspace.clone();
        // Conflicts by name first: the loser makes no Admin API call at all.
        if let Some(other) = self.conflicting_owner(None).await? {
            self.terminal(
                reasons::CONFLICT,
                &format!("workspace {workspace:?} is already managed by the older WorkspaceBudget {other}; this one makes no changes"),
            );
            return Ok(None);
        }
        let ws = match self.ctx.portkey.get_workspace(&workspace).await {
            Ok(ws) => ws,
            Err(e) if e.is_not_found() => {
                self.terminal(
                    reasons::WORKSPACE_NOT_FOUND,
                    &format!("Portkey has no workspace {workspace:?}"),
                );
                return Ok(None);
            }
            Err(e) => return Err(Error::portkey("read the workspace", e)),
        };
        // The same workspace under another name (slug vs UUID): still no write.
        if let Some(other) = self.conflicting_owner(Some(&ws.id)).await? {
            self.terminal(
                reasons::CONFLICT,
                &format!("workspace {workspace:?} ({}) is already managed by the older WorkspaceBudget {other}; this one makes no changes", ws.id),
            );
            return Ok(None);
        }
        Ok(Some(ws))
    }

    /// Dry-run: the update is announced (`WouldUpdate`), nothing is written.
    async fn hold_dry_run(
        &mut self,
        ws: &Workspace,
        desired: &DesiredWorkspaceLimits,
        update: &plan::WorkspaceUpdate,
    ) {
        let note = format!(
            "dry-run: would update the limits of workspace {}: {}",
            ws.id,
            FieldChange::summary(&update.changes)
        );
        self.event(EventType::Normal, "WouldUpdate", note.clone())
            .await;
        self.report_figures(ws, desired);
        self.conclude(Outcome::dry_run(note));
    }

    /// The PUT of the limits that differ, its Event, and the workspace as Portkey shows it after.
    async fn execute_update(
        &mut self,
        ws: &Workspace,
        update: plan::WorkspaceUpdate,
    ) -> Result<Workspace, Error> {
        self.ctx.write_permit().await;
        self.ctx
            .portkey
            .update_workspace(&ws.id, &update.body)
            .await
            .map_err(|e| Error::portkey("update the workspace limits", e))?;
        self.announce_update("the workspace limits", &update.changes)
            .await;
        self.ctx
            .portkey
            .get_workspace(&ws.id)
            .await
            .map_err(|e| Error::portkey("read the workspace", e))
    }

    /// The figures of the status from what the workspace holds.
    fn report_figures(&mut self, ws: &Workspace, desired: &DesiredWorkspaceLimits) {
        let (budget, reset, rate) = plan::summaries(ws);
        self.status.budget = budget;
        self.status.reset = reset;
        self.status.rate_limit = rate;
        self.status.next_reset_at = ws
            .usage_limits
            .iter()
            .flatten()
            .filter_map(|l| l.next_usage_reset_at)
            .min()
            .map(Time);
        self.status.last_reset_at = ws.last_reset_at.map(Time);
        self.status.unmanaged_limits = plan::unmanaged(desired, ws);
    }

    fn report(&mut self, ws: &Workspace, desired: &DesiredWorkspaceLimits) {
        self.report_figures(ws, desired);
        // Eventual consistency: a read right after a PUT may lag; the next resync settles it.
        if plan::plan(desired, ws).is_some() {
            self.conclude(Outcome::Progressing {
                reason: reasons::PENDING,
                message: "sent the limits; Portkey does not report them yet".into(),
            });
        } else {
            self.conclude(Outcome::InForce {
                reason: reasons::IN_FORCE,
                message: format!(
                    "the limits of workspace {} are in force as specified",
                    ws.id
                ),
            });
            self.ctx.synced(&self.key, self.now);
        }
    }

    async fn cleanup_workspace(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&*self.obj) {
            return Ok(Action::await_change());
        }
        let resolved = self
            .ctx
            .workspaces
            .resolve(&self.ctx.portkey, &self.obj.spec.workspace)
            .await
            .ok();
        let owns = self.conflicting_owner(resolved.as_deref()).await?.is_none();
        if self.obj.spec.deletion_policy == WorkspaceDeletionPolicy::Clear
            && owns
            && resolved.is_some()
        {
            let workspace = self.obj.spec.workspace.clone();
            match self.ctx.portkey.get_workspace(&workspace).await {
                Ok(ws) => {
                    let desired = DesiredWorkspaceLimits::from_spec(&self.obj.spec);
                    let cleared = plan::clear(&desired, &ws);
                    if self.ctx.config.dry_run
                        && let Some(update) = &cleared
                    {
                        self.ctx
                            .event(
                                &*self.obj,
                                EventType::Normal,
                                "WouldUpdate",
                                format!(
                                    "dry-run: would remove the limits this resource set: {}",
                                    FieldChange::summary(&update.changes)
                                ),
                            )
                            .await;
                    } else if let Some(update) = cleared {
                        self.ctx.write_permit().await;
                        self.ctx
                            .portkey
                            .update_workspace(&ws.id, &update.body)
                            .await?;
                        self.ctx
                            .event(
                                &*self.obj,
                                EventType::Normal,
                                "Cleared",
                                format!(
                                    "removed the limits this resource set: {}",
                                    FieldChange::summary(&update.changes)
                                ),
                            )
                            .await;
                    }
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        } else if owns {
            self.ctx
                .event(
                    &*self.obj,
                    EventType::Normal,
                    "Retained",
                    "left the workspace limits in force (deletionPolicy Retain)".into(),
                )
                .await;
        }
        kube_ops::remove_finalizer(&self.api, &*self.obj).await?;
        Ok(Action::await_change())
    }
}
