//! The service `bench/client-layers.sh` measures: an axum hello-world with no layer, with
//! `AuthLayer` (local verification), or with both layers (`LAYERS=none|auth|both`), and a
//! `mint` command printing an access token signed with an EdDSA key the server also holds
//! (no session is needed to verify one).
//!
//! `layer_bench mint <key.pem> <kid>` · `LAYERS=auth PORTCULLIS=… PORTCULLIS_WATCH_TOKEN=…
//! LISTEN=127.0.0.1:8091 layer_bench serve`

use std::env;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::routing::get;
use portcullis_client::Portcullis;
use portcullis_client::layers::{
    AuthLayer, FailMode, LimitItem, LimitRequest, RateLimitLayer, RateLimiter,
};
use portcullis_client::verify::Principal;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = env::args().collect();
    if args.get(1).map(String::as_str) == Some("mint") {
        let (Some(pem), Some(kid)) = (args.get(2), args.get(3)) else {
            return Err("usage: layer_bench mint <key.pem> <kid>".into());
        };
        let key =
            jsonwebtoken::EncodingKey::from_ed_der(&pem_to_der(&std::fs::read_to_string(pem)?)?);
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        header.typ = Some("at+jwt".into());
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let claims = serde_json::json!({
            "iss": "portcullis", "aud": "portcullis", "sub": "bench-user", "tid": "bench",
            "sid": "bench-session", "jti": "bench-jti", "iat": now, "nbf": now,
            "exp": now + 3600, "roles": [], "scope": "api",
        });
        // The token is this command's output.
        #[allow(clippy::print_stdout)]
        {
            println!("{}", jsonwebtoken::encode(&header, &claims, &key)?);
        }
        return Ok(());
    }
    let layers = env::var("LAYERS").unwrap_or_else(|_| "none".into());
    let app = Router::new().route("/tenants/{tenant}/hello", get(|| async { "hello\n" }));
    let app = if layers == "none" {
        app
    } else {
        let portcullis = Portcullis::builder()
            .endpoints([env::var("PORTCULLIS")?])
            .watch_token(env::var("PORTCULLIS_WATCH_TOKEN")?)
            .build()?;
        let verifier = portcullis.verifier().build();
        let app = if layers == "both" {
            app.layer(RateLimitLayer::new(
                RateLimiter::new(portcullis, FailMode::Closed),
                |request| {
                    let user = request.extensions.get::<Principal>()?;
                    Some(LimitRequest {
                        tenant: user.tenant_id.clone(),
                        items: vec![LimitItem {
                            resource: "hello".into(),
                            key: user.user_id.clone(),
                            cost: 1,
                        }],
                    })
                },
            ))
        } else {
            app
        };
        app.layer(AuthLayer::new(verifier).require_scopes(&["api"]))
    };
    let listener = tokio::net::TcpListener::bind(env::var("LISTEN")?).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The DER inside a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
fn pem_to_der(pem: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    use base64::Engine;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(base64::engine::general_purpose::STANDARD.decode(body)?)
}
