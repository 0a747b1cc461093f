//! The example PrometheusRule (`config/prometheusrule.yaml`): every rule passes its
//! `promtool test rules` unit tests (`config/prometheusrule-tests.yaml`), and every metric a
//! rule queries is one the operator exports.

use std::path::Path;
use std::process::Command;

use portkey_budget_operator::metrics::{Metrics, PREFIX};
use serde_json::Value;

fn repo(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn rule(path: &str) -> Value {
    serde_saphyr::from_str(&std::fs::read_to_string(repo(path)).unwrap()).unwrap()
}

/// Every `expr` of the PrometheusRule.
fn exprs(rule: &Value) -> Vec<String> {
    rule["spec"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_rule_passes_its_promtool_unit_tests() {
    let promtool = Command::new("promtool").arg("--version").output();
    if promtool.is_err() {
        let what = "promtool is not installed (Debian: apt-get install prometheus)";
        // The same reading of CI as the e2e harness (tests/support/control_plane.rs).
        assert!(
            !std::env::var("CI").is_ok_and(|v| v == "true" || v == "1"),
            "{what}; under CI (true or 1) the alert-rule tests never skip"
        );
        eprintln!("every_rule_passes_its_promtool_unit_tests: skipped ({what})");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let spec = rule("config/prometheusrule.yaml")["spec"].clone();
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_saphyr::to_string(&spec).unwrap(),
    )
    .unwrap();
    std::fs::copy(
        repo("config/prometheusrule-tests.yaml"),
        dir.path().join("tests.yaml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "tests.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Every alert has at least one test case.
    let tests = std::fs::read_to_string(repo("config/prometheusrule-tests.yaml")).unwrap();
    let rules = rule("config/prometheusrule.yaml");
    for group in rules["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let name = r["alert"].as_str().unwrap();
            assert!(
                tests.contains(&format!("alertname: {name}")),
                "{name} has no promtool test"
            );
        }
    }
}

/// A metrics registry with a series in every family, as a running operator with one budget
/// has after a few reconciles.
fn populated() -> Metrics {
    use portkey_budget_operator::controller::conditions::{self, Outcome, reasons};
    use portkey_budget_operator::metrics::BudgetFigures;
    use portkey_budget_operator::portkey::CallRecord;
    let m = Metrics::new();
    m.reconciled(
        "UsageLimitPolicy",
        std::time::Duration::from_millis(5),
        Some("PortkeyServerError"),
    );
    m.api_call(&CallRecord {
        operation: "usage_limits.get",
        method: http::Method::GET,
        status: Some(503),
        attempt: 0,
        duration: std::time::Duration::from_millis(5),
    });
    m.budget(
        "UsageLimitPolicy",
        "team-a",
        "monthly",
        BudgetFigures {
            budget_type: "cost".into(),
            limit: 500.0,
            usage: Some(400.0),
            ratio: Some(0.8),
            alert_ratio: Some(0.75),
            exhausted_buckets: 1,
            next_reset: Some(1),
        },
    );
    let mut c = Vec::new();
    let outcome = Outcome::InForce {
        reason: reasons::IN_FORCE,
        message: String::new(),
    };
    conditions::apply(&mut c, &outcome, Some(1), jiff::Timestamp::now());
    m.outcome("UsageLimitPolicy", "team-a", "monthly", &outcome, &c);
    m.duplicate_archived("UsageLimitPolicy");
    m.last_sync("UsageLimitPolicy/team-a/monthly", jiff::Timestamp::now());
    m
}

#[test]
fn every_metric_a_rule_queries_is_exported() {
    let exposition = populated().encode();
    let pattern = regex::Regex::new(&format!("{PREFIX}_[a-z_]+")).unwrap();
    let mut seen = 0;
    for expr in exprs(&rule("config/prometheusrule.yaml")) {
        for m in pattern.find_iter(&expr) {
            let family = m.as_str().trim_end_matches("_total");
            assert!(
                exposition
                    .lines()
                    .any(|l| l.starts_with(&format!("# TYPE {family} "))),
                "a rule queries {}, which the operator does not export:\n{exposition}",
                m.as_str()
            );
            seen += 1;
        }
    }
    assert!(seen >= 6, "the rules query {seen} metrics");
}

fn readme() -> String {
    std::fs::read_to_string(repo("README.md")).unwrap()
}

/// The README's condition-reason table matches the code: every reason the operator writes is
/// documented, and every Admin API error reason is one of them.
#[test]
fn the_readme_documents_every_condition_reason() {
    use portkey_budget_operator::controller::conditions::reasons;
    let readme = readme();
    for reason in reasons::ALL {
        assert!(
            readme.contains(&format!("`{reason}`")),
            "README.md does not document the condition reason {reason}"
        );
    }
    let errors = [
        portkey_budget_operator::portkey::PortkeyError::Decode {
            message: String::new(),
        },
        portkey_budget_operator::portkey::PortkeyError::Config(String::new()),
    ];
    for e in errors {
        assert!(reasons::ALL.contains(&e.reason()), "{}", e.reason());
    }
    // No reason the code does not emit (old names).
    for stale in ["`ServerError`", "`RateLimited`", "lastSyncTime"] {
        assert!(!readme.contains(stale), "README.md still mentions {stale}");
    }
}

/// The README's metric table matches the exposition, both ways.
#[test]
fn the_readme_documents_every_metric_and_only_those() {
    let exposition = populated().encode();
    let readme = readme();
    let families: Vec<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert!(families.len() >= 18, "{families:?}");
    for family in &families {
        let counter = exposition.contains(&format!("# TYPE {family} counter"));
        let documented = if counter {
            format!("`{family}_total`")
        } else {
            format!("`{family}`")
        };
        assert!(
            readme.contains(&documented),
            "README.md does not document {documented}"
        );
    }
    let pattern = regex::Regex::new(&format!("{PREFIX}_[a-z_]+")).unwrap();
    for m in pattern.find_iter(&readme) {
        let name = m.as_str().trim_end_matches("_total");
        assert!(
            families.iter().any(|f| f == name),
            "README.md names {}, which the operator does not export",
            m.as_str()
        );
    }
}
