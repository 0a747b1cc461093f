//! The emulator's in-memory state and the Portkey behaviours it imitates.
//!
//! Every operation validates the whole request before it changes anything, so a rejected
//! request never leaves partial state behind.

use std::collections::BTreeMap;
use std::str::FromStr;

use jiff::Timestamp;
use jiff::civil::Weekday;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::schedule::{self, Schedule};
use crate::portkey::wire::decimal_from_f64;
use crate::portkey::*;

/// Weekly resets: Monday for policies (DOC-BP), Sunday for workspaces (DOC-WS).
pub const POLICY_WEEK_START: Weekday = Weekday::Monday;
pub const WORKSPACE_WEEK_START: Weekday = Weekday::Sunday;
/// Weekly resets of API keys: Sunday (DOC-AK).
pub const KEY_WEEK_START: Weekday = Weekday::Sunday;

/// Longest `name` Portkey accepts.
pub const MAX_NAME_CHARS: usize = 255;
/// Longest `description`.
pub const MAX_DESCRIPTION_CHARS: usize = 500;
/// Default list page size (Portkey's is undocumented for policies; 50 as for `/providers`).
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest list page size served.
pub const MAX_PAGE_SIZE: usize = 100;

/// An Admin API error as the emulator answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    /// 400 AB01 naming the field and the rule.
    pub fn invalid(field: &str, rule: impl std::fmt::Display) -> Self {
        ApiError {
            status: 400,
            code: "AB01",
            message: format!("{field}: {rule}"),
            retry_after_s: None,
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        ApiError {
            status: 404,
            code: "AB08",
            message: format!("{what} not found"),
            retry_after_s: None,
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// One usage bucket of a usage-limits policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub entity_id: String,
    #[serde(with = "crate::portkey::wire::decimal")]
    pub current_usage: Decimal,
    pub status: BucketStatus,
    pub is_threshold_alerts_sent: bool,
    pub is_exhausted_alerts_sent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsagePolicyRecord {
    pub policy: UsageLimitsPolicy,
    #[serde(default)]
    pub buckets: BTreeMap<String, Bucket>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RatePolicyRecord {
    pub policy: RateLimitsPolicy,
}

/// Everything the emulator holds (also the `--state-file` format).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub organisation_id: String,
    pub workspaces: Vec<Workspace>,
    pub usage_limits: Vec<UsagePolicyRecord>,
    pub rate_limits: Vec<RatePolicyRecord>,
    /// API keys (`/api-keys`), with their raw keys and usage.
    #[serde(default)]
    pub api_keys: Vec<super::keys::ApiKeyRecord>,
    /// Set by `POST /_emulator/clock`; `None` = the real clock.
    pub clock: Option<Timestamp>,
}

// ---------------------------------------------------------------------------------------------
// Reading JSON bodies with errors that name the field.

/// A JSON object body.
pub fn object(body: &Value) -> ApiResult<&Map<String, Value>> {
    body.as_object()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON object"))
}

/// A present field: absent, explicit null, or a value.
pub(super) fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Nullable<&'a Value> {
    match obj.get(name) {
        None => Nullable::Absent,
        Some(Value::Null) => Nullable::Null,
        Some(v) => Nullable::Value(v),
    }
}

pub(super) fn string(v: &Value, field: &str, max: usize) -> ApiResult<String> {
    let s = v
        .as_str()
        .ok_or_else(|| ApiError::invalid(field, "must be a string"))?;
    if s.chars().count() > max {
        return Err(ApiError::invalid(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(s.to_owned())
}

pub(super) fn name_value(v: &Value) -> ApiResult<String> {
    let s = string(v, "name", MAX_NAME_CHARS)?;
    if s.trim().is_empty() {
        return Err(ApiError::invalid("name", "must not be empty"));
    }
    Ok(s)
}

pub(super) fn number(v: &Value, field: &str) -> ApiResult<Decimal> {
    let n = v
        .as_number()
        .ok_or_else(|| ApiError::invalid(field, "must be a number"))?;
    let d = if let Some(i) = n.as_i64() {
        Some(Decimal::from(i))
    } else if let Some(u) = n.as_u64() {
        Some(Decimal::from(u))
    } else {
        n.as_f64().and_then(decimal_from_f64)
    };
    d.ok_or_else(|| ApiError::invalid(field, "must be a finite number"))
}

pub(super) fn integer_in(v: &Value, field: &str, lo: i64, hi: i64) -> ApiResult<i64> {
    let d = number(v, field)?;
    if d.fract() != Decimal::ZERO || d < Decimal::from(lo) || d > Decimal::from(hi) {
        return Err(ApiError::invalid(
            field,
            format!("must be an integer from {lo} to {hi}"),
        ));
    }
    Ok(i64::try_from(d).expect("checked range"))
}

pub(super) fn enum_value<T>(
    v: &Value,
    field: &str,
    parse: fn(&str) -> Option<T>,
    expected: String,
) -> ApiResult<T> {
    v.as_str()
        .and_then(parse)
        .ok_or_else(|| ApiError::invalid(field, format!("must be one of: {expected}")))
}

pub(super) fn timestamp(v: &Value, field: &str) -> ApiResult<Timestamp> {
    v.as_str()
        .and_then(|s| Timestamp::from_str(s).ok())
        .ok_or_else(|| ApiError::invalid(field, "must be an ISO-8601 date-time"))
}

pub(super) fn required<'a>(obj: &'a Map<String, Value>, name: &str) -> ApiResult<&'a Value> {
    match field(obj, name) {
        Nullable::Value(v) => Ok(v),
        _ => Err(ApiError::invalid(name, "is required")),
    }
}

fn condition_value(v: &Value, field: &str) -> ApiResult<ConditionValue> {
    match v {
        Value::String(s) if !s.is_empty() => Ok(ConditionValue::One(s.clone())),
        Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|i| match i {
                Value::String(s) if !s.is_empty() => Ok(s.clone()),
                _ => Err(ApiError::invalid(field, "items must be non-empty strings")),
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(ConditionValue::Many),
        _ => Err(ApiError::invalid(
            field,
            "must be a non-empty string or a non-empty list of strings",
        )),
    }
}

/// `conditions`: a non-empty list of `{key, value, excludes?}`.
fn conditions(v: &Value) -> ApiResult<Vec<Condition>> {
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("conditions", "must be a list"))?;
    if items.is_empty() {
        return Err(ApiError::invalid("conditions", "must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("conditions[{i}]");
            let obj = item
                .as_object()
                .ok_or_else(|| ApiError::invalid(&path, "must be an object"))?;
            let key = string(
                required(obj, "key")
                    .map_err(|_| ApiError::invalid(&format!("{path}.key"), "is required"))?,
                &format!("{path}.key"),
                MAX_NAME_CHARS,
            )?;
            if key.is_empty() {
                return Err(ApiError::invalid(
                    &format!("{path}.key"),
                    "must not be empty",
                ));
            }
            let value = match field(obj, "value") {
                Nullable::Value(v) => condition_value(v, &format!("{path}.value"))?,
                _ => return Err(ApiError::invalid(&format!("{path}.value"), "is required")),
            };
            let excludes = match field(obj, "excludes") {
                Nullable::Value(v) => Some(condition_value(v, &format!("{path}.excludes"))?),
                _ => None,
            };
            Ok(Condition {
                key,
                value,
                excludes,
            })
        })
        .collect()
}

/// `group_by`: a non-empty list of `{key}`.
fn group_by(v: &Value) -> ApiResult<Vec<GroupBy>> {
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("group_by", "must be a list"))?;
    if items.is_empty() {
        return Err(ApiError::invalid("group_by", "must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = format!("group_by[{i}].key");
            let key = item
                .get("key")
                .and_then(Value::as_str)
                .filter(|k| !k.is_empty())
                .ok_or_else(|| {
                    ApiError::invalid(&path, "is required and must be a non-empty string")
                })?;
            Ok(GroupBy {
                key: key.to_owned(),
            })
        })
        .collect()
}

/// Minimum `credit_limit` per type (DOC-BP: $1 for cost, 100 tokens, 1 request). The OpenAPI
/// spec only says ≥ 0; we follow the stricter documentation page.
pub fn min_credit_limit(t: UsageLimitType) -> Decimal {
    match t {
        UsageLimitType::Cost | UsageLimitType::Requests => Decimal::ONE,
        UsageLimitType::Tokens => Decimal::from(100),
    }
}

fn check_credit_limit(t: UsageLimitType, limit: Decimal, field: &str) -> ApiResult<()> {
    let min = min_credit_limit(t);
    if limit < min {
        return Err(ApiError::invalid(
            field,
            format!("must be at least {min} for type {t}"),
        ));
    }
    Ok(())
}

pub(super) fn check_threshold(
    threshold: Option<Decimal>,
    limit: Decimal,
    field: &str,
) -> ApiResult<()> {
    if let Some(t) = threshold {
        if t <= Decimal::ZERO {
            return Err(ApiError::invalid(field, "must be greater than 0"));
        }
        if t >= limit {
            return Err(ApiError::invalid(
                field,
                format!("must be less than credit_limit ({limit})"),
            ));
        }
    }
    Ok(())
}

pub(super) fn reset_fields(
    obj: &Map<String, Value>,
    prefix: &str,
) -> ApiResult<(Nullable<PeriodicReset>, Nullable<i64>)> {
    let reset = match field(obj, "periodic_reset") {
        Nullable::Absent => Nullable::Absent,
        Nullable::Null => Nullable::Null,
        Nullable::Value(v) => Nullable::Value(enum_value(
            v,
            &format!("{prefix}periodic_reset"),
            PeriodicReset::parse,
            PeriodicReset::expected(),
        )?),
    };
    let days = match field(obj, "periodic_reset_days") {
        Nullable::Absent => Nullable::Absent,
        Nullable::Null => Nullable::Null,
        Nullable::Value(v) => Nullable::Value(integer_in(
            v,
            &format!("{prefix}periodic_reset_days"),
            1,
            365,
        )?),
    };
    if matches!(reset, Nullable::Value(_)) && matches!(days, Nullable::Value(_)) {
        return Err(ApiError::invalid(
            &format!("{prefix}periodic_reset_days"),
            "cannot be combined with periodic_reset; set only one of them",
        ));
    }
    Ok((reset, days))
}

/// A checked PUT of a usage-limits policy: what it changes.
struct UsageUpdate {
    name: Option<String>,
    description: Nullable<String>,
    conditions: Option<Vec<Condition>>,
    credit_limit: Decimal,
    alert_threshold: Option<Decimal>,
    reset: Nullable<PeriodicReset>,
    days: Nullable<i64>,
    next_reset: Nullable<Timestamp>,
    /// `reset_usage_for_value`: the bucket whose usage restarts.
    reset_value: Option<String>,
}

impl UsageUpdate {
    /// Every field of the body, checked against the policy's type and limit.
    fn parse(current: &UsageLimitsPolicy, obj: &Map<String, Value>) -> ApiResult<Self> {
        let name = match field(obj, "name") {
            Nullable::Absent => None,
            Nullable::Null => return Err(ApiError::invalid("name", "must not be null")),
            Nullable::Value(v) => Some(name_value(v)?),
        };
        let description = match field(obj, "description") {
            Nullable::Absent => Nullable::Absent,
            Nullable::Null => Nullable::Null,
            Nullable::Value(v) => Nullable::Value(string(v, "description", MAX_DESCRIPTION_CHARS)?),
        };
        let conditions = match field(obj, "conditions") {
            Nullable::Absent => None,
            Nullable::Null => return Err(ApiError::invalid("conditions", "must not be null")),
            Nullable::Value(v) => Some(conditions(v)?),
        };
        let (credit_limit, alert_threshold) = Self::limits(current, obj)?;
        let (reset, days) = reset_fields(obj, "")?;
        let next_reset = match field(obj, "next_usage_reset_at") {
            Nullable::Absent => Nullable::Absent,
            Nullable::Null => Nullable::Null,
            Nullable::Value(v) => Nullable::Value(timestamp(v, "next_usage_reset_at")?),
        };
        let reset_value = match field(obj, "reset_usage_for_value") {
            Nullable::Value(v) => Some(string(v, "reset_usage_for_value", 1024)?),
            _ => None,
        };
        Ok(UsageUpdate {
            name,
            description,
            conditions,
            credit_limit,
            alert_threshold,
            reset,
            days,
            next_reset,
            reset_value,
        })
    }

    /// `credit_limit` (at least the type's minimum) and `alert_threshold` (below it).
    fn limits(
        current: &UsageLimitsPolicy,
        obj: &Map<String, Value>,
    ) -> ApiResult<(Decimal, Option<Decimal>)> {
        let credit_limit = match field(obj, "credit_limit") {
            Nullable::Absent => current.credit_limit,
            Nullable::Null => return Err(ApiError::invalid("credit_limit", "must not be null")),
            Nullable::Value(v) => number(v, "credit_limit")?,
        };
        check_credit_limit(current.limit_type, credit_limit, "credit_limit")?;
        let alert_threshold = match field(obj, "alert_threshold") {
            Nullable::Absent => current.alert_threshold,
            Nullable::Null => None,
            Nullable::Value(v) => Some(number(v, "alert_threshold")?),
        };
        check_threshold(alert_threshold, credit_limit, "alert_threshold")?;
        Ok((credit_limit, alert_threshold))
    }

    /// Writes the change into the record: fields, schedule, then the buckets.
    fn apply(self, rec: &mut UsagePolicyRecord, now: Timestamp) {
        let p = &mut rec.policy;
        if let Some(name) = self.name {
            p.name = Some(name);
        }
        if let Some(d) = self.description.as_change() {
            p.description = d.cloned();
        }
        if let Some(c) = self.conditions {
            p.conditions = c;
        }
        let raised = self.credit_limit > p.credit_limit;
        p.credit_limit = self.credit_limit;
        p.alert_threshold = self.alert_threshold;
        reschedule(p, &self.reset, &self.days, self.next_reset, now);
        p.last_updated_at = Some(now);
        let limit = p.credit_limit;
        for bucket in rec.buckets.values_mut() {
            if raised {
                // Raising the limit reactivates exhausted buckets and re-arms alerts (≥ 1.20.0).
                bucket.is_threshold_alerts_sent = false;
                bucket.is_exhausted_alerts_sent = false;
            }
            refresh_bucket(bucket, limit);
        }
        if let Some(key) = self.reset_value
            && let Some(bucket) = rec.buckets.get_mut(&key)
        {
            reset_bucket(bucket);
        }
    }
}

/// The schedule fields of a PUT, and the next reset they lead to. Setting one kind of schedule
/// replaces the other; any PUT carrying `periodic_reset` or `periodic_reset_days` recomputes the
/// next reset from now (Portkey's behaviour, docs/admin-api.md §2); an explicit
/// `next_usage_reset_at` wins, and `null` recomputes it.
fn reschedule(
    p: &mut UsageLimitsPolicy,
    reset: &Nullable<PeriodicReset>,
    days: &Nullable<i64>,
    next_reset: Nullable<Timestamp>,
    now: Timestamp,
) {
    let schedule_touched = reset.is_present() || days.is_present();
    if schedule_touched {
        match (reset, days) {
            (Nullable::Value(r), _) => {
                p.periodic_reset = Some(*r);
                p.periodic_reset_days = None;
            }
            (_, Nullable::Value(d)) => {
                p.periodic_reset_days = Some(*d);
                p.periodic_reset = None;
            }
            _ => {
                if reset.is_present() {
                    p.periodic_reset = None;
                }
                if days.is_present() {
                    p.periodic_reset_days = None;
                }
            }
        }
        let sched = Schedule::from_fields(p.periodic_reset, p.periodic_reset_days);
        p.next_usage_reset_at = schedule::next_reset(sched, now, POLICY_WEEK_START);
    }
    match next_reset {
        Nullable::Value(t) => p.next_usage_reset_at = Some(schedule::floor_to_midnight(t)),
        Nullable::Null if !schedule_touched => {
            let sched = Schedule::from_fields(p.periodic_reset, p.periodic_reset_days);
            p.next_usage_reset_at = schedule::next_reset(sched, now, POLICY_WEEK_START);
        }
        _ => {}
    }
}

pub(super) fn opt<T>(n: Nullable<T>) -> Option<T> {
    match n {
        Nullable::Value(v) => Some(v),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------

impl State {
    pub fn now(&self) -> Timestamp {
        self.clock.unwrap_or_else(Timestamp::now)
    }

    fn workspace_index(&self, id_or_slug: &str) -> Option<usize> {
        self.workspaces
            .iter()
            .position(|w| w.id == id_or_slug || w.slug.as_deref() == Some(id_or_slug))
    }

    /// The workspace UUID for an id or a slug.
    pub fn resolve_workspace(&self, id_or_slug: &str, field: &str) -> ApiResult<String> {
        self.workspace_index(id_or_slug)
            .map(|i| self.workspaces[i].id.clone())
            .ok_or_else(|| ApiError::not_found(format!("{field}: workspace {id_or_slug:?}")))
    }

    pub fn workspace(&self, id_or_slug: &str) -> ApiResult<&Workspace> {
        self.workspace_index(id_or_slug)
            .map(|i| &self.workspaces[i])
            .ok_or_else(|| ApiError::not_found(format!("workspace {id_or_slug:?}")))
    }

    /// Applies every reset that fell due at or before `now` (the clock moved).
    pub fn roll_resets(&mut self) {
        let now = self.now();
        for rec in &mut self.usage_limits {
            let p = &mut rec.policy;
            let Some(due) = p.next_usage_reset_at else {
                continue;
            };
            if due > now || p.status != PolicyStatus::Active {
                continue;
            }
            let sched = Schedule::from_fields(p.periodic_reset, p.periodic_reset_days);
            for bucket in rec.buckets.values_mut() {
                bucket.current_usage = Decimal::ZERO;
                bucket.status = BucketStatus::Active;
                bucket.is_threshold_alerts_sent = false;
                bucket.is_exhausted_alerts_sent = false;
            }
            p.last_reset_at = Some(due);
            p.next_usage_reset_at = schedule::advance(sched, due, now, POLICY_WEEK_START);
        }
        self.roll_key_resets(now);
        for ws in &mut self.workspaces {
            let mut reset = false;
            for limit in ws.usage_limits.iter_mut().flatten() {
                if let Some(due) = limit.next_usage_reset_at.filter(|d| *d <= now) {
                    let sched =
                        Schedule::from_fields(limit.periodic_reset, limit.periodic_reset_days);
                    limit.next_usage_reset_at =
                        schedule::advance(sched, due, now, WORKSPACE_WEEK_START);
                    reset = true;
                }
            }
            if reset {
                ws.last_reset_at = Some(now);
            }
        }
    }

    // ----- usage-limits policies -----

    fn usage_index(&self, id: &str, status: PolicyStatus) -> ApiResult<usize> {
        self.usage_limits
            .iter()
            .position(|r| r.policy.id == id && r.policy.status == status)
            .ok_or_else(|| ApiError::not_found(format!("usage limits policy {id:?}")))
    }

    pub fn create_usage_policy(&mut self, body: &Value) -> ApiResult<CreatedObject> {
        let obj = object(body)?;
        let name = name_value(required(obj, "name")?)?;
        let description = opt(match field(obj, "description") {
            Nullable::Value(v) => Nullable::Value(string(v, "description", MAX_DESCRIPTION_CHARS)?),
            _ => Nullable::Absent,
        });
        let conditions = conditions(required(obj, "conditions")?)?;
        let group_by = group_by(required(obj, "group_by")?)?;
        let limit_type = enum_value(
            required(obj, "type")?,
            "type",
            UsageLimitType::parse,
            UsageLimitType::expected(),
        )?;
        let credit_limit = number(required(obj, "credit_limit")?, "credit_limit")?;
        check_credit_limit(limit_type, credit_limit, "credit_limit")?;
        let alert_threshold = match field(obj, "alert_threshold") {
            Nullable::Value(v) => Some(number(v, "alert_threshold")?),
            _ => None,
        };
        check_threshold(alert_threshold, credit_limit, "alert_threshold")?;
        let (reset, days) = reset_fields(obj, "")?;
        let explicit_next = match field(obj, "next_usage_reset_at") {
            Nullable::Value(v) => Some(timestamp(v, "next_usage_reset_at")?),
            _ => None,
        };
        let workspace_id = match field(obj, "workspace_id") {
            Nullable::Value(v) => {
                self.resolve_workspace(&string(v, "workspace_id", 255)?, "workspace_id")?
            }
            _ => {
                return Err(ApiError::invalid(
                    "workspace_id",
                    "is required when using an organisation API key",
                ));
            }
        };

        let now = self.now();
        let (periodic_reset, periodic_reset_days) = (opt(reset), opt(days));
        let sched = Schedule::from_fields(periodic_reset, periodic_reset_days);
        let next = match sched {
            Schedule::Never => None,
            _ => explicit_next
                .map(schedule::floor_to_midnight)
                .or_else(|| schedule::next_reset(sched, now, POLICY_WEEK_START)),
        };
        let id = uuid::Uuid::new_v4().to_string();
        self.usage_limits.push(UsagePolicyRecord {
            policy: UsageLimitsPolicy {
                id: id.clone(),
                object: Some("policy_usage_limits".into()),
                name: Some(name),
                description,
                conditions,
                group_by,
                limit_type,
                credit_limit,
                alert_threshold,
                periodic_reset,
                periodic_reset_days,
                next_usage_reset_at: next,
                last_reset_at: None,
                status: PolicyStatus::Active,
                workspace_id,
                organisation_id: Some(self.organisation_id.clone()),
                created_at: Some(now),
                last_updated_at: Some(now),
                value_key_usage_map: None,
            },
            buckets: BTreeMap::new(),
        });
        Ok(CreatedObject {
            id,
            object: Some("policy_usage_limits".into()),
        })
    }

    pub fn get_usage_policy(
        &self,
        id: &str,
        status: PolicyStatus,
        include_usage: bool,
    ) -> ApiResult<UsageLimitsPolicy> {
        let rec = &self.usage_limits[self.usage_index(id, status)?];
        let mut p = rec.policy.clone();
        if include_usage {
            p.value_key_usage_map = Some(
                rec.buckets
                    .iter()
                    .map(|(k, b)| {
                        (
                            k.clone(),
                            ValueKeyUsage {
                                current_usage: b.current_usage,
                                status: b.status,
                                is_threshold_alerts_sent: b.is_threshold_alerts_sent,
                                is_exhausted_alerts_sent: b.is_exhausted_alerts_sent,
                            },
                        )
                    })
                    .collect(),
            );
        }
        Ok(p)
    }

    /// Policies of one workspace with a status (and a type filter), in creation order.
    pub fn list_usage_policies(
        &self,
        workspace: &str,
        status: PolicyStatus,
        limit_type: Option<UsageLimitType>,
    ) -> ApiResult<Vec<UsageLimitsPolicy>> {
        let ws = self.resolve_workspace(workspace, "workspace_id")?;
        Ok(self
            .usage_limits
            .iter()
            .map(|r| &r.policy)
            .filter(|p| p.workspace_id == ws && p.status == status)
            .filter(|p| limit_type.is_none_or(|t| p.limit_type == t))
            .cloned()
            .collect())
    }

    /// PUT of a usage-limits policy: the whole body is checked before anything changes.
    pub fn update_usage_policy(&mut self, id: &str, body: &Value) -> ApiResult<()> {
        let idx = self.usage_index(id, PolicyStatus::Active)?;
        let current = self.usage_limits[idx].policy.clone();
        let obj = object(body)?;
        self.check_usage_immutables(&current, obj)?;
        let update = UsageUpdate::parse(&current, obj)?;
        let now = self.now();
        update.apply(&mut self.usage_limits[idx], now);
        Ok(())
    }

    /// `type`, `group_by` and `workspace_id` cannot change in place.
    fn check_usage_immutables(
        &self,
        current: &UsageLimitsPolicy,
        obj: &Map<String, Value>,
    ) -> ApiResult<()> {
        let immutable = |field: &str| {
            ApiError::invalid(
                field,
                "cannot be changed; archive the policy and create a new one",
            )
        };
        if let Some(v) = obj.get("type")
            && v.as_str() != Some(current.limit_type.as_str())
        {
            return Err(immutable("type"));
        }
        if let Some(v) = obj.get("group_by")
            && group_by(v).ok().as_ref() != Some(&current.group_by)
        {
            return Err(immutable("group_by"));
        }
        if let Some(v) = obj.get("workspace_id")
            && v.as_str()
                .and_then(|w| self.resolve_workspace(w, "workspace_id").ok())
                .as_deref()
                != Some(current.workspace_id.as_str())
        {
            return Err(immutable("workspace_id"));
        }
        Ok(())
    }

    pub fn archive_usage_policy(&mut self, id: &str) -> ApiResult<()> {
        let idx = self.usage_index(id, PolicyStatus::Active)?;
        let now = self.now();
        let p = &mut self.usage_limits[idx].policy;
        p.status = PolicyStatus::Archived;
        p.last_updated_at = Some(now);
        Ok(())
    }

    pub fn entities(
        &self,
        id: &str,
        status: Option<BucketStatus>,
        search: Option<&str>,
    ) -> ApiResult<Vec<Entity>> {
        let rec = &self.usage_limits[self.usage_index(id, PolicyStatus::Active)?];
        Ok(rec
            .buckets
            .iter()
            .filter(|(_, b)| status.is_none_or(|s| b.status == s))
            .filter(|(k, _)| search.is_none_or(|s| k.contains(s)))
            .map(|(k, b)| Entity {
                id: b.entity_id.clone(),
                value_key: k.clone(),
                current_usage: b.current_usage,
                status: Some(b.status),
            })
            .collect())
    }

    pub fn reset_entity(&mut self, id: &str, entity_id: &str) -> ApiResult<()> {
        let idx = self.usage_index(id, PolicyStatus::Active)?;
        let bucket = self.usage_limits[idx]
            .buckets
            .values_mut()
            .find(|b| b.entity_id == entity_id)
            .ok_or_else(|| ApiError::not_found(format!("entity {entity_id:?}")))?;
        reset_bucket(bucket);
        Ok(())
    }

    /// `POST /_emulator/usage`: adds usage to one bucket.
    pub fn add_usage(&mut self, body: &Value) -> ApiResult<Bucket> {
        let obj = object(body)?;
        let id = string(required(obj, "policy_id")?, "policy_id", 255)?;
        let key = string(required(obj, "value_key")?, "value_key", 1024)?;
        if key.is_empty() {
            return Err(ApiError::invalid("value_key", "must not be empty"));
        }
        let amount = number(required(obj, "amount")?, "amount")?;
        if amount < Decimal::ZERO {
            return Err(ApiError::invalid("amount", "must not be negative"));
        }
        let idx = self.usage_index(&id, PolicyStatus::Active)?;
        let rec = &mut self.usage_limits[idx];
        let (limit, threshold) = (rec.policy.credit_limit, rec.policy.alert_threshold);
        let bucket = rec.buckets.entry(key).or_insert_with(|| Bucket {
            entity_id: uuid::Uuid::new_v4().to_string(),
            current_usage: Decimal::ZERO,
            status: BucketStatus::Active,
            is_threshold_alerts_sent: false,
            is_exhausted_alerts_sent: false,
        });
        bucket.current_usage += amount;
        refresh_bucket(bucket, limit);
        if threshold.is_some_and(|t| bucket.current_usage >= t) {
            bucket.is_threshold_alerts_sent = true;
        }
        if bucket.status == BucketStatus::Exhausted {
            bucket.is_exhausted_alerts_sent = true;
        }
        Ok(bucket.clone())
    }

    // ----- rate-limits policies -----

    fn rate_index(&self, id: &str, status: PolicyStatus) -> ApiResult<usize> {
        self.rate_limits
            .iter()
            .position(|r| r.policy.id == id && r.policy.status == status)
            .ok_or_else(|| ApiError::not_found(format!("rate limits policy {id:?}")))
    }

    pub fn create_rate_policy(&mut self, body: &Value) -> ApiResult<CreatedObject> {
        let obj = object(body)?;
        let name = name_value(required(obj, "name")?)?;
        let description = match field(obj, "description") {
            Nullable::Value(v) => Some(string(v, "description", MAX_DESCRIPTION_CHARS)?),
            _ => None,
        };
        if let Nullable::Value(v) = field(obj, "target")
            && !matches!(v.as_str(), Some("llm" | "mcp_tools"))
        {
            return Err(ApiError::invalid(
                "target",
                "must be one of: llm, mcp_tools",
            ));
        }
        let conditions = conditions(required(obj, "conditions")?)?;
        let group_by = group_by(required(obj, "group_by")?)?;
        let limit_type = enum_value(
            required(obj, "type")?,
            "type",
            RateLimitType::parse,
            RateLimitType::expected(),
        )?;
        let unit = enum_value(
            required(obj, "unit")?,
            "unit",
            RateLimitUnit::parse,
            RateLimitUnit::expected(),
        )?;
        let value = integer_in(required(obj, "value")?, "value", 1, i64::MAX)?;
        let workspace_id = match field(obj, "workspace_id") {
            Nullable::Value(v) => {
                self.resolve_workspace(&string(v, "workspace_id", 255)?, "workspace_id")?
            }
            _ => {
                return Err(ApiError::invalid(
                    "workspace_id",
                    "is required when using an organisation API key",
                ));
            }
        };
        let now = self.now();
        let id = uuid::Uuid::new_v4().to_string();
        self.rate_limits.push(RatePolicyRecord {
            policy: RateLimitsPolicy {
                id: id.clone(),
                object: Some("policy_rate_limits".into()),
                name: Some(name),
                description,
                conditions,
                group_by,
                limit_type,
                unit,
                value: Decimal::from(value),
                status: PolicyStatus::Active,
                workspace_id,
                organisation_id: Some(self.organisation_id.clone()),
                created_at: Some(now),
                last_updated_at: Some(now),
            },
        });
        Ok(CreatedObject {
            id,
            object: Some("policy_rate_limits".into()),
        })
    }

    pub fn get_rate_policy(&self, id: &str, status: PolicyStatus) -> ApiResult<RateLimitsPolicy> {
        Ok(self.rate_limits[self.rate_index(id, status)?]
            .policy
            .clone())
    }

    pub fn list_rate_policies(
        &self,
        workspace: &str,
        status: PolicyStatus,
        limit_type: Option<RateLimitType>,
        unit: Option<RateLimitUnit>,
    ) -> ApiResult<Vec<RateLimitsPolicy>> {
        let ws = self.resolve_workspace(workspace, "workspace_id")?;
        Ok(self
            .rate_limits
            .iter()
            .map(|r| &r.policy)
            .filter(|p| p.workspace_id == ws && p.status == status)
            .filter(|p| limit_type.is_none_or(|t| p.limit_type == t))
            .filter(|p| unit.is_none_or(|u| p.unit == u))
            .cloned()
            .collect())
    }

    pub fn update_rate_policy(&mut self, id: &str, body: &Value) -> ApiResult<()> {
        let idx = self.rate_index(id, PolicyStatus::Active)?;
        let current = self.rate_limits[idx].policy.clone();
        let obj = object(body)?;
        if let Some(v) = obj.get("type")
            && v.as_str() != Some(current.limit_type.as_str())
        {
            return Err(ApiError::invalid(
                "type",
                "cannot be changed; archive the policy and create a new one",
            ));
        }
        if let Some(v) = obj.get("group_by")
            && group_by(v).ok().as_ref() != Some(&current.group_by)
        {
            return Err(ApiError::invalid(
                "group_by",
                "cannot be changed; archive the policy and create a new one",
            ));
        }
        let name = match field(obj, "name") {
            Nullable::Absent => None,
            Nullable::Null => return Err(ApiError::invalid("name", "must not be null")),
            Nullable::Value(v) => Some(name_value(v)?),
        };
        let new_conditions = match field(obj, "conditions") {
            Nullable::Absent => None,
            Nullable::Null => return Err(ApiError::invalid("conditions", "must not be null")),
            Nullable::Value(v) => Some(conditions(v)?),
        };
        let unit = match field(obj, "unit") {
            Nullable::Absent => None,
            Nullable::Null => return Err(ApiError::invalid("unit", "must not be null")),
            Nullable::Value(v) => Some(enum_value(
                v,
                "unit",
                RateLimitUnit::parse,
                RateLimitUnit::expected(),
            )?),
        };
        let value = match field(obj, "value") {
            Nullable::Absent => None,
            Nullable::Null => return Err(ApiError::invalid("value", "must not be null")),
            Nullable::Value(v) => Some(integer_in(v, "value", 1, i64::MAX)?),
        };
        let now = self.now();
        let p = &mut self.rate_limits[idx].policy;
        if let Some(name) = name {
            p.name = Some(name);
        }
        if let Some(c) = new_conditions {
            p.conditions = c;
        }
        if let Some(u) = unit {
            p.unit = u;
        }
        if let Some(v) = value {
            p.value = Decimal::from(v);
        }
        p.last_updated_at = Some(now);
        Ok(())
    }

    pub fn archive_rate_policy(&mut self, id: &str) -> ApiResult<()> {
        let idx = self.rate_index(id, PolicyStatus::Active)?;
        let now = self.now();
        let p = &mut self.rate_limits[idx].policy;
        p.status = PolicyStatus::Archived;
        p.last_updated_at = Some(now);
        Ok(())
    }

    // ----- workspaces -----

    pub fn update_workspace(&mut self, id_or_slug: &str, body: &Value) -> ApiResult<()> {
        let idx = self
            .workspace_index(id_or_slug)
            .ok_or_else(|| ApiError::not_found(format!("workspace {id_or_slug:?}")))?;
        let obj = object(body)?;
        let now = self.now();
        let name = match field(obj, "name") {
            Nullable::Absent => None,
            Nullable::Null => return Err(ApiError::invalid("name", "must not be null")),
            Nullable::Value(v) => Some(name_value(v)?),
        };
        let description = match field(obj, "description") {
            Nullable::Absent => Nullable::Absent,
            Nullable::Null => Nullable::Null,
            Nullable::Value(v) => Nullable::Value(string(v, "description", MAX_DESCRIPTION_CHARS)?),
        };
        let usage_limits = match field(obj, "usage_limits") {
            Nullable::Absent => Nullable::Absent,
            Nullable::Null => Nullable::Null,
            Nullable::Value(v) => Nullable::Value(workspace_usage_limits(v, now)?),
        };
        let rate_limits = match field(obj, "rate_limits") {
            Nullable::Absent => Nullable::Absent,
            Nullable::Null => Nullable::Null,
            Nullable::Value(v) => Nullable::Value(workspace_rate_limits(v)?),
        };
        let ws = &mut self.workspaces[idx];
        if let Some(name) = name {
            ws.name = Some(name);
        }
        if let Some(d) = description.as_change() {
            ws.description = d.cloned();
        }
        if let Some(l) = usage_limits.as_change() {
            ws.usage_limits = l.filter(|l| !l.is_empty()).cloned();
        }
        if let Some(l) = rate_limits.as_change() {
            ws.rate_limits = l.filter(|l| !l.is_empty()).cloned();
        }
        ws.last_updated_at = Some(now);
        Ok(())
    }
}

/// Validates a workspace `usage_limits` list and computes each element's next reset: the one
/// given in `next_usage_reset_at` (kept, so a client can preserve a schedule), otherwise a fresh
/// one from `now` (so re-sending `periodic_reset` reschedules, as on policies).
fn workspace_usage_limits(v: &Value, now: Timestamp) -> ApiResult<Vec<WorkspaceUsageLimit>> {
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("usage_limits", "must be a list or null"))?;
    let mut out: Vec<WorkspaceUsageLimit> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let prefix = format!("usage_limits[{i}].");
        let obj = item
            .as_object()
            .ok_or_else(|| ApiError::invalid(&format!("usage_limits[{i}]"), "must be an object"))?;
        let f = |n: &str| format!("{prefix}{n}");
        let limit_type = match obj.get("type") {
            Some(v) => match v.as_str() {
                Some("cost") => UsageLimitType::Cost,
                Some("tokens") => UsageLimitType::Tokens,
                _ => {
                    return Err(ApiError::invalid(
                        &f("type"),
                        "must be one of: cost, tokens (workspaces do not support requests)",
                    ));
                }
            },
            None => return Err(ApiError::invalid(&f("type"), "is required")),
        };
        if out.iter().any(|l| l.limit_type == limit_type) {
            return Err(ApiError::invalid(
                &f("type"),
                "only one usage limit per type is allowed",
            ));
        }
        let mut limit = usage_limit_element(obj, &prefix, now, WORKSPACE_WEEK_START)?;
        limit.limit_type = limit_type;
        out.push(limit);
    }
    Ok(out)
}

/// One `UsageLimits` element (workspaces, API keys) after its `type`: the amounts, the reset
/// fields and its next reset, which is the one given in `next_usage_reset_at` (kept, so a
/// client can preserve a schedule), otherwise a fresh one from `now` (so re-sending
/// `periodic_reset` reschedules, as on policies). The `type` is the caller's to read.
pub(super) fn usage_limit_element(
    obj: &Map<String, Value>,
    prefix: &str,
    now: Timestamp,
    week_start: Weekday,
) -> ApiResult<WorkspaceUsageLimit> {
    let f = |n: &str| format!("{prefix}{n}");
    let credit_limit = match obj.get("credit_limit") {
        Some(v) if !v.is_null() => number(v, &f("credit_limit"))?,
        _ => return Err(ApiError::invalid(&f("credit_limit"), "is required")),
    };
    if credit_limit < Decimal::ONE {
        return Err(ApiError::invalid(&f("credit_limit"), "must be at least 1"));
    }
    let alert_threshold = match obj.get("alert_threshold") {
        Some(v) if !v.is_null() => Some(number(v, &f("alert_threshold"))?),
        _ => None,
    };
    check_threshold(alert_threshold, credit_limit, &f("alert_threshold"))?;
    let (reset, days) = reset_fields(obj, prefix)?;
    let (periodic_reset, periodic_reset_days) = (opt(reset), opt(days));
    let sched = Schedule::from_fields(periodic_reset, periodic_reset_days);
    let next = match (sched, obj.get("next_usage_reset_at")) {
        (Schedule::Never, _) => None,
        (_, Some(v)) if !v.is_null() => Some(schedule::floor_to_midnight(timestamp(
            v,
            &f("next_usage_reset_at"),
        )?)),
        _ => schedule::next_reset(sched, now, week_start),
    };
    Ok(WorkspaceUsageLimit {
        limit_type: UsageLimitType::Cost,
        credit_limit,
        alert_threshold,
        periodic_reset,
        periodic_reset_days,
        next_usage_reset_at: next,
    })
}

fn workspace_rate_limits(v: &Value) -> ApiResult<Vec<WorkspaceRateLimit>> {
    let units = [
        ("rpm", RateLimitUnit::Rpm),
        ("rph", RateLimitUnit::Rph),
        ("rpd", RateLimitUnit::Rpd),
    ];
    Ok(rate_limit_items(v, &units, 1)?
        .into_iter()
        .map(|(limit_type, unit, value)| WorkspaceRateLimit {
            limit_type,
            unit,
            value,
        })
        .collect())
}

/// An inline `rate_limits` list (workspaces, API keys): `(type, unit, value)` per item, with
/// `unit` one of `units`, `value` an integer ≥ `min`, at most one per type and unit.
pub(super) fn rate_limit_items<U: Copy + PartialEq>(
    v: &Value,
    units: &[(&str, U)],
    min: i64,
) -> ApiResult<Vec<(RateLimitType, U, Decimal)>> {
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("rate_limits", "must be a list or null"))?;
    let mut out: Vec<(RateLimitType, U, Decimal)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let f = |n: &str| format!("rate_limits[{i}].{n}");
        let obj = item
            .as_object()
            .ok_or_else(|| ApiError::invalid(&format!("rate_limits[{i}]"), "must be an object"))?;
        let limit_type = enum_value(
            obj.get("type").unwrap_or(&Value::Null),
            &f("type"),
            RateLimitType::parse,
            RateLimitType::expected(),
        )?;
        let name = obj.get("unit").and_then(Value::as_str);
        let Some(unit) = units
            .iter()
            .find(|(n, _)| Some(*n) == name)
            .map(|(_, u)| *u)
        else {
            let names: Vec<&str> = units.iter().map(|(n, _)| *n).collect();
            return Err(ApiError::invalid(
                &f("unit"),
                format!("must be one of: {}", names.join(", ")),
            ));
        };
        let value = integer_in(
            obj.get("value").unwrap_or(&Value::Null),
            &f("value"),
            min,
            i64::MAX,
        )?;
        if out.iter().any(|(t, u, _)| *t == limit_type && *u == unit) {
            return Err(ApiError::invalid(
                &f("unit"),
                "only one rate limit per type and unit is allowed",
            ));
        }
        out.push((limit_type, unit, Decimal::from(value)));
    }
    Ok(out)
}

fn refresh_bucket(bucket: &mut Bucket, limit: Decimal) {
    bucket.status = if bucket.current_usage >= limit {
        BucketStatus::Exhausted
    } else {
        BucketStatus::Active
    };
}

fn reset_bucket(bucket: &mut Bucket) {
    bucket.current_usage = Decimal::ZERO;
    bucket.status = BucketStatus::Active;
    bucket.is_threshold_alerts_sent = false;
    bucket.is_exhausted_alerts_sent = false;
}
