//! The admin HTTP port: Prometheus metrics that count what happened with bounded labels,
//! liveness, and readiness that waits for the store.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portcullis_client::pb;
use portcullis_tests::harness::{PortcullisProcess, RedisServer, free_port, http_get, sample};
use portcullis_tests::server::{Backend, JWT_SECRET, TestServer, unique};

/// A memory-store server whose admin port is known, with a low default limit.
async fn server() -> (TestServer, SocketAddr) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let listen = metrics.to_string();
    let s = TestServer::start(
        Backend::Memory,
        &["--metrics-listen", &listen, "--default-limit", "2/1h"],
    )
    .await;
    (s, metrics)
}

#[tokio::test]
async fn metrics_count_calls_decisions_and_verifications_with_fixed_labels() {
    let (s, metrics) = server().await;
    let (code, before) = http_get(metrics, "/metrics").await;
    assert_eq!(code, 200);

    let tenant = unique("metrics");
    for _ in 0..3 {
        s.client.check(&tenant, "", "", 1).await.unwrap();
    }
    let mut auth =
        pb::auth_service_client::AuthServiceClient::connect(format!("http://{}", s.addr))
            .await
            .unwrap();
    let bad = auth
        .verify_token(pb::VerifyTokenRequest {
            access_token: "not.a.token".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(bad.unwrap_err().code(), tonic::Code::Unauthenticated);

    let (_, after) = http_get(metrics, "/metrics").await;
    let delta =
        |name: &str, labels: &str| sample(&after, name, labels) - sample(&before, name, labels);
    assert_eq!(
        delta(
            "portcullis_rpc_requests_total",
            r#"method="/portcullis.v1.RateLimitService/Check",code="OK""#
        ),
        3.0
    );
    assert_eq!(
        delta(
            "portcullis_rpc_requests_total",
            r#"method="/portcullis.v1.AuthService/VerifyToken",code="UNAUTHENTICATED""#
        ),
        1.0
    );
    assert_eq!(
        delta(
            "portcullis_ratelimit_decisions_total",
            r#"api="check",outcome="allowed""#
        ),
        2.0
    );
    assert_eq!(
        delta(
            "portcullis_ratelimit_decisions_total",
            r#"api="check",outcome="denied""#
        ),
        1.0
    );
    assert_eq!(
        delta(
            "portcullis_token_verifications_total",
            r#"outcome="TOKEN_MALFORMED""#
        ),
        1.0
    );
    assert!(
        after.contains("portcullis_rpc_duration_seconds_bucket"),
        "latency histogram"
    );
    assert!(
        after.contains("portcullis_store_duration_seconds_bucket"),
        "store histogram"
    );
    assert!(
        after.contains("portcullis_jwt_keys{"),
        "the key in force is published"
    );
    assert!(
        !after.contains(&tenant),
        "no tenant id becomes a label value"
    );
}

#[tokio::test]
async fn unknown_methods_share_one_label() {
    let (s, metrics) = server().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", s.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = format!("/portcullis.v1.RateLimitService/{}", unique("Nope"));
    let answer = grpc
        .unary::<pb::CheckRequest, pb::CheckResponse, _>(
            tonic::Request::new(pb::CheckRequest::default()),
            path.parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await;
    assert_eq!(answer.unwrap_err().code(), tonic::Code::Unimplemented);
    let (_, page) = http_get(metrics, "/metrics").await;
    assert!(!page.contains(&path), "the unknown path is not a label");
    assert!(
        sample(
            &page,
            "portcullis_rpc_requests_total",
            r#"method="other",code="UNIMPLEMENTED""#
        ) >= 1.0
    );
}

#[tokio::test]
async fn liveness_and_readiness_on_the_memory_store() {
    let (_s, metrics) = server().await;
    assert_eq!(http_get(metrics, "/livez").await.0, 200);
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    assert_eq!(http_get(metrics, "/nope").await.0, 404);
}

/// A replica started before its Redis is live but not ready; it becomes ready once Redis
/// answers, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_waits_for_the_store() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    redis.stop();
    let url = redis.url();
    let (redis, server) = tokio::task::spawn_blocking(move || {
        let server =
            PortcullisProcess::spawn(&["--redis-url", &url], &[("JWT_SECRET_KEY", JWT_SECRET)]);
        (redis, server)
    })
    .await
    .unwrap();
    let metrics = server.metrics_addr().unwrap();
    assert_eq!(http_get(metrics, "/livez").await.0, 200);
    assert_eq!(http_get(metrics, "/readyz").await.0, 503, "Redis is down");

    let mut redis = redis;
    let redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while http_get(metrics, "/readyz").await.0 != 200 {
        assert!(
            Instant::now() < deadline,
            "not ready 10 s after Redis came up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(redis);
}
