//! `UsageLimitPolicy` in `plan` and `sync`: a usage-limits policy per resource (the shared
//! policy plan, [`super::policy`]); a create shows its limit, threshold and reset; the status
//! row shows the limit, the peak usage of its buckets and the next reset.

use super::Shown;
use super::policy::{self, PolicyResource};
use crate::api::UsageLimitPolicy;
use crate::plan::marker::Identity;
use crate::plan::policy::PlanOptions;
use crate::plan::report::percent;
use crate::plan::usage::DesiredUsagePolicy;
use crate::plan::{fmt_opt, schedule_text};
use crate::portkey::*;

policy::policy_gitops_kind!(UsageLimitPolicy);

impl PolicyResource for UsageLimitPolicy {
    type Family = UsageLimits;
    type Desired = DesiredUsagePolicy;

    fn desired(&self, identity: &Identity, ws: &str) -> DesiredUsagePolicy {
        DesiredUsagePolicy::from_spec(&self.spec, identity, ws)
    }

    fn options(&self) -> PlanOptions {
        PlanOptions {
            management: self.spec.management_policy,
            on_immutable_change: self.spec.on_immutable_change,
        }
    }

    fn adopt_policy_id(&self) -> Option<&str> {
        self.spec.adopt_policy_id.as_deref()
    }

    fn create_fields(b: &CreateUsageLimitsPolicy) -> Vec<(&'static str, String)> {
        vec![
            ("name", b.name.clone()),
            ("type", b.limit_type.to_string()),
            ("creditLimit", b.credit_limit.normalize().to_string()),
            (
                "alertThreshold",
                fmt_opt(b.alert_threshold.map(|d| d.normalize()).as_ref()),
            ),
            (
                "reset",
                schedule_text(b.periodic_reset, b.periodic_reset_days),
            ),
        ]
    }

    /// Read again with its usage (the peak of its buckets).
    async fn shown(client: &PortkeyClient, p: UsageLimitsPolicy) -> Shown {
        let with_usage = GetOptions {
            include_usage: true,
            ..Default::default()
        };
        let full = client
            .usage_limits()
            .get(&p.id, with_usage)
            .await
            .unwrap_or(p);
        let peak = full
            .value_key_usage_map
            .as_ref()
            .and_then(|m| m.values().map(|u| u.current_usage).max())
            .unwrap_or_default();
        let schedule = schedule_text(full.periodic_reset, full.periodic_reset_days);
        let reset = match full.next_usage_reset_at {
            Some(t) => format!("{schedule} (next {})", t.strftime("%Y-%m-%d")),
            None => schedule,
        };
        Shown {
            limit: format!("{} {}", full.credit_limit.normalize(), full.limit_type),
            peak_usage: format!(
                "{} ({}%)",
                peak.normalize(),
                percent(peak, full.credit_limit)
            ),
            reset,
            state: full.status.to_string(),
        }
    }
}
