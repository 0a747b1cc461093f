//! The operator process on the real API server: kill -9 around a create, leader-election
//! handover and SIGTERM, and namespace deletion releasing finalizers (kube-controller-manager).

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, ResourceExt};
use portkey_budget_operator::api::{CREATE_PENDING_ANNOTATION, UsageLimitPolicy};
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::control_plane::Options;
use crate::support::e2e::*;
use crate::{rlp_in, ulp};

/// When the operator is killed during a create.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// As soon as the create-pending record is on the resource (before or during the POST).
    PendingRecorded,
    /// Once the policy exists in Portkey while the POST's answer is held back.
    CreatedAnswerLost,
    /// A fixed time after the resource was applied.
    After(Duration),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_around_a_create_leaves_exactly_one_policy() {
    let Some(env) = Env::start("kill_9_around_a_create_leaves_exactly_one_policy").await else {
        return;
    };
    bounded("kill_9_around_a_create", async {
        let (cp, ctl) = (&env.cp, env.emu.control());
        let points = [
            KillPoint::CreatedAnswerLost,
            KillPoint::PendingRecorded,
            KillPoint::After(Duration::from_millis(300)),
            KillPoint::After(Duration::from_millis(900)),
            KillPoint::CreatedAnswerLost,
        ];
        for (i, point) in points.into_iter().enumerate() {
            let name = format!("crashy-{i}");
            if matches!(point, KillPoint::CreatedAnswerLost) {
                ctl.set_faults(json!({"response_delay_ms": 15000, "method": "POST"}))
                    .await
                    .unwrap();
            }
            // Watch the resource from before it exists, so a record that lives for only a few
            // milliseconds is still seen.
            let api: Api<UsageLimitPolicy> = Api::namespaced(cp.client().await, NS);
            let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
            let mut changes = watcher(api, config).applied_objects().boxed();
            let op = env.operator(&format!("operator-{i}-a.log"));
            cp.apply(&ulp(&name, 600));
            match point {
                KillPoint::PendingRecorded => {
                    let seen = tokio::time::timeout(Duration::from_secs(60), async {
                        while let Some(obj) = changes.try_next().await.unwrap() {
                            if obj.annotations().contains_key(CREATE_PENDING_ANNOTATION) {
                                return;
                            }
                        }
                    })
                    .await;
                    assert!(seen.is_ok(), "the create-pending record was never written");
                }
                KillPoint::CreatedAnswerLost => {
                    eventually(
                        "the create to reach Portkey",
                        Duration::from_secs(60),
                        || async { (!env.owned_usage(&name).await.is_empty()).then_some(()) },
                    )
                    .await;
                }
                KillPoint::After(d) => tokio::time::sleep(d).await,
            }
            op.kill();
            ctl.clear_faults().await.unwrap();
            if matches!(point, KillPoint::CreatedAnswerLost) {
                assert!(
                    env.jsonpath("ulp", &name, Some(NS), "{.status.policyId}")
                        .is_empty(),
                    "{point:?}: the operator died before recording the id"
                );
            }
            let _op = env.operator(&format!("operator-{i}-b.log"));
            env.wait_ready(&format!("ulp/{name}"), Some(NS));
            let owned = env.owned_usage(&name).await;
            assert_eq!(
                owned.len(),
                1,
                "{point:?}: exactly one remote policy after the restart"
            );
            assert_eq!(
                env.jsonpath("ulp", &name, Some(NS), "{.status.policyId}"),
                owned[0].id,
                "{point:?}"
            );
            assert_eq!(owned[0].credit_limit, Decimal::from(600));
        }
        assert_eq!(
            env.active_usage(WS).await.len(),
            points.len(),
            "no duplicate anywhere"
        );
    })
    .await;
}

