//! The rate-limit behaviour suite: every test body runs against the memory store, a single
//! Redis and a Redis Cluster, through a real gRPC server.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::Duration;

use ::redis::cluster_routing::Slot;
use futures::future::join_all;
use portcullis_client::{ClientError, envoy, pb};
use portcullis_server::keys::envoy_key;
use portcullis_tests::server::{Backend, TestServer, unique};
use tonic::Code;
use tonic_types::StatusExt;

const HOUR: Duration = Duration::from_secs(3600);

/// Envoy config shared by the Envoy tests.
const ENVOY_YAML: &str = r#"
domain: suite
descriptors:
  - key: client
    rate_limit: { unit: hour, requests_per_unit: 3 }
    descriptors:
      - key: path
        rate_limit: { unit: hour, requests_per_unit: 2, name: per_path }
  - key: shadowed
    shadow_mode: true
    rate_limit: { unit: hour, requests_per_unit: 1 }
  - key: open
    rate_limit: { unlimited: true }
  - key: blocked
    rate_limit: { unit: second, requests_per_unit: 0 }
"#;

async fn server_with_envoy(backend: Backend) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("suite.yaml");
    std::fs::write(&path, ENVOY_YAML).expect("write envoy config");
    let server = TestServer::start(
        backend,
        &["--envoy-config", path.to_str().expect("utf-8 path")],
    )
    .await;
    (server, dir)
}

fn status_of(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Status(s) => s,
        other => panic!("expected a gRPC status, got {other}"),
    }
}

fn duration(d: &Option<prost_types::Duration>) -> Duration {
    let d = d.as_ref().expect("duration present");
    Duration::new(d.seconds as u64, d.nanos as u32)
}

fn header<'a>(r: &'a pb::CheckResponse, name: &str) -> &'a str {
    r.headers
        .iter()
        .find(|h| h.name == name)
        .map(|h| h.value.as_str())
        .unwrap_or_else(|| panic!("no {name} header"))
}

async fn burst_then_exact_retry(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("burst");
    // 5 per 10 s: one unit every 2 s.
    s.client
        .set_tenant_limit(&tenant, "", 5, Duration::from_secs(10), 0)
        .await
        .unwrap();
    for expected in (0..5).rev() {
        let r = s.client.check(&tenant, "api", "u1", 1).await.unwrap();
        assert!(r.allowed);
        assert_eq!(r.remaining, expected);
        assert_eq!(r.limit, 5);
    }
    let denied = s.client.check(&tenant, "api", "u1", 1).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.deny_reason, pb::DenyReason::OverLimit as i32);
    let retry = duration(&denied.retry_after);
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_secs(2),
        "{retry:?}"
    );
    assert_eq!(header(&denied, "X-RateLimit-Remaining"), "0");
    assert_eq!(header(&denied, "X-RateLimit-Limit"), "5");
    assert!(header(&denied, "Retry-After").parse::<u64>().unwrap() >= 1);
    tokio::time::sleep(retry).await;
    let after = s.client.check(&tenant, "api", "u1", 1).await.unwrap();
    assert!(
        after.allowed,
        "waiting retry_after must be enough: {after:?}"
    );
}

async fn concurrent_checks_admit_exactly_the_burst(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("exact");
    s.client
        .set_tenant_limit(&tenant, "", 50, HOUR, 0)
        .await
        .unwrap();
    let calls = (0..400).map(|_| {
        let c = s.client.clone();
        let t = tenant.clone();
        async move { c.check(&t, "", "", 1).await.unwrap().allowed }
    });
    let admitted = join_all(calls).await.into_iter().filter(|a| *a).count();
    // 50 per hour replenishes one unit per 72 s, far longer than this test runs.
    assert_eq!(admitted, 50);
}

async fn a_denial_takes_nothing(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("nothing");
    s.client
        .set_tenant_limit(&tenant, "", 5, HOUR, 0)
        .await
        .unwrap();
    assert!(s.client.check(&tenant, "", "", 3).await.unwrap().allowed);
    let denied = s.client.check(&tenant, "", "", 3).await.unwrap();
    assert!(!denied.allowed);
    assert_eq!(denied.remaining, 2);
    let r = s.client.check(&tenant, "", "", 2).await.unwrap();
    assert!(r.allowed, "the two free units are still there");
    assert_eq!(r.remaining, 0);
}

