//! End-to-end authentication over real `portcullis` processes: lockout counted across replicas
//! on one Redis or a Redis Cluster, revocation reaching every replica, key rotation by live
//! reload of a key-set file, tokens checked both ways with an independent JWT library
//! (jwt-simple, which shares no code with the server's jsonwebtoken), refusals to start with
//! unsafe keys, a login flood that keeps memory bounded, and secrets kept out of the log.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::future::join_all;
use jwt_simple::prelude::{
    Claims, Ed25519KeyPair, Ed25519PublicKey, EdDSAKeyPairLike, EdDSAPublicKeyLike, HS256Key,
    HeaderOptions, JWTClaims, MACLike, Token, UnixTimeStamp, VerificationOptions,
};
use portcullis_client::pb;
use portcullis_tests::auth::{AuthApi, admin_request, env_kid, refusal};
use portcullis_tests::harness::{
    ManagedChild, PortcullisProcess, RedisCluster, RedisServer, free_port, portcullis_binary,
};
use portcullis_tests::key_files::{generate_ed25519, key_entry, kid_of, replace_file};
use portcullis_tests::server::{ADMIN_TOKEN, JWT_SECRET, unique};
use serde_json::Value;
use tempfile::TempDir;
use tonic::Code;

/// A password that meets the default ("guide") policy.
const PASSWORD: &str = "Vq7#mLx2!pRz9w";
/// Another policy-compliant password, for ChangePassword.
const NEW_PASSWORD: &str = "Hs4%tWq8@nLc3y";
/// Roles every test user gets.
const ROLES: [&str; 2] = ["reader", "writer"];
/// How often a condition that must become true is checked.
const POLL: Duration = Duration::from_millis(50);
/// The spec: a revocation reaches every replica within 1 s; 0.5 s more covers the polling.
const REVOCATION_DEADLINE: Duration = Duration::from_millis(1500);
/// How long a key-set change may take to be in force with `key_set_poll = "100ms"`.
const KEY_SET_DEADLINE: Duration = Duration::from_secs(3);
/// Longest a refused start may take before the test calls it a hang.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

/// `[auth]` lines of every config: logins throttled by neither client IP nor tenant (the tests
/// log in from one address).
const AUTH_BASE: &str = "login_limit_per_ip = \"100000/1m\"\nlogin_limit_per_ip_all_tenants = \"100000/1m\"\nlogin_limit_per_tenant = \"100000/1m\"\n";
/// Argon2 cheap enough for tests that are not about hashing cost.
const CHEAP_ARGON2: &str = "[auth.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\npermits_per_client_ip = 64\n";

/// Serialises the test that saturates both cores with Argon2 and the test with a wall-clock
/// propagation deadline, so the flood cannot make the deadline test miss its deadline.
static CPU_HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The Redis a group of replicas shares; the servers stop when it is dropped.
enum SharedStore {
    Redis(RedisServer),
    Cluster(RedisCluster),
}

impl SharedStore {
    /// Starts a single redis-server, or a Redis Cluster when `cluster` is true.
    async fn start(cluster: bool) -> SharedStore {
        tokio::task::spawn_blocking(move || {
            if cluster {
                SharedStore::Cluster(RedisCluster::start())
            } else {
                SharedStore::Redis(RedisServer::start())
            }
        })
        .await
        .unwrap()
    }

    /// The portcullis arguments that select this store.
    fn args(&self) -> Vec<String> {
        match self {
            SharedStore::Redis(redis) => vec!["--redis-url".into(), redis.url()],
            SharedStore::Cluster(cluster) => {
                vec!["--redis-cluster".into(), cluster.seed_urls().join(",")]
            }
        }
    }
}

/// Writes `portcullis.toml` into `dir` (`[auth]` with [`AUTH_BASE`] and `auth`, then the
/// `[auth.argon2]` table `argon2`) and returns `--config <path>`.
fn config_args(dir: &Path, auth: &str, argon2: &str) -> Vec<String> {
    let path = dir.join("portcullis.toml");
    fs::write(&path, format!("[auth]\n{AUTH_BASE}{auth}\n{argon2}")).unwrap();
    vec!["--config".into(), path.to_str().unwrap().to_owned()]
}

