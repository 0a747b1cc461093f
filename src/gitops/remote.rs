//! What `plan` and `status` read of Portkey, shared by every kind: workspace ids and active
//! policy listings (each read once per run), and the remote policy a resource owns or adopts,
//! decided by the controller's ownership rules (`plan::ownership`).

use std::collections::BTreeMap;

use super::kinds::Declarations;
use crate::api::conditions::reasons;
use crate::plan::marker::Identity;
use crate::plan::ownership::{self, Candidate};
use crate::portkey::*;

/// Reads of this run, each made once.
#[derive(Default)]
pub struct RemoteCache {
    ids: BTreeMap<String, Result<String, PortkeyError>>,
    /// Active policies per (family, workspace): ids, names and ages only, so that one
    /// unexpected field anywhere in a workspace cannot break the listing.
    listed: BTreeMap<(&'static str, String), Vec<PolicySummary>>,
}

impl RemoteCache {
    /// The id of the workspace a manifest names (slug or id).
    pub async fn workspace_id(
        &mut self,
        client: &PortkeyClient,
        reference: &str,
    ) -> Result<String, PortkeyError> {
        if let Some(r) = self.ids.get(reference) {
            return r.clone();
        }
        let r = client.resolve_workspace_id(reference).await;
        self.ids.insert(reference.to_owned(), r.clone());
        r
    }

    /// The active policies of family `K` in workspace `ws`.
    pub async fn listed<K: PolicyKind>(
        &mut self,
        client: &PortkeyClient,
        ws: &str,
    ) -> Result<&Vec<PolicySummary>, PortkeyError> {
        let key = (K::PATH, ws.to_owned());
        if !self.listed.contains_key(&key) {
            let filter = ListFilter {
                workspace_id: Some(ws.to_owned()),
                status: Some(PolicyStatus::Active),
                ..Default::default()
            };
            let list = client.policies::<K>().list_summaries(&filter).await?;
            self.listed.insert(key.clone(), list);
        }
        Ok(&self.listed[&key])
    }
}

/// What a resource has in Portkey, by the shared ownership rules.
pub struct RemoteMatch<P> {
    pub remote: Option<P>,
    /// Younger policies carrying its marker: archived.
    pub duplicates: Vec<String>,
}

impl<P> RemoteMatch<P> {
    fn none() -> Self {
        RemoteMatch {
            remote: None,
            duplicates: Vec::new(),
        }
    }
}

/// A match, a refusal (by the ownership rules), or an Admin API error.
type Matched<P> = Result<Result<RemoteMatch<P>, ownership::Refusal>, PortkeyError>;

/// Whom a resource is, and what it asks for, when its remote policy is looked for.
pub struct Wanted<'a> {
    pub identity: &'a Identity,
    /// `spec.adoptPolicyId`.
    pub adopt: Option<&'a str>,
    /// The workspace's id.
    pub ws: &'a str,
    pub declared: &'a Declarations,
}

/// The remote policy a resource has in workspace `ws`, decided as the controller decides it
/// (`plan::ownership`): `adoptPolicyId` (in this workspace, not another resource's or
/// installation's), else the oldest active policy carrying its marker, preferring one that
/// needs no replacement. The policy is read by id: list items of older backends lack fields
/// (the reset schedule), and planning against them would re-send the reset every time.
pub async fn match_remote<K: PolicyKind>(
    client: &PortkeyClient,
    listed: &[PolicySummary],
    wanted: &Wanted<'_>,
    fits: impl Fn(&K::Policy) -> bool,
) -> Matched<K::Policy> {
    match wanted.adopt {
        Some(id) => adopted::<K>(client, id, wanted).await,
        None => marked::<K>(client, listed, wanted.identity, fits).await,
    }
}

/// The policy `spec.adoptPolicyId` names, when this resource may adopt it.
async fn adopted<K: PolicyKind>(
    client: &PortkeyClient,
    id: &str,
    wanted: &Wanted<'_>,
) -> Matched<K::Policy> {
    let p = match client.policies::<K>().get(id, GetOptions::default()).await {
        Ok(p) => p,
        Err(e) if e.is_gone() => {
            return Ok(Err(ownership::Refusal {
                reason: reasons::ADOPT_TARGET_NOT_FOUND,
                message: format!("spec.adoptPolicyId: Portkey has no active policy {id}"),
            }));
        }
        Err(e) => return Err(e),
    };
    match ownership::check_adoption(
        "spec.adoptPolicyId",
        id,
        p.workspace_id(),
        p.name(),
        wanted.ws,
        wanted.identity,
    ) {
        Ok(None) => {}
        // Marked by another resource of this identity: adoptable only when no manifest
        // declares that resource any more.
        Ok(Some(marked))
            if wanted
                .declared
                .identities
                .contains(&(marked.kind.clone(), marked.owner.clone())) =>
        {
            return Ok(Err(marked.refusal("spec.adoptPolicyId", id)));
        }
        Ok(Some(_)) => {}
        Err(refusal) => return Ok(Err(refusal)),
    }
    Ok(Ok(RemoteMatch {
        remote: Some(p),
        duplicates: Vec::new(),
    }))
}

/// The oldest active policy carrying the resource's marker (one that `fits` first), and the
/// younger ones.
async fn marked<K: PolicyKind>(
    client: &PortkeyClient,
    listed: &[PolicySummary],
    identity: &Identity,
    fits: impl Fn(&K::Policy) -> bool,
) -> Matched<K::Policy> {
    let candidates = listed.iter().map(|p| Candidate {
        id: &p.id,
        name: p.name.as_deref(),
        created_at: p.created_at,
    });
    let Some(owned) = ownership::owned(candidates, identity) else {
        return Ok(Ok(RemoteMatch::none()));
    };
    let mut active = Vec::new();
    for id in std::iter::once(&owned.keep).chain(&owned.duplicates) {
        match client.policies::<K>().get(id, GetOptions::default()).await {
            Ok(p) => active.push(p),
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e),
        }
    }
    if active.is_empty() {
        return Ok(Ok(RemoteMatch::none()));
    }
    let keep = active.iter().position(&fits).unwrap_or(0);
    let remote = active.swap_remove(keep);
    Ok(Ok(RemoteMatch {
        remote: Some(remote),
        duplicates: active.iter().map(|p| p.id().to_owned()).collect(),
    }))
}
