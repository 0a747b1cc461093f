//! Planning for API keys: the budget (`usage_limits`, one object), `rate_limits[]` and
//! `alert_emails[]` of one key.
//!
//! An existing key is managed field by field: only the fields its `ApiKeyBudget` declares are
//! compared and written. An issued key belongs to the operator, so a field left out means
//! "none". A PUT carries only the fields that differ, and a budget whose schedule did not change
//! carries Portkey's current `next_usage_reset_at`, so changing the amount never reschedules the
//! reset (the periodic-reset trap, docs/admin-api.md §6).

use crate::api::conditions::reasons;
use serde::Serialize;

use super::marker::Identity;
use super::ownership::{self, Candidate, MarkedBy, Refusal};
use super::{FieldChange, fmt_opt, schedule_text};
use crate::api::{ApiKeyBudgetSpec, KeyBudget, KeyRateLimitSpec};
use crate::portkey::*;

/// What an `ApiKeyBudget` asks of a key; `None` = the field is not managed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredKey {
    /// `Some(None)`: no budget.
    pub budget: Option<Option<WorkspaceUsageLimit>>,
    pub rate_limits: Option<Vec<KeyRateLimit>>,
    pub alert_emails: Option<Vec<String>>,
    /// The scopes of an issued key (an existing key's scopes are never changed).
    pub scopes: Option<Vec<String>>,
}

fn budget(b: &KeyBudget) -> WorkspaceUsageLimit {
    WorkspaceUsageLimit {
        limit_type: b.limit_type,
        credit_limit: b.credit_limit.decimal(),
        alert_threshold: b.alert_threshold.map(|m| m.decimal()),
        periodic_reset: b.periodic_reset,
        periodic_reset_days: b.periodic_reset_days.map(i64::from),
        next_usage_reset_at: None,
    }
}

fn rate_limit(spec: &KeyRateLimitSpec) -> KeyRateLimit {
    KeyRateLimit {
        limit_type: spec.limit_type,
        unit: spec.unit,
        value: spec.value.into(),
    }
}

impl DesiredKey {
    pub fn from_spec(spec: &ApiKeyBudgetSpec) -> Self {
        let issued = spec.issue.is_some();
        let rates = |l: &Vec<KeyRateLimitSpec>| l.iter().map(rate_limit).collect::<Vec<_>>();
        DesiredKey {
            budget: match (&spec.budget, issued) {
                (Some(b), _) => Some(Some(budget(b))),
                (None, true) => Some(None),
                (None, false) => None,
            },
            rate_limits: match (&spec.rate_limits, issued) {
                (Some(l), _) => Some(rates(l)),
                (None, true) => Some(Vec::new()),
                (None, false) => None,
            },
            alert_emails: match (&spec.alert_emails, issued) {
                (Some(l), _) => Some(l.clone()),
                (None, true) => Some(Vec::new()),
                (None, false) => None,
            },
            scopes: spec.issue.as_ref().map(|i| i.scopes.clone()),
        }
    }

    /// The fields this resource manages, for messages: `budget, rateLimits`.
    pub fn managed_fields(&self) -> String {
        let mut fields = Vec::new();
        if self.budget.is_some() {
            fields.push("budget");
        }
        if self.rate_limits.is_some() {
            fields.push("rateLimits");
        }
        if self.alert_emails.is_some() {
            fields.push("alertEmails");
        }
        if self.scopes.is_some() {
            fields.push("scopes");
        }
        if fields.is_empty() {
            "(none)".into()
        } else {
            fields.join(", ")
        }
    }
}

/// A budget without its server-computed next reset, with normalised amounts, for comparison.
fn budget_key(l: &WorkspaceUsageLimit) -> WorkspaceUsageLimit {
    WorkspaceUsageLimit {
        credit_limit: l.credit_limit.normalize(),
        alert_threshold: l.alert_threshold.map(|d| d.normalize()),
        next_usage_reset_at: None,
        ..l.clone()
    }
}

fn sorted_rates(list: &[KeyRateLimit]) -> Vec<KeyRateLimit> {
    let mut v: Vec<_> = list
        .iter()
        .map(|l| KeyRateLimit {
            value: l.value.normalize(),
            ..l.clone()
        })
        .collect();
    v.sort_by_key(|l| (l.limit_type, l.unit));
    v
}

fn sorted_emails(list: &[String]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(|e| e.trim().to_ascii_lowercase()).collect();
    v.sort();
    v.dedup();
    v
}

