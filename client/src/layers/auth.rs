//! `AuthLayer`: the bearer token of each request verified by a [`Verifier`], its principal put
//! in the request's extensions; refusals as RFC 6750 says (401 `invalid_token`, 403
//! `insufficient_scope`) or as gRPC `UNAUTHENTICATED` / `PERMISSION_DENIED`.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::{HeaderName, HeaderValue, StatusCode};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::{is_grpc, refusal};
use crate::verify::{Demands, Verifier, VerifyError};

/// Which tenant a request addresses (from its path, a header, …), so a token of another
/// tenant is refused; `None` when the request names none.
pub type TenantOf = Arc<dyn Fn(&http::request::Parts) -> Option<String> + Send + Sync>;

/// Verifies the bearer token of every request (see the module docs).
#[derive(Clone)]
pub struct AuthLayer {
    /// Verifies the tokens.
    verifier: Verifier,
    /// Scopes every request's token must carry.
    scopes: Arc<[String]>,
    /// Roles every request's user must hold.
    roles: Arc<[String]>,
    /// The tenant a request addresses, when the service says.
    tenant_of: Option<TenantOf>,
}

impl std::fmt::Debug for AuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthLayer")
            .field("verifier", &self.verifier)
            .field("scopes", &self.scopes)
            .field("roles", &self.roles)
            .field("tenant_of", &self.tenant_of.is_some())
            .finish()
    }
}

impl AuthLayer {
    /// Verifies with `verifier`, demanding nothing beyond validity.
    pub fn new(verifier: Verifier) -> Self {
        Self {
            verifier,
            scopes: Arc::new([]),
            roles: Arc::new([]),
            tenant_of: None,
        }
    }

    /// Demands these scopes of every token.
    pub fn require_scopes(mut self, scopes: &[&str]) -> Self {
        self.scopes = scopes.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Demands these roles of every token's user.
    pub fn require_roles(mut self, roles: &[&str]) -> Self {
        self.roles = roles.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Refuses a token whose tenant is not the one `tenant_of` reads from the request.
    pub fn tenant_from(
        mut self,
        tenant_of: impl Fn(&http::request::Parts) -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.tenant_of = Some(Arc::new(tenant_of));
        self
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`AuthLayer`] makes.
#[derive(Debug, Clone)]
pub struct AuthService<S> {
    inner: S,
    layer: AuthLayer,
}

impl<S, B, R> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one called (tower's usual swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        Box::pin(async move {
            let grpc = is_grpc(&request);
            let (mut parts, body) = request.into_parts();
            // The token is borrowed from the headers for the verification, not copied.
            let verified = {
                let Some(token) = bearer(&parts.headers) else {
                    return Ok(refused(grpc, Refusal::Missing, &layer));
                };
                let tenant = layer.tenant_of.as_ref().and_then(|f| f(&parts));
                let scopes: Vec<&str> = layer.scopes.iter().map(String::as_str).collect();
                let roles: Vec<&str> = layer.roles.iter().map(String::as_str).collect();
                let demands = Demands {
                    tenant: tenant.as_deref(),
                    scopes: &scopes,
                    roles: &roles,
                };
                layer.verifier.verify(token, &demands).await
            };
            match verified {
                Ok(principal) => {
                    parts.extensions.insert(principal);
                    inner.call(http::Request::from_parts(parts, body)).await
                }
                Err(e) => Ok(refused(grpc, Refusal::Verify(e), &layer)),
            }
        })
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme is case-insensitive).
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

enum Refusal {
    /// No bearer token at all.
    Missing,
    /// The verifier's answer.
    Verify(VerifyError),
}

/// The response to a refused request. The message never repeats the token.
fn refused<R: Default>(grpc: bool, why: Refusal, layer: &AuthLayer) -> http::Response<R> {
    const WWW_AUTHENTICATE: HeaderName = http::header::WWW_AUTHENTICATE;
    let challenge =
        |value: String| HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("Bearer"));
    match why {
        // RFC 6750 §3.1: no error code when the request had no credentials.
        Refusal::Missing => refusal(
            grpc,
            StatusCode::UNAUTHORIZED,
            Status::unauthenticated("missing bearer token"),
            &[(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        ),
        Refusal::Verify(e @ (VerifyError::InsufficientScope | VerifyError::InsufficientRole)) => {
            let scope = layer.scopes.join(" ");
            refusal(
                grpc,
                StatusCode::FORBIDDEN,
                Status::new(Code::PermissionDenied, e.to_string()),
                &[(
                    WWW_AUTHENTICATE,
                    challenge(format!(
                        "Bearer error=\"insufficient_scope\", scope=\"{scope}\""
                    )),
                )],
            )
        }
        Refusal::Verify(VerifyError::Unavailable(_)) => refusal(
            grpc,
            StatusCode::SERVICE_UNAVAILABLE,
            Status::unavailable("cannot verify the token now"),
            &[],
        ),
        Refusal::Verify(e) => refusal(
            grpc,
            StatusCode::UNAUTHORIZED,
            Status::unauthenticated(e.to_string()),
            &[(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            )],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_is_read_as_rfc_6750_says() {
        let with = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
            bearer(&h).map(str::to_owned)
        };
        assert_eq!(with("Bearer abc.def.ghi").as_deref(), Some("abc.def.ghi"));
        assert_eq!(with("bearer abc").as_deref(), Some("abc"));
        assert_eq!(with("Basic abc"), None);
        assert_eq!(with("Bearer "), None);
        assert_eq!(bearer(&http::HeaderMap::new()), None);
    }
}
