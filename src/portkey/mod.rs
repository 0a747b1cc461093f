//! The typed Portkey Admin API client: wire types, errors and retry rules.

pub mod client;
pub mod error;
pub mod retry;
pub mod types;
pub mod wire;

pub use client::{
    API_KEY_HEADER, ApiKey, CallObserver, CallRecord, ClientConfig, DEFAULT_BASE_URL, EntityFilter,
    GetOptions, ListFilter, PolicyApi, PolicyKind, PortkeyClient, RateLimits, UsageLimits,
};
pub use error::PortkeyError;
pub use retry::{Idempotency, RetryPolicy};
pub use types::*;
pub use wire::{Nullable, Number};
