//! Prometheus metrics (prometheus-client) and the operator's HTTP server (axum): `/metrics`,
//! `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Every series is labelled with bounded values only: kinds, operations, outcomes, HTTP status
//! codes, reasons (a fixed set of CamelCase words), and for the per-resource budget gauges the
//! resource's namespace/name/kind (one series per resource, removed when the resource goes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::portkey::CallRecord;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    kind: String,
    outcome: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    operation: String,
    outcome: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

/// A resource's budget figures for the per-resource gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetFigures {
    /// `cost`, `tokens` or `requests`.
    pub budget_type: String,
    /// The limit (USD for cost, tokens or requests).
    pub limit: f64,
    /// Usage of the most used bucket; `None` where Portkey reports none (API keys), and then
    /// there is no usage or ratio series.
    pub usage: Option<f64>,
    /// `usage / limit` (0 when the limit is 0).
    pub ratio: Option<f64>,
    /// The alert threshold as a fraction of the limit, when there is one.
    pub alert_ratio: Option<f64>,
    pub exhausted_buckets: i64,
    /// When usage next returns to zero (Unix seconds), when it resets.
    pub next_reset: Option<i64>,
}

/// A budget type and its unit, as label values.
fn measure_of(budget_type: &str) -> (&'static str, &'static str) {
    match budget_type {
        "cost" => ("cost", "USD"),
        "tokens" => ("tokens", "tokens"),
        _ => ("requests", "requests"),
    }
}

/// The per-resource series, kept as one compact entry per resource (`kind/namespace/name`) and
/// written out at scrape time. A labelled `Family` per figure kept a copy of every label set
/// per family: 35 MiB for 10,000 resources, against about 2 MiB this way.
#[derive(Debug, Default)]
struct PerResource {
    entries: std::sync::Mutex<std::collections::BTreeMap<String, Figures>>,
}

#[derive(Debug, Default, Clone)]
struct Figures {
    /// Ready (1/0) and its reason.
    ready: Option<(bool, Box<str>)>,
    last_sync: Option<i64>,
    budget: Option<Budget>,
}

#[derive(Debug, Clone)]
struct Budget {
    /// `cost`, `tokens` or `requests`, and `USD`, `tokens` or `requests`.
    measure: (&'static str, &'static str),
    limit: f64,
    usage: Option<f64>,
    ratio: Option<f64>,
    alert_ratio: Option<f64>,
    exhausted: i64,
    next_reset: Option<i64>,
}

/// A per-resource gauge family: its name, help, and the value of one resource (if it has one).
type Column = (
    &'static str,
    &'static str,
    fn(&Figures) -> Option<GaugeValue>,
);

#[derive(Clone, Copy)]
enum GaugeValue {
    Int(i64),
    Float(f64),
}

const READY_FAMILY: (&str, &str) = (
    "resource_ready",
    "1 when the resource is Ready, else 0, with the Ready reason; one series per resource",
);

const RESOURCE_COLUMNS: [Column; 1] = [(
    "last_sync_timestamp_seconds",
    "When the resource was last compared with Portkey successfully (Unix seconds)",
    |f| f.last_sync.map(GaugeValue::Int),
)];

const BUDGET_COLUMNS: [Column; 6] = [
    (
        "budget_limit",
        "The budget's limit in its unit (USD, tokens, requests), per resource",
        |f| f.budget.as_ref().map(|b| GaugeValue::Float(b.limit)),
    ),
    (
        "budget_usage",
        "Usage of the budget's most used bucket in its unit, per resource",
        |f| f.budget.as_ref()?.usage.map(GaugeValue::Float),
    ),
    (
        "budget_usage_ratio",
        "Usage of the most used bucket divided by the limit (1 = exhausted), per resource",
        |f| f.budget.as_ref()?.ratio.map(GaugeValue::Float),
    ),
    (
        "budget_alert_ratio",
        "The alert threshold divided by the limit, per resource that has one",
        |f| f.budget.as_ref()?.alert_ratio.map(GaugeValue::Float),
    ),
    (
        "budget_exhausted_buckets",
        "Buckets that reached the limit, per resource",
        |f| f.budget.as_ref().map(|b| GaugeValue::Int(b.exhausted)),
    ),
    (
        "budget_next_reset_timestamp_seconds",
        "When the budget's usage next returns to zero (Unix seconds), per resource that resets",
        |f| f.budget.as_ref()?.next_reset.map(GaugeValue::Int),
    ),
];

