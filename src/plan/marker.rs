//! Ownership markers: how a remote policy says which resource owns it.
//!
//! Portkey policies have no labels, tags or client-chosen ids; `name` is the only free-text
//! field. The operator (and `sync`) therefore end every remote name with a marker derived from
//! the resource's kind, namespace and name, e.g. `Team A budget [k8s:ulp:team-a/monthly]`. The
//! marker is deterministic, so a restarted operator, or `sync` without a cluster, finds a policy
//! it created earlier instead of creating a second one.

/// Longest remote `name` Portkey accepts.
pub const MAX_REMOTE_NAME: usize = 255;
/// Identities longer than this are hashed to keep the marker short.
const MAX_PLAIN_ID: usize = 100;

/// The resource a remote object belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Short kind: `ulp`, `rlp`, `wsb`.
    pub kind: &'static str,
    pub namespace: Option<String>,
    pub name: String,
}

impl Identity {
    pub fn new(kind: &'static str, namespace: Option<&str>, name: &str) -> Self {
        Identity {
            kind,
            namespace: namespace.map(str::to_owned),
            name: name.to_owned(),
        }
    }

    /// `namespace/name`, or `name` for cluster-scoped resources.
    pub fn qualified(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", self.name),
            None => self.name.clone(),
        }
    }

    /// `[k8s:<kind>:<namespace>/<name>]`, or a hashed form for very long identities.
    pub fn marker(&self) -> String {
        let id = self.qualified();
        if id.len() <= MAX_PLAIN_ID {
            format!("[k8s:{}:{id}]", self.kind)
        } else {
            format!("[k8s:{}:#{:016x}]", self.kind, fnv1a64(id.as_bytes()))
        }
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

    /// True when a remote name carries this identity's marker.
    pub fn owns(&self, remote_name: Option<&str>) -> bool {
        remote_name.is_some_and(|n| n.trim_end().ends_with(&self.marker()))
    }
}

/// The `(kind, identity)` of the ownership marker a remote name ends with, if any: any policy
/// created by this operator or by `sync`.
pub fn marker_of(remote_name: &str) -> Option<(&str, &str)> {
    let name = remote_name.trim_end();
    let inner = name.strip_suffix(']')?;
    let start = inner.rfind("[k8s:")?;
    let body = &inner[start + "[k8s:".len()..];
    let (kind, id) = body.split_once(':')?;
    (!kind.is_empty() && !id.is_empty()).then_some((kind, id))
}

/// The whole ownership marker a remote name ends with (e.g. `[k8s:ulp:team-a/monthly]`, as
/// [`Identity::marker`] writes it), if any.
pub fn marker_in(remote_name: &str) -> Option<&str> {
    let name = remote_name.trim_end();
    marker_of(name)?;
    name.rfind("[k8s:").map(|start| &name[start..])
}

/// 64-bit FNV-1a: a stable, dependency-free hash for long identities.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
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

        let long = Identity::new("ulp", Some(&"n".repeat(63)), &"x".repeat(253));
        let marker = long.marker();
        assert!(
            marker.starts_with("[k8s:ulp:#") && marker.len() < 40,
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
            Some(("ulp", "team-a/monthly"))
        );
        assert_eq!(marker_of("hand made"), None);
        assert_eq!(
            marker_in("Team A [k8s:ulp:team-a/monthly] "),
            Some(id.marker().as_str())
        );
        assert_eq!(marker_in("x [k8s:]"), None);
        assert_eq!(marker_of("x [k8s:]"), None);
    }
}