/// Starts `count` processes with `args` and the admin token, info logs and `envs` in their
/// environment (off the async workers: starting waits for the port).
async fn spawn(count: usize, args: Vec<String>, envs: &[(&str, &str)]) -> Vec<PortcullisProcess> {
    let mut env: Vec<(String, String)> = vec![
        ("PORTCULLIS_ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
        ("RUST_LOG".into(), "info".into()),
    ];
    env.extend(envs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        (0..count)
            .map(|_| PortcullisProcess::spawn(&args, &env))
            .collect()
    })
    .await
    .unwrap()
}

/// Connects to `process`, on `tenant` (each call gets its own connection).
async fn connect(process: &PortcullisProcess, tenant: &str) -> AuthApi {
    AuthApi::connect(&process.endpoint())
        .await
        .with_tenant(tenant)
}

/// Connects to every process, all on `tenant`.
async fn connect_all(processes: &[PortcullisProcess], tenant: &str) -> Vec<AuthApi> {
    join_all(processes.iter().map(|process| connect(process, tenant))).await
}

/// Polls `probe` every [`POLL`] until it returns `Some`; panics naming `what` after `within`.
async fn eventually<T>(
    what: &str,
    within: Duration,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(POLL).await;
    }
}

/// Issuer and audience of the test servers' tokens (the defaults).
const ISSUER_AND_AUDIENCE: &str = "portcullis";
/// The `typ` header of access tokens (RFC 9068).
const ACCESS_TOKEN_TYPE: &str = "at+jwt";

/// The claims of an access token that jwt-simple does not model itself, kept as JSON.
type OtherClaims = serde_json::Map<String, Value>;

