//! `WorkspaceBudget`: the inline budgets and rate limits of one Portkey workspace.

// `#[kube(printcolumn(...))]` repeats `type_ = ...` per column, which clippy misreads as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;
use crate::portkey::{PeriodicReset, RateLimitType, RateLimitUnit, UsageLimitType};

/// A workspace budget (`usage_limits[]` on the workspace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(rules::NO_REQUESTS_BUDGET).message("workspace budgets take type cost or tokens (Portkey has no requests budget on workspaces)"),
    validation = Rule::new(rules::ONE_RESET_FORM).message("set at most one of periodicReset and periodicResetDays"),
    validation = Rule::new(rules::LIMIT_AT_LEAST_ONE).message("creditLimit must be at least 1"),
    validation = Rule::new(rules::TOKENS_WHOLE).message(rules::TOKENS_WHOLE_MSG),
    validation = Rule::new(rules::ALERT_BELOW_LIMIT).message(rules::ALERT_BELOW_LIMIT_MSG),
)]
pub struct WorkspaceUsageLimitSpec {
    /// `cost` (USD) or `tokens`.
    #[serde(rename = "type")]
    pub limit_type: UsageLimitType,
    /// The budget: an integer or a quoted decimal (`"500.00"`).
    pub credit_limit: Money,
    /// Alert at this amount (less than `creditLimit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_threshold: Option<Money>,
    /// `weekly` (Sunday 00:00 UTC for workspaces) or `monthly` (the 1st, 00:00 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset: Option<PeriodicReset>,
    /// Reset every N days (1–365) at 00:00 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 365))]
    pub periodic_reset_days: Option<i32>,
}

/// A workspace rate limit (`rate_limits[]` on the workspace).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.unit != 'rpw'").message("workspace rate limits take unit rpm, rph or rpd"))]
pub struct WorkspaceRateLimitSpec {
    /// `requests` or `tokens`.
    #[serde(rename = "type")]
    pub limit_type: RateLimitType,
    /// `rpm`, `rph` or `rpd`.
    pub unit: RateLimitUnit,
    /// Allowed per window (1 to 10^12).
    #[schemars(range(min = 1, max = 1_000_000_000_000i64))]
    pub value: i64,
}

/// What happens to the workspace's limits when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum WorkspaceDeletionPolicy {
    /// Remove the limits this resource set (others stay).
    #[default]
    Clear,
    /// Leave the limits in force.
    Retain,
}

/// Which of the workspace's limits a `WorkspaceBudget` manages.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum LimitOwnership {
    /// Only the limits it declares (usage limits by `type`, rate limits by `type` and `unit`);
    /// any other limit on the workspace (set in the Portkey UI, say) is left as it is and
    /// listed in `status.unmanagedLimits`.
    #[default]
    Declared,
    /// The whole lists: the workspace holds exactly the declared limits; others are removed.
    All,
}

/// Budgets and rate limits of one Portkey workspace, e.g. "Marketing gets $500/month, alert at
/// $400" and "120 requests per minute".
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "budgets.portkey-operator.io",
    version = "v1alpha1",
    kind = "WorkspaceBudget",
    plural = "workspacebudgets",
    shortname = "wsb",
    category = "portkey",
    status = "WorkspaceBudgetStatus",
    doc = "Budgets and rate limits of one Portkey workspace, kept in force by portkey-budget-operator.",
    printcolumn(name = "Workspace", type_ = "string", json_path = ".spec.workspace"),
    printcolumn(name = "Budget", type_ = "string", json_path = ".status.budget"),
    printcolumn(name = "Reset", type_ = "string", json_path = ".status.reset"),
    printcolumn(name = "RateLimit", type_ = "string", json_path = ".status.rateLimit"),
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
#[x_kube(validation = Rule::new("self.workspace == oldSelf.workspace").message("workspace is immutable; create another WorkspaceBudget for another workspace"))]
pub struct WorkspaceBudgetSpec {
    /// Portkey workspace id (UUID) or slug.
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    pub workspace: String,
    /// At most one budget per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(validation = Rule::new("self.all(l, self.exists_one(m, m.type == l.type))").message("at most one usage limit per type"))]
    pub usage_limits: Vec<WorkspaceUsageLimitSpec>,
    /// At most one rate limit per type and unit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 6))]
    #[x_kube(validation = Rule::new(rules::RATE_PER_TYPE_AND_UNIT).message(rules::RATE_PER_TYPE_AND_UNIT_MSG))]
    pub rate_limits: Vec<WorkspaceRateLimitSpec>,
    /// `Clear` (default): on delete, remove the limits this resource set; `Retain`: keep them.
    #[serde(default)]
    pub deletion_policy: WorkspaceDeletionPolicy,
    /// `Declared` (default): manage only the limits declared here and keep any other;
    /// `All`: own the workspace's whole lists (undeclared limits are removed).
    #[serde(default)]
    pub limit_ownership: LimitOwnership,
}

/// Observed state of a `WorkspaceBudget`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkspaceBudgetStatus {
    /// The workspace UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the limits are in force as specified) and `Synced` (the last reconcile succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// The budgets in force as Portkey reports them, e.g. `500 cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Their reset schedules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
    /// The rate limits in force, e.g. `120 requests rpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The earliest next reset of the workspace's budgets (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_reset_at: Option<Time>,
    /// When the workspace's budgets last reset, as Portkey reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_at: Option<Time>,
    /// Limits on the workspace that this resource does not declare and leaves alone
    /// (`limitOwnership: Declared`), e.g. `usage: 500 tokens`, `rate: 10 tokens rpd`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub unmanaged_limits: Vec<String>,
}
