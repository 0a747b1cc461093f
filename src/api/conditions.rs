//! Conditions, with one meaning each, set in one place from what a reconcile concluded
//! ([`Outcome`]), and every reason the operator writes ([`reasons`]).
//!
//! | Condition | True when |
//! |---|---|
//! | `Ready` | `observedGeneration` equals `metadata.generation` and Portkey holds what the spec asks |
//! | `Synced` | the last reconcile did what it had to (Crossplane's meaning); `Unknown` on a transient error, `False` when paused or stalled |
//! | `Reconciling` | work is in progress or being retried (kstatus: InProgress); absent otherwise |
//! | `Stalled` | only a human can fix it; the message names the field or the permission (kstatus: Failed); absent otherwise |
//!
//! Messages are stable between passes (no counters, no "retry after N s"), so an unchanged
//! situation writes no status.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

pub const READY: &str = "Ready";
pub const SYNCED: &str = "Synced";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

pub const TRUE: &str = "True";
pub const FALSE: &str = "False";
pub const UNKNOWN: &str = "Unknown";

/// The Event to record when the paused annotation was just set or removed (the Synced reason of
/// `conditions` says whether the last pass was paused): `(reason, note)`, or `None`. `what`
/// names what is made to match the spec again on resume.
pub fn pause_transition(
    conditions: &[Condition],
    paused: bool,
    what: &str,
) -> Option<(&'static str, String)> {
    let was = get(conditions, SYNCED).is_some_and(|c| c.reason == reasons::RECONCILIATION_PAUSED);
    let annotation = crate::api::PAUSED_ANNOTATION;
    match (paused, was) {
        (true, false) => Some((
            "ReconciliationPaused",
            format!("{annotation} is \"true\": no writes to Portkey until it is removed"),
        )),
        (false, true) => Some((
            "ReconciliationResumed",
            format!("{annotation} removed: {what} made to match the spec again"),
        )),
        _ => None,
    }
}

