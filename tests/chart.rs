//! The Helm chart: its CRD templates are generated from the code, its alert rules are the
//! example PrometheusRule's, every value is typed and documented
//! in `values.schema.json`, and Helm's own linter (the `helm-sdkpy` package, which embeds Helm's
//! library) accepts the chart with the defaults plus an API key and rejects bad values; no image
//! is published, so `image.repository` is required, with a message saying how to get one. Rendered
//! (through the same library): Secret RBAC follows `operator.watchNamespaces`, the operator's
//! config carries the tenancy and key settings and parses, and the admission policy holds the
//! scope allow-list.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::copy_dir;

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
    // The release namespace's Role (the one holding the Lease), not the issue-keys Roles.
    let role = rbac
        .split("---")
        .find(|d| d.contains("kind: Role\n") && d.contains("leases"))
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
    all["operator"]["singleTenant"] = json!(true);
    all["rbac"]["issueApiKeys"] = json!(true);
    all["apiKeys"]["allowUserKeys"] = json!(true);
    all["apiKeys"]["allowBroadExistingKeys"] = json!(true);
    all["apiKeys"]["allowedScopes"] = json!(["completions.write", "logs.view"]);
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
        (
            "an unknown key under apiKeys",
            json!({"apiKeys": {"allowedScope": ["completions.write"]}}),
        ),
        (
            // The scopes are rendered into the admission policy's CEL: no quotes.
            "a scope with a quote",
            json!({"apiKeys": {"allowedScopes": ["completions.write' || true || '"]}}),
        ),
        (
            "allowUserKeys as a string",
            json!({"apiKeys": {"allowUserKeys": "yes"}}),
        ),
        (
            "an image repository holding a tag",
            json!({"image": {"repository": "portkey-budget-operator:0.1.0"}}),
        ),
        (
            "an image tag with a slash",
            json!({"image": {"tag": "0.1/0"}}),
        ),
        (
            // Namespaces are rendered into Roles and a namespace selector.
            "a watched namespace that is no DNS label",
            json!({"operator": {"watchNamespaces": ["Team_A"]}}),
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

/// What Helm logs while linting the chart with `patch` merged over values.yaml (plus an API
/// key): in lint mode `required` logs its message instead of failing, so this is where the
/// message `helm install` would fail with shows up.
fn lint_log(patch: &Value) -> String {
    let mut values = values();
    values["portkey"]["apiKey"] = json!("pk-admin-key-for-lint");
    merge(&mut values, patch);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portkey-budget-operator");
    copy_dir(&chart(), &copy);
    std::fs::write(
        copy.join("values.yaml"),
        serde_saphyr::to_string(&values).unwrap(),
    )
    .unwrap();
    let script = "import asyncio, sys\n\
from helm_sdkpy import Configuration, Lint\n\
asyncio.run(Lint(Configuration()).run(sys.argv[1]))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&copy)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "Helm's linter could not run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// No image is published: the default `image.repository` is empty and the Deployment template
/// requires it, with a message saying how to get an image and what to set; once set, the
/// image is `<repository>:<tag or appVersion>`.
#[test]
fn the_image_repository_is_required_with_a_message_saying_how_to_get_one() {
    assert_eq!(values()["image"]["repository"], json!(""));
    let log = lint_log(&json!({}));
    let missing: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("image.repository is required"))
        .collect();
    assert!(!missing.is_empty(), "no required-value message: {log}");
    for needed in [
        "no portkey-budget-operator image is published",
        "docker build -t portkey-budget-operator:0.1.0 .",
        "kind load docker-image portkey-budget-operator:0.1.0",
        "minikube image load portkey-budget-operator:0.1.0",
        "push it to your registry",
        "--set image.repository=",
        "docs/install.md",
    ] {
        assert!(
            missing[0].contains(needed),
            "{needed:?} missing: {}",
            missing[0]
        );
    }
    let set = json!({"image": {"repository": "registry.example.com/platform/pbo"}});
    assert!(!lint_log(&set).contains("image.repository is required"));
    let image = |patch: &Value| {
        let objects = render(patch);
        named(&objects, "Deployment", FULLNAME).expect("the Deployment")["spec"]["template"]["spec"]
            ["containers"][0]["image"]
            .clone()
    };
    assert_eq!(
        image(&set),
        json!("registry.example.com/platform/pbo:0.1.0")
    );
    assert_eq!(
        image(&json!({"image": {"repository": "pbo", "tag": "dev-1"}})),
        json!("pbo:dev-1")
    );
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

/// The chart rendered as Helm would install it with `patch` merged over values.yaml (plus an
/// API key): every object of every template but the CRDs, as JSON. helm-sdkpy has no
/// `helm template`; its linter renders every template in lint mode, where `fail` logs its
/// message instead of stopping. A template added to a copy of the chart renders the others
/// (copied under `files/`) through `tpl` and hands the result out base64-encoded through
/// `fail`; the script takes it from the log. The release is Helm's lint release,
/// `test-release`, in no namespace.
fn render(patch: &Value) -> Vec<Value> {
    let mut values = values();
    values["portkey"]["apiKey"] = json!("pk-admin-key-for-render");
    merge(&mut values, patch);
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portkey-budget-operator");
    copy_dir(&chart(), &copy);
    std::fs::write(
        copy.join("values.yaml"),
        serde_saphyr::to_string(&values).unwrap(),
    )
    .unwrap();
    let sources = copy.join("files/pbo-render");
    std::fs::create_dir_all(&sources).unwrap();
    let mut templates = 0;
    for entry in std::fs::read_dir(copy.join("templates")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, sources.join(path.file_name().unwrap())).unwrap();
            templates += 1;
        }
    }
    assert!(templates >= 10, "only {templates} templates found");
    std::fs::write(
        copy.join("templates/zz-pbo-render.yaml"),
        "{{- $out := list }}\n\
{{- range $path, $_ := .Files.Glob \"files/pbo-render/*.yaml\" }}\n\
{{- $out = append $out (tpl ($.Files.Get $path) $) }}\n\
{{- end }}\n\
{{- fail (printf \"PBO-RENDERED:%s\" (join \"\\n---\\n\" $out | b64enc)) }}\n",
    )
    .unwrap();
    let script = "import asyncio, base64, os, re, sys, tempfile\n\
from helm_sdkpy import Configuration, Lint\n\
log = tempfile.TemporaryFile()\n\
saved = os.dup(2)\n\
os.dup2(log.fileno(), 2)\n\
try:\n    asyncio.run(Lint(Configuration()).run(sys.argv[1]))\n\
finally:\n    os.dup2(saved, 2)\n\
log.seek(0)\n\
text = log.read().decode(errors='replace')\n\
m = re.search(r'PBO-RENDERED:([A-Za-z0-9+/=]+)', text)\n\
if not m:\n    sys.exit('no rendered chart in the lint log:\\n' + text[-4000:])\n\
sys.stdout.write(base64.b64decode(m.group(1)).decode())\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(&copy)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the chart could not be rendered: {}\nInstall helm-sdkpy with: pip install --ignore-requires-python helm-sdkpy==0.1.32",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut objects = Vec::new();
    let mut doc = String::new();
    for line in text.lines().chain(std::iter::once("---")) {
        if line.trim_end() == "---" {
            let meaningful = doc
                .lines()
                .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
            if meaningful {
                let object: Value = serde_saphyr::from_str(&doc)
                    .unwrap_or_else(|e| panic!("rendered YAML does not parse: {e}\n{doc}"));
                objects.push(object);
            }
            doc.clear();
        } else {
            doc.push_str(line);
            doc.push('\n');
        }
    }
    objects
}

