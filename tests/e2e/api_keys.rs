//! `ApiKeyBudget` through the operator binary on the real API server: issuing a key into a
//! Secret, rotation and usage reset by annotation, drift, deletion; managing an existing key
//! field by field (the reset schedule kept, tenancy refused); and kill -9 between the key's
//! creation and the Secret write.

use std::ops::Not;
use std::time::Duration;

use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::support::e2e::*;
use crate::support::health::{argo, kstatus, record_case};

/// kstatus and the shipped Argo CD health script judge the real object as expected (and, with
/// `PBO_WRITE_ARGOCD_TESTDATA=1`, it becomes a `health_test.yaml` case).
fn health(env: &Env, name: &str, case: &str, kstatus_want: &str, argo_want: &str) {
    let text = env
        .cp
        .kubectl(&["get", "akb", name, "-n", NS, "-o", "json"]);
    let mut obj: Value = serde_json::from_str(&text).unwrap();
    if let Some(meta) = obj["metadata"].as_object_mut() {
        meta.remove("managedFields");
    }
    assert_eq!(kstatus(&obj), kstatus_want, "{case}: kstatus\n{obj:#}");
    let (status, message) = argo("ApiKeyBudget", &obj);
    assert_eq!(status, argo_want, "{case}: Argo CD health ({message})");
    record_case("ApiKeyBudget", case, &obj, &status, &message);
}

/// An ApiKeyBudget issuing a key into Secret `<name>-key`, with extra spec lines.
fn issued(name: &str, limit: u32, extra: &str) -> String {
    format!(
        r#"apiVersion: budgets.portkey-operator.io/v1alpha1
kind: ApiKeyBudget
metadata:
  name: {name}
  namespace: {NS}
spec:
  workspace: e2e
  issue:
    name: {name} app
    scopes: [completions.write]
    secretName: {name}-key
  budget:
    type: cost
    creditLimit: {limit}
    alertThreshold: 150
    periodicReset: monthly
  rateLimits:
    - type: requests
      unit: rpm
      value: 60
  alertEmails: [finance@example.com]
{extra}"#
    )
}

