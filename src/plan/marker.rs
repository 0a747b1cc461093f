//! Ownership markers: how a remote policy says which resource, of which installation, owns it.
//!
//! Portkey policies have no labels, tags or client-chosen ids; `name` is the only free-text
//! field. The operator (and `sync`) therefore end every remote name with a marker derived from
//! the resource's kind, namespace and name and the installation that manages it, e.g.
//! `Team A budget [k8s:ulp:team-a/monthly@1f3c9a2e]`. The marker is deterministic, so a
//! restarted operator, or `sync` without a cluster, finds a policy it created earlier instead of
//! creating a second one, and two installations (two clusters, or a cluster and `sync` in CI)
//! never take each other's policies.
//!
//! Markers written before installation identities existed (`[k8s:ulp:team-a/monthly]`) are
//! recognised as the resource's own (the upgrade path) and rewritten with the installation on
//! the next update.
//!
//! Which remote objects are ours (markers, adoption, duplicates, conflicts) is decided in
//! [`super::ownership`], for the controller and the CLI alike.

use crate::api::short_hash;

/// Longest remote `name` Portkey accepts.
pub const MAX_REMOTE_NAME: usize = 255;
/// Identities longer than this are hashed to keep the marker short.
const MAX_PLAIN_ID: usize = 100;
/// Longest installation id.
pub const MAX_INSTALLATION_ID: usize = 32;

/// Checks an installation id: 1–32 lowercase letters, digits and `-`.
pub fn validate_installation_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= MAX_INSTALLATION_ID
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "installation id {id:?} must be 1-{MAX_INSTALLATION_ID} characters of a-z, 0-9 and '-'"
        ))
    }
}

/// The resource a remote object belongs to, and the installation that manages it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Short kind: `ulp`, `rlp`, `wsb`.
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
    /// The installation writing markers (empty: the legacy form without one).
    pub installation: String,
    /// Other installations whose markers this one takes over (a migration between clusters).
    pub adopt_from: Vec<String>,
}

impl Identity {
    /// An identity without installation (legacy markers).
    pub fn new(kind: &'static str, namespace: Option<&str>, name: &str) -> Self {
        Identity {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
            installation: String::new(),
            adopt_from: Vec::new(),
        }
    }

    /// The same resource, managed by `installation` (which also takes over `adopt_from`'s).
    pub fn installed(mut self, installation: &str, adopt_from: &[String]) -> Self {
        self.installation = installation.to_owned();
        self.adopt_from = adopt_from.to_vec();
        self
    }

    /// `namespace/name`, or `name` for cluster-scoped resources.
    pub fn qualified(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// The owner part of the marker: `namespace/name`, or for very long identities the
    /// namespace and a SHA-256 prefix of the name (`namespace/#<32 hex>`): the namespace stays
    /// in clear, and no one can choose a name whose hash is another resource's.
    fn owner(&self) -> String {
        let id = self.qualified();
        if id.len() <= MAX_PLAIN_ID {
            return id;
        }
        let hash = short_hash(self.name.as_bytes());
        match &self.namespace {
            Some(ns) => format!("{ns}/#{hash}"),
            None => format!("#{hash}"),
        }
    }

    fn marker_for(&self, installation: &str) -> String {
        if installation.is_empty() {
            format!("[k8s:{}:{}]", self.kind, self.owner())
        } else {
            format!("[k8s:{}:{}@{installation}]", self.kind, self.owner())
        }
    }

    /// `[k8s:<kind>:<namespace>/<name>@<installation>]`, or a hashed form for very long
    /// identities.
    pub fn marker(&self) -> String {
        self.marker_for(&self.installation)
    }

    /// The marker without installation that earlier versions wrote.
    pub fn legacy_marker(&self) -> String {
        self.marker_for("")
    }

    /// Every marker this identity recognises as its own: its own, the legacy one, and those
    /// of the installations it adopts from.
    pub fn accepted_markers(&self) -> Vec<String> {
        let mut markers = vec![self.marker()];
        if !self.installation.is_empty() {
            markers.push(self.legacy_marker());
        }
        markers.extend(self.adopt_from.iter().map(|i| self.marker_for(i)));
        markers
    }

    /// The full remote name: `display [marker]`, the display shortened so it fits 255 chars.
    pub fn remote_name(&self, display: Option<&str>) -> String {
        let marker = self.marker();
        let default_display = self.qualified();
        let display = display.unwrap_or(&default_display).trim();
        let room = MAX_REMOTE_NAME.saturating_sub(marker.chars().count() + 1);
        let display: String = display.chars().take(room).collect();
        let display = display.trim_end();
        if display.is_empty() {
            marker
        } else {
            format!("{display} {marker}")
        }
    }

    /// True when a remote name carries a marker this identity recognises as its own.
    pub fn owns(&self, remote_name: Option<&str>) -> bool {
        remote_name
            .and_then(marker_in)
            .is_some_and(|m| self.accepted_markers().iter().any(|a| a == m))
    }
}

/// A marker as read from a remote name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker<'a> {
    /// `ulp`, `rlp`, …
    pub kind: &'a str,
    /// `namespace/name` (or `#hash`).
    pub owner: &'a str,
    /// The installation, `None` for a legacy marker.
    pub installation: Option<&'a str>,
}

