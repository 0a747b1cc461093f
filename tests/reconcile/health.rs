//! Health as GitOps tools compute it, on the objects the reconcile really writes: kstatus's
//! documented rules (Flux, `kubectl wait`-style tooling) and the Argo CD health checks shipped
//! in `argocd/` run by a real Lua interpreter, for each kind across: fresh create not yet
//! visible, in force, spec changed with the PUT refused (403) or failing (503), a terminal
//! error, paused, and deletion.

use crate::harness::*;
use portkey_budget_operator::controller::{rate, workspace};
use serde_json::Value;

pub(crate) use crate::support::health::{argo, kstatus, script};

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ulp,
    Rlp,
    Wsb,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ulp => "UsageLimitPolicy",
            Kind::Rlp => "RateLimitPolicy",
            Kind::Wsb => "WorkspaceBudget",
        }
    }

    fn ns(self) -> &'static str {
        match self {
            Kind::Wsb => "",
            _ => NS,
        }
    }

    /// Applies the resource with `limit` (and `workspace`).
    fn apply(self, env: &Env, name: &str, limit: u32, workspace: &str) {
        match self {
            Kind::Ulp => {
                let mut s = spec();
                s.credit_limit = Money(Decimal::from(limit));
                s.alert_threshold = None;
                s.workspace = Some(workspace.into());
                env.kube.apply(&ulp(name, s));
            }
            Kind::Rlp => {
                let mut o = rlp(name, i64::from(limit), "rpm");
                o.spec.workspace = Some(workspace.into());
                env.kube.apply(&o);
            }
            Kind::Wsb => env
                .kube
                .apply(&wsb(name, workspace, limit, "2026-11-01T00:00:00Z")),
        }
    }

    async fn reconcile(self, env: &Env, name: &str) -> bool {
        let result = match self {
            Kind::Ulp => match env.kube.get::<UsageLimitPolicy>(NS, name) {
                Some(o) => usage::reconcile(&o, &env.ctx).await.map(|_| ()),
                None => return true,
            },
            Kind::Rlp => match env.kube.get::<RateLimitPolicy>(NS, name) {
                Some(o) => rate::reconcile(&o, &env.ctx).await.map(|_| ()),
                None => return true,
            },
            Kind::Wsb => match env.kube.get::<WorkspaceBudget>("", name) {
                Some(o) => workspace::reconcile(&o, &env.ctx).await.map(|_| ()),
                None => return true,
            },
        };
        result.is_ok()
    }

    fn object(self, env: &Env, name: &str) -> Value {
        match self {
            Kind::Ulp => serde_json::to_value(env.kube.get::<UsageLimitPolicy>(NS, name)),
            Kind::Rlp => serde_json::to_value(env.kube.get::<RateLimitPolicy>(NS, name)),
            Kind::Wsb => serde_json::to_value(env.kube.get::<WorkspaceBudget>("", name)),
        }
        .unwrap()
    }

    fn delete(self, env: &Env, name: &str) {
        match self {
            Kind::Ulp => env.kube.delete::<UsageLimitPolicy>(NS, name),
            Kind::Rlp => env.kube.delete::<RateLimitPolicy>(NS, name),
            Kind::Wsb => env.kube.delete::<WorkspaceBudget>("", name),
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Ulp => "usagelimitpolicies",
            Kind::Rlp => "ratelimitpolicies",
            Kind::Wsb => "workspacebudgets",
        }
    }
}

/// The condition of this type in an object's status (JSON).
fn condition_json(obj: &Value, type_: &str) -> Value {
    let conditions = obj["status"]["conditions"].as_array().unwrap();
    let found = conditions.iter().find(|c| c["type"] == type_);
    found
        .unwrap_or_else(|| panic!("no {type_} condition: {obj:#}"))
        .clone()
}

/// Checks kstatus and the Argo CD health of one object; returns it.
fn expect(
    kind: Kind,
    env: &Env,
    name: &str,
    when: &str,
    kstatus_want: &str,
    argo_want: &str,
) -> Value {
    let obj = kind.object(env, name);
    assert_eq!(
        kstatus(&obj),
        kstatus_want,
        "{kind:?} {when}: kstatus\n{obj:#}"
    );
    let (status, message) = argo(kind.name(), &obj);
    assert_eq!(
        status, argo_want,
        "{kind:?} {when}: Argo CD health ({message})\n{obj:#}"
    );
    // `PBO_WRITE_ARGOCD_TESTDATA=1` refreshes the shipped health_test.yaml cases from these
    // real objects.
    crate::support::health::record_case(kind.name(), when, &obj, &status, &message);
    obj
}