/// The raw key in the Secret, and the key id it is annotated with.
fn secret(env: &Env, name: &str) -> (String, String, Value) {
    let text = env
        .cp
        .kubectl(&["get", "secret", name, "-n", NS, "-o", "json"]);
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(
        v["data"]["PORTKEY_API_KEY"].is_string(),
        "the key is in the Secret"
    );
    let (raw, _) = env.secret_key(name).expect("the Secret exists");
    let id = v["metadata"]["annotations"]["budgets.portkey-operator.io/key-id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (raw.trim().to_owned(), id, v)
}

fn annotate(env: &Env, name: &str, annotation: &str) {
    env.cp
        .kubectl(&["annotate", "akb", name, "-n", NS, "--overwrite", annotation]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_key_lives_in_a_secret_rotates_and_resets() {
    e2e(
        "issued_key_lives_in_a_secret_rotates_and_resets",
        |env| async move {
            let (cp, portkey, ctl) = (&env.cp, &env.portkey, env.emu.control());
            let op = env.operator("operator.log");

            cp.apply(&issued("payments", 200, ""));
            env.wait_ready("akb/payments", Some(NS));
            health(&env, "payments", "issued in force", "Current", "Healthy");
            let keys = env.marked_keys(WS, NS, "payments").await;
            assert_eq!(keys.len(), 1, "exactly one key issued");
            let key = &keys[0];
            assert_eq!(
                env.jsonpath("akb", "payments", Some(NS), "{.status.keyId}"),
                key.id
            );
            let budget = key.usage_limits.clone().expect("the budget is set");
            assert_eq!(budget.credit_limit, Decimal::from(200));
            assert_eq!(budget.periodic_reset, Some(PeriodicReset::Monthly));
            assert_eq!(key.rate_limits.as_ref().unwrap().len(), 1);
            assert_eq!(
                key.alert_emails.as_deref(),
                Some(&["finance@example.com".to_owned()][..])
            );
            assert_eq!(key.scopes, vec!["completions.write".to_owned()]);
            assert!(
                key.name
                    .as_deref()
                    .unwrap()
                    .starts_with("payments app [k8s:akb:")
            );

            // The Secret: the raw key (which works), annotated with its key id, owned by the resource.
            let (raw, secret_key_id, secret_obj) = secret(&env, "payments-key");
            assert_eq!(secret_key_id, key.id);
            assert!(ctl.key_works(&raw).await.unwrap(), "the Secret's key works");
            assert_eq!(
                secret_obj["metadata"]["ownerReferences"][0]["kind"],
                "ApiKeyBudget"
            );
            assert_ne!(
                key.key.as_deref(),
                Some(raw.as_str()),
                "GET shows it masked"
            );

            // Printer columns.
            let table = cp.kubectl(&["get", "apikeybudgets", "-n", NS]);
            for header in ["KEY", "TYPE", "LIMIT", "STATUS", "RESET", "READY"] {
                assert!(table.contains(header), "{table}");
            }
            let table = cp.kubectl(&["get", "portkey", "-n", NS]);
            assert!(table.contains("payments"), "category portkey: {table}");

            // Rotation by annotation: once per token; the Secret is updated in place.
            let uid_before = secret_obj["metadata"]["uid"].clone();
            annotate(&env, "payments", "budgets.portkey-operator.io/rotate=r1");
            eventually("the rotation recorded", Duration::from_secs(60), || async {
                (env.jsonpath("akb", "payments", Some(NS), "{.status.rotation.token}") == "r1")
                    .then_some(())
            })
            .await;
            let (rotated, id_after, secret_after) = secret(&env, "payments-key");
            assert_ne!(rotated, raw, "the Secret holds the new key");
            assert_eq!(id_after, key.id, "the same Portkey key");
            assert_eq!(
                secret_after["metadata"]["uid"], uid_before,
                "updated in place"
            );
            assert!(ctl.key_works(&rotated).await.unwrap());
            assert!(
                ctl.key_works(&raw).await.unwrap(),
                "the old key works during the transition period"
            );
            // A spec change later: no second rotation for the same token.
            env.merge_patch(
                "akb",
                "payments",
                Some(NS),
                r#"{"spec":{"budget":{"creditLimit":300}}}"#,
            );
            eventually("the new limit", Duration::from_secs(60), || async {
                let k = portkey.get_api_key(&key.id).await.ok()?;
                (k.usage_limits?.credit_limit == Decimal::from(300)).then_some(())
            })
            .await;
            env.wait_ready("akb/payments", Some(NS));
            let state = ctl.state().await.unwrap();
            let record = state.api_keys.iter().find(|r| r.key.id == key.id).unwrap();
            assert_eq!(record.rotations, 1, "one rotation for one token");
            assert_eq!(
                record
                    .key
                    .usage_limits
                    .as_ref()
                    .unwrap()
                    .next_usage_reset_at,
                budget.next_usage_reset_at,
                "changing the amount kept the reset schedule"
            );

            // Exhausted → status, Event; usage reset by annotation, once.
            ctl.add_key_usage(&key.id, Decimal::from(300))
                .await
                .unwrap();
            eventually("status exhausted", Duration::from_secs(60), || async {
                (env.jsonpath("akb", "payments", Some(NS), "{.status.keyStatus}") == "exhausted")
                    .then_some(())
            })
            .await;
            health(&env, "payments", "exhausted", "Current", "Healthy");
            annotate(
                &env,
                "payments",
                "budgets.portkey-operator.io/reset-usage=2026-11-22",
            );
            eventually(
                "the usage reset recorded",
                Duration::from_secs(60),
                || async {
                    (env.jsonpath(
                        "akb",
                        "payments",
                        Some(NS),
                        "{.status.usageReset.completedAt}",
                    )
                    .is_empty()
                    .not()
                        && env.jsonpath("akb", "payments", Some(NS), "{.status.keyStatus}")
                            == "active")
                        .then_some(())
                },
            )
            .await;
            // Later reconciles do not reset again: usage spent after the reset stays. A spec change
            // is the positive sign of a pass since: the status observes its generation only when a
            // pass that saw it has finished (a label alone would give no such sign).
            ctl.add_key_usage(&key.id, Decimal::from(7)).await.unwrap();
            ctl.clear_requests().await.unwrap();
            cp.kubectl(&["label", "akb", "payments", "-n", NS, "touched=yes"]);
            env.merge_patch(
                "akb",
                "payments",
                Some(NS),
                r#"{"spec":{"budget":{"alertThreshold":160}}}"#,
            );
            let generation = env.jsonpath("akb", "payments", Some(NS), "{.metadata.generation}");
            env.until(
                ("akb", "payments", Some(NS)),
                "a pass that observed the new generation",
                Duration::from_secs(60),
                || async {
                    (env.jsonpath("akb", "payments", Some(NS), "{.status.observedGeneration}")
                        == generation)
                        .then_some(())
                },
            )
            .await;
            let log = ctl.requests().await.unwrap();
            assert!(
                log.count("GET", &format!("/v1/api-keys/{}", key.id)) > 0,
                "the operator read the key since: {:?}",
                log.data
            );
            let state = ctl.state().await.unwrap();
            let record = state.api_keys.iter().find(|r| r.key.id == key.id).unwrap();
            assert_eq!(record.usage_resets, 1, "one reset for one token");
            assert_eq!(record.usage, Decimal::from(7), "the usage since stays");
            let events = cp.kubectl(&["get", "events", "-n", NS, "-o", "json"]);
            for reason in ["Issued", "Rotated", "UsageReset", "BudgetExhausted"] {
                assert!(events.contains(reason), "Event {reason} missing");
            }

            // Drift on a declared field is reverted.
            portkey
                .update_api_key(
                    &key.id,
                    &UpdateApiKey {
                        alert_emails: Nullable::Value(vec!["someone@else.com".into()]),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            eventually("drift reverted", Duration::from_secs(60), || async {
                let k = portkey.get_api_key(&key.id).await.ok()?;
                (k.alert_emails? == vec!["finance@example.com".to_owned()]).then_some(())
            })
            .await;

            // The raw keys appear nowhere but in the Secret.
            let status = cp.kubectl(&["get", "akb", "payments", "-n", NS, "-o", "yaml"]);
            let events = cp.kubectl(&["get", "events", "-n", NS, "-o", "yaml"]);
            let log = op.log_text();
            for secret in [&raw, &rotated] {
                assert!(
                    !status.contains(secret.as_str()),
                    "a raw key in the resource"
                );
                assert!(!events.contains(secret.as_str()), "a raw key in an Event");
                assert!(!log.contains(secret.as_str()), "a raw key in the log");
            }

            // Deletion (default Delete for issued keys): the key is gone.
            cp.kubectl(&["delete", "akb", "payments", "-n", NS, "--timeout=60s"]);
            assert!(
                env.marked_keys(WS, NS, "payments").await.is_empty(),
                "the key was deleted"
            );
            drop(op);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn existing_key_is_managed_field_by_field() {
    e2e("existing_key_is_managed_field_by_field", |env| async move {
        let (cp, portkey, ctl) = (&env.cp, &env.portkey, env.emu.control());
        // A key made by hand in Portkey, with a weekly budget, a rate limit and an e-mail (and
        // data-plane scopes only: a key holding more is refused unless the operator allows it).
        let create = |workspace: &str, name: &str| CreateApiKey {
            name: name.into(),
            workspace_id: Some(workspace.into()),
            scopes: vec!["completions.write".into(), "logs.write".into()],
            usage_limits: Some(usage_limit(UsageLimitType::Cost, Decimal::from(50), Some(PeriodicReset::Weekly))),
            rate_limits: vec![KeyRateLimit {
                limit_type: RateLimitType::Requests,
                unit: KeyRateLimitUnit::Rps,
                value: Decimal::from(5),
            }],
            alert_emails: vec!["owner@example.com".into()],
            ..Default::default()
        };
        let mine = service_key(portkey, &create(WS, "checkout")).await
            .id
            .unwrap();
        let theirs = service_key(portkey, &create(OTHER_WS, "other team")).await
            .id
            .unwrap();
        let before = portkey.get_api_key(&mine).await.unwrap();
        let _op = env.operator("operator.log");

        // By name, budget only: the amount changes, nothing else does.
        cp.apply(&format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: checkout\n  namespace: {NS}\n  annotations:\n    budgets.portkey-operator.io/rotate: r1\nspec:\n  workspace: e2e\n  existing:\n    name: checkout\n  budget:\n    type: cost\n    creditLimit: 100\n    periodicReset: weekly\n"
        ));
        env.wait_ready("akb/checkout", Some(NS));
        health(&env, "checkout", "existing in force", "Current", "Healthy");
        let after = portkey.get_api_key(&mine).await.unwrap();
        let budget = after.usage_limits.clone().unwrap();
        assert_eq!(budget.credit_limit, Decimal::from(100));
        assert_eq!(
            budget.next_usage_reset_at,
            before.usage_limits.as_ref().unwrap().next_usage_reset_at,
            "the weekly schedule was not recomputed"
        );
        assert_eq!(after.scopes, before.scopes, "scopes untouched");
        assert_eq!(after.rate_limits, before.rate_limits, "undeclared rate limits untouched");
        assert_eq!(after.alert_emails, before.alert_emails, "undeclared e-mails untouched");
        assert_eq!(after.name, before.name, "the name is not marked");
        assert_eq!(
            env.jsonpath("akb", "checkout", Some(NS), "{.status.mode}"),
            "Existing"
        );
        // The rotate annotation does not rotate a key the operator did not issue.
        let state = ctl.state().await.unwrap();
        assert_eq!(
            state.api_keys.iter().find(|r| r.key.id == mine).unwrap().rotations,
            0
        );

        // Rate limits declared later: managed from then on (and `rps` accepted).
        env.merge_patch("akb", "checkout", Some(NS), r#"{"spec":{"rateLimits":[{"type":"requests","unit":"rps","value":9}]}}"#);
        eventually("the rate limit", Duration::from_secs(60), || async {
            let k = portkey.get_api_key(&mine).await.ok()?;
            (k.rate_limits?.first()?.value == Decimal::from(9)).then_some(())
        })
        .await;

        // A key of another workspace: refused, nothing written.
        cp.apply(&format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: foreign\n  namespace: {NS}\nspec:\n  workspace: e2e\n  existing:\n    id: {theirs}\n  budget:\n    type: cost\n    creditLimit: 1000\n"
        ));
        env.wait_reason("akb", "foreign", Some(NS), "Ready", "WorkspaceNotAllowed")
            .await;
        health(&env, "foreign", "key of another workspace", "Failed", "Degraded");
        let untouched = portkey.get_api_key(&theirs).await.unwrap();
        assert_eq!(untouched.usage_limits.unwrap().credit_limit, Decimal::from(50));

        // A second resource for the same key: the younger one is refused.
        cp.apply(&format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: checkout-again\n  namespace: {NS}\nspec:\n  workspace: e2e\n  existing:\n    id: {mine}\n  budget:\n    type: cost\n    creditLimit: 7\n"
        ));
        env.wait_reason("akb", "checkout-again", Some(NS), "Ready", "Conflict")
            .await;
        health(&env, "checkout-again", "conflict", "Failed", "Degraded");
        assert_eq!(
            portkey.get_api_key(&mine).await.unwrap().usage_limits.unwrap().credit_limit,
            Decimal::from(100)
        );

        // Deleting (default Retain for existing keys): the key and its limits stay.
        cp.kubectl(&["delete", "akb", "checkout", "checkout-again", "foreign", "-n", NS, "--timeout=60s"]);
        let kept = portkey.get_api_key(&mine).await.unwrap();
        assert_eq!(kept.usage_limits.unwrap().credit_limit, Decimal::from(100));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_between_key_create_and_secret_write_leaves_one_key() {
    e2e(
        "kill_9_between_key_create_and_secret_write_leaves_one_key",
        |env| async move {
            let (cp, ctl) = (&env.cp, env.emu.control());
            // The create reaches Portkey, its answer (the only copy of the raw key) never arrives.
            ctl.set_faults(json!({"response_delay_ms": 30000, "method": "POST"}))
                .await
                .unwrap();
            let op = env.operator("operator-a.log");
            cp.apply(&issued("crashy", 200, ""));
            eventually(
                "the key exists in Portkey",
                Duration::from_secs(60),
                || async { (!env.marked_keys(WS, NS, "crashy").await.is_empty()).then_some(()) },
            )
            .await;
            op.kill();
            let missing = cp.kubectl_raw(&["get", "secret", "crashy-key", "-n", NS]);
            assert!(
                !missing.status.success(),
                "no Secret was written before the kill"
            );
            ctl.clear_faults().await.unwrap();

            let _op = env.operator("operator-b.log");
            env.wait_ready("akb/crashy", Some(NS));
            let keys = env.marked_keys(WS, NS, "crashy").await;
            assert_eq!(keys.len(), 1, "exactly one key: {keys:?}");
            let (raw, id, _) = secret(&env, "crashy-key");
            assert_eq!(id, keys[0].id);
            assert!(
                ctl.key_works(&raw).await.unwrap(),
                "the Secret holds a working key"
            );
            let state = ctl.state().await.unwrap();
            let record = state.api_keys.iter().find(|r| r.key.id == id).unwrap();
            assert_eq!(
                record.rotations, 1,
                "the key was rotated to get a raw key again"
            );
            let pending = env.jsonpath(
                "akb",
                "crashy",
                Some(NS),
                "{.metadata.annotations.budgets\\.portkey-operator\\.io/create-pending}",
            );
            assert!(!pending.is_empty(), "the create-pending record was written");
            assert_eq!(
                env.jsonpath("akb", "crashy", Some(NS), "{.status.createConfirmed}"),
                pending,
                "the status confirms the create"
            );

            // deletionPolicy Retain on an issued key: the key and the Secret stay, the Secret no
            // longer owned (garbage collection leaves it).
            env.merge_patch(
                "akb",
                "crashy",
                Some(NS),
                r#"{"spec":{"deletionPolicy":"Retain"}}"#,
            );
            env.wait_ready("akb/crashy", Some(NS));
            cp.kubectl(&["delete", "akb", "crashy", "-n", NS, "--timeout=60s"]);
            assert_eq!(
                env.marked_keys(WS, NS, "crashy").await.len(),
                1,
                "the key is kept"
            );
            let (kept, _, secret_obj) = secret(&env, "crashy-key");
            assert_eq!(kept, raw);
            assert!(
                secret_obj["metadata"]["ownerReferences"].is_null(),
                "released: {secret_obj:#}"
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_usage_annotation_zeroes_every_bucket_of_a_policy_once() {
    e2e(
        "reset_usage_annotation_zeroes_every_bucket_of_a_policy_once",
        |env| async move {
            let (cp, portkey, ctl) = (&env.cp, &env.portkey, env.emu.control());
            let _op = env.operator("operator.log");
            cp.apply(&crate::ulp("team", 500));
            env.wait_ready("ulp/team", Some(NS));
            let id = env.jsonpath("ulp", "team", Some(NS), "{.status.policyId}");
            for user in ["alice", "bob"] {
                ctl.add_usage(&id, &format!("metadata._user:{user}"), Decimal::from(120))
                    .await
                    .unwrap();
            }
            let usage = || async {
                portkey
                    .usage_limits()
                    .entities(&id, &Default::default())
                    .await
                    .unwrap()
                    .iter()
                    .map(|e| e.current_usage)
                    .sum::<Decimal>()
            };
            assert_eq!(usage().await, Decimal::from(240));
            cp.kubectl(&[
                "annotate",
                "ulp",
                "team",
                "-n",
                NS,
                "budgets.portkey-operator.io/reset-usage=q4",
            ]);
            eventually("the reset recorded", Duration::from_secs(60), || async {
                (env.jsonpath("ulp", "team", Some(NS), "{.status.usageReset.token}") == "q4"
                    && !env
                        .jsonpath("ulp", "team", Some(NS), "{.status.usageReset.completedAt}")
                        .is_empty())
                .then_some(())
            })
            .await;
            assert_eq!(usage().await, Decimal::ZERO, "every bucket is back to zero");
            // Usage after the reset stays: the same token does not reset again.
            ctl.add_usage(&id, "metadata._user:alice", Decimal::from(7))
                .await
                .unwrap();
            cp.kubectl(&["label", "ulp", "team", "-n", NS, "touched=yes"]);
            env.merge_patch("ulp", "team", Some(NS), r#"{"spec":{"creditLimit":600}}"#);
            eventually("the new limit", Duration::from_secs(60), || async {
                (env.jsonpath("ulp", "team", Some(NS), "{.status.observedGeneration}")
                    == env.jsonpath("ulp", "team", Some(NS), "{.metadata.generation}"))
                .then_some(())
            })
            .await;
            env.wait_ready("ulp/team", Some(NS));
            assert_eq!(usage().await, Decimal::from(7), "one reset for one token");
            let events = cp.kubectl(&["get", "events", "-n", NS, "-o", "json"]);
            assert!(events.contains("UsageReset"), "an Event records the reset");
        },
    )
    .await;
}
