//! Portcullis: authentication and exact per-tenant rate limiting over gRPC.
//!
//! The binary is a thin wrapper over [`run`], which serves on a given listener until a given
//! shutdown future resolves, so tests run the real server in-process on `127.0.0.1:0`.

pub mod auth;
pub mod clock;
pub mod config;
pub mod env;
pub mod grpc;
pub mod keys;
pub mod periodic;
pub mod ratelimit;
pub mod secret_files;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use portcullis_proto::{envoy, pb};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::auth::Authenticator;
use crate::auth::password::{HasherConfigError, PasswordHasher};
use crate::auth::tokens::{KeyRing, KeyRingError, ReloadingKeyRing};
use crate::config::{Config, KeySource, StoreConfig};
use crate::grpc::admin::AdminApi;
use crate::grpc::admin_guard::{AdminAuth, AdminGuard};
use crate::grpc::auth::AuthApi;
use crate::grpc::envoy::EnvoyApi;
use crate::grpc::ratelimit::RateLimitApi;
use crate::ratelimit::Limiter;
use crate::ratelimit::store::StoreError;
use crate::store::{AnyStore, MemoryStore, RedisStore};
use crate::telemetry::http::Readiness;
use crate::telemetry::rpc::RpcTelemetryLayer;

/// How often the memory store drops idle keys.
const MEMORY_SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The store could not be set up.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Serving failed.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not load the descriptors (a build problem).
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The JWT keys could not be loaded.
    #[error("JWT keys: {0}")]
    Keys(#[from] KeyRingError),
    /// The admin HTTP port could not be opened.
    #[error("cannot listen on {0} for /metrics: {1}")]
    MetricsListen(std::net::SocketAddr, std::io::Error),
    /// The password hasher settings are unusable.
    #[error("password hashing: {0}")]
    Hasher(#[from] HasherConfigError),
    /// The TLS certificate, key or client CA could not be loaded.
    #[error("gRPC TLS: {0}")]
    Tls(#[from] tls::TlsError),
}

/// Reports `status` for every Portcullis service and for the server as a whole ("").
async fn set_health(health: &HealthReporter, status: ServingStatus) {
    let services = [
        "",
        <pb::rate_limit_service_server::RateLimitServiceServer<RateLimitApi> as NamedService>::NAME,
        <envoy::rls::rate_limit_service_server::RateLimitServiceServer<EnvoyApi> as NamedService>::NAME,
        <pb::admin_service_server::AdminServiceServer<AdminApi> as NamedService>::NAME,
        <pb::auth_service_server::AuthServiceServer<AuthApi> as NamedService>::NAME,
    ];
    for service in services {
        health.set_service_status(service, status).await;
    }
}

/// Opens the store the config names.
pub async fn open_store(config: &Config) -> Result<AnyStore, StoreError> {
    Ok(match &config.store {
        StoreConfig::Memory => {
            let store = Arc::new(MemoryStore::with_caps(config.memory_key_caps));
            store.spawn_sweeper(MEMORY_SWEEP_EVERY);
            AnyStore::Memory(store)
        }
        StoreConfig::Redis(target) => AnyStore::Redis(
            RedisStore::connect(target, &config.redis_security, config.redis_io_timeout).await?,
        ),
    })
}

/// A future that resolves when `stop` fires (each background task gets its own).
fn stopped(stop: &tokio::sync::broadcast::Sender<()>) -> impl Future<Output = ()> + use<> {
    let mut rx = stop.subscribe();
    async move {
        let _ = rx.recv().await;
    }
}

/// How often counted audit events whose window has ended are looked for and written.
const COUNTED_AUDIT_CHECK: Duration = Duration::from_secs(1);

/// How often histogram buckets are folded for rendering (the exporter's upkeep).
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Retries the store every `every` until it answers and watches for the revocation feed to
/// be read (by its poller), then marks the replica ready, on `/readyz` and gRPC health.
async fn wait_for_store(
    limiter: Arc<Limiter<AnyStore>>,
    auth: Arc<Authenticator<AnyStore>>,
    readiness: Arc<Readiness>,
    health: HealthReporter,
    every: Duration,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    while !readiness.is_ready() {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
        if !readiness.has_store_answered() && limiter.refresh_policies().await.is_ok() {
            readiness.store_answered();
            tracing::info!("store answered");
        }
        if auth.revocations_loaded() {
            readiness.revocations_loaded();
        }
        if readiness.is_ready() {
            set_health(&health, ServingStatus::Serving).await;
            tracing::info!("store answered and revocation feed read; ready");
        }
    }
}

/// Reads the revocation feed once before serving, for at most `patience`, so a replica on a
/// reachable store verifies tokens from its first call; otherwise its poller keeps trying and
/// the replica is not ready until it succeeds.
async fn load_revocations_before_serving(
    auth: &Authenticator<AnyStore>,
    readiness: &Readiness,
    patience: Duration,
) {
    match tokio::time::timeout(patience, auth.load_revocations()).await {
        Ok(Ok(())) => readiness.revocations_loaded(),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "cannot read the revocation feed; verifying no token and not ready until it is read"
        ),
        Err(_) => tracing::warn!(
            "revocation feed not read within {patience:?}; verifying no token and not ready \
             until it is read"
        ),
    }
}

/// Loads the JWT keys the config names.
fn open_keys(config: &Config) -> Result<ReloadingKeyRing, RunError> {
    Ok(match &config.auth.keys {
        KeySource::Env(ring) => ReloadingKeyRing::fixed(ring.clone()),
        KeySource::File(path) => ReloadingKeyRing::open(path)?,
        KeySource::Ephemeral => {
            let ring = KeyRing::generate_ephemeral()?;
            tracing::warn!(
                kid = %ring.active().kid(),
                "no JWT key configured (JWT_SECRET_KEY or --jwt-key-set): signing with a random \
                 key; access tokens will not survive a restart"
            );
            ReloadingKeyRing::fixed(ring)
        }
    })
}

/// The authentication core over `store`, with login throttles on `limiter`.
pub fn open_authenticator(
    config: &Config,
    store: AnyStore,
    limiter: Arc<Limiter<AnyStore>>,
) -> Result<Authenticator<AnyStore>, RunError> {
    let a = &config.auth;
    let hasher = PasswordHasher::new(a.argon2, a.hash_permits, a.hash_queue_timeout)?;
    tracing::info!(
        argon2 = ?a.argon2,
        permits = a.hash_permits,
        memory_bound_mib = hasher.memory_bound_bytes() / (1024 * 1024),
        "password hashing ready"
    );
    let keys = Arc::new(open_keys(config)?);
    Ok(Authenticator::new(store, hasher, keys, a.settings.clone()).with_login_throttle(limiter))
}

/// Serves every gRPC service on `listener` until `shutdown` resolves, then stops taking new
/// calls, reports NOT_SERVING, and lets calls in flight finish for up to the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    // Background work, stopped together at shutdown.
    let (stop_background, _) = tokio::sync::broadcast::channel::<()>(1);
    // The admin port comes up first: liveness answers while the store is still connecting,
    // and readiness says why traffic should wait.
    let readiness = Arc::new(Readiness::default());
    let metrics = telemetry::metrics::handle();
    let admin_http = match config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|e| RunError::MetricsListen(addr, e))?;
            Some(tokio::spawn(telemetry::http::serve(
                listener,
                readiness.clone(),
                stopped(&stop_background),
            )))
        }
        None => None,
    };
    let result = serve(
        &config,
        listener,
        shutdown,
        &readiness,
        metrics,
        &stop_background,
    )
    .await;
    let _ = stop_background.send(());
    if let Some(task) = admin_http {
        let _ = task.await;
    }
    result
}

