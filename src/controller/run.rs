//! The kube-runtime wiring: one watch and controller per kind (and namespace), the Namespace
//! watch for bindings, the entry points and the per-object backoff.

use super::*;

/// What every entry point does around a kind's reconcile: a cached copy this process already
/// replaced by a later write is skipped (the watch brings the newer one and with it a pass),
/// the versions the pass's writes replaced are recorded, and the bookkeeping is done.
///
/// Entry points hand the pass over boxed: each layer of async function holding a future by
/// value adds its size again, and the controller moves the whole reconcile future around (a
/// policy pass unboxed made a 40 KB future copied several times per reconcile).
pub(super) async fn entry<K, Fut>(obj: &K, ctx: &Context, pass: Fut) -> Result<Action, Error>
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
pub async fn reconcile_policy<R: PolicyResource + engine::Reconciler>(
    obj: Arc<R>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    entry(
        obj.as_ref(),
        &ctx,
        Box::pin(engine::reconcile(obj.as_ref(), &ctx)),
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
pub(super) fn apis<R>(ctx: &Context) -> Vec<Api<R>>
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

pub(super) type Shutdown =
    futures::future::Shared<std::pin::Pin<Box<dyn Future<Output = ()> + Send + Sync>>>;
pub(super) type Task = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;
pub(super) type Ready = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

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
pub(super) fn controller_for<K, F, Fut>(
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

/// One watch of Namespace metadata: the workspace bindings (the store `Context` reads them
/// from), and the name of each namespace whose binding changed, sent on the returned channel so
/// its resources are reconciled.
fn namespace_watch(
    ctx: &Arc<Context>,
    shutdown: Shutdown,
) -> (Task, Ready, tokio::sync::broadcast::Sender<String>) {
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
    .take_until(shutdown)
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
    (Box::pin(namespaces), namespaces_ready, bindings)
}

/// Runs the controllers (UsageLimitPolicy, RateLimitPolicy, WorkspaceBudget, ApiKeyBudget) until `shutdown`
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
    let (namespaces, namespaces_ready, bindings) = namespace_watch(&ctx, shutdown.clone());
    for api in apis::<UsageLimitPolicy>(&ctx) {
        add(controller_for(
            api,
            &ctx,
            shutdown.clone(),
            <UsageLimitPolicy as crate::api::ShortName>::SHORT,
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
            <RateLimitPolicy as crate::api::ShortName>::SHORT,
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
        <WorkspaceBudget as crate::api::ShortName>::SHORT,
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
            <ApiKeyBudget as crate::api::ShortName>::SHORT,
            reconcile_api_key,
            Some(&bindings),
            move |store| {
                if i == 0 && !several {
                    let _ = akb_ctx.api_key_budgets.set(store);
                }
            },
        ));
    }
    tasks.push(namespaces);
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
