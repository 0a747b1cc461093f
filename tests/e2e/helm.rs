//! The Helm chart on the real API server: `helm install` (Helm's own library, helm-sdkpy) in
//! existing-Secret mode creates every object, and the operator binary running **as the chart's
//! ServiceAccount** (a token from the TokenRequest API) with the chart's rendered config
//! reconciles one resource of each kind to Ready: the chart's RBAC is sufficient. It is also
//! least-privilege: that ServiceAccount can read no other Secret and write no other kind. With
//! `operator.watchNamespaces`, its Secret access is limited to those namespaces, and the chart's
//! ValidatingAdmissionPolicy makes the API server refuse issued scopes outside
//! `apiKeys.allowedScopes` and user keys.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portkey_budget_operator::portkey::{ApiKeySubType, ApiKeyType, CreateApiKey};

use crate::support::e2e::*;
use crate::support::fixtures::copy_dir;
use crate::{rlp_in, ulp, wsb};

const RELEASE: &str = "pbo";
const RELEASE_NS: &str = "portkey-system";
const SECRET: &str = "portkey-admin";

fn chart_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portkey-budget-operator")
}

/// The image the tests name: no image is published, so every install sets one (docs/install.md);
/// these control planes run no kubelet, so it is never pulled.
const IMAGE_REPOSITORY: &str = "portkey-budget-operator";

/// A Helm action through Helm's Go library (helm-sdkpy), never waiting for Pods (this control
/// plane runs no kubelet): `install` / `upgrade` (with `values`, plus `image.repository` unless
/// they name an `image`) or `uninstall`.
fn helm(kubeconfig: &Path, action: &str, chart: &Path, values: &serde_json::Value) {
    let mut values = values.clone();
    if values.get("image").is_none() {
        values["image"] = serde_json::json!({"repository": IMAGE_REPOSITORY});
    }
    if let Err(e) = helm_result(kubeconfig, action, chart, &values) {
        panic!(
            "helm {action} failed (helm-sdkpy: pip install --ignore-requires-python helm-sdkpy==0.1.32): {e}"
        );
    }
}

