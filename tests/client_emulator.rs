//! The Admin API client against the emulator, over real HTTP on loopback.

use std::str::FromStr;
use std::time::{Duration, Instant};

use portkey_budget_operator::emulator::{self, EmulatorConfig, EmulatorHandle, SeedWorkspace};
use portkey_budget_operator::portkey::*;
use rust_decimal::Decimal;
use serde_json::json;

#[path = "support/fixtures.rs"]
mod fixtures;
use fixtures::{archived, service_key};

const WS_ID: &str = "2f1d4e8a-1111-4c3b-9d2e-000000000001";
const WS_SLUG: &str = "team-a";
const KEY: &str = "test-admin-key-0123456789";

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

fn fast_retry(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        max_retry_after: Duration::from_secs(5),
    }
}

async fn start(config: EmulatorConfig) -> EmulatorHandle {
    emulator::spawn(config).await.expect("emulator starts")
}

fn default_config() -> EmulatorConfig {
    EmulatorConfig {
        api_keys: vec![KEY.into()],
        workspaces: vec![
            format!("{WS_ID}:{WS_SLUG}:Team A").parse().unwrap(),
            SeedWorkspace::from_slug("team-b"),
        ],
        ..Default::default()
    }
}

fn client_for(emu: &EmulatorHandle, retry: RetryPolicy, page_size: u32) -> PortkeyClient {
    let mut cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    cfg.retry = retry;
    cfg.page_size = page_size;
    cfg.timeout = Duration::from_secs(5);
    PortkeyClient::new(cfg).unwrap()
}

async fn setup() -> (EmulatorHandle, PortkeyClient) {
    let emu = start(default_config()).await;
    let client = client_for(&emu, fast_retry(4), 100);
    (emu, client)
}

fn usage_body(name: &str) -> CreateUsageLimitsPolicy {
    CreateUsageLimitsPolicy {
        name: name.into(),
        description: None,
        conditions: vec![Condition {
            key: "metadata._team".into(),
            value: ConditionValue::One("team-a".into()),
            excludes: None,
        }],
        group_by: vec![GroupBy {
            key: "metadata._user".into(),
        }],
        limit_type: UsageLimitType::Cost,
        credit_limit: dec("50"),
        alert_threshold: Some(dec("40.5")),
        periodic_reset: Some(PeriodicReset::Monthly),
        periodic_reset_days: None,
        next_usage_reset_at: None,
        workspace_id: Some(WS_SLUG.into()),
    }
}

fn rate_body(name: &str) -> CreateRateLimitsPolicy {
    CreateRateLimitsPolicy {
        name: name.into(),
        description: None,
        conditions: vec![Condition {
            key: "api_key".into(),
            value: ConditionValue::One("*".into()),
            excludes: None,
        }],
        group_by: vec![GroupBy {
            key: "workspace_id".into(),
        }],
        limit_type: RateLimitType::Requests,
        unit: RateLimitUnit::Rpm,
        value: dec("120"),
        workspace_id: Some(WS_ID.into()),
    }
}

