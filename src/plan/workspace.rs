//! Planning for workspace budgets: the inline `usage_limits[]` / `rate_limits[]` of a workspace.
//!
//! A `WorkspaceBudget` manages the limits it declares (usage limits by type, rate limits by type
//! and unit) and leaves any other limit of the workspace as it is, unless it owns the whole lists
//! (`limitOwnership: All`). A PUT sends only a list that differs (with the limits it does not
//! manage unchanged in it), and a usage limit whose schedule did not change carries Portkey's
//! current `next_usage_reset_at`, so updating a limit never reschedules its reset.

use serde::Serialize;

use super::{FieldChange, fmt_opt};
use crate::api::{
    LimitOwnership, WorkspaceBudgetSpec, WorkspaceRateLimitSpec, WorkspaceUsageLimitSpec,
};
use crate::portkey::*;

/// The limits a `WorkspaceBudget` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesiredWorkspaceLimits {
    pub usage_limits: Vec<WorkspaceUsageLimit>,
    pub rate_limits: Vec<WorkspaceRateLimit>,
    pub ownership: LimitOwnership,
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
            ownership: spec.limit_ownership,
        }
    }

    fn declares_usage(&self, l: &WorkspaceUsageLimit) -> bool {
        self.usage_limits
            .iter()
            .any(|d| d.limit_type == l.limit_type)
    }

    fn declares_rate(&self, l: &WorkspaceRateLimit) -> bool {
        self.rate_limits
            .iter()
            .any(|d| d.limit_type == l.limit_type && d.unit == l.unit)
    }

    /// The limits of `remote` this resource does not manage (none with `All`).
    fn others(&self, remote: &Workspace) -> (Vec<WorkspaceUsageLimit>, Vec<WorkspaceRateLimit>) {
        if self.ownership == LimitOwnership::All {
            return (Vec::new(), Vec::new());
        }
        let usage = remote
            .usage_limits
            .iter()
            .flatten()
            .filter(|l| !self.declares_usage(l))
            .cloned()
            .collect();
        let rate = remote
            .rate_limits
            .iter()
            .flatten()
            .filter(|l| !self.declares_rate(l))
            .cloned()
            .collect();
        (usage, rate)
    }

    /// What the workspace should hold: the declared limits plus, with `Declared`, the others it
    /// holds now, untouched.
    fn target(&self, remote: &Workspace) -> (Vec<WorkspaceUsageLimit>, Vec<WorkspaceRateLimit>) {
        let (mut usage, mut rate) = self.others(remote);
        usage.extend(self.usage_limits.iter().cloned());
        rate.extend(self.rate_limits.iter().cloned());
        (usage, rate)
    }
}

/// The limits of the workspace this resource leaves alone, described for status.
pub fn unmanaged(desired: &DesiredWorkspaceLimits, remote: &Workspace) -> Vec<String> {
    let (usage, rate) = desired.others(remote);
    let usage = sorted_usage(&usage);
    let rate = sorted_rate(&rate);
    usage
        .iter()
        .map(|l| format!("usage: {}", describe_usage(std::slice::from_ref(l))))
        .chain(
            rate.iter()
                .map(|l| format!("rate: {}", describe_rate(std::slice::from_ref(l)))),
        )
        .collect()
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

/// The PUT that makes the workspace hold the desired limits (and, with `Declared`, keep every
/// other limit it holds), or `None` when it already does.
pub fn plan(desired: &DesiredWorkspaceLimits, remote: &Workspace) -> Option<WorkspaceUpdate> {
    let (usage, rate) = desired.target(remote);
    put_lists(&usage, &rate, remote)
}

/// The PUT that makes the workspace's lists equal `usage` and `rate`.
fn put_lists(
    usage: &[WorkspaceUsageLimit],
    rate: &[WorkspaceRateLimit],
    remote: &Workspace,
) -> Option<WorkspaceUpdate> {
    let remote_usage = remote.usage_limits.clone().unwrap_or_default();
    let remote_rate = remote.rate_limits.clone().unwrap_or_default();
    let mut body = UpdateWorkspace::default();
    let mut changes = Vec::new();
    if sorted_usage(usage) != sorted_usage(&remote_usage) {
        changes.push(FieldChange::new(
            "usageLimits",
            describe_usage(&sorted_usage(&remote_usage)),
            describe_usage(&sorted_usage(usage)),
        ));
        body.usage_limits = if usage.is_empty() {
            Nullable::Null
        } else {
            Nullable::Value(usage_to_send(usage, &remote_usage))
        };
    }
    if sorted_rate(rate) != sorted_rate(&remote_rate) {
        changes.push(FieldChange::new(
            "rateLimits",
            describe_rate(&sorted_rate(&remote_rate)),
            describe_rate(&sorted_rate(rate)),
        ));
        body.rate_limits = if rate.is_empty() {
            Nullable::Null
        } else {
            Nullable::Value(rate.to_vec())
        };
    }
    (!changes.is_empty()).then_some(WorkspaceUpdate { body, changes })
}

/// On deletion with `Clear`: remove the limits this resource set (same type, or same type and
/// unit) and keep any others; with `All`, remove them all. `None` when nothing is left to remove.
pub fn clear(desired: &DesiredWorkspaceLimits, remote: &Workspace) -> Option<WorkspaceUpdate> {
    let (usage, rate) = desired.others(remote);
    put_lists(&usage, &rate, remote)
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
