//! Planning for usage-limits policies: desired spec + observed remote → one decision.

use rust_decimal::Decimal;
use serde::Serialize;

use super::marker::Identity;
use super::policy::{PolicyDiff, common};
use super::{FieldChange, fmt_opt, wire_conditions};
use crate::api::UsageLimitPolicySpec;

pub use super::policy::{Decision, PlanOptions, PolicyAction};
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

impl PolicyDiff for DesiredUsagePolicy {
    type Remote = UsageLimitsPolicy;
    type Create = CreateUsageLimitsPolicy;
    type Update = UpdateUsageLimitsPolicy;

    fn create_body(&self) -> CreateUsageLimitsPolicy {
        DesiredUsagePolicy::create_body(self)
    }

    fn immutable_changes(&self, remote: &UsageLimitsPolicy) -> Vec<FieldChange> {
        let mut changes = Vec::new();
        if self.limit_type != remote.limit_type {
            changes.push(FieldChange::new("type", remote.limit_type, self.limit_type));
        }
        changes.extend(common::group_by(&self.group_by, &remote.group_by));
        changes.extend(common::workspace(&self.workspace_id, &remote.workspace_id));
        changes
    }

    /// `periodic_reset*` appear only when they differ: a PUT carrying them reschedules the next
    /// reset even when the value is the same.
    fn update_body(
        &self,
        remote: &UsageLimitsPolicy,
    ) -> (UpdateUsageLimitsPolicy, Vec<FieldChange>) {
        let mut body = UpdateUsageLimitsPolicy::default();
        let mut changes = Vec::new();
        if let Some(c) = common::name(&self.name, remote.name.as_deref()) {
            changes.push(c);
            body.name = Some(self.name.clone());
        }
        if let Some(c) = common::conditions(&self.conditions, &remote.conditions) {
            changes.push(c);
            body.conditions = Some(self.conditions.clone());
        }
        if self.credit_limit != remote.credit_limit {
            changes.push(FieldChange::new(
                "creditLimit",
                remote.credit_limit.normalize(),
                self.credit_limit.normalize(),
            ));
            body.credit_limit = Some(self.credit_limit);
        }
        if self.alert_threshold != remote.alert_threshold {
            changes.push(FieldChange::new(
                "alertThreshold",
                fmt_opt(remote.alert_threshold.map(|d| d.normalize()).as_ref()),
                fmt_opt(self.alert_threshold.map(|d| d.normalize()).as_ref()),
            ));
            body.alert_threshold = Nullable::set(self.alert_threshold.map(Number));
        }
        if self.periodic_reset != remote.periodic_reset {
            changes.push(FieldChange::new(
                "periodicReset",
                fmt_opt(remote.periodic_reset.as_ref()),
                fmt_opt(self.periodic_reset.as_ref()),
            ));
            body.periodic_reset = Nullable::set(self.periodic_reset);
        }
        if self.periodic_reset_days != remote.periodic_reset_days {
            changes.push(FieldChange::new(
                "periodicResetDays",
                fmt_opt(remote.periodic_reset_days.as_ref()),
                fmt_opt(self.periodic_reset_days.as_ref()),
            ));
            body.periodic_reset_days = Nullable::set(self.periodic_reset_days);
        }
        (body, changes)
    }

    fn remote_id(remote: &UsageLimitsPolicy) -> &str {
        &remote.id
    }
}

/// The decision for a usage-limits policy.
pub type UsageDecision = Decision<CreateUsageLimitsPolicy, UpdateUsageLimitsPolicy>;
/// A write for a usage-limits policy.
pub type UsageAction = PolicyAction<CreateUsageLimitsPolicy, UpdateUsageLimitsPolicy>;

/// Decides what to do about one usage-limits policy.
pub fn plan(
    desired: &DesiredUsagePolicy,
    remote: Option<&UsageLimitsPolicy>,
    options: PlanOptions,
) -> UsageDecision {
    super::policy::plan(desired, remote, options)
}
