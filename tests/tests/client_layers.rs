//! The client crate's tower layers end to end, with real processes: Portcullis replicas on one
//! Redis with EdDSA keys, and instances of the example axum service
//! (`client/examples/axum_service.rs`), each balanced over every replica.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use futures::future::join_all;
use portcullis_client::PortcullisClient;
use portcullis_tests::auth::AuthApi;
use portcullis_tests::harness::{
    ExampleService, HttpResponse, PortcullisProcess, RedisServer, http_request,
};
use portcullis_tests::key_files::{generate_ed25519, key_entry, replace_file};
use portcullis_tests::server::{ADMIN_TOKEN, unique};

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42!";
const WATCH_TOKEN: &str = "watch-token-5e7d1c3b9a2f";
/// The longest a test waits for something that must happen; it only keeps a broken build
/// from hanging the suite.
const DEADLINE: Duration = Duration::from_secs(20);

/// Replicas and example services on one Redis; every process stops when this is dropped.
struct Deployment {
    replicas: Vec<PortcullisProcess>,
    services: Vec<ExampleService>,
    /// The replicas' arguments, to bring one back.
    args: Vec<String>,
    _redis: RedisServer,
    _keys: tempfile::TempDir,
}

/// The environment every replica gets.
const REPLICA_ENV: [(&str, &str); 2] = [
    ("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN),
    ("PORTCULLIS_WATCH_TOKEN", WATCH_TOKEN),
];

/// Writes the key set and config into `dir` and returns the replicas' arguments.
fn replica_args(dir: &Path, redis_url: &str) -> Vec<String> {
    generate_ed25519(dir, "ed-1");
    let key_set = dir.join("keys.toml");
    replace_file(&key_set, &key_entry("ed-1", "EdDSA", "active"));
    let config = dir.join("portcullis.toml");
    std::fs::write(
        &config,
        "[auth]\nlogin_limit_per_ip = \"100000/1m\"\nlogin_limit_per_ip_all_tenants = \"100000/1m\"\n\
         login_limit_per_tenant = \"100000/1m\"\n[auth.argon2]\nmemory_kib = 1024\niterations = 1\n\
         parallelism = 1\npermits_per_client_ip = 64\n",
    )
    .unwrap();
    vec![
        "--redis-url".into(),
        redis_url.into(),
        "--jwt-key-set".into(),
        key_set.to_str().unwrap().into(),
        "--config".into(),
        config.to_str().unwrap().into(),
    ]
}

/// `replicas` Portcullis processes and `services` example services, each service balanced
/// over every replica (`only` names one replica per service instead, service `i` on replica
/// `i`, to show that verifiers fed by different replicas agree).
async fn deploy(replicas: usize, services: usize, one_each: bool) -> Deployment {
    tokio::task::spawn_blocking(move || {
        let redis = RedisServer::start();
        let keys = tempfile::tempdir().unwrap();
        let args = replica_args(keys.path(), &redis.url());
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let replicas: Vec<_> = (0..replicas)
            .map(|_| PortcullisProcess::spawn(&arg_refs, &REPLICA_ENV))
            .collect();
        let all = replicas
            .iter()
            .map(PortcullisProcess::endpoint)
            .collect::<Vec<_>>()
            .join(",");
        let services = (0..services)
            .map(|i| {
                let endpoints = if one_each {
                    replicas[i % replicas.len()].endpoint()
                } else {
                    all.clone()
                };
                ExampleService::spawn(
                    "axum_service",
                    "axum",
                    &[
                        ("PORTCULLIS", endpoints.as_str()),
                        ("PORTCULLIS_WATCH_TOKEN", WATCH_TOKEN),
                    ],
                )
            })
            .collect();
        Deployment {
            replicas,
            services,
            args,
            _redis: redis,
            _keys: keys,
        }
    })
    .await
    .unwrap()
}

impl Deployment {
    async fn api(&self) -> AuthApi {
        AuthApi::connect(&self.replicas[0].endpoint()).await
    }

    async fn admin(&self) -> PortcullisClient {
        PortcullisClient::connect(self.replicas[0].endpoint())
            .await
            .unwrap()
            .with_timeout(Duration::from_secs(5))
            .with_admin_token(ADMIN_TOKEN)
            .unwrap()
    }

    /// Sets a runtime limit of `rate` per minute and reads it back through every replica,
    /// which applies it there at once (otherwise within `policy_refresh`), so no request
    /// meets the old limit.
    async fn set_limit(&self, tenant: &str, resource: &str, rate: u64) {
        self.admin()
            .await
            .set_tenant_limit(tenant, resource, rate, Duration::from_secs(60), 0)
            .await
            .unwrap();
        for replica in &self.replicas {
            let limit = PortcullisClient::connect(replica.endpoint())
                .await
                .unwrap()
                .with_admin_token(ADMIN_TOKEN)
                .unwrap()
                .get_tenant_limit(tenant, resource)
                .await
                .unwrap();
            assert_eq!(limit.policy.unwrap().rate, rate);
        }
    }

    /// GET `/tenants/<tenant>/hello` from service `i` with `token`.
    async fn hello(&self, i: usize, tenant: &str, token: Option<&str>) -> HttpResponse {
        let authorization = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = authorization
            .as_deref()
            .map(|a| vec![("authorization", a)])
            .unwrap_or_default();
        http_request(
            self.services[i].addr,
            &format!("/tenants/{tenant}/hello"),
            &headers,
        )
        .await
    }
}

/// Calls `probe` until it returns true; panics naming `what` after [`DEADLINE`].
async fn eventually(what: &str, mut probe: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !probe().await {
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn signed_in(api: &AuthApi) -> portcullis_client::pb::LoginResponse {
    let name = unique("u");
    api.create_user(&name, PASSWORD, &[], Some(false)).await;
    api.login(&name, PASSWORD).await.unwrap()
}

/// Both services admit a valid token, and refuse it within a second of a logout made through
/// another replica than the ones they follow. Refusals say why, as RFC 6750 says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_refuse_a_logged_out_token_within_a_second() {
    let d = deploy(3, 2, true).await;
    let api = d.api().await.with_tenant(&unique("t"));
    // The polling below sends many requests: a limit far above them, so only the logout
    // refuses (the default limit would answer 429).
    d.set_limit(&api.tenant, "", 1_000_000).await;
    let login = signed_in(&api).await;
    let token = login.access_token.as_str();
    for i in 0..2 {
        eventually("the service admits the token", async || {
            d.hello(i, &api.tenant, Some(token)).await.status == 200
        })
        .await;
    }
    let body = d.hello(0, &api.tenant, Some(token)).await.body;
    assert!(body.contains(&login.user_id), "{body}");

    // Refusals before the logout: no token, a forged one, another tenant's path.
    let none = d.hello(0, &api.tenant, None).await;
    assert_eq!(none.status, 401);
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let forged = d.hello(0, &api.tenant, Some("eyJ.forged.token")).await;
    assert_eq!(forged.status, 401);
    assert_eq!(
        forged.header("www-authenticate"),
        Some("Bearer error=\"invalid_token\"")
    );
    assert_eq!(d.hello(1, "another-tenant", Some(token)).await.status, 401);

    // A first-login token carries only `password:change`: 403 insufficient_scope.
    let first = unique("first");
    api.create_user(&first, PASSWORD, &[], Some(true)).await;
    let first_login = api.login(&first, PASSWORD).await.unwrap();
    let refused = d
        .hello(0, &api.tenant, Some(&first_login.access_token))
        .await;
    assert_eq!(refused.status, 403);
    assert!(
        refused
            .header("www-authenticate")
            .is_some_and(|c| c.contains("insufficient_scope")),
        "{refused:?}"
    );

    // Logged out through replica 2, which neither service follows.
    let third = AuthApi::connect(&d.replicas[2].endpoint()).await;
    third.logout("", token).await.unwrap();
    let logged_out = Instant::now();
    for i in 0..2 {
        loop {
            let r = d.hello(i, &api.tenant, Some(token)).await;
            if r.status == 401 {
                break;
            }
            assert_eq!(r.status, 200);
            assert!(
                logged_out.elapsed() < Duration::from_secs(1),
                "service {i} still admits the token a second after the logout"
            );
        }
    }
}

/// A limit of N per minute per user, enforced by both services together: exactly N
/// admitted in all (not N per service), the rest refused with 429 and the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_across_two_services_admits_exactly_n() {
    const N: u64 = 7;
    let d = deploy(2, 2, false).await;
    let api = d.api().await.with_tenant(&unique("t"));
    d.set_limit(&api.tenant, "hello", N).await;
    let login = signed_in(&api).await;
    let token = login.access_token.as_str();
    // Wait until both services verify locally (the limit has not been touched: a refused
    // token costs no unit, but an admitted probe would, so probe with another user).
    let probe_user = signed_in(&api).await;
    for i in 0..2 {
        eventually("the service admits tokens", async || {
            d.hello(i, &api.tenant, Some(&probe_user.access_token))
                .await
                .status
                == 200
        })
        .await;
    }
    let calls = (0..30).map(|n| d.hello(n % 2, &api.tenant, Some(token)));
    let responses = join_all(calls).await;
    let admitted = responses.iter().filter(|r| r.status == 200).count();
    assert_eq!(admitted as u64, N, "exactly N across both services");
    let denied: Vec<_> = responses.iter().filter(|r| r.status != 200).collect();
    for r in &denied {
        assert_eq!(r.status, 429, "{r:?}");
        assert!(r.header("retry-after").is_some(), "{r:?}");
    }
    // Each service refused some and at least one carries the server's headers (the others
    // may come from the local deny cache, which only knows Retry-After).
    assert!(
        denied
            .iter()
            .any(|r| r.header("ratelimit-policy").is_some()),
        "{denied:?}"
    );
}

/// Three replicas behind one service: one killed, requests keep being served with no error
/// beyond those in flight; all killed, the closed fail mode answers 503 within the deadline
/// and never admits a request it cannot check; one brought back on its address, service
/// resumes without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_dying_and_returning() {
    let mut d = deploy(3, 1, false).await;
    let api = d.api().await.with_tenant(&unique("t"));
    // Limits far above what this test sends: any refusal below is a failure, not a limit.
    d.set_limit(&api.tenant, "", 1_000_000).await;
    let login = signed_in(&api).await;
    let token = login.access_token.as_str();
    eventually("the service admits the token", async || {
        d.hello(0, &api.tenant, Some(token)).await.status == 200
    })
    .await;

    // One replica killed (not the one `api` talks to).
    drop(d.replicas.pop());
    let mut failed = Vec::new();
    for i in 0..100 {
        let r = d.hello(0, &api.tenant, Some(token)).await;
        if r.status != 200 {
            failed.push((i, r.status, r.body));
        }
    }
    // The requests in flight when it died may fail; sequential requests leave at most one.
    assert!(
        failed.len() <= 1,
        "{} of 100 requests failed with two replicas left: {failed:?}",
        failed.len()
    );

    // Every replica killed.
    let addr = d.replicas[0].addr();
    d.replicas.clear();
    let killed = Instant::now();
    loop {
        let r = d.hello(0, &api.tenant, Some(token)).await;
        // The token may still verify locally for a while, but its limit cannot be asked,
        // and the closed fail mode refuses: no answer from now on may be an admission.
        assert_ne!(r.status, 200, "admitted with no Portcullis to check it");
        if r.status == 503 {
            break;
        }
        assert!(killed.elapsed() < DEADLINE, "{r:?}");
    }

    // One back on its address (the same Redis keeps the session): served again.
    let args: Vec<&str> = d.args.iter().map(String::as_str).collect();
    let back =
        tokio::task::block_in_place(|| PortcullisProcess::spawn_at(addr, &args, &REPLICA_ENV));
    d.replicas.push(back);
    eventually("service resumes", async || {
        d.hello(0, &api.tenant, Some(token)).await.status == 200
    })
    .await;
    assert!(
        !d.services[0].log().contains("panicked"),
        "{}",
        d.services[0].log()
    );
}

