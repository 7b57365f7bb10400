//! Service bearer tokens in front of `AdminService` (the admin token) and `WatchSecurityEvents`
//! (the watch or admin token): compared in constant time, and a refused call handed to the
//! authentication core, which throttles, logs and audits it per peer.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::status::ERROR_DOMAIN;
use crate::auth::Authenticator;
use crate::auth::admin_failures::AdminRefusal;
use crate::config::AdminToken;
use crate::store::AnyStore;

/// Checks `authorization: Bearer <token>` in constant time. Both sides are hashed first so
/// the comparison time does not even depend on the token's length.
#[derive(Clone)]
pub struct AdminAuth {
    /// SHA-256 of each accepted token; empty when none is configured (the API is off).
    expected: Vec<[u8; 32]>,
    /// What the token opens, for messages: "admin API", "security event stream".
    what: &'static str,
    /// True when every connection already proved a client certificate the server verified
    /// (mTLS required), and that identity suffices without a token.
    certificate_suffices: bool,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("what", &self.what)
            .field("tokens", &self.expected.len())
            .field("certificate_suffices", &self.certificate_suffices)
            .finish()
    }
}

/// What a call's metadata says about its right to the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenCheck {
    /// The admin token.
    Valid,
    /// No token is configured: the admin API is off, and there is nothing to guess.
    Disabled,
    /// Refused: a wrong token, or none.
    Refused(AdminRefusal),
}

impl AdminAuth {
    /// Guards the admin API with `token`; with `None` every admin call is refused.
    pub fn new(token: Option<&AdminToken>) -> Self {
        Self::any_of("admin API", token.into_iter(), false)
    }

    /// Guards `what` with any of `tokens`, or with the client certificate alone when
    /// `certificate_suffices`; with neither every call is refused.
    pub fn any_of<'a>(
        what: &'static str,
        tokens: impl Iterator<Item = &'a AdminToken>,
        certificate_suffices: bool,
    ) -> Self {
        Self {
            expected: tokens
                .map(|t| Sha256::digest(t.expose().as_bytes()).into())
                .collect(),
            what,
            certificate_suffices,
        }
    }

    fn check(&self, headers: &http::HeaderMap) -> TokenCheck {
        if self.certificate_suffices {
            return TokenCheck::Valid;
        }
        if self.expected.is_empty() {
            return TokenCheck::Disabled;
        }
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        let Some(presented) = presented else {
            return TokenCheck::Refused(AdminRefusal::MissingToken);
        };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Every token is compared, so the time does not tell which one matched.
        let matched = self
            .expected
            .iter()
            .fold(subtle::Choice::from(0), |any, e| any | digest.ct_eq(e));
        if bool::from(matched) {
            TokenCheck::Valid
        } else {
            TokenCheck::Refused(AdminRefusal::WrongToken)
        }
    }
}

/// `AdminService` (any inner service, or one method of it) behind a token: a valid token
/// passes; a refused one is answered here and recorded by the core; a peer that failed too
/// often is refused without its token being compared.
#[derive(Debug, Clone)]
pub struct AdminGuard<S> {
    /// The guarded service.
    inner: S,
    /// When set, only calls to this path (`/package.Service/Method`) are guarded.
    only_path: Option<&'static str>,
    /// The token comparison.
    token: AdminAuth,
    /// Records refusals: the per-peer throttle, the log's tally, the platform audit stream.
    auth: Arc<Authenticator<AnyStore>>,
}

impl<S> AdminGuard<S> {
    /// Guards `inner` with `token`, recording refusals through `auth`.
    pub fn new(inner: S, token: AdminAuth, auth: Arc<Authenticator<AnyStore>>) -> Self {
        Self {
            inner,
            only_path: None,
            token,
            auth,
        }
    }

    /// Guards only the calls of `inner` to `path`; the others pass untouched.
    pub fn method(
        inner: S,
        path: &'static str,
        token: AdminAuth,
        auth: Arc<Authenticator<AnyStore>>,
    ) -> Self {
        Self {
            only_path: Some(path),
            ..Self::new(inner, token, auth)
        }
    }
}

impl<S: NamedService> NamedService for AdminGuard<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for AdminGuard<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one called (tower's usual swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        if self.only_path.is_some_and(|p| p != request.uri().path()) {
            return Box::pin(inner.call(request));
        }
        let token = self.token.clone();
        let auth = self.auth.clone();
        Box::pin(async move {
            let peer = peer_ip(&request);
            match admit(&token, &auth, request.headers(), peer).await {
                Ok(()) => inner.call(request).await,
                Err(status) => Ok(status.into_http()),
            }
        })
    }
}

