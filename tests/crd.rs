//! CRD tests: committed YAML equals the code, schema lint, and every admission rule on good and
//! bad objects (OpenAPI schema + CEL, evaluated client-side as the apiserver would).

use kube::CustomResourceExt;
use portkey_budget_operator::api::validate::{FieldError, crd_schema, validate_object};
use portkey_budget_operator::api::{self, UsageLimitPolicy};
use serde_json::{Value, json};

#[test]
fn committed_crds_match_the_code() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let files = api::crd_files();
    assert!(!files.is_empty());
    for (name, yaml) in &files {
        let committed = std::fs::read_to_string(dir.join(name)).unwrap_or_default();
        assert!(
            committed == *yaml,
            "crds/{name} is out of date: run `cargo run -- crds --output-dir crds`"
        );
    }
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(
        on_disk,
        files.len(),
        "crds/ holds a file the code no longer generates"
    );
}

#[test]
fn crd_names_and_columns() {
    let crd = UsageLimitPolicy::crd();
    assert_eq!(crd.spec.group, "budgets.portkey-operator.io");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["ulp".to_owned()][..])
    );
    assert_eq!(
        crd.spec.names.categories.as_deref(),
        Some(&["portkey".to_owned()][..])
    );
    assert_eq!(crd.spec.scope, "Namespaced");
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    let columns: Vec<_> = version
        .additional_printer_columns
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Type",
            "Limit",
            "Reset",
            "Peak%",
            "Exhausted",
            "Ready",
            "Synced",
            "Age"
        ]
    );
    assert!(
        version.subresources.as_ref().unwrap().status.is_some(),
        "status subresource for kubectl wait"
    );
}

/// Walks the schema: no float or unsigned formats, no references or unions the apiserver rejects,
/// and every list and string under `spec` is bounded (CEL cost budget, etcd size).
#[test]
fn schema_lint() {
    fn walk(v: &Value, path: &str, under_spec: bool, problems: &mut Vec<String>) {
        let Some(o) = v.as_object() else { return };
        if let Some(f) = o.get("format").and_then(Value::as_str)
            && (f.starts_with("uint") || f == "double" || f == "float")
        {
            problems.push(format!("{path}: format {f}"));
        }
        for bad in ["$ref", "oneOf", "allOf", "not", "additionalItems"] {
            if o.contains_key(bad) {
                problems.push(format!("{path}: {bad}"));
            }
        }
        if let Some(any) = o.get("anyOf") {
            problems.push(format!("{path}: anyOf {any}"));
        }
        let int_or_string = o.get("x-kubernetes-int-or-string").is_some();
        let has_type = o.contains_key("type")
            || int_or_string
            || o.contains_key("x-kubernetes-preserve-unknown-fields");
        if !has_type && !path.is_empty() {
            problems.push(format!("{path}: no type"));
        }
        if under_spec {
            match o.get("type").and_then(Value::as_str) {
                Some("array") if !o.contains_key("maxItems") => {
                    problems.push(format!("{path}: list without maxItems"))
                }
                Some("string") if !o.contains_key("maxLength") && !o.contains_key("enum") => {
                    problems.push(format!("{path}: string without maxLength"))
                }
                _ => {}
            }
            if int_or_string && !o.contains_key("maxLength") {
                problems.push(format!("{path}: int-or-string without maxLength"));
            }
        }
        if let Some(props) = o.get("properties").and_then(Value::as_object) {
            for (k, sub) in props {
                walk(
                    sub,
                    &format!("{path}.{k}"),
                    under_spec || k == "spec",
                    problems,
                );
            }
        }
        if let Some(items) = o.get("items") {
            walk(items, &format!("{path}[]"), under_spec, problems);
        }
    }
    for crd in api::crds() {
        let mut problems = Vec::new();
        walk(&crd_schema(&crd), "", false, &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd.metadata.name.unwrap()
        );
    }
}

