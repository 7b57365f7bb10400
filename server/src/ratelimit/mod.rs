//! The rate-limit domain: policies, the GCRA decision, Envoy config and the limiter that ties
//! them to a store. Knows neither tonic nor Redis.

pub mod check_many;
pub mod deny_cache;
pub mod envoy;
pub mod envoy_config;
pub mod gcra;
pub mod headers;
pub mod limiter;
pub mod policy;
pub mod store;

pub use self::check_many::{CheckManyDecision, MAX_CHECK_ITEMS};
pub use self::limiter::{
    CheckDecision, CheckInput, DenyReason, FailMode, Limiter, LimiterSettings, RateLimitError,
};
