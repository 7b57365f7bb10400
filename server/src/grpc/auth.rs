//! `portcullis.v1.AuthService`: unpacks requests, calls the authentication core, converts once.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::stream::BoxStream;
use portcullis_proto::pb;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use super::to_proto_duration;
use crate::auth::audit::CallContext;
use crate::auth::password::Secret;
use crate::auth::security_events::{HEARTBEAT_INTERVAL, SecurityEvent};
use crate::auth::{Authenticator, LoginInput, PublishedKeys, TokenDemands, Tokens};
use crate::keys;
use crate::store::AnyStore;

/// Serves logins, token verification, refresh, logout, password changes and the JWKS.
#[derive(Debug, Clone)]
pub struct AuthApi {
    /// The authentication core shared with the admin service.
    pub auth: Arc<Authenticator<AnyStore>>,
}

/// The longest trace id taken from metadata: W3C trace ids are 32 hex digits; a longer
/// `x-trace-id` is cut rather than let into the audit log whole.
const MAX_TRACE_ID_LEN: usize = 64;

/// What the transport knows about the caller, for the audit log: the trace id from a W3C
/// `traceparent` header (`00-<trace id>-<span id>-<flags>`), else from `x-trace-id`.
pub fn call_context(metadata: &MetadataMap) -> CallContext {
    let text = |name: &str| metadata.get(name).and_then(|v| v.to_str().ok());
    let from_traceparent = text("traceparent")
        .and_then(|tp| tp.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    let trace_id = from_traceparent
        .or_else(|| text("x-trace-id"))
        .map(|id| {
            id.chars()
                .filter(|c| c.is_ascii_graphic())
                .take(MAX_TRACE_ID_LEN)
                .collect()
        })
        .unwrap_or_default();
    CallContext {
        trace_id,
        client_ip: String::new(),
    }
}

/// A protobuf timestamp from Unix seconds.
pub(crate) fn timestamp(unix_secs: u64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: i64::try_from(unix_secs).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

/// A protobuf timestamp from Unix milliseconds.
pub(crate) fn timestamp_ms(unix_ms: u64) -> prost_types::Timestamp {
    let at = UNIX_EPOCH + Duration::from_millis(unix_ms);
    prost_types::Timestamp::from(at)
}

fn login_response(t: Tokens) -> pb::LoginResponse {
    pb::LoginResponse {
        access_token: t.access_token,
        refresh_token: t.refresh_token.to_string(),
        expires_in: Some(to_proto_duration(t.expires_in)),
        password_change_required: t.password_change_required,
        user_id: t.user_id,
        session_id: t.session_id,
    }
}

/// `Some` for a non-empty optional field.
fn given(value: &str) -> Option<&str> {
    (!value.is_empty()).then_some(value)
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id))]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let ctx = call_context(request.metadata());
        let mut r = request.into_inner();
        let password = Secret::new(std::mem::take(&mut r.password));
        let tokens = self
            .auth
            .login(
                LoginInput {
                    tenant: &r.tenant_id,
                    username: &r.username,
                    password: &password,
                    client_ip: &r.client_ip,
                },
                &ctx,
            )
            .await?;
        Ok(Response::new(login_response(tokens)))
    }

    #[tracing::instrument(level = "debug", skip_all)]
    async fn verify_token(
        &self,
        request: Request<pb::VerifyTokenRequest>,
    ) -> Result<Response<pb::VerifyTokenResponse>, Status> {
        let r = request.get_ref();
        if r.access_token.is_empty() {
            return Err(crate::auth::AuthError::InvalidArgument {
                field: "access_token".into(),
                reason: "is required".into(),
            }
            .into());
        }
        let demands = TokenDemands::new(&r.required_scopes, &r.required_roles)?;
        let (claims, key_id) =
            self.auth
                .verify_demanding(&r.access_token, given(&r.tenant_id), &demands)?;
        let scopes = claims.scopes().map(str::to_owned).collect();
        Ok(Response::new(pb::VerifyTokenResponse {
            user_id: claims.sub,
            tenant_id: claims.tid,
            session_id: claims.sid,
            roles: claims.roles,
            scopes,
            expires_at: Some(timestamp(claims.exp)),
            key_id,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn refresh(
        &self,
        request: Request<pb::RefreshRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let ctx = call_context(request.metadata());
        let tokens = self
            .auth
            .refresh(&request.get_ref().refresh_token, &ctx)
            .await?;
        Ok(Response::new(login_response(tokens)))
    }

    #[tracing::instrument(skip_all)]
    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let ctx = call_context(request.metadata());
        let r = request.get_ref();
        let revoked = self
            .auth
            .logout(given(&r.refresh_token), given(&r.access_token), &ctx)
            .await?;
        Ok(Response::new(pb::LogoutResponse { revoked }))
    }

    #[tracing::instrument(skip_all)]
    async fn change_password(
        &self,
        request: Request<pb::ChangePasswordRequest>,
    ) -> Result<Response<pb::ChangePasswordResponse>, Status> {
        let ctx = call_context(request.metadata());
        let mut r = request.into_inner();
        let current = Secret::new(std::mem::take(&mut r.current_password));
        let new = Secret::new(std::mem::take(&mut r.new_password));
        let revoked_sessions = self
            .auth
            .change_password(&r.access_token, &current, &new, &ctx)
            .await?;
        Ok(Response::new(pb::ChangePasswordResponse {
            revoked_sessions,
        }))
    }

    async fn get_jwks(
        &self,
        _: Request<pb::GetJwksRequest>,
    ) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(jwks_response(&self.auth.published_keys())))
    }

    type WatchSecurityEventsStream = BoxStream<'static, Result<pb::SecurityEvent, Status>>;

    /// The caller's token was checked in front of the service (`admin_guard`).
    #[tracing::instrument(skip_all)]
    async fn watch_security_events(
        &self,
        request: Request<pb::WatchSecurityEventsRequest>,
    ) -> Result<Response<Self::WatchSecurityEventsStream>, Status> {
        let cursor = &request.get_ref().cursor;
        if cursor.len() > keys::MAX_ID_LEN {
            return Err(crate::auth::AuthError::InvalidArgument {
                field: "cursor".into(),
                reason: format!("is longer than {} bytes", keys::MAX_ID_LEN),
            }
            .into());
        }
        let subscription = self.auth.watch_security_events(given(cursor))?;
        // Ends after an error (a subscriber too slow): it resubscribes with its cursor.
        let events = futures::stream::unfold(Some(subscription), |subscription| async move {
            let mut subscription = subscription?;
            match subscription.next().await {
                Ok(Some(event)) => Some((Ok(security_event(&event)), Some(subscription))),
                Ok(None) => None,
                Err(e) => Some((Err(Status::from(e)), None)),
            }
        });
        Ok(Response::new(Box::pin(events)))
    }
}

