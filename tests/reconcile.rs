//! The UsageLimitPolicy reconcile against the real emulator (HTTP on loopback) and an in-memory
//! Kubernetes API (tests/support/fake_kube.rs).

mod support;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use portkey_budget_operator::api::*;
use portkey_budget_operator::config::ControllerConfig;
use portkey_budget_operator::controller::{self, Context, conditions, usage};
use portkey_budget_operator::emulator::{self, EmulatorConfig, EmulatorHandle, SeedWorkspace};
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::json;
use support::fake_kube::FakeKube;

const NS: &str = "team-a";
const WS_A: &str = "2f1d4e8a-1111-4c3b-9d2e-00000000000a";
const WS_B: &str = "2f1d4e8a-1111-4c3b-9d2e-00000000000b";
const KEY: &str = "reconcile-test-key";

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

struct Env {
    kube: FakeKube,
    emu: EmulatorHandle,
    portkey: PortkeyClient,
    ctx: Arc<Context>,
}

fn test_config() -> ControllerConfig {
    ControllerConfig {
        // Zero: every reconcile talks to Portkey (the freshness gate has its own test).
        usage_refresh_interval: Duration::ZERO,
        resync_interval: Duration::ZERO,
        admin_api_write_rate: 1000,
        ..Default::default()
    }
}

/// The requeue delay of an `Action` (from its Debug form: kube keeps the field private).
fn action_delay(action: &kube::runtime::controller::Action) -> Duration {
    let text = format!("{action:?}");
    let inner = text
        .split("Some(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_default();
    let (number, unit) = inner.trim().split_at(
        inner
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(inner.len()),
    );
    let n: f64 = number.parse().unwrap_or(f64::MAX);
    match unit {
        "ms" => Duration::from_secs_f64(n / 1000.0),
        "µs" => Duration::from_secs_f64(n / 1e6),
        "ns" => Duration::from_secs_f64(n / 1e9),
        _ => Duration::from_secs_f64(n),
    }
}

async fn env_with(config: ControllerConfig) -> Env {
    let emu = emulator::spawn(EmulatorConfig {
        api_keys: vec![KEY.into()],
        workspaces: vec![
            SeedWorkspace {
                id: WS_A.into(),
                slug: "team-a".into(),
                name: "Team A".into(),
            },
            SeedWorkspace {
                id: WS_B.into(),
                slug: "team-b".into(),
                name: "Team B".into(),
            },
        ],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    cfg.retry = RetryPolicy {
        max_retries: 1,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_retry_after: Duration::from_secs(1),
    };
    let portkey = PortkeyClient::new(cfg).unwrap();
    let kube = FakeKube::new();
    // The cluster admin binds the tenants' namespace to its workspace (an unbound namespace
    // gets none).
    kube.add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-a")]);
    let ctx = Context::new(
        kube.client(),
        portkey.clone(),
        config,
        controller::reporter(),
    );
    Env {
        kube,
        emu,
        portkey,
        ctx,
    }
}

async fn env() -> Env {
    env_with(test_config()).await
}

fn spec() -> UsageLimitPolicySpec {
    serde_json::from_value(json!({
        "displayName": "Team A monthly",
        "workspace": "team-a",
        "type": "cost",
        "creditLimit": 500,
        "alertThreshold": 400,
        "periodicReset": "monthly",
        "conditions": [{"key": "metadata._team", "value": "team-a"}],
        "groupBy": [{"key": "metadata._user"}]
    }))
    .unwrap()
}

/// A create was sent that the status has not confirmed (the create-pending annotation holds a
/// value other than `status.createConfirmed`).
fn create_pending(obj: &UsageLimitPolicy) -> bool {
    let confirmed = obj
        .status
        .as_ref()
        .and_then(|s| s.common.create_confirmed.as_deref());
    portkey_budget_operator::controller::pending_create(obj, confirmed).is_some()
}

fn ulp(name: &str, spec: UsageLimitPolicySpec) -> UsageLimitPolicy {
    let mut obj = UsageLimitPolicy::new(name, spec);
    obj.metadata.namespace = Some(NS.into());
    obj
}

impl Env {
    fn obj(&self, name: &str) -> UsageLimitPolicy {
        self.kube
            .get::<UsageLimitPolicy>(NS, name)
            .expect("object exists")
    }

    async fn reconcile(
        &self,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        usage::reconcile(&self.obj(name), &self.ctx).await
    }

    async fn active(&self, ws: &str) -> Vec<UsageLimitsPolicy> {
        let filter = ListFilter {
            workspace_id: Some(ws.into()),
            status: Some(PolicyStatus::Active),
            ..Default::default()
        };
        self.portkey.usage_limits().list(&filter).await.unwrap()
    }

    async fn api_writes(&self) -> usize {
        self.emu.control().requests().await.unwrap().writes()
    }

    fn condition(&self, name: &str, type_: &str) -> (String, String) {
        let status = self.obj(name).status.unwrap_or_default();
        let c = conditions::get(&status.common.conditions, type_)
            .cloned()
            .expect("condition set");
        (c.status, c.reason)
    }
}

#[tokio::test]
async fn create_makes_one_remote_policy_and_reports_ready() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    let before = env.kube.writes().len();
    env.reconcile("monthly").await.unwrap();
    // A create costs three Kubernetes writes: finalizer + create-pending record in one patch,
    // then, at the same time, the `Created` Event and the status with the id and the create
    // confirmed.
    let writes: Vec<String> = env.kube.writes()[before..].to_vec();
    assert_eq!(writes.len(), 3, "{writes:?}");
    assert!(
        writes[0].contains("/usagelimitpolicies/monthly") && !writes[0].ends_with("/status"),
        "{writes:?}"
    );
    assert!(
        writes[1..].iter().any(|w| w.contains("/events")),
        "{writes:?}"
    );
    assert!(
        writes[1..]
            .iter()
            .any(|w| w.ends_with("/usagelimitpolicies/monthly/status")),
        "{writes:?}"
    );

    let obj = env.obj("monthly");
    assert!(
        obj.metadata
            .finalizers
            .as_ref()
            .unwrap()
            .contains(&FINALIZER.to_owned())
    );
    assert!(!create_pending(&obj));
    let status = obj.status.unwrap();
    let remote = env.active(WS_A).await;
    assert_eq!(remote.len(), 1);
    assert_eq!(
        status.common.policy_id.as_deref(),
        Some(remote[0].id.as_str())
    );
    assert_eq!(status.common.workspace_id.as_deref(), Some(WS_A));
    assert_eq!(status.common.remote_status.as_deref(), Some("active"));
    assert_eq!(status.common.observed_generation, Some(1));
    assert_eq!(status.reset_schedule.as_deref(), Some("monthly"));
    assert!(status.next_reset_at.is_some());
    assert!(
        env.ctx
            .last_sync("UsageLimitPolicy/team-a/monthly")
            .is_some()
    );
    assert_eq!(
        remote[0].name.as_deref(),
        Some("Team A monthly [k8s:ulp:team-a/monthly]")
    );
    assert_eq!(remote[0].credit_limit, d("500"));
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("True".into(), "InForce".into())
    );
    assert_eq!(
        env.condition("monthly", "Synced"),
        ("True".into(), "ReconcileSuccess".into())
    );
    assert!(env.kube.event_reasons().contains(&"Created".to_owned()));

    // Reconciling again writes nothing to Portkey and nothing to status.
    let writes = env.api_writes().await;
    let kube_writes = env.kube.writes().len();
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.api_writes().await, writes);
    assert_eq!(env.active(WS_A).await.len(), 1);
    let status_patches = env.kube.writes()[kube_writes..]
        .iter()
        .filter(|w| w.ends_with("/status"))
        .count();
    assert_eq!(
        status_patches, 0,
        "nothing a reader can see changed: no status write"
    );
}

#[tokio::test]
async fn a_cached_copy_this_process_already_replaced_is_skipped() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    let before = env.obj("monthly");
    controller::reconcile_policy(Arc::new(before.clone()), env.ctx.clone())
        .await
        .unwrap();
    let created = env.obj("monthly");
    assert!(created.status.as_ref().unwrap().common.policy_id.is_some());

    // The watch hands back the copy the create started from (its writes not delivered yet): a
    // pass on it would look for the create by marker and write a status that gets 409.
    let ctl = env.emu.control();
    ctl.clear_requests().await.unwrap();
    let writes = env.kube.writes().len();
    let action = controller::reconcile_policy(Arc::new(before), env.ctx.clone())
        .await
        .unwrap();
    assert_eq!(ctl.requests().await.unwrap().total, 0, "no Admin API call");
    assert_eq!(env.kube.writes().len(), writes, "no Kubernetes write");
    assert!(action_delay(&action) <= Duration::from_secs(5));

    // The newer copy is reconciled as usual: in sync, nothing to write.
    controller::reconcile_policy(Arc::new(created), env.ctx.clone())
        .await
        .unwrap();
    assert_eq!(env.kube.writes().len(), writes);
    assert_eq!(env.active(WS_A).await.len(), 1);
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("True".into(), "InForce".into())
    );
}

#[tokio::test]
async fn limit_change_updates_remote_without_touching_the_schedule() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let before = env.active(WS_A).await.remove(0);
    env.emu.control().clear_requests().await.unwrap();

    let mut raised = spec();
    raised.credit_limit = Money(d("800"));
    env.kube.apply(&ulp("monthly", raised));
    env.reconcile("monthly").await.unwrap();

    let after = env.active(WS_A).await.remove(0);
    assert_eq!(after.id, before.id, "updated in place");
    assert_eq!(after.credit_limit, d("800"));
    assert_eq!(after.next_usage_reset_at, before.next_usage_reset_at);
    let log = env.emu.control().requests().await.unwrap();
    assert_eq!(log.count("PUT", "/v1/policies/usage-limits/"), 1);
    assert_eq!(log.count("POST", "/v1/policies"), 0);
    assert!(env.kube.event_reasons().contains(&"Updated".to_owned()));
    assert_eq!(
        env.obj("monthly")
            .status
            .unwrap()
            .common
            .observed_generation,
        Some(2)
    );
}

#[tokio::test]
async fn remote_drift_is_reverted_with_an_event() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let id = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
    let edit = UpdateUsageLimitsPolicy {
        credit_limit: Some(d("99999")),
        name: Some("hijacked [k8s:ulp:team-a/monthly]".into()),
        ..Default::default()
    };
    env.portkey.usage_limits().update(&id, &edit).await.unwrap();

    env.reconcile("monthly").await.unwrap();
    let p = env
        .portkey
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(p.credit_limit, d("500"));
    assert_eq!(
        p.name.as_deref(),
        Some("Team A monthly [k8s:ulp:team-a/monthly]")
    );
    let drift: Vec<_> = env
        .kube
        .events()
        .into_iter()
        .filter(|e| e.1 == "DriftCorrected")
        .collect();
    assert_eq!(drift.len(), 1);
    assert!(
        drift[0].2.contains("creditLimit: 99999 → 500"),
        "{}",
        drift[0].2
    );
}

#[tokio::test]
async fn policy_archived_elsewhere_is_recreated() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let old = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
    env.portkey.usage_limits().delete(&old).await.unwrap();

    env.reconcile("monthly").await.unwrap();
    let active = env.active(WS_A).await;
    assert_eq!(active.len(), 1);
    assert_ne!(active[0].id, old);
    assert_eq!(
        env.obj("monthly")
            .status
            .unwrap()
            .common
            .policy_id
            .as_deref(),
        Some(active[0].id.as_str())
    );
    assert!(
        env.kube
            .events()
            .iter()
            .any(|e| e.1 == "Recreated" && e.0 == "Warning")
    );
}

#[tokio::test]
async fn delete_archives_or_retains() {
    let env = env().await;
    env.kube.apply(&ulp("archive-me", spec()));
    let mut retain = spec();
    retain.deletion_policy = DeletionPolicy::Retain;
    retain.display_name = Some("kept".into());
    env.kube.apply(&ulp("retain-me", retain));
    env.reconcile("archive-me").await.unwrap();
    env.reconcile("retain-me").await.unwrap();
    assert_eq!(env.active(WS_A).await.len(), 2);

    env.kube.delete::<UsageLimitPolicy>(NS, "archive-me");
    env.kube.delete::<UsageLimitPolicy>(NS, "retain-me");
    env.reconcile("archive-me").await.unwrap();
    env.reconcile("retain-me").await.unwrap();
    assert!(
        env.kube.get::<UsageLimitPolicy>(NS, "archive-me").is_none(),
        "finalizer released"
    );
    assert!(env.kube.get::<UsageLimitPolicy>(NS, "retain-me").is_none());
    let active = env.active(WS_A).await;
    assert_eq!(active.len(), 1);
    assert!(active[0].name.as_deref().unwrap().starts_with("kept "));
    let reasons = env.kube.event_reasons();
    assert!(reasons.contains(&"Archived".to_owned()) && reasons.contains(&"Retained".to_owned()));
}

#[tokio::test]
async fn adoption_by_id_takes_over_and_marks_the_policy() {
    let env = env().await;
    let existing = env
        .portkey
        .usage_limits()
        .create(&CreateUsageLimitsPolicy {
            name: "made by hand".into(),
            description: None,
            conditions: vec![Condition {
                key: "metadata._team".into(),
                value: ConditionValue::One("team-a".into()),
                excludes: None,
            }],
            group_by: vec![GroupBy {
                key: "metadata._user".into(),
            }],
            limit_type: UsageLimitType::Cost,
            credit_limit: d("100"),
            alert_threshold: None,
            periodic_reset: Some(PeriodicReset::Monthly),
            periodic_reset_days: None,
            next_usage_reset_at: None,
            workspace_id: Some(WS_A.into()),
        })
        .await
        .unwrap();
    let mut s = spec();
    s.adopt_policy_id = Some(existing.id.clone());
    env.kube.apply(&ulp("adopter", s));
    env.reconcile("adopter").await.unwrap();

    let active = env.active(WS_A).await;
    assert_eq!(active.len(), 1, "adopted, not duplicated");
    assert_eq!(active[0].id, existing.id);
    assert_eq!(active[0].credit_limit, d("500"));
    assert!(
        active[0]
            .name
            .as_deref()
            .unwrap()
            .ends_with("[k8s:ulp:team-a/adopter]")
    );
    assert!(env.kube.event_reasons().contains(&"Adopted".to_owned()));
    assert_eq!(
        env.obj("adopter").status.unwrap().common.policy_id,
        Some(existing.id)
    );
}

