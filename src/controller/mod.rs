//! kube-runtime wiring: the shared context, errors, per-object backoff and the controller loop.

pub mod api_key;
pub mod conditions;
pub mod kube_ops;
pub mod manager;
#[cfg(feature = "bench")]
pub mod memkube;
pub mod policy;
pub mod rate;
pub mod usage;
pub mod workspace;

use std::collections::HashMap;
use std::future::Future;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use k8s_openapi::api::core::v1::{Namespace, ObjectReference};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as RuntimeConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, CustomResourceExt, Resource, ResourceExt};
use rand::Rng;

use crate::api::validate::CompiledCrd;
use crate::api::{ApiKeyBudget, RateLimitPolicy, UsageLimitPolicy, WorkspaceBudget};
use crate::config::ControllerConfig;
use crate::metrics::{Health, Metrics};
use crate::portkey::{PortkeyClient, PortkeyError};
use policy::PolicyResource;

/// Why a reconcile failed (it is retried with backoff), with the step that failed (e.g.
/// "add the finalizer", "write the status", "create the policy").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not {step} (Kubernetes API): {source}")]
    Kube {
        step: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("could not {step}: {source}")]
    Portkey {
        step: &'static str,
        #[source]
        source: PortkeyError,
    },
}

impl From<kube::Error> for Error {
    fn from(source: kube::Error) -> Self {
        Error::Kube {
            step: "call the Kubernetes API",
            source,
        }
    }
}

impl From<PortkeyError> for Error {
    fn from(source: PortkeyError) -> Self {
        Error::Portkey {
            step: "call the Portkey Admin API",
            source,
        }
    }
}

impl Error {
    pub fn kube(step: &'static str, source: kube::Error) -> Self {
        Error::Kube { step, source }
    }

    pub fn portkey(step: &'static str, source: PortkeyError) -> Self {
        Error::Portkey { step, source }
    }

    /// CamelCase reason for conditions and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubernetesApiError",
            Error::Portkey { source, .. } => source.reason(),
        }
    }

    /// A 409 Conflict from the Kubernetes API: this pass worked from a copy of the resource the
    /// watch has already replaced. Not a failure: the newer version is reconciled at once.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube { source, .. } if kube_ops::is_conflict(source))
    }

    /// True when retrying cannot help (an Admin API validation error).
    pub fn is_terminal(&self) -> bool {
        matches!(self, Error::Portkey { source, .. } if source.is_terminal())
    }

    /// True when only a human can fix it: an invalid request, a key that is refused or lacks
    /// a scope, an exhausted subscription. Still retried (the key may be fixed), but Stalled.
    pub fn needs_human(&self) -> bool {
        match self {
            Error::Portkey { source, .. } => {
                source.is_terminal()
                    || matches!(
                        source,
                        PortkeyError::Unauthorized { .. }
                            | PortkeyError::Forbidden { .. }
                            | PortkeyError::Http { status: 402, .. }
                    )
            }
            Error::Kube { source, .. } => {
                matches!(source, kube::Error::Api(s) if s.code == 401 || s.code == 403)
            }
        }
    }

    /// The condition message: stable between passes (no "retry after N s"), and naming the
    /// scope a refused key lacks.
    pub fn condition_message(&self) -> String {
        match self {
            Error::Portkey {
                step,
                source: PortkeyError::RateLimited { message, .. },
            } => {
                format!("could not {step}: Portkey Admin API rate limit hit (HTTP 429): {message}")
            }
            Error::Portkey {
                step,
                source: e @ PortkeyError::Forbidden { .. },
            } => format!(
                "could not {step}: {e}; the Admin API key needs the {} scope for this workspace (on Prisma AIRS AI Gateway: the service account's role must cover that operation in this tenant), or the object belongs to another workspace",
                e.missing_scope().unwrap_or("matching")
            ),
            Error::Portkey {
                step,
                source: e @ PortkeyError::Unauthorized { .. },
            } => format!(
                "could not {step}: {e}; check the Admin API key (missing, wrong, expired or rotated)"
            ),
            other => other.to_string(),
        }
    }

    /// What the failure means for the conditions.
    pub fn outcome(&self) -> conditions::Outcome {
        let reason = self.reason();
        let message = self.condition_message();
        if self.needs_human() {
            conditions::Outcome::Stalled { reason, message }
        } else {
            conditions::Outcome::Retrying { reason, message }
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Portkey { source, .. } => source.retry_after(),
            Error::Kube { .. } => None,
        }
    }
}

/// Resolves workspace ids/slugs to UUIDs, cached for a while (they never change).
#[derive(Default)]
pub struct WorkspaceCache {
    entries: Mutex<HashMap<String, (String, Instant)>>,
    /// Held while a miss is resolved, so that concurrent reconciles make one call, not many.
    resolving: tokio::sync::Mutex<()>,
}

const WORKSPACE_TTL: Duration = Duration::from_secs(600);

impl WorkspaceCache {
    pub async fn resolve(
        &self,
        portkey: &PortkeyClient,
        id_or_slug: &str,
    ) -> Result<String, PortkeyError> {
        let key = id_or_slug.to_ascii_lowercase();
        let cached = || {
            self.entries
                .lock()
                .expect("cache lock")
                .get(&key)
                .filter(|(_, at)| at.elapsed() < WORKSPACE_TTL)
                .map(|(id, _)| id.clone())
        };
        if let Some(id) = cached() {
            return Ok(id);
        }
        let _one_at_a_time = self.resolving.lock().await;
        if let Some(id) = cached() {
            return Ok(id);
        }
        let id = portkey.resolve_workspace_id(id_or_slug).await?;
        self.entries
            .lock()
            .expect("cache lock")
            .insert(key, (id.clone(), Instant::now()));
        Ok(id)
    }
}

