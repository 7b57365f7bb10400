//! Arbitrary input past the first checks: requests shaped like real ones (real tenant, user,
//! session and audit ids, tokens of the right form with arbitrary parts) with arbitrary field
//! values, to every RPC of a real server on memory and on Redis, get OK or one of the codes
//! that RPC documents, never INTERNAL, UNKNOWN or no answer. (`arbitrary_input.rs` sends
//! arbitrary values alone, which mostly stop at the first check of a field.)

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use portcullis_client::{envoy, pb};
use portcullis_tests::auth::{AuthApi, CLIENT_IP};
use portcullis_tests::server::{Backend, TestServer};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use tonic::{Code, Status};

/// Cases per RPC: enough to reach every kind of odd value, few enough to run in seconds.
const CASES: u32 = 64;
/// Longer than any answer takes; past it the call counts as hung.
const HANG: Duration = Duration::from_secs(10);
/// A password that meets the default policy.
const GOOD: &str = "Vq7#mLx2!pRz9w";

/// Cheap Argon2 (the hashes are not under test) and login limits out of the way, so logins
/// reach the store rather than stop at a throttle.
fn config_file() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        "[auth]\nlogin_limit_per_ip = \"1000000/1m\"\nlogin_limit_per_ip_all_tenants = \"1000000/1m\"\n\
         login_limit_per_tenant = \"1000000/1m\"\n\n\
         [auth.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\npermits_per_client_ip = 64\n",
    )
    .unwrap();
    (dir, path)
}

/// Values a client could have in hand: a real tenant, user, tokens, ids, so the arbitrary
/// values also reach the paths behind the first checks.
#[derive(Debug, Clone)]
struct Known {
    tenant: String,
    user_id: String,
    username: String,
    access_token: String,
    refresh_token: String,
    session_id: String,
    audit_id: String,
}

/// A running server on one store, a client on it, and what is known to exist there.
struct Target {
    /// Drives the calls (the proptest runner is synchronous).
    runtime: tokio::runtime::Runtime,
    /// Kept alive for the test; dropping it stops the server.
    _server: TestServer,
    /// Kept alive for the test: the server reads its config file.
    _config: tempfile::TempDir,
    api: AuthApi,
    known: Known,
}

impl Target {
    fn start(backend: Backend) -> Target {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (config, path) = config_file();
        let (server, api, known) = runtime.block_on(async {
            let server = TestServer::start(backend, &["--config", path.to_str().unwrap()]).await;
            let api = AuthApi::connect(&format!("http://{}", server.addr)).await;
            let user = api
                .create_user("alice", GOOD, &["reader"], Some(false))
                .await;
            let login = api.login("alice", GOOD).await.unwrap();
            let audit_id = api.audit_page(1, "").await.events[0].id.clone();
            let known = Known {
                tenant: api.tenant.clone(),
                user_id: user.user_id,
                username: "alice".to_owned(),
                access_token: login.access_token,
                refresh_token: login.refresh_token,
                session_id: login.session_id,
                audit_id,
            };
            (server, api, known)
        });
        Target {
            runtime,
            _server: server,
            _config: config,
            api,
            known,
        }
    }

