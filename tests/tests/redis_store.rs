//! What only a Redis store shows: counters expire when idle, over-limit keys stop reaching
//! Redis (local deny cache), and a flushed script cache is reloaded (NOSCRIPT).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use portcullis_server::keys::check_key;
use portcullis_tests::harness::RedisServer;
use portcullis_tests::server::{Backend, TestServer, unique};

/// A server on a Redis of its own, so Redis's command counters are this test's alone.
async fn server_on_own_redis() -> (TestServer, RedisServer) {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    // Memory adds no store flags; --redis-url then picks this Redis.
    let server = TestServer::start(Backend::Memory, &["--redis-url", &url]).await;
    (server, redis)
}

fn evalsha_calls(redis: &RedisServer) -> u64 {
    let stats = redis.cli(&["INFO", "commandstats"]);
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_expire_when_their_limit_is_full_again() {
    let (s, redis) = server_on_own_redis().await;
    let tenant = unique("ttl");
    // 5 per 10 s: one unit is 2 s, so after one request the key is idle again in 2 s.
    s.client
        .set_tenant_limit(&tenant, "", 5, Duration::from_secs(10), 0)
        .await
        .unwrap();
    s.client.check(&tenant, "api", "u", 1).await.unwrap();
    let key = check_key(&tenant, "api", "u");
    let ttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap();
    assert!((1..=2_000).contains(&ttl), "PTTL {ttl}");
    s.client.check(&tenant, "api", "u", 2).await.unwrap();
    let ttl: i64 = redis.cli(&["PTTL", &key]).parse().unwrap();
    assert!((4_000..=6_000).contains(&ttl), "PTTL after 3 units {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_keys_are_answered_without_redis() {
    let (s, redis) = server_on_own_redis().await;
    let tenant = unique("abuser");
    s.client
        .set_tenant_limit(&tenant, "", 2, Duration::from_secs(3600), 0)
        .await
        .unwrap();
    for _ in 0..2 {
        assert!(s.client.check(&tenant, "", "", 1).await.unwrap().allowed);
    }
    let first_denial = s.client.check(&tenant, "", "", 1).await.unwrap();
    assert!(!first_denial.allowed);
    let before = evalsha_calls(&redis);
    for _ in 0..50 {
        let r = s.client.check(&tenant, "", "", 1).await.unwrap();
        assert!(!r.allowed);
        assert!(r.retry_after.is_some());
    }
    assert_eq!(
        evalsha_calls(&redis),
        before,
        "denials came from the local cache"
    );
    // Another key of the same tenant still goes to Redis.
    assert!(
        s.client
            .check(&tenant, "", "someone-else", 1)
            .await
            .unwrap()
            .allowed
    );
    assert_eq!(evalsha_calls(&redis), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_script_cache_is_reloaded() {
    let (s, redis) = server_on_own_redis().await;
    let tenant = unique("noscript");
    assert!(s.client.check(&tenant, "", "", 1).await.unwrap().allowed);
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    let r = s.client.check(&tenant, "", "", 1).await.unwrap();
    assert!(r.allowed && !r.degraded);
    assert_eq!(
        r.remaining, 58,
        "the counter kept counting across the reload"
    );
}

/// A Redis that stops answering (CLIENT PAUSE holds every command) is treated like a dead
/// one: each call is decided by the fail mode close to the store timeout, never left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_is_answered_by_the_fail_mode() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let url = redis.url();
    let s = TestServer::start(
        Backend::Memory,
        &["--redis-url", &url, "--store-timeout", "100ms"],
    )
    .await;
    let tenant = unique("slow");
    assert!(!s.client.check(&tenant, "", "", 1).await.unwrap().degraded);

    assert_eq!(redis.cli(&["CLIENT", "PAUSE", "3000", "ALL"]), "OK");
    let started = std::time::Instant::now();
    let r = s.client.check(&tenant, "", "", 1).await.unwrap();
    let waited = started.elapsed();
    assert!(r.degraded && !r.allowed, "{r:?}");
    // Well under the 3 s pause: the caller got the fail-mode answer, not Redis's.
    assert!(waited < Duration::from_secs(2), "waited {waited:?}");

    assert_eq!(redis.cli(&["CLIENT", "UNPAUSE"]), "OK");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.client.check(&tenant, "", "", 1).await.unwrap().degraded {
        assert!(
            std::time::Instant::now() < deadline,
            "still degraded after unpause"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The script decides a whole queue of requests in one call; its answers must be those of the
/// memory store deciding the same requests one by one at the same instant. Random batches over
/// three keys cover repeated keys (within a request and across requests), denials that undo
/// what a request's earlier limits took, costs above the burst and shadow-mode limits. Each
/// limit is drawn at random, so a key's policy changes all the time, from one unit per 10 s
/// to 1,000 per second: TATs pushed far ahead by a slow policy must be clamped alike, and no
/// answer may deny longer than the policy it was decided under could.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_script_call_decides_like_the_memory_store_one_by_one() {
    use std::sync::Arc;

    use portcullis_server::clock::{Clock, ManualClock};
    use portcullis_server::ratelimit::gcra::{GcraParams, Verdict};
    use portcullis_server::ratelimit::store::{LimitRequest, RateLimitStore};
    use portcullis_server::store::redis::{RedisSecurity, RedisTarget};
    use portcullis_server::store::{MemoryStore, RedisStore};
    use rand::rngs::Xoshiro256PlusPlus;
    use rand::{RngExt, SeedableRng};

    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let store = RedisStore::connect(
        &RedisTarget::Single(redis.url()),
        &RedisSecurity::default(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    let clock = Arc::new(ManualClock::new(0));
    let memory = MemoryStore::with_clock(clock.clone());
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let keys = ["rl:{t}:a", "rl:{t}:b", "rl:{t}:c"];
    let (mut undone, mut repeated, mut committed, mut shadow_denied) = (0, 0, 0, 0);
    // Denials under a policy shorter than the one that last pushed the key ahead.
    let mut after_a_longer_policy = 0;
    let mut longest_tolerance: std::collections::HashMap<String, u64> = Default::default();

    for round in 0..300 {
        let requests: Vec<Vec<LimitRequest>> = (0..rng.random_range(1..=8))
            .map(|_| {
                (0..rng.random_range(1..=3))
                    .map(|_| LimitRequest {
                        key: keys[rng.random_range(0..keys.len())].to_owned(),
                        gcra: GcraParams {
                            emission_interval_us: [1_000, 40_000, 10_000_000]
                                [rng.random_range(0..3)],
                            burst: rng.random_range(1..=6),
                        },
                        cost: rng.random_range(1..=3),
                        enforced: rng.random_range(0..5) > 0,
                    })
                    .collect()
            })
            .collect();
        let slices: Vec<&[LimitRequest]> = requests.iter().map(Vec::as_slice).collect();
        let from_script = store.decide_in_one_call(&slices).await.unwrap();
        assert_eq!(from_script.len(), requests.len());

        clock.advance_us(from_script[0].now_us - clock.now_us());
        for (request, scripted) in requests.iter().zip(&from_script) {
            let one_by_one = memory.decide(request).await.unwrap();
            assert_eq!(*scripted, one_by_one, "round {round}, request {request:?}");
            for (limit, outcome) in request.iter().zip(&scripted.keys) {
                let tolerance = limit.gcra.tolerance_us();
                let longest = longest_tolerance.entry(limit.key.clone()).or_default();
                if let Verdict::Denied { retry_after_us } = outcome.verdict {
                    // Full under this policy, the cost fits after cost × T at most.
                    assert!(
                        retry_after_us <= limit.gcra.emission_interval_us * limit.cost,
                        "round {round}: retry after {retry_after_us}µs under {limit:?}"
                    );
                    after_a_longer_policy += usize::from(*longest > tolerance);
                }
                assert!(
                    outcome.reset_after_us <= tolerance,
                    "round {round}: {outcome:?}"
                );
                *longest = (*longest).max(tolerance);
            }
            let allowed = |i: usize| scripted.keys[i].verdict == Verdict::Allowed;
            committed += usize::from(scripted.committed);
            undone += usize::from(!scripted.committed && (0..request.len()).any(allowed));
            shadow_denied += usize::from(
                request
                    .iter()
                    .enumerate()
                    .any(|(i, r)| !r.enforced && !allowed(i) && scripted.committed),
            );
            repeated += usize::from(
                (1..request.len()).any(|i| request[..i].iter().any(|r| r.key == request[i].key)),
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..15))).await;
    }
    // The mix reached every path it is meant to test.
    assert!(
        committed > 50
            && undone > 20
            && repeated > 20
            && shadow_denied > 5
            && after_a_longer_policy > 20,
        "committed {committed}, undone {undone}, repeated key {repeated}, shadow denied \
         {shadow_denied}, denied after a longer policy {after_a_longer_policy}"
    );
}
