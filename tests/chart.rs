//! The Helm chart: its CRD templates are generated from the code, its alert rules are the
//! example PrometheusRule's, every value is typed and documented
//! in `values.schema.json`, and Helm's own linter (the `helm-sdkpy` package, which embeds Helm's
//! library) accepts the chart with the defaults plus an API key and rejects bad values.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

fn chart() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portkey-budget-operator")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn values() -> Value {
    serde_saphyr::from_str(&read(&chart().join("values.yaml"))).expect("values.yaml parses")
}

fn schema() -> Value {
    serde_json::from_str(&read(&chart().join("values.schema.json"))).expect("schema parses")
}

#[test]
fn chart_crd_templates_are_generated_from_the_code() {
    let dir = chart().join("templates/crds");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected = portkey_budget_operator::api::crd_helm_templates();
    expected.sort();
    assert_eq!(
        files,
        expected.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
        "regenerate with: cargo run -- crds --helm-templates --output-dir charts/portkey-budget-operator/templates/crds"
    );
    for (name, text) in expected {
        assert_eq!(
            read(&dir.join(&name)),
            text,
            "templates/crds/{name} drifted from the code: regenerate with `cargo run -- crds --helm-templates --output-dir charts/portkey-budget-operator/templates/crds`"
        );
        assert!(text.starts_with("{{- if .Values.crds.install }}"));
        assert!(text.contains("helm.sh/resource-policy: keep"));
    }
    assert!(
        !chart().join("crds").exists(),
        "a chart crds/ folder would never be upgraded by helm upgrade"
    );
}

/// The chart's alert rules are the example PrometheusRule's.
#[test]
fn chart_prometheus_rules_are_the_example_rules() {
    let example: Value = serde_saphyr::from_str(&read(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("config/prometheusrule.yaml"),
    ))
    .unwrap();
    let chart_rules: Value =
        serde_saphyr::from_str(&read(&chart().join("files/prometheus-rules.yaml"))).unwrap();
    assert_eq!(example["spec"], chart_rules);
    let dashboard: Value =
        serde_json::from_str(&read(&chart().join("files/grafana-dashboard.json"))).unwrap();
    assert!(dashboard["panels"].as_array().unwrap().len() >= 6);
}

/// Walks values.yaml; every key must be in the schema with a type and a description, and every
/// default must have the declared type.
fn check(path: &str, value: &Value, schema: &Value, problems: &mut Vec<String>) {
    if schema.get("description").and_then(Value::as_str).is_none() {
        problems.push(format!("{path}: no description in values.schema.json"));
    }
    let Some(ty) = schema.get("type").and_then(Value::as_str) else {
        problems.push(format!("{path}: no type in values.schema.json"));
        return;
    };
    let ok = match ty {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64(),
        "boolean" => value.is_boolean(),
        other => {
            problems.push(format!("{path}: unexpected type {other}"));
            true
        }
    };
    if !ok {
        problems.push(format!("{path}: default {value} is not of type {ty}"));
    }
    if let (Some(map), Some(props)) = (
        value.as_object(),
        schema.get("properties").and_then(Value::as_object),
    ) {
        for (key, v) in map {
            match props.get(key) {
                Some(s) => check(&format!("{path}.{key}"), v, s, problems),
                None => problems.push(format!("{path}.{key}: not in values.schema.json")),
            }
        }
    }
}