async fn cost_above_burst_is_refused_with_a_reason(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("huge");
    s.client
        .set_tenant_limit(&tenant, "", 5, HOUR, 0)
        .await
        .unwrap();
    let r = s.client.check(&tenant, "", "", 6).await.unwrap();
    assert!(!r.allowed);
    assert_eq!(r.deny_reason, pb::DenyReason::CostExceedsBurst as i32);
    assert!(r.retry_after.is_none(), "no retry time can ever succeed");
    assert_eq!(r.remaining, 5);
    assert!(s.client.check(&tenant, "", "", 5).await.unwrap().allowed);
}

async fn tenants_resources_and_keys_are_isolated(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let a = unique("iso-a");
    // Ids full of key structure characters must not reach another tenant's counter.
    let b = format!("{a}}}:{{x");
    for t in [&a, &b] {
        s.client.set_tenant_limit(t, "", 1, HOUR, 0).await.unwrap();
    }
    assert!(s.client.check(&a, "r", "k", 1).await.unwrap().allowed);
    assert!(!s.client.check(&a, "r", "k", 1).await.unwrap().allowed);
    let neighbours = [
        (&b, "r", "k", "other tenant"),
        (&a, "r2", "k", "other resource"),
        (&a, "r", "k2", "other key"),
        (&a, "r", "", "whole-tenant counter is its own"),
        (&a, "r:k", "", "no separator forgery"),
    ];
    for (tenant, resource, key, why) in neighbours {
        assert!(
            s.client
                .check(tenant, resource, key, 1)
                .await
                .unwrap()
                .allowed,
            "{why}"
        );
    }
    // Empty resource is "default".
    assert!(s.client.check(&a, "", "", 1).await.unwrap().allowed);
    assert!(!s.client.check(&a, "default", "", 1).await.unwrap().allowed);
}

async fn invalid_input_names_the_field(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let long = "x".repeat(257);
    let cases: [(&str, &str, &str, &str); 4] = [
        ("", "r", "k", "tenant_id"),
        ("t", &long, "k", "resource"),
        ("t", "r", "a\u{7}b", "key"),
        ("t\n", "r", "k", "tenant_id"),
    ];
    for (tenant, resource, key, field) in cases {
        let status = status_of(s.client.check(tenant, resource, key, 1).await.unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status
            .get_details_bad_request()
            .expect("BadRequest details");
        assert_eq!(bad.field_violations[0].field, field);
        assert!(status.message().contains(field), "{}", status.message());
    }
    assert!(
        s.client
            .check(&"x".repeat(256), "r", "k", 1)
            .await
            .unwrap()
            .allowed
    );
}

async fn headers_describe_the_decision(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("headers");
    s.client
        .set_tenant_limit(&tenant, "search", 10, Duration::from_secs(60), 0)
        .await
        .unwrap();
    let r = s.client.check(&tenant, "search", "u", 1).await.unwrap();
    assert_eq!(header(&r, "X-RateLimit-Limit"), "10");
    assert_eq!(header(&r, "X-RateLimit-Remaining"), "9");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let reset: u64 = header(&r, "X-RateLimit-Reset").parse().unwrap();
    assert!(reset >= now && reset <= now + 61, "{reset} vs {now}");
    assert_eq!(header(&r, "RateLimit-Policy"), "\"search\";q=10;w=60");
    assert_eq!(header(&r, "RateLimit"), "\"search\";r=9;t=6");
    let policy = r.policy.unwrap();
    assert_eq!(
        (policy.rate, policy.burst, policy.source),
        (10, 10, pb::PolicySource::Runtime as i32)
    );
}

async fn runtime_limits_set_get_delete(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("admin");
    let get = |resource: &'static str| {
        let c = s.client.clone();
        let t = tenant.clone();
        async move {
            c.get_tenant_limit(&t, resource)
                .await
                .unwrap()
                .policy
                .unwrap()
        }
    };
    let p = get("x").await;
    assert_eq!((p.rate, p.source), (60, pb::PolicySource::Default as i32));
    s.client
        .set_tenant_limit(&tenant, "", 7, Duration::from_secs(1), 3)
        .await
        .unwrap();
    s.client
        .set_tenant_limit(&tenant, "x", 9, Duration::from_secs(1), 0)
        .await
        .unwrap();
    assert_eq!(get("x").await.rate, 9);
    let other = get("y").await;
    assert_eq!(
        (other.rate, other.burst, other.source),
        (7, 3, pb::PolicySource::Runtime as i32)
    );
    assert!(s.client.delete_tenant_limit(&tenant, "x").await.unwrap());
    assert!(!s.client.delete_tenant_limit(&tenant, "x").await.unwrap());
    assert_eq!(get("x").await.rate, 7);

    let status = status_of(
        s.client
            .set_tenant_limit(&tenant, "", 0, Duration::from_secs(1), 0)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "rate"
    );
}