/// The marker a remote name ends with, if any: any policy created by this operator or `sync`.
pub fn marker_of(remote_name: &str) -> Option<Marker<'_>> {
    let name = remote_name.trim_end();
    let inner = name.strip_suffix(']')?;
    let start = inner.rfind("[k8s:")?;
    let body = &inner[start + "[k8s:".len()..];
    let (kind, rest) = body.split_once(':')?;
    let (owner, installation) = match rest.rsplit_once('@') {
        Some((owner, inst)) => (owner, Some(inst)),
        None => (rest, None),
    };
    (!kind.is_empty() && !owner.is_empty() && installation != Some("")).then_some(Marker {
        kind,
        owner,
        installation,
    })
}

/// The whole ownership marker a remote name ends with (e.g. `[k8s:ulp:team-a/monthly@c1]`, as
/// [`Identity::marker`] writes it), if any.
pub fn marker_in(remote_name: &str) -> Option<&str> {
    let name = remote_name.trim_end();
    marker_of(name)?;
    name.rfind("[k8s:").map(|start| &name[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_deterministic_and_fit() {
        let id = Identity::new("ulp", Some("team-a"), "monthly");
        assert_eq!(id.marker(), "[k8s:ulp:team-a/monthly]");
        assert_eq!(
            id.remote_name(None),
            "team-a/monthly [k8s:ulp:team-a/monthly]"
        );
        assert_eq!(
            id.remote_name(Some("Team A")),
            "Team A [k8s:ulp:team-a/monthly]"
        );
        assert!(id.owns(Some("renamed by hand [k8s:ulp:team-a/monthly]")));
        assert!(!id.owns(Some("Team A [k8s:ulp:team-a/monthly-2]")));
        assert!(!id.owns(Some("Team A [k8s:rlp:team-a/monthly]")));
        assert!(!id.owns(None));

        let long = Identity::new("ulp", Some(&"n".repeat(63)), &"x".repeat(253))
            .installed(&"i".repeat(MAX_INSTALLATION_ID), &[]);
        let marker = long.marker();
        assert!(
            marker.starts_with(&format!("[k8s:ulp:{}/#", "n".repeat(63))) && marker.len() < 150,
            "{marker}"
        );
        assert_eq!(marker, long.marker());
        let name = long.remote_name(Some(&"d".repeat(200)));
        assert!(name.chars().count() <= MAX_REMOTE_NAME);
        assert!(long.owns(Some(&name)));
        let wide = Identity::new("ulp", Some("ns"), "n");
        let name = wide.remote_name(Some(&"é".repeat(400)));
        assert_eq!(name.chars().count(), MAX_REMOTE_NAME);
        assert!(wide.owns(Some(&name)));
        assert_eq!(
            marker_of("Team A [k8s:ulp:team-a/monthly]"),
            Some(Marker {
                kind: "ulp",
                owner: "team-a/monthly",
                installation: None
            })
        );
        assert_eq!(
            marker_of("Team A [k8s:ulp:team-a/monthly@c1]"),
            Some(Marker {
                kind: "ulp",
                owner: "team-a/monthly",
                installation: Some("c1")
            })
        );
        assert_eq!(marker_of("hand made"), None);
        assert_eq!(marker_of("x [k8s:ulp:a/b@]"), None);
        assert_eq!(
            marker_in("Team A [k8s:ulp:team-a/monthly] "),
            Some(id.marker().as_str())
        );
        assert_eq!(marker_in("x [k8s:]"), None);
        assert_eq!(marker_of("x [k8s:]"), None);
    }

    #[test]
    fn installations_own_their_markers_and_legacy_ones_only() {
        let a = Identity::new("ulp", Some("team-a"), "monthly").installed("cluster-a", &[]);
        assert_eq!(a.marker(), "[k8s:ulp:team-a/monthly@cluster-a]");
        assert!(a.owns(Some("x [k8s:ulp:team-a/monthly@cluster-a]")));
        // Written by an earlier version: still ours (upgrade path).
        assert!(a.owns(Some("x [k8s:ulp:team-a/monthly]")));
        // Another cluster's, or sync's: never.
        assert!(!a.owns(Some("x [k8s:ulp:team-a/monthly@cluster-b]")));
        assert!(!a.owns(Some("x [k8s:ulp:team-a/monthly@sync]")));
        // Unless this installation explicitly takes over from it (a migration).
        let migrating = Identity::new("ulp", Some("team-a"), "monthly")
            .installed("cluster-b", &["cluster-a".to_owned()]);
        assert!(migrating.owns(Some("x [k8s:ulp:team-a/monthly@cluster-a]")));
        assert!(!migrating.owns(Some("x [k8s:ulp:team-a/monthly@cluster-c]")));
        assert_eq!(
            migrating.remote_name(Some("Team A")),
            "Team A [k8s:ulp:team-a/monthly@cluster-b]"
        );

        assert!(validate_installation_id("cluster-a").is_ok());
        for bad in ["", "Cluster", "a b", "a@b", &"x".repeat(33)] {
            assert!(validate_installation_id(bad).is_err(), "{bad:?}");
        }
    }
}
