//! The attacker of the tenancy tests (#28): a ServiceAccount `tenant` in `NS` holding a
//! namespace-admin Role on the operator's resources (all verbs on `usagelimitpolicies`,
//! `ratelimitpolicies`, `apikeybudgets` and their `/status`, in its namespaces) and nothing else,
//! acting through kubectl with its own token. [`Env::tenant`] checks up front, with the API
//! server's authorizer, that it can patch status and cannot touch Namespaces, Secrets or other
//! namespaces: what the tests make it do is what such a user can really do.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use super::e2e::{Env, NS, OPERATOR_NS};

/// The tenant's ServiceAccount (in `NS`).
pub const TENANT: &str = "tenant";
/// The API group of the operator's resources.
pub const GROUP: &str = "budgets.portkey-operator.io";
/// The namespaced kinds a tenant manages (plural resource names).
pub const TENANT_RESOURCES: [&str; 3] =
    ["usagelimitpolicies", "ratelimitpolicies", "apikeybudgets"];

/// kubectl as the tenant.
pub struct Tenant {
    kubectl: PathBuf,
    pub kubeconfig: PathBuf,
    /// `system:serviceaccount:<NS>:tenant`.
    pub user: String,
}

fn role(ns: &str) -> String {
    let resources: Vec<String> = TENANT_RESOURCES
        .iter()
        .flat_map(|r| [r.to_string(), format!("{r}/status")])
        .collect();
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: {TENANT}
  namespace: {ns}
rules:
  - apiGroups: [{GROUP}]
    resources: [{}]
    verbs: ["*"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: {TENANT}
  namespace: {ns}
subjects:
  - kind: ServiceAccount
    name: {TENANT}
    namespace: {NS}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: {TENANT}
"#,
        resources.join(", ")
    )
}

impl Env {
    /// Creates the tenant (its ServiceAccount in `NS`, its Role and RoleBinding in `NS` and in
    /// each of `extra_namespaces`, which must exist), checks its rights, and returns kubectl as
    /// the tenant.
    pub fn tenant(&self, extra_namespaces: &[&str]) -> Tenant {
        let cp = &self.cp;
        cp.kubectl(&["create", "serviceaccount", TENANT, "-n", NS]);
        let namespaces: Vec<&str> = std::iter::once(NS)
            .chain(extra_namespaces.iter().copied())
            .collect();
        for ns in &namespaces {
            cp.apply(&role(ns));
        }
        let user = format!("system:serviceaccount:{NS}:{TENANT}");
        // What the tenant may do: everything on the group's resources and their status, in
        // its namespaces.
        for ns in &namespaces {
            for r in TENANT_RESOURCES {
                let resource = format!("{r}.{GROUP}");
                for verb in [
                    "get", "list", "watch", "create", "patch", "update", "delete",
                ] {
                    assert!(
                        cp.can_i(&user, verb, &resource, Some(ns)),
                        "the tenant should {verb} {resource} in {ns}"
                    );
                }
                for verb in ["patch", "update"] {
                    assert!(
                        cp.can_i_sub(&user, verb, &resource, Some("status"), Some(ns)),
                        "the tenant should {verb} {resource}/status in {ns}"
                    );
                }
            }
        }
        // And nothing else: no Namespaces (so no binding), no Secrets, no RBAC, no other
        // namespace, no cluster-scoped kind of the group.
        let mut forbidden: Vec<(&str, String, Option<&str>)> = vec![
            ("patch", "namespaces".into(), None),
            ("update", "namespaces".into(), None),
            ("patch", format!("namespaces/{NS}"), None),
            ("create", "namespaces".into(), None),
            ("create", format!("apikeybudgets.{GROUP}"), Some("default")),
            ("patch", format!("apikeybudgets.{GROUP}"), Some(OPERATOR_NS)),
            ("create", format!("workspacebudgets.{GROUP}"), None),
            (
                "create",
                "customresourcedefinitions.apiextensions.k8s.io".into(),
                None,
            ),
            ("impersonate", "serviceaccounts".into(), Some(NS)),
        ];
        for ns in &namespaces {
            for (verb, resource) in [
                ("get", "secrets"),
                ("list", "secrets"),
                ("create", "secrets"),
                ("patch", "secrets"),
                ("create", "roles.rbac.authorization.k8s.io"),
                ("create", "rolebindings.rbac.authorization.k8s.io"),
                ("create", "serviceaccounts"),
                ("create", "pods"),
            ] {
                forbidden.push((verb, resource.into(), Some(ns)));
            }
        }
        for (verb, resource, ns) in &forbidden {
            assert!(
                !cp.can_i(&user, verb, resource, *ns),
                "the tenant must not {verb} {resource} in {ns:?}"
            );
        }
        let tenant = Tenant {
            kubectl: cp.assets.join("kubectl"),
            kubeconfig: cp.service_account_kubeconfig(NS, TENANT),
            user,
        };
        // For real, with its own token: reading a Secret and binding its namespace are refused.
        for args in [
            vec!["get", "secrets", "-n", NS],
            vec![
                "annotate",
                "namespace",
                NS,
                "budgets.portkey-operator.io/workspace=other",
            ],
        ] {
            let out = tenant.kubectl_raw(&args);
            assert!(
                !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("forbidden"),
                "the tenant must not be able to run kubectl {args:?}"
            );
        }
        tenant
    }
}

impl Tenant {
    fn cmd(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--request-timeout=30s");
        cmd
    }

    pub fn kubectl_raw(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().expect("kubectl runs")
    }

    /// kubectl as the tenant; panics with its output when it fails.
    pub fn kubectl(&self, args: &[&str]) -> String {
        let out = self.kubectl_raw(args);
        assert!(
            out.status.success(),
            "kubectl (as the tenant) {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl apply -f -` as the tenant.
    pub fn apply(&self, manifest: &str) -> String {
        let mut cmd = self.cmd();
        cmd.args(["apply", "-f", "-"]);
        let out = super::control_plane::output_with_stdin(cmd, manifest);
        assert!(
            out.status.success(),
            "kubectl apply (as the tenant) failed: {}\n{manifest}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl patch <kind> <name> --subresource=status --type=merge -p {"status": status}`.
    pub fn patch_status(&self, kind: &str, name: &str, ns: &str, status: serde_json::Value) {
        let patch = serde_json::json!({ "status": status }).to_string();
        self.kubectl(&[
            "patch",
            kind,
            name,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch,
        ]);
    }

    /// `kubectl annotate --overwrite <kind> <name> <key=value>`.
    pub fn annotate(&self, kind: &str, name: &str, ns: &str, annotation: &str) {
        self.kubectl(&["annotate", kind, name, "-n", ns, "--overwrite", annotation]);
    }

    /// `kubectl patch --type=merge` of the spec.
    pub fn patch_spec(&self, kind: &str, name: &str, ns: &str, spec: serde_json::Value) {
        let patch = serde_json::json!({ "spec": spec }).to_string();
        self.kubectl(&["patch", kind, name, "-n", ns, "--type=merge", "-p", &patch]);
    }

    /// `kubectl delete` that does not wait for the finalizers.
    pub fn delete(&self, kind: &str, name: &str, ns: &str) {
        self.kubectl(&["delete", kind, name, "-n", ns, "--wait=false"]);
    }
}