fn encode_value(
    value: GaugeValue,
    encoder: prometheus_client::encoding::MetricEncoder,
) -> std::fmt::Result {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::gauge::ConstGauge;
    match value {
        GaugeValue::Int(v) => ConstGauge::new(v).encode(encoder),
        GaugeValue::Float(v) => ConstGauge::new(v).encode(encoder),
    }
}

/// `kind/namespace/name` → its parts (namespace empty for cluster-scoped kinds).
fn split_key(key: &str) -> (&str, &str, &str) {
    let mut parts = key.splitn(3, '/');
    let mut next = || parts.next().unwrap_or_default();
    (next(), next(), next())
}

impl prometheus_client::collector::Collector for PerResource {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> std::fmt::Result {
        use prometheus_client::metrics::MetricType;
        let (name, help) = READY_FAMILY;
        let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
        self.for_each(|key, f| {
            if let Some((ready, reason)) = &f.ready {
                let (kind, namespace, name) = split_key(key);
                let labels = [
                    ("kind", kind),
                    ("namespace", namespace),
                    ("name", name),
                    ("reason", reason),
                ];
                encode_value(
                    GaugeValue::Int(i64::from(*ready)),
                    family.encode_family(&labels)?,
                )?;
            }
            Ok(())
        })?;
        for (name, help, value) in RESOURCE_COLUMNS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            self.for_each(|key, f| {
                if let Some(v) = value(f) {
                    let (kind, namespace, name) = split_key(key);
                    let labels = [("kind", kind), ("namespace", namespace), ("name", name)];
                    encode_value(v, family.encode_family(&labels)?)?;
                }
                Ok(())
            })?;
        }
        for (name, help, value) in BUDGET_COLUMNS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            self.for_each(|key, f| {
                if let (Some(v), Some(b)) = (value(f), &f.budget) {
                    let (kind, namespace, name) = split_key(key);
                    let labels = [
                        ("kind", kind),
                        ("namespace", namespace),
                        ("name", name),
                        ("type", b.measure.0),
                        ("unit", b.measure.1),
                    ];
                    encode_value(v, family.encode_family(&labels)?)?;
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}

/// The metric prefix of every family (`portkey_budget_operator_…`).
pub const PREFIX: &str = "portkey_budget_operator";

/// The operator's metrics. Cheap to share (`Arc`). Every family carries the prefix
/// [`PREFIX`]; the `kind` label always holds the resource kind (`UsageLimitPolicy`,
/// `RateLimitPolicy`, `WorkspaceBudget`), and Admin API families an `operation` label.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_outcomes: Family<OutcomeLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram>,
    api_calls: Family<CallLabels, Counter>,
    api_call_duration: Family<OperationLabels, Histogram>,
    /// Ready, last sync and budget gauges, one entry per resource.
    resources: Arc<PerResource>,
    duplicates_archived: Family<KindLabels, Counter>,
    refreshes_deferred: Counter,
    leader: Gauge,
    dry_run: Gauge,
    build_info: Family<BuildLabels, Gauge>,
}

fn duration_histogram() -> Histogram {
    // 5 ms … ~41 s
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_outcomes: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            api_calls: Family::default(),
            api_call_duration: Family::new_with_constructor(duration_histogram),
            resources: Arc::default(),
            duplicates_archived: Family::default(),
            refreshes_deferred: Counter::default(),
            leader: Gauge::default(),
            dry_run: Gauge::default(),
            build_info: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "reconciles",
            "Reconciles run, by kind",
            m.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by kind and reason",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_outcomes",
            "What reconciles concluded, by kind, outcome (in_force, progressing, held, retryable, terminal) and reason",
            m.reconcile_outcomes.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time a reconcile took, by kind",
            m.reconcile_duration.clone(),
        );
        registry.register(
            "admin_api_requests",
            "Portkey Admin API HTTP attempts, by operation, outcome (success, client_error, rate_limited, server_error, transport_error) and HTTP status",
            m.api_calls.clone(),
        );
        registry.register(
            "admin_api_request_duration_seconds",
            "Portkey Admin API HTTP attempt latency, by operation",
            m.api_call_duration.clone(),
        );
        registry.register_collector(Box::new(m.resources.clone()));
        registry.register(
            "duplicates_archived",
            "Remote policies archived because another policy carries the same resource's marker (the oldest is kept), by kind",
            m.duplicates_archived.clone(),
        );
        registry.register(
            "refreshes_deferred",
            "Periodic refreshes put back in the queue because refresh reads used up their share of the Admin API rate (half of --admin-api-rate-limit, a fifth of that while other work is under way)",
            m.refreshes_deferred.clone(),
        );
        registry.register(
            "leader",
            "1 while this instance holds the leader lease (or runs without leader election)",
            m.leader.clone(),
        );
        registry.register(
            "dry_run",
            "1 when the operator runs in dry-run mode (no writes to Portkey)",
            m.dry_run.clone(),
        );
        registry.register(
            "build_info",
            "Always 1, with the operator's version",
            m.build_info.clone(),
        );
        m.build_info
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
            })
            .set(1);
        Metrics { registry, ..m }
    }

    /// Counts one periodic refresh deferred for the refresh read budget.
    pub fn refresh_deferred(&self) {
        self.refreshes_deferred.inc();
    }

    /// Counts one duplicate policy archived.
    pub fn duplicate_archived(&self, kind: &str) {
        self.duplicates_archived
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    /// Counts one finished reconcile; `error` is its reason when it failed.
    pub fn reconciled(&self, kind: &str, took: Duration, error: Option<&str>) {
        let labels = KindLabels { kind: kind.into() };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(reason) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    kind: kind.into(),
                    reason: reason.into(),
                })
                .inc();
        }
    }

    /// Records what a reconcile of one resource concluded: the outcome counter and the
    /// resource's readiness gauge (with the Ready reason).
    pub fn outcome(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        outcome: &crate::api::conditions::Outcome,
        conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    ) {
        use crate::api::conditions::{READY, TRUE, get};
        let ready = get(conditions, READY);
        let reason = ready.map_or("Unknown", |c| c.reason.as_str());
        self.reconcile_outcomes
            .get_or_create(&OutcomeLabels {
                kind: kind.into(),
                outcome: outcome.label().into(),
                reason: reason.into(),
            })
            .inc();
        let value = ready.is_some_and(|c| c.status == TRUE);
        self.resources.update(kind, namespace, name, |f| {
            f.ready = Some((value, reason.into()));
        });
    }

    /// When a resource was last compared with Portkey (`key`: `kind/namespace/name`).
    pub fn last_sync(&self, key: &str, at: jiff::Timestamp) {
        let mut entries = self.resources.entries.lock().expect("metrics lock");
        match entries.get_mut(key) {
            Some(f) => f.last_sync = Some(at.as_second()),
            None => {
                entries.insert(
                    key.to_owned(),
                    Figures {
                        last_sync: Some(at.as_second()),
                        ..Default::default()
                    },
                );
            }
        }
    }

    /// Counts one Admin API HTTP attempt (the client's observer).
    pub fn api_call(&self, call: &CallRecord) {
        let outcome = match call.status {
            None => "transport_error",
            Some(200..=299) => "success",
            Some(429) => "rate_limited",
            Some(500..) => "server_error",
            Some(_) => "client_error",
        };
        self.api_calls
            .get_or_create(&CallLabels {
                operation: call.operation.into(),
                outcome: outcome.into(),
                status: call.status.map_or_else(|| "none".into(), |s| s.to_string()),
            })
            .inc();
        self.api_call_duration
            .get_or_create(&OperationLabels {
                operation: call.operation.into(),
            })
            .observe(call.duration.as_secs_f64());
    }

    /// Sets the budget gauges of one resource.
    pub fn budget(&self, kind: &str, namespace: &str, name: &str, figures: BudgetFigures) {
        // Usage and its ratio come together or not at all.
        let (usage, ratio) = match (figures.usage, figures.ratio) {
            (Some(u), Some(r)) => (Some(u), Some(r)),
            _ => (None, None),
        };
        let budget = Budget {
            measure: measure_of(&figures.budget_type),
            limit: figures.limit,
            usage,
            ratio,
            alert_ratio: figures.alert_ratio,
            exhausted: figures.exhausted_buckets,
            next_reset: figures.next_reset,
        };
        self.resources
            .update(kind, namespace, name, |f| f.budget = Some(budget));
    }

    /// Removes a resource's budget series (it has no budget any more).
    pub fn forget_budget(&self, kind: &str, namespace: &str, name: &str) {
        let key = format!("{kind}/{namespace}/{name}");
        if let Some(f) = self
            .resources
            .entries
            .lock()
            .expect("metrics lock")
            .get_mut(&key)
        {
            f.budget = None;
        }
    }

    /// Removes every series of a deleted resource.
    pub fn forget(&self, kind: &str, namespace: &str, name: &str) {
        let key = format!("{kind}/{namespace}/{name}");
        self.resources
            .entries
            .lock()
            .expect("metrics lock")
            .remove(&key);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn set_dry_run(&self, dry_run: bool) {
        self.dry_run.set(i64::from(dry_run));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        self.encode_to(&mut out)
            .expect("encoding to a String cannot fail");
        out
    }

    /// Writes the OpenMetrics text exposition to `out` (see [`ChunkWriter`] for `/metrics`).
    pub fn encode_to(&self, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        prometheus_client::encoding::text::encode(out, &self.registry)
    }
}