/// `200 cost (alert 150)`, or `(none)`.
pub fn describe_budget(b: Option<&WorkspaceUsageLimit>) -> String {
    match b {
        None => "(none)".into(),
        Some(l) => format!(
            "{} {} (alert {}) {}",
            l.credit_limit.normalize(),
            l.limit_type,
            fmt_opt(l.alert_threshold.map(|d| d.normalize()).as_ref()),
            schedule_text(l.periodic_reset, l.periodic_reset_days)
        ),
    }
}

/// `60 requests rpm; 1000 tokens rpd`, or `(none)`.
pub fn describe_rates(list: &[KeyRateLimit]) -> String {
    if list.is_empty() {
        return "(none)".into();
    }
    sorted_rates(list)
        .iter()
        .map(|l| format!("{} {} {}", l.value, l.limit_type, l.unit))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_emails(list: &[String]) -> String {
    if list.is_empty() {
        "(none)".into()
    } else {
        sorted_emails(list).join(", ")
    }
}

/// One PUT to make, with what it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyUpdate {
    pub body: UpdateApiKey,
    pub changes: Vec<FieldChange>,
}

/// The PUT that makes the key hold the declared fields, or `None` when it already does. Only
/// managed fields that differ are sent; an unchanged schedule keeps Portkey's next reset.
pub fn plan(desired: &DesiredKey, remote: &ApiKeyObject) -> Option<KeyUpdate> {
    let mut body = UpdateApiKey::default();
    let mut changes = Vec::new();
    if let Some(want) = &desired.budget {
        let have = remote.usage_limits.as_ref();
        if want.as_ref().map(budget_key) != have.map(budget_key) {
            changes.push(FieldChange::new(
                "budget",
                describe_budget(have),
                describe_budget(want.as_ref()),
            ));
            body.usage_limits = match want {
                None => Nullable::Null,
                Some(w) => {
                    let same_schedule = have.filter(|h| {
                        h.periodic_reset == w.periodic_reset
                            && h.periodic_reset_days == w.periodic_reset_days
                    });
                    Nullable::Value(WorkspaceUsageLimit {
                        next_usage_reset_at: same_schedule.and_then(|h| h.next_usage_reset_at).or(
                            remote
                                .next_usage_reset_at
                                .filter(|_| same_schedule.is_some()),
                        ),
                        ..w.clone()
                    })
                }
            };
        }
    }
    if let Some(want) = &desired.rate_limits {
        let have = remote.rate_limits.clone().unwrap_or_default();
        if sorted_rates(want) != sorted_rates(&have) {
            changes.push(FieldChange::new(
                "rateLimits",
                describe_rates(&have),
                describe_rates(want),
            ));
            body.rate_limits = Nullable::Value(sorted_rates(want));
        }
    }
    if let Some(want) = &desired.alert_emails {
        let have = remote.alert_emails.clone().unwrap_or_default();
        if sorted_emails(want) != sorted_emails(&have) {
            changes.push(FieldChange::new(
                "alertEmails",
                describe_emails(&have),
                describe_emails(want),
            ));
            body.alert_emails = Nullable::Value(want.clone());
        }
    }
    if let Some(want) = &desired.scopes {
        let have = &remote.scopes;
        if sorted_scopes(want) != sorted_scopes(have) {
            changes.push(FieldChange::new(
                "scopes",
                describe_scopes(have),
                describe_scopes(want),
            ));
            body.scopes = Some(sorted_scopes(want));
        }
    }
    (!changes.is_empty()).then_some(KeyUpdate { body, changes })
}

fn sorted_scopes(list: &[String]) -> Vec<String> {
    let mut v = list.to_vec();
    v.sort();
    v.dedup();
    v
}

fn describe_scopes(list: &[String]) -> String {
    if list.is_empty() {
        "(none)".into()
    } else {
        sorted_scopes(list).join(", ")
    }
}

/// The create request of an issued key: `(sub-type, body)`, its name carrying the marker.
pub fn create_request(
    spec: &ApiKeyBudgetSpec,
    remote_name: String,
    workspace_id: &str,
) -> Option<(ApiKeySubType, CreateApiKey)> {
    let issue = spec.issue.as_ref()?;
    let desired = DesiredKey::from_spec(spec);
    let sub_type = issue.sub_type;
    Some((
        sub_type,
        CreateApiKey {
            name: remote_name,
            description: Some("Issued by portkey-budget-operator; do not edit its limits here: they are managed from Kubernetes".into()),
            workspace_id: Some(workspace_id.to_owned()),
            user_id: issue.user_id.clone(),
            scopes: issue.scopes.clone(),
            usage_limits: desired.budget.flatten(),
            rate_limits: sorted_rates(&desired.rate_limits.unwrap_or_default()),
            alert_emails: desired.alert_emails.unwrap_or_default(),
        },
    ))
}

