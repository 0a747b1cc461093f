//! Resources + Portkey → a plan (read only): each resource is planned by its kind
//! ([`super::kinds`]) in its workspace; errors of the Admin API are gathered (a refused key stops
//! the plan at once), and `--prune` adds the archives of what no manifest declares.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use serde::Serialize;

use super::apply::Write;
use super::kinds::{Declarations, KINDS, PruneScope, Scope};
use super::load::{Loaded, Source};
use super::problem::{Class, Problem};
use super::progress::Progress;
use super::remote::RemoteCache;
use crate::plan::FieldChange;
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

/// What applying an item writes, with the exact bodies (made by the item's kind).
pub type Exec = Arc<dyn Write>;

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
    /// How the plan names what it concerns (`policy …`, `workspace …`); set by its kind.
    #[serde(skip)]
    pub(super) shown: Option<String>,
    #[serde(skip)]
    pub(super) exec: Option<Exec>,
}

impl PlanItem {
    /// An unchanged item of `loaded` in workspace `workspace` (as the manifest names it).
    pub(super) fn of(loaded: &Loaded, workspace: &str) -> Self {
        PlanItem {
            kind: loaded.kind().into(),
            name: loaded.qualified(),
            source: Some(loaded.source.clone()),
            workspace: Some(workspace.to_owned()),
            action: ChangeKind::Unchanged,
            target: None,
            changes: vec![],
            warnings: vec![],
            shown: None,
            exec: None,
        }
    }

    /// Blocked, with why.
    pub(super) fn block(&mut self, warning: String) {
        self.action = ChangeKind::Blocked;
        self.warnings.push(warning);
    }

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

/// An Admin API error while planning `loaded`.
fn api_problem(loaded: &Loaded, e: &PortkeyError) -> Problem {
    let needs = e
        .missing_scope()
        .map(|scope| {
            format!(
                "; the Admin API key needs the {scope} scope (docs/install.md lists each kind's)"
            )
        })
        .unwrap_or_default();
    loaded.problem_here(Class::Api, format!("reading Portkey: {e}{needs}"))
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
                "; the key lacks the scopes plan and sync need (workspaces.read; policies.read, policies.list, policies.create, policies.update, policies.delete; workspaces.update for WorkspaceBudgets; workspace_service_api_keys.read, .list and .update for ApiKeyBudgets: docs/install.md)",
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

/// `(kind, namespace/name)` of every resource the manifests declare; no workspace claims.
pub(super) fn declared_identities(resources: &[Loaded], settings: &PlanSettings) -> Declarations {
    let identities = resources
        .iter()
        .map(|l| {
            let identity = l.identity(settings);
            (identity.kind.to_owned(), identity.qualified())
        })
        .collect();
    Declarations {
        identities,
        claims: Default::default(),
    }
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
    let mut run = Planning::new(client, resources, settings).await;
    progress.phase("reading", resources.len());
    for loaded in resources {
        progress.step();
        if run.plan_resource(loaded).await.is_break() {
            progress.done();
            return run.plan;
        }
    }
    progress.done();
    if let Some(refused) = run.refused_everywhere(resources.len()) {
        return refused;
    }
    if settings.prune {
        run.prune().await;
    }
    run.plan
}

/// A plan being made.
struct Planning<'a> {
    client: &'a PortkeyClient,
    settings: &'a PlanSettings,
    cache: RemoteCache,
    declared: Declarations,
    /// The workspaces planned in (what `--prune` looks at).
    workspace_ids: BTreeSet<String>,
    /// 403s per resource: when every resource got one, the key is what is refused.
    forbidden: Option<PortkeyError>,
    forbidden_count: usize,
    plan: Plan,
}

impl<'a> Planning<'a> {
    async fn new(
        client: &'a PortkeyClient,
        resources: &[Loaded],
        settings: &'a PlanSettings,
    ) -> Self {
        let mut cache = RemoteCache::default();
        let mut declared = declared_identities(resources, settings);
        // Resources that claim their workspace, by workspace, for the shared conflict rule.
        for loaded in resources {
            if loaded.resource.claims_workspace()
                && let Some(reference) = loaded.workspace()
                && let Ok(ws) = cache.workspace_id(client, reference).await
            {
                declared
                    .claims
                    .entry(ws)
                    .or_default()
                    .push(loaded.qualified());
            }
        }
        Planning {
            client,
            settings,
            cache,
            declared,
            workspace_ids: BTreeSet::new(),
            forbidden: None,
            forbidden_count: 0,
            plan: Plan {
                items: Vec::new(),
                errors: Vec::new(),
            },
        }
    }

