//! UsageLimitPolicy: create, update, drift, delete, adoption, observe, pause, crash safety,
//! tenancy, validation, usage and refresh.

use crate::harness::*;

#[tokio::test]
async fn create_makes_one_remote_policy_and_reports_ready() {
    let env = env().await;
    env.apply("monthly", spec());
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
    env.expect_condition("monthly", "Ready", "True", "InForce");
    env.expect_condition("monthly", "Synced", "True", "ReconcileSuccess");
    assert!(env.has_event("Created"));

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
    env.apply("monthly", spec());
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
    env.expect_condition("monthly", "Ready", "True", "InForce");
}

#[tokio::test]
async fn limit_change_updates_remote_without_touching_the_schedule() {
    let env = env().await;
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    let before = env.active(WS_A).await.remove(0);
    env.clear_requests().await;

    env.apply("monthly", spec().limit("800"));
    env.reconcile("monthly").await.unwrap();

    let after = env.active(WS_A).await.remove(0);
    assert_eq!(after.id, before.id, "updated in place");
    assert_eq!(after.credit_limit, d("800"));
    assert_eq!(after.next_usage_reset_at, before.next_usage_reset_at);
    let log = env.emu.control().requests().await.unwrap();
    assert_eq!(log.count("PUT", "/v1/policies/usage-limits/"), 1);
    assert_eq!(log.count("POST", "/v1/policies"), 0);
    assert!(env.has_event("Updated"));
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
    let id = env.create("monthly", spec()).await;
    env.edit_remote(&id, "99999", "hijacked [k8s:ulp:team-a/monthly]")
        .await;

    env.reconcile("monthly").await.unwrap();
    let p = env.remote(&id).await;
    assert_eq!(p.credit_limit, d("500"));
    assert_eq!(
        p.name.as_deref(),
        Some("Team A monthly [k8s:ulp:team-a/monthly]")
    );
    let drift = env.events("DriftCorrected");
    assert_eq!(drift.len(), 1);
    assert!(
        drift[0].1.contains("creditLimit: 99999 → 500"),
        "{}",
        drift[0].1
    );
}

#[tokio::test]
async fn policy_archived_elsewhere_is_recreated() {
    let env = env().await;
    let old = env.create("monthly", spec()).await;
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
    let recreated = env.events("Recreated");
    assert!(recreated.iter().any(|(type_, _)| type_ == "Warning"));
}

#[tokio::test]
async fn delete_archives_or_retains() {
    let env = env().await;
    env.apply("archive-me", spec());
    let mut retain = spec().retain();
    retain.display_name = Some("kept".into());
    env.apply("retain-me", retain);
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
    let existing = env.hand_made("made by hand", WS_A).await;
    env.apply("adopter", spec().adopt(&existing));
    env.reconcile("adopter").await.unwrap();

    let active = env.active(WS_A).await;
    assert_eq!(active.len(), 1, "adopted, not duplicated");
    assert_eq!(active[0].id, existing);
    assert_eq!(active[0].credit_limit, d("500"));
    assert!(
        active[0]
            .name
            .as_deref()
            .unwrap()
            .ends_with("[k8s:ulp:team-a/adopter]")
    );
    assert!(env.has_event("Adopted"));
    assert_eq!(
        env.obj("adopter").status.unwrap().common.policy_id,
        Some(existing)
    );
}

/// A policy made in Portkey by hand (`body`) with `usage` on one bucket, and a resource
/// `watcher` that adopts it in Observe mode, reconciled once after the request log was cleared.
async fn observe_hand_made(env: &Env, body: CreateUsageLimitsPolicy, usage: &str) {
    let created = env.made_in_portkey(&body).await;
    env.add_usage(&created, "metadata._user:alice", usage).await;
    env.clear_requests().await;
    env.apply("watcher", spec().observe().adopt(&created));
    env.reconcile("watcher").await.unwrap();
}