/// The status figures: (budget, reset, rate limits), as Portkey reports them.
pub fn summaries(remote: &ApiKeyObject) -> (Option<String>, Option<String>, Option<String>) {
    let budget = remote
        .usage_limits
        .as_ref()
        .map(|l| format!("{} {}", l.credit_limit.normalize(), l.limit_type));
    let reset = remote
        .usage_limits
        .as_ref()
        .map(|l| schedule_text(l.periodic_reset, l.periodic_reset_days));
    let rates = remote.rate_limits.as_deref().unwrap_or_default();
    let rate = (!rates.is_empty()).then(|| describe_rates(rates));
    (budget, reset, rate)
}

/// The keys as ownership candidates (id, name with its marker, age).
pub fn candidates(keys: &[ApiKeyObject]) -> impl Iterator<Item = Candidate<'_>> {
    keys.iter().map(|k| Candidate {
        id: &k.id,
        name: k.name.as_deref(),
        created_at: k.created_at,
    })
}

/// [`ownership::check_adoption`] for an existing key (`spec.existing`): it must belong to
/// `workspace_id` (an organisation key belongs to none) and carry no other installation's
/// marker; `Ok(Some(_))` names the resource of this installation that issued it.
pub fn check_existing(
    key: &ApiKeyObject,
    workspace_id: &str,
    identity: &Identity,
) -> Result<Option<MarkedBy>, Refusal> {
    ownership::check_adoption(
        "spec.existing",
        &key.id,
        key.workspace_id.as_deref().unwrap_or("(organisation key)"),
        key.name.as_deref(),
        workspace_id,
        identity,
    )
    .map_err(key_words)
}

/// The refusal to take over an existing key issued for `marked`.
pub fn issued_elsewhere(marked: &MarkedBy, key_id: &str) -> Refusal {
    key_words(marked.refusal("spec.existing", key_id))
}

/// Ownership refusals speak of policies; these are about a key.
fn key_words(mut refusal: Refusal) -> Refusal {
    refusal.message = refusal.message.replace("Portkey policy", "Portkey API key");
    refusal
}

