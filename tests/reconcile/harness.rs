//! What every test of this binary starts from: an emulator (real HTTP on loopback), an
//! in-memory Kubernetes API and a controller context ([`Env`]); the resource fixtures, built
//! from one default each and changed only where a test means it ([`spec`] with
//! [`UlpSpecExt`], [`ulp`], [`rlp`], [`wsb`], [`akb`], [`remote_policy`]); and the reads and
//! checks the tests share. Every submodule starts with `use crate::harness::*;`.

pub use std::str::FromStr;
pub use std::sync::Arc;
pub use std::time::Duration;

pub use crate::support::fake_kube::FakeKube;
pub use crate::support::fixtures::{usage_limit, usage_policy};
pub use portkey_budget_operator::api::*;
pub use portkey_budget_operator::config::ControllerConfig;
pub use portkey_budget_operator::controller::{self, Context, conditions, usage};
pub use portkey_budget_operator::emulator::EmulatorHandle;
pub use portkey_budget_operator::portkey::*;
pub use rust_decimal::Decimal;
pub use serde_json::json;

use portkey_budget_operator::controller::{api_key, rate, workspace};

pub const NS: &str = "team-a";
pub const WS_A: &str = "2f1d4e8a-1111-4c3b-9d2e-00000000000a";
pub const WS_B: &str = "2f1d4e8a-1111-4c3b-9d2e-00000000000b";
pub const KEY: &str = "reconcile-test-key";

