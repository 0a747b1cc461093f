//! Dry-run mode and the per-resource metrics (issue: production operations).

use crate::harness::*;

/// The gate's input for a resource with `status` as written, at `generation`, last compared
/// with Portkey `ago`.
fn freshness(
    status: &portkey_budget_operator::api::common::RemotePolicyStatus,
    generation: Option<i64>,
    ago: jiff::SignedDuration,
) -> controller::Freshness<'_> {
    controller::Freshness {
        generation,
        observed_generation: status.observed_generation,
        conditions: &status.conditions,
        last_sync: Some(jiff::Timestamp::now() - ago),
        pending: false,
        paused: false,
    }
}

/// How many distinct instants the sorted `dues` hold, counting dues at most `apart` from
/// the previous one as the same instant.
fn instants(dues: &[Duration], apart: Duration) -> usize {
    1 + dues.windows(2).filter(|w| w[1] - w[0] > apart).count()
}

fn dry_run_config() -> ControllerConfig {
    ControllerConfig {
        dry_run: true,
        ..test_config()
    }
}

#[tokio::test]
async fn dry_run_never_writes_to_portkey_and_says_what_it_would_do() {
    let env = env_with(dry_run_config()).await;
    let ctl = env.emu.control();

    // Create → WouldCreate, nothing in Portkey.
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    assert!(env.active(WS_A).await.is_empty());
    assert!(env.has_event("WouldCreate"));
    env.expect_condition("monthly", "Ready", "False", "DryRun");
    env.expect_condition("monthly", "Synced", "True", "DryRun");
    let annotations = env.obj("monthly").metadata.annotations.unwrap_or_default();
    assert!(!annotations.contains_key(CREATE_PENDING_ANNOTATION));

    // A policy that exists (made by a non-dry-run operator): an update → WouldUpdate.
    let real = Context::new(
        env.kube.client(),
        env.portkey.clone(),
        test_config(),
        controller::reporter(),
    );
    usage::reconcile(&env.obj("monthly"), &real).await.unwrap();
    let before = env.active(WS_A).await.remove(0);
    env.apply("monthly", spec().limit("900"));
    ctl.clear_requests().await.unwrap();
    env.reconcile("monthly").await.unwrap();
    assert!(env.has_event("WouldUpdate"));
    let (_, would_update) = &env.events("WouldUpdate")[0];
    assert!(would_update.contains("500"), "{would_update:?}");
    assert!(would_update.contains("900"), "{would_update:?}");

    // Type change with Recreate → WouldArchive + WouldCreate.
    let mut replaced = spec().on_immutable_change(OnImmutableChange::Recreate);
    replaced.limit_type = UsageLimitType::Tokens;
    env.apply("monthly", replaced);
    env.reconcile("monthly").await.unwrap();
    assert!(env.has_event("WouldArchive"));

    // Delete → WouldArchive, the finalizer is released, the policy stays.
    env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
    usage::reconcile(&env.obj("monthly"), &env.ctx)
        .await
        .unwrap();
    assert!(env.kube.get::<UsageLimitPolicy>(NS, "monthly").is_none());
    let after = env.active(WS_A).await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].id, before.id);
    assert_eq!(after[0].credit_limit, d("500"), "the limit was not changed");

    assert_eq!(
        ctl.requests().await.unwrap().writes(),
        0,
        "dry-run made Admin API writes"
    );
}

#[tokio::test]
async fn dry_run_covers_rate_limits_and_workspace_budgets() {
    let env = env_with(dry_run_config()).await;
    env.kube.apply(&rlp("rpm", 60, "rpm"));
    env.reconcile_rlp(NS, "rpm").await;
    env.kube
        .apply(&wsb("marketing", "team-b", 500, "2026-11-01T00:00:00Z"));
    env.reconcile_wsb("marketing").await;

    let reasons = env.kube.event_reasons();
    assert!(reasons.contains(&"WouldCreate".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"WouldUpdate".to_owned()), "{reasons:?}");
    let ws = env.workspace(WS_B).await;
    assert!(ws.usage_limits.unwrap_or_default().is_empty());
    assert_eq!(env.wsb_ready("marketing").1, "DryRun");
    assert_eq!(env.emu.control().requests().await.unwrap().writes(), 0);
}

