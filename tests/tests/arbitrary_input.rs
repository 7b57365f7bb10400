//! Arbitrary field values sent to every RPC of every service through a real server: whatever
//! a client sends, the answer is OK or an error the API documents for client mistakes, never
//! `INTERNAL`, `UNKNOWN` or a hang. (Before: `ListAuditEvents` with `after_id = "abc"` answered
//! `INTERNAL` on both stores.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use portcullis_client::{envoy, pb};
use portcullis_tests::server::{ADMIN_TOKEN, Backend, TestServer};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use tonic::Code;

/// Cases per service; each case calls every RPC of the service once.
const CASES: u32 = 48;
/// Longest a call may take before it counts as a hang.
const CALL_LIMIT: Duration = Duration::from_secs(10);

/// Answers a client can get for its own input. Anything else (`INTERNAL`, `UNKNOWN`,
/// `DATA_LOSS`, `UNIMPLEMENTED`, `UNAVAILABLE` from a store that is up) is a defect.
const CLIENT_CODES: &[Code] = &[
    Code::Ok,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::FailedPrecondition,
    Code::ResourceExhausted,
    Code::OutOfRange,
];

/// A string field's value: empty, id-like, arbitrary Unicode, the characters keys and globs
/// give meaning to, stream-id-like numbers, or longer than any bound.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9]{1,12}",
        any::<String>().prop_map(|s| s.chars().take(300).collect()),
        "[\\x00-\\x1f%{}:=/*?\\[\\]\\\\ \\u{202e}\\u{ff41}]{0,40}",
        "[0-9]{1,25}(-[0-9]{0,25})?",
        prop_oneof![Just(257usize), Just(4097), Just(70_000)].prop_map(|n| "x".repeat(n)),
    ]
}

/// A duration field: absent, or any seconds and nanos.
fn duration() -> impl Strategy<Value = Option<prost_types::Duration>> {
    prop_oneof![
        Just(None),
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
        (0i64..100_000, 0i32..1_000_000_000)
            .prop_map(|(seconds, nanos)| Some(prost_types::Duration { seconds, nanos })),
    ]
}

/// A number field: small, at a bound, or anything.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..10,
        Just(u64::MAX),
        Just(u64::from(u32::MAX)),
        any::<u64>()
    ]
}

/// The values one case draws; every RPC takes its fields from them.
#[derive(Debug, Clone)]
struct Fields {
    a: String,
    b: String,
    c: String,
    d: String,
    list: Vec<String>,
    n: u64,
    m: u64,
    period: Option<prost_types::Duration>,
    flag: Option<bool>,
}

fn fields() -> impl Strategy<Value = Fields> {
    (
        (text(), text(), text(), text()),
        prop::collection::vec(text(), 0..4),
        (number(), number()),
        duration(),
        prop::option::of(any::<bool>()),
    )
        .prop_map(|((a, b, c, d), list, (n, m), period, flag)| Fields {
            a,
            b,
            c,
            d,
            list,
            n,
            m,
            period,
            flag,
        })
}

/// A memory server whose logins are cheap and not throttled, so every case reaches the code
/// under test rather than a throttle.
async fn server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        "[auth]\nlogin_limit_per_ip = \"1000000/1m\"\nlogin_limit_per_tenant = \"1000000/1m\"\n\
         login_limit_per_ip_all_tenants = \"1000000/1m\"\n\
         [auth.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n\
         permits_per_client_ip = 64\n",
    )
    .unwrap();
    let s = TestServer::start(Backend::Memory, &["--config", path.to_str().unwrap()]).await;
    (s, dir)
}

fn admin<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {ADMIN_TOKEN}").parse().unwrap(),
    );
    request
}

/// The code of one answer, failing the case on a hang.
async fn code_of<T>(
    rpc: &str,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<(), String> {
    match tokio::time::timeout(CALL_LIMIT, call).await {
        Err(_) => Err(format!("{rpc}: no answer within {CALL_LIMIT:?}")),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(status)) if CLIENT_CODES.contains(&status.code()) => Ok(()),
        Ok(Err(status)) => Err(format!("{rpc}: {:?} {}", status.code(), status.message())),
    }
}

