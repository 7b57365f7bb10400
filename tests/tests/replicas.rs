//! End-to-end: several `portcullis` processes sharing one Redis (or one Redis Cluster) stay
//! exact together, and a Redis outage is answered by the fail mode, then healed without restart.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use futures::future::join_all;
use portcullis_client::{PortcullisClient, envoy, pb};
use portcullis_tests::harness::{PortcullisProcess, RedisCluster, RedisServer};
use portcullis_tests::server::{JWT_SECRET, unique};

/// Replicas on one store must sign with one key (a Redis store without one is refused).
const SHARED_KEY: (&str, &str) = ("JWT_SECRET_KEY", JWT_SECRET);

const RATE_PER_MINUTE: u64 = 100;

async fn client(p: &PortcullisProcess) -> PortcullisClient {
    PortcullisClient::connect(p.endpoint())
        .await
        .expect("connect")
        .with_timeout(Duration::from_secs(10))
}

/// Sends `calls` concurrent checks for one tenant, spread round-robin over the replicas, and
/// returns (admitted, elapsed).
async fn storm(replicas: &[PortcullisProcess], tenant: &str, calls: usize) -> (u64, Duration) {
    let mut clients = Vec::new();
    for p in replicas {
        clients.push(client(p).await);
    }
    let start = Instant::now();
    let results = join_all((0..calls).map(|i| {
        let c = clients[i % clients.len()].clone();
        let t = tenant.to_owned();
        async move { c.check(&t, "", "", 1).await }
    }))
    .await;
    let elapsed = start.elapsed();
    eprintln!(
        "{calls} checks over {} replicas took {elapsed:?}",
        clients.len()
    );
    let admitted = results
        .into_iter()
        .map(|r| r.expect("every check is answered"))
        .filter(|r| {
            assert!(!r.degraded, "Redis is up: no fail-mode decisions");
            r.allowed
        })
        .count() as u64;
    (admitted, elapsed)
}

/// 2,000 concurrent checks over three replicas against 100 per minute (burst 100): exactly
/// 100 pass, plus whatever the limit replenished while the storm lasted (one per 600 ms,
/// which a storm of well under a second never reaches).
fn assert_exact(admitted: u64, elapsed: Duration) {
    let replenished = elapsed.as_millis() as u64 * RATE_PER_MINUTE / 60_000;
    assert!(
        (RATE_PER_MINUTE..=RATE_PER_MINUTE + replenished).contains(&admitted),
        "admitted {admitted} in {elapsed:?}; the limit allows {RATE_PER_MINUTE} + {replenished}"
    );
}