/// A Helm action with `values` exactly as given: Helm's answer, or its error.
fn helm_result(
    kubeconfig: &Path,
    action: &str,
    chart: &Path,
    values: &serde_json::Value,
) -> Result<String, String> {
    let script = "import asyncio, json, sys\n\
from helm_sdkpy import Configuration, Install, Upgrade, Uninstall\n\
cfg = Configuration(namespace=sys.argv[2], kubeconfig=sys.argv[1], insecure_skip_tls_verify=True)\n\
action, release, chart, values = sys.argv[3], sys.argv[4], sys.argv[5], json.loads(sys.argv[6])\n\
r = Install(cfg).run(release, chart, values=values, create_namespace=True, wait=False, timeout=120, take_ownership=True) if action == 'install' else (Upgrade(cfg).run(release, chart, values=values, wait=False, timeout=120) if action == 'upgrade' else Uninstall(cfg).run(release, wait=False, timeout=120))\n\
print(json.dumps(asyncio.run(r), default=str)[:2000])\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(kubeconfig)
        .args([RELEASE_NS, action, RELEASE])
        .arg(chart)
        .arg(values.to_string())
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn helm_install(kubeconfig: &Path, values: &serde_json::Value) {
    helm(kubeconfig, "install", &chart_dir(), values);
}

/// Installs the chart with its defaults (and a key): what a user's first `helm install` does.
pub fn install_for_crds(kubeconfig: &Path) {
    helm_install(kubeconfig, &serde_json::json!({"portkey": {"apiKey": "k"}}));
}

/// The metric families a dashboard panel or an alert rule of the chart queries.
fn queried_metrics() -> Vec<String> {
    let pattern = regex::Regex::new("portkey_budget_operator_[a-z_]+").unwrap();
    let mut names: Vec<String> = [
        "files/grafana-dashboard.json",
        "files/prometheus-rules.yaml",
    ]
    .iter()
    .flat_map(|f| {
        let text = std::fs::read_to_string(chart_dir().join(f)).unwrap();
        pattern
            .find_iter(&text)
            .map(|m| m.as_str().to_owned())
            .collect::<Vec<_>>()
    })
    .map(|m| {
        m.trim_end_matches("_total")
            .trim_end_matches("_bucket")
            .to_owned()
    })
    .collect();
    names.sort();
    names.dedup();
    names
}

/// The metrics of a running operator, from its `/metrics` (its address from its log).
async fn scrape(op: &Operator) -> String {
    let address = eventually(
        "the metrics address in the log",
        std::time::Duration::from_secs(30),
        || async {
            let log = op.log_text();
            let line = log.lines().find(|l| l.contains("serving /metrics"))?;
            // Text (`address=…`) or JSON (`"address":"…"`) logs.
            let (at, end) = match line.find("address=") {
                Some(i) => (i + "address=".len(), ' '),
                None => (line.find("\"address\":\"")? + "\"address\":\"".len(), '"'),
            };
            Some(line[at..].split(end).next()?.to_owned())
        },
    )
    .await;
    reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_installs_and_its_rbac_is_sufficient_and_least_privilege() {
    e2e("helm_chart_installs_and_its_rbac_is_sufficient", |env| async move {
        let cp = &env.cp;
        cp.kubectl(&["create", "namespace", RELEASE_NS]);
        cp.kubectl(&[
            "create",
            "secret",
            "generic",
            SECRET,
            "-n",
            RELEASE_NS,
            &format!("--from-literal=api-key={KEY}"),
        ]);
        // Another Secret in the same namespace, which the operator must not be able to read.
        cp.kubectl(&[
            "create",
            "secret",
            "generic",
            "unrelated",
            "-n",
            RELEASE_NS,
            "--from-literal=password=hunter2",
        ]);
        helm_install(
            &cp.kubeconfig,
            &serde_json::json!({
                "portkey": {"existingSecret": SECRET, "adminApiUrl": env.emu.base_url()},
                "operator": {"usageRefreshInterval": "2s", "resyncInterval": "2s"},
                "replicaCount": 2,
            }),
        );

        // Every object of the chart exists.
        let fullname = "pbo-portkey-budget-operator";
        let metrics = format!("{fullname}-metrics");
        for (kind, name, ns) in [
            ("deployment", fullname, Some(RELEASE_NS)),
            ("serviceaccount", fullname, Some(RELEASE_NS)),
            ("configmap", fullname, Some(RELEASE_NS)),
            ("service", &metrics, Some(RELEASE_NS)),
            ("poddisruptionbudget", fullname, Some(RELEASE_NS)),
            ("role", fullname, Some(RELEASE_NS)),
            ("rolebinding", fullname, Some(RELEASE_NS)),
            ("clusterrole", fullname, None),
            ("clusterrolebinding", fullname, None),
        ] {
            let mut args = vec!["get", kind, name, "-o", "name"];
            if let Some(ns) = ns {
                args.extend(["-n", ns]);
            }
            assert!(!cp.kubectl(&args).trim().is_empty(), "{kind}/{name}");
        }
        let sa = env.jsonpath(
            "deployment",
            fullname,
            Some(RELEASE_NS),
            "{.spec.template.spec.serviceAccountName}",
        );
        assert_eq!(sa, fullname);
        let secret_ref = env.jsonpath("secret", SECRET, Some(RELEASE_NS), "{.metadata.name}");
        assert_eq!(
            secret_ref, SECRET,
            "existing-Secret mode keeps the user's Secret"
        );
        assert!(
            !cp.kubectl(&["get", "secrets", "-n", RELEASE_NS, "-o", "name"])
                .contains(&format!("secret/{fullname}")),
            "existing-Secret mode creates no Secret of its own"
        );

        // The chart's rendered operator config, as the Pod would mount it.
        let config = env.jsonpath(
            "configmap",
            fullname,
            Some(RELEASE_NS),
            r"{.data.operator\.yaml}",
        );
        assert!(config.contains(&format!("name: \"{SECRET}\"")), "{config}");
        let config_file = cp.dir.path().join("operator.yaml");
        std::fs::write(&config_file, &config).unwrap();

        // The operator as the chart's ServiceAccount: API key from the Secret, the Lease in
        // the release namespace, everything through the chart's RBAC.
        let sa_kubeconfig = cp.service_account_kubeconfig(RELEASE_NS, &sa);
        let _op = Operator::start(
            cp,
            &sa_kubeconfig,
            &env.emu.base_url(),
            "operator-as-sa.log",
            "pbo-0",
            &["--config", config_file.to_str().unwrap()],
            &[("POD_NAMESPACE", RELEASE_NS)],
        );
        cp.apply(&ulp("budget", 500));
        cp.apply(&rlp_in(NS, "rate", 60, ""));
        cp.apply(&wsb("workspace", 900, ""));
        env.wait_ready("ulp/budget", Some(NS));
        env.wait_ready("rlp/rate", Some(NS));
        env.wait_ready("wsb/workspace", None);
        assert_eq!(env.owned_usage("budget").await.len(), 1);
        assert_eq!(env.active_rates(WS).await.len(), 1);
        let lease_holder = cp.kubectl(&[
            "get",
            "lease",
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.items[*].spec.holderIdentity}",
        ]);
        assert!(lease_holder.starts_with("pbo-0"), "{lease_holder}");
        // Events were recorded (RBAC for events.k8s.io).
        let events = cp.kubectl(&["get", "events.events.k8s.io", "-n", NS, "-o", "name"]);
        assert!(!events.trim().is_empty(), "no Events recorded");
        // Every metric the chart's dashboard and alert rules query is exported by this
        // running operator.
        let exposition = scrape(&_op).await;
        let queried = queried_metrics();
        assert!(queried.len() >= 8, "{queried:?}");
        for name in &queried {
            assert!(
                exposition.lines().any(|l| l.starts_with(&format!("# TYPE {name} "))),
                "the chart queries {name}, which the running operator does not export:\n{exposition}"
            );
        }

        // And the deletion path (finalizers) works with the same permissions.
        cp.kubectl(&[
            "delete",
            "ulp",
            "budget",
            "-n",
            NS,
            "--wait=true",
            "--timeout=60s",
        ]);
        assert!(env.owned_usage("budget").await.is_empty());

        // Key rotation without restart: Portkey accepts only the new key, the Secret changes,
        // and the operator carries on.
        let new_key = "rotated-admin-key";
        env.emu.control().set_api_keys(&[new_key]).await.unwrap();
        let rotated = format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {SECRET}\n  namespace: {RELEASE_NS}\nstringData:\n  api-key: {new_key}\n"
        );
        cp.apply(&rotated);
        env.portkey
            .set_api_key(&portkey_budget_operator::portkey::ApiKey::new(new_key))
            .unwrap();
        cp.apply(&ulp("rotated", 600));
        env.wait_ready("ulp/rotated", Some(NS));
        assert_eq!(env.owned_usage("rotated").await.len(), 1);
        let log = _op.log_text();
        assert!(log.contains("the Admin API key changed"), "{log}");
        assert!(!log.contains(new_key) && !log.contains(KEY), "a key in the log");

        // Least privilege, asked of the API server's authorizer.
        let user = format!("system:serviceaccount:{RELEASE_NS}:{sa}");
        let allowed = [
            ("get", format!("secrets/{SECRET}"), Some(RELEASE_NS)),
            (
                "watch",
                "usagelimitpolicies.budgets.portkey-operator.io".into(),
                None,
            ),
            (
                "patch",
                "workspacebudgets.budgets.portkey-operator.io".into(),
                None,
            ),
        ];
        for (verb, resource, ns) in &allowed {
            assert!(
                cp.can_i(&user, verb, resource, *ns),
                "{user} should {verb} {resource}"
            );
        }
        let forbidden = [
            ("get", "secrets/unrelated", Some(RELEASE_NS)),
            ("list", "secrets", Some(RELEASE_NS)),
            ("get", "secrets", Some(NS)),
            ("list", "secrets", None),
            ("create", "secrets", Some(RELEASE_NS)),
            (
                "update",
                &format!("secrets/{SECRET}") as &str,
                Some(RELEASE_NS),
            ),
            (
                "create",
                "usagelimitpolicies.budgets.portkey-operator.io",
                Some(NS),
            ),
            (
                "delete",
                "usagelimitpolicies.budgets.portkey-operator.io",
                Some(NS),
            ),
            (
                "delete",
                "workspacebudgets.budgets.portkey-operator.io",
                None,
            ),
            ("create", "deployments.apps", Some(RELEASE_NS)),
            ("create", "pods", Some(NS)),
            ("create", "configmaps", Some(RELEASE_NS)),
            ("update", "namespaces", None),
            (
                "create",
                "customresourcedefinitions.apiextensions.k8s.io",
                None,
            ),
            (
                "update",
                "leases.coordination.k8s.io/someone-else",
                Some(RELEASE_NS),
            ),
            ("create", "leases.coordination.k8s.io", Some(NS)),
            (
                "create",
                "clusterrolebindings.rbac.authorization.k8s.io",
                None,
            ),
            ("impersonate", "serviceaccounts", Some(RELEASE_NS)),
        ];
        for (verb, resource, ns) in forbidden {
            assert!(
                !cp.can_i(&user, verb, resource, ns),
                "{user} must not {verb} {resource} in {ns:?}"
            );
        }
        // It may watch its own Secret by name, and nothing else.
        assert!(cp.can_i(&user, "watch", &format!("secrets/{SECRET}"), Some(RELEASE_NS)));
        assert!(!cp.can_i(&user, "watch", "secrets", Some(RELEASE_NS)));
        // And for real: a read of the other Secret with the ServiceAccount's token is refused.
        let out = Command::new(cp.assets.join("kubectl"))
            .arg(format!("--kubeconfig={}", sa_kubeconfig.display()))
            .args(["get", "secret", "unrelated", "-n", RELEASE_NS])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));

        // ApiKeyBudgets through the chart's RBAC. Managing an existing key needs no Secret
        // access; issuing one does (rbac.issueApiKeys): without it the resource stops before
        // any key is made, and with it (helm upgrade) the key lands in its Secret.
        let existing = env
            .portkey
            .create_api_key(
                ApiKeyType::Workspace,
                ApiKeySubType::Service,
                &CreateApiKey {
                    name: "by-hand".into(),
                    workspace_id: Some(WS.into()),
                    scopes: vec!["completions.write".into()],
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .id
            .unwrap();
        cp.apply(&format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: by-hand\n  namespace: {NS}\nspec:\n  workspace: e2e\n  existing:\n    id: {existing}\n  budget:\n    type: cost\n    creditLimit: 25\n"
        ));
        env.wait_ready("akb/by-hand", Some(NS));
        let issued = format!(
            "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: issued\n  namespace: {NS}\nspec:\n  workspace: e2e\n  issue:\n    scopes: [completions.write]\n    secretName: issued-key\n"
        );
        cp.apply(&issued);
        eventually("the Secret write refused", Duration::from_secs(60), || async {
            let message = env.jsonpath(
                "akb",
                "issued",
                Some(NS),
                r#"{.status.conditions[?(@.type=="Ready")].message}"#,
            );
            message.contains("forbidden").then_some(message)
        })
        .await;
        let keys = env.portkey.list_api_keys(Some(WS)).await.unwrap();
        assert_eq!(keys.len(), 1, "no key issued without Secret access: {keys:?}");
        assert!(!cp.can_i(&user, "create", "secrets", Some(NS)));
        helm(
            &cp.kubeconfig,
            "upgrade",
            &chart_dir(),
            &serde_json::json!({
                "portkey": {"existingSecret": SECRET, "adminApiUrl": env.emu.base_url()},
                "operator": {"usageRefreshInterval": "2s", "resyncInterval": "2s"},
                "replicaCount": 2,
                "rbac": {"issueApiKeys": true},
            }),
        );
        assert!(cp.can_i(&user, "create", "secrets", Some(NS)));
        assert!(cp.can_i(&user, "patch", "secrets/issued-key", Some(NS)));
        assert!(!cp.can_i(&user, "list", "secrets", Some(NS)), "never list");
        assert!(!cp.can_i(&user, "watch", "secrets", None), "never watch");
        // A changed annotation reconciles at once (instead of after the error backoff).
        cp.kubectl(&["annotate", "akb", "issued", "-n", NS, "retry=now"]);
        env.wait_ready("akb/issued", Some(NS));
        let holder = env.jsonpath(
            "secret",
            "issued-key",
            Some(NS),
            r"{.metadata.annotations.budgets\.portkey-operator\.io/key-id}",
        );
        assert_eq!(
            holder,
            env.jsonpath("akb", "issued", Some(NS), "{.status.keyId}")
        );
    })
    .await;
}

