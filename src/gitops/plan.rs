use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::load::{Loaded, Resource, Source};
use super::problem::{Class, Problem};
use super::progress::Progress;
use crate::api::ApiKeyBudget;
use crate::plan::api_key::{self as keyplan, DesiredKey};
use crate::plan::marker::Identity;
use crate::plan::ownership::{self, Candidate, Claimant};
use crate::plan::policy::{Decision, PlanOptions, PolicyAction, PolicyDiff};
use crate::plan::rate::DesiredRatePolicy;
use crate::plan::usage::DesiredUsagePolicy;
use crate::plan::workspace::{self as wsplan, DesiredWorkspaceLimits};
use crate::plan::{FieldChange, schedule_text};
use crate::portkey::*;

/// The kind of change for one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    Create,
    Update,
    Replace,
    Archive,
    Unchanged,
    Blocked,
    /// Not for this tool (an `ApiKeyBudget` that issues a key needs a cluster for its Secret).
    Skipped,
}

/// What applying an item does, with the exact bodies.
#[derive(Debug, Clone)]
pub(super) enum Exec {
    None,
    UsageCreate(CreateUsageLimitsPolicy),
    UsageUpdate(String, UpdateUsageLimitsPolicy),
    UsageReplace(String, CreateUsageLimitsPolicy),
    RateCreate(CreateRateLimitsPolicy),
    RateUpdate(String, UpdateRateLimitsPolicy),
    RateReplace(String, CreateRateLimitsPolicy),
    Workspace(String, UpdateWorkspace),
    ApiKey(String, UpdateApiKey),
    ArchiveUsage(String),
    ArchiveRate(String),
}

/// One line of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct PlanItem {
    pub kind: String,
    pub name: String,
    pub source: Option<Source>,
    pub workspace: Option<String>,
    pub action: ChangeKind,
    /// The remote policy (or workspace) it concerns, when one exists.
    pub target: Option<String>,
    pub changes: Vec<FieldChange>,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub(super) exec: Exec,
}

impl PlanItem {
    /// A problem about this item's resource.
    pub fn problem(&self, class: Class, message: impl Into<String>) -> Problem {
        let (namespace, name) = match self.name.split_once('/') {
            Some((ns, n)) => (Some(ns.to_owned()), n.to_owned()),
            None => (None, self.name.clone()),
        };
        Problem {
            file: self.source.as_ref().map(|s| s.file.clone()),
            line: self.source.as_ref().map(|s| s.line),
            resource: Some(super::problem::ResourceRef {
                kind: self.kind.clone(),
                namespace,
                name,
            }),
            field: None,
            value: None,
            message: message.into(),
            class,
        }
    }
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    pub errors: Vec<Problem>,
}

impl Plan {
    pub fn count(&self, kind: ChangeKind) -> usize {
        self.items.iter().filter(|i| i.action == kind).count()
    }

    pub fn has_changes(&self) -> bool {
        self.items.iter().any(|i| {
            matches!(
                i.action,
                ChangeKind::Create | ChangeKind::Update | ChangeKind::Replace | ChangeKind::Archive
            )
        })
    }

    pub fn has_errors(&self) -> bool {
        self.failure().is_some()
    }

    /// What keeps the plan from being applied, the gravest first: an Admin API error, else a
    /// refusal (errors of that class, or blocked items), else an invalid manifest.
    pub fn failure(&self) -> Option<Class> {
        let blocked = (self.count(ChangeKind::Blocked) > 0).then_some(Class::Refused);
        self.errors.iter().map(|e| e.class).chain(blocked).max()
    }
}

/// An Admin API error while planning `loaded` (or the plan as a whole).
fn api_problem(loaded: Option<&Loaded>, e: &PortkeyError) -> Problem {
    let message = format!("reading Portkey: {e}");
    match loaded {
        Some(l) => l.problem_here(Class::Api, message),
        None => Problem::new(Class::Api, message),
    }
}

/// The one error a refused Admin API key gets (instead of one per resource).
fn key_refused(e: &PortkeyError, everywhere: bool) -> Problem {
    let status = e.status().unwrap_or_default();
    let said = match e {
        PortkeyError::Unauthorized { message, .. } | PortkeyError::Forbidden { message, .. } => {
            message.clone()
        }
        other => other.to_string(),
    };
    let code = e.code().map(|c| format!(" ({c})")).unwrap_or_default();
    let (scope, hint) = if status == 403 {
        if everywhere {
            (
                " for every request",
                "; the key lacks the scopes plan and sync need (workspaces read; usage and rate limit policies read and write; workspaces update for WorkspaceBudgets; API keys read and update for ApiKeyBudgets)",
            )
        } else {
            ("", "")
        }
    } else {
        (
            "",
            "; it is wrong, expired or revoked (check --api-key-file or PORTKEY_API_KEY)",
        )
    };
    Problem::new(
        Class::Api,
        format!("the Admin API key was refused (HTTP {status}){scope}: {said}{code}{hint}"),
    )
}

