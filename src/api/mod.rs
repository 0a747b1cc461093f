//! Custom resource types: specs, statuses, conditions, CEL rules and printer columns.

pub mod common;
pub mod rate_limit_policy;
pub mod usage_limit_policy;
pub mod validate;
pub mod workspace_budget;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use common::*;
pub use rate_limit_policy::*;
pub use usage_limit_policy::*;
pub use workspace_budget::*;

/// API group of every resource.
pub const GROUP: &str = "budgets.portkey-operator.io";
/// Namespace annotation that pins every policy in the namespace to one workspace (id or slug).
pub const WORKSPACE_ANNOTATION: &str = "budgets.portkey-operator.io/workspace";
/// Annotation recording a create that may have reached Portkey (see README "No duplicates").
pub const CREATE_PENDING_ANNOTATION: &str = "budgets.portkey-operator.io/create-pending";
/// Annotation that stops every write to Portkey for one resource (`"true"`); usage is still
/// read and reported, and removing it resumes and corrects drift.
pub const PAUSED_ANNOTATION: &str = "budgets.portkey-operator.io/paused";
/// Finalizer that archives (or releases) the remote policy before the resource goes away.
pub const FINALIZER: &str = "budgets.portkey-operator.io/finalizer";

/// Every CRD the operator serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        UsageLimitPolicy::crd(),
        RateLimitPolicy::crd(),
        WorkspaceBudget::crd(),
    ]
}

/// One YAML document per CRD, named `<crd name>.yaml` (what `crds/` holds).
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let yaml = serde_saphyr::to_string(crd).expect("CRDs serialize to YAML");
            (format!("{name}.yaml"), format!("---\n{yaml}"))
        })
        .collect()
}

/// Every CRD as one multi-document YAML stream (what `portkey-budget-operator crds` prints).
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, yaml)| yaml).collect()
}