/// Periodic refreshes have a read budget of their own (half the Admin API rate): over it,
/// a refresh is put back in the queue instead of reading; a resource with work to do (a
/// new generation) is never held back.
#[tokio::test]
async fn refreshes_over_their_read_budget_are_deferred_and_work_is_not() {
    let env = env_from_defaults(|c| {
        c.refresh_read_rate = Some(1);
        c.usage_refresh_interval = Duration::from_secs(1);
    })
    .await;
    env.apply("monthly", spec());
    env.reconcile("monthly").await.unwrap();
    let obj = env.obj("monthly");
    let status = obj.status.clone().unwrap();
    let settled = |generation: Option<i64>| {
        freshness(
            &status.common,
            generation,
            jiff::SignedDuration::from_secs(60),
        )
    };
    let now = jiff::Timestamp::now();
    let interval = Duration::from_secs(1);
    let g = obj.metadata.generation;
    assert!(settled(g).settled(), "{status:?}");
    assert!(
        controller::gate(&env.ctx, settled(g), now, interval).is_none(),
        "the first refresh reads"
    );
    let deferred = controller::gate(&env.ctx, settled(g), now, interval)
        .expect("the next one, over the 1 read/s budget, is deferred");
    assert!(action_delay(&deferred) > Duration::ZERO);
    // Deferred refreshes get successive slots at the budget's rate (first come, first
    // served), so each is deferred about once instead of retrying at random times.
    let mut delays = vec![action_delay(&deferred)];
    for _ in 0..3 {
        let again =
            controller::gate(&env.ctx, settled(g), now, interval).expect("still over the budget");
        delays.push(action_delay(&again));
    }
    for pair in delays.windows(2) {
        assert!(
            pair[1] >= pair[0] + Duration::from_millis(900),
            "one slot a second apart: {delays:?}"
        );
    }
    let newer = g.map(|g| g + 1);
    assert!(
        controller::gate(&env.ctx, settled(newer), now, interval).is_none(),
        "a new generation is work, never deferred"
    );
    assert!(
        env.ctx
            .metrics
            .encode()
            .lines()
            .any(|l| l == "portkey_budget_operator_refreshes_deferred_total 4"),
        "counted"
    );
}

/// Deferred refreshes start on the refresh grid: their slots, spaced at the budget's rate
/// (here the busy budget, a fifth of 100 reads a second, as a create just ran: 50 ms
/// apart), land on one grid point per quarter second, not on a hundred instants (each
/// its own wake-up of the process).
#[tokio::test]
async fn deferred_refreshes_land_on_the_grid() {
    let env = env_from_defaults(|c| c.refresh_read_rate = Some(100)).await;
    env.create("monthly", spec()).await;
    let obj = env.obj("monthly");
    let status = obj.status.unwrap();
    let settled = || {
        freshness(
            &status.common,
            obj.metadata.generation,
            jiff::SignedDuration::from_hours(1),
        )
    };
    let interval = Duration::from_secs(1);
    let start = std::time::Instant::now();
    let mut dues = Vec::new();
    // The budget's burst goes first; the next hundred are deferred.
    while dues.len() < 100 {
        if let Some(action) =
            controller::gate(&env.ctx, settled(), jiff::Timestamp::now(), interval)
        {
            dues.push(start.elapsed() + action_delay(&action));
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never over budget"
        );
    }
    dues.sort();
    // Calls microseconds apart: dues within 2 ms of each other are one instant.
    let instants = instants(&dues, Duration::from_millis(2));
    let spread = dues[dues.len() - 1] - dues[0];
    assert!(
        spread >= Duration::from_millis(750),
        "still spread at the budget's rate: {spread:?}"
    );
    // One instant per grid point the spread covers (the dues are measured to within
    // microseconds, so a spread of 5 s may read as a hair under it).
    let steps = usize::try_from(spread.as_millis().div_ceil(250)).unwrap();
    assert!(
        instants <= steps + 1 && instants <= 25,
        "{instants} instants over {spread:?}: {dues:?}"
    );
}

