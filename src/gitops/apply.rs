use serde::Serialize;

use super::plan::{Exec, Plan};
use crate::portkey::*;

/// What `sync` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub applied: usize,
    pub errors: Vec<String>,
}

/// Applies the plan's writes. Creates are looked up by marker before they are sent again
/// (the plan did that), and a failed create is never retried blindly.
pub async fn apply(client: &PortkeyClient, plan: &Plan) -> SyncReport {
    let mut report = SyncReport::default();
    for item in &plan.items {
        let result: Result<bool, PortkeyError> = async {
            match &item.exec {
                Exec::None => return Ok(false),
                // The answer holds the id; a read-back could lag behind the create.
                Exec::UsageCreate(body) => {
                    client.usage_limits().create(body).await?;
                }
                Exec::UsageUpdate(id, body) => client.usage_limits().update(id, body).await?,
                Exec::UsageReplace(old, body) => {
                    // Create first: a refused create leaves the old policy in force.
                    client.usage_limits().create(body).await?;
                    archive(client.usage_limits().delete(old).await)?;
                }
                Exec::RateCreate(body) => {
                    client.rate_limits().create(body).await?;
                }
                Exec::RateUpdate(id, body) => client.rate_limits().update(id, body).await?,
                Exec::RateReplace(old, body) => {
                    // Create first: a refused create leaves the old policy in force.
                    client.rate_limits().create(body).await?;
                    archive(client.rate_limits().delete(old).await)?;
                }
                Exec::Workspace(id, body) => client.update_workspace(id, body).await?,
                Exec::ApiKey(id, body) => client.update_api_key(id, body).await?,
                Exec::ArchiveUsage(id) => archive(client.usage_limits().delete(id).await)?,
                Exec::ArchiveRate(id) => archive(client.rate_limits().delete(id).await)?,
            }
            Ok(true)
        }
        .await;
        match result {
            Ok(true) => report.applied += 1,
            Ok(false) => {}
            Err(e) => report
                .errors
                .push(format!("{} {}: {e}", item.kind, item.name)),
        }
    }
    report
}

fn archive(result: Result<(), PortkeyError>) -> Result<(), PortkeyError> {
    match result {
        Err(e) if e.is_gone() => Ok(()),
        other => other,
    }
}