fn good() -> Value {
    json!({
        "apiVersion": "budgets.portkey-operator.io/v1alpha1",
        "kind": "UsageLimitPolicy",
        "metadata": {"name": "team-a-monthly", "namespace": "team-a"},
        "spec": {
            "displayName": "Team A monthly",
            "workspace": "team-a",
            "type": "cost",
            "creditLimit": "500.00",
            "alertThreshold": 400,
            "periodicReset": "monthly",
            "conditions": [{"key": "metadata._team", "value": "team-a"},
                           {"key": "model", "values": ["@openai/*"], "excludes": ["@openai/gpt-4o"]}],
            "groupBy": [{"key": "metadata._user"}]
        }
    })
}

fn with(mutate: impl FnOnce(&mut Value)) -> Value {
    let mut v = good();
    mutate(&mut v);
    v
}

fn errors(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    validate_object(&UsageLimitPolicy::crd(), obj, old)
}

#[test]
fn good_objects_pass() {
    assert_eq!(errors(&good(), None), vec![]);
    let variants = [
        with(|v| v["spec"]["creditLimit"] = json!(500)),
        with(|v| {
            v["spec"]["type"] = json!("tokens");
            v["spec"]["creditLimit"] = json!(1_000_000);
            v["spec"]["alertThreshold"] = json!("800000");
        }),
        with(|v| {
            v["spec"].as_object_mut().unwrap().remove("alertThreshold");
            v["spec"]["alertThresholdPercent"] = json!(80);
            v["spec"].as_object_mut().unwrap().remove("periodicReset");
            v["spec"]["periodicResetDays"] = json!(30);
        }),
        with(|v| {
            v["spec"]["managementPolicy"] = json!("Observe");
            v["spec"]["adoptPolicyId"] = json!("0b6c0c2e-8a3a-4a43-9d55-2f6f3f1d9a01");
        }),
        with(|v| {
            v["spec"]["creditLimit"] = json!("1.5");
            v["spec"]["alertThreshold"] = json!("0.000001");
        }),
    ];
    for v in variants {
        assert_eq!(errors(&v, None), vec![], "{}", v["spec"]);
        // The typed struct reads everything the schema accepts.
        serde_json::from_value::<UsageLimitPolicy>(v).unwrap();
    }
}

