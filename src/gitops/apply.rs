//! The plan's writes, in plan order: each item's [`Write`] (made by its kind when it was
//! planned) is sent; a refused key (401) stops the rest.

use std::fmt::Debug;

use futures::future::BoxFuture;
use serde::Serialize;

use super::plan::Plan;
use super::problem::{Class, Problem};
use super::progress::Progress;
use crate::portkey::*;

/// What `sync` did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncReport {
    pub applied: usize,
    pub errors: Vec<Problem>,
}

/// One planned write to Portkey, with its exact body.
pub trait Write: Debug + Send + Sync {
    fn send<'a>(&'a self, client: &'a PortkeyClient) -> BoxFuture<'a, Result<(), PortkeyError>>;
}

/// Applies the plan's writes. Creates are looked up by marker before they are sent again
/// (the plan did that), and a failed create is never retried blindly.
/// A refused key (401) stops it at once: every further write would be refused too.
pub async fn apply(client: &PortkeyClient, plan: &Plan, progress: &Progress) -> SyncReport {
    let mut report = SyncReport::default();
    let writes = plan.items.iter().filter(|i| i.exec.is_some()).count();
    progress.phase("applying", writes);
    for item in &plan.items {
        let Some(write) = &item.exec else { continue };
        progress.step();
        match write.send(client).await {
            Ok(()) => report.applied += 1,
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

/// An archive that found the object gone already did its work.
pub fn archived(result: Result<(), PortkeyError>) -> Result<(), PortkeyError> {
    match result {
        Err(e) if e.is_gone() => Ok(()),
        other => other,
    }
}
