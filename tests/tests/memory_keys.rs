//! The memory store's key caps, through a real server: callers choose keys, so a tenant past
//! its share gets its new keys decided by the fail mode (`KEY_LIMIT`), while its live counters,
//! and other tenants, are decided as before.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use portcullis_client::{envoy, pb};
use portcullis_tests::harness::{free_port, http_get, sample};
use portcullis_tests::server::{Backend, TestServer, unique};

/// A memory server holding at most 5 keys per tenant (or Envoy domain) and 8 in all, whose
/// fail mode is `mode`, and its admin port.
async fn capped_server(mode: &str) -> (TestServer, SocketAddr, tempfile::TempDir) {
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let metrics_listen = metrics.to_string();
    let dir = tempfile::tempdir().unwrap();
    let toml = dir.path().join("portcullis.toml");
    let yaml = dir.path().join("envoy.yaml");
    std::fs::write(
        &toml,
        format!(
            "[store]\nfail_mode = \"{mode}\"\nmemory_max_keys = 8\nmemory_max_keys_per_tenant = 5\n"
        ),
    )
    .unwrap();
    std::fs::write(
        &yaml,
        "domain: edge\ndescriptors:\n  - key: client\n    rate_limit: { unit: hour, requests_per_unit: 3 }\n",
    )
    .unwrap();
    let server = TestServer::start(
        Backend::Memory,
        &[
            "--config",
            toml.to_str().unwrap(),
            "--envoy-config",
            yaml.to_str().unwrap(),
            "--metrics-listen",
            &metrics_listen,
        ],
    )
    .await;
    (server, metrics, dir)
}

#[tokio::test]
async fn a_tenant_past_its_key_cap_is_refused_new_keys_only() {
    let (s, metrics, _dir) = capped_server("closed").await;
    let tenant = unique("keys");
    let other = unique("keys-other");
    for t in [&tenant, &other] {
        // Two units a second: a key is idle, and swept, a second after its last unit.
        s.client
            .set_tenant_limit(t, "", 2, Duration::from_secs(1), 0)
            .await
            .unwrap();
    }
    for i in 0..5 {
        let r = s
            .client
            .check(&tenant, "", &format!("k{i}"), 1)
            .await
            .unwrap();
        assert!(r.allowed && !r.degraded, "key {i} fits the cap");
    }
    let refused = s.client.check(&tenant, "", "k5", 1).await.unwrap();
    assert!(!refused.allowed);
    assert!(refused.degraded, "the decision is the fail mode's");
    assert_eq!(refused.deny_reason, pb::DenyReason::KeyLimit as i32);

    // Live counters are still decided exactly, never evicted: k0 has one unit left of two.
    let r = s.client.check(&tenant, "", "k0", 1).await.unwrap();
    assert!(r.allowed && !r.degraded);
    let r = s.client.check(&tenant, "", "k0", 1).await.unwrap();
    assert!(!r.allowed && !r.degraded);
    assert_eq!(r.deny_reason, pb::DenyReason::OverLimit as i32);

    // Another tenant has its own share, up to the total of 8 keys.
    for i in 0..3 {
        let r = s
            .client
            .check(&other, "", &format!("k{i}"), 1)
            .await
            .unwrap();
        assert!(r.allowed && !r.degraded, "the other tenant's key {i}");
    }
    let r = s.client.check(&other, "", "k3", 1).await.unwrap();
    assert_eq!(
        r.deny_reason,
        pb::DenyReason::KeyLimit as i32,
        "the total cap"
    );

    // The metric counts the refusals.
    let (_, page) = http_get(metrics, "/metrics").await;
    assert!(
        sample(
            &page,
            "portcullis_ratelimit_decisions_total",
            r#"api="check",outcome="key_limit""#
        ) >= 2.0,
        "both refusals are counted (other tests of this process may add theirs)"
    );

    // Once the keys are idle and swept, the tenant may hold new ones.
    let mut admitted = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = s.client.check(&tenant, "", "k5", 1).await.unwrap();
        if r.allowed {
            assert!(!r.degraded);
            admitted = true;
            break;
        }
        assert_eq!(r.deny_reason, pb::DenyReason::KeyLimit as i32);
    }
    assert!(admitted, "swept keys gave their room back");
}

#[tokio::test]
async fn with_the_fail_mode_open_a_new_key_past_the_cap_is_admitted_as_degraded() {
    let (s, _metrics, _dir) = capped_server("open").await;
    let tenant = unique("keys-open");
    s.client
        .set_tenant_limit(&tenant, "", 1, Duration::from_secs(3600), 0)
        .await
        .unwrap();
    for i in 0..5 {
        assert!(
            s.client
                .check(&tenant, "", &format!("k{i}"), 1)
                .await
                .unwrap()
                .allowed
        );
    }
    let r = s.client.check(&tenant, "", "k5", 1).await.unwrap();
    assert!(r.allowed && r.degraded);
    // A live key over its limit stays denied: open applies to new keys only.
    let r = s.client.check(&tenant, "", "k0", 1).await.unwrap();
    assert!(!r.allowed && !r.degraded);
}

#[tokio::test]
async fn an_envoy_domain_past_its_key_cap_follows_the_envoy_fail_mode() {
    let (s, _metrics, _dir) = capped_server("closed").await;
    let mut rls = s.client.envoy();
    let request = |client: &str| envoy::rls::RateLimitRequest {
        domain: "edge".into(),
        descriptors: vec![envoy::common::RateLimitDescriptor {
            entries: vec![envoy::common::rate_limit_descriptor::Entry {
                key: "client".into(),
                value: client.into(),
            }],
            limit: None,
            hits_addend: None,
        }],
        hits_addend: 0,
    };
    for i in 0..5 {
        let r = rls
            .should_rate_limit(request(&format!("c{i}")))
            .await
            .unwrap();
        assert_eq!(r.into_inner().overall_code, 1, "client {i} is OK");
    }
    // The Envoy fail mode is `unavailable` by default: Envoy applies its own.
    let past = rls.should_rate_limit(request("c5")).await.unwrap_err();
    assert_eq!(past.code(), tonic::Code::Unavailable, "{past:?}");
    // A key the domain already holds is still decided: c0 has 2 of 3 left.
    let r = rls.should_rate_limit(request("c0")).await.unwrap();
    assert_eq!(r.into_inner().overall_code, 1);
}
