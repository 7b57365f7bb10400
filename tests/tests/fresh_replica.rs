//! A replica that starts while the revocation feed cannot be read takes no traffic and
//! verifies no token: not ready on `/readyz`, NOT_SERVING on gRPC health, and VerifyToken
//! UNAVAILABLE (retryable elsewhere) instead of accepting a token whose session was revoked
//! before it started. Once the feed is read it becomes ready and refuses that token.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_client::pb;
use portcullis_tests::auth::{AuthApi, reason, refused, retry_delay};
use portcullis_tests::harness::{RedisServer, free_port, http_get};
use portcullis_tests::server::{Backend, JWT_SECRET, TestServer};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A password that meets the default policy.
const PASSWORD: &str = "Vq7#mLx2!pRz9w";
/// The Redis ACL user of the fresh replica: allowed everything but reading the revocation
/// feed (XRANGE, which nothing else sends) until the test grants it.
const FRESH_USER: &str = "fresh-replica";
/// Its Redis password.
const FRESH_PASSWORD: &str = "fresh-replica-password-5d2e";

/// The status code of a GET of `path` on the admin HTTP port.
async fn http_status(addr: SocketAddr, path: &str) -> u16 {
    http_get(addr, path).await.0
}

/// What gRPC health says of the whole server.
async fn health(api: &AuthApi) -> ServingStatus {
    let answer = HealthClient::new(api.channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    ServingStatus::try_from(answer.status).unwrap()
}

/// Starts a server on `redis_url` whose admin port is `metrics`, with these variables.
async fn replica(redis_url: &str, metrics: SocketAddr, vars: &[(&str, &str)]) -> TestServer {
    let metrics = metrics.to_string();
    let mut vars = vars.to_vec();
    vars.push(("JWT_SECRET_KEY", JWT_SECRET));
    TestServer::start_with_env(
        Backend::Memory,
        &["--redis-url", redis_url, "--metrics-listen", &metrics],
        &vars,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_read_the_revocation_feed_verifies_nothing() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();

    // An older replica: a session opened and logged out, so its token is revoked in the feed.
    let older = replica(&url, SocketAddr::from(([127, 0, 0, 1], free_port())), &[]).await;
    let api = AuthApi::connect(&format!("http://{}", older.addr)).await;
    api.create_user("ruth", PASSWORD, &["reader"], Some(false))
        .await;
    let revoked = api.login("ruth", PASSWORD).await.unwrap();
    let live = api.login("ruth", PASSWORD).await.unwrap();
    assert!(api.logout("", &revoked.access_token).await.unwrap().revoked);

    // The fresh replica's store answers, but its feed cannot be read.
    let password = format!(">{FRESH_PASSWORD}");
    assert_eq!(
        redis.cli(&[
            "ACL", "SETUSER", FRESH_USER, "on", &password, "~*", "&*", "+@all", "-xrange"
        ]),
        "OK"
    );
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let fresh = replica(
        &url,
        metrics,
        &[
            ("PORTCULLIS_REDIS_USERNAME", FRESH_USER),
            ("PORTCULLIS_REDIS_PASSWORD", FRESH_PASSWORD),
        ],
    )
    .await;
    let fresh_api = AuthApi::connect(&format!("http://{}", fresh.addr))
        .await
        .with_tenant(&api.tenant);
    // A gRPC answer first: the server is serving, so its admin port is open.
    assert_eq!(health(&fresh_api).await, ServingStatus::NotServing);
    assert_eq!(http_status(metrics, "/livez").await, 200);
    assert_eq!(http_status(metrics, "/readyz").await, 503);
    for token in [&revoked.access_token, &live.access_token] {
        let status = refused(
            fresh_api.verify(token).await,
            Code::Unavailable,
            "REVOCATIONS_NOT_LOADED",
        );
        retry_delay(&status);
    }
    // A token that is bad in itself is still refused for what it is.
    refused(
        fresh_api.verify("not.a.token").await,
        Code::Unauthenticated,
        "INVALID_TOKEN",
    );

    // The feed becomes readable: the replica becomes ready and knows the revocation.
    assert_eq!(redis.cli(&["ACL", "SETUSER", FRESH_USER, "+xrange"]), "OK");
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_status(metrics, "/readyz").await != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready 10 s after the feed became readable"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health(&fresh_api).await, ServingStatus::Serving);
    let status = fresh_api.verify(&revoked.access_token).await.unwrap_err();
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (Code::Unauthenticated, "SESSION_ENDED"),
        "{status:?}"
    );
    let claims: pb::VerifyTokenResponse = fresh_api.verify(&live.access_token).await.unwrap();
    assert_eq!(claims.session_id, live.session_id);
}

/// The feed drops its oldest entries to stay bounded (100,000, far more than an access token's
/// lifetime normally sees). A fresh replica whose feed has dropped a revocation younger than a
/// token's lifetime cannot know that session ended, so it verifies no token until such tokens
/// have expired. The trim is made by hand here (Redis 7 reports what it dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_feed_dropped_a_live_revocation_verifies_nothing() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let older = replica(&url, SocketAddr::from(([127, 0, 0, 1], free_port())), &[]).await;
    let api = AuthApi::connect(&format!("http://{}", older.addr)).await;
    api.create_user("sam", PASSWORD, &["reader"], Some(false))
        .await;
    let revoked = api.login("sam", PASSWORD).await.unwrap();
    assert!(api.logout("", &revoked.access_token).await.unwrap().revoked);
    // The older replica reads the revocation from the feed before it is dropped.
    let deadline = Instant::now() + Duration::from_secs(10);
    while api.verify(&revoked.access_token).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the older replica never saw the logout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        redis.cli(&["XTRIM", "auth:revocations", "MAXLEN", "0"]),
        "1"
    );

    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let fresh = replica(&url, metrics, &[]).await;
    let fresh_api = AuthApi::connect(&format!("http://{}", fresh.addr))
        .await
        .with_tenant(&api.tenant);
    assert_eq!(health(&fresh_api).await, ServingStatus::NotServing);
    assert_eq!(http_status(metrics, "/readyz").await, 503);
    refused(
        fresh_api.verify(&revoked.access_token).await,
        Code::Unavailable,
        "REVOCATIONS_NOT_LOADED",
    );
    // The older replica still knows.
    refused(
        api.verify(&revoked.access_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
}
