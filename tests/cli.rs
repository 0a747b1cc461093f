//! The `plan` / `sync` CLI: the real binary against an emulator the test owns (so state and the
//! request log survive between runs).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use portkey_budget_operator::emulator::{self, EmulatorConfig, EmulatorHandle, SeedWorkspace};
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::Value;

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{service_key, usage_limit, usage_policy_by_id};

const KEY: &str = "cli-test-key";

async fn emulator() -> EmulatorHandle {
    emulator::spawn(EmulatorConfig {
        api_keys: vec![KEY.into()],
        workspaces: vec![
            SeedWorkspace::from_slug("team-a"),
            SeedWorkspace::from_slug("marketing"),
        ],
        ..Default::default()
    })
    .await
    .unwrap()
}

fn cli(emu: &EmulatorHandle, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
        .args(args)
        .args(["--admin-api-url", &emu.base_url()])
        .env("PORTKEY_API_KEY", KEY)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) {
    std::fs::write(dir.join(name), content).unwrap();
}

fn ulp(name: &str, limit: &str, group_by: &str, extra: &str) -> String {
    format!(
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: UsageLimitPolicy\nmetadata:\n  name: {name}\n  namespace: team-a\nspec:\n  workspace: team-a\n  type: cost\n  creditLimit: {limit}\n  periodicReset: monthly\n  conditions:\n    - key: metadata._team\n      value: team-a\n  groupBy:\n    - key: {group_by}\n{extra}"
    )
}

async fn active_usage(client: &PortkeyClient) -> Vec<UsageLimitsPolicy> {
    let ws = client.resolve_workspace_id("team-a").await.unwrap();
    let filter = ListFilter {
        workspace_id: Some(ws),
        status: Some(PolicyStatus::Active),
        ..Default::default()
    };
    client.usage_limits().list(&filter).await.unwrap()
}

