//! The GitOps CLI (`plan`, `sync`): budget manifests → what would change in Portkey → apply.
//!
//! Manifests are validated with the CRDs' own rules (schema and CEL). Remote state is read with
//! the Admin API client; decisions come from the same planner the controller uses; remote names
//! carry ownership markers with `sync`'s own installation identity (`--installation-id`,
//! default `sync`), and which remote objects are ours is decided by the same code as in the
//! controller (`plan::ownership`): `sync` never adopts, fights over or prunes another
//! installation's policies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;
use serde_json::Value;

use crate::api::validate::{FieldError, validate_object};
use crate::api::{self, ApiKeyBudget, RateLimitPolicy, UsageLimitPolicy, WorkspaceBudget};
use crate::plan::api_key::{self as keyplan, DesiredKey};
use crate::plan::marker::Identity;
use crate::plan::ownership::{self, Candidate, Claimant};
use crate::plan::policy::{Decision, PlanOptions, PolicyAction, PolicyDiff};
use crate::plan::rate::DesiredRatePolicy;
use crate::plan::report::percent;
use crate::plan::usage::DesiredUsagePolicy;
use crate::plan::workspace::{self as wsplan, DesiredWorkspaceLimits};
use crate::plan::{FieldChange, schedule_text};
use crate::portkey::*;

/// Where a resource came from: file and 1-based document number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Source {
    pub file: PathBuf,
    pub document: usize,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}", self.file.display(), self.document)
    }
}

/// A manifest that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LoadError {
    pub source: Source,
    /// The field, when the error is about one.
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{}: {field}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

/// A resource read from the manifests.
#[derive(Debug, Clone)]
pub enum Resource {
    Usage(Box<UsageLimitPolicy>),
    Rate(Box<RateLimitPolicy>),
    Workspace(Box<WorkspaceBudget>),
    ApiKey(Box<ApiKeyBudget>),
}

#[derive(Debug, Clone)]
pub struct Loaded {
    pub source: Source,
    pub resource: Resource,
}

impl Loaded {
    pub fn kind(&self) -> &'static str {
        match self.resource {
            Resource::Usage(_) => "UsageLimitPolicy",
            Resource::Rate(_) => "RateLimitPolicy",
            Resource::Workspace(_) => "WorkspaceBudget",
            Resource::ApiKey(_) => "ApiKeyBudget",
        }
    }

    pub fn namespace(&self) -> Option<&str> {
        match &self.resource {
            Resource::Usage(o) => o.metadata.namespace.as_deref(),
            Resource::Rate(o) => o.metadata.namespace.as_deref(),
            Resource::Workspace(_) => None,
            Resource::ApiKey(o) => o.metadata.namespace.as_deref(),
        }
    }

    pub fn name(&self) -> &str {
        match &self.resource {
            Resource::Usage(o) => o.metadata.name.as_deref(),
            Resource::Rate(o) => o.metadata.name.as_deref(),
            Resource::Workspace(o) => o.metadata.name.as_deref(),
            Resource::ApiKey(o) => o.metadata.name.as_deref(),
        }
        .unwrap_or_default()
    }

    /// `namespace/name` or `name`.
    pub fn qualified(&self) -> String {
        match self.namespace() {
            Some(ns) => format!("{ns}/{}", self.name()),
            None => self.name().to_owned(),
        }
    }

    fn identity(&self, settings: &PlanSettings) -> Identity {
        let short = match self.resource {
            Resource::Usage(_) => "ulp",
            Resource::Rate(_) => "rlp",
            Resource::Workspace(_) => "wsb",
            Resource::ApiKey(_) => crate::controller::api_key::SHORT,
        };
        Identity::new(short, self.namespace(), self.name()).installed(
            &settings.installation_id,
            &settings.adopt_from_installations,
        )
    }

    fn workspace(&self) -> Option<&str> {
        match &self.resource {
            Resource::Usage(o) => o.spec.workspace.as_deref(),
            Resource::Rate(o) => o.spec.workspace.as_deref(),
            Resource::Workspace(o) => Some(&o.spec.workspace),
            Resource::ApiKey(o) => o.spec.workspace.as_deref(),
        }
    }
}

