//! Planning for usage-limits policies: desired spec + observed remote → one decision.

use rust_decimal::Decimal;
use serde::Serialize;

use super::marker::Identity;
use super::{FieldChange, fmt_opt, same_conditions, wire_conditions};
use crate::api::{ManagementPolicy, OnImmutableChange, UsageLimitPolicySpec};
use crate::portkey::*;

/// The remote policy the spec asks for, fully resolved (workspace UUID, absolute threshold,
/// remote name with the ownership marker).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredUsagePolicy {
    pub name: String,
    pub workspace_id: String,
    pub limit_type: UsageLimitType,
    pub credit_limit: Decimal,
    pub alert_threshold: Option<Decimal>,
    pub periodic_reset: Option<PeriodicReset>,
    pub periodic_reset_days: Option<i64>,
    pub conditions: Vec<Condition>,
    pub group_by: Vec<GroupBy>,
}

/// The absolute alert threshold: `alertThreshold`, or `alertThresholdPercent` of the limit
/// (exact for cost; rounded down to a whole number for tokens and requests).
pub fn alert_threshold(spec: &UsageLimitPolicySpec) -> Option<Decimal> {
    if let Some(t) = spec.alert_threshold {
        return Some(t.decimal());
    }
    let pct = spec.alert_threshold_percent?;
    let raw = spec.credit_limit.decimal() * Decimal::from(pct) / Decimal::from(100);
    let value = match spec.limit_type {
        UsageLimitType::Cost => raw.normalize(),
        _ => raw.floor(),
    };
    (value > Decimal::ZERO).then_some(value)
}

impl DesiredUsagePolicy {
    pub fn from_spec(spec: &UsageLimitPolicySpec, identity: &Identity, workspace_id: &str) -> Self {
        DesiredUsagePolicy {
            name: identity.remote_name(spec.display_name.as_deref()),
            workspace_id: workspace_id.to_owned(),
            limit_type: spec.limit_type,
            credit_limit: spec.credit_limit.decimal(),
            alert_threshold: alert_threshold(spec),
            periodic_reset: spec.periodic_reset,
            periodic_reset_days: spec.periodic_reset_days.map(i64::from),
            conditions: wire_conditions(&spec.conditions),
            group_by: spec
                .group_by
                .iter()
                .map(|g| GroupBy { key: g.key.clone() })
                .collect(),
        }
    }