/// Resources copied out of the per-resource lock at a time while `/metrics` is written.
const ENCODE_BATCH: usize = 256;

impl PerResource {
    /// Calls `f` for every resource in key order, copying [`ENCODE_BATCH`] entries at a time
    /// out of the lock: a scrape never holds the lock while it writes (a slow scraper would
    /// otherwise hold up every reconcile that records a figure).
    fn for_each(&self, mut f: impl FnMut(&str, &Figures) -> std::fmt::Result) -> std::fmt::Result {
        use std::ops::Bound;
        let mut after: Option<String> = None;
        loop {
            let batch: Vec<(String, Figures)> = {
                let entries = self.entries.lock().expect("metrics lock");
                let lower = match after.as_deref() {
                    Some(key) => Bound::Excluded(key),
                    None => Bound::Unbounded,
                };
                entries
                    .range::<str, _>((lower, Bound::Unbounded))
                    .take(ENCODE_BATCH)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            for (key, figures) in &batch {
                f(key, figures)?;
            }
            match batch.into_iter().next_back() {
                Some((last, _)) => after = Some(last),
                None => return Ok(()),
            }
        }
    }

    /// Changes the figures of one resource (created on first use).
    fn update(&self, kind: &str, namespace: &str, name: &str, change: impl FnOnce(&mut Figures)) {
        let key = format!("{kind}/{namespace}/{name}");
        let mut entries = self.entries.lock().expect("metrics lock");
        change(entries.entry(key).or_default());
    }
}

/// What `/readyz` reports. Ready when the Admin API has answered and, on the leader, the
/// controllers' caches are synced. A standby is ready once the Admin API answered: it serves
/// metrics and waits for the lease, and a rollout must not wait for it to lead.
#[derive(Debug, Default)]
pub struct Health {
    admin_api_ok: AtomicBool,
    caches_synced: AtomicBool,
    leading: AtomicBool,
}

impl Health {
    pub fn set_admin_api_ok(&self, ok: bool) {
        self.admin_api_ok.store(ok, Ordering::SeqCst);
    }
    pub fn set_caches_synced(&self, ok: bool) {
        self.caches_synced.store(ok, Ordering::SeqCst);
    }
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
        if !leading {
            self.caches_synced.store(false, Ordering::SeqCst);
        }
    }

