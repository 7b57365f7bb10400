//! The `Portcullis` client handle against real in-process servers: balancing and failover over
//! replicas on the shared Redis, DNS, typed errors, retries, TLS reload, and the test kit.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;

use portcullis_client::testing::TestPortcullis;
use portcullis_client::{CallKind, Code, Error, Portcullis, Reason};
use portcullis_server::config::Config;
use portcullis_tests::harness::free_port;
use portcullis_tests::server::{ADMIN_TOKEN, JWT_SECRET, shared_redis_url, unique};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A password the policy accepts.
const GOOD: &str = "Vq7#mLx2!pRz9w";
/// A wrong guess.
const WRONG: &str = "Wrong-Guess-42!x";
/// Longest wait for something that happens in the background (a restart, a reload).
const EVENTUALLY: Duration = Duration::from_secs(15);

/// A server run in-process on a chosen address, stopped (and waited for) on `stop`.
struct Replica {
    /// Where it listens (a restarted replica binds the same one).
    addr: SocketAddr,
    /// Dropping it starts the shutdown.
    stop: tokio::sync::oneshot::Sender<()>,
    /// Ends when the server has stopped and released its port.
    done: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Runs a server with `args` (and the test admin token and JWT secret) on `addr`
    /// (port 0: any).
    async fn start(addr: SocketAddr, args: &[&str]) -> Replica {
        let mut argv = vec!["portcullis", "--metrics-listen", "off"];
        argv.extend_from_slice(args);
        let env: HashMap<String, String> = [
            ("PORTCULLIS_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()),
            ("JWT_SECRET_KEY".to_owned(), JWT_SECRET.to_owned()),
        ]
        .into();
        let config = Config::load(argv, &env).expect("valid config");
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            portcullis_server::run(config, listener, shutdown)
                .await
                .expect("server runs");
        });
        Replica { addr, stop, done }
    }

    /// A server on any port of 127.0.0.1.
    async fn any(args: &[&str]) -> Replica {
        Self::start("127.0.0.1:0".parse().unwrap(), args).await
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until it has stopped (its port refuses connections).
    async fn stop(self) {
        drop(self.stop);
        self.done.await.unwrap();
    }
}

