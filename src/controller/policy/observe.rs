//! Observe: the remote policy a policy resource has (the one recorded in status, verified; the
//! one `adoptPolicyId` names; the oldest carrying its marker), duplicates archived on the way.

use std::time::Duration;

use kube::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::*;

impl<R: PolicyResource> Pass<'_, R> {
    /// Step 3: the remote policy this resource has: the one recorded in status (confirmed gone
    /// before it is given up), the one `adoptPolicyId` names (in this workspace, not another
    /// resource's or installation's), or the oldest carrying its marker (adopt before create).
    /// Duplicates carrying its marker are archived on the way.
    pub(super) async fn observe(
        &mut self,
        spec: &CommonSpec,
        workspace_id: &str,
        desired: &R::Desired,
        refresh: Action,
    ) -> Result<Step<Option<Policy<R>>>, Error> {
        let observe = spec.management_policy == ManagementPolicy::Observe;
        let waited = self.pending_since().map(|since| {
            Duration::try_from(self.now.duration_since(since)).unwrap_or(Duration::MAX)
        });
        // A recorded policy that is not active: search with a new listing, not the shared one.
        let (remote, lost) = if let Some(id) = self.psr().policy_id.clone() {
            match self
                .observe_recorded(&id, spec, workspace_id, waited, refresh.clone())
                .await?
            {
                Step::Go(found) => {
                    let lost = found.is_none();
                    (found, lost)
                }
                Step::Stop(action) => return Ok(Step::Stop(action)),
            }
        } else if let Some(id) = spec.adopt_policy_id.clone() {
            match self
                .observe_adopted(&id, workspace_id, observe, refresh.clone())
                .await?
            {
                Step::Go(p) => (Some(p), false),
                Step::Stop(action) => return Ok(Step::Stop(action)),
            }
        } else {
            (None, false)
        };
        if observe {
            return Ok(Step::Go(remote));
        }
        // Adopt before create, and at every refresh: duplicates carrying the marker.
        let fresh_listing = self.pending_since().is_some() || lost;
        let remote = self
            .reconcile_owned(workspace_id, desired, remote, fresh_listing)
            .await?;
        let grace = self.ctx.config.create_pending_grace;
        if remote.is_none()
            && let Some(w) = waited
            && w < grace
        {
            let message = format!(
                "a create was sent at {} but no Portkey policy with marker {} is visible yet; waiting up to {}s before creating again (remove annotation {CREATE_PENDING_ANNOTATION} to retry now)",
                self.pending_since().unwrap_or(self.now),
                self.identity.marker(),
                grace.as_secs()
            );
            self.conclude(Outcome::Progressing {
                reason: reasons::CREATION_RESULT_UNKNOWN,
                message,
            });
            return Ok(Step::Stop(Action::requeue(grace - w)));
        }
        if let Some(p) = &remote {
            if self.psr().policy_id.as_deref() != Some(p.id()) {
                self.ps().policy_id = Some(p.id().to_owned());
            }
            // The create is confirmed: Portkey shows the policy.
            self.confirm_create();
        }
        Ok(Step::Go(remote))
    }

    /// The policy recorded in `status.policyId`: active and verified as this resource's
    /// (`Go(Some)`), gone (`Go(None)`: the id is dropped), or a stop (refused, or a create
    /// Portkey does not show yet).
    async fn observe_recorded(
        &mut self,
        id: &str,
        spec: &CommonSpec,
        workspace_id: &str,
        waited: Option<Duration>,
        refresh: Action,
    ) -> Result<Step<Option<Policy<R>>>, Error> {
        let grace = self.ctx.config.create_pending_grace;
        match self.lookup(id).await? {
            Lookup::Active(p) => {
                // Status is not authority: the recorded policy must be this resource's.
                if let Some(refused) = self.refuse_recorded(&p, spec, workspace_id).await? {
                    self.terminal(refused.reason, &refused.message);
                    return Ok(Step::Stop(refresh));
                }
                Ok(Step::Go(Some(p)))
            }
            Lookup::Archived => {
                // Nothing is written to it; whose it was is not said (it may be a forged id).
                tracing::info!(policy = %id, "the recorded Portkey policy is archived");
                self.ps().policy_id = None;
                Ok(Step::Go(None))
            }
            Lookup::Missing => match waited {
                // Created moments ago: Portkey may not show it yet (read-after-write lag).
                Some(w) if w < grace => {
                    let message = format!(
                        "created Portkey policy {id}, which Portkey does not show yet; waiting up to {}s",
                        grace.as_secs()
                    );
                    self.conclude(Outcome::Progressing {
                        reason: reasons::REMOTE_POLICY_NOT_VISIBLE,
                        message,
                    });
                    Ok(Step::Stop(Action::requeue(
                        (grace - w).min(Duration::from_secs(5)),
                    )))
                }
                _ => {
                    tracing::info!(policy = %id, "the Portkey policy is not found, active or archived");
                    self.ps().policy_id = None;
                    self.ps().remote_status = None;
                    Ok(Step::Go(None))
                }
            },
        }
    }

    /// The policy `spec.adoptPolicyId` names, if this resource may take it over (in its
    /// workspace, no other live resource's or installation's marker).
    async fn observe_adopted(
        &mut self,
        id: &str,
        workspace_id: &str,
        observe: bool,
        refresh: Action,
    ) -> Result<Step<Policy<R>>, Error> {
        let Some(p) = self.get_policy(id).await? else {
            let msg = format!("spec.adoptPolicyId: Portkey has no active policy {id}");
            let reason = if observe {
                reasons::REMOTE_POLICY_NOT_FOUND
            } else {
                reasons::ADOPT_TARGET_NOT_FOUND
            };
            self.terminal(reason, &msg);
            return Ok(Step::Stop(refresh));
        };
        if let Some(refusal) = self.refuse_adoption(&p, workspace_id).await? {
            self.terminal(refusal.reason, &refusal.message);
            return Ok(Step::Stop(refresh));
        }
        if !observe {
            self.event(
                EventType::Normal,
                "Adopted",
                format!("took over Portkey policy {id} (adoptPolicyId)"),
            )
            .await;
        }
        Ok(Step::Go(p))
    }

    /// GET (with usage where the kind has it); `None` when the policy is gone (404, or 403
    /// `AB03`).
    pub(super) async fn get_policy(&self, id: &str) -> Result<Option<Policy<R>>, Error> {
        let options = GetOptions {
            include_usage: R::INCLUDE_USAGE,
            ..Default::default()
        };
        match self.policies().get(id, options).await {
            Ok(p) => Ok(Some(p)),
            Err(e) if e.is_gone() => Ok(None),
            Err(e) => Err(Error::portkey("read the policy", e)),
        }
    }

    /// The policy recorded in status: active, confirmed archived (`?status=archived`), or not
    /// found at all (a new policy Portkey does not show yet, or one deleted for good).
    pub(super) async fn lookup(&self, id: &str) -> Result<Lookup<Policy<R>>, Error> {
        if let Some(p) = self.get_policy(id).await? {
            return Ok(Lookup::Active(p));
        }
        let archived = GetOptions {
            status: Some(PolicyStatus::Archived),
            ..Default::default()
        };
        match self.policies().get(id, archived).await {
            Ok(p) if p.status() == PolicyStatus::Archived => Ok(Lookup::Archived),
            Ok(_) => Ok(Lookup::Missing),
            Err(e) if e.is_gone() => Ok(Lookup::Missing),
            Err(e) => Err(Error::portkey("confirm the policy is archived", e)),
        }
    }

    /// Why a policy whose id was read from `status.policyId` is not this resource's, if it is
    /// not: the shared rule (`plan::trust::verify_recorded`: this workspace, and its marker or
    /// the id `spec.adoptPolicyId` names), and for a declared id without this resource's marker
    /// the same adoption check as `spec.adoptPolicyId` gets (another live resource's or another
    /// installation's policy is never taken over through status).
    pub(super) async fn refuse_recorded(
        &self,
        p: &Policy<R>,
        spec: &CommonSpec,
        workspace_id: &str,
    ) -> Result<Option<ownership::Refusal>, Error> {
        if let Err(refused) = self.verify_recorded(p, spec, workspace_id) {
            return Ok(Some(refused));
        }
        if self.identity.owns(p.name()) {
            return Ok(None);
        }
        self.refuse_adoption(p, workspace_id).await
    }

    /// The adoption check of `spec.adoptPolicyId`: the policy is in this workspace and no other
    /// live resource or installation has marked it.
    pub(super) async fn refuse_adoption(
        &self,
        p: &Policy<R>,
        workspace_id: &str,
    ) -> Result<Option<ownership::Refusal>, Error> {
        Ok(
            match ownership::check_adoption(
                "spec.adoptPolicyId",
                p.id(),
                p.workspace_id(),
                p.name(),
                workspace_id,
                &self.identity,
            ) {
                Ok(None) => None,
                Ok(Some(marked)) if self.resource_exists(&marked).await? => {
                    Some(marked.refusal("spec.adoptPolicyId", p.id()))
                }
                Ok(Some(_)) => None,
                Err(refusal) => Some(refusal),
            },
        )
    }

    /// The shared verification rule (`plan::trust::verify_recorded`) for a policy whose id was
    /// read from `status.policyId`: in this resource's workspace, and carrying its marker or
    /// being the one `spec.adoptPolicyId` names.
    pub(super) fn verify_recorded(
        &self,
        p: &Policy<R>,
        spec: &CommonSpec,
        workspace_id: &str,
    ) -> Result<(), ownership::Refusal> {
        let basis = match spec.adopt_policy_id.as_deref() {
            Some(id) => Basis::DeclaredId {
                field: "spec.adoptPolicyId",
                id,
            },
            None => Basis::Created,
        };
        verify_recorded(
            &Expected {
                field: "status.policyId",
                object: "Portkey policy",
                workspace_id,
                identity: &self.identity,
                basis,
            },
            &RemoteFacts {
                id: p.id(),
                workspace_id: Some(p.workspace_id()),
                name: p.name(),
            },
        )
    }

    /// The policies of the workspace carrying this resource's marker, as `(id, name, created)`.
    /// `fresh`: a new listing; else the shared [`OwnedIndex`] listing (see there why that is
    /// safe).
    ///
    /// [`OwnedIndex`]: super::OwnedIndex
    pub(super) async fn marked(
        &self,
        workspace_id: &str,
        fresh: bool,
    ) -> Result<Vec<super::super::OwnedEntry>, Error> {
        let list = || async {
            let filter = ListFilter {
                workspace_id: Some(workspace_id.to_owned()),
                status: Some(PolicyStatus::Active),
                ..Default::default()
            };
            Ok(self
                .policies()
                .list_summaries(&filter)
                .await?
                .into_iter()
                .map(|p| super::super::OwnedEntry {
                    id: p.id,
                    name: p.name,
                    created_at: p.created_at,
                })
                .collect::<Vec<_>>())
        };
        let markers = self.identity.accepted_markers();
        let entries = if fresh {
            list()
                .await
                .map_err(|e| Error::portkey("list the workspace's policies", e))?
                .into_iter()
                .filter(|e| self.identity.owns(e.name.as_deref()))
                .collect()
        } else {
            self.ctx
                .owned
                .lookup(R::SHORT, workspace_id, &markers, list)
                .await
                .map_err(|e| Error::portkey("list the workspace's policies", e))?
        };
        Ok(entries)
    }

    /// Which of the policies carrying this resource's marker (and `current`, the one it has)
    /// it keeps, archiving the others. The oldest active one wins, preferring one whose
    /// immutable fields already match the spec (so an interrupted replacement is not undone).
    /// An explicitly adopted `current` is always kept.
    pub(super) async fn reconcile_owned(
        &mut self,
        workspace_id: &str,
        desired: &R::Desired,
        current: Option<Policy<R>>,
        fresh: bool,
    ) -> Result<Option<Policy<R>>, Error> {
        let entries = self.marked(workspace_id, fresh).await?;
        let current_marker = self.identity.marker();
        let mut candidates: Vec<ownership::Candidate<'_>> = entries
            .iter()
            .map(|e| ownership::Candidate {
                id: &e.id,
                name: e.name.as_deref(),
                created_at: e.created_at,
            })
            .collect();
        if let Some(c) = &current {
            // The policy this resource has counts as its own even before it carries the marker.
            candidates.push(ownership::Candidate {
                id: c.id(),
                name: Some(&current_marker),
                created_at: c.created_at(),
            });
        }
        let Some(owned) = ownership::owned(candidates, &self.identity) else {
            return Ok(current);
        };
        let explicit = current
            .as_ref()
            .is_some_and(|c| self.obj.common().adopt_policy_id.as_deref() == Some(c.id()));
        let mut order: Vec<String> = std::iter::once(owned.keep)
            .chain(owned.duplicates)
            .collect();
        if explicit && let Some(c) = &current {
            order.retain(|id| id != c.id());
            order.insert(0, c.id().to_owned());
        }
        if order.len() == 1 && current.as_ref().is_some_and(|c| c.id() == order[0]) {
            return Ok(current);
        }
        // Read the candidates (oldest first) until the keeper is known.
        let mut active: Vec<Policy<R>> = Vec::new();
        for id in &order {
            let p = match &current {
                Some(c) if c.id() == id => Some(c.clone()),
                _ => self.get_policy(id).await?,
            };
            if let Some(p) = p {
                active.push(p);
            }
        }
        let keep_index = if explicit {
            0
        } else {
            active
                .iter()
                .position(|p| desired.immutable_changes(p).is_empty())
                .unwrap_or(0)
        };
        if active.is_empty() {
            return Ok(None);
        }
        let keep = active.swap_remove(keep_index);
        self.archive_duplicates(workspace_id, keep.id(), active)
            .await?;
        if current.as_ref().map(|c| c.id()) != Some(keep.id()) {
            self.event(
                EventType::Normal,
                "Adopted",
                format!(
                    "found Portkey policy {} (marker {}) and took it over instead of creating another",
                    keep.id(),
                    self.identity.marker()
                ),
            )
            .await;
        }
        Ok(Some(keep))
    }

    /// Archives the other policies carrying this resource's marker (`extras`), keeping `keep`;
    /// paused and dry-run resources archive nothing (dry-run says what it would do).
    async fn archive_duplicates(
        &mut self,
        workspace_id: &str,
        keep: &str,
        extras: Vec<Policy<R>>,
    ) -> Result<(), Error> {
        let mut archived_any = false;
        for extra in extras {
            let id = extra.id().to_owned();
            if self.paused() {
                continue;
            }
            if self.ctx.config.dry_run {
                self.event(
                    EventType::Normal,
                    "WouldArchive",
                    format!(
                        "dry-run: would archive Portkey policy {id} carrying this resource's marker (a duplicate of {keep})"
                    ),
                )
                .await;
                continue;
            }
            self.ctx.write_permit().await;
            match self.policies().delete(&id).await {
                Ok(()) => {}
                Err(e) if e.is_gone() => continue,
                Err(e) => return Err(Error::portkey("archive a duplicate policy", e)),
            }
            archived_any = true;
            self.ctx.metrics.duplicate_archived(&R::kind(&()));
            self.event(
                EventType::Warning,
                "DuplicateArchived",
                format!(
                    "archived Portkey policy {id} carrying this resource's marker; kept {keep}"
                ),
            )
            .await;
        }
        if archived_any {
            self.ctx.owned.invalidate(R::SHORT, workspace_id);
        }
        Ok(())
    }

    /// Whether the resource a marker names still exists (then its policy is not adoptable). A
    /// hashed identity or another kind cannot be looked up: taken as existing.
    pub(super) async fn resource_exists(
        &self,
        marked: &ownership::MarkedBy,
    ) -> Result<bool, Error> {
        let Some((namespace, name)) = marked.owner.split_once('/') else {
            return Ok(true);
        };
        // A hashed name (a very long one) cannot be looked up: taken as existing.
        if name.starts_with('#') {
            return Ok(true);
        }
        if marked.kind != R::SHORT {
            return Ok(true);
        }
        let api: Api<R> = Api::namespaced(self.ctx.client.clone(), namespace);
        api.get_opt(name)
            .await
            .map(|o| o.is_some())
            .map_err(|e| Error::kube("look up the resource that marked the policy", e))
    }
}