/// [`run`] once the admin port is up.
async fn serve(
    config: &Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    readiness: &Arc<Readiness>,
    metrics: &'static metrics_exporter_prometheus::PrometheusHandle,
    stop_background: &tokio::sync::broadcast::Sender<()>,
) -> Result<(), RunError> {
    // TLS first: a missing or broken certificate stops the start before the store is touched.
    let server_tls = tls::open(
        &config.tls,
        listener.local_addr().ok(),
        stopped(stop_background),
    )?;
    let store = open_store(config).await?;
    tracing::info!(store = ?config.store, default_limit = %config.default_limit, "store ready");
    let limiter = Arc::new(Limiter::new(
        store,
        config.default_limit,
        config.overrides.clone(),
        config.envoy.clone(),
        config.limiter.clone(),
    ));
    match limiter.refresh_policies().await {
        Ok(_) => readiness.store_answered(),
        Err(e) => tracing::warn!(error = %e, "store not answering yet; not ready until it does"),
    }
    let auth = Arc::new(open_authenticator(
        config,
        limiter.store().clone(),
        limiter.clone(),
    )?);
    load_revocations_before_serving(&auth, readiness, config.redis_io_timeout).await;
    let (health, health_service) = tonic_health::server::health_reporter();
    let initial_health = if readiness.is_ready() {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    set_health(&health, initial_health).await;

    let background = [
        tokio::spawn(wait_for_store(
            limiter.clone(),
            auth.clone(),
            readiness.clone(),
            health.clone(),
            config.policy_refresh,
            stopped(stop_background),
        )),
        tokio::spawn(periodic::run_every(
            METRICS_UPKEEP,
            METRICS_UPKEEP,
            stopped(stop_background),
            periodic::OutageMessages {
                failing: "metrics upkeep failed",
                recovered: "metrics upkeep recovered",
            },
            || async {
                metrics.run_upkeep();
                Ok::<(), std::convert::Infallible>(())
            },
        )),
        tokio::spawn(
            limiter
                .clone()
                .refresh_policies_every(config.policy_refresh, stopped(stop_background)),
        ),
        tokio::spawn(
            auth.clone()
                .poll_revocations_every(config.auth.revocation_poll, stopped(stop_background)),
        ),
        tokio::spawn(
            auth.keys()
                .clone()
                .watch(config.auth.key_set_poll, stopped(stop_background)),
        ),
        tokio::spawn(
            auth.clone()
                .write_counted_audit_every(COUNTED_AUDIT_CHECK, stopped(stop_background)),
        ),
    ];

    let reflection_sets = [
        portcullis_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ];
    let mut reflection_v1 = tonic_reflection::server::Builder::configure();
    let mut reflection_v1alpha = tonic_reflection::server::Builder::configure();
    for set in reflection_sets {
        reflection_v1 = reflection_v1.register_encoded_file_descriptor_set(set);
        reflection_v1alpha = reflection_v1alpha.register_encoded_file_descriptor_set(set);
    }

    let admin = AdminGuard::new(
        pb::admin_service_server::AdminServiceServer::new(AdminApi {
            limiter: limiter.clone(),
            auth: auth.clone(),
        }),
        AdminAuth::new(config.admin_token.as_ref()),
        auth.clone(),
    );
    // TCP_NODELAY is set where connections are accepted (transport::accept): tonic's own
    // setting only applies to listeners it binds itself.
    let connections = transport::Registry::new();
    let router = transport::server_builder(&config.transport)
        .layer(transport::CallCountLayer::new(connections.clone()))
        .layer(RpcTelemetryLayer)
        .add_service(health_service)
        .add_service(reflection_v1.build_v1()?)
        .add_service(reflection_v1alpha.build_v1alpha()?)
        .add_service(pb::rate_limit_service_server::RateLimitServiceServer::new(
            RateLimitApi {
                limiter: limiter.clone(),
            },
        ))
        .add_service(
            envoy::rls::rate_limit_service_server::RateLimitServiceServer::new(EnvoyApi {
                limiter: limiter.clone(),
            }),
        )
        .add_service(AdminGuard::method(
            pb::auth_service_server::AuthServiceServer::new(AuthApi { auth: auth.clone() }),
            grpc::admin_guard::WATCH_PATH,
            AdminAuth::any_of(
                grpc::admin_guard::WATCH,
                config.watch_token.iter().chain(&config.admin_token),
                config
                    .tls
                    .server
                    .as_ref()
                    .is_some_and(|s| s.client_ca.is_some()),
            ),
            auth.clone(),
        ))
        .add_service(admin);

    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "serving gRPC");
    let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
    let tls_accept = server_tls.map(|tls| transport::TlsAccept {
        tls,
        handshake_timeout: config.tls.handshake_timeout,
    });
    let incoming = transport::Incoming::spawn(listener, tls_accept, config.transport, connections);
    let server = router.serve_with_incoming_shutdown(incoming, async {
        let _ = drain_rx.await;
    });
    tokio::pin!(server);
    let result = tokio::select! {
        r = &mut server => r.map_err(RunError::from),
        () = shutdown => {
            tracing::info!(grace = ?config.shutdown_grace, "shutting down: draining calls in flight");
            readiness.draining();
            set_health(&health, ServingStatus::NotServing).await;
            let _ = drain_tx.send(());
            // Streams would otherwise hold the drain open for the whole grace period; their
            // subscribers resume on another replica from their cursor.
            auth.close_security_events();
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(r) => r.map_err(RunError::from),
                Err(_) => {
                    tracing::warn!("grace period over with calls still in flight; stopping anyway");
                    Ok(())
                }
            }
        }
    };
    let _ = stop_background.send(());
    for task in background {
        let _ = task.await;
    }
    result
}
