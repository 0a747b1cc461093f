//! `RateLimitPolicy`: a Portkey rate-limits policy (request or token throttling).

// `#[kube(printcolumn(...))]` repeats `type_ = ...` per column, which clippy misreads as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;
use crate::portkey::{RateLimitType, RateLimitUnit};

/// Throttling enforced by Portkey: requests matching `conditions` are counted per `groupBy`
/// bucket, and a bucket over `value` per `unit` gets HTTP 429.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "budgets.portkey-operator.io",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    shortname = "rlp",
    category = "portkey",
    namespaced,
    status = "RateLimitPolicyStatus",
    doc = "A Portkey rate-limits policy kept in force by portkey-budget-operator.",
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.type"),
    printcolumn(name = "Value", type_ = "integer", json_path = ".spec.value"),
    printcolumn(name = "Unit", type_ = "string", json_path = ".spec.unit"),
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
    validation = Rule::new(rules::OBSERVE_NEEDS_ADOPT).message(rules::OBSERVE_NEEDS_ADOPT_MSG),
    validation = Rule::new(rules::TYPE_IMMUTABLE).message(rules::TYPE_IMMUTABLE_MSG),
    validation = Rule::new(rules::GROUP_BY_IMMUTABLE).message(rules::GROUP_BY_IMMUTABLE_MSG),
    validation = Rule::new(rules::WORKSPACE_IMMUTABLE).message(rules::WORKSPACE_IMMUTABLE_MSG),
)]
pub struct RateLimitPolicySpec {
    /// Name shown in Portkey (at most 200 characters). Default: `<namespace>/<name>`. The
    /// operator appends its ownership marker `[k8s:rlp:<namespace>/<name>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 200))]
    pub display_name: Option<String>,
    /// Portkey workspace id (UUID) or slug; optional when the namespace is bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    pub workspace: Option<String>,
    /// What is counted: `requests` or `tokens`. Immutable.
    #[serde(rename = "type")]
    pub limit_type: RateLimitType,
    /// The window: `rpm` (minute), `rph` (hour), `rpd` (day) or `rpw` (week).
    pub unit: RateLimitUnit,
    /// How many requests or tokens per window and bucket (1 to 10^12).
    #[schemars(range(min = 1, max = 1_000_000_000_000i64))]
    pub value: i64,
    /// Which requests count (all must match); 1–20 conditions.
    #[schemars(length(min = 1, max = 20))]
    pub conditions: Vec<PolicyCondition>,
    /// How requests are split into buckets; 1–5 distinct keys. Immutable.
    #[schemars(length(min = 1, max = 5))]
    #[x_kube(validation = Rule::new(rules::GROUP_BY_DISTINCT).message(rules::GROUP_BY_DISTINCT_MSG))]
    pub group_by: Vec<GroupByKey>,
    /// `Archive` (default) or `Retain` the Portkey policy when this resource is deleted.
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
    /// `Reject` (default) or `Recreate` on changes to `type`, `groupBy` and `workspace`.
    #[serde(default)]
    pub on_immutable_change: OnImmutableChange,
}

/// Observed state of a `RateLimitPolicy` (Portkey exposes no rate-limit counters).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicyStatus {
    #[serde(flatten)]
    pub common: RemotePolicyStatus,
}
