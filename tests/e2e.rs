//! End-to-end: a real kube-apiserver + etcd (envtest convention, `KUBEBUILDER_ASSETS`), the CRDs
//! from `crds/`, the operator binary, and the emulator. Skipped with one line when the assets
//! are not there.

mod support;

use std::future::Future;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portkey_budget_operator::emulator::{self, EmulatorConfig, EmulatorHandle, SeedWorkspace};
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::json;
use support::control_plane::{ControlPlane, assets};

const WS: &str = "3a1d4e8a-2222-4c3b-9d2e-0000000000e2";
const KEY: &str = "e2e-admin-key";
const NS: &str = "e2e-budgets";

/// The Lease namespace of the operators under test.
const OPERATOR_NS: &str = "portkey-operator-system";

fn start_operator(cp: &ControlPlane, base_url: &str, log_name: &str) -> Child {
    start_named_operator(cp, base_url, log_name, log_name, &[])
}

/// Starts the operator binary with leader election on (its default) and a short lease, the
/// metrics server on a free loopback port, and `POD_NAME` = `pod` (its Lease identity prefix).
fn start_named_operator(
    cp: &ControlPlane,
    base_url: &str,
    log_name: &str,
    pod: &str,
    extra: &[&str],
) -> Child {
    cp.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {OPERATOR_NS}\n"
    ));
    let log = std::fs::File::create(cp.dir.path().join(log_name)).unwrap();
    Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
        .args([
            "run",
            "--admin-api-url",
            base_url,
            "--usage-refresh-interval",
            "2s",
            "--resync-interval",
            "2s",
            "--create-pending-grace",
            "5s",
            "--admin-api-timeout",
            "20s",
            "--metrics-bind-address",
            "127.0.0.1:0",
            "--leader-election-namespace",
            OPERATOR_NS,
            "--leader-election-lease-duration",
            "4s",
        ])
        .args(extra)
        .env("KUBECONFIG", &cp.kubeconfig)
        .env("PORTKEY_API_KEY", KEY)
        .env("POD_NAME", pod)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("the operator binary starts")
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// A control plane with the CRDs and the test namespace, an emulator seeded with the e2e
/// workspace, and a client for it; `None` (after one skip line) without `KUBEBUILDER_ASSETS`.
async fn setup(test: &str) -> Option<(ControlPlane, EmulatorHandle, PortkeyClient)> {
    let Some(assets) = assets() else {
        support::control_plane::print_skip(test);
        return None;
    };
    let cp = ControlPlane::start(assets);
    cp.install_crds();
    let emu = emulator::spawn(EmulatorConfig {
        api_keys: vec![KEY.into()],
        workspaces: vec![SeedWorkspace {
            id: WS.into(),
            slug: "e2e".into(),
            name: "E2E".into(),
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let portkey = PortkeyClient::new(ClientConfig::new(emu.base_url(), ApiKey::new(KEY))).unwrap();
    cp.kubectl(&["create", "namespace", NS]);
    Some((cp, emu, portkey))
}

/// Polls `check` until it yields a value, for at most `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn manifest(name: &str, limit: u32) -> String {
    format!(
        r#"apiVersion: budgets.portkey-operator.io/v1alpha1
kind: UsageLimitPolicy
metadata:
  name: {name}
  namespace: {NS}
spec:
  workspace: e2e
  type: cost
  creditLimit: {limit}
  alertThreshold: "400.50"
  periodicReset: monthly
  conditions:
    - key: metadata._team
      value: e2e
  groupBy:
    - key: metadata._user
"#
    )
}

async fn active(client: &PortkeyClient) -> Vec<UsageLimitsPolicy> {
    let filter = ListFilter {
        workspace_id: Some(WS.into()),
        status: Some(PolicyStatus::Active),
        ..Default::default()
    };
    client
        .usage_limits()
        .list(&filter)
        .await
        .unwrap_or_default()
}

async fn owned_by(client: &PortkeyClient, name: &str) -> Vec<UsageLimitsPolicy> {
    let marker = format!("[k8s:ulp:{NS}/{name}]");
    active(client)
        .await
        .into_iter()
        .filter(|p| p.name.as_deref().is_some_and(|n| n.ends_with(&marker)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_usage_limit_policy() {
    let Some((cp, emu, portkey)) = setup("e2e_usage_limit_policy").await else {
        return;
    };
    let ctl = emu.control();
    let op = start_operator(&cp, &emu.base_url(), "operator-1.log");

    // Apply → Ready, with the remote policy present.
    cp.apply(&manifest("monthly", 500));
    cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "ulp/monthly",
        "-n",
        NS,
        "--timeout=60s",
    ]);
    let policies = owned_by(&portkey, "monthly").await;
    assert_eq!(policies.len(), 1);
    let id = policies[0].id.clone();
    assert_eq!(policies[0].credit_limit, Decimal::from(500));
    let reset = policies[0].next_usage_reset_at;
    assert!(reset.is_some());
    let status_id = cp.kubectl(&[
        "get",
        "ulp",
        "monthly",
        "-n",
        NS,
        "-o",
        "jsonpath={.status.policyId}",
    ]);
    assert_eq!(status_id, id);

    // Change the limit → updated in place, reset schedule untouched.
    cp.kubectl(&[
        "patch",
        "ulp",
        "monthly",
        "-n",
        NS,
        "--type=merge",
        "-p",
        r#"{"spec":{"creditLimit":800}}"#,
    ]);
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
    assert_eq!(owned_by(&portkey, "monthly").await.len(), 1);

    // Admission refuses what CEL forbids.
    let out = Command::new(cp.assets.join("kubectl"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .args([
            "patch",
            "ulp",
            "monthly",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"alertThreshold":"900"}}"#,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("alertThreshold must be greater than 0 and less than creditLimit")
    );

    // Edit in Portkey → reverted on the next resync.
    let edit = UpdateUsageLimitsPolicy {
        credit_limit: Some(Decimal::from(5)),
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
        let peak = cp.kubectl(&[
            "get",
            "ulp",
            "monthly",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.usage.peakPercent}",
        ]);
        (peak == "50").then_some(())
    })
    .await;
    let table = cp.kubectl(&["get", "ulp", "-n", NS]);
    let row = table
        .lines()
        .find(|l| l.starts_with("monthly"))
        .unwrap()
        .to_owned();
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(
        &cells[1..7],
        ["cost", "800", "monthly", "50", "0", "True"],
        "{table}"
    );

    // Delete → archived, finalizer released.
    cp.kubectl(&[
        "delete",
        "ulp",
        "monthly",
        "-n",
        NS,
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(owned_by(&portkey, "monthly").await.is_empty());
    let archived = portkey
        .usage_limits()
        .get(
            &id,
            GetOptions {
                status: Some(PolicyStatus::Archived),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(archived.status, PolicyStatus::Archived);
    stop(op);

    // Kill the operator right after a create reached Portkey (the answer is held back), restart:
    // exactly one remote policy.
    ctl.set_faults(json!({"response_delay_ms": 15000, "method": "POST"}))
        .await
        .unwrap();
    let op = start_operator(&cp, &emu.base_url(), "operator-2.log");
    cp.apply(&manifest("crashy", 300));
    eventually(
        "the create to reach Portkey",
        Duration::from_secs(60),
        || async { (!owned_by(&portkey, "crashy").await.is_empty()).then_some(()) },
    )
    .await;
    stop(op);
    ctl.clear_faults().await.unwrap();
    let status_id = cp.kubectl(&[
        "get",
        "ulp",
        "crashy",
        "-n",
        NS,
        "-o",
        "jsonpath={.status.policyId}",
    ]);
    assert!(
        status_id.is_empty(),
        "the operator died before recording the id"
    );
    let op = start_operator(&cp, &emu.base_url(), "operator-3.log");
    cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "ulp/crashy",
        "-n",
        NS,
        "--timeout=90s",
    ]);
    let crashy = owned_by(&portkey, "crashy").await;
    assert_eq!(
        crashy.len(),
        1,
        "exactly one remote policy after the restart"
    );
    let status_id = cp.kubectl(&[
        "get",
        "ulp",
        "crashy",
        "-n",
        NS,
        "-o",
        "jsonpath={.status.policyId}",
    ]);
    assert_eq!(status_id, crashy[0].id);
    stop(op);
}

fn jsonpath(cp: &ControlPlane, kind: &str, name: &str, ns: Option<&str>, path: &str) -> String {
    let mut args = vec!["get", kind, name, "-o"];
    let expr = format!("jsonpath={path}");
    args.push(&expr);
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    cp.kubectl(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_rate_limits_and_workspace_budgets() {
    let Some((cp, emu, portkey)) = setup("e2e_rate_limits_and_workspace_budgets").await else {
        return;
    };
    let op = start_operator(&cp, &emu.base_url(), "operator.log");

    // RateLimitPolicy: apply → set; change → updated; delete → archived.
    let rlp = |value: u32| {
        format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: per-user\n  namespace: {NS}\nspec:\n  workspace: e2e\n  type: requests\n  unit: rpm\n  value: {value}\n  conditions:\n    - key: api_key\n      value: \"*\"\n  groupBy:\n    - key: metadata._user\n"
        )
    };
    cp.apply(&rlp(120));
    cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "rlp/per-user",
        "-n",
        NS,
        "--timeout=60s",
    ]);
    let filter = ListFilter {
        workspace_id: Some(WS.into()),
        status: Some(PolicyStatus::Active),
        ..Default::default()
    };
    let rates = portkey.rate_limits().list(&filter).await.unwrap();
    assert_eq!(rates.len(), 1);
    assert_eq!(rates[0].value, Decimal::from(120));
    cp.apply(&rlp(300));
    eventually(
        "the new rate in Portkey",
        Duration::from_secs(60),
        || async {
            let r = portkey.rate_limits().list(&filter).await.ok()?;
            (r.len() == 1 && r[0].value == Decimal::from(300)).then_some(())
        },
    )
    .await;
    cp.kubectl(&[
        "delete",
        "rlp",
        "per-user",
        "-n",
        NS,
        "--wait=true",
        "--timeout=60s",
    ]);
    assert!(
        portkey
            .rate_limits()
            .list(&filter)
            .await
            .unwrap()
            .is_empty()
    );

    // WorkspaceBudget: apply → set; change → updated; conflict; delete → cleared.
    let wsb = |name: &str, limit: u32| {
        format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: WorkspaceBudget\nmetadata:\n  name: {name}\nspec:\n  workspace: e2e\n  usageLimits:\n    - type: cost\n      creditLimit: {limit}\n      alertThreshold: 400\n      periodicReset: monthly\n  rateLimits:\n    - type: requests\n      unit: rpm\n      value: 120\n"
        )
    };
    cp.apply(&wsb("marketing", 500));
    cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "wsb/marketing",
        "--timeout=60s",
    ]);
    let ws = portkey.get_workspace(WS).await.unwrap();
    assert_eq!(
        ws.usage_limits.as_ref().unwrap()[0].credit_limit,
        Decimal::from(500)
    );
    let reset = ws.usage_limits.unwrap()[0].next_usage_reset_at;
    cp.apply(&wsb("marketing", 800));
    eventually(
        "the new workspace budget",
        Duration::from_secs(60),
        || async {
            let w = portkey.get_workspace(WS).await.ok()?;
            let l = w.usage_limits?;
            (l[0].credit_limit == Decimal::from(800)).then_some(())
        },
    )
    .await;
    assert_eq!(
        portkey
            .get_workspace(WS)
            .await
            .unwrap()
            .usage_limits
            .unwrap()[0]
            .next_usage_reset_at,
        reset
    );
    let table = cp.kubectl(&["get", "wsb", "marketing"]);
    assert!(
        table.contains("800 cost") && table.contains("120 requests rpm"),
        "{table}"
    );

    cp.apply(&wsb("marketing-copy", 900));
    eventually(
        "the conflict to be reported",
        Duration::from_secs(60),
        || async {
            let reason = jsonpath(
                &cp,
                "wsb",
                "marketing-copy",
                None,
                r#"{.status.conditions[?(@.type=="Ready")].reason}"#,
            );
            (reason == "Conflict").then_some(())
        },
    )
    .await;
    assert_eq!(
        portkey
            .get_workspace(WS)
            .await
            .unwrap()
            .usage_limits
            .unwrap()[0]
            .credit_limit,
        Decimal::from(800)
    );

    cp.kubectl(&["delete", "wsb", "marketing", "--wait=true", "--timeout=60s"]);
    // The copy takes over once the owner is gone; delete it too, then nothing is left.
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
    stop(op);
}

/// The current holder of the operator's leader Lease.
fn lease_holder(cp: &ControlPlane) -> String {
    let out = Command::new(cp.assets.join("kubectl"))
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .args([
            "get",
            "lease",
            "portkey-budget-operator",
            "-n",
            OPERATOR_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn log_of(cp: &ControlPlane, name: &str) -> String {
    std::fs::read_to_string(cp.dir.path().join(name)).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_leader_election_handover() {
    let Some((cp, emu, portkey)) = setup("e2e_leader_election_handover").await else {
        return;
    };
    let a = start_named_operator(&cp, &emu.base_url(), "op-a.log", "op-a", &[]);
    let b = start_named_operator(&cp, &emu.base_url(), "op-b.log", "op-b", &[]);

    // Exactly one of the two leads.
    let first = eventually("a leader", Duration::from_secs(60), || async {
        let holder = lease_holder(&cp);
        (holder.starts_with("op-a-") || holder.starts_with("op-b-")).then_some(holder)
    })
    .await;
    let (leader, standby, leader_log, standby_log) = if first.starts_with("op-a-") {
        (a, b, "op-a.log", "op-b.log")
    } else {
        (b, a, "op-b.log", "op-a.log")
    };
    cp.apply(&manifest("elected", 500));
    cp.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "ulp/elected",
        "-n",
        NS,
        "--timeout=60s",
    ]);
    assert_eq!(owned_by(&portkey, "elected").await.len(), 1);
    assert!(log_of(&cp, leader_log).contains("became the leader"));
    assert!(
        !log_of(&cp, standby_log).contains("became the leader"),
        "the standby must not reconcile while the leader holds the Lease"
    );

    // The leader dies without releasing the Lease: the standby takes over once it expires.
    stop(leader);
    let second = eventually(
        "the standby to take the Lease",
        Duration::from_secs(60),
        || async {
            let holder = lease_holder(&cp);
            (!holder.is_empty() && holder != first).then_some(holder)
        },
    )
    .await;
    assert!(second.starts_with(&standby_log[..4]), "{second}");
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
            let p = owned_by(&portkey, "elected").await;
            (p.len() == 1 && p[0].credit_limit == Decimal::from(800)).then_some(())
        },
    )
    .await;
    assert_eq!(owned_by(&portkey, "elected").await.len(), 1, "no duplicate");

    // SIGTERM: in-flight work finishes, the Lease is released, the process exits cleanly.
    let pid = standby.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let mut standby = standby;
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = standby.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the operator did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(exit.success(), "exit status {exit:?}");
    assert!(log_of(&cp, standby_log).contains("released the leader Lease"));
    let holder = lease_holder(&cp);
    assert!(holder.is_empty(), "the Lease is still held by {holder:?}");
}
