//! The operator's HTTP server over real HTTP on loopback: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use portkey_budget_operator::metrics::{self, BudgetFigures, Health, Metrics};

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

/// `/metrics` is streamed in chunks, the per-resource figures copied out of their lock a batch
/// at a time: the page over HTTP is exactly the in-memory encoding, every resource's series
/// once, in one family block each, ending with `# EOF`.
#[tokio::test]
async fn metrics_page_is_streamed_whole_across_many_chunks() {
    let m = Arc::new(Metrics::new());
    let resources = 2_000;
    for i in 0..resources {
        let name = format!("budget-{i:05}");
        m.last_sync(
            &format!("UsageLimitPolicy/team-a/{name}"),
            jiff::Timestamp::from_second(1_800_000_000 + i).unwrap(),
        );
        m.budget(
            "UsageLimitPolicy",
            "team-a",
            &name,
            BudgetFigures {
                budget_type: "cost".into(),
                limit: 100.0,
                usage: Some(i as f64 / 10.0),
                ratio: Some(i as f64 / 1000.0),
                alert_ratio: Some(0.8),
                exhausted_buckets: 0,
                next_reset: Some(1_900_000_000),
            },
        );
    }
    let expected = m.encode();
    assert!(
        expected.len() > 20 * 32 * 1024,
        "the page must span many chunks: {} bytes",
        expected.len()
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr, serve) = metrics::bind(
        "127.0.0.1:0".parse().unwrap(),
        m.clone(),
        Arc::new(Health::default()),
        async move {
            let _ = stop_rx.await;
        },
    )
    .await
    .unwrap();
    let server = tokio::spawn(serve);
    let (status, _, body) = get(&format!("http://{addr}"), "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        body == expected,
        "the streamed page differs from the encoding"
    );
    for family in [
        "portkey_budget_operator_last_sync_timestamp_seconds",
        "portkey_budget_operator_budget_usage",
    ] {
        let series = body
            .lines()
            .filter(|l| l.starts_with(&format!("{family}{{")))
            .count();
        assert_eq!(series, resources as usize, "{family}");
        let headers = body
            .lines()
            .filter(|l| *l == format!("# TYPE {family} gauge"))
            .count();
        assert_eq!(headers, 1, "{family} is one block");
    }
    assert!(body.contains(
        "portkey_budget_operator_budget_usage{kind=\"UsageLimitPolicy\",namespace=\"team-a\",name=\"budget-01999\",type=\"cost\",unit=\"USD\"} 199.9"
    ));
    assert!(body.ends_with("# EOF\n"));
    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
}
