//! Typed request and response bodies of the Portkey Admin API (docs/admin-api.md).
//!
//! Responses tolerate unknown fields (serde ignores them) and missing optional ones. Requests
//! omit what is not set, and partial updates use [`Nullable`] so an explicit `null` (clear) is
//! different from an absent field (unchanged).

use std::collections::BTreeMap;
use std::fmt;

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};

use super::wire::{Nullable, Number, decimal, opt_decimal};

/// Declares a string enum with its wire names, `as_str`, `Display` and a list of all values.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $wire:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
        pub enum $name {
            $(#[serde(rename = $wire)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $wire),+ }
            }

            /// Parses the wire name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($wire => Some($name::$variant),)+ _ => None }
            }

            /// The accepted wire names, for error messages: `a, b, c`.
            pub fn expected() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

wire_enum!(
    /// What a usage-limits policy counts. `requests` needs backend ≥ 1.16.0 (docs/admin-api.md §2).
    UsageLimitType { Cost = "cost", Tokens = "tokens", Requests = "requests" }
);
wire_enum!(
    /// Calendar reset of a usage limit: weekly (Monday 00:00 UTC for policies) or monthly.
    PeriodicReset { Weekly = "weekly", Monthly = "monthly" }
);
wire_enum!(
    /// `active`, or `archived` after a DELETE.
    PolicyStatus { Active = "active", Archived = "archived" }
);
wire_enum!(
    /// What a rate limit counts.
    RateLimitType { Requests = "requests", Tokens = "tokens" }
);
wire_enum!(
    /// Rate-limit window: per minute, hour, day or week (`rpw`: backend ≥ 1.13.0).
    RateLimitUnit { Rpm = "rpm", Rph = "rph", Rpd = "rpd", Rpw = "rpw" }
);
wire_enum!(
    /// State of one usage bucket.
    BucketStatus { Active = "active", Exhausted = "exhausted" }
);

/// A condition value: one string or a list of strings (ORed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ConditionValue {
    One(String),
    Many(Vec<String>),
}

impl ConditionValue {
    /// The values, in order.
    pub fn values(&self) -> Vec<&str> {
        match self {
            ConditionValue::One(s) => vec![s.as_str()],
            ConditionValue::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// A policy condition (docs/admin-api.md §2). All conditions must match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Condition {
    pub key: String,
    pub value: ConditionValue,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excludes: Option<ConditionValue>,
}

/// A group-by key: each distinct combination of values gets its own counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupBy {
    pub key: String,
}

/// Answer to a create: only the id (docs/admin-api.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatedObject {
    pub id: String,
    #[serde(default)]
    pub object: Option<String>,
}

/// The identifying fields of a policy of either family (a list item read without the rest).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PolicySummary {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
}

/// The list envelope `{object, data, total}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ListResponse<T> {
    #[serde(default)]
    pub object: Option<String>,
    #[serde(default = "Vec::new")]
    pub data: Vec<T>,
    #[serde(default)]
    pub total: Option<i64>,
}