#[test]
fn invalid_objects_fail_for_the_stated_reason() {
    let long = "x".repeat(201);
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "missing type",
            with(|v| {
                v["spec"].as_object_mut().unwrap().remove("type");
            }),
            "spec.type",
            "is required",
        ),
        (
            "unknown type",
            with(|v| v["spec"]["type"] = json!("dollars")),
            "spec.type",
            "must be one of: cost, tokens, requests",
        ),
        (
            "missing creditLimit",
            with(|v| {
                v["spec"].as_object_mut().unwrap().remove("creditLimit");
            }),
            "spec.creditLimit",
            "is required",
        ),
        (
            "float creditLimit",
            with(|v| v["spec"]["creditLimit"] = json!(12.5)),
            "spec.creditLimit",
            "floating-point numbers are not accepted",
        ),
        (
            "negative creditLimit",
            with(|v| v["spec"]["creditLimit"] = json!("-5")),
            "spec.creditLimit",
            "does not match",
        ),
        (
            "too many decimals",
            with(|v| v["spec"]["creditLimit"] = json!("1.1234567")),
            "spec.creditLimit",
            "does not match",
        ),
        (
            "creditLimit below $1",
            with(|v| {
                v["spec"]["creditLimit"] = json!("0.5");
                v["spec"].as_object_mut().unwrap().remove("alertThreshold");
            }),
            "spec",
            "creditLimit must be at least 1",
        ),
        (
            "tokens below 100",
            with(|v| {
                v["spec"]["type"] = json!("tokens");
                v["spec"]["creditLimit"] = json!(50);
                v["spec"]["alertThreshold"] = json!(10);
            }),
            "spec",
            "at least 100 for tokens",
        ),
        (
            "fractional tokens",
            with(|v| {
                v["spec"]["type"] = json!("tokens");
                v["spec"]["creditLimit"] = json!("1000.5");
                v["spec"]["alertThreshold"] = json!(10);
            }),
            "spec",
            "creditLimit must be a whole number",
        ),
        (
            "alert at limit",
            with(|v| v["spec"]["alertThreshold"] = json!("500")),
            "spec",
            "alertThreshold must be greater than 0 and less than creditLimit",
        ),
        (
            "alert above limit",
            with(|v| v["spec"]["alertThreshold"] = json!(900)),
            "spec",
            "less than creditLimit",
        ),
        (
            "alert zero",
            with(|v| v["spec"]["alertThreshold"] = json!(0)),
            "spec",
            "greater than 0",
        ),
        (
            "both alert fields",
            with(|v| v["spec"]["alertThresholdPercent"] = json!(80)),
            "spec",
            "set at most one of alertThreshold and alertThresholdPercent",
        ),
        (
            "percent 100",
            with(|v| {
                v["spec"].as_object_mut().unwrap().remove("alertThreshold");
                v["spec"]["alertThresholdPercent"] = json!(100);
            }),
            "spec.alertThresholdPercent",
            "must be at most 99",
        ),
        (
            "percent 0",
            with(|v| {
                v["spec"].as_object_mut().unwrap().remove("alertThreshold");
                v["spec"]["alertThresholdPercent"] = json!(0);
            }),
            "spec.alertThresholdPercent",
            "must be at least 1",
        ),
        (
            "both resets",
            with(|v| v["spec"]["periodicResetDays"] = json!(7)),
            "spec",
            "set at most one of periodicReset and periodicResetDays",
        ),
        (
            "daily reset",
            with(|v| v["spec"]["periodicReset"] = json!("daily")),
            "spec.periodicReset",
            "must be one of: weekly, monthly",
        ),
        (
            "366 days",
            with(|v| {
                v["spec"].as_object_mut().unwrap().remove("periodicReset");
                v["spec"]["periodicResetDays"] = json!(366);
            }),
            "spec.periodicResetDays",
            "must be at most 365",
        ),
        (
            "zero days",
            with(|v| {
                v["spec"].as_object_mut().unwrap().remove("periodicReset");
                v["spec"]["periodicResetDays"] = json!(0);
            }),
            "spec.periodicResetDays",
            "must be at least 1",
        ),
        (
            "no conditions",
            with(|v| v["spec"]["conditions"] = json!([])),
            "spec.conditions",
            "must have at least 1 item",
        ),
        (
            "21 conditions",
            with(|v| {
                v["spec"]["conditions"] = json!(vec![json!({"key": "model", "value": "*"}); 21])
            }),
            "spec.conditions",
            "must have at most 20 items",
        ),
        (
            "condition without value",
            with(|v| v["spec"]["conditions"] = json!([{"key": "model"}])),
            "spec.conditions[0]",
            "set exactly one of value and values",
        ),
        (
            "condition with both",
            with(|v| {
                v["spec"]["conditions"] = json!([{"key": "model", "value": "a", "values": ["b"]}])
            }),
            "spec.conditions[0]",
            "set exactly one of value and values",
        ),
        (
            "empty condition key",
            with(|v| v["spec"]["conditions"] = json!([{"key": "", "value": "a"}])),
            "spec.conditions[0].key",
            "must not be empty",
        ),
        (
            "condition value list",
            with(|v| v["spec"]["conditions"] = json!([{"key": "model", "value": ["a"]}])),
            "spec.conditions[0].value",
            "must be a string",
        ),
        (
            "no groupBy",
            with(|v| v["spec"]["groupBy"] = json!([])),
            "spec.groupBy",
            "must have at least 1 item",
        ),
        (
            "6 groupBy keys",
            with(|v| {
                v["spec"]["groupBy"] = json!(
                    (0..6)
                        .map(|i| json!({"key": format!("metadata.k{i}")}))
                        .collect::<Vec<_>>()
                )
            }),
            "spec.groupBy",
            "must have at most 5 items",
        ),
        (
            "duplicate groupBy",
            with(|v| v["spec"]["groupBy"] = json!([{"key": "api_key"}, {"key": "api_key"}])),
            "spec.groupBy",
            "groupBy keys must be distinct",
        ),
        (
            "long displayName",
            with(|v| v["spec"]["displayName"] = json!(long)),
            "spec.displayName",
            "must be at most 200 characters",
        ),
        (
            "bad workspace",
            with(|v| v["spec"]["workspace"] = json!("team a")),
            "spec.workspace",
            "does not match",
        ),
        (
            "bad adopt id",
            with(|v| v["spec"]["adoptPolicyId"] = json!("policy-1")),
            "spec.adoptPolicyId",
            "does not match",
        ),
        (
            "observe without id",
            with(|v| v["spec"]["managementPolicy"] = json!("Observe")),
            "spec",
            "managementPolicy Observe needs adoptPolicyId",
        ),
        (
            "bad deletionPolicy",
            with(|v| v["spec"]["deletionPolicy"] = json!("Delete")),
            "spec.deletionPolicy",
            "must be one of: Archive, Retain",
        ),
        (
            "bad managementPolicy",
            with(|v| v["spec"]["managementPolicy"] = json!("ReadOnly")),
            "spec.managementPolicy",
            "must be one of: Manage, Observe",
        ),
        (
            "unknown field",
            with(|v| v["spec"]["budget"] = json!(5)),
            "spec.budget",
            "unknown field",
        ),
        (
            "no spec",
            with(|v| {
                v.as_object_mut().unwrap().remove("spec");
            }),
            "spec",
            "is required",
        ),
    ];
    assert!(cases.len() >= 20);
    for (what, obj, field, message) in cases {
        let errs = errors(&obj, None);
        assert!(
            errs.iter()
                .any(|e| e.field == field && e.message.contains(message)),
            "{what}: expected `{field}: …{message}…`, got {errs:#?}"
        );
    }
}