    /// Sends `CASES` values of `strategy` through `call`; every answer must be OK or in
    /// `allowed`, and come within [`HANG`].
    fn fuzz<S, F, Fut>(&self, rpc: &str, allowed: &[Code], strategy: S, call: F)
    where
        S: Strategy,
        S::Value: std::fmt::Debug,
        F: Fn(AuthApi, S::Value) -> Fut,
        Fut: Future<Output = Result<(), Status>>,
    {
        let mut runner = TestRunner::new(ProptestConfig {
            cases: CASES,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let outcome = runner.run(&strategy, |value| {
            let call = call(self.api.clone(), value);
            let answer = self
                .runtime
                .block_on(async { tokio::time::timeout(HANG, call).await });
            match answer {
                Err(_) => Err(TestCaseError::fail(format!(
                    "{rpc}: no answer within {HANG:?}"
                ))),
                Ok(Ok(())) => Ok(()),
                Ok(Err(status)) if allowed.contains(&status.code()) => Ok(()),
                Ok(Err(status)) => Err(TestCaseError::fail(format!(
                    "{rpc} answered {:?}: {}",
                    status.code(),
                    status.message()
                ))),
            }
        });
        if let Err(e) = outcome {
            panic!("{e}");
        }
    }
}

/// Text as a client may send it: empty, plain, any Unicode, the characters that structure
/// store keys, control characters, numbers past 64 bits, very long, or one of `known`.
fn text(known: &[&str]) -> BoxedStrategy<String> {
    let known: Vec<String> = known.iter().map(|s| (*s).to_owned()).collect();
    let odd = prop_oneof![
        Just(String::new()),
        "[a-z0-9]{1,12}",
        any::<String>(),
        "\\PC{0,300}",
        "[{}:%=/\\-.* \\x00\\n\\t\\x7f\u{202e}]{0,24}",
        "[0-9]{1,25}(-[0-9]{1,25})?",
        (257usize..5000).prop_map(|n| "x".repeat(n)),
    ];
    if known.is_empty() {
        odd.boxed()
    } else {
        prop_oneof![1 => prop::sample::select(known), 2 => odd].boxed()
    }
}

/// Numbers at and around the edges, and anything between.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0),
        Just(1),
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        Just(i64::MAX as u64),
        0u64..2000,
        any::<u64>(),
    ]
}

/// Durations a client may send: absent, negative, out-of-range nanos, huge, plain.
fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    let seconds = prop_oneof![
        Just(0i64),
        Just(i64::MAX),
        Just(i64::MIN),
        -10i64..100_000_000,
        any::<i64>()
    ];
    let nanos = prop_oneof![Just(0i32), Just(999_999_999), any::<i32>()];
    prop::option::of(
        (seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Duration { seconds, nanos }),
    )
}

/// A refresh token of the right shape (base64url tenant, session id, secret) around
/// arbitrary parts, or arbitrary text, or the real one.
fn refresh_token(k: &Known) -> BoxedStrategy<String> {
    let shaped = (
        text(&[&k.tenant]),
        text(&[&k.session_id]),
        "[A-Za-z0-9_-]{43,50}",
    )
        .prop_map(|(tenant, sid, secret)| format!("{}.{sid}.{secret}", B64URL.encode(tenant)));
    prop_oneof![shaped, text(&[&k.refresh_token])].boxed()
}

/// A JWT-shaped string with arbitrary parts, arbitrary text, or the real access token.
fn access_token(k: &Known) -> BoxedStrategy<String> {
    let shaped = ("[A-Za-z0-9_-]{0,60}", text(&[]), "[A-Za-z0-9_-]{0,90}")
        .prop_map(|(h, claims, sig)| format!("{h}.{}.{sig}", B64URL.encode(claims)));
    prop_oneof![shaped, text(&[&k.access_token])].boxed()
}

fn ok<T>(answer: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    answer.map(|_| ())
}

const INVALID: Code = Code::InvalidArgument;

fn rate_limit_rpcs(t: &Target) {
    let k = &t.known;
    t.fuzz(
        "Check",
        &[INVALID],
        (
            text(&[&k.tenant]),
            text(&["search"]),
            text(&[]),
            any::<u32>(),
        ),
        |api, (tenant_id, resource, key, cost)| async move {
            let mut client =
                pb::rate_limit_service_client::RateLimitServiceClient::new(api.channel);
            ok(client
                .check(pb::CheckRequest {
                    tenant_id,
                    resource,
                    key,
                    cost,
                })
                .await)
        },
    );
    let entry = (text(&["client", "path"]), text(&[]))
        .prop_map(|(key, value)| envoy::common::rate_limit_descriptor::Entry { key, value });
    let limit = prop::option::of((any::<u32>(), prop_oneof![0i32..8, any::<i32>()]).prop_map(
        |(requests_per_unit, unit)| envoy::common::rate_limit_descriptor::RateLimitOverride {
            requests_per_unit,
            unit,
        },
    ));
    let descriptor = (
        prop::collection::vec(entry, 0..4),
        limit,
        prop::option::of(number()),
    )
        .prop_map(
            |(entries, limit, hits)| envoy::common::RateLimitDescriptor {
                entries,
                limit,
                hits_addend: hits,
            },
        );
    t.fuzz(
        "ShouldRateLimit",
        &[INVALID],
        (
            text(&["suite"]),
            prop::collection::vec(descriptor, 0..4),
            any::<u32>(),
        ),
        |api, (domain, descriptors, hits_addend)| async move {
            let mut client =
                envoy::rls::rate_limit_service_client::RateLimitServiceClient::new(api.channel);
            ok(client
                .should_rate_limit(envoy::rls::RateLimitRequest {
                    domain,
                    descriptors,
                    hits_addend,
                })
                .await)
        },
    );
}