/// A counter pushed 30 days ahead by a strict limit is judged by the limit in force after a
/// change: a denial lasts at most what that limit could make it last.
async fn a_changed_limit_decides_at_once(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("loosened");
    let month = Duration::from_secs(30 * 24 * 3600);
    let strict = || s.client.set_tenant_limit(&tenant, "", 1, month, 0);
    strict().await.unwrap();
    assert!(s.client.check(&tenant, "", "u", 1).await.unwrap().allowed);
    let denied = s.client.check(&tenant, "", "u", 1).await.unwrap();
    assert!(duration(&denied.retry_after) > month - HOUR);

    // 1,000 per second: full at worst, so one unit fits within a millisecond.
    s.client
        .set_tenant_limit(&tenant, "", 1000, Duration::from_secs(1), 0)
        .await
        .unwrap();
    let r = s.client.check(&tenant, "", "u", 1).await.unwrap();
    if !r.allowed {
        assert!(
            duration(&r.retry_after) <= Duration::from_millis(1),
            "{r:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(s.client.check(&tenant, "", "u", 1).await.unwrap().allowed);

    // Back to the default (60 per minute) by deleting the override: one unit within 1 s.
    strict().await.unwrap();
    s.client.check(&tenant, "", "v", 1).await.unwrap();
    assert!(s.client.delete_tenant_limit(&tenant, "").await.unwrap());
    let r = s.client.check(&tenant, "", "v", 1).await.unwrap();
    if !r.allowed {
        assert!(duration(&r.retry_after) <= Duration::from_secs(1), "{r:?}");
        tokio::time::sleep(duration(&r.retry_after) + Duration::from_millis(50)).await;
        assert!(s.client.check(&tenant, "", "v", 1).await.unwrap().allowed);
    }
}

/// An Envoy descriptor's own `limit` shares the key of the configured limit: a year-long one
/// must not hold the configured limit (3 per hour) for a year.
async fn envoy_a_descriptor_limit_does_not_outlast_itself(backend: Backend) {
    let (s, _dir) = server_with_envoy(backend).await;
    let v = unique("yearly");
    let mut d = descriptor(&[("client", &v)]);
    d.limit = Some(envoy::common::rate_limit_descriptor::RateLimitOverride {
        requests_per_unit: 1,
        unit: envoy::types::RateLimitUnit::Year as i32,
    });
    assert_eq!(
        should_rate_limit(&s, vec![d.clone()]).await.overall_code,
        OK
    );
    let yearly = should_rate_limit(&s, vec![d]).await;
    assert_eq!(yearly.overall_code, OVER);
    assert!(duration(&yearly.statuses[0].duration_until_reset) > 300 * 24 * HOUR);

    let configured = should_rate_limit(&s, vec![descriptor(&[("client", &v)])]).await;
    assert_eq!(
        configured.overall_code, OVER,
        "full under 3 per hour at worst"
    );
    assert!(
        duration(&configured.statuses[0].duration_until_reset) <= HOUR,
        "{configured:?}"
    );
}

/// An admin can forget a tenant's counters, of one key or of a whole resource, and the call
/// is audited; other resources and tenants keep theirs.
async fn reset_counters_forgets_one_key_or_a_resource(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("reset");
    let other = unique("reset-other");
    for t in [&tenant, &other] {
        s.client.set_tenant_limit(t, "", 1, HOUR, 0).await.unwrap();
    }
    // Glob characters in a key must not widen a reset.
    let spent = [
        (&tenant, "search", "a"),
        (&tenant, "search", "b*"),
        (&tenant, "search", ""),
        (&tenant, "searches", "a"),
        (&tenant, "upload", "a"),
        (&other, "search", "a"),
    ];
    let allowed = |t: &str, r: &str, k: &str| {
        let c = s.client.clone();
        let (t, r, k) = (t.to_owned(), r.to_owned(), k.to_owned());
        async move { c.check(&t, &r, &k, 1).await.unwrap().allowed }
    };
    for (t, r, k) in spent {
        assert!(allowed(t, r, k).await);
        assert!(!allowed(t, r, k).await, "{r}/{k} is spent");
    }

    assert_eq!(
        s.client
            .reset_counters(&tenant, "search", "b*")
            .await
            .unwrap(),
        1
    );
    assert!(
        allowed(&tenant, "search", "b*").await,
        "the key starts afresh"
    );
    assert!(
        !allowed(&tenant, "search", "a").await,
        "a sibling key keeps its count"
    );

    // The whole resource: "a", "b*" (spent again above) and the keyless counter.
    assert_eq!(
        s.client
            .reset_counters(&tenant, "search", "")
            .await
            .unwrap(),
        3
    );
    for k in ["a", "b*", ""] {
        assert!(
            allowed(&tenant, "search", k).await,
            "search/{k} starts afresh"
        );
    }
    for (t, r, k) in [
        (&tenant, "searches", "a"),
        (&tenant, "upload", "a"),
        (&other, "search", "a"),
    ] {
        assert!(!allowed(t, r, k).await, "{t} {r}/{k} keeps its count");
    }
    assert_eq!(
        s.client
            .reset_counters(&tenant, "nothing", "")
            .await
            .unwrap(),
        0
    );

    let bad = status_of(s.client.reset_counters("", "search", "").await.unwrap_err());
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(
        bad.get_details_bad_request().unwrap().field_violations[0].field,
        "tenant_id"
    );

    let mut admin = s.client.admin();
    let mut request = tonic::Request::new(pb::ListAuditEventsRequest {
        tenant_id: tenant.clone(),
        limit: 100,
        after_id: String::new(),
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", portcullis_tests::server::ADMIN_TOKEN)
            .parse()
            .unwrap(),
    );
    let events = admin
        .list_audit_events(request)
        .await
        .unwrap()
        .into_inner()
        .events;
    let resets = events
        .iter()
        .filter(|e| e.action == "admin.reset_counters" && e.outcome == "success")
        .count();
    assert_eq!(resets, 3, "every reset is audited: {events:?}");
}

async fn admin_needs_the_token(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let anonymous = portcullis_client::PortcullisClient::connect(format!("http://{}", s.addr))
        .await
        .unwrap();
    let status = status_of(anonymous.get_tenant_limit("t", "").await.unwrap_err());
    assert_eq!(status.code(), Code::Unauthenticated);
    let wrong = anonymous
        .clone()
        .with_admin_token("test-admin-token-4f1c9e2a7c")
        .unwrap();
    let status = status_of(
        wrong
            .set_tenant_limit("t", "", 1, HOUR, 0)
            .await
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::Unauthenticated);
    assert!(
        !status.message().contains("4f1c9e2a"),
        "the token is never echoed"
    );
    // Check itself needs no token.
    assert!(anonymous.check(&unique("anon"), "", "", 1).await.is_ok());
}

fn descriptor(entries: &[(&str, &str)]) -> envoy::common::RateLimitDescriptor {
    envoy::common::RateLimitDescriptor {
        entries: entries
            .iter()
            .map(|(k, v)| envoy::common::rate_limit_descriptor::Entry {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        limit: None,
        hits_addend: None,
    }
}

async fn should_rate_limit(
    s: &TestServer,
    descriptors: Vec<envoy::common::RateLimitDescriptor>,
) -> envoy::rls::RateLimitResponse {
    s.client
        .envoy()
        .should_rate_limit(envoy::rls::RateLimitRequest {
            domain: "suite".into(),
            descriptors,
            hits_addend: 0,
        })
        .await
        .expect("ShouldRateLimit")
        .into_inner()
}

const OK: i32 = envoy::rls::rate_limit_response::Code::Ok as i32;
const OVER: i32 = envoy::rls::rate_limit_response::Code::OverLimit as i32;

async fn envoy_descriptors_are_all_or_nothing(backend: Backend) {
    let (s, _dir) = server_with_envoy(backend).await;
    // Different first entries on different Cluster slots, so the Cluster path decides per
    // slot and must give back what the allowed slot took.
    let slot = |client: &str| Slot::for_key(envoy_key("suite", [("client", client)]));
    let c1 = unique("c1");
    let c2 = std::iter::repeat_with(|| unique("c2"))
        .find(|c2| slot(c2) != slot(&c1))
        .unwrap();
    let a = || descriptor(&[("client", &c1)]);
    let b = || descriptor(&[("client", &c2), ("path", "/p")]);
    for remaining in [(2, 1), (1, 0)] {
        let r = should_rate_limit(&s, vec![a(), b()]).await;
        assert_eq!(r.overall_code, OK);
        assert_eq!(
            (r.statuses[0].limit_remaining, r.statuses[1].limit_remaining),
            remaining
        );
    }
    let r = should_rate_limit(&s, vec![a(), b()]).await;
    assert_eq!(r.overall_code, OVER);
    assert_eq!(r.statuses[0].code, OK);
    assert_eq!(r.statuses[1].code, OVER);
    assert_eq!(
        r.statuses[0].limit_remaining, 1,
        "the allowed descriptor was not consumed"
    );
    let limit = r.statuses[1].current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit, limit.name.as_str()),
        (2, 3, "per_path")
    );
    assert!(r.statuses[1].duration_until_reset.is_some());
    assert!(
        r.response_headers_to_add
            .iter()
            .any(|h| h.key == "X-RateLimit-Remaining" && h.value == "0")
    );
    // What was not taken is still there.
    let r = should_rate_limit(&s, vec![a()]).await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(r.statuses[0].limit_remaining, 0);
    assert_eq!(should_rate_limit(&s, vec![a()]).await.overall_code, OVER);
}

async fn envoy_shadow_unlimited_unknown_and_blocked(backend: Backend) {
    let (s, _dir) = server_with_envoy(backend).await;
    let v = unique("v");
    for _ in 0..3 {
        let r = should_rate_limit(&s, vec![descriptor(&[("shadowed", &v)])]).await;
        assert_eq!(r.overall_code, OK, "shadow mode never enforces");
        assert_eq!(r.statuses[0].code, OK);
        assert_eq!(
            r.statuses[0]
                .current_limit
                .as_ref()
                .unwrap()
                .requests_per_unit,
            1
        );
    }
    let r = should_rate_limit(
        &s,
        vec![descriptor(&[("open", "x")]), descriptor(&[("nobody", "x")])],
    )
    .await;
    assert_eq!(r.overall_code, OK);
    assert!(
        r.statuses
            .iter()
            .all(|st| st.current_limit.is_none() && st.code == OK)
    );
    let r = should_rate_limit(&s, vec![descriptor(&[("blocked", &v)])]).await;
    assert_eq!(
        r.overall_code, OVER,
        "0 requests per unit blocks everything"
    );
    let unknown_domain = s
        .client
        .envoy()
        .should_rate_limit(envoy::rls::RateLimitRequest {
            domain: "elsewhere".into(),
            descriptors: vec![descriptor(&[("client", "x")])],
            hits_addend: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unknown_domain.overall_code, OK);
}

async fn envoy_overrides_and_hits_addend(backend: Backend) {
    let (s, _dir) = server_with_envoy(backend).await;
    let v = unique("ov");
    let mut d = descriptor(&[("client", &v)]);
    d.limit = Some(envoy::common::rate_limit_descriptor::RateLimitOverride {
        requests_per_unit: 10,
        unit: envoy::types::RateLimitUnit::Day as i32,
    });
    d.hits_addend = Some(4);
    let r = should_rate_limit(&s, vec![d.clone()]).await;
    assert_eq!(r.overall_code, OK);
    assert_eq!(r.statuses[0].limit_remaining, 6);
    assert_eq!(r.statuses[0].current_limit.as_ref().unwrap().unit, 4);
    should_rate_limit(&s, vec![d.clone()]).await;
    assert_eq!(
        should_rate_limit(&s, vec![d.clone()]).await.overall_code,
        OVER
    );

    d.limit.as_mut().unwrap().unit = 42;
    let status = s
        .client
        .envoy()
        .should_rate_limit(envoy::rls::RateLimitRequest {
            domain: "suite".into(),
            descriptors: vec![d],
            hits_addend: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("descriptors[0].limit.unit"),
        "{}",
        status.message()
    );
}

async fn envoy_invalid_input_names_the_field(backend: Backend) {
    let (s, _dir) = server_with_envoy(backend).await;
    let long_path = format!("/{}", "p".repeat(4095));
    let r = should_rate_limit(
        &s,
        vec![descriptor(&[
            ("client", &unique("long")),
            ("path", &long_path),
        ])],
    )
    .await;
    assert_eq!(r.overall_code, OK, "values up to 4 KiB are accepted");
    let most = vec![descriptor(&vec![("client", "a"); 32]); 64];
    assert_eq!(
        should_rate_limit(&s, most).await.overall_code,
        OK,
        "64 descriptors of 32 entries are accepted"
    );
    let too_long = format!("{long_path}x");
    let cases = [
        (
            vec![
                descriptor(&[("client", "a")]),
                descriptor(&[("path", &too_long)]),
            ],
            "descriptors[1].entries[0].value",
        ),
        (
            vec![descriptor(&[("client", "a"), ("", "x")])],
            "descriptors[0].entries[1].key",
        ),
        (
            vec![descriptor(&[("cli\u{1b}ent", "a")])],
            "descriptors[0].entries[0].key",
        ),
        (vec![descriptor(&[("client", "a")]); 65], "descriptors"),
        (
            vec![
                descriptor(&[("client", "a")]),
                descriptor(&vec![("client", "a"); 33]),
            ],
            "descriptors[1].entries",
        ),
    ];
    for (descriptors, field) in cases {
        let status = s
            .client
            .envoy()
            .should_rate_limit(envoy::rls::RateLimitRequest {
                domain: "suite".into(),
                descriptors,
                hits_addend: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            field
        );
    }
}

/// A `CheckMany` request of (resource, key, cost) items.
fn check_many(tenant: &str, items: &[(&str, &str, u32)]) -> pb::CheckManyRequest {
    pb::CheckManyRequest {
        tenant_id: tenant.to_owned(),
        items: items
            .iter()
            .map(|(resource, key, cost)| pb::CheckItem {
                resource: resource.to_string(),
                key: key.to_string(),
                cost: *cost,
            })
            .collect(),
    }
}

/// "Per user and per tenant": a call admitted by one limit but denied by the other takes
/// nothing from either, and says which denied it and when to retry.
async fn check_many_is_all_or_nothing(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("many");
    s.client
        .set_tenant_limit(&tenant, "per-user", 3, HOUR, 0)
        .await
        .unwrap();
    s.client
        .set_tenant_limit(&tenant, "per-tenant", 5, HOUR, 0)
        .await
        .unwrap();
    let call = |user: &'static str| {
        let mut client = s.client.rate_limit();
        let request = check_many(&tenant, &[("per-user", user, 1), ("per-tenant", "", 1)]);
        async move { client.check_many(request).await.unwrap().into_inner() }
    };
    for left in (0..3).rev() {
        let r = call("alice").await;
        assert!(r.allowed);
        assert_eq!(r.results.len(), 2);
        assert_eq!(r.results[0].remaining, left);
        assert!(r.retry_after.is_none());
    }
    // Alice is out: denied by her own limit, and the tenant's is not charged.
    let denied = call("alice").await;
    assert!(!denied.allowed);
    assert!(!denied.results[0].allowed);
    assert_eq!(
        denied.results[0].deny_reason,
        pb::DenyReason::OverLimit as i32
    );
    assert!(
        denied.results[1].allowed,
        "the tenant limit would have fitted"
    );
    assert_eq!(denied.results[1].remaining, 2, "nothing taken");
    assert!(duration(&denied.retry_after) > Duration::ZERO);
    assert!(
        denied
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("retry-after")),
        "{:?}",
        denied.headers
    );
    // Bob takes the tenant's last two units; his third call is denied by the tenant limit
    // and his own is not charged.
    assert!(call("bob").await.allowed);
    assert!(call("bob").await.allowed);
    let denied = call("bob").await;
    assert!(!denied.allowed);
    assert!(denied.results[0].allowed && !denied.results[1].allowed);
    assert_eq!(
        denied.results[0].remaining, 1,
        "bob's own limit was not charged"
    );
}

/// Concurrent `CheckMany` calls sharing a limit admit exactly its burst, and an item repeated
/// in one call takes its cost each time.
async fn concurrent_check_many_admits_exactly_the_burst(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("many-exact");
    s.client
        .set_tenant_limit(&tenant, "", 30, HOUR, 0)
        .await
        .unwrap();
    let calls = (0..100).map(|i| {
        let mut client = s.client.rate_limit();
        let key = format!("user-{i}");
        let request = check_many(&tenant, &[("api", "", 1), ("api", &key, 1)]);
        async move {
            client
                .check_many(request)
                .await
                .unwrap()
                .into_inner()
                .allowed
        }
    });
    let admitted = join_all(calls).await.into_iter().filter(|a| *a).count();
    assert_eq!(admitted, 30);

    let other = unique("many-repeat");
    s.client
        .set_tenant_limit(&other, "", 3, HOUR, 0)
        .await
        .unwrap();
    let mut client = s.client.rate_limit();
    let twice = check_many(&other, &[("r", "k", 1), ("r", "k", 1)]);
    let r = client.check_many(twice.clone()).await.unwrap().into_inner();
    assert!(r.allowed);
    assert_eq!(
        r.results[1].remaining, 1,
        "the second occurrence saw the first's take"
    );
    assert!(!client.check_many(twice).await.unwrap().into_inner().allowed);
    assert!(
        s.client.check(&other, "r", "k", 1).await.unwrap().allowed,
        "one unit was left"
    );
}

async fn check_many_invalid_input_names_the_field(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let tenant = unique("many-bad");
    let long = "k".repeat(300);
    let seventeen: Vec<(&str, &str, u32)> = vec![("r", "k", 1); 17];
    let cases: Vec<(pb::CheckManyRequest, &str)> = vec![
        (check_many("", &[("r", "k", 1)]), "tenant_id"),
        (check_many(&tenant, &[]), "items"),
        (check_many(&tenant, &seventeen), "items"),
        (
            check_many(&tenant, &[("r", "k", 1), ("r", "bad\u{7}", 1)]),
            "items[1].key",
        ),
        (
            check_many(&tenant, &[("r", "k", 1), ("r", "k", 1), (&long, "k", 1)]),
            "items[2].resource",
        ),
    ];
    for (request, field) in cases {
        let status = s.client.rate_limit().check_many(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(
            status.get_details_bad_request().unwrap().field_violations[0].field,
            field
        );
    }
}

portcullis_tests::on_every_store!(
    check_many_is_all_or_nothing,
    concurrent_check_many_admits_exactly_the_burst,
    check_many_invalid_input_names_the_field,
    burst_then_exact_retry,
    concurrent_checks_admit_exactly_the_burst,
    a_denial_takes_nothing,
    cost_above_burst_is_refused_with_a_reason,
    tenants_resources_and_keys_are_isolated,
    invalid_input_names_the_field,
    headers_describe_the_decision,
    runtime_limits_set_get_delete,
    a_changed_limit_decides_at_once,
    reset_counters_forgets_one_key_or_a_resource,
    admin_needs_the_token,
    envoy_descriptors_are_all_or_nothing,
    envoy_shadow_unlimited_unknown_and_blocked,
    envoy_overrides_and_hits_addend,
    envoy_a_descriptor_limit_does_not_outlast_itself,
    envoy_invalid_input_names_the_field,
);
