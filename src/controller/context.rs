//! What every reconcile shares (`Context`): clients, configuration, caches, Events, the write
//! limiter, the refresh budget and grid, backoff and the in-memory memos.

use super::*;

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub portkey: PortkeyClient,
    pub config: ControllerConfig,
    /// Who records Events (controller name, pod).
    pub reporter: Reporter,
    /// Folds repeated Events into series; used in dry-run mode only (see [`Context::event`]).
    pub(super) series_recorder: Recorder,
    pub workspaces: WorkspaceCache,
    pub owned: OwnedIndex,
    /// Namespace metadata from one watch (the workspace bindings); empty outside `run`, where
    /// bindings are read with a GET.
    pub(super) namespaces: std::sync::OnceLock<reflector::Store<PartialObjectMeta<Namespace>>>,
    /// The WorkspaceBudget controller's own cache (conflicts are read from it, not listed).
    pub(super) workspace_budgets: std::sync::OnceLock<reflector::Store<WorkspaceBudget>>,
    /// The ApiKeyBudget controller's cache (the conflict rule for existing keys reads it).
    pub(super) api_key_budgets: std::sync::OnceLock<reflector::Store<ApiKeyBudget>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub(super) crds: HashMap<&'static str, CompiledCrd>,
    pub(super) write_limiter: crate::portkey::retry::Pacer,
    /// The read budget of periodic refreshes (`ControllerConfig::refresh_read_rate`).
    pub(super) refresh_budget: Option<RefreshBudget>,
    /// The smaller budget of refreshes while other work (creates, updates, first reads) is
    /// under way: a fifth of `refresh_read_rate` (itself half the Admin API rate), so a large
    /// rollout keeps the Admin API for itself.
    pub(super) busy_refresh_budget: Option<RefreshBudget>,
    /// The next free slot for a deferred refresh (see [`Context::refresh_deferred`]).
    pub(super) next_refresh_slot: Mutex<Option<Instant>>,
    /// When a pass that was not a refresh last started.
    pub(super) last_work: Mutex<Option<Instant>>,
    /// The origin of the refresh grid (see [`Context::refresh_interval`]).
    pub(super) epoch: Instant,
    pub(super) failures: Mutex<HashMap<String, u32>>,
    /// Per resource: when it was last compared with Portkey successfully (in memory: written
    /// into every object it would cost a status write per resource per refresh) and the spec it
    /// last passed client-side admission with. One map, one key copy per resource.
    pub(super) memos: Mutex<HashMap<String, Memo>>,
    /// Versions of a resource this process knows a later write of its own replaced (a pass's
    /// starting version and every write but its last); kept until the cache moves past them.
    pub(super) superseded: Mutex<HashMap<String, Vec<String>>>,
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
pub(super) struct RefreshBudget {
    pub(super) limiter: DefaultDirectRateLimiter,
    pub(super) spacing: Duration,
}

impl RefreshBudget {
    /// `rate` reads a second; none for 0.
    pub(super) fn new(rate: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(rate)?;
        Some(RefreshBudget {
            limiter: RateLimiter::direct(Quota::per_second(per_second)),
            spacing: Duration::from_secs_f64(1.0 / f64::from(rate)),
        })
    }
}

/// What [`Context`] remembers of one resource.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Memo {
    pub(super) last_sync: Option<jiff::Timestamp>,
    /// A hash of the uid, and the generation, the resource last passed client-side admission
    /// with (a refresh of an unchanged spec skips the schema and CEL check).
    pub(super) admitted: Option<(u64, i64)>,
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
                (
                    <UsageLimitPolicy as crate::api::ShortName>::SHORT,
                    CompiledCrd::new(&UsageLimitPolicy::crd()),
                ),
                (
                    <RateLimitPolicy as crate::api::ShortName>::SHORT,
                    CompiledCrd::new(&RateLimitPolicy::crd()),
                ),
                (
                    <WorkspaceBudget as crate::api::ShortName>::SHORT,
                    CompiledCrd::new(&WorkspaceBudget::crd()),
                ),
                (
                    <ApiKeyBudget as crate::api::ShortName>::SHORT,
                    CompiledCrd::new(&ApiKeyBudget::crd()),
                ),
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
    pub(super) fn record_writes(&self, key: &str, start: Option<String>, written: Vec<String>) {
        let replaced = superseded_versions(start, written);
        if replaced.is_empty() {
            return;
        }
        self.superseded
            .lock()
            .expect("superseded lock")
            .insert(key.to_owned(), replaced);
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

    pub(super) fn backoff(&self, key: &str, err: &Error) -> Duration {
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
    pub(super) fn finished(
        &self,
        kind: &str,
        key: &str,
        started: Instant,
        result: &Result<Action, Error>,
    ) {
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