/// The gate is decided once per pass, before the pass starts: a due refresh through the
/// reconcile entry point takes one read from the budget and reads Portkey once (deciding it
/// twice would spend a second read of the budget and defer the refresh it had admitted);
/// a pass the freshness gate turns away reads nothing and writes nothing.
#[tokio::test]
async fn a_refresh_takes_one_read_of_its_budget_and_a_fresh_pass_none() {
    let env = env_from_defaults(|c| c.refresh_read_rate = Some(1)).await;
    env.create("monthly", spec()).await;
    let key = "UsageLimitPolicy/team-a/monthly";
    let ctl = env.emu.control();
    let gets = || async {
        ctl.requests()
            .await
            .unwrap()
            .count("GET", "/v1/policies/usage-limits/")
    };
    let deferred = || {
        env.ctx
            .metrics
            .encode()
            .lines()
            .find(|l| l.starts_with("portkey_budget_operator_refreshes_deferred_total "))
            .map(str::to_owned)
    };
    // Just synced: the freshness gate turns the pass away before it does anything.
    let (reads, writes) = (gets().await, env.kube.writes().len());
    let action = env.reconcile("monthly").await.unwrap();
    assert!(action_delay(&action) > Duration::ZERO);
    assert_eq!((gets().await, env.kube.writes().len()), (reads, writes));
    // Due for its refresh (last synced an hour ago): the pass reads, once.
    env.ctx.synced(
        key,
        jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1),
    );
    env.reconcile("monthly").await.unwrap();
    assert_eq!(gets().await, reads + 1, "one read");
    assert_eq!(
        deferred().as_deref(),
        Some("portkey_budget_operator_refreshes_deferred_total 0"),
        "nothing deferred: the budget's one read a second was taken once"
    );
    assert_eq!(env.condition("monthly", "Ready").0, "True");
}

/// Periodic refreshes start on a 250 ms grid: the refresh interval is lengthened to the
/// next point of it, so refreshes due within one step start together (one wake-up).
#[test]
fn refreshes_start_on_the_grid() {
    use portkey_budget_operator::controller::{REFRESH_GRID, on_grid};
    let ms = Duration::from_millis;
    assert_eq!(REFRESH_GRID, ms(250));
    assert_eq!(on_grid(ms(0), ms(20_000)), ms(20_000));
    assert_eq!(on_grid(ms(100), ms(20_000)), ms(20_150));
    assert_eq!(on_grid(ms(100), ms(20_151)), ms(20_400));
    assert_eq!(
        on_grid(Duration::from_nanos(1), ms(1)),
        ms(250) - Duration::from_nanos(1)
    );
    // Never shorter than asked, never a whole step longer.
    for (since, wait) in [(7, 60_000), (1_234_567, 21_999), (999, 1)] {
        let got = on_grid(ms(since), ms(wait));
        assert!(got >= ms(wait) && got < ms(wait) + REFRESH_GRID, "{got:?}");
        assert_eq!((ms(since) + got).as_millis() % 250, 0);
    }
}

/// Through the context: refresh intervals asked for at about the same time, with their
/// 0 to 10 % jitter, land on at most a few grid points (a 60 s interval jitters over 6 s:
/// at most 25 points), not on hundreds of different instants.
#[tokio::test]
async fn refresh_intervals_land_on_few_instants() {
    let env = env_tuned(|c| c.usage_refresh_interval = Duration::from_secs(60)).await;
    let start = std::time::Instant::now();
    let mut dues: Vec<Duration> = (0..500)
        .map(|_| start.elapsed() + env.ctx.refresh_interval(true))
        .collect();
    dues.sort();
    // Calls microseconds apart: dues within 20 ms of each other are one instant (500
    // dues spread evenly over the 6 s of jitter would be about 12 ms apart).
    let instants = instants(&dues, Duration::from_millis(20));
    assert!(instants <= 25, "{instants} instants");
    let interval = env.ctx.refresh_interval(true);
    assert!(
        (Duration::from_secs(60)..=Duration::from_secs(66) + Duration::from_millis(250))
            .contains(&interval),
        "{interval:?}"
    );
}