/// What the independent library verifies a token with.
enum IndependentKey<'a> {
    /// The HS256 secret the server shares.
    Secret(&'a str),
    /// An Ed25519 public key as GetJwks publishes it.
    Jwk(&'a Value),
}

/// Verifies `token` with jwt-simple given `key`: the signature, with the key's own algorithm
/// only; `iss` and `aud` both `portcullis`; `exp`, `nbf` and `iat` against the wall clock
/// without leeway; the `typ` header. Returns `{"header": ..., "claims": ...}`.
fn independent_decode(token: &str, key: IndependentKey<'_>) -> Value {
    let options = VerificationOptions {
        allowed_issuers: Some(HashSet::from([ISSUER_AND_AUDIENCE.to_owned()])),
        allowed_audiences: Some(HashSet::from([ISSUER_AND_AUDIENCE.to_owned()])),
        // jwt-simple matches it ignoring case; the exact value is asserted from the header.
        required_signature_type: Some(ACCESS_TOKEN_TYPE.to_owned()),
        // jwt-simple's own clock is coarse (up to a tick behind), which could put a token
        // issued this very second in the future: the precise wall clock instead, no leeway.
        artificial_time: Some(UnixTimeStamp::from_millis(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis()
                .try_into()
                .unwrap(),
        )),
        time_tolerance: None,
        ..VerificationOptions::default()
    };
    let verified: Result<JWTClaims<OtherClaims>, _> = match key {
        IndependentKey::Secret(secret) => {
            HS256Key::from_bytes(secret.as_bytes()).verify_token(token, Some(options))
        }
        IndependentKey::Jwk(jwk) => {
            // A key for EdDSA: OKP on Ed25519, naming no other algorithm.
            assert_eq!(jwk["kty"], "OKP", "{jwk}");
            assert_eq!(jwk["crv"], "Ed25519", "{jwk}");
            assert!(jwk["alg"].is_null() || jwk["alg"] == "EdDSA", "{jwk}");
            let x = URL_SAFE_NO_PAD
                .decode(jwk["x"].as_str().expect("the JWK has x"))
                .expect("x is base64url");
            Ed25519PublicKey::from_bytes(&x)
                .expect("x is an Ed25519 public key")
                .verify_token(token, Some(options))
        }
    };
    let claims = verified.unwrap_or_else(|e| panic!("jwt-simple refused the token: {e}"));
    // Read without checks of its own: jwt-simple has checked the signature over it above.
    let header = Token::decode_metadata(token).unwrap();
    serde_json::json!({
        "header": {
            "alg": header.algorithm(),
            "kid": header.key_id(),
            "typ": header.signature_type(),
        },
        "claims": claims,
    })
}

/// What the independent library signs a token with: the key and the kid the server knows it by.
enum IndependentSigner {
    Hs256(HS256Key),
    EdDsa(Ed25519KeyPair),
}

/// Makes an access token with jwt-simple, as the server makes them: header `typ: at+jwt` and
/// the signer's `kid`; claims `iss`, `aud`, `sub`, `tid`, `sid`, `jti`, `iat`, `nbf`, `exp`,
/// `roles` and `scope`. Returns the token and its `exp`.
fn independent_mint(
    signer: &IndependentSigner,
    login: &pb::LoginResponse,
    tenant: &str,
) -> (String, u64) {
    let other: OtherClaims = serde_json::json!({
        "tid": tenant,
        "sid": login.session_id,
        "roles": ROLES,
        "scope": "api",
    })
    .as_object()
    .unwrap()
    .clone();
    let claims = Claims::with_custom_claims(other, jwt_simple::prelude::Duration::from_mins(10))
        .with_issuer(ISSUER_AND_AUDIENCE)
        .with_audience(ISSUER_AND_AUDIENCE)
        .with_subject(&login.user_id)
        .with_jwt_id(unique("jwt-simple"));
    let exp = claims.expires_at.unwrap().as_secs();
    let header = HeaderOptions {
        signature_type: Some(ACCESS_TOKEN_TYPE.to_owned()),
        ..HeaderOptions::default()
    };
    let token = match signer {
        IndependentSigner::Hs256(key) => key.authenticate_with_options(claims, &header),
        IndependentSigner::EdDsa(key) => key.sign_with_options(claims, &header),
    };
    (token.unwrap(), exp)
}

/// Runs the portcullis binary with `args` and, besides the admin token, only `envs` among the
/// portcullis and JWT variables, until it exits; returns its status and output.
fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (ExitStatus, String) {
    let dir = TempDir::new().unwrap();
    let log_path = dir.path().join("portcullis.log");
    let log = File::create(&log_path).unwrap();
    let mut cmd = Command::new(portcullis_binary());
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{}", free_port()))
        .args(args)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("PORTCULLIS_") || name.starts_with("JWT_SECRET_KEY") {
            cmd.env_remove(name.as_ref());
        }
    }
    cmd.env("PORTCULLIS_ADMIN_TOKEN", ADMIN_TOKEN)
        .envs(envs.iter().copied());
    let mut child = ManagedChild::spawn(cmd).unwrap();
    let status = child.wait_timeout(EXIT_TIMEOUT);
    let output = fs::read_to_string(&log_path).unwrap();
    let status = status.unwrap_or_else(|| {
        panic!("portcullis still runs after {EXIT_TIMEOUT:?}; it should refuse to start:\n{output}")
    });
    (status, output)
}

/// Peak resident memory of process `pid` (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/<pid>/status")
}

/// Log lines written under tracing target `audit` (text or JSON format).
fn audit_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains(" audit: ") || line.contains("\"target\":\"audit\""))
        .collect()
}

/// How many warnings and errors about the key-set file (failed reloads) the log has.
fn key_set_failures(log: &str) -> usize {
    log.lines()
        .filter(|line| {
            (line.contains("WARN") || line.contains("ERROR"))
                && line.to_lowercase().contains("key set")
        })
        .count()
}

