//! `WatchSecurityEvents` through real servers: who may watch, the key set and snapshot a stream
//! starts with, revocations made through any replica, resuming from a cursor, key rotation,
//! a stream outliving the idle timeout, and streams ending at shutdown.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::time::Duration;

use portcullis_client::pb;
use portcullis_client::pb::security_event::Event;
use portcullis_tests::auth::{AuthApi, admin_request, reason};
use portcullis_tests::key_files::{generate_ed25519, key_entry, kid_of, replace_file};
use portcullis_tests::server::{ADMIN_TOKEN, Backend, JWT_SECRET, TestServer, unique};
use tonic::Code;
use tonic::Streaming;

const PASSWORD: &str = "Correct-Horse-Battery-Staple-42!";
const WATCH_TOKEN: &str = "watch-token-5e7d1c3b9a2f";
/// The longest a test waits for an event that must come; it only keeps a broken server from
/// hanging the suite (heartbeats come every 500 ms, revocations within a poll of 250 ms).
const EVENT_DEADLINE: Duration = Duration::from_secs(10);

async fn server(backend: Backend, args: &[&str]) -> TestServer {
    TestServer::start_with_env(
        backend,
        args,
        &[
            ("JWT_SECRET_KEY", JWT_SECRET),
            ("PORTCULLIS_WATCH_TOKEN", WATCH_TOKEN),
        ],
    )
    .await
}

async fn watch(
    api: &AuthApi,
    token: &str,
    cursor: &str,
) -> Result<Streaming<pb::SecurityEvent>, tonic::Status> {
    let request = admin_request(
        pb::WatchSecurityEventsRequest {
            cursor: cursor.to_owned(),
        },
        token,
    );
    Ok(api
        .auth()
        .watch_security_events(request)
        .await?
        .into_inner())
}

/// The next event, failing the test if none comes within [`EVENT_DEADLINE`].
async fn next(stream: &mut Streaming<pb::SecurityEvent>) -> Event {
    tokio::time::timeout(EVENT_DEADLINE, stream.message())
        .await
        .expect("an event within the deadline")
        .expect("the stream is healthy")
        .expect("the stream is open")
        .event
        .expect("an event is set")
}

/// Reads events until one satisfies `want`, returning it (every event read is also passed
/// to `seen`).
async fn until<T>(
    stream: &mut Streaming<pb::SecurityEvent>,
    mut want: impl FnMut(&Event) -> Option<T>,
) -> T {
    let deadline = tokio::time::Instant::now() + EVENT_DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no such event came");
        if let Some(found) = want(&next(stream).await) {
            return found;
        }
    }
}

fn revoked_ids(event: &Event) -> Vec<String> {
    match event {
        Event::Revoked(r) => r.sessions.iter().map(|s| s.session_id.clone()).collect(),
        _ => Vec::new(),
    }
}

/// Logs a fresh user in and returns its login.
async fn signed_in(api: &AuthApi) -> pb::LoginResponse {
    let name = unique("u");
    api.create_user(&name, PASSWORD, &[], Some(false)).await;
    api.login(&name, PASSWORD).await.unwrap()
}

