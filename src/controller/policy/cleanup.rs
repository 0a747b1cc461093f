//! Deletion of a policy resource: archive (or retain) every policy of this resource (the
//! recorded one, verified, and any carrying its marker in the workspace it may use now).

use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::*;

impl<R: PolicyResource> Pass<'_, R> {
    /// The workspace UUID to clean up in: the one the resource may use now (its binding, spec
    /// and the operator's configuration), never the one recorded in status.
    pub(super) async fn cleanup_workspace(&self) -> Result<Option<String>, Error> {
        let spec = self.obj.common();
        let namespace = self.obj.namespace().unwrap_or_default();
        Ok(
            resolve_workspace(self.ctx, &namespace, spec.workspace.as_ref())
                .await?
                .ok(),
        )
    }

    /// The policy `status.policyId` names, if it is still active and verified as this
    /// resource's; a policy that fails the check is left alone, with a Warning Event.
    pub(super) async fn recorded_for_cleanup(
        &self,
        workspace_id: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let Some(id) = self.psr().policy_id.clone() else {
            return Ok(None);
        };
        let Some(ws) = workspace_id else {
            self.unverified_on_deletion("status.policyId", "Portkey policy", &id)
                .await;
            return Ok(None);
        };
        let Some(p) = self.get_policy(&id).await? else {
            return Ok(None);
        };
        match self.refuse_recorded(&p, &self.obj.common(), ws).await? {
            None => Ok(Some(id)),
            Some(refused) => {
                self.event(
                    EventType::Warning,
                    "RecordedIdRejected",
                    format!("not archived: {}", refused.message),
                )
                .await;
                Ok(None)
            }
        }
    }

    /// Deletion: archive (or retain) every policy of this resource (the recorded one and any
    /// carrying its marker), then release the finalizer. A policy Portkey refuses to archive
    /// keeps the finalizer, with a condition saying what a human can do.
    pub(crate) async fn cleanup_policy(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&*self.obj) {
            return Ok(Action::await_change());
        }
        let spec = self.obj.common();
        let archive = spec.deletion_policy == DeletionPolicy::Archive
            && spec.management_policy == ManagementPolicy::Manage;
        if archive {
            let workspace = self.cleanup_workspace().await?;
            let mut ids: Vec<String> = self
                .recorded_for_cleanup(workspace.as_deref())
                .await?
                .into_iter()
                .collect();
            if let Some(ws) = workspace {
                match self.marked(&ws, true).await {
                    Ok(entries) => {
                        for e in entries {
                            if !ids.contains(&e.id) {
                                ids.push(e.id);
                            }
                        }
                    }
                    // A deleted workspace answers 403 AB03: nothing is left to archive there.
                    Err(Error::Portkey { source, .. }) if source.is_gone() => {
                        match self.ctx.portkey.get_workspace(&ws).await {
                            Err(e) if e.is_gone() => {}
                            _ => {
                                let msg = format!(
                                    "the Admin API key may not list the policies of workspace {ws} ({source}); grant it policies.list, or set spec.deletionPolicy: Retain to release this resource without archiving"
                                );
                                return self.cleanup_blocked(reasons::LIST_FORBIDDEN, &msg).await;
                            }
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
            for id in ids {
                if self.ctx.config.dry_run {
                    self.event(
                        EventType::Normal,
                        "WouldArchive",
                        format!("dry-run: would archive Portkey policy {id}"),
                    )
                    .await;
                    continue;
                }
                self.ctx.write_permit().await;
                match self.policies().delete(&id).await {
                    Ok(()) => {
                        self.event(
                            EventType::Normal,
                            "Archived",
                            format!("archived Portkey policy {id}"),
                        )
                        .await
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e @ PortkeyError::Forbidden { .. }) => {
                        // 403: gone (AB03 for deleted objects), or a key without
                        // policies.delete. The policy still being readable tells them apart.
                        if self.get_policy(&id).await?.is_some() {
                            let msg = format!(
                                "Portkey refused to archive policy {id} ({e}); grant the Admin API key policies.delete, or set spec.deletionPolicy: Retain to release this resource and leave the policy in force"
                            );
                            return self.cleanup_blocked(reasons::ARCHIVE_FORBIDDEN, &msg).await;
                        }
                    }
                    Err(e) => return Err(Error::portkey("archive the policy", e)),
                }
            }
        } else if let Some(id) = self.psr().policy_id.clone() {
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
        kube_ops::remove_finalizer(&self.api, &*self.obj)
            .await
            .map_err(|e| Error::kube("remove the finalizer", e))?;
        Ok(Action::await_change())
    }

    /// Deletion cannot finish until a human acts: a terminal condition and an Event, checked
    /// again at the next refresh.
    pub(super) async fn cleanup_blocked(
        &mut self,
        reason: &'static str,
        message: &str,
    ) -> Result<Action, Error> {
        self.terminal(reason, message);
        self.event(EventType::Warning, "CleanupBlocked", message.to_owned())
            .await;
        self.flush_status()
            .await
            .map_err(|e| Error::kube("write the status", e))?;
        Ok(Action::requeue(self.ctx.refresh_interval(R::USAGE)))
    }
}