#[tokio::test]
async fn observe_never_writes() {
    let env = env().await;
    let created = env
        .portkey
        .usage_limits()
        .create(&CreateUsageLimitsPolicy {
            name: "observed".into(),
            description: None,
            conditions: vec![Condition {
                key: "metadata._team".into(),
                value: ConditionValue::One("team-a".into()),
                excludes: None,
            }],
            group_by: vec![GroupBy {
                key: "metadata._user".into(),
            }],
            limit_type: UsageLimitType::Cost,
            credit_limit: d("500"),
            alert_threshold: Some(d("400")),
            periodic_reset: Some(PeriodicReset::Monthly),
            periodic_reset_days: None,
            next_usage_reset_at: None,
            workspace_id: Some(WS_A.into()),
        })
        .await
        .unwrap();
    env.emu
        .control()
        .add_usage(&created.id, "metadata._user:alice", d("250"))
        .await
        .unwrap();
    env.emu.control().clear_requests().await.unwrap();
    let mut s = spec();
    s.management_policy = ManagementPolicy::Observe;
    s.adopt_policy_id = Some(created.id.clone());
    env.kube.apply(&ulp("watcher", s));
    env.reconcile("watcher").await.unwrap();
    assert!(
        env.obj("watcher").metadata.finalizers.is_none(),
        "Observe needs no finalizer"
    );
    env.kube.delete::<UsageLimitPolicy>(NS, "watcher");

    assert_eq!(env.api_writes().await, 0, "Observe made no POST/PUT/DELETE");
    assert_eq!(env.active(WS_A).await.len(), 1);
    assert!(env.kube.get::<UsageLimitPolicy>(NS, "watcher").is_none());
}

#[tokio::test]
async fn observe_reports_out_of_sync_without_writing() {
    let env = env().await;
    let created = env
        .portkey
        .usage_limits()
        .create(&CreateUsageLimitsPolicy {
            name: "observed".into(),
            description: None,
            conditions: vec![Condition {
                key: "metadata._team".into(),
                value: ConditionValue::One("team-a".into()),
                excludes: None,
            }],
            group_by: vec![GroupBy {
                key: "metadata._user".into(),
            }],
            limit_type: UsageLimitType::Cost,
            credit_limit: d("10"),
            alert_threshold: None,
            periodic_reset: None,
            periodic_reset_days: None,
            next_usage_reset_at: None,
            workspace_id: Some(WS_A.into()),
        })
        .await
        .unwrap();
    env.emu
        .control()
        .add_usage(&created.id, "metadata._user:alice", d("4"))
        .await
        .unwrap();
    env.emu.control().clear_requests().await.unwrap();
    let mut s = spec();
    s.management_policy = ManagementPolicy::Observe;
    s.adopt_policy_id = Some(created.id);
    env.kube.apply(&ulp("watcher", s));
    env.reconcile("watcher").await.unwrap();
    assert_eq!(env.api_writes().await, 0);
    assert_eq!(
        env.condition("watcher", "Ready"),
        ("False".into(), "OutOfSync".into())
    );
    assert_eq!(env.condition("watcher", "Synced").0, "True");
    let usage = env.obj("watcher").status.unwrap().usage.unwrap();
    assert_eq!((usage.buckets, usage.peak_percent), (1, 40));
    // Still out of sync at the next pass: nothing new, so no status write.
    let writes = env.kube.writes().len();
    env.reconcile("watcher").await.unwrap();
    assert_eq!(
        env.kube.writes().len(),
        writes,
        "an unchanged situation writes no status"
    );
}

#[tokio::test]
async fn pause_stops_every_write_but_keeps_reporting_and_resume_corrects_drift() {
    use kube::ResourceExt;
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let id = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
    let pause = |value: Option<&str>| {
        env.kube
            .replace_raw("usagelimitpolicies", NS, "monthly", |o| match value {
                Some(v) => o["metadata"]["annotations"][PAUSED_ANNOTATION] = json!(v),
                None => {
                    o["metadata"]["annotations"]
                        .as_object_mut()
                        .unwrap()
                        .remove(PAUSED_ANNOTATION);
                }
            })
    };
    pause(Some("true"));
    assert!(
        env.obj("monthly")
            .annotations()
            .contains_key(PAUSED_ANNOTATION)
    );
    // An emergency change in the Portkey UI, and usage: the change stays, usage is reported.
    let emergency = UpdateUsageLimitsPolicy {
        credit_limit: Some(d("5000")),
        ..Default::default()
    };
    env.portkey
        .usage_limits()
        .update(&id, &emergency)
        .await
        .unwrap();
    env.emu
        .control()
        .add_usage(&id, "metadata._user:alice", d("250"))
        .await
        .unwrap();
    env.emu.control().clear_requests().await.unwrap();
    env.reconcile("monthly").await.unwrap();
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.api_writes().await, 0, "paused: no write to Portkey");
    let p = env
        .portkey
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(p.credit_limit, d("5000"), "the emergency change is kept");
    assert_eq!(
        env.condition("monthly", "Synced"),
        ("False".into(), "ReconciliationPaused".into())
    );
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("False".into(), "OutOfSync".into())
    );
    let status = env.obj("monthly").status.unwrap();
    assert_eq!(
        status.usage.unwrap().buckets,
        1,
        "usage is still read and reported"
    );
    let reasons = env.kube.event_reasons();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "ReconciliationPaused")
            .count(),
        1,
        "one Event on pause"
    );
    // Deletion while paused archives nothing and waits.
    // Resume: drift corrected at once, with an Event.
    pause(None);
    env.reconcile("monthly").await.unwrap();
    let p = env
        .portkey
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(p.credit_limit, d("500"));
    assert!(
        env.kube
            .event_reasons()
            .contains(&"ReconciliationResumed".to_owned())
    );
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("True".into(), "InForce".into())
    );
    pause(Some("true"));
    env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
    env.reconcile("monthly").await.unwrap();
    assert!(
        env.kube.get::<UsageLimitPolicy>(NS, "monthly").is_some(),
        "deletion waits"
    );
    assert_eq!(
        env.active(WS_A).await.len(),
        1,
        "nothing archived while paused"
    );
    pause(None);
    env.reconcile("monthly").await.unwrap();
    assert!(env.kube.get::<UsageLimitPolicy>(NS, "monthly").is_none());
    assert!(env.active(WS_A).await.is_empty());
}

#[tokio::test]
async fn crash_after_create_adopts_instead_of_duplicating() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    // The operator dies after POST and before recording the id: every status write fails, so
    // the remote policy exists with our marker, status is empty and the annotation stays.
    env.kube.fail_writes("/status", 500, 1);
    let err = env.reconcile("monthly").await;
    assert!(err.is_err(), "the status write failed");
    assert_eq!(env.active(WS_A).await.len(), 1);
    let obj = env.obj("monthly");
    assert!(
        obj.status
            .as_ref()
            .and_then(|s| s.common.policy_id.clone())
            .is_none()
    );
    assert!(create_pending(&obj));

    env.reconcile("monthly").await.unwrap();
    let active = env.active(WS_A).await;
    assert_eq!(
        active.len(),
        1,
        "exactly one remote policy after the restart"
    );
    let obj = env.obj("monthly");
    assert_eq!(
        obj.status.as_ref().unwrap().common.policy_id.as_deref(),
        Some(active[0].id.as_str())
    );
    assert!(!create_pending(&obj));
    assert!(env.kube.event_reasons().contains(&"Adopted".to_owned()));
}

#[tokio::test]
async fn ambiguous_create_failure_waits_then_creates_exactly_once() {
    let env = env_with(ControllerConfig {
        create_pending_grace: Duration::from_secs(3600),
        ..test_config()
    })
    .await;
    let ctl = env.emu.control();
    env.kube.apply(&ulp("monthly", spec()));
    // A 500 on POST: Portkey may or may not have created the policy (the emulator did not).
    ctl.set_faults(json!({"fail_next": 1, "error_status": 500, "method": "POST"}))
        .await
        .unwrap();
    let err = env.reconcile("monthly").await.unwrap_err();
    assert_eq!(err.reason(), "PortkeyServerError");
    assert!(
        create_pending(&env.obj("monthly")),
        "ambiguous: the record stays"
    );
    assert_eq!(env.condition("monthly", "Synced").0, "Unknown");
    assert_eq!(env.active(WS_A).await.len(), 0);

    // Within the grace period nothing is created: the first POST may still show up.
    ctl.clear_requests().await.unwrap();
    env.reconcile("monthly").await.unwrap();
    assert_eq!(
        ctl.requests()
            .await
            .unwrap()
            .count("POST", "/v1/policies/usage-limits"),
        0
    );
    assert_eq!(
        env.condition("monthly", "Synced"),
        ("Unknown".into(), "CreationResultUnknown".into())
    );
    assert_eq!(
        env.condition("monthly", "Reconciling"),
        ("True".into(), "CreationResultUnknown".into())
    );

    // Past the grace period with nothing visible: create again, once.
    env.kube
        .replace_raw("usagelimitpolicies", NS, "monthly", |o| {
            o["metadata"]["annotations"][CREATE_PENDING_ANNOTATION] = json!("2026-01-01T00:00:00Z");
        });
    env.reconcile("monthly").await.unwrap();
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.active(WS_A).await.len(), 1);
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("True".into(), "InForce".into())
    );
    assert!(!create_pending(&env.obj("monthly")));
}

#[tokio::test]
async fn rejected_create_clears_the_pending_record() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.emu
        .control()
        .set_faults(json!({"fail_next": 1, "error_status": 400, "method": "POST"}))
        .await
        .unwrap();
    let err = env.reconcile("monthly").await.unwrap_err();
    assert_eq!(err.reason(), "PortkeyValidationError");
    assert!(
        !env.obj("monthly")
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(CREATE_PENDING_ANNOTATION)
    );
    assert_eq!(
        env.condition("monthly", "Synced"),
        ("False".into(), "PortkeyValidationError".into())
    );
    // The next attempt creates it straight away.
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.active(WS_A).await.len(), 1);
}

#[tokio::test]
async fn namespace_binding_is_enforced_without_api_calls() {
    let env = env().await;
    env.kube
        .add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-b")]);
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("False".into(), "WorkspaceNotAllowed".into())
    );
    assert_eq!(
        env.emu.control().requests().await.unwrap().total,
        0,
        "no Admin API call at all"
    );

    // A policy without a workspace follows the binding.
    let mut unbound = spec();
    unbound.workspace = None;
    env.kube.apply(&ulp("follows", unbound));
    env.reconcile("follows").await.unwrap();
    assert_eq!(env.active(WS_B).await.len(), 1);
    assert_eq!(
        env.obj("follows")
            .status
            .unwrap()
            .common
            .workspace_id
            .as_deref(),
        Some(WS_B)
    );
}

/// A policy recorded in status that lost the resource's marker (renamed outside the operator,
/// or an id a tenant wrote into status) is not written to: status is never authority.
#[tokio::test]
async fn a_recorded_policy_without_the_marker_is_left_alone() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let id = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
    let edit = UpdateUsageLimitsPolicy {
        credit_limit: Some(d("99999")),
        name: Some("renamed".into()),
        ..Default::default()
    };
    env.portkey.usage_limits().update(&id, &edit).await.unwrap();
    env.emu.control().clear_requests().await.unwrap();
    env.reconcile("monthly").await.unwrap();
    let (status, reason) = env.condition("monthly", "Ready");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "RecordedIdMismatch")
    );
    let p = env
        .portkey
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        (p.credit_limit, p.name.as_deref()),
        (d("99999"), Some("renamed"))
    );
    let requests = env.emu.control().requests().await.unwrap();
    assert!(
        requests.total > 0 && requests.data.iter().all(|r| r.method == "GET"),
        "only reads: {:?}",
        requests.data
    );
}

/// An unbound namespace gets no workspace by default: `spec.workspace` alone grants nothing
/// (only `--default-workspace` or `--single-tenant` give one).
#[tokio::test]
async fn an_unbound_namespace_gets_no_workspace_by_default() {
    let env = env().await;
    env.kube.add_namespace(NS, &[]);
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("False".into(), "NamespaceNotBound".into())
    );
    assert_eq!(env.emu.control().requests().await.unwrap().total, 0);
    let single = env_with(ControllerConfig {
        single_tenant: true,
        ..test_config()
    })
    .await;
    single.kube.add_namespace(NS, &[]);
    single.kube.apply(&ulp("monthly", spec()));
    single.reconcile("monthly").await.unwrap();
    assert_eq!(single.condition("monthly", "Ready").0, "True");
}

#[tokio::test]
async fn binding_can_be_required() {
    let env = env_with(ControllerConfig {
        require_namespace_binding: true,
        default_workspace: Some("team-a".into()),
        ..test_config()
    })
    .await;
    env.kube.add_namespace(NS, &[]);
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("False".into(), "NamespaceNotBound".into())
    );
    assert_eq!(env.emu.control().requests().await.unwrap().total, 0);
}

#[tokio::test]
async fn invalid_spec_is_refused_without_api_calls() {
    let env = env().await;
    let mut bad = spec();
    bad.alert_threshold = Some(Money(d("600")));
    env.kube.apply(&ulp("bad", bad));
    env.reconcile("bad").await.unwrap();
    let (status, reason) = env.condition("bad", "Ready");
    assert_eq!((status.as_str(), reason.as_str()), ("False", "InvalidSpec"));
    let message = conditions::get(&env.obj("bad").status.unwrap().common.conditions, "Ready")
        .unwrap()
        .message
        .clone();
    assert!(
        message.contains("alertThreshold must be greater than 0 and less than creditLimit"),
        "{message}"
    );
    assert_eq!(env.emu.control().requests().await.unwrap().total, 0);
}

