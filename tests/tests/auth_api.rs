//! The authentication behaviour suite: AuthService and the user RPCs of AdminService through a
//! real gRPC server, every test body against the memory store, a single Redis and a Redis Cluster.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::HashSet;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use futures::future::join_all;
use portcullis_client::pb;
use portcullis_tests::auth::{
    AuthApi, CLIENT_IP, env_kid, invalid_field, reason, refused, retry_delay,
};
use portcullis_tests::server::{Backend, JWT_SECRET, TestServer, unique};
use serde_json::{Value, json};
use tonic::{Code, Request, Status};
use tonic_types::StatusExt;

/// A password that meets the default ("guide") policy.
const GOOD: &str = "Vq7#mLx2!pRz9w";
/// Another policy-compliant password, for changes.
const OTHER: &str = "Kd4$hTy8@nBc3e";
/// A wrong guess.
const WRONG: &str = "Wrong-Guess-42!x";
/// The only scope of a first-login token.
const PASSWORD_CHANGE: &str = "password:change";
/// The roles of every test user.
const READER: &[&str] = &["reader"];
/// How long a revocation may take to reach VerifyToken (polled revocation feed, 1 s promised).
const PROPAGATION: Duration = Duration::from_millis(1500);

/// Argon2 cost of most tests: cheap, the flows are what is under test.
const CHEAP_ARGON2: (u32, u32) = (1024, 1);
/// Argon2 cost of the race tests: slow enough (tens of milliseconds) that a call can land
/// inside another's verification.
const RACE_ARGON2: (u32, u32) = (16 * 1024, 4);

/// Writes a config file whose `[auth]` table starts with `auth_lines`, with Argon2 at
/// (memory KiB, iterations).
fn config_file_with_argon2(
    auth_lines: &str,
    (memory_kib, iterations): (u32, u32),
) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    // Every test logs in from CLIENT_IP, and the servers on Redis share one store: the throttle
    // across tenants and the hashing share per address stay out of the way unless a test is
    // about them (and sets them).
    let mut auth_lines = auth_lines.to_owned();
    if !auth_lines.contains("login_limit_per_ip_all_tenants") {
        auth_lines.push_str("\nlogin_limit_per_ip_all_tenants = \"1000000/1m\"");
    }
    let text = format!(
        "[auth]\n{auth_lines}\n\n[auth.argon2]\nmemory_kib = {memory_kib}\niterations = {iterations}\nparallelism = 1\npermits_per_client_ip = 64\n"
    );
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// Seconds since the Unix epoch.
fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Signs `claims` with HS256 and `secret` under this kid and typ.
fn forge(secret: &str, kid: &str, typ: Option<&str>, claims: &Value) -> String {
    let header = jsonwebtoken::Header {
        typ: typ.map(str::to_owned),
        kid: Some(kid.to_owned()),
        ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
    };
    jsonwebtoken::encode(
        &header,
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// Claims the server itself would issue for this verified token, valid from now for 10 minutes.
fn claims_like(v: &pb::VerifyTokenResponse) -> Value {
    let now = now_unix();
    json!({
        "iss": "portcullis",
        "aud": "portcullis",
        "sub": v.user_id,
        "tid": v.tenant_id,
        "sid": v.session_id,
        "jti": unique("jti"),
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "roles": v.roles,
        "scope": v.scopes.join(" "),
    })
}

/// Whether any object in `value`, at any depth, has a member named `name`.
fn has_member(value: &Value, name: &str) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| k == name || has_member(v, name)),
        Value::Array(items) => items.iter().any(|v| has_member(v, name)),
        _ => false,
    }
}

/// A test server with its config file, and an [`AuthApi`] client of it on a fresh tenant.
struct Api {
    /// The client; `Api` derefs to it.
    client: AuthApi,
    /// Keeps the server running.
    _server: TestServer,
    /// Keeps the config file.
    _config: tempfile::TempDir,
}

impl Deref for Api {
    type Target = AuthApi;

    fn deref(&self) -> &AuthApi {
        &self.client
    }
}

impl Api {
    /// Starts a server whose config's `[auth]` table starts with `auth_lines`.
    async fn start(backend: Backend, auth_lines: &str) -> Self {
        Self::start_with_argon2(backend, auth_lines, CHEAP_ARGON2).await
    }

    /// Starts a server with Argon2 at (memory KiB, iterations).
    async fn start_with_argon2(backend: Backend, auth_lines: &str, argon2: (u32, u32)) -> Self {
        let (dir, path) = config_file_with_argon2(auth_lines, argon2);
        Self::start_with_file(backend, dir, path).await
    }

