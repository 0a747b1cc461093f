//! `ApiKeyBudget`: the budget, rate limits and alert recipients of one Portkey API key, which
//! the operator either manages on an existing key or issues (creating the key and writing the
//! raw key into a Secret).

// `#[kube(printcolumn(...))]` repeats `type_ = ...` per column, which clippy misreads as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::*;
use crate::portkey::{
    ApiKeySubType, KeyRateLimitUnit, PeriodicReset, RateLimitType, UsageLimitType,
};

/// The smallest rotation transition period Portkey accepts (30 minutes).
pub const MIN_TRANSITION_SECONDS: i64 = 1800;
/// The Secret data key the raw key is written under unless `issue.secretKey` says otherwise.
pub const DEFAULT_SECRET_KEY: &str = "PORTKEY_API_KEY";

/// An existing key to manage: exactly one of `id` and `name`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.id) != has(self.name)").message("set exactly one of id and name"))]
pub struct ExistingKey {
    /// The key's id (UUID) in Portkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        pattern(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
    )]
    pub id: Option<String>,
    /// The key's name in Portkey; it must name exactly one key of the workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub name: Option<String>,
}

/// A workspace key the operator creates, and the Secret that receives the raw key.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.subType != 'user' || has(self.userId)").message("subType user needs userId: the Portkey user the key acts for"),
    validation = Rule::new("self.subType == 'user' || !has(self.userId)").message("userId is only for subType user"),
)]
pub struct IssueKey {
    /// The key's name in Portkey (default `namespace/name`); the operator appends its marker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 180))]
    pub name: Option<String>,
    /// `service` (default: an application) or `user` (acts as one user; needs `userId`).
    #[serde(default = "service")]
    pub sub_type: ApiKeySubType,
    /// The Portkey user id of a `user` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub user_id: Option<String>,
    /// What the key may do, e.g. `completions.write`, `logs.view`.
    #[schemars(length(min = 1, max = 100), inner(length(min = 1, max = 128)))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t == s))").message("scopes must be distinct"))]
    pub scopes: Vec<String>,
    /// The Secret (in this namespace, owned by this resource) that receives the raw key.
    #[schemars(
        length(min = 1, max = 253),
        pattern(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub secret_name: String,
    /// The data key in the Secret (default `PORTKEY_API_KEY`, so `envFrom` works as is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(r"^[-._a-zA-Z0-9]+$"))]
    pub secret_key: Option<String>,
    /// How long the previous key keeps working after a rotation, in seconds (at least 1800,
    /// Portkey's minimum; default 1800).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1800, max = 2_592_000))]
    pub rotation_transition_seconds: Option<i64>,
}

fn service() -> ApiKeySubType {
    ApiKeySubType::Service
}

impl IssueKey {
    /// The Secret data key.
    pub fn secret_data_key(&self) -> &str {
        self.secret_key.as_deref().unwrap_or(DEFAULT_SECRET_KEY)
    }

    /// The rotation transition period in milliseconds.
    pub fn transition_ms(&self) -> u64 {
        let seconds = self
            .rotation_transition_seconds
            .unwrap_or(MIN_TRANSITION_SECONDS)
            .max(MIN_TRANSITION_SECONDS);
        u64::try_from(seconds).unwrap_or(1800) * 1000
    }
}

/// A key's budget (its one `usage_limits` object).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(rules::NO_REQUESTS_BUDGET).message("API-key budgets take type cost or tokens (Portkey has no requests budget on keys)"),
    validation = Rule::new(rules::ONE_RESET_FORM).message("set at most one reset form: periodicReset or periodicResetDays (neither: the budget never resets)"),
    validation = Rule::new(rules::LIMIT_AT_LEAST_ONE).message("creditLimit must be at least 1 (Portkey's minimum key budget is $1)"),
    validation = Rule::new(rules::TOKENS_WHOLE).message(rules::TOKENS_WHOLE_MSG),
    validation = Rule::new(rules::ALERT_BELOW_LIMIT).message(rules::ALERT_BELOW_LIMIT_MSG),
)]
pub struct KeyBudget {
    /// `cost` (USD) or `tokens`.
    #[serde(rename = "type")]
    pub limit_type: UsageLimitType,
    /// The budget: an integer or a quoted decimal (`"200.00"`); at least 1.
    pub credit_limit: Money,
    /// Alert at this amount (less than `creditLimit`); the e-mail goes to `alertEmails`, the
    /// organisation's admins and the key's creator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_threshold: Option<Money>,
    /// `weekly` (Sunday 00:00 UTC for keys) or `monthly` (the 1st, 00:00 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset: Option<PeriodicReset>,
    /// Reset every N days (1–365) at 00:00 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 365))]
    pub periodic_reset_days: Option<i32>,
}

