//! [`Portcullis`], the cheap-to-clone handle, and how one call runs: deadline, headers,
//! attempts, metrics.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{mpsc, oneshot};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::builder::PortcullisBuilder;
use crate::error::Error;
use crate::metrics_names as names;
use crate::retry::{Idempotency, RetryPolicy};

/// Kinds of calls, each with its own default deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallKind {
    /// `Check`, `CheckMany`: on the request path of every call (250 ms).
    RateLimit,
    /// `VerifyToken`: on the request path too (250 ms).
    Verify,
    /// `GetJwks` (1 s).
    Jwks,
    /// `Login`, `ChangePassword`, `CreateUser`: Argon2 may queue (10 s).
    PasswordHashing,
    /// `Refresh`, `Logout`, and opening `WatchSecurityEvents` (2 s).
    Session,
    /// The other admin calls (5 s; a counter reset walks keys).
    Admin,
}

/// The deadline of each [`CallKind`].
#[derive(Debug, Clone)]
pub(crate) struct Deadlines {
    /// Check, CheckMany.
    rate_limit: Duration,
    /// VerifyToken.
    verify: Duration,
    /// GetJwks.
    jwks: Duration,
    /// Calls that hash a password.
    password_hashing: Duration,
    /// Refresh, Logout, stream opening.
    session: Duration,
    /// Admin calls.
    admin: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            rate_limit: Duration::from_millis(250),
            verify: Duration::from_millis(250),
            jwks: Duration::from_secs(1),
            password_hashing: Duration::from_secs(10),
            session: Duration::from_secs(2),
            admin: Duration::from_secs(5),
        }
    }
}

impl Deadlines {
    pub(crate) fn get(&self, kind: CallKind) -> Duration {
        *self.slot(kind)
    }

    pub(crate) fn set(&mut self, kind: CallKind, deadline: Duration) {
        *self.slot_mut(kind) = deadline;
    }

    fn slot(&self, kind: CallKind) -> &Duration {
        match kind {
            CallKind::RateLimit => &self.rate_limit,
            CallKind::Verify => &self.verify,
            CallKind::Jwks => &self.jwks,
            CallKind::PasswordHashing => &self.password_hashing,
            CallKind::Session => &self.session,
            CallKind::Admin => &self.admin,
        }
    }

    fn slot_mut(&mut self, kind: CallKind) -> &mut Duration {
        match kind {
            CallKind::RateLimit => &mut self.rate_limit,
            CallKind::Verify => &mut self.verify,
            CallKind::Jwks => &mut self.jwks,
            CallKind::PasswordHashing => &mut self.password_hashing,
            CallKind::Session => &mut self.session,
            CallKind::Admin => &mut self.admin,
        }
    }
}

/// Which bearer token a call sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// None.
    None,
    /// The admin token.
    Admin,
    /// The WatchSecurityEvents token.
    Watch,
}

/// What the call machinery needs to know of an RPC.
#[derive(Debug)]
pub(crate) struct Method {
    /// The RPC's name, the `method` label of the metrics.
    pub(crate) name: &'static str,
    /// Its deadline class.
    pub(crate) kind: CallKind,
    /// Whether it may be repeated after reaching a server.
    pub(crate) idempotency: Idempotency,
    /// The token it sends.
    pub(crate) auth: Auth,
}

/// What every clone shares.
pub(crate) struct Inner {
    /// The balanced channel over the live replicas.
    pub(crate) channel: Channel,
    /// Deadline per kind of call.
    pub(crate) deadlines: Deadlines,
    /// Retry settings and the shared budget.
    pub(crate) retry: RetryPolicy,
    /// `Bearer <admin token>`, swapped when its file changes.
    pub(crate) admin_token: Arc<ArcSwapOption<MetadataValue<Ascii>>>,
    /// `Bearer <watch token>`.
    pub(crate) watch_token: Option<MetadataValue<Ascii>>,
    /// Asks the discovery task for a health round (after a connect error).
    pub(crate) probe: mpsc::Sender<oneshot::Sender<()>>,
}

/// A handle on a Portcullis deployment: calls balanced over its live replicas, with deadlines,
/// retries, typed errors and metrics. Clones share connections, the retry budget and the
/// background task (which ends when the last clone is dropped).
#[derive(Clone)]
pub struct Portcullis {
    /// The shared state.
    inner: Arc<Inner>,
    /// A W3C traceparent sent with this clone's calls (see [`Portcullis::with_traceparent`]).
    traceparent: Option<MetadataValue<Ascii>>,
}

