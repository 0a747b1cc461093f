//! The operator process on the real API server: kill -9 around a create, leader-election
//! handover and SIGTERM, and namespace deletion releasing finalizers (kube-controller-manager).

use std::time::Duration;

use portkey_budget_operator::api::CREATE_PENDING_ANNOTATION;
use portkey_budget_operator::emulator::control::RequestLog;
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::json;

use crate::support::control_plane::Options;
use crate::support::e2e::*;
use crate::{rlp_in, ulp};

/// Where in a create the operator is killed. Each point is reached through an emulator fault
/// that holds the operator there for longer than the test needs, and proved at the moment of
/// the kill from what the resource and the emulator show (nothing moves once the process is
/// gone).
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// Before the create-pending record: the leader's reads of Portkey fail (503); nothing is
    /// recorded and no create is sent.
    ReadsFailing,
    /// The record is written and the POST refused with 429 (`Retry-After` 25 s): the operator
    /// waits in-process to send it again; nothing is created.
    PostThrottled,
    /// The POST failed with a 500 (the emulator did not create the policy): the record stays
    /// and the operator waits out the create-pending grace (120 s here).
    PostAmbiguous,
    /// The POST was carried out and its answer is held back (15 s): the policy exists, no id
    /// is recorded.
    AnswerLost,
    /// Created and the id recorded, but Portkey does not show the policy yet (read-after-write
    /// lag): the create is not confirmed.
    NotVisible,
}

impl KillPoint {
    /// The emulator faults that hold the operator at this point.
    fn faults(self) -> serde_json::Value {
        match self {
            KillPoint::ReadsFailing => json!({"fail_next": 100_000, "error_status": 503}),
            KillPoint::PostThrottled => json!({"fail_next": 1, "error_status": 429,
                                               "retry_after_s": 25, "method": "POST"}),
            KillPoint::PostAmbiguous => {
                json!({"fail_next": 1, "error_status": 500, "method": "POST"})
            }
            KillPoint::AnswerLost => json!({"response_delay_ms": 15_000, "method": "POST"}),
            KillPoint::NotVisible => json!({"read_after_write_lag_ms": 600_000}),
        }
    }
}

