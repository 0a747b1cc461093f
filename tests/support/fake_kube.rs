//! The in-memory Kubernetes API server lives in the library (the `bench` subcommand uses it
//! too): `portkey_budget_operator::testing::memkube`.

#[allow(unused_imports)]
pub use portkey_budget_operator::testing::memkube::MemoryKube as FakeKube;
