//! The HTTP side: the Admin API routes, the control routes under `/_emulator/`, the gate that
//! authenticates and injects faults, and the router.

use super::*;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            json!({"success": false, "data": {"message": self.message, "errorCode": self.code}});
        let mut resp = (status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after_s {
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs));
        }
        resp
    }
}

pub(super) type Shr = AxState<Arc<Shared>>;
pub(super) type Q = Query<HashMap<String, String>>;
pub(super) type Reply = Result<axum::Json<Value>, ApiError>;

pub(super) fn ok<T: Serialize>(v: T) -> Reply {
    serde_json::to_value(v)
        .map(axum::Json)
        .map_err(|e| ApiError {
            status: 500,
            code: "AB04",
            message: format!("could not encode the answer: {e}"),
            retry_after_s: None,
        })
}

pub(super) fn empty() -> Reply {
    Ok(axum::Json(json!({})))
}

pub(super) fn body_json(bytes: &Bytes) -> ApiResult<Value> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::invalid("body", format!("is not valid JSON ({e})")))
}

pub(super) fn status_param(q: &HashMap<String, String>) -> ApiResult<PolicyStatus> {
    match q.get("status") {
        None => Ok(PolicyStatus::Active),
        Some(s) => PolicyStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                format!("must be one of: {}", PolicyStatus::expected()),
            )
        }),
    }
}

pub(super) fn parse_param<T>(
    q: &HashMap<String, String>,
    name: &str,
    parse: fn(&str) -> Option<T>,
    expected: String,
) -> ApiResult<Option<T>> {
    q.get(name)
        .map(|s| {
            parse(s).ok_or_else(|| ApiError::invalid(name, format!("must be one of: {expected}")))
        })
        .transpose()
}

pub(super) fn workspace_param(q: &HashMap<String, String>) -> ApiResult<&str> {
    q.get("workspace_id").map(String::as_str).ok_or_else(|| {
        ApiError::invalid(
            "workspace_id",
            "is required when using an organisation API key",
        )
    })
}

/// Slices one page out of `items` (`page_size`, 0-based `current_page`).
pub(super) fn page<T: Serialize>(
    items: Vec<T>,
    q: &HashMap<String, String>,
    max: usize,
    cap: Option<usize>,
) -> Reply {
    let num = |name: &str, default: usize| -> ApiResult<usize> {
        match q.get(name) {
            None => Ok(default),
            Some(s) => s
                .parse::<usize>()
                .map_err(|_| ApiError::invalid(name, "must be a non-negative integer")),
        }
    };
    let mut size = num("page_size", state::DEFAULT_PAGE_SIZE)?;
    if size == 0 {
        size = state::DEFAULT_PAGE_SIZE;
    }
    if size > max {
        return Err(ApiError::invalid(
            "page_size",
            format!("must be at most {max}"),
        ));
    }
    if let Some(cap) = cap {
        size = size.min(cap.max(1));
    }
    let current = num("current_page", 0)?;
    let total = items.len() as i64;
    let data: Vec<T> = items
        .into_iter()
        .skip(current.saturating_mul(size))
        .take(size)
        .collect();
    ok(ListResponse {
        object: Some("list".into()),
        data,
        total: Some(total),
    })
}

// ----- usage-limits policies -----

pub(super) async fn usage_create(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let created = s.write(|st| st.create_usage_policy(&body))?;
    s.note_created(&created.id);
    ok(created)
}

pub(super) async fn usage_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    let t = parse_param(
        &q,
        "type",
        UsageLimitType::parse,
        UsageLimitType::expected(),
    )?;
    let items = s.read(|st| st.list_usage_policies(workspace_param(&q)?, status, t))?;
    page(s.list_items(items), &q, state::MAX_PAGE_SIZE, s.page_cap())
}

pub(super) async fn usage_get(AxState(s): Shr, Path(id): Path<String>, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    let include_usage = match q.get("include_usage").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid("include_usage", "must be true or false")),
    };
    s.read_policy(
        &id,
        s.read(|st| st.get_usage_policy(&id, status, include_usage)),
    )
}