pub fn d(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub struct Env {
    pub kube: FakeKube,
    pub emu: EmulatorHandle,
    pub portkey: PortkeyClient,
    pub ctx: Arc<Context>,
}

pub fn test_config() -> ControllerConfig {
    ControllerConfig {
        // Zero: every reconcile talks to Portkey (the freshness gate has its own test).
        usage_refresh_interval: Duration::ZERO,
        resync_interval: Duration::ZERO,
        admin_api_write_rate: 1000,
        ..Default::default()
    }
}

/// The requeue delay of an `Action` (from its Debug form: kube keeps the field private).
pub fn action_delay(action: &kube::runtime::controller::Action) -> Duration {
    let text = format!("{action:?}");
    let inner = text
        .split("Some(")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_default();
    let (number, unit) = inner.trim().split_at(
        inner
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(inner.len()),
    );
    let n: f64 = number.parse().unwrap_or(f64::MAX);
    match unit {
        "ms" => Duration::from_secs_f64(n / 1000.0),
        "µs" => Duration::from_secs_f64(n / 1e6),
        "ns" => Duration::from_secs_f64(n / 1e9),
        _ => Duration::from_secs_f64(n),
    }
}

/// A client of the test's emulator with `retry`.
pub fn client_with(emu: &EmulatorHandle, retry: RetryPolicy) -> PortkeyClient {
    let mut cfg = ClientConfig::new(emu.base_url(), ApiKey::new(KEY));
    cfg.retry = retry;
    PortkeyClient::new(cfg).unwrap()
}

pub async fn env_with(config: ControllerConfig) -> Env {
    let workspaces = [(WS_A, "team-a", "Team A"), (WS_B, "team-b", "Team B")];
    let emu = crate::support::fixtures::emulator(KEY, &workspaces).await;
    let portkey = client_with(
        &emu,
        RetryPolicy {
            max_retries: 1,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            max_retry_after: Duration::from_secs(1),
        },
    );
    let kube = FakeKube::new();
    // The cluster admin binds the tenants' namespace to its workspace (an unbound namespace
    // gets none).
    kube.add_namespace(NS, &[(WORKSPACE_ANNOTATION, "team-a")]);
    let ctx = Context::new(
        kube.client(),
        portkey.clone(),
        config,
        controller::reporter(),
    );
    Env {
        kube,
        emu,
        portkey,
        ctx,
    }
}

pub async fn env() -> Env {
    env_with(test_config()).await
}

/// [`env`] with [`test_config`] changed by `tune`.
pub async fn env_tuned(tune: impl FnOnce(&mut ControllerConfig)) -> Env {
    let mut config = test_config();
    tune(&mut config);
    env_with(config).await
}

/// An [`Env`] on the operator's default settings (its real intervals) changed by `tune`.
pub async fn env_from_defaults(tune: impl FnOnce(&mut ControllerConfig)) -> Env {
    let mut config = ControllerConfig::default();
    tune(&mut config);
    env_with(config).await
}

// ----- fixtures -----

/// The UsageLimitPolicy every test starts from: team A's monthly $500 per user, alert at 400.
pub fn spec() -> UsageLimitPolicySpec {
    serde_json::from_value(json!({
        "displayName": "Team A monthly",
        "workspace": "team-a",
        "type": "cost",
        "creditLimit": 500,
        "alertThreshold": 400,
        "periodicReset": "monthly",
        "conditions": [{"key": "metadata._team", "value": "team-a"}],
        "groupBy": [{"key": "metadata._user"}]
    }))
    .unwrap()
}

/// One change to [`spec`] per call, named for what it changes.
pub trait UlpSpecExt: Sized {
    fn limit(self, limit: &str) -> Self;
    fn alert(self, alert: Option<&str>) -> Self;
    fn workspace(self, workspace: Option<&str>) -> Self;
    fn group_by(self, key: &str) -> Self;
    fn adopt(self, id: &str) -> Self;
    fn observe(self) -> Self;
    fn retain(self) -> Self;
    fn on_immutable_change(self, what: OnImmutableChange) -> Self;
}

impl UlpSpecExt for UsageLimitPolicySpec {
    fn limit(mut self, limit: &str) -> Self {
        self.credit_limit = Money(d(limit));
        self
    }
    fn alert(mut self, alert: Option<&str>) -> Self {
        self.alert_threshold = alert.map(|a| Money(d(a)));
        self
    }
    fn workspace(mut self, workspace: Option<&str>) -> Self {
        self.workspace = workspace.map(str::to_owned);
        self
    }
    fn group_by(mut self, key: &str) -> Self {
        self.group_by = vec![GroupByKey { key: key.into() }];
        self
    }
    fn adopt(mut self, id: &str) -> Self {
        self.adopt_policy_id = Some(id.into());
        self
    }
    fn observe(mut self) -> Self {
        self.management_policy = ManagementPolicy::Observe;
        self
    }
    fn retain(mut self) -> Self {
        self.deletion_policy = DeletionPolicy::Retain;
        self
    }
    fn on_immutable_change(mut self, what: OnImmutableChange) -> Self {
        self.on_immutable_change = what;
        self
    }
}

/// A UsageLimitPolicy in `NS`.
pub fn ulp(name: &str, spec: UsageLimitPolicySpec) -> UsageLimitPolicy {
    ulp_in(NS, name, spec)
}

pub fn ulp_in(ns: &str, name: &str, spec: UsageLimitPolicySpec) -> UsageLimitPolicy {
    let mut obj = UsageLimitPolicy::new(name, spec);
    obj.metadata.namespace = Some(ns.into());
    obj
}

/// A RateLimitPolicy in `NS` on team A's workspace: `value` requests per `unit`, per user.
pub fn rlp(name: &str, value: i64, unit: &str) -> RateLimitPolicy {
    let spec: RateLimitPolicySpec = serde_json::from_value(json!({
        "workspace": "team-a", "type": "requests", "unit": unit, "value": value,
        "conditions": [{"key": "api_key", "value": "*"}],
        "groupBy": [{"key": "metadata._user"}]
    }))
    .unwrap();
    let mut obj = RateLimitPolicy::new(name, spec);
    obj.metadata.namespace = Some(NS.into());
    obj
}

/// A WorkspaceBudget for `ws`: a monthly cost budget of `limit` (alert at 400) and 120
/// requests a minute, created at `created`.
pub fn wsb(name: &str, ws: &str, limit: u32, created: &str) -> WorkspaceBudget {
    let mut obj = wsb_of(
        name,
        json!({
            "workspace": ws,
            "usageLimits": [{"type": "cost", "creditLimit": limit, "alertThreshold": 400, "periodicReset": "monthly"}],
            "rateLimits": [{"type": "requests", "unit": "rpm", "value": 120}]
        }),
    );
    obj.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().unwrap(),
    ));
    obj
}

/// A WorkspaceBudget with this spec (JSON, as in a manifest).
pub fn wsb_of(name: &str, spec: serde_json::Value) -> WorkspaceBudget {
    WorkspaceBudget::new(name, serde_json::from_value(spec).unwrap())
}