/// What was read from the given paths.
#[derive(Debug, Default)]
pub struct Manifests {
    pub resources: Vec<Loaded>,
    pub errors: Vec<LoadError>,
    /// Documents of other kinds, skipped.
    pub ignored: usize,
}

fn yaml_files(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                yaml_files(&entry, out)?;
            } else if matches!(
                entry.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            ) {
                out.push(entry);
            }
        }
    } else {
        out.push(path.to_owned());
    }
    Ok(())
}

/// Splits a YAML stream into documents (on `---` lines).
fn documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else {
            let last = docs.last_mut().expect("one document");
            last.push_str(line);
            last.push('\n');
        }
    }
    docs
}

fn meta_errors(value: &Value, namespaced: bool) -> Vec<FieldError> {
    let dns =
        regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
            .expect("valid");
    let label = regex::Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("valid");
    let mut errors = Vec::new();
    match value["metadata"]["name"].as_str() {
        Some(n) if n.len() <= 253 && dns.is_match(n) => {}
        Some(n) => errors.push(FieldError {
            field: "metadata.name".into(),
            message: format!(
                "{n:?} is not a valid name (lowercase letters, digits, '-' and '.', at most 253)"
            ),
        }),
        None => errors.push(FieldError {
            field: "metadata.name".into(),
            message: "is required".into(),
        }),
    }
    if namespaced && let Some(ns) = value["metadata"].get("namespace") {
        match ns.as_str() {
            Some(n) if n.len() <= 63 && label.is_match(n) => {}
            _ => errors.push(FieldError {
                field: "metadata.namespace".into(),
                message: format!("{ns} is not a valid namespace"),
            }),
        }
    }
    errors
}

/// Reads every YAML document under `paths`, keeps the operator's kinds and validates them.
pub fn load(paths: &[PathBuf]) -> Manifests {
    let mut out = Manifests::default();
    let crds = api::crds();
    let mut seen = BTreeSet::new();
    for path in paths {
        let mut files = Vec::new();
        if let Err(e) = yaml_files(path, &mut files) {
            out.errors.push(LoadError {
                source: Source {
                    file: path.clone(),
                    document: 0,
                },
                field: None,
                message: e.to_string(),
            });
            continue;
        }
        for file in files {
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    out.errors.push(LoadError {
                        source: Source {
                            file: file.clone(),
                            document: 0,
                        },
                        field: None,
                        message: e.to_string(),
                    });
                    continue;
                }
            };
            for (i, doc) in documents(&text).into_iter().enumerate() {
                let source = Source {
                    file: file.clone(),
                    document: i + 1,
                };
                if doc
                    .lines()
                    .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
                {
                    continue;
                }
                let mut value: Value = match serde_saphyr::from_str(&doc) {
                    Ok(v) => v,
                    Err(e) => {
                        let message = format!(
                            "malformed YAML: {}",
                            e.to_string().lines().next().unwrap_or_default()
                        );
                        out.errors.push(LoadError {
                            source,
                            field: None,
                            message,
                        });
                        continue;
                    }
                };
                let kind = value["kind"].as_str().unwrap_or_default().to_owned();
                let group_ok = value["apiVersion"]
                    .as_str()
                    .is_some_and(|v| v.starts_with(api::GROUP));
                let Some(crd) = crds
                    .iter()
                    .find(|c| c.spec.names.kind == kind)
                    .filter(|_| group_ok)
                else {
                    out.ignored += 1;
                    continue;
                };
                let namespaced = crd.spec.scope == "Namespaced";
                if namespaced
                    && value["metadata"].get("namespace").is_none()
                    && value["metadata"].is_object()
                {
                    value["metadata"]["namespace"] = Value::String("default".into());
                }
                let mut errors = meta_errors(&value, namespaced);
                if errors.is_empty() {
                    errors = validate_object(crd, &value, None);
                }
                if !errors.is_empty() {
                    for e in errors {
                        out.errors.push(LoadError {
                            source: source.clone(),
                            field: Some(e.field),
                            message: e.message,
                        });
                    }
                    continue;
                }
                let resource = match kind.as_str() {
                    "UsageLimitPolicy" => {
                        serde_json::from_value(value).map(|o| Resource::Usage(Box::new(o)))
                    }
                    "RateLimitPolicy" => {
                        serde_json::from_value(value).map(|o| Resource::Rate(Box::new(o)))
                    }
                    "ApiKeyBudget" => {
                        serde_json::from_value(value).map(|o| Resource::ApiKey(Box::new(o)))
                    }
                    _ => serde_json::from_value(value).map(|o| Resource::Workspace(Box::new(o))),
                };
                match resource {
                    Ok(resource) => {
                        let loaded = Loaded {
                            source: source.clone(),
                            resource,
                        };
                        if !seen.insert((loaded.kind(), loaded.qualified())) {
                            out.errors.push(LoadError {
                                source,
                                field: Some("metadata.name".into()),
                                message: format!(
                                    "{} {} is declared twice",
                                    loaded.kind(),
                                    loaded.qualified()
                                ),
                            });
                            continue;
                        }
                        out.resources.push(loaded);
                    }
                    Err(e) => out.errors.push(LoadError {
                        source,
                        field: None,
                        message: e.to_string(),
                    }),
                }
            }
        }
    }
    out
}

