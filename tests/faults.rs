//! Fault tests: convergence under a 30 % Admin API failure rate, crash safety at every step of
//! the apply path, and a catalog of bad manifests. Bounded in time and count; the controller's
//! own reconcile runs against the emulator (real HTTP) and the in-memory Kubernetes API.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use portkey_budget_operator::api::*;
use portkey_budget_operator::config::ControllerConfig;
use portkey_budget_operator::controller::{self, Context, conditions};
use portkey_budget_operator::emulator::EmulatorHandle;
use portkey_budget_operator::plan::marker::marker_of;
use portkey_budget_operator::portkey::*;
use rand::Rng;
use rust_decimal::Decimal;
use serde_json::json;
use support::fake_kube::FakeKube;

const NS: &str = "team-a";
const WS: &str = "2f1d4e8a-1111-4c3b-9d2e-0000000000fa";
const KEY: &str = "fault-test-key";
const ULP_PATH: &str = "/usagelimitpolicies";

struct Harness {
    kube: FakeKube,
    emu: EmulatorHandle,
}

fn ulp(name: &str, limit: i64) -> UsageLimitPolicy {
    let spec: UsageLimitPolicySpec = serde_json::from_value(json!({
        "workspace": "team-a",
        "type": "cost",
        "creditLimit": limit,
        "periodicReset": "monthly",
        "conditions": [{"key": "metadata._team", "value": name}],
        "groupBy": [{"key": "metadata._user"}]
    }))
    .unwrap();
    let mut obj = UsageLimitPolicy::new(name, spec);
    obj.metadata.namespace = Some(NS.into());
    obj
}

impl Harness {
    async fn new() -> Harness {
        let emu = support::fixtures::emulator(KEY, &[(WS, "team-a", "Team A")]).await;
        let kube = FakeKube::new();
        kube.add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-a")]);
        Harness { kube, emu }
    }

    fn client(&self, timeout: Duration) -> PortkeyClient {
        let mut cfg = ClientConfig::new(self.emu.base_url(), ApiKey::new(KEY));
        cfg.timeout = timeout;
        cfg.retry = RetryPolicy {
            max_retries: 2,
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(2),
        };
        PortkeyClient::new(cfg).unwrap()
    }

    /// A new operator process: fresh caches, same cluster, same Portkey.
    fn restart(&self, timeout: Duration) -> Arc<Context> {
        Context::new(
            self.kube.client(),
            self.client(timeout),
            ControllerConfig {
                usage_refresh_interval: Duration::ZERO,
                resync_interval: Duration::ZERO,
                // The emulator is consistent: a create that is not visible did not happen.
                create_pending_grace: Duration::ZERO,
                admin_api_write_rate: 1000,
                ..Default::default()
            },
            controller::reporter(),
        )
    }

    fn get(&self, name: &str) -> Option<UsageLimitPolicy> {
        self.kube.get::<UsageLimitPolicy>(NS, name)
    }