/// A 409 Conflict (the pass worked from a copy the watch has replaced) is retried within a
/// fraction of a second and does not escalate the backoff; other failures back off.
#[tokio::test]
async fn a_stale_copy_is_retried_at_once_without_backoff() {
    let env = env().await;
    env.apply("monthly", spec());
    let obj = Arc::new(env.obj("monthly"));
    let api_error = |code: u16| {
        controller::Error::kube(
            "write the status",
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "stale".into(),
                ..Default::default()
            })),
        )
    };
    for _ in 0..6 {
        let action = controller::error_policy(obj.clone(), &api_error(409), env.ctx.clone());
        assert!(
            format!("{action:?}").contains("requeue_after: Some(")
                && action_delay(&action) < Duration::from_millis(300),
            "{action:?}"
        );
    }
    let action = controller::error_policy(obj.clone(), &api_error(500), env.ctx.clone());
    assert!(
        action_delay(&action) >= Duration::from_secs(1),
        "{action:?}"
    );
}

/// Asserts that the metrics exposition `text` has each of `lines` as a line.
#[track_caller]
fn expect_series<S: AsRef<str>>(text: &str, lines: &[S]) {
    for line in lines {
        let line = line.as_ref();
        assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
    }
}

/// ApiKeyBudgets in dry-run: an existing key's changes and an issued key's create are
/// announced (WouldUpdate, WouldCreate); no key is made, no Secret, no Admin API write.
#[tokio::test]
async fn dry_run_covers_api_key_budgets() {
    let env = env_with(dry_run_config()).await;
    let key = env.app_key("by-hand").await;
    env.clear_requests().await;
    for (name, spec) in [
        (
            "existing",
            json!({"workspace": "team-a", "existing": {"id": key},
                   "budget": {"type": "cost", "creditLimit": 20}}),
        ),
        (
            "issued",
            json!({"workspace": "team-a",
                   "issue": {"scopes": ["completions.write"], "secretName": "k"}}),
        ),
    ] {
        env.kube.apply(&akb(NS, name, spec));
        let (reason, message) = env.reconcile_akb(NS, name).await;
        assert_eq!(reason, "DryRun", "{name}: {message}");
    }
    let reasons = env.kube.event_reasons();
    assert!(reasons.contains(&"WouldCreate".to_owned()), "{reasons:?}");
    assert!(reasons.contains(&"WouldUpdate".to_owned()), "{reasons:?}");
    assert_eq!(env.emu.control().requests().await.unwrap().writes(), 0);
    assert_eq!(env.portkey.list_api_keys(None).await.unwrap().len(), 1);
    assert!(env.api_key(&key).await.usage_limits.is_none());
}

