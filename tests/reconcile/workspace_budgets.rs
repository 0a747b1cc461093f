//! WorkspaceBudget: the workspace's own limits, what it does not declare, conflicts between
//! budgets for one workspace, and the deletion policies.

use crate::harness::*;

#[tokio::test]
async fn workspace_budget_lifecycle() {
    let env = env().await;
    env.set_clock(Some("2026-11-21T14:00:00Z")).await;
    env.kube
        .apply(&wsb("marketing", "team-a", 500, "2026-11-01T00:00:00Z"));
    env.reconcile_wsb("marketing").await;
    let ws = env.workspace(WS_A).await;
    let usage = ws.usage_limits.clone().unwrap();
    assert_eq!(usage.len(), 1);
    assert_eq!(
        (usage[0].credit_limit, usage[0].alert_threshold),
        (d("500"), Some(d("400")))
    );
    assert_eq!(
        usage[0].next_usage_reset_at,
        Some("2026-12-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(ws.rate_limits.clone().unwrap()[0].value, d("120"));
    let st = env.wsb_status("marketing");
    assert_eq!(st.workspace_id.as_deref(), Some(WS_A));
    assert_eq!(st.budget.as_deref(), Some("500 cost"));
    assert_eq!(st.reset.as_deref(), Some("monthly"));
    assert_eq!(st.rate_limit.as_deref(), Some("120 requests rpm"));
    assert!(conditions::is_true(&st.conditions, "Ready"));
    assert!(st.next_reset_at.is_some());

    // In sync: no write.
    env.clear_requests().await;
    env.reconcile_wsb("marketing").await;
    assert_eq!(env.api_writes().await, 0);

    // Raise the budget later in the month: only usage_limits is sent and the reset stays.
    env.set_clock(Some("2026-11-25T09:00:00Z")).await;
    env.kube
        .apply(&wsb("marketing", "team-a", 800, "2026-11-01T00:00:00Z"));
    env.reconcile_wsb("marketing").await;
    let ws = env.workspace(WS_A).await;
    let usage = ws.usage_limits.unwrap();
    assert_eq!(usage[0].credit_limit, d("800"));
    assert_eq!(
        usage[0].next_usage_reset_at,
        Some("2026-12-01T00:00:00Z".parse().unwrap()),
        "reset not rescheduled"
    );
    assert!(env.has_event("Updated"));

    // Drift on rate limits is reverted.
    let edit = UpdateWorkspace {
        rate_limits: Nullable::Null,
        ..Default::default()
    };
    env.edit_workspace(WS_A, edit).await;
    env.reconcile_wsb("marketing").await;
    assert!(env.workspace(WS_A).await.rate_limits.is_some());
    assert!(env.has_event("DriftCorrected"));

    // Delete (Clear): our limits go, a hand-made tokens budget stays.
    let mut usage = env.workspace(WS_A).await.usage_limits.unwrap();
    usage.push(ws_usage(UsageLimitType::Tokens, "1000000", None));
    let edit = UpdateWorkspace {
        usage_limits: Nullable::Value(usage),
        ..Default::default()
    };
    env.edit_workspace(WS_A, edit).await;
    env.kube.delete::<WorkspaceBudget>("", "marketing");
    env.reconcile_wsb("marketing").await;
    assert!(env.kube.get::<WorkspaceBudget>("", "marketing").is_none());
    let ws = env.workspace(WS_A).await;
    let left = ws.usage_limits.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].limit_type, UsageLimitType::Tokens);
    assert_eq!(ws.rate_limits, None);
    assert!(env.has_event("Cleared"));
}