    async fn reconcile(&self, ctx: &Arc<Context>, name: &str) -> Result<(), String> {
        let obj = self.get(name).ok_or("gone")?;
        controller::reconcile_policy(Arc::new(obj), ctx.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    fn ready(&self, name: &str) -> bool {
        self.get(name).is_some_and(|o| {
            o.status.as_ref().is_some_and(|s| {
                conditions::is_true(&s.common.conditions, conditions::READY)
                    && s.common.observed_generation == o.metadata.generation
            })
        })
    }

    /// Reconciles until every named resource is Ready (or gone, when `gone`), at most 40
    /// rounds; returns the rounds used.
    async fn converge(&self, ctx: &Arc<Context>, names: &[String], gone: bool) -> u32 {
        for round in 0..40 {
            let pending: Vec<&String> = names
                .iter()
                .filter(|n| {
                    if gone {
                        self.get(n).is_some()
                    } else {
                        !self.ready(n)
                    }
                })
                .collect();
            if pending.is_empty() {
                return round;
            }
            let results =
                futures::future::join_all(pending.iter().map(|n| self.reconcile(ctx, n))).await;
            drop(results);
        }
        panic!("not converged after 40 rounds");
    }

    /// Active remote policies per owning resource name (marker), with their limits.
    async fn remote(&self) -> BTreeMap<String, Vec<Decimal>> {
        self.emu.control().clear_faults().await.unwrap();
        let filter = ListFilter {
            workspace_id: Some(WS.into()),
            status: Some(PolicyStatus::Active),
            ..Default::default()
        };
        let mut out: BTreeMap<String, Vec<Decimal>> = BTreeMap::new();
        for p in self
            .client(Duration::from_secs(5))
            .usage_limits()
            .list(&filter)
            .await
            .unwrap()
        {
            // Ours only: legacy markers (the other tests) or this cluster's.
            let Some(marker) = p.name.as_deref().and_then(marker_of) else {
                continue;
            };
            if marker.installation.is_some_and(|i| i != "this-cluster") {
                continue;
            }
            let id = marker.owner;
            let name = id.split('/').nth(1).unwrap().to_owned();
            out.entry(name).or_default().push(p.credit_limit);
        }
        out
    }

    /// Injects emulator faults (replacing any in force).
    async fn fault(&self, faults: serde_json::Value) {
        self.emu.control().set_faults(faults).await.unwrap();
    }

    async fn calls(&self) -> u64 {
        self.emu.control().requests().await.unwrap().total
    }
}

/// Converges `n` policies, switching the injected fault between 503 and 429 (Retry-After 1 s)
/// every round when `faults`; checks exactly one remote policy per resource with its limit.
async fn converge_many(h: &Harness, n: usize, faults: bool) {
    let names: Vec<String> = (0..n).map(|i| format!("budget-{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        h.kube.apply(&ulp(name, 100 + i as i64));
    }
    let ctx = h.restart(Duration::from_secs(5));
    let ctl = h.emu.control();
    ctl.clear_requests().await.unwrap();
    for round in 0..60 {
        if names.iter().all(|n| h.ready(n)) {
            break;
        }
        assert!(round < 59, "not converged under faults");
        if faults {
            let fault = if round % 2 == 0 {
                json!({"error_rate": 0.3, "error_status": 503})
            } else {
                json!({"error_rate": 0.3, "error_status": 429, "retry_after_s": 1})
            };
            ctl.set_faults(fault).await.unwrap();
        }
        let pending: Vec<&String> = names.iter().filter(|n| !h.ready(n)).collect();
        futures::future::join_all(pending.iter().map(|n| h.reconcile(&ctx, n))).await;
    }
    let remote = h.remote().await;
    for (i, name) in names.iter().enumerate() {
        assert_eq!(
            remote.get(name),
            Some(&vec![Decimal::from(100 + i as i64)]),
            "{name}: exactly one remote policy with the right limit (faults: {faults})"
        );
    }
    assert_eq!(remote.len(), n, "no policy that no resource owns");
}

/// The injected failures are drawn by the emulator's OS-seeded generator, so how many calls a
/// run makes varies from run to run: that figure belongs to `bench`, not to a test. What must
/// hold on every draw is checked: convergence within the bounded rounds, exactly one remote
/// policy per resource with its limit, none lost, none extra (and the same without faults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn converges_under_30_percent_failures_without_duplicates_or_losses() {
    converge_many(&Harness::new().await, 16, false).await;
    converge_many(&Harness::new().await, 16, true).await;
}

/// Where the apply path is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// Create: the create-pending annotation cannot be written (nothing is sent).
    BeforeCreatePending,
    /// Create: Portkey made the policy but its answer never arrived (client timeout).
    AfterPostAnswerLost,
    /// Create: the policy exists, the id could not be written to status.
    AfterPostBeforeStatus,
    /// Update: the PUT failed.
    UpdatePutFailed,
    /// Update: the PUT went through, the status write failed.
    UpdateBeforeStatus,
    /// Archive: the DELETE failed.
    ArchiveDeleteFailed,
    /// Archive: the policy is archived, the finalizer could not be removed.
    ArchiveBeforeFinalizer,
}

const ALL_CRASHES: [Crash; 7] = [
    Crash::BeforeCreatePending,
    Crash::AfterPostAnswerLost,
    Crash::AfterPostBeforeStatus,
    Crash::UpdatePutFailed,
    Crash::UpdateBeforeStatus,
    Crash::ArchiveDeleteFailed,
    Crash::ArchiveBeforeFinalizer,
];

fn resource_suffix(name: &str) -> String {
    format!("{ULP_PATH}/{name}")
}

/// After an interruption: clear the faults, restart the operator, reconcile until settled, and
/// check the remote state: `want` is the one limit in force, `None` means archived and gone.
async fn settle(h: &Harness, name: &str, crash: Crash, want: Option<i64>) -> Arc<Context> {
    h.emu.control().clear_faults().await.unwrap();
    let ctx = h.restart(Duration::from_secs(5));
    h.converge(&ctx, &[name.to_owned()], want.is_none()).await;
    let remote = h.remote().await;
    match want {
        Some(limit) => assert_eq!(
            remote.get(name),
            Some(&vec![Decimal::from(limit)]),
            "{crash:?}: exactly one remote policy with limit {limit}"
        ),
        None => {
            assert!(h.get(name).is_none(), "{crash:?}: the resource is gone");
            assert!(
                !remote.contains_key(name),
                "{crash:?}: the remote policy is archived"
            );
        }
    }
    ctx
}

/// Runs one resource through create, update and delete with `crash` injected at its step,
/// "restarts" the operator after the interrupted reconcile, and checks the outcome.
async fn crash_scenario(h: &Harness, name: &str, crash: Crash) {
    h.kube.apply(&ulp(name, 500));
    let ctx = h.restart(Duration::from_secs(5));
    // Arm the crash for the create phase.
    let short_timeout = match crash {
        Crash::BeforeCreatePending => {
            // Writes to the resource: #1 adds the finalizer and records create-pending.
            h.kube.fail_writes_after(&resource_suffix(name), 0, 500, 1);
            false
        }
        Crash::AfterPostAnswerLost => {
            h.fault(json!({"response_delay_ms": 1500, "method": "POST"}))
                .await;
            true
        }
        Crash::AfterPostBeforeStatus => {
            h.kube
                .fail_writes(&format!("{}/status", resource_suffix(name)), 500, 1);
            false
        }
        _ => false,
    };
    let create_ctx = if short_timeout {
        h.restart(Duration::from_millis(300))
    } else {
        ctx.clone()
    };
    let first = h.reconcile(&create_ctx, name).await;
    let create_phase = matches!(
        crash,
        Crash::BeforeCreatePending | Crash::AfterPostAnswerLost | Crash::AfterPostBeforeStatus
    );
    if create_phase {
        assert!(first.is_err(), "{crash:?}: the reconcile was interrupted");
    }
    let ctx = settle(h, name, crash, Some(500)).await;
    // The create is confirmed in status: a later pass does not look for it again.
    let obj = h.get(name).unwrap();
    let confirmed = obj
        .status
        .as_ref()
        .and_then(|s| s.common.create_confirmed.as_deref());
    assert!(
        portkey_budget_operator::controller::pending_create(&obj, confirmed).is_none(),
        "{crash:?}: the create is confirmed"
    );

    // Update phase.
    h.kube.apply(&ulp(name, 800));
    match crash {
        Crash::UpdatePutFailed => {
            h.fault(json!({"fail_next": 3, "error_status": 503, "method": "PUT"}))
                .await;
        }
        Crash::UpdateBeforeStatus => {
            h.kube
                .fail_writes(&format!("{}/status", resource_suffix(name)), 500, 1);
        }
        _ => {}
    }
    let interrupted = h.reconcile(&ctx, name).await;
    if matches!(crash, Crash::UpdatePutFailed | Crash::UpdateBeforeStatus) {
        assert!(
            interrupted.is_err(),
            "{crash:?}: the update was interrupted"
        );
    }
    let ctx = settle(h, name, crash, Some(800)).await;

    // Archive phase.
    h.kube.delete::<UsageLimitPolicy>(NS, name);
    match crash {
        Crash::ArchiveDeleteFailed => {
            h.fault(json!({"fail_next": 3, "error_status": 503, "method": "DELETE"}))
                .await;
        }
        Crash::ArchiveBeforeFinalizer => {
            h.kube.fail_writes(&resource_suffix(name), 500, 1);
        }
        _ => {}
    }
    let interrupted = h.reconcile(&ctx, name).await;
    if matches!(
        crash,
        Crash::ArchiveDeleteFailed | Crash::ArchiveBeforeFinalizer
    ) {
        assert!(
            interrupted.is_err(),
            "{crash:?}: the archive was interrupted"
        );
        assert!(h.get(name).is_some(), "{crash:?}: the finalizer holds");
    }
    settle(h, name, crash, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_step_leaves_exactly_one_policy_and_the_right_state() {
    let h = Harness::new().await;
    for (i, crash) in ALL_CRASHES.iter().enumerate() {
        crash_scenario(&h, &format!("crash-{i}"), *crash).await;
    }
    assert!(h.remote().await.is_empty(), "nothing left behind");
}

/// The long randomized variant: at least 100 interruptions at random steps, resources and
/// orders. Run with `cargo test --test faults -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 100+ randomized interruptions (run with --ignored)"]
async fn randomized_crashes() {
    let h = Harness::new().await;
    let mut rng = rand::rng();
    for i in 0..120 {
        let crash = ALL_CRASHES[rng.random_range(0..ALL_CRASHES.len())];
        crash_scenario(&h, &format!("random-{i}"), crash).await;
    }
    assert!(h.remote().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_manifest_is_rejected_naming_the_field_with_no_admin_api_call() {
    let h = Harness::new().await;
    let files = support::fixtures::yaml_files("tests/bad-input");
    assert!(
        files.len() >= 40,
        "the catalog holds {} manifests",
        files.len()
    );
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let expect = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{}: first line must be `# expect: ...`", file.display()));
        let out = Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
            .args(["plan", "-f"])
            .arg(file)
            .args(["--admin-api-url", &h.emu.base_url()])
            .env("PORTKEY_API_KEY", KEY)
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Exit 3: invalid manifests (docs/cli.md "Exit codes").
        assert_eq!(out.status.code(), Some(3), "{}: {stderr}", file.display());
        let file_name = file.file_name().unwrap().to_string_lossy();
        let line = stderr
            .lines()
            .find(|l| l.starts_with("error: "))
            .unwrap_or_else(|| panic!("{file_name}: no error line in {stderr}"));
        assert!(line.contains(&*file_name), "{file_name}: {line}");
        assert!(
            line.contains(expect),
            "{file_name}: the error should name {expect:?}: {line}"
        );
    }
    assert_eq!(
        h.calls().await,
        0,
        "a bad manifest caused an Admin API call"
    );
}

/// The Admin API's real-world behaviours (emulator fault modes), one at a time: read-after-write
/// lag, stale echoes after a PUT, a page-size cap below the requested size, 403 `AB03` for gone
/// objects, and list items without the reset fields. Under each, resources are created, changed
/// and deleted, and every invariant holds: exactly one active policy per resource with the right
/// limit, nothing archived that is not ours (a hand-made policy and another installation's
/// stay), reset schedules never moved by a re-sent field, and every finalizer released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_world_admin_api_behaviour_keeps_every_invariant() {
    let modes = [
        (
            "read-after-write lag",
            json!({"read_after_write_lag_ms": 2500}),
        ),
        ("stale echoes", json!({"stale_read_ms": 1500})),
        ("page-size cap", json!({"page_size_cap": 2})),
        ("gone answers 403 AB03", json!({"gone_as_forbidden": true})),
        (
            "list items without reset fields",
            json!({"list_without_reset": true}),
        ),
    ];
    for (mode, fault) in modes {
        let h = Harness::new().await;
        let portkey = h.client(Duration::from_secs(5));
        // Not ours: made by hand, and another installation's policy for the same resource name.
        let foreign = |name: &str| CreateUsageLimitsPolicy {
            credit_limit: Decimal::from(7),
            ..support::fixtures::usage_policy(name, "x", WS)
        };
        let mut not_ours = Vec::new();
        for name in [
            "made by hand",
            "theirs [k8s:ulp:team-a/budget-0@other-cluster]",
        ] {
            not_ours.push(
                portkey
                    .usage_limits()
                    .create(&foreign(name))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let names: Vec<String> = (0..5).map(|i| format!("budget-{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            h.kube.apply(&ulp(name, 100 + i as i64));
        }
        h.fault(fault.clone()).await;
        let ctx = Context::new(
            h.kube.client(),
            h.client(Duration::from_secs(5)),
            ControllerConfig {
                installation_id: "this-cluster".into(),
                usage_refresh_interval: Duration::ZERO,
                resync_interval: Duration::ZERO,
                create_pending_grace: Duration::from_secs(20),
                admin_api_write_rate: 1000,
                ..Default::default()
            },
            controller::reporter(),
        );
        let settle = |want: fn(&Harness, &str) -> bool| {
            let (h, ctx, names) = (&h, &ctx, &names);
            async move {
                let deadline = std::time::Instant::now() + Duration::from_secs(60);
                while !names.iter().all(|n| want(h, n)) {
                    assert!(std::time::Instant::now() < deadline, "{mode}: not settled");
                    let pending: Vec<&String> = names.iter().filter(|n| !want(h, n)).collect();
                    futures::future::join_all(pending.iter().map(|n| h.reconcile(ctx, n))).await;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        settle(|h, n| h.ready(n)).await;
        // Let the faults' windows pass, then read what Portkey holds.
        let filter = ListFilter {
            workspace_id: Some(WS.into()),
            status: Some(PolicyStatus::Active),
            ..Default::default()
        };
        // Each active policy's next reset, read by id (list items may lack the reset fields).
        let schedules = || async {
            let mut out: BTreeMap<String, Option<jiff::Timestamp>> = BTreeMap::new();
            for p in portkey.usage_limits().list(&filter).await.unwrap() {
                let by_id = portkey
                    .usage_limits()
                    .get(&p.id, GetOptions::default())
                    .await
                    .unwrap();
                out.insert(p.id, by_id.next_usage_reset_at);
            }
            out
        };
        let check = |when: &str, remote: &BTreeMap<String, Vec<Decimal>>, bump: i64| {
            for (i, name) in names.iter().enumerate() {
                assert_eq!(
                    remote.get(name),
                    Some(&vec![Decimal::from(100 + bump + i as i64)]),
                    "{mode}, {when}: exactly one active policy for {name}"
                );
            }
        };
        let remote = h.remote().await;
        check("after create", &remote, 0);
        let before = schedules().await;
        let ours: Vec<&String> = before.keys().filter(|id| !not_ours.contains(id)).collect();
        assert_eq!(ours.len(), names.len(), "{mode}: one policy per resource");
        assert!(
            ours.iter().all(|id| before[*id].is_some()),
            "{mode}: every policy of ours has a reset scheduled: {before:?}"
        );

        // Change every limit under the same fault.
        h.fault(fault.clone()).await;
        for (i, name) in names.iter().enumerate() {
            h.kube.apply(&ulp(name, 1000 + i as i64));
        }
        settle(|h, n| h.ready(n)).await;
        let remote = h.remote().await;
        check("after the change", &remote, 900);
        let after = schedules().await;
        // The same policies, updated in place (a recreated one would carry a new reset and
        // make the comparison below vacuous), and no reset moved.
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{mode}: the changes updated the policies in place"
        );
        assert_eq!(after, before, "{mode}: no reset moved");

        // Delete every resource under the same fault: finalizers released, ours archived.
        h.fault(fault.clone()).await;
        for name in &names {
            h.kube.delete::<UsageLimitPolicy>(NS, name);
        }
        settle(|h, n| h.get(n).is_none()).await;
        h.emu.control().clear_faults().await.unwrap();
        let left: Vec<String> = portkey
            .usage_limits()
            .list(&filter)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        let mut expected = not_ours.clone();
        expected.sort();
        let mut left_sorted = left;
        left_sorted.sort();
        assert_eq!(
            left_sorted, expected,
            "{mode}: only the policies that are not ours remain"
        );
    }
}
