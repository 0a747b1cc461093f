//! Types shared by the custom resources.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use rust_decimal::Decimal;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The first 128 bits of SHA-256, in hex (32 characters): the short form of a name too long to
/// use whole (ownership markers, label values). A cryptographic hash, so no one can pick a name
/// whose short form equals another resource's.
pub fn short_hash(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Text form of an exact decimal amount: up to 12 integer digits and 6 decimals.
pub const MONEY_PATTERN: &str = r"^[0-9]{1,12}(\.[0-9]{1,6})?$";

/// An exact, non-negative decimal amount (USD for cost, a count for tokens and requests).
///
/// In YAML it is an integer (`500`) or a quoted decimal string (`"12.50"`), like a Kubernetes
/// quantity: the schema is int-or-string, never a float, so no amount is ever rounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(pub Decimal);

impl Money {
    pub fn decimal(self) -> Decimal {
        self.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.normalize())
    }
}

impl From<Decimal> for Money {
    fn from(d: Decimal) -> Self {
        Money(d)
    }
}

impl FromStr for Money {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let re = regex::Regex::new(MONEY_PATTERN).expect("valid pattern");
        if !re.is_match(s) {
            return Err(format!(
                "{s:?} is not an amount: use digits with up to 6 decimals, e.g. \"12.50\""
            ));
        }
        Decimal::from_str(s).map(Money).map_err(|e| e.to_string())
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let n = self.0.normalize();
        match (n.scale(), i64::try_from(n)) {
            (0, Ok(i)) => s.serialize_i64(i),
            _ => s.serialize_str(&n.to_string()),
        }
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Money;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an integer or a quoted decimal string such as \"12.50\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Money, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "{v} is negative; amounts are never negative"
                    )));
                }
                Ok(Money(Decimal::from(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Money, E> {
                Ok(Money(Decimal::from(v)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Money, E> {
                Err(E::custom(format!(
                    "{v} is a floating-point number; write amounts as an integer or a quoted decimal string such as \"{v}\""
                )))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Money, E> {
                Money::from_str(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Money {
    fn schema_name() -> Cow<'static, str> {
        "Money".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "x-kubernetes-int-or-string": true,
            "pattern": MONEY_PATTERN,
            "maxLength": 19,
        })
    }
}

/// A condition a request must match for the policy to count it (all conditions must match).
///
/// Set exactly one of `value` (one string) or `values` (a list, ORed). Kubernetes schemas cannot
/// express "a string or a list" in one field, so Portkey's `value` is split in two here.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.value) != has(self.values)").message("set exactly one of value and values"))]
pub struct PolicyCondition {
    /// What to match: `api_key`, `metadata.<name>` (e.g. `metadata._team`), `workspace_id`,
    /// `virtual_key`, `provider`, `config`, `prompt` or `model`.
    #[schemars(length(min = 1, max = 128))]
    pub key: String,
    /// One value to match; `*` matches anything; `@openai/*` matches a provider's models.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub value: Option<String>,
    /// Several values, any of which matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50), inner(length(min = 1, max = 256)))]
    pub values: Option<Vec<String>>,
    /// Values to leave out even when `value`/`values` match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 50), inner(length(min = 1, max = 256)))]
    pub excludes: Option<Vec<String>>,
}

/// A group-by key: every distinct value (combination) gets its own counter.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct GroupByKey {
    /// E.g. `metadata._user`, `api_key`, `workspace_id`, `model`.
    #[schemars(length(min = 1, max = 128))]
    pub key: String,
}

/// What happens to the remote policy when the resource is deleted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    /// Archive the remote policy (Portkey's soft delete).
    #[default]
    Archive,
    /// Leave the remote policy in force.
    Retain,
}

/// Whether the operator may write to Portkey for this resource.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ManagementPolicy {
    /// Create, update and archive the remote policy.
    #[default]
    Manage,
    /// Never write: only read the remote policy and report it (needs `adoptPolicyId`).
    Observe,
}

/// What to do when an immutable field (`type`, `groupBy`, `workspace`) changes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum OnImmutableChange {
    /// Refuse the change (admission rejects it).
    #[default]
    Reject,
    /// Archive the remote policy and create a new one. Its usage starts again from zero.
    Recreate,
}

/// `metav1.Condition` list, merged by `type`.
pub fn conditions_schema(generator: &mut SchemaGenerator) -> Schema {
    let mut item = generator.subschema_for::<Condition>();
    // The apiserver wants inline schemas; `subschema_for` already inlines with kube's settings.
    item.remove("$schema");
    json_schema!({
        "type": "array",
        "maxItems": 8,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"],
        "items": item,
    })
}

/// Usage of one bucket (one distinct group-by value).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketUsage {
    /// Portkey's value key, e.g. `metadata._user:alice`.
    pub value_key: String,
    /// Usage in the current period (USD for cost).
    pub current_usage: String,
    /// Usage as a whole percentage of the limit (rounded down).
    pub percent: i32,
    /// `active` or `exhausted`.
    pub status: String,
}

/// Usage summary of a budget.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSummary {
    /// Buckets with usage in this period.
    pub buckets: i32,
    /// Buckets that reached the limit (requests from them are refused with HTTP 412).
    pub exhausted_buckets: i32,
    /// The largest usage of any bucket.
    pub peak_usage: String,
    /// The largest usage as a whole percentage of the limit (rounded down).
    pub peak_percent: i32,
    /// The 10 buckets with the most usage, largest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub top: Vec<BucketUsage>,
}

