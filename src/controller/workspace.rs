//! Reconcile and cleanup of one `WorkspaceBudget` (cluster-scoped).
//!
//! Reuses the policy machinery's pieces: finalizer, conditions, Events, the shared write rate
//! limiter, status patching, the freshness gate and the pure planner (`plan::workspace`).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::conditions::{self, Outcome, TRUE, reasons};
use super::kube_ops;
use super::policy::is_paused;
use super::{Context, Error};
use crate::api::validate::summarize;
use crate::api::*;
use crate::plan::FieldChange;
use crate::plan::ownership::{self, Claimant};
use crate::plan::workspace::{self as plan, DesiredWorkspaceLimits};
use crate::portkey::Workspace;

struct Run<'a> {
    ctx: &'a Context,
    api: Api<WorkspaceBudget>,
    obj: WorkspaceBudget,
    key: String,
    status: WorkspaceBudgetStatus,
    now: Timestamp,
    outcome: Option<Outcome>,
}

/// Reconciles one `WorkspaceBudget` (or cleans up when it is being deleted).
pub async fn reconcile(obj: &WorkspaceBudget, ctx: &Context) -> Result<Action, Error> {
    let mut run = Run {
        ctx,
        api: Api::all(ctx.client.clone()),
        key: super::key_of(obj),
        status: obj.status.clone().unwrap_or_default(),
        obj: obj.clone(),
        now: Timestamp::now(),
        outcome: None,
    };
    let kind = WorkspaceBudget::kind(&());
    let name = obj.name_any();
    if obj.metadata.deletion_timestamp.is_some() {
        ctx.metrics.forget(&kind, "", &name);
        ctx.forget_sync(&run.key);
        return run.cleanup().await;
    }
    let result = run.apply().await;
    if let Err(e) = &result
        && !e.is_conflict()
    {
        run.conclude(e.outcome());
    }
    let flushed = run.flush_status().await;
    if let Some(outcome) = &run.outcome {
        ctx.metrics
            .outcome(&kind, "", &name, outcome, &run.status.conditions);
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

impl Run<'_> {
    fn generation(&self) -> Option<i64> {
        self.obj.metadata.generation
    }

    /// Sets the conditions and `observedGeneration` from what this pass concluded.
    fn conclude(&mut self, outcome: Outcome) {
        let generation = self.generation();
        conditions::apply(&mut self.status.conditions, &outcome, generation, self.now);
        self.status.observed_generation = generation;
        self.outcome = Some(outcome);
    }

    /// A state only a human can fix (Stalled); nothing is written to Portkey.
    fn terminal(&mut self, reason: &'static str, message: &str) {
        self.conclude(Outcome::Stalled {
            reason,
            message: message.to_owned(),
        });
    }

    /// An Event when the paused annotation was just set or removed.
    async fn announce_pause(&self, paused: bool) {
        if let Some((reason, note)) =
            conditions::pause_transition(&self.status.conditions, paused, "the workspace is")
        {
            self.ctx
                .event(&self.obj, EventType::Normal, reason, note)
                .await;
        }
    }

    async fn flush_status(&mut self) -> Result<(), kube::Error> {
        if self.obj.status.as_ref() == Some(&self.status) {
            return Ok(());
        }
        self.obj = kube_ops::apply_status(&self.api, &self.obj, &self.status).await?;
        Ok(())
    }

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

    async fn apply(&mut self) -> Result<Action, Error> {
        let paused = is_paused(&self.obj);
        if let Some(action) = super::gate(
            self.ctx,
            super::Freshness {
                generation: self.generation(),
                observed_generation: self.status.observed_generation,
                conditions: &self.status.conditions,
                last_sync: self.ctx.last_sync(&self.key),
                pending: false,
                paused,
            },
            self.now,
            self.ctx.interval(true),
        ) {
            return Ok(action);
        }
        let refresh = Action::requeue(self.ctx.refresh_interval(true));
        let errors = self.ctx.admission_errors("wsb", &self.obj);
        if !errors.is_empty() {
            self.terminal(reasons::INVALID_SPEC, &summarize(&errors));
            return Ok(Action::await_change());
        }
        if !kube_ops::has_finalizer(&self.obj) {
            self.obj = kube_ops::add_finalizer(&self.api, &self.obj).await?;
        }
        let workspace = self.obj.spec.workspace.clone();
        // Conflicts by name first: the loser makes no Admin API call at all.
        if let Some(other) = self.conflicting_owner(None).await? {
            self.terminal(
                reasons::CONFLICT,
                &format!("workspace {workspace:?} is already managed by the older WorkspaceBudget {other}; this one makes no changes"),
            );
            return Ok(refresh);
        }
        let mut ws = match self.ctx.portkey.get_workspace(&workspace).await {
            Ok(ws) => ws,
            Err(e) if e.is_not_found() => {
                self.terminal(
                    reasons::WORKSPACE_NOT_FOUND,
                    &format!("Portkey has no workspace {workspace:?}"),
                );
                return Ok(refresh);
            }
            Err(e) => return Err(e.into()),
        };
        // The same workspace under another name (slug vs UUID): still no write.
        if let Some(other) = self.conflicting_owner(Some(&ws.id)).await? {
            self.terminal(
                reasons::CONFLICT,
                &format!("workspace {workspace:?} ({}) is already managed by the older WorkspaceBudget {other}; this one makes no changes", ws.id),
            );
            return Ok(refresh);
        }
        self.status.workspace_id = Some(ws.id.clone());

        let desired = DesiredWorkspaceLimits::from_spec(&self.obj.spec);
        let planned = plan::plan(&desired, &ws);
        self.announce_pause(paused).await;
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
        if self.ctx.config.dry_run
            && let Some(update) = &planned
        {
            let note = format!(
                "dry-run: would update the limits of workspace {}: {}",
                ws.id,
                FieldChange::summary(&update.changes)
            );
            self.ctx
                .event(&self.obj, EventType::Normal, "WouldUpdate", note.clone())
                .await;
            self.report_figures(&ws, &desired);
            self.conclude(Outcome::Held {
                ready: false,
                ready_reason: reasons::DRY_RUN,
                ready_message: note,
                synced: TRUE,
                synced_reason: reasons::DRY_RUN,
                synced_message: "dry-run mode: read Portkey, wrote nothing (see the Would* Events)"
                    .into(),
            });
            return Ok(refresh);
        }
        if let Some(update) = planned {
            self.ctx.write_permit().await;
            self.ctx
                .portkey
                .update_workspace(&ws.id, &update.body)
                .await?;
            let spec_changed = self.status.observed_generation != self.generation();
            let (reason, what) = if spec_changed {
                ("Updated", "updated the workspace limits")
            } else {
                (
                    "DriftCorrected",
                    "the workspace limits were changed outside the operator; reverted",
                )
            };
            self.ctx
                .event(
                    &self.obj,
                    EventType::Normal,
                    reason,
                    format!("{what}: {}", FieldChange::summary(&update.changes)),
                )
                .await;
            ws = self.ctx.portkey.get_workspace(&ws.id).await?;
        }
        self.report(&ws, &desired);
        Ok(refresh)
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

    async fn cleanup(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&self.obj) {
            return Ok(Action::await_change());
        }
        if is_paused(&self.obj) {
            // Paused: no writes, deletion included; it finishes once the annotation is gone.
            self.announce_pause(true).await;
            let ready = conditions::is_true(&self.status.conditions, conditions::READY);
            self.conclude(Outcome::deletion_paused(ready));
            self.flush_status()
                .await
                .map_err(|e| Error::kube("write the status", e))?;
            return Ok(Action::requeue(self.ctx.refresh_interval(true)));
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
                                &self.obj,
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
                                &self.obj,
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
                    &self.obj,
                    EventType::Normal,
                    "Retained",
                    "left the workspace limits in force (deletionPolicy Retain)".into(),
                )
                .await;
        }
        kube_ops::remove_finalizer(&self.api, &self.obj).await?;
        Ok(Action::await_change())
    }
}