/// Every condition reason the operator writes (docs/reasons.md, one section each, and the
/// README's table are checked against it).
pub mod reasons {
    /// Ready: the policy or limits are in force as specified.
    pub const IN_FORCE: &str = "InForce";
    /// Ready (Observe mode): the observed policy matches the spec.
    pub const OBSERVED: &str = "Observed";
    /// Ready=False (Observe mode): the observed policy differs from the spec.
    pub const OUT_OF_SYNC: &str = "OutOfSync";
    /// Synced: the last reconcile succeeded.
    pub const RECONCILE_SUCCESS: &str = "ReconcileSuccess";
    /// Synced=False: the paused annotation stops every write.
    pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
    /// Dry-run mode: nothing written.
    pub const DRY_RUN: &str = "DryRun";
    /// Reconciling: a create Portkey does not show yet.
    pub const REMOTE_POLICY_NOT_VISIBLE: &str = "RemotePolicyNotVisible";
    /// Reconciling: a create whose result is unknown, waited for.
    pub const CREATION_RESULT_UNKNOWN: &str = "CreationResultUnknown";
    /// Reconciling: sent, Portkey does not report it yet (workspace limits).
    pub const PENDING: &str = "Pending";
    /// Stalled: the spec breaks a rule.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// Stalled: the namespace is bound to another workspace (or the adopted policy is in one).
    pub const WORKSPACE_NOT_ALLOWED: &str = "WorkspaceNotAllowed";
    /// Stalled: `--require-namespace-binding` and no binding.
    pub const NAMESPACE_NOT_BOUND: &str = "NamespaceNotBound";
    /// Stalled: Portkey has no such workspace.
    pub const WORKSPACE_NOT_FOUND: &str = "WorkspaceNotFound";
    /// Stalled: `adoptPolicyId` names no active policy (Manage).
    pub const ADOPT_TARGET_NOT_FOUND: &str = "AdoptTargetNotFound";
    /// Stalled: `adoptPolicyId` names no active policy (Observe).
    pub const REMOTE_POLICY_NOT_FOUND: &str = "RemotePolicyNotFound";
    /// Stalled: `adoptPolicyId` names a policy another resource manages.
    pub const ADOPT_TARGET_OWNED: &str = "AdoptTargetOwned";
    /// Stalled: `adoptPolicyId` names a policy another installation manages.
    pub const OWNED_BY_ANOTHER_INSTALLATION: &str = "OwnedByAnotherInstallation";
    /// Stalled: an immutable field changed and `onImmutableChange` is `Reject`.
    pub const IMMUTABLE_FIELD_CHANGED: &str = "ImmutableFieldChanged";
    /// Stalled: another, older WorkspaceBudget manages the workspace.
    pub const CONFLICT: &str = "Conflict";
    /// Stalled (deletion): Portkey refuses to archive the policy.
    pub const ARCHIVE_FORBIDDEN: &str = "ArchiveForbidden";
    /// Stalled (deletion): Portkey refuses to list the workspace's policies.
    pub const LIST_FORBIDDEN: &str = "ListForbidden";
    /// Stalled: `spec.existing` names no key of the workspace.
    pub const KEY_NOT_FOUND: &str = "KeyNotFound";
    /// Stalled: `spec.existing.name` names several keys.
    pub const AMBIGUOUS_KEY_NAME: &str = "AmbiguousKeyName";
    /// Stalled: `issue.secretName` names a Secret this resource does not own.
    pub const SECRET_CONFLICT: &str = "SecretConflict";
    /// Stalled: an id recorded in status (`status.policyId`, `status.keyId`) names an object
    /// this resource may not act on (another workspace, without this resource's marker, not the
    /// declared id or name); nothing is written to it (status is never authority).
    pub const RECORDED_ID_MISMATCH: &str = "RecordedIdMismatch";
    /// Stalled: `spec.issue.scopes` asks for a scope outside the operator's allow-list.
    pub const SCOPE_NOT_ALLOWED: &str = "ScopeNotAllowed";
    /// Stalled: `spec.issue.subType: user` while the operator does not allow user keys.
    pub const KEY_TYPE_NOT_ALLOWED: &str = "KeyTypeNotAllowed";
    /// Stalled: `spec.existing` names a key holding scopes beyond the allow-list.
    pub const KEY_SCOPES_TOO_BROAD: &str = "KeyScopesTooBroad";
    /// Stalled: `spec.existing` names the key the operator authenticates with.
    pub const OPERATOR_KEY_REFUSED: &str = "OperatorKeyRefused";
    /// Stalled: two rotations in a row got no answer; no further one until a new rotate token.
    pub const ROTATION_RESULT_UNKNOWN: &str = "RotationResultUnknown";
    /// Retrying: a Kubernetes API call failed.
    pub const KUBERNETES_API_ERROR: &str = "KubernetesApiError";
    /// From Admin API errors (see `PortkeyError::reason`): retrying or stalled.
    pub const PORTKEY_VALIDATION_ERROR: &str = "PortkeyValidationError";
    pub const PORTKEY_UNAUTHORIZED: &str = "PortkeyUnauthorized";
    pub const PORTKEY_FORBIDDEN: &str = "PortkeyForbidden";
    pub const PORTKEY_NOT_FOUND: &str = "PortkeyNotFound";
    pub const PORTKEY_CONFLICT: &str = "PortkeyConflict";
    pub const PORTKEY_RATE_LIMITED: &str = "PortkeyRateLimited";
    pub const PORTKEY_SERVER_ERROR: &str = "PortkeyServerError";
    pub const PORTKEY_HTTP_ERROR: &str = "PortkeyHttpError";
    pub const PORTKEY_UNREACHABLE: &str = "PortkeyUnreachable";
    pub const PORTKEY_BAD_RESPONSE: &str = "PortkeyBadResponse";
    pub const PORTKEY_CONFIG_ERROR: &str = "PortkeyClientConfig";