/// Runs `CASES` cases of `body` on a runtime of its own.
fn run_cases<F, Fut>(body: F)
where
    F: Fn(std::sync::Arc<TestServer>, Fields) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, _dir) = runtime.block_on(server());
    let server = std::sync::Arc::new(server);
    let mut runner = TestRunner::new(RunnerConfig {
        cases: CASES,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let result = runner.run(&fields(), |f| {
        runtime
            .block_on(body(server.clone(), f))
            .map_err(TestCaseError::fail)
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn every_auth_rpc_answers_arbitrary_input_as_a_client_error() {
    run_cases(|s, f| async move {
        let mut auth = s.client.auth();
        code_of(
            "Login",
            auth.login(pb::LoginRequest {
                tenant_id: f.a.clone(),
                username: f.b.clone(),
                password: f.c.clone(),
                client_ip: f.d.clone(),
            }),
        )
        .await?;
        code_of(
            "VerifyToken",
            auth.verify_token(pb::VerifyTokenRequest {
                access_token: f.c.clone(),
                tenant_id: f.a.clone(),
                required_scopes: f.list.clone(),
                required_roles: f.list.iter().rev().cloned().collect(),
            }),
        )
        .await?;
        code_of(
            "Refresh",
            auth.refresh(pb::RefreshRequest {
                refresh_token: f.b.clone(),
            }),
        )
        .await?;
        code_of(
            "Logout",
            auth.logout(pb::LogoutRequest {
                refresh_token: f.b.clone(),
                access_token: f.c.clone(),
            }),
        )
        .await?;
        code_of(
            "ChangePassword",
            auth.change_password(pb::ChangePasswordRequest {
                access_token: f.a.clone(),
                current_password: f.b.clone(),
                new_password: f.c.clone(),
            }),
        )
        .await?;
        code_of("GetJwks", auth.get_jwks(pb::GetJwksRequest {})).await
    });
}

#[test]
fn every_rate_limit_rpc_answers_arbitrary_input_as_a_client_error() {
    run_cases(|s, f| async move {
        let mut limits = s.client.rate_limit();
        code_of(
            "Check",
            limits.check(pb::CheckRequest {
                tenant_id: f.a.clone(),
                resource: f.b.clone(),
                key: f.c.clone(),
                cost: f.n as u32,
            }),
        )
        .await?;
        let mut rls = s.client.envoy();
        let entries = |values: &[String]| {
            values
                .iter()
                .map(|v| envoy::common::rate_limit_descriptor::Entry {
                    key: f.d.clone(),
                    value: v.clone(),
                })
                .collect()
        };
        let limit = f.period.map(
            |p| envoy::common::rate_limit_descriptor::RateLimitOverride {
                requests_per_unit: f.m as u32,
                unit: p.nanos,
            },
        );
        code_of(
            "ShouldRateLimit",
            rls.should_rate_limit(envoy::rls::RateLimitRequest {
                domain: f.a.clone(),
                descriptors: vec![envoy::common::RateLimitDescriptor {
                    entries: entries(&f.list),
                    limit,
                    hits_addend: f.flag.map(|_| f.n),
                }],
                hits_addend: f.m as u32,
            }),
        )
        .await
    });
}

#[test]
fn every_admin_rpc_answers_arbitrary_input_as_a_client_error() {
    run_cases(|s, f| async move {
        let mut a = s.client.admin();
        code_of(
            "SetTenantLimit",
            a.set_tenant_limit(admin(pb::SetTenantLimitRequest {
                tenant_id: f.a.clone(),
                resource: f.b.clone(),
                rate: f.n,
                period: f.period,
                burst: f.m,
            })),
        )
        .await?;
        code_of(
            "GetTenantLimit",
            a.get_tenant_limit(admin(pb::GetTenantLimitRequest {
                tenant_id: f.a.clone(),
                resource: f.b.clone(),
            })),
        )
        .await?;
        code_of(
            "DeleteTenantLimit",
            a.delete_tenant_limit(admin(pb::DeleteTenantLimitRequest {
                tenant_id: f.a.clone(),
                resource: f.b.clone(),
            })),
        )
        .await?;
        code_of(
            "ResetCounters",
            a.reset_counters(admin(pb::ResetCountersRequest {
                tenant_id: f.a.clone(),
                resource: f.b.clone(),
                key: f.c.clone(),
            })),
        )
        .await?;
        code_of(
            "CreateUser",
            a.create_user(admin(pb::CreateUserRequest {
                tenant_id: f.a.clone(),
                username: f.b.clone(),
                initial_password: f.c.clone(),
                roles: f.list.clone(),
                must_change_password: f.flag,
            })),
        )
        .await?;
        code_of(
            "GetUser",
            a.get_user(admin(pb::GetUserRequest {
                tenant_id: f.a.clone(),
                user_id: f.c.clone(),
                username: f.b.clone(),
            })),
        )
        .await?;
        code_of(
            "UnlockUser",
            a.unlock_user(admin(pb::UnlockUserRequest {
                tenant_id: f.a.clone(),
                user_id: f.c.clone(),
            })),
        )
        .await?;
        code_of(
            "ExportUserData",
            a.export_user_data(admin(pb::ExportUserDataRequest {
                tenant_id: f.a.clone(),
                user_id: f.c.clone(),
            })),
        )
        .await?;
        code_of(
            "ListSessions",
            a.list_sessions(admin(pb::ListSessionsRequest {
                tenant_id: f.a.clone(),
                user_id: f.c.clone(),
            })),
        )
        .await?;
        code_of(
            "RevokeSessions",
            a.revoke_sessions(admin(pb::RevokeSessionsRequest {
                tenant_id: f.a.clone(),
                user_id: f.c.clone(),
                session_ids: f.list.clone(),
            })),
        )
        .await?;
        code_of(
            "ListAuditEvents",
            a.list_audit_events(admin(pb::ListAuditEventsRequest {
                tenant_id: f.a.clone(),
                limit: f.n as u32,
                after_id: f.d.clone(),
            })),
        )
        .await?;
        code_of(
            "DeleteUser",
            a.delete_user(admin(pb::DeleteUserRequest {
                tenant_id: f.a.clone(),
                user_id: f.c.clone(),
            })),
        )
        .await
    });
}

/// The case the attack found, on every store: a paging cursor that is no event id is the
/// caller's mistake, named.
async fn a_malformed_audit_cursor_is_invalid_argument(backend: Backend) {
    let s = TestServer::start(backend, &[]).await;
    let mut a = s.client.admin();
    for after_id in ["abc", "1-", "-1", "1-2-3", "99999999999999999999-0", "(1-0"] {
        let status = a
            .list_audit_events(admin(pb::ListAuditEventsRequest {
                tenant_id: "acme".into(),
                limit: 10,
                after_id: after_id.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{after_id:?}: {status:?}"
        );
        assert!(status.message().contains("after_id"), "{status:?}");
    }
    // Well-formed cursors of either store's form page normally, the first id to nothing.
    for after_id in [
        "0",
        "0-0",
        "5",
        "1733300000000-0",
        "18446744073709551615-18446744073709551615",
    ] {
        let page = a
            .list_audit_events(admin(pb::ListAuditEventsRequest {
                tenant_id: "acme".into(),
                limit: 10,
                after_id: after_id.into(),
            }))
            .await
            .unwrap_or_else(|e| panic!("{after_id:?}: {e:?}"));
        if after_id.starts_with('0') {
            assert!(page.into_inner().events.is_empty());
        }
    }
}

portcullis_tests::on_every_store!(a_malformed_audit_cursor_is_invalid_argument);