#[tokio::test]
async fn observe_never_writes() {
    let env = env().await;
    let body = CreateUsageLimitsPolicy {
        credit_limit: d("500"),
        alert_threshold: Some(d("400")),
        ..remote_policy("observed", WS_A)
    };
    observe_hand_made(&env, body, "250").await;
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
    let body = CreateUsageLimitsPolicy {
        credit_limit: d("10"),
        periodic_reset: None,
        ..remote_policy("observed", WS_A)
    };
    observe_hand_made(&env, body, "4").await;
    assert_eq!(env.api_writes().await, 0);
    env.expect_condition("watcher", "Ready", "False", "OutOfSync");
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
    let id = env.create("monthly", spec()).await;
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
    env.add_usage(&id, "metadata._user:alice", "250").await;
    env.clear_requests().await;
    env.reconcile("monthly").await.unwrap();
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.api_writes().await, 0, "paused: no write to Portkey");
    let p = env.remote(&id).await;
    assert_eq!(p.credit_limit, d("5000"), "the emergency change is kept");
    env.expect_condition("monthly", "Synced", "False", "ReconciliationPaused");
    env.expect_condition("monthly", "Ready", "False", "OutOfSync");
    assert_eq!(
        env.obj("monthly").status.unwrap().usage.unwrap().buckets,
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
    let p = env.remote(&id).await;
    assert_eq!(p.credit_limit, d("500"));
    assert!(env.has_event("ReconciliationResumed"));
    env.expect_condition("monthly", "Ready", "True", "InForce");
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
    env.apply("monthly", spec());
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
    assert!(env.has_event("Adopted"));
}

#[tokio::test]
async fn ambiguous_create_failure_waits_then_creates_exactly_once() {
    let env = env_tuned(|c| c.create_pending_grace = Duration::from_secs(3600)).await;
    let ctl = env.emu.control();
    env.apply("monthly", spec());
    // A 500 on POST: Portkey may or may not have created the policy (the emulator did not).
    env.fail_next(1, "POST", 500).await;
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
    env.expect_condition("monthly", "Synced", "Unknown", "CreationResultUnknown");
    env.expect_condition("monthly", "Reconciling", "True", "CreationResultUnknown");

    // Past the grace period with nothing visible: create again, once.
    env.kube
        .replace_raw("usagelimitpolicies", NS, "monthly", |o| {
            o["metadata"]["annotations"][CREATE_PENDING_ANNOTATION] = json!("2026-01-01T00:00:00Z");
        });
    env.reconcile("monthly").await.unwrap();
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.active(WS_A).await.len(), 1);
    env.expect_condition("monthly", "Ready", "True", "InForce");
    assert!(!create_pending(&env.obj("monthly")));
}

#[tokio::test]
async fn rejected_create_clears_the_pending_record() {
    let env = env().await;
    env.apply("monthly", spec());
    env.fail_next(1, "POST", 400).await;
    let err = env.reconcile("monthly").await.unwrap_err();
    assert_eq!(err.reason(), "PortkeyValidationError");
    assert!(
        !env.obj("monthly")
            .metadata
            .annotations
            .unwrap_or_default()
            .contains_key(CREATE_PENDING_ANNOTATION)
    );
    env.expect_condition("monthly", "Synced", "False", "PortkeyValidationError");
    // The next attempt creates it straight away.
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.active(WS_A).await.len(), 1);
}

#[tokio::test]
async fn namespace_binding_is_enforced_without_api_calls() {
    let env = env().await;
    env.kube
        .add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-b")]);
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    env.expect_condition("monthly", "Ready", "False", "WorkspaceNotAllowed");
    assert_eq!(env.api_calls().await, 0, "no Admin API call at all");

    // A policy without a workspace follows the binding.
    env.apply("follows", spec().workspace(None));
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
    let id = env.create("monthly", spec()).await;
    env.edit_remote(&id, "99999", "renamed").await;
    env.clear_requests().await;
    env.reconcile("monthly").await.unwrap();
    env.expect_condition("monthly", "Ready", "False", "RecordedIdMismatch");
    let p = env.remote(&id).await;
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
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    env.expect_condition("monthly", "Ready", "False", "NamespaceNotBound");
    assert_eq!(env.api_calls().await, 0);
    let single = env_tuned(|c| c.single_tenant = true).await;
    single.kube.add_namespace(NS, &[]);
    single.kube.apply(&ulp("monthly", spec()));
    single.reconcile("monthly").await.unwrap();
    assert_eq!(single.condition("monthly", "Ready").0, "True");
}

