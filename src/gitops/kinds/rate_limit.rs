//! `RateLimitPolicy` in `plan` and `sync`: a rate-limits policy per resource (the shared
//! policy plan, [`super::policy`]); the status row shows its rate.

use super::Shown;
use super::policy::{self, PolicyResource};
use crate::api::RateLimitPolicy;
use crate::plan::marker::Identity;
use crate::plan::policy::PlanOptions;
use crate::plan::rate::DesiredRatePolicy;
use crate::portkey::*;

policy::policy_gitops_kind!(RateLimitPolicy);

impl PolicyResource for RateLimitPolicy {
    type Family = RateLimits;
    type Desired = DesiredRatePolicy;

    fn desired(&self, identity: &Identity, ws: &str) -> DesiredRatePolicy {
        DesiredRatePolicy::from_spec(&self.spec, identity, ws)
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

    fn create_fields(b: &CreateRateLimitsPolicy) -> Vec<(&'static str, String)> {
        vec![
            ("name", b.name.clone()),
            ("type", b.limit_type.to_string()),
            ("value", b.value.normalize().to_string()),
            ("unit", b.unit.to_string()),
        ]
    }

    async fn shown(_: &PortkeyClient, p: RateLimitsPolicy) -> Shown {
        Shown {
            limit: format!("{} {} {}", p.value.normalize(), p.limit_type, p.unit),
            peak_usage: "-".into(),
            reset: "-".into(),
            state: p.status.to_string(),
        }
    }
}