/// 20 wrong passwords sent at once, round-robin over three processes sharing the store: the
/// lockout counts each attempt before checking it, so exactly 5 are evaluated (answered
/// INVALID_CREDENTIALS) and 15 find the account locked; the right password is then refused too.
async fn parallel_guesses_over_three_processes_evaluate_at_most_five(cluster: bool) {
    let store = SharedStore::start(cluster).await;
    let dir = TempDir::new().unwrap();
    let mut args = config_args(dir.path(), "reveal_lockout = true\n", CHEAP_ARGON2);
    args.extend(store.args());
    let replicas = spawn(3, args, &[("JWT_SECRET_KEY", JWT_SECRET)]).await;
    let apis = connect_all(&replicas, &unique("lockout")).await;
    apis[0]
        .create_user("guessed", PASSWORD, &ROLES, Some(false))
        .await;

    let guesses = join_all((0..20).map(|i| {
        let api = apis[i % apis.len()].clone();
        async move { api.login("guessed", &format!("Wrong#Guess{i:02}x")).await }
    }))
    .await;
    let mut answers: BTreeMap<(String, String), usize> = BTreeMap::new();
    for guess in guesses {
        let (code, reason) = refusal(guess);
        *answers.entry((format!("{code:?}"), reason)).or_default() += 1;
    }
    eprintln!("answers to 20 parallel wrong guesses: {answers:?}");
    let count = |reason: &str| {
        let key = ("Unauthenticated".to_owned(), reason.to_owned());
        answers.get(&key).copied().unwrap_or_default()
    };
    assert_eq!(
        answers.len(),
        2,
        "only the two expected answers: {answers:?}"
    );
    assert_eq!(count("INVALID_CREDENTIALS"), 5, "{answers:?}");
    assert_eq!(count("ACCOUNT_LOCKED"), 15, "{answers:?}");

    let right = apis[1].login("guessed", PASSWORD).await;
    assert_eq!(
        refusal(right),
        (Code::Unauthenticated, "ACCOUNT_LOCKED".to_owned()),
        "the right password is refused while locked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_over_three_processes_evaluate_at_most_five_on_redis() {
    parallel_guesses_over_three_processes_evaluate_at_most_five(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_over_three_processes_evaluate_at_most_five_on_a_cluster() {
    parallel_guesses_over_three_processes_evaluate_at_most_five(true).await;
}

/// A token issued by replica A verifies on B and C; after a Logout through B, every replica
/// refuses it (SESSION_ENDED) within the 1 s the spec promises.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_every_replica_within_a_second() {
    let _quiet = CPU_HEAVY.lock().await;
    let store = SharedStore::start(false).await;
    let dir = TempDir::new().unwrap();
    let mut args = config_args(dir.path(), "", CHEAP_ARGON2);
    args.extend(store.args());
    let replicas = spawn(3, args, &[("JWT_SECRET_KEY", JWT_SECRET)]).await;
    let apis = connect_all(&replicas, &unique("revoke")).await;
    let user = apis[0]
        .create_user("leaver", PASSWORD, &ROLES, Some(false))
        .await;
    let login = apis[0].login("leaver", PASSWORD).await.unwrap();
    for (name, api) in ["A", "B", "C"].iter().zip(&apis) {
        let claims = api
            .verify(&login.access_token)
            .await
            .unwrap_or_else(|e| panic!("replica {name} refuses a token replica A issued: {e:?}"));
        assert_eq!(claims.user_id, user.user_id);
        assert_eq!(claims.session_id, login.session_id);
    }

    assert!(
        apis[1]
            .logout(&login.refresh_token, "")
            .await
            .unwrap()
            .revoked
    );
    let logged_out = Instant::now();
    let refusals = eventually(
        "every replica refuses the revoked token",
        REVOCATION_DEADLINE,
        async || {
            let results = join_all(apis.iter().map(|api| api.verify(&login.access_token))).await;
            results.iter().all(Result::is_err).then_some(results)
        },
    )
    .await;
    let flipped_after = logged_out.elapsed();
    eprintln!("revocation seen by all three replicas {flipped_after:?} after the logout");
    assert!(
        flipped_after < REVOCATION_DEADLINE,
        "revocation took {flipped_after:?}"
    );
    for result in refusals {
        assert_eq!(
            refusal(result),
            (Code::Unauthenticated, "SESSION_ENDED".to_owned())
        );
    }
}

/// Day 0: k1 (HS256) signs. Day 0b: k2 (EdDSA) is introduced verify-only and published.
/// Day 1: k2 signs, k1 still verifies the old token. Day 7: k1 is gone, so is its token. A
/// broken key-set file keeps the keys in force and is logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_rotation_with_live_reload_keeps_old_tokens_valid() {
    let dir = TempDir::new().unwrap();
    let key_set = dir.path().join("keys.toml");
    fs::write(
        dir.path().join("k1.secret"),
        "k1-secret-0123456789abcdef0123456789abcdef\n",
    )
    .unwrap();
    generate_ed25519(dir.path(), "k2");
    replace_file(&key_set, &key_entry("k1", "HS256", "active"));
    let mut args = config_args(dir.path(), "key_set_poll = \"100ms\"\n", CHEAP_ARGON2);
    args.extend(["--jwt-key-set".into(), key_set.to_str().unwrap().to_owned()]);
    let process = spawn(1, args, &[]).await.pop().unwrap();
    let api = connect(&process, &unique("rotate")).await;
    api.create_user("rotor", PASSWORD, &ROLES, Some(false))
        .await;
    let login = async || api.login("rotor", PASSWORD).await.unwrap();

    // Day 0
    let t1 = login().await.access_token;
    assert_eq!(kid_of(&t1), "k1");
    assert_eq!(api.verify(&t1).await.unwrap().key_id, "k1");

    // Day 0b
    replace_file(
        &key_set,
        &(key_entry("k1", "HS256", "active") + &key_entry("k2", "EdDSA", "verify")),
    );
    let jwks = eventually("GetJwks lists k2", KEY_SET_DEADLINE, async || {
        let jwks = api.jwks().await;
        let listed = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|key| key["kid"] == "k2");
        listed.then_some(jwks)
    })
    .await;
    assert!(
        jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|key| key["kid"] != "k1"),
        "an HS256 secret is never published: {jwks}"
    );
    assert_eq!(kid_of(&login().await.access_token), "k1", "k1 still signs");

    // Day 1
    replace_file(
        &key_set,
        &(key_entry("k1", "HS256", "verify") + &key_entry("k2", "EdDSA", "active")),
    );
    let t2 = eventually(
        "new logins are signed by k2",
        KEY_SET_DEADLINE,
        async || {
            let token = login().await.access_token;
            (kid_of(&token) == "k2").then_some(token)
        },
    )
    .await;
    assert_eq!(api.verify(&t2).await.unwrap().key_id, "k2");
    assert_eq!(
        api.verify(&t1).await.unwrap().key_id,
        "k1",
        "a verify-only key still verifies"
    );

    // Day 7
    replace_file(&key_set, &key_entry("k2", "EdDSA", "active"));
    let gone = eventually(
        "the token of the removed k1 is refused",
        KEY_SET_DEADLINE,
        async || api.verify(&t1).await.err(),
    )
    .await;
    assert_eq!(
        refusal::<()>(Err(gone)),
        (Code::Unauthenticated, "INVALID_TOKEN".to_owned())
    );
    assert_eq!(api.verify(&t2).await.unwrap().key_id, "k2");

    // A broken rewrite
    let failures_before = key_set_failures(&process.log());
    replace_file(&key_set, "[[key]\nkid = \"k3\n");
    eventually(
        "the failed reload is logged",
        KEY_SET_DEADLINE,
        async || (key_set_failures(&process.log()) > failures_before).then_some(()),
    )
    .await;
    assert_eq!(
        api.verify(&t2).await.unwrap().key_id,
        "k2",
        "the previous keys stay in force"
    );
    assert_eq!(kid_of(&login().await.access_token), "k2");
}