#[tokio::test]
async fn usage_is_reported_and_alerts_fire_once_per_bucket() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let id = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
    let ctl = env.emu.control();
    ctl.add_usage(&id, "metadata._user:alice", d("420"))
        .await
        .unwrap();
    ctl.add_usage(&id, "metadata._user:bob", d("500"))
        .await
        .unwrap();
    ctl.add_usage(&id, "metadata._user:carol", d("10.5"))
        .await
        .unwrap();
    env.reconcile("monthly").await.unwrap();
    env.reconcile("monthly").await.unwrap();

    let usage = env.obj("monthly").status.unwrap().usage.unwrap();
    assert_eq!(usage.buckets, 3);
    assert_eq!(usage.exhausted_buckets, 1);
    assert_eq!(usage.peak_percent, 100);
    assert_eq!(usage.top[0].value_key, "metadata._user:bob");
    assert_eq!(usage.top[2].current_usage, "10.5");
    let events = env.kube.events();
    let count = |r: &str| events.iter().filter(|e| e.1 == r).count();
    assert_eq!(count("BudgetExhausted"), 1);
    assert_eq!(count("AlertThresholdReached"), 1);
}

#[tokio::test]
async fn immutable_change_with_recreate_replaces_the_policy() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let old = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
    let mut changed = spec();
    changed.group_by = vec![GroupByKey {
        key: "api_key".into(),
    }];
    changed.on_immutable_change = OnImmutableChange::Recreate;
    env.kube.apply(&ulp("monthly", changed));
    env.reconcile("monthly").await.unwrap();
    let active = env.active(WS_A).await;
    assert_eq!(active.len(), 1);
    assert_ne!(active[0].id, old);
    assert_eq!(active[0].group_by[0].key, "api_key");
    assert!(
        env.kube
            .events()
            .iter()
            .any(|e| e.1 == "Recreated" && e.2.contains("usage restarts from zero"))
    );

    // Without Recreate (admission bypassed), the change is refused and nothing is written.
    let mut again = env.obj("monthly").spec;
    again.group_by = vec![GroupByKey {
        key: "metadata._user".into(),
    }];
    again.on_immutable_change = OnImmutableChange::Reject;
    env.kube.apply(&ulp("monthly", again));
    let writes = env.api_writes().await;
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.api_writes().await, writes);
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("False".into(), "ImmutableFieldChanged".into())
    );
}

/// The refresh requeue is jittered upwards only: a pass that came back before the interval was
/// over would only meet the freshness gate and be queued again.
#[tokio::test]
async fn refresh_requeues_are_never_shorter_than_the_interval() {
    let env = env_with(ControllerConfig {
        usage_refresh_interval: Duration::from_secs(20),
        ..test_config()
    })
    .await;
    let delays: Vec<Duration> = (0..1000).map(|_| env.ctx.refresh_interval(true)).collect();
    assert!(delays.iter().all(|d| *d >= Duration::from_secs(20)));
    // Up to 10 % longer, then to the next point of the 250 ms refresh grid.
    assert!(
        delays
            .iter()
            .all(|d| *d <= Duration::from_secs(22) + Duration::from_millis(250))
    );
    assert!(
        delays.iter().any(|d| *d > Duration::from_secs(20)),
        "jittered"
    );
}

#[tokio::test]
async fn fresh_healthy_resources_make_no_api_calls() {
    let env = env_with(ControllerConfig {
        usage_refresh_interval: Duration::from_secs(3600),
        ..test_config()
    })
    .await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    env.emu.control().clear_requests().await.unwrap();
    let action = env.reconcile("monthly").await.unwrap();
    assert_eq!(env.emu.control().requests().await.unwrap().total, 0);
    assert!(
        format!("{action:?}").contains("requeue_after: Some"),
        "{action:?}"
    );
    // A spec change is never skipped.
    let mut raised = spec();
    raised.credit_limit = Money(d("900"));
    env.kube.apply(&ulp("monthly", raised));
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.active(WS_A).await[0].credit_limit, d("900"));
}

#[tokio::test]
async fn transient_errors_mark_synced_unknown_and_keep_ready() {
    let env = env().await;
    env.kube.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    env.emu
        .control()
        .set_faults(json!({"error_rate": 1.0, "error_status": 503}))
        .await
        .unwrap();
    let err = env.reconcile("monthly").await.unwrap_err();
    assert_eq!(err.reason(), "PortkeyServerError");
    assert_eq!(
        env.condition("monthly", "Synced"),
        ("Unknown".into(), "PortkeyServerError".into())
    );
    assert_eq!(
        env.condition("monthly", "Ready"),
        ("True".into(), "InForce".into())
    );
    env.emu.control().clear_faults().await.unwrap();
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.condition("monthly", "Synced").0, "True");
}

mod rate_limits {
    use super::*;
    use portkey_budget_operator::controller::rate;

    pub(super) fn rlp(name: &str, value: i64, unit: &str) -> RateLimitPolicy {
        let spec: RateLimitPolicySpec = serde_json::from_value(json!({
            "workspace": "team-a", "type": "requests", "unit": unit, "value": value,
            "conditions": [{"key": "api_key", "value": "*"}],
            "groupBy": [{"key": "metadata._user"}]
        }))
        .unwrap();
        let mut obj = RateLimitPolicy::new(name, spec);
        obj.metadata.namespace = Some(NS.into());
        obj
    }

    async fn run(env: &Env, name: &str) {
        let obj = env.kube.get::<RateLimitPolicy>(NS, name).unwrap();
        rate::reconcile(&obj, &env.ctx).await.unwrap();
    }

    async fn active_rates(env: &Env) -> Vec<RateLimitsPolicy> {
        let filter = ListFilter {
            workspace_id: Some(WS_A.into()),
            status: Some(PolicyStatus::Active),
            ..Default::default()
        };
        env.portkey.rate_limits().list(&filter).await.unwrap()
    }

    #[tokio::test]
    async fn rate_limit_policy_lifecycle() {
        let env = env().await;
        env.kube.apply(&rlp("per-user", 120, "rpm"));
        run(&env, "per-user").await;
        let remote = active_rates(&env).await;
        assert_eq!(remote.len(), 1);
        assert_eq!(
            (remote[0].unit, remote[0].value),
            (RateLimitUnit::Rpm, d("120"))
        );
        assert_eq!(
            remote[0].name.as_deref(),
            Some("team-a/per-user [k8s:rlp:team-a/per-user]")
        );
        let status = env
            .kube
            .get::<RateLimitPolicy>(NS, "per-user")
            .unwrap()
            .status
            .unwrap();
        assert_eq!(
            status.common.policy_id.as_deref(),
            Some(remote[0].id.as_str())
        );
        assert!(conditions::is_true(&status.common.conditions, "Ready"));

        // Change the value and window: one PUT, same policy.
        env.emu.control().clear_requests().await.unwrap();
        env.kube.apply(&rlp("per-user", 5000, "rph"));
        run(&env, "per-user").await;
        let log = env.emu.control().requests().await.unwrap();
        assert_eq!(log.count("PUT", "/v1/policies/rate-limits/"), 1);
        assert_eq!(log.count("POST", "/v1/policies"), 0);
        let after = active_rates(&env).await;
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
        run(&env, "per-user").await;
        assert_eq!(active_rates(&env).await[0].value, d("5000"));
        assert!(
            env.kube
                .event_reasons()
                .contains(&"DriftCorrected".to_owned())
        );

        // Delete archives.
        env.kube.delete::<RateLimitPolicy>(NS, "per-user");
        run(&env, "per-user").await;
        assert!(active_rates(&env).await.is_empty());
        assert!(env.kube.get::<RateLimitPolicy>(NS, "per-user").is_none());
    }

    #[tokio::test]
    async fn rate_limit_policy_follows_the_namespace_binding() {
        let env = env().await;
        env.kube
            .add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-b")]);
        env.kube.apply(&rlp("per-user", 120, "rpm"));
        run(&env, "per-user").await;
        let status = env
            .kube
            .get::<RateLimitPolicy>(NS, "per-user")
            .unwrap()
            .status
            .unwrap();
        let ready = conditions::get(&status.common.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "WorkspaceNotAllowed");
        assert_eq!(env.emu.control().requests().await.unwrap().total, 0);
    }
}

mod workspace_budgets {
    use super::*;
    use portkey_budget_operator::controller::workspace;

    pub(super) fn wsb(name: &str, ws: &str, limit: u32, created: &str) -> WorkspaceBudget {
        let spec: WorkspaceBudgetSpec = serde_json::from_value(json!({
            "workspace": ws,
            "usageLimits": [{"type": "cost", "creditLimit": limit, "alertThreshold": 400, "periodicReset": "monthly"}],
            "rateLimits": [{"type": "requests", "unit": "rpm", "value": 120}]
        }))
        .unwrap();
        let mut obj = WorkspaceBudget::new(name, spec);
        obj.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(created.parse().unwrap()),
        );
        obj
    }

    async fn run(env: &Env, name: &str) {
        let obj = env.kube.get::<WorkspaceBudget>("", name).unwrap();
        workspace::reconcile(&obj, &env.ctx).await.unwrap();
    }

    fn status(env: &Env, name: &str) -> WorkspaceBudgetStatus {
        env.kube
            .get::<WorkspaceBudget>("", name)
            .unwrap()
            .status
            .unwrap()
    }

    #[tokio::test]
    async fn workspace_budget_lifecycle() {
        let env = env().await;
        env.emu
            .control()
            .set_clock(Some("2026-11-21T14:00:00Z".parse().unwrap()))
            .await
            .unwrap();
        env.kube
            .apply(&wsb("marketing", "team-a", 500, "2026-11-01T00:00:00Z"));
        run(&env, "marketing").await;
        let ws = env.portkey.get_workspace(WS_A).await.unwrap();
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
        let st = status(&env, "marketing");
        assert_eq!(st.workspace_id.as_deref(), Some(WS_A));
        assert_eq!(st.budget.as_deref(), Some("500 cost"));
        assert_eq!(st.reset.as_deref(), Some("monthly"));
        assert_eq!(st.rate_limit.as_deref(), Some("120 requests rpm"));
        assert!(conditions::is_true(&st.conditions, "Ready"));
        assert!(st.next_reset_at.is_some());

        // In sync: no write.
        env.emu.control().clear_requests().await.unwrap();
        run(&env, "marketing").await;
        assert_eq!(env.api_writes().await, 0);

        // Raise the budget later in the month: only usage_limits is sent and the reset stays.
        env.emu
            .control()
            .set_clock(Some("2026-11-25T09:00:00Z".parse().unwrap()))
            .await
            .unwrap();
        env.kube
            .apply(&wsb("marketing", "team-a", 800, "2026-11-01T00:00:00Z"));
        run(&env, "marketing").await;
        let ws = env.portkey.get_workspace(WS_A).await.unwrap();
        let usage = ws.usage_limits.unwrap();
        assert_eq!(usage[0].credit_limit, d("800"));
        assert_eq!(
            usage[0].next_usage_reset_at,
            Some("2026-12-01T00:00:00Z".parse().unwrap()),
            "reset not rescheduled"
        );
        assert!(env.kube.event_reasons().contains(&"Updated".to_owned()));

        // Drift on rate limits is reverted.
        let edit = UpdateWorkspace {
            rate_limits: Nullable::Null,
            ..Default::default()
        };
        env.portkey.update_workspace(WS_A, &edit).await.unwrap();
        run(&env, "marketing").await;
        assert!(
            env.portkey
                .get_workspace(WS_A)
                .await
                .unwrap()
                .rate_limits
                .is_some()
        );
        assert!(
            env.kube
                .event_reasons()
                .contains(&"DriftCorrected".to_owned())
        );

        // Delete (Clear): our limits go, a hand-made tokens budget stays.
        let mut usage = env
            .portkey
            .get_workspace(WS_A)
            .await
            .unwrap()
            .usage_limits
            .unwrap();
        usage.push(WorkspaceUsageLimit {
            limit_type: UsageLimitType::Tokens,
            credit_limit: d("1000000"),
            alert_threshold: None,
            periodic_reset: None,
            periodic_reset_days: None,
            next_usage_reset_at: None,
        });
        env.portkey
            .update_workspace(
                WS_A,
                &UpdateWorkspace {
                    usage_limits: Nullable::Value(usage),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        env.kube.delete::<WorkspaceBudget>("", "marketing");
        run(&env, "marketing").await;
        assert!(env.kube.get::<WorkspaceBudget>("", "marketing").is_none());
        let ws = env.portkey.get_workspace(WS_A).await.unwrap();
        let left = ws.usage_limits.unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].limit_type, UsageLimitType::Tokens);
        assert_eq!(ws.rate_limits, None);
        assert!(env.kube.event_reasons().contains(&"Cleared".to_owned()));
    }

    #[tokio::test]
    async fn limits_it_does_not_declare_are_kept_unless_it_owns_all() {
        let env = env().await;
        // Finance set a $500 monthly budget and a token rate limit in the Portkey UI.
        let by_hand = UpdateWorkspace {
            usage_limits: Nullable::Value(vec![WorkspaceUsageLimit {
                limit_type: UsageLimitType::Cost,
                credit_limit: d("500"),
                alert_threshold: None,
                periodic_reset: Some(PeriodicReset::Monthly),
                periodic_reset_days: None,
                next_usage_reset_at: None,
            }]),
            rate_limits: Nullable::Value(vec![WorkspaceRateLimit {
                limit_type: RateLimitType::Tokens,
                unit: RateLimitUnit::Rpd,
                value: d("1000000"),
            }]),
            ..Default::default()
        };
        env.portkey.update_workspace(WS_A, &by_hand).await.unwrap();
        let reset = env
            .portkey
            .get_workspace(WS_A)
            .await
            .unwrap()
            .usage_limits
            .unwrap()[0]
            .next_usage_reset_at;
        // A WorkspaceBudget that declares only a request rate limit.
        let spec: WorkspaceBudgetSpec = serde_json::from_value(json!({
            "workspace": "team-a",
            "rateLimits": [{"type": "requests", "unit": "rpm", "value": 120}]
        }))
        .unwrap();
        env.kube
            .apply(&WorkspaceBudget::new("rates-only", spec.clone()));
        run(&env, "rates-only").await;
        let ws = env.portkey.get_workspace(WS_A).await.unwrap();
        let usage = ws.usage_limits.unwrap();
        assert_eq!(usage.len(), 1, "the hand-made budget is kept");
        assert_eq!(usage[0].credit_limit, d("500"));
        assert_eq!(
            usage[0].next_usage_reset_at, reset,
            "and its reset untouched"
        );
        let rates = ws.rate_limits.unwrap();
        assert_eq!(rates.len(), 2, "{rates:?}");
        let st = status(&env, "rates-only");
        assert_eq!(
            st.unmanaged_limits,
            [
                "usage: cost 500 (alert (none)) monthly",
                "rate: 1000000 tokens rpd"
            ]
        );
        assert!(conditions::is_true(&st.conditions, "Ready"));
        // Drift on the declared limit is corrected; the others are still left alone.
        let drift = UpdateWorkspace {
            rate_limits: Nullable::Value(vec![WorkspaceRateLimit {
                limit_type: RateLimitType::Requests,
                unit: RateLimitUnit::Rpm,
                value: d("5"),
            }]),
            ..Default::default()
        };
        env.portkey.update_workspace(WS_A, &drift).await.unwrap();
        run(&env, "rates-only").await;
        let ws = env.portkey.get_workspace(WS_A).await.unwrap();
        assert_eq!(ws.usage_limits.unwrap().len(), 1);
        let rates = ws.rate_limits.unwrap();
        assert!(
            rates
                .iter()
                .any(|r| r.unit == RateLimitUnit::Rpm && r.value == d("120"))
        );
        // Clear on delete removes only what it declares.
        env.kube.delete::<WorkspaceBudget>("", "rates-only");
        run(&env, "rates-only").await;
        let ws = env.portkey.get_workspace(WS_A).await.unwrap();
        assert_eq!(ws.usage_limits.unwrap().len(), 1);
        assert!(
            ws.rate_limits
                .is_none_or(|r| r.iter().all(|l| l.unit != RateLimitUnit::Rpm))
        );

        // With limitOwnership: All the workspace holds exactly the spec.
        let mut all = spec;
        all.limit_ownership = LimitOwnership::All;
        env.kube.apply(&WorkspaceBudget::new("owns-all", all));
        run(&env, "owns-all").await;
        let ws = env.portkey.get_workspace(WS_A).await.unwrap();
        assert!(
            ws.usage_limits.is_none_or(|u| u.is_empty()),
            "undeclared budget removed"
        );
        let rates = ws.rate_limits.unwrap();
        assert_eq!(rates.len(), 1);
        assert_eq!(rates[0].value, d("120"));
        assert!(status(&env, "owns-all").unmanaged_limits.is_empty());
    }

    #[tokio::test]
    async fn the_older_budget_wins_and_the_other_makes_no_call() {
        let env = env().await;
        env.kube
            .apply(&wsb("first", "team-a", 500, "2026-11-01T00:00:00Z"));
        env.kube
            .apply(&wsb("second", "team-a", 900, "2026-11-02T00:00:00Z"));
        run(&env, "first").await;
        env.emu.control().clear_requests().await.unwrap();
        run(&env, "second").await;
        assert_eq!(
            env.emu.control().requests().await.unwrap().total,
            0,
            "the loser makes no Admin API call"
        );
        let st = status(&env, "second");
        let ready = conditions::get(&st.conditions, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "Conflict")
        );
        assert!(ready.message.contains("WorkspaceBudget first"));
        assert_eq!(
            env.portkey
                .get_workspace(WS_A)
                .await
                .unwrap()
                .usage_limits
                .unwrap()[0]
                .credit_limit,
            d("500")
        );

        // The same workspace by UUID is a conflict too (found through the owner's status).
        env.kube
            .apply(&wsb("third", WS_A, 700, "2026-11-03T00:00:00Z"));
        run(&env, "third").await;
        assert_eq!(
            conditions::get(&status(&env, "third").conditions, "Ready")
                .unwrap()
                .reason,
            "Conflict"
        );

        // Deleting the loser leaves the owner's limits alone.
        env.kube.delete::<WorkspaceBudget>("", "second");
        run(&env, "second").await;
        assert_eq!(
            env.portkey
                .get_workspace(WS_A)
                .await
                .unwrap()
                .usage_limits
                .unwrap()[0]
                .credit_limit,
            d("500")
        );
    }

    #[tokio::test]
    async fn retain_keeps_limits_and_unknown_workspace_is_reported() {
        let env = env().await;
        let mut keep = wsb("keep", "team-b", 500, "2026-11-01T00:00:00Z");
        keep.spec.deletion_policy = WorkspaceDeletionPolicy::Retain;
        env.kube.apply(&keep);
        run(&env, "keep").await;
        env.kube.delete::<WorkspaceBudget>("", "keep");
        run(&env, "keep").await;
        assert!(
            env.portkey
                .get_workspace(WS_B)
                .await
                .unwrap()
                .usage_limits
                .is_some()
        );

        env.kube.apply(&wsb(
            "ghost",
            "no-such-workspace",
            500,
            "2026-11-01T00:00:00Z",
        ));
        run(&env, "ghost").await;
        assert_eq!(
            conditions::get(&status(&env, "ghost").conditions, "Ready")
                .unwrap()
                .reason,
            "WorkspaceNotFound"
        );
    }
}

