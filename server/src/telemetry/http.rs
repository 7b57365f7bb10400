//! The admin HTTP port: `/metrics` (Prometheus text), `/livez` and `/readyz`, kept off the
//! gRPC port so it can be reached by the scraper and kubelet only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use super::metrics::handle;

/// Whether this replica should get traffic.
#[derive(Debug, Default)]
pub struct Readiness {
    /// The store has answered at least once (a fresh replica waits for Redis).
    store_answered: AtomicBool,
    /// The revocation feed has been read once: before that a fresh replica would accept
    /// tokens of sessions revoked before it started, so it verifies none and takes no traffic.
    revocations_loaded: AtomicBool,
    /// Shutdown has begun: the load balancer should stop sending calls.
    draining: AtomicBool,
}

impl Readiness {
    /// Records that the store answered.
    pub fn store_answered(&self) {
        self.store_answered.store(true, Ordering::Relaxed);
    }

    /// Whether the store has answered yet.
    pub fn has_store_answered(&self) -> bool {
        self.store_answered.load(Ordering::Relaxed)
    }

    /// Records that the revocation feed has been read.
    pub fn revocations_loaded(&self) {
        self.revocations_loaded.store(true, Ordering::Relaxed);
    }

    /// Records that shutdown has begun.
    pub fn draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Ready: the store has answered, the revocation feed has been read, and shutdown has
    /// not begun.
    pub fn is_ready(&self) -> bool {
        self.store_answered.load(Ordering::Relaxed)
            && self.revocations_loaded.load(Ordering::Relaxed)
            && !self.draining.load(Ordering::Relaxed)
    }
}

async fn metrics_text() -> ([(&'static str, &'static str); 1], String) {
    (
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        handle().render(),
    )
}

async fn readyz(State(readiness): State<Arc<Readiness>>) -> (StatusCode, &'static str) {
    if readiness.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// The admin routes.
pub fn router(readiness: Arc<Readiness>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

/// Serves the admin routes on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    readiness: Arc<Readiness>,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    let addr = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving /metrics, /livez and /readyz");
    if let Err(e) = axum::serve(listener, router(readiness))
        .with_graceful_shutdown(stop)
        .await
    {
        tracing::error!(error = %e, "admin HTTP server failed");
    }
}
