//! Benchmarks of the rate-limit hot path: the GCRA step, a decision on the memory store, key
//! building, protobuf decode/encode of the RPC messages, and one Lua decision on a real Redis
//! (`PORTCULLIS_BENCH_REDIS_URL`, default `redis://127.0.0.1:6379`; skipped when unreachable).
//!
//! Run with `cargo bench -p portcullis-server`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use portcullis_proto::{envoy, pb};
use portcullis_server::keys::{check_key, envoy_key};
use portcullis_server::ratelimit::gcra::{self, GcraParams};
use portcullis_server::ratelimit::store::{LimitRequest, RateLimitStore};
use portcullis_server::store::redis::{RedisSecurity, RedisTarget};
use portcullis_server::store::{MemoryStore, RedisStore};
use prost::Message;

/// Effectively unlimited (one unit per µs, burst a billion) so every decision is "allowed" and
/// writes, the expensive case.
const PARAMS: GcraParams = GcraParams {
    emission_interval_us: 1,
    burst: 1_000_000_000,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn request(key: String) -> [LimitRequest; 1] {
    [LimitRequest {
        key,
        gcra: PARAMS,
        cost: 1,
        enforced: true,
    }]
}

fn gcra_step(c: &mut Criterion) {
    c.bench_function("gcra/step", |b| {
        let mut tat = None;
        let mut now = 1_700_000_000_000_000u64;
        b.iter(|| {
            now += 1;
            let s = gcra::step(black_box(PARAMS), tat, now, 1);
            tat = s.new_tat_us;
            s.outcome
        })
    });
}

fn memory_decision(c: &mut Criterion) {
    let rt = runtime();
    let store = Arc::new(MemoryStore::new());
    let hot = request(check_key("bench", "default", "user-1"));
    c.bench_function("memory/decide one hot key", |b| {
        b.to_async(&rt)
            .iter(|| async { store.decide(&hot).await.expect("memory never fails") })
    });
    let keys: Vec<_> = (0..10_000)
        .map(|i| request(check_key("bench", "default", &format!("user-{i}"))))
        .collect();
    let mut i = 0;
    c.bench_function("memory/decide 10k keys round robin", |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % keys.len();
            let batch = &keys[i];
            let store = &store;
            async move { store.decide(batch).await.expect("memory never fails") }
        })
    });
}

fn key_building(c: &mut Criterion) {
    c.bench_function("keys/check_key", |b| {
        b.iter(|| {
            check_key(
                black_box("tenant-4f1c"),
                black_box("search"),
                black_box("user-12345"),
            )
        })
    });
    c.bench_function("keys/envoy_key 2 entries", |b| {
        b.iter(|| {
            envoy_key(
                black_box("edge"),
                [("remote_address", "10.1.2.3"), ("path", "/login")],
            )
        })
    });
}

fn codec(c: &mut Criterion) {
    let check = pb::CheckRequest {
        tenant_id: "tenant-4f1c".into(),
        resource: "search".into(),
        key: "user-12345".into(),
        cost: 1,
    }
    .encode_to_vec();
    c.bench_function("codec/decode CheckRequest", |b| {
        b.iter(|| pb::CheckRequest::decode(black_box(check.as_slice())).expect("valid"))
    });
    let response = pb::CheckResponse {
        allowed: true,
        limit: 60,
        remaining: 59,
        reset_after: Some(prost_types::Duration {
            seconds: 1,
            nanos: 0,
        }),
        headers: (0..5)
            .map(|i| pb::Header {
                name: format!("X-RateLimit-{i}"),
                value: "1700000060".into(),
            })
            .collect(),
        ..Default::default()
    };
    c.bench_function("codec/encode CheckResponse", |b| {
        b.iter(|| black_box(&response).encode_to_vec())
    });
    let rls = envoy::rls::RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![envoy::common::RateLimitDescriptor {
            entries: vec![envoy::common::rate_limit_descriptor::Entry {
                key: "remote_address".into(),
                value: "10.1.2.3".into(),
            }],
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 1,
    }
    .encode_to_vec();
    c.bench_function("codec/decode RateLimitRequest", |b| {
        b.iter(|| envoy::rls::RateLimitRequest::decode(black_box(rls.as_slice())).expect("valid"))
    });
}

fn redis_decision(c: &mut Criterion) {
    let url = std::env::var("PORTCULLIS_BENCH_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let rt = runtime();
    let store = rt.block_on(async {
        let store = RedisStore::connect(
            &RedisTarget::Single(url.clone()),
            &RedisSecurity::default(),
            Duration::from_secs(1),
        )
        .await
        .ok()?;
        store
            .decide(&request("rl:{bench-probe}:default".into()))
            .await
            .ok()?;
        Some(store)
    });
    let Some(store) = store else {
        eprintln!(
            "redis/decide: skipped, no Redis answering at {url} (set PORTCULLIS_BENCH_REDIS_URL)"
        );
        return;
    };
    // A key of its own per run; it expires by itself within a microsecond of its last use.
    let batch = request(check_key(
        &format!("bench-{}", std::process::id()),
        "default",
        "user-1",
    ));
    c.bench_function("redis/decide one key (round trip + Lua)", |b| {
        b.to_async(&rt)
            .iter(|| async { store.decide(&batch).await.expect("redis answers") })
    });
}

criterion_group!(
    benches,
    gcra_step,
    memory_decision,
    key_building,
    codec,
    redis_decision
);
criterion_main!(benches);
