//! The freshness gate: a healthy resource synced within its interval costs no Admin API call.

use super::*;

/// A healthy resource synced within the refresh interval needs no Admin API call: this is what
/// keeps the operator's own status writes (which trigger a reconcile) from becoming Portkey reads.
/// Returns the requeue for the rest of the interval, or `None` when the resource must be checked.
/// What the freshness gate looks at.
pub struct Freshness<'a> {
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub conditions: &'a [k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    /// When this process last compared the resource with Portkey.
    pub last_sync: Option<jiff::Timestamp>,
    /// A create is pending.
    pub pending: bool,
    /// The paused annotation is set.
    pub paused: bool,
}

/// The freshness gate: a resource compared with Portkey within `interval`, healthy, with an
/// unchanged spec and pause state, is left alone until the interval is over (its own status
/// writes, Events or unrelated metadata changes cost no Admin API call).
pub fn fresh(f: Freshness<'_>, now: jiff::Timestamp, interval: Duration) -> Option<Action> {
    let age = Duration::try_from(now.duration_since(f.last_sync?)).ok()?;
    (f.settled() && age < interval).then(|| {
        Action::requeue(interval - age + Duration::from_millis(rand::random_range(0..1000)))
    })
}

/// The gate before a pass reads Portkey: [`fresh`], and for a periodic refresh (a settled
/// resource whose interval is over) the refresh read budget, so refreshes never crowd out
/// creates and updates (`Context::refresh_deferred`).
pub fn gate(
    ctx: &Context,
    f: Freshness<'_>,
    now: jiff::Timestamp,
    interval: Duration,
) -> Option<Action> {
    let refresh = f.settled();
    if let Some(action) = fresh(f, now, interval) {
        return Some(action);
    }
    if !refresh {
        ctx.note_work();
        return None;
    }
    ctx.refresh_deferred().map(Action::requeue)
}

impl Freshness<'_> {
    /// Nothing asks for work but time: healthy (Ready, and Synced or paused), the spec seen,
    /// no create pending, no one-shot due, the pause state unchanged. A pass over such a
    /// resource is a periodic refresh.
    pub fn settled(&self) -> bool {
        let synced = conditions::get(self.conditions, conditions::SYNCED);
        let was_paused =
            synced.is_some_and(|c| c.reason == conditions::reasons::RECONCILIATION_PAUSED);
        let healthy = conditions::is_true(self.conditions, conditions::READY)
            && (synced.is_some_and(|c| c.status == conditions::TRUE) || was_paused);
        self.generation == self.observed_generation
            && healthy
            && !self.pending
            && self.paused == was_paused
    }
}