    pub fn create_body(&self) -> CreateUsageLimitsPolicy {
        CreateUsageLimitsPolicy {
            name: self.name.clone(),
            description: None,
            conditions: self.conditions.clone(),
            group_by: self.group_by.clone(),
            limit_type: self.limit_type,
            credit_limit: self.credit_limit,
            alert_threshold: self.alert_threshold,
            periodic_reset: self.periodic_reset,
            periodic_reset_days: self.periodic_reset_days,
            next_usage_reset_at: None,
            workspace_id: Some(self.workspace_id.clone()),
        }
    }
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
pub enum UsageAction {
    /// POST a new policy.
    Create { body: CreateUsageLimitsPolicy },
    /// PUT only the changed fields.
    Update {
        id: String,
        body: UpdateUsageLimitsPolicy,
        changes: Vec<FieldChange>,
    },
    /// Archive `old_id` and create a new policy: an immutable field changed. Usage restarts.
    Replace {
        old_id: String,
        body: CreateUsageLimitsPolicy,
        changes: Vec<FieldChange>,
    },
}

/// What the planner concluded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "decision", rename_all = "camelCase")]
pub enum Decision {
    /// Portkey already holds the desired policy.
    InSync,
    Apply(UsageAction),
    /// Something differs but may not be written; `reason` is a CamelCase condition reason.
    Blocked {
        reason: &'static str,
        message: String,
        changes: Vec<FieldChange>,
    },
}

fn immutable_changes(desired: &DesiredUsagePolicy, remote: &UsageLimitsPolicy) -> Vec<FieldChange> {
    let mut changes = Vec::new();
    if desired.limit_type != remote.limit_type {
        changes.push(FieldChange::new(
            "type",
            remote.limit_type,
            desired.limit_type,
        ));
    }
    if desired.group_by != remote.group_by {
        let keys = |g: &[GroupBy]| {
            g.iter()
                .map(|k| k.key.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        changes.push(FieldChange::new(
            "groupBy",
            keys(&remote.group_by),
            keys(&desired.group_by),
        ));
    }
    if desired.workspace_id != remote.workspace_id {
        changes.push(FieldChange::new(
            "workspace",
            &remote.workspace_id,
            &desired.workspace_id,
        ));
    }
    changes
}

/// The PUT body holding only what differs. `periodic_reset*` appear only when they differ: a PUT
/// carrying them reschedules the next reset even when the value is the same.
pub fn update_body(
    desired: &DesiredUsagePolicy,
    remote: &UsageLimitsPolicy,
) -> (UpdateUsageLimitsPolicy, Vec<FieldChange>) {
    let mut body = UpdateUsageLimitsPolicy::default();
    let mut changes = Vec::new();
    if remote.name.as_deref() != Some(desired.name.as_str()) {
        changes.push(FieldChange::new(
            "name",
            fmt_opt(remote.name.as_ref()),
            &desired.name,
        ));
        body.name = Some(desired.name.clone());
    }
    if !same_conditions(&desired.conditions, &remote.conditions) {
        changes.push(FieldChange::new(
            "conditions",
            serde_json::to_string(&remote.conditions).unwrap_or_default(),
            serde_json::to_string(&desired.conditions).unwrap_or_default(),
        ));
        body.conditions = Some(desired.conditions.clone());
    }
    if desired.credit_limit != remote.credit_limit {
        changes.push(FieldChange::new(
            "creditLimit",
            remote.credit_limit.normalize(),
            desired.credit_limit.normalize(),
        ));
        body.credit_limit = Some(desired.credit_limit);
    }
    if desired.alert_threshold != remote.alert_threshold {
        changes.push(FieldChange::new(
            "alertThreshold",
            fmt_opt(remote.alert_threshold.map(|d| d.normalize()).as_ref()),
            fmt_opt(desired.alert_threshold.map(|d| d.normalize()).as_ref()),
        ));
        body.alert_threshold = Nullable::set(desired.alert_threshold.map(Number));
    }
    if desired.periodic_reset != remote.periodic_reset {
        changes.push(FieldChange::new(
            "periodicReset",
            fmt_opt(remote.periodic_reset.as_ref()),
            fmt_opt(desired.periodic_reset.as_ref()),
        ));
        body.periodic_reset = Nullable::set(desired.periodic_reset);
    }
    if desired.periodic_reset_days != remote.periodic_reset_days {
        changes.push(FieldChange::new(
            "periodicResetDays",
            fmt_opt(remote.periodic_reset_days.as_ref()),
            fmt_opt(desired.periodic_reset_days.as_ref()),
        ));
        body.periodic_reset_days = Nullable::set(desired.periodic_reset_days);
    }
    (body, changes)
}

/// Decides what to do about one usage-limits policy. `remote` is the active remote policy the
/// resource owns (or adopts), `None` when there is none.
pub fn plan(
    desired: &DesiredUsagePolicy,
    remote: Option<&UsageLimitsPolicy>,
    options: PlanOptions,
) -> Decision {
    let observe = options.management == ManagementPolicy::Observe;
    let Some(remote) = remote else {
        return if observe {
            Decision::Blocked {
                reason: "RemotePolicyNotFound",
                message: "the observed Portkey policy does not exist or is archived; Observe never creates one".into(),
                changes: vec![],
            }
        } else {
            Decision::Apply(UsageAction::Create {
                body: desired.create_body(),
            })
        };
    };
    let immutable = immutable_changes(desired, remote);
    let (body, mutable) = update_body(desired, remote);
    if observe {
        let mut changes = immutable;
        changes.extend(mutable);
        return if changes.is_empty() {
            Decision::InSync
        } else {
            Decision::Blocked {
                reason: "OutOfSync",
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
            OnImmutableChange::Recreate => Decision::Apply(UsageAction::Replace {
                old_id: remote.id.clone(),
                body: desired.create_body(),
                changes: immutable,
            }),
            OnImmutableChange::Reject => Decision::Blocked {
                reason: "ImmutableFieldChanged",
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
        Decision::Apply(UsageAction::Update {
            id: remote.id.clone(),
            body,
            changes: mutable,
        })
    }
}
