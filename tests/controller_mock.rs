//! Controller tests with a scripted Kubernetes API (tower-test): the exact requests the
//! reconcile makes, in order. The Admin API client points at a closed port, so any Portkey call
//! would fail the reconcile: these scenarios must not need one.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use portkey_budget_operator::api::*;
use portkey_budget_operator::config::ControllerConfig;
use portkey_budget_operator::controller::{self, Context, usage};
use portkey_budget_operator::portkey::{ApiKey, ClientConfig, PortkeyClient, RetryPolicy};
use serde_json::{Value, json};
use tower_test::mock;

type Handle = mock::Handle<Request<Body>, Response<Body>>;

fn unreachable_portkey() -> PortkeyClient {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut cfg = ClientConfig::new(format!("http://{addr}/v1"), ApiKey::new("k"));
    cfg.retry = RetryPolicy::none();
    PortkeyClient::new(cfg).unwrap()
}

fn object(finalizers: &[&str], deleting: bool, deletion_policy: &str) -> Value {
    let mut o = json!({
        "apiVersion": "budgets.portkey-operator.io/v1alpha1",
        "kind": "UsageLimitPolicy",
        "metadata": {"name": "monthly", "namespace": "team-a", "uid": "u-1", "resourceVersion": "7",
                     "generation": 1, "finalizers": finalizers},
        "spec": {"workspace": "team-a", "type": "cost", "creditLimit": 500, "periodicReset": "monthly",
                 "deletionPolicy": deletion_policy,
                 "conditions": [{"key": "metadata._team", "value": "team-a"}],
                 "groupBy": [{"key": "metadata._user"}]},
        "status": {"policyId": "0b6c0c2e-8a3a-4a43-9d55-2f6f3f1d9a01", "workspaceId": "ws"}
    });
    if deleting {
        o["metadata"]["deletionTimestamp"] = json!("2026-11-21T12:00:00Z");
    }
    o
}

async fn body_json(req: Request<Body>) -> (String, String, String, Value) {
    use http_body_util::BodyExt;
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let bytes = req.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (method, path, content_type, value)
}

fn respond(send: mock::SendResponse<Response<Body>>, value: &Value) {
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(value).unwrap()))
            .unwrap(),
    );
}

