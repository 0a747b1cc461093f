//! `/api-keys` in the emulator (docs/admin-api.md §8, §16): workspace and organisation keys of
//! both sub-types, the inline budget (one `usage_limits` object, weekly on Sunday), rate limits
//! (`rps` to `rpw`), alert e-mails, `reset_usage` and `scopes` on PUT, rotation with a transition
//! period (one previous key at a time), a masked key on every read, and `status: exhausted` once
//! usage reaches the budget.

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::schedule::{self, Schedule};
use super::state::*;
use crate::portkey::*;

/// Portkey's shortest rotation transition period: 30 minutes.
pub const MIN_TRANSITION_MS: i64 = 1_800_000;
const MAX_EMAILS: usize = 50;

/// One API key with what only the server knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    /// As GET shows it, except `key`, which holds the masked form.
    pub key: ApiKeyObject,
    /// The raw key in force.
    pub raw: String,
    /// The key the last rotation replaced, working until its `expires_at` (Portkey keeps one
    /// previous key per transition; see [`State::rotate_api_key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<PreviousKey>,
    #[serde(default, with = "crate::portkey::wire::decimal")]
    pub usage: Decimal,
    /// How many times the key was rotated (for tests).
    #[serde(default)]
    pub rotations: u32,
    /// How many times `reset_usage` was applied (for tests).
    #[serde(default)]
    pub usage_resets: u32,
}

/// The raw key a rotation replaced and when it stops being accepted
/// (`key_transition_expires_at` of the rotate answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviousKey {
    pub raw: String,
    pub expires_at: Timestamp,
}

/// `ab*****xyz`: the first two and last three characters.
pub fn mask(raw: &str) -> String {
    let chars: Vec<char> = raw.chars().collect();
    if chars.len() < 8 {
        return "*****".into();
    }
    let head: String = chars[..2].iter().collect();
    let tail: String = chars[chars.len() - 3..].iter().collect();
    format!("{head}*****{tail}")
}

fn new_raw_key() -> String {
    format!("pk-emu-{}", uuid::Uuid::new_v4().simple())
}

fn key_usage_limits(v: &Value, now: Timestamp) -> ApiResult<WorkspaceUsageLimit> {
    let obj = v.as_object().ok_or_else(|| {
        ApiError::invalid(
            "usage_limits",
            "must be an object (one budget per key) or null",
        )
    })?;
    let limit_type = match obj.get("type").and_then(Value::as_str) {
        Some("cost") => UsageLimitType::Cost,
        Some("tokens") => UsageLimitType::Tokens,
        _ => {
            return Err(ApiError::invalid(
                "usage_limits.type",
                "must be one of: cost, tokens",
            ));
        }
    };
    let mut limit = usage_limit_element(obj, "usage_limits.", now, KEY_WEEK_START)?;
    limit.limit_type = limit_type;
    Ok(limit)
}

fn key_rate_limits(v: &Value) -> ApiResult<Vec<KeyRateLimit>> {
    let units: Vec<(&str, KeyRateLimitUnit)> = KeyRateLimitUnit::ALL
        .iter()
        .map(|u| (u.as_str(), *u))
        .collect();
    Ok(rate_limit_items(v, &units, 0)?
        .into_iter()
        .map(|(limit_type, unit, value)| KeyRateLimit {
            limit_type,
            unit,
            value,
        })
        .collect())
}

fn emails(v: &Value) -> ApiResult<Vec<String>> {
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("alert_emails", "must be a list of e-mail addresses"))?;
    if items.len() > MAX_EMAILS {
        return Err(ApiError::invalid(
            "alert_emails",
            format!("at most {MAX_EMAILS} addresses"),
        ));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let field = format!("alert_emails[{i}]");
            let s = string(e, &field, 254)?;
            let valid = s
                .split_once('@')
                .is_some_and(|(user, host)| !user.is_empty() && host.contains('.'));
            if !valid {
                return Err(ApiError::invalid(&field, "must be an e-mail address"));
            }
            Ok(s)
        })
        .collect()
}

