//! One typed error for every Admin API failure (docs/admin-api.md §5).
//!
//! Error bodies come in several envelopes; all are parsed:
//! * `{"success": false, "data": {"message": "…", "errorCode": "AB01"}}` (the usual one),
//! * `{"errorCode": "AB01", "message": "…"}` (flat),
//! * `{"error": {"message": "…", "code": "AB01"}}` or `{"error": "…"}`,
//! * anything else: the status line and a short excerpt of the body.
//!
//! Nothing here ever holds the API key: it only travels in a request header.

use std::time::Duration;

use serde_json::Value;

/// What went wrong talking to the Admin API.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortkeyError {
    /// 400/422: the request was rejected as invalid. Terminal: retrying will not help.
    #[error("Portkey rejected the request as invalid (HTTP {status}{}): {message}", code_suffix(.code))]
    Validation {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// 401: the API key is missing, wrong or expired.
    #[error("Portkey rejected the API key (HTTP 401{}): {message}", code_suffix(.code))]
    Unauthorized {
        code: Option<String>,
        message: String,
    },
    /// 403: the key lacks a scope, or the object belongs to another workspace.
    #[error("Portkey forbade the operation{} (HTTP 403{}): {message}", operation_suffix(.operation), code_suffix(.code))]
    Forbidden {
        code: Option<String>,
        message: String,
        /// The client operation that was refused (e.g. `usage_limits.create`), set by the
        /// client: what permission was missing is read from it ([`required_scope`]).
        operation: Option<&'static str>,
    },
    /// 404: no such object (an archived policy is 404 unless `status=archived` is asked for).
    #[error("not found in Portkey (HTTP 404{}): {message}", code_suffix(.code))]
    NotFound {
        code: Option<String>,
        message: String,
    },
    /// 409: conflict, already exists, or has dependants.
    #[error("conflict in Portkey (HTTP 409{}): {message}", code_suffix(.code))]
    Conflict {
        code: Option<String>,
        message: String,
    },
    /// 429: the Admin API rate limit was hit.
    #[error("Portkey Admin API rate limit hit (HTTP 429){}: {message}", retry_suffix(.retry_after))]
    RateLimited {
        retry_after: Option<Duration>,
        message: String,
    },
    /// 5xx.
    #[error("Portkey server error (HTTP {status}{}): {message}", code_suffix(.code))]
    Server {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// Any other HTTP status (e.g. 402 subscription exhausted).
    #[error("unexpected answer from Portkey (HTTP {status}{}): {message}", code_suffix(.code))]
    Http {
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The request did not complete: connection refused or reset, DNS, TLS, or a timeout.
    #[error("could not reach the Portkey Admin API{}: {message}", if *.timeout { " (timed out)" } else { "" })]
    Transport {
        message: String,
        timeout: bool,
        /// True when the request certainly never reached the server (connect failed).
        connect: bool,
    },
    /// A 2xx answer whose body did not have the expected shape.
    #[error("could not read Portkey's answer: {message}")]
    Decode { message: String },
    /// Bad client configuration (base URL, API key characters).
    #[error("invalid Portkey client configuration: {0}")]
    Config(String),
}

fn operation_suffix(operation: &Option<&'static str>) -> String {
    operation.map(|o| format!(" {o}")).unwrap_or_default()
}

/// The Admin API scope an operation of the client needs (Portkey's "API Keys (AuthN and AuthZ)"
/// reference), e.g. `policies.create` for `usage_limits.create`. API-key operations are named for
/// service keys (`workspace_service_api_keys.*`; user keys need `workspace_user_api_keys.*`).
pub fn required_scope(operation: &str) -> &'static str {
    let (family, verb) = operation.split_once('.').unwrap_or((operation, ""));
    match (family, verb) {
        ("usage_limits" | "rate_limits", "create") => "policies.create",
        ("usage_limits" | "rate_limits", "list") => "policies.list",
        ("usage_limits" | "rate_limits", "update" | "entity_reset") => "policies.update",
        ("usage_limits" | "rate_limits", "delete") => "policies.delete",
        ("usage_limits" | "rate_limits", _) => "policies.read",
        ("workspaces", "list") => "workspaces.list",
        ("workspaces", "update") => "workspaces.update",
        ("workspaces", _) => "workspaces.read",
        ("api_keys", "create") => "workspace_service_api_keys.create",
        ("api_keys", "list") => "workspace_service_api_keys.list",
        ("api_keys", "update" | "rotate") => "workspace_service_api_keys.update",
        ("api_keys", "delete") => "workspace_service_api_keys.delete",
        ("api_keys", _) => "workspace_service_api_keys.read",
        _ => "the scope of this operation",
    }
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_ref().map(|c| format!(", {c}")).unwrap_or_default()
}

fn retry_suffix(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {}s", d.as_secs_f64()))
        .unwrap_or_default()
}

impl PortkeyError {
    /// The object is gone: 404, or 403 `AB03`, which Portkey answers for deleted objects
    /// (docs/admin-api.md §5). Only meaningful for an id the operator knows; a 403 on a list or a
    /// create is a permission problem.
    pub fn is_gone(&self) -> bool {
        self.is_not_found()
            || matches!(self, PortkeyError::Forbidden { code: Some(c), .. } if c == "AB03")
    }

    /// The scope a refused (403) operation needs, when the client knows the operation.
    pub fn missing_scope(&self) -> Option<&'static str> {
        match self {
            PortkeyError::Forbidden {
                operation: Some(op),
                ..
            } => Some(required_scope(op)),
            _ => None,
        }
    }

    /// Names the client operation on a 403 (see [`PortkeyError::missing_scope`]).
    pub fn for_operation(mut self, op: &'static str) -> Self {
        if let PortkeyError::Forbidden { operation, .. } = &mut self {
            *operation = Some(op);
        }
        self
    }

    /// Builds the error for a non-2xx answer from its status, body and `Retry-After` header.
    pub fn from_response(status: u16, body: &str, retry_after: Option<Duration>) -> Self {
        let (message, code) = parse_error_body(body)
            .unwrap_or_else(|| (fallback_message(status, body), None::<String>));
        match status {
            400 | 422 => PortkeyError::Validation {
                status,
                code,
                message,
            },
            401 => PortkeyError::Unauthorized { code, message },
            403 => PortkeyError::Forbidden {
                code,
                message,
                operation: None,
            },
            404 => PortkeyError::NotFound { code, message },
            409 => PortkeyError::Conflict { code, message },
            429 => PortkeyError::RateLimited {
                retry_after,
                message,
            },
            500..=599 => PortkeyError::Server {
                status,
                code,
                message,
            },
            _ => PortkeyError::Http {
                status,
                code,
                message,
            },
        }
    }

    /// The HTTP status, when there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            PortkeyError::Validation { status, .. }
            | PortkeyError::Server { status, .. }
            | PortkeyError::Http { status, .. } => Some(*status),
            PortkeyError::Unauthorized { .. } => Some(401),
            PortkeyError::Forbidden { .. } => Some(403),
            PortkeyError::NotFound { .. } => Some(404),
            PortkeyError::Conflict { .. } => Some(409),
            PortkeyError::RateLimited { .. } => Some(429),
            PortkeyError::Transport { .. }
            | PortkeyError::Decode { .. }
            | PortkeyError::Config(_) => None,
        }
    }

    /// Portkey's error code (`AB01` …), when the body carried one.
    pub fn code(&self) -> Option<&str> {
        match self {
            PortkeyError::Validation { code, .. }
            | PortkeyError::Unauthorized { code, .. }
            | PortkeyError::Forbidden { code, .. }
            | PortkeyError::NotFound { code, .. }
            | PortkeyError::Conflict { code, .. }
            | PortkeyError::Server { code, .. }
            | PortkeyError::Http { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Worth retrying the same request: transport errors, 429 and 5xx except 501.
    pub fn is_retryable(&self) -> bool {
        match self {
            PortkeyError::Transport { .. } | PortkeyError::RateLimited { .. } => true,
            PortkeyError::Server { status, .. } => *status != 501,
            _ => false,
        }
    }

    /// The failure cannot be fixed by retrying; a human must change the spec or the setup.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            PortkeyError::Validation { .. } | PortkeyError::Config(_)
        ) || matches!(self, PortkeyError::Server { status: 501, .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, PortkeyError::NotFound { .. })
    }

    /// Retry-After of a 429, when given.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PortkeyError::RateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short, stable, CamelCase name for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            PortkeyError::Validation { .. } => "PortkeyValidationError",
            PortkeyError::Unauthorized { .. } => "PortkeyUnauthorized",
            PortkeyError::Forbidden { .. } => "PortkeyForbidden",
            PortkeyError::NotFound { .. } => "PortkeyNotFound",
            PortkeyError::Conflict { .. } => "PortkeyConflict",
            PortkeyError::RateLimited { .. } => "PortkeyRateLimited",
            PortkeyError::Server { .. } => "PortkeyServerError",
            PortkeyError::Http { .. } => "PortkeyHttpError",
            PortkeyError::Transport { .. } => "PortkeyUnreachable",
            PortkeyError::Decode { .. } => "PortkeyBadResponse",
            PortkeyError::Config(_) => "PortkeyClientConfig",
        }
    }
}

