//! The client's local verifier against real servers: a logout through another replica refused
//! locally within a second, a key rotation followed without a restart, the fallback to the
//! server while the stream is cut and the return to local verification, the HS256 opt-in, and
//! the remote mode.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::path::Path;
use std::time::{Duration, Instant};

use portcullis_client::verify::{Demands, Mode, TokenProblem, Verifier, VerifyError};
use portcullis_tests::auth::AuthApi;
use portcullis_tests::harness::StallProxy;
use portcullis_tests::key_files::{generate_ed25519, key_entry, kid_of, replace_file};
use portcullis_tests::server::{Backend, JWT_SECRET, TestServer, unique};
use tonic::transport::{Channel, Endpoint};

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42!";
const WATCH_TOKEN: &str = "watch-token-5e7d1c3b9a2f";
/// The longest a test waits for the verifier to catch up; it only keeps a broken verifier from
/// hanging the suite.
const DEADLINE: Duration = Duration::from_secs(10);

/// A key-set file with one active EdDSA key `ed-1`, polled every 100 ms.
fn eddsa_keys(dir: &Path) -> Vec<String> {
    generate_ed25519(dir, "ed-1");
    let key_set = dir.join("keys.toml");
    replace_file(&key_set, &key_entry("ed-1", "EdDSA", "active"));
    let config = dir.join("portcullis.toml");
    std::fs::write(&config, "[auth]\nkey_set_poll = \"100ms\"\n").unwrap();
    vec![
        "--jwt-key-set".into(),
        key_set.to_str().unwrap().into(),
        "--config".into(),
        config.to_str().unwrap().into(),
    ]
}

async fn server(backend: Backend, args: &[String], env: &[(&str, &str)]) -> TestServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut vars = vec![("PORTCULLIS_WATCH_TOKEN", WATCH_TOKEN)];
    vars.extend_from_slice(env);
    TestServer::start_with_env(backend, &args, &vars).await
}

fn channel(endpoint: &str) -> Channel {
    Endpoint::from_shared(endpoint.to_owned())
        .unwrap()
        .connect_lazy()
}

