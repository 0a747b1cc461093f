//! `UsageLimitPolicy`: a Portkey usage-limits policy (a budget) declared in Kubernetes.

// `#[kube(printcolumn(...))]` repeats `type_ = ...` per column, which clippy misreads as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;
use crate::portkey::{PeriodicReset, UsageLimitType};

/// A budget enforced by Portkey: requests matching `conditions` are counted per `groupBy` bucket,
/// and a bucket that reaches `creditLimit` is refused (HTTP 412) until the next reset.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "budgets.portkey-operator.io",
    version = "v1alpha1",
    kind = "UsageLimitPolicy",
    plural = "usagelimitpolicies",
    shortname = "ulp",
    category = "portkey",
    namespaced,
    status = "UsageLimitPolicyStatus",
    doc = "A Portkey usage-limits policy (budget) kept in force by portkey-budget-operator.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Limit", type_ = "string", json_path = ".spec.creditLimit"),
    printcolumn(name = "Reset", type_ = "string", json_path = ".status.resetSchedule"),
    printcolumn(
        name = "Peak%",
        type_ = "integer",
        json_path = ".status.usage.peakPercent"
    ),
    printcolumn(
        name = "Exhausted",
        type_ = "integer",
        json_path = ".status.usage.exhaustedBuckets"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Synced",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Synced\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!(has(self.alertThreshold) && has(self.alertThresholdPercent))").message("set at most one of alertThreshold and alertThresholdPercent"),
    validation = Rule::new("!(has(self.periodicReset) && has(self.periodicResetDays))").message("set at most one of periodicReset and periodicResetDays"),
    validation = Rule::new("quantity(string(self.creditLimit)).compareTo(quantity(self.type == 'tokens' ? '100' : '1')) >= 0").message("creditLimit must be at least 1 for cost (USD) and requests, and at least 100 for tokens"),
    validation = Rule::new("self.type == 'cost' || quantity(string(self.creditLimit)).isInteger()").message("creditLimit must be a whole number for tokens and requests"),
    validation = Rule::new("!has(self.alertThreshold) || (quantity(string(self.alertThreshold)).isGreaterThan(quantity('0')) && quantity(string(self.alertThreshold)).isLessThan(quantity(string(self.creditLimit))))").message("alertThreshold must be greater than 0 and less than creditLimit"),
    validation = Rule::new("self.type == 'cost' || !has(self.alertThreshold) || quantity(string(self.alertThreshold)).isInteger()").message("alertThreshold must be a whole number for tokens and requests"),
    validation = Rule::new(rules::OBSERVE_NEEDS_ADOPT).message(rules::OBSERVE_NEEDS_ADOPT_MSG),
    validation = Rule::new(rules::TYPE_IMMUTABLE).message(rules::TYPE_IMMUTABLE_MSG),
    validation = Rule::new(rules::GROUP_BY_IMMUTABLE).message(rules::GROUP_BY_IMMUTABLE_MSG),
    validation = Rule::new(rules::WORKSPACE_IMMUTABLE).message(rules::WORKSPACE_IMMUTABLE_MSG),
)]
pub struct UsageLimitPolicySpec {
    /// Name shown in Portkey (at most 200 characters). Default: `<namespace>/<name>`. The
    /// operator appends its ownership marker `[k8s:ulp:<namespace>/<name>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub display_name: Option<String>,
    /// Portkey workspace id (UUID) or slug. Optional when the namespace is bound to a workspace
    /// (annotation `budgets.portkey-operator.io/workspace`) or the operator has a default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    pub workspace: Option<String>,
    /// What is counted: `cost` (USD), `tokens` or `requests`. Immutable.
    #[serde(rename = "type")]
    pub limit_type: UsageLimitType,
    /// The budget per bucket: an integer or a quoted decimal (`"12.50"`); USD for cost.
    pub credit_limit: Money,
    /// Alert when a bucket reaches this absolute amount (less than `creditLimit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_threshold: Option<Money>,
    /// Alert when a bucket reaches this percentage of `creditLimit` (1–99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub alert_threshold_percent: Option<i32>,
    /// Calendar reset: `weekly` (Monday 00:00 UTC) or `monthly` (the 1st, 00:00 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset: Option<PeriodicReset>,
    /// Reset every N days (1–365) at 00:00 UTC. With neither reset field the budget is cumulative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 365))]
    pub periodic_reset_days: Option<i32>,
    /// Which requests count (all must match); 1–20 conditions.
    #[schemars(length(min = 1, max = 20))]
    pub conditions: Vec<PolicyCondition>,
    /// How usage is split into buckets; 1–5 distinct keys. Immutable.
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(validation = Rule::new(rules::GROUP_BY_DISTINCT).message(rules::GROUP_BY_DISTINCT_MSG))]
    pub group_by: Vec<GroupByKey>,
    /// `Archive` (default) archives the Portkey policy when this resource is deleted; `Retain`
    /// leaves it in force.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// `Manage` (default) or `Observe` (never write; report the policy named by `adoptPolicyId`).
    #[serde(default)]
    pub management_policy: ManagementPolicy,
    /// Take over this existing Portkey policy (its UUID) instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 36),
        pattern(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
    )]
    pub adopt_policy_id: Option<String>,
    /// `Reject` (default) refuses changes to `type`, `groupBy` and `workspace`; `Recreate`
    /// archives the Portkey policy and creates a new one, whose usage starts from zero.
    #[serde(default)]
    pub on_immutable_change: OnImmutableChange,
}

/// Events already recorded in the current reset period, so each is recorded once per bucket.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRecord {
    /// The period the lists belong to (the last reset instant, or `cumulative`).
    pub period: String,
    /// Buckets already reported with `AlertThresholdReached` (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub threshold_reached: Vec<String>,
    /// Buckets already reported with `BudgetExhausted` (at most 100).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub exhausted: Vec<String>,
}

/// Observed state of a `UsageLimitPolicy`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageLimitPolicyStatus {
    #[serde(flatten)]
    pub common: RemotePolicyStatus,
    /// Current usage as Portkey reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageSummary>,
    /// `monthly`, `weekly`, `every N days` or `never`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_schedule: Option<String>,
    /// When usage next returns to zero (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_reset_at: Option<Time>,
    /// When usage last returned to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_at: Option<Time>,
    /// Alert Events already recorded this period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertRecord>,
    /// The last usage reset of every bucket (annotation `budgets.portkey-operator.io/reset-usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_reset: Option<OneShot>,
}