/// Dry-run mode and the per-resource metrics (issue: production operations).
mod operations {
    use super::*;
    use portkey_budget_operator::controller::{rate, workspace};

    /// The gate's input for a resource with `status` as written, at `generation`, last compared
    /// with Portkey `ago`.
    fn freshness(
        status: &portkey_budget_operator::api::common::RemotePolicyStatus,
        generation: Option<i64>,
        ago: jiff::SignedDuration,
    ) -> controller::Freshness<'_> {
        controller::Freshness {
            generation,
            observed_generation: status.observed_generation,
            conditions: &status.conditions,
            last_sync: Some(jiff::Timestamp::now() - ago),
            pending: false,
            paused: false,
        }
    }

    /// How many distinct instants the sorted `dues` hold, counting dues at most `apart` from
    /// the previous one as the same instant.
    fn instants(dues: &[Duration], apart: Duration) -> usize {
        1 + dues.windows(2).filter(|w| w[1] - w[0] > apart).count()
    }

    fn dry_run_config() -> ControllerConfig {
        ControllerConfig {
            dry_run: true,
            ..test_config()
        }
    }

    #[tokio::test]
    async fn dry_run_never_writes_to_portkey_and_says_what_it_would_do() {
        let env = env_with(dry_run_config()).await;
        let ctl = env.emu.control();

        // Create → WouldCreate, nothing in Portkey.
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        assert!(env.active(WS_A).await.is_empty());
        assert!(env.kube.event_reasons().contains(&"WouldCreate".to_owned()));
        assert_eq!(
            env.condition("monthly", "Ready"),
            ("False".into(), "DryRun".into())
        );
        assert_eq!(
            env.condition("monthly", "Synced"),
            ("True".into(), "DryRun".into())
        );
        let annotations = env.obj("monthly").metadata.annotations.unwrap_or_default();
        assert!(!annotations.contains_key(CREATE_PENDING_ANNOTATION));

        // A policy that exists (made by a non-dry-run operator): an update → WouldUpdate.
        let real = Context::new(
            env.kube.client(),
            env.portkey.clone(),
            test_config(),
            controller::reporter(),
        );
        usage::reconcile(&env.obj("monthly"), &real).await.unwrap();
        let before = env.active(WS_A).await.remove(0);
        let mut raised = spec();
        raised.credit_limit = Money(d("900"));
        env.kube.apply(&ulp("monthly", raised));
        ctl.clear_requests().await.unwrap();
        env.reconcile("monthly").await.unwrap();
        assert!(env.kube.event_reasons().contains(&"WouldUpdate".to_owned()));
        let events = env.kube.events();
        let would_update = events
            .iter()
            .find(|(_, reason, _)| reason == "WouldUpdate")
            .unwrap();
        assert!(would_update.2.contains("500"), "{would_update:?}");
        assert!(would_update.2.contains("900"), "{would_update:?}");

        // Type change with Recreate → WouldArchive + WouldCreate.
        let mut replaced: UsageLimitPolicySpec = spec();
        replaced.limit_type = UsageLimitType::Tokens;
        replaced.on_immutable_change = OnImmutableChange::Recreate;
        env.kube.apply(&ulp("monthly", replaced));
        env.reconcile("monthly").await.unwrap();
        assert!(
            env.kube
                .event_reasons()
                .contains(&"WouldArchive".to_owned())
        );

        // Delete → WouldArchive, the finalizer is released, the policy stays.
        env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
        usage::reconcile(&env.obj("monthly"), &env.ctx)
            .await
            .unwrap();
        assert!(env.kube.get::<UsageLimitPolicy>(NS, "monthly").is_none());
        let after = env.active(WS_A).await;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].id, before.id);
        assert_eq!(after[0].credit_limit, d("500"), "the limit was not changed");

        assert_eq!(
            ctl.requests().await.unwrap().writes(),
            0,
            "dry-run made Admin API writes"
        );
    }

    #[tokio::test]
    async fn dry_run_covers_rate_limits_and_workspace_budgets() {
        let env = env_with(dry_run_config()).await;
        let rlp: RateLimitPolicy = {
            let spec: RateLimitPolicySpec = serde_json::from_value(json!({
                "workspace": "team-a", "type": "requests", "unit": "rpm", "value": 60,
                "conditions": [{"key": "api_key", "value": "*"}],
                "groupBy": [{"key": "metadata._user"}]
            }))
            .unwrap();
            let mut obj = RateLimitPolicy::new("rpm", spec);
            obj.metadata.namespace = Some(NS.into());
            obj
        };
        env.kube.apply(&rlp);
        let obj = env.kube.get::<RateLimitPolicy>(NS, "rpm").unwrap();
        rate::reconcile(&obj, &env.ctx).await.unwrap();

        let spec: WorkspaceBudgetSpec = serde_json::from_value(json!({
            "workspace": "team-b",
            "usageLimits": [{"type": "cost", "creditLimit": 500, "periodicReset": "monthly"}],
            "rateLimits": [{"type": "requests", "unit": "rpm", "value": 120}]
        }))
        .unwrap();
        env.kube.apply(&WorkspaceBudget::new("marketing", spec));
        let obj = env.kube.get::<WorkspaceBudget>("", "marketing").unwrap();
        workspace::reconcile(&obj, &env.ctx).await.unwrap();

        let reasons = env.kube.event_reasons();
        assert!(reasons.contains(&"WouldCreate".to_owned()), "{reasons:?}");
        assert!(reasons.contains(&"WouldUpdate".to_owned()), "{reasons:?}");
        let ws = env.portkey.get_workspace(WS_B).await.unwrap();
        assert!(ws.usage_limits.unwrap_or_default().is_empty());
        let wsb = env
            .kube
            .get::<WorkspaceBudget>("", "marketing")
            .unwrap()
            .status
            .unwrap();
        let ready = conditions::get(&wsb.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "DryRun");
        assert_eq!(env.emu.control().requests().await.unwrap().writes(), 0);
    }

    /// Periodic refreshes have a read budget of their own (half the Admin API rate): over it,
    /// a refresh is put back in the queue instead of reading; a resource with work to do (a
    /// new generation) is never held back.
    #[tokio::test]
    async fn refreshes_over_their_read_budget_are_deferred_and_work_is_not() {
        let env = env_with(ControllerConfig {
            refresh_read_rate: Some(1),
            usage_refresh_interval: Duration::from_secs(1),
            ..Default::default()
        })
        .await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let obj = env.obj("monthly");
        let status = obj.status.clone().unwrap();
        let settled = |generation: Option<i64>| {
            freshness(
                &status.common,
                generation,
                jiff::SignedDuration::from_secs(60),
            )
        };
        let now = jiff::Timestamp::now();
        let interval = Duration::from_secs(1);
        let g = obj.metadata.generation;
        assert!(settled(g).settled(), "{status:?}");
        assert!(
            controller::gate(&env.ctx, settled(g), now, interval).is_none(),
            "the first refresh reads"
        );
        let deferred = controller::gate(&env.ctx, settled(g), now, interval)
            .expect("the next one, over the 1 read/s budget, is deferred");
        assert!(action_delay(&deferred) > Duration::ZERO);
        // Deferred refreshes get successive slots at the budget's rate (first come, first
        // served), so each is deferred about once instead of retrying at random times.
        let mut delays = vec![action_delay(&deferred)];
        for _ in 0..3 {
            let again = controller::gate(&env.ctx, settled(g), now, interval)
                .expect("still over the budget");
            delays.push(action_delay(&again));
        }
        for pair in delays.windows(2) {
            assert!(
                pair[1] >= pair[0] + Duration::from_millis(900),
                "one slot a second apart: {delays:?}"
            );
        }
        let newer = g.map(|g| g + 1);
        assert!(
            controller::gate(&env.ctx, settled(newer), now, interval).is_none(),
            "a new generation is work, never deferred"
        );
        assert!(
            env.ctx
                .metrics
                .encode()
                .lines()
                .any(|l| l == "portkey_budget_operator_refreshes_deferred_total 4"),
            "counted"
        );
    }

    /// Deferred refreshes start on the refresh grid: their slots, spaced at the budget's rate
    /// (here the busy budget, a fifth of 100 reads a second, as a create just ran: 50 ms
    /// apart), land on one grid point per quarter second, not on a hundred instants (each
    /// its own wake-up of the process).
    #[tokio::test]
    async fn deferred_refreshes_land_on_the_grid() {
        let env = env_with(ControllerConfig {
            refresh_read_rate: Some(100),
            ..Default::default()
        })
        .await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let obj = env.obj("monthly");
        let status = obj.status.unwrap();
        let settled = || {
            freshness(
                &status.common,
                obj.metadata.generation,
                jiff::SignedDuration::from_hours(1),
            )
        };
        let interval = Duration::from_secs(1);
        let start = std::time::Instant::now();
        let mut dues = Vec::new();
        // The budget's burst goes first; the next hundred are deferred.
        while dues.len() < 100 {
            if let Some(action) =
                controller::gate(&env.ctx, settled(), jiff::Timestamp::now(), interval)
            {
                dues.push(start.elapsed() + action_delay(&action));
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "never over budget"
            );
        }
        dues.sort();
        // Calls microseconds apart: dues within 2 ms of each other are one instant.
        let instants = instants(&dues, Duration::from_millis(2));
        let spread = dues[dues.len() - 1] - dues[0];
        assert!(
            spread >= Duration::from_millis(750),
            "still spread at the budget's rate: {spread:?}"
        );
        // One instant per grid point the spread covers (the dues are measured to within
        // microseconds, so a spread of 5 s may read as a hair under it).
        let steps = usize::try_from(spread.as_millis().div_ceil(250)).unwrap();
        assert!(
            instants <= steps + 1 && instants <= 25,
            "{instants} instants over {spread:?}: {dues:?}"
        );
    }

    /// The gate is decided once per pass, before the pass starts: a due refresh through the
    /// reconcile entry point takes one read from the budget and reads Portkey once (deciding it
    /// twice would spend a second read of the budget and defer the refresh it had admitted);
    /// a pass the freshness gate turns away reads nothing and writes nothing.
    #[tokio::test]
    async fn a_refresh_takes_one_read_of_its_budget_and_a_fresh_pass_none() {
        let env = env_with(ControllerConfig {
            refresh_read_rate: Some(1),
            ..Default::default()
        })
        .await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let key = "UsageLimitPolicy/team-a/monthly";
        let ctl = env.emu.control();
        let gets = || async {
            ctl.requests()
                .await
                .unwrap()
                .count("GET", "/v1/policies/usage-limits/")
        };
        let deferred = || {
            env.ctx
                .metrics
                .encode()
                .lines()
                .find(|l| l.starts_with("portkey_budget_operator_refreshes_deferred_total "))
                .map(str::to_owned)
        };
        // Just synced: the freshness gate turns the pass away before it does anything.
        let (reads, writes) = (gets().await, env.kube.writes().len());
        let action = env.reconcile("monthly").await.unwrap();
        assert!(action_delay(&action) > Duration::ZERO);
        assert_eq!((gets().await, env.kube.writes().len()), (reads, writes));
        // Due for its refresh (last synced an hour ago): the pass reads, once.
        env.ctx.synced(
            key,
            jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
        );
        env.reconcile("monthly").await.unwrap();
        assert_eq!(gets().await, reads + 1, "one read");
        assert_eq!(
            deferred().as_deref(),
            Some("portkey_budget_operator_refreshes_deferred_total 0"),
            "nothing deferred: the budget's one read a second was taken once"
        );
        assert_eq!(env.condition("monthly", "Ready").0, "True");
    }

    /// Periodic refreshes start on a 250 ms grid: the refresh interval is lengthened to the
    /// next point of it, so refreshes due within one step start together (one wake-up).
    #[test]
    fn refreshes_start_on_the_grid() {
        use portkey_budget_operator::controller::{REFRESH_GRID, on_grid};
        let ms = Duration::from_millis;
        assert_eq!(REFRESH_GRID, ms(250));
        assert_eq!(on_grid(ms(0), ms(20_000)), ms(20_000));
        assert_eq!(on_grid(ms(100), ms(20_000)), ms(20_150));
        assert_eq!(on_grid(ms(100), ms(20_151)), ms(20_400));
        assert_eq!(
            on_grid(Duration::from_nanos(1), ms(1)),
            ms(250) - Duration::from_nanos(1)
        );
        // Never shorter than asked, never a whole step longer.
        for (since, wait) in [(7, 60_000), (1_234_567, 21_999), (999, 1)] {
            let got = on_grid(ms(since), ms(wait));
            assert!(got >= ms(wait) && got < ms(wait) + REFRESH_GRID, "{got:?}");
            assert_eq!((ms(since) + got).as_millis() % 250, 0);
        }
    }

    /// Through the context: refresh intervals asked for at about the same time, with their
    /// 0 to 10 % jitter, land on at most a few grid points (a 60 s interval jitters over 6 s:
    /// at most 25 points), not on hundreds of different instants.
    #[tokio::test]
    async fn refresh_intervals_land_on_few_instants() {
        let env = env_with(ControllerConfig {
            usage_refresh_interval: Duration::from_secs(60),
            ..test_config()
        })
        .await;
        let start = std::time::Instant::now();
        let mut dues: Vec<Duration> = (0..500)
            .map(|_| start.elapsed() + env.ctx.refresh_interval(true))
            .collect();
        dues.sort();
        // Calls microseconds apart: dues within 20 ms of each other are one instant (500
        // dues spread evenly over the 6 s of jitter would be about 12 ms apart).
        let instants = instants(&dues, Duration::from_millis(20));
        assert!(instants <= 25, "{instants} instants");
        let interval = env.ctx.refresh_interval(true);
        assert!(
            (Duration::from_secs(60)..=Duration::from_secs(66) + Duration::from_millis(250))
                .contains(&interval),
            "{interval:?}"
        );
    }

    /// A 409 Conflict (the pass worked from a copy the watch has replaced) is retried within a
    /// fraction of a second and does not escalate the backoff; other failures back off.
    #[tokio::test]
    async fn a_stale_copy_is_retried_at_once_without_backoff() {
        let env = env().await;
        env.kube.apply(&ulp("monthly", spec()));
        let obj = Arc::new(env.obj("monthly"));
        let api_error = |code: u16| {
            controller::Error::kube(
                "write the status",
                kube::Error::Api(Box::new(kube::core::Status {
                    code,
                    message: "stale".into(),
                    ..Default::default()
                })),
            )
        };
        for _ in 0..6 {
            let action = controller::error_policy(obj.clone(), &api_error(409), env.ctx.clone());
            assert!(
                format!("{action:?}").contains("requeue_after: Some(")
                    && action_delay(&action) < Duration::from_millis(300),
                "{action:?}"
            );
        }
        let action = controller::error_policy(obj.clone(), &api_error(500), env.ctx.clone());
        assert!(
            action_delay(&action) >= Duration::from_secs(1),
            "{action:?}"
        );
    }

    /// A service key of team A made by hand in Portkey: its id.
    async fn service_key(env: &Env, name: &str) -> String {
        let body = CreateApiKey {
            name: name.into(),
            workspace_id: Some(WS_A.into()),
            scopes: vec!["completions.write".into()],
            ..Default::default()
        };
        env.portkey
            .create_api_key(ApiKeyType::Workspace, ApiKeySubType::Service, &body)
            .await
            .unwrap()
            .id
            .unwrap()
    }

    /// ApiKeyBudgets in dry-run: an existing key's changes and an issued key's create are
    /// announced (WouldUpdate, WouldCreate); no key is made, no Secret, no Admin API write.
    #[tokio::test]
    async fn dry_run_covers_api_key_budgets() {
        let env = env_with(dry_run_config()).await;
        let key = service_key(&env, "by-hand").await;
        env.emu.control().clear_requests().await.unwrap();
        for (name, spec) in [
            (
                "existing",
                json!({"workspace": "team-a", "existing": {"id": key},
                       "budget": {"type": "cost", "creditLimit": 20}}),
            ),
            (
                "issued",
                json!({"workspace": "team-a",
                       "issue": {"scopes": ["completions.write"], "secretName": "k"}}),
            ),
        ] {
            let mut obj = ApiKeyBudget::new(name, serde_json::from_value(spec).unwrap());
            obj.metadata.namespace = Some(NS.into());
            env.kube.apply(&obj);
            let obj = env.kube.get::<ApiKeyBudget>(NS, name).unwrap();
            controller::api_key::reconcile(&obj, &env.ctx)
                .await
                .unwrap();
            let status = env
                .kube
                .get::<ApiKeyBudget>(NS, name)
                .unwrap()
                .status
                .unwrap();
            let ready = conditions::get(&status.conditions, "Ready").unwrap();
            assert_eq!(ready.reason, "DryRun", "{name}: {ready:?}");
        }
        let reasons = env.kube.event_reasons();
        assert!(reasons.contains(&"WouldCreate".to_owned()), "{reasons:?}");
        assert!(reasons.contains(&"WouldUpdate".to_owned()), "{reasons:?}");
        assert_eq!(env.emu.control().requests().await.unwrap().writes(), 0);
        assert_eq!(env.portkey.list_api_keys(None).await.unwrap().len(), 1);
        assert!(
            env.portkey
                .get_api_key(&key)
                .await
                .unwrap()
                .usage_limits
                .is_none()
        );
    }

    /// An ApiKeyBudget's budget series: the limit and the exhausted state, no usage figures
    /// (Portkey reports none per key).
    #[tokio::test]
    async fn api_key_budget_metrics_show_limit_and_exhaustion() {
        let env = env().await;
        let key = service_key(&env, "svc").await;
        let spec = json!({"workspace": "team-a", "existing": {"name": "svc"},
                          "budget": {"type": "cost", "creditLimit": 20, "alertThreshold": 15}});
        let mut obj = ApiKeyBudget::new("svc", serde_json::from_value(spec).unwrap());
        obj.metadata.namespace = Some(NS.into());
        env.kube.apply(&obj);
        let get = || env.kube.get::<ApiKeyBudget>(NS, "svc").unwrap();
        controller::reconcile_api_key(Arc::new(get()), env.ctx.clone())
            .await
            .unwrap();
        env.emu
            .control()
            .add_key_usage(&key, d("25"))
            .await
            .unwrap();
        // A new generation makes the next pass read Portkey again.
        let mut changed = get();
        changed.metadata.generation = Some(changed.metadata.generation.unwrap_or(1) + 1);
        env.kube.apply(&changed);
        controller::reconcile_api_key(Arc::new(get()), env.ctx.clone())
            .await
            .unwrap();
        assert_eq!(
            get().status.unwrap().key_status.as_deref(),
            Some("exhausted")
        );
        let text = env.ctx.metrics.encode();
        let labels =
            r#"{kind="ApiKeyBudget",namespace="team-a",name="svc",type="cost",unit="USD"}"#;
        for line in [
            format!("portkey_budget_operator_budget_limit{labels} 20.0"),
            format!("portkey_budget_operator_budget_alert_ratio{labels} 0.75"),
            format!("portkey_budget_operator_budget_exhausted_buckets{labels} 1"),
            r#"portkey_budget_operator_reconciles_total{kind="ApiKeyBudget"} 2"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(
            !text.contains(r#"portkey_budget_operator_budget_usage{kind="ApiKeyBudget""#),
            "no usage series for keys"
        );
        assert!(get().status.unwrap().budget.as_deref() == Some("20 cost"));
    }

    #[tokio::test]
    async fn budget_and_reconcile_metrics_follow_the_resource() {
        let env = env().await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let id = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
        let ctl = env.emu.control();
        ctl.add_usage(&id, "metadata._user:alice", d("400"))
            .await
            .unwrap();
        ctl.add_usage(&id, "metadata._user:bob", d("500"))
            .await
            .unwrap();
        // Through the entry point the controller runs, so the reconcile counters move too.
        controller::reconcile_policy(Arc::new(env.obj("monthly")), env.ctx.clone())
            .await
            .unwrap();
        let text = env.ctx.metrics.encode();
        let labels =
            r#"{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"}"#;
        for line in [
            format!("portkey_budget_operator_budget_limit{labels} 500.0"),
            format!("portkey_budget_operator_budget_usage{labels} 500.0"),
            format!("portkey_budget_operator_budget_usage_ratio{labels} 1.0"),
            format!("portkey_budget_operator_budget_alert_ratio{labels} 0.8"),
            format!("portkey_budget_operator_budget_exhausted_buckets{labels} 1"),
            r#"portkey_budget_operator_reconciles_total{kind="UsageLimitPolicy"} 1"#.to_owned(),
            r#"portkey_budget_operator_resource_ready{kind="UsageLimitPolicy",namespace="team-a",name="monthly",reason="InForce"} 1"#.to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
        env.reconcile("monthly").await.unwrap();
        assert!(
            !env.ctx.metrics.encode().contains("name=\"monthly\""),
            "series of a deleted resource are removed"
        );
    }

    #[tokio::test]
    async fn admin_api_calls_are_counted_by_operation_outcome_and_status() {
        let env = env().await;
        let metrics = Arc::new(portkey_budget_operator::metrics::Metrics::new());
        let mut cfg = ClientConfig::new(env.emu.base_url(), ApiKey::new(KEY));
        let observer = metrics.clone();
        cfg.observer = Some(Arc::new(move |call| observer.api_call(call)));
        cfg.retry = RetryPolicy::none();
        let client = PortkeyClient::new(cfg).unwrap();
        client.ping().await.unwrap();
        assert!(client.get_workspace("no-such-workspace").await.is_err());
        let text = metrics.encode();
        for line in [
            r#"portkey_budget_operator_admin_api_requests_total{operation="ping",outcome="success",status="200"} 1"#,
            r#"portkey_budget_operator_admin_api_requests_total{operation="workspaces.get",outcome="client_error",status="404"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
    }
}

/// Ownership and identity under real-world Admin API behaviour: each test is one scenario of
/// what used to archive another team's budget, wipe limits nobody declared, or duplicate.
mod ownership {
    use super::*;

    fn body(name: &str, ws: &str) -> CreateUsageLimitsPolicy {
        serde_json::from_value(json!({
            "name": name,
            "conditions": [{"key": "metadata._team", "value": "team-a"}],
            "group_by": [{"key": "metadata._user"}],
            "type": "cost", "credit_limit": 100, "periodic_reset": "monthly",
            "workspace_id": ws,
        }))
        .unwrap()
    }

    fn installed(id: &str, adopt_from: &[&str]) -> ControllerConfig {
        ControllerConfig {
            installation_id: id.into(),
            adopt_from_installations: adopt_from.iter().map(|s| s.to_string()).collect(),
            ..test_config()
        }
    }

    fn reason(env: &Env, name: &str) -> String {
        env.condition(name, "Ready").1
    }

    #[tokio::test]
    async fn adopting_another_workspaces_policy_is_refused_and_nothing_is_archived() {
        let env = env().await;
        let theirs = env
            .portkey
            .usage_limits()
            .create(&body("team B's budget", WS_B))
            .await
            .unwrap()
            .id;
        let mut s = spec();
        s.adopt_policy_id = Some(theirs.clone());
        s.on_immutable_change = OnImmutableChange::Recreate;
        env.kube.apply(&ulp("grab", s.clone()));
        env.emu.control().clear_requests().await.unwrap();
        env.reconcile("grab").await.unwrap();
        assert_eq!(reason(&env, "grab"), "WorkspaceNotAllowed");
        let status = env.obj("grab").status.unwrap();
        assert_eq!(
            status.common.policy_id, None,
            "the foreign id is never recorded"
        );
        assert_eq!(env.api_writes().await, 0);
        // Observe mode reads nothing of team B's into team A's status.
        s.management_policy = ManagementPolicy::Observe;
        env.kube.apply(&ulp("peek", s));
        env.reconcile("peek").await.unwrap();
        assert_eq!(reason(&env, "peek"), "WorkspaceNotAllowed");
        assert!(env.obj("peek").status.unwrap().usage.is_none());
        // Refused before anything was written: no finalizer, so deleting the resource is
        // immediate and archives nothing.
        assert!(
            env.obj("grab")
                .metadata
                .finalizers
                .unwrap_or_default()
                .is_empty()
        );
        env.kube.delete::<UsageLimitPolicy>(NS, "grab");
        assert!(env.kube.get::<UsageLimitPolicy>(NS, "grab").is_none());
        let b = env.active(WS_B).await;
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].id, theirs);
        assert_eq!(env.api_writes().await, 0);
    }

    #[tokio::test]
    async fn a_create_portkey_does_not_show_yet_is_waited_for_not_duplicated() {
        let env = env().await;
        let ctl = env.emu.control();
        ctl.set_faults(json!({"read_after_write_lag_ms": 600_000}))
            .await
            .unwrap();
        env.kube.apply(&ulp("lagging", spec()));
        env.reconcile("lagging").await.unwrap();
        assert_eq!(reason(&env, "lagging"), "RemotePolicyNotVisible");
        // The Event held back for the end of the pass is recorded though the pass stopped.
        let created: Vec<_> = env
            .kube
            .events()
            .into_iter()
            .filter(|e| e.1 == "Created")
            .collect();
        assert_eq!(created.len(), 1, "{created:?}");
        let obj = env.obj("lagging");
        assert!(
            create_pending(&obj),
            "the create stays pending until Portkey shows it"
        );
        let id = obj.status.unwrap().common.policy_id.expect("id recorded");
        // Further passes while the new id 404s: no second create, no "Recreated".
        for _ in 0..3 {
            env.reconcile("lagging").await.unwrap();
        }
        let log = ctl.requests().await.unwrap();
        assert_eq!(log.count("POST", "/v1/policies"), 1, "exactly one create");
        assert!(!env.kube.event_reasons().contains(&"Recreated".to_owned()));
        ctl.clear_faults().await.unwrap();
        env.reconcile("lagging").await.unwrap();
        assert_eq!(reason(&env, "lagging"), "InForce");
        let obj = env.obj("lagging");
        assert!(!create_pending(&obj));
        assert_eq!(obj.status.unwrap().common.policy_id, Some(id));
        assert_eq!(env.active(WS_A).await.len(), 1);
    }

    #[tokio::test]
    async fn a_transient_404_is_confirmed_before_anything_is_recreated() {
        let env = env().await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let id = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
        // A transient 404 on the GET of a known policy (a lagging replica): the archive is
        // checked with `?status=archived`, which finds it active → nothing is recreated.
        env.emu
            .control()
            .set_faults(json!({"fail_next": 1, "error_status": 404, "method": "GET"}))
            .await
            .unwrap();
        env.reconcile("monthly").await.unwrap();
        assert_eq!(env.active(WS_A).await.len(), 1);
        assert_eq!(
            env.obj("monthly").status.unwrap().common.policy_id,
            Some(id)
        );
        assert!(!env.kube.event_reasons().contains(&"Recreated".to_owned()));
    }

    #[tokio::test]
    async fn duplicates_are_archived_at_refresh_and_all_on_deletion() {
        let env = env().await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let id = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
        let marker = "[k8s:ulp:team-a/monthly]";
        // A younger policy with the same marker (a create elsewhere, an old bug): archived at
        // the next refresh, the older kept.
        env.portkey
            .usage_limits()
            .create(&body(&format!("copy {marker}"), WS_A))
            .await
            .unwrap();
        // The next refresh listing (the shared one is at most 30 s old) shows it.
        env.ctx.owned.invalidate("ulp", WS_A);
        env.reconcile("monthly").await.unwrap();
        let active = env.active(WS_A).await;
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id, id, "the oldest wins");
        assert!(
            env.kube
                .events()
                .iter()
                .any(|e| e.0 == "Warning" && e.1 == "DuplicateArchived")
        );
        assert!(env.ctx.metrics.encode().contains(
            "portkey_budget_operator_duplicates_archived_total{kind=\"UsageLimitPolicy\"} 1"
        ));
        // An older one (the clock set back): it wins, and the resource switches to it.
        env.emu
            .control()
            .set_clock(Some("2020-01-01T00:00:00Z".parse().unwrap()))
            .await
            .unwrap();
        let older = env
            .portkey
            .usage_limits()
            .create(&body(&format!("older {marker}"), WS_A))
            .await
            .unwrap()
            .id;
        env.emu.control().set_clock(None).await.unwrap();
        env.ctx.owned.invalidate("ulp", WS_A);
        env.reconcile("monthly").await.unwrap();
        let active = env.active(WS_A).await;
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id, older);
        assert_eq!(
            env.obj("monthly").status.unwrap().common.policy_id,
            Some(older)
        );
        // On deletion every policy carrying the marker is archived.
        env.portkey
            .usage_limits()
            .create(&body(&format!("late {marker}"), WS_A))
            .await
            .unwrap();
        env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
        env.reconcile("monthly").await.unwrap();
        assert!(env.active(WS_A).await.is_empty());
    }

    #[tokio::test]
    async fn installations_never_adopt_or_archive_each_others_policies() {
        let env = env_with(installed("cluster-a", &[])).await;
        // Cluster B: its own Kubernetes API, the same Portkey org, a resource of the same name.
        let kube_b = FakeKube::new();
        kube_b.add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-a")]);
        let ctx_b = Context::new(
            kube_b.client(),
            env.portkey.clone(),
            installed("cluster-b", &[]),
            controller::reporter(),
        );
        env.kube.apply(&ulp("monthly", spec()));
        kube_b.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let reconcile_b = |name: &str| {
            let obj = kube_b.get::<UsageLimitPolicy>(NS, name).unwrap();
            let ctx = ctx_b.clone();
            async move { usage::reconcile(&obj, &ctx).await }
        };
        reconcile_b("monthly").await.unwrap();
        let names: Vec<String> = env
            .active(WS_A)
            .await
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names.len(), 2, "each installation has its own: {names:?}");
        assert!(
            names
                .iter()
                .any(|n| n.ends_with("[k8s:ulp:team-a/monthly@cluster-a]"))
        );
        assert!(
            names
                .iter()
                .any(|n| n.ends_with("[k8s:ulp:team-a/monthly@cluster-b]"))
        );
        // Refreshes on both sides leave the other's alone (no duplicate archiving across).
        env.reconcile("monthly").await.unwrap();
        reconcile_b("monthly").await.unwrap();
        assert_eq!(env.active(WS_A).await.len(), 2);
        // Cluster B deletes its resource: only its policy is archived.
        kube_b.delete::<UsageLimitPolicy>(NS, "monthly");
        reconcile_b("monthly").await.unwrap();
        let left = env.active(WS_A).await;
        assert_eq!(left.len(), 1);
        assert!(left[0].name.as_deref().unwrap().ends_with("@cluster-a]"));
        // adoptPolicyId naming another installation's policy is refused without the setting.
        let mut s = spec();
        s.adopt_policy_id = Some(left[0].id.clone());
        kube_b.apply(&ulp("takeover", s));
        reconcile_b("takeover").await.unwrap();
        let status = kube_b
            .get::<UsageLimitPolicy>(NS, "takeover")
            .unwrap()
            .status
            .unwrap();
        let ready = conditions::get(&status.common.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "OwnedByAnotherInstallation");
        assert!(
            ready.message.contains("adoptFromInstallations"),
            "{}",
            ready.message
        );
    }

    #[tokio::test]
    async fn a_migration_takes_over_with_the_setting_and_legacy_markers_are_upgraded() {
        let env = env_with(installed("new-cluster", &["old-cluster"])).await;
        let from_old = env
            .portkey
            .usage_limits()
            .create(&body("x [k8s:ulp:team-a/migrated@old-cluster]", WS_A))
            .await
            .unwrap()
            .id;
        let legacy = env
            .portkey
            .usage_limits()
            .create(&body("y [k8s:ulp:team-a/legacy]", WS_A))
            .await
            .unwrap()
            .id;
        env.kube.apply(&ulp("migrated", spec()));
        env.kube.apply(&ulp("legacy", spec()));
        env.reconcile("migrated").await.unwrap();
        env.reconcile("legacy").await.unwrap();
        let active = env.active(WS_A).await;
        assert_eq!(active.len(), 2, "both adopted, nothing created");
        for (id, name) in [(&from_old, "migrated"), (&legacy, "legacy")] {
            let p = active.iter().find(|p| &p.id == id).unwrap();
            assert_eq!(
                p.name.as_deref().unwrap(),
                format!("Team A monthly [k8s:ulp:team-a/{name}@new-cluster]"),
                "re-marked with this installation"
            );
        }
    }

    #[tokio::test]
    async fn a_stale_copy_cannot_overwrite_a_newer_status() {
        let env = env().await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        let stale = env.obj("monthly");
        let id = stale.status.clone().unwrap().common.policy_id.unwrap();
        env.emu
            .control()
            .add_usage(&id, "metadata._user:alice", d("250"))
            .await
            .unwrap();
        env.reconcile("monthly").await.unwrap();
        let newer = env.obj("monthly").status.unwrap();
        assert_eq!(newer.usage.as_ref().unwrap().buckets, 1);
        // A reconcile working from the older copy (watch lag) is refused by the API server.
        let err = usage::reconcile(&stale, &env.ctx).await.unwrap_err();
        assert!(
            err.to_string().contains("409") || err.to_string().contains("Conflict"),
            "{err}"
        );
        assert_eq!(env.obj("monthly").status.unwrap(), newer);
    }

    #[tokio::test]
    async fn a_refused_replacement_leaves_the_old_budget_in_force() {
        let env = env().await;
        let mut s = spec();
        s.on_immutable_change = OnImmutableChange::Recreate;
        env.kube.apply(&ulp("monthly", s.clone()));
        env.reconcile("monthly").await.unwrap();
        let old = env.obj("monthly").status.unwrap().common.policy_id.unwrap();
        s.group_by[0].key = "api_key".into();
        env.kube.apply(&ulp("monthly", s));
        env.emu
            .control()
            .set_faults(json!({"fail_next": 1, "error_status": 400, "method": "POST"}))
            .await
            .unwrap();
        assert!(env.reconcile("monthly").await.is_err());
        let active = env.active(WS_A).await;
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].id, old, "the old budget stays in force");
        env.reconcile("monthly").await.unwrap();
        let active = env.active(WS_A).await;
        assert_eq!(active.len(), 1);
        assert_ne!(active[0].id, old);
        assert_eq!(active[0].group_by[0].key, "api_key");
    }

    #[tokio::test]
    async fn deletion_with_gone_objects_or_a_missing_scope() {
        let env = env().await;
        let ctl = env.emu.control();
        env.kube.apply(&ulp("gone", spec()));
        env.reconcile("gone").await.unwrap();
        let id = env.obj("gone").status.unwrap().common.policy_id.unwrap();
        // Archived elsewhere, and Portkey answers 403 AB03 for it: the finalizer is released.
        env.portkey.usage_limits().delete(&id).await.unwrap();
        ctl.set_faults(json!({"gone_as_forbidden": true}))
            .await
            .unwrap();
        env.kube.delete::<UsageLimitPolicy>(NS, "gone");
        env.reconcile("gone").await.unwrap();
        assert!(env.kube.get::<UsageLimitPolicy>(NS, "gone").is_none());
        ctl.clear_faults().await.unwrap();

        // A key without policies.delete: the finalizer stays, the condition says what to do,
        // and switching to Retain releases it with the policy left in force.
        env.kube.apply(&ulp("stuck", spec()));
        env.reconcile("stuck").await.unwrap();
        let id = env.obj("stuck").status.unwrap().common.policy_id.unwrap();
        ctl.set_faults(json!({"fail_next": 100, "error_status": 403, "method": "DELETE"}))
            .await
            .unwrap();
        env.kube.delete::<UsageLimitPolicy>(NS, "stuck");
        env.reconcile("stuck").await.unwrap();
        let obj = env.obj("stuck");
        assert!(obj.metadata.deletion_timestamp.is_some());
        let (status, reason) = env.condition("stuck", "Ready");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "ArchiveForbidden")
        );
        let message = conditions::get(&obj.status.unwrap().common.conditions, "Ready")
            .unwrap()
            .message
            .clone();
        assert!(
            message.contains("policies.delete") && message.contains("deletionPolicy: Retain"),
            "{message}"
        );
        env.kube
            .replace_raw("usagelimitpolicies", NS, "stuck", |o| {
                o["spec"]["deletionPolicy"] = json!("Retain");
            });
        env.reconcile("stuck").await.unwrap();
        assert!(env.kube.get::<UsageLimitPolicy>(NS, "stuck").is_none());
        ctl.clear_faults().await.unwrap();
        assert_eq!(env.active(WS_A).await[0].id, id, "left in force");
    }
}

