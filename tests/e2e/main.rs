//! End-to-end tests on a real Kubernetes API server (kube-apiserver + etcd, and
//! kube-controller-manager where namespaces are deleted) from `KUBEBUILDER_ASSETS`: the CRDs from
//! `crds/` and the chart, the operator binary, and the emulator. Each test starts its own
//! control plane, so they run in parallel. Without the assets each test prints one skip line,
//! except under `CI=true`, where that is a failure.
//!
//! `Env::start` binds `NS` to the e2e workspace (annotation `budgets.portkey-operator.io/workspace`),
//! as a cluster admin would: an unbound namespace gets no workspace by default (#28).

#[path = "../support/mod.rs"]
mod support;

mod admission;
mod api_keys;
mod helm;
mod lifecycle;
mod policies;
mod tenancy;

use support::e2e::NS;

/// A UsageLimitPolicy in `NS` on the e2e workspace.
pub fn ulp(name: &str, limit: u32) -> String {
    ulp_with(name, limit, "")
}

/// A UsageLimitPolicy with extra spec lines (indented by two spaces).
pub fn ulp_with(name: &str, limit: u32, extra: &str) -> String {
    format!(
        r#"apiVersion: budgets.portkey-operator.io/v1alpha1
kind: UsageLimitPolicy
metadata:
  name: {name}
  namespace: {NS}
spec:
  workspace: e2e
  type: cost
  creditLimit: {limit}
  alertThreshold: "400.50"
  periodicReset: monthly
  conditions:
    - key: metadata._team
      value: e2e
  groupBy:
    - key: metadata._user
{extra}"#
    )
}

/// A RateLimitPolicy in `ns` on the e2e workspace.
pub fn rlp_in(ns: &str, name: &str, value: u32, extra: &str) -> String {
    format!(
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: RateLimitPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  workspace: e2e\n  type: requests\n  unit: rpm\n  value: {value}\n  conditions:\n    - key: api_key\n      value: \"*\"\n  groupBy:\n    - key: metadata._user\n{extra}"
    )
}

/// A WorkspaceBudget on the e2e workspace.
pub fn wsb(name: &str, limit: u32, extra: &str) -> String {
    format!(
        "apiVersion: budgets.portkey-operator.io/v1alpha1\nkind: WorkspaceBudget\nmetadata:\n  name: {name}\nspec:\n  workspace: e2e\n  usageLimits:\n    - type: cost\n      creditLimit: {limit}\n      alertThreshold: 400\n      periodicReset: monthly\n  rateLimits:\n    - type: requests\n      unit: rpm\n      value: 120\n{extra}"
    )
}