/// Creates (POSTs) of usage-limits policies in the request log answered with `status`.
fn creates(log: &RequestLog, status: impl Fn(u16) -> bool) -> usize {
    log.data
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/policies/usage-limits")
        .filter(|r| status(r.status))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_around_a_create_leaves_exactly_one_policy() {
    e2e(
        "kill_9_around_a_create_leaves_exactly_one_policy",
        |env| async move {
            let ctl = env.emu.control();
            let points = [
                KillPoint::ReadsFailing,
                KillPoint::PostThrottled,
                KillPoint::PostAmbiguous,
                KillPoint::AnswerLost,
                KillPoint::NotVisible,
            ];
            for (i, point) in points.into_iter().enumerate() {
                let name = format!("crashy-{i}");
                let resource = ("ulp", name.as_str(), Some(NS));
                let field = |path: &str| env.jsonpath("ulp", &name, Some(NS), path);
                let pending =
                    || field("{.metadata.annotations}").contains(CREATE_PENDING_ANNOTATION);

                // The operator leads before anything is asked of it: the kill cannot land while
                // it still waits for the Lease (the previous one released it on SIGTERM).
                let op = env.operator_with(
                    &format!("operator-{i}-a.log"),
                    &format!("op-{i}-a"),
                    &["--create-pending-grace", "120s"],
                );
                env.until(
                    resource,
                    "the operator to lead",
                    Duration::from_secs(60),
                    || async { op.log_text().contains("became the leader").then_some(()) },
                )
                .await;
                ctl.set_faults(point.faults()).await.unwrap();
                ctl.clear_requests().await.unwrap();
                env.cp.apply(&ulp(&name, 600));
                let what = format!("{point:?} reached");
                let wait = Duration::from_secs(60);
                match point {
                    KillPoint::ReadsFailing => {
                        env.until(resource, &what, wait, || async {
                            (env.reason("ulp", &name, Some(NS), "Synced") == "PortkeyServerError")
                                .then_some(())
                        })
                        .await
                    }
                    KillPoint::PostThrottled => {
                        env.until(resource, &what, wait, || async {
                            let log = ctl.requests().await.ok()?;
                            (creates(&log, |s| s == 429) == 1).then_some(())
                        })
                        .await
                    }
                    KillPoint::PostAmbiguous => {
                        env.until(resource, &what, wait, || async {
                            let log = ctl.requests().await.ok()?;
                            (creates(&log, |s| s == 500) == 1
                                && env.condition("ulp", &name, Some(NS), "Synced").0 == "Unknown")
                                .then_some(())
                        })
                        .await
                    }
                    KillPoint::AnswerLost => {
                        env.until(resource, &what, wait, || async {
                            (!env.owned_usage(&name).await.is_empty()).then_some(())
                        })
                        .await
                    }
                    KillPoint::NotVisible => {
                        env.until(resource, &what, wait, || async {
                            (env.reason("ulp", &name, Some(NS), "Ready")
                                == "RemotePolicyNotVisible")
                                .then_some(())
                        })
                        .await
                    }
                }
                op.kill();
                // The faults end with the process they held (the test's own client reads
                // Portkey below), except the lag, which the restart must meet too.
                if !matches!(point, KillPoint::NotVisible) {
                    ctl.clear_faults().await.unwrap();
                }

                // Where the kill landed.
                let log = ctl.requests().await.unwrap();
                let created = creates(&log, |s| (200..300).contains(&s));
                let id = field("{.status.policyId}");
                let owned = env.owned_usage(&name).await.len();
                let landed = (pending(), created, id.is_empty(), owned);
                let expected = match point {
                    // (record, creates answered 2xx, no id in status, policies Portkey lists)
                    KillPoint::ReadsFailing => (false, 0, true, 0),
                    KillPoint::PostThrottled | KillPoint::PostAmbiguous => (true, 0, true, 0),
                    // The answer never came: the emulator logs no answered create.
                    KillPoint::AnswerLost => (true, 0, true, 1),
                    KillPoint::NotVisible => (true, 1, false, 0),
                };
                assert_eq!(
                    landed, expected,
                    "{point:?}: (record, answered creates, no id, listed): {:?}",
                    log.data
                );
                match point {
                    KillPoint::ReadsFailing => {
                        assert_eq!(creates(&log, |_| true), 0, "{point:?}: no create was sent")
                    }
                    KillPoint::PostThrottled => assert_eq!(creates(&log, |_| true), 1),
                    _ => {}
                }

                // The restarted operator.
                ctl.clear_requests().await.unwrap();
                if matches!(point, KillPoint::NotVisible) {
                    // Still invisible, within the create-pending grace: the new process looks for
                    // the recorded policy and creates nothing. (Past the grace a create that does
                    // not show is taken for one that never happened.)
                    let _op = env.operator_with(
                        &format!("operator-{i}-b0.log"),
                        &format!("op-{i}-b0"),
                        &["--create-pending-grace", "120s"],
                    );
                    let path = format!("/v1/policies/usage-limits/{id}");
                    env.until(resource, "the restart to look for it", wait, || async {
                        let log = ctl.requests().await.ok()?;
                        log.data
                            .iter()
                            .any(|r| r.method == "GET" && r.path == path && r.status == 404)
                            .then_some(())
                    })
                    .await;
                    let log = ctl.requests().await.unwrap();
                    assert_eq!(
                        creates(&log, |_| true),
                        0,
                        "no second create while invisible"
                    );
                }
                ctl.clear_faults().await.unwrap();
                let op = env.operator(&format!("operator-{i}-b.log"));
                env.wait_ready(&format!("ulp/{name}"), Some(NS));
                let owned = env.owned_usage(&name).await;
                assert_eq!(
                    owned.len(),
                    1,
                    "{point:?}: exactly one remote policy after the restart"
                );
                assert_eq!(field("{.status.policyId}"), owned[0].id, "{point:?}");
                assert_eq!(owned[0].credit_limit, Decimal::from(600));
                assert_eq!(
                    env.active_usage(WS).await.len(),
                    1,
                    "{point:?}: no duplicate anywhere"
                );
                // Each point starts from an empty cluster: no earlier resource warms the next
                // operator's caches (its reads before the record would not be made) or meets
                // the next point's faults (the lag would hide its policy too).
                env.cp.kubectl(&[
                    "delete",
                    "ulp",
                    &name,
                    "-n",
                    NS,
                    "--wait=true",
                    "--timeout=60s",
                ]);
                assert!(env.active_usage(WS).await.is_empty(), "{point:?}: archived");
                // SIGTERM releases the Lease: the next operator leads at once.
                assert!(op.terminate().await.success());
            }
        },
    )
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
    e2e("leader_election_handover", |env| async move {
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
        env.merge_patch(
            "ulp",
            "elected",
            Some(NS),
            r#"{"spec":{"creditLimit":800}}"#,
        );
        eventually(
            "the new leader to apply the change",
            Duration::from_secs(60),
            || async {
                (env.owned_limit("elected").await == Some(Decimal::from(800))).then_some(())
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
    e2e_with(
        "deleting_a_namespace_releases_the_finalizers",
        options,
        |env| async move {
            let (cp, portkey) = (&env.cp, &env.portkey);
            let _op = env.operator("operator.log");
            let ns = "doomed";
            env.create_namespace(ns, Some(WS_SLUG));
            cp.apply(
                &ulp("budget", 500)
                    .replace(&format!("namespace: {NS}"), &format!("namespace: {ns}")),
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
            let usage = portkey.usage_limits().get(&ulp_id, archived()).await;
            let rate = portkey.rate_limits().get(&rlp_id, archived()).await;
            assert_eq!(
                (usage.unwrap().status, rate.unwrap().status),
                (PolicyStatus::Archived, PolicyStatus::Archived)
            );
            assert!(env.active_usage(WS).await.is_empty());
            assert!(env.active_rates(WS).await.is_empty());
        },
    )
    .await;
}

/// A leader whose Lease is taken over (as after a network partition: another holder, renewed
/// just now) stops its controllers and exits with an error, so that Kubernetes restarts it
/// as a standby; it does not take the Lease back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_loses_its_lease_exits() {
    e2e("a_leader_that_loses_its_lease_exits", |env| async move {
        let mut op = env.operator_with("op.log", "op", &[]);
        let holder = eventually("a leader", Duration::from_secs(60), || async {
            let holder = lease_holder(&env);
            holder.starts_with("op-").then_some(holder)
        })
        .await;
        env.cp.apply(&ulp("led", 500));
        env.wait_ready("ulp/led", Some(NS));
        assert!(op.log_text().contains("became the leader"));

        let now = serde_json::to_value(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            jiff::Timestamp::now(),
        ))
        .unwrap();
        let stolen = json!({"spec": {"holderIdentity": "someone-else", "acquireTime": now,
                                     "renewTime": now, "leaseDurationSeconds": 3600}});
        env.merge_patch(
            "lease",
            "portkey-budget-operator",
            Some(OPERATOR_NS),
            &stolen.to_string(),
        );
        let exit = op
            .exited_within(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("still running after losing {holder}'s Lease"));
        assert!(!exit.success(), "exit status {exit:?}");
        let log = op.log_text();
        assert!(
            log.contains("lost the leader Lease; stopping the controllers"),
            "{log}"
        );
        assert!(
            log.contains("exiting so that a restart rejoins the election as a standby"),
            "{log}"
        );
        assert_eq!(
            lease_holder(&env),
            "someone-else",
            "the Lease was not taken back"
        );
    })
    .await;
}

/// `--api-key-file`: the operator reads its Admin API key from the file; when Portkey refuses
/// the key (401: it was rotated), it reads the file again and carries on with the new key,
/// without a restart (there is no watch on a file: the 401 is what makes it look).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_api_key_file_is_read_again_after_a_401() {
    e2e(
        "a_rotated_api_key_file_is_read_again_after_a_401",
        |env| async move {
            let (cp, ctl) = (&env.cp, env.emu.control());
            let (old_key, new_key) = ("file-key-before-rotation", "file-key-after-rotation");
            let file = cp.dir.path().join("admin-api-key");
            std::fs::write(&file, format!("{old_key}\n")).unwrap();
            // The test's own client keeps `KEY`; the operator has only the file (no
            // PORTKEY_API_KEY in its environment).
            ctl.set_api_keys(&[KEY, old_key]).await.unwrap();
            let op = Operator::start(
                cp,
                &cp.kubeconfig,
                &env.emu.base_url(),
                "operator.log",
                "operator",
                &[
                    "--leader-election-namespace",
                    OPERATOR_NS,
                    "--leader-election-lease-duration",
                    "4s",
                    "--api-key-file",
                    file.to_str().unwrap(),
                ],
                &[],
            );
            cp.apply(&ulp("rotating", 500));
            env.wait_ready("ulp/rotating", Some(NS));

            // The key is rotated: Portkey accepts only the new one, the file holds it.
            std::fs::write(&file, format!("{new_key}\n")).unwrap();
            ctl.set_api_keys(&[KEY, new_key]).await.unwrap();
            ctl.clear_requests().await.unwrap();
            env.merge_patch(
                "ulp",
                "rotating",
                Some(NS),
                r#"{"spec":{"creditLimit":700}}"#,
            );
            env.until(
                ("ulp", "rotating", Some(NS)),
                "the change applied with the new key",
                Duration::from_secs(60),
                || async {
                    (env.owned_limit("rotating").await == Some(Decimal::from(700))).then_some(())
                },
            )
            .await;
            let log = ctl.requests().await.unwrap();
            assert!(
                log.data.iter().any(|r| r.status == 401),
                "the old key was refused first: {:?}",
                log.data
            );
            let text = op.log_text();
            assert!(text.contains("reading the key file again"), "{text}");
            assert!(text.contains("the Admin API key changed"), "{text}");
            assert!(
                !text.contains(old_key) && !text.contains(new_key),
                "a key in the log"
            );
        },
    )
    .await;
}