/// Health as GitOps tools compute it, on the objects the reconcile really writes: kstatus's
/// documented rules (Flux, `kubectl wait`-style tooling) and the Argo CD health checks shipped
/// in `argocd/` run by a real Lua interpreter, for each kind across: fresh create not yet
/// visible, in force, spec changed with the PUT refused (403) or failing (503), a terminal
/// error, paused, and deletion.
mod health {
    use super::*;
    use portkey_budget_operator::controller::{rate, workspace};
    use serde_json::Value;

    pub(crate) use crate::support::health::{argo, kstatus, script};

    #[derive(Clone, Copy, Debug)]
    enum Kind {
        Ulp,
        Rlp,
        Wsb,
    }

    impl Kind {
        fn name(self) -> &'static str {
            match self {
                Kind::Ulp => "UsageLimitPolicy",
                Kind::Rlp => "RateLimitPolicy",
                Kind::Wsb => "WorkspaceBudget",
            }
        }

        fn ns(self) -> &'static str {
            match self {
                Kind::Wsb => "",
                _ => NS,
            }
        }

        /// Applies the resource with `limit` (and `workspace`).
        fn apply(self, env: &Env, name: &str, limit: u32, workspace: &str) {
            match self {
                Kind::Ulp => {
                    let mut s = spec();
                    s.credit_limit = Money(Decimal::from(limit));
                    s.alert_threshold = None;
                    s.workspace = Some(workspace.into());
                    env.kube.apply(&ulp(name, s));
                }
                Kind::Rlp => {
                    let mut o = rate_limits::rlp(name, i64::from(limit), "rpm");
                    o.spec.workspace = Some(workspace.into());
                    env.kube.apply(&o);
                }
                Kind::Wsb => env.kube.apply(&workspace_budgets::wsb(
                    name,
                    workspace,
                    limit,
                    "2026-11-01T00:00:00Z",
                )),
            }
        }

        async fn reconcile(self, env: &Env, name: &str) -> bool {
            let result = match self {
                Kind::Ulp => match env.kube.get::<UsageLimitPolicy>(NS, name) {
                    Some(o) => usage::reconcile(&o, &env.ctx).await.map(|_| ()),
                    None => return true,
                },
                Kind::Rlp => match env.kube.get::<RateLimitPolicy>(NS, name) {
                    Some(o) => rate::reconcile(&o, &env.ctx).await.map(|_| ()),
                    None => return true,
                },
                Kind::Wsb => match env.kube.get::<WorkspaceBudget>("", name) {
                    Some(o) => workspace::reconcile(&o, &env.ctx).await.map(|_| ()),
                    None => return true,
                },
            };
            result.is_ok()
        }

        fn object(self, env: &Env, name: &str) -> Value {
            match self {
                Kind::Ulp => serde_json::to_value(env.kube.get::<UsageLimitPolicy>(NS, name)),
                Kind::Rlp => serde_json::to_value(env.kube.get::<RateLimitPolicy>(NS, name)),
                Kind::Wsb => serde_json::to_value(env.kube.get::<WorkspaceBudget>("", name)),
            }
            .unwrap()
        }

        fn delete(self, env: &Env, name: &str) {
            match self {
                Kind::Ulp => env.kube.delete::<UsageLimitPolicy>(NS, name),
                Kind::Rlp => env.kube.delete::<RateLimitPolicy>(NS, name),
                Kind::Wsb => env.kube.delete::<WorkspaceBudget>("", name),
            }
        }

        fn plural(self) -> &'static str {
            match self {
                Kind::Ulp => "usagelimitpolicies",
                Kind::Rlp => "ratelimitpolicies",
                Kind::Wsb => "workspacebudgets",
            }
        }
    }

    /// Checks kstatus and the Argo CD health of one object; returns it.
    fn expect(
        kind: Kind,
        env: &Env,
        name: &str,
        when: &str,
        kstatus_want: &str,
        argo_want: &str,
    ) -> Value {
        let obj = kind.object(env, name);
        assert_eq!(
            kstatus(&obj),
            kstatus_want,
            "{kind:?} {when}: kstatus\n{obj:#}"
        );
        let (status, message) = argo(kind.name(), &obj);
        assert_eq!(
            status, argo_want,
            "{kind:?} {when}: Argo CD health ({message})\n{obj:#}"
        );
        // `PBO_WRITE_ARGOCD_TESTDATA=1` refreshes the shipped health_test.yaml cases from these
        // real objects.
        crate::support::health::record_case(kind.name(), when, &obj, &status, &message);
        obj
    }

    async fn scenarios(kind: Kind) {
        let env = env().await;
        let ctl = env.emu.control();
        let n = "budget";

        // Fresh create that Portkey does not show yet (policies only: workspaces exist).
        if !matches!(kind, Kind::Wsb) {
            ctl.set_faults(json!({"read_after_write_lag_ms": 600_000}))
                .await
                .unwrap();
            kind.apply(&env, "lagging", 500, "team-a");
            kind.reconcile(&env, "lagging").await;
            expect(
                kind,
                &env,
                "lagging",
                "fresh create not visible",
                "InProgress",
                "Progressing",
            );
            ctl.clear_faults().await.unwrap();
        }

        // In force.
        kind.apply(&env, n, 500, "team-a");
        assert!(kind.reconcile(&env, n).await);
        expect(kind, &env, n, "in force", "Current", "Healthy");

        // Spec changed; the key may not update (403): only a human can fix it.
        ctl.set_faults(json!({"fail_next": 1000, "error_status": 403, "method": "PUT"}))
            .await
            .unwrap();
        kind.apply(&env, n, 700, "team-a");
        assert!(!kind.reconcile(&env, n).await);
        let obj = expect(kind, &env, n, "PUT refused", "Failed", "Degraded");
        let stalled = obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Stalled")
            .unwrap()
            .clone();
        assert!(
            stalled["message"].as_str().unwrap().contains("scope")
                || stalled["message"].as_str().unwrap().contains("key"),
            "{stalled}"
        );
        let ready = obj["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Ready")
            .unwrap()
            .clone();
        assert_eq!(
            ready["status"], "False",
            "not Ready while the old limit is enforced"
        );

        // Spec changed; the PUT keeps failing transiently (503): in progress.
        ctl.set_faults(json!({"fail_next": 1000, "error_status": 503, "method": "PUT"}))
            .await
            .unwrap();
        kind.apply(&env, n, 800, "team-a");
        assert!(!kind.reconcile(&env, n).await);
        expect(kind, &env, n, "PUT failing", "InProgress", "Progressing");
        // The same failure again writes no status (stable messages).
        let writes = env.kube.writes().len();
        assert!(!kind.reconcile(&env, n).await);
        assert_eq!(
            env.kube.writes().len(),
            writes,
            "{kind:?}: an unchanged failure writes nothing"
        );
        ctl.clear_faults().await.unwrap();
        assert!(kind.reconcile(&env, n).await);
        expect(kind, &env, n, "recovered", "Current", "Healthy");

        // Paused: no writes, reported as suspended.
        env.kube.replace_raw(kind.plural(), kind.ns(), n, |o| {
            o["metadata"]["annotations"][PAUSED_ANNOTATION] = json!("true");
        });
        assert!(kind.reconcile(&env, n).await);
        expect(kind, &env, n, "paused", "Current", "Suspended");
        env.kube.replace_raw(kind.plural(), kind.ns(), n, |o| {
            o["metadata"]["annotations"]
                .as_object_mut()
                .unwrap()
                .remove(PAUSED_ANNOTATION);
        });
        assert!(kind.reconcile(&env, n).await);
        expect(kind, &env, n, "resumed", "Current", "Healthy");

        // A terminal error: an unknown workspace.
        kind.apply(&env, "lost", 500, "nowhere");
        kind.reconcile(&env, "lost").await;
        expect(kind, &env, "lost", "terminal error", "Failed", "Degraded");

        // Deletion that Portkey refuses to carry out.
        let method = if matches!(kind, Kind::Wsb) {
            "PUT"
        } else {
            "DELETE"
        };
        ctl.set_faults(json!({"fail_next": 1000, "error_status": 403, "method": method}))
            .await
            .unwrap();
        kind.delete(&env, n);
        kind.reconcile(&env, n).await;
        expect(
            kind,
            &env,
            n,
            "deletion blocked",
            "Terminating",
            if matches!(kind, Kind::Wsb) {
                "Progressing"
            } else {
                "Degraded"
            },
        );
        ctl.clear_faults().await.unwrap();
        assert!(kind.reconcile(&env, n).await);
        assert_eq!(kind.object(&env, n), Value::Null, "{kind:?}: deleted");
    }

    #[tokio::test]
    async fn usage_limit_policy_health() {
        scenarios(Kind::Ulp).await;
    }

    #[tokio::test]
    async fn rate_limit_policy_health() {
        scenarios(Kind::Rlp).await;
    }

    #[tokio::test]
    async fn workspace_budget_health() {
        scenarios(Kind::Wsb).await;
    }

    /// The `health_test.yaml` cases shipped beside each script (Argo CD's own format), run by
    /// the same interpreter; and the three kinds' scripts are one script.
    #[test]
    fn shipped_argocd_health_tests_pass() {
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("argocd/resource_customizations/budgets.portkey-operator.io");
        let first = script("UsageLimitPolicy");
        let mut cases = 0;
        for kind in [
            "UsageLimitPolicy",
            "RateLimitPolicy",
            "WorkspaceBudget",
            "ApiKeyBudget",
        ] {
            assert_eq!(
                script(kind),
                first,
                "{kind}: the health scripts are identical"
            );
            let dir = base.join(kind);
            let tests: Value = serde_saphyr::from_str(
                &std::fs::read_to_string(dir.join("health_test.yaml")).unwrap(),
            )
            .unwrap();
            for t in tests["tests"].as_array().unwrap() {
                let input = t["inputPath"].as_str().unwrap();
                let obj: Value =
                    serde_saphyr::from_str(&std::fs::read_to_string(dir.join(input)).unwrap())
                        .unwrap();
                let (status, message) = argo(kind, &obj);
                assert_eq!(
                    status,
                    t["healthStatus"]["status"].as_str().unwrap(),
                    "{kind} {input}"
                );
                assert_eq!(
                    message,
                    t["healthStatus"]["message"].as_str().unwrap(),
                    "{kind} {input}"
                );
                cases += 1;
            }
        }
        assert!(cases >= 15, "{cases} cases");
    }
}