/// A child process killed (and reaped) when dropped.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An ApiKeyBudget issuing a key with `scopes` (and `extra` lines under `issue`, indented by
/// four spaces).
fn issuing_akb(ns: &str, name: &str, scopes: &[&str], extra: &str) -> String {
    format!(
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: ApiKeyBudget\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  workspace: e2e\n  issue:\n    scopes: [{}]\n    secretName: {name}-key\n{extra}",
        scopes.join(", ")
    )
}

/// The chart's tenant guards on the real API server, with `operator.watchNamespaces` and
/// `rbac.issueApiKeys` set. Its ValidatingAdmissionPolicy type-checks against the CRD and makes
/// the API server refuse an ApiKeyBudget asking for a scope outside `apiKeys.allowedScopes`
/// (`policies.delete`) or for a `user` key, naming the field, and admits an allowed one; it
/// re-checks updates that change the spec, not those that leave it (a resource written before
/// the policy can still be annotated, and its finalizer removed); it applies in the watched
/// namespace only. The operator's ServiceAccount may get/create/patch/update Secrets in the
/// watched namespace and in no other, and no ClusterRole grants Secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_admission_policy_and_secret_rbac_follow_the_tenancy_values() {
    let Some(assets) = crate::support::control_plane::require_assets(
        "helm_chart_admission_policy_and_secret_rbac_follow_the_tenancy_values",
    ) else {
        return;
    };
    // The policy's type checking is reported by kube-controller-manager's
    // validatingadmissionpolicy-status-controller.
    let kcm = assets.join("kube-controller-manager");
    if !kcm.is_file() {
        let what =
            "KUBEBUILDER_ASSETS has no kube-controller-manager (../shared/k8s/envtest.sh ships it)";
        assert!(!crate::support::control_plane::under_ci(), "{what}");
        eprintln!(
            "helm_chart_admission_policy_and_secret_rbac_follow_the_tenancy_values: skipped ({what})"
        );
        return;
    }
    bounded("helm_tenancy", async {
        let cp = crate::support::control_plane::ControlPlane::start(assets);
        let mut status_controller = Command::new(&kcm);
        status_controller.args([
            format!("--kubeconfig={}", cp.kubeconfig.display()),
            "--controllers=validatingadmissionpolicy-status-controller".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            format!(
                "--secure-port={}",
                crate::support::control_plane::free_port()
            ),
            format!("--cert-dir={}", cp.dir.path().join("vap-kcm-certs").display()),
        ]);
        let _status_controller = KilledOnDrop(crate::support::control_plane::spawn_logged(
            status_controller,
            &cp.dir.path().join("vap-status-controller.log"),
        ));
        let elsewhere = "unwatched-budgets";
        cp.kubectl(&["create", "namespace", NS]);
        cp.kubectl(&["create", "namespace", elsewhere]);
        // A resource written before the policy existed, asking for a scope the chart's
        // allow-list does not hold (the chart then takes over these CRDs).
        cp.install_crds();
        cp.apply(&issuing_akb(NS, "legacy", &["completions.write", "policies.delete"], ""));
        helm_install(
            &cp.kubeconfig,
            &serde_json::json!({
                "portkey": {"apiKey": "k"},
                "operator": {"watchNamespaces": [NS]},
                "rbac": {"issueApiKeys": true},
            }),
        );
        let policy = "pbo-portkey-budget-operator-api-keys";

        // The API server type-checked every expression against the CRD's schema.
        let warnings = eventually(
            "the admission policy type-checked",
            Duration::from_secs(60),
            || async {
                let checked = cp.kubectl(&[
                    "get",
                    "validatingadmissionpolicy",
                    policy,
                    "-o",
                    "jsonpath={.metadata.generation}/{.status.observedGeneration}/{.status.typeChecking.expressionWarnings}",
                ]);
                let mut parts = checked.splitn(3, '/');
                let (generation, observed) = (parts.next()?, parts.next()?);
                (!generation.is_empty() && generation == observed)
                    .then(|| parts.next().unwrap_or_default().to_owned())
            },
        )
        .await;
        assert!(warnings.is_empty(), "type-check warnings: {warnings}");

        // The policy is in force once a server-side dry run of a refused resource fails.
        let forbidden_scope = issuing_akb(NS, "wants-policies", &["completions.write", "policies.delete"], "");
        eventually("the admission policy in force", Duration::from_secs(60), || async {
            let out = cp.kubectl_stdin(&["create", "--dry-run=server"], &forbidden_scope);
            (!out.status.success()).then_some(())
        })
        .await;
        let refused = cp.apply_refused(&forbidden_scope);
        assert!(
            refused.contains(&format!("ValidatingAdmissionPolicy '{policy}'"))
                && refused.contains("spec.issue.scopes: only these scopes may be issued: completions.write, logs.write, prompts.render, mcp.invoke, agents.invoke, guardrails.invoke")
                && refused.contains("not allowed: policies.delete"),
            "{refused}"
        );
        let user_key = issuing_akb(
            NS,
            "acts-as-a-user",
            &["completions.write"],
            "    subType: user\n    userId: someone-else\n",
        );
        let refused = cp.apply_refused(&user_key);
        assert!(
            refused.contains("spec.issue.subType: user keys are not allowed by the operator"),
            "{refused}"
        );
        cp.apply(&issuing_akb(NS, "allowed", &["completions.write", "logs.write"], ""));
        assert!(cp.kubectl(&["get", "akb", "allowed", "-n", NS, "-o", "name"]).contains("allowed"));
        for refused_name in ["wants-policies", "acts-as-a-user"] {
            let out = cp.kubectl_raw(&["get", "akb", refused_name, "-n", NS]);
            assert!(!out.status.success(), "{refused_name} was stored");
        }
        // A spec change is checked again: the admitted resource cannot widen its scopes.
        let refused = cp.apply_refused(&issuing_akb(NS, "allowed", &["completions.write", "workspace_users.create"], ""));
        assert!(refused.contains("not allowed: workspace_users.create"), "{refused}");

        // The resource written before the policy: an update that leaves its spec alone is
        // admitted (annotations, finalizers), one that changes it is checked.
        cp.kubectl(&["annotate", "akb", "legacy", "-n", NS, "note=kept"]);
        cp.kubectl(&[
            "patch", "akb", "legacy", "-n", NS, "--type", "merge", "-p",
            r#"{"metadata":{"finalizers":["budgets.portkey-operator.io/finalizer"]}}"#,
        ]);
        let refused = cp.apply_refused(&issuing_akb(NS, "legacy", &["policies.delete"], ""));
        assert!(refused.contains("spec.issue.scopes"), "{refused}");
        cp.kubectl(&["delete", "akb", "legacy", "-n", NS, "--wait=false"]);
        cp.kubectl(&[
            "patch", "akb", "legacy", "-n", NS, "--type", "merge", "-p",
            r#"{"metadata":{"finalizers":null}}"#,
        ]);
        cp.kubectl(&["wait", "--for=delete", "akb/legacy", "-n", NS, "--timeout=30s"]);

        // Outside the watched namespaces the policy does not apply (the operator does not
        // act there either).
        cp.apply(&issuing_akb(elsewhere, "wants-policies", &["policies.delete"], ""));

        // Secret RBAC: a Role in the watched namespace, nothing cluster-wide.
        let user = "system:serviceaccount:portkey-system:pbo-portkey-budget-operator";
        for verb in ["get", "create", "patch", "update"] {
            assert!(cp.can_i(user, verb, "secrets", Some(NS)), "{verb} secrets in {NS}");
            assert!(
                !cp.can_i(user, verb, "secrets", Some(elsewhere)),
                "{verb} secrets in {elsewhere}"
            );
        }
        for verb in ["list", "watch", "delete"] {
            assert!(!cp.can_i(user, verb, "secrets", Some(NS)), "{verb} secrets in {NS}");
        }
        assert!(!cp.can_i(user, "get", "secrets", None), "cluster-wide Secret access");
        assert!(!cp.can_i(user, "create", "secrets", Some(RELEASE_NS)));
        let cluster_roles = cp.kubectl(&["get", "clusterroles", "-o", "json"]);
        let cluster_roles: serde_json::Value = serde_json::from_str(&cluster_roles).unwrap();
        let ours: Vec<_> = cluster_roles["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["metadata"]["name"].as_str().unwrap().starts_with("pbo-"))
            .collect();
        assert_eq!(ours.len(), 1, "only the operator's own ClusterRole: {ours:?}");
        for role in ours {
            assert!(
                !role["rules"].to_string().contains("secrets"),
                "a ClusterRole grants Secrets: {role}"
            );
        }
    })
    .await;
}

