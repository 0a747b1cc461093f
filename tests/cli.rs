//! The `plan` / `sync` CLI: the real binary against an emulator the test owns (so state and the
//! request log survive between runs).

use std::path::Path;
use std::process::{Command, Output};

use portkey_budget_operator::emulator::{self, EmulatorConfig, EmulatorHandle, SeedWorkspace};
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::Value;

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

    // Empty Portkey: everything is a create; exit code 2.
    let out = cli(&emu, &["plan", "-f", d]);
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
    let out = cli(&emu, &["plan", "-f", d]);
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
    let out = cli(&emu, &["plan", "-f", d, "--prune"]);
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
    assert_eq!(out.status.code(), Some(2));
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
    let out = cli(&emu, &["plan", "-f", d, "--prune"]);
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
    assert_eq!(out.status.code(), Some(1));
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

#[tokio::test(flavor = "multi_thread")]
async fn validation_errors_name_file_document_and_field() {
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
    assert_eq!(out.status.code(), Some(1));
    let e = err(&out);
    assert!(
        e.contains("bad.yaml#2: spec.creditLimit: must be an integer or a quoted decimal string"),
        "{e}"
    );
    assert!(
        e.contains("bad.yaml#2: spec.alertThresholdPercent: must be at most 99"),
        "{e}"
    );
    assert!(e.contains("garbage.yaml#1: malformed YAML"), "{e}");
    assert!(
        !e.contains("bad.yaml#1"),
        "the valid document is not reported: {e}"
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
    assert_eq!(out.status.code(), Some(1));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        json["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e.as_str().unwrap().contains("spec.creditLimit"))
    );

    // A workspace that does not exist is an error too.
    write(
        dir.path(),
        "bad.yaml",
        &ulp("fine", "100", "metadata._user", "")
            .replace("workspace: team-a", "workspace: nowhere"),
    );
    std::fs::remove_file(dir.path().join("garbage.yaml")).unwrap();
    let out = cli(&emu, &["sync", "-f", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("spec.workspace: Portkey has no workspace \"nowhere\""),
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
    ] {
        assert!(table.contains(row), "{table}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
        .args(["plan", "-f", samples.to_str().unwrap(), "--emulator"])
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
    let out = cli(&emu, &["plan", "-f", d]);
    let plan = text(&out);
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
    assert_eq!(
        active_usage(&c).await.len(),
        1,
        "nothing created for the refused adoption"
    );
}

/// `emulator --faults` starts the emulator with the real-world behaviours switched on; a bad
/// fault is refused naming it.
#[tokio::test(flavor = "multi_thread")]
async fn the_emulator_binary_starts_with_faults() {
    let bad = Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
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

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portkey-budget-operator"))
        .args([
            "emulator",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--faults",
            r#"{"page_size_cap": 2, "gone_as_forbidden": true}"#,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/_emulator/faults");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let faults: Value = loop {
        if let Ok(r) = reqwest::get(&url).await
            && let Ok(v) = r.json::<Value>().await
        {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the emulator did not answer"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(faults["page_size_cap"], 2, "{faults}");
    assert_eq!(faults["gone_as_forbidden"], true, "{faults}");
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
        usage_limits: Some(WorkspaceUsageLimit {
            limit_type: UsageLimitType::Cost,
            credit_limit: Decimal::from(50),
            alert_threshold: None,
            periodic_reset: Some(PeriodicReset::Weekly),
            periodic_reset_days: None,
            next_usage_reset_at: None,
        }),
        ..Default::default()
    };
    let mine = c
        .create_api_key(
            ApiKeyType::Workspace,
            ApiKeySubType::Service,
            &make(&team_a, "checkout"),
        )
        .await
        .unwrap()
        .id
        .unwrap();
    let theirs = c
        .create_api_key(
            ApiKeyType::Workspace,
            ApiKeySubType::Service,
            &make(&marketing, "ads"),
        )
        .await
        .unwrap()
        .id
        .unwrap();
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
    let out = cli(&emu, &["plan", "-f", path]);
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
    let out = cli(&emu, &["plan", "-f", path]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
    // A key of another workspace: blocked, nothing written.
    write(
        dir.path(),
        "a.yaml",
        &akb("checkout", &format!("id: {theirs}"), 999),
    );
    ctl.clear_requests().await.unwrap();
    let out = cli(&emu, &["sync", "-f", path]);
    assert_ne!(out.status.code(), Some(0), "{}{}", text(&out), err(&out));
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