#[test]
fn immutable_fields_need_recreate() {
    let old = good();
    let cases: Vec<(Value, &str)> = vec![
        (
            with(|v| {
                v["spec"]["type"] = json!("requests");
                v["spec"]["alertThreshold"] = json!(400);
            }),
            "type is immutable",
        ),
        (
            with(|v| v["spec"]["groupBy"] = json!([{"key": "api_key"}])),
            "groupBy is immutable",
        ),
        (
            with(|v| v["spec"]["workspace"] = json!("team-b")),
            "workspace is immutable",
        ),
        (
            with(|v| {
                v["spec"].as_object_mut().unwrap().remove("workspace");
            }),
            "workspace is immutable",
        ),
    ];
    for (new, message) in cases {
        let errs = errors(&new, Some(&old));
        assert!(
            errs.iter().any(|e| e.message.contains(message)),
            "{message}: {errs:#?}"
        );
        let mut opted_in = new.clone();
        opted_in["spec"]["onImmutableChange"] = json!("Recreate");
        assert_eq!(
            errors(&opted_in, Some(&old)),
            vec![],
            "{message} with Recreate"
        );
    }
    // Mutable fields change freely.
    let raised = with(|v| v["spec"]["creditLimit"] = json!(800));
    assert_eq!(errors(&raised, Some(&old)), vec![]);
}

fn good_rate() -> Value {
    json!({
        "apiVersion": "budgets.portkey-operator.io/v1alpha1",
        "kind": "RateLimitPolicy",
        "metadata": {"name": "per-user", "namespace": "team-a"},
        "spec": {
            "workspace": "team-a",
            "type": "requests",
            "unit": "rpm",
            "value": 120,
            "conditions": [{"key": "api_key", "value": "*"}],
            "groupBy": [{"key": "metadata._user"}]
        }
    })
}

fn rate_errors(obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    validate_object(
        &portkey_budget_operator::api::RateLimitPolicy::crd(),
        obj,
        old,
    )
}

