//! Reconcile and cleanup of one policy resource (`UsageLimitPolicy`, `RateLimitPolicy`): the
//! machinery both kinds share; the kind-specific parts are the [`PolicyResource`] trait.
//!
//! Order of a reconcile (docs/architecture.md):
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

use jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};

use super::conditions::{Outcome, TRUE, reasons};
use super::engine::{self, Pass};
use super::kube_ops;
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

/// The engine's `Kind` and `Reconciler` of a policy kind (`UsageLimitPolicy`,
/// `RateLimitPolicy`): its status keeps the shared fields in `common`, its pass is this module's.
macro_rules! policy_kind {
    ($kind:ty, $status:ty, $usage:literal) => {
        impl $crate::controller::engine::Kind for $kind {
            type Status = $status;
            const USAGE: bool = $usage;

            fn api(client: kube::Client, obj: &Self) -> kube::Api<Self> {
                kube::Api::namespaced(
                    client,
                    &kube::ResourceExt::namespace(obj).unwrap_or_default(),
                )
            }
            $crate::controller::engine::kind_status!($status, in common, create);
        }

        impl $crate::controller::engine::Reconciler for $kind {
            fn gate(
                obj: &Self,
                ctx: &$crate::controller::Context,
                key: &str,
                now: jiff::Timestamp,
            ) -> Option<kube::runtime::controller::Action> {
                $crate::controller::policy::gate(obj, ctx, key, now)
            }
            fn apply(
                pass: &mut $crate::controller::engine::Pass<'_, Self>,
            ) -> impl std::future::Future<
                Output = Result<kube::runtime::controller::Action, $crate::controller::Error>,
            > + Send {
                pass.apply_policy()
            }
            fn cleanup(
                pass: &mut $crate::controller::engine::Pass<'_, Self>,
            ) -> impl std::future::Future<
                Output = Result<kube::runtime::controller::Action, $crate::controller::Error>,
            > + Send {
                pass.cleanup_policy()
            }
            fn after(obj: &Self, ctx: &$crate::controller::Context, status: &$status) {
                $crate::controller::policy::report_budget(ctx, obj, status)
            }
        }
    };
}
pub(crate) use policy_kind;

/// An Event to record: type, reason, note.
pub type EventSpec = (EventType, &'static str, String);

/// What differs between the policy kinds.
pub trait PolicyResource: engine::Kind + Resource<Scope = NamespaceResourceScope> {
    /// The Admin API family (`/policies/usage-limits` or `/policies/rate-limits`).
    type Kind: PolicyKind;
    /// The resolved desired policy.
    type Desired: PolicyDiff<
            Remote = <Self::Kind as PolicyKind>::Policy,
            Create = <Self::Kind as PolicyKind>::Create,
            Update = <Self::Kind as PolicyKind>::Update,
        > + Send
        + Sync;
    /// Read policies with `include_usage=true`.
    const INCLUDE_USAGE: bool;

    fn common(&self) -> CommonSpec;
    fn desired(&self, identity: &Identity, workspace_id: &str) -> Self::Desired;
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

/// Sets the budget metrics of `obj` from `status` (or drops them when it reports none).
pub(crate) fn report_budget<R: PolicyResource>(ctx: &Context, obj: &R, status: &R::Status) {
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

/// The freshness gate and the refresh read budget (`super::gate`) for a policy resource:
/// `Some` when this pass should not read Portkey now.
pub(crate) fn gate<R: PolicyResource>(
    obj: &R,
    ctx: &Context,
    key: &str,
    now: Timestamp,
) -> Option<Action> {
    let unset = R::Status::default();
    let status = obj.status().unwrap_or(&unset);
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
        ctx.interval(R::USAGE),
    )
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

mod cleanup;
mod execute;
mod observe;

impl<R: PolicyResource> Pass<'_, R> {
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

    /// The pass proper; the engine has let it through the gate (see [`gate`]).
    pub(crate) async fn apply_policy(&mut self) -> Result<Action, Error> {
        let refresh = Action::requeue(self.ctx.refresh_interval(R::USAGE));
        let spec = self.obj.common();
        let observe = spec.management_policy == ManagementPolicy::Observe;

        // 1. Validate: nothing invalid ever reaches Portkey.
        if let Step::Stop(action) = self.validate() {
            return Ok(action);
        }
        // 2. Resolve the workspace: tenancy, then its UUID.
        let workspace_id = match self
            .resolve_workspace(spec.workspace.as_ref(), refresh.clone())
            .await?
        {
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
        self.announce_pause(paused, "Portkey is").await;
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
            Outcome::dry_run(message)
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