/// A key's rate limit.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct KeyRateLimitSpec {
    /// `requests` or `tokens`.
    #[serde(rename = "type")]
    pub limit_type: RateLimitType,
    /// Window: `rps`, `rpm`, `rph`, `rpd` or `rpw`.
    pub unit: KeyRateLimitUnit,
    /// Allowed per window (1 to 10^12).
    #[schemars(range(min = 1, max = 1_000_000_000_000i64))]
    pub value: i64,
}

/// What happens to the key when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum KeyDeletionPolicy {
    /// Delete the key in Portkey: requests with it fail (401) at once. Default for issued keys.
    Delete,
    /// Leave the key, its limits and (for issued keys) the Secret. Default for existing keys.
    Retain,
}

/// The budget, rate limits and alert recipients of one Portkey API key, e.g. "the payments app
/// gets its own key with $200 a month and 60 requests a minute; finance gets the alert".
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "budgets.portkey-operator.io",
    version = "v1alpha1",
    kind = "ApiKeyBudget",
    plural = "apikeybudgets",
    shortname = "akb",
    category = "portkey",
    namespaced,
    status = "ApiKeyBudgetStatus",
    doc = "The budget, rate limits and alert e-mails of one Portkey API key (an existing key, or one the operator issues into a Secret), kept in force by portkey-budget-operator.",
    printcolumn(name = "Key", type_ = "string", json_path = ".status.keyName"),
    printcolumn(name = "Type", type_ = "string", json_path = ".spec.budget.type"),
    printcolumn(name = "Limit", type_ = "string", json_path = ".status.budget"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.keyStatus"),
    printcolumn(name = "Reset", type_ = "string", json_path = ".status.reset"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.existing) != has(self.issue)").message("set exactly one of existing (manage a key that exists) and issue (the operator creates the key)"),
    validation = Rule::new("has(self.existing) == has(oldSelf.existing)").message("a resource cannot switch between existing and issue; create another ApiKeyBudget"),
    validation = Rule::new("!has(self.existing) || !has(oldSelf.existing) || self.existing == oldSelf.existing").message("existing is immutable; create another ApiKeyBudget for another key"),
    validation = Rule::new("!has(self.issue) || !has(oldSelf.issue) || (self.issue.subType == oldSelf.issue.subType && has(self.issue.userId) == has(oldSelf.issue.userId) && (!has(self.issue.userId) || self.issue.userId == oldSelf.issue.userId))").message("issue.subType and issue.userId are immutable (Portkey cannot change them); create another ApiKeyBudget"),
    validation = Rule::new("has(self.workspace) == has(oldSelf.workspace) && (!has(self.workspace) || self.workspace == oldSelf.workspace)").message("workspace is immutable"),
)]
pub struct ApiKeyBudgetSpec {
    /// Portkey workspace id or slug; default: the namespace's bound workspace, else the
    /// operator's default. The key must belong to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128), pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    pub workspace: Option<String>,
    /// Manage an existing workspace key (by id or by name): only the fields declared here
    /// (`budget`, `rateLimits`, `alertEmails`) are written; scopes, defaults, expiry and
    /// everything else of the key are never changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub existing: Option<ExistingKey>,
    /// Issue a workspace key and write the raw key into a Secret of this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issue: Option<IssueKey>,
    /// The key's budget. On an existing key, leaving it out leaves the key's budget alone; on
    /// an issued key, it means no budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<KeyBudget>,
    /// The key's rate limits, at most one per type and unit. Left out on an existing key: not
    /// managed; `[]`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 10))]
    #[x_kube(validation = Rule::new(rules::RATE_PER_TYPE_AND_UNIT).message(rules::RATE_PER_TYPE_AND_UNIT_MSG))]
    pub rate_limits: Option<Vec<KeyRateLimitSpec>>,
    /// Who gets the budget alerts (besides the organisation's admins). Left out on an
    /// existing key: not managed; `[]`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(max = 50),
        inner(length(min = 3, max = 254), pattern(r"^[^@\s]+@[^@\s]+\.[^@\s]+$"))
    )]
    #[x_kube(validation = Rule::new("self.all(e, self.exists_one(f, f == e))").message("alertEmails must be distinct"))]
    pub alert_emails: Option<Vec<String>>,
    /// `Delete` or `Retain` (default: `Delete` for issued keys, `Retain` for existing keys,
    /// which the operator never deletes unless this says `Delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<KeyDeletionPolicy>,
}

