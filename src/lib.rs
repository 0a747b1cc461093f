//! portkey-budget-operator: enforce LLM-gateway budgets declared as Kubernetes resources in
//! Portkey. The binary (`src/main.rs`) is a thin CLI over this library.

pub mod api;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod bench_real;
pub mod config;
pub mod controller;
pub mod emulator;
pub mod gitops;
pub mod metrics;
pub mod plan;
pub mod portkey;
pub mod telemetry;
#[cfg(feature = "bench")]
pub mod testing;