/// Status every policy resource has (flattened into each kind's status).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemotePolicyStatus {
    /// The Portkey policy's UUID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_id: Option<String>,
    /// The workspace UUID the policy lives in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_id: Option<String>,
    /// Portkey's status of the policy: `active` or `archived`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_status: Option<String>,
    /// The `metadata.generation` the status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The value of the `budgets.portkey-operator.io/create-pending` annotation (when a create
    /// was sent) whose policy Portkey has shown since. While the annotation holds another value,
    /// a create may be in flight: the operator looks for it by marker before creating again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub create_confirmed: Option<String>,
    /// `Ready` (the Portkey policy is in force as specified) and `Synced` (the last reconcile
    /// succeeded).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

/// A one-shot request (rotation, usage reset) seen through.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OneShot {
    /// The annotation value it answered.
    #[schemars(length(max = 253))]
    pub token: String,
    /// When it was requested from Portkey.
    pub requested_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// When Portkey confirmed it (absent: requested, not yet confirmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// CEL rules shared by the policy kinds (`UsageLimitPolicy`, `RateLimitPolicy`).
pub mod rules {
    pub const OBSERVE_NEEDS_ADOPT: &str = "!has(self.managementPolicy) || self.managementPolicy != 'Observe' || has(self.adoptPolicyId)";
    pub const OBSERVE_NEEDS_ADOPT_MSG: &str =
        "managementPolicy Observe needs adoptPolicyId: the id of the Portkey policy to observe";
    pub const TYPE_IMMUTABLE: &str = "(has(self.onImmutableChange) && self.onImmutableChange == 'Recreate') || self.type == oldSelf.type";
    pub const TYPE_IMMUTABLE_MSG: &str = "type is immutable; set onImmutableChange: Recreate to archive the Portkey policy and create a new one (its usage restarts from zero)";
    pub const GROUP_BY_IMMUTABLE: &str = "(has(self.onImmutableChange) && self.onImmutableChange == 'Recreate') || self.groupBy == oldSelf.groupBy";
    pub const GROUP_BY_IMMUTABLE_MSG: &str = "groupBy is immutable; set onImmutableChange: Recreate to archive the Portkey policy and create a new one (its usage restarts from zero)";
    pub const WORKSPACE_IMMUTABLE: &str = "(has(self.onImmutableChange) && self.onImmutableChange == 'Recreate') || (has(self.workspace) == has(oldSelf.workspace) && (!has(self.workspace) || self.workspace == oldSelf.workspace))";
    pub const WORKSPACE_IMMUTABLE_MSG: &str = "workspace is immutable; set onImmutableChange: Recreate to archive the Portkey policy and create a new one (its usage restarts from zero)";
    pub const GROUP_BY_DISTINCT: &str = "self.all(g, self.exists_one(h, h.key == g.key))";
    /// Inline budgets (workspaces, API keys): Portkey has no `requests` budget there.
    pub const NO_REQUESTS_BUDGET: &str = "self.type != 'requests'";
    /// Inline budgets: at most one reset form (neither: the budget never resets).
    pub const ONE_RESET_FORM: &str = "!(has(self.periodicReset) && has(self.periodicResetDays))";
    /// Inline budgets: Portkey's minimum is 1.
    pub const LIMIT_AT_LEAST_ONE: &str =
        "quantity(string(self.creditLimit)).compareTo(quantity('1')) >= 0";
    /// Inline budgets: a token budget is a whole number.
    pub const TOKENS_WHOLE: &str =
        "self.type == 'cost' || quantity(string(self.creditLimit)).isInteger()";
    pub const TOKENS_WHOLE_MSG: &str = "creditLimit must be a whole number for tokens";
    /// Inline budgets: the alert below the limit.
    pub const ALERT_BELOW_LIMIT: &str = "!has(self.alertThreshold) || (quantity(string(self.alertThreshold)).compareTo(quantity('1')) >= 0 && quantity(string(self.alertThreshold)).isLessThan(quantity(string(self.creditLimit))))";
    pub const ALERT_BELOW_LIMIT_MSG: &str =
        "alertThreshold must be at least 1 and less than creditLimit";
    /// Rate limits: at most one per type and unit.
    pub const RATE_PER_TYPE_AND_UNIT: &str =
        "self.all(l, self.exists_one(m, m.type == l.type && m.unit == l.unit))";
    pub const RATE_PER_TYPE_AND_UNIT_MSG: &str = "at most one rate limit per type and unit";
    pub const GROUP_BY_DISTINCT_MSG: &str = "groupBy keys must be distinct";
}