fn scopes(v: &Value) -> ApiResult<Vec<String>> {
    let items = v
        .as_array()
        .ok_or_else(|| ApiError::invalid("scopes", "must be a list of scopes"))?;
    if items.is_empty() {
        return Err(ApiError::invalid("scopes", "must name at least one scope"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, s)| string(s, &format!("scopes[{i}]"), 128))
        .collect()
}

/// The fields a create and an update share, read and validated before anything changes.
struct KeyFields {
    name: Option<String>,
    description: Nullable<String>,
    scopes: Option<Vec<String>>,
    usage_limits: Nullable<WorkspaceUsageLimit>,
    rate_limits: Nullable<Vec<KeyRateLimit>>,
    alert_emails: Nullable<Vec<String>>,
}

/// Reads a nullable field with `f`.
fn map<T>(n: Nullable<&Value>, f: impl Fn(&Value) -> ApiResult<T>) -> ApiResult<Nullable<T>> {
    match n {
        Nullable::Absent => Ok(Nullable::Absent),
        Nullable::Null => Ok(Nullable::Null),
        Nullable::Value(v) => f(v).map(Nullable::Value),
    }
}

fn key_fields(obj: &Map<String, Value>, now: Timestamp) -> ApiResult<KeyFields> {
    let nullable = |name: &str| -> Nullable<&Value> {
        match obj.get(name) {
            None => Nullable::Absent,
            Some(Value::Null) => Nullable::Null,
            Some(v) => Nullable::Value(v),
        }
    };
    Ok(KeyFields {
        name: match obj.get("name") {
            None => None,
            Some(v) => Some(name_value(v)?),
        },
        description: map(nullable("description"), |v| {
            string(v, "description", MAX_DESCRIPTION_CHARS)
        })?,
        scopes: obj.get("scopes").map(scopes).transpose()?,
        usage_limits: map(nullable("usage_limits"), |v| key_usage_limits(v, now))?,
        rate_limits: map(nullable("rate_limits"), key_rate_limits)?,
        alert_emails: map(nullable("alert_emails"), emails)?,
    })
}

fn refresh_status(rec: &mut ApiKeyRecord) {
    let exhausted = rec
        .key
        .usage_limits
        .as_ref()
        .is_some_and(|l| rec.usage >= l.credit_limit);
    rec.key.status = Some(if exhausted {
        ApiKeyStatus::Exhausted
    } else {
        ApiKeyStatus::Active
    });
}

impl State {
    fn key_index(&self, id: &str) -> ApiResult<usize> {
        self.api_keys
            .iter()
            .position(|r| r.key.id == id)
            .ok_or_else(|| ApiError::not_found(format!("api key {id}")))
    }

    /// Applies the budget resets of keys that fell due.
    pub(super) fn roll_key_resets(&mut self, now: Timestamp) {
        for rec in &mut self.api_keys {
            let Some(limit) = rec.key.usage_limits.as_mut() else {
                continue;
            };
            let Some(due) = limit.next_usage_reset_at.filter(|d| *d <= now) else {
                continue;
            };
            let sched = Schedule::from_fields(limit.periodic_reset, limit.periodic_reset_days);
            limit.next_usage_reset_at = schedule::advance(sched, due, now, KEY_WEEK_START);
            rec.key.next_usage_reset_at = limit.next_usage_reset_at;
            rec.key.last_reset_at = Some(due);
            rec.usage = Decimal::ZERO;
            refresh_status(rec);
        }
    }

    /// `POST /api-keys/{type}/{sub-type}`: the new key's id and raw key.
    pub fn create_api_key(
        &mut self,
        key_type: &str,
        sub_type: &str,
        body: &Value,
    ) -> ApiResult<Value> {
        let key_type = ApiKeyType::parse(key_type).ok_or_else(|| {
            ApiError::invalid(
                "type",
                format!("must be one of: {}", ApiKeyType::expected()),
            )
        })?;
        let sub_type = ApiKeySubType::parse(sub_type).ok_or_else(|| {
            ApiError::invalid(
                "sub-type",
                format!("must be one of: {}", ApiKeySubType::expected()),
            )
        })?;
        let obj = object(body)?;
        let now = self.now();
        let fields = key_fields(obj, now)?;
        let name = fields
            .name
            .ok_or_else(|| ApiError::invalid("name", "is required"))?;
        let scopes = fields
            .scopes
            .ok_or_else(|| ApiError::invalid("scopes", "is required"))?;
        let workspace_id = match (key_type, obj.get("workspace_id")) {
            (ApiKeyType::Workspace, Some(v)) if !v.is_null() => {
                Some(self.resolve_workspace(&string(v, "workspace_id", 128)?, "workspace_id")?)
            }
            (ApiKeyType::Workspace, _) => {
                return Err(ApiError::invalid(
                    "workspace_id",
                    "is required for workspace keys",
                ));
            }
            (ApiKeyType::Organisation, _) => None,
        };
        let user_id = match (sub_type, obj.get("user_id")) {
            (ApiKeySubType::User, Some(v)) if !v.is_null() => Some(string(v, "user_id", 128)?),
            (ApiKeySubType::User, _) => {
                return Err(ApiError::invalid("user_id", "is required for user keys"));
            }
            (ApiKeySubType::Service, _) => None,
        };
        let raw = new_raw_key();
        let usage_limits = fields.usage_limits.as_change().flatten().cloned();
        let key = ApiKeyObject {
            id: uuid::Uuid::new_v4().to_string(),
            object: Some("api-key".into()),
            key: Some(mask(&raw)),
            name: Some(name),
            description: fields.description.as_change().flatten().cloned(),
            key_type: Some(format!("{key_type}-{sub_type}")),
            workspace_id,
            organisation_id: Some(self.organisation_id.clone()),
            user_id,
            status: Some(ApiKeyStatus::Active),
            scopes,
            next_usage_reset_at: usage_limits.as_ref().and_then(|l| l.next_usage_reset_at),
            usage_limits,
            rate_limits: Some(
                fields
                    .rate_limits
                    .as_change()
                    .flatten()
                    .cloned()
                    .unwrap_or_default(),
            ),
            alert_emails: Some(
                fields
                    .alert_emails
                    .as_change()
                    .flatten()
                    .cloned()
                    .unwrap_or_default(),
            ),
            last_reset_at: None,
            expires_at: None,
            created_at: Some(now),
            last_updated_at: Some(now),
        };
        let id = key.id.clone();
        self.api_keys.push(ApiKeyRecord {
            key,
            raw: raw.clone(),
            previous: None,
            usage: Decimal::ZERO,
            rotations: 0,
            usage_resets: 0,
        });
        Ok(serde_json::json!({ "id": id, "key": raw, "object": "api-key" }))
    }

    pub fn get_api_key(&self, id: &str) -> ApiResult<ApiKeyObject> {
        Ok(self.api_keys[self.key_index(id)?].key.clone())
    }

    /// `GET /api-keys`, optionally of one workspace.
    pub fn list_api_keys(&self, workspace: Option<&str>) -> ApiResult<Vec<ApiKeyObject>> {
        let workspace = workspace
            .map(|w| self.resolve_workspace(w, "workspace_id"))
            .transpose()?;
        Ok(self
            .api_keys
            .iter()
            .filter(|r| workspace.is_none() || r.key.workspace_id == workspace)
            .map(|r| r.key.clone())
            .collect())
    }

    /// `PUT /api-keys/{id}`: the given fields; `reset_usage: true` zeroes the usage (an exhausted
    /// key becomes active). A `usage_limits` object replaces the budget; its reset schedule is
    /// recomputed from now unless `next_usage_reset_at` is given (the periodic-reset trap).
    pub fn update_api_key(&mut self, id: &str, body: &Value) -> ApiResult<()> {
        let idx = self.key_index(id)?;
        let obj = object(body)?;
        for immutable in [
            "type",
            "sub_type",
            "user_id",
            "workspace_id",
            "organisation_id",
        ] {
            if obj.get(immutable).is_some_and(|v| !v.is_null()) {
                return Err(ApiError::invalid(immutable, "cannot be changed"));
            }
        }
        let now = self.now();
        let fields = key_fields(obj, now)?;
        let reset_usage = match obj.get("reset_usage") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ApiError::invalid("reset_usage", "must be true or false")),
        };
        let rec = &mut self.api_keys[idx];
        if let Some(name) = fields.name {
            rec.key.name = Some(name);
        }
        if let Some(d) = fields.description.as_change() {
            rec.key.description = d.cloned();
        }
        if let Some(s) = fields.scopes {
            rec.key.scopes = s;
        }
        if let Some(l) = fields.usage_limits.as_change() {
            rec.key.usage_limits = l.cloned();
            rec.key.next_usage_reset_at = l.and_then(|l| l.next_usage_reset_at);
        }
        if let Some(l) = fields.rate_limits.as_change() {
            rec.key.rate_limits = Some(l.cloned().unwrap_or_default());
        }
        if let Some(e) = fields.alert_emails.as_change() {
            rec.key.alert_emails = Some(e.cloned().unwrap_or_default());
        }
        if reset_usage {
            rec.usage = Decimal::ZERO;
            rec.usage_resets += 1;
            rec.key.last_reset_at = Some(now);
        }
        refresh_status(rec);
        rec.key.last_updated_at = Some(now);
        Ok(())
    }

    /// `DELETE /api-keys/{id}`: gone at once.
    pub fn delete_api_key(&mut self, id: &str) -> ApiResult<()> {
        let idx = self.key_index(id)?;
        self.api_keys.remove(idx);
        Ok(())
    }

    /// `POST /api-keys/{id}/rotate`: a new raw key and `key_transition_expires_at`.
    ///
    /// Portkey (OpenAPI, rotate): "The previous key remains valid during the transition period
    /// and expires at `key_transition_expires_at`": one previous key. What a second rotation
    /// during a transition does is not documented; the emulator takes the strict reading: the
    /// key retired by the first rotation stops working at once, and the key retired now gets the
    /// new transition period.
    pub fn rotate_api_key(&mut self, id: &str, body: &Value) -> ApiResult<Value> {
        let idx = self.key_index(id)?;
        let transition = match object(body)?.get("key_transition_period_ms") {
            None | Some(Value::Null) => MIN_TRANSITION_MS,
            Some(v) => integer_in(v, "key_transition_period_ms", MIN_TRANSITION_MS, i64::MAX)?,
        };
        let now = self.now();
        let until = now
            .checked_add(jiff::SignedDuration::from_millis(transition))
            .map_err(|_| ApiError::invalid("key_transition_period_ms", "is too large"))?;
        let raw = new_raw_key();
        let rec = &mut self.api_keys[idx];
        let old = std::mem::replace(&mut rec.raw, raw.clone());
        rec.previous = Some(PreviousKey {
            raw: old,
            expires_at: until,
        });
        rec.key.key = Some(mask(&raw));
        rec.rotations += 1;
        rec.key.last_updated_at = Some(now);
        Ok(serde_json::json!({
            "id": id,
            "key": raw,
            "object": "api-key",
            "key_transition_expires_at": until,
        }))
    }

    /// True when `raw` is a key that works now (the current one, or the previous one before
    /// its `key_transition_expires_at`). For tests: does the Secret hold a working key?
    pub fn key_works(&self, raw: &str) -> bool {
        let now = self.now();
        self.api_keys.iter().any(|r| {
            r.raw == raw
                || r.previous
                    .as_ref()
                    .is_some_and(|p| p.raw == raw && p.expires_at > now)
        })
    }

    /// `POST /_emulator/key-usage` `{key_id, amount}`: adds usage to a key's budget.
    pub fn add_key_usage(&mut self, body: &Value) -> ApiResult<ApiKeyObject> {
        let obj = object(body)?;
        let id = string(required(obj, "key_id")?, "key_id", 128)?;
        let amount = number(required(obj, "amount")?, "amount")?;
        if amount < Decimal::ZERO {
            return Err(ApiError::invalid("amount", "must not be negative"));
        }
        let idx = self.key_index(&id)?;
        let rec = &mut self.api_keys[idx];
        rec.usage += amount;
        refresh_status(rec);
        Ok(rec.key.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_keep_only_the_ends() {
        assert_eq!(mask("pk-emu-0123456789abcdef"), "pk*****def");
        assert_eq!(mask("short"), "*****");
    }

    fn at(t: &str) -> Timestamp {
        t.parse().unwrap()
    }

    /// One previous key per transition (OpenAPI rotate description); a second rotation during
    /// the transition ends the first previous key at once (undocumented: the emulator's model).
    #[test]
    fn a_rotation_keeps_one_previous_key() {
        let mut st = State {
            clock: Some(at("2026-11-25T10:00:00Z")),
            ..Default::default()
        };
        let created = st
            .create_api_key(
                "organisation",
                "service",
                &serde_json::json!({"name": "k", "scopes": ["completions.write"]}),
            )
            .unwrap();
        let id = created["id"].as_str().unwrap().to_owned();
        let raw0 = created["key"].as_str().unwrap().to_owned();

        let first = st
            .rotate_api_key(
                &id,
                &serde_json::json!({"key_transition_period_ms": 3_600_000}),
            )
            .unwrap();
        let raw1 = first["key"].as_str().unwrap().to_owned();
        assert_eq!(first["key_transition_expires_at"], "2026-11-25T11:00:00Z");
        assert!(st.key_works(&raw0) && st.key_works(&raw1));

        st.clock = Some(at("2026-11-25T10:10:00Z"));
        let second = st.rotate_api_key(&id, &serde_json::json!({})).unwrap();
        let raw2 = second["key"].as_str().unwrap().to_owned();
        assert_eq!(
            second["key_transition_expires_at"], "2026-11-25T10:40:00Z",
            "the default transition is Portkey's minimum, 30 minutes"
        );
        assert!(!st.key_works(&raw0), "the first previous key ended at once");
        assert!(
            st.key_works(&raw1),
            "the newly retired key is in its transition"
        );
        assert!(st.key_works(&raw2));
        let rec = &st.api_keys[0];
        assert_eq!(rec.rotations, 2);
        assert_eq!(rec.previous.as_ref().unwrap().raw, raw1);

        st.clock = Some(at("2026-11-25T10:40:00Z"));
        assert!(!st.key_works(&raw1), "expired at key_transition_expires_at");
        assert!(st.key_works(&raw2));
    }
}
