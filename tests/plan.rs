//! Pure planner tests: table tests per decision and the convergence property.

use std::str::FromStr;

use portkey_budget_operator::api::*;
use portkey_budget_operator::plan::usage::{
    Decision, DesiredUsagePolicy, PlanOptions, UsageAction, UsageDecision, alert_threshold, plan,
};
use portkey_budget_operator::plan::{Identity, same_conditions};
use portkey_budget_operator::portkey::*;
use proptest::prelude::*;
use rust_decimal::Decimal;

const WS: &str = "2f1d4e8a-1111-4c3b-9d2e-000000000001";

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn spec() -> UsageLimitPolicySpec {
    UsageLimitPolicySpec {
        display_name: Some("Team A".into()),
        workspace: Some("team-a".into()),
        limit_type: UsageLimitType::Cost,
        credit_limit: Money(d("500")),
        alert_threshold: Some(Money(d("400"))),
        alert_threshold_percent: None,
        periodic_reset: Some(PeriodicReset::Monthly),
        periodic_reset_days: None,
        conditions: vec![PolicyCondition {
            key: "metadata._team".into(),
            value: Some("team-a".into()),
            values: None,
            excludes: None,
        }],
        group_by: vec![GroupByKey {
            key: "metadata._user".into(),
        }],
        deletion_policy: DeletionPolicy::Archive,
        management_policy: ManagementPolicy::Manage,
        adopt_policy_id: None,
        on_immutable_change: OnImmutableChange::Reject,
    }
}

fn identity() -> Identity {
    Identity::new("ulp", Some("team-a"), "monthly")
}

fn desired(spec: &UsageLimitPolicySpec) -> DesiredUsagePolicy {
    DesiredUsagePolicy::from_spec(spec, &identity(), WS)
}

/// A simulated Portkey: the state a create or an update leaves behind.
fn created(body: &CreateUsageLimitsPolicy, id: &str) -> UsageLimitsPolicy {
    UsageLimitsPolicy {
        id: id.into(),
        object: None,
        name: Some(body.name.clone()),
        description: None,
        conditions: body.conditions.clone(),
        group_by: body.group_by.clone(),
        limit_type: body.limit_type,
        credit_limit: body.credit_limit,
        alert_threshold: body.alert_threshold,
        periodic_reset: body.periodic_reset,
        periodic_reset_days: body.periodic_reset_days,
        next_usage_reset_at: None,
        last_reset_at: None,
        status: PolicyStatus::Active,
        workspace_id: body.workspace_id.clone().unwrap(),
        organisation_id: None,
        created_at: None,
        last_updated_at: None,
        value_key_usage_map: None,
    }
}

fn updated(mut p: UsageLimitsPolicy, body: &UpdateUsageLimitsPolicy) -> UsageLimitsPolicy {
    if let Some(n) = &body.name {
        p.name = Some(n.clone());
    }
    if let Some(c) = &body.conditions {
        p.conditions = c.clone();
    }
    if let Some(l) = body.credit_limit {
        p.credit_limit = l;
    }
    if let Some(t) = body.alert_threshold.as_change() {
        p.alert_threshold = t.map(|n| n.0);
    }
    if let Some(r) = body.periodic_reset.as_change() {
        p.periodic_reset = r.copied();
    }
    if let Some(r) = body.periodic_reset_days.as_change() {
        p.periodic_reset_days = r.copied();
    }
    p
}

fn apply(remote: Option<UsageLimitsPolicy>, decision: &UsageDecision) -> Option<UsageLimitsPolicy> {
    match decision {
        Decision::InSync | Decision::Blocked { .. } => remote,
        Decision::Apply(UsageAction::Create { body }) => Some(created(body, "new-id")),
        Decision::Apply(UsageAction::Update { body, .. }) => Some(updated(remote.unwrap(), body)),
        Decision::Apply(UsageAction::Replace { body, .. }) => Some(created(body, "replacement-id")),
    }
}