    /// Starts a server with exactly this config file.
    async fn start_with_config(backend: Backend, toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, toml).unwrap();
        Self::start_with_file(backend, dir, path).await
    }

    async fn start_with_file(backend: Backend, dir: tempfile::TempDir, path: PathBuf) -> Self {
        let server =
            TestServer::start(backend, &["--config", path.to_str().expect("utf-8 path")]).await;
        Self {
            client: AuthApi::connect(&format!("http://{}", server.addr)).await,
            _server: server,
            _config: dir,
        }
    }

    /// Polls VerifyToken until it refuses `access_token` with SESSION_ENDED; fails after
    /// [`PROPAGATION`].
    async fn expect_session_ended(&self, access_token: &str) {
        let deadline = tokio::time::Instant::now() + PROPAGATION;
        loop {
            let result = self.verify(access_token).await;
            if let Err(status) = &result
                && status.code() == Code::Unauthenticated
                && reason(status) == "SESSION_ENDED"
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "still not SESSION_ENDED after {PROPAGATION:?}: {result:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn login_verify_refresh_logout(backend: Backend) {
    let api = Api::start(backend, "").await;
    let user = api.create_user("alice", GOOD, READER, Some(false)).await;
    let login = api.login("alice", GOOD).await.unwrap();
    assert_eq!(login.user_id, user.user_id);
    assert!(!login.password_change_required);
    assert!(!login.session_id.is_empty());
    assert_eq!(
        login.expires_in,
        Some(prost_types::Duration {
            seconds: 1800,
            nanos: 0
        }),
        "default access_token_ttl is 30m"
    );

    let claims = api
        .verify_in(&login.access_token, &api.tenant)
        .await
        .unwrap();
    assert_eq!(claims.user_id, user.user_id);
    assert_eq!(claims.tenant_id, api.tenant);
    assert_eq!(claims.session_id, login.session_id);
    assert_eq!(claims.roles, ["reader"]);
    assert_eq!(claims.scopes, ["api"]);
    assert_eq!(claims.key_id, env_kid(JWT_SECRET));
    let expires = claims.expires_at.unwrap().seconds as u64;
    let now = now_unix();
    assert!(
        (now + 1790..=now + 1801).contains(&expires),
        "{expires} vs {now}"
    );
    refused(
        api.verify_in(&login.access_token, &unique("other-tenant"))
            .await,
        Code::Unauthenticated,
        "INVALID_TOKEN",
    );

    let refreshed = api.refresh(&login.refresh_token).await.unwrap();
    assert_ne!(refreshed.refresh_token, login.refresh_token, "it rotates");
    assert_eq!(refreshed.session_id, login.session_id);
    assert_eq!(refreshed.user_id, user.user_id);
    let again = api.verify(&refreshed.access_token).await.unwrap();
    assert_eq!(again.session_id, login.session_id);

    assert!(
        api.logout(&refreshed.refresh_token, "")
            .await
            .unwrap()
            .revoked
    );
    assert!(
        !api.logout(&refreshed.refresh_token, "")
            .await
            .unwrap()
            .revoked,
        "a second logout finds the session ended"
    );
    api.expect_session_ended(&refreshed.access_token).await;
    api.expect_session_ended(&login.access_token).await;
    refused(
        api.refresh(&refreshed.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
}

/// A refresh token built from what every access token shows (tenant and session id) with a
/// made-up secret must not end the session: Logout checks the secret as Refresh does.
async fn a_forged_refresh_token_ends_no_session(backend: Backend) {
    let api = Api::start(backend, "").await;
    api.create_user("frank", GOOD, READER, Some(false)).await;
    let login = api.login("frank", GOOD).await.unwrap();
    let claims = api.verify(&login.access_token).await.unwrap();
    let forged = format!(
        "{}.{}.{}",
        B64URL.encode(claims.tenant_id.as_bytes()),
        claims.session_id,
        B64URL.encode([7u8; 32])
    );
    let status = refused(
        api.logout(&forged, "").await,
        Code::Unauthenticated,
        "INVALID_TOKEN",
    );
    let details = status.get_error_details();
    let problem = details
        .error_info()
        .unwrap()
        .metadata
        .get("problem")
        .cloned();
    assert_eq!(problem.as_deref(), Some("REFRESH_TOKEN_MISMATCH"));

    // The session lives on: its access token still verifies after the revocation feed has
    // been read, and its refresh token still rotates.
    tokio::time::sleep(PROPAGATION).await;
    api.verify(&login.access_token).await.unwrap();
    let refreshed = api.refresh(&login.refresh_token).await.unwrap();

    let events = api.audit_page(100, "").await.events;
    let logouts: Vec<&str> = events
        .iter()
        .filter(|e| e.action == "logout")
        .map(|e| e.outcome.as_str())
        .collect();
    assert_eq!(
        logouts,
        ["invalid_token"],
        "the forged logout is audited as a failure"
    );

    // The secret the refresh rotated away is one of the session's: presenting it ends the
    // session, as presenting it to Refresh would.
    assert!(api.logout(&login.refresh_token, "").await.unwrap().revoked);
    api.expect_session_ended(&refreshed.access_token).await;
    refused(
        api.refresh(&refreshed.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
}

/// `[auth]` of the race tests: each try logs in several times from the one test address.
const RACE_AUTH: &str = "login_limit_per_ip = \"1000/1m\"";

/// Tries of each race test: the delays between the two calls sweep the window in which one
/// lands inside the other's password verification.
const RACE_TRIES: u32 = 8;

/// How long one Login takes on this server (about one password verification), measured.
async fn login_duration(api: &Api, username: &str) -> Duration {
    let started = tokio::time::Instant::now();
    api.login(username, GOOD).await.unwrap();
    started.elapsed()
}

/// A login that verified the old password while `ChangePassword` replaced it must not undo the
/// change (it used to write the whole record back, old hash included), and no session it
/// opened may survive the change.
async fn a_login_racing_a_password_change_undoes_nothing(backend: Backend) {
    let api = Api::start_with_argon2(backend, RACE_AUTH, RACE_ARGON2).await;
    api.create_user("probe", GOOD, READER, Some(false)).await;
    let verify = login_duration(&api, "probe").await;
    for attempt in 0..RACE_TRIES {
        let name = format!("victim-{attempt}");
        api.create_user(&name, GOOD, READER, Some(false)).await;
        let session = api.login(&name, GOOD).await.unwrap();
        // ChangePassword verifies the current password and hashes the new one (two hashes);
        // the login, started a fraction of that later, verifies the old one meanwhile.
        let delay = verify.mul_f64(0.25 + 0.25 * f64::from(attempt));
        let change = api.change_password(&session.access_token, GOOD, OTHER);
        let racing_login = async {
            tokio::time::sleep(delay).await;
            api.login(&name, GOOD).await
        };
        let (changed, raced) = tokio::join!(change, racing_login);
        changed.unwrap_or_else(|e| panic!("try {attempt}: the change failed: {e:?}"));

        refused(
            api.login(&name, GOOD).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
        api.login(&name, OTHER)
            .await
            .unwrap_or_else(|e| panic!("try {attempt} ({delay:?}): the new password: {e:?}"));
        if let Ok(raced) = raced {
            // It proved the old password: its session must be over.
            api.expect_session_ended(&raced.access_token).await;
            refused(
                api.refresh(&raced.refresh_token).await,
                Code::Unauthenticated,
                "SESSION_ENDED",
            );
        }
    }
}

/// A login racing `DeleteUser` must not leave a session behind (it used to open one after the
/// record was gone, whose access token then verified for its whole lifetime).
async fn a_login_racing_a_deletion_leaves_no_session(backend: Backend) {
    let api = Api::start_with_argon2(backend, RACE_AUTH, RACE_ARGON2).await;
    api.create_user("probe", GOOD, READER, Some(false)).await;
    let verify = login_duration(&api, "probe").await;
    for attempt in 0..RACE_TRIES {
        let name = format!("leaver-{attempt}");
        let user = api.create_user(&name, GOOD, READER, Some(false)).await;
        let delay = verify.mul_f64(0.15 * f64::from(attempt));
        let login = api.login(&name, GOOD);
        let delete = async {
            tokio::time::sleep(delay).await;
            api.delete_user(&user.user_id).await
        };
        let (logged_in, deleted) = tokio::join!(login, delete);
        assert!(deleted.unwrap(), "try {attempt}: the user existed");
        assert_eq!(
            api.get_user(&user.user_id).await.unwrap_err().code(),
            Code::NotFound
        );
        if let Ok(session) = logged_in {
            api.expect_session_ended(&session.access_token).await;
            refused(
                api.refresh(&session.refresh_token).await,
                Code::Unauthenticated,
                "SESSION_ENDED",
            );
        }
    }
}

/// `Alice`, `ａlice` and `alice ` used to be three accounts beside `alice`. They are one:
/// creating a variant is ALREADY_EXISTS, a variant logs in to the same account and counts
/// towards the same lockout, and names the profile refuses are INVALID_ARGUMENT on `username`.
async fn username_variants_are_one_account(backend: Backend) {
    let api = Api::start(backend, "reveal_lockout = true").await;
    let user = api.create_user("alice", GOOD, READER, Some(false)).await;
    for variant in ["Alice", "ａｌｉｃｅ", "alice ", "ALICE"] {
        let request = api.as_admin(pb::CreateUserRequest {
            tenant_id: api.tenant.clone(),
            username: variant.to_owned(),
            initial_password: GOOD.to_owned(),
            roles: vec![],
            must_change_password: Some(false),
        });
        let status = api.admin().create_user(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::AlreadyExists,
            "{variant:?}: {status:?}"
        );
    }
    for variant in ["ALICE", "ａlice", " alice "] {
        let login = api.login(variant, GOOD).await.unwrap();
        assert_eq!(login.user_id, user.user_id, "{variant:?}");
    }
    let shown = api
        .admin()
        .get_user(api.as_admin(pb::GetUserRequest {
            tenant_id: api.tenant.clone(),
            user_id: String::new(),
            username: "Alice".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (shown.user_id, shown.username),
        (user.user_id.clone(), "alice".to_owned())
    );

    // Wrong passwords under five spellings lock the one account.
    for variant in ["alice", "Alice", "ALICE", "ａlice", "alice "] {
        refused(
            api.login(variant, WRONG).await,
            Code::Unauthenticated,
            "INVALID_CREDENTIALS",
        );
    }
    refused(
        api.login("alice", GOOD).await,
        Code::Unauthenticated,
        "ACCOUNT_LOCKED",
    );

    // Refused at creation; at login only what no account can be named (a name like "two
    // words" may belong to an account stored before usernames were normalised).
    for bad in ["a\u{202e}b", "   ", "x\u{7}y", "two words"] {
        invalid_field(
            api.admin()
                .create_user(api.as_admin(pb::CreateUserRequest {
                    tenant_id: api.tenant.clone(),
                    username: bad.to_owned(),
                    initial_password: GOOD.to_owned(),
                    roles: vec![],
                    must_change_password: Some(false),
                }))
                .await,
            "username",
        );
        if bad == "two words" {
            refused(
                api.login(bad, GOOD).await,
                Code::Unauthenticated,
                "INVALID_CREDENTIALS",
            );
        } else {
            invalid_field(api.login(bad, GOOD).await, "username");
        }
    }
}

async fn refresh_token_reuse_kills_the_session(backend: Backend) {
    let api = Api::start(backend, "").await;
    api.create_user("bob", GOOD, READER, Some(false)).await;
    let first = api.login("bob", GOOD).await.unwrap();
    let second = api.refresh(&first.refresh_token).await.unwrap();
    refused(
        api.refresh(&first.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    refused(
        api.refresh(&second.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    api.expect_session_ended(&second.access_token).await;
}

/// With a grace window, refreshes racing with one token (a client retrying a refresh whose
/// answer it lost) all get the same successor, and the session goes on.
async fn refreshes_racing_within_the_grace_window_get_one_successor(backend: Backend) {
    let api = Api::start(backend, "refresh_grace = \"30s\"").await;
    api.create_user("bob", GOOD, READER, Some(false)).await;
    let login = api.login("bob", GOOD).await.unwrap();
    let answers = join_all((0..2).map(|_| api.refresh(&login.refresh_token))).await;
    let answers: Vec<pb::LoginResponse> = answers.into_iter().map(Result::unwrap).collect();
    assert_ne!(answers[0].refresh_token, login.refresh_token, "it rotates");
    assert_eq!(
        answers[0].refresh_token, answers[1].refresh_token,
        "one successor for both"
    );
    for answer in &answers {
        assert_eq!(answer.session_id, login.session_id);
        let claims = api.verify(&answer.access_token).await.unwrap();
        assert_eq!(claims.session_id, login.session_id);
    }
    // Later again, still within the window: the same successor, nothing more.
    let late = api.refresh(&login.refresh_token).await.unwrap();
    assert_eq!(late.refresh_token, answers[0].refresh_token);

    // The successor rotates as usual; the session lives on.
    let next = api.refresh(&answers[0].refresh_token).await.unwrap();
    assert_ne!(next.refresh_token, answers[0].refresh_token);
    api.verify(&next.access_token).await.unwrap();
    let then = api.refresh(&next.refresh_token).await.unwrap();
    api.verify(&then.access_token).await.unwrap();

    let outcomes: Vec<String> = all_audit_events(&api)
        .await
        .into_iter()
        .filter(|e| e.action == "refresh")
        .map(|e| e.outcome)
        .collect();
    let count = |o: &str| outcomes.iter().filter(|x| *x == o).count();
    assert_eq!(
        (count("success"), count("replayed")),
        (3, 2),
        "{outcomes:?}"
    );
}

/// The token rotated away last, presented after the grace window, is a reuse: the session ends.
async fn a_replay_after_the_grace_window_ends_the_session(backend: Backend) {
    let api = Api::start(backend, "refresh_grace = \"1s\"").await;
    api.create_user("bob", GOOD, READER, Some(false)).await;
    let first = api.login("bob", GOOD).await.unwrap();
    let second = api.refresh(&first.refresh_token).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    refused(
        api.refresh(&first.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    refused(
        api.refresh(&second.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    api.expect_session_ended(&second.access_token).await;
}

/// Only the token rotated away last has a grace window: an older one ends the session even
/// within it.
async fn a_token_two_rotations_old_ends_the_session_within_the_grace_window(backend: Backend) {
    let api = Api::start(backend, "refresh_grace = \"30s\"").await;
    api.create_user("bob", GOOD, READER, Some(false)).await;
    let first = api.login("bob", GOOD).await.unwrap();
    let second = api.refresh(&first.refresh_token).await.unwrap();
    let third = api.refresh(&second.refresh_token).await.unwrap();
    refused(
        api.refresh(&first.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    refused(
        api.refresh(&third.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    refused(
        api.refresh(&second.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    api.expect_session_ended(&third.access_token).await;
}

/// Without a grace window (the default), the second of two racing refreshes with one token is
/// a reuse and ends the session.
async fn racing_refreshes_without_a_grace_window_end_the_session(backend: Backend) {
    let api = Api::start(backend, "").await;
    api.create_user("bob", GOOD, READER, Some(false)).await;
    let login = api.login("bob", GOOD).await.unwrap();
    let answers = join_all((0..2).map(|_| api.refresh(&login.refresh_token))).await;
    let (won, lost): (Vec<_>, Vec<_>) = answers.into_iter().partition(Result::is_ok);
    assert_eq!((won.len(), lost.len()), (1, 1), "{won:?} {lost:?}");
    let won = won.into_iter().next().unwrap().unwrap();
    refused(
        lost.into_iter().next().unwrap(),
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    refused(
        api.refresh(&won.refresh_token).await,
        Code::Unauthenticated,
        "SESSION_ENDED",
    );
    api.expect_session_ended(&won.access_token).await;
}

async fn failures_look_alike_then_lock_until_unlocked(backend: Backend) {
    let api = Api::start(backend, "").await;
    let user = api.create_user("carol", GOOD, READER, Some(false)).await;
    let shape = |status: Status| (status.code(), status.message().to_owned(), reason(&status));
    let unknown = shape(api.login("nobody", GOOD).await.unwrap_err());
    assert_eq!(
        (unknown.0, unknown.2.as_str()),
        (Code::Unauthenticated, "INVALID_CREDENTIALS")
    );
    for _ in 0..5 {
        let wrong = shape(api.login("carol", WRONG).await.unwrap_err());
        assert_eq!(
            wrong, unknown,
            "a wrong password looks like an unknown user"
        );
    }
    let shown = api.get_user(&user.user_id).await.unwrap();
    assert!(shown.locked, "{shown:?}");
    assert_eq!(shown.failed_attempts, 5);
    assert!(shown.locked_until.is_some(), "the default lock is timed");

    let locked = shape(api.login("carol", GOOD).await.unwrap_err());
    assert_eq!(
        locked, unknown,
        "a locked account looks like an unknown user"
    );

    let unlocked = api
        .admin()
        .unlock_user(api.as_admin(pb::UnlockUserRequest {
            tenant_id: api.tenant.clone(),
            user_id: user.user_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert!(!unlocked.locked);
    assert_eq!(unlocked.failed_attempts, 0);
    api.login("carol", GOOD).await.unwrap();
    let after = api.get_user(&user.user_id).await.unwrap();
    assert!(!after.locked && after.failed_attempts == 0, "{after:?}");
    assert!(after.last_login_at.is_some());
}

async fn concurrent_guesses_evaluate_only_the_lockout_limit(backend: Backend) {
    // Room for all 20 guesses from one IP: this is about the lockout, not the throttle.
    let api = Api::start(
        backend,
        "reveal_lockout = true\nlogin_limit_per_ip = \"100/1m\"",
    )
    .await;
    let user = api.create_user("dave", GOOD, READER, Some(false)).await;
    let guesses = (0..20).map(|_| api.login("dave", WRONG));
    let mut reasons: Vec<String> = Vec::new();
    for result in join_all(guesses).await {
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let why = reason(&status);
        if why == "ACCOUNT_LOCKED" {
            retry_delay(&status);
        }
        reasons.push(why);
    }
    let count = |r: &str| reasons.iter().filter(|x| *x == r).count();
    assert_eq!(
        (count("INVALID_CREDENTIALS"), count("ACCOUNT_LOCKED")),
        (5, 15),
        "{reasons:?}"
    );
    let status = refused(
        api.login("dave", GOOD).await,
        Code::Unauthenticated,
        "ACCOUNT_LOCKED",
    );
    retry_delay(&status);
    assert!(api.get_user(&user.user_id).await.unwrap().locked);
}

async fn first_login_must_change_the_password(backend: Backend) {
    let api = Api::start(backend, "").await;
    let user = api.create_user("erin", GOOD, READER, None).await;
    assert!(user.must_change_password, "unset means true");
    let first = api.login("erin", GOOD).await.unwrap();
    assert!(first.password_change_required);
    // A service that checks only the status must not let the user in before the change.
    refused(
        api.verify(&first.access_token).await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );
    refused(
        api.verify_demanding(&first.access_token, &["api"], &[])
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );
    let claims = api
        .verify_demanding(&first.access_token, &[PASSWORD_CHANGE], &[])
        .await
        .expect("the password-change page asks for the scope and gets it");
    assert_eq!(claims.scopes, [PASSWORD_CHANGE]);
    let other = api.login("erin", GOOD).await.unwrap();

    let weak = invalid_field(
        api.change_password(&first.access_token, GOOD, "password1234")
            .await,
        "new_password",
    );
    assert!(!weak.message().contains("password1234"), "{weak:?}");
    invalid_field(
        api.change_password(&first.access_token, GOOD, GOOD).await,
        "new_password",
    );
    refused(
        api.change_password(&first.access_token, WRONG, OTHER).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let changed = api
        .change_password(&first.access_token, GOOD, OTHER)
        .await
        .unwrap();
    assert_eq!(changed.revoked_sessions, 1);
    api.expect_session_ended(&other.access_token).await;
    api.verify_demanding(&first.access_token, &[PASSWORD_CHANGE], &[])
        .await
        .expect("the caller's own session stays");

    refused(
        api.login("erin", GOOD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let next = api.login("erin", OTHER).await.unwrap();
    assert!(!next.password_change_required);
    assert_eq!(
        api.verify(&next.access_token).await.unwrap().scopes,
        ["api"]
    );
    assert!(
        !api.get_user(&user.user_id)
            .await
            .unwrap()
            .must_change_password
    );
}

/// A service demands the scopes and roles its call needs in the VerifyToken call itself.
async fn verify_token_demands_scopes_and_roles(backend: Backend) {
    let api = Api::start(backend, "").await;
    api.create_user("fern", GOOD, &["reader", "writer"], Some(false))
        .await;
    let token = api.login("fern", GOOD).await.unwrap().access_token;
    let claims = api
        .verify_demanding(&token, &["api"], &["writer", "reader"])
        .await
        .unwrap();
    assert_eq!(claims.roles, ["reader", "writer"]);
    refused(
        api.verify_demanding(&token, &["api", "billing:write"], &[])
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );
    refused(
        api.verify_demanding(&token, &[PASSWORD_CHANGE], &[]).await,
        Code::PermissionDenied,
        "INSUFFICIENT_SCOPE",
    );
    refused(
        api.verify_demanding(&token, &[], &["reader", "admin"])
            .await,
        Code::PermissionDenied,
        "INSUFFICIENT_ROLE",
    );

    invalid_field(
        api.verify_demanding(&token, &["api", ""], &[]).await,
        "required_scopes[1]",
    );
    let long = "r".repeat(257);
    invalid_field(
        api.verify_demanding(&token, &[], &[&long]).await,
        "required_roles[0]",
    );
    let many = vec!["reader"; 33];
    invalid_field(
        api.verify_demanding(&token, &[], &many).await,
        "required_roles",
    );
    invalid_field(
        api.verify_demanding(&token, &["a\nb"], &[]).await,
        "required_scopes[0]",
    );
    // A demand does not make a bad token good, nor hide why it is bad.
    refused(
        api.verify_demanding("not.a.token", &["api"], &[]).await,
        Code::Unauthenticated,
        "INVALID_TOKEN",
    );
}

async fn forged_and_broken_tokens_are_refused(backend: Backend) {
    let api = Api::start(backend, "").await;
    api.create_user("frank", GOOD, READER, Some(false)).await;
    let login = api.login("frank", GOOD).await.unwrap();
    let verified = api.verify(&login.access_token).await.unwrap();
    let kid = env_kid(JWT_SECRET);
    assert_eq!(verified.key_id, kid);
    let good = claims_like(&verified);
    let typ = Some("at+jwt");
    // Control: the forging itself is right, so each refusal below is about its one change.
    let control = forge(JWT_SECRET, &kid, typ, &good);
    assert_eq!(
        api.verify(&control).await.unwrap().session_id,
        login.session_id
    );

    let with = |name: &str, value: Value| {
        let mut claims = good.clone();
        claims[name] = value;
        forge(JWT_SECRET, &kid, typ, &claims)
    };
    let now = now_unix();
    let (head, rest) = login.access_token.split_once('.').unwrap();
    let (payload, signature) = rest.split_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let bad_signature = format!("{head}.{payload}.{flipped}{}", &signature[1..]);
    let other_sub = with("sub", json!("someone-else"));
    let (other_head_payload, _) = other_sub.rsplit_once('.').unwrap();
    let bad_payload = format!("{other_head_payload}.{signature}");
    let none_header = json!({"alg": "none", "typ": "at+jwt", "kid": kid});
    let alg_none = format!(
        "{}.{}.",
        B64URL.encode(none_header.to_string()),
        B64URL.encode(good.to_string())
    );
    let cases = [
        ("tampered signature", bad_signature),
        ("tampered payload", bad_payload),
        (
            "signed with another secret",
            forge(
                "another-secret-0123456789abcdef-0123456789",
                &kid,
                typ,
                &good,
            ),
        ),
        ("expired beyond the leeway", {
            let mut claims = good.clone();
            claims["iat"] = json!(now - 2000);
            claims["nbf"] = json!(now - 2000);
            claims["exp"] = json!(now - 120);
            forge(JWT_SECRET, &kid, typ, &claims)
        }),
        ("nbf in the future", with("nbf", json!(now + 600))),
        ("wrong audience", with("aud", json!("elsewhere"))),
        ("wrong issuer", with("iss", json!("someone-else"))),
        ("alg none", alg_none),
        ("unknown kid", forge(JWT_SECRET, "no-such-kid", typ, &good)),
        ("missing typ", forge(JWT_SECRET, &kid, None, &good)),
        ("not a JWT", "not-a-jwt".to_owned()),
    ];
    for (what, token) in cases {
        let status = api.verify(&token).await.expect_err(what);
        assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        assert_eq!(reason(&status), "INVALID_TOKEN", "{what}: {status:?}");
    }
}

async fn jwks_never_publishes_the_hs256_secret(backend: Backend) {
    let api = Api::start(backend, "").await;
    let jwks = api.jwks_json().await;
    let parsed: Value = serde_json::from_str(&jwks).unwrap();
    assert_eq!(
        parsed["keys"],
        json!([]),
        "only EdDSA public keys are published"
    );
    assert!(!has_member(&parsed, "k"), "{jwks}");
    assert!(!jwks.contains(JWT_SECRET));
    assert!(!jwks.contains(&B64URL.encode(JWT_SECRET)));
}

async fn admin_create_user_validates(backend: Backend) {
    let api = Api::start(backend, "").await;
    api.create_user("grace", GOOD, READER, None).await;
    let request = |tenant: &str, username: &str, password: &str| pb::CreateUserRequest {
        tenant_id: tenant.to_owned(),
        username: username.to_owned(),
        initial_password: password.to_owned(),
        roles: vec![],
        must_change_password: None,
    };
    let status = api
        .admin()
        .create_user(api.as_admin(request(&api.tenant, "grace", OTHER)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    invalid_field(
        api.admin()
            .create_user(api.as_admin(request(&api.tenant, "heidi", "password1234")))
            .await,
        "initial_password",
    );
    invalid_field(
        api.admin()
            .create_user(api.as_admin(request("", "heidi", OTHER)))
            .await,
        "tenant_id",
    );
    let status = api
        .admin()
        .create_user(Request::new(request(&api.tenant, "heidi", OTHER)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let status = api.get_user(&unique("missing")).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

async fn admin_sessions_and_export(backend: Backend) {
    let api = Api::start(backend, "").await;
    let user = api.create_user("ivan", GOOD, READER, Some(false)).await;
    let by_name = api
        .admin()
        .get_user(api.as_admin(pb::GetUserRequest {
            tenant_id: api.tenant.clone(),
            user_id: String::new(),
            username: "ivan".to_owned(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_name.user_id, user.user_id);
    assert!(!format!("{by_name:?}").contains("$argon2"), "{by_name:?}");

    let a = api.login("ivan", GOOD).await.unwrap();
    let b = api.login_from("ivan", GOOD, "198.51.100.9").await.unwrap();
    let sessions = api.list_sessions(&user.user_id).await;
    let ids: HashSet<&str> = sessions.iter().map(|s| s.session_id.as_str()).collect();
    assert_eq!(
        ids,
        HashSet::from([a.session_id.as_str(), b.session_id.as_str()])
    );
    assert!(sessions.iter().all(|s| s.user_id == user.user_id));

    let export = api
        .admin()
        .export_user_data(api.as_admin(pb::ExportUserDataRequest {
            tenant_id: api.tenant.clone(),
            user_id: user.user_id.clone(),
        }))
        .await
        .unwrap()
        .into_inner()
        .json;
    let parsed: Value = serde_json::from_str(&export).unwrap();
    assert!(parsed["user"].is_object(), "{export}");
    assert_eq!(parsed["sessions"].as_array().unwrap().len(), 2, "{export}");
    assert!(parsed["audit_events"].is_array(), "{export}");
    for secret in [
        "$argon2",
        GOOD,
        a.refresh_token.as_str(),
        b.refresh_token.as_str(),
        a.access_token.as_str(),
    ] {
        assert!(!export.contains(secret), "export leaks a secret: {export}");
    }

    let revoked = api
        .admin()
        .revoke_sessions(api.as_admin(pb::RevokeSessionsRequest {
            tenant_id: api.tenant.clone(),
            user_id: user.user_id.clone(),
            session_ids: vec![a.session_id.clone()],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(revoked.revoked, 1);
    api.expect_session_ended(&a.access_token).await;
    api.verify(&b.access_token)
        .await
        .expect("the other session stays");
    let left = api.list_sessions(&user.user_id).await;
    assert_eq!(
        left.iter()
            .map(|s| s.session_id.as_str())
            .collect::<Vec<_>>(),
        [b.session_id.as_str()]
    );
}

async fn admin_delete_user_erases(backend: Backend) {
    let api = Api::start(backend, "").await;
    let user = api.create_user("judy", GOOD, READER, Some(false)).await;
    let login = api.login("judy", GOOD).await.unwrap();
    let delete = |user_id: String| {
        let mut admin = api.admin();
        let request = api.as_admin(pb::DeleteUserRequest {
            tenant_id: api.tenant.clone(),
            user_id,
        });
        async move {
            admin
                .delete_user(request)
                .await
                .unwrap()
                .into_inner()
                .deleted
        }
    };
    assert!(delete(user.user_id.clone()).await);
    let status = api.get_user(&user.user_id).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    refused(
        api.login("judy", GOOD).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    api.expect_session_ended(&login.access_token).await;
    assert!(
        !delete(user.user_id.clone()).await,
        "nothing left to delete"
    );
}

async fn audit_trail_of_a_session(backend: Backend) {
    let api = Api::start(backend, "").await;
    api.create_user("kim", GOOD, READER, Some(false)).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = Request::new(api.login_request("kim", GOOD, CLIENT_IP));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let login = api.auth().login(request).await.unwrap().into_inner();
    refused(
        api.login_from("kim", WRONG, "198.51.100.9").await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
    let refreshed = api.refresh(&login.refresh_token).await.unwrap();
    assert!(
        api.logout(&refreshed.refresh_token, "")
            .await
            .unwrap()
            .revoked
    );

    let all = api.audit_page(100, "").await;
    assert!(all.next_after_id.is_empty(), "one page holds them all");
    // Listing is itself an admin call and may be audited; it is not what this test is about.
    let events: Vec<&pb::AuditEvent> = all
        .events
        .iter()
        .filter(|e| e.action != "admin.list_audit_events")
        .collect();
    let pairs: Vec<(&str, &str)> = events
        .iter()
        .map(|e| (e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("logout", "success"),
            ("refresh", "success"),
            ("login", "invalid_credentials"),
            ("login", "success"),
            ("admin.create_user", "success"),
        ],
        "newest first"
    );
    assert!(events.iter().all(|e| e.tenant_id == api.tenant));
    let success = events[3];
    assert_eq!(success.trace_id, trace_id);
    assert_eq!(success.user_id, login.user_id);
    assert_eq!(success.client_ip, CLIENT_IP);
    assert_eq!(events[2].client_ip, "198.51.100.9");
    for login_event in [events[2], events[3]] {
        let hash = &login_event.username_hash;
        assert!(!hash.is_empty() && !hash.contains("kim"), "{login_event:?}");
    }
    let shown = format!("{:?}", all.events);
    for secret in [GOOD, WRONG, &*login.refresh_token, &*login.access_token] {
        assert!(!shown.contains(secret), "an audit event leaks a secret");
    }

    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = api.audit_page(2, &after).await;
        assert!(page.events.len() <= 2);
        seen.extend(page.events.into_iter().map(|e| e.id));
        if page.next_after_id.is_empty() {
            break;
        }
        after = page.next_after_id;
        assert!(seen.len() <= all.events.len() + 10, "paging never ends");
    }
    let unique_ids: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique_ids.len(), seen.len(), "a page repeated an event");
    assert!(
        all.events.iter().all(|e| unique_ids.contains(&e.id)),
        "paging skipped an event"
    );
}

async fn logins_are_throttled_per_client_ip(backend: Backend) {
    let api = Api::start(backend, "login_limit_per_ip = \"3/1m\"").await;
    api.create_user("leo", GOOD, READER, Some(false)).await;
    for _ in 0..3 {
        api.login("leo", GOOD).await.unwrap();
    }
    let status = refused(
        api.login("leo", GOOD).await,
        Code::ResourceExhausted,
        "LOGIN_THROTTLED",
    );
    retry_delay(&status);
    api.login_from("leo", GOOD, "198.51.100.9")
        .await
        .expect("another client IP has its own budget");
}

/// Every event of the tenant's audit log, newest first, page by page.
async fn all_audit_events(api: &Api) -> Vec<pb::AuditEvent> {
    let mut events = Vec::new();
    let mut after = String::new();
    loop {
        let page = api.audit_page(1000, &after).await;
        events.extend(page.events);
        if page.next_after_id.is_empty() {
            return events;
        }
        after = page.next_after_id;
    }
}

/// Calls with no valid credential used to store one audit event each, kept a year: 100,000
/// forged refresh tokens put 100,000 entries (about 20 MB) into Redis in 15 s. Failures that
/// prove nothing are now counted: 20,000 forged refreshes for one tenant add a handful of
/// events that still count every call, and the tenant's real user refreshes as before.
async fn forged_calls_are_counted_not_stored_one_by_one(backend: Backend) {
    const FORGED: usize = 20_000;
    const CALLERS: usize = 16;
    let api = Api::start(backend, "audit_count_window = \"1s\"").await;
    api.create_user("mona", GOOD, READER, Some(false)).await;
    let real = api.login("mona", GOOD).await.unwrap();

    let tenant = B64URL.encode(api.tenant.as_bytes());
    let secret = B64URL.encode([3u8; 32]);
    join_all((0..CALLERS).map(|caller| {
        let mut auth = api.auth();
        let (tenant, secret) = (tenant.clone(), secret.clone());
        async move {
            for i in (caller..FORGED).step_by(CALLERS) {
                let request = pb::RefreshRequest {
                    refresh_token: format!("{tenant}.never-{i}.{secret}"),
                };
                let status = auth.refresh(request).await.unwrap_err();
                assert_eq!(reason(&status), "SESSION_ENDED");
            }
        }
    }))
    .await;
    // The flood neither throttled nor locked the tenant's real user.
    let refreshed = api.refresh(&real.refresh_token).await.unwrap();
    api.verify(&refreshed.access_token).await.unwrap();

    // Once the counting window is over, the counted event is written: every call is there.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let events = loop {
        let events = all_audit_events(&api).await;
        let counted: u64 = events
            .iter()
            .filter(|e| e.action == "refresh" && e.outcome == "session_ended")
            .map(|e| e.count.max(1))
            .sum();
        if counted == FORGED as u64 {
            break events;
        }
        assert!(
            counted < FORGED as u64 && tokio::time::Instant::now() < deadline,
            "{counted} forged refreshes counted, {FORGED} made"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        events.len() <= 1_000,
        "{} audit events stored for {FORGED} forged calls",
        events.len()
    );
    let counted = events.iter().find(|e| e.count > 1).unwrap();
    // A counted event names no one (Refresh carries no client address to sample).
    assert!(counted.user_id.is_empty() && counted.client_ip.is_empty());
    assert!(counted.sample_client_ips.is_empty());
    let successes: Vec<_> = events
        .iter()
        .filter(|e| e.action == "refresh" && e.outcome == "success")
        .collect();
    assert_eq!(successes.len(), 1, "a success stays an event of its own");
    assert_eq!(successes[0].user_id, real.user_id);
    if backend == Backend::Redis {
        let url = tokio::task::spawn_blocking(portcullis_tests::server::shared_redis_url)
            .await
            .unwrap();
        let mut redis = ::redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let bytes: u64 = ::redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(portcullis_server::keys::audit_key(&api.tenant))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(
            bytes <= 2 << 20,
            "the tenant's audit stream takes {bytes} bytes"
        );
    }
}

/// An address of the benchmarking range no other test uses, so tests sharing a store do not
/// share its throttles.
fn fresh_ip() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let salt = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let n = salt.wrapping_add(NEXT.fetch_add(7919, Ordering::Relaxed)) % 62_500;
    format!("198.18.{}.{}", n / 250, 1 + n % 250)
}

/// The full config of the throttle tests: cheap Argon2, the given `[auth]` lines.
fn throttle_config(auth_lines: &str, argon2_lines: &str) -> String {
    format!(
        "[auth]\n{auth_lines}\n\n[auth.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n{argon2_lines}\n"
    )
}

/// `client_ip` used to be any string: `10.9.9.9 `, `010.9.9.9` and `::ffff:10.9.9.9` counted
/// as three sources, and one source naming a new tenant on every call was never throttled.
async fn one_source_is_throttled_as_one(backend: Backend) {
    // Per (tenant, address) 3 per minute, per address across tenants 5.
    let api = Api::start_with_config(
        backend,
        &throttle_config(
            "login_limit_per_ip = \"3/1m\"\nlogin_limit_per_ip_all_tenants = \"5/1m\"",
            "permits_per_client_ip = 64",
        ),
    )
    .await;
    api.create_user("ivy", GOOD, READER, Some(false)).await;
    for bad in ["10.9.9.9 ", "010.9.9.9", "not-an-address", "10.9.9.9/32"] {
        invalid_field(api.login_from("ivy", GOOD, bad).await, "client_ip");
    }

    // Spellings of one address are one address.
    let ip = fresh_ip();
    let mapped = format!("::ffff:{ip}");
    for client in [&ip, &mapped, &ip] {
        api.login_from("ivy", GOOD, client).await.unwrap();
    }
    refused(
        api.login_from("ivy", GOOD, &mapped).await,
        Code::ResourceExhausted,
        "LOGIN_THROTTLED",
    );

    // A fresh address naming a new tenant on each call gets 5 logins in all, not 5 per tenant.
    let roamer = fresh_ip();
    for i in 0..5 {
        let other = api.client.clone().with_tenant(&unique(&format!("roam{i}")));
        other.create_user("ivy", GOOD, READER, Some(false)).await;
        other.login_from("ivy", GOOD, &roamer).await.unwrap();
    }
    let sixth = api.client.clone().with_tenant(&unique("roam5"));
    sixth.create_user("ivy", GOOD, READER, Some(false)).await;
    refused(
        sixth.login_from("ivy", GOOD, &roamer).await,
        Code::ResourceExhausted,
        "LOGIN_THROTTLED",
    );

    // IPv6 counts per /64: another host of the same /64 shares the budget.
    let v4 = fresh_ip();
    let octets: Vec<&str> = v4.split('.').collect();
    let v6 = format!("2001:db8:{}:{}::1", octets[2], octets[3]);
    let v6_sibling = format!("2001:db8:{}:{}:ffff::2", octets[2], octets[3]);
    for _ in 0..3 {
        api.login_from("ivy", GOOD, &v6).await.unwrap();
    }
    refused(
        api.login_from("ivy", GOOD, &v6_sibling).await,
        Code::ResourceExhausted,
        "LOGIN_THROTTLED",
    );
}

/// The throttles are decided together, all or nothing: a login the tenant's limit refuses
/// takes nothing from the address's budgets (it used to be charged to the address first).
async fn a_refused_login_charges_no_throttle(backend: Backend) {
    let api = Api::start_with_config(
        backend,
        &throttle_config(
            "login_limit_per_ip_all_tenants = \"5/1m\"\nlogin_limit_per_tenant = \"2/1m\"",
            "permits_per_client_ip = 64",
        ),
    )
    .await;
    let ip = fresh_ip();
    api.create_user("jay", GOOD, READER, Some(false)).await;
    for _ in 0..2 {
        api.login_from("jay", GOOD, &ip).await.unwrap();
    }
    for _ in 0..2 {
        refused(
            api.login_from("jay", GOOD, &ip).await,
            Code::ResourceExhausted,
            "LOGIN_THROTTLED",
        );
    }
    // The two refusals left the address 3 of its 5.
    for i in 0..3 {
        let other = api.client.clone().with_tenant(&unique(&format!("next{i}")));
        other.create_user("jay", GOOD, READER, Some(false)).await;
        other
            .login_from("jay", GOOD, &ip)
            .await
            .unwrap_or_else(|e| {
                panic!("login {i} on another tenant: {e:?}");
            });
    }
}

/// One address may have at most its share of the hashing permits in flight; the rest of its
/// logins are refused at once while other addresses are still served.
async fn one_address_holds_only_its_share_of_hashing(backend: Backend) {
    let api = Api::start_with_config(
        backend,
        &format!(
            "[auth]\nlogin_limit_per_ip = \"100000/1m\"\nlogin_limit_per_ip_all_tenants = \"100000/1m\"\nlogin_limit_per_tenant = \"100000/1m\"\n\n[auth.argon2]\nmemory_kib = {}\niterations = {}\nparallelism = 1\npermits = 2\npermits_per_client_ip = 1\n",
            RACE_ARGON2.0, RACE_ARGON2.1
        ),
    )
    .await;
    api.create_user("kai", GOOD, READER, Some(false)).await;
    let flooder = fresh_ip();
    let flood = join_all((0..6).map(|_| api.login_from("kai", GOOD, &flooder)));
    let other = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        api.login_from("kai", GOOD, &fresh_ip()).await
    };
    let (flooded, other) = tokio::join!(flood, other);
    other.expect("another address is served during the flood");
    let refused_now = flooded
        .into_iter()
        .filter_map(Result::err)
        .map(|status| (status.code(), reason(&status)))
        .collect::<Vec<_>>();
    assert!(
        !refused_now.is_empty(),
        "six concurrent logins from one address all got hashing permits"
    );
    assert!(
        refused_now
            .iter()
            .all(|(code, why)| *code == Code::ResourceExhausted && why == "LOGIN_THROTTLED"),
        "{refused_now:?}"
    );
}

portcullis_tests::on_every_store!(
    forged_calls_are_counted_not_stored_one_by_one,
    one_source_is_throttled_as_one,
    a_refused_login_charges_no_throttle,
    one_address_holds_only_its_share_of_hashing,
    login_verify_refresh_logout,
    a_forged_refresh_token_ends_no_session,
    a_login_racing_a_password_change_undoes_nothing,
    a_login_racing_a_deletion_leaves_no_session,
    username_variants_are_one_account,
    refresh_token_reuse_kills_the_session,
    refreshes_racing_within_the_grace_window_get_one_successor,
    a_replay_after_the_grace_window_ends_the_session,
    a_token_two_rotations_old_ends_the_session_within_the_grace_window,
    racing_refreshes_without_a_grace_window_end_the_session,
    failures_look_alike_then_lock_until_unlocked,
    concurrent_guesses_evaluate_only_the_lockout_limit,
    first_login_must_change_the_password,
    verify_token_demands_scopes_and_roles,
    forged_and_broken_tokens_are_refused,
    jwks_never_publishes_the_hs256_secret,
    admin_create_user_validates,
    admin_sessions_and_export,
    admin_delete_user_erases,
    audit_trail_of_a_session,
    logins_are_throttled_per_client_ip,
);

/// Accounts stored before usernames were normalised keep working under their exact name.
async fn a_name_stored_before_normalisation_still_logs_in(backend: Backend) {
    use portcullis_server::auth::store::AuthStore;
    use portcullis_server::store::RedisStore;
    use portcullis_server::store::redis::{RedisSecurity, RedisTarget};
    use portcullis_tests::server::{shared_cluster_seeds, shared_redis_url};

    let api = Api::start(backend, "").await;
    let target = match backend {
        Backend::Redis => {
            RedisTarget::Single(tokio::task::spawn_blocking(shared_redis_url).await.unwrap())
        }
        Backend::Cluster => RedisTarget::Cluster(
            tokio::task::spawn_blocking(shared_cluster_seeds)
                .await
                .unwrap(),
        ),
        Backend::Memory => unreachable!("the server's memory store is out of the test's reach"),
    };
    let store = RedisStore::connect(&target, &RedisSecurity::default(), Duration::from_secs(5))
        .await
        .unwrap();
    // A record as an older version wrote it: a name the profile refuses today (inner space,
    // capitals), with a real hash of GOOD borrowed from an account made through the API.
    let donor = api.create_user("donor", GOOD, READER, Some(false)).await;
    let mut legacy = store
        .get_user(&api.tenant, &donor.user_id)
        .await
        .unwrap()
        .unwrap();
    legacy.user_id = unique("legacy-id");
    legacy.username = "Old Style".to_owned();
    assert!(store.create_user(&legacy).await.unwrap());

    let login = api.login("Old Style", GOOD).await.unwrap();
    assert_eq!(login.user_id, legacy.user_id);
    refused(
        api.login("Old Style", WRONG).await,
        Code::Unauthenticated,
        "INVALID_CREDENTIALS",
    );
}

mod stored_before_normalisation {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        super::a_name_stored_before_normalisation_still_logs_in(super::Backend::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        super::a_name_stored_before_normalisation_still_logs_in(super::Backend::Cluster).await;
    }
}