/// No image is published, so a `helm install` that names none fails before it creates
/// anything, saying what to set and where the install guide is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_without_an_image_fails_early_saying_what_to_set() {
    let Some(assets) = crate::support::control_plane::require_assets(
        "helm_install_without_an_image_fails_early_saying_what_to_set",
    ) else {
        return;
    };
    bounded("helm_no_image", async {
        let cp = crate::support::control_plane::ControlPlane::start(assets);
        let error = helm_result(
            &cp.kubeconfig,
            "install",
            &chart_dir(),
            &serde_json::json!({"portkey": {"apiKey": "k"}}),
        )
        .expect_err("an install without image.repository must fail");
        for needed in [
            "image.repository is required",
            "no portkey-budget-operator image is published",
            "docker build -t portkey-budget-operator:0.1.0 .",
            "kind load docker-image",
            "docs/install.md",
        ] {
            assert!(
                error.contains(needed),
                "the error lacks {needed:?}: {error}"
            );
        }
        // Nothing was created: no CRD, no release namespace object, no release record.
        let crds = cp.kubectl(&["get", "crd", "-o", "name"]);
        assert!(!crds.contains("portkey-operator.io"), "{crds}");
        let objects = cp.kubectl(&[
            "get",
            "all,secrets,configmaps",
            "-n",
            RELEASE_NS,
            "-o",
            "name",
        ]);
        assert!(!objects.contains(RELEASE), "{objects}");

        // The same values with an image install.
        helm(
            &cp.kubeconfig,
            "install",
            &chart_dir(),
            &serde_json::json!({"portkey": {"apiKey": "k"}}),
        );
        let image = cp.kubectl(&[
            "get",
            "deployment",
            "pbo-portkey-budget-operator",
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ]);
        assert_eq!(image, format!("{IMAGE_REPOSITORY}:0.1.0"));
    })
    .await;
}

