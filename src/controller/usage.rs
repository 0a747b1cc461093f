//! `UsageLimitPolicy`: the budget-specific parts of the policy reconcile (usage, resets, alerts).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use super::policy::{CommonSpec, EventSpec, PolicyResource};
use super::{Context, Error};
use std::str::FromStr;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;

use crate::api::*;
use crate::metrics::BudgetFigures;
use crate::plan::report::{AlertEvent, usage_report};
use crate::plan::usage::DesiredUsagePolicy;
use crate::plan::{Identity, schedule_text};
use crate::portkey::{UsageLimits, UsageLimitsPolicy};

super::policy::policy_kind!(UsageLimitPolicy, UsageLimitPolicyStatus, true);

impl PolicyResource for UsageLimitPolicy {
    type Kind = UsageLimits;
    type Desired = DesiredUsagePolicy;
    const INCLUDE_USAGE: bool = true;

    fn common(&self) -> CommonSpec {
        CommonSpec {
            workspace: self.spec.workspace.clone(),
            deletion_policy: self.spec.deletion_policy,
            management_policy: self.spec.management_policy,
            adopt_policy_id: self.spec.adopt_policy_id.clone(),
            on_immutable_change: self.spec.on_immutable_change,
        }
    }

    fn desired(&self, identity: &Identity, workspace_id: &str) -> DesiredUsagePolicy {
        DesiredUsagePolicy::from_spec(&self.spec, identity, workspace_id)
    }

    fn policy_status(status: &mut UsageLimitPolicyStatus) -> &mut RemotePolicyStatus {
        &mut status.common
    }

    fn policy_status_ref(status: &UsageLimitPolicyStatus) -> &RemotePolicyStatus {
        &status.common
    }

    fn usage_reset(status: &mut UsageLimitPolicyStatus) -> Option<&mut Option<OneShot>> {
        Some(&mut status.usage_reset)
    }

    fn usage_reset_ref(status: &UsageLimitPolicyStatus) -> Option<&OneShot> {
        status.usage_reset.as_ref()
    }

    fn budget(&self, status: &UsageLimitPolicyStatus) -> Option<BudgetFigures> {
        let limit = self.spec.credit_limit.decimal();
        let usage = status.usage.as_ref();
        let peak = usage
            .and_then(|u| Decimal::from_str(&u.peak_usage).ok())
            .unwrap_or_default();
        let ratio = if limit.is_zero() {
            Decimal::ZERO
        } else {
            peak / limit
        };
        let alert = match (self.spec.alert_threshold, self.spec.alert_threshold_percent) {
            (Some(a), _) if !limit.is_zero() => (a.decimal() / limit).to_f64(),
            (None, Some(p)) => Some(f64::from(p) / 100.0),
            _ => None,
        };
        Some(BudgetFigures {
            budget_type: self.spec.limit_type.to_string(),
            limit: limit.to_f64().unwrap_or(0.0),
            usage: Some(peak.to_f64().unwrap_or(0.0)),
            ratio: Some(ratio.to_f64().unwrap_or(0.0)),
            alert_ratio: alert,
            exhausted_buckets: usage.map_or(0, |u| i64::from(u.exhausted_buckets)),
            next_reset: status.next_reset_at.as_ref().map(|t| t.0.as_second()),
        })
    }

    /// Usage summary, reset times and the alert Events due.
    fn report(
        &self,
        status: &mut UsageLimitPolicyStatus,
        remote: Option<&UsageLimitsPolicy>,
        desired: &DesiredUsagePolicy,
    ) -> Vec<EventSpec> {
        status.reset_schedule = Some(schedule_text(
            self.spec.periodic_reset,
            self.spec.periodic_reset_days.map(i64::from),
        ));
        let Some(p) = remote else {
            status.usage = None;
            status.next_reset_at = None;
            return Vec::new();
        };
        status.next_reset_at = p.next_usage_reset_at.map(Time);
        status.last_reset_at = p.last_reset_at.map(Time);
        let period = p
            .last_reset_at
            .map(|t| t.to_string())
            .unwrap_or_else(|| "since-creation".to_owned());
        let empty = Default::default();
        let usage = p.value_key_usage_map.as_ref().unwrap_or(&empty);
        let threshold = p.alert_threshold.or(desired.alert_threshold);
        let report = usage_report(
            usage,
            p.credit_limit,
            threshold,
            &period,
            status.alerts.as_ref(),
        );
        status.usage = Some(report.summary);
        status.alerts = (!report.alerts.threshold_reached.is_empty()
            || !report.alerts.exhausted.is_empty())
        .then_some(report.alerts);
        report
            .events
            .into_iter()
            .map(|event| match event {
                AlertEvent::ThresholdReached { value_key, usage, threshold } => (
                    EventType::Warning,
                    "AlertThresholdReached",
                    format!(
                        "bucket {value_key} used {} of its {} budget (alert threshold {})",
                        usage.normalize(),
                        p.credit_limit.normalize(),
                        threshold.normalize()
                    ),
                ),
                AlertEvent::Exhausted { value_key, usage, limit } => (
                    EventType::Warning,
                    "BudgetExhausted",
                    format!(
                        "bucket {value_key} reached its limit ({} of {}); Portkey refuses its requests (HTTP 412) until the next reset",
                        usage.normalize(),
                        limit.normalize()
                    ),
                ),
            })
            .collect()
    }
}

/// Reconciles one `UsageLimitPolicy`.
pub async fn reconcile(obj: &UsageLimitPolicy, ctx: &Context) -> Result<Action, Error> {
    super::engine::reconcile(obj, ctx).await
}