#[test]
fn nothing_remote_means_create_with_marker() {
    let s = spec();
    let Decision::Apply(UsageAction::Create { body }) =
        plan(&desired(&s), None, PlanOptions::default())
    else {
        panic!("expected a create");
    };
    assert_eq!(body.name, "Team A [k8s:ulp:team-a/monthly]");
    assert_eq!(body.workspace_id.as_deref(), Some(WS));
    assert_eq!(body.credit_limit, d("500"));
    assert_eq!(body.alert_threshold, Some(d("400")));
    assert_eq!(body.periodic_reset, Some(PeriodicReset::Monthly));
}

#[test]
fn in_sync_when_equal() {
    let s = spec();
    let remote = created(&desired(&s).create_body(), "id-1");
    assert_eq!(
        plan(&desired(&s), Some(&remote), PlanOptions::default()),
        Decision::InSync
    );
}

#[test]
fn limit_change_sends_only_the_limit_and_never_the_schedule() {
    let s = spec();
    let remote = created(&desired(&s).create_body(), "id-1");
    let mut raised = s.clone();
    raised.credit_limit = Money(d("800"));
    let Decision::Apply(UsageAction::Update { id, body, changes }) =
        plan(&desired(&raised), Some(&remote), PlanOptions::default())
    else {
        panic!("expected an update");
    };
    assert_eq!(id, "id-1");
    assert_eq!(
        serde_json::to_value(&body).unwrap(),
        serde_json::json!({"credit_limit": 800})
    );
    assert!(!body.touches_reset_schedule());
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].to_string(), "creditLimit: 500 → 800");
}

/// The body of the update the planner sends to bring `remote` to `spec` (as JSON).
fn update_body(spec: &UsageLimitPolicySpec, remote: &UsageLimitsPolicy) -> serde_json::Value {
    let decision = plan(&desired(spec), Some(remote), PlanOptions::default());
    let Decision::Apply(UsageAction::Update { body, .. }) = decision else {
        panic!("expected an update: {decision:?}")
    };
    serde_json::to_value(&body).unwrap()
}

#[test]
fn schedule_changes_are_sent_and_cleared_explicitly() {
    let s = spec();
    let remote = created(&desired(&s).create_body(), "id-1");
    let mut days = s.clone();
    days.periodic_reset = None;
    days.periodic_reset_days = Some(10);
    assert_eq!(
        update_body(&days, &remote),
        serde_json::json!({"periodic_reset": null, "periodic_reset_days": 10})
    );
    let mut cumulative = s.clone();
    cumulative.periodic_reset = None;
    cumulative.alert_threshold = None;
    assert_eq!(
        update_body(&cumulative, &remote),
        serde_json::json!({"periodic_reset": null, "alert_threshold": null})
    );
}

#[test]
fn remote_drift_is_reverted() {
    let s = spec();
    let mut remote = created(&desired(&s).create_body(), "id-1");
    remote.credit_limit = d("5000");
    remote.name = Some("someone renamed it".into());
    remote.conditions[0].value = ConditionValue::One("*".into());
    let Decision::Apply(UsageAction::Update { body, changes, .. }) =
        plan(&desired(&s), Some(&remote), PlanOptions::default())
    else {
        panic!()
    };
    assert_eq!(body.credit_limit, Some(d("500")));
    assert_eq!(
        body.name.as_deref(),
        Some("Team A [k8s:ulp:team-a/monthly]")
    );
    assert!(body.conditions.is_some());
    assert_eq!(changes.len(), 3);
}

