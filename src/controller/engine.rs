//! The reconcile engine: one pass over one resource, written once for every kind.
//!
//! A kind says what differs ([`Kind`]: where its status keeps the conditions, how its `Api` is
//! made; [`Reconciler`]: its gate, its apply and its cleanup, in its own module). The engine
//! owns what every kind shares:
//! - the pass state ([`Pass`]: the object, borrowed until the pass writes it, the status being
//!   built, the outcome, the ownership identity);
//! - conditions from one outcome (`conclude`, `terminal`), Events, the pause announcement and
//!   the paused head of a deletion;
//! - the create bracket's confirmation (`pending_since`, `confirm_create`);
//! - the end of a pass: a failure mapped to conditions, the status written once (with the id
//!   of a create, re-read and written again on a conflict), the Event held back by a create,
//!   the readiness metrics.
//!
//! Adding a kind: a `Kind` and a `Reconciler` impl in the kind's controller module, and one
//! line in `controller::run` (docs/architecture.md, "Adding a kind").

use std::borrow::Cow;
use std::future::Future;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use super::conditions::{self, Outcome};
use super::kube_ops::{self, Managed};
use super::{Context, Error};
use crate::api::ShortName;
use crate::plan::{FieldChange, Identity};

/// What the engine needs to know of a kind's resource and status.
pub trait Kind: Managed + ShortName {
    /// The kind's status.
    type Status: Default + Clone + PartialEq + Serialize + Send + Sync;
    /// Refreshed at the usage interval (it reports usage or limits), else at the resync one.
    const USAGE: bool;

    /// The `Api` its writes go through (namespaced or cluster-wide).
    fn api(client: Client, obj: &Self) -> Api<Self>;
    fn status(&self) -> Option<&Self::Status>;
    fn conditions(status: &Self::Status) -> &[Condition];
    fn conditions_mut(status: &mut Self::Status) -> &mut Vec<Condition>;
    fn observed_generation(status: &Self::Status) -> Option<i64>;
    fn set_observed_generation(status: &mut Self::Status, generation: Option<i64>);
    /// `status.createConfirmed`, for kinds that create remote objects.
    fn create_confirmed(_status: &Self::Status) -> Option<&str> {
        None
    }
    fn set_create_confirmed(_status: &mut Self::Status, _stamp: Option<String>) {}
}

/// The `Kind` accessors of a status whose shared fields (`conditions`, `observedGeneration`,
/// and with `create` also `createConfirmed`) sit at its top level, or in the named field
/// (`common` for the policy kinds).
macro_rules! kind_status {
    ($status:ty $(, in $field:ident)?) => {
        fn status(&self) -> Option<&$status> {
            self.status.as_ref()
        }
        fn conditions(
            status: &$status,
        ) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
            &status$(.$field)?.conditions
        }
        fn conditions_mut(
            status: &mut $status,
        ) -> &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
            &mut status$(.$field)?.conditions
        }
        fn observed_generation(status: &$status) -> Option<i64> {
            status$(.$field)?.observed_generation
        }
        fn set_observed_generation(status: &mut $status, generation: Option<i64>) {
            status$(.$field)?.observed_generation = generation;
        }
    };
    ($status:ty $(, in $field:ident)?, create) => {
        $crate::controller::engine::kind_status!($status $(, in $field)?);
        fn create_confirmed(status: &$status) -> Option<&str> {
            status$(.$field)?.create_confirmed.as_deref()
        }
        fn set_create_confirmed(status: &mut $status, stamp: Option<String>) {
            status$(.$field)?.create_confirmed = stamp;
        }
    };
}
pub(crate) use kind_status;