/// jwt-simple, an independent implementation, accepts an HS256 token (given the shared secret)
/// and an EdDSA token (given the public key from GetJwks), and reads the claims the spec lists;
/// and the server accepts the tokens jwt-simple makes with the same keys and reports their
/// claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_verify_with_an_independent_jwt_library() {
    let dir = TempDir::new().unwrap();
    generate_ed25519(dir.path(), "ed-1");
    let key_set = dir.path().join("keys.toml");
    replace_file(&key_set, &key_entry("ed-1", "EdDSA", "active"));
    let config = config_args(dir.path(), "", CHEAP_ARGON2);
    let mut eddsa_args = config.clone();
    eddsa_args.extend(["--jwt-key-set".into(), key_set.to_str().unwrap().to_owned()]);
    let hs256 = spawn(1, config, &[("JWT_SECRET_KEY", JWT_SECRET)]).await;
    let eddsa = spawn(1, eddsa_args, &[]).await;

    for (process, key_kind) in [(&hs256[0], "HS256"), (&eddsa[0], "EdDSA")] {
        let tenant = unique("jwt-simple");
        let api = connect(process, &tenant).await;
        api.create_user("independent", PASSWORD, &ROLES, Some(false))
            .await;
        let login = api.login("independent", PASSWORD).await.unwrap();
        let kid = kid_of(&login.access_token);
        let (decoded, signer) = if key_kind == "HS256" {
            assert_eq!(kid, env_kid(JWT_SECRET), "kid derived as the spec says");
            let decoded =
                independent_decode(&login.access_token, IndependentKey::Secret(JWT_SECRET));
            let key = HS256Key::from_bytes(JWT_SECRET.as_bytes()).with_key_id(&kid);
            (decoded, IndependentSigner::Hs256(key))
        } else {
            let jwks = api.jwks().await;
            let jwk = jwks["keys"]
                .as_array()
                .unwrap()
                .iter()
                .find(|key| key["kid"] == kid.as_str())
                .unwrap_or_else(|| panic!("GetJwks lacks the signing key {kid}: {jwks}"));
            let decoded = independent_decode(&login.access_token, IndependentKey::Jwk(jwk));
            let pem = fs::read_to_string(dir.path().join("ed-1.pem")).unwrap();
            let key = Ed25519KeyPair::from_pem(&pem).unwrap().with_key_id(&kid);
            (decoded, IndependentSigner::EdDsa(key))
        };
        eprintln!("{key_kind} token as jwt-simple reads it: {decoded}");
        let (header, claims) = (&decoded["header"], &decoded["claims"]);
        assert_eq!(header["typ"], "at+jwt");
        assert_eq!(header["alg"], key_kind);
        assert_eq!(header["kid"], kid.as_str());
        assert_eq!(claims["sub"], login.user_id.as_str());
        assert_eq!(claims["tid"], tenant.as_str());
        assert_eq!(claims["sid"], login.session_id.as_str());
        assert_eq!(claims["scope"], "api");
        assert_eq!(claims["roles"], serde_json::json!(ROLES));
        for claim in ["jti", "iat", "nbf", "exp"] {
            assert!(!claims[claim].is_null(), "claim {claim} missing: {claims}");
        }

        // The other way round: a token jwt-simple made with the same key verifies here.
        let (minted, exp) = independent_mint(&signer, &login, &tenant);
        let verified = api
            .verify(&minted)
            .await
            .unwrap_or_else(|e| panic!("the server refused jwt-simple's {key_kind} token: {e:?}"));
        assert_eq!(verified.user_id, login.user_id);
        assert_eq!(verified.tenant_id, tenant);
        assert_eq!(verified.session_id, login.session_id);
        assert_eq!(verified.roles, ROLES);
        assert_eq!(verified.scopes, ["api"]);
        assert_eq!(verified.key_id, kid);
        assert_eq!(
            verified.expires_at.map(|at| at.seconds),
            Some(i64::try_from(exp).unwrap())
        );
    }
}