const FULLNAME: &str = "test-release-portkey-budget-operator";

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn named<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

/// The verbs of the rules of a (Cluster)Role that cover Secrets (or every resource).
fn secret_verbs(role: &Value) -> Vec<String> {
    role["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["resources"]
                .as_array()
                .is_some_and(|rs| rs.iter().any(|x| x == "secrets" || x == "*"))
        })
        .flat_map(|r| r["verbs"].as_array().cloned().unwrap_or_default())
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

const ISSUE_VERBS: [&str; 4] = ["get", "create", "patch", "update"];

#[test]
fn issue_keys_secret_rbac_is_a_cluster_role_only_when_every_namespace_is_watched() {
    let objects = render(&json!({"rbac": {"issueApiKeys": true}}));
    let issue = format!("{FULLNAME}-issue-keys");
    let role = named(&objects, "ClusterRole", &issue).expect("the issue-keys ClusterRole");
    assert_eq!(secret_verbs(role), ISSUE_VERBS);
    let binding = named(&objects, "ClusterRoleBinding", &issue).expect("its binding");
    assert_eq!(binding["roleRef"]["name"], json!(issue));
    assert_eq!(binding["subjects"][0]["name"], json!(FULLNAME));
    assert!(named(&objects, "Role", &issue).is_none());
}

