//! A tonic service behind Portcullis: the same two layers in front of a gRPC service (here
//! the standard health service), answering refusals with gRPC statuses (`UNAUTHENTICATED`,
//! `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED` with `RetryInfo`).
//!
//! `PORTCULLIS=http://10.0.0.1:50051,http://10.0.0.2:50051 PORTCULLIS_WATCH_TOKEN=… LISTEN=127.0.0.1:8081
//! cargo run -p portcullis-client --features tower --example tonic_service`

use std::env;

use portcullis_client::Portcullis;
use portcullis_client::layers::{
    AuthLayer, FailMode, LimitItem, LimitRequest, RateLimitLayer, RateLimiter,
};
use portcullis_client::verify::Principal;
use tonic::transport::Server;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Every replica, comma-separated (or `.dns(headless service, port)` on Kubernetes).
    let replicas = env::var("PORTCULLIS").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let portcullis = Portcullis::builder()
        .endpoints(replicas.split(','))
        .watch_token(env::var("PORTCULLIS_WATCH_TOKEN")?)
        .build()?;
    let verifier = portcullis.verifier().build();
    let limiter = RateLimiter::new(portcullis, FailMode::Open);
    let (_, health) = tonic_health::server::health_reporter();

    let layers = tower::ServiceBuilder::new()
        .layer(AuthLayer::new(verifier).require_scopes(&["api"]))
        .layer(RateLimitLayer::new(limiter, |request| {
            let user = request.extensions.get::<Principal>()?;
            Some(LimitRequest {
                tenant: user.tenant_id.clone(),
                items: vec![LimitItem {
                    resource: request.uri.path().into(),
                    key: user.user_id.clone(),
                    cost: 1,
                }],
            })
        }));
    let listen = env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:8081".into());
    Server::builder()
        .layer(layers)
        .add_service(health)
        .serve(listen.parse()?)
        .await?;
    Ok(())
}