#[tokio::test]
async fn limits_it_does_not_declare_are_kept_unless_it_owns_all() {
    let env = env().await;
    // Finance set a $500 monthly budget and a token rate limit in the Portkey UI.
    let by_hand = UpdateWorkspace {
        usage_limits: Nullable::Value(vec![ws_usage(
            UsageLimitType::Cost,
            "500",
            Some(PeriodicReset::Monthly),
        )]),
        rate_limits: Nullable::Value(vec![ws_rate(
            RateLimitType::Tokens,
            RateLimitUnit::Rpd,
            "1000000",
        )]),
        ..Default::default()
    };
    env.edit_workspace(WS_A, by_hand).await;
    let reset = env.workspace(WS_A).await.usage_limits.unwrap()[0].next_usage_reset_at;
    // A WorkspaceBudget that declares only a request rate limit.
    let rates_only = wsb_of(
        "rates-only",
        json!({
            "workspace": "team-a",
            "rateLimits": [{"type": "requests", "unit": "rpm", "value": 120}]
        }),
    );
    env.kube.apply(&rates_only);
    env.reconcile_wsb("rates-only").await;
    let ws = env.workspace(WS_A).await;
    let usage = ws.usage_limits.unwrap();
    assert_eq!(usage.len(), 1, "the hand-made budget is kept");
    assert_eq!(usage[0].credit_limit, d("500"));
    assert_eq!(
        usage[0].next_usage_reset_at, reset,
        "and its reset untouched"
    );
    let rates = ws.rate_limits.unwrap();
    assert_eq!(rates.len(), 2, "{rates:?}");
    let st = env.wsb_status("rates-only");
    assert_eq!(
        st.unmanaged_limits,
        [
            "usage: cost 500 (alert (none)) monthly",
            "rate: 1000000 tokens rpd"
        ]
    );
    assert!(conditions::is_true(&st.conditions, "Ready"));
    // Drift on the declared limit is corrected; the others are still left alone.
    let drift = ws_rate(RateLimitType::Requests, RateLimitUnit::Rpm, "5");
    env.edit_workspace(WS_A, only_rates(vec![drift])).await;
    env.reconcile_wsb("rates-only").await;
    let ws = env.workspace(WS_A).await;
    assert_eq!(ws.usage_limits.unwrap().len(), 1);
    let rates = ws.rate_limits.unwrap();
    assert!(
        rates
            .iter()
            .any(|r| r.unit == RateLimitUnit::Rpm && r.value == d("120"))
    );
    // Clear on delete removes only what it declares.
    env.kube.delete::<WorkspaceBudget>("", "rates-only");
    env.reconcile_wsb("rates-only").await;
    let ws = env.workspace(WS_A).await;
    assert_eq!(ws.usage_limits.unwrap().len(), 1);
    assert!(
        ws.rate_limits
            .is_none_or(|r| r.iter().all(|l| l.unit != RateLimitUnit::Rpm))
    );

    // With limitOwnership: All the workspace holds exactly the spec.
    let mut all = rates_only.spec;
    all.limit_ownership = LimitOwnership::All;
    env.kube.apply(&WorkspaceBudget::new("owns-all", all));
    env.reconcile_wsb("owns-all").await;
    let ws = env.workspace(WS_A).await;
    assert!(
        ws.usage_limits.is_none_or(|u| u.is_empty()),
        "undeclared budget removed"
    );
    let rates = ws.rate_limits.unwrap();
    assert_eq!(rates.len(), 1);
    assert_eq!(rates[0].value, d("120"));
    assert!(env.wsb_status("owns-all").unmanaged_limits.is_empty());
}

#[tokio::test]
async fn the_older_budget_wins_and_the_other_makes_no_call() {
    let env = env().await;
    env.kube
        .apply(&wsb("first", "team-a", 500, "2026-11-01T00:00:00Z"));
    env.kube
        .apply(&wsb("second", "team-a", 900, "2026-11-02T00:00:00Z"));
    env.reconcile_wsb("first").await;
    env.clear_requests().await;
    env.reconcile_wsb("second").await;
    assert_eq!(
        env.api_calls().await,
        0,
        "the loser makes no Admin API call"
    );
    assert_eq!(env.wsb_ready("second"), ("False".into(), "Conflict".into()));
    let st = env.wsb_status("second");
    let ready = conditions::get(&st.conditions, "Ready").unwrap();
    assert!(ready.message.contains("WorkspaceBudget first"));
    assert_eq!(
        env.workspace(WS_A).await.usage_limits.unwrap()[0].credit_limit,
        d("500")
    );

    // The same workspace by UUID is a conflict too (found through the owner's status).
    env.kube
        .apply(&wsb("third", WS_A, 700, "2026-11-03T00:00:00Z"));
    env.reconcile_wsb("third").await;
    assert_eq!(env.wsb_ready("third").1, "Conflict");

    // Deleting the loser leaves the owner's limits alone.
    env.kube.delete::<WorkspaceBudget>("", "second");
    env.reconcile_wsb("second").await;
    assert_eq!(
        env.workspace(WS_A).await.usage_limits.unwrap()[0].credit_limit,
        d("500")
    );
}

#[tokio::test]
async fn retain_keeps_limits_and_unknown_workspace_is_reported() {
    let env = env().await;
    let mut keep = wsb("keep", "team-b", 500, "2026-11-01T00:00:00Z");
    keep.spec.deletion_policy = WorkspaceDeletionPolicy::Retain;
    env.kube.apply(&keep);
    env.reconcile_wsb("keep").await;
    let declared = env.workspace(WS_B).await;
    assert_eq!(declared.usage_limits.as_ref().map(Vec::len), Some(1));
    assert_eq!(declared.rate_limits.as_ref().map(Vec::len), Some(1));
    env.kube.delete::<WorkspaceBudget>("", "keep");
    env.reconcile_wsb("keep").await;
    // The resource is gone (its finalizer released) and the workspace still holds exactly the
    // limits it declared.
    assert!(env.kube.get::<WorkspaceBudget>("", "keep").is_none());
    let after = env.workspace(WS_B).await;
    assert_eq!(
        after.usage_limits, declared.usage_limits,
        "usage limits kept"
    );
    assert_eq!(after.rate_limits, declared.rate_limits, "rate limits kept");
    assert!(env.has_event("Retained"));
    assert!(!env.has_event("Cleared"));

    env.kube.apply(&wsb(
        "ghost",
        "no-such-workspace",
        500,
        "2026-11-01T00:00:00Z",
    ));
    env.reconcile_wsb("ghost").await;
    assert_eq!(env.wsb_ready("ghost").1, "WorkspaceNotFound");
}