impl ApiKeyBudgetSpec {
    /// The deletion policy in effect.
    pub fn effective_deletion_policy(&self) -> KeyDeletionPolicy {
        match (self.deletion_policy, &self.issue) {
            (Some(p), _) => p,
            (None, Some(_)) => KeyDeletionPolicy::Delete,
            (None, None) => KeyDeletionPolicy::Retain,
        }
    }
}

/// A rotation request recorded before it was sent.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationInFlight {
    /// When the last attempt was sent.
    pub requested_at: Time,
    /// Attempts sent without a seen-through answer (at most 2).
    #[schemars(range(min = 1, max = 2))]
    pub attempts: i32,
    /// The rotate annotation's token that asked for it (absent: the Secret needed a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub token: Option<String>,
}

/// The value of the `budgets.portkey-operator.io/api-key-budget` label on an issued key's Secret:
/// the resource's name, or for names longer than a label value may be (63 characters) its first
/// 30 characters and a hash of the whole name.
pub fn owner_label_value(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_owned();
    }
    // Resource names are ASCII (DNS subdomain names).
    let head = name[..30].trim_end_matches(['-', '.']);
    format!("{head}-{}", short_hash(name.as_bytes()))
}

/// Observed state of an `ApiKeyBudget`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyBudgetStatus {
    /// The key's id in Portkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// The key's name in Portkey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// The workspace UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// `Issued` (the operator created the key) or `Existing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Portkey's status of the key: `active`, or `exhausted` (the budget is used up; requests
    /// are refused with HTTP 412 until a reset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_status: Option<String>,
    /// The budget in force, e.g. `200 cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<String>,
    /// Its reset schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset: Option<String>,
    /// The rate limits in force, e.g. `60 requests rpm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
    /// The next budget reset (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_reset_at: Option<Time>,
    /// The last budget reset (scheduled or manual), as Portkey reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset_at: Option<Time>,
    /// The Secret holding the raw key (issued keys).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// The last rotation (annotation `budgets.portkey-operator.io/rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<OneShot>,
    /// A rotation sent to Portkey whose answer this resource has not seen through (recorded
    /// before the request is sent): a pass that finds it rotates at most once more, then stops
    /// with `RotationResultUnknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_in_flight: Option<RotationInFlight>,
    /// When the operator last rotated the key because the Secret's key no longer matched
    /// Portkey's (a rotation made outside the operator); at most one such repair per rotation
    /// transition period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_repaired_at: Option<Time>,
    /// The last usage reset (annotation `budgets.portkey-operator.io/reset-usage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_reset: Option<OneShot>,
    /// The value of the `budgets.portkey-operator.io/create-pending` annotation (when a key
    /// create was sent) whose key Portkey has shown since. While the annotation holds another
    /// value, a create may be in flight: the key is looked for by marker before creating again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub create_confirmed: Option<String>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (the key's limits are in force as specified and, for issued keys, the Secret
    /// holds a working key), `Synced`, `Reconciling`, `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}
