//! The decision logic shared by every policy family (usage limits, rate limits): create when
//! nothing exists, update only what differs, replace (or refuse) on immutable changes, never
//! write in Observe mode.

use crate::api::conditions::reasons;
use serde::Serialize;

use super::FieldChange;
use crate::api::{ManagementPolicy, OnImmutableChange};

/// A desired remote policy that can be compared with what Portkey holds.
pub trait PolicyDiff {
    /// The policy as Portkey reports it.
    type Remote;
    /// POST body.
    type Create: Clone + PartialEq + std::fmt::Debug + Serialize;
    /// PUT body.
    type Update: Clone + PartialEq + std::fmt::Debug + Serialize;

    fn create_body(&self) -> Self::Create;
    /// Fields that differ and cannot change in place (type, groupBy, workspace, …).
    fn immutable_changes(&self, remote: &Self::Remote) -> Vec<FieldChange>;
    /// The PUT holding only what differs, and the list of differences.
    fn update_body(&self, remote: &Self::Remote) -> (Self::Update, Vec<FieldChange>);
    fn remote_id(remote: &Self::Remote) -> &str;
}

/// Planning knobs from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PlanOptions {
    pub management: ManagementPolicy,
    pub on_immutable_change: OnImmutableChange,
}

/// A write to make in Portkey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum PolicyAction<C, U> {
    /// POST a new policy.
    Create { body: C },
    /// PUT only the changed fields.
    Update {
        id: String,
        body: U,
        changes: Vec<FieldChange>,
    },
    /// Archive `old_id` and create a new policy: an immutable field changed. Usage restarts.
    Replace {
        old_id: String,
        body: C,
        changes: Vec<FieldChange>,
    },
}

/// What the planner concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision<C, U> {
    /// Portkey already holds the desired policy.
    InSync,
    Apply(PolicyAction<C, U>),
    /// Something differs but may not be written; `reason` is a CamelCase condition reason.
    Blocked {
        reason: &'static str,
        message: String,
        changes: Vec<FieldChange>,
    },
}

/// The decision for one policy. `remote` is the active remote policy the resource owns (or
/// adopts), `None` when there is none.
pub fn plan<D: PolicyDiff>(
    desired: &D,
    remote: Option<&D::Remote>,
    options: PlanOptions,
) -> Decision<D::Create, D::Update> {
    let observe = options.management == ManagementPolicy::Observe;
    let Some(remote) = remote else {
        return if observe {
            Decision::Blocked {
                reason: reasons::REMOTE_POLICY_NOT_FOUND,
                message: "the observed Portkey policy does not exist or is archived; Observe never creates one".into(),
                changes: vec![],
            }
        } else {
            Decision::Apply(PolicyAction::Create {
                body: desired.create_body(),
            })
        };
    };
    let immutable = desired.immutable_changes(remote);
    let (body, mutable) = desired.update_body(remote);
    if observe {
        let mut changes = immutable;
        changes.extend(mutable);
        return if changes.is_empty() {
            Decision::InSync
        } else {
            Decision::Blocked {
                reason: reasons::OUT_OF_SYNC,
                message: format!(
                    "the Portkey policy differs from the spec ({}); Observe never writes",
                    FieldChange::summary(&changes)
                ),
                changes,
            }
        };
    }
    if !immutable.is_empty() {
        return match options.on_immutable_change {
            OnImmutableChange::Recreate => Decision::Apply(PolicyAction::Replace {
                old_id: D::remote_id(remote).to_owned(),
                body: desired.create_body(),
                changes: immutable,
            }),
            OnImmutableChange::Reject => Decision::Blocked {
                reason: reasons::IMMUTABLE_FIELD_CHANGED,
                message: format!(
                    "{} cannot change in place; set onImmutableChange: Recreate to archive the policy and create a new one (its usage restarts from zero)",
                    FieldChange::summary(&immutable)
                ),
                changes: immutable,
            },
        };
    }
    if mutable.is_empty() {
        Decision::InSync
    } else {
        Decision::Apply(PolicyAction::Update {
            id: D::remote_id(remote).to_owned(),
            body,
            changes: mutable,
        })
    }
}

/// Field differences shared by both policy families: name, conditions, group-by, workspace.
pub mod common {
    use super::super::{FieldChange, fmt_opt, same_conditions};
    use crate::portkey::{Condition, GroupBy};

    pub fn name(desired: &str, remote: Option<&str>) -> Option<FieldChange> {
        (remote != Some(desired))
            .then(|| FieldChange::new("name", fmt_opt(remote.as_ref()), desired))
    }

    pub fn conditions(desired: &[Condition], remote: &[Condition]) -> Option<FieldChange> {
        (!same_conditions(desired, remote)).then(|| {
            FieldChange::new(
                "conditions",
                serde_json::to_string(remote).unwrap_or_default(),
                serde_json::to_string(desired).unwrap_or_default(),
            )
        })
    }

    pub fn group_by(desired: &[GroupBy], remote: &[GroupBy]) -> Option<FieldChange> {
        let keys = |g: &[GroupBy]| {
            g.iter()
                .map(|k| k.key.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        (desired != remote).then(|| FieldChange::new("groupBy", keys(remote), keys(desired)))
    }

    pub fn workspace(desired: &str, remote: &str) -> Option<FieldChange> {
        (desired != remote).then(|| FieldChange::new("workspace", remote, desired))
    }
}