impl fmt::Debug for Portcullis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Portcullis")
            .field("deadlines", &self.inner.deadlines)
            .field("retry", &self.inner.retry)
            .field(
                "admin_token",
                &self.inner.admin_token.load().as_ref().map(|_| "<redacted>"),
            )
            .field(
                "watch_token",
                &self.inner.watch_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

impl Portcullis {
    /// Settings for a new handle.
    pub fn builder() -> PortcullisBuilder {
        PortcullisBuilder::default()
    }

    pub(crate) fn from_inner(inner: Inner) -> Portcullis {
        Portcullis {
            inner: Arc::new(inner),
            traceparent: None,
        }
    }

    /// The balanced channel, for generated clients and tower layers.
    pub fn channel(&self) -> Channel {
        self.inner.channel.clone()
    }

    /// The watch token given to the builder, for a verifier built from this handle.
    #[cfg(feature = "verify")]
    pub(crate) fn watch_token(&self) -> Option<&str> {
        self.inner
            .watch_token
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    }

    /// A clone whose calls send this W3C `traceparent` (`00-<trace id>-<span id>-<flags>`)
    /// instead of the current span's.
    pub fn with_traceparent(&self, traceparent: &str) -> Result<Portcullis, Error> {
        let value = traceparent
            .parse()
            .map_err(|_| Error::InvalidConfig("traceparent is not a header value".into()))?;
        Ok(Portcullis {
            inner: self.inner.clone(),
            traceparent: Some(value),
        })
    }

    /// The deadline of calls of `kind`.
    pub fn deadline(&self, kind: CallKind) -> Duration {
        self.inner.deadlines.get(kind)
    }

    /// A request with the headers of `method`; `timeout` is sent as `grpc-timeout`.
    pub(crate) fn request<T>(
        &self,
        method: &Method,
        message: T,
        timeout: Option<Duration>,
    ) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        let token = match method.auth {
            Auth::None => None,
            Auth::Admin => self.inner.admin_token.load_full().map(|t| (*t).clone()),
            Auth::Watch => self.inner.watch_token.clone(),
        };
        let metadata = request.metadata_mut();
        if let Some(token) = token {
            metadata.insert("authorization", token);
        }
        if let Some(traceparent) = self.traceparent.clone().or_else(crate::trace::current) {
            metadata.insert("traceparent", traceparent);
        }
        request
    }

    /// Runs one unary call: attempts within the deadline, retried as the policy allows,
    /// counted in the metrics.
    pub(crate) async fn unary<Req, Resp, F, Fut>(
        &self,
        method: &Method,
        message: Req,
        send: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let start = Instant::now();
        let result = self.attempts(method, message, send, start).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(Error::Status { .. }) => "refused",
            Err(Error::Unavailable { .. }) => "unavailable",
            Err(Error::DeadlineExceeded { .. }) => "deadline",
            Err(Error::InvalidConfig(_)) => "config",
        };
        metrics::counter!(names::CALLS, "method" => method.name, "outcome" => outcome).increment(1);
        metrics::histogram!(names::DURATION, "method" => method.name)
            .record(start.elapsed().as_secs_f64());
        if let Err(error) = &result {
            metrics::counter!(names::ERRORS, "method" => method.name, "reason" => error.label())
                .increment(1);
        }
        result
    }

    async fn attempts<Req, Resp, F, Fut>(
        &self,
        method: &Method,
        message: Req,
        mut send: F,
        start: Instant,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: FnMut(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let deadline = self.inner.deadlines.get(method.kind);
        let policy = &self.inner.retry;
        policy.record_call();
        let mut backoff = policy.backoff();
        loop {
            let remaining = deadline.saturating_sub(start.elapsed());
            if remaining.is_zero() {
                return Err(Error::DeadlineExceeded { deadline });
            }
            let request = self.request(method, message.clone(), Some(remaining));
            let attempt = send(self.inner.channel.clone(), request);
            let error = match tokio::time::timeout(remaining, attempt).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => Error::from_status(&status, deadline),
                Err(_) => Error::DeadlineExceeded { deadline },
            };
            let Some(delay) = policy.next_delay(method.idempotency, &error, &mut backoff) else {
                if matches!(error, Error::Unavailable { .. }) {
                    // Still take a dead replica out for the calls that follow.
                    let _ = self.inner.probe.try_send(oneshot::channel().0);
                }
                return Err(error);
            };
            if matches!(error, Error::Unavailable { .. }) {
                // A replica refused or dropped the connection: let discovery take dead
                // replicas out of the balancer before the next attempt picks one.
                let left = deadline.saturating_sub(start.elapsed());
                let (ack, acked) = oneshot::channel();
                if self.inner.probe.send(ack).await.is_ok() {
                    let _ = tokio::time::timeout(left, acked).await;
                }
            }
            if delay >= deadline.saturating_sub(start.elapsed()) {
                // No time for another attempt: report what went wrong, not the deadline.
                return Err(error);
            }
            metrics::counter!(names::RETRIES, "method" => method.name).increment(1);
            tokio::time::sleep(delay).await;
        }
    }
}