/// Replicas on a shared Redis must share keys: without one, portcullis refuses to start and
/// says which settings to give.
#[test]
fn refuses_to_start_without_a_shared_key_on_redis() {
    let redis = RedisServer::start();
    let (status, log) = run_to_exit(&["--redis-url", &redis.url()], &[]);
    assert!(!status.success(), "{status}\n{log}");
    assert!(log.contains("JWT_SECRET_KEY"), "{log}");
    assert!(log.contains("--jwt-key-set"), "{log}");
}

/// An HS256 secret under 32 bytes is refused at start, and the message does not repeat it.
#[test]
fn refuses_a_short_secret() {
    // Distinctive, so that finding it in the log cannot be an ordinary word of the message.
    const SHORT: &str = "tiny-Secret-7Qz";
    let (status, log) = run_to_exit(&[], &[("JWT_SECRET_KEY", SHORT)]);
    assert!(!status.success(), "{status}\n{log}");
    // The key-generation hint (`openssl rand -hex 32`) also says 32; the minimum must be named
    // apart from it.
    let message = log.replace("rand -hex 32", "");
    assert!(
        message.contains("32") && message.contains("bytes"),
        "the message names the 32-byte minimum:\n{log}"
    );
    assert!(!log.contains(SHORT), "the log repeats the secret:\n{log}");
}