/// Waits until `verifier` has a current view (heard a key set and a heartbeat).
async fn until_current(verifier: &Verifier) {
    let started = Instant::now();
    while !verifier.is_current() {
        assert!(
            started.elapsed() < DEADLINE,
            "the verifier never became current"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn signed_in(api: &AuthApi) -> portcullis_client::pb::LoginResponse {
    let name = unique("u");
    api.create_user(&name, PASSWORD, &["reader"], Some(false))
        .await;
    api.login(&name, PASSWORD).await.unwrap()
}

/// Two replicas on one Redis: the verifier follows replica B; a logout through replica A is
/// refused by the verifier, locally, within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_through_another_replica_is_refused_locally_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let args = eddsa_keys(dir.path());
    let a = server(Backend::Redis, &args, &[]).await;
    let b = server(Backend::Redis, &args, &[]).await;
    let api = AuthApi::connect(&format!("http://{}", a.addr)).await;
    let verifier = Verifier::builder(channel(&format!("http://{}", b.addr)))
        .watch_token(WATCH_TOKEN)
        .build();
    until_current(&verifier).await;

    let login = signed_in(&api).await;
    let demands = Demands {
        tenant: Some(&api.tenant),
        roles: &["reader"],
        ..Demands::default()
    };
    let principal = verifier
        .verify(&login.access_token, &demands)
        .await
        .unwrap();
    assert_eq!(principal.session_id, login.session_id);
    assert_eq!(principal.key_id, "ed-1");
    // Demands are checked locally as the server checks them.
    let other_tenant = Demands {
        tenant: Some("someone-else"),
        ..Demands::default()
    };
    assert_eq!(
        verifier.verify(&login.access_token, &other_tenant).await,
        Err(VerifyError::WrongTenant)
    );
    let admin = Demands {
        roles: &["admin"],
        ..Demands::default()
    };
    assert_eq!(
        verifier.verify(&login.access_token, &admin).await,
        Err(VerifyError::InsufficientRole)
    );

    api.logout("", &login.access_token).await.unwrap();
    let logged_out = Instant::now();
    loop {
        match verifier.verify(&login.access_token, &demands).await {
            Err(VerifyError::SessionEnded) => break,
            Ok(_) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(
            logged_out.elapsed() < Duration::from_secs(1),
            "the revoked token still verified after a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(verifier.is_current(), "refused locally, not by a fallback");
}

/// A new active key with the old one removed: tokens of the old key are refused, tokens of
/// the new one verify, without restarting anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_is_followed_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let args = eddsa_keys(dir.path());
    let s = server(Backend::Memory, &args, &[]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let verifier = Verifier::builder(channel(&format!("http://{}", s.addr)))
        .watch_token(WATCH_TOKEN)
        .build();
    until_current(&verifier).await;
    let old = signed_in(&api).await.access_token;
    assert!(verifier.verify(&old, &Demands::default()).await.is_ok());

    generate_ed25519(dir.path(), "ed-2");
    replace_file(
        &dir.path().join("keys.toml"),
        &key_entry("ed-2", "EdDSA", "active"),
    );
    let started = Instant::now();
    loop {
        match verifier.verify(&old, &Demands::default()).await {
            Err(VerifyError::Invalid(TokenProblem::UnknownKey)) => break,
            Ok(_) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the old key is still accepted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let new = signed_in(&api).await.access_token;
    assert_eq!(kid_of(&new), "ed-2");
    assert_eq!(
        verifier
            .verify(&new, &Demands::default())
            .await
            .unwrap()
            .key_id,
        "ed-2"
    );
}

/// The stream cut (every byte to the server stalled): within the staleness bound tokens still
/// verify locally; past it the verifier stops trusting its view and asks the server (which it
/// cannot reach: unavailable); once the network is back it is current and local again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_falls_back_to_the_server_then_returns_to_local() {
    let dir = tempfile::tempdir().unwrap();
    let args = eddsa_keys(dir.path());
    let s = server(Backend::Memory, &args, &[]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let proxy = StallProxy::start(s.addr).await;
    let bound = Duration::from_secs(2);
    let verifier = Verifier::builder(channel(&proxy.endpoint()))
        .watch_token(WATCH_TOKEN)
        .staleness_bound(bound)
        .rpc_timeout(Duration::from_millis(300))
        .build();
    until_current(&verifier).await;
    let token = signed_in(&api).await.access_token;

    proxy.stall();
    let stalled = Instant::now();
    // Within the bound: local, though the server cannot be reached.
    assert!(verifier.verify(&token, &Demands::default()).await.is_ok());
    assert!(
        stalled.elapsed() < bound,
        "the check above ran within the bound"
    );
    // Past the bound: no longer current, and the fallback cannot reach the server.
    tokio::time::sleep(bound + Duration::from_millis(200)).await;
    assert!(!verifier.is_current());
    assert!(matches!(
        verifier.verify(&token, &Demands::default()).await,
        Err(VerifyError::Unavailable(_))
    ));
    proxy.resume();
    until_current(&verifier).await;
    proxy.stall();
    assert!(
        verifier.verify(&token, &Demands::default()).await.is_ok(),
        "local again"
    );
    proxy.resume();
}

/// Against a server signing with a shared HS256 secret, the key set holds no key: a verifier
/// that does not hold the secret asks the server (local-else-remote), one given the secret
/// verifies locally (it still does with the server cut off).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hs256_is_verified_locally_only_by_explicit_opt_in() {
    let s = server(Backend::Memory, &[], &[("JWT_SECRET_KEY", JWT_SECRET)]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let proxy = StallProxy::start(s.addr).await;
    let token = signed_in(&api).await.access_token;

    let without = Verifier::builder(channel(&proxy.endpoint()))
        .watch_token(WATCH_TOKEN)
        .mode(Mode::LocalElseRemote)
        .build();
    until_current(&without).await;
    assert!(without.verify(&token, &Demands::default()).await.is_ok());

    let with = Verifier::builder(channel(&proxy.endpoint()))
        .watch_token(WATCH_TOKEN)
        .shared_hs256_secret(JWT_SECRET)
        .build();
    until_current(&with).await;
    proxy.stall();
    assert!(
        with.verify(&token, &Demands::default()).await.is_ok(),
        "verified with the shared secret, without the server"
    );
    assert!(matches!(
        without.verify(&token, &Demands::default()).await,
        Err(VerifyError::Unavailable(_))
    ));
    proxy.resume();
}

/// Remote mode asks the server every time unless it may cache; with a cache a logout is seen
/// only when the entry expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_mode_asks_the_server_and_caches_only_when_told() {
    let s = server(Backend::Memory, &[], &[("JWT_SECRET_KEY", JWT_SECRET)]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let endpoint = format!("http://{}", s.addr);
    let plain = Verifier::builder(channel(&endpoint))
        .mode(Mode::Remote { cache_for: None })
        .build();
    let cached = Verifier::builder(channel(&endpoint))
        .mode(Mode::Remote {
            cache_for: Some(Duration::from_secs(3600)),
        })
        .build();
    let login = signed_in(&api).await;
    let token = &login.access_token;
    assert!(plain.verify(token, &Demands::default()).await.is_ok());
    assert!(cached.verify(token, &Demands::default()).await.is_ok());
    api.logout("", token).await.unwrap();
    let started = Instant::now();
    while plain.verify(token, &Demands::default()).await.is_ok() {
        assert!(started.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        plain.verify(token, &Demands::default()).await,
        Err(VerifyError::SessionEnded)
    );
    assert!(
        cached.verify(token, &Demands::default()).await.is_ok(),
        "the cached answer stands until it expires"
    );
    assert!(matches!(
        plain.verify("not.a.token", &Demands::default()).await,
        Err(VerifyError::Invalid(_))
    ));
}
