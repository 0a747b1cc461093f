//! The GitOps CLI (`plan`, `sync`): budget manifests → what would change in Portkey → apply.
//!
//! Manifests are validated with the CRDs' own rules (schema and CEL). Remote state is read with
//! the Admin API client; decisions come from the same planner the controller uses; remote names
//! carry ownership markers with `sync`'s own installation identity (`--installation-id`,
//! default `sync`), and which remote objects are ours is decided by the same code as in the
//! controller (`plan::ownership`): `sync` never adopts, fights over or prunes another
//! installation's policies.
//!
//! * [`load`]: manifests → resources, or errors naming file, line, resource and field;
//! * [`plan()`]: resources + Portkey → a plan (read only);
//! * [`apply`]: the plan's writes;
//! * [`render_text`] and [`status_table`]: what is shown;
//! * `kinds`: what differs per kind (plan, writes, prune, status row), one file per kind.

mod apply;
mod classify;
mod kinds;
mod load;
mod plan;
mod remote;
mod render;
mod status;

pub use apply::{SyncReport, apply};
pub use classify::Skipped;
pub use load::{
    Loaded, Manifests, Resource, Source, emulator_seed, emulator_seed_from, load,
    missing_workspaces,
};
pub use plan::{ChangeKind, Plan, PlanItem, PlanSettings, plan};
pub use problem::{Class, LoadError, Problem, ResourceRef, exit};
pub use render::render_text;
pub use status::status_table;
pub mod command;
mod lines;
mod problem;
pub mod progress;