#[test]
fn issue_keys_secret_rbac_follows_watch_namespaces() {
    let objects = render(&json!({
        "rbac": {"issueApiKeys": true},
        "operator": {"watchNamespaces": ["team-a", "team-b"]},
    }));
    let issue = format!("{FULLNAME}-issue-keys");
    // No ClusterRole grants anything on Secrets.
    let cluster_roles = of_kind(&objects, "ClusterRole");
    assert!(!cluster_roles.is_empty());
    for role in cluster_roles {
        assert!(secret_verbs(role).is_empty(), "{role}");
    }
    assert!(named(&objects, "ClusterRoleBinding", &issue).is_none());
    // One Role and RoleBinding per watched namespace, and none elsewhere.
    let roles: Vec<_> = of_kind(&objects, "Role")
        .into_iter()
        .filter(|r| r["metadata"]["name"] == issue.as_str())
        .collect();
    let namespaces: Vec<_> = roles.iter().map(|r| &r["metadata"]["namespace"]).collect();
    assert_eq!(namespaces, [&json!("team-a"), &json!("team-b")]);
    for role in roles {
        assert_eq!(secret_verbs(role), ISSUE_VERBS, "{role}");
        assert!(role["rules"][0].get("resourceNames").is_none());
    }
    let bindings: Vec<_> = of_kind(&objects, "RoleBinding")
        .into_iter()
        .filter(|b| b["metadata"]["name"] == issue.as_str())
        .collect();
    assert_eq!(bindings.len(), 2);
    for (binding, ns) in bindings.iter().zip(["team-a", "team-b"]) {
        assert_eq!(binding["metadata"]["namespace"], json!(ns));
        assert_eq!(binding["roleRef"]["kind"], json!("Role"));
        assert_eq!(binding["roleRef"]["name"], json!(issue));
        assert_eq!(binding["subjects"][0]["kind"], json!("ServiceAccount"));
        assert_eq!(binding["subjects"][0]["name"], json!(FULLNAME));
    }
}

#[test]
fn without_issue_keys_only_the_admin_key_secret_is_readable() {
    let objects = render(&json!({"operator": {"watchNamespaces": ["team-a"]}}));
    for kind in ["ClusterRole", "Role"] {
        for role in of_kind(&objects, kind) {
            let verbs = secret_verbs(role);
            if verbs.is_empty() {
                continue;
            }
            assert_eq!(role["metadata"]["name"], json!(FULLNAME), "{role}");
            assert_eq!(verbs, ["get", "list", "watch"]);
            let rule = &role["rules"][0];
            assert_eq!(
                rule["resourceNames"],
                json!([format!("{FULLNAME}-api-key")])
            );
        }
    }
}