fn auth_rpcs(t: &Target) {
    let k = &t.known;
    // Throttles and the hashing queue answer RESOURCE_EXHAUSTED by design.
    t.fuzz(
        "Login",
        &[INVALID, Code::Unauthenticated, Code::ResourceExhausted],
        (
            text(&[&k.tenant]),
            text(&[&k.username]),
            text(&[GOOD]),
            text(&[CLIENT_IP, "::ffff:10.0.0.1", "2001:db8::1"]),
        ),
        |api, (tenant_id, username, password, client_ip)| async move {
            ok(api
                .auth()
                .login(pb::LoginRequest {
                    tenant_id,
                    username,
                    password,
                    client_ip,
                })
                .await)
        },
    );
    t.fuzz(
        "VerifyToken",
        &[INVALID, Code::Unauthenticated, Code::PermissionDenied],
        (
            access_token(k),
            text(&[&k.tenant]),
            prop::collection::vec(text(&["reader", "password:change"]), 0..3),
        ),
        |api, (access_token, tenant_id, wanted)| async move {
            ok(api
                .auth()
                .verify_token(pb::VerifyTokenRequest {
                    access_token,
                    tenant_id,
                    required_roles: wanted.clone(),
                    required_scopes: wanted,
                })
                .await)
        },
    );
    t.fuzz(
        "Refresh",
        &[INVALID, Code::Unauthenticated],
        refresh_token(k),
        |api, refresh_token| async move {
            ok(api
                .auth()
                .refresh(pb::RefreshRequest { refresh_token })
                .await)
        },
    );
    t.fuzz(
        "Logout",
        &[INVALID, Code::Unauthenticated],
        (refresh_token(k), access_token(k)),
        |api, (refresh_token, access_token)| async move {
            ok(api
                .auth()
                .logout(pb::LogoutRequest {
                    refresh_token,
                    access_token,
                })
                .await)
        },
    );
    t.fuzz(
        "ChangePassword",
        &[
            INVALID,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::ResourceExhausted,
        ],
        (access_token(k), text(&[GOOD]), text(&[])),
        |api, (access_token, current_password, new_password)| async move {
            ok(api
                .auth()
                .change_password(pb::ChangePasswordRequest {
                    access_token,
                    current_password,
                    new_password,
                })
                .await)
        },
    );
    t.fuzz("GetJwks", &[], Just(()), |api, ()| async move {
        ok(api.auth().get_jwks(pb::GetJwksRequest {}).await)
    });
}

