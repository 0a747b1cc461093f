//! Test scaffolding the tests and the `bench` subcommand share, only with the `bench` feature
//! (the release binary carries none of it): an in-memory Kubernetes API server.

pub mod memkube;