/// The workspaces the manifests name (for seeding the emulator).
pub fn workspaces(resources: &[Loaded], default_workspace: Option<&str>) -> BTreeSet<String> {
    resources
        .iter()
        .filter_map(|r| r.workspace().or(default_workspace))
        .map(str::to_owned)
        .collect()
}

/// The existing API keys the manifests name by name, with their workspace reference (for
/// seeding the built-in emulator, which holds no keys of its own).
pub fn named_keys(resources: &[Loaded], default_workspace: Option<&str>) -> Vec<(String, String)> {
    resources
        .iter()
        .filter_map(|r| match &r.resource {
            Resource::ApiKey(o) => {
                let name = o.spec.existing.as_ref()?.name.clone()?;
                Some((r.workspace().or(default_workspace)?.to_owned(), name))
            }
            _ => None,
        })
        .collect()
}

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
enum Exec {
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
    exec: Exec,
}

/// The whole plan.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub items: Vec<PlanItem>,
    pub errors: Vec<String>,
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
        !self.errors.is_empty() || self.count(ChangeKind::Blocked) > 0
    }
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
struct RemoteCache {
    ids: BTreeMap<String, Result<String, String>>,
    /// Active policies per (family, workspace): ids, names and ages only, so that one
    /// unexpected field anywhere in a workspace cannot break the listing.
    listed: BTreeMap<(&'static str, String), Vec<PolicySummary>>,
}

impl RemoteCache {
    async fn workspace_id(
        &mut self,
        client: &PortkeyClient,
        reference: &str,
    ) -> Result<String, String> {
        if let Some(r) = self.ids.get(reference) {
            return r.clone();
        }
        let r = match client.resolve_workspace_id(reference).await {
            Ok(id) => Ok(id),
            Err(e) if e.is_not_found() => Err(format!("Portkey has no workspace {reference:?}")),
            Err(e) => Err(e.to_string()),
        };
        self.ids.insert(reference.to_owned(), r.clone());
        r
    }

