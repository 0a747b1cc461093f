pub mod control_plane;
pub mod e2e;
pub mod fake_kube;
pub mod fixtures;
pub mod health;
pub mod tenant;
