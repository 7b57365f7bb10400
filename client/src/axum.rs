//! axum extractors (`feature = "axum"`): the principal [`crate::layers::AuthLayer`] verified.

use axum::extract::FromRequestParts;
use http::StatusCode;
use http::request::Parts;

use crate::verify::Principal;

/// The verified principal of a request behind [`crate::layers::AuthLayer`]. A handler taking
/// it on a route the layer does not cover answers 401 rather than run unauthenticated.
impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or((StatusCode::UNAUTHORIZED, "no verified principal"))
    }
}
