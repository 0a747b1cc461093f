//! Caches shared by every pass: workspace ids by slug, and the workspace listings indexed by
//! ownership marker (adopt-before-create without a listing per create).

use super::*;

/// Resolves workspace ids/slugs to UUIDs, cached for a while (they never change).
#[derive(Default)]
pub struct WorkspaceCache {
    pub(super) entries: Mutex<HashMap<String, (String, Instant)>>,
    /// Held while a miss is resolved, so that concurrent reconciles make one call, not many.
    pub(super) resolving: tokio::sync::Mutex<()>,
}

pub(super) const WORKSPACE_TTL: Duration = Duration::from_secs(600);

impl WorkspaceCache {
    pub async fn resolve(
        &self,
        portkey: &PortkeyClient,
        id_or_slug: &str,
    ) -> Result<String, PortkeyError> {
        let key = id_or_slug.to_ascii_lowercase();
        let cached = || {
            self.entries
                .lock()
                .expect("cache lock")
                .get(&key)
                .filter(|(_, at)| at.elapsed() < WORKSPACE_TTL)
                .map(|(id, _)| id.clone())
        };
        if let Some(id) = cached() {
            return Ok(id);
        }
        let _one_at_a_time = self.resolving.lock().await;
        if let Some(id) = cached() {
            return Ok(id);
        }
        let id = portkey.resolve_workspace_id(id_or_slug).await?;
        self.entries
            .lock()
            .expect("cache lock")
            .insert(key, (id.clone(), Instant::now()));
        Ok(id)
    }
}

/// One policy carrying an ownership marker, as found in a workspace listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedEntry {
    pub id: String,
    pub name: Option<String>,
    pub created_at: Option<jiff::Timestamp>,
}

pub(super) struct OwnedSnapshot {
    pub(super) taken: Instant,
    /// The policies that carry a marker, sorted by it (one vector: a map keyed by a copy of
    /// each marker cost about twice the memory at 10,000 policies).
    pub(super) by_marker: Vec<Marked>,
}

/// A listed policy and where its marker is in its name (finding the marker in each name at
/// every comparison of a lookup's binary search was a few percent of the idle CPU).
pub(super) struct Marked {
    pub(super) entry: OwnedEntry,
    pub(super) marker: (u32, u32),
}

impl Marked {
    pub(super) fn new(entry: OwnedEntry) -> Option<Self> {
        let name = entry.name.as_deref()?;
        let marker = crate::plan::marker::marker_in(name)?;
        let start = marker.as_ptr() as usize - name.as_ptr() as usize;
        let marker = (
            u32::try_from(start).ok()?,
            u32::try_from(start + marker.len()).ok()?,
        );
        Some(Marked { entry, marker })
    }

    pub(super) fn marker(&self) -> &str {
        let name = self.entry.name.as_deref().unwrap_or_default();
        name.get(self.marker.0 as usize..self.marker.1 as usize)
            .unwrap_or_default()
    }
}

pub(super) type OwnedSlot = Arc<tokio::sync::Mutex<Option<Arc<OwnedSnapshot>>>>;

/// Adopt-before-create without listing the whole workspace for every create: one listing of a
/// workspace's active policies (per family) is indexed by ownership marker and reused for
/// [`OWNED_INDEX_TTL`]; concurrent reconciles wait for the one listing in progress.
///
/// Why a snapshot is safe: within this process a resource's policy is only created by its own
/// reconcile, which records the id in status (or, if it crashed before that, leaves the
/// create-pending annotation, and a pending resource always lists afresh). Another operator
/// process only creates while it holds the leader Lease, also behind the annotation. A stale
/// entry (a policy archived since) is caught by the GET that follows.
#[derive(Default)]
pub struct OwnedIndex {
    pub(super) slots: Mutex<HashMap<(String, String), OwnedSlot>>,
}

/// How long a workspace listing serves adopt-before-create lookups.
pub const OWNED_INDEX_TTL: Duration = Duration::from_secs(30);

impl OwnedIndex {
    /// Forgets the listing of `workspace` (family `kind`): this process just created or
    /// archived a policy there.
    pub fn invalidate(&self, kind: &str, workspace: &str) {
        let slot = self
            .slots
            .lock()
            .expect("owned index lock")
            .get(&(kind.to_owned(), workspace.to_owned()))
            .cloned();
        if let Some(slot) = slot
            && let Ok(mut guard) = slot.try_lock()
        {
            *guard = None;
        }
    }

    /// The policies carrying any of `markers` in `workspace` (family `kind`), from a listing at
    /// most [`OWNED_INDEX_TTL`] old; `list` makes a new listing.
    pub async fn lookup<F, Fut>(
        &self,
        kind: &str,
        workspace: &str,
        markers: &[String],
        list: F,
    ) -> Result<Vec<OwnedEntry>, PortkeyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<OwnedEntry>, PortkeyError>>,
    {
        let slot = self
            .slots
            .lock()
            .expect("owned index lock")
            .entry((kind.to_owned(), workspace.to_owned()))
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        let snapshot = match guard.as_ref() {
            Some(s) if s.taken.elapsed() < OWNED_INDEX_TTL => s.clone(),
            _ => {
                // The old listing goes before the new one is made (lookups wait on this slot
                // meanwhile): with 10,000 policies, each copy is a few MiB.
                *guard = None;
                let mut by_marker: Vec<Marked> =
                    list().await?.into_iter().filter_map(Marked::new).collect();
                by_marker.sort_by(|a, b| a.marker().cmp(b.marker()));
                by_marker.shrink_to_fit();
                let s = Arc::new(OwnedSnapshot {
                    taken: Instant::now(),
                    by_marker,
                });
                *guard = Some(s.clone());
                s
            }
        };
        let entries = &snapshot.by_marker;
        Ok(markers
            .iter()
            .flat_map(|m| {
                let first = entries.partition_point(|e| e.marker() < m.as_str());
                entries[first..]
                    .iter()
                    .take_while(|e| e.marker() == m.as_str())
                    .map(|e| e.entry.clone())
            })
            .collect())
    }
}