async fn next(
    handle: &mut Handle,
) -> (
    String,
    String,
    String,
    Value,
    mock::SendResponse<Response<Body>>,
) {
    let (req, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the controller made the next request in time")
        .expect("a request");
    let (m, p, ct, v) = body_json(req).await;
    (m, p, ct, v, send)
}

/// After the reconcile returned, the API server got nothing more.
async fn assert_no_more_requests(handle: &mut Handle) {
    let extra = tokio::time::timeout(Duration::from_millis(100), handle.next_request()).await;
    assert!(!matches!(extra, Ok(Some(_))), "an unexpected extra request");
}

fn context(client: kube::Client) -> std::sync::Arc<Context> {
    Context::new(
        client,
        unreachable_portkey(),
        ControllerConfig {
            usage_refresh_interval: Duration::ZERO,
            resync_interval: Duration::ZERO,
            ..Default::default()
        },
        controller::reporter(),
    )
}

#[tokio::test]
async fn workspace_not_allowed_reads_binding_and_writes_status_only() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(kube::Client::new(service, "default"));
    let obj: UsageLimitPolicy = serde_json::from_value(object(&[], false, "Archive")).unwrap();
    let task = tokio::spawn(async move { usage::reconcile(&obj, &ctx).await });

    // Refused before anything exists in Portkey: no finalizer is needed (nothing to archive).
    let stored = object(&[], false, "Archive");

    // 1. The namespace binding.
    let (m, p, _, _, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        ("GET", "/api/v1/namespaces/team-a")
    );
    respond(
        send,
        &json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "team-a", "annotations": {WORKSPACE_ANNOTATION: "team-b"}}}),
    );

    // 2. Status through server-side apply, guarded by the resourceVersion the controller saw:
    // Ready=False WorkspaceNotAllowed, Stalled.
    let (m, p, ct, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "PATCH",
            "/apis/budgets.portkey-operator.io/v1alpha1/namespaces/team-a/usagelimitpolicies/monthly/status"
        )
    );
    assert!(ct.starts_with("application/apply-patch"), "{ct}");
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    let conditions = body["status"]["conditions"].as_array().unwrap();
    let ready = conditions.iter().find(|c| c["type"] == "Ready").unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("WorkspaceNotAllowed"))
    );
    let stalled = conditions.iter().find(|c| c["type"] == "Stalled").unwrap();
    assert_eq!(stalled["status"], "True");
    assert_eq!(ready["observedGeneration"], 1);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("bound to workspace \"team-b\"")
    );
    respond(send, &stored);

    let action = task.await.unwrap().expect("reconcile succeeds");
    assert!(format!("{action:?}").contains("requeue_after: Some"));
    // Nothing else was asked of the API server.
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn retain_on_delete_records_an_event_and_releases_the_finalizer() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(kube::Client::new(service, "default"));
    let obj: UsageLimitPolicy =
        serde_json::from_value(object(&[FINALIZER], true, "Retain")).unwrap();
    let task = tokio::spawn(async move { usage::reconcile(&obj, &ctx).await });

    let (m, p, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        ("POST", "/apis/events.k8s.io/v1/namespaces/team-a/events")
    );
    assert_eq!(body["reason"], "Retained");
    assert!(
        body["note"]
            .as_str()
            .unwrap()
            .contains("deletionPolicy Retain")
    );
    respond(send, &body);

    let (m, p, ct, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "PATCH",
            "/apis/budgets.portkey-operator.io/v1alpha1/namespaces/team-a/usagelimitpolicies/monthly"
        )
    );
    assert!(ct.starts_with("application/merge-patch+json"));
    assert_eq!(body["metadata"]["finalizers"], json!([]));
    assert_eq!(body["metadata"]["resourceVersion"], "7");
    respond(send, &object(&[], true, "Retain"));

    task.await.unwrap().expect("cleanup succeeds");
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn invalid_spec_writes_only_a_terminal_status() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(kube::Client::new(service, "default"));
    let mut raw = object(&[], false, "Archive");
    raw["spec"]["periodicResetDays"] = json!(7); // together with periodicReset: refused by CEL
    let obj: UsageLimitPolicy = serde_json::from_value(raw.clone()).unwrap();
    let task = tokio::spawn(async move { usage::reconcile(&obj, &ctx).await });

    let (m, p, _, body, send) = next(&mut handle).await;
    assert_eq!(m, "PATCH");
    assert!(
        p.ends_with("/monthly/status"),
        "no finalizer, no namespace read: straight to status ({p})"
    );
    let synced = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Synced")
        .unwrap()
        .clone();
    assert_eq!(synced["reason"], "InvalidSpec");
    assert!(
        synced["message"]
            .as_str()
            .unwrap()
            .contains("set at most one of periodicReset and periodicResetDays")
    );
    respond(send, &raw);
    let action = task.await.unwrap().unwrap();
    assert!(
        format!("{action:?}").contains("requeue_after: None"),
        "waits for a spec change: {action:?}"
    );
}