/// The one key of `keys` named `name` (`spec.existing.name`), or why there is none.
pub fn find_by_name<'a>(keys: &'a [ApiKeyObject], name: &str) -> Result<&'a ApiKeyObject, Refusal> {
    let mut matching = keys.iter().filter(|k| k.name.as_deref() == Some(name));
    match (matching.next(), matching.next()) {
        (Some(k), None) => Ok(k),
        (None, _) => Err(Refusal {
            reason: reasons::KEY_NOT_FOUND,
            message: format!("spec.existing.name: the workspace has no API key named {name:?}"),
        }),
        (Some(_), Some(_)) => Err(Refusal {
            reason: reasons::AMBIGUOUS_KEY_NAME,
            message: format!(
                "spec.existing.name: several API keys of the workspace are named {name:?}; name the key by spec.existing.id instead"
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ExistingKey, IssueKey, Money};
    use rust_decimal::Decimal;

    fn spec(issue: bool) -> ApiKeyBudgetSpec {
        ApiKeyBudgetSpec {
            workspace: None,
            existing: (!issue).then(|| ExistingKey {
                id: None,
                name: Some("payments".into()),
            }),
            issue: issue.then(|| IssueKey {
                name: None,
                sub_type: ApiKeySubType::Service,
                user_id: None,
                scopes: vec!["completions.write".into()],
                secret_name: "payments-key".into(),
                secret_key: None,
                rotation_transition_seconds: None,
            }),
            budget: Some(KeyBudget {
                limit_type: UsageLimitType::Cost,
                credit_limit: Money(Decimal::from(200)),
                alert_threshold: Some(Money(Decimal::from(150))),
                periodic_reset: Some(PeriodicReset::Monthly),
                periodic_reset_days: None,
            }),
            rate_limits: None,
            alert_emails: None,
            deletion_policy: None,
        }
    }

    fn remote() -> ApiKeyObject {
        serde_json::from_value(serde_json::json!({
            "id": "k1", "name": "payments", "workspace_id": "ws", "status": "active",
            "scopes": ["completions.write", "logs.view"],
            "usage_limits": {"type": "cost", "credit_limit": 200.0, "alert_threshold": 150,
                "periodic_reset": "monthly", "next_usage_reset_at": "2026-12-01T00:00:00Z"},
            "rate_limits": [{"type": "requests", "unit": "rpm", "value": 10}],
            "alert_emails": ["ops@example.com"]
        }))
        .unwrap()
    }

    #[test]
    fn existing_key_compares_only_declared_fields() {
        let desired = DesiredKey::from_spec(&spec(false));
        assert_eq!(desired.managed_fields(), "budget");
        assert_eq!(plan(&desired, &remote()), None, "200.0 equals 200");
    }

    #[test]
    fn issued_key_owns_every_field() {
        let desired = DesiredKey::from_spec(&spec(true));
        let update = plan(&desired, &remote()).expect("rate limits and e-mails differ");
        assert_eq!(update.body.rate_limits, Nullable::Value(vec![]));
        assert_eq!(update.body.alert_emails, Nullable::Value(vec![]));
        assert!(
            update.body.usage_limits.is_absent(),
            "the budget is unchanged"
        );
    }

    #[test]
    fn issued_key_scopes_are_reconciled_and_existing_ones_never() {
        let desired = DesiredKey::from_spec(&spec(true));
        let update = plan(&desired, &remote()).expect("the remote key has logs.view too");
        assert_eq!(
            update.body.scopes,
            Some(vec!["completions.write".to_owned()])
        );
        assert!(update.changes.iter().any(|c| c.field == "scopes"));
        let existing = DesiredKey::from_spec(&spec(false));
        assert_eq!(existing.scopes, None);
        assert_eq!(
            plan(&existing, &remote()),
            None,
            "an existing key's scopes stay"
        );
    }

    #[test]
    fn a_changed_amount_keeps_the_schedule() {
        let mut s = spec(false);
        s.budget.as_mut().unwrap().credit_limit = Money(Decimal::from(300));
        let update = plan(&DesiredKey::from_spec(&s), &remote()).unwrap();
        let Nullable::Value(sent) = update.body.usage_limits else {
            panic!("the budget is sent")
        };
        assert_eq!(sent.credit_limit, Decimal::from(300));
        assert_eq!(
            sent.next_usage_reset_at.map(|t| t.to_string()),
            Some("2026-12-01T00:00:00Z".into()),
            "the next reset is carried so the schedule is not recomputed"
        );
        // A changed schedule is sent without the old next reset.
        s.budget.as_mut().unwrap().periodic_reset = Some(PeriodicReset::Weekly);
        let update = plan(&DesiredKey::from_spec(&s), &remote()).unwrap();
        let Nullable::Value(sent) = update.body.usage_limits else {
            panic!("the budget is sent")
        };
        assert_eq!(sent.next_usage_reset_at, None);
    }

    #[test]
    fn emails_compare_as_sets() {
        let mut s = spec(false);
        s.alert_emails = Some(vec!["OPS@example.com".into()]);
        assert_eq!(plan(&DesiredKey::from_spec(&s), &remote()), None);
        s.alert_emails = Some(vec![]);
        let update = plan(&DesiredKey::from_spec(&s), &remote()).unwrap();
        assert_eq!(update.changes[0].field, "alertEmails");
    }

    #[test]
    fn names_must_match_exactly_one_key() {
        let k = remote();
        let keys = vec![k.clone()];
        assert_eq!(find_by_name(&keys, "payments").unwrap().id, "k1");
        assert_eq!(
            find_by_name(&keys, "nope").unwrap_err().reason,
            "KeyNotFound"
        );
        let two = vec![
            k.clone(),
            ApiKeyObject {
                id: "k2".into(),
                ..k
            },
        ];
        assert_eq!(
            find_by_name(&two, "payments").unwrap_err().reason,
            "AmbiguousKeyName"
        );
    }

    #[test]
    fn create_requests_carry_the_marker_name_and_limits() {
        let (sub, body) = create_request(&spec(true), "payments [k8s:akb:a/b@c]".into(), "ws")
            .expect("issue mode");
        assert_eq!(sub, ApiKeySubType::Service);
        assert_eq!(body.workspace_id.as_deref(), Some("ws"));
        assert_eq!(body.usage_limits.unwrap().credit_limit, Decimal::from(200));
        assert!(create_request(&spec(false), String::new(), "ws").is_none());
    }
}
