//! An axum service behind Portcullis: each request's bearer token verified in-process (revoked
//! sessions refused within a second), then limited per user and per tenant in one round trip.
//!
//! `PORTCULLIS=http://10.0.0.1:50051,http://10.0.0.2:50051 PORTCULLIS_WATCH_TOKEN=… LISTEN=127.0.0.1:8080
//! cargo run -p portcullis-client --features axum --example axum_service`, then
//! `curl -H "authorization: Bearer $TOKEN" localhost:8080/tenants/acme/hello`.

use std::env;

use axum::Router;
use axum::routing::get;
use portcullis_client::Portcullis;
use portcullis_client::layers::{
    AuthLayer, FailMode, LimitItem, LimitRequest, RateLimitLayer, RateLimiter,
};
use portcullis_client::verify::Principal;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every replica, comma-separated (or `.dns(headless service, port)` on Kubernetes).
    let replicas = env::var("PORTCULLIS").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let portcullis = Portcullis::builder()
        .endpoints(replicas.split(','))
        .watch_token(env::var("PORTCULLIS_WATCH_TOKEN")?)
        .build()?;
    let verifier = portcullis.verifier().build();
    let limiter = RateLimiter::new(portcullis, FailMode::Closed);

    let app = Router::new()
        .route("/tenants/{tenant}/hello", get(hello))
        // Inner layer: runs after AuthLayer, so the principal is there to limit by.
        .layer(RateLimitLayer::new(limiter, |request| {
            let user = request.extensions.get::<Principal>()?;
            let item = |resource: &str, key: &str| LimitItem {
                resource: resource.into(),
                key: key.into(),
                cost: 1,
            };
            Some(LimitRequest {
                tenant: user.tenant_id.clone(),
                items: vec![item("hello", &user.user_id), item("hello-tenant", "")],
            })
        }))
        .layer(
            AuthLayer::new(verifier)
                .require_scopes(&["api"])
                .tenant_from(|request| request.uri.path().split('/').nth(2).map(str::to_owned)),
        );
    let listen = env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn hello(user: Principal) -> String {
    format!("hello {} of {}\n", user.user_id, user.tenant_id)
}