#[tokio::test]
async fn binding_can_be_required() {
    let env = env_tuned(|c| {
        c.require_namespace_binding = true;
        c.default_workspace = Some("team-a".into());
    })
    .await;
    env.kube.add_namespace(NS, &[]);
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    env.expect_condition("monthly", "Ready", "False", "NamespaceNotBound");
    assert_eq!(env.api_calls().await, 0);
}

#[tokio::test]
async fn invalid_spec_is_refused_without_api_calls() {
    let env = env().await;
    env.apply("bad", spec().alert(Some("600")));
    env.reconcile("bad").await.unwrap();
    env.expect_condition("bad", "Ready", "False", "InvalidSpec");
    let message = env.message("bad", "Ready");
    assert!(
        message.contains("alertThreshold must be greater than 0 and less than creditLimit"),
        "{message}"
    );
    assert_eq!(env.api_calls().await, 0);
}

#[tokio::test]
async fn usage_is_reported_and_alerts_fire_once_per_bucket() {
    let env = env().await;
    let id = env.create("monthly", spec()).await;
    let usage = [("alice", "420"), ("bob", "500"), ("carol", "10.5")];
    env.add_user_usage(&id, &usage).await;
    env.reconcile("monthly").await.unwrap();
    env.reconcile("monthly").await.unwrap();

    let usage = env.obj("monthly").status.unwrap().usage.unwrap();
    assert_eq!(usage.buckets, 3);
    assert_eq!(usage.exhausted_buckets, 1);
    assert_eq!(usage.peak_percent, 100);
    assert_eq!(usage.top[0].value_key, "metadata._user:bob");
    assert_eq!(usage.top[2].current_usage, "10.5");
    assert_eq!(env.events("BudgetExhausted").len(), 1);
    assert_eq!(env.events("AlertThresholdReached").len(), 1);
}

#[tokio::test]
async fn immutable_change_with_recreate_replaces_the_policy() {
    let env = env().await;
    let old = env.create("monthly", spec()).await;
    env.apply(
        "monthly",
        spec()
            .group_by("api_key")
            .on_immutable_change(OnImmutableChange::Recreate),
    );
    env.reconcile("monthly").await.unwrap();
    let active = env.active(WS_A).await;
    assert_eq!(active.len(), 1);
    assert_ne!(active[0].id, old);
    assert_eq!(active[0].group_by[0].key, "api_key");
    let recreated = env.events("Recreated");
    assert!(
        recreated
            .iter()
            .any(|(_, note)| note.contains("usage restarts from zero"))
    );

    // Without Recreate (admission bypassed), the change is refused and nothing is written.
    let again = env.obj("monthly").spec.group_by("metadata._user");
    env.apply(
        "monthly",
        again.on_immutable_change(OnImmutableChange::Reject),
    );
    let writes = env.api_writes().await;
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.api_writes().await, writes);
    env.expect_condition("monthly", "Ready", "False", "ImmutableFieldChanged");
}

/// The refresh requeue is jittered upwards only: a pass that came back before the interval was
/// over would only meet the freshness gate and be queued again.
#[tokio::test]
async fn refresh_requeues_are_never_shorter_than_the_interval() {
    let env = env_tuned(|c| c.usage_refresh_interval = Duration::from_secs(20)).await;
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
    let env = env_tuned(|c| c.usage_refresh_interval = Duration::from_secs(3600)).await;
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    env.clear_requests().await;
    let action = env.reconcile("monthly").await.unwrap();
    assert_eq!(env.api_calls().await, 0);
    assert!(
        format!("{action:?}").contains("requeue_after: Some"),
        "{action:?}"
    );
    // A spec change is never skipped.
    env.apply("monthly", spec().limit("900"));
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.active(WS_A).await[0].credit_limit, d("900"));
}

#[tokio::test]
async fn transient_errors_mark_synced_unknown_and_keep_ready() {
    let env = env().await;
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    env.fault(json!({"error_rate": 1.0, "error_status": 503}))
        .await;
    let err = env.reconcile("monthly").await.unwrap_err();
    assert_eq!(err.reason(), "PortkeyServerError");
    env.expect_condition("monthly", "Synced", "Unknown", "PortkeyServerError");
    env.expect_condition("monthly", "Ready", "True", "InForce");
    env.clear_faults().await;
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.condition("monthly", "Synced").0, "True");
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