/// The controllers' cache drops a create-pending annotation the status confirms (it means the
/// same as none) and nothing else: `pending_create` concludes the same from the slim copy for
/// every combination of annotation, confirmation and other annotations.
#[test]
fn slim_cached_copies_keep_every_pending_create() {
    let stamps = [
        None,
        Some("2026-12-03T10:00:00Z"),
        Some("2026-12-03T11:00:00Z"),
    ];
    for annotation in stamps {
        for confirmed in stamps {
            for other in [false, true] {
                let mut obj = ulp("slim", spec());
                let mut annotations = std::collections::BTreeMap::new();
                if let Some(a) = annotation {
                    annotations.insert(CREATE_PENDING_ANNOTATION.to_owned(), a.to_owned());
                }
                if other {
                    annotations.insert(RESET_USAGE_ANNOTATION.to_owned(), "t1".to_owned());
                }
                annotations.insert(
                    "kubectl.kubernetes.io/last-applied-configuration".to_owned(),
                    "{}".to_owned(),
                );
                obj.metadata.annotations = Some(annotations);
                let mut status = UsageLimitPolicyStatus::default();
                status.common.create_confirmed = confirmed.map(str::to_owned);
                obj.status = Some(status);
                let before = create_pending(&obj);
                let mut cached = obj.clone();
                controller::slim(&mut cached);
                let case =
                    format!("annotation {annotation:?}, confirmed {confirmed:?}, other {other}");
                assert_eq!(create_pending(&cached), before, "{case}");
                let kept = cached.metadata.annotations.clone().unwrap_or_default();
                assert!(!kept.contains_key("kubectl.kubernetes.io/last-applied-configuration"));
                assert_eq!(kept.contains_key(RESET_USAGE_ANNOTATION), other, "{case}");
                let dropped = annotation.is_some() && annotation == confirmed;
                assert_eq!(
                    kept.contains_key(CREATE_PENDING_ANNOTATION),
                    annotation.is_some() && !dropped,
                    "{case}"
                );
                if !other && (annotation.is_none() || dropped) {
                    assert!(
                        cached.metadata.annotations.is_none(),
                        "an empty map is freed: {case}"
                    );
                }
            }
        }
    }
}

