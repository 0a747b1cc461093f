//! Execute: the planner's action carried out (create bracketed by the create-pending record,
//! update, replace), and the reset-usage one-shot.

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::*;

impl<R: PolicyResource> Pass<'_, R> {
    /// The reset-usage annotation: every bucket of the policy back to zero, once per token.
    /// The request is recorded in status first; a pass interrupted between the resets and
    /// their record repeats them (Portkey keeps no per-bucket reset time to check against).
    pub(super) async fn reset_usage(&mut self, policy_id: String) -> Result<bool, Error> {
        let Some(token) = super::super::annotation_token(&*self.obj, RESET_USAGE_ANNOTATION) else {
            return Ok(false);
        };
        let Some(slot) = R::usage_reset(&mut self.status) else {
            return Ok(false);
        };
        if !super::super::one_shot_due(Some(&token), slot.as_ref()) {
            return Ok(false);
        }
        *slot = Some(OneShot {
            token: token.clone(),
            requested_at: Time(self.now),
            completed_at: None,
        });
        self.record_status()
            .await
            .map_err(|e| Error::kube("record the usage-reset request", e))?;
        let entities = self
            .ctx
            .portkey
            .usage_limits()
            .entities(&policy_id, &Default::default())
            .await
            .map_err(|e| Error::portkey("list the policy's buckets", e))?;
        for entity in &entities {
            self.ctx.write_permit().await;
            match self
                .ctx
                .portkey
                .usage_limits()
                .reset_entity(&policy_id, &entity.id)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_gone() => {}
                Err(e) => return Err(Error::portkey("reset a bucket's usage", e)),
            }
        }
        if let Some(Some(done)) = R::usage_reset(&mut self.status) {
            done.completed_at = Some(Time(self.now));
        }
        self.event(
            EventType::Normal,
            "UsageReset",
            format!(
                "reset the usage of {} bucket(s) of Portkey policy {policy_id} ({RESET_USAGE_ANNOTATION}: {token})",
                entities.len()
            ),
        )
        .await;
        Ok(true)
    }

    /// Steps 4–5: carries out the planner's action. A replacement is created before the old
    /// policy is archived, so a refused create never leaves the workspace without the budget.
    pub(super) async fn execute(
        &mut self,
        action: PolicyAction<<R::Kind as PolicyKind>::Create, <R::Kind as PolicyKind>::Update>,
        workspace_id: &str,
        had_policy: bool,
        remote: Option<Policy<R>>,
    ) -> Result<Step<Option<Policy<R>>>, Error> {
        match action {
            PolicyAction::Create { body } => {
                let (reason, note) = if had_policy {
                    (
                        "Recreated",
                        "the Portkey policy was archived or deleted outside the operator; created a new one (usage restarts from zero)",
                    )
                } else {
                    ("Created", "created the Portkey policy")
                };
                self.create(&body, workspace_id, reason, note).await
            }
            PolicyAction::Update { id, body, changes } => {
                self.ctx.write_permit().await;
                self.policies()
                    .update(&id, &body)
                    .await
                    .map_err(|e| Error::portkey("update the policy", e))?;
                self.announce_update("the Portkey policy's fields", &changes)
                    .await;
                // PUT answers `{}`: read the policy back (a stale echo is settled next pass).
                Ok(Step::Go(self.get_policy(&id).await?.or(remote)))
            }
            PolicyAction::Replace {
                old_id,
                body,
                changes,
            } => {
                let note = format!(
                    "{} cannot change in place: created a new Portkey policy and archived {old_id} (usage restarts from zero)",
                    FieldChange::summary(&changes)
                );
                let created = self.create(&body, workspace_id, "Recreated", &note).await?;
                self.archive(workspace_id, &old_id).await?;
                Ok(created)
            }
        }
    }

    /// Archives one policy of this resource (404/403 `AB03`: already gone).
    pub(super) async fn archive(&mut self, workspace_id: &str, id: &str) -> Result<(), Error> {
        self.ctx.write_permit().await;
        match self.policies().delete(id).await {
            Ok(()) => {}
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(Error::portkey("archive the replaced policy", e)),
        }
        self.ctx.owned.invalidate(R::SHORT, workspace_id);
        Ok(())
    }

    /// Creates the policy, bracketed by the create-pending annotation (confirmed in status only
    /// once Portkey shows the policy); records the id in status before anything else. `Stop` while
    /// Portkey does not show the new policy yet.
    pub(super) async fn create(
        &mut self,
        body: &<R::Kind as PolicyKind>::Create,
        workspace_id: &str,
        reason: &str,
        note: &str,
    ) -> Result<Step<Option<Policy<R>>>, Error> {
        let stamp = self.now.to_string();
        let policies = self.ctx.portkey.policies::<R::Kind>();
        let created = super::super::bracketed_create(
            self.ctx,
            &self.api,
            self.obj.to_mut(),
            &stamp,
            "create the policy",
            || policies.create(body),
        )
        .await?;
        // The shared listing is not dropped here: the new policy carries only this resource's
        // marker, which this resource no longer looks up (its id is recorded); dropping it made
        // every create re-list the whole workspace (O(N²) calls).
        // The id goes into the status write that ends this pass (re-read and written again on
        // a conflict); until then, and if that write fails, the pending record finds the policy.
        self.ps().policy_id = Some(created.id.clone());
        self.ps().workspace_id = Some(workspace_id.to_owned());
        self.created = true;
        let type_ = if reason == "Recreated" {
            EventType::Warning
        } else {
            EventType::Normal
        };
        // Recorded when the pass ends, beside the status write that holds the id.
        self.held_event = Some((type_, reason.to_owned(), format!("{note} ({})", created.id)));
        // Read back the server's fields (next reset, status); tolerate a short lag. While
        // Portkey does not show it, the create-pending record stays: the next pass waits
        // instead of taking the policy for gone.
        for attempt in 0..3 {
            if let Some(p) = self.get_policy(&created.id).await? {
                // Portkey shows it: the status holding the id confirms the create.
                self.confirm_create();
                return Ok(Step::Go(Some(p)));
            }
            tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
        }
        let message = format!(
            "created Portkey policy {}, which Portkey does not show yet",
            created.id
        );
        self.conclude(Outcome::Progressing {
            reason: reasons::REMOTE_POLICY_NOT_VISIBLE,
            message,
        });
        Ok(Step::Stop(Action::requeue(Duration::from_secs(2))))
    }
}