#[test]
fn immutable_changes_are_blocked_unless_recreate() {
    let s = spec();
    let remote = created(&desired(&s).create_body(), "id-1");
    let mut tokens = s.clone();
    tokens.limit_type = UsageLimitType::Tokens;
    tokens.credit_limit = Money(d("100000"));
    tokens.alert_threshold = None;
    match plan(&desired(&tokens), Some(&remote), PlanOptions::default()) {
        Decision::Blocked {
            reason, message, ..
        } => {
            assert_eq!(reason, "ImmutableFieldChanged");
            assert!(message.contains("type: cost → tokens"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let opts = PlanOptions {
        on_immutable_change: OnImmutableChange::Recreate,
        ..Default::default()
    };
    match plan(&desired(&tokens), Some(&remote), opts) {
        Decision::Apply(UsageAction::Replace {
            old_id,
            body,
            changes,
        }) => {
            assert_eq!(old_id, "id-1");
            assert_eq!(body.limit_type, UsageLimitType::Tokens);
            assert_eq!(changes[0].field, "type");
        }
        other => panic!("{other:?}"),
    }
    let mut moved = s.clone();
    moved.group_by = vec![GroupByKey {
        key: "api_key".into(),
    }];
    assert!(matches!(
        plan(&desired(&moved), Some(&remote), PlanOptions::default()),
        Decision::Blocked {
            reason: "ImmutableFieldChanged",
            ..
        }
    ));
    let other_ws = DesiredUsagePolicy::from_spec(&s, &identity(), "another-workspace-uuid");
    assert!(matches!(
        plan(&other_ws, Some(&remote), PlanOptions::default()),
        Decision::Blocked {
            reason: "ImmutableFieldChanged",
            ..
        }
    ));
}

#[test]
fn observe_never_writes() {
    let s = spec();
    let opts = PlanOptions {
        management: ManagementPolicy::Observe,
        ..Default::default()
    };
    assert!(matches!(
        plan(&desired(&s), None, opts),
        Decision::Blocked {
            reason: "RemotePolicyNotFound",
            ..
        }
    ));
    let mut remote = created(&desired(&s).create_body(), "id-1");
    assert_eq!(plan(&desired(&s), Some(&remote), opts), Decision::InSync);
    remote.credit_limit = d("1");
    match plan(&desired(&s), Some(&remote), opts) {
        Decision::Blocked {
            reason: "OutOfSync",
            changes,
            ..
        } => assert_eq!(changes[0].field, "creditLimit"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn percent_thresholds_are_resolved() {
    let mut s = spec();
    s.alert_threshold = None;
    s.alert_threshold_percent = Some(80);
    s.credit_limit = Money(d("12.50"));
    assert_eq!(alert_threshold(&s), Some(d("10")));
    s.limit_type = UsageLimitType::Tokens;
    s.credit_limit = Money(d("1001"));
    assert_eq!(
        alert_threshold(&s),
        Some(d("800")),
        "whole tokens, rounded down"
    );
}

fn money() -> impl Strategy<Value = Decimal> {
    (1i64..1_000_000, 0u32..3).prop_map(|(n, scale)| Decimal::new(n, scale).max(Decimal::ONE))
}

prop_compose! {
    fn arb_spec()(
        limit in money(),
        pct in proptest::option::of(1i32..99),
        reset in 0u8..3,
        days in 1i32..365,
        values in proptest::collection::vec("[a-z]{1,8}", 1..4),
        single in any::<bool>(),
        excludes in proptest::option::of(proptest::collection::vec("[a-z]{1,8}", 1..3)),
        display in proptest::option::of("[A-Za-z ]{1,30}"),
    ) -> UsageLimitPolicySpec {
        let mut s = spec();
        s.credit_limit = Money(limit);
        s.alert_threshold = None;
        s.alert_threshold_percent = pct;
        s.periodic_reset = match reset { 0 => Some(PeriodicReset::Monthly), 1 => Some(PeriodicReset::Weekly), _ => None };
        s.periodic_reset_days = (reset == 2 && days % 2 == 0).then_some(days);
        s.conditions = vec![PolicyCondition {
            key: "model".into(),
            value: single.then(|| values[0].clone()),
            values: (!single).then(|| values.clone()),
            excludes,
        }];
        s.display_name = display;
        s
    }
}

proptest! {
    /// Applying the plan, then planning again, yields no action: from nothing, and from any
    /// remote state that differs only in mutable fields.
    #[test]
    fn plan_converges(spec in arb_spec(), start in arb_spec(), from_nothing in any::<bool>()) {
        let want = desired(&spec);
        let remote = (!from_nothing).then(|| created(&desired(&start).create_body(), "id-0"));
        let first = plan(&want, remote.as_ref(), PlanOptions::default());
        let after = apply(remote.clone(), &first);
        prop_assert!(after.is_some());
        prop_assert_eq!(plan(&want, after.as_ref(), PlanOptions::default()), Decision::InSync);
        if let Decision::Apply(UsageAction::Update { body, .. }) = &first {
            // The reset schedule is only sent when it differs.
            let r = remote.as_ref().unwrap();
            prop_assert_eq!(body.periodic_reset.is_present(), r.periodic_reset != want.periodic_reset);
            prop_assert_eq!(body.periodic_reset_days.is_present(), r.periodic_reset_days != want.periodic_reset_days);
            prop_assert!(!body.is_empty());
        }
        let created_conditions = &after.unwrap().conditions;
        prop_assert!(same_conditions(created_conditions, &want.conditions));
    }
}

mod rate {
    use super::*;
    use portkey_budget_operator::plan::policy::{PolicyAction, PolicyDiff};
    use portkey_budget_operator::plan::rate::{DesiredRatePolicy, plan as plan_rate};

    fn spec() -> RateLimitPolicySpec {
        serde_json::from_value(serde_json::json!({
            "workspace": "team-a", "type": "requests", "unit": "rpm", "value": 120,
            "conditions": [{"key": "api_key", "value": "*"}],
            "groupBy": [{"key": "metadata._user"}]
        }))
        .unwrap()
    }

    fn desired(s: &RateLimitPolicySpec) -> DesiredRatePolicy {
        DesiredRatePolicy::from_spec(s, &Identity::new("rlp", Some("team-a"), "per-user"), WS)
    }

    fn remote_of(d: &DesiredRatePolicy) -> RateLimitsPolicy {
        let b = d.create_body();
        RateLimitsPolicy {
            id: "r-1".into(),
            object: None,
            name: Some(b.name),
            description: None,
            conditions: b.conditions,
            group_by: b.group_by,
            limit_type: b.limit_type,
            unit: b.unit,
            value: b.value,
            status: PolicyStatus::Active,
            workspace_id: WS.into(),
            organisation_id: None,
            created_at: None,
            last_updated_at: None,
        }
    }

    #[test]
    fn create_update_and_immutable() {
        let s = spec();
        let Decision::Apply(PolicyAction::Create { body }) =
            plan_rate(&desired(&s), None, PlanOptions::default())
        else {
            panic!()
        };
        assert_eq!(body.name, "team-a/per-user [k8s:rlp:team-a/per-user]");
        assert_eq!((body.unit, body.value), (RateLimitUnit::Rpm, d("120")));
        let remote = remote_of(&desired(&s));
        assert_eq!(
            plan_rate(&desired(&s), Some(&remote), PlanOptions::default()),
            Decision::InSync
        );

        let mut faster = s.clone();
        faster.unit = RateLimitUnit::Rph;
        faster.value = 5000;
        let Decision::Apply(PolicyAction::Update { body, changes, .. }) =
            plan_rate(&desired(&faster), Some(&remote), PlanOptions::default())
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({"unit": "rph", "value": 5000})
        );
        assert_eq!(changes.len(), 2);

        let mut tokens = s.clone();
        tokens.limit_type = RateLimitType::Tokens;
        assert!(matches!(
            plan_rate(&desired(&tokens), Some(&remote), PlanOptions::default()),
            Decision::Blocked {
                reason: "ImmutableFieldChanged",
                ..
            }
        ));
        let opts = PlanOptions {
            on_immutable_change: OnImmutableChange::Recreate,
            ..Default::default()
        };
        assert!(matches!(
            plan_rate(&desired(&tokens), Some(&remote), opts),
            Decision::Apply(PolicyAction::Replace { .. })
        ));
    }
}
