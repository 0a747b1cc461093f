//! Prometheus metrics (prometheus-client) and the operator's HTTP server (axum): `/metrics`,
//! `/healthz` (liveness) and `/readyz` (readiness).
//!
//! Every series is labelled with bounded values only: kinds, operations, outcomes, HTTP status
//! codes, reasons (a fixed set of CamelCase words), and for the per-resource budget gauges the
//! resource's namespace/name/kind (one series per resource, removed when the resource goes).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
struct CallLabels {
    operation: String,
    outcome: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    namespace: String,
    name: String,
    kind: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A resource's budget figures for the per-resource gauges.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetFigures {
    /// The limit (USD for cost, tokens or requests).
    pub limit: f64,
    /// Usage of the most used bucket.
    pub usage: f64,
    /// `usage / limit` (0 when the limit is 0).
    pub ratio: f64,
    pub exhausted_buckets: i64,
}

/// The operator's metrics. Cheap to share (`Arc`).
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<KindLabels, Histogram>,
    api_calls: Family<CallLabels, Counter>,
    api_call_duration: Family<KindLabels, Histogram>,
    budget_limit: Family<ResourceLabels, FloatGauge>,
    budget_usage: Family<ResourceLabels, FloatGauge>,
    budget_usage_ratio: Family<ResourceLabels, FloatGauge>,
    budget_exhausted: Family<ResourceLabels, Gauge>,
    duplicates_archived: Family<KindLabels, Counter>,
    leader: Gauge,
    dry_run: Gauge,
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
        let mut registry = Registry::with_prefix("portkey");
        let m = Metrics {
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            api_calls: Family::default(),
            api_call_duration: Family::new_with_constructor(duration_histogram),
            budget_limit: Family::default(),
            budget_usage: Family::default(),
            budget_usage_ratio: Family::default(),
            budget_exhausted: Family::default(),
            duplicates_archived: Family::default(),
            leader: Gauge::default(),
            dry_run: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "operator_reconciles",
            "Reconciles run, by kind (ulp, rlp, wsb)",
            m.reconciles.clone(),
        );
        registry.register(
            "operator_reconcile_errors",
            "Reconciles that failed, by kind and reason",
            m.reconcile_errors.clone(),
        );
        registry.register(
            "operator_reconcile_duration_seconds",
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
            "Portkey Admin API HTTP attempt latency, by operation (label kind)",
            m.api_call_duration.clone(),
        );
        registry.register(
            "budget_limit",
            "The budget's limit (USD for cost budgets, else tokens or requests), per resource",
            m.budget_limit.clone(),
        );
        registry.register(
            "budget_usage",
            "Usage of the budget's most used bucket, per resource",
            m.budget_usage.clone(),
        );
        registry.register(
            "budget_usage_ratio",
            "Usage of the most used bucket divided by the limit (1 = exhausted), per resource",
            m.budget_usage_ratio.clone(),
        );
        registry.register(
            "budget_exhausted_buckets",
            "Buckets that reached the limit, per resource",
            m.budget_exhausted.clone(),
        );
        registry.register(
            "operator_duplicates_archived",
            "Remote policies archived because another policy carries the same resource's marker (the oldest is kept), by kind",
            m.duplicates_archived.clone(),
        );
        registry.register(
            "operator_leader",
            "1 while this instance holds the leader lease (or runs without leader election)",
            m.leader.clone(),
        );
        registry.register(
            "operator_dry_run",
            "1 when the operator runs in dry-run mode (no writes to Portkey)",
            m.dry_run.clone(),
        );
        Metrics { registry, ..m }
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
            .get_or_create(&KindLabels {
                kind: call.operation.into(),
            })
            .observe(call.duration.as_secs_f64());
    }

    /// Sets the budget gauges of one resource.
    pub fn budget(&self, kind: &str, namespace: &str, name: &str, figures: BudgetFigures) {
        let labels = ResourceLabels {
            namespace: namespace.into(),
            name: name.into(),
            kind: kind.into(),
        };
        self.budget_limit.get_or_create(&labels).set(figures.limit);
        self.budget_usage.get_or_create(&labels).set(figures.usage);
        self.budget_usage_ratio
            .get_or_create(&labels)
            .set(figures.ratio);
        self.budget_exhausted
            .get_or_create(&labels)
            .set(figures.exhausted_buckets);
    }

    /// Removes a resource's budget series (it was deleted, or has no budget any more).
    pub fn forget(&self, kind: &str, namespace: &str, name: &str) {
        let labels = ResourceLabels {
            namespace: namespace.into(),
            name: name.into(),
            kind: kind.into(),
        };
        self.budget_limit.remove(&labels);
        self.budget_usage.remove(&labels);
        self.budget_usage_ratio.remove(&labels);
        self.budget_exhausted.remove(&labels);
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
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("encoding to a String cannot fail");
        out
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

async fn metrics_handler(State(s): State<ServerState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
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
        let m = Metrics::new();
        m.reconciled("ulp", Duration::from_millis(30), None);
        m.reconciled("ulp", Duration::from_millis(30), Some("ServerError"));
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
                limit: 500.0,
                usage: 400.0,
                ratio: 0.8,
                exhausted_buckets: 1,
            },
        );
        let text = m.encode();
        for line in [
            r#"portkey_operator_reconciles_total{kind="ulp"} 2"#,
            r#"portkey_operator_reconcile_errors_total{kind="ulp",reason="ServerError"} 1"#,
            r#"portkey_operator_reconcile_duration_seconds_count{kind="ulp"} 2"#,
            r#"portkey_admin_api_requests_total{operation="usage_limits.create",outcome="success",status="200"} 1"#,
            r#"portkey_admin_api_requests_total{operation="usage_limits.create",outcome="rate_limited",status="429"} 1"#,
            r#"portkey_admin_api_requests_total{operation="usage_limits.create",outcome="server_error",status="503"} 1"#,
            r#"portkey_admin_api_requests_total{operation="usage_limits.create",outcome="client_error",status="400"} 1"#,
            r#"portkey_admin_api_requests_total{operation="usage_limits.create",outcome="transport_error",status="none"} 1"#,
            r#"portkey_budget_limit{namespace="team-a",name="monthly",kind="UsageLimitPolicy"} 500.0"#,
            r#"portkey_budget_usage{namespace="team-a",name="monthly",kind="UsageLimitPolicy"} 400.0"#,
            r#"portkey_budget_usage_ratio{namespace="team-a",name="monthly",kind="UsageLimitPolicy"} 0.8"#,
            r#"portkey_budget_exhausted_buckets{namespace="team-a",name="monthly",kind="UsageLimitPolicy"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
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