/// The current holder of the operator's leader Lease.
fn lease_holder(env: &Env) -> String {
    let out = env.cp.kubectl_raw(&[
        "get",
        "lease",
        "portkey-budget-operator",
        "-n",
        OPERATOR_NS,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_election_handover() {
    let Some(env) = Env::start("leader_election_handover").await else {
        return;
    };
    bounded("leader_election_handover", async {
        let cp = &env.cp;
        let a = env.operator_with("op-a.log", "op-a", &[]);
        let b = env.operator_with("op-b.log", "op-b", &[]);

        // Exactly one of the two leads.
        let first = eventually("a leader", Duration::from_secs(60), || async {
            let holder = lease_holder(&env);
            (holder.starts_with("op-a-") || holder.starts_with("op-b-")).then_some(holder)
        })
        .await;
        let (leader, standby) = if first.starts_with("op-a-") {
            (a, b)
        } else {
            (b, a)
        };
        cp.apply(&ulp("elected", 500));
        env.wait_ready("ulp/elected", Some(NS));
        assert_eq!(env.owned_usage("elected").await.len(), 1);
        assert!(leader.log_text().contains("became the leader"));
        assert!(
            !standby.log_text().contains("became the leader"),
            "the standby must not reconcile while the leader holds the Lease"
        );

        // The leader dies without releasing the Lease: the standby takes over once it expires.
        leader.kill();
        let second = eventually(
            "the standby to take the Lease",
            Duration::from_secs(60),
            || async {
                let holder = lease_holder(&env);
                (!holder.is_empty() && holder != first).then_some(holder)
            },
        )
        .await;
        assert!(!second.starts_with(&first[..4]), "{second}");
        cp.kubectl(&[
            "patch",
            "ulp",
            "elected",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"creditLimit":800}}"#,
        ]);
        eventually(
            "the new leader to apply the change",
            Duration::from_secs(60),
            || async {
                let p = env.owned_usage("elected").await;
                (p.len() == 1 && p[0].credit_limit == Decimal::from(800)).then_some(())
            },
        )
        .await;
        assert_eq!(env.owned_usage("elected").await.len(), 1, "no duplicate");

        // SIGTERM: in-flight work finishes, the Lease is released, the process exits cleanly.
        let log = standby.log.clone();
        let exit = standby.terminate().await;
        assert!(exit.success(), "exit status {exit:?}");
        assert!(
            std::fs::read_to_string(log)
                .unwrap()
                .contains("released the leader Lease")
        );
        let holder = lease_holder(&env);
        assert!(holder.is_empty(), "the Lease is still held by {holder:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_namespace_releases_the_finalizers() {
    let options = Options {
        controller_manager: true,
    };
    let Some(env) = Env::start_with("deleting_a_namespace_releases_the_finalizers", options).await
    else {
        return;
    };
    bounded("deleting_a_namespace_releases_the_finalizers", async {
        let (cp, portkey) = (&env.cp, &env.portkey);
        let _op = env.operator("operator.log");
        let ns = "doomed";
        env.create_namespace(ns, Some(WS_SLUG));
        cp.apply(
            &ulp("budget", 500).replace(&format!("namespace: {NS}"), &format!("namespace: {ns}")),
        );
        cp.apply(&rlp_in(ns, "rate", 60, ""));
        env.wait_ready("ulp/budget", Some(ns));
        env.wait_ready("rlp/rate", Some(ns));
        let ulp_id = env.jsonpath("ulp", "budget", Some(ns), "{.status.policyId}");
        let rlp_id = env.jsonpath("rlp", "rate", Some(ns), "{.status.policyId}");
        assert!(!ulp_id.is_empty() && !rlp_id.is_empty());

        // The namespace controller deletes the resources; the operator archives the policies
        // and removes its finalizers; the namespace then disappears.
        cp.kubectl(&["delete", "namespace", ns, "--wait=true", "--timeout=120s"]);
        let out = cp.kubectl_raw(&["get", "namespace", ns]);
        assert!(!out.status.success(), "the namespace is gone");
        let archived = GetOptions {
            status: Some(PolicyStatus::Archived),
            ..Default::default()
        };
        assert_eq!(
            portkey
                .usage_limits()
                .get(&ulp_id, archived)
                .await
                .unwrap()
                .status,
            PolicyStatus::Archived
        );
        assert_eq!(
            portkey
                .rate_limits()
                .get(&rlp_id, archived)
                .await
                .unwrap()
                .status,
            PolicyStatus::Archived
        );
        assert!(env.active_usage(WS).await.is_empty());
        assert!(env.active_rates(WS).await.is_empty());
    })
    .await;
}