/// A kind's part of a pass.
pub trait Reconciler: Kind {
    /// A pass the freshness gate (or the refresh read budget) turns away before anything is
    /// copied: `Some(requeue)`.
    fn gate(obj: &Self, ctx: &Context, key: &str, now: Timestamp) -> Option<Action>;
    /// The pass proper (validate, resolve, observe, plan, execute, report).
    fn apply(pass: &mut Pass<'_, Self>) -> impl Future<Output = Result<Action, Error>> + Send;
    /// The deletion (the paused head is the engine's: this runs only when not paused).
    fn cleanup(pass: &mut Pass<'_, Self>) -> impl Future<Output = Result<Action, Error>> + Send;
    /// After a successful pass or a gated one (e.g. the budget metrics).
    fn after(_obj: &Self, _ctx: &Context, _status: &Self::Status) {}
}

/// One pass over one resource.
pub struct Pass<'a, K: Kind> {
    pub(crate) ctx: &'a Context,
    pub(crate) api: Api<K>,
    /// The cached object, copied only once the pass writes it (a refresh that changes nothing
    /// copies nothing of it).
    pub(crate) obj: Cow<'a, K>,
    /// `kind/namespace/name`, for the in-memory last-sync times.
    pub(crate) key: String,
    pub(crate) identity: Identity,
    pub(crate) status: K::Status,
    pub(crate) now: Timestamp,
    /// What this pass concluded (for the readiness metrics).
    pub(crate) outcome: Option<Outcome>,
    /// A remote object was created this pass: its id must reach the status.
    pub(crate) created: bool,
    /// A create's Event, recorded when the pass ends beside its status write.
    pub(crate) held_event: Option<(EventType, String, String)>,
}

/// Reconciles one resource of any kind (or cleans it up when it is being deleted).
pub async fn reconcile<K: Reconciler>(obj: &K, ctx: &Context) -> Result<Action, Error> {
    let key = super::key_of(obj);
    // Whole seconds, as the API server keeps the times a status holds: a time with more
    // precision would make every pass write the status again (a write that changes nothing).
    let now =
        Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_else(|_| Timestamp::now());
    if obj.meta().deletion_timestamp.is_none()
        && let Some(action) = K::gate(obj, ctx, &key, now)
    {
        let unset = K::Status::default();
        K::after(obj, ctx, obj.status().unwrap_or(&unset));
        return Ok(action);
    }
    let mut pass = Pass::new(obj, ctx, key, now);
    let (kind, namespace, name) = (
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any(),
    );
    if obj.meta().deletion_timestamp.is_some() {
        ctx.metrics.forget(&kind, &namespace, &name);
        ctx.forget_sync(&pass.key);
        if super::policy::is_paused(obj) {
            return pass.deletion_paused().await;
        }
        return K::cleanup(&mut pass).await;
    }
    let result = K::apply(&mut pass).await;
    if let Err(e) = &result
        && !e.is_conflict()
    {
        pass.conclude(e.outcome());
    }
    let flushed = pass.finish().await;
    if let Some(outcome) = &pass.outcome {
        ctx.metrics.outcome(
            &kind,
            &namespace,
            &name,
            outcome,
            K::conditions(&pass.status),
        );
    }
    match (result, flushed) {
        (Ok(action), Ok(())) => {
            K::after(obj, ctx, &pass.status);
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

impl<'a, K: Kind> Pass<'a, K> {
    fn new(obj: &'a K, ctx: &'a Context, key: String, now: Timestamp) -> Self {
        Pass {
            ctx,
            api: K::api(ctx.client.clone(), obj),
            identity: ctx
                .config
                .identity(K::SHORT, obj.namespace().as_deref(), &obj.name_any()),
            status: obj.status().cloned().unwrap_or_default(),
            key,
            obj: Cow::Borrowed(obj),
            now,
            outcome: None,
            created: false,
            held_event: None,
        }
    }

    pub(crate) fn generation(&self) -> Option<i64> {
        self.obj.meta().generation
    }

    pub(crate) fn conditions(&self) -> &[Condition] {
        K::conditions(&self.status)
    }

    /// Sets the conditions and `observedGeneration` from what this pass concluded.
    pub(crate) fn conclude(&mut self, outcome: Outcome) {
        let generation = self.generation();
        conditions::apply(
            K::conditions_mut(&mut self.status),
            &outcome,
            generation,
            self.now,
        );
        K::set_observed_generation(&mut self.status, generation);
        self.outcome = Some(outcome);
    }

    /// A state only a human can fix (Stalled); no Admin API write is made.
    pub(crate) fn terminal(&mut self, reason: &'static str, message: &str) {
        self.conclude(Outcome::Stalled {
            reason,
            message: message.to_owned(),
        });
    }

    pub(crate) async fn event(&self, type_: EventType, reason: &str, note: String) {
        self.ctx.event(&*self.obj, type_, reason, note).await;
    }

    /// The paused annotation is set.
    pub(crate) fn paused(&self) -> bool {
        super::policy::is_paused(&*self.obj)
    }

    /// An Event when the paused annotation was just set or removed (`subject`: "the key is").
    pub(crate) async fn announce_pause(&self, paused: bool, subject: &str) {
        if let Some((reason, note)) =
            conditions::pause_transition(self.conditions(), paused, subject)
        {
            self.event(EventType::Normal, reason, note).await;
        }
    }

    /// The resolve step of a namespaced kind: the workspace UUID this resource may use
    /// (`policy::resolve_workspace`), or a terminal condition and the requeue it asks for.
    pub(crate) async fn resolve_workspace(
        &mut self,
        spec_workspace: Option<&String>,
        refresh: Action,
    ) -> Result<super::policy::Step<String>, Error> {
        let namespace = self.obj.namespace().unwrap_or_default();
        match super::policy::resolve_workspace(self.ctx, &namespace, spec_workspace).await? {
            Ok(id) => Ok(super::policy::Step::Go(id)),
            Err((reason, message, action)) => {
                self.terminal(reason, &message);
                Ok(super::policy::Step::Stop(action.unwrap_or(refresh)))
            }
        }
    }

    /// The Event of a write that made Portkey hold the spec again: `Updated` when the spec
    /// changed since the last pass, else `DriftCorrected` (someone changed Portkey). `what`
    /// names what was written ("the key's limits").
    pub(crate) async fn announce_update(&self, what: &str, changes: &[FieldChange]) {
        let spec_changed = K::observed_generation(&self.status) != self.generation();
        let (reason, note) = if spec_changed {
            ("Updated", format!("updated {what}"))
        } else {
            (
                "DriftCorrected",
                format!("{what} were changed outside the operator; reverted"),
            )
        };
        self.event(
            EventType::Normal,
            reason,
            format!("{note}: {}", FieldChange::summary(changes)),
        )
        .await;
    }

    /// A recorded id that deletion could not verify (the resource's workspace did not
    /// resolve): left as it is, with a Warning Event naming the field.
    pub(crate) async fn unverified_on_deletion(&self, field: &str, object: &str, id: &str) {
        self.event(
            EventType::Warning,
            "RecordedIdRejected",
            format!("{field}: {object} {id} was left as it is: the workspace this resource may use could not be resolved, so it cannot be verified as this resource's"),
        )
        .await;
    }

    /// When a create was sent whose result this resource has not seen through.
    pub(crate) fn pending_since(&self) -> Option<Timestamp> {
        super::pending_create(&*self.obj, K::create_confirmed(&self.status))
    }

    /// Portkey shows what the pending create made: the status write ending this pass says so.
    pub(crate) fn confirm_create(&mut self) {
        if self.pending_since().is_some() {
            let stamp = super::create_stamp(&*self.obj);
            K::set_create_confirmed(&mut self.status, stamp);
        }
    }

    /// Writes the status if it changed.
    pub(crate) async fn flush_status(&mut self) -> Result<(), kube::Error> {
        if self.obj.status() == Some(&self.status) {
            return Ok(());
        }
        self.obj = Cow::Owned(kube_ops::apply_status(&self.api, &*self.obj, &self.status).await?);
        Ok(())
    }

    /// Writes the status; on a 409 (someone else wrote the object meanwhile) re-reads it and
    /// writes again, so an id just recorded is never lost.
    pub(crate) async fn record_status(&mut self) -> Result<(), kube::Error> {
        match self.flush_status().await {
            Err(e) if kube_ops::is_conflict(&e) => {
                self.obj = Cow::Owned(self.api.get(&self.obj.name_any()).await?);
                self.flush_status().await
            }
            other => other,
        }
    }

    /// The write that ends a pass: the status (with the id of an object just created, which a
    /// conflict cannot lose, and the create it confirms). The Event held back by a create is
    /// recorded at the same time as that write, whether or not the pass or the write failed.
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

    /// A deletion while paused: nothing is written to Portkey; it finishes once the annotation
    /// is gone. Ready keeps what it said.
    async fn deletion_paused(&mut self) -> Result<Action, Error> {
        if !kube_ops::has_finalizer(&*self.obj) {
            return Ok(Action::await_change());
        }
        self.announce_pause(true, "Portkey is").await;
        let ready = conditions::get(self.conditions(), conditions::READY).cloned();
        self.conclude(Outcome::deletion_paused(ready.as_ref()));
        self.flush_status()
            .await
            .map_err(|e| Error::kube("write the status", e))?;
        Ok(Action::requeue(self.ctx.refresh_interval(K::USAGE)))
    }
}
