//! The trust model (issue #28) through the reconcile: an id a tenant writes into status is
//! re-verified before anything is written through it, for every kind; conflicts count only
//! resources accepted as owners; the scope allow-list guards issued and existing keys.

use crate::harness::*;
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
    env.apply("monthly", spec());
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
    env.apply("grab", grab);
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
