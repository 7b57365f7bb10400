//! The security events as the authentication core serves them: the key set it publishes, and
//! subscriptions to the fan-out of its revocation-feed polls.

use std::sync::atomic::Ordering;

use super::authenticator::Authenticator;
use super::error::AuthError;
use super::security_events::{HEARTBEAT_INTERVAL, JWKS_MAX_AGE, PublishedKeys, Subscription};
use super::store::AuthStore;
use crate::ratelimit::store::RateLimitStore;

impl<S: AuthStore + RateLimitStore> Authenticator<S> {
    /// The key set in force, as published.
    pub fn published_keys(&self) -> PublishedKeys {
        PublishedKeys {
            jwks_json: self.keys().current().jwks_json(),
            issuer: self.settings.issuer.clone(),
            audience: self.settings.audience.clone(),
            max_age: JWKS_MAX_AGE,
        }
    }

    /// Subscribes to this replica's security events, resuming after `cursor` when it can.
    /// Refused until the revocation feed has been read (the snapshot would be incomplete), and
    /// past [`MAX_SUBSCRIBERS`].
    pub fn watch_security_events(&self, cursor: Option<&str>) -> Result<Subscription, AuthError> {
        if !self.revocations_loaded() {
            return Err(AuthError::RevocationsNotLoaded {
                retry_after: HEARTBEAT_INTERVAL,
            });
        }
        self.revocations
            .feed
            .subscribe(cursor, &self.revocations.revoked)
    }

    /// Ends every security-event stream (the replica is shutting down).
    pub fn close_security_events(&self) {
        self.revocations.feed.closing.send_replace(true);
    }

    /// Subscribers this replica serves now.
    pub fn security_event_subscribers(&self) -> usize {
        self.revocations.feed.subscribers.load(Ordering::Acquire)
    }
}