/// Message and code from any of the observed error envelopes.
pub fn parse_error_body(body: &str) -> Option<(String, Option<String>)> {
    let value: Value = serde_json::from_str(body).ok()?;
    let obj = value.as_object()?;
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    let code_of = |o: &serde_json::Map<String, Value>| {
        text(o.get("errorCode"))
            .or_else(|| text(o.get("error_code")))
            .or_else(|| text(o.get("code")))
    };
    let message_of =
        |o: &serde_json::Map<String, Value>| text(o.get("message")).or_else(|| text(o.get("msg")));
    // Nested envelopes first: {"data": {...}} and {"error": {...}}.
    for key in ["data", "error"] {
        if let Some(inner) = obj.get(key).and_then(Value::as_object)
            && let Some(message) = message_of(inner)
        {
            return Some((message, code_of(inner).or_else(|| code_of(obj))));
        }
    }
    if let Some(message) = message_of(obj) {
        return Some((message, code_of(obj)));
    }
    if let Some(message) = text(obj.get("error")) {
        return Some((message, code_of(obj)));
    }
    code_of(obj).map(|code| ("(no message)".to_owned(), Some(code)))
}

fn fallback_message(status: u16, body: &str) -> String {
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("unknown status");
    let excerpt: String = body.trim().chars().take(200).collect();
    if excerpt.is_empty() {
        reason.to_owned()
    } else {
        format!("{reason}: {excerpt}")
    }
}

