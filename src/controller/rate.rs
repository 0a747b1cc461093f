//! `RateLimitPolicy`: the rate-limit parts of the policy reconcile (Portkey exposes no counters,
//! so there is nothing kind-specific to report).

use kube::runtime::controller::Action;

use super::policy::{CommonSpec, EventSpec, PolicyResource};
use super::{Context, Error};
use crate::api::*;
use crate::plan::Identity;
use crate::plan::rate::DesiredRatePolicy;
use crate::portkey::{RateLimits, RateLimitsPolicy};

super::policy::policy_kind!(RateLimitPolicy, RateLimitPolicyStatus, false);

impl PolicyResource for RateLimitPolicy {
    type Kind = RateLimits;
    type Desired = DesiredRatePolicy;
    const INCLUDE_USAGE: bool = false;

    fn common(&self) -> CommonSpec {
        CommonSpec {
            workspace: self.spec.workspace.clone(),
            deletion_policy: self.spec.deletion_policy,
            management_policy: self.spec.management_policy,
            adopt_policy_id: self.spec.adopt_policy_id.clone(),
            on_immutable_change: self.spec.on_immutable_change,
        }
    }

    fn desired(&self, identity: &Identity, workspace_id: &str) -> DesiredRatePolicy {
        DesiredRatePolicy::from_spec(&self.spec, identity, workspace_id)
    }

    fn policy_status(status: &mut RateLimitPolicyStatus) -> &mut RemotePolicyStatus {
        &mut status.common
    }

    fn policy_status_ref(status: &RateLimitPolicyStatus) -> &RemotePolicyStatus {
        &status.common
    }

    fn report(
        &self,
        _: &mut RateLimitPolicyStatus,
        _: Option<&RateLimitsPolicy>,
        _: &DesiredRatePolicy,
    ) -> Vec<EventSpec> {
        Vec::new()
    }
}

/// Reconciles one `RateLimitPolicy`.
pub async fn reconcile(obj: &RateLimitPolicy, ctx: &Context) -> Result<Action, Error> {
    super::engine::reconcile(obj, ctx).await
}