/// Reads `""` as `None` (the API has been seen echoing `periodic_reset: ""` for unset limits).
fn empty_as_none<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: for<'a> Deserialize<'a>,
{
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(v) => T::deserialize(v)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Usage of one bucket in `value_key_usage_map` (GET with `include_usage=true`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueKeyUsage {
    #[serde(with = "decimal")]
    pub current_usage: Decimal,
    pub status: BucketStatus,
    #[serde(default)]
    pub is_threshold_alerts_sent: bool,
    #[serde(default)]
    pub is_exhausted_alerts_sent: bool,
}

/// A usage-limits policy as Portkey reports it (docs/admin-api.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageLimitsPolicy {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub group_by: Vec<GroupBy>,
    #[serde(rename = "type")]
    pub limit_type: UsageLimitType,
    #[serde(with = "decimal")]
    pub credit_limit: Decimal,
    #[serde(default, with = "opt_decimal")]
    pub alert_threshold: Option<Decimal>,
    #[serde(default, deserialize_with = "empty_as_none")]
    pub periodic_reset: Option<PeriodicReset>,
    #[serde(default)]
    pub periodic_reset_days: Option<i64>,
    #[serde(default)]
    pub next_usage_reset_at: Option<Timestamp>,
    #[serde(default)]
    pub last_reset_at: Option<Timestamp>,
    pub status: PolicyStatus,
    pub workspace_id: String,
    #[serde(default)]
    pub organisation_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    #[serde(default)]
    pub last_updated_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_key_usage_map: Option<BTreeMap<String, ValueKeyUsage>>,
}

/// What the controllers read from any remote policy.
pub trait RemotePolicy {
    fn id(&self) -> &str;
    fn name(&self) -> Option<&str>;
    fn status(&self) -> PolicyStatus;
    fn workspace_id(&self) -> &str;
    fn created_at(&self) -> Option<Timestamp>;
}

macro_rules! remote_policy {
    ($t:ty) => {
        impl RemotePolicy for $t {
            fn id(&self) -> &str {
                &self.id
            }
            fn name(&self) -> Option<&str> {
                self.name.as_deref()
            }
            fn status(&self) -> PolicyStatus {
                self.status
            }
            fn workspace_id(&self) -> &str {
                &self.workspace_id
            }
            fn created_at(&self) -> Option<Timestamp> {
                self.created_at
            }
        }
    };
}

/// Body of `POST /policies/usage-limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateUsageLimitsPolicy {
    /// Required by the docs (DOC-BP) though optional in the OpenAPI spec: always sent.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub conditions: Vec<Condition>,
    pub group_by: Vec<GroupBy>,
    #[serde(rename = "type")]
    pub limit_type: UsageLimitType,
    #[serde(with = "decimal")]
    pub credit_limit: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub alert_threshold: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset: Option<PeriodicReset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset_days: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_usage_reset_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

/// Body of `PUT /policies/usage-limits/{id}`: a partial update. Absent fields stay as they are;
/// `Nullable::Null` clears. Never put `periodic_reset*` in here unless they changed: every PUT
/// that carries them reschedules the next reset (docs/admin-api.md §2).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateUsageLimitsPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub description: Nullable<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub credit_limit: Option<Decimal>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub alert_threshold: Nullable<Number>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub periodic_reset: Nullable<PeriodicReset>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub periodic_reset_days: Nullable<i64>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub next_usage_reset_at: Nullable<Timestamp>,
    /// One-shot: zero the bucket with this value key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_usage_for_value: Option<String>,
}

impl UpdateUsageLimitsPolicy {
    /// True when the update would change nothing (no PUT needed).
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// True when the body carries a field that reschedules the next reset.
    pub fn touches_reset_schedule(&self) -> bool {
        self.periodic_reset.is_present()
            || self.periodic_reset_days.is_present()
            || self.next_usage_reset_at.is_present()
    }
}

/// A rate-limits policy as Portkey reports it (docs/admin-api.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitsPolicy {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub group_by: Vec<GroupBy>,
    #[serde(rename = "type")]
    pub limit_type: RateLimitType,
    pub unit: RateLimitUnit,
    #[serde(with = "decimal")]
    pub value: Decimal,
    pub status: PolicyStatus,
    pub workspace_id: String,
    #[serde(default)]
    pub organisation_id: Option<String>,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    #[serde(default)]
    pub last_updated_at: Option<Timestamp>,
}

remote_policy!(UsageLimitsPolicy);
remote_policy!(RateLimitsPolicy);

/// Body of `POST /policies/rate-limits`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateRateLimitsPolicy {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub conditions: Vec<Condition>,
    pub group_by: Vec<GroupBy>,
    #[serde(rename = "type")]
    pub limit_type: RateLimitType,
    pub unit: RateLimitUnit,
    #[serde(with = "decimal")]
    pub value: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
}

/// Body of `PUT /policies/rate-limits/{id}`: `name`, `conditions`, `unit`, `value`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateRateLimitsPolicy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conditions: Option<Vec<Condition>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<RateLimitUnit>,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub value: Option<Decimal>,
}

