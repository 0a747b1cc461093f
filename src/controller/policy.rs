//! Reconcile and cleanup of one policy resource (`UsageLimitPolicy`, `RateLimitPolicy`): the
//! machinery both kinds share; the kind-specific parts are the [`PolicyResource`] trait.
//!
//! Order of a reconcile (see README "How the controller works"):
//! 1. A recently synced, healthy, unchanged resource is left alone (no Admin API call).
//! 2. The spec is validated (schema + CEL) and the namespace binding checked: a failure is a
//!    terminal condition and nothing is sent to Portkey.
//! 3. The workspace is resolved to its UUID.
//! 4. The remote policy is observed: by `status.policyId`, by `adoptPolicyId`, or by searching
//!    the workspace for the ownership marker (adopt before create).
//! 5. The planner decides; writes go through the shared rate limiter; a create is bracketed by
//!    the create-pending annotation so a crash cannot make a second policy.
//! 6. Status (usage, conditions, next reset) is written only when it changed.

use std::borrow::Cow;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;

use super::conditions::{self, FALSE, Outcome, TRUE, reasons};
use super::kube_ops::{self, Managed};
use super::{Context, Error};
use crate::api::validate::summarize;
use crate::api::*;
use crate::metrics::BudgetFigures;
use crate::plan::ownership;
use crate::plan::policy::{Decision, PlanOptions, PolicyAction, PolicyDiff, plan};
use crate::plan::trust::{
    Basis, Expected, RemoteFacts, TenancyConfig, choose_workspace, verify_recorded,
};
use crate::plan::{FieldChange, Identity};
use crate::portkey::*;

/// The spec fields every policy kind has.
#[derive(Debug, Clone)]
pub struct CommonSpec {
    pub workspace: Option<String>,
    pub deletion_policy: DeletionPolicy,
    pub management_policy: ManagementPolicy,
    pub adopt_policy_id: Option<String>,
    pub on_immutable_change: OnImmutableChange,
}

/// An Event to record: type, reason, note.
pub type EventSpec = (EventType, &'static str, String);

/// What differs between the policy kinds.
pub trait PolicyResource: Managed + Resource<Scope = NamespaceResourceScope> {
    /// The Admin API family (`/policies/usage-limits` or `/policies/rate-limits`).
    type Kind: PolicyKind;
    /// The resolved desired policy.
    type Desired: PolicyDiff<
            Remote = <Self::Kind as PolicyKind>::Policy,
            Create = <Self::Kind as PolicyKind>::Create,
            Update = <Self::Kind as PolicyKind>::Update,
        > + Send
        + Sync;
    type Status: Default + Clone + PartialEq + Serialize + Send + Sync;
    /// Short kind in ownership markers (`ulp`, `rlp`).
    const SHORT: &'static str;
    /// Read policies with `include_usage=true`.
    const INCLUDE_USAGE: bool;

    fn common(&self) -> CommonSpec;
    fn desired(&self, identity: &Identity, workspace_id: &str) -> Self::Desired;
    fn status(&self) -> Option<&Self::Status>;
    fn policy_status(status: &mut Self::Status) -> &mut RemotePolicyStatus;
    fn policy_status_ref(status: &Self::Status) -> &RemotePolicyStatus;
    /// Kind-specific status from the observed policy (`None` when there is none); returns the
    /// Events to record.
    fn report(
        &self,
        status: &mut Self::Status,
        remote: Option<&<Self::Kind as PolicyKind>::Policy>,
        desired: &Self::Desired,
    ) -> Vec<EventSpec>;
    /// The figures of the per-resource budget metrics, for kinds that have a budget.
    fn budget(&self, _status: &Self::Status) -> Option<BudgetFigures> {
        None
    }
    /// Where kinds that take the reset-usage annotation record it (`None`: the kind does not).
    fn usage_reset(_status: &mut Self::Status) -> Option<&mut Option<OneShot>> {
        None
    }
    fn usage_reset_ref(_status: &Self::Status) -> Option<&OneShot> {
        None
    }
}

struct Run<'a, R: PolicyResource> {
    ctx: &'a Context,
    api: Api<R>,
    /// The cached object, copied only once the pass writes it (a refresh that changes nothing
    /// copies nothing of it).
    obj: Cow<'a, R>,
    /// `kind/namespace/name`, for the in-memory last-sync times.
    key: String,
    identity: Identity,
    status: R::Status,
    now: Timestamp,
    /// What this pass concluded (for the readiness metrics).
    outcome: Option<Outcome>,
    /// A policy was created this pass: its id must reach the status.
    created: bool,
    /// A create's Event, recorded when the pass ends beside its status write (see
    /// [`Run::finish`]).
    held_event: Option<(EventType, String, String)>,
}

