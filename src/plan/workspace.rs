//! Planning for workspace budgets: the inline `usage_limits[]` / `rate_limits[]` of a workspace.
//!
//! A `WorkspaceBudget` owns those lists while it exists. A PUT sends only a list that differs,
//! and a usage limit whose schedule did not change carries Portkey's current
//! `next_usage_reset_at`, so updating a limit never reschedules its reset.

use serde::Serialize;

use super::{FieldChange, fmt_opt};
use crate::api::{WorkspaceBudgetSpec, WorkspaceRateLimitSpec, WorkspaceUsageLimitSpec};
use crate::portkey::*;

/// The limits a `WorkspaceBudget` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredWorkspaceLimits {
    pub usage_limits: Vec<WorkspaceUsageLimit>,
    pub rate_limits: Vec<WorkspaceRateLimit>,
}

fn usage_limit(spec: &WorkspaceUsageLimitSpec) -> WorkspaceUsageLimit {
    WorkspaceUsageLimit {
        limit_type: spec.limit_type,
        credit_limit: spec.credit_limit.decimal(),
        alert_threshold: spec.alert_threshold.map(|m| m.decimal()),
        periodic_reset: spec.periodic_reset,
        periodic_reset_days: spec.periodic_reset_days.map(i64::from),
        next_usage_reset_at: None,
    }
}

fn rate_limit(spec: &WorkspaceRateLimitSpec) -> WorkspaceRateLimit {
    WorkspaceRateLimit {
        limit_type: spec.limit_type,
        unit: spec.unit,
        value: spec.value.into(),
    }
}

impl DesiredWorkspaceLimits {
    pub fn from_spec(spec: &WorkspaceBudgetSpec) -> Self {
        let mut usage: Vec<_> = spec.usage_limits.iter().map(usage_limit).collect();
        usage.sort_by_key(|l| l.limit_type);
        let mut rate: Vec<_> = spec.rate_limits.iter().map(rate_limit).collect();
        rate.sort_by_key(|l| (l.limit_type, l.unit));
        DesiredWorkspaceLimits {
            usage_limits: usage,
            rate_limits: rate,
        }
    }
}

/// A usage limit without its server-computed next reset, for comparison.
fn usage_key(l: &WorkspaceUsageLimit) -> WorkspaceUsageLimit {
    WorkspaceUsageLimit {
        credit_limit: l.credit_limit.normalize(),
        alert_threshold: l.alert_threshold.map(|d| d.normalize()),
        next_usage_reset_at: None,
        ..l.clone()
    }
}

fn sorted_usage(list: &[WorkspaceUsageLimit]) -> Vec<WorkspaceUsageLimit> {
    let mut v: Vec<_> = list.iter().map(usage_key).collect();
    v.sort_by_key(|l| l.limit_type);
    v
}

fn sorted_rate(list: &[WorkspaceRateLimit]) -> Vec<WorkspaceRateLimit> {
    let mut v: Vec<_> = list
        .iter()
        .map(|l| WorkspaceRateLimit {
            value: l.value.normalize(),
            ..l.clone()
        })
        .collect();
    v.sort_by_key(|l| (l.limit_type, l.unit));
    v
}