/// The trust model (issue #28) through the reconcile: an id a tenant writes into status is
/// re-verified before anything is written through it, for every kind; conflicts count only
/// resources accepted as owners; the scope allow-list guards issued and existing keys.
mod trust {
    use super::rate_limits::rlp;
    use super::*;
    use portkey_budget_operator::controller::{api_key, rate};

    /// Team B's namespace, bound to team B's workspace.
    const NS_B: &str = "team-b";

    /// A policy of team B (managed from team B's namespace): its id.
    async fn team_b_policy(env: &Env) -> String {
        env.kube
            .add_namespace(NS_B, &[(WORKSPACE_ANNOTATION, "team-b")]);
        let mut body = spec();
        body.workspace = None;
        body.credit_limit = Money(d("900"));
        let mut obj = UsageLimitPolicy::new("budget", body);
        obj.metadata.namespace = Some(NS_B.into());
        env.kube.apply(&obj);
        let obj = env.kube.get::<UsageLimitPolicy>(NS_B, "budget").unwrap();
        usage::reconcile(&obj, &env.ctx).await.unwrap();
        let obj = env.kube.get::<UsageLimitPolicy>(NS_B, "budget").unwrap();
        obj.status.unwrap().common.policy_id.unwrap()
    }

    /// Writes `status.<field>` as a tenant would (`kubectl patch --subresource=status`).
    fn forge(env: &Env, plural: &str, name: &str, field: &str, value: &str) {
        env.kube.replace_raw(plural, NS, name, |obj| {
            obj["status"][field] = json!(value);
        });
    }