/// The same layers in front of a tonic service answer gRPC callers with gRPC statuses:
/// `UNAUTHENTICATED` without a valid token, `PERMISSION_DENIED` for a first-login token,
/// `RESOURCE_EXHAUSTED` with `RetryInfo` past the limit, and the call itself otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_callers_get_grpc_statuses() {
    use portcullis_client::layers::{
        AuthLayer, FailMode, LimitItem, LimitRequest, RateLimitLayer, RateLimiter,
    };
    use portcullis_client::verify::Principal;
    use portcullis_tests::server::{Backend, TestServer};
    use tonic::Code;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_types::StatusExt;

    let keys = tempfile::tempdir().unwrap();
    generate_ed25519(keys.path(), "ed-1");
    let key_set = keys.path().join("keys.toml");
    replace_file(&key_set, &key_entry("ed-1", "EdDSA", "active"));
    let portcullis = TestServer::start_with_env(
        Backend::Memory,
        &["--jwt-key-set", key_set.to_str().unwrap()],
        &[("PORTCULLIS_WATCH_TOKEN", WATCH_TOKEN)],
    )
    .await;
    let api = AuthApi::connect(&format!("http://{}", portcullis.addr)).await;
    portcullis
        .client
        .set_tenant_limit(
            &api.tenant,
            "/grpc.health.v1.Health/Check",
            2,
            Duration::from_secs(3600),
            0,
        )
        .await
        .unwrap();
    let handle = portcullis_client::Portcullis::builder()
        .endpoints([format!("http://{}", portcullis.addr)])
        .watch_token(WATCH_TOKEN)
        .build()
        .unwrap();
    let verifier = handle.verifier().build();
    let layers = tower::ServiceBuilder::new()
        .layer(AuthLayer::new(verifier).require_scopes(&["api"]))
        .layer(RateLimitLayer::new(
            RateLimiter::new(handle, FailMode::Closed),
            |request| {
                let user = request.extensions.get::<Principal>()?;
                Some(LimitRequest {
                    tenant: user.tenant_id.clone(),
                    items: vec![LimitItem {
                        resource: request.uri.path().into(),
                        key: user.user_id.clone(),
                        cost: 1,
                    }],
                })
            },
        ));
    let (_, health) = tonic_health::server::health_reporter();
    let incoming =
        tonic::transport::server::TcpIncoming::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = incoming.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(layers)
            .add_service(health)
            .serve_with_incoming(incoming),
    );
    let service = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    let call = async |token: Option<&str>| {
        let mut request = tonic::Request::new(HealthCheckRequest::default());
        if let Some(token) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        HealthClient::new(service.clone()).check(request).await
    };

    assert_eq!(call(None).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        call(Some("not.a.token")).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let first = unique("first");
    api.create_user(&first, PASSWORD, &[], Some(true)).await;
    let first_login = api.login(&first, PASSWORD).await.unwrap();
    assert_eq!(
        call(Some(&first_login.access_token))
            .await
            .unwrap_err()
            .code(),
        Code::PermissionDenied
    );
    let login = signed_in(&api).await;
    eventually("the token is admitted", async || {
        call(Some(&login.access_token)).await.is_ok()
    })
    .await;
    assert!(call(Some(&login.access_token)).await.is_ok());
    let limited = call(Some(&login.access_token)).await.unwrap_err();
    assert_eq!(limited.code(), Code::ResourceExhausted);
    let retry = limited.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.is_some_and(|d| d > Duration::ZERO));
}
