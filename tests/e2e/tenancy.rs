//! The tenant-proof trust model (#28), tried as a platform team's security review would: every
//! action is the **tenant's** (a ServiceAccount holding a namespace-admin Role on the operator's
//! resources and their status, nothing else; see `support::tenant`), on the real API server,
//! with the operator binary and the emulator. `NS` is bound by the cluster admin to workspace
//! `e2e`; the other team's workspace is `other`, whose objects are made directly in Portkey.
//!
//! Negative assertions ("was not rotated") are only checked after a positive sign that the
//! operator has dealt with the tenant's move since (the expected condition, or
//! `observedGeneration` catching up with a spec change made after the move), so they cannot
//! pass just because the operator has not looked yet. Where the harm itself is what old code
//! does, the wait ends on either, so such a test fails at once naming the harm.

use std::time::Duration;

use portkey_budget_operator::emulator::keys::{ApiKeyRecord, mask};
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::e2e::*;
use crate::support::tenant::Tenant;
use crate::ulp;

const READY: &str = "Ready";
const ROTATE: &str = "budgets.portkey-operator.io/rotate";
const PAUSED: &str = "budgets.portkey-operator.io/paused";

/// An ApiKeyBudget: `annotations` and `spec` are YAML lines (indented by 4 and 2 spaces).
fn akb(ns: &str, name: &str, annotations: &str, spec: &str) -> String {
    let annotations = if annotations.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n{annotations}")
    };
    format!(
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: {name}\n  namespace: {ns}\n{annotations}spec:\n{spec}"
    )
}

/// An issued key in `NS` (workspace e2e) with `scopes`, into Secret `<secret>`; extra spec lines.
fn issued(name: &str, secret: &str, scopes: &str, extra: &str) -> String {
    akb(
        NS,
        name,
        "",
        &format!(
            "  workspace: e2e\n  issue:\n    scopes: [{scopes}]\n    secretName: {secret}\n  budget:\n    type: cost\n    creditLimit: 200\n{extra}"
        ),
    )
}

