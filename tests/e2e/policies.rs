//! Each kind through the operator binary on the real API server: create, update, drift,
//! delete with each deletion policy, adoption, tenancy, usage in status, printer columns and
//! `kubectl wait`.

use std::time::Duration;

use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;

use crate::support::e2e::*;
use crate::{rlp_in, ulp, ulp_with, wsb};

/// The cells of the `kubectl get` row of `name`.
fn row(table: &str, name: &str) -> Vec<String> {
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in:\n{table}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_limit_policy_lifecycle() {
    e2e("usage_limit_policy_lifecycle", |env| async move {
        let (cp, portkey, ctl) = (&env.cp, &env.portkey, env.emu.control());
        let _op = env.operator("operator.log");

        // Apply → Ready, with the remote policy present.
        cp.apply(&ulp("monthly", 500));
        env.wait_ready("ulp/monthly", Some(NS));
        let policies = env.owned_usage("monthly").await;
        assert_eq!(policies.len(), 1);
        let id = policies[0].id.clone();
        assert_eq!(policies[0].credit_limit, Decimal::from(500));
        let reset = policies[0].next_usage_reset_at;
        assert!(reset.is_some());
        assert_eq!(
            env.jsonpath("ulp", "monthly", Some(NS), "{.status.policyId}"),
            id
        );
        assert_eq!(
            env.jsonpath("ulp", "monthly", Some(NS), "{.status.workspaceId}"),
            WS
        );

        // Change the limit → updated in place, reset schedule untouched.
        env.merge_patch(
            "ulp",
            "monthly",
            Some(NS),
            r#"{"spec":{"creditLimit":800}}"#,
        );
        let updated = eventually(
            "the new limit in Portkey",
            Duration::from_secs(60),
            || async {
                let p = portkey
                    .usage_limits()
                    .get(&id, GetOptions::default())
                    .await
                    .ok()?;
                (p.credit_limit == Decimal::from(800)).then_some(p)
            },
        )
        .await;
        assert_eq!(
            updated.next_usage_reset_at, reset,
            "the reset schedule did not move"
        );
        assert_eq!(env.owned_usage("monthly").await.len(), 1);

        // Admission refuses what CEL forbids, naming the field.
        let out = cp.kubectl_raw(&[
            "patch",
            "ulp",
            "monthly",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"alertThreshold":"900"}}"#,
        ]);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr)
                .contains("alertThreshold must be greater than 0 and less than creditLimit"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // Edit in Portkey → reverted on the next refresh.
        let edit = UpdateUsageLimitsPolicy {
            credit_limit: Some(Decimal::from(1000)),
            ..Default::default()
        };
        portkey.usage_limits().update(&id, &edit).await.unwrap();
        eventually(
            "the remote edit reverted",
            Duration::from_secs(60),
            || async {
                let p = portkey
                    .usage_limits()
                    .get(&id, GetOptions::default())
                    .await
                    .ok()?;
                (p.credit_limit == Decimal::from(800)).then_some(())
            },
        )
        .await;

        // Usage in the emulator → status and `kubectl get`.
        ctl.add_usage(&id, "metadata._user:alice", Decimal::from(400))
            .await
            .unwrap();
        eventually("usage in status", Duration::from_secs(60), || async {
            let peak = env.jsonpath("ulp", "monthly", Some(NS), "{.status.usage.peakPercent}");
            (peak == "50").then_some(())
        })
        .await;
        let table = cp.kubectl(&["get", "ulp", "-n", NS]);
        assert_eq!(
            &row(&table, "monthly")[1..7],
            ["cost", "800", "monthly", "50", "0", "True"],
            "{table}"
        );
        let header = table.lines().next().unwrap();
        for column in ["NAME", "TYPE", "LIMIT", "READY", "SYNCED", "AGE"] {
            assert!(header.contains(column), "{header}");
        }
        // The category lists it too.
        assert!(
            cp.kubectl(&["get", "portkey", "-n", NS])
                .contains("monthly")
        );

        // Delete (Archive, the default) → archived, finalizer released.
        cp.kubectl(&[
            "delete",
            "ulp",
            "monthly",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ]);
        assert!(env.owned_usage("monthly").await.is_empty());
        let archived = portkey.usage_limits().get(&id, archived()).await.unwrap();
        assert_eq!(archived.status, PolicyStatus::Archived);

        // Delete with Retain → the policy stays in force.
        cp.apply(&ulp_with("kept", 600, "  deletionPolicy: Retain\n"));
        env.wait_ready("ulp/kept", Some(NS));
        let kept = env.owned_usage("kept").await;
        assert_eq!(kept.len(), 1);
        cp.kubectl(&[
            "delete",
            "ulp",
            "kept",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ]);
        let still = usage_policy_by_id(portkey, &kept[0].id).await;
        assert_eq!(
            still.status,
            PolicyStatus::Active,
            "Retain leaves the policy in force"
        );

        // Tenancy: a namespace bound to another workspace refuses a policy naming e2e, with no
        // Admin API call at all. Every resource so far is deleted, so the operator has nothing
        // else to refresh: any request in the log would be the refused policies'.
        cp.kubectl(&["create", "namespace", "bound-elsewhere"]);
        cp.kubectl(&[
            "annotate",
            "namespace",
            "bound-elsewhere",
            &format!("budgets.portkey-operator.io/workspace={OTHER_WS_SLUG}"),
        ]);
        ctl.clear_requests().await.unwrap();
        cp.apply(
            &ulp("intruder", 500)
                .replace(&format!("namespace: {NS}"), "namespace: bound-elsewhere"),
        );
        env.wait_reason(
            "ulp",
            "intruder",
            Some("bound-elsewhere"),
            "Ready",
            "WorkspaceNotAllowed",
        )
        .await;
        cp.apply(&rlp_in("bound-elsewhere", "intruder", 60, ""));
        env.wait_reason(
            "rlp",
            "intruder",
            Some("bound-elsewhere"),
            "Ready",
            "WorkspaceNotAllowed",
        )
        .await;
        let log = ctl.requests().await.unwrap();
        assert_eq!(
            log.total, 0,
            "no Admin API call for a refused policy: {:?}",
            log.data
        );
        assert!(env.active_rates(OTHER_WS).await.is_empty());
        assert!(env.active_usage(OTHER_WS).await.is_empty());
        assert!(
            !env.active_usage(WS).await.iter().any(|p| p
                .name
                .as_deref()
                .unwrap_or("")
                .contains("intruder")),
            "nothing created in the named workspace either"
        );
        // Rebinding the namespace to the workspace the policies name: they are reconciled (the
        // namespace watch) and come into force.
        cp.kubectl(&[
            "annotate",
            "namespace",
            "bound-elsewhere",
            "--overwrite",
            &format!("budgets.portkey-operator.io/workspace={WS_SLUG}"),
        ]);
        env.wait_ready("ulp/intruder", Some("bound-elsewhere"));
        env.wait_ready("rlp/intruder", Some("bound-elsewhere"));
        assert!(
            env.log_of("operator.log")
                .contains("the workspace binding changed")
        );

        // Adoption of an existing policy by id: no second policy; it gets the marker.
        let existing = usage_policy("made by hand", "e2e", WS);
        let existing = portkey.usage_limits().create(&existing).await.unwrap().id;
        let before = env.active_usage(WS).await.len();
        cp.apply(&ulp_with(
            "adopted",
            450,
            &format!("  adoptPolicyId: {existing}\n"),
        ));
        env.wait_ready("ulp/adopted", Some(NS));
        assert_eq!(
            env.jsonpath("ulp", "adopted", Some(NS), "{.status.policyId}"),
            existing
        );
        let adopted = usage_policy_by_id(portkey, &existing).await;
        assert_eq!(adopted.credit_limit, Decimal::from(450));
        assert!(
            adopted
                .name
                .unwrap()
                .contains(&format!("[k8s:ulp:{NS}/adopted@"))
        );
        assert_eq!(
            env.active_usage(WS).await.len(),
            before,
            "adoption created nothing"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_policy_lifecycle() {
    e2e("rate_limit_policy_lifecycle", |env| async move {
        let (cp, portkey) = (&env.cp, &env.portkey);
        let _op = env.operator("operator.log");

        cp.apply(&rlp_in(NS, "per-user", 120, ""));
        env.wait_ready("rlp/per-user", Some(NS));
        let rates = env.active_rates(WS).await;
        assert_eq!(rates.len(), 1);
        assert_eq!(rates[0].value, Decimal::from(120));
        let id = rates[0].id.clone();
        assert_eq!(
            env.jsonpath("rlp", "per-user", Some(NS), "{.status.policyId}"),
            id
        );

        // Update in place.
        cp.apply(&rlp_in(NS, "per-user", 300, ""));
        eventually(
            "the new rate in Portkey",
            Duration::from_secs(60),
            || async {
                let r = env.active_rates(WS).await;
                (r.len() == 1 && r[0].value == Decimal::from(300) && r[0].id == id).then_some(())
            },
        )
        .await;

        // Drift → reverted.
        let edit = UpdateRateLimitsPolicy {
            value: Some(Decimal::from(7)),
            ..Default::default()
        };
        portkey.rate_limits().update(&id, &edit).await.unwrap();
        eventually(
            "the remote edit reverted",
            Duration::from_secs(60),
            || async {
                let r = portkey
                    .rate_limits()
                    .get(&id, GetOptions::default())
                    .await
                    .ok()?;
                (r.value == Decimal::from(300)).then_some(())
            },
        )
        .await;

        // Printer columns.
        env.wait_ready("rlp/per-user", Some(NS));
        let table = cp.kubectl(&["get", "rlp", "-n", NS]);
        assert_eq!(
            &row(&table, "per-user")[1..5],
            ["requests", "300", "rpm", "True"],
            "{table}"
        );

        // Retain → stays; Archive → archived.
        cp.apply(&rlp_in(NS, "kept", 60, "  deletionPolicy: Retain\n"));
        env.wait_ready("rlp/kept", Some(NS));
        let kept = env.jsonpath("rlp", "kept", Some(NS), "{.status.policyId}");
        cp.kubectl(&[
            "delete",
            "rlp",
            "kept",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ]);
        assert_eq!(
            rate_policy_by_id(portkey, &kept).await.status,
            PolicyStatus::Active
        );
        cp.kubectl(&[
            "delete",
            "rlp",
            "per-user",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ]);
        let left: Vec<_> = env
            .active_rates(WS)
            .await
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(
            left,
            vec![kept.clone()],
            "only the retained policy is active"
        );

        // Adoption: the retained policy is taken over by a new resource, no second policy.
        cp.apply(&rlp_in(
            NS,
            "adopter",
            90,
            &format!("  adoptPolicyId: {kept}\n"),
        ));
        env.wait_ready("rlp/adopter", Some(NS));
        let r = rate_policy_by_id(portkey, &kept).await;
        assert_eq!(r.value, Decimal::from(90));
        assert!(r.name.unwrap().contains(&format!("[k8s:rlp:{NS}/adopter@")));
        assert_eq!(env.active_rates(WS).await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_budget_lifecycle() {
    e2e("workspace_budget_lifecycle", |env| async move {
        let (cp, portkey) = (&env.cp, &env.portkey);
        let _op = env.operator("operator.log");

        cp.apply(&wsb("marketing", 500, ""));
        env.wait_ready("wsb/marketing", None);
        let ws = portkey.get_workspace(WS).await.unwrap();
        assert_eq!(
            ws.usage_limits.as_ref().unwrap()[0].credit_limit,
            Decimal::from(500)
        );
        let reset = ws.usage_limits.unwrap()[0].next_usage_reset_at;
        assert!(reset.is_some());

        cp.apply(&wsb("marketing", 800, ""));
        eventually(
            "the new workspace budget",
            Duration::from_secs(60),
            || async {
                let l = portkey.get_workspace(WS).await.ok()?.usage_limits?;
                (l[0].credit_limit == Decimal::from(800)).then_some(())
            },
        )
        .await;
        let limits = portkey
            .get_workspace(WS)
            .await
            .unwrap()
            .usage_limits
            .unwrap();
        assert_eq!(
            limits[0].next_usage_reset_at, reset,
            "the reset schedule did not move"
        );

        // Drift → reverted.
        let edit = UpdateWorkspace {
            rate_limits: Nullable::Value(vec![WorkspaceRateLimit {
                limit_type: RateLimitType::Requests,
                unit: RateLimitUnit::Rpm,
                value: Decimal::from(5),
            }]),
            ..Default::default()
        };
        portkey.update_workspace(WS, &edit).await.unwrap();
        eventually(
            "the workspace drift reverted",
            Duration::from_secs(60),
            || async {
                let r = portkey.get_workspace(WS).await.ok()?.rate_limits?;
                (r.len() == 1 && r[0].value == Decimal::from(120)).then_some(())
            },
        )
        .await;

        env.wait_ready("wsb/marketing", None);
        let table = cp.kubectl(&["get", "wsb", "marketing"]);
        assert!(
            table.contains("800 cost") && table.contains("120 requests rpm"),
            "{table}"
        );
        let cells = row(&table, "marketing");
        assert_eq!(cells[1], "e2e", "{table}");

        // A second resource for the same workspace: Conflict, no write.
        cp.apply(&wsb("marketing-copy", 900, ""));
        env.wait_reason("wsb", "marketing-copy", None, "Ready", "Conflict")
            .await;
        let limits = portkey
            .get_workspace(WS)
            .await
            .unwrap()
            .usage_limits
            .unwrap();
        assert_eq!(limits[0].credit_limit, Decimal::from(800));

        // Retain: the owner goes, its limits stay. The copy is paused first, so nothing but the
        // owner's deletion can touch the workspace until it is resumed.
        cp.kubectl(&[
            "annotate",
            "wsb",
            "marketing-copy",
            "budgets.portkey-operator.io/paused=true",
        ]);
        env.merge_patch(
            "wsb",
            "marketing",
            None,
            r#"{"spec":{"deletionPolicy":"Retain"}}"#,
        );
        env.wait_ready("wsb/marketing", None);
        cp.kubectl(&["delete", "wsb", "marketing", "--wait=true", "--timeout=60s"]);
        assert!(
            !cp.kubectl_raw(&["get", "wsb", "marketing"])
                .status
                .success(),
            "the owner is gone"
        );
        // The copy, no longer in conflict, has looked at the workspace since and written
        // nothing (paused): the workspace still holds what the owner declared.
        env.wait_reason(
            "wsb",
            "marketing-copy",
            None,
            "Synced",
            "ReconciliationPaused",
        )
        .await;
        let w = portkey.get_workspace(WS).await.unwrap();
        let usage = w.usage_limits.expect("the usage limits stay");
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].credit_limit, Decimal::from(800));
        assert_eq!(
            w.rate_limits.expect("the rate limits stay")[0].value,
            Decimal::from(120)
        );
        // Resumed, the copy takes over (900).
        cp.kubectl(&[
            "annotate",
            "wsb",
            "marketing-copy",
            "budgets.portkey-operator.io/paused-",
        ]);
        eventually("the copy to take over", Duration::from_secs(60), || async {
            let l = portkey.get_workspace(WS).await.ok()?.usage_limits?;
            (l[0].credit_limit == Decimal::from(900)).then_some(())
        })
        .await;
        env.wait_ready("wsb/marketing-copy", None);

        // Clear (the default): the declared limits are removed.
        cp.kubectl(&[
            "delete",
            "wsb",
            "marketing-copy",
            "--wait=true",
            "--timeout=60s",
        ]);
        eventually(
            "the workspace limits cleared",
            Duration::from_secs(60),
            || async {
                let w = portkey.get_workspace(WS).await.ok()?;
                (w.usage_limits.is_none() && w.rate_limits.is_none()).then_some(())
            },
        )
        .await;
    })
    .await;
}
