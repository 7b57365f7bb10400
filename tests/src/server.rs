//! A real Portcullis server run in-process on `127.0.0.1:0`, on the memory store, a shared
//! single Redis or a shared Redis Cluster (or on any prepared config), stopped through a
//! oneshot when dropped.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_client::PortcullisClient;
use portcullis_server::config::Config;

use crate::harness::{RedisCluster, RedisTarget};

/// The admin token every test server is configured with.
pub const ADMIN_TOKEN: &str = "test-admin-token-4f1c9e2a7b";

/// The HS256 secret (`JWT_SECRET_KEY`) every test server signs access tokens with, unless a
/// test passes its own keys; tests use it to forge and tamper with tokens.
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

/// The store behind a test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The embedded memory store (each server has its own).
    Memory,
    /// One redis-server shared by the tests of this process (or REDIS_URL).
    Redis,
    /// One 3-master + 3-replica Redis Cluster shared by the tests of this process.
    Cluster,
}

/// The shared single Redis, started on first use.
pub fn shared_redis_url() -> String {
    static REDIS: OnceLock<RedisTarget> = OnceLock::new();
    REDIS.get_or_init(RedisTarget::from_env_or_start).url()
}

/// The shared Redis Cluster's seed URLs, started on first use.
pub fn shared_cluster_seeds() -> Vec<String> {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(RedisCluster::start).seed_urls()
}

/// A name no other test (or earlier run against a long-lived REDIS_URL) has used.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{nanos:x}-{}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A server run in-process on `127.0.0.1:0` with a prepared [`Config`], stopped when dropped.
/// Tests that need a config [`TestServer`] does not make (TLS, no admin token) start this and
/// connect as that config requires.
#[derive(Debug)]
pub struct InProcessServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Dropping this stops the server.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl InProcessServer {
    /// Binds `127.0.0.1:0` and runs `config` there until dropped; panics if the server fails.
    pub async fn start(config: Config) -> InProcessServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = portcullis_server::run(config, listener, shutdown).await {
                panic!("test server failed: {e}");
            }
        });
        InProcessServer { addr, _stop: stop }
    }
}

/// A running in-process server and a client connected to it.
#[derive(Debug)]
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// A client with the admin token set.
    pub client: PortcullisClient,
    /// Which store it runs on.
    pub backend: Backend,
    /// Dropping this stops the server.
    _server: InProcessServer,
}

impl TestServer {
    /// Starts a server on `backend` with extra command-line arguments, the admin token and
    /// [`JWT_SECRET`].
    pub async fn start(backend: Backend, extra_args: &[&str]) -> TestServer {
        Self::start_with_env(backend, extra_args, &[("JWT_SECRET_KEY", JWT_SECRET)]).await
    }

    /// Starts a server on `backend` with extra arguments and exactly these environment
    /// variables besides the admin token (which `vars` may override).
    pub async fn start_with_env(
        backend: Backend,
        extra_args: &[&str],
        vars: &[(&str, &str)],
    ) -> TestServer {
        let mut args: Vec<String> = vec!["portcullis".into()];
        match backend {
            Backend::Memory => {}
            Backend::Redis => {
                let url = tokio::task::spawn_blocking(shared_redis_url)
                    .await
                    .expect("redis start");
                args.extend(["--redis-url".into(), url]);
            }
            Backend::Cluster => {
                let seeds = tokio::task::spawn_blocking(shared_cluster_seeds)
                    .await
                    .expect("cluster start");
                args.extend(["--redis-cluster".into(), seeds.join(",")]);
            }
        }
        args.extend(extra_args.iter().map(|a| a.to_string()));
        if !extra_args.contains(&"--metrics-listen") {
            // Many servers share this process: none may take the fixed default port.
            args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        }
        let mut env: std::collections::HashMap<String, String> = [(
            "PORTCULLIS_ADMIN_TOKEN".to_string(),
            ADMIN_TOKEN.to_string(),
        )]
        .into();
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let config = Config::load(&args, &env).expect("test config is valid");
        let server = InProcessServer::start(config).await;
        let addr = server.addr;
        let client = PortcullisClient::connect(format!("http://{addr}"))
            .await
            .expect("connect to test server")
            .with_timeout(std::time::Duration::from_secs(5))
            .with_admin_token(ADMIN_TOKEN)
            .expect("token is a valid header");
        TestServer {
            addr,
            client,
            backend,
            _server: server,
        }
    }
}
