//! RateLimitPolicy: create, update in place, drift, delete, and the namespace binding.

use crate::harness::*;

#[tokio::test]
async fn rate_limit_policy_lifecycle() {
    let env = env().await;
    env.kube.apply(&rlp("per-user", 120, "rpm"));
    env.reconcile_rlp(NS, "per-user").await;
    let remote = env.active_rates(WS_A).await;
    assert_eq!(remote.len(), 1);
    assert_eq!(
        (remote[0].unit, remote[0].value),
        (RateLimitUnit::Rpm, d("120"))
    );
    assert_eq!(
        remote[0].name.as_deref(),
        Some("team-a/per-user [k8s:rlp:team-a/per-user]")
    );
    let status = env.rlp_status(NS, "per-user");
    assert_eq!(
        status.common.policy_id.as_deref(),
        Some(remote[0].id.as_str())
    );
    assert!(conditions::is_true(&status.common.conditions, "Ready"));

    // Change the value and window: one PUT, same policy.
    env.clear_requests().await;
    env.kube.apply(&rlp("per-user", 5000, "rph"));
    env.reconcile_rlp(NS, "per-user").await;
    let log = env.emu.control().requests().await.unwrap();
    assert_eq!(log.count("PUT", "/v1/policies/rate-limits/"), 1);
    assert_eq!(log.count("POST", "/v1/policies"), 0);
    let after = env.active_rates(WS_A).await;
    assert_eq!(
        (after[0].id.as_str(), after[0].unit, after[0].value),
        (remote[0].id.as_str(), RateLimitUnit::Rph, d("5000"))
    );

    // Drift is reverted.
    let edit = UpdateRateLimitsPolicy {
        value: Some(d("1")),
        ..Default::default()
    };
    env.portkey
        .rate_limits()
        .update(&remote[0].id, &edit)
        .await
        .unwrap();
    env.reconcile_rlp(NS, "per-user").await;
    assert_eq!(env.active_rates(WS_A).await[0].value, d("5000"));
    assert!(env.has_event("DriftCorrected"));

    // Delete archives.
    env.kube.delete::<RateLimitPolicy>(NS, "per-user");
    env.reconcile_rlp(NS, "per-user").await;
    assert!(env.active_rates(WS_A).await.is_empty());
    assert!(env.kube.get::<RateLimitPolicy>(NS, "per-user").is_none());
}

#[tokio::test]
async fn rate_limit_policy_follows_the_namespace_binding() {
    let env = env().await;
    env.kube
        .add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-b")]);
    env.kube.apply(&rlp("per-user", 120, "rpm"));
    env.reconcile_rlp(NS, "per-user").await;
    let status = env.rlp_status(NS, "per-user");
    let ready = conditions::get(&status.common.conditions, "Ready").unwrap();
    assert_eq!(ready.reason, "WorkspaceNotAllowed");
    assert_eq!(env.api_calls().await, 0);
}