fn ws_filter() -> ListFilter {
    ListFilter {
        workspace_id: Some(WS_ID.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn usage_policy_create_get_reads_server_fields() {
    let (emu, client) = setup().await;
    emu.control()
        .set_clock(Some("2026-11-21T14:00:00Z".parse().unwrap()))
        .await
        .unwrap();
    let p = client
        .usage_limits()
        .create_and_get(&usage_body("team-a"))
        .await
        .unwrap();
    assert_eq!(
        p.workspace_id, WS_ID,
        "the slug is answered as the workspace UUID"
    );
    assert_eq!(p.status, PolicyStatus::Active);
    assert_eq!(p.credit_limit, dec("50"));
    assert_eq!(p.alert_threshold, Some(dec("40.5")));
    assert_eq!(
        p.next_usage_reset_at,
        Some("2026-12-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(p.object.as_deref(), Some("policy_usage_limits"));
    let log = emu.control().requests().await.unwrap();
    assert_eq!(log.count("POST", "/v1/policies/usage-limits"), 1);
    assert_eq!(log.count("GET", "/v1/policies/usage-limits/"), 1);
}

#[tokio::test]
async fn include_usage_and_entities_report_buckets() {
    let (emu, client) = setup().await;
    let id = client
        .usage_limits()
        .create(&usage_body("u"))
        .await
        .unwrap()
        .id;
    let ctl = emu.control();
    ctl.add_usage(&id, "metadata._user:alice", dec("12.37"))
        .await
        .unwrap();
    let bob = ctl
        .add_usage(&id, "metadata._user:bob", dec("50"))
        .await
        .unwrap();
    assert_eq!(bob.status, BucketStatus::Exhausted);
    assert!(bob.is_exhausted_alerts_sent && bob.is_threshold_alerts_sent);

    let plain = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert!(plain.value_key_usage_map.is_none());
    let with_usage = client
        .usage_limits()
        .get(
            &id,
            GetOptions {
                include_usage: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let map = with_usage.value_key_usage_map.unwrap();
    assert_eq!(map["metadata._user:alice"].current_usage, dec("12.37"));
    assert_eq!(map["metadata._user:alice"].status, BucketStatus::Active);
    assert_eq!(map["metadata._user:bob"].status, BucketStatus::Exhausted);

    let exhausted = client
        .usage_limits()
        .entities(
            &id,
            &EntityFilter {
                status: Some(BucketStatus::Exhausted),
                search: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(exhausted.len(), 1);
    assert_eq!(exhausted[0].value_key, "metadata._user:bob");
    client
        .usage_limits()
        .reset_entity(&id, &exhausted[0].id)
        .await
        .unwrap();
    let all = client
        .usage_limits()
        .entities(&id, &EntityFilter::default())
        .await
        .unwrap();
    let bob = all.iter().find(|e| e.value_key.ends_with("bob")).unwrap();
    assert_eq!(bob.current_usage, Decimal::ZERO);
    assert_eq!(bob.status, Some(BucketStatus::Active));
    let err = client
        .usage_limits()
        .reset_entity(&id, "no-such-entity")
        .await
        .unwrap_err();
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test]
async fn list_walks_every_page_and_filters() {
    let emu = start(default_config()).await;
    let client = client_for(&emu, fast_retry(0), 2);
    for i in 0..5 {
        let mut body = usage_body(&format!("p{i}"));
        if i == 4 {
            body.limit_type = UsageLimitType::Tokens;
            body.credit_limit = dec("1000");
            body.alert_threshold = None;
        }
        client.usage_limits().create(&body).await.unwrap();
    }
    let mut other = usage_body("other-ws");
    other.workspace_id = Some("team-b".into());
    client.usage_limits().create(&other).await.unwrap();
    emu.control().clear_requests().await.unwrap();

    let all = client.usage_limits().list(&ws_filter()).await.unwrap();
    let names: Vec<_> = all.iter().map(|p| p.name.clone().unwrap()).collect();
    assert_eq!(names, ["p0", "p1", "p2", "p3", "p4"]);
    let log = emu.control().requests().await.unwrap();
    assert_eq!(
        log.count("GET", "/v1/policies/usage-limits"),
        3,
        "pages of 2: 2 + 2 + 1"
    );
    assert!(
        log.data
            .iter()
            .all(|e| e.query.as_deref().unwrap().contains("page_size=2"))
    );

    let tokens = client
        .usage_limits()
        .list(&ListFilter {
            limit_type: Some("tokens"),
            ..ws_filter()
        })
        .await
        .unwrap();
    assert_eq!(tokens.len(), 1);
    assert_eq!(tokens[0].name.as_deref(), Some("p4"));

    // Exactly one full page: the walk must stop on `total`, not ask for an empty page forever.
    emu.control().clear_requests().await.unwrap();
    let client4 = client_for(&emu, fast_retry(0), 5);
    assert_eq!(
        client4
            .usage_limits()
            .list(&ws_filter())
            .await
            .unwrap()
            .len(),
        5
    );
    assert_eq!(emu.control().requests().await.unwrap().total, 1);

    // A server that silently serves fewer items than asked for (a page cap): a short page is not
    // the end while `total` says there is more.
    emu.control()
        .set_faults(serde_json::json!({"page_size_cap": 2}))
        .await
        .unwrap();
    emu.control().clear_requests().await.unwrap();
    let client100 = client_for(&emu, fast_retry(0), 100);
    let capped = client100.usage_limits().list(&ws_filter()).await.unwrap();
    let names: Vec<_> = capped.iter().map(|p| p.name.clone().unwrap()).collect();
    assert_eq!(
        names,
        ["p0", "p1", "p2", "p3", "p4"],
        "nothing hidden by the cap"
    );
    assert_eq!(emu.control().requests().await.unwrap().total, 3);
    emu.control().clear_faults().await.unwrap();

    // Portkey needs a workspace to list with an organisation key.
    let err = client
        .usage_limits()
        .list(&ListFilter::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PortkeyError::Validation { .. }), "{err}");
    assert!(err.to_string().contains("workspace_id"), "{err}");
}

#[tokio::test]
async fn partial_update_sends_only_given_fields_and_nulls_clear() {
    let (emu, client) = setup().await;
    let ctl = emu.control();
    ctl.set_clock(Some("2026-11-21T14:00:00Z".parse().unwrap()))
        .await
        .unwrap();
    let mut body = usage_body("u");
    body.periodic_reset = None;
    body.periodic_reset_days = Some(10);
    let id = client.usage_limits().create(&body).await.unwrap().id;
    let before = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        before.next_usage_reset_at,
        Some("2026-12-01T00:00:00Z".parse().unwrap())
    );

    // Two days later, raise the limit only: the reset schedule must not move.
    ctl.set_clock(Some("2026-11-23T09:00:00Z".parse().unwrap()))
        .await
        .unwrap();
    let update = UpdateUsageLimitsPolicy {
        credit_limit: Some(dec("80")),
        ..Default::default()
    };
    client.usage_limits().update(&id, &update).await.unwrap();
    let after = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(after.credit_limit, dec("80"));
    assert_eq!(after.name, before.name);
    assert_eq!(after.conditions, before.conditions);
    assert_eq!(after.alert_threshold, before.alert_threshold);
    assert_eq!(
        after.next_usage_reset_at, before.next_usage_reset_at,
        "schedule untouched"
    );

    // Re-sending the same periodic_reset_days reschedules (Portkey's trap, imitated).
    let resend = UpdateUsageLimitsPolicy {
        periodic_reset_days: Nullable::Value(10),
        ..Default::default()
    };
    client.usage_limits().update(&id, &resend).await.unwrap();
    let moved = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(
        moved.next_usage_reset_at,
        Some("2026-12-03T00:00:00Z".parse().unwrap())
    );

    // Explicit nulls clear the threshold and the schedule.
    let clear = UpdateUsageLimitsPolicy {
        alert_threshold: Nullable::Null,
        periodic_reset_days: Nullable::Null,
        ..Default::default()
    };
    client.usage_limits().update(&id, &clear).await.unwrap();
    let cleared = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(cleared.alert_threshold, None);
    assert_eq!(cleared.periodic_reset_days, None);
    assert_eq!(cleared.periodic_reset, None);
    assert_eq!(cleared.next_usage_reset_at, None);
    assert_eq!(cleared.credit_limit, dec("80"));

    // Immutable fields are refused by the server.
    let err = client
        .usage_limits()
        .update(&id, &UpdateUsageLimitsPolicy::default())
        .await;
    assert!(err.is_ok(), "an empty update is accepted");
    let http = reqwest::Client::new();
    let resp = http
        .put(format!("{}/policies/usage-limits/{id}", emu.base_url()))
        .header(API_KEY_HEADER, KEY)
        .json(&json!({"type": "tokens"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("type: cannot be changed") && text.contains("AB01"),
        "{text}"
    );
}

#[tokio::test]
async fn delete_archives() {
    let (emu, client) = setup().await;
    let id = client
        .usage_limits()
        .create(&usage_body("a"))
        .await
        .unwrap()
        .id;
    client.usage_limits().delete(&id).await.unwrap();
    let err = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.is_not_found(),
        "an archived id is 404 by default: {err}"
    );
    let archived = client.usage_limits().get(&id, archived()).await.unwrap();
    assert_eq!(archived.status, PolicyStatus::Archived);
    assert!(
        client
            .usage_limits()
            .list(&ws_filter())
            .await
            .unwrap()
            .is_empty()
    );
    let listed = client
        .usage_limits()
        .list(&ListFilter {
            status: Some(PolicyStatus::Archived),
            ..ws_filter()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    let again = client.usage_limits().delete(&id).await.unwrap_err();
    assert!(again.is_not_found());
    // The archived policy is still in the emulator's state: nothing is hard-deleted.
    let state = emu.control().state().await.unwrap();
    assert_eq!(state.usage_limits.len(), 1);
    assert_eq!(state.usage_limits[0].policy.status, PolicyStatus::Archived);
}

#[tokio::test]
async fn rate_limits_policy_lifecycle() {
    let (_emu, client) = setup().await;
    let p = client
        .rate_limits()
        .create_and_get(&rate_body("rpm"))
        .await
        .unwrap();
    assert_eq!(
        (p.limit_type, p.unit, p.value),
        (RateLimitType::Requests, RateLimitUnit::Rpm, dec("120"))
    );
    assert_eq!(p.object.as_deref(), Some("policy_rate_limits"));
    let update = UpdateRateLimitsPolicy {
        unit: Some(RateLimitUnit::Rph),
        value: Some(dec("5000")),
        ..Default::default()
    };
    client.rate_limits().update(&p.id, &update).await.unwrap();
    let got = client
        .rate_limits()
        .get(&p.id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!((got.unit, got.value), (RateLimitUnit::Rph, dec("5000")));
    assert_eq!(got.name.as_deref(), Some("rpm"));
    let listed = client
        .rate_limits()
        .list(&ListFilter {
            unit: Some("rph"),
            ..ws_filter()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    client.rate_limits().delete(&p.id).await.unwrap();
    assert!(
        client
            .rate_limits()
            .get(&p.id, GetOptions::default())
            .await
            .unwrap_err()
            .is_not_found()
    );
    let archived = client
        .rate_limits()
        .list(&ListFilter {
            status: Some(PolicyStatus::Archived),
            ..ws_filter()
        })
        .await
        .unwrap();
    assert_eq!(archived.len(), 1);

    let mut bad = rate_body("bad");
    bad.value = dec("0");
    let err = client.rate_limits().create(&bad).await.unwrap_err();
    assert!(
        err.to_string().contains("value: must be an integer from 1"),
        "{err}"
    );
}

#[tokio::test]
async fn workspaces_by_id_or_slug_and_limits() {
    let (emu, client) = setup().await;
    emu.control()
        .set_clock(Some("2026-11-21T14:00:00Z".parse().unwrap()))
        .await
        .unwrap();
    let by_slug = client.get_workspace(WS_SLUG).await.unwrap();
    let by_id = client.get_workspace(WS_ID).await.unwrap();
    assert_eq!(by_slug.id, WS_ID);
    assert_eq!(by_slug, by_id);
    assert_eq!(by_slug.usage_limits, None, "unset limits are null");
    assert_eq!(client.resolve_workspace_id(WS_SLUG).await.unwrap(), WS_ID);
    assert!(
        client
            .get_workspace("nope")
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert_eq!(client.list_workspaces().await.unwrap().len(), 2);

    let limits = vec![WorkspaceUsageLimit {
        limit_type: UsageLimitType::Cost,
        credit_limit: dec("500"),
        alert_threshold: Some(dec("400")),
        periodic_reset: Some(PeriodicReset::Weekly),
        periodic_reset_days: None,
        next_usage_reset_at: None,
    }];
    let rates = vec![WorkspaceRateLimit {
        limit_type: RateLimitType::Requests,
        unit: RateLimitUnit::Rpm,
        value: dec("120"),
    }];
    let body = UpdateWorkspace {
        usage_limits: Nullable::Value(limits.clone()),
        rate_limits: Nullable::Value(rates.clone()),
        ..Default::default()
    };
    client.update_workspace(WS_SLUG, &body).await.unwrap();
    let ws = client.get_workspace(WS_ID).await.unwrap();
    let got = ws.usage_limits.clone().unwrap();
    assert_eq!(got[0].credit_limit, dec("500"));
    // Workspace weekly resets fall on Sunday (DOC-WS); 2026-11-21 is a Saturday.
    assert_eq!(
        got[0].next_usage_reset_at,
        Some("2026-11-22T00:00:00Z".parse().unwrap())
    );
    assert_eq!(ws.rate_limits, Some(rates));

    // Omitted = unchanged.
    let rename = UpdateWorkspace {
        name: Some("Team A (renamed)".into()),
        ..Default::default()
    };
    client.update_workspace(WS_ID, &rename).await.unwrap();
    let ws2 = client.get_workspace(WS_ID).await.unwrap();
    assert_eq!(ws2.usage_limits, ws.usage_limits);
    assert_eq!(ws2.name.as_deref(), Some("Team A (renamed)"));

    // Null clears one list; [] clears the other.
    let clear = UpdateWorkspace {
        usage_limits: Nullable::Null,
        rate_limits: Nullable::Value(vec![]),
        ..Default::default()
    };
    client.update_workspace(WS_ID, &clear).await.unwrap();
    let ws3 = client.get_workspace(WS_ID).await.unwrap();
    assert_eq!((ws3.usage_limits, ws3.rate_limits), (None, None));

    // Workspaces do not take `requests` budgets.
    let bad = UpdateWorkspace {
        usage_limits: Nullable::Value(vec![WorkspaceUsageLimit {
            limit_type: UsageLimitType::Requests,
            ..limits[0].clone()
        }]),
        ..Default::default()
    };
    let err = client.update_workspace(WS_ID, &bad).await.unwrap_err();
    assert!(err.to_string().contains("usage_limits[0].type"), "{err}");
}

#[tokio::test]
async fn validation_errors_name_the_field_and_leave_state_alone() {
    let (emu, client) = setup().await;
    let id = client
        .usage_limits()
        .create(&usage_body("keep"))
        .await
        .unwrap()
        .id;
    let before = emu.control().state().await.unwrap();

    let cases: Vec<(CreateUsageLimitsPolicy, &str)> = vec![
        (
            CreateUsageLimitsPolicy {
                conditions: vec![],
                ..usage_body("x")
            },
            "conditions: must not be empty",
        ),
        (
            CreateUsageLimitsPolicy {
                group_by: vec![],
                ..usage_body("x")
            },
            "group_by: must not be empty",
        ),
        (
            CreateUsageLimitsPolicy {
                alert_threshold: Some(dec("50")),
                ..usage_body("x")
            },
            "alert_threshold: must be less than credit_limit",
        ),
        (
            CreateUsageLimitsPolicy {
                name: "n".repeat(256),
                ..usage_body("x")
            },
            "name: must be at most 255 characters",
        ),
        (
            CreateUsageLimitsPolicy {
                periodic_reset_days: Some(7),
                ..usage_body("x")
            },
            "periodic_reset_days: cannot be combined with periodic_reset",
        ),
        (
            CreateUsageLimitsPolicy {
                periodic_reset: None,
                periodic_reset_days: Some(366),
                ..usage_body("x")
            },
            "periodic_reset_days: must be an integer from 1 to 365",
        ),
        (
            CreateUsageLimitsPolicy {
                workspace_id: Some("ghost".into()),
                ..usage_body("x")
            },
            "workspace_id: workspace \"ghost\" not found",
        ),
        (
            CreateUsageLimitsPolicy {
                limit_type: UsageLimitType::Tokens,
                alert_threshold: None,
                ..usage_body("x")
            },
            "credit_limit: must be at least 100 for type tokens",
        ),
    ];
    for (body, expected) in cases {
        let err = client.usage_limits().create(&body).await.unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "expected {expected:?}, got {err}"
        );
        if !expected.starts_with("workspace_id") {
            assert!(
                matches!(err, PortkeyError::Validation { .. }) && err.code() == Some("AB01"),
                "{err:?}"
            );
            assert!(err.is_terminal());
        }
    }

    // Raw bodies the typed client cannot produce.
    let http = reqwest::Client::new();
    let raw = [
        (
            "POST",
            "/policies/usage-limits".to_owned(),
            "{not json",
            "body: is not valid JSON",
        ),
        (
            "POST",
            "/policies/usage-limits".to_owned(),
            r#"{"name":"x","workspace_id":"team-a","conditions":[{"key":"k","value":"v"}],"group_by":[{"key":"g"}],"type":"daily","credit_limit":5}"#,
            "type: must be one of: cost, tokens, requests",
        ),
        (
            "POST",
            "/policies/usage-limits".to_owned(),
            r#"{"name":"x","workspace_id":"team-a","conditions":[{"key":"k","value":"v"}],"group_by":[{"key":"g"}],"type":"cost"}"#,
            "credit_limit: is required",
        ),
        (
            "POST",
            "/policies/usage-limits".to_owned(),
            r#"{"name":"x","workspace_id":"team-a","conditions":[{"key":"k","value":"v"}],"group_by":[{"key":"g"}],"type":"cost","credit_limit":5,"periodic_reset":"daily"}"#,
            "periodic_reset: must be one of: weekly, monthly",
        ),
        (
            "PUT",
            format!("/policies/usage-limits/{id}"),
            r#"{"name":"changed","alert_threshold":99}"#,
            "alert_threshold: must be less than credit_limit (50)",
        ),
        (
            "PUT",
            format!("/policies/usage-limits/{id}"),
            r#"{"name":null}"#,
            "name: must not be null",
        ),
        (
            "PUT",
            format!("/policies/usage-limits/{id}"),
            r#"{"credit_limit":80,"group_by":[{"key":"other"}]}"#,
            "group_by: cannot be changed",
        ),
        (
            "PUT",
            format!("/policies/usage-limits/{id}"),
            r#"[1,2]"#,
            "body: must be a JSON object",
        ),
    ];
    for (method, path, body, expected) in raw {
        let resp = http
            .request(method.parse().unwrap(), format!("{}{path}", emu.base_url()))
            .header(API_KEY_HEADER, KEY)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(expected) && text.contains("AB01"),
            "expected {expected:?}, got {text}"
        );
    }
    let after = emu.control().state().await.unwrap();
    assert_eq!(before, after, "rejected requests changed nothing");
}

#[tokio::test]
async fn error_kinds_are_typed() {
    let (emu, client) = setup().await;
    let ctl = emu.control();

    let mut bad_key = ClientConfig::new(emu.base_url(), ApiKey::new("wrong-key-abcdef"));
    bad_key.retry = RetryPolicy::none();
    let bad_client = PortkeyClient::new(bad_key).unwrap();
    let err = bad_client.get_workspace(WS_ID).await.unwrap_err();
    assert!(
        matches!(err, PortkeyError::Unauthorized { .. }) && err.code() == Some("AB05"),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    for (status, check) in [
        (
            403u16,
            (|e: &PortkeyError| matches!(e, PortkeyError::Forbidden { .. }))
                as fn(&PortkeyError) -> bool,
        ),
        (409, |e| matches!(e, PortkeyError::Conflict { .. })),
        (402, |e| matches!(e, PortkeyError::Http { status: 402, .. })),
        (501, |e| {
            matches!(e, PortkeyError::Server { status: 501, .. })
        }),
    ] {
        ctl.set_faults(json!({"fail_next": 1, "error_status": status}))
            .await
            .unwrap();
        let err = client.get_workspace(WS_ID).await.unwrap_err();
        assert!(check(&err), "HTTP {status}: {err:?}");
    }
    assert!(
        client
            .usage_limits()
            .get("nope", GetOptions::default())
            .await
            .unwrap_err()
            .is_not_found()
    );

    // Connection refused: a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let mut cfg = ClientConfig::new(format!("http://{addr}/v1"), ApiKey::new(KEY));
    cfg.retry = RetryPolicy::none();
    let err = PortkeyClient::new(cfg)
        .unwrap()
        .get_workspace(WS_ID)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PortkeyError::Transport { connect: true, .. }),
        "{err:?}"
    );

    // Timeout: the emulator answers slower than the client waits.
    ctl.set_faults(json!({"latency_ms": 1500})).await.unwrap();
    let mut cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    cfg.retry = RetryPolicy::none();
    cfg.timeout = Duration::from_millis(200);
    let err = PortkeyClient::new(cfg)
        .unwrap()
        .get_workspace(WS_ID)
        .await
        .unwrap_err();
    assert!(
        matches!(err, PortkeyError::Transport { timeout: true, .. }),
        "{err:?}"
    );
    ctl.clear_faults().await.unwrap();
}

#[tokio::test]
async fn retries_transient_errors_with_bounded_attempts() {
    let (emu, client) = setup().await;
    let ctl = emu.control();
    let id = client
        .usage_limits()
        .create(&usage_body("r"))
        .await
        .unwrap()
        .id;
    let path = format!("/v1/policies/usage-limits/{id}");

    // Two 503s then success: 3 calls.
    ctl.clear_requests().await.unwrap();
    ctl.set_faults(json!({"fail_next": 2, "error_status": 503}))
        .await
        .unwrap();
    client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    let log = ctl.requests().await.unwrap();
    let statuses: Vec<u16> = log.data.iter().map(|e| e.status).collect();
    assert_eq!(statuses, [503, 503, 200]);
    assert!(log.data.iter().all(|e| e.path == path));

    // Always failing: 1 try + max_retries (4) retries, then the error.
    ctl.clear_requests().await.unwrap();
    ctl.set_faults(json!({"error_rate": 1.0, "error_status": 500}))
        .await
        .unwrap();
    let err = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, PortkeyError::Server { status: 500, .. }));
    assert_eq!(ctl.requests().await.unwrap().total, 5);

    // Not retried: 501, 404 and 400.
    for (faults, expect_calls) in [
        (json!({"fail_next": 1, "error_status": 501}), 1u64),
        (json!({"fail_next": 1, "error_status": 404}), 1),
        (json!({"fail_next": 1, "error_status": 400}), 1),
    ] {
        ctl.clear_requests().await.unwrap();
        ctl.set_faults(faults.clone()).await.unwrap();
        assert!(
            client
                .usage_limits()
                .get(&id, GetOptions::default())
                .await
                .is_err()
        );
        assert_eq!(
            ctl.requests().await.unwrap().total,
            expect_calls,
            "{faults}"
        );
    }

    // A create that may have reached the server is not repeated (no duplicate policies)…
    ctl.clear_requests().await.unwrap();
    ctl.set_faults(json!({"fail_next": 1, "error_status": 500}))
        .await
        .unwrap();
    assert!(
        client
            .usage_limits()
            .create(&usage_body("once"))
            .await
            .is_err()
    );
    assert_eq!(
        ctl.requests()
            .await
            .unwrap()
            .count("POST", "/v1/policies/usage-limits"),
        1
    );
    // …but a 429 (rejected before any work) is.
    ctl.clear_requests().await.unwrap();
    ctl.set_faults(json!({"fail_next": 1, "error_status": 429, "retry_after_s": 0}))
        .await
        .unwrap();
    client
        .usage_limits()
        .create(&usage_body("after-429"))
        .await
        .unwrap();
    let log = ctl.requests().await.unwrap();
    assert_eq!(
        log.data.iter().map(|e| e.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let names: Vec<_> = client
        .usage_limits()
        .list(&ws_filter())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    assert_eq!(
        names,
        ["r", "after-429"],
        "exactly one policy per successful create"
    );
}

#[tokio::test]
async fn honours_retry_after() {
    let (emu, client) = setup().await;
    let ctl = emu.control();
    ctl.set_faults(json!({"fail_next": 1, "error_status": 429, "retry_after_s": 1}))
        .await
        .unwrap();
    ctl.clear_requests().await.unwrap();
    let started = Instant::now();
    client.get_workspace(WS_ID).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the Retry-After before retrying"
    );
    assert_eq!(ctl.requests().await.unwrap().total, 2);

    // A Retry-After longer than the client's cap is handed back instead of waited.
    ctl.set_faults(json!({"fail_next": 1, "error_status": 429, "retry_after_s": 120}))
        .await
        .unwrap();
    ctl.clear_requests().await.unwrap();
    let err = client.get_workspace(WS_ID).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(120)));
    assert_eq!(ctl.requests().await.unwrap().total, 1);

    // The emulator's own rate limit answers 429 with Retry-After for the excess.
    ctl.set_faults(json!({"rate_limit_rps": 1, "retry_after_s": 7}))
        .await
        .unwrap();
    ctl.clear_requests().await.unwrap();
    let mut cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    cfg.retry = RetryPolicy::none();
    let strict = PortkeyClient::new(cfg).unwrap();
    let first = strict.get_workspace(WS_ID).await;
    let second = strict.get_workspace(WS_ID).await;
    assert!(first.is_ok());
    let err = second.unwrap_err();
    assert!(
        matches!(err, PortkeyError::RateLimited { .. })
            && err.retry_after() == Some(Duration::from_secs(7)),
        "{err:?}"
    );
}

/// The client's rate limit (at most N requests in any second, sent at once while there is
/// room) against a server that admits N a second: three seconds' worth of requests at once,
/// without retries, all answered, none refused with 429.
#[tokio::test]
async fn client_rate_limit_stays_under_the_servers() {
    const RATE: u32 = 20;
    let (emu, _) = setup().await;
    let ctl = emu.control();
    ctl.set_faults(json!({"rate_limit_rps": RATE, "retry_after_s": 1}))
        .await
        .unwrap();
    ctl.clear_requests().await.unwrap();
    let mut cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    cfg.retry = RetryPolicy::none();
    cfg.max_requests_per_second = Some(RATE);
    let client = PortkeyClient::new(cfg).unwrap();
    let started = Instant::now();
    let answers =
        futures::future::join_all((0..RATE * 3 - 5).map(|_| client.get_workspace(WS_ID))).await;
    let refused: Vec<_> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(refused.is_empty(), "refused: {refused:?}");
    assert_eq!(ctl.requests().await.unwrap().total, u64::from(RATE * 3 - 5));
    // Three windows: the third cannot start before two seconds have passed.
    assert!(started.elapsed() >= Duration::from_secs(2));
}

#[tokio::test]
async fn clock_moves_trigger_resets() {
    let (emu, client) = setup().await;
    let ctl = emu.control();
    ctl.set_clock(Some("2026-11-21T14:00:00Z".parse().unwrap()))
        .await
        .unwrap();
    let id = client
        .usage_limits()
        .create(&usage_body("monthly"))
        .await
        .unwrap()
        .id;
    ctl.add_usage(&id, "metadata._user:alice", dec("50"))
        .await
        .unwrap();
    ctl.set_clock(Some("2026-12-01T00:00:01Z".parse().unwrap()))
        .await
        .unwrap();
    let p = client
        .usage_limits()
        .get(
            &id,
            GetOptions {
                include_usage: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        p.last_reset_at,
        Some("2026-12-01T00:00:00Z".parse().unwrap())
    );
    assert_eq!(
        p.next_usage_reset_at,
        Some("2027-01-01T00:00:00Z".parse().unwrap())
    );
    let alice = &p.value_key_usage_map.unwrap()["metadata._user:alice"];
    assert_eq!(
        (alice.current_usage, alice.status),
        (Decimal::ZERO, BucketStatus::Active)
    );
}

#[tokio::test]
async fn raising_the_limit_reactivates_exhausted_buckets() {
    let (emu, client) = setup().await;
    let id = client
        .usage_limits()
        .create(&usage_body("x"))
        .await
        .unwrap()
        .id;
    emu.control()
        .add_usage(&id, "metadata._user:a", dec("55"))
        .await
        .unwrap();
    client
        .usage_limits()
        .update(
            &id,
            &UpdateUsageLimitsPolicy {
                credit_limit: Some(dec("100")),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let p = client
        .usage_limits()
        .get(
            &id,
            GetOptions {
                include_usage: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let a = &p.value_key_usage_map.unwrap()["metadata._user:a"];
    assert_eq!(a.status, BucketStatus::Active);
    assert!(!a.is_exhausted_alerts_sent);
}

#[tokio::test]
async fn state_file_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("state.json");
    let config = EmulatorConfig {
        state_file: Some(file.clone()),
        ..default_config()
    };
    let emu = start(config.clone()).await;
    let client = client_for(&emu, fast_retry(0), 100);
    let id = client
        .usage_limits()
        .create(&usage_body("persisted"))
        .await
        .unwrap()
        .id;
    emu.shutdown().await;
    assert!(file.exists());

    let emu = start(config).await;
    let client = client_for(&emu, fast_retry(0), 100);
    let p = client
        .usage_limits()
        .get(&id, GetOptions::default())
        .await
        .unwrap();
    assert_eq!(p.name.as_deref(), Some("persisted"));
    assert_eq!(
        client.list_workspaces().await.unwrap().len(),
        2,
        "seeds are not duplicated"
    );
}

#[tokio::test]
async fn api_key_never_printed() {
    let (emu, client) = setup().await;
    let cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    assert!(!format!("{cfg:?}").contains(KEY));
    assert!(!format!("{client:?}").contains(KEY));
    let mut bad = ClientConfig::new(emu.base_url(), ApiKey::new("secret-wrong-key-xyz"));
    bad.retry = RetryPolicy::none();
    let err = PortkeyClient::new(bad)
        .unwrap()
        .get_workspace(WS_ID)
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("secret-wrong-key-xyz"));
    let state = serde_json::to_string(&emu.control().state().await.unwrap()).unwrap();
    assert!(
        !state.contains(KEY),
        "the emulator's state dump holds no API key"
    );

    let err =
        PortkeyClient::new(ClientConfig::new(emu.base_url(), ApiKey::new("bad\nkey"))).unwrap_err();
    assert!(!err.to_string().contains("bad\nkey"));
    let err = PortkeyClient::new(ClientConfig::new("ftp://x", ApiKey::new("k"))).unwrap_err();
    assert!(err.to_string().contains("must be an http(s) URL"), "{err}");
}

/// The emulator's real-world consistency faults, as the reconcile tests meet them.
#[tokio::test]
async fn consistency_faults_behave_like_the_real_admin_api() {
    let (emu, client) = setup().await;
    let ctl = emu.control();
    let usage = client.usage_limits();

    // Read-after-write lag: a new id 404s and is missing from lists until the lag is over.
    ctl.set_faults(json!({"read_after_write_lag_ms": 600_000}))
        .await
        .unwrap();
    let id = usage.create(&usage_body("lagging")).await.unwrap().id;
    let err = usage.get(&id, GetOptions::default()).await.unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(usage.list(&ws_filter()).await.unwrap().is_empty());
    let put = UpdateUsageLimitsPolicy {
        credit_limit: Some(dec("90")),
        ..Default::default()
    };
    assert!(usage.update(&id, &put).await.unwrap_err().is_not_found());
    ctl.clear_faults().await.unwrap();
    assert_eq!(usage.get(&id, GetOptions::default()).await.unwrap().id, id);
    assert_eq!(usage.list(&ws_filter()).await.unwrap().len(), 1);

    // Stale echoes: after a PUT, reads show the previous version while the fault lasts.
    let before = usage.get(&id, GetOptions::default()).await.unwrap();
    ctl.set_faults(json!({"stale_read_ms": 600_000}))
        .await
        .unwrap();
    usage.update(&id, &put).await.unwrap();
    assert_eq!(
        usage
            .get(&id, GetOptions::default())
            .await
            .unwrap()
            .credit_limit,
        before.credit_limit
    );
    assert_eq!(
        usage.list(&ws_filter()).await.unwrap()[0].credit_limit,
        before.credit_limit
    );
    ctl.clear_faults().await.unwrap();
    assert_eq!(
        usage
            .get(&id, GetOptions::default())
            .await
            .unwrap()
            .credit_limit,
        dec("90")
    );

    // List items without the reset fields (backends before 1.18.0); GET still has them.
    ctl.set_faults(json!({"list_without_reset": true}))
        .await
        .unwrap();
    let listed = &usage.list(&ws_filter()).await.unwrap()[0];
    assert_eq!(listed.periodic_reset, None);
    assert_eq!(listed.next_usage_reset_at, None);
    let got = usage.get(&id, GetOptions::default()).await.unwrap();
    assert!(got.periodic_reset.is_some() && got.next_usage_reset_at.is_some());

    // Gone objects answer 403 AB03.
    ctl.set_faults(json!({"gone_as_forbidden": true}))
        .await
        .unwrap();
    usage.delete(&id).await.unwrap();
    let err = usage.get(&id, GetOptions::default()).await.unwrap_err();
    assert!(
        matches!(&err, PortkeyError::Forbidden { code: Some(c), .. } if c == "AB03"),
        "{err:?}"
    );
    let err = usage.delete(&id).await.unwrap_err();
    assert!(matches!(err, PortkeyError::Forbidden { .. }), "{err:?}");
    let err = usage
        .get(
            "0b6c0c2e-8a3a-4a43-9d55-2f6f3f1d9a01",
            GetOptions::default(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, PortkeyError::Forbidden { .. }), "{err:?}");

    // Unknown faults are refused, naming the field.
    let err = ctl.set_faults(json!({"stale_read": 5})).await.unwrap_err();
    assert!(err.contains("stale_read"), "{err}");
}

fn key_body(workspace: &str, name: &str) -> CreateApiKey {
    CreateApiKey {
        name: name.into(),
        workspace_id: Some(workspace.into()),
        scopes: vec!["completions.write".into()],
        usage_limits: Some(WorkspaceUsageLimit {
            limit_type: UsageLimitType::Cost,
            credit_limit: dec("10"),
            alert_threshold: Some(dec("8")),
            periodic_reset: Some(PeriodicReset::Weekly),
            periodic_reset_days: None,
            next_usage_reset_at: None,
        }),
        rate_limits: vec![KeyRateLimit {
            limit_type: RateLimitType::Requests,
            unit: KeyRateLimitUnit::Rps,
            value: dec("3"),
        }],
        alert_emails: vec!["ops@example.com".into()],
        ..Default::default()
    }
}

/// `/api-keys` as the published API has it: the raw key only in the create and rotate answers
/// (masked on every read), one budget object, weekly resets on Sunday, `reset_usage`, status
/// `exhausted` at the limit, rotation with a transition period, delete, and errors that name
/// the field.
#[tokio::test]
async fn api_keys_lifecycle() {
    let (emu, c) = setup().await;
    let ctl = emu.control();
    ctl.set_clock(Some("2026-11-18T10:00:00Z".parse().unwrap())) // a Wednesday
        .await
        .unwrap();
    let issued = service_key(&c, &key_body(WS_SLUG, "svc")).await;
    let id = issued.id.clone().unwrap();
    assert!(
        format!("{issued:?}").contains("ApiKey(***)"),
        "Debug never prints the key"
    );
    let raw = issued.key.expose().to_owned();
    let key = c.get_api_key(&id).await.unwrap();
    let masked = key.key.clone().unwrap();
    assert!(masked.contains("*****") && masked != raw, "{masked}");
    assert_eq!(key.workspace_id.as_deref(), Some(WS_ID));
    assert_eq!(key.key_type.as_deref(), Some("workspace-service"));
    assert_eq!(key.status, Some(ApiKeyStatus::Active));
    let budget = key.usage_limits.clone().unwrap();
    assert_eq!(
        budget.next_usage_reset_at.unwrap().to_string(),
        "2026-11-22T00:00:00Z",
        "weekly key budgets reset on Sunday"
    );
    assert_eq!(
        key.rate_limits.as_ref().unwrap()[0].unit,
        KeyRateLimitUnit::Rps
    );
    assert!(ctl.key_works(&raw).await.unwrap());

    // A user key needs a user; listing is per workspace.
    let user = CreateApiKey {
        user_id: Some("u-1".into()),
        ..key_body(WS_SLUG, "alice")
    };
    c.create_api_key(ApiKeyType::Workspace, ApiKeySubType::User, &user)
        .await
        .unwrap();
    let err = c
        .create_api_key(
            ApiKeyType::Workspace,
            ApiKeySubType::User,
            &key_body(WS_SLUG, "x"),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("user_id"), "{err}");
    service_key(&c, &key_body("team-b", "b")).await;
    assert_eq!(c.list_api_keys(Some(WS_ID)).await.unwrap().len(), 2);
    assert_eq!(c.list_api_keys(None).await.unwrap().len(), 3);
    for listed in c.list_api_keys(None).await.unwrap() {
        assert!(
            listed.key.unwrap().contains("*****"),
            "lists are masked too"
        );
    }

    // Usage reaches the budget: exhausted; raising it or reset_usage makes it active again.
    let k = ctl.add_key_usage(&id, dec("10")).await.unwrap();
    assert_eq!(k.status, Some(ApiKeyStatus::Exhausted));
    let reset = UpdateApiKey {
        reset_usage: Some(true),
        ..Default::default()
    };
    c.update_api_key(&id, &reset).await.unwrap();
    let k = c.get_api_key(&id).await.unwrap();
    assert_eq!(k.status, Some(ApiKeyStatus::Active));
    assert_eq!(k.last_reset_at.unwrap().to_string(), "2026-11-18T10:00:00Z");

    // The periodic-reset trap: a budget sent without next_usage_reset_at is rescheduled from
    // now; with it, the schedule stays.
    ctl.set_clock(Some("2026-11-25T10:00:00Z".parse().unwrap()))
        .await
        .unwrap();
    let carried = WorkspaceUsageLimit {
        credit_limit: dec("20"),
        next_usage_reset_at: budget.next_usage_reset_at,
        ..budget.clone()
    };
    c.update_api_key(
        &id,
        &UpdateApiKey {
            usage_limits: Nullable::Value(carried),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let k = c.get_api_key(&id).await.unwrap();
    assert_eq!(
        k.usage_limits
            .unwrap()
            .next_usage_reset_at
            .unwrap()
            .to_string(),
        "2026-11-29T00:00:00Z",
        "the due reset rolled forward, the Sunday schedule kept"
    );

    // Rotation: a new raw key, the old one still working during the transition.
    let rotated = c.rotate_api_key(&id, 1_800_000).await.unwrap();
    let new_raw = rotated.key.expose().to_owned();
    assert_ne!(new_raw, raw);
    assert!(ctl.key_works(&new_raw).await.unwrap());
    assert!(
        ctl.key_works(&raw).await.unwrap(),
        "old key in its transition period"
    );
    ctl.set_clock(Some("2026-11-25T10:31:00Z".parse().unwrap()))
        .await
        .unwrap();
    assert!(!ctl.key_works(&raw).await.unwrap(), "transition over");
    let err = c.rotate_api_key(&id, 60_000).await.unwrap_err();
    assert!(
        err.to_string().contains("key_transition_period_ms"),
        "{err}"
    );

    // Immutable fields and bad values are refused, naming the field.
    let bad = serde_json::json!({"user_id": "someone"});
    let resp = reqwest::Client::new()
        .put(format!("{}/api-keys/{id}", emu.base_url()))
        .header(API_KEY_HEADER, KEY)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("user_id"));
    let mut bad_email = key_body(WS_SLUG, "e");
    bad_email.alert_emails = vec!["not-an-email".into()];
    let err = c
        .create_api_key(ApiKeyType::Workspace, ApiKeySubType::Service, &bad_email)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("alert_emails[0]"), "{err}");

    // Delete: gone (404, or 403 AB03 with the gone_as_forbidden fault).
    c.delete_api_key(&id).await.unwrap();
    assert!(c.get_api_key(&id).await.unwrap_err().is_not_found());
    ctl.set_faults(json!({"gone_as_forbidden": true}))
        .await
        .unwrap();
    let err = c.get_api_key(&id).await.unwrap_err();
    assert!(err.is_gone() && !err.is_not_found(), "{err:?}");
}

/// Rotation follows the OpenAPI rotate description ("The previous key remains valid during
/// the transition period and expires at `key_transition_expires_at`": one previous key) and
/// `RotateApiKeyResponse` (`id`, `key`, `key_transition_expires_at`). What a second rotation
/// during a transition does is undocumented: the emulator's model (design of issue #28) ends the
/// first previous key at once. GET's masked key (first 2 + `*****` + last 3, as in the MCP
/// fixture, reference §8) tells the current raw key from the replaced ones.
#[tokio::test]
async fn rotation_keeps_one_previous_key() {
    let (emu, c) = setup().await;
    let ctl = emu.control();
    ctl.set_clock(Some("2026-11-25T10:00:00Z".parse().unwrap()))
        .await
        .unwrap();
    let issued = service_key(&c, &key_body(WS_SLUG, "rot")).await;
    let id = issued.id.clone().unwrap();
    let raw0 = issued.key.expose().to_owned();
    assert_eq!(issued.key_transition_expires_at, None, "create has none");
    let k = c.get_api_key(&id).await.unwrap();
    assert_eq!(k.masked_key_matches(&raw0), Some(true));

    let first = c.rotate_api_key(&id, 3_600_000).await.unwrap();
    let raw1 = first.key.expose().to_owned();
    assert_eq!(first.id.as_deref(), Some(id.as_str()));
    assert_eq!(
        first.key_transition_expires_at.unwrap().to_string(),
        "2026-11-25T11:00:00Z",
        "now + key_transition_period_ms"
    );
    assert!(
        ctl.key_works(&raw0).await.unwrap(),
        "previous key in transition"
    );
    assert!(ctl.key_works(&raw1).await.unwrap());
    let k = c.get_api_key(&id).await.unwrap();
    assert_eq!(k.masked_key_matches(&raw1), Some(true));
    assert_eq!(
        k.masked_key_matches(&raw0),
        Some(false),
        "the masked key no longer matches the replaced key"
    );

    // A second rotation during the transition: the first previous key stops at once, the key
    // it retires gets the new transition.
    ctl.set_clock(Some("2026-11-25T10:10:00Z".parse().unwrap()))
        .await
        .unwrap();
    let second = c.rotate_api_key(&id, 1_800_000).await.unwrap();
    let raw2 = second.key.expose().to_owned();
    assert_eq!(
        second.key_transition_expires_at.unwrap().to_string(),
        "2026-11-25T10:40:00Z"
    );
    assert!(
        !ctl.key_works(&raw0).await.unwrap(),
        "one previous key: the older one ended at once, before its 11:00 expiry"
    );
    assert!(ctl.key_works(&raw1).await.unwrap(), "the newly retired key");
    assert!(ctl.key_works(&raw2).await.unwrap());
    let state = ctl.state().await.unwrap();
    let rec = state.api_keys.iter().find(|r| r.key.id == id).unwrap();
    assert_eq!(rec.rotations, 2);
    assert_eq!(rec.previous.as_ref().unwrap().raw, raw1);

    ctl.set_clock(Some("2026-11-25T10:40:00Z".parse().unwrap()))
        .await
        .unwrap();
    assert!(
        !ctl.key_works(&raw1).await.unwrap(),
        "expired at key_transition_expires_at"
    );
    assert!(ctl.key_works(&raw2).await.unwrap());
}

/// `PUT /api-keys/{id}` takes `scopes` (OpenAPI `UpdateApiKeyObject.scopes`; the SDK samples
/// send them), validated as on create: a non-empty list of strings, errors naming the field and
/// nothing changed on a refusal. Other fields and the raw key stay as they were.
#[tokio::test]
async fn key_update_replaces_scopes() {
    let (emu, c) = setup().await;
    let issued = service_key(&c, &key_body(WS_SLUG, "scoped")).await;
    let id = issued.id.clone().unwrap();
    let before = c.get_api_key(&id).await.unwrap();
    let scopes = vec!["completions.write".to_owned(), "logs.write".to_owned()];
    assert_ne!(before.scopes, scopes);
    c.update_api_key(
        &id,
        &UpdateApiKey {
            scopes: Some(scopes.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let after = c.get_api_key(&id).await.unwrap();
    assert_eq!(after.scopes, scopes);
    assert_eq!(after.usage_limits, before.usage_limits, "other fields kept");
    assert_eq!(after.alert_emails, before.alert_emails);
    assert_eq!(after.masked_key_matches(issued.key.expose()), Some(true));
    assert!(emu.control().key_works(issued.key.expose()).await.unwrap());

    for (bad, field) in [
        (json!({"scopes": []}), "scopes"),
        (json!({"scopes": "completions.write"}), "scopes"),
        (json!({"scopes": [7]}), "scopes[0]"),
        (json!({"scopes": null}), "scopes"),
    ] {
        let resp = reqwest::Client::new()
            .put(format!("{}/api-keys/{id}", emu.base_url()))
            .header(API_KEY_HEADER, KEY)
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        let text = resp.text().await.unwrap();
        assert!(text.contains(field), "{bad}: {text}");
    }
    assert_eq!(
        c.get_api_key(&id).await.unwrap().scopes,
        scopes,
        "unchanged"
    );
}

/// The `path_contains` fault narrows `response_delay_ms` to one kind of request: a rotation
/// whose answer is held past the client's timeout was still carried out (the key rotated, the
/// old raw key in its transition, GET's mask on the new key), and a GET, a PUT and a key create
/// made meanwhile are answered at once.
#[tokio::test]
async fn a_lost_rotate_answer_still_rotated_the_key() {
    let emu = start(default_config()).await;
    let c = client_for(&emu, fast_retry(4), 100);
    let ctl = emu.control();
    let issued = service_key(&c, &key_body(WS_SLUG, "lost")).await;
    let id = issued.id.clone().unwrap();
    let raw = issued.key.expose().to_owned();
    let set = ctl
        .set_faults(
            json!({"response_delay_ms": 60000, "method": "POST", "path_contains": "/rotate"}),
        )
        .await
        .unwrap();
    assert_eq!(set.path_contains.as_deref(), Some("/rotate"));

    let mut cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    cfg.retry = fast_retry(4);
    cfg.timeout = Duration::from_millis(400);
    let impatient = PortkeyClient::new(cfg).unwrap();
    let started = Instant::now();
    let err = impatient.rotate_api_key(&id, 1_800_000).await.unwrap_err();
    assert!(
        matches!(err, PortkeyError::Transport { timeout: true, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "one attempt, no retry"
    );

    // The answer is still held back; other requests are not.
    let started = Instant::now();
    let k = c.get_api_key(&id).await.unwrap();
    c.update_api_key(
        &id,
        &UpdateApiKey {
            alert_emails: Nullable::Value(vec!["a@example.com".into()]),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    service_key(&c, &key_body(WS_SLUG, "other")).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "GET, PUT and a create answered at once: {:?}",
        started.elapsed()
    );
    assert_eq!(
        k.masked_key_matches(&raw),
        Some(false),
        "GET shows the new key's mask"
    );
    let state = ctl.state().await.unwrap();
    let rec = state.api_keys.iter().find(|r| r.key.id == id).unwrap();
    assert_eq!(rec.rotations, 1, "the rotation was carried out");
    assert_ne!(rec.raw, raw);
    assert!(
        ctl.key_works(&raw).await.unwrap(),
        "old key in its transition"
    );
}

/// `bench --real`'s read floor makes the reads it reports, every one a `GET` with usage of a
/// policy of the workspace, at the rate asked for, and reports the CPU they cost.
#[tokio::test]
async fn read_floor_makes_the_reads_it_reports() {
    use portkey_budget_operator::bench_real::read_floor;
    let (emu, client) = setup().await;
    for name in ["a", "b", "c"] {
        client
            .usage_limits()
            .create(&usage_body(name))
            .await
            .unwrap();
    }
    emu.control().clear_requests().await.unwrap();
    let config = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    let floor = read_floor(config, WS_ID, 40.0, Duration::from_millis(500))
        .await
        .unwrap();
    // 40 a second for half a second on the 250 ms refresh grid: 10 reads at 0 ms and 10 at
    // 250 ms, never ahead of that schedule (a late machine makes the first 10 only).
    assert!(floor.reads == 10 || floor.reads == 20, "{floor:?}");
    assert!(
        floor.cpu_percent >= 0.0 && floor.cpu_percent.is_finite(),
        "{floor:?}"
    );
    let log = emu.control().requests().await.unwrap();
    let gets: Vec<_> = log
        .data
        .iter()
        .filter(|e| e.method == "GET" && e.path.starts_with("/v1/policies/usage-limits/"))
        .collect();
    assert_eq!(
        gets.len() as u64,
        floor.reads,
        "one list, then only the reads"
    );
    assert!(gets.iter().all(|e| {
        e.status == 200
            && e.query
                .as_deref()
                .is_some_and(|q| q.contains("include_usage=true"))
    }));
    assert_eq!(log.total as u64, floor.reads + 1);
    let mut empty = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    empty.page_size = 10;
    let err = read_floor(empty, "team-b", 40.0, Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(err.contains("no policies"), "{err}");
}