/// Planning knobs.
#[derive(Debug, Clone, Default)]
pub struct PlanSettings {
    /// This tool's installation identity in ownership markers.
    pub installation_id: String,
    /// Installations whose policies it takes over.
    pub adopt_from_installations: Vec<String>,
    pub default_workspace: Option<String>,
    /// Archive marked policies no manifest declares.
    pub prune: bool,
    /// Refuse to prune more than this many.
    pub max_prune: usize,
}

#[derive(Default)]
pub(super) struct RemoteCache {
    ids: BTreeMap<String, Result<String, PortkeyError>>,
    /// Active policies per (family, workspace): ids, names and ages only, so that one
    /// unexpected field anywhere in a workspace cannot break the listing.
    listed: BTreeMap<(&'static str, String), Vec<PolicySummary>>,
}

impl RemoteCache {
    pub(super) async fn workspace_id(
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

    pub(super) async fn listed<K: PolicyKind>(
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
pub(super) struct RemoteMatch<P> {
    pub(super) remote: Option<P>,
    /// Younger policies carrying its marker: archived.
    duplicates: Vec<String>,
}

/// The remote policy a resource has in workspace `ws`, decided as the controller decides it
/// (`plan::ownership`): `adoptPolicyId` (in this workspace, not another resource's or
/// installation's), else the oldest active policy carrying its marker, preferring one that
/// needs no replacement. The policy is read by id: list items of older backends lack fields
/// (the reset schedule), and planning against them would re-send the reset every time.
pub(super) async fn match_remote<K: PolicyKind>(
    client: &PortkeyClient,
    listed: &[PolicySummary],
    identity: &Identity,
    adopt: Option<&str>,
    ws: &str,
    declared: &BTreeSet<(String, String)>,
    fits: impl Fn(&K::Policy) -> bool,
) -> Result<Result<RemoteMatch<K::Policy>, ownership::Refusal>, PortkeyError> {
    let api = client.policies::<K>();
    if let Some(id) = adopt {
        let p = match api.get(id, GetOptions::default()).await {
            Ok(p) => p,
            Err(e) if e.is_gone() => {
                return Ok(Err(ownership::Refusal {
                    reason: "AdoptTargetNotFound",
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
            ws,
            identity,
        ) {
            Ok(None) => {}
            // Marked by another resource of this identity: adoptable only when no manifest
            // declares that resource any more.
            Ok(Some(marked)) if declared.contains(&(marked.kind.clone(), marked.owner.clone())) => {
                return Ok(Err(marked.refusal("spec.adoptPolicyId", id)));
            }
            Ok(Some(_)) => {}
            Err(refusal) => return Ok(Err(refusal)),
        }
        return Ok(Ok(RemoteMatch {
            remote: Some(p),
            duplicates: Vec::new(),
        }));
    }
    let candidates = listed.iter().map(|p| Candidate {
        id: &p.id,
        name: p.name.as_deref(),
        created_at: p.created_at,
    });
    let Some(owned) = ownership::owned(candidates, identity) else {
        return Ok(Ok(RemoteMatch {
            remote: None,
            duplicates: Vec::new(),
        }));
    };
    let mut active = Vec::new();
    for id in std::iter::once(&owned.keep).chain(&owned.duplicates) {
        match api.get(id, GetOptions::default()).await {
            Ok(p) => active.push(p),
            Err(e) if e.is_gone() => {}
            Err(e) => return Err(e),
        }
    }
    if active.is_empty() {
        return Ok(Ok(RemoteMatch {
            remote: None,
            duplicates: Vec::new(),
        }));
    }
    let keep = active.iter().position(&fits).unwrap_or(0);
    let remote = active.swap_remove(keep);
    Ok(Ok(RemoteMatch {
        remote: Some(remote),
        duplicates: active.iter().map(|p| p.id().to_owned()).collect(),
    }))
}

fn item_for<C, U>(
    loaded: &Loaded,
    workspace: &str,
    decision: Decision<C, U>,
    wrap: &impl Fn(PolicyAction<C, U>) -> Exec,
    current: Option<String>,
) -> PlanItem {
    let mut item = PlanItem {
        kind: loaded.kind().into(),
        name: loaded.qualified(),
        source: Some(loaded.source.clone()),
        workspace: Some(workspace.to_owned()),
        action: ChangeKind::Unchanged,
        target: current,
        changes: vec![],
        warnings: vec![],
        exec: Exec::None,
    };
    match decision {
        Decision::InSync => {}
        Decision::Blocked {
            message, changes, ..
        } => {
            item.action = ChangeKind::Blocked;
            item.changes = changes;
            item.warnings.push(message);
        }
        Decision::Apply(action) => {
            match &action {
                PolicyAction::Create { .. } => item.action = ChangeKind::Create,
                PolicyAction::Update { changes, .. } => {
                    item.action = ChangeKind::Update;
                    item.changes = changes.clone();
                }
                PolicyAction::Replace { changes, .. } => {
                    item.action = ChangeKind::Replace;
                    item.changes = changes.clone();
                    item.warnings.push(
                        "the policy is archived and created again: its usage restarts from zero"
                            .into(),
                    );
                }
            }
            item.exec = wrap(action);
        }
    }
    item
}

fn create_changes(fields: &[(&'static str, String)]) -> Vec<FieldChange> {
    fields
        .iter()
        .map(|(f, v)| FieldChange::new(f, "(none)", v))
        .collect()
}

/// Plan items for one policy resource: the planner's decision against what it has in Portkey
/// (by the shared ownership rules), plus archives of its duplicates. Generic over the families;
/// `wrap` makes the family's write, `archive` its archive, `create_fields` the summary of a
/// create.
#[allow(clippy::too_many_arguments)]
async fn plan_policy<K, D>(
    client: &PortkeyClient,
    cache: &mut RemoteCache,
    loaded: &Loaded,
    reference: &str,
    ws: &str,
    identity: &Identity,
    adopt: Option<&str>,
    declared: &BTreeSet<(String, String)>,
    desired: &D,
    options: PlanOptions,
    wrap: impl Fn(PolicyAction<D::Create, D::Update>) -> Exec,
    archive: impl Fn(String) -> Exec,
    create_fields: impl Fn(&D::Create) -> Vec<(&'static str, String)>,
) -> Result<Vec<PlanItem>, PortkeyError>
where
    K: PolicyKind,
    D: PolicyDiff<Remote = K::Policy>,
{
    let listed = cache.listed::<K>(client, ws).await?.clone();
    let fits = |p: &K::Policy| desired.immutable_changes(p).is_empty();
    let found =
        match match_remote::<K>(client, &listed, identity, adopt, ws, declared, fits).await? {
            Ok(found) => found,
            Err(refusal) => {
                let mut item = item_for(
                    loaded,
                    reference,
                    Decision::<D::Create, D::Update>::InSync,
                    &wrap,
                    None,
                );
                item.action = ChangeKind::Blocked;
                item.warnings
                    .push(format!("{}: {}", refusal.reason, refusal.message));
                return Ok(vec![item]);
            }
        };
    let decision = crate::plan::policy::plan(desired, found.remote.as_ref(), options);
    let mut item = item_for(
        loaded,
        reference,
        decision,
        &wrap,
        found.remote.as_ref().map(|p| p.id().to_owned()),
    );
    if item.action == ChangeKind::Create {
        item.changes = create_changes(&create_fields(&desired.create_body()));
    }
    let keep = item.target.clone().unwrap_or_default();
    let mut items = vec![item];
    for id in found.duplicates {
        items.push(PlanItem {
            kind: loaded.kind().into(),
            name: loaded.qualified(),
            source: Some(loaded.source.clone()),
            workspace: Some(reference.to_owned()),
            action: ChangeKind::Archive,
            target: Some(id.clone()),
            changes: vec![FieldChange::new("status", "active", "archived")],
            warnings: vec![format!(
                "a duplicate: it carries the same marker as {keep}, which is older and kept"
            )],
            exec: archive(id),
        });
    }
    Ok(items)
}

/// `(kind, namespace/name)` of every resource the manifests declare.
pub(super) fn declared_identities(
    resources: &[Loaded],
    settings: &PlanSettings,
) -> BTreeSet<(String, String)> {
    resources
        .iter()
        .map(|l| {
            let identity = l.identity(settings);
            (identity.kind.to_owned(), identity.qualified())
        })
        .collect()
}

/// Reads remote state and plans every resource (and, with `prune`, the archives). An Admin API
/// key refused with 401 stops the plan at once with one error; 403 on every resource is one
/// error too.
pub async fn plan(
    client: &PortkeyClient,
    resources: &[Loaded],
    settings: &PlanSettings,
    progress: &Progress,
) -> Plan {
    let mut cache = RemoteCache::default();
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let declared = declared_identities(resources, settings);
    let mut workspace_ids = BTreeSet::new();
    // WorkspaceBudgets by workspace, for the shared conflict rule.
    let mut claims: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for loaded in resources {
        if let (Resource::Workspace(_), Some(reference)) = (&loaded.resource, loaded.workspace())
            && let Ok(ws) = cache.workspace_id(client, reference).await
        {
            claims.entry(ws).or_default().push(loaded.qualified());
        }
    }
    // 403s per resource: when every resource got one, the key is what is refused.
    let mut forbidden: Option<PortkeyError> = None;
    let mut forbidden_count = 0;
    progress.phase("reading", resources.len());
    for loaded in resources {
        progress.step();
        let identity = loaded.identity(settings);
        let Some(reference) = loaded.workspace().or(settings.default_workspace.as_deref()) else {
            errors.push(loaded.problem(
                Class::Manifest,
                "spec.workspace",
                "is required by plan and sync (no cluster here to bind namespaces to workspaces); set it or pass --default-workspace",
            ));
            continue;
        };
        let ws = match cache.workspace_id(client, reference).await {
            Ok(id) => id,
            Err(e) if e.is_not_found() => {
                let mut p = loaded.problem(
                    Class::Refused,
                    "spec.workspace",
                    "is not a workspace in Portkey (a slug or id of a workspace the Admin API key can see)",
                );
                p.value = Some(serde_json::Value::String(reference.to_owned()).to_string());
                errors.push(p);
                continue;
            }
            Err(e) if e.status() == Some(401) => {
                errors.push(key_refused(&e, false));
                progress.done();
                return Plan { items, errors };
            }
            Err(e) => {
                if e.status() == Some(403) {
                    forbidden_count += 1;
                    forbidden.get_or_insert(e.clone());
                }
                errors.push(api_problem(Some(loaded), &e));
                continue;
            }
        };
        workspace_ids.insert(ws.clone());
        let result: Result<Vec<PlanItem>, PortkeyError> = match &loaded.resource {
            Resource::Usage(o) => {
                let desired = DesiredUsagePolicy::from_spec(&o.spec, &identity, &ws);
                let options = PlanOptions {
                    management: o.spec.management_policy,
                    on_immutable_change: o.spec.on_immutable_change,
                };
                plan_policy::<UsageLimits, _>(
                    client,
                    &mut cache,
                    loaded,
                    reference,
                    &ws,
                    &identity,
                    o.spec.adopt_policy_id.as_deref(),
                    &declared,
                    &desired,
                    options,
                    |a| match a {
                        PolicyAction::Create { body } => Exec::UsageCreate(body),
                        PolicyAction::Update { id, body, .. } => Exec::UsageUpdate(id, body),
                        PolicyAction::Replace { old_id, body, .. } => {
                            Exec::UsageReplace(old_id, body)
                        }
                    },
                    Exec::ArchiveUsage,
                    |b| {
                        vec![
                            ("name", b.name.clone()),
                            ("type", b.limit_type.to_string()),
                            ("creditLimit", b.credit_limit.normalize().to_string()),
                            (
                                "alertThreshold",
                                crate::plan::fmt_opt(
                                    b.alert_threshold.map(|d| d.normalize()).as_ref(),
                                ),
                            ),
                            (
                                "reset",
                                schedule_text(b.periodic_reset, b.periodic_reset_days),
                            ),
                        ]
                    },
                )
                .await
            }
            Resource::Rate(o) => {
                let desired = DesiredRatePolicy::from_spec(&o.spec, &identity, &ws);
                let options = PlanOptions {
                    management: o.spec.management_policy,
                    on_immutable_change: o.spec.on_immutable_change,
                };
                plan_policy::<RateLimits, _>(
                    client,
                    &mut cache,
                    loaded,
                    reference,
                    &ws,
                    &identity,
                    o.spec.adopt_policy_id.as_deref(),
                    &declared,
                    &desired,
                    options,
                    |a| match a {
                        PolicyAction::Create { body } => Exec::RateCreate(body),
                        PolicyAction::Update { id, body, .. } => Exec::RateUpdate(id, body),
                        PolicyAction::Replace { old_id, body, .. } => {
                            Exec::RateReplace(old_id, body)
                        }
                    },
                    Exec::ArchiveRate,
                    |b| {
                        vec![
                            ("name", b.name.clone()),
                            ("type", b.limit_type.to_string()),
                            ("value", b.value.normalize().to_string()),
                            ("unit", b.unit.to_string()),
                        ]
                    },
                )
                .await
            }
            Resource::Workspace(o) => {
                let mut item = PlanItem {
                    kind: loaded.kind().into(),
                    name: loaded.qualified(),
                    source: Some(loaded.source.clone()),
                    workspace: Some(reference.to_owned()),
                    action: ChangeKind::Unchanged,
                    target: Some(ws.clone()),
                    changes: vec![],
                    warnings: vec![],
                    exec: Exec::None,
                };
                // Two WorkspaceBudgets for one workspace: the controller's rule (the oldest,
                // then by name; manifests have no age) picks the one that writes.
                let claimants: Vec<Claimant<'_>> = claims
                    .get(&ws)
                    .into_iter()
                    .flatten()
                    .map(|name| Claimant {
                        name,
                        created_at: None,
                    })
                    .collect();
                let owner = ownership::workspace_owner(&claimants).map(str::to_owned);
                match owner {
                    Some(owner) if owner != loaded.qualified() => {
                        item.action = ChangeKind::Blocked;
                        item.warnings.push(format!(
                            "Conflict: workspace {reference} is managed by WorkspaceBudget {owner}; this one makes no changes"
                        ));
                        Ok(vec![item])
                    }
                    _ => match client.get_workspace(&ws).await {
                        Ok(current) => {
                            let desired = DesiredWorkspaceLimits::from_spec(&o.spec);
                            if let Some(update) = wsplan::plan(&desired, &current) {
                                item.action = ChangeKind::Update;
                                item.changes = update.changes;
                                item.exec = Exec::Workspace(ws.clone(), update.body);
                            }
                            Ok(vec![item])
                        }
                        Err(e) => Err(e),
                    },
                }
            }
            Resource::ApiKey(o) => plan_api_key(client, loaded, o, reference, &ws, &identity)
                .await
                .map(|item| vec![item]),
        };
        match result {
            Ok(new) => items.extend(new),
            Err(e) if e.status() == Some(401) => {
                errors.push(key_refused(&e, false));
                progress.done();
                return Plan { items, errors };
            }
            Err(e) => {
                if e.status() == Some(403) {
                    forbidden_count += 1;
                    forbidden.get_or_insert(e.clone());
                }
                errors.push(api_problem(Some(loaded), &e));
            }
        }
    }
    progress.done();
    if let Some(e) = forbidden
        && items.is_empty()
        && forbidden_count == resources.len()
    {
        return Plan {
            items,
            errors: vec![key_refused(&e, true)],
        };
    }
    if settings.prune {
        let mut archives = Vec::new();
        for ws in &workspace_ids {
            let lists = async {
                let usage = cache.listed::<UsageLimits>(client, ws).await?.clone();
                let rate = cache.listed::<RateLimits>(client, ws).await?.clone();
                Ok::<_, PortkeyError>((usage, rate))
            }
            .await;
            let (usage, rate) = match lists {
                Ok(l) => l,
                Err(e) => {
                    errors.push(Problem::new(
                        Class::Api,
                        format!("reading Portkey for --prune: {e}"),
                    ));
                    continue;
                }
            };
            let candidates = usage
                .iter()
                .map(|p| ("ulp", p.id.clone(), p.name.clone()))
                .chain(rate.iter().map(|p| ("rlp", p.id.clone(), p.name.clone())));
            for (family, id, name) in candidates {
                let Some(remote_name) = name else { continue };
                // Only this installation's markers: never another cluster's, a legacy one, or
                // anything made by hand.
                let Some((kind, owner)) =
                    ownership::prunable(&remote_name, family, &settings.installation_id)
                else {
                    continue;
                };
                if declared.contains(&(kind.to_owned(), owner.to_owned())) {
                    continue;
                }
                archives.push(PlanItem {
                    kind: if family == "ulp" {
                        "UsageLimitPolicy"
                    } else {
                        "RateLimitPolicy"
                    }
                    .into(),
                    name: owner.to_owned(),
                    source: None,
                    workspace: Some(ws.clone()),
                    action: ChangeKind::Archive,
                    target: Some(id.clone()),
                    changes: vec![FieldChange::new("status", "active", "archived")],
                    warnings: vec![format!(
                        "{remote_name:?} carries this tool's marker but no manifest declares it"
                    )],
                    exec: if family == "ulp" {
                        Exec::ArchiveUsage(id)
                    } else {
                        Exec::ArchiveRate(id)
                    },
                });
            }
        }
        if archives.len() > settings.max_prune {
            errors.push(Problem::new(
                Class::Refused,
                format!(
                    "--prune would archive {} policies, more than --max-prune {}; refusing (check the list, then raise --max-prune)",
                    archives.len(),
                    settings.max_prune
                ),
            ));
            for a in &mut archives {
                a.action = ChangeKind::Blocked;
                a.exec = Exec::None;
            }
        }
        items.extend(archives);
    }
    Plan { items, errors }
}

/// The key an `ApiKeyBudget` names, in workspace `ws`: by id, or by a name that matches exactly
/// one key; refused when it belongs to another workspace or was issued for another resource or
/// installation (the controller's rule, `plan::ownership::check_adoption`). Issued keys (no
/// `spec.existing`) are refused with `IssuedKey`.
pub(super) async fn existing_key(
    client: &PortkeyClient,
    o: &ApiKeyBudget,
    ws: &str,
) -> Result<Result<ApiKeyObject, ownership::Refusal>, PortkeyError> {
    let Some(existing) = &o.spec.existing else {
        return Ok(Err(ownership::Refusal {
            reason: "IssuedKey",
            message: "spec.issue: issuing a key needs a cluster to hold its Secret; apply this resource to a cluster that runs the operator (plan and sync skip it)".into(),
        }));
    };
    let key = match (&existing.id, &existing.name) {
        (Some(id), _) => match client.get_api_key(id).await {
            Ok(k) => k,
            Err(e) if e.is_gone() => {
                return Ok(Err(ownership::Refusal {
                    reason: "KeyNotFound",
                    message: format!("spec.existing.id: Portkey has no API key {id}"),
                }));
            }
            Err(e) => return Err(e),
        },
        (None, Some(name)) => {
            let keys = client.list_api_keys(Some(ws)).await?;
            match keyplan::find_by_name(&keys, name) {
                Ok(k) => k.clone(),
                Err(refusal) => return Ok(Err(refusal)),
            }
        }
        (None, None) => {
            return Ok(Err(ownership::Refusal {
                reason: "InvalidSpec",
                message: "spec.existing: set exactly one of id and name".into(),
            }));
        }
    };
    // Sync's identity never matches an issued key's marker, so a marked key of this
    // installation is refused as well: the resource that issued it manages it.
    let identity = Identity::new(crate::controller::api_key::SHORT, None, "");
    Ok(match keyplan::check_existing(&key, ws, &identity) {
        Ok(None) => Ok(key),
        Ok(Some(marked)) => Err(keyplan::issued_elsewhere(&marked, &key.id)),
        Err(refusal) => Err(refusal),
    })
}

/// The plan line of an `ApiKeyBudget`: an update of the declared fields of an existing key, or
/// skipped (issuing keys needs a cluster).
async fn plan_api_key(
    client: &PortkeyClient,
    loaded: &Loaded,
    o: &ApiKeyBudget,
    reference: &str,
    ws: &str,
    _identity: &Identity,
) -> Result<PlanItem, PortkeyError> {
    let mut item = PlanItem {
        kind: loaded.kind().into(),
        name: loaded.qualified(),
        source: Some(loaded.source.clone()),
        workspace: Some(reference.to_owned()),
        action: ChangeKind::Unchanged,
        target: None,
        changes: vec![],
        warnings: vec![],
        exec: Exec::None,
    };
    match existing_key(client, o, ws).await? {
        Ok(key) => {
            item.target = Some(key.id.clone());
            let desired = DesiredKey::from_spec(&o.spec);
            if let Some(update) = keyplan::plan(&desired, &key) {
                item.action = ChangeKind::Update;
                item.changes = update.changes;
                item.exec = Exec::ApiKey(key.id, update.body);
            }
        }
        Err(refusal) if refusal.reason == "IssuedKey" => {
            item.action = ChangeKind::Skipped;
            item.warnings.push(refusal.message);
        }
        Err(refusal) => {
            item.action = ChangeKind::Blocked;
            item.warnings
                .push(format!("{}: {}", refusal.reason, refusal.message));
        }
    }
    Ok(item)
}
