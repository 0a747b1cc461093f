//! `Ready` / `Synced` conditions with observedGeneration, as cert-manager and Crossplane do.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// Longest condition message kept (the apiserver allows 32 KiB; a screenful is enough).
const MAX_MESSAGE: usize = 1024;

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Sets a condition; `lastTransitionTime` moves only when the status changes, so a steady state
/// writes identical conditions (no status churn).
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: Timestamp,
) {
    let message: String = message.chars().take(MAX_MESSAGE).collect();
    let reason = if reason.is_empty() { "Unknown" } else { reason };
    let transition = match get(conditions, type_) {
        Some(old) if old.status == status => old.last_transition_time.clone(),
        _ => Time(now),
    };
    let new = Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: transition,
    };
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => *c = new,
        None => conditions.push(new),
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-11-21T11:00:00Z".parse().unwrap();
        let mut c = Vec::new();
        set(&mut c, READY, TRUE, "InForce", "ok", Some(1), t0);
        set(&mut c, READY, TRUE, "InForce", "still ok", Some(2), t1);
        assert_eq!(c[0].last_transition_time, Time(t0));
        assert_eq!(c[0].observed_generation, Some(2));
        set(&mut c, READY, FALSE, "InvalidSpec", "bad", Some(2), t1);
        assert_eq!(c[0].last_transition_time, Time(t1));
        set(&mut c, SYNCED, TRUE, "ReconcileSuccess", "", Some(2), t1);
        assert_eq!(c.len(), 2);
        assert!(is_true(&c, SYNCED) && !is_true(&c, READY));
    }
}