/// An ApiKeyBudget's budget series: the limit and the exhausted state, no usage figures
/// (Portkey reports none per key).
#[tokio::test]
async fn api_key_budget_metrics_show_limit_and_exhaustion() {
    let env = env().await;
    let key = env.app_key("svc").await;
    let spec = json!({"workspace": "team-a", "existing": {"name": "svc"},
                      "budget": {"type": "cost", "creditLimit": 20, "alertThreshold": 15}});
    env.kube.apply(&akb(NS, "svc", spec));
    let get = || env.kube.get::<ApiKeyBudget>(NS, "svc").unwrap();
    controller::reconcile_api_key(Arc::new(get()), env.ctx.clone())
        .await
        .unwrap();
    env.emu
        .control()
        .add_key_usage(&key, d("25"))
        .await
        .unwrap();
    // A new generation makes the next pass read Portkey again.
    let mut changed = get();
    changed.metadata.generation = Some(changed.metadata.generation.unwrap_or(1) + 1);
    env.kube.apply(&changed);
    controller::reconcile_api_key(Arc::new(get()), env.ctx.clone())
        .await
        .unwrap();
    assert_eq!(
        get().status.unwrap().key_status.as_deref(),
        Some("exhausted")
    );
    let text = env.ctx.metrics.encode();
    let labels = r#"{kind="ApiKeyBudget",namespace="team-a",name="svc",type="cost",unit="USD"}"#;
    expect_series(
        &text,
        &[
            format!("portkey_budget_operator_budget_limit{labels} 20.0"),
            format!("portkey_budget_operator_budget_alert_ratio{labels} 0.75"),
            format!("portkey_budget_operator_budget_exhausted_buckets{labels} 1"),
            r#"portkey_budget_operator_reconciles_total{kind="ApiKeyBudget"} 2"#.to_owned(),
        ],
    );
    assert!(
        !text.contains(r#"portkey_budget_operator_budget_usage{kind="ApiKeyBudget""#),
        "no usage series for keys"
    );
    assert!(get().status.unwrap().budget.as_deref() == Some("20 cost"));
}

#[tokio::test]
async fn budget_and_reconcile_metrics_follow_the_resource() {
    let env = env().await;
    let id = env.create("monthly", spec()).await;
    env.add_user_usage(&id, &[("alice", "400"), ("bob", "500")])
        .await;
    // Through the entry point the controller runs, so the reconcile counters move too.
    controller::reconcile_policy(Arc::new(env.obj("monthly")), env.ctx.clone())
        .await
        .unwrap();
    let text = env.ctx.metrics.encode();
    let labels =
        r#"{kind="UsageLimitPolicy",namespace="team-a",name="monthly",type="cost",unit="USD"}"#;
    expect_series(&text, &[
        format!("portkey_budget_operator_budget_limit{labels} 500.0"),
        format!("portkey_budget_operator_budget_usage{labels} 500.0"),
        format!("portkey_budget_operator_budget_usage_ratio{labels} 1.0"),
        format!("portkey_budget_operator_budget_alert_ratio{labels} 0.8"),
        format!("portkey_budget_operator_budget_exhausted_buckets{labels} 1"),
        r#"portkey_budget_operator_reconciles_total{kind="UsageLimitPolicy"} 1"#.to_owned(),
        r#"portkey_budget_operator_resource_ready{kind="UsageLimitPolicy",namespace="team-a",name="monthly",reason="InForce"} 1"#.to_owned(),
    ]);
    env.kube.delete::<UsageLimitPolicy>(NS, "monthly");
    env.reconcile("monthly").await.unwrap();
    assert!(
        !env.ctx.metrics.encode().contains("name=\"monthly\""),
        "series of a deleted resource are removed"
    );
}

#[tokio::test]
async fn admin_api_calls_are_counted_by_operation_outcome_and_status() {
    let env = env().await;
    let metrics = Arc::new(portkey_budget_operator::metrics::Metrics::new());
    let mut cfg = ClientConfig::new(env.emu.base_url(), ApiKey::new(KEY));
    let observer = metrics.clone();
    cfg.observer = Some(Arc::new(move |call| observer.api_call(call)));
    cfg.retry = RetryPolicy::none();
    let client = PortkeyClient::new(cfg).unwrap();
    client.ping().await.unwrap();
    assert!(client.get_workspace("no-such-workspace").await.is_err());
    let text = metrics.encode();
    expect_series(
        &text,
        &[
            r#"portkey_budget_operator_admin_api_requests_total{operation="ping",outcome="success",status="200"} 1"#,
            r#"portkey_budget_operator_admin_api_requests_total{operation="workspaces.get",outcome="client_error",status="404"} 1"#,
        ],
    );
}

/// Errors back off per resource (docs: "2 s doubling to 5 min, at least any `Retry-After`"):
/// the n-th failure in a row waits a jittered step in `[step/2, step]`, the step 2 s doubling
/// up to 300 s; a `Retry-After` longer than the step is waited instead; each resource counts
/// its own failures, and a successful pass starts a resource over.
#[tokio::test]
async fn errors_back_off_per_resource_from_2s_doubling_to_5min_and_at_least_retry_after() {
    let env = env().await;
    env.apply("monthly", spec());
    env.apply("other", spec());
    let monthly = Arc::new(env.obj("monthly"));
    let other = Arc::new(env.obj("other"));
    let failed = |source: PortkeyError| controller::Error::portkey("read the policy", source);
    let server = || {
        failed(PortkeyError::Server {
            status: 503,
            code: None,
            message: "unavailable".into(),
        })
    };
    let rate_limited = |seconds: u64| {
        failed(PortkeyError::RateLimited {
            retry_after: Some(Duration::from_secs(seconds)),
            message: "slow down".into(),
        })
    };
    let delay = |obj: &Arc<UsageLimitPolicy>, err: &controller::Error| {
        action_delay(&controller::error_policy(obj.clone(), err, env.ctx.clone()))
    };
    // Float rounding of the jittered step: well under a millisecond.
    let slack = Duration::from_millis(1);
    for n in 0..12u32 {
        let step = Duration::from_secs(2 << n.min(8)).min(Duration::from_secs(300));
        let got = delay(&monthly, &server());
        assert!(
            got + slack >= step / 2 && got <= step + slack,
            "failure {}: {got:?} outside [{:?}, {step:?}]",
            n + 1,
            step / 2
        );
    }
    // At the 300 s step, a short Retry-After does not shorten the wait.
    assert!(delay(&monthly, &rate_limited(1)) + slack >= Duration::from_secs(150));

    // Another resource starts from the first step; a Retry-After above its step wins.
    assert!(delay(&other, &server()) <= Duration::from_secs(2) + slack);
    assert!(delay(&other, &rate_limited(90)) >= Duration::from_secs(90));

    // A successful pass starts the resource over.
    controller::reconcile_policy(monthly.clone(), env.ctx.clone())
        .await
        .unwrap();
    assert!(delay(&monthly, &server()) <= Duration::from_secs(2) + slack);
}

/// All Admin API writes share one rate limiter (`--admin-api-write-rate`, here 4 a second):
/// the creates of ten resources of two kinds reconciled at once leave at that rate after a
/// burst of 4, so the last leaves at least (10 - 4) / 4 s after the first.
#[tokio::test]
async fn admin_api_writes_of_every_resource_share_the_write_rate() {
    let env = env().await;
    let sent: Arc<std::sync::Mutex<Vec<std::time::Instant>>> = Arc::default();
    let mut cfg = ClientConfig::new(env.emu.base_url(), ApiKey::new(KEY));
    let record = sent.clone();
    cfg.observer = Some(Arc::new(move |call| {
        if call.method.as_str() != "GET" {
            let started = std::time::Instant::now() - call.duration;
            record.lock().unwrap().push(started);
        }
    }));
    // The flag as `run` parses it.
    #[derive(clap::Parser)]
    struct Run {
        #[command(flatten)]
        args: portkey_budget_operator::config::RunArgs,
    }
    let run: Run = clap::Parser::try_parse_from(["run", "--admin-api-write-rate", "4"]).unwrap();
    let settings = run.args.resolve_with(Default::default()).unwrap();
    assert_eq!(settings.controller.admin_api_write_rate, 4);
    let config = ControllerConfig {
        admin_api_write_rate: settings.controller.admin_api_write_rate,
        ..test_config()
    };
    let portkey = PortkeyClient::new(cfg).unwrap();
    let ctx = Context::new(env.kube.client(), portkey, config, controller::reporter());
    let ulps: Vec<String> = (0..6).map(|i| format!("budget-{i}")).collect();
    let rlps: Vec<String> = (0..4).map(|i| format!("rate-{i}")).collect();
    for name in &ulps {
        env.apply(name, spec());
    }
    for name in &rlps {
        env.kube.apply(&rlp(name, 60, "rpm"));
    }
    let ulp_passes = ulps.iter().map(|name| {
        let (obj, ctx) = (env.obj(name), ctx.clone());
        async move { usage::reconcile(&obj, &ctx).await.map(|_| ()) }
    });
    let rlp_passes = rlps.iter().map(|name| {
        let obj = env.kube.get::<RateLimitPolicy>(NS, name).unwrap();
        let ctx = ctx.clone();
        async move { controller::rate::reconcile(&obj, &ctx).await.map(|_| ()) }
    });
    let (a, b) = futures::join!(
        futures::future::join_all(ulp_passes),
        futures::future::join_all(rlp_passes)
    );
    assert!(a.iter().chain(&b).all(Result::is_ok), "{a:?} {b:?}");
    assert_eq!(env.active(WS_A).await.len(), 6);
    assert_eq!(env.active_rates(WS_A).await.len(), 4);
    let mut sent = sent.lock().unwrap().clone();
    sent.sort();
    assert_eq!(sent.len(), 10, "one create each");
    let spread = sent[9] - sent[0];
    assert!(
        spread >= Duration::from_millis(1500 - 50),
        "10 writes at 4/s after a burst of 4 took only {spread:?}"
    );
}