    async fn listed<K: PolicyKind>(
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
struct RemoteMatch<P> {
    remote: Option<P>,
    /// Younger policies carrying its marker: archived.
    duplicates: Vec<String>,
}

/// The remote policy a resource has in workspace `ws`, decided as the controller decides it
/// (`plan::ownership`): `adoptPolicyId` (in this workspace, not another resource's or
/// installation's), else the oldest active policy carrying its marker, preferring one that
/// needs no replacement. The policy is read by id: list items of older backends lack fields
/// (the reset schedule), and planning against them would re-send the reset every time.
async fn match_remote<K: PolicyKind>(
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
fn declared_identities(
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

/// Reads remote state and plans every resource (and, with `prune`, the archives).
pub async fn plan(client: &PortkeyClient, resources: &[Loaded], settings: &PlanSettings) -> Plan {
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
    for loaded in resources {
        let identity = loaded.identity(settings);
        let Some(reference) = loaded.workspace().or(settings.default_workspace.as_deref()) else {
            errors.push(format!("{}: spec.workspace: required (no cluster here to bind namespaces; or pass --default-workspace)", loaded.source));
            continue;
        };
        let ws = match cache.workspace_id(client, reference).await {
            Ok(id) => id,
            Err(e) => {
                errors.push(format!("{}: spec.workspace: {e}", loaded.source));
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
            Err(e) => errors.push(format!("{}: reading Portkey: {e}", loaded.source)),
        }
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
                    errors.push(format!("reading Portkey for --prune: {e}"));
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
            errors.push(format!(
                "--prune would archive {} policies, more than --max-prune {}; refusing (check the list, then raise --max-prune)",
                archives.len(),
                settings.max_prune
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
async fn existing_key(
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

fn symbol(kind: ChangeKind) -> &'static str {
    match kind {
        ChangeKind::Create => "+ create",
        ChangeKind::Update => "~ update",
        ChangeKind::Replace => "± replace",
        ChangeKind::Archive => "- archive",
        ChangeKind::Unchanged => "= unchanged",
        ChangeKind::Blocked => "! blocked",
        ChangeKind::Skipped => "· skipped",
    }
}

/// The plan as a readable diff.
pub fn render_text(plan: &Plan, target: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Plan against {target}\n");
    for item in &plan.items {
        let what = match (&item.action, &item.target) {
            (ChangeKind::Create, _) => {
                format!("in workspace {}", item.workspace.as_deref().unwrap_or("?"))
            }
            (_, Some(t)) if item.kind == "WorkspaceBudget" => {
                format!("workspace {}", item.workspace.as_deref().unwrap_or(t))
            }
            (_, Some(t)) if item.kind == "ApiKeyBudget" => format!("API key {t}"),
            (_, Some(t)) => format!("policy {t}"),
            (ChangeKind::Skipped, None) => "(issues a key: needs a cluster)".into(),
            _ => String::new(),
        };
        let source = item
            .source
            .as_ref()
            .map(|s| format!("  ({s})"))
            .unwrap_or_default();
        let _ = writeln!(out, "{} {}{source}", item.kind, item.name);
        let _ = writeln!(out, "  {} {what}", symbol(item.action));
        for c in &item.changes {
            if item.action == ChangeKind::Create {
                let _ = writeln!(out, "      {}: {}", c.field, c.to);
            } else {
                let _ = writeln!(out, "      {c}");
            }
        }
        for w in &item.warnings {
            let _ = writeln!(out, "      warning: {w}");
        }
    }
    for e in &plan.errors {
        let _ = writeln!(out, "error: {e}");
    }
    let _ = writeln!(
        out,
        "\nPlan: {} to create, {} to update, {} to replace, {} to archive, {} unchanged, {} blocked.",
        plan.count(ChangeKind::Create),
        plan.count(ChangeKind::Update),
        plan.count(ChangeKind::Replace),
        plan.count(ChangeKind::Archive),
        plan.count(ChangeKind::Unchanged),
        plan.count(ChangeKind::Blocked),
    );
    let skipped = plan.count(ChangeKind::Skipped);
    if skipped > 0 {
        let _ = writeln!(
            out,
            "{skipped} skipped (ApiKeyBudgets that issue keys: they need a cluster to hold the Secret)."
        );
    }
    out
}

/// A `kubectl get`-like table of what is in force after `sync`.
pub async fn status_table(
    client: &PortkeyClient,
    resources: &[Loaded],
    settings: &PlanSettings,
) -> String {
    let default_workspace = settings.default_workspace.as_deref();
    let declared = declared_identities(resources, settings);
    let mut rows = vec![[
        "KIND".to_owned(),
        "NAME".into(),
        "WORKSPACE".into(),
        "LIMIT".into(),
        "USAGE".into(),
        "RESET".into(),
        "STATE".into(),
    ]];
    let mut cache = RemoteCache::default();
    for loaded in resources {
        let identity = loaded.identity(settings);
        let reference = loaded
            .workspace()
            .or(default_workspace)
            .unwrap_or("?")
            .to_owned();
        let Ok(ws) = cache.workspace_id(client, &reference).await else {
            rows.push([
                loaded.kind().into(),
                loaded.qualified(),
                reference,
                "-".into(),
                "-".into(),
                "-".into(),
                "workspace not found".into(),
            ]);
            continue;
        };
        let row = match &loaded.resource {
            Resource::Usage(o) => {
                let listed = cache
                    .listed::<UsageLimits>(client, &ws)
                    .await
                    .cloned()
                    .unwrap_or_default();
                let adopt = o.spec.adopt_policy_id.as_deref();
                let found = match_remote::<UsageLimits>(
                    client,
                    &listed,
                    &identity,
                    adopt,
                    &ws,
                    &declared,
                    |_| true,
                )
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|m| m.remote);
                match found {
                    Some(p) => {
                        let full = client
                            .usage_limits()
                            .get(
                                &p.id,
                                GetOptions {
                                    include_usage: true,
                                    ..Default::default()
                                },
                            )
                            .await
                            .unwrap_or_else(|_| p.clone());
                        let peak = full
                            .value_key_usage_map
                            .as_ref()
                            .and_then(|m| m.values().map(|u| u.current_usage).max())
                            .unwrap_or_default();
                        let reset = match full.next_usage_reset_at {
                            Some(t) => format!(
                                "{} (next {})",
                                schedule_text(full.periodic_reset, full.periodic_reset_days),
                                t.strftime("%Y-%m-%d")
                            ),
                            None => schedule_text(full.periodic_reset, full.periodic_reset_days),
                        };
                        [
                            loaded.kind().into(),
                            loaded.qualified(),
                            reference.clone(),
                            format!("{} {}", full.credit_limit.normalize(), full.limit_type),
                            format!(
                                "{} ({}%)",
                                peak.normalize(),
                                percent(peak, full.credit_limit)
                            ),
                            reset,
                            full.status.to_string(),
                        ]
                    }
                    None => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "missing".into(),
                    ],
                }
            }
            Resource::Rate(o) => {
                let listed = cache
                    .listed::<RateLimits>(client, &ws)
                    .await
                    .cloned()
                    .unwrap_or_default();
                let adopt = o.spec.adopt_policy_id.as_deref();
                let found = match_remote::<RateLimits>(
                    client,
                    &listed,
                    &identity,
                    adopt,
                    &ws,
                    &declared,
                    |_| true,
                )
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|m| m.remote);
                match found {
                    Some(p) => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        format!("{} {} {}", p.value.normalize(), p.limit_type, p.unit),
                        "-".into(),
                        "-".into(),
                        p.status.to_string(),
                    ],
                    None => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        "missing".into(),
                    ],
                }
            }
            Resource::Workspace(_) => match client.get_workspace(&ws).await {
                Ok(w) => {
                    let (budget, reset, rate) = wsplan::summaries(&w);
                    let limit = [budget, rate]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join("; ");
                    [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        if limit.is_empty() { "-".into() } else { limit },
                        "-".into(),
                        reset.unwrap_or_else(|| "-".into()),
                        "active".into(),
                    ]
                }
                Err(e) => [
                    loaded.kind().into(),
                    loaded.qualified(),
                    reference.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    e.reason().into(),
                ],
            },
            Resource::ApiKey(o) => {
                let found = match existing_key(client, o, &ws).await {
                    Ok(Ok(k)) => Ok(k),
                    Ok(Err(refusal)) if refusal.reason == "IssuedKey" => {
                        Err("skipped (issued in a cluster)".to_owned())
                    }
                    Ok(Err(refusal)) => Err(refusal.reason.to_owned()),
                    Err(e) => Err(e.reason().to_owned()),
                };
                match found {
                    Ok(k) => {
                        let (budget, reset, rate) = keyplan::summaries(&k);
                        let limit = [budget, rate]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>()
                            .join("; ");
                        [
                            loaded.kind().into(),
                            loaded.qualified(),
                            reference.clone(),
                            if limit.is_empty() { "-".into() } else { limit },
                            "-".into(),
                            reset.unwrap_or_else(|| "-".into()),
                            k.status
                                .map(|s| s.to_string())
                                .unwrap_or_else(|| "-".into()),
                        ]
                    }
                    Err(state) => [
                        loaded.kind().into(),
                        loaded.qualified(),
                        reference.clone(),
                        "-".into(),
                        "-".into(),
                        "-".into(),
                        state,
                    ],
                }
            }
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, cell)| format!("{cell:<width$}", width = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}