/// One policy carrying an ownership marker, as found in a workspace listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEntry {
    pub id: String,
    pub name: Option<String>,
    pub created_at: Option<jiff::Timestamp>,
}

struct OwnedSnapshot {
    taken: Instant,
    /// The policies that carry a marker, sorted by it (one vector: a map keyed by a copy of
    /// each marker cost about twice the memory at 10,000 policies).
    by_marker: Vec<Marked>,
}

/// A listed policy and where its marker is in its name (finding the marker in each name at
/// every comparison of a lookup's binary search was a few percent of the idle CPU).
struct Marked {
    entry: OwnedEntry,
    marker: (u32, u32),
}

impl Marked {
    fn new(entry: OwnedEntry) -> Option<Self> {
        let name = entry.name.as_deref()?;
        let marker = crate::plan::marker::marker_in(name)?;
        let start = marker.as_ptr() as usize - name.as_ptr() as usize;
        let marker = (
            u32::try_from(start).ok()?,
            u32::try_from(start + marker.len()).ok()?,
        );
        Some(Marked { entry, marker })
    }

    fn marker(&self) -> &str {
        let name = self.entry.name.as_deref().unwrap_or_default();
        name.get(self.marker.0 as usize..self.marker.1 as usize)
            .unwrap_or_default()
    }
}

type OwnedSlot = Arc<tokio::sync::Mutex<Option<Arc<OwnedSnapshot>>>>;

/// Adopt-before-create without listing the whole workspace for every create: one listing of a
/// workspace's active policies (per family) is indexed by ownership marker and reused for
/// [`OWNED_INDEX_TTL`]; concurrent reconciles wait for the one listing in progress.
///
/// Why a snapshot is safe: within this process a resource's policy is only created by its own
/// reconcile, which records the id in status (or, if it crashed before that, leaves the
/// create-pending annotation, and a pending resource always lists afresh). Another operator
/// process only creates while it holds the leader Lease, also behind the annotation. A stale
/// entry (a policy archived since) is caught by the GET that follows.
#[derive(Default)]
pub struct OwnedIndex {
    slots: Mutex<HashMap<(String, String), OwnedSlot>>,
}

/// How long a workspace listing serves adopt-before-create lookups.
pub const OWNED_INDEX_TTL: Duration = Duration::from_secs(30);

impl OwnedIndex {
    /// Forgets the listing of `workspace` (family `kind`): this process just created or
    /// archived a policy there.
    pub fn invalidate(&self, kind: &str, workspace: &str) {
        let slot = self
            .slots
            .lock()
            .expect("owned index lock")
            .get(&(kind.to_owned(), workspace.to_owned()))
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut guard) = slot.try_lock()
        {
            *guard = None;
        }
    }

    /// The policies carrying any of `markers` in `workspace` (family `kind`), from a listing at
    /// most [`OWNED_INDEX_TTL`] old; `list` makes a new listing.
    pub async fn lookup<F, Fut>(
        &self,
        kind: &str,
        workspace: &str,
        markers: &[String],
        list: F,
    ) -> Result<Vec<OwnedEntry>, PortkeyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<OwnedEntry>, PortkeyError>>,
    {
        let slot = self
            .slots
            .lock()
            .expect("owned index lock")
            .entry((kind.to_owned(), workspace.to_owned()))
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        let snapshot = match guard.as_ref() {
            Some(s) if s.taken.elapsed() < OWNED_INDEX_TTL => s.clone(),
            _ => {
                // The old listing goes before the new one is made (lookups wait on this slot
                // meanwhile): with 10,000 policies, each copy is a few MiB.
                *guard = None;
                let mut by_marker: Vec<Marked> =
                    list().await?.into_iter().filter_map(Marked::new).collect();
                by_marker.sort_by(|a, b| a.marker().cmp(b.marker()));
                by_marker.shrink_to_fit();
                let s = Arc::new(OwnedSnapshot {
                    taken: Instant::now(),
                    by_marker,
                });
                *guard = Some(s.clone());
                s
            }
        };
        let entries = &snapshot.by_marker;
        Ok(markers
            .iter()
            .flat_map(|m| {
                let first = entries.partition_point(|e| e.marker() < m.as_str());
                entries[first..]
                    .iter()
                    .take_while(|e| e.marker() == m.as_str())
                    .map(|e| e.entry.clone())
            })
            .collect())
    }
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub portkey: PortkeyClient,
    pub config: ControllerConfig,
    /// Who records Events (controller name, pod).
    pub reporter: Reporter,
    /// Folds repeated Events into series; used in dry-run mode only (see [`Context::event`]).
    series_recorder: Recorder,
    pub workspaces: WorkspaceCache,
    pub owned: OwnedIndex,
    /// Namespace metadata from one watch (the workspace bindings); empty outside `run`, where
    /// bindings are read with a GET.
    namespaces: std::sync::OnceLock<reflector::Store<PartialObjectMeta<Namespace>>>,
    /// The WorkspaceBudget controller's own cache (conflicts are read from it, not listed).
    workspace_budgets: std::sync::OnceLock<reflector::Store<WorkspaceBudget>>,
    /// The ApiKeyBudget controller's cache (the conflict rule for existing keys reads it).
    api_key_budgets: std::sync::OnceLock<reflector::Store<ApiKeyBudget>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    crds: HashMap<&'static str, CompiledCrd>,
    write_limiter: crate::portkey::retry::Pacer,
    /// The read budget of periodic refreshes (`ControllerConfig::refresh_read_rate`).
    refresh_budget: Option<RefreshBudget>,
    /// The smaller budget of refreshes while other work (creates, updates, first reads) is
    /// under way: a fifth of `refresh_read_rate` (itself half the Admin API rate), so a large
    /// rollout keeps the Admin API for itself.
    busy_refresh_budget: Option<RefreshBudget>,
    /// The next free slot for a deferred refresh (see [`Context::refresh_deferred`]).
    next_refresh_slot: Mutex<Option<Instant>>,
    /// When a pass that was not a refresh last started.
    last_work: Mutex<Option<Instant>>,
    /// The origin of the refresh grid (see [`Context::refresh_interval`]).
    epoch: Instant,
    failures: Mutex<HashMap<String, u32>>,
    /// Per resource: when it was last compared with Portkey successfully (in memory: written
    /// into every object it would cost a status write per resource per refresh) and the spec it
    /// last passed client-side admission with. One map, one key copy per resource.
    memos: Mutex<HashMap<String, Memo>>,
    /// Versions of a resource this process knows a later write of its own replaced (a pass's
    /// starting version and every write but its last); kept until the cache moves past them.
    superseded: Mutex<HashMap<String, Vec<String>>>,
}