fn admin_rpcs(t: &Target) {
    let k = &t.known;
    let tenant = || text(&[&k.tenant]);
    let user = || text(&[&k.user_id]);
    t.fuzz(
        "SetTenantLimit",
        &[INVALID],
        (tenant(), text(&["search"]), number(), duration(), number()),
        |api, (tenant_id, resource, rate, period, burst)| async move {
            let request = api.as_admin(pb::SetTenantLimitRequest {
                tenant_id,
                resource,
                rate,
                period,
                burst,
            });
            ok(api.admin().set_tenant_limit(request).await)
        },
    );
    t.fuzz(
        "GetTenantLimit",
        &[INVALID],
        (tenant(), text(&["search"])),
        |api, (tenant_id, resource)| async move {
            let request = api.as_admin(pb::GetTenantLimitRequest {
                tenant_id,
                resource,
            });
            ok(api.admin().get_tenant_limit(request).await)
        },
    );
    t.fuzz(
        "DeleteTenantLimit",
        &[INVALID],
        (tenant(), text(&["search"])),
        |api, (tenant_id, resource)| async move {
            let request = api.as_admin(pb::DeleteTenantLimitRequest {
                tenant_id,
                resource,
            });
            ok(api.admin().delete_tenant_limit(request).await)
        },
    );
    t.fuzz(
        "CreateUser",
        &[INVALID, Code::AlreadyExists],
        (
            tenant(),
            text(&[&k.username]),
            text(&[GOOD]),
            prop::collection::vec(text(&["reader"]), 0..3),
            prop::option::of(any::<bool>()),
        ),
        |api, (tenant_id, username, initial_password, roles, must_change_password)| async move {
            let request = api.as_admin(pb::CreateUserRequest {
                tenant_id,
                username,
                initial_password,
                roles,
                must_change_password,
            });
            ok(api.admin().create_user(request).await)
        },
    );
    t.fuzz(
        "GetUser",
        &[INVALID, Code::NotFound],
        (tenant(), user(), text(&[&k.username])),
        |api, (tenant_id, user_id, username)| async move {
            let request = api.as_admin(pb::GetUserRequest {
                tenant_id,
                user_id,
                username,
            });
            ok(api.admin().get_user(request).await)
        },
    );
    t.fuzz(
        "UnlockUser",
        &[INVALID, Code::NotFound],
        (tenant(), user()),
        |api, (tenant_id, user_id)| async move {
            let request = api.as_admin(pb::UnlockUserRequest { tenant_id, user_id });
            ok(api.admin().unlock_user(request).await)
        },
    );
    t.fuzz(
        "ExportUserData",
        &[INVALID, Code::NotFound],
        (tenant(), user()),
        |api, (tenant_id, user_id)| async move {
            let request = api.as_admin(pb::ExportUserDataRequest { tenant_id, user_id });
            ok(api.admin().export_user_data(request).await)
        },
    );
    t.fuzz(
        "ListSessions",
        &[INVALID, Code::NotFound],
        (tenant(), user()),
        |api, (tenant_id, user_id)| async move {
            let request = api.as_admin(pb::ListSessionsRequest { tenant_id, user_id });
            ok(api.admin().list_sessions(request).await)
        },
    );
    t.fuzz(
        "RevokeSessions",
        &[INVALID, Code::NotFound],
        (
            tenant(),
            user(),
            prop::collection::vec(text(&[&k.session_id]), 0..4),
        ),
        |api, (tenant_id, user_id, session_ids)| async move {
            let request = api.as_admin(pb::RevokeSessionsRequest {
                tenant_id,
                user_id,
                session_ids,
            });
            ok(api.admin().revoke_sessions(request).await)
        },
    );
    t.fuzz(
        "ListAuditEvents",
        &[INVALID],
        (
            tenant(),
            any::<u32>(),
            text(&[
                &k.audit_id,
                "0-0",
                "0",
                "18446744073709551615-18446744073709551615",
            ]),
        ),
        |api, (tenant_id, limit, after_id)| async move {
            let request = api.as_admin(pb::ListAuditEventsRequest {
                tenant_id,
                limit,
                after_id,
            });
            ok(api.admin().list_audit_events(request).await)
        },
    );
    // Last: it removes the user the other calls use.
    t.fuzz(
        "DeleteUser",
        &[INVALID],
        (tenant(), user()),
        |api, (tenant_id, user_id)| async move {
            let request = api.as_admin(pb::DeleteUserRequest { tenant_id, user_id });
            ok(api.admin().delete_user(request).await)
        },
    );
}

fn every_rpc_answers_client_input_with_a_documented_code(backend: Backend) {
    let target = Target::start(backend);
    rate_limit_rpcs(&target);
    auth_rpcs(&target);
    admin_rpcs(&target);
}

mod arbitrary_input {
    use super::*;

    #[test]
    fn memory() {
        every_rpc_answers_client_input_with_a_documented_code(Backend::Memory);
    }

    #[test]
    fn redis() {
        every_rpc_answers_client_input_with_a_documented_code(Backend::Redis);
    }
}