#[test]
fn rate_limit_policy_rules() {
    assert_eq!(rate_errors(&good_rate(), None), vec![]);
    let mut weekly = good_rate();
    weekly["spec"]["unit"] = json!("rpw");
    weekly["spec"]["type"] = json!("tokens");
    assert_eq!(rate_errors(&weekly, None), vec![]);
    serde_json::from_value::<portkey_budget_operator::api::RateLimitPolicy>(weekly).unwrap();

    let case = |f: &dyn Fn(&mut Value)| {
        let mut v = good_rate();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "zero value",
            case(&|v| v["spec"]["value"] = json!(0)),
            "spec.value",
            "must be at least 1",
        ),
        (
            "huge value",
            case(&|v| v["spec"]["value"] = json!(2_000_000_000_000i64)),
            "spec.value",
            "must be at most 1000000000000",
        ),
        (
            "float value",
            case(&|v| v["spec"]["value"] = json!(1.5)),
            "spec.value",
            "must be an integer",
        ),
        (
            "string value",
            case(&|v| v["spec"]["value"] = json!("120")),
            "spec.value",
            "must be an integer",
        ),
        (
            "rps unit",
            case(&|v| v["spec"]["unit"] = json!("rps")),
            "spec.unit",
            "must be one of: rpm, rph, rpd, rpw",
        ),
        (
            "cost type",
            case(&|v| v["spec"]["type"] = json!("cost")),
            "spec.type",
            "must be one of: requests, tokens",
        ),
        (
            "missing unit",
            case(&|v| {
                v["spec"].as_object_mut().unwrap().remove("unit");
            }),
            "spec.unit",
            "is required",
        ),
        (
            "no conditions",
            case(&|v| v["spec"]["conditions"] = json!([])),
            "spec.conditions",
            "must have at least 1 item",
        ),
        (
            "no groupBy",
            case(&|v| v["spec"]["groupBy"] = json!([])),
            "spec.groupBy",
            "must have at least 1 item",
        ),
        (
            "duplicate groupBy",
            case(&|v| v["spec"]["groupBy"] = json!([{"key": "a"}, {"key": "a"}])),
            "spec.groupBy",
            "groupBy keys must be distinct",
        ),
        (
            "observe without id",
            case(&|v| v["spec"]["managementPolicy"] = json!("Observe")),
            "spec",
            "managementPolicy Observe needs adoptPolicyId",
        ),
        (
            "unknown field",
            case(&|v| v["spec"]["burst"] = json!(5)),
            "spec.burst",
            "unknown field",
        ),
    ];
    for (what, obj, field, message) in cases {
        let errs = rate_errors(&obj, None);
        assert!(
            errs.iter()
                .any(|e| e.field == field && e.message.contains(message)),
            "{what}: expected `{field}: …{message}…`, got {errs:#?}"
        );
    }
    let mut changed = good_rate();
    changed["spec"]["type"] = json!("tokens");
    let errs = rate_errors(&changed, Some(&good_rate()));
    assert!(
        errs.iter().any(|e| e.message.contains("type is immutable")),
        "{errs:#?}"
    );
    changed["spec"]["value"] = json!(10);
    changed["spec"]["type"] = json!("requests");
    assert_eq!(
        rate_errors(&changed, Some(&good_rate())),
        vec![],
        "value and unit change in place"
    );
}