/// The step of the grid periodic refreshes start on (see [`on_grid`]).
pub const REFRESH_GRID: Duration = Duration::from_millis(250);

/// `wait`, lengthened to the next point of the refresh grid (multiples of [`REFRESH_GRID`]
/// since a fixed origin, `since` ago): the refreshes that come due within one step start
/// together, so the process wakes once for them and sends their reads back to back instead of
/// waking for each. Waking from idle is the largest single cost of a read in perf; at 1,000
/// policies every 20 s the grid took idle CPU from about 5.5 % to 2.5 to 3.7 % of a core.
pub fn on_grid(since: Duration, wait: Duration) -> Duration {
    let step = REFRESH_GRID.as_nanos();
    let due = (since + wait).as_nanos().div_ceil(step) * step;
    Duration::from_nanos(u64::try_from(due).unwrap_or(u64::MAX)).saturating_sub(since)
}

/// A read budget of periodic refreshes: its limiter, and the time between two of its reads
/// (the spacing of the slots deferred refreshes get).
struct RefreshBudget {
    limiter: DefaultDirectRateLimiter,
    spacing: Duration,
}

impl RefreshBudget {
    /// `rate` reads a second; none for 0.
    fn new(rate: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(rate)?;
        Some(RefreshBudget {
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            spacing: Duration::from_secs_f64(1.0 / f64::from(rate)),
        })
    }
}

/// What [`Context`] remembers of one resource.
#[derive(Debug, Default, Clone, Copy)]
struct Memo {
    last_sync: Option<jiff::Timestamp>,
    /// A hash of the uid, and the generation, the resource last passed client-side admission
    /// with (a refresh of an unchanged spec skips the schema and CEL check).
    admitted: Option<(u64, i64)>,
}

impl Context {
    pub fn new(
        client: Client,
        portkey: PortkeyClient,
        config: ControllerConfig,
        reporter: Reporter,
    ) -> Arc<Self> {
        Self::with_metrics(
            client,
            portkey,
            config,
            reporter,
            Arc::new(Metrics::new()),
            Arc::new(Health::default()),
        )
    }

    /// [`Context::new`] with the process's metrics and health state (the Portkey client's call
    /// observer should feed the same `metrics`).
    pub fn with_metrics(
        client: Client,
        portkey: PortkeyClient,
        config: ControllerConfig,
        reporter: Reporter,
        metrics: Arc<Metrics>,
        health: Arc<Health>,
    ) -> Arc<Self> {
        metrics.set_dry_run(config.dry_run);
        let rate = NonZeroU32::new(config.admin_api_write_rate.max(1)).expect("non-zero");
        Arc::new(Context {
            series_recorder: Recorder::new(client.clone(), reporter.clone()),
            reporter,
            client,
            portkey,
            workspaces: WorkspaceCache::default(),
            owned: OwnedIndex::default(),
            namespaces: std::sync::OnceLock::new(),
            workspace_budgets: std::sync::OnceLock::new(),
            api_key_budgets: std::sync::OnceLock::new(),
            metrics,
            health,
            crds: HashMap::from([
                ("ulp", CompiledCrd::new(&UsageLimitPolicy::crd())),
                ("rlp", CompiledCrd::new(&RateLimitPolicy::crd())),
                ("wsb", CompiledCrd::new(&WorkspaceBudget::crd())),
                ("akb", CompiledCrd::new(&ApiKeyBudget::crd())),
            ]),
            write_limiter: crate::portkey::retry::Pacer::new(Quota::per_second(rate)),
            refresh_budget: config.refresh_read_rate.and_then(RefreshBudget::new),
            busy_refresh_budget: config
                .refresh_read_rate
                .and_then(|r| RefreshBudget::new((r / 5).max(1))),
            next_refresh_slot: Mutex::new(None),
            last_work: Mutex::new(None),
            epoch: Instant::now(),
            failures: Mutex::new(HashMap::new()),
            memos: Mutex::new(HashMap::new()),
            superseded: Mutex::new(HashMap::new()),
            config,
        })
    }