/// CRDs managed by the chart: install the previous chart (its WorkspaceBudget CRD without the
/// `limitOwnership` field added since), create resources, `helm upgrade` to the current chart:
/// the CRDs are upgraded (the new field is kept, not pruned) and every resource survives;
/// `helm uninstall` keeps the CRDs and the resources (`crds.keep`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them() {
    let Some(assets) = crate::support::control_plane::require_assets(
        "helm_upgrade_upgrades_the_crds_and_uninstall_keeps_them",
    ) else {
        return;
    };
    bounded("helm_upgrade", async {
        let cp = crate::support::control_plane::ControlPlane::start(assets);
        // The previous chart: the same chart at version 0.0.9, before limitOwnership existed.
        let previous = cp.dir.path().join("previous-chart");
        copy_dir(&chart_dir(), &previous);
        let chart_yaml = std::fs::read_to_string(previous.join("Chart.yaml")).unwrap();
        std::fs::write(
            previous.join("Chart.yaml"),
            chart_yaml.replace("\nversion: 0.1.0", "\nversion: 0.0.9"),
        )
        .unwrap();
        let crd = previous.join("templates/crds/workspacebudgets.budgets.portkey-operator.io.yaml");
        let text = std::fs::read_to_string(&crd).unwrap();
        let start = text
            .find("            limitOwnership:")
            .expect("the field in the template");
        let end = start + text[start..].find("            rateLimits:").unwrap();
        std::fs::write(&crd, format!("{}{}", &text[..start], &text[end..])).unwrap();

        let values = serde_json::json!({"portkey": {"apiKey": "k"}});
        helm(&cp.kubeconfig, "install", &previous, &values);
        cp.wait_crds_established();
        cp.kubectl(&["create", "namespace", NS]);
        cp.apply(&ulp("kept", 600));
        let with_field = wsb("marketing", 500, "  limitOwnership: All\n");
        let refused = cp.apply_refused(&with_field);
        assert!(
            refused.contains("limitOwnership"),
            "the previous CRD does not know the field: {refused}"
        );
        cp.apply(&wsb("marketing", 500, ""));
        let field = || {
            cp.kubectl(&[
                "get",
                "wsb",
                "marketing",
                "-o",
                "jsonpath={.spec.limitOwnership}",
            ])
        };

        helm(&cp.kubeconfig, "upgrade", &chart_dir(), &values);
        eventually(
            "the upgraded CRD",
            std::time::Duration::from_secs(60),
            || async {
                let schema = cp.kubectl(&[
                    "get",
                    "crd",
                    "workspacebudgets.budgets.portkey-operator.io",
                    "-o",
                    "json",
                ]);
                schema.contains("limitOwnership").then_some(())
            },
        )
        .await;
        cp.apply(&with_field);
        assert_eq!(field(), "All", "the upgraded CRD accepts the new field");
        assert!(
            cp.kubectl(&["get", "ulp", "kept", "-n", NS, "-o", "name"])
                .contains("kept")
        );

        helm(&cp.kubeconfig, "uninstall", &chart_dir(), &values);
        let crds = cp.kubectl(&["get", "crd", "-o", "name"]);
        assert_eq!(crds.lines().count(), 4, "CRDs kept: {crds}");
        assert!(
            cp.kubectl(&["get", "ulp", "kept", "-n", NS, "-o", "name"])
                .contains("kept")
        );
        assert!(
            cp.kubectl(&["get", "wsb", "marketing", "-o", "name"])
                .contains("marketing")
        );
        let keep = cp.kubectl(&[
            "get",
            "crd",
            "usagelimitpolicies.budgets.portkey-operator.io",
            "-o",
            r"jsonpath={.metadata.annotations.helm\.sh/resource-policy}",
        ]);
        assert_eq!(keep, "keep");
    })
    .await;
}