/// 200 concurrent logins with the default 64 MiB Argon2 and 2 permits: hashing sheds load
/// (HASHING_OVERLOADED) instead of growing memory, VerifyToken (no hashing) keeps answering,
/// and peak RSS stays under permits × 64 MiB + 128 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flood_keeps_memory_bounded_while_verify_answers() {
    const PERMITS: u64 = 2;
    const HASH_MIB: u64 = 64;
    const BASE_MIB: u64 = 128;
    const WORKERS: usize = 200;
    const FLOOD: Duration = Duration::from_secs(5);
    let _exclusive = CPU_HEAVY.lock().await;
    let dir = TempDir::new().unwrap();
    // The flood comes from one address; its share is lifted above the flood (every worker may
    // wait for the hasher), so the hasher's own shedding is what is tested here.
    let argon2 = format!(
        "[auth.argon2]\npermits = {PERMITS}\npermits_per_client_ip = {}\nqueue_timeout = \"200ms\"\n",
        2 * WORKERS
    );
    let args = config_args(dir.path(), "", &argon2);
    let mut process = spawn(1, args, &[("JWT_SECRET_KEY", JWT_SECRET)])
        .await
        .pop()
        .unwrap();
    let api = connect(&process, &unique("flood")).await;
    api.create_user("steady", PASSWORD, &ROLES, Some(false))
        .await;
    let token = api.login("steady", PASSWORD).await.unwrap().access_token;

    let flooding = Arc::new(AtomicBool::new(true));
    let verifier = {
        let api = connect(&process, &api.tenant).await;
        let flooding = Arc::clone(&flooding);
        tokio::spawn(async move {
            let (mut answered, mut failures) = (0_u64, Vec::new());
            while flooding.load(Ordering::Relaxed) {
                match api.verify(&token).await {
                    Ok(_) => answered += 1,
                    Err(status) => failures.push(status),
                }
            }
            (answered, failures)
        })
    };
    let deadline = Instant::now() + FLOOD;
    let workers = (0..WORKERS).map(|worker| {
        let api = api.clone();
        async move {
            let mut answers = Vec::new();
            for attempt in 0.. {
                if Instant::now() >= deadline {
                    break;
                }
                let username = format!("flood-{worker}-{attempt}");
                answers.push(refusal(api.login(&username, "Wrong#Flood123x").await));
            }
            answers
        }
    });
    let answers: Vec<(Code, String)> = join_all(workers).await.into_iter().flatten().collect();
    flooding.store(false, Ordering::Relaxed);
    let (verified, verify_failures) = verifier.await.unwrap();
    let peak_kib = peak_rss_kib(process.child().pid());

    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (code, reason) in &answers {
        *tally.entry(format!("{code:?} {reason}")).or_default() += 1;
    }
    let bound_mib = PERMITS * HASH_MIB + BASE_MIB;
    eprintln!(
        "{} logins in {FLOOD:?}: {tally:?}; VerifyToken answered {verified} times, failed {}; peak RSS {} MiB (bound {bound_mib} MiB)",
        answers.len(),
        verify_failures.len(),
        peak_kib / 1024
    );
    assert!(
        verify_failures.is_empty(),
        "VerifyToken failed during the flood: {:?}",
        &verify_failures[..verify_failures.len().min(5)]
    );
    assert!(verified > 0, "VerifyToken never answered during the flood");
    let overloaded = tally
        .get("ResourceExhausted HASHING_OVERLOADED")
        .copied()
        .unwrap_or_default();
    assert!(overloaded > 0, "no login was shed: {tally:?}");
    let unexpected: Vec<_> = tally
        .keys()
        .filter(|k| {
            *k != "ResourceExhausted HASHING_OVERLOADED"
                && *k != "Unauthenticated INVALID_CREDENTIALS"
        })
        .collect();
    assert!(unexpected.is_empty(), "unexpected answers: {tally:?}");
    assert!(
        peak_kib < bound_mib * 1024,
        "peak RSS {} MiB over the documented bound {bound_mib} MiB",
        peak_kib / 1024
    );
}