    /// The compiled CRD of a kind (by its short name), for client-side validation.
    pub fn crd(&self, short: &str) -> &CompiledCrd {
        &self.crds[short]
    }

    /// What the CRD's schema and CEL rules say about `obj` (kind by short name), checked
    /// client-side once per uid and generation: an unchanged spec that passed is not checked
    /// again at every refresh.
    pub fn admission_errors<K>(&self, short: &str, obj: &K) -> Vec<crate::api::validate::FieldError>
    where
        K: Resource<DynamicType = ()> + serde::Serialize,
    {
        use std::hash::{Hash, Hasher};
        let key = key_of(obj);
        let mut uid = std::hash::DefaultHasher::new();
        obj.meta().uid.hash(&mut uid);
        let stamp = (uid.finish(), obj.meta().generation.unwrap_or_default());
        let memos = || self.memos.lock().expect("memo lock");
        if memos().get(&key).and_then(|m| m.admitted) == Some(stamp) {
            return Vec::new();
        }
        let value = serde_json::to_value(obj).expect("resources serialize");
        let errors = self.crd(short).validate(&value, None);
        if errors.is_empty() {
            memos().entry(key).or_default().admitted = Some(stamp);
        }
        errors
    }

    /// The workspace a namespace is bound to (annotation), from the namespace watch when it
    /// has the namespace, else with a GET.
    pub async fn namespace_binding(&self, namespace: &str) -> Result<Option<String>, kube::Error> {
        if let Some(store) = self.namespaces.get()
            && let Some(ns) = store.get(&reflector::ObjectRef::new(namespace))
        {
            return Ok(kube_ops::binding_of(ns.annotations()));
        }
        kube_ops::namespace_binding(&self.client, namespace).await
    }

    /// Every WorkspaceBudget, from the controller's cache when it runs, else listed.
    pub async fn workspace_budgets(&self) -> Result<Vec<WorkspaceBudget>, kube::Error> {
        if let Some(store) = self.workspace_budgets.get() {
            return Ok(store.state().iter().map(|o| (**o).clone()).collect());
        }
        let api: Api<WorkspaceBudget> = Api::all(self.client.clone());
        Ok(api.list(&Default::default()).await?.items)
    }

    /// Every ApiKeyBudget, from the controller's cache when it runs, else listed.
    pub async fn api_key_budgets(&self) -> Result<Vec<ApiKeyBudget>, kube::Error> {
        if let Some(store) = self.api_key_budgets.get() {
            return Ok(store.state().iter().map(|o| (**o).clone()).collect());
        }
        let api: Api<ApiKeyBudget> = Api::all(self.client.clone());
        Ok(api.list(&Default::default()).await?.items)
    }

    /// When `key` (see `key_of`) was last compared with Portkey successfully by this process.
    pub fn last_sync(&self, key: &str) -> Option<jiff::Timestamp> {
        self.memos
            .lock()
            .expect("memo lock")
            .get(key)
            .and_then(|m| m.last_sync)
    }

    /// Records a successful comparison with Portkey.
    pub fn synced(&self, key: &str, at: jiff::Timestamp) {
        {
            let mut memos = self.memos.lock().expect("memo lock");
            match memos.get_mut(key) {
                Some(memo) => memo.last_sync = Some(at),
                None => {
                    let memo = Memo {
                        last_sync: Some(at),
                        ..Memo::default()
                    };
                    memos.insert(key.to_owned(), memo);
                }
            }
        }
        self.metrics.last_sync(key, at);
    }

    /// Forgets a deleted resource.
    pub fn forget_sync(&self, key: &str) {
        self.memos.lock().expect("memo lock").remove(key);
        self.superseded.lock().expect("superseded lock").remove(key);
    }

    /// True when the cached copy of `key` is a version a later write of this process already
    /// replaced: the watch has not delivered that write yet and will (it triggers a pass), so
    /// a pass now would act on old state (look for a create already recorded, write a status
    /// that gets 409). A version not known as replaced drops the record.
    pub fn stale_copy(&self, key: &str, version: Option<&str>) -> bool {
        let mut superseded = self.superseded.lock().expect("superseded lock");
        match (superseded.get(key), version) {
            (Some(old), Some(v)) if old.iter().any(|o| o == v) => true,
            (Some(_), _) => {
                superseded.remove(key);
                false
            }
            (None, _) => false,
        }
    }

    /// After a pass that wrote the resource: its starting version and all but its last write
    /// are replaced.
    fn record_writes(&self, key: &str, start: Option<String>, mut written: Vec<String>) {
        if written.is_empty() {
            return;
        }
        written.pop();
        written.extend(start);
        self.superseded
            .lock()
            .expect("superseded lock")
            .insert(key.to_owned(), written);
    }

    /// For a periodic refresh (see [`Freshness::settled`]): `None` when it may read Portkey now,
    /// else when to try again. Never waits: a refresh over budget gives its worker back.
    pub fn refresh_deferred(&self) -> Option<Duration> {
        let busy = self
            .last_work
            .lock()
            .expect("work lock")
            .is_some_and(|t| t.elapsed() < Duration::from_secs(2));
        let budget = if busy {
            self.busy_refresh_budget.as_ref()?
        } else {
            self.refresh_budget.as_ref()?
        };
        let not_until = budget.limiter.check().err()?;
        let wait = not_until.wait_time_from(governor::clock::Clock::now(budget.limiter.clock()));
        self.metrics.refresh_deferred();
        // Over budget, many refreshes are waiting: each gets the next free slot at the
        // budget's rate, first come first served, so it is deferred about once. (A retry at a
        // random time within an interval deferred each refresh four or five times at 10,000
        // resources, every time a pass through the controller's queue; a retry within a second
        // was a hot loop of a million deferrals.)
        let now = Instant::now();
        let mut next = self.next_refresh_slot.lock().expect("refresh slot lock");
        let slot = next.map_or(now + wait, |n| n.max(now + wait));
        *next = Some(slot + budget.spacing);
        // The refresh starts at the first point of the refresh grid at or after its slot,
        // together with the others whose slots fall in the same step (the budget's burst, a
        // second of reads, lets them all through): one wake-up for a step's deferred
        // refreshes, not one for each slot (at 10,000 resources nearly every refresh is
        // deferred once).
        Some(on_grid(now.duration_since(self.epoch), slot - now))
    }

