//! Which remote objects are ours: one implementation for the controller and the `plan`/`sync`
//! CLI, generic over the policy families.
//!
//! - **Markers** ([`super::marker`]): a remote policy belongs to the resource (and installation)
//!   whose marker its name carries; markers of earlier versions are still recognised.
//! - **Adoption**: `adoptPolicyId` must name a policy of the resolved, allowed workspace that no
//!   other resource or installation has marked.
//! - **Duplicates**: several policies carrying one resource's marker: the oldest wins, the others
//!   are archived.
//! - **Prune** (CLI): only policies carrying the exact marker of this installation.
//! - **WorkspaceBudget conflicts**: among resources naming one workspace, the oldest wins.

use crate::api::conditions::reasons;
use jiff::Timestamp;

use super::marker::{Identity, marker_of};

/// A remote policy as a workspace listing (or a GET) shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate<'a> {
    pub id: &'a str,
    pub name: Option<&'a str>,
    pub created_at: Option<Timestamp>,
}

/// The policies of a workspace that carry a resource's marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owned {
    /// The oldest: the one the resource keeps.
    pub keep: String,
    /// The younger ones: archived.
    pub duplicates: Vec<String>,
}

/// Oldest first (an unknown creation time sorts last), then by id.
fn age_order(a: &Candidate<'_>, b: &Candidate<'_>) -> std::cmp::Ordering {
    match (a.created_at, b.created_at) {
        (Some(x), Some(y)) => x.cmp(&y),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => std::cmp::Ordering::Equal,
    }
    .then_with(|| a.id.cmp(b.id))
}

/// The policies among `candidates` that are `identity`'s: the oldest to keep, the rest as
/// duplicates. `None` when none carries its marker.
pub fn owned<'a>(
    candidates: impl IntoIterator<Item = Candidate<'a>>,
    identity: &Identity,
) -> Option<Owned> {
    let mut mine: Vec<Candidate<'a>> = candidates
        .into_iter()
        .filter(|c| identity.owns(c.name))
        .collect();
    mine.sort_by(age_order);
    mine.dedup_by(|a, b| a.id == b.id);
    let mut ids = mine.into_iter().map(|c| c.id.to_owned());
    let keep = ids.next()?;
    Some(Owned {
        keep,
        duplicates: ids.collect(),
    })
}

/// Why a remote policy may not be taken over or read for this resource. Terminal: nothing is
/// written or archived until a human changes the spec or the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: &'static str,
    pub message: String,
}

/// Another resource of this installation whose marker a policy carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkedBy {
    /// Short kind (`ulp`, `rlp`).
    pub kind: String,
    /// `namespace/name` (or `#hash` for very long identities).
    pub owner: String,
}

impl MarkedBy {
    /// The refusal when that resource still exists (it keeps its policy).
    pub fn refusal(&self, field: &str, id: &str) -> Refusal {
        Refusal {
            reason: reasons::ADOPT_TARGET_OWNED,
            message: format!(
                "{field}: Portkey policy {id} is managed by {} {} (its name carries that marker); nothing was written",
                self.kind, self.owner
            ),
        }
    }
}

/// Checks a policy named by `adoptPolicyId` (`field`) before it is adopted (Manage) or read
/// (Observe): it must be in the resolved, allowed workspace and carry no marker of another
/// installation. `Ok(Some(_))`: it carries the marker of another resource of this installation,
/// and may be adopted only when that resource no longer exists (a policy left behind by
/// `deletionPolicy: Retain`); the caller, who can look, decides.
pub fn check_adoption(
    field: &str,
    id: &str,
    remote_workspace: &str,
    remote_name: Option<&str>,
    allowed_workspace: &str,
    identity: &Identity,
) -> Result<Option<MarkedBy>, Refusal> {
    if !remote_workspace.eq_ignore_ascii_case(allowed_workspace) {
        return Err(Refusal {
            reason: reasons::WORKSPACE_NOT_ALLOWED,
            message: format!(
                "{field}: Portkey policy {id} belongs to workspace {remote_workspace}, not to this resource's workspace {allowed_workspace}; nothing was written"
            ),
        });
    }
    let Some(name) = remote_name else {
        return Ok(None);
    };
    if identity.owns(Some(name)) {
        return Ok(None);
    }
    let Some(marker) = marker_of(name) else {
        return Ok(None);
    };
    let ours = match marker.installation {
        None => true,
        Some(i) => i == identity.installation || identity.adopt_from.iter().any(|a| a == i),
    };
    if !ours {
        let by = marker.installation.unwrap_or_default();
        return Err(Refusal {
            reason: reasons::OWNED_BY_ANOTHER_INSTALLATION,
            message: format!(
                "{field}: Portkey policy {id} is managed by installation {by:?}, not by this one ({:?}); to take it over (a migration), add {by:?} to the operator's adoptFromInstallations",
                identity.installation
            ),
        });
    }
    Ok(Some(MarkedBy {
        kind: marker.kind.to_owned(),
        owner: marker.owner.to_owned(),
    }))
}

/// For `--prune`: the `(kind, owner)` of a policy this installation created, when it carries
/// exactly this installation's marker for `family` (never a legacy marker or another
/// installation's).
pub fn prunable<'a>(
    remote_name: &'a str,
    family: &str,
    installation: &str,
) -> Option<(&'a str, &'a str)> {
    let marker = marker_of(remote_name)?;
    (marker.kind == family && marker.installation == Some(installation))
        .then_some((marker.kind, marker.owner))
}