/// Logins (right, wrong, unknown user), a rejected and an accepted password change, refreshes
/// with a reuse, a logout and a refused admin call: the log keeps none of the passwords, keys or
/// tokens involved, and has audit lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_reach_the_log() {
    const WRONG: &str = "Wrong#Pass4821x";
    const UNKNOWN_USER_PASSWORD: &str = "Nobody#Pass7730q";
    const WEAK: &str = "weakpass";
    const BAD_ADMIN_TOKEN: &str = "not-the-admin-token-5e8d1";
    let dir = TempDir::new().unwrap();
    let args = config_args(dir.path(), "", CHEAP_ARGON2);
    let process = spawn(1, args, &[("JWT_SECRET_KEY", JWT_SECRET)])
        .await
        .pop()
        .unwrap();
    let api = connect(&process, &unique("secrets")).await;
    let mut tokens = Vec::new();

    api.create_user("keeper", PASSWORD, &ROLES, None).await;
    let first = api.login("keeper", PASSWORD).await.unwrap();
    assert!(first.password_change_required);
    assert_eq!(
        refusal(api.login("keeper", WRONG).await).1,
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        refusal(api.login("nobody", UNKNOWN_USER_PASSWORD).await).1,
        "INVALID_CREDENTIALS"
    );
    assert_eq!(
        refusal(
            api.change_password(&first.access_token, PASSWORD, WEAK)
                .await
        )
        .0,
        Code::InvalidArgument
    );
    api.change_password(&first.access_token, PASSWORD, NEW_PASSWORD)
        .await
        .unwrap();
    let second = api.login("keeper", NEW_PASSWORD).await.unwrap();
    let refreshed = api.refresh(&second.refresh_token).await.unwrap();
    assert_eq!(
        refusal(api.refresh(&second.refresh_token).await),
        (Code::Unauthenticated, "SESSION_ENDED".to_owned()),
        "a reused refresh token ends the session"
    );
    let third = api.login("keeper", NEW_PASSWORD).await.unwrap();
    assert!(api.logout("", &third.access_token).await.unwrap().revoked);
    let refused = api
        .admin()
        .get_user(admin_request(
            pb::GetUserRequest {
                tenant_id: api.tenant.clone(),
                user_id: String::new(),
                username: "keeper".into(),
            },
            BAD_ADMIN_TOKEN,
        ))
        .await;
    assert_eq!(refusal(refused).0, Code::Unauthenticated);
    for login in [&first, &second, &refreshed, &third] {
        tokens.push(login.access_token.clone());
        tokens.push(login.refresh_token.clone());
    }

    let log = eventually("audit lines in the log", KEY_SET_DEADLINE, async || {
        let log = process.log();
        (!audit_lines(&log).is_empty()).then_some(log)
    })
    .await;
    eprintln!("{} audit lines", audit_lines(&log).len());
    let secrets = [
        ("the initial password", PASSWORD),
        ("the new password", NEW_PASSWORD),
        ("a wrong password", WRONG),
        ("an unknown user's password", UNKNOWN_USER_PASSWORD),
        ("a weak new password", WEAK),
        ("JWT_SECRET_KEY", JWT_SECRET),
        ("the admin token", ADMIN_TOKEN),
        ("a wrong admin token", BAD_ADMIN_TOKEN),
    ];
    let tokens = tokens.iter().map(|t| ("an issued token", t.as_str()));
    for (what, secret) in secrets.into_iter().chain(tokens) {
        assert!(!log.contains(secret), "the log contains {what}:\n{log}");
    }
}