#[test]
fn every_value_is_typed_and_documented_in_the_schema() {
    let mut problems = Vec::new();
    let schema = schema();
    for (key, v) in values().as_object().unwrap() {
        match schema["properties"].get(key) {
            Some(s) => check(key, v, s, &mut problems),
            None => problems.push(format!("{key}: not in values.schema.json")),
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert_eq!(schema["additionalProperties"], json!(false));
}

#[test]
fn deployment_and_rbac_are_hardened_and_least_privilege() {
    let v = values();
    assert_eq!(v["podSecurityContext"]["runAsNonRoot"], json!(true));
    assert_eq!(
        v["podSecurityContext"]["seccompProfile"]["type"],
        json!("RuntimeDefault")
    );
    assert_eq!(v["securityContext"]["readOnlyRootFilesystem"], json!(true));
    assert_eq!(
        v["securityContext"]["allowPrivilegeEscalation"],
        json!(false)
    );
    assert_eq!(v["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    let deployment = read(&chart().join("templates/deployment.yaml"));
    for needle in [
        "toYaml .Values.podSecurityContext",
        "toYaml .Values.securityContext",
        "toYaml .Values.resources",
        "path: /healthz",
        "path: /readyz",
        "--config=/etc/portkey-budget-operator/operator.yaml",
    ] {
        assert!(
            deployment.contains(needle),
            "deployment.yaml lacks {needle}"
        );
    }
    let rbac = read(&chart().join("templates/rbac.yaml"));
    let cluster_role = rbac.split("---").next().unwrap();
    assert!(cluster_role.contains("kind: ClusterRole"));
    for forbidden in ["secrets", "leases", "\"*\"", "configmaps", "pods"] {
        assert!(
            !cluster_role.contains(forbidden),
            "the ClusterRole must not grant {forbidden}"
        );
    }
    let role = rbac
        .split("---")
        .find(|d| d.contains("kind: Role\n"))
        .unwrap();
    let secret_rule = role
        .split("- apiGroups")
        .find(|r| r.contains("secrets"))
        .unwrap();
    assert!(secret_rule.contains("resourceNames"), "{secret_rule}");
    assert!(
        secret_rule.contains("verbs: [\"get\", \"list\", \"watch\"]"),
        "{secret_rule}"
    );
}

/// Copies the chart with `values` as its values.yaml and runs Helm's linter on it.
fn lint(values: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portkey-budget-operator");
    copy_dir(&chart(), &copy);
    std::fs::write(
        copy.join("values.yaml"),
        serde_saphyr::to_string(values).unwrap(),
    )
    .unwrap();
    let script = "import asyncio, json, sys\n\
from helm_sdkpy import Configuration, Lint\n\
print(json.dumps(asyncio.run(Lint(Configuration()).run(sys.argv[1]))))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&copy)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "Helm's linter could not run: {}\nInstall it with: pip install --ignore-requires-python helm-sdkpy==0.1.32",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("lint output {stdout:?}: {e}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Paths of lint messages at error severity (Helm: 1 info, 2 warning, 3 error).
fn lint_errors(result: &Value) -> Vec<String> {
    result["Messages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["Severity"].as_i64().unwrap_or(0) >= 3)
        .map(|m| m["Path"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn helm_lint_accepts_the_defaults_plus_an_api_key_and_every_option() {
    let mut v = values();
    v["portkey"]["apiKey"] = json!("pk-admin-key-for-lint");
    let result = lint(&v);
    assert_eq!(result["TotalChartsLinted"], json!(1));
    assert!(lint_errors(&result).is_empty(), "{result}");

    let mut all = values();
    all["portkey"]["existingSecret"] = json!("portkey-admin");
    all["metrics"]["serviceMonitor"]["enabled"] = json!(true);
    all["metrics"]["prometheusRule"]["enabled"] = json!(true);
    all["metrics"]["grafanaDashboard"]["enabled"] = json!(true);
    all["crds"]["keep"] = json!(false);
    all["networkPolicy"]["enabled"] = json!(true);
    all["networkPolicy"]["apiServerCIDRs"] = json!(["10.0.0.1/32"]);
    all["operator"]["dryRun"] = json!(true);
    all["operator"]["watchNamespaces"] = json!(["team-a", "team-b"]);
    all["replicaCount"] = json!(3);
    let result = lint(&all);
    assert!(lint_errors(&result).is_empty(), "{result}");
}

#[test]
fn helm_lint_rejects_values_the_schema_forbids() {
    for (what, patch) in [
        ("replicaCount as a string", json!({"replicaCount": "two"})),
        (
            "an unknown log format",
            json!({"operator": {"logFormat": "xml"}}),
        ),
        (
            "a duration without a unit",
            json!({"operator": {"usageRefreshInterval": "60"}}),
        ),
        ("an unknown top-level key", json!({"replicas": 2})),
        (
            "a write rate of zero",
            json!({"operator": {"adminApiWriteRate": 0}}),
        ),
    ] {
        let mut v = values();
        v["portkey"]["apiKey"] = json!("pk-admin-key-for-lint");
        merge(&mut v, &patch);
        let result = lint(&v);
        assert!(
            lint_errors(&result).contains(&"values.yaml".to_owned()),
            "{what}: lint should fail on values.yaml: {result}"
        );
    }
}

fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// The operator config the chart renders into its ConfigMap uses only keys the operator
/// accepts (its parser refuses unknown keys): each must be documented in config/operator.yaml,
/// whose parsing a unit test checks.
#[test]
fn the_chart_config_uses_only_operator_config_keys() {
    let example = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config/operator.yaml"));
    let documented = |key: &str| {
        example.lines().any(|l| {
            let l = l.trim_start().trim_start_matches("# ").trim_start();
            l.starts_with(&format!("{key}:"))
        })
    };
    let configmap = read(&chart().join("templates/configmap.yaml"));
    let body = configmap
        .split("operator.yaml: |")
        .nth(1)
        .expect("the ConfigMap holds operator.yaml");
    let mut keys = 0;
    for line in body.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('#') || trimmed.starts_with("{{") || trimmed.is_empty() {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        keys += 1;
        assert!(
            documented(key),
            "the chart sets {key:?}, which config/operator.yaml does not document"
        );
    }
    assert!(keys >= 15, "only {keys} keys found");
}