/// A resource that claims a workspace (a `WorkspaceBudget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimant<'a> {
    pub name: &'a str,
    /// Creation time (`None` in manifests, which have none).
    pub created_at: Option<Timestamp>,
}

/// Which of the resources naming one workspace owns it: the oldest, then by name. The others
/// make no change (`Conflict`).
pub fn workspace_owner<'a>(claimants: &[Claimant<'a>]) -> Option<&'a str> {
    claimants
        .iter()
        .min_by(|a, b| {
            let order = match (a.created_at, b.created_at) {
                (Some(x), Some(y)) => x.cmp(&y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            };
            order.then_with(|| a.name.cmp(b.name))
        })
        .map(|c| c.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Option<Timestamp> {
        Some(s.parse().unwrap())
    }

    fn me() -> Identity {
        Identity::new("ulp", Some("team-a"), "monthly").installed("c1", &[])
    }

    #[test]
    fn oldest_marked_policy_wins_and_the_rest_are_duplicates() {
        let list = [
            Candidate {
                id: "b",
                name: Some("x [k8s:ulp:team-a/monthly@c1]"),
                created_at: ts("2026-01-02T00:00:00Z"),
            },
            Candidate {
                id: "a",
                name: Some("x [k8s:ulp:team-a/monthly]"),
                created_at: ts("2026-01-01T00:00:00Z"),
            },
            Candidate {
                id: "c",
                name: Some("x [k8s:ulp:team-a/monthly@c1]"),
                created_at: None,
            },
            Candidate {
                id: "o",
                name: Some("x [k8s:ulp:team-a/monthly@c2]"),
                created_at: ts("2025-01-01T00:00:00Z"),
            },
            Candidate {
                id: "h",
                name: Some("hand made"),
                created_at: ts("2024-01-01T00:00:00Z"),
            },
        ];
        let owned = owned(list, &me()).unwrap();
        assert_eq!(owned.keep, "a", "the legacy marker is ours and the oldest");
        assert_eq!(
            owned.duplicates,
            ["b", "c"],
            "another installation's and hand-made stay"
        );
        assert_eq!(super::owned(list[3..].iter().copied(), &me()), None);
    }

    #[test]
    fn adoption_is_refused_across_workspaces_and_installations() {
        let ok = check_adoption(
            "spec.adoptPolicyId",
            "p",
            "ws-a",
            Some("hand made"),
            "WS-A",
            &me(),
        );
        assert_eq!(ok, Ok(None));
        let other_ws =
            check_adoption("spec.adoptPolicyId", "p", "ws-b", None, "ws-a", &me()).unwrap_err();
        assert_eq!(other_ws.reason, "WorkspaceNotAllowed");
        assert!(
            other_ws.message.contains("ws-b") && other_ws.message.contains("spec.adoptPolicyId")
        );
        // Another resource of this installation: the caller checks whether it still exists.
        let marked =
            check_adoption("f", "p", "ws", Some("y [k8s:ulp:team-b/x@c1]"), "ws", &me()).unwrap();
        assert_eq!(
            marked,
            Some(MarkedBy {
                kind: "ulp".into(),
                owner: "team-b/x".into()
            })
        );
        assert_eq!(marked.unwrap().refusal("f", "p").reason, "AdoptTargetOwned");
        let elsewhere = check_adoption(
            "f",
            "p",
            "ws",
            Some("y [k8s:ulp:team-a/monthly@c2]"),
            "ws",
            &me(),
        )
        .unwrap_err();
        assert_eq!(elsewhere.reason, "OwnedByAnotherInstallation");
        assert!(elsewhere.message.contains("adoptFromInstallations"));
        let other_resource_elsewhere =
            check_adoption("f", "p", "ws", Some("y [k8s:ulp:team-b/x@c2]"), "ws", &me())
                .unwrap_err();
        assert_eq!(
            other_resource_elsewhere.reason,
            "OwnedByAnotherInstallation"
        );
        let migrating =
            Identity::new("ulp", Some("team-a"), "monthly").installed("c1", &["c2".into()]);
        assert_eq!(
            check_adoption(
                "f",
                "p",
                "ws",
                Some("y [k8s:ulp:team-a/monthly@c2]"),
                "ws",
                &migrating
            ),
            Ok(None)
        );
        assert_eq!(
            check_adoption(
                "f",
                "p",
                "ws",
                Some("y [k8s:ulp:team-a/monthly]"),
                "ws",
                &me()
            ),
            Ok(None)
        );
    }

    #[test]
    fn prune_touches_only_this_installations_markers() {
        assert_eq!(
            prunable("x [k8s:ulp:a/b@sync]", "ulp", "sync"),
            Some(("ulp", "a/b"))
        );
        assert_eq!(prunable("x [k8s:ulp:a/b@c1]", "ulp", "sync"), None);
        assert_eq!(prunable("x [k8s:ulp:a/b]", "ulp", "sync"), None);
        assert_eq!(prunable("x [k8s:rlp:a/b@sync]", "ulp", "sync"), None);
        assert_eq!(prunable("hand made", "ulp", "sync"), None);
    }

    #[test]
    fn the_oldest_workspace_budget_wins_then_by_name() {
        let c = |name, t| Claimant {
            name,
            created_at: t,
        };
        assert_eq!(
            workspace_owner(&[
                c("b", ts("2026-01-01T00:00:00Z")),
                c("a", ts("2026-02-01T00:00:00Z"))
            ]),
            Some("b")
        );
        assert_eq!(workspace_owner(&[c("b", None), c("a", None)]), Some("a"));
        assert_eq!(workspace_owner(&[]), None);
    }
}