    /// `Ok(())` when ready, else why not.
    pub fn ready(&self) -> Result<(), &'static str> {
        if !self.admin_api_ok.load(Ordering::SeqCst) {
            return Err("the Portkey Admin API has not answered yet");
        }
        if self.leading.load(Ordering::SeqCst) && !self.caches_synced.load(Ordering::SeqCst) {
            return Err("the controllers' caches are not synced yet");
        }
        Ok(())
    }
}

#[derive(Clone)]
struct ServerState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The HTTP routes: `/metrics`, `/healthz`, `/readyz`.
pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok\n") }))
        .route("/readyz", get(readyz_handler))
        .with_state(ServerState { metrics, health })
}

/// Bytes of `/metrics` text sent as one chunk of the response body.
const CHUNK_BYTES: usize = 32 * 1024;

/// A `fmt::Write` that hands the text on in chunks of about [`CHUNK_BYTES`] through a bounded
/// channel (waiting while it is full), so `/metrics` is streamed: with 10,000 resources the
/// page is about 12 MiB, and building it as one String was the operator's largest allocation.
struct ChunkWriter {
    buf: String,
    tx: tokio::sync::mpsc::Sender<axum::body::Bytes>,
}

impl ChunkWriter {
    fn send(&mut self) -> std::fmt::Result {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, String::with_capacity(CHUNK_BYTES));
        // The receiver is gone when the scraper hung up: stop encoding.
        self.tx
            .blocking_send(axum::body::Bytes::from(chunk))
            .map_err(|_| std::fmt::Error)
    }
}