    /// Notes that a pass with work to do (not a periodic refresh) is starting.
    pub fn note_work(&self) {
        *self.last_work.lock().expect("work lock") = Some(Instant::now());
    }

    /// Waits for the shared Admin API write rate limiter.
    pub async fn write_permit(&self) {
        self.write_limiter.until_ready().await;
    }

    /// Records an Event on `obj`; a failure to record is logged, never fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        obj: &K,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        self.event_on(&obj.object_ref(&()), type_, reason, note)
            .await
    }

    /// [`Context::event`] on the object `regarding` refers to.
    pub async fn event_on(
        &self,
        regarding: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_owned(),
            note: Some(note.chars().take(1024).collect()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // kube's Recorder caches every Event it published for 6 minutes to fold repeats into
        // a series; at 10,000 resources that cache was a third of the operator's memory. The
        // operator records an Event only when something changed, so there is nothing to fold,
        // except in dry-run mode, where the same Would* Event comes back at every refresh:
        // only there is the caching recorder used.
        let recorder = if self.config.dry_run {
            self.series_recorder.clone()
        } else {
            Recorder::new(self.client.clone(), self.reporter.clone())
        };
        if let Err(e) = recorder.publish(&event, regarding).await {
            tracing::warn!(reason, error = %e, "could not record an Event");
        }
    }

    /// The refresh period of a kind: `--usage-refresh-interval` for kinds that report usage,
    /// `--resync-interval` for the others.
    pub fn interval(&self, reports_usage: bool) -> Duration {
        if reports_usage {
            self.config.usage_refresh_interval
        } else {
            self.config.resync_interval
        }
    }

    /// [`Context::interval`], lengthened by up to 10 % so resources do not poll in lock-step.
    /// Never shortened: a pass that came back before the interval was over only met the
    /// freshness gate and was queued again (half of all refreshes, with ±10 %).
    pub fn refresh_interval(&self, reports_usage: bool) -> Duration {
        let base = self.interval(reports_usage).as_secs_f64();
        let factor = rand::rng().random_range(1.0..=1.1);
        let wait = Duration::from_secs_f64((base * factor).max(1.0));
        on_grid(self.epoch.elapsed(), wait)
    }

    fn backoff(&self, key: &str, err: &Error) -> Duration {
        let mut failures = self.failures.lock().expect("failures lock");
        let n = failures.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        let step = Duration::from_secs(2).saturating_mul(1u32 << (*n - 1).min(8));
        let step = step.min(Duration::from_secs(300));
        let jitter = rand::rng().random_range(0.5..=1.0);
        let delay = Duration::from_secs_f64(step.as_secs_f64() * jitter);
        err.retry_after().map_or(delay, |r| r.max(delay))
    }

    /// Bookkeeping after a reconcile: metrics, and the backoff reset on success.
    fn finished(&self, kind: &str, key: &str, started: Instant, result: &Result<Action, Error>) {
        self.metrics.reconciled(
            kind,
            started.elapsed(),
            result.as_ref().err().map(Error::reason),
        );
        if result.is_ok() {
            self.failures.lock().expect("failures lock").remove(key);
        }
    }
}

fn key_of<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    format!(
        "{}/{}/{}",
        K::kind(&()),
        obj.namespace().unwrap_or_default(),
        obj.name_any()
    )
}

