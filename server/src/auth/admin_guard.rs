//! Admin calls refused for their token, as the core records them: throttled per peer across
//! replicas (through the store), tallied for the log (never the token) and audited as counted
//! platform events, so a flood of guesses neither goes unseen nor grows the store.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::admin_failures::{AdminRefusal, peer_identity};
use super::audit::{ADMIN_AUTH_ACTION, CallContext, PLATFORM_TENANT, PendingAudit};
use super::authenticator::{Authenticator, unix_now_ms};
use super::store::AuthStore;
use crate::keys;
use crate::ratelimit::store::RateLimitStore;

/// The throttle kind whose key counts a peer's failures, across tenants and replicas.
const THROTTLE_KIND: &str = "admin-auth";

impl<S: AuthStore + RateLimitStore> Authenticator<S> {
    /// How long admin calls from `peer` are still refused without comparing their token, if
    /// they are; such a call is tallied and audited as `throttled`.
    pub async fn admin_peer_throttled(&self, peer: Option<IpAddr>) -> Option<Duration> {
        let (network, address) = peer_identity(peer);
        let wait = self.admin_failures.blocked_for(&network, Instant::now())?;
        self.record_admin_refusal(&network, &address, AdminRefusal::Throttled)
            .await;
        Some(wait)
    }

    /// Records an admin call refused for its token: tallied for the log, audited as a counted
    /// platform event, and charged to the peer's throttle, shared by the replicas through the
    /// store; once that refuses, the peer's calls are refused without comparing for as long as
    /// it says.
    pub async fn admin_auth_failed(&self, peer: Option<IpAddr>, refusal: AdminRefusal) {
        let (network, address) = peer_identity(peer);
        self.record_admin_refusal(&network, &address, refusal).await;
        let Some(limiter) = &self.throttle else {
            return;
        };
        let key = keys::global_throttle_key(THROTTLE_KIND, &network);
        match limiter
            .throttle(&[(key, self.settings.admin_failure_limit)])
            .await
        {
            Ok(None) => {}
            Ok(Some(wait)) => self.admin_failures.block(&network, wait, Instant::now()),
            // The call is refused anyway; the store's outage is logged where it is watched.
            Err(e) => tracing::debug!(error = %e, "admin failure not charged to its throttle"),
        }
    }

    async fn record_admin_refusal(&self, network: &str, address: &str, refusal: AdminRefusal) {
        self.admin_failures.tally(network, refusal, unix_now_ms());
        let ctx = CallContext {
            trace_id: String::new(),
            client_ip: address.to_owned(),
        };
        let event = PendingAudit::new(&ctx, PLATFORM_TENANT, ADMIN_AUTH_ACTION)
            .finish_as(refusal.outcome());
        self.record(event).await;
    }
}
