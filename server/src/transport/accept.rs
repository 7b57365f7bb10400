//! The accept loop of the gRPC port: connections past `transport.max_connections` are closed at
//! once, TLS handshakes run in their own tasks (a slow or silent client never holds up the
//! loop), and accept errors such as running out of file descriptors back off and are logged
//! once per incident while the connections already open keep being served.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

use super::activity::Registry;
use super::io::{ServerIo, Watch};
use crate::config::TransportLimits;
use crate::telemetry::metrics::{CONNECTIONS_REFUSED, TLS_HANDSHAKES};
use crate::tls::ReloadingTls;

/// Handshakes in progress at once; past this the accept loop waits (backpressure on a flood).
const MAX_PENDING_HANDSHAKES: usize = 1024;
/// Connections waiting for the server to take them.
const READY_QUEUE: usize = 64;
/// First pause after a failed accept; doubled on each failure in a row up to the longest.
const ACCEPT_BACKOFF_FIRST: Duration = Duration::from_millis(5);
/// Longest pause after failed accepts.
const ACCEPT_BACKOFF_LONGEST: Duration = Duration::from_secs(1);

/// TLS on accepted connections: the reloading material and the handshake timeout.
#[derive(Debug, Clone)]
pub struct TlsAccept {
    /// The certificate and client CA in force.
    pub tls: Arc<ReloadingTls>,
    /// Longest handshake before the connection is dropped.
    pub handshake_timeout: Duration,
}

/// The connections tonic serves (`serve_with_incoming_shutdown`). Dropping it (tonic does as
/// soon as it stops accepting) ends the accept loop, which closes the listening socket.
#[derive(Debug)]
pub struct Incoming(ReceiverStream<ServerIo>);

impl Incoming {
    /// Spawns the accept loop over `listener` under `limits`, counting connections' calls in
    /// `registry` (which [`super::CallCountLayer`] fills).
    pub fn spawn(
        listener: TcpListener,
        tls: Option<TlsAccept>,
        limits: TransportLimits,
        registry: Arc<Registry>,
    ) -> Self {
        let (ready, rx) = mpsc::channel(READY_QUEUE);
        let acceptor = Acceptor {
            tls,
            limits,
            registry,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            ready,
        };
        tokio::spawn(acceptor.run(listener));
        Self(ReceiverStream::new(rx))
    }
}

impl Stream for Incoming {
    type Item = io::Result<ServerIo>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.get_mut().0)
            .poll_next(cx)
            .map(|next| next.map(Ok))
    }
}

/// The accept loop's state.
struct Acceptor {
    tls: Option<TlsAccept>,
    limits: TransportLimits,
    registry: Arc<Registry>,
    /// One permit per open connection, held by its [`Watch`].
    connections: Arc<Semaphore>,
    /// One permit per TLS handshake in progress.
    handshakes: Arc<Semaphore>,
    /// Where accepted connections go; closed when the server stops accepting.
    ready: mpsc::Sender<ServerIo>,
}

/// An incident ends only after this long without a failure, so a condition that comes and
/// goes (descriptors freed and taken again) is one incident, not a line per flap.
const INCIDENT_QUIET: Duration = Duration::from_secs(10);

/// A run of failures logged once when it starts and once when it ends, with its count.
#[derive(Debug, Default)]
struct Incident {
    /// Failures in the current run; 0 when none is going on.
    count: u64,
    /// The run's latest failure.
    last: Option<Instant>,
}

impl Incident {
    /// Counts a failure; true for the first of a run (the one to log).
    fn failed(&mut self) -> bool {
        self.count += 1;
        self.last = Some(Instant::now());
        self.count == 1
    }

    /// Ends the run if it has been quiet long enough; its count when it ended now.
    fn ended(&mut self) -> Option<u64> {
        let quiet = self.last.is_some_and(|at| at.elapsed() >= INCIDENT_QUIET);
        if self.count == 0 || !quiet {
            return None;
        }
        self.last = None;
        Some(std::mem::take(&mut self.count))
    }
}

impl Acceptor {
    async fn run(self, listener: TcpListener) {
        let mut accept_errors = Incident::default();
        let mut refusals = Incident::default();
        let mut backoff = ACCEPT_BACKOFF_FIRST;
        loop {
            let accepted = tokio::select! {
                () = self.ready.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    if accept_errors.failed() {
                        tracing::error!(
                            %error,
                            "cannot accept connections (out of file descriptors?); backing off \
                             while the open connections are served"
                        );
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(ACCEPT_BACKOFF_LONGEST);
                    continue;
                }
            };
            backoff = ACCEPT_BACKOFF_FIRST;
            if let Some(failures) = accept_errors.ended() {
                tracing::info!(failures, "accepting connections again");
            }
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                metrics::counter!(CONNECTIONS_REFUSED).increment(1);
                if refusals.failed() {
                    tracing::warn!(
                        max_connections = self.limits.max_connections,
                        %peer,
                        "connection limit reached: closing new connections until some end"
                    );
                }
                continue;
            };
            if let Some(refused) = refusals.ended() {
                tracing::info!(refused, "below the connection limit again");
            }
            let _ = tcp.set_nodelay(true);
            let Ok(local) = tcp.local_addr() else {
                continue;
            };
            let watch = |registration| {
                Watch::new(
                    registration,
                    permit,
                    self.limits.silent_timeout,
                    self.limits.idle_timeout,
                )
            };
            let registration = self.registry.register(local, peer);
            match &self.tls {
                None => {
                    let io = ServerIo::plain(tcp, watch(registration));
                    if self.ready.send(io).await.is_err() {
                        return;
                    }
                }
                Some(tls) => {
                    let handshake_permit = tokio::select! {
                        () = self.ready.closed() => return,
                        permit = self.handshakes.clone().acquire_owned() => match permit {
                            Ok(permit) => permit,
                            Err(_) => return,
                        },
                    };
                    // The config in force now: a reloaded client CA applies from the next
                    // connection on.
                    let acceptor = TlsAcceptor::from(tls.tls.config());
                    let timeout = tls.handshake_timeout;
                    let ready = self.ready.clone();
                    let watch = watch(registration);
                    tokio::spawn(async move {
                        let _handshaking = handshake_permit;
                        handshake(acceptor, tcp, peer, timeout, watch, ready).await;
                    });
                }
            }
        }
    }
}

async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    timeout: Duration,
    watch: Watch,
    ready: mpsc::Sender<ServerIo>,
) {
    let outcome = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            // The silent deadline counts from the end of the handshake.
            let io = ServerIo::tls(stream, watch.restarted());
            // A send error means the server stopped accepting; the connection just closes.
            let _ = ready.send(io).await;
            "ok"
        }
        Ok(Err(error)) => {
            // Scanners and misconfigured clients are common; not worth more than debug.
            tracing::debug!(%peer, %error, "TLS handshake failed");
            "failed"
        }
        Err(_) => {
            tracing::debug!(%peer, ?timeout, "TLS handshake timed out");
            "timeout"
        }
    };
    metrics::counter!(TLS_HANDSHAKES, "outcome" => outcome).increment(1);
}