/// What every entry point does around a kind's reconcile: a cached copy this process already
/// replaced by a later write is skipped (the watch brings the newer one and with it a pass),
/// the versions the pass's writes replaced are recorded, and the bookkeeping is done.
///
/// Entry points hand the pass over boxed: each layer of async function holding a future by
/// value adds its size again, and the controller moves the whole reconcile future around (a
/// policy pass unboxed made a 40 KB future copied several times per reconcile).
async fn entry<K, Fut>(obj: &K, ctx: &Context, pass: Fut) -> Result<Action, Error>
where
    K: Resource<DynamicType = ()>,
    Fut: Future<Output = Result<Action, Error>>,
{
    let key = key_of(obj);
    let version = obj.resource_version();
    if ctx.stale_copy(&key, version.as_deref()) {
        tracing::debug!(object = %key, "cached copy already replaced by this process; waiting for the watch");
        // The watch event of the newer version triggers a pass sooner; this is a safety net.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let started = Instant::now();
    let (result, written) = kube_ops::journaled(pass).await;
    if obj.meta().deletion_timestamp.is_none() {
        ctx.record_writes(&key, version, written);
    }
    ctx.finished(&K::kind(&()), &key, started, &result);
    result
}

/// The reconcile entry point for a policy kind.
pub async fn reconcile_policy<R: PolicyResource>(
    obj: Arc<R>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    entry(
        obj.as_ref(),
        &ctx,
        Box::pin(policy::reconcile(obj.as_ref(), &ctx)),
    )
    .await
}

/// Per-object exponential backoff (2 s doubling to 5 min, jittered; at least any Retry-After).
pub fn error_policy<K: Resource<DynamicType = ()>>(
    obj: Arc<K>,
    err: &Error,
    ctx: Arc<Context>,
) -> Action {
    if err.is_conflict() {
        // A stale copy (our own write raced the watch): retry soon, without escalating the
        // backoff; this used to leave a tail of resources waiting seconds at the end of a
        // large rollout.
        tracing::debug!(object = %key_of(obj.as_ref()), error = %err, "stale copy; reconciling the newer version");
        return Action::requeue(Duration::from_millis(rand::random_range(50..250)));
    }
    let delay = ctx.backoff(&key_of(obj.as_ref()), err);
    tracing::warn!(object = %key_of(obj.as_ref()), error = %err, ?delay, "reconcile failed; retrying");
    Action::requeue(delay)
}

/// The APIs to watch for one kind: every namespace, or the configured ones.
fn apis<R>(ctx: &Context) -> Vec<Api<R>>
where
    R: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>,
{
    if ctx.config.namespaces.is_empty() {
        vec![Api::all(ctx.client.clone())]
    } else {
        ctx.config
            .namespaces
            .iter()
            .map(|ns| Api::namespaced(ctx.client.clone(), ns))
            .collect()
    }
}

type Shutdown = futures::future::Shared<std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>>;
type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
type Ready = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// A kind whose copies the controllers cache (see [`slim`]).
pub trait Cached: Resource {
    /// The create-pending value the status records as confirmed (kinds that create).
    fn create_confirmed(&self) -> Option<&str> {
        None
    }
}

impl Cached for UsageLimitPolicy {
    fn create_confirmed(&self) -> Option<&str> {
        self.status.as_ref()?.common.create_confirmed.as_deref()
    }
}

impl Cached for RateLimitPolicy {
    fn create_confirmed(&self) -> Option<&str> {
        self.status.as_ref()?.common.create_confirmed.as_deref()
    }
}

impl Cached for ApiKeyBudget {
    fn create_confirmed(&self) -> Option<&str> {
        self.status.as_ref()?.create_confirmed.as_deref()
    }
}

impl Cached for WorkspaceBudget {}

impl Cached for PartialObjectMeta<Namespace> {}

/// What a cached copy of a resource does not need: its `managedFields`, kubectl's last-applied
/// annotation, and a create-pending annotation the status confirms (it means the same as none:
/// see [`pending_create`]; a one-entry annotation map was a sixth of a cached policy). The
/// operator never writes whole objects from the cache: every write is a patch of named fields,
/// guarded by the resourceVersion, which is kept.
pub fn slim<K: Cached>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
    let confirmed = obj.create_confirmed().is_some_and(|confirmed| {
        obj.annotations()
            .get(crate::api::CREATE_PENDING_ANNOTATION)
            .is_some_and(|stamp| stamp == confirmed)
    });
    let meta = obj.meta_mut();
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
        if confirmed {
            annotations.remove(crate::api::CREATE_PENDING_ANNOTATION);
        }
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// One controller's run future, and a future that resolves once its cache is synced.
fn controller_for<K, F, Fut>(
    api: Api<K>,
    ctx: &Arc<Context>,
    shutdown: Shutdown,
    kind: &'static str,
    reconcile: F,
    bindings: Option<&tokio::sync::broadcast::Sender<String>>,
    on_store: impl FnOnce(reflector::Store<K>),
) -> (Task, Ready)
where
    K: Resource<DynamicType = ()>
        + Cached
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnMut(Arc<K>, Arc<Context>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Action, Error>> + Send + 'static,
{
    // The controller's cache holds every resource for the life of the process: keep only what
    // a reconcile reads. `managedFields` (one entry per writer, each a copy of the field set)
    // and kubectl's last-applied copy of the whole object were most of each cached object.
    let (store, writer) = reflector::store::<K>();
    let trigger = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).modify(slim),
    )
    .applied_objects();
    // kube-runtime starts reconciling only once the cache has synced, and its runner waits for
    // that sync even after a graceful shutdown ended the watch: a shutdown before the first
    // list finished (a SIGTERM right after winning the Lease) hung the process. A controller
    // whose cache has not synced when the shutdown comes has run nothing, so it is dropped;
    // one that has synced finishes its in-flight reconciles.
    let synced = store.clone();
    let stop = shutdown.clone();
    let unsynced_at_shutdown = async move {
        stop.await;
        if futures::FutureExt::now_or_never(synced.wait_until_ready()).is_some() {
            std::future::pending::<()>().await
        }
    };
    let mut controller = Controller::for_stream(trigger, store.clone())
        .with_config(RuntimeConfig::default().concurrency(ctx.config.concurrency.max(1)))
        .graceful_shutdown_on(shutdown);
    on_store(store.clone());
    if let Some(bindings) = bindings {
        // A changed binding annotation reconciles the resources of that namespace.
        let rx = bindings.subscribe();
        let cache = store.clone();
        let changed = futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(ns) => return Some((ns, rx)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        let refs = changed.flat_map(move |ns: String| {
            let refs: Vec<reflector::ObjectRef<K>> = cache
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(ns.as_str()))
                .map(|o| reflector::ObjectRef::from_obj(o.as_ref()))
                .collect();
            futures::stream::iter(refs)
        });
        controller = controller.reconcile_on(refs);
    }
    let ready: Ready = Box::pin(async move {
        let _ = store.wait_until_ready().await;
    });
    let task: Task = Box::pin(
        controller
            .run(reconcile, error_policy, ctx.clone())
            .take_until(unsynced_at_shutdown)
            .for_each(move |result| async move {
                match result {
                    Ok((obj, _)) => tracing::debug!(kind, object = %obj.name, "reconciled"),
                    Err(e) => tracing::debug!(kind, error = %e, "reconcile error"),
                }
            }),
    );
    (task, ready)
}