impl UpdateRateLimitsPolicy {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// One per-bucket entity of a usage-limits policy (docs/admin-api.md §2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entity {
    pub id: String,
    pub value_key: String,
    #[serde(with = "decimal")]
    pub current_usage: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BucketStatus>,
}

/// An inline usage limit on a workspace (docs/admin-api.md §4). Workspaces take `cost` and `tokens` only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceUsageLimit {
    #[serde(rename = "type")]
    pub limit_type: UsageLimitType,
    #[serde(with = "decimal")]
    pub credit_limit: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_decimal")]
    pub alert_threshold: Option<Decimal>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "empty_as_none"
    )]
    pub periodic_reset: Option<PeriodicReset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub periodic_reset_days: Option<i64>,
    /// Sent back unchanged to keep an existing reset schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_usage_reset_at: Option<Timestamp>,
}

/// An inline rate limit on a workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkspaceRateLimit {
    #[serde(rename = "type")]
    pub limit_type: RateLimitType,
    pub unit: RateLimitUnit,
    #[serde(with = "decimal")]
    pub value: Decimal,
}

/// A workspace as `GET /admin/workspaces/{id}` reports it. `usage_limits`/`rate_limits` are
/// `null` when unset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workspace {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(default)]
    pub slug: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub usage_limits: Option<Vec<WorkspaceUsageLimit>>,
    #[serde(default)]
    pub rate_limits: Option<Vec<WorkspaceRateLimit>>,
    #[serde(default)]
    pub last_reset_at: Option<Timestamp>,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    #[serde(default)]
    pub last_updated_at: Option<Timestamp>,
}

/// Body of `PUT /admin/workspaces/{id}`: omitted = unchanged, `Null` (or an empty list) clears.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateWorkspace {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub description: Nullable<String>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub usage_limits: Nullable<Vec<WorkspaceUsageLimit>>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub rate_limits: Nullable<Vec<WorkspaceRateLimit>>,
}

wire_enum!(
    /// Rate-limit window of an API key: per second, minute, hour, day or week (docs/admin-api.md
    /// §8: API keys are the only surface that takes `rps` and `rpw` together).
    KeyRateLimitUnit { Rps = "rps", Rpm = "rpm", Rph = "rph", Rpd = "rpd", Rpw = "rpw" }
);
wire_enum!(
    /// Who an API key belongs to: the organisation or one workspace.
    ApiKeyType { Organisation = "organisation", Workspace = "workspace" }
);
wire_enum!(
    /// A user key (acts as one user) or a service key (an application).
    ApiKeySubType { User = "user", Service = "service" }
);
wire_enum!(
    /// `exhausted` once the key's budget is used up (requests answered 412) until a reset.
    ApiKeyStatus { Active = "active", Exhausted = "exhausted" }
);

/// An inline rate limit on an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRateLimit {
    #[serde(rename = "type")]
    pub limit_type: RateLimitType,
    pub unit: KeyRateLimitUnit,
    #[serde(with = "decimal")]
    pub value: Decimal,
}

/// An API key as `GET /api-keys/{id}` reports it. `key` is masked (`pk-*****3AX`): the raw key
/// is only in the answers to create and rotate ([`IssuedApiKey`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyObject {
    pub id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    /// Masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// E.g. `workspace-service`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub key_type: Option<String>,
    #[serde(default)]
    pub workspace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default)]
    pub status: Option<ApiKeyStatus>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `null` when the key has no budget.
    #[serde(default)]
    pub usage_limits: Option<WorkspaceUsageLimit>,
    #[serde(default)]
    pub rate_limits: Option<Vec<KeyRateLimit>>,
    #[serde(default)]
    pub alert_emails: Option<Vec<String>>,
    #[serde(default)]
    pub last_reset_at: Option<Timestamp>,
    #[serde(default)]
    pub next_usage_reset_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Timestamp>,
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated_at: Option<Timestamp>,
}

