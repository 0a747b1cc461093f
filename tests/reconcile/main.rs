//! The reconcile of every kind against the real emulator (HTTP on loopback) and an in-memory
//! Kubernetes API (tests/support/fake_kube.rs), one module per area; `harness` holds what they
//! share (the environment, the fixtures, the reads).

#[path = "../support/mod.rs"]
mod support;

mod harness;

mod health;
mod operations;
mod ownership;
mod rate_limits;
mod trust;
mod usage_limits;
mod workspace_budgets;