/// Only a service credential opens the stream; each refusal says so.
async fn watching_needs_the_watch_or_admin_token(backend: Backend) {
    let s = server(backend, &[]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    for token in [WATCH_TOKEN, ADMIN_TOKEN] {
        let mut stream = watch(&api, token, "").await.unwrap();
        assert!(matches!(next(&mut stream).await, Event::Keys(_)));
    }
    for token in ["", "not-the-token-0123456789"] {
        let status = watch(&api, token, "").await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(
            status.message().contains("security event stream"),
            "{status:?}"
        );
    }
    // The other AuthService calls still need no token.
    assert!(api.auth().get_jwks(pb::GetJwksRequest {}).await.is_ok());
    let long = "9".repeat(300);
    let status = watch(&api, WATCH_TOKEN, &long).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// A stream starts with the key set (issuer, audience, max age), then a snapshot holding a
/// session revoked before it started, then a heartbeat; a logout afterwards arrives as a
/// revocation, and a stream resumed from a heartbeat's cursor gets what came after it
/// without a snapshot.
async fn a_stream_starts_with_keys_and_a_snapshot_then_carries_revocations(backend: Backend) {
    let s = server(backend, &[]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let before = signed_in(&api).await;
    api.logout("", &before.access_token).await.unwrap();
    // The feed is read every 250 ms: wait until this replica has read the logout.
    let revoked = async || api.verify(&before.access_token).await.is_err();
    for _ in 0..100 {
        if revoked().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let mut stream = watch(&api, WATCH_TOKEN, "").await.unwrap();
    let Event::Keys(keys) = next(&mut stream).await else {
        panic!("the stream starts with the key set");
    };
    let jwks = keys.jwks.unwrap();
    assert_eq!(jwks.issuer, "portcullis");
    assert_eq!(jwks.audience, "portcullis");
    assert!(jwks.max_age.unwrap().seconds > 0);
    assert!(
        !jwks.jwks_json.contains(JWT_SECRET),
        "the HS256 secret is never published"
    );
    let mut snapshot = Vec::new();
    let cursor = loop {
        match next(&mut stream).await {
            Event::Revoked(r) => {
                assert!(r.snapshot, "the first revocations are the snapshot");
                snapshot.extend(r.sessions.iter().map(|s| s.session_id.clone()));
            }
            Event::Heartbeat(h) => break h.cursor,
            Event::Keys(_) => panic!("one key set at the start"),
        }
    };
    assert!(snapshot.contains(&before.session_id), "{snapshot:?}");

    let after = signed_in(&api).await;
    api.logout(&after.refresh_token, "").await.unwrap();
    let live = until(&mut stream, |e| match e {
        Event::Revoked(r) => Some(r.clone()),
        _ => None,
    })
    .await;
    assert!(!live.snapshot);
    assert_eq!(
        revoked_ids(&Event::Revoked(live.clone())),
        std::slice::from_ref(&after.session_id)
    );
    let session = &live.sessions[0];
    assert_eq!(session.tenant_id, api.tenant);
    assert!(session.until.unwrap().seconds > 0);

    // Resumed from the cursor before that logout: the logout, and no snapshot.
    let mut resumed = watch(&api, WATCH_TOKEN, &cursor).await.unwrap();
    assert!(matches!(next(&mut resumed).await, Event::Keys(_)));
    let first = next(&mut resumed).await;
    let Event::Revoked(r) = &first else {
        panic!("the revocation after the cursor comes next, got {first:?}");
    };
    assert!(!r.snapshot);
    assert!(revoked_ids(&first).contains(&after.session_id));
    assert!(!revoked_ids(&first).contains(&before.session_id));
}

/// Two replicas on one Redis: a logout through one reaches a subscriber of the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_through_one_replica_reaches_the_watchers_of_another() {
    let a = server(Backend::Redis, &[]).await;
    let b = server(Backend::Redis, &[]).await;
    let api_a = AuthApi::connect(&format!("http://{}", a.addr)).await;
    let api_b = AuthApi::connect(&format!("http://{}", b.addr))
        .await
        .with_tenant(&api_a.tenant);
    let login = signed_in(&api_a).await;
    let mut stream = watch(&api_b, WATCH_TOKEN, "").await.unwrap();
    api_a.logout("", &login.access_token).await.unwrap();
    until(&mut stream, |e| {
        revoked_ids(e).contains(&login.session_id).then_some(())
    })
    .await;
}

/// A new active EdDSA key in the key-set file reaches subscribers as a new key set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_rotation_reaches_subscribers() {
    let dir = tempfile::tempdir().unwrap();
    generate_ed25519(dir.path(), "ed-1");
    generate_ed25519(dir.path(), "ed-2");
    let key_set = dir.path().join("keys.toml");
    replace_file(&key_set, &key_entry("ed-1", "EdDSA", "active"));
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "[auth]\nkey_set_poll = \"100ms\"\n").unwrap();
    let s = TestServer::start_with_env(
        Backend::Memory,
        &[
            "--jwt-key-set",
            key_set.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
        &[("PORTCULLIS_WATCH_TOKEN", WATCH_TOKEN)],
    )
    .await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let mut stream = watch(&api, WATCH_TOKEN, "").await.unwrap();
    let Event::Keys(first) = next(&mut stream).await else {
        panic!("keys first");
    };
    let first = first.jwks.unwrap().jwks_json;
    assert!(first.contains("ed-1") && !first.contains("ed-2"), "{first}");

    replace_file(
        &key_set,
        &(key_entry("ed-2", "EdDSA", "active") + &key_entry("ed-1", "EdDSA", "verify")),
    );
    let changed = until(&mut stream, |e| match e {
        Event::Keys(k) => Some(k.jwks.clone().unwrap().jwks_json),
        _ => None,
    })
    .await;
    assert!(
        changed.contains("ed-2") && changed.contains("ed-1"),
        "{changed}"
    );
    let login = signed_in(&api).await;
    assert_eq!(kid_of(&login.access_token), "ed-2");
}

/// A stream is a call in flight: it outlives the idle timeout, with heartbeats all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_its_connection_past_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "[transport]\nidle_timeout = \"1s\"\n").unwrap();
    let s = server(Backend::Memory, &["--config", config.to_str().unwrap()]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let mut stream = watch(&api, WATCH_TOKEN, "").await.unwrap();
    let started = tokio::time::Instant::now();
    let mut heartbeats = 0;
    while started.elapsed() < Duration::from_secs(3) {
        if let Event::Heartbeat(h) = next(&mut stream).await {
            assert_eq!(h.heartbeat_interval.unwrap().nanos, 500_000_000);
            heartbeats += 1;
        }
    }
    assert!(heartbeats >= 3, "{heartbeats} heartbeats in 3 s");
}

/// Shutting a replica down ends its streams at once, so they do not hold the drain for the
/// whole grace period (30 s here); subscribers resume elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_streams() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, "shutdown_grace = \"30s\"\n").unwrap();
    let s = server(Backend::Memory, &["--config", config.to_str().unwrap()]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let mut stream = watch(&api, WATCH_TOKEN, "").await.unwrap();
    assert!(matches!(next(&mut stream).await, Event::Keys(_)));
    drop(s);
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        while let Ok(Some(_)) = stream.message().await {}
    })
    .await;
    assert!(ended.is_ok(), "the stream outlived the shutdown");
}

/// A subscriber refused for its token is throttled like an admin caller: after the admin
/// failure limit, even the right token is refused for a while from that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_watch_tokens_are_throttled() {
    let s = server(Backend::Memory, &[]).await;
    let api = AuthApi::connect(&format!("http://{}", s.addr)).await;
    let mut refused = None;
    for _ in 0..30 {
        let status = watch(&api, "wrong-token-0123456789", "").await.unwrap_err();
        if status.code() == Code::ResourceExhausted {
            refused = Some(status);
            break;
        }
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let refused = refused.expect("throttled within 30 failures");
    assert_eq!(reason(&refused), "ADMIN_AUTH_THROTTLED");
}

portcullis_tests::on_every_store!(
    watching_needs_the_watch_or_admin_token,
    a_stream_starts_with_keys_and_a_snapshot_then_carries_revocations,
);