    /// Plans one resource in its workspace; breaks when the key is refused (401).
    async fn plan_resource(&mut self, loaded: &Loaded) -> ControlFlow<()> {
        let Some(reference) = loaded
            .workspace()
            .or(self.settings.default_workspace.as_deref())
        else {
            self.plan.errors.push(loaded.problem(
                Class::Manifest,
                "spec.workspace",
                "is required by plan and sync (no cluster here to bind namespaces to workspaces); set it or pass --default-workspace",
            ));
            return ControlFlow::Continue(());
        };
        let ws = match self.cache.workspace_id(self.client, reference).await {
            Ok(id) => id,
            Err(e) if e.is_not_found() => {
                self.plan.errors.push(not_a_workspace(loaded, reference));
                return ControlFlow::Continue(());
            }
            Err(e) => return self.api_error(loaded, e),
        };
        self.workspace_ids.insert(ws.clone());
        let mut scope = Scope {
            client: self.client,
            cache: &mut self.cache,
            declared: &self.declared,
            loaded,
            reference,
            ws: &ws,
            identity: loaded.identity(self.settings),
        };
        match loaded.resource.plan(&mut scope).await {
            Ok(items) => {
                self.plan.items.extend(items);
                ControlFlow::Continue(())
            }
            Err(e) => self.api_error(loaded, e),
        }
    }

    /// An Admin API error while planning `loaded`: a refused key (401) stops the plan.
    fn api_error(&mut self, loaded: &Loaded, e: PortkeyError) -> ControlFlow<()> {
        if e.status() == Some(401) {
            self.plan.errors.push(key_refused(&e, false));
            return ControlFlow::Break(());
        }
        if e.status() == Some(403) {
            self.forbidden_count += 1;
            self.forbidden.get_or_insert(e.clone());
        }
        self.plan.errors.push(api_problem(loaded, &e));
        ControlFlow::Continue(())
    }

    /// One error instead of the plan when every resource was refused with 403 and nothing was
    /// planned: the key is what is refused.
    fn refused_everywhere(&self, resources: usize) -> Option<Plan> {
        let e = self.forbidden.as_ref()?;
        (self.plan.items.is_empty() && self.forbidden_count == resources).then(|| Plan {
            items: Vec::new(),
            errors: vec![key_refused(e, true)],
        })
    }

    /// `--prune`: archives of this installation's remote objects that no manifest declares,
    /// in the workspaces planned in; all blocked when more than `--max-prune`.
    async fn prune(&mut self) {
        let mut archives = Vec::new();
        for ws in &self.workspace_ids {
            match prunable_in(&mut PruneScope {
                client: self.client,
                cache: &mut self.cache,
                declared: &self.declared,
                ws,
                installation_id: &self.settings.installation_id,
            })
            .await
            {
                Ok(found) => archives.extend(found),
                Err(e) => self.plan.errors.push(Problem::new(
                    Class::Api,
                    format!("reading Portkey for --prune: {e}"),
                )),
            }
        }
        if archives.len() > self.settings.max_prune {
            self.plan.errors.push(Problem::new(
                Class::Refused,
                format!(
                    "--prune would archive {} policies, more than --max-prune {}; refusing (check the list, then raise --max-prune)",
                    archives.len(),
                    self.settings.max_prune
                ),
            ));
            for a in &mut archives {
                a.action = ChangeKind::Blocked;
                a.exec = None;
            }
        }
        self.plan.items.extend(archives);
    }
}

/// What every kind would prune in one workspace (nothing of it when one listing fails).
async fn prunable_in(cx: &mut PruneScope<'_>) -> Result<Vec<PlanItem>, PortkeyError> {
    let mut found = Vec::new();
    for kind in KINDS {
        found.extend((kind.prune)(cx).await?);
    }
    Ok(found)
}

/// `spec.workspace` names no workspace the key can see.
fn not_a_workspace(loaded: &Loaded, reference: &str) -> Problem {
    let mut p = loaded.problem(
        Class::Refused,
        "spec.workspace",
        "is not a workspace in Portkey (a slug or id of a workspace the Admin API key can see)",
    );
    p.value = Some(serde_json::Value::String(reference.to_owned()).to_string());
    p
}
