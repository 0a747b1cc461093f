use serde::Serialize;

use super::plan::{Exec, Plan};
use super::problem::{Class, Problem};
use super::progress::Progress;
use crate::portkey::*;

/// What `sync` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub applied: usize,
    pub errors: Vec<Problem>,
}

/// Applies the plan's writes. Creates are looked up by marker before they are sent again
/// (the plan did that), and a failed create is never retried blindly.
/// A refused key (401) stops it at once: every further write would be refused too.
pub async fn apply(client: &PortkeyClient, plan: &Plan, progress: &Progress) -> SyncReport {
    let mut report = SyncReport::default();
    let writes = plan
        .items
        .iter()
        .filter(|i| !matches!(i.exec, Exec::None))
        .count();
    progress.phase("applying", writes);
    for item in &plan.items {
        if !matches!(item.exec, Exec::None) {
            progress.step();
        }
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
            Err(e) if e.status() == Some(401) => {
                report.errors.push(Problem::new(
                    Class::Api,
                    format!(
                        "the Admin API key was refused (HTTP 401) while applying; the rest was not sent: {e}"
                    ),
                ));
                break;
            }
            Err(e) => report
                .errors
                .push(item.problem(Class::Api, format!("writing to Portkey: {e}"))),
        }
    }
    progress.done();
    report
}

fn archive(result: Result<(), PortkeyError>) -> Result<(), PortkeyError> {
    match result {
        Err(e) if e.is_gone() => Ok(()),
        other => other,
    }
}