impl ApiKeyObject {
    /// Whether `raw` could be the key behind the masked `key` this object shows (Portkey masks
    /// it as the first and last characters around a run of `*`, e.g. `z1*****3AX`).
    ///
    /// `None` when nothing can be compared: no masked key, a mask that is not prefix + one run
    /// of `*` + suffix, or a mask of stars only. Otherwise `Some(true)` when `raw` starts with
    /// the prefix, ends with the suffix and has at least one character between them. A
    /// `Some(false)` means the key was rotated (or replaced) since `raw` was issued.
    pub fn masked_key_matches(&self, raw: &str) -> Option<bool> {
        let masked = self.key.as_deref()?;
        let start = masked.find('*')?;
        let end = masked.rfind('*')? + 1;
        let (prefix, stars, suffix) = (&masked[..start], &masked[start..end], &masked[end..]);
        if !stars.bytes().all(|b| b == b'*') || (prefix.is_empty() && suffix.is_empty()) {
            return None;
        }
        Some(
            raw.starts_with(prefix)
                && raw.ends_with(suffix)
                && prefix.len() + suffix.len() < raw.len(),
        )
    }
}

/// Body of `POST /api-keys/{type}/{sub-type}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateApiKey {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub scopes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_limits: Option<WorkspaceUsageLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<KeyRateLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alert_emails: Vec<String>,
}

/// Body of `PUT /api-keys/{id}`: omitted = unchanged, `Null` clears. `reset_usage: true` is a
/// one-shot trigger (usage back to 0, an exhausted key active again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateApiKey {
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub usage_limits: Nullable<WorkspaceUsageLimit>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub rate_limits: Nullable<Vec<KeyRateLimit>>,
    #[serde(default, skip_serializing_if = "Nullable::is_absent")]
    pub alert_emails: Nullable<Vec<String>>,
    /// Replaces the key's scopes (OpenAPI `UpdateApiKeyObject.scopes`); not nullable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_usage: Option<bool>,
}

impl UpdateApiKey {
    pub fn is_empty(&self) -> bool {
        self == &UpdateApiKey::default()
    }
}

