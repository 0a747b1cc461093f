//! The Helm chart on the real API server: `helm install` (Helm's own library, helm-sdkpy) in
//! existing-Secret mode creates every object, and the operator binary running **as the chart's
//! ServiceAccount** (a token from the TokenRequest API) with the chart's rendered config
//! reconciles one resource of each kind to Ready: the chart's RBAC is sufficient. It is also
//! least-privilege: that ServiceAccount can read no other Secret and write no other kind.

use std::path::Path;
use std::process::Command;

use crate::support::e2e::*;
use crate::{rlp_in, ulp, wsb};

const RELEASE: &str = "pbo";
const RELEASE_NS: &str = "portkey-system";
const SECRET: &str = "portkey-admin";

/// `helm install` through Helm's Go library (helm-sdkpy), without waiting for Pods (this
/// control plane runs no kubelet).
fn helm_install(kubeconfig: &Path, values: &serde_json::Value) {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/portkey-budget-operator");
    let script = "import asyncio, json, sys\n\
from helm_sdkpy import Configuration, Install\n\
cfg = Configuration(namespace=sys.argv[2], kubeconfig=sys.argv[1], insecure_skip_tls_verify=True)\n\
r = asyncio.run(Install(cfg).run(sys.argv[3], sys.argv[4], values=json.loads(sys.argv[5]), create_namespace=True, wait=False, timeout=120))\n\
print(json.dumps(r, default=str)[:2000])\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(kubeconfig)
        .args([RELEASE_NS, RELEASE])
        .arg(&chart)
        .arg(values.to_string())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "helm install failed (helm-sdkpy: pip install --ignore-requires-python helm-sdkpy==0.1.32): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_chart_installs_and_its_rbac_is_sufficient_and_least_privilege() {
    let Some(env) = Env::start("helm_chart_installs_and_its_rbac_is_sufficient").await else {
        return;
    };
    bounded("helm_chart", async {
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
        // And for real: a read of the other Secret with the ServiceAccount's token is refused.
        let out = Command::new(cp.assets.join("kubectl"))
            .arg(format!("--kubeconfig={}", sa_kubeconfig.display()))
            .args(["get", "secret", "unrelated", "-n", RELEASE_NS])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"));
    })
    .await;
}