fn describe_usage(list: &[WorkspaceUsageLimit]) -> String {
    if list.is_empty() {
        return "(none)".into();
    }
    list.iter()
        .map(|l| {
            let reset = match (l.periodic_reset, l.periodic_reset_days) {
                (Some(p), _) => format!(" {p}"),
                (None, Some(d)) => format!(" every {d}d"),
                _ => String::new(),
            };
            format!(
                "{} {} (alert {}){reset}",
                l.limit_type,
                l.credit_limit.normalize(),
                fmt_opt(l.alert_threshold.map(|d| d.normalize()).as_ref())
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_rate(list: &[WorkspaceRateLimit]) -> String {
    if list.is_empty() {
        return "(none)".into();
    }
    list.iter()
        .map(|l| format!("{} {} {}", l.value.normalize(), l.limit_type, l.unit))
        .collect::<Vec<_>>()
        .join("; ")
}

/// One PUT to make, with what it changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkspaceUpdate {
    pub body: UpdateWorkspace,
    pub changes: Vec<FieldChange>,
}

/// The usage limits to send: each keeps Portkey's next reset when its schedule is unchanged.
fn usage_to_send(
    desired: &[WorkspaceUsageLimit],
    remote: &[WorkspaceUsageLimit],
) -> Vec<WorkspaceUsageLimit> {
    desired
        .iter()
        .map(|d| {
            let same_schedule = remote.iter().find(|r| {
                r.limit_type == d.limit_type
                    && r.periodic_reset == d.periodic_reset
                    && r.periodic_reset_days == d.periodic_reset_days
            });
            WorkspaceUsageLimit {
                next_usage_reset_at: same_schedule.and_then(|r| r.next_usage_reset_at),
                ..d.clone()
            }
        })
        .collect()
}

/// The PUT that makes the workspace hold the desired limits, or `None` when it already does.
pub fn plan(desired: &DesiredWorkspaceLimits, remote: &Workspace) -> Option<WorkspaceUpdate> {
    let remote_usage = remote.usage_limits.clone().unwrap_or_default();
    let remote_rate = remote.rate_limits.clone().unwrap_or_default();
    let mut body = UpdateWorkspace::default();
    let mut changes = Vec::new();
    if sorted_usage(&desired.usage_limits) != sorted_usage(&remote_usage) {
        changes.push(FieldChange::new(
            "usageLimits",
            describe_usage(&sorted_usage(&remote_usage)),
            describe_usage(&desired.usage_limits),
        ));
        body.usage_limits = if desired.usage_limits.is_empty() {
            Nullable::Null
        } else {
            Nullable::Value(usage_to_send(&desired.usage_limits, &remote_usage))
        };
    }
    if sorted_rate(&desired.rate_limits) != sorted_rate(&remote_rate) {
        changes.push(FieldChange::new(
            "rateLimits",
            describe_rate(&sorted_rate(&remote_rate)),
            describe_rate(&desired.rate_limits),
        ));
        body.rate_limits = if desired.rate_limits.is_empty() {
            Nullable::Null
        } else {
            Nullable::Value(desired.rate_limits.clone())
        };
    }
    (!changes.is_empty()).then_some(WorkspaceUpdate { body, changes })
}

/// On deletion with `Clear`: remove the limits this resource set (same type, or same type and
/// unit), keep any others. `None` when nothing of ours is left.
pub fn clear(desired: &DesiredWorkspaceLimits, remote: &Workspace) -> Option<WorkspaceUpdate> {
    let remote_usage = remote.usage_limits.clone().unwrap_or_default();
    let remote_rate = remote.rate_limits.clone().unwrap_or_default();
    let keep_usage: Vec<_> = remote_usage
        .iter()
        .filter(|r| {
            !desired
                .usage_limits
                .iter()
                .any(|d| d.limit_type == r.limit_type)
        })
        .cloned()
        .collect();
    let keep_rate: Vec<_> = remote_rate
        .iter()
        .filter(|r| {
            !desired
                .rate_limits
                .iter()
                .any(|d| d.limit_type == r.limit_type && d.unit == r.unit)
        })
        .cloned()
        .collect();
    let target = DesiredWorkspaceLimits {
        usage_limits: usage_to_send(&keep_usage, &remote_usage),
        rate_limits: keep_rate,
    };
    plan(&target, remote)
}

/// Printer-column summaries: budget, reset and rate limit.
pub fn summaries(ws: &Workspace) -> (Option<String>, Option<String>, Option<String>) {
    let usage = ws.usage_limits.clone().unwrap_or_default();
    let budget = usage
        .iter()
        .map(|l| format!("{} {}", l.credit_limit.normalize(), l.limit_type))
        .collect::<Vec<_>>()
        .join(", ");
    let reset = usage
        .iter()
        .map(|l| super::schedule_text(l.periodic_reset, l.periodic_reset_days))
        .collect::<Vec<_>>()
        .join(", ");
    let rate = describe_rate(&sorted_rate(&ws.rate_limits.clone().unwrap_or_default()));
    let some = |s: String| (!s.is_empty() && s != "(none)").then_some(s);
    (some(budget), some(reset), some(rate))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> rust_decimal::Decimal {
        rust_decimal::Decimal::from_str(s).unwrap()
    }

    fn spec() -> WorkspaceBudgetSpec {
        serde_json::from_value(serde_json::json!({
            "workspace": "marketing",
            "usageLimits": [{"type": "cost", "creditLimit": 500, "alertThreshold": 400, "periodicReset": "monthly"}],
            "rateLimits": [{"type": "requests", "unit": "rpm", "value": 120}]
        }))
        .unwrap()
    }

    fn workspace(
        usage: Option<Vec<WorkspaceUsageLimit>>,
        rate: Option<Vec<WorkspaceRateLimit>>,
    ) -> Workspace {
        Workspace {
            id: "ws".into(),
            object: None,
            slug: Some("marketing".into()),
            name: None,
            description: None,
            usage_limits: usage,
            rate_limits: rate,
            last_reset_at: None,
            created_at: None,
            last_updated_at: None,
        }
    }

    #[test]
    fn empty_workspace_gets_both_lists() {
        let want = DesiredWorkspaceLimits::from_spec(&spec());
        let up = plan(&want, &workspace(None, None)).unwrap();
        assert_eq!(up.changes.len(), 2);
        let v = serde_json::to_value(&up.body).unwrap();
        assert_eq!(v["usage_limits"][0]["credit_limit"], 500);
        assert!(v["usage_limits"][0].get("next_usage_reset_at").is_none());
        assert_eq!(v["rate_limits"][0]["unit"], "rpm");
    }

    #[test]
    fn in_sync_ignores_order_scale_and_next_reset() {
        let want = DesiredWorkspaceLimits::from_spec(&spec());
        let mut usage = want.usage_limits.clone();
        usage[0].credit_limit = d("500.0");
        usage[0].next_usage_reset_at = Some("2026-12-01T00:00:00Z".parse().unwrap());
        assert_eq!(
            plan(
                &want,
                &workspace(Some(usage), Some(want.rate_limits.clone()))
            ),
            None
        );
    }

    #[test]
    fn limit_change_keeps_the_reset_schedule_and_leaves_rates_alone() {
        let want = DesiredWorkspaceLimits::from_spec(&spec());
        let mut remote_usage = want.usage_limits.clone();
        remote_usage[0].credit_limit = d("300");
        remote_usage[0].next_usage_reset_at = Some("2026-12-01T00:00:00Z".parse().unwrap());
        let up = plan(
            &want,
            &workspace(Some(remote_usage), Some(want.rate_limits.clone())),
        )
        .unwrap();
        assert!(
            up.body.rate_limits.is_absent(),
            "only the list that differs is sent"
        );
        let Nullable::Value(sent) = &up.body.usage_limits else {
            panic!()
        };
        assert_eq!(
            sent[0].next_usage_reset_at,
            Some("2026-12-01T00:00:00Z".parse().unwrap())
        );
        assert_eq!(sent[0].credit_limit, d("500"));
        // A schedule change is sent without the old next reset, so Portkey computes a new one.
        let mut weekly = spec();
        weekly.usage_limits[0].periodic_reset = Some(PeriodicReset::Weekly);
        let up = plan(
            &DesiredWorkspaceLimits::from_spec(&weekly),
            &workspace(Some(want.usage_limits.clone()), None),
        )
        .unwrap();
        let Nullable::Value(sent) = &up.body.usage_limits else {
            panic!()
        };
        assert_eq!(sent[0].next_usage_reset_at, None);
    }

    #[test]
    fn clear_removes_only_our_limits() {
        let want = DesiredWorkspaceLimits::from_spec(&spec());
        let mut usage = want.usage_limits.clone();
        usage.push(WorkspaceUsageLimit {
            limit_type: UsageLimitType::Tokens,
            credit_limit: d("1000000"),
            alert_threshold: None,
            periodic_reset: None,
            periodic_reset_days: None,
            next_usage_reset_at: None,
        });
        let up = clear(
            &want,
            &workspace(Some(usage), Some(want.rate_limits.clone())),
        )
        .unwrap();
        let Nullable::Value(kept) = &up.body.usage_limits else {
            panic!()
        };
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].limit_type, UsageLimitType::Tokens);
        assert_eq!(up.body.rate_limits, Nullable::Null);
        assert_eq!(clear(&want, &workspace(None, None)), None);
    }
}