/// The operator config (`operator.yaml` in the ConfigMap) as rendered.
fn rendered_config(objects: &[Value]) -> String {
    named(objects, "ConfigMap", FULLNAME).expect("the ConfigMap")["data"]["operator.yaml"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn the_config_carries_the_tenancy_and_key_settings() {
    let defaults: Value = serde_saphyr::from_str(&rendered_config(&render(&json!({})))).unwrap();
    assert_eq!(defaults["singleTenant"], json!(false));
    assert_eq!(
        defaults["allowedKeyScopes"],
        json!([
            "completions.write",
            "logs.write",
            "prompts.render",
            "mcp.invoke",
            "agents.invoke",
            "guardrails.invoke"
        ])
    );
    assert_eq!(defaults["allowUserKeys"], json!(false));
    assert_eq!(defaults["allowBroadExistingKeys"], json!(false));

    let set: Value = serde_saphyr::from_str(&rendered_config(&render(&json!({
        "operator": {"singleTenant": true},
        "apiKeys": {
            "allowedScopes": ["completions.write", "logs.view"],
            "allowUserKeys": true,
            "allowBroadExistingKeys": true,
        },
    }))))
    .unwrap();
    assert_eq!(set["singleTenant"], json!(true));
    assert_eq!(
        set["allowedKeyScopes"],
        json!(["completions.write", "logs.view"])
    );
    assert_eq!(set["allowUserKeys"], json!(true));
    assert_eq!(set["allowBroadExistingKeys"], json!(true));
}

/// The operator's own parser (which refuses unknown keys and wrong types) accepts the config
/// the chart renders, with the defaults and with every tenancy setting changed.
#[test]
fn the_operator_parses_the_rendered_config() {
    for patch in [
        json!({}),
        json!({
            "operator": {"singleTenant": true, "watchNamespaces": ["team-a"]},
            "apiKeys": {"allowedScopes": ["logs.view"], "allowUserKeys": true, "allowBroadExistingKeys": true},
        }),
    ] {
        let text = rendered_config(&render(&patch));
        let parsed =
            portkey_budget_operator::config::FileConfig::parse(&text).unwrap_or_else(|e| {
                panic!("the operator refuses the chart's config ({patch}): {e}\n{text}")
            });
        let watched: Vec<String> = patch["operator"]["watchNamespaces"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_str().unwrap().to_owned()).collect())
            .unwrap_or_default();
        assert_eq!(parsed.namespaces.unwrap_or_default(), watched);
    }
}

#[test]
fn the_admission_policy_holds_the_allow_list_and_follows_the_values() {
    let policy_name = format!("{FULLNAME}-api-keys");
    let objects = render(&json!({}));
    let policy = named(&objects, "ValidatingAdmissionPolicy", &policy_name).expect("the policy");
    assert_eq!(
        policy["apiVersion"],
        json!("admissionregistration.k8s.io/v1")
    );
    assert_eq!(policy["spec"]["failurePolicy"], json!("Fail"));
    let rule = &policy["spec"]["matchConstraints"]["resourceRules"][0];
    assert_eq!(rule["resources"], json!(["apikeybudgets"]));
    assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
    // A named version, so the API server type-checks the policy against the CRD's schema.
    use kube::Resource;
    assert_eq!(
        rule["apiVersions"],
        json!([portkey_budget_operator::api::ApiKeyBudget::version(&())])
    );
    let allowed = &policy["spec"]["variables"][0];
    assert_eq!(allowed["name"], json!("allowedScopes"));
    // A CEL list literal: the JSON of the chart value.
    let list: Value = serde_json::from_str(allowed["expression"].as_str().unwrap()).unwrap();
    assert_eq!(list, values()["apiKeys"]["allowedScopes"]);
    let validations = policy["spec"]["validations"].as_array().unwrap();
    assert_eq!(validations.len(), 2);
    let scopes_message = validations[0]["messageExpression"].as_str().unwrap();
    assert!(
        scopes_message.starts_with(
            "'spec.issue.scopes: only these scopes may be issued: completions.write, logs.write,"
        ),
        "{scopes_message}"
    );
    assert!(
        validations[1]["message"]
            .as_str()
            .unwrap()
            .starts_with("spec.issue.subType: user keys are not allowed"),
        "{validations:?}"
    );
    let binding =
        named(&objects, "ValidatingAdmissionPolicyBinding", &policy_name).expect("the binding");
    assert_eq!(binding["spec"]["policyName"], json!(policy_name));
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert!(
        binding["spec"].get("matchResources").is_none(),
        "every namespace when none is listed"
    );

    // User keys allowed: no rule about them; watched namespaces: only those.
    let objects = render(&json!({
        "apiKeys": {"allowUserKeys": true},
        "operator": {"watchNamespaces": ["team-a", "team-b"]},
    }));
    let policy = named(&objects, "ValidatingAdmissionPolicy", &policy_name).unwrap();
    let validations = policy["spec"]["validations"].as_array().unwrap();
    assert_eq!(validations.len(), 1, "{validations:?}");
    assert!(!validations[0].to_string().contains("subType"));
    let binding = named(&objects, "ValidatingAdmissionPolicyBinding", &policy_name).unwrap();
    assert_eq!(
        binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"],
        json!([{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}])
    );

    let objects = render(&json!({"apiKeys": {"admissionPolicy": {"enabled": false}}}));
    assert!(of_kind(&objects, "ValidatingAdmissionPolicy").is_empty());
    assert!(of_kind(&objects, "ValidatingAdmissionPolicyBinding").is_empty());
}