/// What the watch token opens, as messages name it.
pub const WATCH: &str = "security event stream";

/// The method the watch token guards.
pub const WATCH_PATH: &str = "/portcullis.v1.AuthService/WatchSecurityEvents";

/// The caller's IP address, as the connection shows it.
fn peer_ip(request: &http::Request<Body>) -> Option<IpAddr> {
    request
        .extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|addr| addr.ip())
}

/// Whether the call may reach the admin API; the refusal's status otherwise.
async fn admit(
    token: &AdminAuth,
    auth: &Authenticator<AnyStore>,
    headers: &http::HeaderMap,
    peer: Option<IpAddr>,
) -> Result<(), Status> {
    if let Some(retry_after) = auth.admin_peer_throttled(peer).await {
        // Retryable after the hint, from this peer; the token was not even looked at.
        let mut details = ErrorDetails::with_error_info(
            "ADMIN_AUTH_THROTTLED",
            ERROR_DOMAIN,
            std::collections::HashMap::new(),
        );
        details.set_retry_info(Some(retry_after));
        return Err(Status::with_error_details(
            Code::ResourceExhausted,
            "too many failed admin authentications from this address",
            details,
        ));
    }
    match token.check(headers) {
        TokenCheck::Valid => Ok(()),
        TokenCheck::Disabled => Err(Status::unauthenticated(format!(
            "{} disabled: no token for it is configured ({})",
            token.what,
            if token.what == WATCH {
                "PORTCULLIS_WATCH_TOKEN, PORTCULLIS_ADMIN_TOKEN or their _FILE forms"
            } else {
                "PORTCULLIS_ADMIN_TOKEN or PORTCULLIS_ADMIN_TOKEN_FILE"
            }
        ))),
        TokenCheck::Refused(refusal) => {
            auth.admin_auth_failed(peer, refusal).await;
            Err(Status::unauthenticated(match refusal {
                AdminRefusal::MissingToken => {
                    format!("missing bearer token for the {}", token.what)
                }
                _ => format!("invalid bearer token for the {}", token.what),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(value) = authorization {
            h.insert("authorization", value.parse().unwrap());
        }
        h
    }

    #[test]
    fn the_token_is_checked_exactly() {
        let auth = AdminAuth {
            expected: vec![Sha256::digest(b"admin-token-0123456789").into()],
            what: "admin API",
            certificate_suffices: false,
        };
        let check = |v| auth.check(&headers(v));
        assert_eq!(
            check(Some("Bearer admin-token-0123456789")),
            TokenCheck::Valid
        );
        assert_eq!(
            check(Some("bearer admin-token-0123456789")),
            TokenCheck::Valid
        );
        assert_eq!(
            check(Some("Bearer admin-token-012345678")),
            TokenCheck::Refused(AdminRefusal::WrongToken)
        );
        assert_eq!(check(None), TokenCheck::Refused(AdminRefusal::MissingToken));
        assert_eq!(
            AdminAuth::new(None).check(&headers(Some("Bearer x"))),
            TokenCheck::Disabled
        );
    }

    #[test]
    fn any_of_several_tokens_or_a_verified_certificate_opens_the_watch() {
        let watch = AdminToken::for_tests("watch-token-0123456789");
        let admin = AdminToken::for_tests("admin-token-0123456789");
        let auth = AdminAuth::any_of(WATCH, [&watch, &admin].into_iter(), false);
        let check = |v| auth.check(&headers(v));
        assert_eq!(
            check(Some("Bearer watch-token-0123456789")),
            TokenCheck::Valid
        );
        assert_eq!(
            check(Some("Bearer admin-token-0123456789")),
            TokenCheck::Valid
        );
        assert_eq!(
            check(Some("Bearer other-token-0123456789")),
            TokenCheck::Refused(AdminRefusal::WrongToken)
        );
        let by_certificate = AdminAuth::any_of(WATCH, std::iter::empty(), true);
        assert_eq!(by_certificate.check(&headers(None)), TokenCheck::Valid);
        let off = AdminAuth::any_of(WATCH, std::iter::empty(), false);
        assert_eq!(off.check(&headers(Some("Bearer x"))), TokenCheck::Disabled);
    }
}
