//! The trust model (issue #28) through the reconcile: an id a tenant writes into status is
//! re-verified before anything is written through it, for every kind; conflicts count only
//! resources accepted as owners; the scope allow-list guards issued and existing keys.

use crate::harness::*;

/// Team B's namespace, bound to team B's workspace.
const NS_B: &str = "team-b";

/// A policy of team B (managed from team B's namespace): its id.
async fn team_b_policy(env: &Env) -> String {
    env.kube
        .add_namespace(NS_B, &[(WORKSPACE_ANNOTATION, "team-b")]);
    env.create_in(NS_B, "budget", spec().workspace(None).limit("900"))
        .await
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
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    forge(&env, "usagelimitpolicies", "monthly", "policyId", &victim);
    env.reconcile("monthly").await.unwrap();
    env.expect_condition("monthly", "Ready", "False", "RecordedIdMismatch");
    let message = env.message("monthly", "Ready");
    assert!(
        message.starts_with(&format!(
            "status.policyId: Portkey policy {victim} does not belong to this resource's workspace {WS_A}"
        )),
        "{message}"
    );
    // Deleted: the forged id is not archived; the resource's own policy is.
    env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
    env.reconcile("monthly").await.unwrap();
    let b = env.remote(&victim).await;
    assert_eq!((b.status, b.credit_limit), (PolicyStatus::Active, d("900")));
    assert!(
        env.active(WS_A).await.is_empty(),
        "its own policy was archived"
    );
    assert!(env.has_event("RecordedIdRejected"));
}

#[tokio::test]
async fn a_forged_policy_id_in_the_same_workspace_needs_the_marker() {
    let env = env().await;
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    // Another team's policy in the same (shared) workspace, without this resource's marker.
    let mut other = ulp("other", spec());
    other.spec.conditions[0].value = Some("team-c".into());
    env.kube.apply(&other);
    env.reconcile("other").await.unwrap();
    let theirs = env.policy_id("other");
    forge(&env, "usagelimitpolicies", "monthly", "policyId", &theirs);
    env.reconcile("monthly").await.unwrap();
    assert_eq!(env.condition("monthly", "Ready").1, "RecordedIdMismatch");
    let p = env.remote(&theirs).await;
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
    let target = env
        .create_in("platform", "cap", spec().limit("50").alert(None))
        .await;
    env.apply("grab", spec().adopt(&target).limit("999999"));
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
    let p = env.remote(&target).await;
    assert_eq!((p.status, p.credit_limit), (PolicyStatus::Active, d("50")));
    assert!(p.name.unwrap().ends_with("[k8s:ulp:platform/cap]"));
}

#[tokio::test]
async fn a_forged_id_of_an_archived_policy_is_never_written() {
    let env = env().await;
    let victim = team_b_policy(&env).await;
    env.portkey.usage_limits().delete(&victim).await.unwrap();
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    forge(&env, "usagelimitpolicies", "monthly", "policyId", &victim);
    env.clear_requests().await;
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
    env.reconcile_rlp(NS_B, "rpm").await;
    let victim = env.rlp_status(NS_B, "rpm").common.policy_id.unwrap();
    env.kube.apply(&rlp("per-user", 120, "rpm"));
    env.reconcile_rlp(NS, "per-user").await;
    forge(&env, "ratelimitpolicies", "per-user", "policyId", &victim);
    env.reconcile_rlp(NS, "per-user").await;
    let status = env.rlp_status(NS, "per-user");
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

fn budget(limit: u32) -> serde_json::Value {
    json!({"type": "cost", "creditLimit": limit})
}

#[tokio::test]
async fn an_existing_key_is_pinned_by_name_and_a_renamed_one_is_not_followed() {
    let env = env().await;
    let first = env.app_key("payments").await;
    let pinned = json!({"existing": {"name": "payments"}, "budget": budget(20)});
    assert_eq!(env.apply_akb(NS, "pay", pinned).await.0, "InForce");
    // Renamed in Portkey, and a new key takes the old name.
    rename_key(&env, &first, "payments-old").await;
    let second = env.app_key("payments").await;
    let (reason, message) = env.reconcile_akb(NS, "pay").await;
    assert_eq!(reason, "RecordedIdMismatch", "{message}");
    assert!(message.contains("spec.existing.name"), "{message}");
    let new = env.api_key(&second).await;
    assert!(new.usage_limits.is_none(), "nothing written to the new key");
}

#[tokio::test]
async fn a_refused_resource_does_not_block_the_keys_real_owner() {
    let env = env().await;
    let key = env.app_key("shared-app").await;
    // An unbound namespace (created first, so older) names team A's key.
    env.kube.add_namespace("intruder", &[]);
    let grab = json!({"workspace": "team-a", "existing": {"id": key}, "budget": budget(1),
                      "deletionPolicy": "Delete"});
    let (reason, _) = env.apply_akb("intruder", "grab", grab).await;
    assert_eq!(reason, "NamespaceNotBound");
    let owner = json!({"existing": {"id": key}, "budget": budget(30)});
    let (reason, message) = env.apply_akb(NS, "owner", owner).await;
    assert_eq!(reason, "InForce", "{message}");
    // Deleting the refused one deletes nothing.
    env.kube.delete::<ApiKeyBudget>("intruder", "grab");
    let obj = env.kube.get::<ApiKeyBudget>("intruder", "grab").unwrap();
    controller::api_key::reconcile(&obj, &env.ctx)
        .await
        .unwrap();
    let k = env.api_key(&key).await;
    assert_eq!(k.usage_limits.unwrap().credit_limit, d("30"));
}

#[tokio::test]
async fn management_keys_and_disallowed_scopes_are_refused() {
    let env = env().await;
    let admin_like = env
        .service_key(
            WS_A,
            "ops",
            &["completions.write", "workspace_service_api_keys.create"],
        )
        .await;
    let ops = json!({"existing": {"id": admin_like}, "budget": budget(5)});
    let (reason, message) = env.apply_akb(NS, "ops", ops).await;
    assert_eq!(reason, "KeyScopesTooBroad", "{message}");
    assert!(env.api_key(&admin_like).await.usage_limits.is_none());
    let keys_before = env.portkey.list_api_keys(None).await.unwrap().len();
    let evil = json!({"issue": {"scopes": ["completions.write", "policies.delete"],
                                "secretName": "evil"}});
    let (reason, message) = env.apply_akb(NS, "evil", evil).await;
    assert_eq!(reason, "ScopeNotAllowed");
    assert!(
        message.starts_with("spec.issue.scopes[1]: \"policies.delete\""),
        "{message}"
    );
    let user = json!({"issue": {"subType": "user", "userId": "u1",
                                "scopes": ["completions.write"], "secretName": "u"}});
    assert_eq!(env.apply_akb(NS, "user", user).await.0, "KeyTypeNotAllowed");
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
    let issued = env
        .issue_key(WS_A, "operator", &["completions.write"])
        .await;
    let id = issued.id.clone().unwrap();
    let raw = issued.key.expose().to_owned();
    env.emu.control().set_api_keys(&[KEY, &raw]).await.unwrap();
    env.portkey.set_api_key(&ApiKey::new(raw)).unwrap();
    let own = json!({"existing": {"id": id}, "budget": budget(1), "deletionPolicy": "Delete"});
    let (reason, message) = env.apply_akb(NS, "self", own).await;
    assert_eq!(reason, "OperatorKeyRefused", "{message}");
    assert!(env.api_key(&id).await.usage_limits.is_none());
}
