//! The operator's HTTP server over real HTTP on loopback: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use portkey_budget_operator::metrics::{self, Health, Metrics};

async fn get(base: &str, path: &str) -> (u16, String, String) {
    let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
    let status = resp.status().as_u16();
    let ctype = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, ctype, resp.text().await.unwrap())
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let m = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, serve) = metrics::bind(
        "127.0.0.1:0".parse().unwrap(),
        m.clone(),
        health.clone(),
        async move {
            let _ = stop_rx.await;
        },
    )
    .await
    .unwrap();
    let server = tokio::spawn(serve);
    let base = format!("http://{addr}");

    assert_eq!(get(&base, "/healthz").await.0, 200);
    let (status, _, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("Admin API"), "{body}");

    health.set_admin_api_ok(true);
    health.set_leading(true);
    let (status, _, body) = get(&base, "/readyz").await;
    assert_eq!(status, 503);
    assert!(body.contains("caches"), "{body}");
    health.set_caches_synced(true);
    assert_eq!(get(&base, "/readyz").await.0, 200);

    m.set_leader(true);
    let (status, ctype, body) = get(&base, "/metrics").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(
        body.lines()
            .any(|l| l == "portkey_budget_operator_leader 1"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    assert_eq!(get(&base, "/nope").await.0, 404);
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