fn client(emu: &EmulatorHandle) -> PortkeyClient {
    PortkeyClient::new(ClientConfig::new(emu.base_url(), ApiKey::new(KEY))).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_shows_every_action_kind_and_sync_converges() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            ulp("stay", "100", "metadata._user", ""),
            ulp("raise", "200", "metadata._user", "")
        ),
    );
    write(
        dir.path(),
        "b.yaml",
        &ulp(
            "regroup",
            "300",
            "metadata._user",
            "  onImmutableChange: Recreate\n",
        ),
    );
    write(
        dir.path(),
        "gone.yaml",
        &ulp("gone", "50", "metadata._user", ""),
    );
    write(
        dir.path(),
        "other.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\ndata: {}\n",
    );

    // Empty Portkey: everything is a create; exit 0 (planned), 2 with --detailed-exitcode.
    let out = cli(&emu, &["plan", "-f", d]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    let out = cli(&emu, &["plan", "-f", d, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", text(&out), err(&out));
    assert!(
        text(&out)
            .contains("Plan: 4 to create, 0 to update, 0 to replace, 0 to archive, 0 unchanged"),
        "{}",
        text(&out)
    );
    assert_eq!(
        emu.control().requests().await.unwrap().writes(),
        0,
        "plan never writes"
    );

    let out = cli(&emu, &["sync", "-f", d]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    assert!(text(&out).contains("Applied 4 change(s)."));
    assert!(
        text(&out).contains("team-a/raise"),
        "status table lists the resources"
    );
    assert_eq!(active_usage(&client(&emu)).await.len(), 4);

    // A second sync is a no-op: zero writes.
    emu.control().clear_requests().await.unwrap();
    let out = cli(&emu, &["sync", "-f", d]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out).contains("Applied 0 change(s)."),
        "{}",
        text(&out)
    );
    assert_eq!(emu.control().requests().await.unwrap().writes(), 0);
    let out = cli(&emu, &["plan", "-f", d, "--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "in sync: exit 0\n{}",
        text(&out)
    );

    // Now: one update, one replace, one unchanged, one archive (with --prune).
    write(
        dir.path(),
        "a.yaml",
        &format!(
            "{}---\n{}",
            ulp("stay", "100", "metadata._user", ""),
            ulp("raise", "800", "metadata._user", "")
        ),
    );
    write(
        dir.path(),
        "b.yaml",
        &ulp(
            "regroup",
            "300",
            "api_key",
            "  onImmutableChange: Recreate\n",
        ),
    );
    std::fs::remove_file(dir.path().join("gone.yaml")).unwrap();
    let out = cli(&emu, &["plan", "-f", d, "--prune", "--detailed-exitcode"]);
    let plan = text(&out);
    assert_eq!(out.status.code(), Some(2), "{plan}");
    assert!(
        plan.contains("~ update policy") && plan.contains("creditLimit: 200 → 800"),
        "{plan}"
    );
    assert!(
        plan.contains("± replace policy") && plan.contains("groupBy: metadata._user → api_key"),
        "{plan}"
    );
    assert!(plan.contains("usage restarts from zero"), "{plan}");
    assert!(plan.contains("= unchanged"), "{plan}");
    assert!(
        plan.contains("- archive policy") && plan.contains("team-a/gone"),
        "{plan}"
    );
    assert!(
        plan.contains(
            "Plan: 0 to create, 1 to update, 1 to replace, 1 to archive, 1 unchanged, 0 blocked."
        ),
        "{plan}"
    );

    // JSON output for CI bots.
    let out = cli(&emu, &["plan", "-f", d, "--prune", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let actions: Vec<&str> = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["action"].as_str().unwrap())
        .collect();
    for a in ["update", "replace", "unchanged", "archive"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    let update = json["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["action"] == "update")
        .unwrap();
    assert_eq!(update["changes"][0]["field"], "creditLimit");
    assert_eq!(
        (
            update["changes"][0]["from"].as_str(),
            update["changes"][0]["to"].as_str()
        ),
        (Some("200"), Some("800"))
    );

    let out = cli(&emu, &["sync", "-f", d, "--prune"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    let remote = active_usage(&client(&emu)).await;
    assert_eq!(remote.len(), 3);
    assert!(
        remote
            .iter()
            .all(|p| !p.name.as_deref().unwrap().contains("team-a/gone"))
    );
    let raise = remote
        .iter()
        .find(|p| p.name.as_deref().unwrap().contains("team-a/raise"))
        .unwrap();
    assert_eq!(raise.credit_limit, Decimal::from(800));
    let regroup = remote
        .iter()
        .find(|p| p.name.as_deref().unwrap().contains("team-a/regroup"))
        .unwrap();
    assert_eq!(regroup.group_by[0].key, "api_key");
    let out = cli(&emu, &["plan", "-f", d, "--prune", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "converged\n{}", text(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_is_guarded_and_never_touches_unmarked_policies() {
    let emu = emulator().await;
    let c = client(&emu);
    let ws = c.resolve_workspace_id("team-a").await.unwrap();
    let body = |name: &str| CreateUsageLimitsPolicy {
        name: name.into(),
        description: None,
        conditions: vec![Condition {
            key: "model".into(),
            value: ConditionValue::One("*".into()),
            excludes: None,
        }],
        group_by: vec![GroupBy {
            key: "api_key".into(),
        }],
        limit_type: UsageLimitType::Cost,
        credit_limit: Decimal::from(10),
        alert_threshold: None,
        periodic_reset: None,
        periodic_reset_days: None,
        next_usage_reset_at: None,
        workspace_id: Some(ws.clone()),
    };
    for i in 0..3 {
        c.usage_limits()
            .create(&body(&format!("old {i} [k8s:ulp:team-a/old-{i}@sync]")))
            .await
            .unwrap();
    }
    // Never pruned: made by hand, another installation's (a cluster's operator), and a marker
    // of an earlier version (no installation: whose it is cannot be told).
    for name in [
        "made by hand, no marker",
        "a cluster's [k8s:ulp:team-a/theirs@c1a2b3c4]",
        "legacy [k8s:ulp:team-a/legacy]",
    ] {
        c.usage_limits().create(&body(name)).await.unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "keep.yaml",
        &ulp("keep", "100", "metadata._user", ""),
    );
    let d = dir.path().to_str().unwrap();

    let out = cli(&emu, &["sync", "-f", d, "--prune", "--max-prune", "2"]);
    assert_eq!(out.status.code(), Some(4), "refused: exit 4");
    assert!(
        text(&out).contains("--prune would archive 3 policies, more than --max-prune 2; refusing"),
        "{}",
        text(&out)
    );
    assert!(err(&out).contains("nothing was changed"));
    assert_eq!(
        active_usage(&c).await.len(),
        6,
        "nothing archived, nothing created"
    );

    let out = cli(&emu, &["sync", "-f", d, "--prune"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    let names: Vec<String> = active_usage(&c)
        .await
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(names.len(), 4, "{names:?}");
    assert!(names.contains(&"made by hand, no marker".to_owned()));
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("[k8s:ulp:team-a/theirs@c1a2b3c4]"))
    );
    assert!(names.iter().any(|n| n.ends_with("[k8s:ulp:team-a/legacy]")));
    assert!(
        names
            .iter()
            .any(|n| n.ends_with("[k8s:ulp:team-a/keep@sync]"))
    );
}

/// Load and validation errors name file, line, resource, field and value (text and JSON), exit
/// 3, and make no Admin API call; a workspace Portkey lacks is a refusal (exit 4).
#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_name_file_line_resource_field_and_value() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "bad.yaml",
        &format!(
            "{}---\n{}",
            ulp("fine", "100", "metadata._user", ""),
            ulp(
                "broken",
                "12.5",
                "metadata._user",
                "  alertThresholdPercent: 120\n"
            )
        ),
    );
    write(dir.path(), "garbage.yaml", "kind: [unclosed\n");
    let out = cli(&emu, &["plan", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3), "{}", err(&out));
    let e = err(&out);
    // Document 2 starts on line 17: creditLimit is its 9th line, alertThresholdPercent its 16th.
    assert!(
        e.contains("bad.yaml:25: UsageLimitPolicy team-a/broken: spec.creditLimit: must be an integer or a quoted decimal string such as \"12.5\""),
        "{e}"
    );
    assert!(
        e.contains("bad.yaml:32: UsageLimitPolicy team-a/broken: spec.alertThresholdPercent: 120 must be at most 99"),
        "{e}"
    );
    assert!(e.contains("garbage.yaml:1: malformed YAML"), "{e}");
    assert!(
        !e.contains("team-a/fine"),
        "the valid document is not reported: {e}"
    );
    assert!(
        e.contains("3 manifest error(s); nothing was read from or sent to Portkey"),
        "{e}"
    );
    assert_eq!(
        emu.control().requests().await.unwrap().total,
        0,
        "no Admin API call on invalid input"
    );

    let out = cli(
        &emu,
        &[
            "plan",
            "-f",
            dir.path().join("bad.yaml").to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let limit = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == "spec.alertThresholdPercent")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert!(
        limit["file"].as_str().unwrap().ends_with("bad.yaml"),
        "{limit}"
    );
    assert_eq!(limit["line"], 32, "{limit}");
    assert_eq!(
        limit["resource"],
        serde_json::json!({"kind": "UsageLimitPolicy", "namespace": "team-a", "name": "broken"})
    );
    assert_eq!(limit["message"], "must be at most 99");
    assert_eq!(limit["value"], "120");
    assert_eq!(limit["class"], "manifest");

    // A workspace that does not exist is refused (exit 4), naming the resource and the value.
    write(
        dir.path(),
        "bad.yaml",
        &ulp("fine", "100", "metadata._user", "")
            .replace("workspace: team-a", "workspace: nowhere"),
    );
    std::fs::remove_file(dir.path().join("garbage.yaml")).unwrap();
    let out = cli(&emu, &["sync", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4), "{}{}", text(&out), err(&out));
    assert!(
        text(&out).contains("bad.yaml:7: UsageLimitPolicy team-a/fine: spec.workspace: \"nowhere\" is not a workspace in Portkey"),
        "{}",
        text(&out)
    );
    assert_eq!(emu.control().requests().await.unwrap().writes(), 0);
}

#[test]
fn built_in_emulator_runs_the_samples() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let out = Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
        .args(["sync", "-f", samples.to_str().unwrap(), "--emulator"])
        .env_remove("PORTKEY_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    assert!(
        err(&out).contains("built-in Portkey Admin API emulator")
            && err(&out).contains("NOT Portkey")
    );
    let table = text(&out);
    assert!(table.contains("Applied 4 change(s)."), "{table}");
    for row in [
        "team-a/team-a-monthly",
        "team-a/team-a-openai-rpm",
        "marketing",
        "team-a/checkout",
        "200 cost; 60 requests rpm",
        "skipped (issued in a cluster)",
        "PEAK USAGE",
        "0 (0%)",
    ] {
        assert!(table.contains(row), "{table}");
    }
    assert!(
        !err(&out).contains('\r'),
        "no progress bar when stderr is not a terminal"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
        .args([
            "plan",
            "-f",
            samples.to_str().unwrap(),
            "--emulator",
            "--detailed-exitcode",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a fresh emulator: changes planned"
    );
}

/// The shared ownership rules in the CLI: policies are read by id before planning (list items
/// of older backends lack the reset fields), adoption stays in the workspace, and two
/// WorkspaceBudgets for one workspace follow the controller's rule.
#[tokio::test(flavor = "multi_thread")]
async fn sync_follows_the_controllers_ownership_rules() {
    let emu = emulator().await;
    let c = client(&emu);
    let ctl = emu.control();
    ctl.set_faults(serde_json::json!({"list_without_reset": true}))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &ulp("monthly", "100", "metadata._user", ""),
    );
    let out = cli(&emu, &["sync", "-f", d]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    let first = active_usage(&c).await.remove(0);
    assert!(
        first
            .name
            .as_deref()
            .unwrap()
            .ends_with("[k8s:ulp:team-a/monthly@sync]")
    );
    ctl.clear_requests().await.unwrap();
    // List items lack periodic_reset: planning against them would re-send the reset (and move
    // it) every run. The policy is read by id instead: nothing to do.
    let out = cli(&emu, &["sync", "-f", d]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    assert_eq!(ctl.requests().await.unwrap().writes(), 0, "{}", text(&out));
    let again = active_usage(&c).await.remove(0);
    assert_eq!(again.next_usage_reset_at, first.next_usage_reset_at);
    ctl.clear_faults().await.unwrap();

    // adoptPolicyId naming another workspace's policy: blocked, nothing created.
    let ws_b = c.resolve_workspace_id("marketing").await.unwrap();
    let theirs: CreateUsageLimitsPolicy = serde_json::from_value(serde_json::json!({
        "name": "marketing budget",
        "conditions": [{"key": "metadata._team", "value": "m"}],
        "group_by": [{"key": "metadata._user"}],
        "type": "cost", "credit_limit": 50, "workspace_id": ws_b,
    }))
    .unwrap();
    let theirs = c.usage_limits().create(&theirs).await.unwrap().id;
    write(
        dir.path(),
        "b.yaml",
        &ulp(
            "grab",
            "100",
            "metadata._user",
            &format!("  adoptPolicyId: {theirs}\n"),
        ),
    );
    // Two WorkspaceBudgets naming one workspace: the first by name wins (manifests have no age).
    for name in ["b-second", "a-first"] {
        write(
            dir.path(),
            &format!("{name}.yaml"),
            &format!(
                "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: WorkspaceBudget\nmetadata:\n  name: {name}\nspec:\n  workspace: marketing\n  rateLimits:\n    - type: requests\n      unit: rpm\n      value: 60\n"
            ),
        );
    }
    ctl.clear_requests().await.unwrap();
    let out = cli(&emu, &["plan", "-f", d]);
    let plan = text(&out);
    let log = ctl.requests().await.unwrap();
    assert!(log.total > 0, "plan read Portkey");
    assert_eq!(
        log.writes(),
        0,
        "plan made no write request: {:?}",
        log.data
    );
    assert!(plan.contains("WorkspaceNotAllowed"), "{plan}");
    assert!(
        plan.contains("Conflict: workspace marketing is managed by WorkspaceBudget a-first"),
        "{plan}"
    );
    let grab = plan.split("UsageLimitPolicy team-a/grab").nth(1).unwrap();
    assert!(
        grab.trim_start().starts_with("! blocked") || grab.contains("! blocked"),
        "{plan}"
    );
    // sync carries out the plan: the blocked adoption creates nothing and leaves team
    // marketing's policy as it was.
    let out = cli(&emu, &["sync", "-f", d]);
    assert!(
        text(&out).contains("WorkspaceNotAllowed"),
        "{}{}",
        text(&out),
        err(&out)
    );
    assert_eq!(
        active_usage(&c).await.len(),
        1,
        "nothing created for the refused adoption"
    );
    let kept = usage_policy_by_id(&c, &theirs).await;
    assert_eq!(kept.credit_limit, Decimal::from(50));
    assert_eq!(kept.name.as_deref(), Some("marketing budget"));
}

/// A child process killed (and reaped) when dropped, also when a test fails.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const BIN: &str = env!("CARGO_BIN_EXE_portkey-budget-operator");

/// Starts the standalone `emulator` on a free port with `args`; returns the child and its
/// base URL, read from the line it prints on stderr (within 30 s, else the test fails).
fn start_emulator(args: &[&str]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args(["--log-level", "warn", "emulator", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads stderr to the end (the pipe never fills), sending the address when it appears.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening at ").nth(1) {
                let url = rest.split_whitespace().next().unwrap_or_default();
                let _ = tx.send((url.to_owned(), line.clone()));
            }
        }
    });
    let (url, line) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the emulator printed the address it listens at");
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/v1"),
        "{line}"
    );
    (child, url)
}

/// `emulator --faults` starts the emulator with the real-world behaviours switched on; a bad
/// fault is refused naming it.
#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_binary_starts_with_faults() {
    let bad = Command::new(BIN)
        .args([
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--faults",
            r#"{"stale_reads": 5}"#,
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(err(&bad).contains("stale_reads"), "{}", err(&bad));

    let (_child, url) = start_emulator(&[
        "--faults",
        r#"{"page_size_cap": 2, "gone_as_forbidden": true}"#,
    ]);
    let faults: Value = reqwest::get(url.replace("/v1", "/_emulator/faults"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(faults["page_size_cap"], 2, "{faults}");
    assert_eq!(faults["gone_as_forbidden"], true, "{faults}");
}

/// The standalone emulator runs the samples as they are, seeded as docs/cli.md shows: from
/// flags (`--workspace`, `--workspace-api-key`, `--api-key`), and from a `--seed` file.
#[test]
fn standalone_emulator_runs_the_samples_as_documented() {
    let samples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let samples = samples.to_str().unwrap();
    let sync = |url: &str, key: &str, extra: &[&str]| {
        Command::new(BIN)
            .args(["sync", "-f", samples, "--admin-api-url", url])
            .args(extra)
            .env("PORTKEY_API_KEY", key)
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    };
    let (_flags, url) = start_emulator(&[
        "--workspace",
        "team-a",
        "--workspace",
        "marketing",
        "--workspace-api-key",
        "team-a/checkout-service",
        "--api-key",
        "demo-admin-key",
    ]);
    // The emulator accepts only the key it was given.
    let refused = sync(&url, "another-key", &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    let out = sync(&url, "demo-admin-key", &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    let table = text(&out);
    assert!(table.contains("Applied 4 change(s)."), "{table}");
    for row in [
        "team-a/team-a-monthly",
        "team-a/team-a-openai-rpm",
        "200 cost; 60 requests rpm",
        "skipped (issued in a cluster)",
    ] {
        assert!(table.contains(row), "{table}");
    }
    let plan = Command::new(BIN)
        .args([
            "plan",
            "-f",
            samples,
            "--admin-api-url",
            &url,
            "--detailed-exitcode",
        ])
        .env("PORTKEY_API_KEY", "demo-admin-key")
        .output()
        .unwrap();
    assert_eq!(plan.status.code(), Some(0), "converged: {}", text(&plan));

    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "seed.yaml",
        "adminApiKeys: [demo-admin-key]\nworkspaces:\n  - team-a\n  - {slug: marketing, id: 2f1d4e8a-1111-4c3b-9d2e-000000000002}\napiKeys:\n  - {workspace: team-a, name: checkout-service}\n",
    );
    let seed = dir.path().join("seed.yaml");
    let (_file, url) = start_emulator(&["--seed", seed.to_str().unwrap()]);
    let out = sync(&url, "demo-admin-key", &[]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    assert!(
        text(&out).contains("Applied 4 change(s)."),
        "{}",
        text(&out)
    );
}

/// A typo'd kind or an unknown version of this API group is a load error with the nearest
/// known name; with `--prune`, nothing is archived (the policy the typo'd manifest declares
/// stays) and the exit code says why. Other groups are skipped with a warning, or refused with
/// `--fail-on-unknown`.
#[tokio::test(flavor = "multi_thread")]
async fn a_typo_in_kind_or_version_is_an_error_and_prune_archives_nothing() {
    let emu = emulator().await;
    let c = client(&emu);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    write(
        dir.path(),
        "a.yaml",
        &ulp("keep", "100", "metadata._user", ""),
    );
    write(
        dir.path(),
        "b.yaml",
        &ulp("typo", "100", "metadata._user", ""),
    );
    write(
        dir.path(),
        "c.yaml",
        &ulp("version", "100", "metadata._user", ""),
    );
    let out = cli(&emu, &["sync", "-f", d, "--prune"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    assert_eq!(active_usage(&c).await.len(), 3);

    write(
        dir.path(),
        "b.yaml",
        &format!(
            "# typo'd kind\n{}",
            ulp("typo", "100", "metadata._user", "")
        )
        .replace("kind: UsageLimitPolicy", "kind: UsageLimitPolicys"),
    );
    write(
        dir.path(),
        "c.yaml",
        &ulp("version", "100", "metadata._user", "").replace("/v1alpha1", "/v1"),
    );
    emu.control().clear_requests().await.unwrap();
    let out = cli(&emu, &["sync", "-f", d, "--prune"]);
    let e = err(&out);
    assert_eq!(
        out.status.code(),
        Some(3),
        "invalid manifests: {}{e}",
        text(&out)
    );
    assert!(
        e.contains("b.yaml:3: UsageLimitPolicys team-a/typo: kind: \"UsageLimitPolicys\" is not a kind of budgets.portkey-operator.io (did you mean UsageLimitPolicy?)"),
        "{e}"
    );
    assert!(
        e.contains("c.yaml:1: UsageLimitPolicy team-a/version: apiVersion: \"budgets.portkey-operator.io/v1\" is not a version of UsageLimitPolicy (did you mean budgets.portkey-operator.io/v1alpha1?)"),
        "{e}"
    );
    assert!(
        e.contains("nothing was read from or sent to Portkey, nothing pruned"),
        "{e}"
    );
    assert_eq!(
        emu.control().requests().await.unwrap().total,
        0,
        "no Admin API call"
    );
    assert_eq!(active_usage(&c).await.len(), 3, "nothing archived");

    // The same as JSON: structured errors.
    let out = cli(&emu, &["plan", "-f", d, "--prune", "-o", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kind = json["errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["field"] == "kind")
        .unwrap_or_else(|| panic!("{json:#}"));
    assert_eq!(kind["line"], 3);
    assert_eq!(kind["resource"]["name"], "typo");
    assert_eq!(kind["value"], "\"UsageLimitPolicys\"");
    assert!(
        kind["message"]
            .as_str()
            .unwrap()
            .contains("did you mean UsageLimitPolicy?")
    );
    assert_eq!(json["items"], serde_json::json!([]));

    // Documents of other groups: one warning each, counted; --fail-on-unknown refuses them.
    write(
        dir.path(),
        "b.yaml",
        &ulp("typo", "100", "metadata._user", ""),
    );
    write(
        dir.path(),
        "c.yaml",
        &ulp("version", "100", "metadata._user", ""),
    );
    write(
        dir.path(),
        "d.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n---\napiVersion: kuadrant.io/v1\nkind: RateLimitPolicy\nmetadata:\n  name: r\n",
    );
    let out = cli(&emu, &["plan", "-f", d, "--detailed-exitcode"]);
    let e = err(&out);
    assert_eq!(out.status.code(), Some(0), "{}{e}", text(&out));
    assert_eq!(e.matches("warning: ").count(), 2, "{e}");
    assert!(
        e.contains("d.yaml:1: skipped v1 ConfigMap x: not a budgets.portkey-operator.io resource"),
        "{e}"
    );
    assert!(
        e.contains("d.yaml:6: skipped kuadrant.io/v1 RateLimitPolicy r"),
        "{e}"
    );
    assert!(
        e.contains("2 document(s) of other API groups skipped"),
        "{e}"
    );
    let out = cli(&emu, &["sync", "-f", d, "--prune", "--fail-on-unknown"]);
    assert_eq!(out.status.code(), Some(3), "{}", err(&out));
    assert!(
        err(&out).contains("d.yaml:6: apiVersion: \"kuadrant.io/v1\""),
        "{}",
        err(&out)
    );
    assert_eq!(active_usage(&c).await.len(), 3, "nothing archived");
}

/// Each failure class has its own exit code: usage 64 (help and version 0), Admin API 1,
/// changes 2 only with --detailed-exitcode, invalid manifests 3 (refusals, 4, are tested
/// with --max-prune, a workspace Portkey lacks and a blocked key).
#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_per_failure_class() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    write(dir.path(), "a.yaml", &ulp("a", "100", "metadata._user", ""));
    let code = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .env("PORTKEY_API_KEY", KEY)
            .output()
            .unwrap();
        (out.status.code(), err(&out))
    };
    for usage in [
        &["plan"][..],
        &["plan", "-f", d, "--no-such-flag"],
        &["sync", "-f", d, "-o", "xml"],
        &["plan", "-f", d, "--max-prune", "many"],
        &[],
    ] {
        let (c, e) = code(usage);
        assert_eq!(c, Some(64), "{usage:?}: {e}");
    }
    assert_eq!(code(&["plan", "--help"]).0, Some(0));
    assert_eq!(code(&["--version"]).0, Some(0));
    // No Admin API key: a usage error, naming what to set.
    let out = Command::new(BIN)
        .args(["plan", "-f", d])
        .env_remove("PORTKEY_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{}", err(&out));
    assert!(err(&out).contains("set PORTKEY_API_KEY or pass --api-key-file"));

    let url = emu.base_url();
    assert_eq!(code(&["plan", "-f", d, "--admin-api-url", &url]).0, Some(0));
    assert_eq!(
        code(&[
            "plan",
            "-f",
            d,
            "--admin-api-url",
            &url,
            "--detailed-exitcode"
        ])
        .0,
        Some(2)
    );
    // --api-key-file is read (and its content never shown).
    write(dir.path(), "key.txt", &format!("{KEY}\n"));
    let key_file = dir.path().join("key.txt");
    let out = Command::new(BIN)
        .args(["plan", "-f", dir.path().join("a.yaml").to_str().unwrap()])
        .args([
            "--admin-api-url",
            &url,
            "--api-key-file",
            key_file.to_str().unwrap(),
        ])
        .env_remove("PORTKEY_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", err(&out));
    assert!(!text(&out).contains(KEY) && !err(&out).contains(KEY));

    // Unreachable Admin API: 1.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (c, e) = code(&[
        "plan",
        "-f",
        dir.path().join("a.yaml").to_str().unwrap(),
        "--admin-api-url",
        &format!("http://127.0.0.1:{port}/v1"),
    ]);
    assert_eq!(c, Some(1), "{e}");

    // Invalid manifest: 3, with or without a reachable API.
    write(
        dir.path(),
        "b.yaml",
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: Budget\n",
    );
    assert_eq!(code(&["plan", "-f", d, "--admin-api-url", &url]).0, Some(3));
}

/// A refused Admin API key is one error, said as such, not one per resource blamed on
/// `spec.workspace`: 401 stops at once; 403 on every request is one error too.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_key_is_reported_once() {
    let emu = emulator().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    write(dir.path(), "a.yaml", &ulp("a", "100", "metadata._user", ""));
    write(dir.path(), "b.yaml", &ulp("b", "100", "metadata._user", ""));
    write(
        dir.path(),
        "c.yaml",
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: WorkspaceBudget\nmetadata:\n  name: m\nspec:\n  workspace: marketing\n  rateLimits:\n    - type: requests\n      unit: rpm\n      value: 60\n",
    );
    let out = Command::new(BIN)
        .args(["sync", "-f", d, "--admin-api-url", &emu.base_url()])
        .env("PORTKEY_API_KEY", "a-wrong-key")
        .output()
        .unwrap();
    let all = format!("{}{}", text(&out), err(&out));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert_eq!(all.matches("HTTP 401").count(), 1, "{all}");
    assert!(
        all.contains("error: the Admin API key was refused (HTTP 401)"),
        "{all}"
    );
    assert!(
        !all.contains("spec.workspace") && !all.contains("a-wrong-key"),
        "{all}"
    );
    assert_eq!(emu.control().requests().await.unwrap().writes(), 0);

    emu.control()
        .set_faults(serde_json::json!({"error_rate": 1.0, "error_status": 403}))
        .await
        .unwrap();
    let out = cli(&emu, &["plan", "-f", d, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "{}", err(&out));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{json:#}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("the Admin API key was refused (HTTP 403) for every request"),
        "{json:#}"
    );
    assert_eq!(errors[0]["class"], "api");
}

/// Every subcommand's help has examples; the help of run, plan, sync and crds names every
/// kind of the API (the CRDs' list), and plan's help lists the exit codes.
#[test]
fn help_has_examples_and_names_every_kind() {
    let help = |cmd: &str| {
        let out = Command::new(BIN).args([cmd, "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        text(&out)
    };
    let kinds: Vec<String> = portkey_budget_operator::api::crds()
        .into_iter()
        .map(|c| c.spec.names.kind)
        .collect();
    assert_eq!(kinds.len(), 4);
    for cmd in ["plan", "sync", "run", "emulator", "crds"] {
        let h = help(cmd);
        assert!(h.contains("Examples:\n  "), "{cmd}: {h}");
        assert!(
            h.contains(&format!("portkey-budget-operator {cmd}")),
            "{cmd}: {h}"
        );
        if cmd != "emulator" {
            for kind in &kinds {
                assert!(h.contains(kind.as_str()), "{cmd} --help lacks {kind}: {h}");
            }
        }
    }
    let plan = help("plan");
    for code in [
        "  2   --detailed-exitcode only",
        "  3   invalid manifests",
        "  64  usage error",
    ] {
        assert!(plan.contains(code), "{plan}");
    }
}

/// `plan`/`sync` for ApiKeyBudgets: an existing key gets its declared fields (the reset schedule
/// kept), a key of another workspace is blocked, and one that issues a key is skipped with
/// nothing written.
#[tokio::test(flavor = "multi_thread")]
async fn sync_manages_existing_keys_and_skips_issued_ones() {
    let emu = emulator().await;
    let c = client(&emu);
    let ctl = emu.control();
    let team_a = c.resolve_workspace_id("team-a").await.unwrap();
    let marketing = c.resolve_workspace_id("marketing").await.unwrap();
    let make = |ws: &str, name: &str| CreateApiKey {
        name: name.into(),
        workspace_id: Some(ws.into()),
        scopes: vec!["completions.write".into()],
        usage_limits: Some(usage_limit(
            UsageLimitType::Cost,
            Decimal::from(50),
            Some(PeriodicReset::Weekly),
        )),
        ..Default::default()
    };
    let mine = service_key(&c, &make(&team_a, "checkout"))
        .await
        .id
        .unwrap();
    let theirs = service_key(&c, &make(&marketing, "ads")).await.id.unwrap();
    let before = c.get_api_key(&mine).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let akb = |name: &str, key: &str, limit: u32| {
        format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: {name}\n  namespace: team-a\nspec:\n  workspace: team-a\n  existing:\n    {key}\n  budget:\n    type: cost\n    creditLimit: {limit}\n    periodicReset: weekly\n  alertEmails: [finance@example.com]\n"
        )
    };
    write(
        dir.path(),
        "a.yaml",
        &akb("checkout", "name: checkout", 120),
    );
    write(
        dir.path(),
        "b.yaml",
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: issued\n  namespace: team-a\nspec:\n  workspace: team-a\n  issue:\n    scopes: [completions.write]\n    secretName: issued-key\n",
    );
    let path = dir.path().to_str().unwrap();
    let out = cli(&emu, &["plan", "-f", path, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}{}", text(&out), err(&out));
    let shown = text(&out);
    assert!(
        shown.contains(&format!("~ update API key {mine}")),
        "{shown}"
    );
    assert!(
        shown.contains("budget: 50 cost (alert (none)) weekly → 120 cost"),
        "{shown}"
    );
    assert!(shown.contains("· skipped"), "{shown}");
    let out = cli(&emu, &["sync", "-f", path]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    let after = c.get_api_key(&mine).await.unwrap();
    assert_eq!(
        after.usage_limits.as_ref().unwrap().credit_limit,
        Decimal::from(120)
    );
    assert_eq!(
        after.usage_limits.as_ref().unwrap().next_usage_reset_at,
        before.usage_limits.as_ref().unwrap().next_usage_reset_at,
        "the weekly schedule was kept"
    );
    assert_eq!(
        after.alert_emails.as_deref(),
        Some(&["finance@example.com".to_owned()][..])
    );
    let log = ctl.requests().await.unwrap();
    assert_eq!(
        log.count("POST", "/v1/api-keys"),
        2,
        "only the test's two creates"
    );
    // Converged: nothing more to do.
    let out = cli(&emu, &["plan", "-f", path, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    // A key of another workspace: blocked, nothing written.
    write(
        dir.path(),
        "a.yaml",
        &akb("checkout", &format!("id: {theirs}"), 999),
    );
    ctl.clear_requests().await.unwrap();
    let out = cli(&emu, &["sync", "-f", path]);
    assert_eq!(out.status.code(), Some(4), "{}{}", text(&out), err(&out));
    assert!(text(&out).contains("WorkspaceNotAllowed"), "{}", text(&out));
    assert_eq!(ctl.requests().await.unwrap().writes(), 0);
    assert_eq!(
        c.get_api_key(&theirs)
            .await
            .unwrap()
            .usage_limits
            .unwrap()
            .credit_limit,
        Decimal::from(50)
    );
}
