//! Health as GitOps tools compute it: kstatus's documented rules and the Argo CD health scripts
//! shipped in `argocd/`, run by a real Lua interpreter.

#![allow(dead_code)]

use serde_json::Value;

/// kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, generic resources): Terminating
/// while deleted; InProgress when `status.observedGeneration` differs from
/// `metadata.generation`; InProgress when `Reconciling` is True; Failed when `Stalled` is
/// True; else Current.
pub fn kstatus(obj: &Value) -> &'static str {
    if obj["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating";
    }
    let generation = obj["metadata"]["generation"].as_i64();
    let observed = obj["status"]["observedGeneration"].as_i64();
    if observed.is_some() && observed != generation {
        return "InProgress";
    }
    for c in obj["status"]["conditions"].as_array().into_iter().flatten() {
        match (c["type"].as_str(), c["status"].as_str()) {
            (Some("Reconciling"), Some("True")) => return "InProgress",
            (Some("Stalled"), Some("True")) => return "Failed",
            _ => {}
        }
    }
    "Current"
}

pub fn script(kind: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "argocd/resource_customizations/budgets.portkey-operator.io/{kind}/health.lua"
    ));
    std::fs::read_to_string(path).unwrap()
}

/// Runs the Argo CD health script of `kind` on `obj` (as Argo CD does: a global `obj`).
pub fn argo(kind: &str, obj: &Value) -> (String, String) {
    use mlua::LuaSerdeExt;
    let lua = mlua::Lua::new();
    let value = lua.to_value(obj).unwrap();
    lua.globals().set("obj", value).unwrap();
    let hs: mlua::Table = lua.load(script(kind)).eval().unwrap();
    (
        hs.get::<String>("status").unwrap(),
        hs.get::<Option<String>>("message")
            .unwrap()
            .unwrap_or_default(),
    )
}

/// `PBO_WRITE_ARGOCD_TESTDATA=1` refreshes the shipped `health_test.yaml` cases of `kind` from
/// real objects: `obj` is written as `testdata/<case>.yaml` with the health it was judged to have.
pub fn record_case(kind: &str, case: &str, obj: &Value, status: &str, message: &str) {
    if std::env::var_os("PBO_WRITE_ARGOCD_TESTDATA").is_none() {
        return;
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "argocd/resource_customizations/budgets.portkey-operator.io/{kind}"
    ));
    let file = format!("testdata/{}.yaml", case.replace([' ', '(', ')'], "-"));
    std::fs::create_dir_all(dir.join("testdata")).unwrap();
    std::fs::write(dir.join(&file), serde_saphyr::to_string(obj).unwrap()).unwrap();
    let entry = format!(
        "  - healthStatus:\n      status: {status}\n      message: {}\n    inputPath: {file}\n",
        serde_json::to_string(message).unwrap()
    );
    let tests = dir.join("health_test.yaml");
    let mut text = std::fs::read_to_string(&tests).unwrap_or_else(|_| "tests:\n".into());
    if !text.contains(&format!("inputPath: {file}\n")) {
        text.push_str(&entry);
        std::fs::write(tests, text).unwrap();
    }
}
