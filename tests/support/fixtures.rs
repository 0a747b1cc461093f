//! Fixtures and file helpers shared by several test binaries (the e2e tests, the reconcile
//! and fault tests, the CLI, chart and client tests): one definition of each object a test
//! makes in Portkey by hand and of each walk over the repository's files. Included with
//! `#[path = "support/fixtures.rs"] mod fixtures;` or through `support::fixtures`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;

/// A path in the repository.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The YAML files of a folder of the repository, sorted by name.
pub fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
}

/// Copies a folder recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An emulator on a free loopback port accepting the Admin API key `key`, seeded with these
/// workspaces (id, slug, name).
pub async fn emulator(
    key: &str,
    workspaces: &[(&str, &str, &str)],
) -> portkey_budget_operator::emulator::EmulatorHandle {
    use portkey_budget_operator::emulator::{self, EmulatorConfig, SeedWorkspace};
    let workspaces = workspaces
        .iter()
        .map(|(id, slug, name)| SeedWorkspace {
            id: (*id).into(),
            slug: (*slug).into(),
            name: (*name).into(),
        })
        .collect();
    emulator::spawn(EmulatorConfig {
        api_keys: vec![key.into()],
        workspaces,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A usage-limits policy as someone makes it in Portkey by hand: `team`'s users, $100, no
/// reset (change fields with `..usage_policy(name, team, ws)`).
pub fn usage_policy(name: &str, team: &str, ws: &str) -> CreateUsageLimitsPolicy {
    CreateUsageLimitsPolicy {
        name: name.into(),
        description: None,
        conditions: vec![Condition {
            key: "metadata._team".into(),
            value: ConditionValue::One(team.into()),
            excludes: None,
        }],
        group_by: vec![GroupBy {
            key: "metadata._user".into(),
        }],
        limit_type: UsageLimitType::Cost,
        credit_limit: Decimal::from(100),
        alert_threshold: None,
        periodic_reset: None,
        periodic_reset_days: None,
        next_usage_reset_at: None,
        workspace_id: Some(ws.into()),
    }
}

/// A workspace or key usage limit: `limit` of `limit_type` with this reset, no alert, no
/// reset date.
pub fn usage_limit(
    limit_type: UsageLimitType,
    limit: Decimal,
    reset: Option<PeriodicReset>,
) -> WorkspaceUsageLimit {
    WorkspaceUsageLimit {
        limit_type,
        credit_limit: limit,
        alert_threshold: None,
        periodic_reset: reset,
        periodic_reset_days: None,
        next_usage_reset_at: None,
    }
}

/// A usage-limits policy read by id.
pub async fn usage_policy_by_id(client: &PortkeyClient, id: &str) -> UsageLimitsPolicy {
    let policies = client.usage_limits();
    policies.get(id, GetOptions::default()).await.unwrap()
}

/// A rate-limits policy read by id.
pub async fn rate_policy_by_id(client: &PortkeyClient, id: &str) -> RateLimitsPolicy {
    let policies = client.rate_limits();
    policies.get(id, GetOptions::default()).await.unwrap()
}

/// Read options that also find archived policies.
pub fn archived() -> GetOptions {
    GetOptions {
        status: Some(PolicyStatus::Archived),
        ..Default::default()
    }
}

/// Creates a workspace service key in Portkey (as by hand): the whole answer, raw key included.
pub async fn service_key(client: &PortkeyClient, body: &CreateApiKey) -> IssuedApiKey {
    client
        .create_api_key(ApiKeyType::Workspace, ApiKeySubType::Service, body)
        .await
        .unwrap()
}