    /// The `'static` reason constant equal to `reason` (conditions read back from the API hold
    /// owned strings); an unknown one reads as `InForce`.
    pub fn known(reason: &str) -> &'static str {
        ALL.iter()
            .find(|r| **r == reason)
            .copied()
            .unwrap_or(IN_FORCE)
    }

    /// Every reason above.
    pub const ALL: &[&str] = &[
        IN_FORCE,
        OBSERVED,
        OUT_OF_SYNC,
        RECONCILE_SUCCESS,
        RECONCILIATION_PAUSED,
        DRY_RUN,
        REMOTE_POLICY_NOT_VISIBLE,
        CREATION_RESULT_UNKNOWN,
        PENDING,
        INVALID_SPEC,
        WORKSPACE_NOT_ALLOWED,
        NAMESPACE_NOT_BOUND,
        WORKSPACE_NOT_FOUND,
        ADOPT_TARGET_NOT_FOUND,
        REMOTE_POLICY_NOT_FOUND,
        ADOPT_TARGET_OWNED,
        OWNED_BY_ANOTHER_INSTALLATION,
        IMMUTABLE_FIELD_CHANGED,
        CONFLICT,
        ARCHIVE_FORBIDDEN,
        LIST_FORBIDDEN,
        KEY_NOT_FOUND,
        AMBIGUOUS_KEY_NAME,
        SECRET_CONFLICT,
        RECORDED_ID_MISMATCH,
        SCOPE_NOT_ALLOWED,
        KEY_TYPE_NOT_ALLOWED,
        KEY_SCOPES_TOO_BROAD,
        OPERATOR_KEY_REFUSED,
        ROTATION_RESULT_UNKNOWN,
        KUBERNETES_API_ERROR,
        PORTKEY_VALIDATION_ERROR,
        PORTKEY_UNAUTHORIZED,
        PORTKEY_FORBIDDEN,
        PORTKEY_NOT_FOUND,
        PORTKEY_CONFLICT,
        PORTKEY_RATE_LIMITED,
        PORTKEY_SERVER_ERROR,
        PORTKEY_HTTP_ERROR,
        PORTKEY_UNREACHABLE,
        PORTKEY_BAD_RESPONSE,
        PORTKEY_CONFIG_ERROR,
    ];
}

/// What a reconcile concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Portkey holds what the spec asks.
    InForce {
        reason: &'static str,
        message: String,
    },
    /// Work that goes on by itself: a create Portkey does not show yet, limits not echoed yet.
    Progressing {
        reason: &'static str,
        message: String,
    },
    /// Read, but the operator does not write (Observe mode that differs, paused, dry-run):
    /// Ready says whether Portkey holds the spec; Synced says why nothing was written.
    Held {
        ready: bool,
        ready_reason: &'static str,
        ready_message: String,
        synced: &'static str,
        synced_reason: &'static str,
        synced_message: String,
    },
    /// A transient failure, retried with backoff.
    Retrying {
        reason: &'static str,
        message: String,
    },
    /// Only a human can fix it.
    Stalled {
        reason: &'static str,
        message: String,
    },
}

impl Outcome {
    /// A paused resource: Ready says whether Portkey holds the spec (`differences` empty) or
    /// lists what differs; Synced=False ReconciliationPaused. `what` names what is read.
    pub fn paused(differences: &str, what: &str) -> Outcome {
        let (ready, ready_reason, ready_message) = if differences.is_empty() {
            (true, reasons::IN_FORCE, format!("{what} match the spec"))
        } else {
            (
                false,
                reasons::OUT_OF_SYNC,
                format!("Portkey differs from the spec: {differences}"),
            )
        };
        Outcome::Held {
            ready,
            ready_reason,
            ready_message,
            synced: FALSE,
            synced_reason: reasons::RECONCILIATION_PAUSED,
            synced_message: format!(
                "annotation {} is \"true\": {what} are read, nothing is written to Portkey",
                crate::api::PAUSED_ANNOTATION
            ),
        }
    }

    /// Dry-run mode: Ready=False DryRun with what would be written (`message`); Synced=True,
    /// reading Portkey worked.
    pub fn dry_run(message: String) -> Outcome {
        Outcome::Held {
            ready: false,
            ready_reason: reasons::DRY_RUN,
            ready_message: message,
            synced: TRUE,
            synced_reason: reasons::DRY_RUN,
            synced_message: "dry-run mode: read Portkey, wrote nothing (see the Would* Events)"
                .into(),
        }
    }

    /// A deletion held by the paused annotation: Ready as it was (its status, reason and
    /// message kept), Synced=False ReconciliationPaused.
    pub fn deletion_paused(ready: Option<&Condition>) -> Outcome {
        Outcome::Held {
            ready: ready.is_some_and(|c| c.status == TRUE),
            ready_reason: ready.map_or(reasons::IN_FORCE, |c| reasons::known(&c.reason)),
            ready_message: ready.map(|c| c.message.clone()).unwrap_or_default(),
            synced: FALSE,
            synced_reason: reasons::RECONCILIATION_PAUSED,
            synced_message: format!(
                "annotation {} is \"true\": the deletion waits until it is removed (nothing is archived or deleted meanwhile)",
                crate::api::PAUSED_ANNOTATION
            ),
        }
    }

    /// The metric label of the outcome.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::InForce { .. } => "in_force",
            Outcome::Progressing { .. } => "progressing",
            Outcome::Held { .. } => "held",
            Outcome::Retrying { .. } => "retryable",
            Outcome::Stalled { .. } => "terminal",
        }
    }
}