#[test]
fn workspace_budget_rules() {
    use portkey_budget_operator::api::WorkspaceBudget;
    let crd = WorkspaceBudget::crd();
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(
        crd.spec.names.short_names.as_deref(),
        Some(&["wsb".to_owned()][..])
    );
    let good = json!({
        "apiVersion": "budgets.portkey-operator.io/v1alpha1", "kind": "WorkspaceBudget",
        "metadata": {"name": "marketing"},
        "spec": {"workspace": "marketing",
                 "usageLimits": [{"type": "cost", "creditLimit": "500", "alertThreshold": 400, "periodicReset": "monthly"}],
                 "rateLimits": [{"type": "requests", "unit": "rpm", "value": 120}]}
    });
    assert_eq!(validate_object(&crd, &good, None), vec![]);
    serde_json::from_value::<WorkspaceBudget>(good.clone()).unwrap();
    let case = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "requests budget",
            case(&|v| v["spec"]["usageLimits"][0]["type"] = json!("requests")),
            "spec.usageLimits[0]",
            "workspace budgets take type cost or tokens",
        ),
        (
            "two cost budgets",
            case(&|v| {
                v["spec"]["usageLimits"] =
                    json!([{"type": "cost", "creditLimit": 5}, {"type": "cost", "creditLimit": 6}])
            }),
            "spec.usageLimits",
            "at most one usage limit per type",
        ),
        (
            "alert above limit",
            case(&|v| v["spec"]["usageLimits"][0]["alertThreshold"] = json!(600)),
            "spec.usageLimits[0]",
            "alertThreshold must be at least 1 and less than creditLimit",
        ),
        (
            "both resets",
            case(&|v| v["spec"]["usageLimits"][0]["periodicResetDays"] = json!(7)),
            "spec.usageLimits[0]",
            "set at most one of periodicReset and periodicResetDays",
        ),
        (
            "weekly rate",
            case(&|v| v["spec"]["rateLimits"][0]["unit"] = json!("rpw")),
            "spec.rateLimits[0]",
            "workspace rate limits take unit rpm, rph or rpd",
        ),
        (
            "zero rate",
            case(&|v| v["spec"]["rateLimits"][0]["value"] = json!(0)),
            "spec.rateLimits[0].value",
            "must be at least 1",
        ),
        (
            "duplicate rates",
            case(
                &|v| v["spec"]["rateLimits"] = json!([{"type": "requests", "unit": "rpm", "value": 1}, {"type": "requests", "unit": "rpm", "value": 2}]),
            ),
            "spec.rateLimits",
            "at most one rate limit per type and unit",
        ),
        (
            "no workspace",
            case(&|v| {
                v["spec"].as_object_mut().unwrap().remove("workspace");
            }),
            "spec.workspace",
            "is required",
        ),
        (
            "bad deletionPolicy",
            case(&|v| v["spec"]["deletionPolicy"] = json!("Archive")),
            "spec.deletionPolicy",
            "must be one of: Clear, Retain",
        ),
        (
            "float budget",
            case(&|v| v["spec"]["usageLimits"][0]["creditLimit"] = json!(99.5)),
            "spec.usageLimits[0].creditLimit",
            "floating-point",
        ),
    ];
    for (what, obj, field, message) in cases {
        let errs = validate_object(&crd, &obj, None);
        assert!(
            errs.iter()
                .any(|e| e.field == field && e.message.contains(message)),
            "{what}: expected `{field}: …{message}…`, got {errs:#?}"
        );
    }
    let moved = case(&|v| v["spec"]["workspace"] = json!("sales"));
    let errs = validate_object(&crd, &moved, Some(&good));
    assert!(
        errs.iter()
            .any(|e| e.message.contains("workspace is immutable")),
        "{errs:#?}"
    );
}

/// Every sample in `config/samples/` passes the same admission rules the apiserver applies.
#[test]
fn samples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/samples");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: Value = serde_saphyr::from_str(&text).unwrap();
        let kind = value["kind"].as_str().unwrap().to_owned();
        let crd = api::crds()
            .into_iter()
            .find(|c| c.spec.names.kind == kind)
            .expect("a known kind");
        assert_eq!(
            validate_object(&crd, &value, None),
            vec![],
            "{}",
            path.display()
        );
        kinds.push(kind);
    }
    kinds.sort();
    assert_eq!(
        kinds,
        [
            "ApiKeyBudget",
            "ApiKeyBudget",
            "RateLimitPolicy",
            "UsageLimitPolicy",
            "WorkspaceBudget"
        ]
    );
}
