//! Ownership and identity under real-world Admin API behaviour: each test is one scenario of
//! what used to archive another team's budget, wipe limits nobody declared, or duplicate.

use crate::harness::*;

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
    let theirs = env.hand_made("team B's budget", WS_B).await;
    let s = spec()
        .adopt(&theirs)
        .on_immutable_change(OnImmutableChange::Recreate);
    env.apply("grab", s.clone());
    env.clear_requests().await;
    env.reconcile("grab").await.unwrap();
    assert_eq!(reason(&env, "grab"), "WorkspaceNotAllowed");
    let status = env.obj("grab").status.unwrap();
    assert_eq!(
        status.common.policy_id, None,
        "the foreign id is never recorded"
    );
    assert_eq!(env.api_writes().await, 0);
    // Observe mode reads nothing of team B's into team A's status.
    env.apply("peek", s.observe());
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
    env.fault(json!({"read_after_write_lag_ms": 600_000})).await;
    env.apply("lagging", spec());
    env.reconcile("lagging").await.unwrap();
    assert_eq!(reason(&env, "lagging"), "RemotePolicyNotVisible");
    // The Event held back for the end of the pass is recorded though the pass stopped.
    let created = env.events("Created");
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
    assert!(!env.has_event("Recreated"));
    env.clear_faults().await;
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
    let id = env.create("monthly", spec()).await;
    // A transient 404 on the GET of a known policy (a lagging replica): the archive is
    // checked with `?status=archived`, which finds it active → nothing is recreated.
    env.fail_next(1, "GET", 404).await;
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.active(WS_A).await.len(), 1);
    assert_eq!(
        env.obj("monthly").status.unwrap().common.policy_id,
        Some(id)
    );
    assert!(!env.has_event("Recreated"));
}

#[tokio::test]
async fn duplicates_are_archived_at_refresh_and_all_on_deletion() {
    let env = env().await;
    let id = env.create("monthly", spec()).await;
    let marker = "[k8s:ulp:team-a/monthly]";
    // A younger policy with the same marker (a create elsewhere, an old bug): archived at
    // the next refresh, the older kept.
    env.hand_made(&format!("copy {marker}"), WS_A).await;
    // The next refresh listing (the shared one is at most 30 s old) shows it.
    env.ctx.owned.invalidate("ulp", WS_A);
    env.reconcile("monthly").await.unwrap();
    let active = env.active(WS_A).await;
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, id, "the oldest wins");
    let archived = env.events("DuplicateArchived");
    assert!(archived.iter().any(|(type_, _)| type_ == "Warning"));
    assert!(env.ctx.metrics.encode().contains(
        "portkey_budget_operator_duplicates_archived_total{kind=\"UsageLimitPolicy\"} 1"
    ));
    // An older one (the clock set back): it wins, and the resource switches to it.
    env.set_clock(Some("2020-01-01T00:00:00Z")).await;
    let older = env.hand_made(&format!("older {marker}"), WS_A).await;
    env.set_clock(None).await;
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
    env.hand_made(&format!("late {marker}"), WS_A).await;
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
    env.apply("monthly", spec());
    kube_b.apply(&ulp("monthly", spec()));
    env.reconcile("monthly").await.unwrap();
    let reconcile_b = |name: &str| {
        let obj = kube_b.get::<UsageLimitPolicy>(NS, name).unwrap();
        let ctx = ctx_b.clone();
        async move { usage::reconcile(&obj, &ctx).await }
    };
    reconcile_b("monthly").await.unwrap();
    let names = env.active_names(WS_A).await;
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
    kube_b.apply(&ulp("takeover", spec().adopt(&left[0].id)));
    reconcile_b("takeover").await.unwrap();
    let taken = kube_b.get::<UsageLimitPolicy>(NS, "takeover").unwrap();
    let status = taken.status.unwrap();
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
        .made_in_portkey(&remote_policy(
            "x [k8s:ulp:team-a/migrated@old-cluster]",
            WS_A,
        ))
        .await;
    let legacy = env.hand_made("y [k8s:ulp:team-a/legacy]", WS_A).await;
    env.apply("migrated", spec());
    env.apply("legacy", spec());
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
    let id = env.create("monthly", spec()).await;
    let stale = env.obj("monthly");
    env.add_usage(&id, "metadata._user:alice", "250").await;
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
    let s = spec().on_immutable_change(OnImmutableChange::Recreate);
    let old = env.create("monthly", s.clone()).await;
    env.apply("monthly", s.group_by("api_key"));
    env.fail_next(1, "POST", 400).await;
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
    let id = env.create("gone", spec()).await;
    // Archived elsewhere, and Portkey answers 403 AB03 for it: the finalizer is released.
    env.portkey.usage_limits().delete(&id).await.unwrap();
    env.fault(json!({"gone_as_forbidden": true})).await;
    env.kube.delete::<UsageLimitPolicy>(NS, "gone");
    env.reconcile("gone").await.unwrap();
    assert!(env.kube.get::<UsageLimitPolicy>(NS, "gone").is_none());
    env.clear_faults().await;

    // A key without policies.delete: the finalizer stays, the condition says what to do,
    // and switching to Retain releases it with the policy left in force.
    let id = env.create("stuck", spec()).await;
    env.fail_next(100, "DELETE", 403).await;
    env.kube.delete::<UsageLimitPolicy>(NS, "stuck");
    env.reconcile("stuck").await.unwrap();
    let obj = env.obj("stuck");
    assert!(obj.metadata.deletion_timestamp.is_some());
    env.expect_condition("stuck", "Ready", "False", "ArchiveForbidden");
    let message = env.message("stuck", "Ready");
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
    env.clear_faults().await;
    assert_eq!(env.active(WS_A).await[0].id, id, "left in force");
}