/// Parses a `Retry-After` header: delay seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: jiff::Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    let delta = at.duration_since(now);
    Some(Duration::try_from(delta).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_envelope() {
        let nested =
            r#"{"success":false,"data":{"message":"credit_limit: required","errorCode":"AB01"}}"#;
        assert_eq!(
            parse_error_body(nested),
            Some(("credit_limit: required".into(), Some("AB01".into())))
        );
        let flat = r#"{"errorCode":"AB08","message":"Policy not found"}"#;
        assert_eq!(
            parse_error_body(flat),
            Some(("Policy not found".into(), Some("AB08".into())))
        );
        let error_obj = r#"{"error":{"message":"slow down","code":"AB06"}}"#;
        assert_eq!(
            parse_error_body(error_obj),
            Some(("slow down".into(), Some("AB06".into())))
        );
        let error_str = r#"{"error":"Unauthorized","errorCode":"AB05"}"#;
        assert_eq!(
            parse_error_body(error_str),
            Some(("Unauthorized".into(), Some("AB05".into())))
        );
        assert_eq!(parse_error_body("<html>bad gateway</html>"), None);
    }

    #[test]
    fn maps_statuses_to_kinds() {
        let e =
            PortkeyError::from_response(400, r#"{"errorCode":"AB01","message":"type: bad"}"#, None);
        assert!(matches!(e, PortkeyError::Validation { .. }));
        assert!(e.is_terminal() && !e.is_retryable());
        assert_eq!(e.code(), Some("AB01"));
        assert!(e.to_string().contains("type: bad"));
        let e = PortkeyError::from_response(502, "<html>bad gateway</html>", None);
        assert!(e.is_retryable());
        assert!(e.to_string().contains("Bad Gateway"));
        assert!(!PortkeyError::from_response(501, "", None).is_retryable());
        let e = PortkeyError::from_response(429, "", Some(Duration::from_secs(2)));
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(e.is_retryable());
        assert!(!PortkeyError::from_response(404, "", None).is_retryable());
        assert!(!PortkeyError::from_response(409, "", None).is_retryable());
        assert!(matches!(
            PortkeyError::from_response(402, r#"{"errorCode":"AB09","message":"pay"}"#, None),
            PortkeyError::Http { status: 402, .. }
        ));
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now: jiff::Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sat, 21 Nov 2026 10:00:05 GMT", now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