/// The answer to a create or a rotate: the id and the raw key, which `Debug` never prints.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IssuedApiKey {
    #[serde(default)]
    pub id: Option<String>,
    pub key: super::client::ApiKey,
    /// Rotate only (OpenAPI `RotateApiKeyResponse`): when the previous key stops being
    /// accepted.
    #[serde(default)]
    pub key_transition_expires_at: Option<Timestamp>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_reference_example_and_tolerates_unknown_fields() {
        let body = r#"{
          "id": "0b6c0c2e-8a3a-4a43-9d55-2f6f3f1d9a01", "object": "policy_usage_limits",
          "name": "team-a-monthly", "description": null,
          "conditions": [{"key": "metadata._team", "value": "team-a"},
                         {"key": "model", "value": ["@openai/*"], "excludes": "@openai/gpt-4o"}],
          "group_by": [{"key": "metadata._user"}],
          "type": "cost", "credit_limit": 50, "alert_threshold": 40.5,
          "periodic_reset": "monthly", "periodic_reset_days": null,
          "next_usage_reset_at": "2026-09-01T00:00:00.000Z", "last_reset_at": null,
          "status": "active", "workspace_id": "ws-uuid", "organisation_id": "org-uuid",
          "created_at": "2026-08-01T10:00:00.000Z", "last_updated_at": "2026-08-01T10:00:00.000Z",
          "brand_new_field": {"x": 1},
          "value_key_usage_map": {"metadata._user:alice": {"current_usage": 12.37,
             "status": "active", "is_threshold_alerts_sent": false, "is_exhausted_alerts_sent": false}}
        }"#;
        let p: UsageLimitsPolicy = serde_json::from_str(body).unwrap();
        assert_eq!(p.alert_threshold.unwrap().to_string(), "40.5");
        assert_eq!(p.periodic_reset, Some(PeriodicReset::Monthly));
        assert_eq!(
            p.conditions[1].excludes,
            Some(ConditionValue::One("@openai/gpt-4o".into()))
        );
        let usage = &p.value_key_usage_map.unwrap()["metadata._user:alice"];
        assert_eq!(usage.current_usage.to_string(), "12.37");
    }

    #[test]
    fn empty_periodic_reset_reads_as_none() {
        let l: WorkspaceUsageLimit =
            serde_json::from_str(r#"{"type":"cost","credit_limit":10.0,"periodic_reset":""}"#)
                .unwrap();
        assert_eq!(l.periodic_reset, None);
        assert_eq!(l.credit_limit.to_string(), "10");
    }

    #[test]
    fn update_sends_only_given_fields_and_explicit_nulls() {
        let u = UpdateUsageLimitsPolicy {
            credit_limit: Some(Decimal::new(800, 0)),
            alert_threshold: Nullable::Null,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({"credit_limit": 800, "alert_threshold": null})
        );
        assert!(!u.touches_reset_schedule());
        assert!(UpdateUsageLimitsPolicy::default().is_empty());
    }

    #[test]
    fn key_update_sends_scopes_only_when_set() {
        let u = UpdateApiKey {
            scopes: Some(vec!["completions.write".into()]),
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_value(&u).unwrap(),
            serde_json::json!({"scopes": ["completions.write"]})
        );
        assert_eq!(
            serde_json::to_value(UpdateApiKey::default()).unwrap(),
            serde_json::json!({})
        );
        assert!(!u.is_empty());
    }

    fn masked(key: Option<&str>) -> ApiKeyObject {
        serde_json::from_value(serde_json::json!({"id": "k", "key": key})).unwrap()
    }

    #[test]
    fn masked_key_matches_the_mcp_fixture_form() {
        // The MCP fixture's masked key: first 2 + `*****` + last 3.
        let k = masked(Some("z1*****3AX"));
        assert_eq!(k.masked_key_matches("z1abcdef3AX"), Some(true));
        assert_eq!(k.masked_key_matches("z1x3AX"), Some(true));
        assert_eq!(
            k.masked_key_matches("z13AX"),
            Some(false),
            "nothing between the ends"
        );
        assert_eq!(k.masked_key_matches("z1AX"), Some(false), "ends overlap");
        assert_eq!(
            k.masked_key_matches("z1abcdef3AY"),
            Some(false),
            "other tail"
        );
        assert_eq!(
            k.masked_key_matches("y1abcdef3AX"),
            Some(false),
            "other head"
        );
        assert_eq!(k.masked_key_matches(""), Some(false));
        // The emulator's own mask of a raw key matches that key.
        let raw = "pk-emu-0123456789abcdef";
        let k = masked(Some(&crate::emulator::keys::mask(raw)));
        assert_eq!(k.masked_key_matches(raw), Some(true));
        assert_eq!(k.masked_key_matches("pk-emu-0123456789abcdeg"), Some(false));
    }

    #[test]
    fn masked_key_matches_is_none_when_nothing_is_comparable() {
        assert_eq!(masked(None).masked_key_matches("abc"), None, "no key");
        assert_eq!(masked(Some("")).masked_key_matches("abc"), None, "empty");
        assert_eq!(
            masked(Some("z1abc3AX")).masked_key_matches("z1abc3AX"),
            None,
            "no stars: not a mask"
        );
        assert_eq!(
            masked(Some("*****")).masked_key_matches("anything"),
            None,
            "stars only (the emulator's mask of a short key)"
        );
        assert_eq!(
            masked(Some("z1**x**3AX")).masked_key_matches("z1aaxaa3AX"),
            None,
            "two runs of stars"
        );
    }

    #[test]
    fn masked_key_matches_never_panics_on_unicode() {
        // Multi-byte characters next to the stars and in the raw key: only char boundaries.
        let k = masked(Some("é€*****ü🔑"));
        assert_eq!(k.masked_key_matches("é€xyzü🔑"), Some(true));
        assert_eq!(k.masked_key_matches("é€ü🔑"), Some(false));
        assert_eq!(k.masked_key_matches("é"), Some(false));
        assert_eq!(k.masked_key_matches("🔑🔑🔑"), Some(false));
        let k = masked(Some("z1*****3AX"));
        assert_eq!(k.masked_key_matches("z1€3AX"), Some(true));
        assert_eq!(k.masked_key_matches("€"), Some(false));
        assert_eq!(masked(Some("🔑*")).masked_key_matches("🔑"), Some(false));
        assert_eq!(masked(Some("*🔑")).masked_key_matches("x🔑"), Some(true));
    }
}