    #[tokio::test]
    async fn a_forged_policy_id_is_neither_updated_nor_archived() {
        let env = env().await;
        let victim = team_b_policy(&env).await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        forge(&env, "usagelimitpolicies", "monthly", "policyId", &victim);
        env.reconcile("monthly").await.unwrap();
        let (status, reason) = env.condition("monthly", "Ready");
        assert_eq!(
            (status.as_str(), reason.as_str()),
            ("False", "RecordedIdMismatch")
        );
        let message = conditions::get(
            &env.obj("monthly").status.unwrap().common.conditions,
            "Ready",
        )
        .unwrap()
        .message
        .clone();
        assert!(
            message.starts_with(&format!(
                "status.policyId: Portkey policy {victim} does not belong to this resource's workspace {WS_A}"
            )),
            "{message}"
        );
        // Deleted: the forged id is not archived; the resource's own policy is.
        env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
        env.reconcile("monthly").await.unwrap();
        let b = env
            .portkey
            .usage_limits()
            .get(&victim, GetOptions::default())
            .await
            .unwrap();
        assert_eq!((b.status, b.credit_limit), (PolicyStatus::Active, d("900")));
        assert!(
            env.active(WS_A).await.is_empty(),
            "its own policy was archived"
        );
        assert!(
            env.kube
                .event_reasons()
                .contains(&"RecordedIdRejected".to_owned())
        );
    }

    #[tokio::test]
    async fn a_forged_policy_id_in_the_same_workspace_needs_the_marker() {
        let env = env().await;
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        // Another team's policy in the same (shared) workspace, without this resource's marker.
        let mut other = ulp("other", spec());
        other.spec.conditions[0].value = Some("team-c".into());
        env.kube.apply(&other);
        env.reconcile("other").await.unwrap();
        let theirs = env.obj("other").status.unwrap().common.policy_id.unwrap();
        forge(&env, "usagelimitpolicies", "monthly", "policyId", &theirs);
        env.reconcile("monthly").await.unwrap();
        assert_eq!(env.condition("monthly", "Ready").1, "RecordedIdMismatch");
        let p = env
            .portkey
            .usage_limits()
            .get(&theirs, GetOptions::default())
            .await
            .unwrap();
        assert!(
            p.name.unwrap().ends_with("[k8s:ulp:team-a/other]"),
            "not renamed"
        );
    }

    /// `spec.adoptPolicyId` naming another live resource's policy in a shared workspace is
    /// refused, and writing that id into status as well does not get around the check.
    #[tokio::test]
    async fn adopt_plus_a_forged_status_cannot_take_another_resources_policy() {
        let env = env().await;
        // A platform cap kept in a namespace team A cannot write, on the same workspace.
        env.kube
            .add_namespace("platform", &[(WORKSPACE_ANNOTATION, "team-a")]);
        let mut cap = ulp("cap", spec());
        cap.metadata.namespace = Some("platform".into());
        cap.spec.credit_limit = Money(d("50"));
        cap.spec.alert_threshold = None;
        env.kube.apply(&cap);
        let obj = env.kube.get::<UsageLimitPolicy>("platform", "cap").unwrap();
        usage::reconcile(&obj, &env.ctx).await.unwrap();
        let target = env
            .kube
            .get::<UsageLimitPolicy>("platform", "cap")
            .unwrap()
            .status
            .unwrap()
            .common
            .policy_id
            .unwrap();
        let mut grab = spec();
        grab.adopt_policy_id = Some(target.clone());
        grab.credit_limit = Money(d("999999"));
        env.kube.apply(&ulp("grab", grab));
        env.reconcile("grab").await.unwrap();
        assert_eq!(env.condition("grab", "Ready").1, "AdoptTargetOwned");
        forge(&env, "usagelimitpolicies", "grab", "policyId", &target);
        env.reconcile("grab").await.unwrap();
        assert_eq!(env.condition("grab", "Ready").1, "AdoptTargetOwned");
        assert!(
            !env.obj("grab")
                .metadata
                .finalizers
                .unwrap_or_default()
                .contains(&FINALIZER.to_owned()),
            "nothing it could archive on deletion"
        );
        env.kube.delete::<UsageLimitPolicy>(NS, "grab");
        assert!(env.kube.get::<UsageLimitPolicy>(NS, "grab").is_none());
        let p = env
            .portkey
            .usage_limits()
            .get(&target, GetOptions::default())
            .await
            .unwrap();
        assert_eq!((p.status, p.credit_limit), (PolicyStatus::Active, d("50")));
        assert!(p.name.unwrap().ends_with("[k8s:ulp:platform/cap]"));
    }

    #[tokio::test]
    async fn a_forged_id_of_an_archived_policy_is_never_written() {
        let env = env().await;
        let victim = team_b_policy(&env).await;
        env.portkey.usage_limits().delete(&victim).await.unwrap();
        env.kube.apply(&ulp("monthly", spec()));
        env.reconcile("monthly").await.unwrap();
        forge(&env, "usagelimitpolicies", "monthly", "policyId", &victim);
        env.emu.control().clear_requests().await.unwrap();
        env.reconcile("monthly").await.unwrap();
        let requests = env.emu.control().requests().await.unwrap();
        assert!(
            requests
                .data
                .iter()
                .all(|r| r.method == "GET" || !r.path.contains(&victim)),
            "nothing is written to the archived policy: {:?}",
            requests.data
        );
        assert_eq!(
            env.condition("monthly", "Ready").0,
            "True",
            "its own policy is found again by marker"
        );
    }

    #[tokio::test]
    async fn a_forged_rate_limit_policy_id_is_refused() {
        let env = env().await;
        env.kube
            .add_namespace(NS_B, &[(WORKSPACE_ANNOTATION, "team-b")]);
        let mut theirs = rlp("rpm", 5, "rpm");
        theirs.metadata.namespace = Some(NS_B.into());
        theirs.spec.workspace = None;
        env.kube.apply(&theirs);
        let obj = env.kube.get::<RateLimitPolicy>(NS_B, "rpm").unwrap();
        rate::reconcile(&obj, &env.ctx).await.unwrap();
        let victim = env
            .kube
            .get::<RateLimitPolicy>(NS_B, "rpm")
            .unwrap()
            .status
            .unwrap()
            .common
            .policy_id
            .unwrap();
        env.kube.apply(&rlp("per-user", 120, "rpm"));
        let run = |env: &Env| {
            let obj = env.kube.get::<RateLimitPolicy>(NS, "per-user").unwrap();
            let ctx = env.ctx.clone();
            async move { rate::reconcile(&obj, &ctx).await.unwrap() }
        };
        run(&env).await;
        forge(&env, "ratelimitpolicies", "per-user", "policyId", &victim);
        run(&env).await;
        let status = env
            .kube
            .get::<RateLimitPolicy>(NS, "per-user")
            .unwrap()
            .status
            .unwrap();
        let ready = conditions::get(&status.common.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "RecordedIdMismatch", "{ready:?}");
        let b = env
            .portkey
            .rate_limits()
            .get(&victim, GetOptions::default())
            .await
            .unwrap();
        assert_eq!(b.value, d("5"));
    }

    /// A service key of a workspace, made in Portkey by hand: its id.
    async fn key_in(env: &Env, ws: &str, name: &str, scopes: &[&str]) -> String {
        let body = CreateApiKey {
            name: name.into(),
            workspace_id: Some(ws.into()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        env.portkey
            .create_api_key(ApiKeyType::Workspace, ApiKeySubType::Service, &body)
            .await
            .unwrap()
            .id
            .unwrap()
    }

    /// Renames a key in Portkey, as someone in its UI would.
    async fn rename_key(env: &Env, id: &str, name: &str) {
        let answer = reqwest::Client::new()
            .put(format!("{}/api-keys/{id}", env.emu.base_url()))
            .header("x-portkey-api-key", KEY)
            .json(&json!({"name": name}))
            .send()
            .await
            .unwrap();
        assert!(answer.status().is_success(), "{answer:?}");
    }

    fn akb(ns: &str, name: &str, spec: serde_json::Value) -> ApiKeyBudget {
        let mut obj = ApiKeyBudget::new(name, serde_json::from_value(spec).unwrap());
        obj.metadata.namespace = Some(ns.into());
        obj
    }

    async fn run_akb(env: &Env, ns: &str, name: &str) -> (String, String) {
        let obj = env.kube.get::<ApiKeyBudget>(ns, name).unwrap();
        api_key::reconcile(&obj, &env.ctx).await.unwrap();
        let status = env
            .kube
            .get::<ApiKeyBudget>(ns, name)
            .unwrap()
            .status
            .unwrap();
        let ready = conditions::get(&status.conditions, "Ready").unwrap();
        (ready.reason.clone(), ready.message.clone())
    }

    fn budget(limit: u32) -> serde_json::Value {
        json!({"type": "cost", "creditLimit": limit})
    }

    #[tokio::test]
    async fn an_existing_key_is_pinned_by_name_and_a_renamed_one_is_not_followed() {
        let env = env().await;
        let first = key_in(&env, WS_A, "payments", &["completions.write"]).await;
        env.kube.apply(&akb(
            NS,
            "pay",
            json!({"existing": {"name": "payments"}, "budget": budget(20)}),
        ));
        assert_eq!(run_akb(&env, NS, "pay").await.0, "InForce");
        // Renamed in Portkey, and a new key takes the old name.
        rename_key(&env, &first, "payments-old").await;
        let second = key_in(&env, WS_A, "payments", &["completions.write"]).await;
        let (reason, message) = run_akb(&env, NS, "pay").await;
        assert_eq!(reason, "RecordedIdMismatch", "{message}");
        assert!(message.contains("spec.existing.name"), "{message}");
        let new = env.portkey.get_api_key(&second).await.unwrap();
        assert!(new.usage_limits.is_none(), "nothing written to the new key");
    }

    #[tokio::test]
    async fn a_refused_resource_does_not_block_the_keys_real_owner() {
        let env = env().await;
        let key = key_in(&env, WS_A, "shared-app", &["completions.write"]).await;
        // An unbound namespace (created first, so older) names team A's key.
        env.kube.add_namespace("intruder", &[]);
        env.kube.apply(&akb("intruder", "grab", json!({"workspace": "team-a", "existing": {"id": key}, "budget": budget(1), "deletionPolicy": "Delete"})));
        assert_eq!(
            run_akb(&env, "intruder", "grab").await.0,
            "NamespaceNotBound"
        );
        env.kube.apply(&akb(
            NS,
            "owner",
            json!({"existing": {"id": key}, "budget": budget(30)}),
        ));
        let (reason, message) = run_akb(&env, NS, "owner").await;
        assert_eq!(reason, "InForce", "{message}");
        // Deleting the refused one deletes nothing.
        env.kube.delete::<ApiKeyBudget>("intruder", "grab");
        let obj = env.kube.get::<ApiKeyBudget>("intruder", "grab").unwrap();
        api_key::reconcile(&obj, &env.ctx).await.unwrap();
        let k = env.portkey.get_api_key(&key).await.unwrap();
        assert_eq!(k.usage_limits.unwrap().credit_limit, d("30"));
    }

    #[tokio::test]
    async fn management_keys_and_disallowed_scopes_are_refused() {
        let env = env().await;
        let admin_like = key_in(
            &env,
            WS_A,
            "ops",
            &["completions.write", "workspace_service_api_keys.create"],
        )
        .await;
        env.kube.apply(&akb(
            NS,
            "ops",
            json!({"existing": {"id": admin_like}, "budget": budget(5)}),
        ));
        let (reason, message) = run_akb(&env, NS, "ops").await;
        assert_eq!(reason, "KeyScopesTooBroad", "{message}");
        assert!(
            env.portkey
                .get_api_key(&admin_like)
                .await
                .unwrap()
                .usage_limits
                .is_none()
        );
        let keys_before = env.portkey.list_api_keys(None).await.unwrap().len();
        env.kube.apply(&akb(NS, "evil", json!({"issue": {"scopes": ["completions.write", "policies.delete"], "secretName": "evil"}})));
        let (reason, message) = run_akb(&env, NS, "evil").await;
        assert_eq!(reason, "ScopeNotAllowed");
        assert!(
            message.starts_with("spec.issue.scopes[1]: \"policies.delete\""),
            "{message}"
        );
        env.kube.apply(&akb(NS, "user", json!({"issue": {"subType": "user", "userId": "u1", "scopes": ["completions.write"], "secretName": "u"}})));
        assert_eq!(run_akb(&env, NS, "user").await.0, "KeyTypeNotAllowed");
        assert_eq!(
            env.portkey.list_api_keys(None).await.unwrap().len(),
            keys_before,
            "no key was issued"
        );
    }

    #[tokio::test]
    async fn the_operators_own_key_is_never_managed() {
        let env = env().await;
        // The operator authenticates with a workspace key of team A (its raw key is the one the
        // client sends; Portkey lists it masked).
        let body = CreateApiKey {
            name: "operator".into(),
            workspace_id: Some(WS_A.into()),
            scopes: vec!["completions.write".into()],
            ..Default::default()
        };
        let issued = env
            .portkey
            .create_api_key(ApiKeyType::Workspace, ApiKeySubType::Service, &body)
            .await
            .unwrap();
        let id = issued.id.clone().unwrap();
        let raw = issued.key.expose().to_owned();
        env.emu.control().set_api_keys(&[KEY, &raw]).await.unwrap();
        env.portkey.set_api_key(&ApiKey::new(raw)).unwrap();
        env.kube.apply(&akb(
            NS,
            "self",
            json!({"existing": {"id": id}, "budget": budget(1), "deletionPolicy": "Delete"}),
        ));
        let (reason, message) = run_akb(&env, NS, "self").await;
        assert_eq!(reason, "OperatorKeyRefused", "{message}");
        assert!(
            env.portkey
                .get_api_key(&id)
                .await
                .unwrap()
                .usage_limits
                .is_none()
        );
    }
}