/// Longest condition message kept (the apiserver allows 32 KiB; a screenful is enough).
const MAX_MESSAGE: usize = 1024;

pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == TRUE)
}

/// Ready=True for exactly this generation.
pub fn ready_for(conditions: &[Condition], generation: Option<i64>) -> bool {
    get(conditions, READY).is_some_and(|c| c.status == TRUE && c.observed_generation == generation)
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

fn remove(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// Sets all four conditions from an outcome.
pub fn apply(
    conditions: &mut Vec<Condition>,
    outcome: &Outcome,
    generation: Option<i64>,
    now: Timestamp,
) {
    let put = |c: &mut Vec<Condition>, t: &str, s: &str, r: &str, m: &str| {
        set(c, t, s, r, m, generation, now)
    };
    match outcome {
        Outcome::InForce { reason, message } => {
            put(conditions, READY, TRUE, reason, message);
            put(
                conditions,
                SYNCED,
                TRUE,
                reasons::RECONCILE_SUCCESS,
                "the last reconcile succeeded",
            );
            remove(conditions, RECONCILING);
            remove(conditions, STALLED);
        }
        Outcome::Progressing { reason, message } => {
            put(conditions, READY, FALSE, reason, message);
            put(conditions, SYNCED, UNKNOWN, reason, message);
            put(conditions, RECONCILING, TRUE, reason, message);
            remove(conditions, STALLED);
        }
        Outcome::Held {
            ready,
            ready_reason,
            ready_message,
            synced,
            synced_reason,
            synced_message,
        } => {
            let status = if *ready { TRUE } else { FALSE };
            put(conditions, READY, status, ready_reason, ready_message);
            put(conditions, SYNCED, synced, synced_reason, synced_message);
            remove(conditions, RECONCILING);
            remove(conditions, STALLED);
        }
        Outcome::Retrying { reason, message } => {
            // The policy may well still be in force as specified (a refresh failed): Ready
            // stays True only for the generation it was True for.
            if !ready_for(conditions, generation) {
                put(conditions, READY, FALSE, reason, message);
            }
            put(conditions, SYNCED, UNKNOWN, reason, message);
            put(conditions, RECONCILING, TRUE, reason, message);
            remove(conditions, STALLED);
        }
        Outcome::Stalled { reason, message } => {
            put(conditions, READY, FALSE, reason, message);
            put(conditions, SYNCED, FALSE, reason, message);
            put(conditions, STALLED, TRUE, reason, message);
            remove(conditions, RECONCILING);
        }
    }
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

    #[test]
    fn outcomes_set_one_meaning_per_condition() {
        let t: Timestamp = "2026-11-21T10:00:00Z".parse().unwrap();
        let mut c = Vec::new();
        let in_force = Outcome::InForce {
            reason: reasons::IN_FORCE,
            message: "ok".into(),
        };
        apply(&mut c, &in_force, Some(1), t);
        assert!(ready_for(&c, Some(1)));
        assert!(get(&c, RECONCILING).is_none() && get(&c, STALLED).is_none());
        // A transient failure on the same generation: still Ready, Reconciling.
        let retry = Outcome::Retrying {
            reason: reasons::PORTKEY_SERVER_ERROR,
            message: "503".into(),
        };
        apply(&mut c, &retry, Some(1), t);
        assert!(ready_for(&c, Some(1)));
        assert!(is_true(&c, RECONCILING));
        assert_eq!(get(&c, SYNCED).unwrap().status, UNKNOWN);
        // The spec changed and the change keeps failing: not Ready.
        apply(&mut c, &retry, Some(2), t);
        assert!(!is_true(&c, READY));
        assert_eq!(
            get(&c, READY).unwrap().reason,
            reasons::PORTKEY_SERVER_ERROR
        );
        // Only a human can fix it: Stalled, not Reconciling.
        let stalled = Outcome::Stalled {
            reason: reasons::PORTKEY_FORBIDDEN,
            message: "needs policies.update".into(),
        };
        apply(&mut c, &stalled, Some(2), t);
        assert!(is_true(&c, STALLED) && get(&c, RECONCILING).is_none());
        assert_eq!(get(&c, SYNCED).unwrap().status, FALSE);
        apply(&mut c, &in_force, Some(2), t);
        assert!(ready_for(&c, Some(2)) && get(&c, STALLED).is_none());
        assert!(c.iter().all(|x| x.observed_generation == Some(2)));
    }
}