/// Runs the controllers (UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget) until `shutdown`
/// resolves; in-flight reconciles finish first. Marks the caches synced in `ctx.health` once
/// every controller has listed its resources.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let boxed: std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>> = Box::pin(shutdown);
    let shutdown = futures::future::FutureExt::shared(boxed);
    let mut tasks: Vec<Task> = Vec::new();
    let mut ready: Vec<Ready> = Vec::new();
    let mut add = |(task, r): (Task, Ready)| {
        tasks.push(task);
        ready.push(r);
    };
    // One watch of Namespace metadata: the workspace bindings, and a reconcile of a namespace's
    // resources when its binding changes.
    let (ns_store, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let _ = ctx.namespaces.set(ns_store.clone());
    let (bindings, _) = tokio::sync::broadcast::channel::<String>(1024);
    let announce = bindings.clone();
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let namespaces = watcher::watcher(
        Api::<PartialObjectMeta<Namespace>>::all(ctx.client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .modify(slim)
    .default_backoff()
    .reflect(ns_writer)
    .applied_objects()
    .take_until(shutdown.clone())
    .for_each(move |ns| {
        if let Ok(ns) = ns {
            let name = ns.name_any();
            let binding = kube_ops::binding_of(ns.annotations());
            if let Some(before) = seen.insert(name.clone(), binding.clone())
                && before != binding
            {
                tracing::info!(namespace = %name, "the workspace binding changed; reconciling the namespace's resources");
                let _ = announce.send(name);
            }
        }
        futures::future::ready(())
    });
    let namespaces_ready: Ready = Box::pin(async move {
        let _ = ns_store.wait_until_ready().await;
    });
    for api in apis::<UsageLimitPolicy>(&ctx) {
        add(controller_for(
            api,
            &ctx,
            shutdown.clone(),
            "ulp",
            reconcile_policy::<UsageLimitPolicy>,
            Some(&bindings),
            |_| {},
        ));
    }
    for api in apis::<RateLimitPolicy>(&ctx) {
        add(controller_for(
            api,
            &ctx,
            shutdown.clone(),
            "rlp",
            reconcile_policy::<RateLimitPolicy>,
            Some(&bindings),
            |_| {},
        ));
    }
    let wsb_ctx = ctx.clone();
    add(controller_for(
        Api::<WorkspaceBudget>::all(ctx.client.clone()),
        &ctx,
        shutdown.clone(),
        "wsb",
        reconcile_workspace,
        None,
        move |store| {
            let _ = wsb_ctx.workspace_budgets.set(store);
        },
    ));
    for (i, api) in apis::<ApiKeyBudget>(&ctx).into_iter().enumerate() {
        // The conflict rule reads the store of the first watch (all namespaces, or the first
        // configured one; with several namespaces it falls back to a list).
        let akb_ctx = ctx.clone();
        let several = ctx.config.namespaces.len() > 1;
        add(controller_for(
            api,
            &ctx,
            shutdown.clone(),
            "akb",
            reconcile_api_key,
            Some(&bindings),
            move |store| {
                if i == 0 && !several {
                    let _ = akb_ctx.api_key_budgets.set(store);
                }
            },
        ));
    }
    tasks.push(Box::pin(namespaces));
    ready.push(namespaces_ready);
    let health = ctx.health.clone();
    let stopped = shutdown.clone();
    tasks.push(Box::pin(async move {
        // A shutdown before every cache has synced stops the watches, so some never will:
        // this task ends with the shutdown too (else `run` never returned).
        tokio::select! {
            _ = futures::future::join_all(ready) => {
                tracing::info!("caches synced; reconciling");
                health.set_caches_synced(true);
            }
            () = stopped => {}
        }
    }));
    // Each watch and controller is a task of its own: joined in one future, every wake-up of
    // any of them (a reply, a timer) polled all of them. Dropping the set stops them.
    let mut set = tokio::task::JoinSet::new();
    for task in tasks {
        set.spawn(task);
    }
    while let Some(done) = set.join_next().await {
        if let Err(e) = done
            && e.is_panic()
        {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// The reconcile entry point for `ApiKeyBudget`.
pub async fn reconcile_api_key(obj: Arc<ApiKeyBudget>, ctx: Arc<Context>) -> Result<Action, Error> {
    entry(
        obj.as_ref(),
        &ctx,
        Box::pin(api_key::reconcile(obj.as_ref(), &ctx)),
    )
    .await
}

/// The reconcile entry point for `WorkspaceBudget`.
pub async fn reconcile_workspace(
    obj: Arc<WorkspaceBudget>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    entry(
        obj.as_ref(),
        &ctx,
        Box::pin(workspace::reconcile(obj.as_ref(), &ctx)),
    )
    .await
}

/// A healthy resource synced within the refresh interval needs no Admin API call: this is what
/// keeps the operator's own status writes (which trigger a reconcile) from becoming Portkey reads.
/// Returns the requeue for the rest of the interval, or `None` when the resource must be checked.
/// What the freshness gate looks at.
pub struct Freshness<'a> {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    /// When this process last compared the resource with Portkey.
    pub last_sync: Option<jiff::Timestamp>,
    /// A create is pending.
    pub pending: bool,
    /// The paused annotation is set.
    pub paused: bool,
}

/// The freshness gate: a resource compared with Portkey within `interval`, healthy, with an
/// unchanged spec and pause state, is left alone until the interval is over (its own status
/// writes, Events or unrelated metadata changes cost no Admin API call).
pub fn fresh(f: Freshness<'_>, now: jiff::Timestamp, interval: Duration) -> Option<Action> {
    let age = Duration::try_from(now.duration_since(f.last_sync?)).ok()?;
    (f.settled() && age < interval).then(|| {
        Action::requeue(interval - age + Duration::from_millis(rand::random_range(0..1000)))
    })
}

/// The gate before a pass reads Portkey: [`fresh`], and for a periodic refresh (a settled
/// resource whose interval is over) the refresh read budget, so refreshes never crowd out
/// creates and updates (`Context::refresh_deferred`).
pub fn gate(
    ctx: &Context,
    f: Freshness<'_>,
    now: jiff::Timestamp,
    interval: Duration,
) -> Option<Action> {
    let refresh = f.settled();
    if let Some(action) = fresh(f, now, interval) {
        return Some(action);
    }
    if !refresh {
        ctx.note_work();
        return None;
    }
    ctx.refresh_deferred().map(Action::requeue)
}

impl Freshness<'_> {
    /// Nothing asks for work but time: healthy (Ready, and Synced or paused), the spec seen,
    /// no create pending, no one-shot due, the pause state unchanged. A pass over such a
    /// resource is a periodic refresh.
    pub fn settled(&self) -> bool {
        let synced = conditions::get(self.conditions, conditions::SYNCED);
        let was_paused =
            synced.is_some_and(|c| c.reason == conditions::reasons::RECONCILIATION_PAUSED);
        let healthy = conditions::is_true(self.conditions, conditions::READY)
            && (synced.is_some_and(|c| c.status == conditions::TRUE) || was_paused);
        self.generation == self.observed_generation
            && healthy
            && !self.pending
            && self.paused == was_paused
    }
}

/// A `Reporter` naming this process (pod name when set).
pub fn reporter() -> Reporter {
    Reporter {
        controller: "portkey-budget-operator".into(),
        instance: std::env::var("POD_NAME").ok(),
    }
}

/// A create bracketed by the crash-safety record: the finalizer and the create-pending
/// annotation in one patch guarded by the resourceVersion (a stale cached copy cannot create
/// twice), then the Admin API create after the write permit; when the create certainly made
/// nothing (`policy::definitely_not_created`) the record is cleared again. Otherwise the record
/// stays until the caller sees the new object in Portkey. `obj` is updated to what is stored.
pub(crate) async fn bracketed_create<K, T, F, Fut>(
    ctx: &Context,
    api: &Api<K>,
    obj: &mut K,
    stamp: &str,
    step: &'static str,
    create: F,
) -> Result<T, Error>
where
    K: kube_ops::Managed,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, PortkeyError>>,
{
    *obj = kube_ops::mark_create_pending(api, obj, stamp)
        .await
        .map_err(|e| Error::kube("write the create-pending record", e))?;
    ctx.write_permit().await;
    match create().await {
        Ok(created) => Ok(created),
        Err(e) => {
            if policy::definitely_not_created(&e) {
                *obj =
                    kube_ops::set_annotation(api, obj, crate::api::CREATE_PENDING_ANNOTATION, None)
                        .await
                        .map_err(|e| Error::kube("clear the create-pending record", e))?;
            }
            Err(Error::portkey(step, e))
        }
    }
}

/// When a create was sent whose result this resource has not seen through: the create-pending
/// annotation, unless the status confirms that very value (`createConfirmed`). Confirming in the
/// status write a pass makes anyway saves clearing the annotation with a write of its own.
pub fn pending_create<K: Resource>(obj: &K, confirmed: Option<&str>) -> Option<jiff::Timestamp> {
    let stamp = obj
        .annotations()
        .get(crate::api::CREATE_PENDING_ANNOTATION)?;
    if confirmed == Some(stamp.as_str()) {
        return None;
    }
    Some(stamp.parse().unwrap_or(jiff::Timestamp::UNIX_EPOCH))
}

/// The create-pending value to record as confirmed once Portkey shows what the create made.
pub fn create_stamp<K: Resource>(obj: &K) -> Option<String> {
    obj.annotations()
        .get(crate::api::CREATE_PENDING_ANNOTATION)
        .cloned()
}

/// The value of a one-shot annotation (rotate, reset-usage), if set and not blank.
pub fn annotation_token<K: Resource>(obj: &K, annotation: &str) -> Option<String> {
    obj.annotations()
        .get(annotation)
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// True when a one-shot annotation holds a token not yet seen through (`done` records the last
/// one: its token, and whether Portkey confirmed it).
pub fn one_shot_due(token: Option<&str>, done: Option<&crate::api::OneShot>) -> bool {
    match (token, done) {
        (None, _) => false,
        (Some(t), Some(d)) => d.token != t || d.completed_at.is_none(),
        (Some(_), None) => true,
    }
}

/// `ResourceExt::name_any` for log fields.
pub fn object_name<K: Resource<DynamicType = ()>>(obj: &K) -> String {
    key_of(obj)
}

pub use kube::runtime::events::EventType as EventKind;