#[tokio::test]
async fn workspace_budget_conflict_lists_and_writes_status_only() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(kube::Client::new(service, "default"));
    let wsb = |name: &str, created: &str, finalizers: &[&str]| {
        json!({
            "apiVersion": "budgets.portkey-operator.io/v1alpha1", "kind": "WorkspaceBudget",
            "metadata": {"name": name, "uid": format!("uid-{name}"), "resourceVersion": "3", "generation": 1,
                         "creationTimestamp": created, "finalizers": finalizers},
            "spec": {"workspace": "marketing", "usageLimits": [{"type": "cost", "creditLimit": 500}]}
        })
    };
    let second: WorkspaceBudget =
        serde_json::from_value(wsb("second", "2026-11-02T00:00:00Z", &[])).unwrap();
    let task = tokio::spawn(async move {
        portkey_budget_operator::controller::workspace::reconcile(&second, &ctx).await
    });

    let (m, p, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "PATCH",
            "/apis/budgets.portkey-operator.io/v1alpha1/workspacebudgets/second"
        )
    );
    assert_eq!(body["metadata"]["finalizers"], json!([FINALIZER]));
    respond(send, &wsb("second", "2026-11-02T00:00:00Z", &[FINALIZER]));

    let (m, p, _, _, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "GET",
            "/apis/budgets.portkey-operator.io/v1alpha1/workspacebudgets"
        )
    );
    respond(
        send,
        &json!({"apiVersion": "budgets.portkey-operator.io/v1alpha1", "kind": "WorkspaceBudgetList", "metadata": {},
        "items": [wsb("first", "2026-11-01T00:00:00Z", &[FINALIZER]), wsb("second", "2026-11-02T00:00:00Z", &[FINALIZER])]}),
    );

    let (m, p, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "PATCH",
            "/apis/budgets.portkey-operator.io/v1alpha1/workspacebudgets/second/status"
        )
    );
    let ready = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["reason"], "Conflict");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("older WorkspaceBudget first")
    );
    respond(send, &wsb("second", "2026-11-02T00:00:00Z", &[FINALIZER]));
    task.await.unwrap().expect("reconcile succeeds");
    assert_no_more_requests(&mut handle).await;
}

#[tokio::test]
async fn rate_limit_policy_in_an_unbound_namespace_is_refused_without_a_portkey_call() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(kube::Client::new(service, "default"));
    let raw = json!({
        "apiVersion": "budgets.portkey-operator.io/v1alpha1", "kind": "RateLimitPolicy",
        "metadata": {"name": "rpm", "namespace": "team-a", "uid": "u-2", "resourceVersion": "5", "generation": 1,
                     "finalizers": [FINALIZER]},
        "spec": {"type": "requests", "unit": "rpm", "value": 60,
                 "conditions": [{"key": "api_key", "value": "*"}], "groupBy": [{"key": "api_key"}]}
    });
    let obj: RateLimitPolicy = serde_json::from_value(raw.clone()).unwrap();
    let task = tokio::spawn(async move {
        portkey_budget_operator::controller::rate::reconcile(&obj, &ctx).await
    });

    let (m, p, _, _, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        ("GET", "/api/v1/namespaces/team-a")
    );
    respond(
        send,
        &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}),
    );

    let (m, p, _, body, send) = next(&mut handle).await;
    assert_eq!(
        (m.as_str(), p.as_str()),
        (
            "PATCH",
            "/apis/budgets.portkey-operator.io/v1alpha1/namespaces/team-a/ratelimitpolicies/rpm/status"
        )
    );
    let synced = body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Synced")
        .unwrap()
        .clone();
    assert_eq!(synced["reason"], "NamespaceNotBound");
    assert!(
        synced["message"].as_str().unwrap().starts_with(
            "namespace team-a has no budgets.portkey-operator.io/workspace annotation"
        )
    );
    respond(send, &raw);
    task.await.unwrap().expect("reconcile succeeds");
    assert_no_more_requests(&mut handle).await;
}

/// A shutdown that comes before the caches have synced (the API server has not answered the
/// first lists: here it never does) still ends `run`: the task waiting for the caches stops
/// with the watches. It used to wait for ever, and a SIGTERM right after winning the Lease hung
/// the process.
#[tokio::test]
async fn run_returns_on_a_shutdown_before_the_caches_synced() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let ctx = context(kube::Client::new(service, "default"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(controller::run(ctx, async move {
        let _ = stopped.await;
    }));
    // The watches have started listing; none is answered.
    let (method, path, _, _, _unanswered) = next(&mut handle).await;
    assert_eq!(method, "GET", "{path}");
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("run returned after the shutdown")
        .unwrap();
}
