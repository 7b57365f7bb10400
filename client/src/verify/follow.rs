//! The task that follows `WatchSecurityEvents`: applies key sets, revocations and heartbeats
//! to the verifier's state, resubscribes from its cursor with backoff and jitter when the
//! stream breaks, and forgets revocations once no token of theirs can be valid.

use std::sync::Weak;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use portcullis_proto::pb;
use portcullis_proto::pb::security_event::Event;
use tonic::transport::Channel;
use zeroize::Zeroizing;

use super::token::KeySet;
use super::{Shared, VERIFIER_STALENESS};

/// First wait before resubscribing; doubled per failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between attempts: short against the staleness bound, so a replica coming
/// back is heard from soon.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Follows the stream until the verifier is dropped.
pub(super) async fn follow(
    shared: Weak<Shared>,
    channel: Channel,
    watch_token: Option<Zeroizing<String>>,
) {
    let mut client = pb::auth_service_client::AuthServiceClient::new(channel);
    let mut cursor = String::new();
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut request = tonic::Request::new(pb::WatchSecurityEventsRequest {
            cursor: cursor.clone(),
        });
        if let Some(token) = &watch_token
            && let Ok(value) = format!("Bearer {}", token.as_str()).parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        match client.watch_security_events(request).await {
            Ok(response) => {
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(event)) => {
                            let Some(shared) = shared.upgrade() else {
                                return;
                            };
                            if apply(&shared, event, &mut cursor) {
                                backoff = MIN_BACKOFF;
                            }
                        }
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(code = ?status.code(), message = status.message(), "security event stream broke; resubscribing");
                            break;
                        }
                    }
                }
            }
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "cannot subscribe to security events; retrying");
            }
        }
        let Some(alive) = shared.upgrade() else {
            return;
        };
        if let Some(silence) = alive.silence() {
            metrics::gauge!(VERIFIER_STALENESS).set(silence.as_secs_f64());
        }
        drop(alive);
        tokio::time::sleep(jittered(backoff)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Between half and all of `d`, so many clients do not resubscribe in step.
fn jittered(d: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|t| t.subsec_nanos())
        .unwrap_or(0);
    d / 2 + d.mul_f64(f64::from(nanos % 1000) / 2000.0)
}

/// Applies one event; true for a heartbeat (the stream is healthy).
fn apply(shared: &Shared, event: pb::SecurityEvent, cursor: &mut String) -> bool {
    match event.event {
        Some(Event::Keys(keys)) => {
            let Some(jwks) = keys.jwks else {
                return false;
            };
            match KeySet::from_jwks(&jwks.jwks_json, &jwks.issuer, &jwks.audience) {
                Ok(mut set) => {
                    if let Some((kid, secret)) = &shared.hs256 {
                        set = set.with_hs256(kid, secret);
                    }
                    shared.keys.store(Some(std::sync::Arc::new(set)));
                    // Tokens of a removed key must not stay accepted from the cache.
                    shared.cache.clear();
                }
                Err(problem) => tracing::warn!(%problem, "ignoring a key set that cannot be read"),
            }
            false
        }
        Some(Event::Revoked(revoked)) => {
            for s in revoked.sessions {
                let until = s
                    .until
                    .map(|t| u64::try_from(t.seconds).unwrap_or(0))
                    .unwrap_or(u64::MAX);
                shared.revoked.insert(s.session_id, (s.tenant_id, until));
            }
            *cursor = revoked.cursor;
            false
        }
        Some(Event::Heartbeat(heartbeat)) => {
            *cursor = heartbeat.cursor;
            shared
                .last_heartbeat_ms
                .store(shared.now_ms(), Ordering::Release);
            metrics::gauge!(VERIFIER_STALENESS).set(0.0);
            forget_expired(shared);
            true
        }
        None => false,
    }
}

/// How often revocations and cached tokens past their use are dropped.
const FORGET_EVERY_MS: u64 = 10_000;

/// Drops revocations and cached tokens no longer of use, every [`FORGET_EVERY_MS`] (checked on
/// heartbeats).
fn forget_expired(shared: &Shared) {
    let now_ms = shared.now_ms();
    let last = shared.last_forget_ms.load(Ordering::Relaxed);
    if now_ms.saturating_sub(last) < FORGET_EVERY_MS {
        return;
    }
    shared.last_forget_ms.store(now_ms, Ordering::Relaxed);
    let now = SystemTime::now();
    let now_unix = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    shared.revoked.retain(|_, (_, until)| *until > now_unix);
    shared.cache.retain(|_, p| p.expires_at > now);
}
