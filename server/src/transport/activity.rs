//! Which connections have calls in flight: a tower layer counts each connection's calls, so
//! the connection's I/O can tell how long it has had none and close it when idle too long.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

/// A connection, as tonic tells its calls apart: (local, remote) address.
type ConnectionKey = (SocketAddr, SocketAddr);

/// The open connections of one server and their activity.
#[derive(Debug)]
pub struct Registry {
    /// Instants are kept as nanoseconds since this, to fit an atomic.
    epoch: Instant,
    /// Open connections; an entry lives as long as its [`Registration`].
    connections: DashMap<ConnectionKey, Arc<Activity>, foldhash::fast::RandomState>,
}

/// One connection's calls in flight.
#[derive(Debug)]
struct Activity {
    /// The registry's epoch, so a call's guard needs only this.
    epoch: Instant,
    /// Calls in flight.
    calls: AtomicU64,
    /// When the last call ended (or the connection opened), in nanoseconds since the epoch.
    idle_since: AtomicU64,
}

impl Registry {
    /// A registry with no connections.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            connections: DashMap::default(),
        })
    }

    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// Registers a connection just accepted; it leaves the registry when the registration is
    /// dropped (with the connection).
    pub fn register(self: &Arc<Self>, local: SocketAddr, remote: SocketAddr) -> Registration {
        let activity = Arc::new(Activity {
            epoch: self.epoch,
            calls: AtomicU64::new(0),
            idle_since: AtomicU64::new(self.nanos(Instant::now())),
        });
        self.connections.insert((local, remote), activity.clone());
        Registration {
            registry: self.clone(),
            key: (local, remote),
            activity,
        }
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }
}

/// A connection's place in the [`Registry`].
#[derive(Debug)]
pub struct Registration {
    /// Where to leave on drop.
    registry: Arc<Registry>,
    /// This connection's key.
    key: ConnectionKey,
    /// Its activity, shared with the calls' guards.
    activity: Arc<Activity>,
}

impl Registration {
    /// When the connection's last call ended (or it opened); `None` while a call is in flight.
    pub fn idle_since(&self) -> Option<Instant> {
        if self.activity.calls.load(Ordering::Acquire) > 0 {
            return None;
        }
        let nanos = self.activity.idle_since.load(Ordering::Acquire);
        Some(self.registry.epoch + Duration::from_nanos(nanos))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Only our own entry: a new connection on the same addresses may have replaced it.
        self.registry
            .connections
            .remove_if(&self.key, |_, activity| {
                Arc::ptr_eq(activity, &self.activity)
            });
    }
}

/// Holds one call in a connection's count until dropped.
#[derive(Debug)]
struct CallGuard {
    activity: Arc<Activity>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let now = Instant::now()
            .saturating_duration_since(self.activity.epoch)
            .as_nanos() as u64;
        self.activity.idle_since.store(now, Ordering::Release);
        self.activity.calls.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts each connection's calls in flight, in the connection's [`Registration`]. A call
/// counts until its response body has ended (or been dropped), so a stream that lasts hours
/// (`WatchSecurityEvents`) keeps its connection from being closed as idle.
#[derive(Debug, Clone)]
pub struct CallCountLayer {
    /// The server's connections.
    registry: Arc<Registry>,
}

impl CallCountLayer {
    /// Counts calls into `registry`.
    pub fn new(registry: Arc<Registry>) -> Self {
        Self { registry }
    }
}

impl<S> Layer<S> for CallCountLayer {
    type Service = CallCount<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallCount {
            inner,
            registry: self.registry.clone(),
        }
    }
}

/// The service [`CallCountLayer`] makes.
#[derive(Debug, Clone)]
pub struct CallCount<S> {
    inner: S,
    registry: Arc<Registry>,
}

impl<S, B, R> Service<http::Request<B>> for CallCount<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = http::Response<CountedBody<R>>;
    type Error = S::Error;
    type Future = Counted<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let guard = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(|info| Some((info.local_addr()?, info.remote_addr()?)))
            .and_then(|key| self.registry.connections.get(&key).map(|a| a.clone()))
            .map(|activity| {
                activity.calls.fetch_add(1, Ordering::AcqRel);
                CallGuard { activity }
            });
        Counted {
            inner: self.inner.call(request),
            guard,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's future, holding its place in the connection's count; the place passes to the
    /// response body.
    pub struct Counted<F> {
        #[pin]
        inner: F,
        guard: Option<CallGuard>,
    }
}

impl<F, R, E> Future for Counted<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = Result<http::Response<CountedBody<R>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|inner| CountedBody { inner, guard })))
    }
}

pin_project_lite::pin_project! {
    /// A response body holding its call's place in the connection's count until it ends.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        guard: Option<CallGuard>,
    }
}

impl<B: http_body::Body> http_body::Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        if frame.is_none() {
            // The call is over even if the body is dropped only later.
            this.guard.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registration_is_idle_between_calls_and_leaves_on_drop() {
        let registry = Registry::new();
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:2".parse().unwrap();
        let registration = registry.register(a, b);
        assert_eq!(registry.len(), 1);
        let opened = registration.idle_since().unwrap();
        let activity = registry.connections.get(&(a, b)).unwrap().clone();
        activity.calls.fetch_add(1, Ordering::AcqRel);
        let guard = CallGuard { activity };
        assert_eq!(registration.idle_since(), None, "a call is in flight");
        std::thread::sleep(Duration::from_millis(2));
        drop(guard);
        assert!(registration.idle_since().unwrap() > opened);
        drop(registration);
        assert!(registry.is_empty());
    }
}