pub(super) async fn usage_update(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let before = s.read_policy(
        &id,
        s.read(|st| st.get_usage_policy(&id, PolicyStatus::Active, false)),
    )?;
    s.writable(&id, |st| st.update_usage_policy(&id, &body))?;
    s.note_updated(&id, before.0);
    empty()
}

pub(super) async fn usage_delete(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.writable(&id, |st| st.archive_usage_policy(&id))?;
    empty()
}

pub(super) async fn usage_entities(AxState(s): Shr, Path(id): Path<String>, Query(q): Q) -> Reply {
    let status = parse_param(&q, "status", BucketStatus::parse, BucketStatus::expected())?;
    let search = q.get("search").cloned();
    let items = s.read(|st| st.entities(&id, status, search.as_deref()))?;
    page(items, &q, 100, s.page_cap())
}

pub(super) async fn usage_entity_reset(
    AxState(s): Shr,
    Path((id, entity)): Path<(String, String)>,
) -> Reply {
    s.write(|st| st.reset_entity(&id, &entity))?;
    empty()
}

// ----- rate-limits policies -----

pub(super) async fn rate_create(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let created = s.write(|st| st.create_rate_policy(&body))?;
    s.note_created(&created.id);
    ok(created)
}

pub(super) async fn rate_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    let t = parse_param(&q, "type", RateLimitType::parse, RateLimitType::expected())?;
    let u = parse_param(&q, "unit", RateLimitUnit::parse, RateLimitUnit::expected())?;
    let items = s.read(|st| st.list_rate_policies(workspace_param(&q)?, status, t, u))?;
    page(s.list_items(items), &q, state::MAX_PAGE_SIZE, s.page_cap())
}

pub(super) async fn rate_get(AxState(s): Shr, Path(id): Path<String>, Query(q): Q) -> Reply {
    let status = status_param(&q)?;
    s.read_policy(&id, s.read(|st| st.get_rate_policy(&id, status)))
}

pub(super) async fn rate_update(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let before = s.read_policy(
        &id,
        s.read(|st| st.get_rate_policy(&id, PolicyStatus::Active)),
    )?;
    s.writable(&id, |st| st.update_rate_policy(&id, &body))?;
    s.note_updated(&id, before.0);
    empty()
}

pub(super) async fn rate_delete(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.writable(&id, |st| st.archive_rate_policy(&id))?;
    empty()
}

// ----- workspaces -----

pub(super) async fn workspace_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let items = s.read(|st| Ok(st.workspaces.clone()))?;
    page(items, &q, state::MAX_PAGE_SIZE, s.page_cap())
}

pub(super) async fn workspace_get(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    ok(s.read(|st| st.workspace(&id).cloned())?)
}

pub(super) async fn workspace_update(
    AxState(s): Shr,
    Path(id): Path<String>,
    body: Bytes,
) -> Reply {
    let body = body_json(&body)?;
    s.write(|st| st.update_workspace(&id, &body))?;
    empty()
}

// ----- API keys -----

pub(super) async fn key_create(
    AxState(s): Shr,
    Path((key_type, sub_type)): Path<(String, String)>,
    body: Bytes,
) -> Reply {
    let body = body_json(&body)?;
    let created = s.write(|st| st.create_api_key(&key_type, &sub_type, &body))?;
    if let Some(id) = created["id"].as_str() {
        s.note_created(id);
    }
    ok(created)
}

pub(super) async fn key_list(AxState(s): Shr, Query(q): Q) -> Reply {
    let workspace = q.get("workspace_id").cloned();
    let items = s.read(|st| st.list_api_keys(workspace.as_deref()))?;
    page(s.list_items(items), &q, state::MAX_PAGE_SIZE, s.page_cap())
}

pub(super) async fn key_get(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.read_policy(&id, s.read(|st| st.get_api_key(&id)))
}