async fn redis_args() -> Vec<String> {
    let url = tokio::task::spawn_blocking(shared_redis_url).await.unwrap();
    vec!["--redis-url".to_owned(), url]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A handle on `urls` with deadlines generous enough for a debug build on a busy machine.
fn handle(urls: &[String]) -> Portcullis {
    Portcullis::builder()
        .endpoints(urls.iter().cloned())
        .resolve_every(Duration::from_millis(200))
        .deadline(CallKind::RateLimit, Duration::from_secs(5))
        .deadline(CallKind::Verify, Duration::from_secs(5))
        .max_attempts(5)
        .admin_token(ADMIN_TOKEN)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_replica() {
    // Memory stores: each replica counts on its own, so the first call a replica serves is the
    // one that leaves `limit - 1` units, and there are as many of those as replicas served.
    let args = ["--default-limit", "1000/1h"];
    let replicas = [
        Replica::any(&args).await,
        Replica::any(&args).await,
        Replica::any(&args).await,
    ];
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let portcullis = handle(&urls);
    let key = unique("spread");
    let mut firsts = 0;
    for _ in 0..90 {
        let decision = portcullis.check("acme", "search", &key, 1).await.unwrap();
        if decision.remaining + 1 == decision.limit {
            firsts += 1;
        }
    }
    assert_eq!(firsts, 3, "every replica served calls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_across_replicas_on_redis() {
    let args = redis_args().await;
    let mut replicas = vec![
        Replica::any(&strs(&args)).await,
        Replica::any(&strs(&args)).await,
        Replica::any(&strs(&args)).await,
    ];
    let first_addr = replicas[0].addr;
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();
    let portcullis = handle(&urls);
    let tenant = unique("failover");
    for _ in 0..30 {
        portcullis.check(&tenant, "search", "k", 1).await.unwrap();
    }

    // One replica stops: every later call succeeds on the others.
    replicas.remove(0).stop().await;
    for i in 0..200 {
        if let Err(e) = portcullis.check(&tenant, "search", "k", 1).await {
            panic!("call {i} after one replica stopped: {e:?}");
        }
    }

    // All stop: a typed transport error.
    for replica in replicas.drain(..) {
        replica.stop().await;
    }
    let error = portcullis
        .check(&tenant, "search", "k", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                never_sent: true,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(error.code(), Code::Unavailable);
    assert!(error.is_retryable());

    // A replica comes back on a listed address: calls succeed again.
    let _back = Replica::start(first_addr, &strs(&args)).await;
    let until = tokio::time::Instant::now() + EVENTUALLY;
    while portcullis.check(&tenant, "search", "k", 1).await.is_err() {
        assert!(tokio::time::Instant::now() < until, "no call succeeded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..50 {
        if let Err(e) = portcullis.check(&tenant, "search", "k", 1).await {
            panic!("call {i} after the restart: {e:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_names_are_resolved() {
    let replica = Replica::any(&[]).await;
    let portcullis = Portcullis::builder()
        .dns("localhost", replica.addr.port())
        .deadline(CallKind::RateLimit, Duration::from_secs(5))
        .build()
        .unwrap();
    let decision = portcullis.check("acme", "search", "k", 1).await.unwrap();
    assert!(decision.allowed);
}

/// A config file making logins cheap, throttled at 3 per minute per client IP, and locks
/// revealed.
fn auth_config() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        "[auth]\nreveal_lockout = true\nlogin_limit_per_ip = \"3/1m\"\n\n[auth.argon2]\nmemory_kib = 1024\niterations = 1\nparallelism = 1\n",
    )
    .unwrap();
    (dir, path)
}

fn login_from(
    tenant: &str,
    username: &str,
    password: &str,
    ip: &str,
) -> portcullis_client::pb::LoginRequest {
    portcullis_client::pb::LoginRequest {
        tenant_id: tenant.to_owned(),
        username: username.to_owned(),
        password: password.to_owned(),
        client_ip: ip.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_typed() {
    let (_dir, path) = auth_config();
    let replica = Replica::any(&["--config", path.to_str().unwrap()]).await;
    let portcullis = handle(&[replica.url()]);
    let tenant = unique("errors");
    portcullis
        .create_user(&tenant, "alice", GOOD, &["reader"], false)
        .await
        .unwrap();

    let error = portcullis
        .login_with(login_from(&tenant, "alice", WRONG, "198.51.100.1"))
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Some(&Reason::InvalidCredentials));
    assert_eq!(error.code(), Code::Unauthenticated);
    assert!(!error.is_retryable());

    let login = portcullis
        .login_with(login_from(&tenant, "alice", GOOD, "198.51.100.2"))
        .await
        .unwrap();
    let error = portcullis
        .change_password(&login.access_token, GOOD, "short")
        .await
        .unwrap_err();
    assert!(
        matches!(error.reason(), Some(Reason::WeakPassword { rule }) if !rule.is_empty()),
        "{error:?}"
    );
    assert_eq!(error.field_violations()[0].field, "new_password");

    let error = portcullis
        .verify_token(&login.access_token, Some(&tenant), &["orders:write"], &[])
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Some(&Reason::InsufficientScope));
    assert_eq!(error.code(), Code::PermissionDenied);
    let error = portcullis
        .verify_token(&login.access_token, Some(&tenant), &[], &["admin"])
        .await
        .unwrap_err();
    assert_eq!(error.reason(), Some(&Reason::InsufficientRole));
    let error = portcullis
        .verify_token("not-a-token", None, &[], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(error.reason(), Some(Reason::InvalidToken { problem }) if !problem.is_empty()),
        "{error:?}"
    );

    let error = portcullis
        .check("bad\u{1}tenant", "search", "k", 1)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::InvalidArgument);
    assert_eq!(error.field_violations()[0].field, "tenant_id");
    assert!(error.reason().is_none());

    // Three logins a minute from one address, then LOGIN_THROTTLED with a delay.
    let ip = "198.51.100.50";
    let mut throttled = None;
    for _ in 0..4 {
        if let Err(e) = portcullis
            .login_with(login_from(&tenant, "alice", GOOD, ip))
            .await
        {
            throttled = Some(e);
            break;
        }
    }
    let error = throttled.expect("throttled by the fourth login");
    assert_eq!(error.reason(), Some(&Reason::LoginThrottled));
    assert_eq!(error.code(), Code::ResourceExhausted);
    assert!(error.retry_after().is_some_and(|d| !d.is_zero()));
    assert!(error.is_retryable());

    // Wrong passwords (each from its own address, below the throttle) lock the account.
    portcullis
        .create_user(&tenant, "bob", GOOD, &["reader"], false)
        .await
        .unwrap();
    let mut locked = None;
    for i in 0..20 {
        let ip = format!("198.51.100.{}", 100 + i);
        match portcullis
            .login_with(login_from(&tenant, "bob", WRONG, &ip))
            .await
            .unwrap_err()
            .reason()
        {
            Some(Reason::InvalidCredentials) => {}
            _ => {
                let e = portcullis
                    .login_with(login_from(&tenant, "bob", GOOD, "198.51.100.99"))
                    .await
                    .unwrap_err();
                locked = Some(e);
                break;
            }
        }
    }
    let error = locked.expect("bob is locked");
    assert_eq!(error.reason(), Some(&Reason::AccountLocked), "{error:?}");
    assert!(error.retry_after().is_some(), "{error:?}");
    assert!(!format!("{error}").contains(GOOD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_retried_until_a_late_server_listens() {
    let args = redis_args().await;
    // A user and a token from a replica on the shared Redis.
    let early = Replica::any(&strs(&args)).await;
    let portcullis = handle(&[early.url()]);
    let tenant = unique("late");
    portcullis
        .create_user(&tenant, "carol", GOOD, &["reader"], false)
        .await
        .unwrap();
    let login = portcullis.login(&tenant, "carol", GOOD).await.unwrap();

    // A handle on a port where a replica starts only ~200 ms after the calls.
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let late = Portcullis::builder()
        .endpoints([format!("http://{addr}")])
        .deadline(CallKind::Verify, Duration::from_secs(10))
        .deadline(CallKind::RateLimit, Duration::from_secs(10))
        .max_attempts(20)
        .backoff(Duration::from_millis(50), Duration::from_millis(200))
        .build()
        .unwrap();
    let starter = {
        let args = args.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            Replica::start(addr, &strs(&args)).await
        })
    };
    let claims = late
        .verify_token(&login.access_token, Some(&tenant), &[], &["reader"])
        .await
        .unwrap();
    assert_eq!(claims.user_id, login.user_id);
    // A Check is retried too while it was never sent.
    let decision = late.check(&tenant, "search", "k", 1).await.unwrap();
    assert!(decision.allowed);
    starter.await.unwrap().stop().await;

    // Nothing listening: retried, then reported unavailable (never sent).
    let nowhere = Portcullis::builder()
        .endpoints([format!("http://127.0.0.1:{}", free_port())])
        .deadline(CallKind::RateLimit, Duration::from_secs(10))
        .build()
        .unwrap();
    let error = nowhere.check(&tenant, "search", "k", 1).await.unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                never_sent: true,
                ..
            }
        ),
        "{error:?}"
    );
    early.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_kit_logs_in_a_created_user() {
    let server = TestPortcullis::start().await;
    let portcullis = server.portcullis();
    portcullis
        .create_user("acme", "dave", GOOD, &[], false)
        .await
        .unwrap();
    let login = portcullis.login("acme", "dave", GOOD).await.unwrap();
    assert!(!login.access_token.is_empty());
    assert!(!format!("{server:?}").contains(server.admin_token()));
    // The event stream opens against the server and answers typed: an event, or a status
    // (UNIMPLEMENTED until the server serves it), never a transport error.
    let first = portcullis.watch_security_events("").next().await;
    assert!(
        matches!(first, Some(Ok(_)) | Some(Err(Error::Status { .. }))),
        "{first:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// A CA and a server certificate for localhost/127.0.0.1 it signed, in PEM.
fn ca_and_server_cert(name: &str) -> (String, String, String) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let mut params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "portcullis");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_picked_up_without_a_new_handle() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        // Write then rename: a reader never sees half a file.
        let tmp = dir.path().join(format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca1, cert1, key1) = ca_and_server_cert("ca-1");
    let ca_file = write("ca.pem", &ca1);
    let server_files = |n: u32, cert: &str, key: &str| {
        vec![
            "--tls-cert".to_owned(),
            write(&format!("server{n}.crt"), cert),
            "--tls-key".to_owned(),
            write(&format!("server{n}.key"), key),
        ]
    };
    let args1 = server_files(1, &cert1, &key1);
    let first = Replica::any(&strs(&args1)).await;
    let addr = first.addr;
    let portcullis = Portcullis::builder()
        .endpoints([format!("https://{addr}")])
        .tls(PathBuf::from(&ca_file), None, Some("localhost".to_owned()))
        .reload_every(Duration::from_millis(100))
        .deadline(CallKind::RateLimit, Duration::from_secs(5))
        .build()
        .unwrap();
    portcullis.check("acme", "search", "k", 1).await.unwrap();

    // The server comes back with a certificate from another CA: the old trust refuses it.
    first.stop().await;
    let (ca2, cert2, key2) = ca_and_server_cert("ca-2");
    let args2 = server_files(2, &cert2, &key2);
    let _second = Replica::start(addr, &strs(&args2)).await;
    let error = portcullis
        .check("acme", "search", "k", 1)
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            Error::Unavailable {
                never_sent: true,
                ..
            }
        ),
        "{error:?}"
    );

    // The client's CA file is replaced: the same handle trusts the new CA.
    write("ca.pem", &ca2);
    let until = tokio::time::Instant::now() + EVENTUALLY;
    loop {
        match portcullis.check("acme", "search", "k", 1).await {
            Ok(_) => break,
            Err(e) => assert!(
                tokio::time::Instant::now() < until,
                "the new CA was never used: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for _ in 0..20 {
        portcullis.check("acme", "search", "k", 1).await.unwrap();
    }
}