/// The wire form of a security event.
fn security_event(event: &SecurityEvent) -> pb::SecurityEvent {
    use pb::security_event::Event;
    let event = match event {
        SecurityEvent::Revoked(batch) => Event::Revoked(pb::SessionsRevoked {
            sessions: batch
                .sessions
                .iter()
                .map(|s| pb::RevokedSession {
                    tenant_id: s.tenant.clone(),
                    session_id: s.session_id.clone(),
                    until: Some(timestamp(s.until_unix)),
                })
                .collect(),
            cursor: batch.cursor.clone(),
            snapshot: batch.snapshot,
        }),
        SecurityEvent::KeysChanged(keys) => Event::Keys(pb::KeySetChanged {
            jwks: Some(jwks_response(keys)),
        }),
        SecurityEvent::Heartbeat {
            cursor,
            read_at_unix_ms,
        } => Event::Heartbeat(pb::Heartbeat {
            cursor: cursor.clone(),
            feed_read_at: Some(timestamp_ms(*read_at_unix_ms)),
            heartbeat_interval: Some(to_proto_duration(HEARTBEAT_INTERVAL)),
        }),
    };
    pb::SecurityEvent { event: Some(event) }
}

/// The wire form of the published key set.
pub(crate) fn jwks_response(keys: &PublishedKeys) -> pb::GetJwksResponse {
    pb::GetJwksResponse {
        jwks_json: keys.jwks_json.clone(),
        issuer: keys.issuer.clone(),
        audience: keys.audience.clone(),
        max_age: Some(to_proto_duration(keys.max_age)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn trace_id_comes_from_traceparent_then_x_trace_id() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let both = metadata(&[("traceparent", tp), ("x-trace-id", "other")]);
        assert_eq!(
            call_context(&both).trace_id,
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let malformed = metadata(&[("traceparent", "garbage"), ("x-trace-id", "abc 123")]);
        assert_eq!(call_context(&malformed).trace_id, "abc123");
        let long = "x".repeat(500);
        let long = metadata(&[("x-trace-id", long.as_str())]);
        assert_eq!(call_context(&long).trace_id.len(), MAX_TRACE_ID_LEN);
        assert_eq!(call_context(&MetadataMap::new()).trace_id, "");
    }
}