pub(super) async fn key_update(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let before = s.read_policy(&id, s.read(|st| st.get_api_key(&id)))?;
    s.writable(&id, |st| st.update_api_key(&id, &body))?;
    s.note_updated(&id, before.0);
    empty()
}

pub(super) async fn key_delete(AxState(s): Shr, Path(id): Path<String>) -> Reply {
    s.writable(&id, |st| st.delete_api_key(&id))?;
    empty()
}

pub(super) async fn key_rotate(AxState(s): Shr, Path(id): Path<String>, body: Bytes) -> Reply {
    let body = if body.is_empty() {
        Value::Object(Default::default())
    } else {
        body_json(&body)?
    };
    ok(s.writable(&id, |st| st.rotate_api_key(&id, &body))?)
}

pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("route")
}

/// Auth, injected faults and the request log for every `/v1` request.
pub(super) async fn admin_api_gate(AxState(s): Shr, req: Request, next: Next) -> Response {
    let method = req.method().to_string();
    // Inside the nested `/v1` router the URI has lost its prefix; log the original one.
    let uri = req
        .extensions()
        .get::<OriginalUri>()
        .map(|o| o.0.clone())
        .unwrap_or_else(|| req.uri().clone());
    let path = uri.path().to_owned();
    let query = uri.query().map(str::to_owned);
    let key = req
        .headers()
        .get(API_KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let response = match s.gate(&key, &method, &path).await {
        Err(e) => e.into_response(),
        Ok(()) => next.run(req).await,
    };
    let delay = {
        let f = lock(&s.faults);
        if f.faults.targets(&method, &path) {
            f.faults.response_delay_ms
        } else {
            0
        }
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut log = lock(&s.log);
    log.total += 1;
    let seq = log.total;
    if log.entries.len() < MAX_LOG_ENTRIES {
        log.entries.push(RequestLogEntry {
            seq,
            method,
            path,
            query,
            status: response.status().as_u16(),
        });
    }
    response
}

impl Shared {
    pub(super) async fn gate(&self, key: &str, method: &str, path: &str) -> ApiResult<()> {
        let unauthorized = {
            let keys = lock(&self.api_keys);
            key.is_empty() || (!keys.is_empty() && !keys.iter().any(|k| k == key))
        };
        if unauthorized {
            return Err(ApiError {
                status: 401,
                code: "AB05",
                message: "Invalid API Key".into(),
                retry_after_s: None,
            });
        }
        let latency = lock(&self.faults).faults.latency_ms;
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        let mut f = lock(&self.faults);
        let retry_after = f.faults.retry_after_s.unwrap_or(1);
        if let Some(limiter) = &f.limiter
            && limiter.check().is_err()
        {
            return Err(ApiError {
                status: 429,
                code: "AB06",
                message: "Too many requests to the Admin API".into(),
                retry_after_s: Some(retry_after),
            });
        }
        let injected = if !f.faults.targets(method, path) {
            false
        } else if f.faults.fail_next > 0 {
            f.faults.fail_next -= 1;
            true
        } else {
            let rate = f.faults.error_rate;
            rate > 0.0 && f.rng.random_bool(rate.min(1.0))
        };
        if injected {
            let status = f.faults.error_status.unwrap_or(500);
            return Err(ApiError {
                status,
                code: if status == 429 { "AB06" } else { "AB04" },
                message: format!("injected fault (HTTP {status})"),
                retry_after_s: (status == 429).then_some(retry_after),
            });
        }
        Ok(())
    }
}

// ----- control endpoints -----

pub(super) async fn control_usage(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    ok(s.write(|st| st.add_usage(&body))?)
}

pub(super) async fn control_key_usage(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    ok(s.write(|st| st.add_key_usage(&body))?)
}

pub(super) async fn control_key_check(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let key = body["key"].as_str().unwrap_or_default().to_owned();
    ok(s.read(|st| Ok(serde_json::json!({ "works": st.key_works(&key) })))?)
}

pub(super) async fn control_set_faults(AxState(s): Shr, body: Bytes) -> Reply {
    let faults = parse_faults(&body_json(&body)?)?;
    let mut f = lock(&s.faults);
    f.set(faults);
    ok(&f.faults)
}

/// `PUT /_emulator/api-keys {"keys": [...]}`: the keys accepted from now on (a rotation);
/// answers how many there are (never the keys).
pub(super) async fn control_set_api_keys(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let keys: Vec<String> = body["keys"]
        .as_array()
        .ok_or_else(|| ApiError::invalid("keys", "must be a list of strings"))?
        .iter()
        .map(|k| {
            k.as_str()
                .filter(|k| !k.is_empty())
                .map(str::to_owned)
                .ok_or_else(|| ApiError::invalid("keys", "must be non-empty strings"))
        })
        .collect::<ApiResult<_>>()?;
    let count = keys.len();
    *lock(&s.api_keys) = keys;
    ok(json!({"keys": count}))
}

pub(super) async fn control_get_faults(AxState(s): Shr) -> Reply {
    ok(&lock(&s.faults).faults)
}

pub(super) async fn control_requests(AxState(s): Shr) -> Reply {
    let log = lock(&s.log);
    ok(json!({"total": log.total, "data": log.entries}))
}

pub(super) async fn control_clear_requests(AxState(s): Shr) -> Reply {
    *lock(&s.log) = RequestLog::default();
    empty()
}

pub(super) async fn control_clock(AxState(s): Shr, body: Bytes) -> Reply {
    let body = body_json(&body)?;
    let obj = object(&body)?;
    let now = match obj.get("now") {
        Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .and_then(|t| Timestamp::from_str(t).ok())
                .ok_or_else(|| ApiError::invalid("now", "must be an RFC 3339 timestamp or null"))?,
        ),
        None => {
            return Err(ApiError::invalid(
                "now",
                "is required (a timestamp, or null for the real clock)",
            ));
        }
    };
    let now = s.write(|st| {
        st.clock = now;
        st.roll_resets();
        Ok(st.now())
    })?;
    ok(json!({"now": now}))
}

pub(super) async fn control_state(AxState(s): Shr) -> Reply {
    ok(s.read(|st| Ok(st.clone()))?)
}

pub(super) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/policies/usage-limits", get(usage_list).post(usage_create))
        .route(
            "/policies/usage-limits/{id}",
            get(usage_get).put(usage_update).delete(usage_delete),
        )
        .route("/policies/usage-limits/{id}/entities", get(usage_entities))
        .route(
            "/policies/usage-limits/{id}/entities/{entity}/reset",
            put(usage_entity_reset),
        )
        .route("/policies/rate-limits", get(rate_list).post(rate_create))
        .route(
            "/policies/rate-limits/{id}",
            get(rate_get).put(rate_update).delete(rate_delete),
        )
        .route("/api-keys", get(key_list))
        .route(
            "/api-keys/{id}",
            get(key_get).put(key_update).delete(key_delete),
        )
        .route("/api-keys/{id}/rotate", post(key_rotate))
        .route("/api-keys/{type}/{sub_type}", post(key_create))
        .route("/admin/workspaces", get(workspace_list))
        .route(
            "/admin/workspaces/{id}",
            get(workspace_get).put(workspace_update),
        )
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            shared.clone(),
            admin_api_gate,
        ));
    let control = Router::new()
        .route("/usage", post(control_usage))
        .route("/faults", get(control_get_faults).post(control_set_faults))
        .route(
            "/requests",
            get(control_requests).delete(control_clear_requests),
        )
        .route("/clock", post(control_clock))
        .route("/api-keys", put(control_set_api_keys))
        .route("/key-usage", post(control_key_usage))
        .route("/key-check", post(control_key_check))
        .route("/state", get(control_state));
    Router::new()
        .nest("/v1", api)
        .nest("/_emulator", control)
        .fallback(not_found)
        .with_state(shared)
}
