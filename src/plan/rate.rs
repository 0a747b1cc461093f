//! Planning for rate-limits policies.

use rust_decimal::Decimal;
use serde::Serialize;

use super::marker::Identity;
use super::policy::{Decision, PlanOptions, PolicyDiff, common};
use super::{FieldChange, wire_conditions};
use crate::api::RateLimitPolicySpec;
use crate::portkey::*;

/// The remote rate-limits policy the spec asks for, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredRatePolicy {
    pub name: String,
    pub workspace_id: String,
    pub limit_type: RateLimitType,
    pub unit: RateLimitUnit,
    pub value: Decimal,
    pub conditions: Vec<Condition>,
    pub group_by: Vec<GroupBy>,
}

impl DesiredRatePolicy {
    pub fn from_spec(spec: &RateLimitPolicySpec, identity: &Identity, workspace_id: &str) -> Self {
        DesiredRatePolicy {
            name: identity.remote_name(spec.display_name.as_deref()),
            workspace_id: workspace_id.to_owned(),
            limit_type: spec.limit_type,
            unit: spec.unit,
            value: Decimal::from(spec.value),
            conditions: wire_conditions(&spec.conditions),
            group_by: spec
                .group_by
                .iter()
                .map(|g| GroupBy { key: g.key.clone() })
                .collect(),
        }
    }
}

impl PolicyDiff for DesiredRatePolicy {
    type Remote = RateLimitsPolicy;
    type Create = CreateRateLimitsPolicy;
    type Update = UpdateRateLimitsPolicy;

    fn create_body(&self) -> CreateRateLimitsPolicy {
        CreateRateLimitsPolicy {
            name: self.name.clone(),
            description: None,
            conditions: self.conditions.clone(),
            group_by: self.group_by.clone(),
            limit_type: self.limit_type,
            unit: self.unit,
            value: self.value,
            workspace_id: Some(self.workspace_id.clone()),
        }
    }

    fn immutable_changes(&self, remote: &RateLimitsPolicy) -> Vec<FieldChange> {
        let mut changes = Vec::new();
        if self.limit_type != remote.limit_type {
            changes.push(FieldChange::new("type", remote.limit_type, self.limit_type));
        }
        changes.extend(common::group_by(&self.group_by, &remote.group_by));
        changes.extend(common::workspace(&self.workspace_id, &remote.workspace_id));
        changes
    }

    fn update_body(&self, remote: &RateLimitsPolicy) -> (UpdateRateLimitsPolicy, Vec<FieldChange>) {
        let mut body = UpdateRateLimitsPolicy::default();
        let mut changes = Vec::new();
        if let Some(c) = common::name(&self.name, remote.name.as_deref()) {
            changes.push(c);
            body.name = Some(self.name.clone());
        }
        if let Some(c) = common::conditions(&self.conditions, &remote.conditions) {
            changes.push(c);
            body.conditions = Some(self.conditions.clone());
        }
        if self.unit != remote.unit {
            changes.push(FieldChange::new("unit", remote.unit, self.unit));
            body.unit = Some(self.unit);
        }
        if self.value != remote.value {
            changes.push(FieldChange::new(
                "value",
                remote.value.normalize(),
                self.value.normalize(),
            ));
            body.value = Some(self.value);
        }
        (body, changes)
    }

    fn remote_id(remote: &RateLimitsPolicy) -> &str {
        &remote.id
    }
}

/// The decision for a rate-limits policy.
pub type RateDecision = Decision<CreateRateLimitsPolicy, UpdateRateLimitsPolicy>;

/// Decides what to do about one rate-limits policy.
pub fn plan(
    desired: &DesiredRatePolicy,
    remote: Option<&RateLimitsPolicy>,
    options: PlanOptions,
) -> RateDecision {
    super::policy::plan(desired, remote, options)
}