/// Reconciles one resource (or cleans it up when it is being deleted).
pub async fn reconcile<R: PolicyResource>(obj: &R, ctx: &Context) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let key = super::key_of(obj);
    let now = Timestamp::now();
    // A pass the freshness gate or the refresh budget turns away does nothing but requeue:
    // decided before the object and its status are copied for the pass (at 10,000 resources
    // about a fifth of all passes are refreshes deferred for the budget).
    if obj.meta().deletion_timestamp.is_none() {
        let unset = R::Status::default();
        let status = obj.status().unwrap_or(&unset);
        if let Some(action) = gate(ctx, obj, status, &key, now) {
            report_budget(ctx, obj, status);
            return Ok(action);
        }
    }
    let mut run = Run {
        ctx,
        api: Api::namespaced(ctx.client.clone(), &namespace),
        identity: ctx
            .config
            .identity(R::SHORT, Some(&namespace), &obj.name_any()),
        status: obj.status().cloned().unwrap_or_default(),
        key,
        obj: Cow::Borrowed(obj),
        now,
        outcome: None,
        created: false,
        held_event: None,
    };
    let kind = R::kind(&());
    let name = obj.name_any();
    if obj.meta().deletion_timestamp.is_some() {
        ctx.metrics.forget(&kind, &namespace, &name);
        ctx.forget_sync(&run.key);
        return run.cleanup().await;
    }
    let result = run.apply().await;
    if let Err(e) = &result
        && !e.is_conflict()
    {
        run.failed(e);
    }
    let flushed = run.finish().await;
    let conditions = &R::policy_status_ref(&run.status).conditions;
    if let Some(outcome) = &run.outcome {
        ctx.metrics
            .outcome(&kind, &namespace, &name, outcome, conditions);
    }
    match (result, flushed) {
        (Ok(action), Ok(())) => {
            report_budget(ctx, obj, &run.status);
            Ok(action)
        }
        (Ok(_), Err(e)) => Err(Error::kube("write the status", e)),
        (Err(e), flushed) => {
            if let Err(status_err) = flushed {
                tracing::warn!(error = %status_err, "could not record the failure in status");
            }
            Err(e)
        }
    }
}

/// Sets the budget metrics of `obj` from `status` (or drops them when it reports none).
fn report_budget<R: PolicyResource>(ctx: &Context, obj: &R, status: &R::Status) {
    let (kind, namespace, name) = (
        R::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    );
    match R::budget(obj, status) {
        Some(figures) => ctx.metrics.budget(&kind, &namespace, &name, figures),
        None => ctx.metrics.forget_budget(&kind, &namespace, &name),
    }
}

/// The freshness gate and the refresh read budget (`super::gate`) for a resource whose status
/// is `status`: `Some` when this pass should not read Portkey now.
fn gate<R: PolicyResource>(
    ctx: &Context,
    obj: &R,
    status: &R::Status,
    key: &str,
    now: Timestamp,
) -> Option<Action> {
    let ps = R::policy_status_ref(status);
    let last_sync = ctx.last_sync(key);
    super::gate(
        ctx,
        super::Freshness {
            generation: obj.meta().generation,
            observed_generation: ps.observed_generation,
            conditions: &ps.conditions,
            last_sync,
            // A create-pending record this process already saw through (it synced the
            // resource at or after the create) is one whose clearing is still on its way
            // through the watch: not a reason to read Portkey again.
            pending: match (
                super::pending_create(obj, ps.create_confirmed.as_deref()),
                last_sync,
            ) {
                (Some(since), Some(synced)) => since > synced,
                (pending, _) => pending.is_some(),
            } || super::one_shot_due(
                super::annotation_token(obj, RESET_USAGE_ANNOTATION).as_deref(),
                R::usage_reset_ref(status),
            ),
            paused: is_paused(obj),
        },
        now,
        ctx.interval(R::INCLUDE_USAGE),
    )
}

/// The `'static` reason constant equal to `reason` (conditions read back from the API hold
/// owned strings).
fn reason_const(reason: &str) -> &'static str {
    reasons::ALL
        .iter()
        .find(|r| **r == reason)
        .copied()
        .unwrap_or(reasons::IN_FORCE)
}