async fn scenarios(kind: Kind) {
    let env = env().await;
    let ctl = env.emu.control();
    let n = "budget";

    // Fresh create that Portkey does not show yet (policies only: workspaces exist).
    if !matches!(kind, Kind::Wsb) {
        ctl.set_faults(json!({"read_after_write_lag_ms": 600_000}))
            .await
            .unwrap();
        kind.apply(&env, "lagging", 500, "team-a");
        kind.reconcile(&env, "lagging").await;
        expect(
            kind,
            &env,
            "lagging",
            "fresh create not visible",
            "InProgress",
            "Progressing",
        );
        ctl.clear_faults().await.unwrap();
    }

    // In force.
    kind.apply(&env, n, 500, "team-a");
    assert!(kind.reconcile(&env, n).await);
    expect(kind, &env, n, "in force", "Current", "Healthy");

    // Spec changed; the key may not update (403): only a human can fix it.
    env.fail_next(1000, "PUT", 403).await;
    kind.apply(&env, n, 700, "team-a");
    assert!(!kind.reconcile(&env, n).await);
    let obj = expect(kind, &env, n, "PUT refused", "Failed", "Degraded");
    let stalled = condition_json(&obj, "Stalled");
    assert!(
        stalled["message"].as_str().unwrap().contains("scope")
            || stalled["message"].as_str().unwrap().contains("key"),
        "{stalled}"
    );
    let ready = condition_json(&obj, "Ready");
    assert_eq!(
        ready["status"], "False",
        "not Ready while the old limit is enforced"
    );

    // Spec changed; the PUT keeps failing transiently (503): in progress.
    env.fail_next(1000, "PUT", 503).await;
    kind.apply(&env, n, 800, "team-a");
    assert!(!kind.reconcile(&env, n).await);
    expect(kind, &env, n, "PUT failing", "InProgress", "Progressing");
    // The same failure again writes no status (stable messages).
    let writes = env.kube.writes().len();
    assert!(!kind.reconcile(&env, n).await);
    assert_eq!(
        env.kube.writes().len(),
        writes,
        "{kind:?}: an unchanged failure writes nothing"
    );
    ctl.clear_faults().await.unwrap();
    assert!(kind.reconcile(&env, n).await);
    expect(kind, &env, n, "recovered", "Current", "Healthy");

    // Paused: no writes, reported as suspended.
    env.kube.replace_raw(kind.plural(), kind.ns(), n, |o| {
        o["metadata"]["annotations"][PAUSED_ANNOTATION] = json!("true");
    });
    assert!(kind.reconcile(&env, n).await);
    expect(kind, &env, n, "paused", "Current", "Suspended");
    env.kube.replace_raw(kind.plural(), kind.ns(), n, |o| {
        o["metadata"]["annotations"]
            .as_object_mut()
            .unwrap()
            .remove(PAUSED_ANNOTATION);
    });
    assert!(kind.reconcile(&env, n).await);
    expect(kind, &env, n, "resumed", "Current", "Healthy");

    // A terminal error: an unknown workspace.
    kind.apply(&env, "lost", 500, "nowhere");
    kind.reconcile(&env, "lost").await;
    expect(kind, &env, "lost", "terminal error", "Failed", "Degraded");

    // Deletion that Portkey refuses to carry out.
    let method = if matches!(kind, Kind::Wsb) {
        "PUT"
    } else {
        "DELETE"
    };
    env.fail_next(1000, method, 403).await;
    kind.delete(&env, n);
    kind.reconcile(&env, n).await;
    expect(
        kind,
        &env,
        n,
        "deletion blocked",
        "Terminating",
        if matches!(kind, Kind::Wsb) {
            "Progressing"
        } else {
            "Degraded"
        },
    );
    ctl.clear_faults().await.unwrap();
    assert!(kind.reconcile(&env, n).await);
    assert_eq!(kind.object(&env, n), Value::Null, "{kind:?}: deleted");
}

#[tokio::test]
async fn usage_limit_policy_health() {
    scenarios(Kind::Ulp).await;
}

#[tokio::test]
async fn rate_limit_policy_health() {
    scenarios(Kind::Rlp).await;
}

#[tokio::test]
async fn workspace_budget_health() {
    scenarios(Kind::Wsb).await;
}

/// The `health_test.yaml` cases shipped beside each script (Argo CD's own format), run by
/// the same interpreter; and the three kinds' scripts are one script.
#[test]
fn shipped_argocd_health_tests_pass() {
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("argocd/resource_customizations/budgets.portkey-operator.io");
    let first = script("UsageLimitPolicy");
    let mut cases = 0;
    for kind in [
        "UsageLimitPolicy",
        "RateLimitPolicy",
        "WorkspaceBudget",
        "ApiKeyBudget",
    ] {
        assert_eq!(
            script(kind),
            first,
            "{kind}: the health scripts are identical"
        );
        let dir = base.join(kind);
        let tests: Value =
            serde_saphyr::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap())
                .unwrap();
        for t in tests["tests"].as_array().unwrap() {
            let input = t["inputPath"].as_str().unwrap();
            let obj: Value =
                serde_saphyr::from_str(&std::fs::read_to_string(dir.join(input)).unwrap()).unwrap();
            let (status, message) = argo(kind, &obj);
            assert_eq!(
                status,
                t["healthStatus"]["status"].as_str().unwrap(),
                "{kind} {input}"
            );
            assert_eq!(
                message,
                t["healthStatus"]["message"].as_str().unwrap(),
                "{kind} {input}"
            );
            cases += 1;
        }
    }
    assert!(cases >= 15, "{cases} cases");
}