fn spawn_replicas(store_args: &[&str]) -> Vec<PortcullisProcess> {
    (0..3)
        .map(|_| {
            let mut args = store_args.to_vec();
            // A storm of 2,000 calls on two shared cores can queue a call past the 100 ms
            // default; a timed-out call is denied by the fail mode (so never over-admits) but
            // may still have been counted, and this test measures the counter, not the fail mode.
            args.extend(["--default-limit", "100/1m", "--store-timeout", "10s"]);
            PortcullisProcess::spawn(&args, &[SHARED_KEY])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_redis_admit_exactly_the_limit() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let replicas = tokio::task::spawn_blocking(move || spawn_replicas(&["--redis-url", &url]))
        .await
        .unwrap();
    let (admitted, elapsed) = storm(&replicas, &unique("e2e-single"), 2_000).await;
    assert_exact(admitted, elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_a_cluster_admit_exactly_the_limit() {
    let cluster = tokio::task::spawn_blocking(RedisCluster::start)
        .await
        .unwrap();
    let seeds = cluster.seed_urls().join(",");
    let replicas =
        tokio::task::spawn_blocking(move || spawn_replicas(&["--redis-cluster", &seeds]))
            .await
            .unwrap();
    let (admitted, elapsed) = storm(&replicas, &unique("e2e-cluster"), 2_000).await;
    assert_exact(admitted, elapsed);
}

/// Stop Redis mid-run: calls are answered by the fail mode within the store timeout (no
/// caller hangs); start it again: decisions come from Redis again, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_is_answered_by_fail_mode_and_heals() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let envoy_dir = tempfile::tempdir().unwrap();
    let envoy_path = envoy_dir.path().join("edge.yaml");
    std::fs::write(
        &envoy_path,
        "domain: edge\ndescriptors:\n  - key: ip\n    rate_limit: { unit: minute, requests_per_unit: 100 }\n",
    )
    .unwrap();
    let envoy_path = envoy_path.to_str().unwrap().to_owned();
    let (closed, open) = tokio::task::spawn_blocking(move || {
        let closed = PortcullisProcess::spawn(
            &[
                "--redis-url",
                &url,
                "--fail-mode",
                "closed",
                "--store-timeout",
                "100ms",
                "--envoy-config",
                &envoy_path,
            ],
            &[SHARED_KEY],
        );
        let open = PortcullisProcess::spawn(
            &[
                "--redis-url",
                &url,
                "--fail-mode",
                "open",
                "--store-timeout",
                "100ms",
            ],
            &[SHARED_KEY],
        );
        (closed, open)
    })
    .await
    .unwrap();
    let (closed_client, open_client) = (client(&closed).await, client(&open).await);
    let tenant = unique("fault");
    let before = closed_client.check(&tenant, "", "", 1).await.unwrap();
    assert!(before.allowed && !before.degraded);

    redis = tokio::task::spawn_blocking(move || {
        redis.stop();
        redis
    })
    .await
    .unwrap();
    for _ in 0..20 {
        let started = Instant::now();
        let c = closed_client
            .check(&tenant, "", "", 1)
            .await
            .expect("answered, not an error");
        // Generous bound: it only catches a caller left hanging on a dead store.
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
        assert!(c.degraded && !c.allowed);
        assert_eq!(c.deny_reason, pb::DenyReason::StoreUnavailable as i32);
        let o = open_client.check(&tenant, "", "", 1).await.unwrap();
        assert!(o.degraded && o.allowed);
    }
    // Envoy's default fail mode: UNAVAILABLE, so Envoy's own failure_mode_deny decides.
    let envoy_status = closed_client
        .envoy()
        .should_rate_limit(envoy::rls::RateLimitRequest {
            domain: "edge".into(),
            descriptors: vec![envoy::common::RateLimitDescriptor {
                entries: vec![envoy::common::rate_limit_descriptor::Entry {
                    key: "ip".into(),
                    value: "10.1.2.3".into(),
                }],
                limit: None,
                hits_addend: None,
            }],
            hits_addend: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(envoy_status.code(), tonic::Code::Unavailable);

    let redis = tokio::task::spawn_blocking(move || {
        redis.restart();
        redis
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = closed_client.check(&tenant, "", "", 1).await.unwrap();
        let o = open_client.check(&tenant, "", "", 1).await.unwrap();
        if !c.degraded && !o.degraded {
            assert!(c.allowed && o.allowed);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still degraded 20 s after Redis came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = closed.log();
    assert_eq!(
        log.matches("deciding by fail mode").count(),
        1,
        "one log line per incident:\n{log}"
    );
    assert!(log.contains("rate limit store recovered"), "{log}");
    drop(redis);
}

/// A limit set through one replica is applied by another within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_limits_reach_every_replica_within_a_second() {
    const TOKEN: &str = "replica-admin-token-91b2c7";
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let (a, b) = tokio::task::spawn_blocking(move || {
        let env = [("PORTCULLIS_ADMIN_TOKEN", TOKEN), SHARED_KEY];
        (
            PortcullisProcess::spawn(&["--redis-url", &url], &env),
            PortcullisProcess::spawn(&["--redis-url", &url], &env),
        )
    })
    .await
    .unwrap();
    let admin = client(&a).await.with_admin_token(TOKEN).unwrap();
    let other = client(&b).await;
    let tenant = unique("propagate");
    assert_eq!(
        other.check(&tenant, "", "", 1).await.unwrap().limit,
        60,
        "default before"
    );
    admin
        .set_tenant_limit(&tenant, "", 2, Duration::from_secs(3600), 0)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = other.check(&tenant, "", "", 1).await.unwrap();
    assert_eq!(r.limit, 2, "replica b applies the runtime limit");
    assert_eq!(r.policy.unwrap().source, pb::PolicySource::Runtime as i32);
    assert!(
        other.check(&tenant, "", "", 1).await.unwrap().allowed,
        "2 of 2"
    );
    assert!(
        !other.check(&tenant, "", "", 1).await.unwrap().allowed,
        "3 of 2"
    );

    assert!(admin.delete_tenant_limit(&tenant, "").await.unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        other.check(&tenant, "", "", 1).await.unwrap().limit,
        60,
        "default again"
    );
}