/// A workspace usage limit as Portkey holds it, without an alert or a reset date.
pub fn ws_usage(
    limit_type: UsageLimitType,
    limit: &str,
    reset: Option<PeriodicReset>,
) -> WorkspaceUsageLimit {
    usage_limit(limit_type, d(limit), reset)
}

/// A workspace rate limit as Portkey holds it.
pub fn ws_rate(limit_type: RateLimitType, unit: RateLimitUnit, value: &str) -> WorkspaceRateLimit {
    WorkspaceRateLimit {
        limit_type,
        unit,
        value: d(value),
    }
}

/// A workspace change that sets only its rate limits.
pub fn only_rates(rates: Vec<WorkspaceRateLimit>) -> UpdateWorkspace {
    UpdateWorkspace {
        rate_limits: Nullable::Value(rates),
        ..Default::default()
    }
}

/// An ApiKeyBudget in `ns` with this spec (JSON, as in a manifest).
pub fn akb(ns: &str, name: &str, spec: serde_json::Value) -> ApiKeyBudget {
    let mut obj = ApiKeyBudget::new(name, serde_json::from_value(spec).unwrap());
    obj.metadata.namespace = Some(ns.into());
    obj
}

/// A usage-limits policy as someone would make it in Portkey by hand: team A's users, a
/// monthly $100 (change fields with `..remote_policy(name, ws)`).
pub fn remote_policy(name: &str, ws: &str) -> CreateUsageLimitsPolicy {
    CreateUsageLimitsPolicy {
        periodic_reset: Some(PeriodicReset::Monthly),
        ..usage_policy(name, "team-a", ws)
    }
}

/// The list filter of a workspace's active policies.
pub fn active_in(ws: &str) -> ListFilter {
    ListFilter {
        workspace_id: Some(ws.into()),
        status: Some(PolicyStatus::Active),
        ..Default::default()
    }
}

/// A create was sent that the status has not confirmed (the create-pending annotation holds a
/// value other than `status.createConfirmed`).
pub fn create_pending(obj: &UsageLimitPolicy) -> bool {
    let confirmed = obj
        .status
        .as_ref()
        .and_then(|s| s.common.create_confirmed.as_deref());
    portkey_budget_operator::controller::pending_create(obj, confirmed).is_some()
}