impl std::fmt::Write for ChunkWriter {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.buf.push_str(s);
        if self.buf.len() >= CHUNK_BYTES {
            self.send()?;
        }
        Ok(())
    }
}

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let metrics = s.metrics.clone();
    // Encoding is synchronous and waits for the scraper to take each chunk: off the workers.
    tokio::task::spawn_blocking(move || {
        let mut writer = ChunkWriter {
            buf: String::with_capacity(CHUNK_BYTES),
            tx,
        };
        if metrics.encode_to(&mut writer).is_ok() {
            let _ = writer.send();
        }
    });
    let chunks = futures::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        axum::body::Body::from_stream(chunks),
    )
}

async fn readyz_handler(State(s): State<ServerState>) -> impl IntoResponse {
    match s.health.ready() {
        Ok(()) => (StatusCode::OK, "ok\n".to_owned()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

/// Binds the HTTP server; returns the bound address and the serving future (which ends when
/// `shutdown` resolves).
pub async fn bind(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(
    SocketAddr,
    impl std::future::Future<Output = std::io::Result<()>>,
)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let serve = axum::serve(listener, router(metrics, health)).with_graceful_shutdown(shutdown);
    Ok((local, async move { serve.await }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    fn call(status: Option<u16>) -> CallRecord {
        CallRecord {
            operation: "usage_limits.create",
            method: Method::POST,
            status,
            attempt: 0,
            duration: Duration::from_millis(12),
        }
    }

    #[test]
    fn exposition_has_the_documented_names_and_labels() {
        use crate::api::conditions::{self, Outcome, reasons};
        let m = Metrics::new();
        m.reconciled("UsageLimitPolicy", Duration::from_millis(30), None);
        m.reconciled(
            "UsageLimitPolicy",
            Duration::from_millis(30),
            Some("PortkeyServerError"),
        );
        m.api_call(&call(Some(200)));
        m.api_call(&call(Some(429)));
        m.api_call(&call(Some(503)));
        m.api_call(&call(Some(400)));
        m.api_call(&call(None));
        m.budget(
            "UsageLimitPolicy",
            "team-a",
            "monthly",
            BudgetFigures {
                budget_type: "cost".into(),
                limit: 500.0,
                usage: Some(400.0),
                ratio: Some(0.8),
                alert_ratio: Some(0.75),
                exhausted_buckets: 1,
                next_reset: Some(1_798_761_600),
            },
        );
        let t: jiff::Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let mut c = Vec::new();
        let stalled = Outcome::Stalled {
            reason: reasons::INVALID_SPEC,
            message: "spec.creditLimit: …".into(),
        };
        conditions::apply(&mut c, &stalled, Some(1), t);
        m.outcome("UsageLimitPolicy", "team-a", "monthly", &stalled, &c);
        let text = m.encode();
        for line in [
            r#"portkey_budget_operator_reconciles_total{kind="UsageLimitPolicy"} 2"#,
            r#"portkey_budget_operator_reconcile_errors_total{kind="UsageLimitPolicy",reason="PortkeyServerError"} 1"#,
            r#"portkey_budget_operator_reconcile_duration_seconds_count{kind="UsageLimitPolicy"} 2"#,
            r#"portkey_budget_operator_reconcile_outcomes_total{kind="UsageLimitPolicy",outcome="terminal",reason="InvalidSpec"} 1"#,
            r#"portkey_budget_operator_admin_api_requests_total{operation="usage_limits.create",outcome="success",status="200"} 1"#,
            r#"portkey_budget_operator_admin_api_requests_total{operation="usage_limits.create",outcome="rate_limited",status="429"} 1"#,
            r#"portkey_budget_operator_admin_api_requests_total{operation="usage_limits.create",outcome="server_error",status="503"} 1"#,
            r#"portkey_budget_operator_admin_api_requests_total{operation="usage_limits.create",outcome="client_error",status="400"} 1"#,
            r#"portkey_budget_operator_admin_api_requests_total{operation="usage_limits.create",outcome="transport_error",status="none"} 1"#,
            r#"portkey_budget_operator_admin_api_request_duration_seconds_count{operation="usage_limits.create"} 5"#,
            r#"portkey_budget_operator_resource_ready{kind="UsageLimitPolicy",namespace="team-a",name="monthly",reason="InvalidSpec"} 0"#,
            r#"portkey_budget_operator_budget_limit{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"} 500.0"#,
            r#"portkey_budget_operator_budget_usage{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"} 400.0"#,
            r#"portkey_budget_operator_budget_usage_ratio{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"} 0.8"#,
            r#"portkey_budget_operator_budget_alert_ratio{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"} 0.75"#,
            r#"portkey_budget_operator_budget_exhausted_buckets{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"} 1"#,
            r#"portkey_budget_operator_budget_next_reset_timestamp_seconds{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"} 1798761600"#,
            r#"portkey_budget_operator_build_info{version="0.1.0"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        // A new Ready reason replaces the series; it never accumulates.
        let in_force = Outcome::InForce {
            reason: reasons::IN_FORCE,
            message: "ok".into(),
        };
        conditions::apply(&mut c, &in_force, Some(2), t);
        m.outcome("UsageLimitPolicy", "team-a", "monthly", &in_force, &c);
        let text = m.encode();
        assert!(text.contains(r#"resource_ready{kind="UsageLimitPolicy",namespace="team-a",name="monthly",reason="InForce"} 1"#), "{text}");
        assert!(!text.contains(r#"reason="InvalidSpec"} 0"#), "{text}");
        m.forget("UsageLimitPolicy", "team-a", "monthly");
        let text = m.encode();
        assert!(!text.contains(r#"name="monthly""#), "{text}");
    }

    #[test]
    fn readiness_needs_the_admin_api_and_synced_caches_on_the_leader() {
        let h = Health::default();
        assert!(h.ready().unwrap_err().contains("Admin API"));
        h.set_admin_api_ok(true);
        assert!(
            h.ready().is_ok(),
            "a standby is ready once Portkey answered"
        );
        h.set_leading(true);
        assert!(h.ready().unwrap_err().contains("caches"));
        h.set_caches_synced(true);
        assert!(h.ready().is_ok());
    }
}
