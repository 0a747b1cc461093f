pub mod control_plane;
pub mod fake_kube;