/// The tenancy settings of the operator's configuration.
fn tenancy(config: &crate::config::ControllerConfig) -> TenancyConfig<'_> {
    TenancyConfig {
        default_workspace: config.default_workspace.as_deref(),
        require_binding: config.require_namespace_binding,
        single_tenant: config.single_tenant,
    }
}

/// A refusal of the resolve step: reason, message, and the requeue it asks for (`None`: the
/// usual refresh).
pub(crate) type Refused = (&'static str, String, Option<Action>);

/// The resolve step of the namespaced kinds: the workspace a resource of `namespace` may use
/// (the namespace's binding, `spec.workspace`, the default: `plan::trust::choose_workspace`), as
/// a UUID. `Ok(Err(_))` is a refusal only a human can lift (the resource is Stalled).
pub(crate) async fn resolve_workspace(
    ctx: &Context,
    namespace: &str,
    spec_workspace: Option<&String>,
) -> Result<Result<String, Refused>, Error> {
    let binding = ctx
        .namespace_binding(namespace)
        .await
        .map_err(|e| Error::kube("read the namespace binding", e))?;
    let reference = match choose_workspace(
        spec_workspace.map(String::as_str),
        binding.as_deref(),
        namespace,
        tenancy(&ctx.config),
    ) {
        Ok(w) => w,
        Err(refused) => {
            let action = (refused.reason == reasons::INVALID_SPEC).then(Action::await_change);
            return Ok(Err((refused.reason, refused.message, action)));
        }
    };
    resolve_reference(ctx, &reference).await
}

/// A workspace id or slug as its UUID (cached), or the refusal when Portkey has no such
/// workspace.
async fn resolve_reference(
    ctx: &Context,
    reference: &str,
) -> Result<Result<String, Refused>, Error> {
    match ctx.workspaces.resolve(&ctx.portkey, reference).await {
        Ok(id) => Ok(Ok(id)),
        Err(e) if e.is_gone() => Ok(Err((
            reasons::WORKSPACE_NOT_FOUND,
            format!("Portkey has no workspace {reference:?}"),
            None,
        ))),
        Err(e) => Err(Error::portkey("resolve the workspace", e)),
    }
}

/// True when the resource carries `budgets.portkey-operator.io/paused: "true"`.
pub fn is_paused<K: Resource>(obj: &K) -> bool {
    obj.annotations()
        .get(PAUSED_ANNOTATION)
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// What a paused resource would change, for its condition message (empty: nothing).
fn pending_changes<C, U>(decision: &Decision<C, U>) -> String {
    match decision {
        Decision::InSync => String::new(),
        Decision::Blocked { message, .. } => message.clone(),
        Decision::Apply(PolicyAction::Create { .. }) => {
            "no Portkey policy exists (it would be created)".into()
        }
        Decision::Apply(PolicyAction::Update { changes, .. }) => FieldChange::summary(changes),
        Decision::Apply(PolicyAction::Replace { changes, .. }) => format!(
            "{} (the policy would be replaced)",
            FieldChange::summary(changes)
        ),
    }
}

/// True when a create that failed this way certainly made nothing in Portkey: the request never
/// left (connect failure) or was refused before it was carried out (invalid, unauthorised,
/// forbidden, not found, rate-limited). Everything else (timeouts, 5xx, 408, 409, 499, any other
/// status, an unreadable answer) may have created the policy, so the create-pending record stays.
pub(crate) fn definitely_not_created(e: &PortkeyError) -> bool {
    match e {
        PortkeyError::Transport { connect, .. } => *connect,
        PortkeyError::Validation { .. }
        | PortkeyError::Unauthorized { .. }
        | PortkeyError::Forbidden { .. }
        | PortkeyError::NotFound { .. }
        | PortkeyError::RateLimited { .. } => true,
        PortkeyError::Conflict { .. }
        | PortkeyError::Server { .. }
        | PortkeyError::Http { .. }
        | PortkeyError::Decode { .. }
        | PortkeyError::Config(_) => false,
    }
}

impl<R: PolicyResource> Run<'_, R> {
    fn generation(&self) -> Option<i64> {
        self.obj.meta().generation
    }

    /// The status fields every policy kind shares.
    fn ps(&mut self) -> &mut RemotePolicyStatus {
        R::policy_status(&mut self.status)
    }

    fn psr(&self) -> &RemotePolicyStatus {
        R::policy_status_ref(&self.status)
    }

    fn policies(&self) -> PolicyApi<'_, R::Kind> {
        self.ctx.portkey.policies::<R::Kind>()
    }

    /// Sets the conditions and `observedGeneration` from what this pass concluded.
    fn conclude(&mut self, outcome: Outcome) {
        let generation = self.generation();
        let now = self.now;
        conditions::apply(&mut self.ps().conditions, &outcome, generation, now);
        self.ps().observed_generation = generation;
        self.outcome = Some(outcome);
    }

    /// A state only a human can fix (Stalled); no Admin API write is made.
    fn terminal(&mut self, reason: &'static str, message: &str) {
        self.conclude(Outcome::Stalled {
            reason,
            message: message.to_owned(),
        });
    }

    fn failed(&mut self, e: &Error) {
        self.conclude(e.outcome());
    }

    fn paused(&self) -> bool {
        is_paused(&*self.obj)
    }

    async fn flush_status(&mut self) -> Result<(), kube::Error> {
        if self.obj.status() == Some(&self.status) {
            return Ok(());
        }
        self.obj = Cow::Owned(kube_ops::apply_status(&self.api, &*self.obj, &self.status).await?);
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx.event(&*self.obj, type_, reason, note).await;
    }

    fn pending_since(&self) -> Option<Timestamp> {
        super::pending_create(&*self.obj, self.psr().create_confirmed.as_deref())
    }

    /// Portkey shows what the pending create made: the status write ending this pass says so.
    fn confirm_create(&mut self) {
        if self.pending_since().is_some() {
            self.ps().create_confirmed = super::create_stamp(&*self.obj);
        }
    }

    /// The pass proper; `reconcile` has let it through the gate (see [`gate`]).
    async fn apply(&mut self) -> Result<Action, Error> {
        let refresh = Action::requeue(self.ctx.refresh_interval(R::INCLUDE_USAGE));
        let spec = self.obj.common();
        let observe = spec.management_policy == ManagementPolicy::Observe;

        // 1. Validate: nothing invalid ever reaches Portkey.
        if let Step::Stop(action) = self.validate() {
            return Ok(action);
        }
        // 2. Resolve the workspace: tenancy, then its UUID.
        let workspace_id = match self.resolve(&spec, refresh.clone()).await? {
            Step::Go(id) => id,
            Step::Stop(action) => return Ok(action),
        };
        let desired = self.obj.desired(&self.identity, &workspace_id);
        // 3. Observe the remote policy.
        let had_policy = self.psr().policy_id.is_some();
        let mut remote = match self
            .observe(&spec, &workspace_id, &desired, refresh.clone())
            .await?
        {
            Step::Go(remote) => remote,
            Step::Stop(action) => return Ok(action),
        };
        // A policy this resource manages is archived (or released) on deletion: the finalizer
        // goes on before anything is written to it (a create adds it with its pending record).
        if !observe && remote.is_some() && !kube_ops::has_finalizer(&*self.obj) {
            self.obj = Cow::Owned(
                kube_ops::add_finalizer(&self.api, &*self.obj)
                    .await
                    .map_err(|e| Error::kube("add the finalizer", e))?,
            );
        }
        // 4. Plan and 5. execute.
        let options = PlanOptions {
            management: spec.management_policy,
            on_immutable_change: spec.on_immutable_change,
        };
        let decision = plan(&desired, remote.as_ref(), options);
        let paused = self.paused();
        self.announce_pause(paused).await;
        let mut held = Held::Nothing;
        if self.ctx.config.dry_run
            && let Decision::Apply(action) = &decision
        {
            held = Held::DryRun(self.announce_dry_run(action, &workspace_id).await);
        }
        match decision {
            // Dry-run: nothing is written; the status below reports the policy as it is.
            _ if matches!(held, Held::DryRun(_)) => {}
            // Paused: nothing is written either; the status says what would change.
            _ if paused => held = Held::Paused(pending_changes(&decision)),
            Decision::InSync => {}
            Decision::Blocked {
                reason, message, ..
            } => held = Held::Blocked(reason, message),
            Decision::Apply(action) => {
                match self
                    .execute(action, &workspace_id, had_policy, remote.take())
                    .await?
                {
                    Step::Go(policy) => remote = policy,
                    Step::Stop(action) => return Ok(action),
                }
            }
        }
        // One-shot usage reset (annotation), on a policy in force that this resource manages.
        if !observe
            && !paused
            && !self.ctx.config.dry_run
            && let Some(p) = &remote
            && self.reset_usage(p.id().to_owned()).await?
        {
            remote = self.get_policy(p.id()).await?;
        }
        // 6. Report.
        self.report(remote.as_ref(), &desired, &workspace_id, observe, held)
            .await;
        Ok(refresh)
    }

    /// The reset-usage annotation: every bucket of the policy back to zero, once per token.
    /// The request is recorded in status first; a pass interrupted between the resets and
    /// their record repeats them (Portkey keeps no per-bucket reset time to check against).
    async fn reset_usage(&mut self, policy_id: String) -> Result<bool, Error> {
        let Some(token) = super::annotation_token(&*self.obj, RESET_USAGE_ANNOTATION) else {
            return Ok(false);
        };
        let Some(slot) = R::usage_reset(&mut self.status) else {
            return Ok(false);
        };
        if !super::one_shot_due(Some(&token), slot.as_ref()) {
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

    /// An Event when the paused annotation was just set or removed (the Synced reason says
    /// whether the last pass was paused).
    async fn announce_pause(&self, paused: bool) {
        if let Some((reason, note)) =
            conditions::pause_transition(&self.psr().conditions, paused, "Portkey is")
        {
            self.event(EventType::Normal, reason, note).await;
        }
    }

    /// Step 1: the admission rules again (a resource may have bypassed admission).
    fn validate(&mut self) -> Step<()> {
        let errors = self.ctx.admission_errors(R::SHORT, &*self.obj);
        if errors.is_empty() {
            return Step::Go(());
        }
        self.terminal(reasons::INVALID_SPEC, &summarize(&errors));
        Step::Stop(Action::await_change())
    }

    /// Step 2: the workspace this resource may use (namespace binding, spec, default), as a
    /// UUID. Terminal conditions for a refused or unknown workspace.
    async fn resolve(&mut self, spec: &CommonSpec, refresh: Action) -> Result<Step<String>, Error> {
        let namespace = self.obj.namespace().unwrap_or_default();
        match resolve_workspace(self.ctx, &namespace, spec.workspace.as_ref()).await? {
            Ok(id) => Ok(Step::Go(id)),
            Err((reason, message, action)) => {
                self.terminal(reason, &message);
                Ok(Step::Stop(action.unwrap_or(refresh)))
            }
        }
    }

    /// Step 3: the remote policy this resource has: the one recorded in status (confirmed gone
    /// before it is given up), the one `adoptPolicyId` names (in this workspace, not another
    /// resource's or installation's), or the oldest carrying its marker (adopt before create).
    /// Duplicates carrying its marker are archived on the way.
    async fn observe(
        &mut self,
        spec: &CommonSpec,
        workspace_id: &str,
        desired: &R::Desired,
        refresh: Action,
    ) -> Result<Step<Option<Policy<R>>>, Error> {
        let observe = spec.management_policy == ManagementPolicy::Observe;
        let grace = self.ctx.config.create_pending_grace;
        let waited = self.pending_since().map(|since| {
            Duration::try_from(self.now.duration_since(since)).unwrap_or(Duration::MAX)
        });
        let mut remote = None;
        // The recorded policy is not active: search with a new listing, not the shared one.
        let mut lost = false;
        if let Some(id) = self.psr().policy_id.clone() {
            lost = true;
            match self.lookup(&id).await? {
                Lookup::Active(p) => {
                    // Status is not authority: the recorded policy must be this resource's.
                    if let Some(refused) = self.refuse_recorded(&p, spec, workspace_id).await? {
                        self.terminal(refused.reason, &refused.message);
                        return Ok(Step::Stop(refresh));
                    }
                    lost = false;
                    remote = Some(p);
                }
                Lookup::Archived => {
                    // Nothing is written to it; whose it was is not said (it may be a forged id).
                    tracing::info!(policy = %id, "the recorded Portkey policy is archived");
                    self.ps().policy_id = None;
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
                        return Ok(Step::Stop(Action::requeue(
                            (grace - w).min(Duration::from_secs(5)),
                        )));
                    }
                    _ => {
                        tracing::info!(policy = %id, "the Portkey policy is not found, active or archived");
                        self.ps().policy_id = None;
                        self.ps().remote_status = None;
                    }
                },
            }
        } else if let Some(id) = spec.adopt_policy_id.clone() {
            let Some(p) = self.get_policy(&id).await? else {
                let msg = format!("spec.adoptPolicyId: Portkey has no active policy {id}");
                let reason = if observe {
                    reasons::REMOTE_POLICY_NOT_FOUND
                } else {
                    reasons::ADOPT_TARGET_NOT_FOUND
                };
                self.terminal(reason, &msg);
                return Ok(Step::Stop(refresh));
            };
            let refusal = self.refuse_adoption(&p, workspace_id).await?;
            if let Some(refusal) = refusal {
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
            remote = Some(p);
        }
        if observe {
            return Ok(Step::Go(remote));
        }
        // Adopt before create, and at every refresh: duplicates carrying the marker.
        let fresh_listing = self.pending_since().is_some() || lost;
        remote = self
            .reconcile_owned(workspace_id, desired, remote, fresh_listing)
            .await?;
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

    /// Steps 4–5: carries out the planner's action. A replacement is created before the old
    /// policy is archived, so a refused create never leaves the workspace without the budget.
    async fn execute(
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
                let spec_changed = self.psr().observed_generation != self.generation();
                let (reason, what) = if spec_changed {
                    ("Updated", "updated the Portkey policy")
                } else {
                    (
                        "DriftCorrected",
                        "the Portkey policy was changed outside the operator; reverted",
                    )
                };
                self.event(
                    EventType::Normal,
                    reason,
                    format!("{what}: {}", FieldChange::summary(&changes)),
                )
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

    /// Step 6: status and conditions from what Portkey holds.
    async fn report(
        &mut self,
        remote: Option<&Policy<R>>,
        desired: &R::Desired,
        workspace_id: &str,
        observe: bool,
        held: Held,
    ) {
        let generation = self.generation();
        self.ps().workspace_id = Some(workspace_id.to_owned());
        self.ps().observed_generation = generation;
        self.ps().remote_status = remote.map(|p| p.status().to_string());
        let events = self.obj.report(&mut self.status, remote, desired);
        for (type_, reason, note) in events {
            self.event(type_, reason, note).await;
        }
        let outcome = if let Held::DryRun(message) = held {
            // The spec is not in force, but reading Portkey worked.
            Outcome::Held {
                ready: false,
                ready_reason: reasons::DRY_RUN,
                ready_message: message,
                synced: TRUE,
                synced_reason: reasons::DRY_RUN,
                synced_message: "dry-run mode: read Portkey, wrote nothing (see the Would* Events)"
                    .into(),
            }
        } else if let Held::Paused(changes) = held {
            Outcome::paused(&changes, "the Portkey policy and its usage")
        } else {
            match held {
                // Observe mode: reading worked; the policy just differs from the spec.
                Held::Blocked(reasons::OUT_OF_SYNC, message) => Outcome::Held {
                    ready: false,
                    ready_reason: reasons::OUT_OF_SYNC,
                    ready_message: message,
                    synced: TRUE,
                    synced_reason: reasons::OBSERVED,
                    synced_message: "read the Portkey policy (managementPolicy Observe: no writes)"
                        .into(),
                },
                Held::Blocked(reason, message) => Outcome::Stalled { reason, message },
                Held::DryRun(_) | Held::Paused(_) | Held::Nothing => {
                    let policy = remote.map(|p| p.id().to_owned()).unwrap_or_default();
                    if observe {
                        Outcome::InForce {
                            reason: reasons::OBSERVED,
                            message: format!(
                                "Portkey policy {policy} matches the spec (observed, not managed)"
                            ),
                        }
                    } else {
                        Outcome::InForce {
                            reason: reasons::IN_FORCE,
                            message: format!("Portkey policy {policy} is in force as specified"),
                        }
                    }
                }
            }
        };
        self.conclude(outcome);
        self.ctx.synced(&self.key, self.now);
    }

    /// Dry-run: records what would be written as Events (nothing is sent to Portkey) and
    /// returns the summary for the conditions.
    async fn announce_dry_run(
        &mut self,
        action: &PolicyAction<<R::Kind as PolicyKind>::Create, <R::Kind as PolicyKind>::Update>,
        workspace_id: &str,
    ) -> String {
        let notes: Vec<(&str, String)> = match action {
            PolicyAction::Create { .. } => vec![(
                "WouldCreate",
                format!("dry-run: would create a Portkey policy in workspace {workspace_id}"),
            )],
            PolicyAction::Update { id, changes, .. } => vec![(
                "WouldUpdate",
                format!(
                    "dry-run: would update Portkey policy {id}: {}",
                    FieldChange::summary(changes)
                ),
            )],
            PolicyAction::Replace {
                old_id, changes, ..
            } => vec![
                (
                    "WouldCreate",
                    format!(
                        "dry-run: would create a replacement in workspace {workspace_id} (usage restarts from zero)"
                    ),
                ),
                (
                    "WouldArchive",
                    format!(
                        "dry-run: would archive Portkey policy {old_id} ({} cannot change in place)",
                        FieldChange::summary(changes)
                    ),
                ),
            ],
        };
        let message = notes
            .iter()
            .map(|(_, n)| n.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        for (reason, note) in notes {
            self.event(EventType::Normal, reason, note).await;
        }
        message
    }

    /// GET (with usage where the kind has it); `None` when the policy is gone (404, or 403
    /// `AB03`).
    async fn get_policy(&self, id: &str) -> Result<Option<Policy<R>>, Error> {
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
    async fn lookup(&self, id: &str) -> Result<Lookup<Policy<R>>, Error> {
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
    async fn refuse_recorded(
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
    async fn refuse_adoption(
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
    fn verify_recorded(
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
    async fn marked(
        &self,
        workspace_id: &str,
        fresh: bool,
    ) -> Result<Vec<super::OwnedEntry>, Error> {
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
                .map(|p| super::OwnedEntry {
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
    async fn reconcile_owned(
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
        let mut archived_any = false;
        for extra in active {
            let id = extra.id().to_owned();
            if self.paused() {
                continue;
            }
            if self.ctx.config.dry_run {
                self.event(
                    EventType::Normal,
                    "WouldArchive",
                    format!(
                        "dry-run: would archive Portkey policy {id} carrying this resource's marker (a duplicate of {})",
                        keep.id()
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
                    "archived Portkey policy {id} carrying this resource's marker; kept {}",
                    keep.id()
                ),
            )
            .await;
        }
        if archived_any {
            self.ctx.owned.invalidate(R::SHORT, workspace_id);
        }
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

    /// Whether the resource a marker names still exists (then its policy is not adoptable). A
    /// hashed identity or another kind cannot be looked up: taken as existing.
    async fn resource_exists(&self, marked: &ownership::MarkedBy) -> Result<bool, Error> {
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

    /// Archives one policy of this resource (404/403 `AB03`: already gone).
    async fn archive(&mut self, workspace_id: &str, id: &str) -> Result<(), Error> {
        self.ctx.write_permit().await;
        match self.policies().delete(id).await {
            Ok(()) => {}
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(Error::portkey("archive the replaced policy", e)),
        }
        self.ctx.owned.invalidate(R::SHORT, workspace_id);
        Ok(())
    }

    /// The write that ends a pass: the status (with the id of a policy just created, which a
    /// conflict cannot lose, and the create it confirms).
    ///
    /// The Event held back by the pass (a create's) is recorded at the same time as that write,
    /// not before it: one Kubernetes round trip fewer on the path of every create. It is
    /// recorded whether or not the pass or the write failed.
    async fn finish(&mut self) -> Result<(), kube::Error> {
        let held = (self.held_event.take()).map(|event| (self.obj.object_ref(&()), event));
        let ctx = self.ctx;
        let record = async {
            if let Some((regarding, (type_, reason, note))) = held {
                ctx.event_on(&regarding, type_, &reason, note).await;
            }
        };
        let write = async {
            if self.created {
                self.record_status().await
            } else {
                self.flush_status().await
            }
        };
        let (written, ()) = tokio::join!(write, record);
        written
    }

    /// Writes status; on a 409 (someone else wrote the object meanwhile) re-reads it and writes
    /// again, so the `policyId` of a policy just created is never lost.
    async fn record_status(&mut self) -> Result<(), kube::Error> {
        match self.flush_status().await {
            Err(e) if kube_ops::is_conflict(&e) => {
                self.obj = Cow::Owned(self.api.get(&self.obj.name_any()).await?);
                self.flush_status().await
            }
            other => other,
        }
    }

    /// Creates the policy, bracketed by the create-pending annotation (confirmed in status only
    /// once Portkey shows the policy); records the id in status before anything else. `Stop` while
    /// Portkey does not show the new policy yet.
    async fn create(
        &mut self,
        body: &<R::Kind as PolicyKind>::Create,
        workspace_id: &str,
        reason: &str,
        note: &str,
    ) -> Result<Step<Option<Policy<R>>>, Error> {
        let stamp = self.now.to_string();
        let policies = self.ctx.portkey.policies::<R::Kind>();
        let created = super::bracketed_create(
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

    /// The workspace UUID to clean up in: the one the resource may use now (its binding, spec
    /// and the operator's configuration), never the one recorded in status.
    async fn cleanup_workspace(&self) -> Result<Option<String>, Error> {
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
    async fn recorded_for_cleanup(
        &self,
        workspace_id: Option<&str>,
    ) -> Result<Option<String>, Error> {
        let Some(id) = self.psr().policy_id.clone() else {
            return Ok(None);
        };
        let Some(ws) = workspace_id else {
            self.event(
                EventType::Warning,
                "RecordedIdRejected",
                format!("status.policyId: Portkey policy {id} was not archived: the workspace this resource may use could not be resolved, so the policy cannot be verified as this resource's"),
            )
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
    async fn cleanup(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&*self.obj) {
            return Ok(Action::await_change());
        }
        if self.paused() {
            // Paused: no writes, deletion included; it finishes once the annotation is gone.
            self.announce_pause(true).await;
            let ready = conditions::is_true(&self.psr().conditions, conditions::READY);
            let message = format!(
                "annotation {PAUSED_ANNOTATION} is \"true\": the deletion waits until it is removed (nothing is archived meanwhile)"
            );
            self.conclude(Outcome::Held {
                ready,
                ready_reason: conditions::get(&self.psr().conditions, conditions::READY)
                    .map(|c| reason_const(&c.reason))
                    .unwrap_or(reasons::IN_FORCE),
                ready_message: conditions::get(&self.psr().conditions, conditions::READY)
                    .map(|c| c.message.clone())
                    .unwrap_or_default(),
                synced: FALSE,
                synced_reason: reasons::RECONCILIATION_PAUSED,
                synced_message: message,
            });
            self.flush_status()
                .await
                .map_err(|e| Error::kube("write the status", e))?;
            return Ok(Action::requeue(self.ctx.refresh_interval(R::INCLUDE_USAGE)));
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
    async fn cleanup_blocked(
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
        Ok(Action::requeue(self.ctx.refresh_interval(R::INCLUDE_USAGE)))
    }
}

/// The remote policy type of a resource kind.
type Policy<R> = <<R as PolicyResource>::Kind as PolicyKind>::Policy;

/// How a step ends: go on with a value, or stop the reconcile with an action.
pub(crate) enum Step<T> {
    Go(T),
    Stop(Action),
}

/// Why nothing was written this pass (besides being in sync).
enum Held {
    Nothing,
    /// Dry-run mode, with what would have been written.
    DryRun(String),
    /// The paused annotation, with what would change.
    Paused(String),
    /// The planner refused (Observe mode out of sync, an immutable change).
    Blocked(&'static str, String),
}

/// What a GET of the recorded policy found.
enum Lookup<P> {
    Active(P),
    Archived,
    Missing,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_refusals_and_connect_failures_are_certainly_not_created() {
        let http = |status| PortkeyError::Http {
            status,
            code: None,
            message: String::new(),
        };
        for ambiguous in [
            http(408),
            http(499),
            http(402),
            PortkeyError::Conflict {
                code: Some("AB07".into()),
                message: String::new(),
            },
            PortkeyError::Server {
                status: 502,
                code: None,
                message: String::new(),
            },
            PortkeyError::Transport {
                message: String::new(),
                timeout: true,
                connect: false,
            },
            PortkeyError::Decode {
                message: String::new(),
            },
        ] {
            assert!(!definitely_not_created(&ambiguous), "{ambiguous:?}");
        }
        for refused in [
            PortkeyError::Validation {
                status: 400,
                code: Some("AB01".into()),
                message: String::new(),
            },
            PortkeyError::Forbidden {
                code: Some("AB03".into()),
                message: String::new(),
                operation: None,
            },
            PortkeyError::RateLimited {
                retry_after: None,
                message: String::new(),
            },
            PortkeyError::Transport {
                message: String::new(),
                timeout: false,
                connect: true,
            },
        ] {
            assert!(definitely_not_created(&refused), "{refused:?}");
        }
    }
}
