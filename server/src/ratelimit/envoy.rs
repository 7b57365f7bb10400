//! Envoy rate limit requests in domain terms: descriptors in, per-descriptor statuses out.

use std::time::Duration;

use super::envoy_config::{EnvoyRate, EnvoyUnit};

/// One descriptor of a `ShouldRateLimit` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyDescriptor {
    /// (key, value) entries, outermost first.
    pub entries: Vec<(String, String)>,
    /// A limit sent by Envoy that replaces the configured one.
    pub limit_override: Option<EnvoyRate>,
    /// Units this descriptor takes, replacing the request's `hits_addend`.
    pub hits_addend: Option<u64>,
}

/// A `ShouldRateLimit` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyRequest {
    /// The config domain.
    pub domain: String,
    /// The limits to apply together.
    pub descriptors: Vec<EnvoyDescriptor>,
    /// Units each descriptor takes; 0 means 1.
    pub hits_addend: u32,
}

/// The limit that applied to a descriptor, as reported back to Envoy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEnvoyLimit {
    /// The limit's name from the config, if any.
    pub name: Option<String>,
    /// Requests per unit.
    pub requests_per_unit: u32,
    /// The unit.
    pub unit: EnvoyUnit,
}

/// One descriptor's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorStatus {
    /// True when this descriptor is over its limit (never for shadow-mode limits).
    pub over_limit: bool,
    /// The limit that applied; `None` when no limit (or an unlimited one) matched.
    pub limit: Option<AppliedEnvoyLimit>,
    /// Units left after the decision.
    pub remaining: u32,
    /// Time until the limit is fully replenished.
    pub reset_after: Duration,
}

/// The decision for a whole request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvoyDecision {
    /// True when any descriptor is over its limit; then no descriptor took anything.
    pub over_limit: bool,
    /// One status per descriptor, in request order.
    pub statuses: Vec<DescriptorStatus>,
    /// Response headers for Envoy to add (empty when disabled or when no limit applied).
    pub response_headers: Vec<(&'static str, String)>,
    /// True when the store did not answer and the fail mode decided.
    pub degraded: bool,
}

impl AppliedEnvoyLimit {
    /// The period one `requests_per_unit` spans.
    pub fn period(&self) -> Duration {
        self.unit.period()
    }
}