/// `(status, reason)` of a condition type in `conditions`.
pub fn condition_of(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> (String, String) {
    let c = conditions::get(conditions, type_).expect("condition set");
    (c.status.clone(), c.reason.clone())
}

impl Env {
    pub fn obj(&self, name: &str) -> UsageLimitPolicy {
        self.kube
            .get::<UsageLimitPolicy>(NS, name)
            .expect("object exists")
    }

    /// Applies a UsageLimitPolicy in `NS`.
    pub fn apply(&self, name: &str, spec: UsageLimitPolicySpec) {
        self.kube.apply(&ulp(name, spec));
    }

    pub async fn reconcile(
        &self,
        name: &str,
    ) -> Result<kube::runtime::controller::Action, controller::Error> {
        usage::reconcile(&self.obj(name), &self.ctx).await
    }

    /// Applies a UsageLimitPolicy, reconciles it once and returns the id of its policy.
    pub async fn create(&self, name: &str, spec: UsageLimitPolicySpec) -> String {
        self.create_in(NS, name, spec).await
    }

    /// [`Env::create`] in namespace `ns`.
    pub async fn create_in(&self, ns: &str, name: &str, spec: UsageLimitPolicySpec) -> String {
        self.kube.apply(&ulp_in(ns, name, spec));
        let get = || self.kube.get::<UsageLimitPolicy>(ns, name).unwrap();
        usage::reconcile(&get(), &self.ctx).await.unwrap();
        get().status.unwrap().common.policy_id.unwrap()
    }

    /// The policy id recorded in a UsageLimitPolicy's status.
    pub fn policy_id(&self, name: &str) -> String {
        self.obj(name).status.unwrap().common.policy_id.unwrap()
    }

    /// A usage-limits policy read from Portkey.
    pub async fn remote(&self, id: &str) -> UsageLimitsPolicy {
        self.portkey
            .usage_limits()
            .get(id, GetOptions::default())
            .await
            .unwrap()
    }

    /// Makes [`remote_policy`] `name` in workspace `ws` in Portkey (as by hand); its id.
    pub async fn hand_made(&self, name: &str, ws: &str) -> String {
        self.made_in_portkey(&remote_policy(name, ws)).await
    }

    /// Changes a usage-limits policy's limit and name in Portkey, as someone in its UI would.
    pub async fn edit_remote(&self, id: &str, limit: &str, name: &str) {
        let edit = UpdateUsageLimitsPolicy {
            credit_limit: Some(d(limit)),
            name: Some(name.into()),
            ..Default::default()
        };
        self.portkey.usage_limits().update(id, &edit).await.unwrap();
    }

    /// Makes a usage-limits policy in Portkey (as by hand); its id.
    pub async fn made_in_portkey(&self, body: &CreateUsageLimitsPolicy) -> String {
        self.portkey.usage_limits().create(body).await.unwrap().id
    }

    pub async fn active(&self, ws: &str) -> Vec<UsageLimitsPolicy> {
        let active = active_in(ws);
        self.portkey.usage_limits().list(&active).await.unwrap()
    }

    /// The names of a workspace's active usage-limits policies.
    pub async fn active_names(&self, ws: &str) -> Vec<String> {
        let active = self.active(ws).await;
        active.into_iter().filter_map(|p| p.name).collect()
    }

    pub async fn active_rates(&self, ws: &str) -> Vec<RateLimitsPolicy> {
        let active = active_in(ws);
        self.portkey.rate_limits().list(&active).await.unwrap()
    }

    pub async fn api_writes(&self) -> usize {
        self.emu.control().requests().await.unwrap().writes()
    }

    /// Every Admin API request since the log was last cleared.
    pub async fn api_calls(&self) -> u64 {
        self.emu.control().requests().await.unwrap().total
    }

    pub async fn clear_requests(&self) {
        self.emu.control().clear_requests().await.unwrap();
    }

    /// Injects emulator faults (replacing any in force).
    pub async fn fault(&self, faults: serde_json::Value) {
        self.emu.control().set_faults(faults).await.unwrap();
    }

    /// Sets the emulator's clock (`None`: the real time again).
    pub async fn set_clock(&self, at: Option<&str>) {
        let at = at.map(|t| t.parse().unwrap());
        self.emu.control().set_clock(at).await.unwrap();
    }

    /// The next `n` Admin API requests with this method fail with `status`.
    pub async fn fail_next(&self, n: u32, method: &str, status: u16) {
        let faults = json!({"fail_next": n, "error_status": status, "method": method});
        self.fault(faults).await;
    }

    pub async fn clear_faults(&self) {
        self.emu.control().clear_faults().await.unwrap();
    }

    /// Adds usage to the per-user buckets (`(user, amount)`) of a policy.
    pub async fn add_user_usage(&self, id: &str, usage: &[(&str, &str)]) {
        for (user, amount) in usage {
            let bucket = format!("metadata._user:{user}");
            self.add_usage(id, &bucket, amount).await;
        }
    }

    pub async fn add_usage(&self, id: &str, bucket: &str, amount: &str) {
        self.emu
            .control()
            .add_usage(id, bucket, d(amount))
            .await
            .unwrap();
    }

    /// `(status, reason)` of a condition of a UsageLimitPolicy.
    pub fn condition(&self, name: &str, type_: &str) -> (String, String) {
        let status = self.obj(name).status.unwrap_or_default();
        condition_of(&status.common.conditions, type_)
    }

    /// Asserts the status and reason of a condition of a UsageLimitPolicy.
    #[track_caller]
    pub fn expect_condition(&self, name: &str, type_: &str, status: &str, reason: &str) {
        let (s, r) = self.condition(name, type_);
        assert_eq!(
            (s.as_str(), r.as_str()),
            (status, reason),
            "{name}: condition {type_}"
        );
    }

    /// The message of a condition of a UsageLimitPolicy.
    pub fn message(&self, name: &str, type_: &str) -> String {
        let status = self.obj(name).status.unwrap_or_default();
        conditions::get(&status.common.conditions, type_)
            .expect("condition set")
            .message
            .clone()
    }

    /// The Events recorded with this reason: `(type, note)` each, oldest first.
    pub fn events(&self, reason: &str) -> Vec<(String, String)> {
        let all = self.kube.events().into_iter();
        all.filter(|e| e.1 == reason).map(|e| (e.0, e.2)).collect()
    }

    /// Whether an Event with this reason was recorded.
    pub fn has_event(&self, reason: &str) -> bool {
        self.kube.event_reasons().iter().any(|r| r == reason)
    }

    /// Reconciles a RateLimitPolicy once.
    pub async fn reconcile_rlp(&self, ns: &str, name: &str) {
        let obj = self.kube.get::<RateLimitPolicy>(ns, name).unwrap();
        rate::reconcile(&obj, &self.ctx).await.unwrap();
    }

    pub fn rlp_status(&self, ns: &str, name: &str) -> RateLimitPolicyStatus {
        let obj = self.kube.get::<RateLimitPolicy>(ns, name).unwrap();
        obj.status.unwrap()
    }

    /// Reconciles a WorkspaceBudget once.
    pub async fn reconcile_wsb(&self, name: &str) {
        let obj = self.kube.get::<WorkspaceBudget>("", name).unwrap();
        workspace::reconcile(&obj, &self.ctx).await.unwrap();
    }

    pub fn wsb_status(&self, name: &str) -> WorkspaceBudgetStatus {
        let obj = self.kube.get::<WorkspaceBudget>("", name).unwrap();
        obj.status.unwrap()
    }

    /// `(status, reason)` of a WorkspaceBudget's `Ready` condition.
    pub fn wsb_ready(&self, name: &str) -> (String, String) {
        condition_of(&self.wsb_status(name).conditions, "Ready")
    }

    /// Changes a workspace in Portkey, as someone in its UI would.
    pub async fn edit_workspace(&self, id: &str, edit: UpdateWorkspace) {
        self.portkey.update_workspace(id, &edit).await.unwrap();
    }

    pub async fn workspace(&self, id: &str) -> Workspace {
        self.portkey.get_workspace(id).await.unwrap()
    }

    /// Applies an ApiKeyBudget (spec as JSON) and reconciles it once: the reason and message
    /// of its `Ready` condition.
    pub async fn apply_akb(
        &self,
        ns: &str,
        name: &str,
        spec: serde_json::Value,
    ) -> (String, String) {
        self.kube.apply(&akb(ns, name, spec));
        self.reconcile_akb(ns, name).await
    }

    /// Reconciles an ApiKeyBudget once; the reason and message of its `Ready` condition.
    pub async fn reconcile_akb(&self, ns: &str, name: &str) -> (String, String) {
        let obj = self.kube.get::<ApiKeyBudget>(ns, name).unwrap();
        api_key::reconcile(&obj, &self.ctx).await.unwrap();
        let status = self
            .kube
            .get::<ApiKeyBudget>(ns, name)
            .unwrap()
            .status
            .unwrap();
        let ready = conditions::get(&status.conditions, "Ready").unwrap();
        (ready.reason.clone(), ready.message.clone())
    }

    /// An API key as Portkey shows it.
    pub async fn api_key(&self, id: &str) -> ApiKeyObject {
        self.portkey.get_api_key(id).await.unwrap()
    }

    /// A service key of team A for completions, made in Portkey by hand: its id.
    pub async fn app_key(&self, name: &str) -> String {
        self.service_key(WS_A, name, &["completions.write"]).await
    }

    /// A service key of workspace `ws` made in Portkey by hand, with these scopes: its id.
    pub async fn service_key(&self, ws: &str, name: &str, scopes: &[&str]) -> String {
        self.issue_key(ws, name, scopes).await.id.unwrap()
    }

    /// A service key of workspace `ws` made in Portkey by hand: the whole answer (with the
    /// raw key).
    pub async fn issue_key(&self, ws: &str, name: &str, scopes: &[&str]) -> IssuedApiKey {
        let body = CreateApiKey {
            name: name.into(),
            workspace_id: Some(ws.into()),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        };
        self.portkey
            .create_api_key(ApiKeyType::Workspace, ApiKeySubType::Service, &body)
            .await
            .unwrap()
    }
}