/// A key made directly in Portkey (as a team would in the UI): its id and raw key.
async fn create_key(
    env: &Env,
    workspace: &str,
    name: &str,
    scopes: &[&str],
    limit: Option<u32>,
) -> (String, String) {
    let usage_limits = limit.map(|l| {
        serde_json::from_value(json!({"type": "cost", "credit_limit": l})).expect("a key budget")
    });
    let created = env
        .portkey
        .create_api_key(
            ApiKeyType::Workspace,
            ApiKeySubType::Service,
            &CreateApiKey {
                name: name.into(),
                workspace_id: Some(workspace.into()),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                usage_limits,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    (created.id.unwrap(), created.key.expose().to_owned())
}

/// The emulator's record of a key (raw key, rotations), if it exists.
async fn record(env: &Env, id: &str) -> Option<ApiKeyRecord> {
    env.emu
        .control()
        .state()
        .await
        .unwrap()
        .api_keys
        .into_iter()
        .find(|r| r.key.id == id)
}

async fn rotations(env: &Env, id: &str) -> u32 {
    record(env, id).await.map(|r| r.rotations).unwrap_or(0)
}

async fn works(env: &Env, raw: &str) -> bool {
    env.emu.control().key_works(raw).await.unwrap()
}

/// Requests that reached the emulator to change the object at `path` (or under it, e.g.
/// `/v1/api-keys/<id>/rotate`): PUT, POST, DELETE, as "METHOD path -> status".
async fn writes_to(env: &Env, path: &str) -> Vec<String> {
    let under = format!("{path}/");
    env.emu
        .control()
        .requests()
        .await
        .unwrap()
        .data
        .into_iter()
        .filter(|e| {
            matches!(e.method.as_str(), "PUT" | "POST" | "DELETE" | "PATCH")
                && (e.path == path || e.path.starts_with(&under))
        })
        .map(|e| format!("{} {} -> {}", e.method, e.path, e.status))
        .collect()
}

fn key_path(id: &str) -> String {
    format!("/v1/api-keys/{id}")
}

const NONE: Vec<String> = Vec::new();

/// What a team cares about in its key: limits, scopes, name.
fn limits_of(k: &ApiKeyObject) -> Value {
    json!({
        "name": k.name,
        "scopes": k.scopes,
        "usage_limits": k.usage_limits.as_ref().map(|l| (l.credit_limit, l.limit_type.to_string())),
        "rate_limits": k.rate_limits,
        "alert_emails": k.alert_emails,
        "status": k.status.map(|s| s.to_string()),
    })
}

/// The key as its team would see it now (`None`: it is gone).
async fn key_now(env: &Env, id: &str) -> Option<Value> {
    match env.portkey.get_api_key(id).await {
        Ok(k) => Some(limits_of(&k)),
        Err(e) if e.is_gone() => None,
        Err(e) => panic!("read API key {id}: {e}"),
    }
}

/// The tenant changes the spec (a field the scenario does not care about) and the operator
/// reconciles that generation: a pass that started after every earlier move of the tenant.
async fn touch(env: &Env, tenant: &Tenant, kind: &str, name: &str, ns: &str, spec: Value) {
    tenant.patch_spec(kind, name, ns, spec);
    let generation = env.jsonpath(kind, name, Some(ns), "{.metadata.generation}");
    env.until(
        (kind, name, Some(ns)),
        &format!("{kind}/{name} reconciled at generation {generation}"),
        Duration::from_secs(60),
        || async {
            (env.jsonpath(kind, name, Some(ns), "{.status.observedGeneration}") == generation)
                .then_some(())
        },
    )
    .await;
}

/// Asserts the Ready condition: False, `reason`, the message naming `field`.
fn assert_refused(env: &Env, kind: &str, name: &str, ns: &str, reason: &str, field: &str) {
    let (status, got, message) = env.condition(kind, name, Some(ns), READY);
    assert_eq!(
        (status.as_str(), got.as_str()),
        ("False", reason),
        "{kind}/{name}: Ready should be False/{reason}: {message}"
    );
    assert!(
        message.contains(field),
        "{kind}/{name}: the {reason} message should name {field}: {message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_status_key_id_rotates_nothing_of_another_workspace() {
    let test = "a_forged_status_key_id_rotates_nothing_of_another_workspace";
    e2e(test, |env| async move {
        let tenant = env.tenant(&[]);
        let (theirs, their_raw) = create_key(
            &env,
            OTHER_WS,
            "other team app",
            &["completions.write"],
            Some(50),
        )
        .await;
        let their_key = key_now(&env, &theirs).await.unwrap();
        let _op = env.operator("operator.log");

        tenant.apply(&issued("app", "app-key", "completions.write", ""));
        env.wait_ready_true("akb", "app", Some(NS)).await;
        let mine = env.jsonpath("akb", "app", Some(NS), "{.status.keyId}");
        let (raw, _) = env.secret_key("app-key").expect("the Secret");

        // The forgery, then the rotation request.
        tenant.patch_status("akb", "app", NS, json!({"keyId": theirs}));
        tenant.annotate("akb", "app", NS, &format!("{ROTATE}=steal"));
        env.until(
            ("akb", "app", Some(NS)),
            "RecordedIdMismatch, or the other team's key rotated",
            Duration::from_secs(60),
            || async {
                let reason = env.reason("akb", "app", Some(NS), READY);
                (reason == "RecordedIdMismatch" || rotations(&env, &theirs).await > 0).then_some(())
            },
        )
        .await;
        // A pass that certainly saw the rotate annotation.
        touch(
            &env,
            &tenant,
            "akb",
            "app",
            NS,
            json!({"alertEmails": ["a@example.com"]}),
        )
        .await;

        assert_eq!(
            rotations(&env, &theirs).await,
            0,
            "the other team's key was rotated"
        );
        assert!(
            works(&env, &their_raw).await,
            "the other team's key stopped working"
        );
        assert_eq!(writes_to(&env, &key_path(&theirs)).await, NONE);
        assert_eq!(
            key_now(&env, &theirs).await.as_ref(),
            Some(&their_key),
            "the other team's key was changed"
        );
        assert_eq!(
            env.secret_key("app-key"),
            Some((raw.clone(), mine.clone())),
            "the tenant's Secret must keep its own key"
        );
        assert_refused(&env, "akb", "app", NS, "RecordedIdMismatch", "status.keyId");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_status_policy_id_archives_nothing_of_another_workspace() {
    let test = "a_forged_status_policy_id_archives_nothing_of_another_workspace";
    e2e(test, |env| async move {
        let tenant = env.tenant(&[]);
        let body = usage_policy("other team budget", "other", OTHER_WS);
        let theirs = env.portkey.usage_limits().create(&body).await.unwrap().id;
        let policy = || async {
            env.portkey
                .usage_limits()
                .get(&theirs, GetOptions::default())
                .await
                .ok()
                .filter(|p| p.status == PolicyStatus::Active)
                .map(|p| (p.name, p.credit_limit))
        };
        let intact = Some((Some("other team budget".to_owned()), Decimal::from(100)));
        assert_eq!(policy().await, intact);
        let _op = env.operator("operator.log");

        tenant.apply(&ulp("mine", 500));
        env.wait_ready_true("ulp", "mine", Some(NS)).await;

        tenant.patch_status("ulp", "mine", NS, json!({"policyId": theirs}));
        env.until(
            ("ulp", "mine", Some(NS)),
            "RecordedIdMismatch, or the other team's policy changed",
            Duration::from_secs(60),
            || async {
                let reason = env.reason("ulp", "mine", Some(NS), READY);
                (reason == "RecordedIdMismatch" || policy().await != intact).then_some(())
            },
        )
        .await;
        assert_eq!(
            policy().await,
            intact,
            "the other team's policy was changed"
        );
        assert_refused(
            &env,
            "ulp",
            "mine",
            NS,
            "RecordedIdMismatch",
            "status.policyId",
        );

        // Deleting the resource (deletionPolicy Archive) archives nothing of theirs.
        tenant.delete("ulp", "mine", NS);
        env.until(
            ("ulp", "mine", Some(NS)),
            "the resource gone, or the other team's policy archived",
            Duration::from_secs(60),
            || async {
                let gone = !env
                    .cp
                    .kubectl_raw(&["get", "ulp", "mine", "-n", NS])
                    .status
                    .success();
                (gone || policy().await != intact).then_some(())
            },
        )
        .await;
        assert_eq!(
            policy().await,
            intact,
            "the other team's policy was archived or changed"
        );
        let path = format!("/v1/policies/usage-limits/{theirs}");
        assert_eq!(writes_to(&env, &path).await, NONE);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_namespace_cannot_name_another_teams_workspace() {
    let test = "an_unbound_namespace_cannot_name_another_teams_workspace";
    e2e(test, |env| async move {
        env.create_namespace(NS2, None);
        let tenant = env.tenant(&[NS2]);
        let (theirs, their_raw) = create_key(
            &env,
            OTHER_WS,
            "other team app",
            &["completions.write"],
            Some(50),
        )
        .await;
        let their_key = key_now(&env, &theirs).await.unwrap();
        // No --default-workspace, no --single-tenant: the defaults.
        let _op = env.operator("operator.log");

        tenant.apply(&akb(
            NS2,
            "grab",
            "",
            &format!(
                "  workspace: {OTHER_WS_SLUG}\n  existing:\n    id: {theirs}\n  budget:\n    type: cost\n    creditLimit: 1000\n  deletionPolicy: Delete\n"
            ),
        ));
        env.until(
("akb", "grab", Some(NS2)),
"NamespaceNotBound, or the other team's key changed",
            Duration::from_secs(60),
            || async {
                let reason = env.reason("akb", "grab", Some(NS2), READY);
                (reason == "NamespaceNotBound"
                    || key_now(&env, &theirs).await.as_ref() != Some(&their_key))
                .then_some(())
            },
        )
        .await;
        assert_eq!(
            key_now(&env, &theirs).await.as_ref(),
            Some(&their_key),
            "the other team's key was changed"
        );
        assert_refused(&env, "akb", "grab", NS2, "NamespaceNotBound", NS2);

        tenant.delete("akb", "grab", NS2);
        env.until(
("akb", "grab", Some(NS2)),
"the resource gone, or the other team's key deleted",
            Duration::from_secs(60),
            || async {
                let gone = !env
                    .cp
                    .kubectl_raw(&["get", "akb", "grab", "-n", NS2])
                    .status
                    .success();
                (gone || key_now(&env, &theirs).await.is_none()).then_some(())
            },
        )
        .await;
        assert_eq!(
            key_now(&env, &theirs).await.as_ref(),
            Some(&their_key),
            "the other team's key was deleted or changed"
        );
        assert!(works(&env, &their_raw).await);
        assert_eq!(writes_to(&env, &key_path(&theirs)).await, NONE);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_scopes_and_types_are_the_platform_teams_choice() {
    let test = "key_scopes_and_types_are_the_platform_teams_choice";
    e2e(test, |env| async move {
        let tenant = env.tenant(&[]);
        // A management key of the tenant's own workspace.
        let (admin_key, _) = create_key(
            &env,
            WS,
            "ops automation",
            &["completions.write", "workspace_service_api_keys.create"],
            None,
        )
        .await;
        let admin_before = key_now(&env, &admin_key).await.unwrap();
        let _op = env.operator("operator.log");

        tenant.apply(&issued("wide", "wide-key", "policies.delete", ""));
        tenant.apply(&akb(
            NS,
            "as-user",
            "",
            "  workspace: e2e\n  issue:\n    subType: user\n    userId: u-123\n    scopes: [completions.write]\n    secretName: as-user-key\n",
        ));
        tenant.apply(&akb(
            NS,
            "broad",
            "",
            &format!(
                "  workspace: e2e\n  existing:\n    id: {admin_key}\n  budget:\n    type: cost\n    creditLimit: 77\n"
            ),
        ));

        for (name, reason) in [("wide", "ScopeNotAllowed"), ("as-user", "KeyTypeNotAllowed")] {
            env.until(
("akb", name, Some(NS)),
&format!("{name}: {reason}, or a key issued"),
                Duration::from_secs(60),
                || async {
                    let got = env.reason("akb", name, Some(NS), READY);
                    (got == reason || !env.marked_keys(WS, NS, name).await.is_empty())
                        .then_some(())
                },
            )
            .await;
        }
        env.until(
("akb", "broad", Some(NS)),
"broad: KeyScopesTooBroad, or the management key changed",
            Duration::from_secs(60),
            || async {
                let got = env.reason("akb", "broad", Some(NS), READY);
                (got == "KeyScopesTooBroad"
                    || key_now(&env, &admin_key).await.as_ref() != Some(&admin_before))
                .then_some(())
            },
        )
        .await;

        assert!(
            env.marked_keys(WS, NS, "wide").await.is_empty(),
            "a key with scope policies.delete was issued"
        );
        assert!(
            env.marked_keys(WS, NS, "as-user").await.is_empty(),
            "a user key was issued"
        );
        assert_eq!(
            key_now(&env, &admin_key).await.as_ref(),
            Some(&admin_before),
            "the management key was written to"
        );
        assert_eq!(writes_to(&env, &key_path(&admin_key)).await, NONE);
        assert_eq!(
            env.portkey.list_api_keys(None).await.unwrap().len(),
            1,
            "no key was created in Portkey"
        );
        assert_refused(&env, "akb", "wide", NS, "ScopeNotAllowed", "spec.issue.scopes[0]");
        assert_refused(&env, "akb", "as-user", NS, "KeyTypeNotAllowed", "spec.issue.subType");
        assert_refused(&env, "akb", "broad", NS, "KeyScopesTooBroad", "spec.existing");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_resource_does_not_block_the_real_owner() {
    let test = "a_refused_resource_does_not_block_the_real_owner";
    e2e(test, |env| async move {
        env.create_namespace(NS2, None);
        let tenant = env.tenant(&[NS2]);
        let (key, _) = create_key(&env, WS, "checkout", &["completions.write"], Some(50)).await;
        let _op = env.operator("operator.log");

        // First (so older): a resource in the unbound namespace naming the e2e team's key.
        tenant.apply(&akb(
            NS2,
            "squatter",
            "",
            &format!(
                "  workspace: e2e\n  existing:\n    id: {key}\n  budget:\n    type: cost\n    creditLimit: 1\n"
            ),
        ));
        env.until(
("akb", "squatter", Some(NS2)),
"the squatter reconciled",
            Duration::from_secs(60),
            || async { (!env.reason("akb", "squatter", Some(NS2), READY).is_empty()).then_some(()) },
        )
        .await;
        // Then the real owner, in the bound namespace.
        env.cp.apply(&akb(
            NS,
            "owner",
            "",
            &format!(
                "  workspace: e2e\n  existing:\n    id: {key}\n  budget:\n    type: cost\n    creditLimit: 100\n"
            ),
        ));
        let reason = env.until(
("akb", "owner", Some(NS)),
"the owner Ready, or refused",
            Duration::from_secs(60),
            || async {
                let (status, reason, _) = env.condition("akb", "owner", Some(NS), READY);
                (status == "True" || status == "False" && !reason.is_empty()).then_some(reason)
            },
        )
        .await;
        assert_ne!(
            reason,
            "Conflict",
            "a refused resource blocks the real owner: {}",
            env.conditions_json("akb", "owner", Some(NS))
        );
        env.wait_ready_true("akb", "owner", Some(NS)).await;
        let limit = env
            .portkey
            .get_api_key(&key)
            .await
            .unwrap()
            .usage_limits
            .map(|l| l.credit_limit);
        assert_eq!(limit, Some(Decimal::from(100)), "the owner's budget is in force");
        assert_refused(&env, "akb", "squatter", NS2, "NamespaceNotBound", NS2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_rotate_answer_rotates_at_most_twice() {
    let test = "a_lost_rotate_answer_rotates_at_most_twice";
    e2e(test, |env| async move {
        let ctl = env.emu.control();
        let tenant = env.tenant(&[]);
        // Answers slower than this are lost to the operator.
        let _op = env.operator_with("operator.log", "operator", &["--admin-api-timeout", "2s"]);

        tenant.apply(&issued("rot", "rot-key", "completions.write", ""));
        env.wait_ready_true("akb", "rot", Some(NS)).await;
        let id = env.jsonpath("akb", "rot", Some(NS), "{.status.keyId}");
        // Rotations are carried out, their answers never reach the operator (every other
        // request is answered at once).
        ctl.set_faults(
            json!({"response_delay_ms": 6000, "method": "POST", "path_contains": "/rotate"}),
        )
        .await
        .unwrap();
        tenant.annotate("akb", "rot", NS, &format!("{ROTATE}=r1"));
        env.until(
            ("akb", "rot", Some(NS)),
            "RotationResultUnknown, or a third rotation",
            Duration::from_secs(120),
            || async {
                let reason = env.reason("akb", "rot", Some(NS), READY);
                (reason == "RotationResultUnknown" || rotations(&env, &id).await > 2).then_some(())
            },
        )
        .await;
        assert!(
            rotations(&env, &id).await <= 2,
            "rotated {} times for one token",
            rotations(&env, &id).await
        );
        // However long one waits: a pass after the condition rotates no more.
        touch(
            &env,
            &tenant,
            "akb",
            "rot",
            NS,
            json!({"alertEmails": ["a@example.com"]}),
        )
        .await;
        assert!(rotations(&env, &id).await <= 2);
        // Answers arrive again: still no loop, and the Secret holds a working key unless the
        // condition says it may not.
        ctl.clear_faults().await.unwrap();
        touch(
            &env,
            &tenant,
            "akb",
            "rot",
            NS,
            json!({"alertEmails": ["b@example.com"]}),
        )
        .await;
        let total = rotations(&env, &id).await;
        assert!((1..=2).contains(&total), "rotated {total} times in all");
        let (raw, _) = env.secret_key("rot-key").expect("the Secret");
        if !works(&env, &raw).await {
            let (_, reason, message) = env.condition("akb", "rot", Some(NS), READY);
            assert_eq!(
                reason, "RotationResultUnknown",
                "the Secret holds a dead key and the resource does not say so: {message}"
            );
        }
        let after = rotations(&env, &id).await;
        touch(
            &env,
            &tenant,
            "akb",
            "rot",
            NS,
            json!({"alertEmails": ["c@example.com"]}),
        )
        .await;
        assert_eq!(rotations(&env, &id).await, after, "rotations go on");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_band_rotation_is_noticed_and_never_loops() {
    let test = "an_out_of_band_rotation_is_noticed_and_never_loops";
    e2e(test, |env| async move {
        let tenant = env.tenant(&[]);
        let _op = env.operator("operator.log");
        tenant.apply(&issued("oob", "oob-key", "completions.write", ""));
        env.wait_ready_true("akb", "oob", Some(NS)).await;
        let id = env.jsonpath("akb", "oob", Some(NS), "{.status.keyId}");

        // Someone rotates the key in the Portkey UI.
        env.portkey.rotate_api_key(&id, 1_800_000).await.unwrap();
        let matches = || async {
            let (raw, _) = env.secret_key("oob-key")?;
            let shown = env.portkey.get_api_key(&id).await.ok()?.key?;
            Some(mask(&raw) == shown)
        };
        assert_eq!(matches().await, Some(false));
        let repaired = env
            .until(
                ("akb", "oob", Some(NS)),
                "the Secret repaired, or the resource reporting the rotation",
                Duration::from_secs(60),
                || async {
                    if matches().await == Some(true) {
                        return Some(true);
                    }
                    let (status, _, message) = env.condition("akb", "oob", Some(NS), READY);
                    (status == "False" && message.to_lowercase().contains("rotat")).then_some(false)
                },
            )
            .await;
        if repaired {
            let (raw, key_id) = env.secret_key("oob-key").unwrap();
            assert_eq!(key_id, id);
            assert!(works(&env, &raw).await, "the repaired Secret's key works");
            let events = env.cp.kubectl(&[
                "get",
                "events",
                "-n",
                NS,
                "--field-selector",
                "involvedObject.name=oob",
                "-o",
                "jsonpath={.items[*].reason}",
            ]);
            assert!(
                events.contains("Rotat"),
                "an Event tells of the repair: {events}"
            );
        }
        let after = rotations(&env, &id).await;
        assert!(after <= 2, "rotated {after} times (1 out of band)");
        touch(
            &env,
            &tenant,
            "akb",
            "oob",
            NS,
            json!({"alertEmails": ["a@example.com"]}),
        )
        .await;
        touch(
            &env,
            &tenant,
            "akb",
            "oob",
            NS,
            json!({"alertEmails": ["b@example.com"]}),
        )
        .await;
        assert_eq!(rotations(&env, &id).await, after, "the repair loops");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_resource_name_issues_its_key() {
    let test = "a_long_resource_name_issues_its_key";
    e2e(test, |env| async move {
        let tenant = env.tenant(&[]);
        let _op = env.operator("operator.log");
        let name = format!("payments-{}", "x".repeat(64));
        assert!(name.len() > 70);
        let secret_name = format!("{name}-key");
        tenant.apply(&issued(&name, &secret_name, "completions.write", ""));
        env.wait_ready_true("akb", &name, Some(NS)).await;
        let id = env.jsonpath("akb", &name, Some(NS), "{.status.keyId}");
        let (raw, key_id) = env.secret_key(&secret_name).expect("the Secret");
        assert_eq!(key_id, id);
        assert!(works(&env, &raw).await);
        assert_eq!(env.marked_keys(WS, NS, &name).await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_existing_key_found_by_name_is_pinned() {
    let test = "an_existing_key_found_by_name_is_pinned";
    e2e(test, |env| async move {
        let tenant = env.tenant(&[]);
        let (first, _) = create_key(&env, WS, "billing", &["completions.write"], Some(50)).await;
        let _op = env.operator("operator.log");
        tenant.apply(&akb(
            NS,
            "billing",
            "",
            "  workspace: e2e\n  existing:\n    name: billing\n  budget:\n    type: cost\n    creditLimit: 100\n",
        ));
        env.wait_ready_true("akb", "billing", Some(NS)).await;
        assert_eq!(env.jsonpath("akb", "billing", Some(NS), "{.status.keyId}"), first);

        // In Portkey: the key is renamed, and a new key takes the old name.
        let response = reqwest::Client::new()
            .put(format!("{}/api-keys/{first}", env.emu.base_url()))
            .header(API_KEY_HEADER, KEY)
            .json(&json!({"name": "billing-old"}))
            .send()
            .await
            .unwrap();
        assert!(response.status().is_success(), "rename: {}", response.status());
        let (second, _) = create_key(&env, WS, "billing", &["completions.write"], Some(5)).await;
        let second_before = key_now(&env, &second).await.unwrap();
        // A pass after both changes.
        touch(
            &env,
            &tenant,
            "akb",
            "billing",
            NS,
            json!({"budget": {"type": "cost", "creditLimit": 110}}),
        )
        .await;

        assert_eq!(
            key_now(&env, &second).await.as_ref(),
            Some(&second_before),
            "the budget moved to the new key named billing"
        );
        assert_eq!(writes_to(&env, &key_path(&second)).await, NONE);
        let (status, reason, message) = env.condition("akb", "billing", Some(NS), READY);
        assert_eq!(status, "False", "{reason}: {message}");
        assert!(
            reason == "RecordedIdMismatch" || reason == "KeyNotFound",
            "the rename is reported: {reason}: {message}"
        );
        assert!(
            message.contains("spec.existing.name") || message.contains("status.keyId"),
            "the message names the field: {message}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_and_pause_never_delete_keys() {
    let test = "dry_run_and_pause_never_delete_keys";
    e2e(test, |env| async move {
        let tenant = env.tenant(&[]);
        let op = env.operator("operator.log");
        // Two keys carrying the marker of each resource: one the operator issued (its resource
        // then deleted with Retain), one made in Portkey with the same name.
        let mut twins = Vec::new();
        for name in ["twin-paused", "twin-dry"] {
            tenant.apply(&issued(
                name,
                &format!("{name}-key"),
                "completions.write",
                "  deletionPolicy: Retain\n",
            ));
            env.wait_ready_true("akb", name, Some(NS)).await;
            let id = env.jsonpath("akb", name, Some(NS), "{.status.keyId}");
            let key_name = env.portkey.get_api_key(&id).await.unwrap().name.unwrap();
            tenant.kubectl(&["delete", "akb", name, "-n", NS, "--timeout=60s"]);
            let (copy, _) = create_key(&env, WS, &key_name, &["completions.write"], None).await;
            assert_eq!(env.marked_keys(WS, NS, name).await.len(), 2);
            twins.push((name, [id, copy]));
        }
        let all_exist = |name: &'static str, ids: [String; 2]| {
            let env = &env;
            async move {
                for id in &ids {
                    assert!(
                        key_now(env, id).await.is_some(),
                        "{name}: key {id} carrying the marker was deleted"
                    );
                    let writes = writes_to(env, &key_path(id)).await;
                    assert!(
                        !writes.iter().any(|w| w.starts_with("DELETE")),
                        "{name}: {writes:?}"
                    );
                }
            }
        };

        // Paused from its creation.
        let (name, ids) = twins[0].clone();
        tenant.apply(&akb(
            NS,
            name,
            &format!("    {PAUSED}: \"true\"\n"),
            "  workspace: e2e\n  issue:\n    scopes: [completions.write]\n    secretName: twin-paused-key2\n  budget:\n    type: cost\n    creditLimit: 200\n",
        ));
        touch(&env, &tenant, "akb", name, NS, json!({"alertEmails": ["a@example.com"]})).await;
        all_exist(name, ids.clone()).await;
        op.kill();

        // Under --dry-run.
        let _op = env.operator_with("operator-dry.log", "operator-dry", &["--dry-run"]);
        let (name, ids) = twins[1].clone();
        tenant.apply(&issued(name, "twin-dry-key2", "completions.write", ""));
        touch(&env, &tenant, "akb", name, NS, json!({"alertEmails": ["a@example.com"]})).await;
        all_exist(name, ids).await;
        all_exist(twins[0].0, twins[0].1.clone()).await;
    })
    .await;
}
