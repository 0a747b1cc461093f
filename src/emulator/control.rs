//! A small client for the emulator's `/_emulator/` control endpoints (tests, demos, benches).

use jiff::Timestamp;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::state::{Bucket, State};
use super::{Faults, RequestLogEntry};
use crate::portkey::wire::Number;

/// The request log as `GET /_emulator/requests` answers it.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestLog {
    pub total: u64,
    pub data: Vec<RequestLogEntry>,
}

impl RequestLog {
    /// Requests with this method whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.data
            .iter()
            .filter(|e| e.method == method && e.path.starts_with(prefix))
            .count()
    }

    /// Requests that changed something (POST, PUT, DELETE).
    pub fn writes(&self) -> usize {
        self.data
            .iter()
            .filter(|e| matches!(e.method.as_str(), "POST" | "PUT" | "DELETE" | "PATCH"))
            .count()
    }
}

#[derive(Debug, Clone)]
pub struct EmulatorControl {
    http: reqwest::Client,
    base: String,
}

impl EmulatorControl {
    /// `base` is the emulator root, e.g. `http://127.0.0.1:8787`.
    pub fn new(base: impl Into<String>) -> Self {
        EmulatorControl {
            http: reqwest::Client::new(),
            base: base.into().trim_end_matches('/').to_owned(),
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<T, String> {
        let mut req = self
            .http
            .request(method, format!("{}/_emulator/{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("HTTP {status}: {text}"));
        }
        serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))
    }

    /// Adds usage to one bucket of a usage-limits policy.
    pub async fn add_usage(
        &self,
        policy_id: &str,
        value_key: &str,
        amount: Decimal,
    ) -> Result<Bucket, String> {
        let body =
            json!({"policy_id": policy_id, "value_key": value_key, "amount": Number(amount)});
        self.call(reqwest::Method::POST, "usage", Some(body)).await
    }

    /// Sets faults from a JSON body (see [`Faults`]); `{}` clears. `method` and
    /// `path_contains` narrow `error_rate`, `fail_next` and `response_delay_ms` to matching
    /// requests: `{"response_delay_ms": 60000, "method": "POST", "path_contains": "/rotate"}`
    /// lets rotations happen while their answers are lost, and nothing else is slowed.
    pub async fn set_faults(&self, faults: Value) -> Result<Faults, String> {
        self.call(reqwest::Method::POST, "faults", Some(faults))
            .await
    }

    /// Replaces the accepted API keys (a key rotation).
    pub async fn set_api_keys(&self, keys: &[&str]) -> Result<(), String> {
        let _: Value = self
            .call(
                reqwest::Method::PUT,
                "api-keys",
                Some(json!({"keys": keys})),
            )
            .await?;
        Ok(())
    }

    /// Adds usage to an API key's budget (the key turns `exhausted` at its limit).
    pub async fn add_key_usage(
        &self,
        key_id: &str,
        amount: Decimal,
    ) -> Result<crate::portkey::ApiKeyObject, String> {
        let body = json!({"key_id": key_id, "amount": Number(amount)});
        self.call(reqwest::Method::POST, "key-usage", Some(body))
            .await
    }

    /// True when `raw` is an API key that works now (current, or rotated and still in its
    /// transition period).
    pub async fn key_works(&self, raw: &str) -> Result<bool, String> {
        let v: Value = self
            .call(
                reqwest::Method::POST,
                "key-check",
                Some(json!({"key": raw})),
            )
            .await?;
        Ok(v["works"].as_bool().unwrap_or(false))
    }

    pub async fn clear_faults(&self) -> Result<Faults, String> {
        self.set_faults(json!({})).await
    }

    pub async fn requests(&self) -> Result<RequestLog, String> {
        self.call(reqwest::Method::GET, "requests", None).await
    }

    pub async fn clear_requests(&self) -> Result<(), String> {
        let _: Value = self.call(reqwest::Method::DELETE, "requests", None).await?;
        Ok(())
    }

    /// Moves the emulator's clock (due resets apply at once); `None` = the real clock.
    pub async fn set_clock(&self, now: Option<Timestamp>) -> Result<Timestamp, String> {
        #[derive(Deserialize)]
        struct Now {
            now: Timestamp,
        }
        let body = json!({"now": now.map(|t| t.to_string())});
        let n: Now = self
            .call(reqwest::Method::POST, "clock", Some(body))
            .await?;
        Ok(n.now)
    }

    pub async fn state(&self) -> Result<State, String> {
        self.call(reqwest::Method::GET, "state", None).await
    }
}
